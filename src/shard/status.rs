//! What a shard tells operators about its groups.

use super::{GroupId, Shard};
use crate::raft::{ConfState, Index, NodeId, Role, Term};
use crate::state::StateMachine;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    pub group: GroupId,
    pub role: Role,
    pub leader: Option<NodeId>,
    pub term: Term,
    pub commit: Index,
    pub applied: Index,
    pub last_index: Index,
    pub conf: ConfState,
    /// Only on the leader: each other member's matched index, and whether it was
    /// heard from recently.
    pub progress: Vec<(NodeId, Index, bool)>,
    /// This replica lost entries to a storage fault and does not vote until caught up.
    pub abstaining: bool,
}

impl<S: StateMachine + Default> Shard<S> {
    /// Each group's applied index (for watchers, who wait for their groups to move).
    pub fn applied_indexes(&self) -> impl Iterator<Item = (GroupId, crate::raft::Index)> + '_ {
        self.groups.iter().map(|(&group, g)| (group, g.state.last_applied()))
    }

    /// Each group's Raft status, for operators.
    pub fn status(&self) -> Vec<GroupStatus> {
        self.groups
            .iter()
            .map(|(&group, g)| GroupStatus {
                group,
                role: g.raft.role(),
                leader: g.raft.leader(),
                term: g.raft.term(),
                commit: g.raft.committed(),
                applied: g.state.last_applied(),
                last_index: g.raft.last_index(),
                conf: g.raft.conf_state().clone(),
                progress: g
                    .raft
                    .conf_state()
                    .members()
                    .into_iter()
                    .filter(|&peer| peer != self.node)
                    .filter_map(|peer| g.raft.progress(peer).map(|p| (peer, p.matched, p.recent_active)))
                    .collect(),
                abstaining: g.raft.is_abstaining(),
            })
            .collect()
    }
}
