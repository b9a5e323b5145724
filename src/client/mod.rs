//! A Rust client for Quarry. It learns which node leads each group (from the nodes'
//! status and from the leader named in every answer) and sends a key's calls straight
//! there, on one session per node; a node that does not lead the group answers with
//! the leader's id and the call goes there. A call that meets a leaderless moment, an
//! overloaded node or a broken session is retried (writes carry a client id and
//! sequence, so a retry applies once).

mod session;
mod watch;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::RngCore;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::group::group_of_key;
use crate::proto::admin_client::AdminClient;
use crate::proto::kv_client::KvClient;
use crate::proto::sql_client::SqlClient;
use crate::proto::{
    session_answer, session_call, CasRequest, DeleteRequest, GetRequest, KeyValue, LogAppendRequest, PutRequest,
    RangeRequest, ResponseHeader, StatusRequest, StatusResponse,
};
use crate::raft::NodeId;
use crate::tls::ClientTls;
use session::SessionLink;
pub use watch::{Watch, WatchOptions};

/// A write session: the state machine remembers each client id's latest sequence
/// and refuses older ones, so one id must never have two writes in flight. Each
/// write borrows a lane and gives it back, its sequence advanced, when it is done.
struct Lane {
    client_id: u64,
    next_sequence: u64,
}

struct LaneGuard<'a> {
    client: &'a Client,
    lane: Lane,
}

impl Drop for LaneGuard<'_> {
    fn drop(&mut self) {
        let lane = Lane { client_id: self.lane.client_id, next_sequence: self.lane.next_sequence + 1 };
        self.client.lanes.lock().expect("lanes lock").push(lane);
    }
}

/// What the client knows of the cluster's layout.
#[derive(Default)]
struct Routing {
    /// Endpoint position of each node id seen.
    endpoint_of_node: BTreeMap<NodeId, usize>,
    groups: u64,
    leaders: BTreeMap<u64, NodeId>,
    discovered: bool,
}

/// How long a call keeps retrying while the cluster has no leader for its group (or
/// is overloaded), unless set with [`Client::with_deadline`]; past it, a write whose
/// outcome is not known is reported unknown.
pub const RETRY_DEADLINE: Duration = Duration::from_secs(10);
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// The longest pause between retries (pauses double from `RETRY_PAUSE`).
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(800);
/// One attempt at one node: past it the attempt is abandoned and the call tried at
/// another node (a write with the same client id and sequence, so it applies once).
/// A node that accepts connections but never answers costs this, not the call.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long discovery waits for each node's status (all are asked at once).
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(2);

/// What a call may be retried after: no leader or a leader change (`Unavailable`,
/// `Aborted`: a write whose outcome is unknown is retried with its client id and
/// sequence, so it applies once) and an overloaded or full node (`ResourceExhausted`:
/// nothing was done).
fn retryable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::Aborted | Code::ResourceExhausted)
}

/// Whether the call's connection broke before an answer came (tonic reports
/// `Cancelled` or `Unknown` with a transport error as the source).
fn lost_in_transport(status: &Status) -> bool {
    matches!(status.code(), Code::Cancelled | Code::Unknown)
        && std::error::Error::source(status).is_some_and(|e| e.downcast_ref::<tonic::transport::Error>().is_some())
}

pub struct Client {
    /// How channels to the nodes (and to members learned later) are made.
    tls: ClientTls,
    endpoints: Vec<String>,
    channels: Vec<Channel>,
    /// One session per endpoint, carrying every key call to that node.
    sessions: Vec<SessionLink>,
    /// Idle session lanes (see [`Lane`]).
    lanes: Mutex<Vec<Lane>>,
    next: AtomicU64,
    routing: Mutex<Routing>,
    /// How long one call keeps retrying.
    deadline: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad endpoint {0:?}")]
    Endpoint(String),
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] Status),
    #[error("the node answered a different call: {0}")]
    Unexpected(String),
}

