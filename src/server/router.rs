//! Routes a request to its group's shard, waits for the answer, and forwards it to
//! the group's leader when this node does not lead.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tonic::transport::Channel;
use tonic::Status;

use crate::group::{group_of_key, RequestError};
use crate::log::GroupId;
use crate::proto::admin_client::AdminClient;
use crate::proto::kv_client::KvClient;
use crate::proto::log_client::LogClient;
use crate::proto::sql_client::SqlClient;
use crate::raft::NodeId;
use crate::shard::Query;
use crate::state::{BuiltinState, Command, Outcome};
use crate::tls::ClientTls;

use super::members::AddressBook;
use super::metrics::{MethodLabel, Metrics};
use super::shard_thread::ShardInput;
use super::watch::WatchHub;
use crate::transport::peer::PeerLinks;

/// How long a request may wait for its shard's answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Metadata marking a request already forwarded once (to stop forwarding loops).
pub const FORWARDED: &str = "x-quarry-forwarded";

#[derive(Clone)]
pub struct Router {
    pub node: NodeId,
    pub groups: u64,
    pub max_value_bytes: u64,
    shards: Vec<flume::Sender<ShardInput>>,
    pub book: AddressBook,
    /// `--initial-cluster`: the members until the registry is first written.
    pub founders: BTreeMap<NodeId, SocketAddr>,
    pub links: PeerLinks,
    /// One lazily connected channel per peer, for the address it was made for.
    channels: Arc<Mutex<BTreeMap<NodeId, (SocketAddr, Channel)>>>,
    metrics: Arc<Metrics>,
    /// How this node connects to its peers.
    pub tls: ClientTls,
    /// What the shards tell watchers.
    watch_hub: Arc<WatchHub>,
}

impl Router {
    pub fn new(
        node: NodeId,
        groups: u64,
        max_value_bytes: u64,
        shards: Vec<flume::Sender<ShardInput>>,
        founders: BTreeMap<NodeId, SocketAddr>,
        links: PeerLinks,
        metrics: Arc<Metrics>,
    ) -> Self {
        let book = AddressBook::new(founders.clone());
        let tls = ClientTls::plain();
        let watch_hub = WatchHub::new(groups, Default::default());
        let channels = Arc::default();
        Router { node, groups, max_value_bytes, shards, book, founders, links, channels, metrics, tls, watch_hub }
    }

    /// Shares the hub the shard threads publish to.
    pub fn with_watch_hub(mut self, hub: Arc<WatchHub>) -> Self {
        self.watch_hub = hub;
        self
    }

