//! Prometheus metrics (`/metrics`) and a health check (`/health`), served on the
//! metrics address. Counters are updated by the shards as they work; per-group gauges
//! are filled from the shards' status when scraped, so idle groups cost nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::raft::Role;
use crate::shard::GroupStatus;
use crate::transport::peer::PeerCounters;

use super::process_metrics::ProcessMetrics;
use super::shard_thread::ShardInput;

/// How long a scrape or health check waits for each shard.
const SHARD_ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabel {
    pub group: u64,
}

/// What was refused for want of a trusted identity.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabel {
    pub what: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: &'static str,
    /// `ok`, or why the request failed (see [`outcome_of`]).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: u64,
}

/// What the bytes on disk hold: `log` (the shard logs' segments) or `snapshots`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DataLabel {
    pub what: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// A request's outcome as a label value.
pub fn outcome_of<T>(result: &Result<T, crate::group::RequestError>) -> &'static str {
    use crate::group::RequestError as E;
    match result {
        Ok(_) => "ok",
        Err(E::UnknownGroup(_)) => "unknown_group",
        Err(E::NotLeader { .. }) => "not_leader",
        Err(E::Refused(_)) => "refused",
        Err(E::Unknown) => "outcome_unknown",
        Err(E::Dropped) => "dropped",
        Err(E::NotFound(_)) => "not_found",
        Err(E::Invalid(_)) => "invalid",
        Err(E::Overloaded(_)) => "overloaded",
        Err(E::DiskFull(_)) => "disk_full",
    }
}

pub struct Metrics {
    registry: Registry,
    pub proposals: Counter,
    pub fdatasyncs: Counter,
    /// Group Readies made durable by one fdatasync (the group-commit batch).
    pub readies_per_fdatasync: Histogram,
    pub turn_seconds: Histogram,
    pub snapshots_taken: Counter,
    pub snapshots_installed: Counter,
    pub log_entries: Counter,
    /// Peer messages the Raft core refused (malformed, or a second leader).
    pub peer_messages_refused: Counter,
    /// TLS handshakes failed and calls refused for want of a trusted identity.
    pub unauthorized: Family<RefusedLabel, Counter>,
    process: ProcessMetrics,
    pub request_seconds: Family<MethodLabel, Histogram>,
    /// Writes that were not carried out, or whose outcome is unknown, by reason.
    pub proposals_failed: Family<ReasonLabel, Counter>,
    /// One log flush (write and fdatasync), averaged over a turn's flushes.
    pub fdatasync_seconds: Histogram,
    /// Groups whose leader changed, as this node learned.
    pub leader_changes: Counter,
    /// From a write's proposal at its leader to its application there, averaged over
    /// a turn's writes.
    pub commit_seconds: Histogram,
    /// Applying one turn's committed entries to the state machines.
    pub apply_seconds: Histogram,
    pub peer: PeerCounters,
    group_leader: Family<GroupLabel, Gauge>,
    group_is_leader: Family<GroupLabel, Gauge>,
    group_term: Family<GroupLabel, Gauge>,
    group_commit: Family<GroupLabel, Gauge>,
    group_applied: Family<GroupLabel, Gauge>,
    /// Watchers open on this node.
    pub watchers: Gauge,
    /// Round trips of `Peer.Ping` to each peer (`server::probe`), and pings unanswered.
    pub peer_round_trip_seconds: Family<PeerLabel, Histogram>,
    pub peer_probes_failed: Family<PeerLabel, Counter>,
    /// Bytes in the data dir, measured at each scrape.
    data_bytes: Family<DataLabel, Gauge>,
}