/// The key a batch operation writes.
fn batch_key(op: &crate::proto::BatchOp) -> Option<Bytes> {
    use crate::proto::batch_op::Op;
    match op.op.as_ref()? {
        Op::Put(p) => Some(p.key.clone()),
        Op::Delete(d) => Some(d.key.clone()),
        Op::Cas(c) => Some(c.key.clone()),
    }
}

fn unexpected(answer: session_answer::Result) -> ClientError {
    ClientError::Unexpected(format!("{answer:?}"))
}

fn header_of(answer: &session_answer::Result) -> Option<&ResponseHeader> {
    match answer {
        session_answer::Result::Put(a) => a.header.as_ref(),
        session_answer::Result::Get(a) => a.header.as_ref().filter(|h| h.leader != 0),
        session_answer::Result::Delete(a) => a.header.as_ref(),
        session_answer::Result::Cas(a) => a.header.as_ref(),
        session_answer::Result::Append(a) => a.header.as_ref(),
        session_answer::Result::Error(_) => None,
    }
}

impl Client {
    /// A client for the nodes at `addrs` (host:port), in plain text. Connections
    /// open lazily.
    pub fn new(addrs: &[String]) -> Result<Client, ClientError> {
        Client::with_tls(addrs, ClientTls::plain())
    }