    pub fn with_tls(mut self, tls: ClientTls) -> Self {
        self.tls = tls;
        self
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn observe(&self, method: &'static str, outcome: &'static str, started: Instant) {
        let label = MethodLabel { method, outcome };
        self.metrics.request_seconds.get_or_create(&label).observe(started.elapsed().as_secs_f64());
    }

    /// A key's group: a stable hash, so every node and version agrees.
    pub fn group_of(&self, key: &[u8]) -> GroupId {
        group_of_key(key, self.groups)
    }

    pub fn shard_of(&self, group: GroupId) -> &flume::Sender<ShardInput> {
        &self.shards[(group % self.shards.len() as u64) as usize]
    }

    pub fn peer_counters(&self) -> &crate::transport::peer::PeerCounters {
        &self.metrics.peer
    }

    pub fn shards(&self) -> &[flume::Sender<ShardInput>] {
        &self.shards
    }

    /// Hands `input` to its shard; when the shard cannot take it, its reply hears why
    /// (nothing was done).
    pub fn submit(&self, group: GroupId, input: ShardInput) {
        if let Err(e) = self.shard_of(group).try_send(input) {
            let (input, why) = match e {
                flume::TrySendError::Full(input) => (input, RequestError::Overloaded("shard queue full".into())),
                flume::TrySendError::Disconnected(input) => (input, RequestError::NotLeader { leader: None }),
            };
            input.refuse(why);
        }
    }

    pub async fn propose(&self, group: GroupId, command: Command) -> Result<Outcome, RequestError> {
        let (reply, answer) = flume::bounded(1);
        let started = Instant::now();
        self.submit(group, ShardInput::Propose { group, command, reply: reply.into() });
        let result = wait(answer).await;
        let outcome = super::metrics::outcome_of(&result);
        self.observe("write", outcome, started);
        // Not being the leader is routing, not failure: the request goes on to the leader.
        if result.is_err() && outcome != "not_leader" {
            self.metrics.proposals_failed.get_or_create(&super::metrics::ReasonLabel { reason: outcome }).inc();
        }
        result
    }

    pub async fn read(
        &self,
        group: GroupId,
        query: Query<BuiltinState>,
        serializable: bool,
    ) -> Result<Bytes, RequestError> {
        let started = Instant::now();
        let result = self.read_internal(group, query, serializable).await;
        let method = if serializable { "read_serializable" } else { "read" };
        self.observe(method, super::metrics::outcome_of(&result), started);
        result
    }

    /// A read Quarry makes for itself (the member registry, say): not counted as a
    /// client request.
    pub async fn read_internal(
        &self,
        group: GroupId,
        query: Query<BuiltinState>,
        serializable: bool,
    ) -> Result<Bytes, RequestError> {
        let (reply, answer) = flume::bounded(1);
        self.submit(group, ShardInput::Read { group, query, reply: reply.into(), serializable });
        wait(answer).await
    }

    /// Runs `f` on the group's state on its shard thread (a serializable read that
    /// hands back any type, not bytes).
    pub async fn read_local_with<T: Send + 'static>(
        &self,
        group: GroupId,
        f: impl FnOnce(&BuiltinState) -> T + Send + 'static,
    ) -> Result<T, RequestError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let query: Query<BuiltinState> = Box::new(move |state| {
            let _ = tx.send(f(state));
            Bytes::new()
        });
        self.read_internal(group, query, true).await?;
        // The shard ran the query before it answered.
        rx.try_recv().map_err(|_| RequestError::Unknown)
    }

    pub fn watch_hub(&self) -> &Arc<WatchHub> {
        &self.watch_hub
    }

    /// A channel to `node`'s gRPC address, connected lazily and reused.
    pub fn channel(&self, node: NodeId) -> Option<Channel> {
        let addr = self.book.get(node)?;
        let mut channels = self.channels.lock().expect("channel cache lock");
        match channels.get(&node) {
            Some((cached, channel)) if *cached == addr => Some(channel.clone()),
            _ => {
                let endpoint = crate::transport::endpoint(addr).expect("socket addresses are valid URIs");
                let channel = self.tls.channel(endpoint);
                channels.insert(node, (addr, channel.clone()));
                Some(channel)
            }
        }
    }

    /// Opens the peer stream to `node` if it has an address and none is open.
    pub fn connect(&self, node: NodeId) {
        if let Some(channel) = self.channel(node) {
            self.links.connect(node, channel);
        }
    }

    /// Learns a peer's address from its batch (see [`AddressBook`]) and streams to it.
    pub fn learn_peer(&self, node: NodeId, address: &str) {
        if node == self.node || self.book.get(node).is_some() {
            return;
        }
        if let Ok(address) = address.parse() {
            if self.book.learn(node, address) {
                self.connect(node);
            }
        }
    }

    pub fn admin_client(&self, node: NodeId) -> Option<AdminClient<Channel>> {
        self.channel(node).map(AdminClient::new)
    }

    pub fn kv_client(&self, node: NodeId) -> Option<KvClient<Channel>> {
        self.channel(node).map(KvClient::new)
    }

    pub fn log_client(&self, node: NodeId) -> Option<LogClient<Channel>> {
        self.channel(node).map(LogClient::new)
    }

    pub fn sql_client(&self, node: NodeId) -> Option<SqlClient<Channel>> {
        self.channel(node).map(SqlClient::new)
    }
}

