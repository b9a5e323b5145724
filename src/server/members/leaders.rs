//! Leadership moves: one group, every group off a node (drain), and spreading
//! leaders evenly over the voters (balance).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tonic::Status;

use super::view::cluster_view;
use crate::log::GroupId;
use crate::proto;
use crate::raft::NodeId;
use crate::server::router::{status_of, Router};
use crate::server::shard_thread::ShardInput;

/// How long a transfer may take before it is reported as failed (the core abandons
/// one after an election timeout).
const TRANSFER_DEADLINE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

/// Hands group `group`'s leadership from `leader` to `to`.
pub async fn transfer(
    router: &Router,
    cluster_id: u64,
    group: GroupId,
    leader: NodeId,
    to: NodeId,
) -> Result<(), Status> {
    if leader == router.node {
        return transfer_here(router, cluster_id, group, to).await;
    }
    let mut client =
        router.admin_client(leader).ok_or_else(|| Status::unavailable(format!("node {leader} has no address")))?;
    client.transfer_leader(proto::TransferLeaderRequest { group, to }).await?;
    Ok(())
}

/// Starts a transfer at this node (the group's leader) and waits until `to` leads.
pub async fn transfer_here(router: &Router, cluster_id: u64, group: GroupId, to: NodeId) -> Result<(), Status> {
    let (reply, answer) = flume::bounded(1);
    router.submit(group, ShardInput::TransferLeader { group, to, reply });
    answer.recv_async().await.map_err(|_| Status::unavailable("shard stopped"))?.map_err(status_of)?;
    let deadline = Instant::now() + TRANSFER_DEADLINE;
    while Instant::now() < deadline {
        let status = super::node_status(router, cluster_id).await?;
        if status.groups.iter().any(|g| g.group == group && g.leader == to) {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
    Err(Status::deadline_exceeded(format!("node {to} did not take over group {group} within {TRANSFER_DEADLINE:?}")))
}

/// Moves the leadership of every group `node` leads to another voter.
pub async fn drain(router: &Router, cluster_id: u64, node: NodeId) -> Result<Vec<proto::LeaderMove>, Status> {
    let view = cluster_view(router, cluster_id).await;
    let mut leaders = leader_counts(&view.groups);
    let mut moves = Vec::new();
    for g in view.groups.values().filter(|g| g.leader == node) {
        // The least loaded caught-up voter takes over.
        let to = g
            .conf
            .voters
            .iter()
            .filter(|&&v| v != node && view.answering.contains(&v) && g.caught_up(v, super::changes::CAUGHT_UP_LAG_MAX))
            .min_by_key(|&&v| leaders.get(&v).copied().unwrap_or(0))
            .copied()
            .ok_or_else(|| Status::failed_precondition(format!("no other voter can lead group {}", g.group)))?;
        *leaders.entry(to).or_default() += 1;
        moves.push(proto::LeaderMove { group: g.group, from: node, to });
    }
    carry_out(router, cluster_id, moves).await
}

/// Moves leaders from the busiest voters to the idlest until no two voters differ by
/// more than one group led.
pub async fn balance(router: &Router, cluster_id: u64) -> Result<Vec<proto::LeaderMove>, Status> {
    let view = cluster_view(router, cluster_id).await;
    let mut leaders = leader_counts(&view.groups);
    for g in view.groups.values() {
        for &v in g.conf.voters.iter().filter(|v| view.answering.contains(v)) {
            leaders.entry(v).or_default();
        }
    }
    let mut led: BTreeMap<GroupId, NodeId> = view.groups.values().map(|g| (g.group, g.leader)).collect();
    let mut moves = Vec::new();
    // Each move lowers the spread; the bound only guards against a bug looping forever.
    for _ in 0..view.groups.len() {
        let (Some((&busiest, &most)), Some((&idlest, &fewest))) =
            (leaders.iter().max_by_key(|(_, &n)| n), leaders.iter().min_by_key(|(_, &n)| n))
        else {
            break;
        };
        if most <= fewest + 1 {
            break;
        }
        let movable = view.groups.values().find(|g| {
            led[&g.group] == busiest
                && g.conf.voters.contains(&idlest)
                && g.caught_up(idlest, super::changes::CAUGHT_UP_LAG_MAX)
        });
        let Some(g) = movable else { break };
        led.insert(g.group, idlest);
        *leaders.entry(busiest).or_default() -= 1;
        *leaders.entry(idlest).or_default() += 1;
        moves.push(proto::LeaderMove { group: g.group, from: busiest, to: idlest });
    }
    carry_out(router, cluster_id, moves).await
}

fn leader_counts(groups: &BTreeMap<GroupId, super::GroupView>) -> BTreeMap<NodeId, usize> {
    let mut counts = BTreeMap::new();
    for g in groups.values() {
        *counts.entry(g.leader).or_default() += 1;
    }
    counts
}

/// Runs the moves one after another (each is quick); the first failure stops them.
async fn carry_out(
    router: &Router,
    cluster_id: u64,
    moves: Vec<proto::LeaderMove>,
) -> Result<Vec<proto::LeaderMove>, Status> {
    for m in &moves {
        transfer(router, cluster_id, m.group, m.from, m.to)
            .await
            .map_err(|e| Status::new(e.code(), format!("group {}: {}", m.group, e.message())))?;
    }
    Ok(moves)
}