    /// A client for the nodes at `addrs`, over TLS when `tls` is on.
    pub fn with_tls(addrs: &[String], tls: ClientTls) -> Result<Client, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::Endpoint(String::new()));
        }
        let channels: Vec<Channel> = addrs
            .iter()
            .map(|a| {
                crate::transport::endpoint(a).map(|e| tls.channel(e)).map_err(|_| ClientError::Endpoint(a.clone()))
            })
            .collect::<Result<_, _>>()?;
        let routing = Mutex::new(Routing::default());
        let sessions = channels.iter().cloned().map(SessionLink::new).collect();
        Ok(Client {
            tls,
            endpoints: addrs.to_vec(),
            channels,
            sessions,
            lanes: Mutex::default(),
            next: AtomicU64::new(0),
            routing,
            deadline: RETRY_DEADLINE,
        })
    }

    /// How long each call keeps retrying before it fails (or, for a write whose
    /// answer never came, is reported unknown).
    pub fn with_deadline(mut self, deadline: Duration) -> Client {
        self.deadline = deadline;
        self
    }

    /// The next write this client makes carries `client_id` and `sequence` (nonzero),
    /// so running the same command again with the same pair applies it once. Writes
    /// after it continue that client's sequence.
    pub fn with_identity(self, client_id: u64, sequence: u64) -> Client {
        self.lanes.lock().expect("lanes lock").push(Lane { client_id, next_sequence: sequence });
        self
    }

    /// The endpoints this client was given, comma-separated (for messages).
    pub fn endpoints(&self) -> String {
        self.endpoints.join(",")
    }

    /// How this client connects (for channels to other members, e.g. over Flight).
    pub fn tls(&self) -> &ClientTls {
        &self.tls
    }

    /// A session lane for one write: an idle one, or a new one when every lane is
    /// busy (so there are as many lanes as writes this client ever had in flight).
    fn lane(&self) -> LaneGuard<'_> {
        let idle = self.lanes.lock().expect("lanes lock").pop();
        let lane = idle.unwrap_or_else(|| Lane { client_id: rand::rng().next_u64() | 1, next_sequence: 1 });
        LaneGuard { client: self, lane }
    }

    /// Learns node ids, the group count and current leaders from the nodes' status,
    /// once, asking every node at once. Nodes that do not answer within
    /// `DISCOVERY_TIMEOUT` are skipped; routing then falls back to any node.
    async fn discover(&self) {
        if self.routing.lock().expect("routing lock").discovered {
            return;
        }
        let asks = self.channels.iter().map(|channel| {
            let mut admin = AdminClient::new(channel.clone());
            async move { tokio::time::timeout(DISCOVERY_TIMEOUT, admin.status(StatusRequest {})).await }
        });
        let answers = futures::future::join_all(asks).await;
        let mut learned = Routing { discovered: true, ..Routing::default() };
        for (i, answer) in answers.into_iter().enumerate() {
            let Ok(Ok(status)) = answer else { continue };
            let status = status.into_inner();
            learned.endpoint_of_node.insert(status.node, i);
            learned.groups = learned.groups.max(status.groups.iter().map(|g| g.group + 1).max().unwrap_or(0));
            learned.leaders.extend(status.groups.iter().filter(|g| g.leader != 0).map(|g| (g.group, g.leader)));
        }
        *self.routing.lock().expect("routing lock") = learned;
    }

    /// The endpoint of `key`'s group leader if known, else any node.
    fn endpoint_for(&self, key: &[u8]) -> usize {
        let routing = self.routing.lock().expect("routing lock");
        if routing.groups > 0 {
            let group = group_of_key(key, routing.groups);
            if let Some(i) = routing.leaders.get(&group).and_then(|leader| routing.endpoint_of_node.get(leader)) {
                return *i;
            }
        }
        drop(routing);
        self.next.fetch_add(1, Ordering::Relaxed) as usize % self.channels.len()
    }

    /// The channel to `key`'s group leader if known, else any node.
    fn channel_for(&self, key: &[u8]) -> Channel {
        self.channels[self.endpoint_for(key)].clone()
    }

    /// Remembers the leader an answer named (or forgets a leader that failed us).
    fn learn(&self, header: Option<&ResponseHeader>, key: &[u8], failed: bool) {
        let mut routing = self.routing.lock().expect("routing lock");
        if routing.groups == 0 {
            return;
        }
        let group = group_of_key(key, routing.groups);
        match header {
            _ if failed => {
                routing.leaders.remove(&group);
            }
            Some(h) if h.leader != 0 => {
                routing.leaders.insert(h.group, h.leader);
            }
            _ => {}
        }
    }

    /// Runs `call` for `key` (at its leader when known) until it succeeds, fails for
    /// good, or the retry deadline passes.
    async fn retry<T, F, Fut>(
        &self,
        key: &[u8],
        header: impl Fn(&T) -> Option<&ResponseHeader>,
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        self.discover().await;
        let deadline = Instant::now() + self.deadline;
        loop {
            let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, call(self.channel_for(key)));
            let answer = attempt.await.unwrap_or_else(|_| Err(Status::unavailable("the node did not answer in time")));
            match answer {
                // A connection that broke mid-call (the node died) loses the answer,
                // not the call's safety: a write carries its client id and sequence.
                Err(s) if (retryable(s.code()) || lost_in_transport(&s)) && Instant::now() < deadline => {
                    self.learn(None, key, true);
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Ok(answer) => {
                    self.learn(header(&answer), key, false);
                    return Ok(answer);
                }
                Err(s) if lost_in_transport(&s) => {
                    return Err(ClientError::from(Status::unavailable(format!(
                        "outcome unknown: the connection broke before an answer came ({}); retrying with the same \
                         client_id and sequence is safe",
                        s.message()
                    ))))
                }
                Err(s) => return Err(ClientError::from(s)),
            }
        }
    }

    /// Sends `op` for `key` on the session with its leader (when known) until it is
    /// answered, fails for good, or the retry deadline passes. A node that is not the
    /// leader names it, and the call goes there at once.
    async fn call(&self, key: &[u8], op: session_call::Op) -> Result<session_answer::Result, ClientError> {
        self.discover().await;
        let deadline = Instant::now() + self.deadline;
        let mut pause = RETRY_PAUSE;
        loop {
            let endpoint = self.endpoint_for(key);
            let attempt_deadline = deadline.min(Instant::now() + ATTEMPT_TIMEOUT);
            let attempt = self.sessions[endpoint].call(op.clone());
            let (status, redirected) = match tokio::time::timeout_at(attempt_deadline.into(), attempt).await {
                Ok(Ok(session_answer::Result::Error(error))) => {
                    let redirected = error.leader != 0 && self.learn_leader(key, error.leader);
                    (Status::new(Code::from(error.code), error.message), redirected)
                }
                Ok(Ok(answer)) => {
                    self.learn(header_of(&answer), key, false);
                    return Ok(answer);
                }
                Ok(Err(lost)) => (lost, false),
                // This node did not answer in time: try another (the write carries its
                // client id and sequence, so it applies once).
                Err(_) if Instant::now() < deadline => (Status::unavailable("the node did not answer in time"), false),
                // A read changed nothing: it simply failed.
                Err(_) if matches!(op, session_call::Op::Get(_)) => {
                    (Status::unavailable(format!("no node answered within {:?}", self.deadline)), false)
                }
                Err(_) => (
                    Status::deadline_exceeded(format!(
                        "outcome unknown: no answer within {:?}; retrying with the same client_id and \
                     sequence is safe",
                        self.deadline
                    )),
                    false,
                ),
            };
            if !retryable(status.code()) || Instant::now() >= deadline {
                return Err(ClientError::from(status));
            }
            if !redirected {
                self.learn(None, key, true);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_PAUSE_MAX);
            }
        }
    }

    /// Remembers `leader` for `key`'s group; whether it is a node this client can reach.
    fn learn_leader(&self, key: &[u8], leader: NodeId) -> bool {
        let mut routing = self.routing.lock().expect("routing lock");
        if routing.groups == 0 || !routing.endpoint_of_node.contains_key(&leader) {
            return false;
        }
        let group = group_of_key(key, routing.groups);
        routing.leaders.insert(group, leader);
        true
    }

    /// Writes `value` under `key`; returns the new revision.
    pub async fn put(&self, key: Bytes, value: Bytes) -> Result<u64, ClientError> {
        let lane = self.lane();
        let (client_id, sequence) = (lane.lane.client_id, lane.lane.next_sequence);
        let op = session_call::Op::Put(PutRequest { key: key.clone(), value, client_id, sequence });
        match self.call(&key, op).await? {
            session_answer::Result::Put(answer) => Ok(answer.revision),
            other => Err(unexpected(other)),
        }
    }

    /// The value and revision under `key`, read linearizably unless `serializable`.
    pub async fn get(&self, key: Bytes, serializable: bool) -> Result<Option<(Bytes, u64)>, ClientError> {
        let op = session_call::Op::Get(GetRequest { key: key.clone(), serializable });
        match self.call(&key, op).await? {
            session_answer::Result::Get(answer) => Ok(answer.found.then_some((answer.value, answer.revision))),
            other => Err(unexpected(other)),
        }
    }

    /// Keys in `[start, end)` (empty `end`: to the last key) across every group, in key
    /// order, at most `limit`; and whether more remain.
    pub async fn range(
        &self,
        start: Bytes,
        end: Bytes,
        limit: u32,
        serializable: bool,
    ) -> Result<(Vec<KeyValue>, bool), ClientError> {
        let request = RangeRequest { start: start.clone(), end, limit, serializable, group: None };
        let response = self
            .retry(
                &start,
                |_: &tonic::Response<crate::proto::RangeResponse>| None,
                |ch| {
                    let request = request.clone();
                    async move {
                        KvClient::new(ch).max_decoding_message_size(session::RESPONSE_MAX_BYTES).range(request).await
                    }
                },
            )
            .await?
            .into_inner();
        Ok((response.kvs, response.more))
    }

    /// Deletes `key`; returns whether it existed.
    pub async fn delete(&self, key: Bytes) -> Result<bool, ClientError> {
        let lane = self.lane();
        let (client_id, sequence) = (lane.lane.client_id, lane.lane.next_sequence);
        let op = session_call::Op::Delete(DeleteRequest { key: key.clone(), client_id, sequence });
        match self.call(&key, op).await? {
            session_answer::Result::Delete(answer) => Ok(answer.existed),
            other => Err(unexpected(other)),
        }
    }

    /// Writes `value` under `key` if the key's revision is `expected_revision` (0: the
    /// key must not exist). Returns whether it did, and the new or current revision.
    pub async fn cas(&self, key: Bytes, expected_revision: u64, value: Bytes) -> Result<(bool, u64), ClientError> {
        let lane = self.lane();
        let (client_id, sequence) = (lane.lane.client_id, lane.lane.next_sequence);
        let op = session_call::Op::Cas(CasRequest { key: key.clone(), expected_revision, value, client_id, sequence });
        match self.call(&key, op).await? {
            session_answer::Result::Cas(answer) => Ok((answer.succeeded, answer.revision)),
            other => Err(unexpected(other)),
        }
    }

    /// Appends `data` to the named log; returns its 1-based position there.
    pub async fn append(&self, log: &str, data: Bytes) -> Result<u64, ClientError> {
        let lane = self.lane();
        let (client_id, sequence) = (lane.lane.client_id, lane.lane.next_sequence);
        let op = session_call::Op::Append(LogAppendRequest { log: log.to_string(), data, client_id, sequence });
        match self.call(log.as_bytes(), op).await? {
            session_answer::Result::Append(answer) => Ok(answer.index),
            other => Err(unexpected(other)),
        }
    }

    /// Applies `ops` atomically (every key must map to one group): all or none. A
    /// retry carries the same client id and sequence, so the batch applies once.
    pub async fn batch(&self, ops: Vec<crate::proto::BatchOp>) -> Result<crate::proto::BatchResponse, ClientError> {
        let key = ops.iter().find_map(batch_key).unwrap_or_default();
        let lane = self.lane();
        let request =
            crate::proto::BatchRequest { ops, client_id: lane.lane.client_id, sequence: lane.lane.next_sequence };
        let answer = self
            .retry(
                &key,
                |r: &tonic::Response<crate::proto::BatchResponse>| r.get_ref().header.as_ref(),
                |ch| {
                    let request = request.clone();
                    async move { KvClient::new(ch).batch(request).await }
                },
            )
            .await?;
        Ok(answer.into_inner())
    }

    /// Records of the named log from 1-based `from`, at most `limit` (linearizable
    /// unless `serializable`).
    pub async fn read_log(
        &self,
        log: &str,
        from: u64,
        limit: u32,
        serializable: bool,
    ) -> Result<crate::proto::LogReadResponse, ClientError> {
        let request = crate::proto::LogReadRequest { log: log.to_string(), from, limit, serializable };
        let answer = self
            .retry(
                log.as_bytes(),
                |r: &tonic::Response<crate::proto::LogReadResponse>| r.get_ref().header.as_ref(),
                |ch| {
                    let request = request.clone();
                    async move {
                        crate::proto::log_client::LogClient::new(ch)
                            .max_decoding_message_size(session::RESPONSE_MAX_BYTES)
                            .read(request)
                            .await
                    }
                },
            )
            .await?;
        Ok(answer.into_inner())
    }

    /// Applies `statements` to `database` atomically (creating it on first use). A
    /// retry carries the same client id and sequence, so the write applies once.
    pub async fn sql_execute(
        &self,
        database: &str,
        statements: Vec<crate::proto::SqlStatement>,
    ) -> Result<crate::proto::SqlExecuteResponse, ClientError> {
        let lane = self.lane();
        let request = crate::proto::SqlExecuteRequest {
            database: database.to_string(),
            statements,
            client_id: lane.lane.client_id,
            sequence: lane.lane.next_sequence,
        };
        let answer = self
            .retry(
                database.as_bytes(),
                |r: &tonic::Response<crate::proto::SqlExecuteResponse>| r.get_ref().header.as_ref(),
                |ch| {
                    let request = request.clone();
                    async move { SqlClient::new(ch).execute(request).await }
                },
            )
            .await?;
        Ok(answer.into_inner())
    }

    /// Runs a read-only statement on `database` (linearizable unless `serializable`).
    pub async fn sql_query(
        &self,
        database: &str,
        statement: crate::proto::SqlStatement,
        serializable: bool,
        max_rows: u32,
    ) -> Result<crate::proto::SqlQueryResponse, ClientError> {
        let request = crate::proto::SqlQueryRequest {
            database: database.to_string(),
            statement: Some(statement),
            serializable,
            max_rows,
        };
        let answer = self
            .retry(
                database.as_bytes(),
                |r: &tonic::Response<crate::proto::SqlQueryResponse>| r.get_ref().header.as_ref(),
                |ch| {
                    let request = request.clone();
                    async move {
                        SqlClient::new(ch).max_decoding_message_size(session::RESPONSE_MAX_BYTES).query(request).await
                    }
                },
            )
            .await?;
        Ok(answer.into_inner())
    }

    /// The schema objects of `database` and its latest schema changes.
    pub async fn sql_schema(
        &self,
        database: &str,
        serializable: bool,
    ) -> Result<crate::proto::SqlSchemaResponse, ClientError> {
        let request = crate::proto::SqlSchemaRequest { database: database.to_string(), serializable };
        let answer = self
            .retry(
                database.as_bytes(),
                |r: &tonic::Response<crate::proto::SqlSchemaResponse>| r.get_ref().header.as_ref(),
                |ch| {
                    let request = request.clone();
                    async move { SqlClient::new(ch).schema(request).await }
                },
            )
            .await?;
        Ok(answer.into_inner())
    }

    /// The status of the node at position `node` in the address list (unavailable
    /// if it does not answer within `ATTEMPT_TIMEOUT`).
    pub async fn status(&self, node: usize) -> Result<StatusResponse, ClientError> {
        let channel = self.channels.get(node).cloned().ok_or_else(|| ClientError::Endpoint(node.to_string()))?;
        let mut admin = AdminClient::new(channel);
        let endpoint = self.endpoint(node);
        match tokio::time::timeout(ATTEMPT_TIMEOUT, admin.status(StatusRequest {})).await {
            Ok(Ok(answer)) => Ok(answer.into_inner()),
            Ok(Err(e)) if e.code() == Code::Unavailable => {
                Err(Status::unavailable(format!("{endpoint} did not answer in time: {}", e.message())).into())
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(Status::unavailable(format!("{endpoint} did not answer in time")).into()),
        }
    }

    /// The node this client believes leads `key`'s group, if it knows.
    pub fn leader_of(&self, key: &[u8]) -> Option<NodeId> {
        let routing = self.routing.lock().expect("routing lock");
        (routing.groups > 0).then(|| routing.leaders.get(&group_of_key(key, routing.groups)).copied()).flatten()
    }

    /// Endpoint `node` as given.
    pub fn endpoint(&self, node: usize) -> String {
        self.endpoints.get(node).cloned().unwrap_or_default()
    }

    /// An admin client for endpoint `node` (index into the endpoints given).
    pub fn admin(&self, node: usize) -> Option<AdminClient<Channel>> {
        self.channels.get(node).cloned().map(AdminClient::new)
    }

    pub fn nodes(&self) -> usize {
        self.channels.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaderless_moments_overload_and_unknown_outcomes_are_retried_refusals_are_not() {
        for code in [Code::Unavailable, Code::Aborted, Code::ResourceExhausted] {
            assert!(retryable(code), "{code:?}");
        }
        for code in [Code::InvalidArgument, Code::FailedPrecondition, Code::NotFound, Code::Internal] {
            assert!(!retryable(code), "{code:?}");
        }
    }
}
