//! Member changes, run by the leader of the registry's group: add (learner, catch up,
//! promote), promote, remove and replace, each through every group.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use tonic::Status;

use super::view::{self, cluster_view, group_view, GroupView};
use super::{Change, Member, Registry, REGISTRY_KEY};
use crate::group::RequestError;
use crate::log::GroupId;
use crate::proto;
use crate::raft::{ConfChange, NodeId, SingleChange};
use crate::server::router::{status_of, Router};
use crate::server::shard_thread::ShardInput;
use crate::state::{BuiltinState, Command, Operation, Outcome};

/// Groups changed at once during a member change.
const GROUPS_AT_ONCE: usize = 8;
/// How long one pass of a member change over every group may take (learners catching
/// up included); past it the command fails and can be run again to resume.
const CHANGE_DEADLINE: Duration = Duration::from_secs(300);
/// A learner this close to the commit index is promoted.
pub const CAUGHT_UP_LAG_MAX: u64 = 64;
const POLL: Duration = Duration::from_millis(50);

/// Where one member change wants a group to end up.
#[derive(Clone, Copy, Debug)]
enum Goal {
    Learner(NodeId),
    Voter(NodeId),
    Removed(NodeId),
    Swapped { old: NodeId, new: NodeId },
}

/// The next thing to do to a group on the way to a goal.
enum Step {
    Done,
    Wait(String),
    MoveLeader(NodeId),
    Change(Vec<SingleChange>),
}

impl Goal {
    fn next_step(self, g: &GroupView) -> Step {
        let (voters, members) = (&g.conf.voters, g.conf.members());
        let catching_up = |n: NodeId| {
            let matched = g.matched.get(&n).copied().unwrap_or(0);
            Step::Wait(format!("node {n} is catching up in group {} ({matched} of {})", g.group, g.commit))
        };
        let silent = |n: NodeId| Step::Wait(format!("node {n} is not answering the leader of group {}", g.group));
        let away_from = |n: NodeId| match g.successor(n) {
            Some(to) => Step::MoveLeader(to),
            None => Step::Wait(format!("no other voter can lead group {}", g.group)),
        };
        match self {
            Goal::Learner(n) if members.contains(&n) => Step::Done,
            Goal::Learner(n) => Step::Change(vec![SingleChange::AddLearner(n)]),
            Goal::Voter(n) if voters.contains(&n) => Step::Done,
            Goal::Voter(n) if !members.contains(&n) => Step::Change(vec![SingleChange::AddLearner(n)]),
            Goal::Voter(n) if !g.caught_up(n, CAUGHT_UP_LAG_MAX) => catching_up(n),
            // A learner that stopped answering would weaken the quorum it joins.
            Goal::Voter(n) if !g.active.contains(&n) => silent(n),
            Goal::Voter(n) => Step::Change(vec![SingleChange::AddVoter(n)]),
            Goal::Removed(n) if !members.contains(&n) => Step::Done,
            Goal::Removed(n) if g.leader == n => away_from(n),
            Goal::Removed(n) => Step::Change(vec![SingleChange::RemoveNode(n)]),
            Goal::Swapped { old, new } if !members.contains(&old) && voters.contains(&new) => Step::Done,
            Goal::Swapped { new, .. } if !members.contains(&new) => Step::Change(vec![SingleChange::AddLearner(new)]),
            Goal::Swapped { new, .. } if !voters.contains(&new) && !g.caught_up(new, CAUGHT_UP_LAG_MAX) => {
                catching_up(new)
            }
            Goal::Swapped { new, .. } if !voters.contains(&new) && !g.active.contains(&new) => silent(new),
            Goal::Swapped { old, .. } if g.leader == old => away_from(old),
            // One joint change swaps them: neither half of it ever lacks a quorum
            // that the old configuration had.
            Goal::Swapped { old, new } if !voters.contains(&new) && members.contains(&old) => {
                Step::Change(vec![SingleChange::AddVoter(new), SingleChange::RemoveNode(old)])
            }
            Goal::Swapped { new, .. } if !voters.contains(&new) => Step::Change(vec![SingleChange::AddVoter(new)]),
            Goal::Swapped { old, .. } => Step::Change(vec![SingleChange::RemoveNode(old)]),
        }
    }
}

