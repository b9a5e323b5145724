//! The gRPC services a node serves: Kv, Log, Admin and Peer.

use std::pin::Pin;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::group::RequestError;
use crate::log::GroupId;
use crate::proto::admin_client::AdminClient;
use crate::proto::{self, admin_server::Admin, kv_server::Kv, log_server::Log, peer_server::Peer, raft_message};
use crate::raft::{ConfChange, NodeId, SingleChange};
use crate::shard::{CatchUp, EntryRange};
use crate::state::{BuiltinState, Command, Operation, Outcome, KEY_MAX_BYTES};
use crate::transport::flight::{
    BoxStream, ChangeSource, EntrySource, RecordSource, Transfer, TransferGate, WatchTicket,
};
use crate::transport::wire::{decode_batch, SnapshotOffer};

use super::authorize;
use super::bulk::{start_catch_up, start_snapshot_fetch, BulkTransfers};
use super::calls::{check_value, WriteCall};
use super::members::changes::{change_here, Coordinator};
use super::members::leaders::{balance, drain, transfer_here};
use super::members::view::group_view;
use super::members::{is_system_key, node_status, REGISTRY_KEY};
use super::router::{status_of, Router, FORWARDED, REQUEST_TIMEOUT};
use super::shard_thread::ShardInput;

/// Keys a range may return in one answer.
pub const RANGE_LIMIT_MAX: u32 = 10_000;
/// Bytes of keys and values one range answer holds, about (each group asked gets an
/// even share and may overshoot it by one pair); past it the answer ends early with
/// `more`, as it does at its count limit. Without it, one request could make a node
/// gather every value it holds.
pub const RANGE_BYTES_MAX: usize = 4 << 20;
/// How long a snapshot asked for by `SnapshotNow` may take to be durable.
const SNAPSHOT_NOW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// Records a log read may return in one answer.
pub const LOG_READ_LIMIT_MAX: u32 = 10_000;

#[derive(Clone)]
pub struct Services {
    pub router: Router,
    pub cluster_id: u64,
    pub transfers: Arc<BulkTransfers>,
}

fn header(group: GroupId, leader: NodeId) -> Option<proto::ResponseHeader> {
    Some(proto::ResponseHeader { group, leader })
}

pub(super) fn check_key(key: &[u8]) -> Result<(), Status> {
    if is_system_key(key) {
        return Err(Status::invalid_argument("keys starting with 0xFFFF are reserved for Quarry's own records"));
    }
    match key.len() {
        0 => Err(Status::invalid_argument("empty key")),
        n if n > KEY_MAX_BYTES => Err(Status::invalid_argument(format!("key of {n} bytes exceeds {KEY_MAX_BYTES}"))),
        _ => Ok(()),
    }
}

impl Services {
    /// Carries out a write at this node (its group's leader) and answers it.
    pub(super) async fn write<C: WriteCall>(&self, call: &C) -> Result<C::Response, RequestError> {
        let group = self.router.group_of(&call.routing_key());
        let outcome = self.router.propose(group, call.command()).await?;
        C::answer(proto::ResponseHeader { group, leader: self.router.node }, outcome)
    }

    /// Where to forward a request this node cannot serve, if anywhere.
    pub(super) fn forward_target(&self, error: &RequestError, already_forwarded: bool) -> Option<NodeId> {
        match error {
            RequestError::NotLeader { leader: Some(leader) } if *leader != self.router.node && !already_forwarded => {
                Some(*leader)
            }
            _ => None,
        }
    }
}

pub(super) fn forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED)
}

pub(super) fn forward_request<T>(inner: T) -> Request<T> {
    let mut request = Request::new(inner);
    request.metadata_mut().insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    request
}

