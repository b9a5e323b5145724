//! `quarryd`: shards on glommio executor threads, the network on a small tokio
//! runtime, joined by bounded channels.
//!
//! One listener per node serves the client (Kv, Log), admin and peer services; the
//! address in `--initial-cluster` is that listener. Requests reaching a node that does
//! not lead the key's group are forwarded to the leader once.

mod authorize;
mod bulk;
mod calls;
pub mod config;
mod connections;
mod force;
mod identity;
mod inflight;
mod members;
mod metrics;
mod placement;
mod probe;
mod process_metrics;
mod restore;
mod router;
#[macro_use]
mod service;
mod session;
mod shard_thread;
mod sql;
mod systemd;
pub mod watch;

use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use tonic::transport::Server;

use crate::log::ShardLogConfig;
use crate::proto::{
    admin_server::AdminServer, kv_server::KvServer, log_server::LogServer, peer_server::PeerServer,
    sql_server::SqlServer,
};
use crate::raft::Config;
use crate::shard::ShardConfig;
use crate::state::KEY_MAX_BYTES;
use crate::tls::ClientTls;
use crate::transport::flight::FlightEndpoint;

pub use config::{Args, NodeConfig};
pub use restore::restore;
pub use shard_thread::fail_node;

/// Names of the shards' threads: `quarry-shard-0`, `quarry-shard-1`, ...
pub const SHARD_THREAD_PREFIX: &str = "quarry-shard-";
use router::Router;
use service::Services;

/// Largest peer batch accepted beyond its largest entry: senders split batches at
/// `transport::peer::BATCH_BYTES_MAX`, so one batch is at most that plus one entry.
const PEER_MESSAGE_SLACK_BYTES: usize = crate::transport::peer::BATCH_BYTES_MAX + (1 << 20);
/// Largest client message beside its values: a session message carries up to about
/// 1 MiB of calls plus one more (the Rust client's batching), a batch request a few
/// values; tonic's own 4 MiB floor is kept.
const CLIENT_MESSAGE_MIN_BYTES: usize = 4 << 20;
/// How long requests in flight may finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Requests one connection may have in flight (clients multiplex many on one).
const REQUESTS_PER_CONNECTION_MAX: usize = 1024;
/// HTTP/2 streams one connection may open at once.
const STREAMS_PER_CONNECTION_MAX: u32 = 1024;
/// The least a node's clients may hold of unfinished request messages at once.
const NODE_BYTES_IN_FLIGHT_MIN: usize = 256 << 20;
/// Bytes a command adds around its key and value.
const COMMAND_OVERHEAD_BYTES: u64 = 64;

/// `--force-new-cluster`: rewrites the data dir as a cluster of this node alone
/// (unless it already is one), which the rest of the run then serves.
fn force_new_cluster(config: &mut NodeConfig) -> Result<(), String> {
    let node = config.node_id;
    match force::force_new_cluster(config)? {
        force::ForceOutcome::AlreadyAlone => {
            tracing::info!(node, "--force-new-cluster: this node is already a cluster of its own; nothing to do")
        }
        force::ForceOutcome::Finished => {
            tracing::warn!(
                node,
                "--force-new-cluster: finished a recovery interrupted after the old data dir was moved aside"
            )
        }
        force::ForceOutcome::Forced(forced) => tracing::warn!(
            node,
            "--force-new-cluster: this node is now a new single-member cluster; members {:?} are removed for good; \
             {} entries past their groups' known commit were applied; the old data dir is kept at {}",
            forced.removed_members,
            forced.uncommitted_applied,
            forced.kept_at.display()
        ),
    }
    let address = config.members.get(&node).copied().ok_or("this node is not in --initial-cluster")?;
    config.members = std::collections::BTreeMap::from([(node, address)]);
    Ok(())
}

