//! The core's view of its log: durable entries read through [`Storage`] followed by
//! an unstable tail the host has not yet acknowledged as persisted.

use super::error::StorageError;
use super::storage::{limit_size, Storage};
use super::types::{Entry, Index, Snapshot, Term};

/// Entries (and possibly a snapshot) not yet acknowledged as durable.
#[derive(Debug, Default)]
struct Unstable {
    /// A snapshot received from the leader, to be installed before `entries`.
    snapshot: Option<Snapshot>,
    /// Invariant: `entries[i].index == offset + i`.
    entries: Vec<Entry>,
    offset: Index,
    /// Entries below this index have been handed to the host in a `Ready`.
    handed_out_to: Index,
    snapshot_handed_out: bool,
}

pub struct RaftLog<S: Storage> {
    pub storage: S,
    unstable: Unstable,
    /// Invariant: `applied <= applying <= committed`, and `committed <= last_index()`.
    pub committed: Index,
    /// Highest index handed to the host for applying.
    pub applying: Index,
    /// Highest index the host has acknowledged as applied.
    pub applied: Index,
    /// Highest index known durable on this node whose term matches the current log.
    /// Invariant: `persisted <= last_index()`.
    pub persisted: Index,
}

impl<S: Storage> RaftLog<S> {
    pub fn new(storage: S, committed: Index, applied: Index) -> Self {
        let first = storage.first_index();
        let last = storage.last_index();
        // A state machine restored from a snapshot may be ahead of the persisted commit.
        let committed = committed.max(first - 1);
        assert!(committed <= last, "commit {committed} beyond last index {last}");
        let applied = applied.max(first - 1);
        assert!(applied <= committed, "applied {applied} beyond commit {committed}");
        RaftLog {
            storage,
            unstable: Unstable { offset: last + 1, handed_out_to: last + 1, ..Unstable::default() },
            committed,
            applying: applied,
            applied,
            persisted: last,
        }
    }

    pub fn first_index(&self) -> Index {
        match &self.unstable.snapshot {
            Some(snap) => snap.meta.index + 1,
            None => self.storage.first_index(),
        }
    }

    pub fn last_index(&self) -> Index {
        if let Some(last) = self.unstable.entries.last() {
            return last.index;
        }
        match &self.unstable.snapshot {
            Some(snap) => snap.meta.index,
            None => self.storage.last_index(),
        }
    }

    pub fn last_term(&self) -> Term {
        self.term(self.last_index()).unwrap_or_else(|e| panic!("term of last index unreadable: {e}"))
    }

    pub fn term(&self, index: Index) -> Result<Term, StorageError> {
        let dummy = self.first_index() - 1;
        if index < dummy {
            return Err(StorageError::Compacted);
        }
        if index > self.last_index() {
            return Err(StorageError::Unavailable);
        }
        if index >= self.unstable.offset {
            return Ok(self.unstable.entries[(index - self.unstable.offset) as usize].term);
        }
        if let Some(snap) = &self.unstable.snapshot {
            if index == snap.meta.index {
                return Ok(snap.meta.term);
            }
        }
        self.storage.term(index)
    }

    /// The term at `index`, or 0 when it is out of range (compacted or beyond the end).
    pub fn term_or_zero(&self, index: Index) -> Term {
        match self.term(index) {
            Ok(term) => term,
            Err(StorageError::Compacted | StorageError::Unavailable) => 0,
            Err(e) => panic!("storage failed reading term at {index}: {e}"),
        }
    }

    pub fn match_term(&self, index: Index, term: Term) -> bool {
        matches!(self.term(index), Ok(t) if t == term)
    }

