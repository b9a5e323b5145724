//! The `LogStore` contract the Raft host writes through, and its in-memory
//! implementation.

use std::cell::RefCell;
use std::rc::Rc;

use crate::raft::{
    limit_size, ConfState, Entry, HardState, Index, Snapshot, SnapshotMeta, Storage, StorageError, Term,
};

use super::codec::{GroupId, Record};
use super::index::{Location, LogIndex};
use super::LogError;

/// A log shared by many Raft groups. Writes take effect in memory at once (reads see
/// them); an implementation says how they become durable (for the shard log: one
/// fdatasync covers every write staged before it).
///
/// Implementations must guarantee, per group:
/// - `append` keeps entries contiguous: it discards any suffix from the first new index;
/// - `compact` releases entries up to a snapshot index and keeps the rest;
/// - `install_snapshot` replaces the whole log;
/// - after a restart from durable state, reads answer as they did when it was written.
pub trait LogStore {
    /// Records are applied to the index and staged for writing, in order.
    fn write(&mut self, records: Vec<Record>) -> Result<(), LogError>;
    fn index(&self) -> &LogIndex;
    /// Reads an entry that the index places at `location` (not cached in memory).
    fn read_entry(&self, group: GroupId, index: Index, location: Location) -> Result<Entry, LogError>;

    fn append(&mut self, group: GroupId, entries: &[Entry]) -> Result<(), LogError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let (snapshot_index, last) = self.index().group(group).map_or((0, 0), |g| (g.snapshot.index, g.last_index()));
        if first.index <= snapshot_index || first.index > last + 1 {
            return Err(LogError::Gap { group, index: first.index, last });
        }
        if entries.iter().enumerate().any(|(i, e)| e.index != first.index + i as u64) {
            return Err(LogError::Invalid("entries are not contiguous"));
        }
        let mut records = Vec::with_capacity(entries.len() + 1);
        if first.index <= last {
            records.push(Record::Truncate { group, from: first.index });
        }
        records.extend(entries.iter().map(|entry| Record::Entry { group, entry: entry.clone() }));
        self.write(records)
    }

    fn set_hard_state(&mut self, group: GroupId, hard_state: HardState) -> Result<(), LogError> {
        self.write(vec![Record::HardState { group, hard_state }])
    }

    /// Records a snapshot of the group's state machine at `meta.index` (which it has
    /// applied) and releases the entries it covers.
    fn compact(&mut self, group: GroupId, meta: SnapshotMeta) -> Result<(), LogError> {
        let g = self.index().group(group).ok_or(LogError::UnknownGroup(group))?;
        if meta.index <= g.snapshot.index {
            return Ok(());
        }
        if g.term(meta.index) != Some(meta.term) {
            return Err(LogError::Invalid("compaction index is not in the log with that term"));
        }
        let SnapshotMeta { index, term, conf_state } = meta;
        self.write(vec![Record::Snapshot { group, index, term, conf_state }])
    }

    /// Replaces the group's log with a snapshot received from the leader.
    fn install_snapshot(&mut self, group: GroupId, meta: SnapshotMeta) -> Result<(), LogError> {
        let SnapshotMeta { index, term, conf_state } = meta;
        let hard_state = self.index().group(group).map(|g| g.hard_state).unwrap_or_default();
        let hard_state =
            HardState { term: hard_state.term.max(term), commit: hard_state.commit.max(index), ..hard_state };
        self.write(vec![
            Record::Truncate { group, from: 0 },
            Record::Snapshot { group, index, term, conf_state },
            Record::HardState { group, hard_state },
        ])
    }

    fn hard_state(&self, group: GroupId) -> HardState {
        self.index().group(group).map(|g| g.hard_state).unwrap_or_default()
    }

    fn snapshot_meta(&self, group: GroupId) -> SnapshotMeta {
        self.index().group(group).map(|g| g.snapshot.clone()).unwrap_or_default()
    }

    fn first_index(&self, group: GroupId) -> Index {
        self.index().group(group).map_or(1, |g| g.first_index())
    }

    fn last_index(&self, group: GroupId) -> Index {
        self.index().group(group).map_or(0, |g| g.last_index())
    }

    fn term(&self, group: GroupId, index: Index) -> Result<Term, StorageError> {
        let Some(g) = self.index().group(group) else {
            return if index == 0 { Ok(0) } else { Err(StorageError::Unavailable) };
        };
        if index < g.snapshot.index {
            return Err(StorageError::Compacted);
        }
        g.term(index).ok_or(StorageError::Unavailable)
    }

    fn entries(&self, group: GroupId, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let Some(g) = self.index().group(group) else {
            return if lo >= hi { Ok(Vec::new()) } else { Err(StorageError::Unavailable) };
        };
        if lo < g.first_index() {
            return Err(StorageError::Compacted);
        }
        if hi > g.last_index() + 1 {
            return Err(StorageError::Unavailable);
        }
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for index in lo..hi {
            let loc = g.entry_loc(index).ok_or(StorageError::Unavailable)?;
            let entry = match &loc.cached {
                Some(entry) => entry.clone(),
                None => self.read_entry(group, index, loc.location).map_err(|e| StorageError::Fatal(e.to_string()))?,
            };
            bytes += entry.size_bytes();
            out.push(entry);
            if bytes >= max_bytes {
                break;
            }
        }
        let len = limit_size(&out, max_bytes).len();
        out.truncate(len);
        Ok(out)
    }
}

/// A log store held entirely in memory: the reference implementation the shard log
/// is checked against.
#[derive(Debug, Default)]
pub struct MemLogStore {
    index: LogIndex,
}

impl LogStore for MemLogStore {
    fn write(&mut self, records: Vec<Record>) -> Result<(), LogError> {
        let here = Location { segment: 0, offset: 0 };
        records.iter().try_for_each(|record| self.index.apply(record, here, true))
    }

    fn index(&self) -> &LogIndex {
        &self.index
    }

    fn read_entry(&self, group: GroupId, index: Index, _: Location) -> Result<Entry, LogError> {
        unreachable!("the in-memory store keeps every entry cached (group {group}, index {index})")
    }
}

/// Where the state-machine images behind the log's snapshot markers are kept.
pub trait SnapshotImages {
    /// The image of `group` at `index`, if there is one.
    fn image(&self, group: GroupId, index: Index) -> Option<bytes::Bytes>;
}

/// One group's view of a shared log, as the Raft core's read-only [`Storage`].
pub struct GroupStorage<L: LogStore> {
    pub log: Rc<RefCell<L>>,
    pub group: GroupId,
    /// The images a snapshot sent to a follower is made of (none: never send one).
    pub images: Option<Rc<dyn SnapshotImages>>,
}

impl<L: LogStore> Storage for GroupStorage<L> {
    fn initial_state(&self) -> (HardState, ConfState) {
        let log = self.log.borrow();
        (log.hard_state(self.group), log.snapshot_meta(self.group).conf_state)
    }

    fn entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        self.log.borrow().entries(self.group, lo, hi, max_bytes)
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        self.log.borrow().term(self.group, index)
    }

    fn first_index(&self) -> Index {
        self.log.borrow().first_index(self.group)
    }

    fn last_index(&self) -> Index {
        self.log.borrow().last_index(self.group)
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        // The log knows the marker; the image lives outside it (snapshot files).
        let meta = self.log.borrow().snapshot_meta(self.group);
        let images = self.images.as_ref().ok_or(StorageError::SnapshotTemporarilyUnavailable)?;
        let data = images.image(self.group, meta.index).ok_or(StorageError::SnapshotTemporarilyUnavailable)?;
        Ok(Snapshot { meta, data })
    }
}