impl Metrics {
    /// Counts a refusal, and says whether to log it: the first of its kind and then
    /// each time the count doubles, so a flood costs a few lines, not one per try.
    pub fn count_refusal(&self, what: &'static str) -> bool {
        let before = self.unauthorized.get_or_create(&RefusedLabel { what }).inc();
        before == 0 || (before + 1).is_power_of_two()
    }

    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("quarry");
        let proposals = Counter::default();
        let fdatasyncs = Counter::default();
        let readies_per_fdatasync = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        let turn_seconds = Histogram::new(exponential_buckets(1e-5, 2.0, 20));
        let request_seconds = Family::<MethodLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(1e-4, 2.0, 18))
        });
        registry.register("proposals", "Writes proposed to Raft groups led here", proposals.clone());
        let proposals_failed = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "proposals_failed",
            "Writes not carried out (or whose outcome is unknown), by reason",
            proposals_failed.clone(),
        );
        let fdatasync_seconds = Histogram::new(exponential_buckets(1e-5, 2.0, 20));
        registry.register(
            "fdatasync_seconds",
            "Duration of one shard-log flush (write and fdatasync)",
            fdatasync_seconds.clone(),
        );
        let commit_seconds = Histogram::new(exponential_buckets(1e-5, 2.0, 20));
        registry.register(
            "commit_seconds",
            "From a write's proposal at its leader to its commit and application there (mean of a shard turn's writes)",
            commit_seconds.clone(),
        );
        let apply_seconds = Histogram::new(exponential_buckets(1e-6, 2.0, 22));
        registry.register(
            "apply_seconds",
            "Applying one shard turn's committed entries to the state machines",
            apply_seconds.clone(),
        );
        let leader_changes = Counter::default();
        registry.register(
            "leader_changes",
            "Groups whose leader changed, as this node learned",
            leader_changes.clone(),
        );
        registry.register("fdatasyncs", "fdatasync calls of the shard logs", fdatasyncs.clone());
        registry.register(
            "readies_per_fdatasync",
            "Group Readies made durable by one fdatasync",
            readies_per_fdatasync.clone(),
        );
        registry.register("turn_seconds", "Duration of one shard turn", turn_seconds.clone());
        let (snapshots_taken, snapshots_installed) = (Counter::default(), Counter::default());
        let log_entries = Counter::default();
        registry.register("log_entries", "Raft entries written to the shard logs", log_entries.clone());
        let peer_messages_refused = Counter::default();
        registry.register(
            "peer_messages_refused",
            "Peer messages the Raft core refused: malformed, or from a second leader of a term",
            peer_messages_refused.clone(),
        );
        let unauthorized = Family::<RefusedLabel, Counter>::default();
        registry.register(
            "unauthorized",
            "TLS handshakes failed, and calls refused for want of a trusted identity, by what was refused",
            unauthorized.clone(),
        );
        registry.register(
            "snapshots_taken",
            "Group snapshots written (then the log compacted)",
            snapshots_taken.clone(),
        );
        registry.register("snapshots_installed", "Group snapshots received from leaders", snapshots_installed.clone());
        registry.register(
            "request_seconds",
            "Client request latency at this node by method and outcome",
            request_seconds.clone(),
        );
        let peer = PeerCounters::default();
        registry.register("peer_batches_sent", "Batches queued to peer streams", peer.batches_sent.clone());
        registry.register("peer_batches_dropped", "Batches dropped at a full peer queue", peer.batches_dropped.clone());
        registry.register("peer_messages_sent", "Raft messages queued to peer streams", peer.messages_sent.clone());
        registry.register(
            "peer_catch_up_entries",
            "Log entries received in bulk over Flight to catch up",
            peer.catch_up_entries.clone(),
        );
        registry.register(
            "peer_heartbeats_coalesced",
            "Heartbeats and responses sent as packed per-node-pair columns",
            peer.heartbeats_coalesced.clone(),
        );
        let gauge = || Family::<GroupLabel, Gauge>::default();
        let (group_leader, group_is_leader, group_term, group_commit, group_applied) =
            (gauge(), gauge(), gauge(), gauge(), gauge());
        registry.register("group_leader", "Leader node id as this node sees it (0: none)", group_leader.clone());
        registry.register("group_is_leader", "1 if this node leads the group", group_is_leader.clone());
        registry.register("group_term", "Current Raft term", group_term.clone());
        registry.register("group_commit_index", "Commit index", group_commit.clone());
        registry.register("group_applied_index", "Applied index", group_applied.clone());
        let watchers = Gauge::default();
        registry.register("watchers", "Watchers open on this node", watchers.clone());
        let peer_round_trip_seconds =
            Family::<PeerLabel, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(1e-5, 2.0, 20)));
        registry.register(
            "peer_round_trip_seconds",
            "Round trip of a ping to each peer over its gRPC connection",
            peer_round_trip_seconds.clone(),
        );
        let peer_probes_failed = Family::<PeerLabel, Counter>::default();
        registry.register(
            "peer_probes_failed",
            "Pings to a peer that failed or went unanswered within 2 s",
            peer_probes_failed.clone(),
        );
        let data_bytes = Family::<DataLabel, Gauge>::default();
        registry.register(
            "data_bytes",
            "Bytes on disk in the data dir: shard-log segments and snapshot files",
            data_bytes.clone(),
        );
        Arc::new(Metrics {
            registry,
            proposals,
            fdatasyncs,
            readies_per_fdatasync,
            turn_seconds,
            snapshots_taken,
            snapshots_installed,
            log_entries,
            peer_messages_refused,
            unauthorized,
            process: ProcessMetrics::new(),
            request_seconds,
            proposals_failed,
            fdatasync_seconds,
            leader_changes,
            commit_seconds,
            apply_seconds,
            peer,
            group_leader,
            group_is_leader,
            group_term,
            group_commit,
            group_applied,
            watchers,
            peer_round_trip_seconds,
            peer_probes_failed,
            data_bytes,
        })
    }

    fn record_groups(&self, groups: &[GroupStatus]) {
        let as_gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for g in groups {
            let label = GroupLabel { group: g.group };
            self.group_leader.get_or_create(&label).set(as_gauge(g.leader.unwrap_or(0)));
            self.group_is_leader.get_or_create(&label).set(i64::from(g.role == Role::Leader));
            self.group_term.get_or_create(&label).set(as_gauge(g.term));
            self.group_commit.get_or_create(&label).set(as_gauge(g.commit));
            self.group_applied.get_or_create(&label).set(as_gauge(g.applied));
        }
    }

    fn encode(&self) -> String {
        let mut out = String::new();
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let written = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &self.process.registry))
            .and_then(|()| encode_eof(&mut out));
        written.expect("writing to a String cannot fail");
        out
    }
}

