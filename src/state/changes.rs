//! The recent key changes of one group, for watchers: every put and delete the state
//! machine applied, in log order, kept in memory up to a byte bound.
//!
//! A change's revision is the log index of the entry that made it (the writes of one
//! batch share it), so the changes of a group are the same on every replica and a
//! watcher can resume at any node from the revision after the last it saw. What a
//! node holds starts where its state did (its latest snapshot, or the beginning) and
//! loses its oldest changes past the bound: a watcher asking for an older revision is
//! told the oldest one still held. Nothing here is replicated or snapshotted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use super::builtin::Versioned;
use crate::raft::Index;

/// Bytes of changes each group keeps unless the node sets another bound.
pub const CHANGE_HISTORY_BYTES_DEFAULT: usize = 1 << 20;
/// What a change costs beyond its key and values (its record and queue slot).
const CHANGE_OVERHEAD_BYTES: usize = 64;

/// The bound of every group on this node. One setting for the process: states are
/// made by the shard (`Default`), which knows nothing of watchers.
static CHANGE_HISTORY_BYTES: AtomicUsize = AtomicUsize::new(CHANGE_HISTORY_BYTES_DEFAULT);

/// Sets how many bytes of changes each group keeps (at least one change is always
/// kept, so a watcher can see the latest even when it is large).
pub fn set_change_history_bytes(bytes: usize) {
    CHANGE_HISTORY_BYTES.store(bytes, Ordering::Relaxed);
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub revision: u64,
    pub key: Bytes,
    /// The new value; `None` for a delete.
    pub value: Option<Bytes>,
    /// The key's value before this change (`None`: it did not exist).
    pub prev: Option<Versioned>,
}

impl Change {
    fn cost(&self) -> usize {
        let prev = self.prev.as_ref().map_or(0, |p| p.value.len());
        self.key.len() + self.value.as_ref().map_or(0, Bytes::len) + prev + CHANGE_OVERHEAD_BYTES
    }
}

/// Which keys a watcher wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyFilter {
    Key(Bytes),
    Prefix(Bytes),
}

impl KeyFilter {
    pub fn matches(&self, key: &[u8]) -> bool {
        match self {
            KeyFilter::Key(k) => key == k.as_ref(),
            KeyFilter::Prefix(p) => key.starts_with(p),
        }
    }
}

/// How much one read of the history may return and look through.
#[derive(Clone, Copy, Debug)]
pub struct ReadBounds {
    pub max_changes: usize,
    pub max_bytes: usize,
    /// Changes looked at (matching or not) before the read stops.
    pub max_scanned: usize,
}

/// What a read of the history found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangesSince {
    /// The matching changes, in order; whole revisions only.
    pub changes: Vec<Change>,
    /// Every matching change below this revision has been returned: the next read
    /// starts here.
    pub next: u64,
    /// Whether the read reached the latest applied change (else a bound cut it short).
    pub caught_up: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("revision {asked} is no longer held here; the oldest revision held is {oldest}")]
pub struct Compacted {
    pub asked: u64,
    pub oldest: u64,
}

#[derive(Debug)]
pub struct ChangeHistory {
    changes: VecDeque<Change>,
    bytes: usize,
    /// Every change with a revision at or above this is held.
    held_from: u64,
}

impl Default for ChangeHistory {
    fn default() -> Self {
        ChangeHistory::starting_after(0)
    }
}

impl ChangeHistory {
    /// An empty history of a state that has applied everything up to `applied`.
    pub fn starting_after(applied: Index) -> ChangeHistory {
        ChangeHistory { changes: VecDeque::new(), bytes: 0, held_from: applied.saturating_add(1) }
    }

    pub fn oldest_held(&self) -> u64 {
        self.held_from
    }

    pub fn record(&mut self, change: Change) {
        self.bytes += change.cost();
        self.changes.push_back(change);
        let bound = CHANGE_HISTORY_BYTES.load(Ordering::Relaxed);
        while self.bytes > bound && self.changes.len() > 1 {
            let dropped = self.changes.pop_front().expect("more than one change held");
            self.bytes -= dropped.cost();
            self.held_from = dropped.revision + 1;
        }
    }

