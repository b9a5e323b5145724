//! The core's read-only view of its durable log, and an in-memory implementation.
//!
//! The core never writes storage: the host writes what a `Ready` tells it to, then
//! acknowledges. Until then the core serves those entries from its own unstable buffer.

use super::error::StorageError;
use super::types::{
    ConfChange, ConfState, Entry, EntryPayload, HardState, Index, NodeId, SingleChange, Snapshot, SnapshotMeta, Term,
};

/// What the core reads from its host's log. Implementations must guarantee:
/// - `first_index() == snapshot index + 1` and `last_index() >= first_index() - 1`;
/// - `term(first_index() - 1)` answers (the snapshot's term); anything lower is
///   `Compacted`, anything above `last_index()` is `Unavailable`;
/// - `entries(lo, hi, max_bytes)` returns `[lo, hi)` in order, truncated to fit
///   `max_bytes` but never empty when `lo < hi`.
pub trait Storage {
    /// The persisted hard state and configuration the node restarts from.
    fn initial_state(&self) -> (HardState, ConfState);
    fn entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError>;
    fn term(&self, index: Index) -> Result<Term, StorageError>;
    fn first_index(&self) -> Index;
    fn last_index(&self) -> Index;
    /// The latest snapshot, to send to a follower that needs compacted entries.
    fn snapshot(&self) -> Result<Snapshot, StorageError>;
}

/// A log held in memory. Used by tests and the simulator; the host appends, installs
/// snapshots and compacts through the inherent methods.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    hard_state: HardState,
    snapshot: Snapshot,
    /// Invariant: `entries[i].index == snapshot.meta.index + 1 + i`.
    entries: Vec<Entry>,
    /// The configuration as of the last entry written (or the snapshot).
    conf_state: ConfState,
}

impl MemStorage {
    /// A storage for a new cluster whose initial voters are `conf_state`.
    pub fn new_with_conf(conf_state: ConfState) -> Self {
        let mut storage = MemStorage::default();
        storage.snapshot.meta.conf_state = conf_state.clone();
        storage.conf_state = conf_state;
        storage
    }

    /// A storage for a founding member of a new cluster: the initial configuration is
    /// the first log entry, committed, so that members added later learn it by
    /// replaying the log like every other change.
    pub fn bootstrap(voters: impl IntoIterator<Item = NodeId>) -> Self {
        let (entry, hard_state) = bootstrap_state(voters);
        MemStorage { hard_state, entries: vec![entry], ..MemStorage::default() }
    }

    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    pub fn set_conf_state(&mut self, conf_state: ConfState) {
        self.conf_state = conf_state;
    }

    /// Appends `entries`, first discarding any existing suffix from the first new index.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        let offset = self.snapshot.meta.index + 1;
        assert!(
            first.index >= offset && first.index <= self.last_index() + 1,
            "append at {} leaves a gap or rewrites the snapshot (first {}, last {})",
            first.index,
            offset,
            self.last_index()
        );
        self.entries.truncate((first.index - offset) as usize);
        self.entries.extend_from_slice(entries);
    }

    /// Replaces the whole log with `snapshot`.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) {
        self.hard_state.commit = self.hard_state.commit.max(snapshot.meta.index);
        self.hard_state.term = self.hard_state.term.max(snapshot.meta.term);
        self.conf_state = snapshot.meta.conf_state.clone();
        self.entries.clear();
        self.snapshot = snapshot;
    }

    /// Records a snapshot of the state machine at `index` (which must be in the log)
    /// and releases the entries it covers.
    pub fn compact(&mut self, index: Index, conf_state: ConfState, data: bytes::Bytes) {
        let offset = self.snapshot.meta.index;
        if index <= offset {
            return;
        }
        let term = self.term(index).expect("compaction index must be in the log");
        self.entries.drain(..(index - offset) as usize);
        self.snapshot = Snapshot { meta: SnapshotMeta { index, term, conf_state }, data };
    }

    pub fn entries_all(&self) -> &[Entry] {
        &self.entries
    }

    pub fn snapshot_ref(&self) -> &Snapshot {
        &self.snapshot
    }
}

impl Storage for MemStorage {
    fn initial_state(&self) -> (HardState, ConfState) {
        (self.hard_state, self.conf_state.clone())
    }

    fn entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if lo < self.first_index() {
            return Err(StorageError::Compacted);
        }
        if hi > self.last_index() + 1 {
            return Err(StorageError::Unavailable);
        }
        let offset = self.snapshot.meta.index + 1;
        let slice = &self.entries[(lo - offset) as usize..(hi - offset) as usize];
        Ok(limit_size(slice, max_bytes).to_vec())
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        let snap = &self.snapshot.meta;
        if index < snap.index {
            return Err(StorageError::Compacted);
        }
        if index == snap.index {
            return Ok(snap.term);
        }
        self.entries.get((index - snap.index - 1) as usize).map(|e| e.term).ok_or(StorageError::Unavailable)
    }

    fn first_index(&self) -> Index {
        self.snapshot.meta.index + 1
    }

    fn last_index(&self) -> Index {
        self.snapshot.meta.index + self.entries.len() as u64
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        Ok(self.snapshot.clone())
    }
}

/// What a founding member of a new cluster starts with: the initial configuration as
/// the first log entry, already committed, and the hard state recording it.
pub fn bootstrap_state(voters: impl IntoIterator<Item = NodeId>) -> (Entry, HardState) {
    let changes = voters.into_iter().map(SingleChange::AddVoter).collect();
    let payload = EntryPayload::ConfChange(ConfChange::Change(changes));
    (Entry { term: 1, index: 1, payload }, HardState { term: 1, vote: None, commit: 1 })
}

/// The longest prefix of `entries` within `max_bytes`, but at least one entry.
pub fn limit_size(entries: &[Entry], max_bytes: u64) -> &[Entry] {
    let mut total = 0u64;
    let mut count = 0;
    for entry in entries {
        total += entry.size_bytes();
        if count > 0 && total > max_bytes {
            break;
        }
        count += 1;
    }
    &entries[..count]
}
