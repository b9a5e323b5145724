//! Protocol-aware recovery (after "Protocol-Aware Recovery for Consensus-Based
//! Storage", FAST 2018): a replica whose storage lost entries it may have acknowledged
//! abstains from elections until it holds everything committed again.
//!
//! Raft's safety rests on every acknowledged entry staying on its replica. A replica
//! that lost some (its host found damage in the last flush) no longer backs the
//! commits it helped make: if it voted now, a candidate lacking those entries could
//! win with its vote. So it neither votes nor campaigns (it still accepts entries and
//! acknowledges what it holds durably) until its commit index reaches a commit index
//! the leader reported *after* the damage was found. A fresh answer matters: a commit
//! index carried by a message sent before the crash may predate the very entries that
//! were lost. The follower asks with `CommitQuery` (a nonce drawn per life), and the
//! leader answers only once it has committed an entry of its own term, when its
//! commit index covers everything committed before it.
//!
//! Meanwhile the follower takes a commit index only from appends, whose log-matching
//! check vouches for its log up to them: a heartbeat's commit index rests on what the
//! leader believes the follower matched, and the follower may have lost that.

use rand::RngCore;

use super::storage::Storage;
use super::types::*;
use super::RaftNode;

#[derive(Clone, Copy, Debug)]
pub(super) struct Abstention {
    nonce: u64,
    /// The leader's answer: the commit index to reach.
    release_at: Option<Index>,
}

impl<S: Storage> RaftNode<S> {
    /// The host found that this replica may have lost entries it acknowledged: stop
    /// voting and campaigning until caught up (see the module docs). A node that is
    /// its group's only voter has nothing to catch up from and does not abstain.
    pub fn abstain(&mut self) {
        let only_voter = self.conf.voters.len() == 1 && self.conf.is_voter(self.id);
        if only_voter || self.abstention.is_some() {
            return;
        }
        if self.role != Role::Follower {
            self.become_follower(self.term, None);
        }
        self.abstention = Some(Abstention { nonce: self.rng.next_u64(), release_at: None });
    }

    /// Test-only sabotage: vote again at once after losing acknowledged entries.
    #[cfg(test)]
    pub(crate) fn forget_abstention(&mut self) {
        self.abstention = None;
    }

    /// Whether this replica still abstains from elections after a storage fault.
    pub fn is_abstaining(&self) -> bool {
        self.abstention.is_some()
    }

    /// Asks the leader for its commit index every heartbeat interval until answered.
    pub(super) fn tick_abstention(&mut self) {
        let Some(abstention) = self.abstention else { return };
        if abstention.release_at.is_some() || !self.ticks.is_multiple_of(u64::from(self.config.heartbeat_ticks)) {
            return;
        }
        if let Some(leader) = self.leader {
            let last_index = self.log.last_index();
            self.send(leader, MessageKind::CommitQuery { nonce: abstention.nonce, last_index });
        }
    }

    /// A follower that lost entries asks. Whatever it acknowledged before may be gone
    /// or replaced by older entries (a lost truncation brings back a conflicting
    /// suffix), so its progress is forgotten, once per life, and probed again from
    /// its last index (an idle leader would otherwise never learn that its log went
    /// backwards, and would keep sending it a commit index its log does not match).
    /// The answer comes once the commit index covers everything committed before
    /// this term.
    pub(super) fn on_commit_query(&mut self, from: NodeId, nonce: u64, last_index: Index) {
        let Some(pr) = self.progress.get_mut(&from) else { return };
        if pr.commit_query_nonce != Some(nonce) {
            pr.commit_query_nonce = Some(nonce);
            pr.regress(last_index.min(self.log.last_index()) + 1);
            self.maybe_send_append(from, true);
        }
        let committed = self.log.committed;
        if self.log.term_or_zero(committed) == self.term {
            self.send(from, MessageKind::CommitAnswer { nonce, commit: committed });
        }
    }

    pub(super) fn on_commit_answer(&mut self, nonce: u64, commit: Index) {
        if let Some(abstention) = &mut self.abstention {
            if abstention.nonce == nonce && abstention.release_at.is_none() {
                abstention.release_at = Some(commit);
            }
        }
    }

    /// Ends the abstention once the commit index reached the leader's answer.
    pub(super) fn maybe_end_abstention(&mut self) {
        if let Some(Abstention { release_at: Some(at), .. }) = self.abstention {
            if self.log.committed >= at {
                self.abstention = None;
            }
        }
    }
}