/// Runs `local`; if this node is not the leader, sends the request to the leader once.
macro_rules! serve_or_forward {
    ($self:ident, $request:ident, $client:ident, $method:ident, |$req:ident| $local:expr) => {{
        let already = forwarded(&$request);
        let $req = $request.into_inner();
        match $local {
            Ok(response) => Ok(Response::new(response)),
            Err(error) => match $self.forward_target(&error, already) {
                Some(leader) => {
                    let mut client = $self.router.$client(leader).ok_or_else(|| status_of(error))?;
                    client.$method(forward_request($req)).await.map_err(|s| forwarding_failed(leader, s))
                }
                None => Err(status_of(error)),
            },
        }
    }};
}

/// The leader's answer to a forwarded request, or what became of the call: a call the
/// transport lost (the leader died or the connection broke mid-call; tonic says
/// `Unknown`/`Cancelled`) may or may not have been carried out, so the client hears
/// that the outcome is unknown, not an error it could take for a failure.
pub(super) fn forwarding_failed(leader: NodeId, status: Status) -> Status {
    match status.code() {
        tonic::Code::Unknown | tonic::Code::Cancelled => Status::unavailable(format!(
            "outcome unknown: the leader (node {leader}) did not answer ({}); retrying with the same client_id and \
             sequence is safe",
            status.message()
        )),
        _ => status,
    }
}

fn write_outcome(outcome: Outcome) -> Result<Outcome, RequestError> {
    match outcome {
        Outcome::Rejected(reason) => Err(RequestError::Refused(reason)),
        other => Ok(other),
    }
}

/// A Get's answer through the shard: found, revision, value.
pub(super) fn encode_found(found: Option<&crate::state::Versioned>) -> Bytes {
    let mut out = BytesMut::new();
    match found {
        Some(v) => {
            out.put_u8(1);
            out.put_u64_le(v.revision);
            out.extend_from_slice(&v.value);
        }
        None => out.put_u8(0),
    }
    out.freeze()
}

pub(super) fn decode_found(mut data: Bytes) -> (bool, u64, Bytes) {
    if data.len() < 9 || data.get_u8() == 0 {
        return (false, 0, Bytes::new());
    }
    let revision = data.get_u64_le();
    (true, revision, data)
}

#[tonic::async_trait]
impl Kv for Services {
    type SessionStream = super::session::SessionStream;
    type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::WatchResponse, Status>> + Send>>;

    async fn watch(&self, request: Request<proto::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        use tokio_stream::StreamExt as _;
        let connection = request.extensions().get::<crate::tls::ConnInfo>().map(|info| info.open_requests.clone());
        let spec = super::watch::WatchSpec::from_request(request.get_ref(), &self.router)?;
        let prev_values = spec.prev_values;
        let batches = super::watch::start(&self.router, spec, connection)?;
        Ok(Response::new(Box::pin(batches.map(move |batch| batch.map(|b| b.to_proto(prev_values))))))
    }

    async fn session(
        &self,
        request: Request<Streaming<proto::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        Ok(Response::new(super::session::serve(self.router.clone(), request.into_inner())))
    }

    async fn put(&self, request: Request<proto::PutRequest>) -> Result<Response<proto::PutResponse>, Status> {
        request.get_ref().check(self.router.max_value_bytes)?;
        serve_or_forward!(self, request, kv_client, put, |req| self.write(&req).await)
    }

    async fn get(&self, request: Request<proto::GetRequest>) -> Result<Response<proto::GetResponse>, Status> {
        check_key(&request.get_ref().key)?;
        serve_or_forward!(self, request, kv_client, get, |req| {
            let group = self.router.group_of(&req.key);
            let key = req.key.clone();
            let query = Box::new(move |s: &BuiltinState| encode_found(s.get(&key)));
            self.router.read(group, query, req.serializable).await.map(|data| {
                let (found, revision, value) = decode_found(data);
                // A serializable read is served by whichever replica got it: no leader claimed.
                let leader = if req.serializable { 0 } else { self.router.node };
                proto::GetResponse { header: header(group, leader), found, value, revision }
            })
        })
    }

    async fn delete(&self, request: Request<proto::DeleteRequest>) -> Result<Response<proto::DeleteResponse>, Status> {
        request.get_ref().check(self.router.max_value_bytes)?;
        serve_or_forward!(self, request, kv_client, delete, |req| self.write(&req).await)
    }