async fn wait<T>(answer: flume::Receiver<Result<T, RequestError>>) -> Result<T, RequestError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, answer.recv_async()).await {
        Ok(Ok(result)) => result,
        // The shard stopped with the request in hand: it may have been carried out.
        Ok(Err(_)) | Err(_) => Err(RequestError::Unknown),
    }
}

/// The gRPC status for a request error.
pub fn status_of(e: RequestError) -> Status {
    match e {
        RequestError::NotLeader { leader: Some(leader) } => {
            Status::unavailable(format!("not the leader; the leader is node {leader}"))
        }
        RequestError::NotLeader { leader: None } => Status::unavailable("the group has no leader yet; retry"),
        RequestError::UnknownGroup(g) => Status::internal(format!("group {g} is not hosted here")),
        RequestError::Refused(reason) => Status::failed_precondition(reason),
        RequestError::Unknown => Status::unavailable(
            "outcome unknown (leadership changed or timed out); retrying with the same client_id and sequence is safe",
        ),
        RequestError::Dropped => Status::aborted("the write was dropped by a leader change; retry"),
        RequestError::NotFound(what) => Status::not_found(what),
        RequestError::Invalid(what) => Status::invalid_argument(what),
        RequestError::Overloaded(reason) => Status::resource_exhausted(format!("node overloaded ({reason}); retry")),
        RequestError::DiskFull(reason) => {
            Status::resource_exhausted(format!("the leader's disk is full; the write was not made: {reason}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_error_has_one_code_and_overload_is_retryable_not_a_refusal() {
        use tonic::Code;
        let code = |e: RequestError| status_of(e).code();
        assert_eq!(code(RequestError::Overloaded("shard queue full".into())), Code::ResourceExhausted);
        assert_eq!(code(RequestError::DiskFull("no space".into())), Code::ResourceExhausted);
        assert_eq!(code(RequestError::NotLeader { leader: Some(2) }), Code::Unavailable);
        assert_eq!(code(RequestError::NotLeader { leader: None }), Code::Unavailable);
        assert_eq!(code(RequestError::Unknown), Code::Unavailable);
        assert_eq!(code(RequestError::Dropped), Code::Aborted);
        assert_eq!(code(RequestError::Refused("bad".into())), Code::FailedPrecondition);
        // The core's own back-pressure is overload too, and a transfer under way means
        // "no leader yet", both retried by clients.
        let full = crate::raft::ProposeError::UncommittedFull { max_bytes: 1 };
        assert!(matches!(RequestError::from(full), RequestError::Overloaded(_)));
        let moving = crate::raft::ProposeError::TransferInProgress { to: 3 };
        assert_eq!(RequestError::from(moving), RequestError::NotLeader { leader: None });
    }

    #[test]
    fn a_request_the_shard_cannot_take_is_answered_overloaded_not_dropped() {
        // A shard whose inbox holds nothing: every request finds it full.
        let (inbox, _shard) = flume::bounded(0);
        let links = PeerLinks::new(1, 1, "127.0.0.1:1".into(), Default::default());
        let router = Router::new(1, 8, 1 << 20, vec![inbox], BTreeMap::new(), links, Metrics::new());
        let (reply, answer) = flume::bounded(1);
        let operation = crate::state::Operation::Delete { key: "k".into() };
        let command = Command { client: 1, sequence: 1, operation };
        router.submit(0, ShardInput::Propose { group: 0, command, reply: reply.into() });
        assert_eq!(answer.try_recv(), Ok(Err(RequestError::Overloaded("shard queue full".into()))));
        assert_eq!(
            status_of(RequestError::Overloaded("shard queue full".into())).code(),
            tonic::Code::ResourceExhausted
        );
    }
}
