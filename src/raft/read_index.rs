//! Linearizable reads waiting for the leader to confirm it still leads.

use std::collections::VecDeque;

use super::types::{Index, ReadCtx, ReadState};

#[derive(Debug)]
struct PendingRead {
    ctx: ReadCtx,
    index: Index,
    /// The heartbeat round whose quorum acknowledgement confirms this read; 0 while
    /// the leader has not yet committed an entry of its term.
    round: u64,
}

/// Invariant: rounds are non-decreasing front to back, except for a prefix of reads
/// with round 0 awaiting the leader's first commit.
#[derive(Debug)]
pub struct ReadIndexQueue {
    pending: VecDeque<PendingRead>,
    max: usize,
    /// Reads were registered for a round not yet broadcast.
    round_needed: bool,
}

impl ReadIndexQueue {
    pub fn new(max: usize) -> Self {
        ReadIndexQueue { pending: VecDeque::new(), max, round_needed: false }
    }

    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.max
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn round_needed(&self) -> bool {
        self.round_needed
    }

    /// A read that can be confirmed once the next round (`next_round`) is acknowledged.
    pub fn add(&mut self, ctx: ReadCtx, index: Index, next_round: u64) {
        assert!(!self.is_full(), "read queue overflow");
        self.pending.push_back(PendingRead { ctx, index, round: next_round });
        self.round_needed = true;
    }

    /// A read that must wait until the leader commits an entry of its term.
    pub fn add_awaiting_commit(&mut self, ctx: ReadCtx) {
        assert!(!self.is_full(), "read queue overflow");
        self.pending.push_back(PendingRead { ctx, index: 0, round: 0 });
    }

    /// The leader committed `index` in its term: reads waiting for that get it as
    /// their read index and join the next round.
    pub fn on_first_commit(&mut self, index: Index, next_round: u64) {
        for read in self.pending.iter_mut().filter(|r| r.round == 0) {
            read.index = index;
            read.round = next_round;
            self.round_needed = true;
        }
    }

    pub fn on_round_sent(&mut self) {
        self.round_needed = false;
    }

    /// Releases every read confirmed by a quorum acknowledging `round`.
    pub fn confirm(&mut self, round: u64, out: &mut Vec<ReadState>) {
        while let Some(read) = self.pending.front() {
            if read.round == 0 || read.round > round {
                break;
            }
            let read = self.pending.pop_front().expect("front exists");
            out.push(ReadState { ctx: read.ctx, index: read.index });
        }
    }

    pub fn clear(&mut self) {
        self.pending.clear();
        self.round_needed = false;
    }
}

/// Heartbeat rounds remembered for the lease; older ones are forgotten (which only
/// lets the lease lapse sooner).
const ROUNDS_REMEMBERED_MAX: usize = 64;

/// The leader's heartbeat rounds: which were sent when, and which a quorum acknowledged.
/// Rounds keep counting across terms so an answer from an old term never matches.
#[derive(Debug, Default)]
pub struct Rounds {
    last_sent: u64,
    /// (round, tick it was sent at), oldest first.
    sent_at: VecDeque<(u64, u64)>,
    /// Invariant: `quorum_acked <= last_sent`.
    pub quorum_acked: u64,
    /// The lease is valid while the leader's tick count is below this.
    lease_until_tick: u64,
    /// Set for the rest of the term once a leadership transfer starts.
    lease_revoked: bool,
}

impl Rounds {
    pub fn start_term(&mut self) {
        self.sent_at.clear();
        self.quorum_acked = self.last_sent;
        self.lease_until_tick = 0;
        self.lease_revoked = false;
    }

    pub fn next_round(&self) -> u64 {
        self.last_sent + 1
    }

    pub fn last_sent(&self) -> u64 {
        self.last_sent
    }

    pub fn send(&mut self, now_tick: u64) -> u64 {
        self.last_sent += 1;
        if self.sent_at.len() >= ROUNDS_REMEMBERED_MAX {
            self.sent_at.pop_front();
        }
        self.sent_at.push_back((self.last_sent, now_tick));
        self.last_sent
    }

    /// A quorum acknowledged `round`. Extends the lease to `lease_ticks` after the
    /// round was sent: followers refuse other candidates for at least that long after
    /// they received it.
    pub fn acked(&mut self, round: u64, lease_ticks: u64) -> bool {
        if round <= self.quorum_acked {
            return false;
        }
        assert!(round <= self.last_sent, "round {round} acked but never sent");
        self.quorum_acked = round;
        while let Some(&(r, sent_tick)) = self.sent_at.front() {
            if r > round {
                break;
            }
            self.sent_at.pop_front();
            if r == round && !self.lease_revoked {
                self.lease_until_tick = self.lease_until_tick.max(sent_tick + lease_ticks);
            }
        }
        true
    }

    pub fn lease_valid(&self, now_tick: u64) -> bool {
        !self.lease_revoked && now_tick < self.lease_until_tick
    }

    pub fn revoke_lease(&mut self) {
        self.lease_revoked = true;
        self.lease_until_tick = 0;
    }
}