    /// The changes matching `filter` from revision `from` on, within `bounds`, of a
    /// state that has applied up to `applied`. A read stops only between revisions,
    /// so a batch's changes are never split between two reads.
    pub fn since(
        &self,
        from: u64,
        filter: &KeyFilter,
        bounds: ReadBounds,
        applied: Index,
    ) -> Result<ChangesSince, Compacted> {
        if from < self.held_from {
            return Err(Compacted { asked: from, oldest: self.held_from });
        }
        let first = self.changes.partition_point(|c| c.revision < from);
        let (mut found, mut bytes, mut scanned) = (Vec::new(), 0, 0);
        let mut current = None;
        for change in self.changes.range(first..) {
            if current != Some(change.revision) {
                let full = found.len() >= bounds.max_changes || bytes >= bounds.max_bytes;
                if full || scanned >= bounds.max_scanned {
                    return Ok(ChangesSince { changes: found, next: change.revision, caught_up: false });
                }
                current = Some(change.revision);
            }
            scanned += 1;
            if filter.matches(&change.key) {
                bytes += change.cost();
                found.push(change.clone());
            }
        }
        Ok(ChangesSince { changes: found, next: from.max(applied.saturating_add(1)), caught_up: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(revision: u64, key: &str, value: &str) -> Change {
        Change { revision, key: Bytes::from(key.to_owned()), value: Some(Bytes::from(value.to_owned())), prev: None }
    }

    const ALL: ReadBounds = ReadBounds { max_changes: 1000, max_bytes: 1 << 20, max_scanned: 1000 };

    #[test]
    fn reads_return_matching_changes_from_a_revision_and_say_where_to_go_on() {
        let mut h = ChangeHistory::starting_after(0);
        for (rev, key) in [(1, "a/1"), (2, "b/1"), (3, "a/2"), (3, "a/3"), (5, "a/1")] {
            h.record(put(rev, key, "v"));
        }
        let a = KeyFilter::Prefix(Bytes::from_static(b"a/"));
        let read = h.since(2, &a, ALL, 6).unwrap();
        assert_eq!(read.changes.iter().map(|c| c.revision).collect::<Vec<_>>(), vec![3, 3, 5]);
        assert_eq!(read.next, 7);
        let one = h.since(1, &KeyFilter::Key(Bytes::from_static(b"a/1")), ALL, 6).unwrap();
        assert_eq!(one.changes.iter().map(|c| c.revision).collect::<Vec<_>>(), vec![1, 5]);
        // A revision beyond what was applied: nothing yet, and the position stays.
        assert_eq!(h.since(9, &a, ALL, 6).unwrap(), ChangesSince { changes: vec![], next: 9, caught_up: true });
    }

    #[test]
    fn a_full_read_stops_between_revisions_never_inside_a_batch() {
        let mut h = ChangeHistory::starting_after(0);
        for key in ["k1", "k2", "k3"] {
            h.record(put(4, key, "v"));
        }
        h.record(put(6, "k4", "v"));
        let everything = KeyFilter::Prefix(Bytes::new());
        let bounds = ReadBounds { max_changes: 1, ..ALL };
        let first = h.since(1, &everything, bounds, 6).unwrap();
        assert_eq!((first.changes.len(), first.next, first.caught_up), (3, 6, false));
        let second = h.since(first.next, &everything, bounds, 6).unwrap();
        assert_eq!((second.changes.len(), second.next), (1, 7));
        // Scanning stops too, at a revision boundary, even when nothing matches.
        let none = KeyFilter::Key(Bytes::from_static(b"zz"));
        let scan = h.since(1, &none, ReadBounds { max_scanned: 2, ..ALL }, 6).unwrap();
        assert_eq!((scan.changes.len(), scan.next), (0, 6));
    }

    #[test]
    fn past_its_bound_the_history_forgets_its_oldest_and_says_so() {
        let mut h = ChangeHistory::starting_after(10);
        assert_eq!(h.since(5, &KeyFilter::Prefix(Bytes::new()), ALL, 10), Err(Compacted { asked: 5, oldest: 11 }));
        let big = "x".repeat(CHANGE_HISTORY_BYTES_DEFAULT / 3);
        for rev in 11..=15 {
            h.record(put(rev, "k", &big));
        }
        let oldest = h.oldest_held();
        assert!(oldest > 11 && oldest <= 15, "oldest held {oldest}");
        let err = h.since(11, &KeyFilter::Prefix(Bytes::new()), ALL, 15).unwrap_err();
        assert_eq!(err.oldest, oldest);
        let held = h.since(oldest, &KeyFilter::Prefix(Bytes::new()), ALL, 15).unwrap();
        assert_eq!(held.changes.first().map(|c| c.revision), Some(oldest));
        assert!(h.bytes <= CHANGE_HISTORY_BYTES_DEFAULT);
    }
}