#[derive(Clone)]
struct Endpoint {
    metrics: Arc<Metrics>,
    shards: Vec<flume::Sender<ShardInput>>,
    data_dir: PathBuf,
    /// Since when each group the health check saw without a leader has had none.
    leaderless_since: Arc<Mutex<HashMap<u64, Instant>>>,
}

/// Every shard's group status, or `None` if a shard does not answer in time.
pub(super) async fn collect_status(shards: &[flume::Sender<ShardInput>]) -> Option<Vec<GroupStatus>> {
    let mut all = Vec::new();
    for shard in shards {
        let (reply, answer) = flume::bounded(1);
        shard.try_send(ShardInput::Status { reply }).ok()?;
        all.extend(tokio::time::timeout(SHARD_ANSWER_TIMEOUT, answer.recv_async()).await.ok()?.ok()?);
    }
    Some(all)
}

/// The body is OpenMetrics text (it ends with `# EOF`), and says so.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn scrape(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    if let Some(groups) = collect_status(&endpoint.shards).await {
        endpoint.metrics.record_groups(&groups);
    }
    endpoint.metrics.process.record();
    let data_dir = endpoint.data_dir.clone();
    if let Ok((log, snapshots)) = tokio::task::spawn_blocking(move || bytes_on_disk(&data_dir)).await {
        let as_gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        endpoint.metrics.data_bytes.get_or_create(&DataLabel { what: "log" }).set(as_gauge(log));
        endpoint.metrics.data_bytes.get_or_create(&DataLabel { what: "snapshots" }).set(as_gauge(snapshots));
    }
    ([(header::CONTENT_TYPE, OPENMETRICS)], endpoint.metrics.encode())
}

/// Bytes of the shard logs (files in each `shard-N` dir) and of the snapshot files
/// (in each `shard-N/snapshots`); what cannot be read counts nothing.
fn bytes_on_disk(data_dir: &Path) -> (u64, u64) {
    let files_in = |dir: &Path| -> u64 {
        let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
        entries.filter_map(Result::ok).filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
    };
    let Ok(entries) = std::fs::read_dir(data_dir) else { return (0, 0) };
    let shards = entries.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().starts_with("shard-"));
    shards.map(|e| e.path()).fold((0, 0), |(log, snapshots), shard| {
        (log + files_in(&shard), snapshots + files_in(&shard.join("snapshots")))
    })
}

/// How long a group may be without a leader (an election takes well under a second)
/// before `/health` says the node is not serving.
const LEADERLESS_GRACE: Duration = Duration::from_secs(5);

const JSON: &str = "application/json";

/// 200 when every shard answers and every group has had a leader within
/// [`LEADERLESS_GRACE`]; otherwise 503, so a load balancer can act on the code. The
/// body (JSON) says why. A group's leaderless time counts from the first check that
/// saw it without one.
async fn health(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    let unavailable = StatusCode::SERVICE_UNAVAILABLE;
    let Some(groups) = collect_status(&endpoint.shards).await else {
        let body = format!(
            "{{\"status\":\"unavailable\",\"reason\":\"a shard did not answer within {SHARD_ANSWER_TIMEOUT:?}\"}}\n"
        );
        return (unavailable, [(header::CONTENT_TYPE, JSON)], body);
    };
    let now = Instant::now();
    let stale = {
        let mut since = endpoint.leaderless_since.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        since.retain(|group, _| groups.iter().any(|g| g.group == *group && g.leader.is_none()));
        for g in groups.iter().filter(|g| g.leader.is_none()) {
            since.entry(g.group).or_insert(now);
        }
        since.values().filter(|t| now.duration_since(**t) >= LEADERLESS_GRACE).count()
    };
    let leaderless = groups.iter().filter(|g| g.leader.is_none()).count();
    let (code, status) = if stale > 0 { (unavailable, "unavailable") } else { (StatusCode::OK, "ok") };
    let body = format!(
        "{{\"status\":\"{status}\",\"groups\":{},\"groups_without_leader\":{leaderless},\
         \"groups_without_leader_past_grace\":{stale}}}\n",
        groups.len()
    );
    (code, [(header::CONTENT_TYPE, JSON)], body)
}

/// Serves `/metrics` and `/health` on `addr` until the runtime stops.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shards: Vec<flume::Sender<ShardInput>>,
    data_dir: PathBuf,
) -> Result<(), String> {
    let app = axum::Router::new().route("/metrics", get(scrape)).route("/health", get(health)).with_state(Endpoint {
        metrics,
        shards,
        data_dir,
        leaderless_since: Arc::default(),
    });
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}
