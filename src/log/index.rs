//! The in-memory index of a shard log: per group, where each entry lives, its term,
//! the latest hard state and snapshot marker. Built by replaying records, whether they
//! were just written or are being recovered.

use std::collections::{BTreeMap, VecDeque};

use crate::raft::{ConfState, Entry, HardState, Index, SnapshotMeta, Term};

use super::codec::{GroupId, Record};
use super::LogError;

/// Where a record was written: the segment (by sequence number) and byte offset of
/// the record within it. The in-memory store uses sequence 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub segment: u64,
    pub offset: u64,
}

#[derive(Clone, Debug)]
pub struct EntryLoc {
    pub term: Term,
    pub location: Location,
    /// The entry itself while it is cheap to keep (the active segment); `None` once
    /// its segment is sealed and reads go to the mapped file.
    pub cached: Option<Entry>,
}

#[derive(Clone, Debug, Default)]
pub struct GroupLog {
    pub hard_state: HardState,
    pub hard_state_at: Option<Location>,
    pub snapshot: SnapshotMeta,
    pub snapshot_at: Option<Location>,
    /// Index before `entries[0]`. Equal to `snapshot.index` except transiently during
    /// recovery, when a group's snapshot marker was carried forward into a segment
    /// later than its oldest entries; `LogIndex::validate` checks they agree at the end.
    pub entries_base: Index,
    /// Invariant: `entries[i]` is the entry at `entries_base + 1 + i`.
    pub entries: VecDeque<EntryLoc>,
}

impl GroupLog {
    pub fn first_index(&self) -> Index {
        self.snapshot.index + 1
    }

    pub fn last_index(&self) -> Index {
        self.entries_base + self.entries.len() as u64
    }

    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        self.entry_loc(index).map(|e| e.term)
    }

    pub fn entry_loc(&self, index: Index) -> Option<&EntryLoc> {
        let offset = index.checked_sub(self.entries_base + 1)?;
        self.entries.get(offset as usize)
    }

    fn truncate_from(&mut self, from: Index) {
        if from <= self.entries_base {
            // Everything held goes; in recovery the tentative base moves down with it.
            self.entries.clear();
            self.entries_base = from.saturating_sub(1).max(self.snapshot.index);
            return;
        }
        self.entries.truncate((from - self.entries_base - 1) as usize);
    }

    fn apply_entry(&mut self, entry: &Entry, location: Location, cache: bool) {
        if entry.index <= self.snapshot.index {
            return; // Released by a snapshot marker.
        }
        if entry.index > self.last_index() + 1 {
            // Only in recovery (`LogStore::append` refuses gaps): the entries between
            // were compacted and their snapshot marker was carried forward into a later
            // segment. Start over from here; `LogIndex::validate` checks that a marker
            // covers the gap by the end.
            self.entries.clear();
            self.entries_base = entry.index - 1;
        }
        self.truncate_from(entry.index);
        self.entries.push_back(EntryLoc { term: entry.term, location, cached: cache.then(|| entry.clone()) });
    }

    /// Entries up to `index` are released; entries above it are kept if they agree
    /// with the marker (log compaction) and dropped otherwise (snapshot install also
    /// writes a truncate marker before it).
    fn apply_snapshot_marker(&mut self, index: Index, term: Term, conf_state: &ConfState, at: Location) {
        if index < self.snapshot.index {
            return;
        }
        let consistent = index > self.last_index() || index <= self.entries_base || self.term(index) == Some(term);
        if !consistent || index >= self.last_index() {
            self.entries.clear();
            self.entries_base = self.entries_base.max(index);
        } else if index > self.entries_base {
            self.entries.drain(..(index - self.entries_base) as usize);
            self.entries_base = index;
        }
        if self.entries.is_empty() {
            self.entries_base = index;
        }
        self.snapshot = SnapshotMeta { index, term, conf_state: conf_state.clone() };
        self.snapshot_at = Some(at);
    }
}

#[derive(Debug, Default)]
pub struct LogIndex {
    pub groups: BTreeMap<GroupId, GroupLog>,
}

impl LogIndex {
    pub fn group(&self, group: GroupId) -> Option<&GroupLog> {
        self.groups.get(&group)
    }

    /// Applies one record (written at `location`) to the index.
    pub fn apply(&mut self, record: &Record, location: Location, cache: bool) -> Result<(), LogError> {
        let Some(group_id) = record.group() else {
            return Ok(());
        };
        let group = self.groups.entry(group_id).or_default();
        match record {
            Record::Entry { entry, .. } => group.apply_entry(entry, location, cache),
            Record::HardState { hard_state, .. } => {
                group.hard_state = *hard_state;
                group.hard_state_at = Some(location);
            }
            Record::Truncate { from, .. } => group.truncate_from(*from),
            Record::Snapshot { index, term, conf_state, .. } => {
                group.apply_snapshot_marker(*index, *term, conf_state, location)
            }
            Record::Seal | Record::Resume { .. } => {}
        }
        Ok(())
    }

    /// After recovery: every group's entries must continue from its snapshot.
    pub fn validate(&self) -> Result<(), LogError> {
        for (&group, log) in &self.groups {
            if log.entries_base != log.snapshot.index {
                let (index, last) = (log.entries_base + 1, log.snapshot.index);
                return Err(LogError::Gap { group, index, last });
            }
        }
        Ok(())
    }
}