    async fn range(&self, request: Request<proto::RangeRequest>) -> Result<Response<proto::RangeResponse>, Status> {
        let already_forwarded = forwarded(&request);
        let req = request.into_inner();
        if !req.end.is_empty() && req.start > req.end {
            return Err(Status::invalid_argument("range start is past its end"));
        }
        let limit = req.limit.clamp(1, RANGE_LIMIT_MAX);
        let groups = match req.group {
            Some(g) if g >= self.router.groups => {
                return Err(Status::invalid_argument(format!("group {g} does not exist")));
            }
            Some(g) => g..g + 1,
            None => 0..self.router.groups,
        };
        // Keys are spread over every group by hash: ask them all at once (each at its
        // leader, unless serializable), merge in key order.
        let budget = (RANGE_BYTES_MAX / groups.clone().count()).max(1);
        let mut reads = tokio::task::JoinSet::new();
        for group in groups {
            let (services, req) = (self.clone(), req.clone());
            reads.spawn(async move { services.range_of_group(group, req, limit, budget, already_forwarded).await });
        }
        let mut kvs = Vec::new();
        // A group cut short by its byte share is complete only up to its last key.
        let mut complete_up_to: Option<Bytes> = None;
        while let Some(joined) = reads.join_next().await {
            let group_kvs = joined.map_err(|e| Status::internal(format!("range task failed: {e}")))??;
            let bytes: usize = group_kvs.iter().map(|kv| kv.key.len() + kv.value.len()).sum();
            if let (true, Some(last)) = (bytes >= budget, group_kvs.last()) {
                if complete_up_to.as_ref().is_none_or(|cut| last.key < *cut) {
                    complete_up_to = Some(last.key.clone());
                }
            }
            kvs.extend(group_kvs);
        }
        kvs.sort_by(|a: &proto::KeyValue, b| a.key.cmp(&b.key));
        let mut more = kvs.len() > limit as usize;
        if let Some(cut) = complete_up_to {
            kvs.retain(|kv| kv.key <= cut);
            more = true;
        }
        kvs.truncate(limit as usize);
        Ok(Response::new(proto::RangeResponse { kvs, more }))
    }

    async fn cas(&self, request: Request<proto::CasRequest>) -> Result<Response<proto::CasResponse>, Status> {
        request.get_ref().check(self.router.max_value_bytes)?;
        serve_or_forward!(self, request, kv_client, cas, |req| self.write(&req).await)
    }

    async fn batch(&self, request: Request<proto::BatchRequest>) -> Result<Response<proto::BatchResponse>, Status> {
        let (group, operation) = self.batch_operation(request.get_ref())?;
        serve_or_forward!(self, request, kv_client, batch, |req| {
            let command = Command { client: req.client_id, sequence: req.sequence, operation: operation.clone() };
            let h = header(group, self.router.node);
            match self.router.propose(group, command).await.and_then(write_outcome) {
                Ok(Outcome::Batch(_)) => {
                    Ok(proto::BatchResponse { header: h, succeeded: true, failed_at: 0, current_revision: 0 })
                }
                Ok(Outcome::BatchAborted { failed_at, current_revision }) => {
                    Ok(proto::BatchResponse { header: h, succeeded: false, failed_at, current_revision })
                }
                Ok(other) => Err(RequestError::Refused(format!("unexpected outcome {other:?}"))),
                Err(e) => Err(e),
            }
        })
    }
}