/// Runs member changes from this node (the registry group's leader).
#[derive(Clone)]
pub struct Coordinator {
    pub router: Router,
    pub cluster_id: u64,
}

fn majority(n: usize) -> usize {
    n / 2 + 1
}

impl Coordinator {
    /// The registry and its revision (0: never written, the founding members).
    async fn load(&self) -> Result<(Registry, u64), Status> {
        let group = self.router.group_of(REGISTRY_KEY);
        let query = Box::new(|s: &BuiltinState| {
            let mut out = BytesMut::new();
            if let Some(v) = s.get(REGISTRY_KEY) {
                out.put_u64_le(v.revision);
                out.extend_from_slice(&v.value);
            }
            out.freeze()
        });
        let mut data = self.router.read_internal(group, query, false).await.map_err(status_of)?;
        if data.len() < 8 {
            return Ok((Registry::founding(&self.router.founders), 0));
        }
        let revision = data.get_u64_le();
        Ok((Registry::decode(&data).map_err(Status::data_loss)?, revision))
    }

    /// Writes the registry if it is still at `revision`; returns the new revision.
    async fn store(&self, registry: &Registry, revision: u64) -> Result<u64, Status> {
        let group = self.router.group_of(REGISTRY_KEY);
        let operation =
            Operation::Cas { key: REGISTRY_KEY.into(), expected_revision: revision, value: registry.encode() };
        match self.router.propose(group, Command { client: 0, sequence: 0, operation }).await.map_err(status_of)? {
            Outcome::Written { revision } => {
                let members: Vec<String> = registry
                    .members
                    .iter()
                    .map(|(id, m)| format!("{id}={}{}", m.address, if m.voter { "" } else { " (learner)" }))
                    .collect();
                let change = registry.change.map_or_else(|| "none".to_owned(), |c| c.to_string());
                tracing::info!(
                    node = self.router.node,
                    "member registry written: members {}; change in progress: {change}",
                    members.join(", ")
                );
                Ok(revision)
            }
            Outcome::CasFailed { .. } => {
                Err(Status::aborted("the member registry changed meanwhile; run the command again"))
            }
            other => Err(Status::internal(format!("unexpected registry write outcome {other:?}"))),
        }
    }

    pub async fn members(&self) -> Result<proto::MembersResponse, Status> {
        let (registry, _) = self.load().await?;
        let change = registry.change.map(|c| c.to_string()).unwrap_or_default();
        Ok(proto::MembersResponse { members: members_of(&registry), change })
    }

    fn refuse_other_change(registry: &Registry, this: Change) -> Result<(), Status> {
        match registry.change {
            Some(change) if change != this => Err(Status::failed_precondition(format!(
                "{change} is in progress; finish it first (run that command again)"
            ))),
            _ => Ok(()),
        }
    }

    fn answer(registry: &Registry, groups_changed: u64) -> proto::MemberChangeResponse {
        proto::MemberChangeResponse { members: members_of(registry), groups_changed }
    }

    pub async fn add(
        &self,
        node: NodeId,
        address: SocketAddr,
        learner_only: bool,
    ) -> Result<proto::MemberChangeResponse, Status> {
        if node == 0 {
            return Err(Status::invalid_argument("node id 0 is reserved"));
        }
        let (mut registry, mut revision) = self.load().await?;
        let change = Change::Add { node };
        Self::refuse_other_change(&registry, change)?;
        if registry.removed.contains(&node) {
            return Err(Status::failed_precondition(format!(
                "node {node} was removed from this cluster; add it under a new id"
            )));
        }
        if let Some((&other, _)) = registry.members.iter().find(|(&id, m)| id != node && m.address == address) {
            return Err(Status::already_exists(format!("node {other} already listens on {address}")));
        }
        match registry.members.get(&node) {
            Some(m) if m.address != address => {
                return Err(Status::already_exists(format!("node {node} is already a member, at {}", m.address)));
            }
            Some(m) if m.voter && registry.change.is_none() => return Ok(Self::answer(&registry, 0)),
            _ => {}
        }
        if !registry.members.contains_key(&node) {
            self.check_joining_node(node, address).await?;
        }
        let voter = registry.members.get(&node).is_some_and(|m| m.voter);
        registry.members.insert(node, Member { address, voter });
        registry.change = Some(change);
        revision = self.store(&registry, revision).await?;
        let mut changed = self.drive_every_group(Goal::Learner(node)).await?;
        if !learner_only {
            changed += self.drive_every_group(Goal::Voter(node)).await?;
            registry.members.insert(node, Member { address, voter: true });
        }
        registry.change = None;
        self.store(&registry, revision).await?;
        Ok(Self::answer(&registry, changed))
    }