/// Runs the node until SIGTERM or SIGINT. The error is one line for the operator.
pub fn run(mut config: NodeConfig) -> Result<(), String> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", config.data_dir.display()))?;
    force::refuse_unfinished(&config)?;
    if config.force_new_cluster {
        force_new_cluster(&mut config)?;
    }
    // Groups are founded once, by the founding members; afterwards (and on a node
    // joining a running cluster) they start from what the log holds.
    let initialized = identity::check(&config)?;
    let founding = config.founding && !initialized;
    let metrics = metrics::Metrics::new();
    let tls = match &config.tls {
        Some(settings) => Some(crate::tls::ServerTls::load(config.node_id, settings.clone())?),
        None => None,
    };
    let links = crate::transport::peer::PeerLinks::new(
        config.node_id,
        config.cluster_id,
        config.listen.to_string(),
        metrics.peer.clone(),
    );
    crate::state::set_change_history_bytes(config.watch_history_bytes as usize);
    let watch_hub = watch::WatchHub::new(config.groups, metrics.watchers.clone());
    let mut inboxes = Vec::with_capacity(config.shards);
    let mut threads = Vec::with_capacity(config.shards);
    for index in 0..config.shards {
        let (inbox, inbox_rx) = flume::bounded(shard_thread::INBOX_MAX);
        let shard_config = shard_config(&config, index, founding);
        let name = format!("{SHARD_THREAD_PREFIX}{index}");
        let cpu = config.placement.shard_cpus.as_ref().map(|cpus| cpus[index]);
        let host =
            shard_thread::ShardHost { links: links.clone(), metrics: metrics.clone(), watch_hub: watch_hub.clone() };
        let thread = shard_thread::spawn(name, shard_config, config.tick, cpu, inbox_rx, host)
            .map_err(|e| format!("cannot start shard {index}: {e}"))?;
        inboxes.push(inbox);
        threads.push(thread);
    }
    let network_cpus = config.placement.network_cpus.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.network_threads)
        .on_thread_start(move || {
            if let Some(cpus) = &network_cpus {
                if let Err(e) = placement::pin_current_thread(cpus) {
                    tracing::warn!("cannot pin a network thread to CPUs {cpus:?}: {e}");
                }
            }
        })
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the network runtime: {e}"))?;
    let served = runtime.block_on(serve(&config, initialized, Shards { inboxes, watch_hub }, links, metrics, tls));
    runtime.shutdown_timeout(Duration::from_secs(5));
    // Every inbox sender is gone with the runtime: the shards finish their turn and stop.
    for (index, thread) in threads.into_iter().enumerate() {
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("shard {index} failed: {e}")),
            Err(e) => return Err(format!("shard {index} panicked: {e}")),
        }
    }
    served
}

fn snapshot_dir(data_dir: &std::path::Path, shard: usize) -> std::path::PathBuf {
    data_dir.join(format!("shard-{shard}")).join("snapshots")
}

fn shard_config(config: &NodeConfig, index: usize, founding: bool) -> ShardConfig {
    let shards = config.shards as u64;
    let mut raft = Config::new(config.node_id);
    raft.election_ticks = config.election_ticks;
    raft.heartbeat_ticks = config.heartbeat_ticks;
    raft.quiesce = true;
    if config.lease_reads {
        raft.read_only = crate::raft::ReadOnlyOption::LeaseBased;
        raft.lease_drift_margin_ticks = config::LEASE_DRIFT_MARGIN_TICKS;
    }
    raft.entry_max_bytes = config.max_value_bytes + KEY_MAX_BYTES as u64 + COMMAND_OVERHEAD_BYTES;
    raft.uncommitted_max_bytes = raft.uncommitted_max_bytes.max(raft.entry_max_bytes);
    raft.seed = config.node_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index as u64;
    ShardConfig {
        node: config.node_id,
        groups: (0..config.groups).filter(|g| g % shards == index as u64).collect(),
        voters: if founding { config.members.keys().copied().collect() } else { Vec::new() },
        raft,
        log: ShardLogConfig {
            segment_bytes: config.segment_bytes,
            ..ShardLogConfig::new(config.data_dir.join(format!("shard-{index}")))
        },
        snapshot_dir: snapshot_dir(&config.data_dir, index),
        snapshot_distance: config.snapshot_distance,
    }
}

/// The shard threads' inboxes, and the hub through which they wake watchers.
struct Shards {
    inboxes: Vec<flume::Sender<shard_thread::ShardInput>>,
    watch_hub: std::sync::Arc<watch::WatchHub>,
}