impl Services {
    /// One group's part of a range, read here or (linearizable, not led here) at the
    /// group's leader.
    async fn range_of_group(
        &self,
        group: GroupId,
        req: proto::RangeRequest,
        limit: u32,
        budget: usize,
        already_forwarded: bool,
    ) -> Result<Vec<proto::KeyValue>, Status> {
        let (start, end) = (req.start.clone(), req.end.clone());
        let query = Box::new(move |s: &BuiltinState| {
            let mut out = BytesMut::new();
            let mut bytes = 0;
            for (k, v) in s.range(&start, &end, limit as usize).into_iter().filter(|(k, _)| !is_system_key(k)) {
                out.put_u32_le(k.len() as u32);
                out.extend_from_slice(&k);
                out.put_u32_le(v.value.len() as u32);
                out.extend_from_slice(&v.value);
                out.put_u64_le(v.revision);
                bytes += k.len() + v.value.len();
                if bytes >= budget {
                    break;
                }
            }
            out.freeze()
        });
        let error = match self.router.read(group, query, req.serializable).await {
            Ok(data) => return Ok(decode_kvs(data)),
            Err(error) => error,
        };
        let leader = self.forward_target(&error, already_forwarded).ok_or_else(|| status_of(error.clone()))?;
        let mut client = self.router.kv_client(leader).ok_or_else(|| status_of(error))?;
        let one_group = proto::RangeRequest { group: Some(group), limit, ..req };
        Ok(client.range(forward_request(one_group)).await?.into_inner().kvs)
    }

    /// A batch's operations, checked: all keys must map to one group.
    fn batch_operation(&self, req: &proto::BatchRequest) -> Result<(GroupId, Operation), Status> {
        use proto::batch_op::Op;
        if req.ops.is_empty() || req.ops.len() > crate::state::BATCH_OPS_MAX {
            return Err(Status::invalid_argument(format!(
                "a batch holds 1..={} operations",
                crate::state::BATCH_OPS_MAX
            )));
        }
        let mut group = None;
        let mut ops = Vec::with_capacity(req.ops.len());
        for op in &req.ops {
            let (key, operation) =
                match op.op.as_ref().ok_or_else(|| Status::invalid_argument("empty batch operation"))? {
                    Op::Put(p) => (p.key.clone(), Operation::Put { key: p.key.clone(), value: p.value.clone() }),
                    Op::Delete(d) => (d.key.clone(), Operation::Delete { key: d.key.clone() }),
                    Op::Cas(c) => (
                        c.key.clone(),
                        Operation::Cas {
                            key: c.key.clone(),
                            expected_revision: c.expected_revision,
                            value: c.value.clone(),
                        },
                    ),
                };
            check_key(&key)?;
            if let Operation::Put { value, .. } | Operation::Cas { value, .. } = &operation {
                check_value(value, self.router.max_value_bytes)?;
            }
            let g = self.router.group_of(&key);
            if *group.get_or_insert(g) != g {
                return Err(Status::invalid_argument("a batch's keys must all map to one group"));
            }
            ops.push(operation);
        }
        Ok((group.expect("non-empty batch"), Operation::Batch(ops)))
    }
}

fn decode_kvs(mut data: Bytes) -> Vec<proto::KeyValue> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let klen = data.get_u32_le() as usize;
        let key = data.split_to(klen);
        let vlen = data.get_u32_le() as usize;
        let value = data.split_to(vlen);
        let revision = data.get_u64_le();
        out.push(proto::KeyValue { key, value, revision });
    }
    out
}

#[tonic::async_trait]
impl Log for Services {
    async fn append(
        &self,
        request: Request<proto::LogAppendRequest>,
    ) -> Result<Response<proto::LogAppendResponse>, Status> {
        request.get_ref().check(self.router.max_value_bytes)?;
        serve_or_forward!(self, request, log_client, append, |req| self.write(&req).await)
    }

    async fn read(&self, request: Request<proto::LogReadRequest>) -> Result<Response<proto::LogReadResponse>, Status> {
        check_key(request.get_ref().log.as_bytes())?;
        serve_or_forward!(self, request, log_client, read, |req| self.read_log(&req).await)
    }
}

