//! What the cluster looks like right now: each group as its leader reports it, and
//! which nodes answer.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use tonic::Status;

use crate::log::GroupId;
use crate::proto;
use crate::raft::{ConfState, Index, NodeId, Term};
use crate::server::router::Router;
use crate::server::shard_thread::ShardInput;

/// How long a node's status may take before it counts as not answering.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// This node's view of every group it hosts.
pub async fn node_status(router: &Router, cluster_id: u64) -> Result<proto::StatusResponse, Status> {
    let mut groups = Vec::new();
    for shard in router.shards() {
        let (reply, answer) = flume::bounded(1);
        shard.try_send(ShardInput::Status { reply }).map_err(|_| Status::unavailable("shard busy or stopped"))?;
        let status = answer.recv_async().await.map_err(|_| Status::unavailable("shard stopped"))?;
        groups.extend(status.into_iter().map(|s| {
            proto::GroupStatus {
                group: s.group,
                leader: s.leader.unwrap_or(0),
                term: s.term,
                commit: s.commit,
                applied: s.applied,
                role: format!("{:?}", s.role).to_lowercase(),
                voters: s.conf.voters.iter().copied().collect(),
                outgoing_voters: s.conf.voters_outgoing.iter().copied().collect(),
                learners: s.conf.learners.iter().copied().collect(),
                last_index: s.last_index,
                progress: s
                    .progress
                    .iter()
                    .map(|&(node, matched, active)| proto::PeerProgress { node, matched, active })
                    .collect(),
                abstaining: s.abstaining,
            }
        }));
    }
    groups.sort_by_key(|g| g.group);
    Ok(proto::StatusResponse { node: router.node, cluster_id, groups })
}

/// A node's status: its own directly, another's over gRPC.
async fn status_of_node(router: &Router, cluster_id: u64, node: NodeId) -> Option<proto::StatusResponse> {
    if node == router.node {
        return node_status(router, cluster_id).await.ok();
    }
    let mut client = router.admin_client(node)?;
    let call = client.status(proto::StatusRequest {});
    Some(tokio::time::timeout(STATUS_TIMEOUT, call).await.ok()?.ok()?.into_inner())
}

/// The status of whatever answers at `address`, if anything does within the timeout.
pub async fn probe(router: &Router, address: SocketAddr) -> Option<proto::StatusResponse> {
    let channel = router.tls.channel(crate::transport::endpoint(address).ok()?);
    let mut client = crate::proto::admin_client::AdminClient::new(channel);
    let call = client.status(proto::StatusRequest {});
    Some(tokio::time::timeout(STATUS_TIMEOUT, call).await.ok()?.ok()?.into_inner())
}

/// One group as its leader sees it.
#[derive(Clone, Debug)]
pub struct GroupView {
    pub group: GroupId,
    pub leader: NodeId,
    pub term: Term,
    pub commit: Index,
    pub conf: ConfState,
    /// Each other member's matched index.
    pub matched: BTreeMap<NodeId, Index>,
    /// The other members the leader heard from recently.
    pub active: BTreeSet<NodeId>,
}

impl GroupView {
    fn of(status: &proto::GroupStatus, leader: NodeId) -> GroupView {
        GroupView {
            group: status.group,
            leader,
            term: status.term,
            commit: status.commit,
            conf: ConfState {
                voters: status.voters.iter().copied().collect(),
                voters_outgoing: status.outgoing_voters.iter().copied().collect(),
                learners: status.learners.iter().copied().collect(),
            },
            matched: status.progress.iter().map(|p| (p.node, p.matched)).collect(),
            active: status.progress.iter().filter(|p| p.active).map(|p| p.node).collect(),
        }
    }

    /// Whether `node`'s log is within `lag` entries of the commit index.
    pub fn caught_up(&self, node: NodeId, lag: u64) -> bool {
        node == self.leader || self.matched.get(&node).is_some_and(|&m| m + lag >= self.commit)
    }

    /// The voter other than `node` best placed to lead: the most caught-up one.
    pub fn successor(&self, node: NodeId) -> Option<NodeId> {
        let candidates = self.conf.voters.iter().filter(|&&v| v != node && v != self.leader);
        let best = candidates.max_by_key(|&&v| self.matched.get(&v).copied().unwrap_or(0)).copied();
        best.or((self.leader != node).then_some(self.leader))
    }
}

/// Every group's leader view, and the nodes that answered.
pub struct ClusterView {
    pub groups: BTreeMap<GroupId, GroupView>,
    pub answering: BTreeSet<NodeId>,
}

/// Asks every node in the address book for its status, at once.
pub async fn cluster_view(router: &Router, cluster_id: u64) -> ClusterView {
    let mut asks = tokio::task::JoinSet::new();
    for node in router.book.all().into_keys() {
        let router = router.clone();
        asks.spawn(async move { (node, status_of_node(&router, cluster_id, node).await) });
    }
    let mut view = ClusterView { groups: BTreeMap::new(), answering: BTreeSet::new() };
    while let Some(Ok((node, status))) = asks.join_next().await {
        let Some(status) = status else { continue };
        view.answering.insert(node);
        for g in status.groups.iter().filter(|g| g.role == "leader") {
            let newer = view.groups.get(&g.group).is_none_or(|known| known.term < g.term);
            if newer {
                view.groups.insert(g.group, GroupView::of(g, node));
            }
        }
    }
    view
}

/// One group as its leader sees it: asks this node, then the leader it names.
pub async fn group_view(router: &Router, cluster_id: u64, group: GroupId) -> Option<GroupView> {
    let mut node = router.node;
    for _ in 0..2 {
        let status = status_of_node(router, cluster_id, node).await?;
        let g = status.groups.into_iter().find(|g| g.group == group)?;
        if g.role == "leader" {
            return Some(GroupView::of(&g, node));
        }
        if g.leader == 0 || g.leader == node {
            return None;
        }
        node = g.leader;
    }
    None
}