    /// Raft §5.4.1: whether a candidate's log is at least as up to date as ours.
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        let our_term = self.last_term();
        last_term > our_term || (last_term == our_term && last_index >= self.last_index())
    }

    /// Entries in `[lo, hi)` within `max_bytes` (at least one when `lo < hi`).
    pub fn entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if lo < self.first_index() {
            return Err(StorageError::Compacted);
        }
        assert!(hi <= self.last_index() + 1, "entries [{lo}, {hi}) beyond last {}", self.last_index());
        if lo >= hi {
            return Ok(Vec::new());
        }
        let offset = self.unstable.offset;
        let mut out = Vec::new();
        if lo < offset {
            let stable_hi = hi.min(offset);
            out = self.storage.entries(lo, stable_hi, max_bytes)?;
            let cut_by_size = out.len() < (stable_hi - lo) as usize;
            if hi <= offset || cut_by_size {
                return Ok(out);
            }
        }
        let from = lo.max(offset);
        out.extend_from_slice(&self.unstable.entries[(from - offset) as usize..(hi - offset) as usize]);
        let len = limit_size(&out, max_bytes).len();
        out.truncate(len);
        Ok(out)
    }

    /// The first index at which `entries` disagree with the log (or run past its end);
    /// 0 when every entry is already present.
    fn find_conflict(&self, entries: &[Entry]) -> Index {
        entries.iter().find(|e| !self.match_term(e.index, e.term)).map_or(0, |e| e.index)
    }

    /// The largest index at or below `index` whose term is at most `term`, with its term.
    /// Used both by a follower to build a rejection hint and by the leader to use one.
    pub fn find_conflict_by_term(&self, index: Index, term: Term) -> (Index, Term) {
        let mut i = index.min(self.last_index());
        loop {
            match self.term(i) {
                Ok(t) if t > term => i -= 1,
                Ok(t) => return (i, t),
                Err(_) => return (i, 0),
            }
        }
    }

    /// A follower's append (Raft §5.3). Returns the index of the last new entry when
    /// `prev` matches, `None` when the leader must back off.
    pub fn maybe_append(
        &mut self,
        prev_index: Index,
        prev_term: Term,
        commit: Index,
        entries: &[Entry],
    ) -> Option<Index> {
        if !self.match_term(prev_index, prev_term) {
            return None;
        }
        let last_new = prev_index + entries.len() as u64;
        let conflict = self.find_conflict(entries);
        if conflict != 0 {
            assert!(
                conflict > self.committed,
                "conflict at {conflict} would overwrite committed entries (commit {})",
                self.committed
            );
            self.append(&entries[(conflict - prev_index - 1) as usize..]);
        }
        self.commit_to(commit.min(last_new));
        Some(last_new)
    }

    /// Appends `entries`, truncating any conflicting unstable or stable suffix.
    pub fn append(&mut self, entries: &[Entry]) -> Index {
        let Some(first) = entries.first() else {
            return self.last_index();
        };
        let after = first.index - 1;
        assert!(after >= self.committed, "append after {after} rewrites committed {}", self.committed);
        assert!(after <= self.last_index(), "append after {after} leaves a gap");
        let unstable = &mut self.unstable;
        if after + 1 >= unstable.offset {
            unstable.entries.truncate((after + 1 - unstable.offset) as usize);
        } else {
            // The conflict reaches into stable storage: the host overwrites from `after + 1`.
            unstable.entries.clear();
            unstable.offset = after + 1;
        }
        unstable.handed_out_to = unstable.handed_out_to.min(after + 1);
        unstable.entries.extend_from_slice(entries);
        self.persisted = self.persisted.min(after);
        self.last_index()
    }

    pub fn commit_to(&mut self, index: Index) {
        if index > self.committed {
            assert!(index <= self.last_index(), "commit {index} beyond last {}", self.last_index());
            self.committed = index;
        }
    }

    /// Commits `index` if its term is `term` (the leader only counts current-term
    /// entries, Raft §5.4.2).
    pub fn maybe_commit(&mut self, index: Index, term: Term) -> bool {
        if index > self.committed && self.term_or_zero(index) == term {
            self.commit_to(index);
            return true;
        }
        false
    }

    /// Replaces the log with a snapshot from the leader.
    pub fn restore(&mut self, snapshot: Snapshot) {
        let index = snapshot.meta.index;
        self.committed = index;
        self.unstable.entries.clear();
        self.unstable.offset = index + 1;
        self.unstable.handed_out_to = index + 1;
        self.unstable.snapshot = Some(snapshot);
        self.unstable.snapshot_handed_out = false;
        self.persisted = self.persisted.min(index);
    }

    /// A snapshot restored but not yet handed to the host.
    pub fn snapshot_not_handed_out(&self) -> bool {
        self.unstable.snapshot.is_some() && !self.unstable.snapshot_handed_out
    }

    pub fn has_unstable_to_hand_out(&self) -> bool {
        (self.unstable.snapshot.is_some() && !self.unstable.snapshot_handed_out)
            || self.unstable.handed_out_to < self.unstable.offset + self.unstable.entries.len() as u64
    }

    /// Takes the snapshot and entries the host must persist next, marking them handed out.
    pub fn take_unstable(&mut self) -> (Option<Snapshot>, Vec<Entry>) {
        let unstable = &mut self.unstable;
        let snapshot = match &unstable.snapshot {
            Some(snap) if !unstable.snapshot_handed_out => {
                unstable.snapshot_handed_out = true;
                Some(snap.clone())
            }
            _ => None,
        };
        let from = unstable.handed_out_to.max(unstable.offset);
        let entries = unstable.entries[(from - unstable.offset) as usize..].to_vec();
        unstable.handed_out_to = unstable.offset + unstable.entries.len() as u64;
        (snapshot, entries)
    }

    /// The host made entries up to `(index, term)` durable. Ignored if the entry was
    /// since replaced by a conflicting append.
    pub fn stable_to(&mut self, index: Index, term: Term) {
        if !self.match_term(index, term) {
            return;
        }
        let unstable = &mut self.unstable;
        if index >= unstable.offset && unstable.snapshot.is_none() {
            unstable.entries.drain(..(index + 1 - unstable.offset) as usize);
            unstable.offset = index + 1;
        }
        self.persisted = self.persisted.max(index);
    }

    /// The host installed the snapshot at `index`.
    pub fn stable_snapshot_to(&mut self, index: Index) {
        if self.unstable.snapshot.as_ref().map(|s| s.meta.index) == Some(index) {
            self.unstable.snapshot = None;
            self.persisted = self.persisted.max(index);
        }
    }

    pub fn unstable_snapshot(&self) -> Option<&Snapshot> {
        self.unstable.snapshot.as_ref()
    }

    /// Committed, locally durable entries not yet handed out, within `max_bytes`.
    pub fn take_committed(&mut self, max_bytes: u64) -> Vec<Entry> {
        let hi = self.committed.min(self.persisted);
        if self.applying >= hi || self.unstable.snapshot.is_some() {
            return Vec::new();
        }
        let entries = self
            .entries(self.applying + 1, hi + 1, max_bytes)
            .unwrap_or_else(|e| panic!("committed entries unreadable from {}: {e}", self.applying + 1));
        if let Some(last) = entries.last() {
            self.applying = last.index;
        }
        entries
    }

    pub fn applied_to(&mut self, index: Index) {
        assert!(index <= self.applying, "applied {index} beyond handed out {}", self.applying);
        self.applied = self.applied.max(index);
    }

    pub fn check_invariants(&self) {
        assert!(self.applied <= self.applying, "applied {} > applying {}", self.applied, self.applying);
        assert!(self.applying <= self.committed, "applying {} > committed {}", self.applying, self.committed);
        assert!(self.committed <= self.last_index(), "committed {} > last {}", self.committed, self.last_index());
        assert!(self.persisted <= self.last_index(), "persisted {} > last {}", self.persisted, self.last_index());
    }
}