#[tonic::async_trait]
impl EntrySource for Services {
    async fn entries(&self, group: GroupId, from: u64, to: u64) -> Result<EntryRange, Status> {
        if group >= self.router.groups {
            return Err(Status::invalid_argument(format!("group {group} does not exist")));
        }
        let (reply, answer) = flume::bounded(1);
        self.router.submit(group, ShardInput::ReadEntries { group, from, to, reply });
        match tokio::time::timeout(REQUEST_TIMEOUT, answer.recv_async()).await {
            Ok(Ok(result)) => result.map_err(status_of),
            _ => Err(Status::unavailable("the shard did not answer")),
        }
    }
}

impl ChangeSource for Services {
    fn watch(
        &self,
        ticket: WatchTicket,
        connection: Option<crate::tls::ConnInfo>,
    ) -> Result<BoxStream<arrow_array::RecordBatch>, Status> {
        use tokio_stream::StreamExt as _;
        let WatchTicket { prefix, start_revision, key } = ticket;
        let request = proto::WatchRequest { key, prefix, start_revision, prev_value: true, ..Default::default() };
        let spec = super::watch::WatchSpec::from_request(&request, &self.router)?;
        let batches = super::watch::start(&self.router, spec, connection.map(|c| c.open_requests))?;
        // Over Flight only changes travel: positions are the last change's revisions.
        let changes = batches.filter(|b| b.as_ref().map_or(true, |b| !b.changes.is_empty()));
        Ok(Box::pin(changes.map(|b| b.map(|b| super::watch::record_batch(&b.changes)))))
    }
}

impl TransferGate for Services {
    fn allow(&self, identity: crate::tls::Identity, transfer: Transfer) -> Result<(), Status> {
        let allowed = match transfer {
            Transfer::Tail | Transfer::Watch => true,
            Transfer::Entries => identity.is_node(),
            // Followers fetch images; operators save them (`quarryctl snapshot save`).
            Transfer::Snapshot => identity.may_administer(),
        };
        if allowed {
            return Ok(());
        }
        let why = format!("{transfer:?} transfers need a node's certificate; the caller is {identity:?}");
        Err(authorize::refuse(&self.router, "bulk_transfer", why))
    }
}

#[tonic::async_trait]
impl RecordSource for Services {
    async fn records(&self, name: &str, from: u64, max: u32) -> Result<Vec<Bytes>, Status> {
        let request = proto::LogReadRequest { log: name.to_string(), from, limit: max, serializable: true };
        match self.read_log(&request).await {
            Ok(answer) => Ok(answer.entries),
            Err(RequestError::NotFound(_)) => Ok(Vec::new()), // Not created yet: wait for it.
            Err(e) => Err(status_of(e)),
        }
    }
}

impl Services {
    async fn read_log(&self, req: &proto::LogReadRequest) -> Result<proto::LogReadResponse, RequestError> {
        let name = Bytes::from(req.log.clone().into_bytes());
        let group = self.router.group_of(&name);
        let (from, limit) = (req.from.max(1), req.limit.clamp(1, LOG_READ_LIMIT_MAX) as usize);
        let query = Box::new(move |s: &BuiltinState| {
            let Some(entries) = s.read_log(&name, from, limit) else {
                return Bytes::new();
            };
            let mut out = BytesMut::new();
            out.put_u8(1); // the log exists
            for e in entries {
                out.put_u32_le(e.len() as u32);
                out.extend_from_slice(&e);
            }
            out.freeze()
        });
        let data = self.router.read(group, query, req.serializable).await?;
        if data.is_empty() {
            return Err(RequestError::NotFound(format!("no log named {:?}", req.log)));
        }
        let mut data = data.slice(1..);
        let mut entries = Vec::new();
        while data.len() >= 4 {
            let len = data.get_u32_le() as usize;
            entries.push(data.split_to(len));
        }
        let next = from + entries.len() as u64;
        Ok(proto::LogReadResponse { header: header(group, self.router.node), entries, next })
    }
}

#[tonic::async_trait]
impl Admin for Services {
    async fn status(&self, _: Request<proto::StatusRequest>) -> Result<Response<proto::StatusResponse>, Status> {
        Ok(Response::new(node_status(&self.router, self.cluster_id).await?))
    }