    /// A node about to be added must be running, be the one named, of this cluster,
    /// and hold no group data yet: one started as a founding member has its own
    /// bootstrap entry at index 1, which would pass for the cluster's entry 1 (same
    /// index and term) and corrupt its view of every group.
    async fn check_joining_node(&self, node: NodeId, address: SocketAddr) -> Result<(), Status> {
        let refuse = |why: String| Err(Status::failed_precondition(format!("the node at {address} {why}")));
        let Some(status) = view::probe(&self.router, address).await else {
            return refuse("does not answer; start it first, with --initial-cluster-state existing".into());
        };
        if status.node != node {
            return refuse(format!("is node {}, not node {node}", status.node));
        }
        if status.cluster_id != self.cluster_id {
            return refuse(format!("belongs to cluster {}, not {}", status.cluster_id, self.cluster_id));
        }
        if status.groups.iter().any(|g| g.last_index > 0 || !g.voters.is_empty()) {
            return refuse(
                "already holds group data (started as a founding member?); restart it with an empty data dir and \
                 --initial-cluster-state existing"
                    .into(),
            );
        }
        Ok(())
    }

    pub async fn promote(&self, node: NodeId) -> Result<proto::MemberChangeResponse, Status> {
        let (registry, _) = self.load().await?;
        let member = registry
            .members
            .get(&node)
            .ok_or_else(|| Status::not_found(format!("node {node} is not a member; add it first")))?;
        self.add(node, member.address, false).await
    }

    pub async fn remove(&self, node: NodeId) -> Result<proto::MemberChangeResponse, Status> {
        let (mut registry, mut revision) = self.load().await?;
        let change = Change::Remove { node };
        Self::refuse_other_change(&registry, change)?;
        if !registry.members.contains_key(&node) && registry.change != Some(change) {
            return Err(Status::not_found(format!("node {node} is not a member")));
        }
        let remaining: BTreeSet<NodeId> = registry.voters().into_iter().filter(|&v| v != node).collect();
        if remaining.is_empty() {
            return Err(Status::failed_precondition(format!("node {node} is the last voter")));
        }
        let answering = cluster_view(&self.router, self.cluster_id).await.answering;
        let alive = remaining.intersection(&answering).count();
        if alive < majority(remaining.len()) {
            return Err(Status::failed_precondition(format!(
                "removing node {node} would leave {} voters of which {alive} answer; a quorum needs {}",
                remaining.len(),
                majority(remaining.len())
            )));
        }
        registry.change = Some(change);
        revision = self.store(&registry, revision).await?;
        let changed = self.drive_every_group(Goal::Removed(node)).await?;
        registry.members.remove(&node);
        registry.removed.insert(node);
        registry.change = None;
        self.store(&registry, revision).await?;
        Ok(Self::answer(&registry, changed))
    }

    pub async fn replace(
        &self,
        old: NodeId,
        new: NodeId,
        address: SocketAddr,
    ) -> Result<proto::MemberChangeResponse, Status> {
        if new == 0 || new == old {
            return Err(Status::invalid_argument("the new node needs its own id (not 0)"));
        }
        let (mut registry, mut revision) = self.load().await?;
        let change = Change::Replace { old, new };
        Self::refuse_other_change(&registry, change)?;
        if registry.change != Some(change) {
            if !registry.members.contains_key(&old) {
                return Err(Status::not_found(format!("node {old} is not a member")));
            }
            if registry.members.contains_key(&new) || registry.removed.contains(&new) {
                return Err(Status::already_exists(format!("node {new} is already a member")));
            }
            let voters: BTreeSet<NodeId> = registry.voters().into_iter().collect();
            let answering = cluster_view(&self.router, self.cluster_id).await.answering;
            let alive = voters.iter().filter(|&v| *v != old && answering.contains(v)).count();
            if alive < majority(voters.len()) {
                return Err(Status::failed_precondition(format!(
                    "only {alive} of the {} voters other than node {old} answer; the swap needs {}",
                    voters.len(),
                    majority(voters.len())
                )));
            }
        }
        if !registry.members.contains_key(&new) {
            self.check_joining_node(new, address).await?;
        }
        registry.members.entry(new).or_insert(Member { address, voter: false });
        registry.change = Some(change);
        revision = self.store(&registry, revision).await?;
        let changed = self.drive_every_group(Goal::Swapped { old, new }).await?;
        registry.members.remove(&old);
        registry.removed.insert(old);
        registry.members.insert(new, Member { address, voter: true });
        registry.change = None;
        self.store(&registry, revision).await?;
        Ok(Self::answer(&registry, changed))
    }