async fn serve(
    config: &NodeConfig,
    initialized: bool,
    Shards { inboxes, watch_hub }: Shards,
    links: crate::transport::peer::PeerLinks,
    metrics: std::sync::Arc<metrics::Metrics>,
    tls: Option<std::sync::Arc<crate::tls::ServerTls>>,
) -> Result<(), String> {
    if let Some(addr) = config.metrics_listen {
        metrics::serve(addr, metrics.clone(), inboxes.clone(), config.data_dir.clone()).await?;
    }
    let shards = inboxes.clone();
    if !initialized {
        // Once every shard answers, its groups exist in its log.
        while metrics::collect_status(&shards).await.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        identity::write(&config.data_dir, config)?;
    }
    let founders = config.members.clone();
    let outbound = tls.as_ref().map_or_else(ClientTls::plain, |tls| tls.client());
    let router =
        Router::new(config.node_id, config.groups, config.max_value_bytes, inboxes, founders, links, metrics.clone())
            .with_tls(outbound)
            .with_watch_hub(watch_hub);
    members::follow_registry(router.clone());
    probe::probe_peers(router.clone());
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let services = Services { router, cluster_id: config.cluster_id, transfers: Default::default() };
    let flight = FlightEndpoint::new((0..config.shards).map(|i| snapshot_dir(&config.data_dir, i)).collect())
        .with_records(std::sync::Arc::new(services.clone()))
        .with_changes(std::sync::Arc::new(services.clone()))
        .with_entries(std::sync::Arc::new(services.clone()))
        .with_gate(std::sync::Arc::new(services.clone()));
    tracing::info!(
        node = config.node_id,
        "serving on {} ({} shards, {} network threads; {})",
        config.listen,
        config.shards,
        config.network_threads,
        config.placement.describe()
    );
    match &tls {
        Some(tls) => reload_on_sighup(tls.clone(), config.node_id),
        None => tracing::warn!(
            node = config.node_id,
            "serving plain text without authentication: anyone who reaches {} may read, write and administer \
             the cluster (set --cert-file, --key-file and the CA files for TLS)",
            config.listen
        ),
    }
    systemd::announce_when_ready(shards);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // Separate limits: a client cannot send what only a peer needs (a 64 MiB batch).
    let value_max = config.max_value_bytes as usize;
    let client_message_max = CLIENT_MESSAGE_MIN_BYTES.max(2 * value_max + (1 << 20));
    let peer_message_max = PEER_MESSAGE_SLACK_BYTES + value_max + KEY_MAX_BYTES + COMMAND_OVERHEAD_BYTES as usize;
    // Unfinished messages: a connection may hold two of the largest, the node (for its
    // clients; peers are held to their connection's budget) four, and 256 MiB at least.
    let message_max = client_message_max.max(peer_message_max);
    let limits = connections::Limits {
        connections: config.connections_max,
        connection_bytes: 2 * message_max,
        idle_timeout: config.idle_timeout,
    };
    let node_bytes = (4 * message_max).max(NODE_BYTES_IN_FLIGHT_MIN);
    let server = Server::builder()
        .layer(inflight::InFlightLayer::new(node_bytes))
        .http2_adaptive_window(Some(true))
        .http2_keepalive_interval(Some(crate::transport::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(crate::transport::KEEPALIVE_TIMEOUT))
        .concurrency_limit_per_connection(REQUESTS_PER_CONNECTION_MAX)
        .max_concurrent_streams(STREAMS_PER_CONNECTION_MAX)
        .add_service(KvServer::new(services.clone()).max_decoding_message_size(client_message_max))
        .add_service(LogServer::new(services.clone()).max_decoding_message_size(client_message_max))
        .add_service(SqlServer::new(services.clone()).max_decoding_message_size(client_message_max))
        .add_service(AdminServer::new(services.clone()))
        .add_service(PeerServer::new(services).max_decoding_message_size(peer_message_max))
        .add_service(FlightServiceServer::new(flight))
        .serve_with_incoming_shutdown(connections::accept_bounded(listener, limits, tls, metrics), async {
            let _ = stopped.await;
        });
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result.map_err(|e| format!("server failed: {e}"))?,
        () = shutdown_signal() => {
            tracing::info!(node = config.node_id, "stopping");
            systemd::stopping();
            let _ = stop.send(());
            // Requests in flight get a grace period; peers' streams never end by
            // themselves, so the server is not waited for beyond it.
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, server).await;
        }
    }
    Ok(())
}

/// Rereads the TLS files on SIGHUP: new connections (and reconnections) use them;
/// open ones keep theirs, so the cluster does not notice. A bad file changes nothing.
fn reload_on_sighup(tls: std::sync::Arc<crate::tls::ServerTls>, node: crate::raft::NodeId) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!(node, "cannot catch SIGHUP; TLS files reload only at restart");
        return;
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!(node, "TLS files reloaded"),
                Err(e) => tracing::warn!(node, "TLS files not reloaded, the old ones stay: {e}"),
            }
        }
    });
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers the node runs until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