    async fn members(
        &self,
        request: Request<proto::MembersRequest>,
    ) -> Result<Response<proto::MembersResponse>, Status> {
        if let Some(leader) = self.coordinator_elsewhere(&request, None).await? {
            return self.admin(leader)?.members(forward_request(request.into_inner())).await;
        }
        Ok(Response::new(self.coordinator().members().await?))
    }

    async fn add_member(
        &self,
        request: Request<proto::AddMemberRequest>,
    ) -> Result<Response<proto::MemberChangeResponse>, Status> {
        authorize::administer(&self.router, &request, "add_member")?;
        if let Some(leader) = self.coordinator_elsewhere(&request, None).await? {
            return self.admin(leader)?.add_member(forward_request(request.into_inner())).await;
        }
        let req = request.into_inner();
        let address = parse_address(&req.address)?;
        Ok(Response::new(self.coordinator().add(req.node, address, req.learner_only).await?))
    }

    async fn promote_member(
        &self,
        request: Request<proto::PromoteMemberRequest>,
    ) -> Result<Response<proto::MemberChangeResponse>, Status> {
        authorize::administer(&self.router, &request, "promote_member")?;
        if let Some(leader) = self.coordinator_elsewhere(&request, None).await? {
            return self.admin(leader)?.promote_member(forward_request(request.into_inner())).await;
        }
        Ok(Response::new(self.coordinator().promote(request.into_inner().node).await?))
    }

    async fn remove_member(
        &self,
        request: Request<proto::RemoveMemberRequest>,
    ) -> Result<Response<proto::MemberChangeResponse>, Status> {
        authorize::administer(&self.router, &request, "remove_member")?;
        let node = request.get_ref().node;
        if let Some(leader) = self.coordinator_elsewhere(&request, Some(node)).await? {
            return self.admin(leader)?.remove_member(forward_request(request.into_inner())).await;
        }
        Ok(Response::new(self.coordinator().remove(node).await?))
    }

    async fn replace_member(
        &self,
        request: Request<proto::ReplaceMemberRequest>,
    ) -> Result<Response<proto::MemberChangeResponse>, Status> {
        authorize::administer(&self.router, &request, "replace_member")?;
        let old = request.get_ref().old_node;
        if let Some(leader) = self.coordinator_elsewhere(&request, Some(old)).await? {
            return self.admin(leader)?.replace_member(forward_request(request.into_inner())).await;
        }
        let req = request.into_inner();
        let address = parse_address(&req.new_address)?;
        Ok(Response::new(self.coordinator().replace(old, req.new_node, address).await?))
    }

    async fn transfer_leader(
        &self,
        request: Request<proto::TransferLeaderRequest>,
    ) -> Result<Response<proto::TransferLeaderResponse>, Status> {
        authorize::administer(&self.router, &request, "transfer_leader")?;
        let (group, to) = (request.get_ref().group, request.get_ref().to);
        self.check_group(group)?;
        let view = group_view(&self.router, self.cluster_id, group)
            .await
            .ok_or_else(|| Status::unavailable(format!("group {group} has no leader; retry")))?;
        if view.leader == to {
            return Ok(Response::new(proto::TransferLeaderResponse { leader: to }));
        }
        if !view.conf.voters.contains(&to) {
            return Err(Status::invalid_argument(format!("node {to} is not a voter of group {group}")));
        }
        if view.leader == self.router.node {
            transfer_here(&self.router, self.cluster_id, group, to).await?;
        } else if forwarded(&request) {
            return Err(Status::unavailable(format!("group {group}'s leadership moved; retry")));
        } else {
            self.admin(view.leader)?.transfer_leader(forward_request(request.into_inner())).await?;
        }
        Ok(Response::new(proto::TransferLeaderResponse { leader: to }))
    }