    /// Drives every group to `goal`, `GROUPS_AT_ONCE` at a time; the number of
    /// membership changes made.
    async fn drive_every_group(&self, goal: Goal) -> Result<u64, Status> {
        let permits = Arc::new(tokio::sync::Semaphore::new(GROUPS_AT_ONCE));
        let deadline = Instant::now() + CHANGE_DEADLINE;
        let mut groups = tokio::task::JoinSet::new();
        for group in 0..self.router.groups {
            let (this, permits) = (self.clone(), permits.clone());
            groups.spawn(async move {
                let _permit = permits.acquire().await.map_err(|_| Status::cancelled("stopping"))?;
                this.drive_group(group, goal, deadline).await
            });
        }
        let mut changed = 0;
        while let Some(joined) = groups.join_next().await {
            changed += joined.map_err(|e| Status::internal(format!("group task failed: {e}")))??;
        }
        Ok(changed)
    }

    /// Moves one group to `goal`, one change at a time, at its leader.
    async fn drive_group(&self, group: GroupId, goal: Goal, deadline: Instant) -> Result<u64, Status> {
        let mut changed = 0;
        let mut waiting_for = format!("group {group} has no leader");
        while Instant::now() < deadline {
            let Some(view) = group_view(&self.router, self.cluster_id, group).await else {
                tokio::time::sleep(POLL).await;
                continue;
            };
            if view.conf.is_joint() {
                // The leader leaves it on its own once the change is applied.
                waiting_for = format!("group {group} is leaving a joint configuration");
                tokio::time::sleep(POLL).await;
                continue;
            }
            match goal.next_step(&view) {
                Step::Done => return Ok(changed),
                Step::Wait(reason) => waiting_for = reason,
                Step::MoveLeader(to) => {
                    if let Err(e) =
                        super::leaders::transfer(&self.router, self.cluster_id, group, view.leader, to).await
                    {
                        waiting_for = format!("moving group {group}'s leadership to node {to}: {}", e.message());
                    }
                    continue;
                }
                Step::Change(changes) => match self.change_at(view.leader, group, changes).await {
                    Ok(()) => {
                        changed += 1;
                        continue;
                    }
                    Err(e) => waiting_for = format!("changing group {group}: {}", e.message()),
                },
            }
            tokio::time::sleep(POLL).await;
        }
        Err(Status::deadline_exceeded(format!(
            "gave up after {CHANGE_DEADLINE:?}: {waiting_for}; run the command again to resume"
        )))
    }

    async fn change_at(&self, leader: NodeId, group: GroupId, changes: Vec<SingleChange>) -> Result<(), Status> {
        if leader == self.router.node {
            return change_here(&self.router, group, ConfChange::Change(changes)).await.map(|_| ()).map_err(status_of);
        }
        let (mut add_learners, mut add_voters, mut remove) = (Vec::new(), Vec::new(), Vec::new());
        for change in changes {
            match change {
                SingleChange::AddLearner(n) => add_learners.push(n),
                SingleChange::AddVoter(n) => add_voters.push(n),
                SingleChange::RemoveNode(n) => remove.push(n),
            }
        }
        let mut client = self
            .router
            .admin_client(leader)
            .ok_or_else(|| Status::unavailable(format!("node {leader} has no address")))?;
        client.change_group(proto::ChangeGroupRequest { group, add_learners, add_voters, remove }).await?;
        Ok(())
    }
}

