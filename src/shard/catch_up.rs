//! Bulk catch-up: a leader invites followers far behind to pull committed entries
//! over Flight, and serves those reads from its log.

use super::{GroupId, RequestError, Shard};
use crate::raft::{Entry, Index, Role, Storage, Term};
use crate::state::StateMachine;

/// Entries a follower must lag by before its leader invites it to pull them in bulk.
pub const CATCH_UP_MIN_ENTRIES: u64 = 1024;
/// Ticks before the same follower is invited again for the same group.
const CATCH_UP_REOFFER_TICKS: u64 = 20;
/// Bytes of entries one bulk read returns.
pub const CATCH_UP_READ_MAX_BYTES: u64 = 4 << 20;

/// A leader's invitation to a follower far behind to pull committed entries
/// `from..=to` in bulk (over Flight) rather than through many appends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatchUp {
    pub group: GroupId,
    pub term: Term,
    pub from: Index,
    pub to: Index,
}

/// Entries read for a follower's bulk catch-up, with what makes them an append from
/// this leader: its term, its commit index and the term of the entry before them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryRange {
    pub term: Term,
    pub commit: Index,
    pub prev_term: Term,
    pub entries: Vec<Entry>,
}

impl<S: StateMachine + Default> Shard<S> {
    /// For every group led here, invites each follower heard from lately and lagging
    /// the commit index by more than `CATCH_UP_MIN_ENTRIES` (while the log still holds
    /// what it lacks) to pull the entries in bulk; at most once per
    /// `CATCH_UP_REOFFER_TICKS`.
    pub(super) fn invite_far_behind_followers(&mut self) {
        // A sleeping leader's followers all hold its whole log: only awake ones.
        for &group in &self.awake {
            let Some(g) = self.groups.get(&group) else { continue };
            if g.raft.role() != Role::Leader {
                continue;
            }
            let (committed, first) = (g.raft.committed(), g.raft.storage().first_index());
            let conf = g.raft.conf_state();
            let members = conf.voters.iter().chain(&conf.voters_outgoing).chain(&conf.learners);
            for &peer in members.filter(|&&p| p != self.node) {
                // Only a follower heard from lately: an invitation to one that is down
                // is lost (the peer transport drops what was queued for a broken
                // stream) and would hold back the next for `CATCH_UP_REOFFER_TICKS`
                // after it returns.
                let Some(progress) = g.raft.progress(peer).filter(|p| p.recent_active) else { continue };
                let matched = progress.matched;
                if matched + CATCH_UP_MIN_ENTRIES >= committed || matched + 1 < first {
                    continue;
                }
                let last = self.catch_up_offered.get(&(group, peer)).copied();
                if last.is_some_and(|at| at + CATCH_UP_REOFFER_TICKS > self.ticks) {
                    continue;
                }
                self.catch_up_offered.insert((group, peer), self.ticks);
                let invitation = CatchUp { group, term: g.raft.term(), from: matched + 1, to: committed };
                self.catch_up.entry(peer).or_default().push(invitation);
            }
        }
    }

    /// Catch-up invitations for peers, per destination node.
    pub fn take_catch_up(&mut self) -> std::collections::BTreeMap<crate::raft::NodeId, Vec<CatchUp>> {
        std::mem::take(&mut self.catch_up)
    }

    /// Committed entries `from..=to` (as many as fit `CATCH_UP_READ_MAX_BYTES`) for a
    /// follower's bulk catch-up. Only a leader answers, and only from its log.
    pub fn read_entries(&self, group: GroupId, from: Index, to: Index) -> Result<EntryRange, RequestError> {
        let g = self.groups.get(&group).ok_or(RequestError::UnknownGroup(group))?;
        if g.raft.role() != Role::Leader {
            return Err(RequestError::NotLeader { leader: g.raft.leader() });
        }
        let to = to.min(g.raft.committed());
        if from == 0 || to < from {
            return Err(RequestError::Refused(format!("no committed entries in {from}..={to}")));
        }
        let gone = || RequestError::Refused(format!("entries from {from} are compacted"));
        let prev_term = g.raft.term_at(from - 1).ok_or_else(gone)?;
        let entries = g.raft.storage().entries(from, to + 1, CATCH_UP_READ_MAX_BYTES).map_err(|_| gone())?;
        Ok(EntryRange { term: g.raft.term(), commit: g.raft.committed(), prev_term, entries })
    }
}