    async fn drain_leaders(
        &self,
        request: Request<proto::DrainLeadersRequest>,
    ) -> Result<Response<proto::LeaderMovesResponse>, Status> {
        authorize::administer(&self.router, &request, "drain_leaders")?;
        let moves = drain(&self.router, self.cluster_id, request.into_inner().node).await?;
        Ok(Response::new(proto::LeaderMovesResponse { moves }))
    }

    async fn balance_leaders(
        &self,
        request: Request<proto::BalanceLeadersRequest>,
    ) -> Result<Response<proto::LeaderMovesResponse>, Status> {
        authorize::administer(&self.router, &request, "balance_leaders")?;
        let moves = balance(&self.router, self.cluster_id).await?;
        Ok(Response::new(proto::LeaderMovesResponse { moves }))
    }

    async fn change_group(
        &self,
        request: Request<proto::ChangeGroupRequest>,
    ) -> Result<Response<proto::ChangeGroupResponse>, Status> {
        authorize::administer(&self.router, &request, "change_group")?;
        let req = request.get_ref();
        self.check_group(req.group)?;
        let ids = req.add_learners.iter().chain(&req.add_voters).chain(&req.remove);
        if ids.clone().any(|&id| id == 0) || ids.count() == 0 {
            return Err(Status::invalid_argument("a change names at least one node, and node id 0 is reserved"));
        }
        serve_or_forward!(self, request, admin_client, change_group, |req| {
            let changes = req
                .add_learners
                .iter()
                .map(|&n| SingleChange::AddLearner(n))
                .chain(req.add_voters.iter().map(|&n| SingleChange::AddVoter(n)))
                .chain(req.remove.iter().map(|&n| SingleChange::RemoveNode(n)))
                .collect();
            change_here(&self.router, req.group, ConfChange::Change(changes))
                .await
                .map(|index| proto::ChangeGroupResponse { index })
        })
    }

    async fn snapshot_now(
        &self,
        request: Request<proto::SnapshotNowRequest>,
    ) -> Result<Response<proto::SnapshotNowResponse>, Status> {
        authorize::administer(&self.router, &request, "snapshot_now")?;
        self.check_group(request.get_ref().group)?;
        serve_or_forward!(self, request, admin_client, snapshot_now, |req| {
            let (reply, answer) = flume::bounded(1);
            let input = ShardInput::SnapshotNow { group: req.group, reply: reply.into() };
            self.router.submit(req.group, input);
            // A large state takes a while to copy and write: a longer timeout.
            match tokio::time::timeout(SNAPSHOT_NOW_TIMEOUT, answer.recv_async())
                .await
                .unwrap_or(Ok(Err(RequestError::Unknown)))
            {
                Ok(Ok(m)) => Ok(proto::SnapshotNowResponse {
                    leader: self.router.node,
                    index: m.meta.index,
                    term: m.meta.term,
                    size: m.size,
                    crc32: m.crc32,
                    voters: m.meta.conf_state.voters.iter().copied().collect(),
                    outgoing_voters: m.meta.conf_state.voters_outgoing.iter().copied().collect(),
                    learners: m.meta.conf_state.learners.iter().copied().collect(),
                }),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(RequestError::Unknown),
            }
        })
    }
}

fn parse_address(address: &str) -> Result<std::net::SocketAddr, Status> {
    address.parse().map_err(|_| Status::invalid_argument(format!("{address:?} is not host:port")))
}

impl Services {
    fn coordinator(&self) -> Coordinator {
        Coordinator { router: self.router.clone(), cluster_id: self.cluster_id }
    }

    fn admin(&self, node: NodeId) -> Result<AdminClient<tonic::transport::Channel>, Status> {
        self.router.admin_client(node).ok_or_else(|| Status::unavailable(format!("node {node} has no known address")))
    }

    fn check_group(&self, group: GroupId) -> Result<(), Status> {
        if group >= self.router.groups {
            return Err(Status::invalid_argument(format!("group {group} does not exist")));
        }
        Ok(())
    }