/// Proposes `change` to the group's shard here; the index it applied at.
pub async fn change_here(router: &Router, group: GroupId, change: ConfChange) -> Result<u64, RequestError> {
    let (reply, answer) = flume::bounded(1);
    router.submit(group, ShardInput::ConfChange { group, change, reply: reply.into() });
    match tokio::time::timeout(crate::server::router::REQUEST_TIMEOUT, answer.recv_async()).await {
        Ok(Ok(Ok(Outcome::Written { revision }))) => Ok(revision),
        Ok(Ok(Ok(other))) => Err(RequestError::Refused(format!("unexpected outcome {other:?}"))),
        Ok(Ok(Err(e))) => Err(e),
        // The shard stopped with the change in hand: it may have been carried out.
        Ok(Err(_)) | Err(_) => Err(RequestError::Unknown),
    }
}

pub fn members_of(registry: &Registry) -> Vec<proto::Member> {
    registry
        .members
        .iter()
        .map(|(&node, m)| proto::Member { node, address: m.address.to_string(), voter: m.voter })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::ConfState;

    fn group(leader: NodeId, voters: &[NodeId], learners: &[NodeId], matched: &[(NodeId, u64)]) -> GroupView {
        GroupView {
            group: 7,
            leader,
            term: 3,
            commit: 1_000,
            conf: ConfState { learners: learners.iter().copied().collect(), ..ConfState::new(voters.iter().copied()) },
            matched: matched.iter().copied().collect(),
            active: matched.iter().map(|&(n, _)| n).collect(),
        }
    }

    fn changes(step: Step) -> Vec<SingleChange> {
        match step {
            Step::Change(changes) => changes,
            Step::Done => panic!("done"),
            Step::Wait(why) => panic!("waits: {why}"),
            Step::MoveLeader(to) => panic!("moves leadership to {to}"),
        }
    }

    #[test]
    fn a_new_node_joins_as_learner_and_is_promoted_only_once_caught_up() {
        let g = group(1, &[1, 2, 3], &[], &[(2, 1_000), (3, 1_000)]);
        assert_eq!(changes(Goal::Voter(4).next_step(&g)), [SingleChange::AddLearner(4)]);
        let behind = group(1, &[1, 2, 3], &[4], &[(4, 10)]);
        assert!(matches!(Goal::Voter(4).next_step(&behind), Step::Wait(_)));
        let close = group(1, &[1, 2, 3], &[4], &[(4, 1_000 - CAUGHT_UP_LAG_MAX)]);
        assert_eq!(changes(Goal::Voter(4).next_step(&close)), [SingleChange::AddVoter(4)]);
        let silent = GroupView { active: BTreeSet::new(), ..close };
        assert!(matches!(Goal::Voter(4).next_step(&silent), Step::Wait(_)), "a silent learner is not promoted");
        assert!(matches!(Goal::Voter(4).next_step(&group(1, &[1, 2, 3, 4], &[], &[])), Step::Done));
    }

    #[test]
    fn a_leader_being_removed_hands_over_to_the_most_caught_up_voter_first() {
        let g = group(2, &[1, 2, 3], &[], &[(1, 900), (3, 1_000)]);
        assert!(matches!(Goal::Removed(2).next_step(&g), Step::MoveLeader(3)));
        let g = group(1, &[1, 2, 3], &[], &[(2, 1_000), (3, 1_000)]);
        assert_eq!(changes(Goal::Removed(2).next_step(&g)), [SingleChange::RemoveNode(2)]);
        assert!(matches!(Goal::Removed(2).next_step(&group(1, &[1, 3], &[], &[])), Step::Done));
    }

    #[test]
    fn a_replacement_is_one_joint_swap_after_the_new_node_caught_up() {
        let fresh = group(1, &[1, 2, 3], &[], &[]);
        let swap = Goal::Swapped { old: 3, new: 4 };
        assert_eq!(changes(swap.next_step(&fresh)), [SingleChange::AddLearner(4)]);
        let caught_up = group(1, &[1, 2, 3], &[4], &[(4, 1_000)]);
        assert_eq!(changes(swap.next_step(&caught_up)), [SingleChange::AddVoter(4), SingleChange::RemoveNode(3)]);
        let old_leads = group(3, &[1, 2, 3], &[4], &[(1, 1_000), (4, 1_000)]);
        assert!(matches!(swap.next_step(&old_leads), Step::MoveLeader(_)));
        assert!(matches!(swap.next_step(&group(1, &[1, 2, 4], &[], &[])), Step::Done));
    }
}
