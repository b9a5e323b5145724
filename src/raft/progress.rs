//! What the leader knows about each follower's log, and the window of appends it may
//! have in flight to it.

use std::collections::VecDeque;

use super::types::Index;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The leader does not know where the follower's log matches: one append at a
    /// time, backing off on rejection.
    Probe,
    /// The follower matches; appends are pipelined within the in-flight window.
    Replicate,
    /// The follower needs a snapshot at `pending_index`; appends pause until it has one.
    Snapshot { pending_index: Index },
}

/// Appends sent but not yet acknowledged, oldest first, bounded in count and bytes.
#[derive(Clone, Debug)]
pub struct Inflights {
    /// (last index of the message, bytes of its entries)
    window: VecDeque<(Index, u64)>,
    bytes: u64,
    max_msgs: usize,
    max_bytes: u64,
}

impl Inflights {
    pub fn new(max_msgs: usize, max_bytes: u64) -> Self {
        Inflights { window: VecDeque::with_capacity(max_msgs.min(64)), bytes: 0, max_msgs, max_bytes }
    }

    pub fn is_full(&self) -> bool {
        self.window.len() >= self.max_msgs || self.bytes >= self.max_bytes
    }

    pub fn add(&mut self, last_index: Index, bytes: u64) {
        assert!(!self.is_full(), "in-flight window overflow");
        if let Some(&(prev, _)) = self.window.back() {
            assert!(last_index > prev, "in-flight indices must increase: {prev} then {last_index}");
        }
        self.window.push_back((last_index, bytes));
        self.bytes += bytes;
    }

    /// Releases every message whose last index is at most `index`.
    pub fn free_to(&mut self, index: Index) {
        while let Some(&(last, bytes)) = self.window.front() {
            if last > index {
                break;
            }
            self.window.pop_front();
            self.bytes -= bytes;
        }
    }

    /// Frees the oldest message: it was probably lost, and without this a window full
    /// of lost appends would stall the follower forever.
    pub fn free_first_one(&mut self) {
        if let Some((_, bytes)) = self.window.pop_front() {
            self.bytes -= bytes;
        }
    }

    pub fn reset(&mut self) {
        self.window.clear();
        self.bytes = 0;
    }

    pub fn len(&self) -> usize {
        self.window.len()
    }

    pub fn is_empty(&self) -> bool {
        self.window.is_empty()
    }
}

#[derive(Clone, Debug)]
pub struct Progress {
    /// Invariant: `matched < next`.
    pub matched: Index,
    pub next: Index,
    pub state: ProgressState,
    /// In probe state: an append is outstanding, so send no other until a response.
    pub probe_sent: bool,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// Highest heartbeat round the follower acknowledged in this term.
    pub acked_round: u64,
    /// Ticks spent in snapshot state, to retry a snapshot lost in transit.
    pub snapshot_ticks: u32,
    /// The nonce of the follower's last commit query (it lost entries): its log was
    /// forgotten once for that life.
    pub commit_query_nonce: Option<u64>,
    pub inflights: Inflights,
}

impl Progress {
    pub fn new(next: Index, max_msgs: usize, max_bytes: u64) -> Self {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            probe_sent: false,
            recent_active: false,
            acked_round: 0,
            snapshot_ticks: 0,
            commit_query_nonce: None,
            inflights: Inflights::new(max_msgs, max_bytes),
        }
    }

    /// A new leader knows nothing of the follower's log beyond `matched`.
    pub fn reset_for_leader(&mut self, matched: Index, next: Index) {
        self.matched = matched;
        self.next = next.max(matched + 1);
        self.recent_active = true;
        self.acked_round = 0;
        self.reset_state(ProgressState::Probe);
    }

    /// The follower no longer holds entries it acknowledged (its storage lost the tail
    /// of its log): forget everything it matched and probe from `next`, to be matched
    /// again by its next acceptance.
    pub fn regress(&mut self, next: Index) {
        self.matched = 0;
        self.next = next.max(1);
        self.reset_state(ProgressState::Probe);
    }

    pub fn become_probe(&mut self) {
        self.next = match self.state {
            // Assume the snapshot arrived; a rejection corrects us.
            ProgressState::Snapshot { pending_index } => (self.matched + 1).max(pending_index + 1),
            _ => self.matched + 1,
        };
        self.reset_state(ProgressState::Probe);
    }

    pub fn become_replicate(&mut self) {
        self.next = self.matched + 1;
        self.reset_state(ProgressState::Replicate);
    }

    pub fn become_snapshot(&mut self, pending_index: Index) {
        self.reset_state(ProgressState::Snapshot { pending_index });
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.state = state;
        self.probe_sent = false;
        self.snapshot_ticks = 0;
        self.inflights.reset();
    }

    /// Whether the leader should hold back appends to this follower.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.is_full(),
            ProgressState::Snapshot { .. } => true,
        }
    }

    /// Records an append of entries up to `last_index` carrying `bytes` bytes.
    pub fn sent_entries(&mut self, last_index: Index, bytes: u64, entry_count: usize) {
        match self.state {
            ProgressState::Replicate if entry_count > 0 => {
                self.next = last_index + 1;
                self.inflights.add(last_index, bytes);
            }
            ProgressState::Probe => self.probe_sent = true,
            _ => {}
        }
    }

    /// An accepted append up to `index`. Returns whether `matched` advanced.
    pub fn maybe_update(&mut self, index: Index) -> bool {
        let advanced = index > self.matched;
        if advanced {
            self.matched = index;
            self.probe_sent = false;
        }
        self.next = self.next.max(index + 1);
        advanced
    }

    /// A rejected append at `rejected`; `next_hint` is where the leader should try
    /// next. Returns false for a stale rejection that changes nothing.
    pub fn maybe_decr_to(&mut self, rejected: Index, next_hint: Index) -> bool {
        if self.state == ProgressState::Replicate {
            // Only a rejection of the next expected append is news; older ones are stale.
            if rejected <= self.matched {
                return false;
            }
            self.next = self.matched + 1;
            return true;
        }
        if self.next - 1 != rejected {
            return false;
        }
        self.next = next_hint.min(rejected).max(self.matched + 1);
        self.probe_sent = false;
        true
    }
}