    /// Member changes run at the registry group's leader: the node to forward to,
    /// or `None` to run here. When the change concerns this node (`leaving`), the
    /// registry's leadership moves away first, so the coordinator stays a member.
    async fn coordinator_elsewhere<T>(
        &self,
        request: &Request<T>,
        leaving: Option<NodeId>,
    ) -> Result<Option<NodeId>, Status> {
        let group = self.router.group_of(REGISTRY_KEY);
        let no_leader = || Status::unavailable("the member registry's group has no leader; retry");
        let view = group_view(&self.router, self.cluster_id, group).await.ok_or_else(no_leader)?;
        let mut leader = view.leader;
        if leader == self.router.node && leaving == Some(leader) {
            let to = view.successor(leader).ok_or_else(no_leader)?;
            transfer_here(&self.router, self.cluster_id, group, to).await?;
            leader = to;
        }
        match leader {
            l if l == self.router.node => Ok(None),
            _ if forwarded(request) => Err(Status::unavailable("the member registry's leader moved; retry")),
            l => Ok(Some(l)),
        }
    }
}

type PeerStream = Pin<Box<dyn Stream<Item = Result<proto::PeerBatch, Status>> + Send>>;

#[tonic::async_trait]
impl Peer for Services {
    type StreamStream = PeerStream;

    async fn ping(&self, _: Request<proto::PeerPing>) -> Result<Response<proto::PeerPing>, Status> {
        Ok(Response::new(proto::PeerPing {}))
    }

    async fn stream(&self, request: Request<Streaming<proto::PeerBatch>>) -> Result<Response<PeerStream>, Status> {
        let identity = crate::tls::identity_of(&request);
        let mut inbound = request.into_inner();
        let (errors, answer) = tokio::sync::mpsc::channel(1);
        let (router, cluster_id, transfers) = (self.router.clone(), self.cluster_id, self.transfers.clone());
        tokio::spawn(async move {
            while let Ok(Some(mut batch)) = inbound.message().await {
                if batch.cluster_id != cluster_id {
                    let reason = format!("cluster id {} does not match this node's {cluster_id}", batch.cluster_id);
                    let _ = errors.send(Err(Status::failed_precondition(reason))).await;
                    return;
                }
                // Everything below (messages, snapshot and catch-up offers, the sender's
                // address) acts on the sender's word: it must be the node it says.
                if let Err(refused) = authorize::speak_for(&router, identity, batch.from_node) {
                    let _ = errors.send(Err(refused)).await;
                    return;
                }
                router.learn_peer(batch.from_node, &batch.from_address);
                router.links.heard_from(batch.from_node, batch.incarnation);
                let (offers, messages) =
                    batch.messages.into_iter().partition(|m| matches!(m.kind, Some(raft_message::Kind::Snapshot(_))));
                batch.messages = messages;
                for offer in offers.iter().filter_map(SnapshotOffer::of).filter_map(Result::ok) {
                    start_snapshot_fetch(&router, &transfers, offer);
                }
                for c in std::mem::take(&mut batch.catch_up) {
                    let offer = CatchUp { group: c.group, term: c.term, from: c.from_index, to: c.to_index };
                    start_catch_up(&router, &transfers, batch.from_node, offer);
                }
                for decoded in decode_batch(batch) {
                    match decoded {
                        Ok((group, message)) if message.to == router.node && group < router.groups => {
                            // A full shard queue drops the message; Raft retransmits.
                            let _ = router.shard_of(group).try_send(ShardInput::Peer { group, message });
                        }
                        _ => {} // Malformed or misaddressed: dropped.
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(answer))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_call_the_transport_lost_has_an_unknown_outcome() {
        let lost = forwarding_failed(2, Status::unknown("transport error"));
        assert_eq!(lost.code(), tonic::Code::Unavailable);
        assert!(lost.message().starts_with("outcome unknown") && lost.message().contains("node 2"), "{lost:?}");
        let answered = forwarding_failed(2, Status::resource_exhausted("the leader's disk is full"));
        assert_eq!(answered.code(), tonic::Code::ResourceExhausted, "the leader's own answer passes through");
    }
}
