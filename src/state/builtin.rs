//! The built-in state machine: an ordered key-value map with a revision per key, named
//! append-only logs, and the client sessions that make retried writes apply once.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::raft::Index;
use crate::sql::SqlDatabases;

use super::changes::{Change, ChangeHistory, ChangesSince, Compacted, KeyFilter, ReadBounds};
use super::command::{Command, Operation};
use super::{Outcome, StateError, StateMachine};

/// Client sessions remembered; past it, the session applied longest ago is forgotten
/// (identically on every replica, since eviction depends only on the log).
pub const SESSIONS_MAX: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub value: Bytes,
    /// Log index of the write that set the value.
    pub revision: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Session {
    sequence: u64,
    outcome: Outcome,
    last_index: Index,
}

#[derive(Debug, Default)]
pub struct BuiltinState {
    applied: Index,
    /// Values by key: a hash map, so that a write to an existing key costs one hash
    /// instead of a dozen key comparisons down a tree (the state machine's biggest cost
    /// in the profiles).
    kv: HashMap<Bytes, Versioned>,
    /// The same keys in order, for ranges and snapshots; changed only when a key is
    /// created or deleted.
    keys: BTreeSet<Bytes>,
    logs: BTreeMap<Bytes, Vec<Bytes>>,
    /// By client id. A hash map: one lookup per write, and only snapshots need an
    /// order (they sort).
    sessions: HashMap<u64, Session>,
    /// (index, client) of every write remembered, in applied order, to find the
    /// session to evict: an entry whose client wrote again since is stale, skipped when
    /// it reaches the front and dropped when stale entries outnumber live ones (so the
    /// queue holds at most `2 * SESSIONS_MAX` entries).
    sessions_by_age: VecDeque<(Index, u64)>,
    /// SQL databases by name (those whose names map to this group).
    sql: SqlDatabases,
    /// Recent key changes, for watchers: derived from the log, neither compared nor
    /// snapshotted.
    changes: ChangeHistory,
}

/// Equal states: the same data and sessions (the eviction queue's stale entries
/// depend on history, not on the state).
impl PartialEq for BuiltinState {
    fn eq(&self, other: &Self) -> bool {
        self.applied == other.applied
            && self.kv == other.kv
            && self.logs == other.logs
            && self.sessions == other.sessions
            && self.sql == other.sql
    }
}

impl Eq for BuiltinState {}

impl BuiltinState {
    pub fn get(&self, key: &[u8]) -> Option<&Versioned> {
        self.kv.get(key)
    }

    /// Drops every key starting with `prefix`, outside the log (a restore drops the
    /// old cluster's own records this way).
    pub fn remove_prefix(&mut self, prefix: &[u8]) {
        self.kv.retain(|key, _| !key.starts_with(prefix));
        self.keys.retain(|key| !key.starts_with(prefix));
        // Those deletions are in no log: watchers must not be told a history without them.
        self.changes = ChangeHistory::starting_after(self.applied);
    }

    /// Sets a key outside the log (a recovery writes its member registry this way), at
    /// the revision of the last entry applied.
    pub fn put_outside_log(&mut self, key: &[u8], value: Bytes) {
        let key = Bytes::copy_from_slice(key);
        self.keys.insert(key.clone());
        self.kv.insert(key, Versioned { value, revision: self.applied });
        self.changes = ChangeHistory::starting_after(self.applied);
    }

    /// Keys in `[start, end)` (`end` empty: to the end), at most `limit`; none when
    /// `start` is past `end` (which `BTreeSet::range` would panic on).
    pub fn range(&self, start: &[u8], end: &[u8], limit: usize) -> Vec<(Bytes, Versioned)> {
        if !end.is_empty() && start > end {
            return Vec::new();
        }
        let upper = if end.is_empty() { Bound::Unbounded } else { Bound::Excluded(end) };
        self.keys
            .range::<[u8], _>((Bound::Included(start), upper))
            .take(limit)
            .filter_map(|k| self.kv.get(k).map(|v| (k.clone(), v.clone())))
            .collect()
    }

    /// Entries of log `name` from 1-based `from`, at most `limit`; `None` for an
    /// unknown log.
    pub fn read_log(&self, name: &[u8], from: u64, limit: usize) -> Option<Vec<Bytes>> {
        let log = self.logs.get(name)?;
        let start = from.saturating_sub(1) as usize;
        Some(log.iter().skip(start).take(limit).cloned().collect())
    }

    /// Key changes matching `filter` from revision `from` on (see [`ChangeHistory`]).
    pub fn changes_since(&self, from: u64, filter: &KeyFilter, bounds: ReadBounds) -> Result<ChangesSince, Compacted> {
        self.changes.since(from, filter, bounds, self.applied)
    }

    pub fn sql(&self) -> &SqlDatabases {
        &self.sql
    }

    pub fn log_len(&self, name: &[u8]) -> Option<u64> {
        self.logs.get(name).map(|l| l.len() as u64)
    }

    fn execute(&mut self, index: Index, operation: &Operation) -> Outcome {
        match operation {
            Operation::Sql(write) => match self.sql.execute(index, write) {
                Ok(results) => Outcome::SqlApplied(results),
                Err(failure) => Outcome::SqlFailed(failure),
            },
            Operation::Batch(ops) => {
                // All conditions are checked against the state before the batch.
                for (at, op) in ops.iter().enumerate() {
                    if let Some(current_revision) = self.failed_condition(op) {
                        return Outcome::BatchAborted { failed_at: at as u32, current_revision };
                    }
                }
                Outcome::Batch(ops.iter().map(|op| self.execute_one(index, op)).collect())
            }
            op => match self.failed_condition(op) {
                Some(current_revision) => Outcome::CasFailed { current_revision },
                None => self.execute_one(index, op),
            },
        }
    }

    /// For a CAS whose expectation does not hold: the key's current revision.
    fn failed_condition(&self, op: &Operation) -> Option<u64> {
        let Operation::Cas { key, expected_revision, .. } = op else {
            return None;
        };
        let current = self.kv.get(key).map_or(0, |v| v.revision);
        (current != *expected_revision).then_some(current)
    }

    fn execute_one(&mut self, index: Index, op: &Operation) -> Outcome {
        match op {
            Operation::Put { key, value } | Operation::Cas { key, value, .. } => {
                let versioned = Versioned { value: value.clone(), revision: index };
                let prev = match self.kv.get_mut(key) {
                    Some(current) => Some(std::mem::replace(current, versioned)),
                    None => {
                        self.kv.insert(key.clone(), versioned);
                        self.keys.insert(key.clone());
                        None
                    }
                };
                self.changes.record(Change { revision: index, key: key.clone(), value: Some(value.clone()), prev });
                Outcome::Written { revision: index }
            }
            Operation::Delete { key } => {
                let prev = self.kv.remove(key);
                let existed = prev.is_some();
                if existed {
                    self.keys.remove(key);
                    self.changes.record(Change { revision: index, key: key.clone(), value: None, prev });
                }
                Outcome::Deleted { existed }
            }
            Operation::Append { log, data } => {
                let entries = self.logs.entry(log.clone()).or_default();
                entries.push(data.clone());
                Outcome::Appended { log_index: entries.len() as u64 }
            }
            Operation::Custom { kind, .. } => Outcome::Rejected(format!("custom operation {kind} not supported")),
            Operation::Batch(_) => Outcome::Rejected("nested batch".into()),
            Operation::Sql(_) => Outcome::Rejected("SQL writes cannot be part of a batch".into()),
        }
    }

    fn remember(&mut self, index: Index, client: u64, sequence: u64, outcome: &Outcome) {
        if !self.sessions.contains_key(&client) && self.sessions.len() >= SESSIONS_MAX {
            self.evict_oldest_session();
        }
        self.sessions.insert(client, Session { sequence, outcome: outcome.clone(), last_index: index });
        self.sessions_by_age.push_back((index, client));
        if self.sessions_by_age.len() > 2 * SESSIONS_MAX {
            let ages = std::mem::take(&mut self.sessions_by_age);
            self.sessions_by_age = ages.into_iter().filter(|&age| self.is_latest(age)).collect();
        }
    }

    /// Whether `(index, client)` is the client's latest remembered write.
    fn is_latest(&self, (index, client): (Index, u64)) -> bool {
        self.sessions.get(&client).is_some_and(|s| s.last_index == index)
    }

    /// Forgets the session whose latest write was applied longest ago.
    fn evict_oldest_session(&mut self) {
        while let Some(age) = self.sessions_by_age.pop_front() {
            if self.is_latest(age) {
                self.sessions.remove(&age.1);
                return;
            }
        }
        unreachable!("every session has its latest write in the queue");
    }
}

impl StateMachine for BuiltinState {
    fn apply(&mut self, index: Index, command: &Command) -> Outcome {
        assert!(index > self.applied, "apply of {index} after {}", self.applied);
        self.applied = index;
        if command.client != 0 {
            if let Some(session) = self.sessions.get(&command.client) {
                if command.sequence == session.sequence {
                    return session.outcome.clone(); // A retry: answer as the first time.
                }
                if command.sequence < session.sequence {
                    return Outcome::Rejected(format!(
                        "sequence {} of client {} already superseded by {}",
                        command.sequence, command.client, session.sequence
                    ));
                }
            }
        }
        let outcome = self.execute(index, &command.operation);
        if command.client != 0 {
            self.remember(index, command.client, command.sequence, &outcome);
        }
        outcome
    }

    fn skip(&mut self, index: Index) {
        assert!(index > self.applied, "skip of {index} after {}", self.applied);
        self.applied = index;
    }

    fn last_applied(&self) -> Index {
        self.applied
    }

    fn snapshot(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u64_le(self.applied);
        out.put_u64_le(self.kv.len() as u64);
        for (key, v) in self.keys.iter().filter_map(|k| self.kv.get(k).map(|v| (k, v))) {
            put_bytes(&mut out, key);
            put_bytes(&mut out, &v.value);
            out.put_u64_le(v.revision);
        }
        out.put_u64_le(self.logs.len() as u64);
        for (name, entries) in &self.logs {
            put_bytes(&mut out, name);
            out.put_u64_le(entries.len() as u64);
            entries.iter().for_each(|e| put_bytes(&mut out, e));
        }
        out.put_u64_le(self.sessions.len() as u64);
        // In client order, so every replica writes the same bytes.
        let mut sessions: Vec<_> = self.sessions.iter().collect();
        sessions.sort_unstable_by_key(|(client, _)| **client);
        for (client, s) in sessions {
            out.put_u64_le(*client);
            out.put_u64_le(s.sequence);
            out.put_u64_le(s.last_index);
            put_bytes(&mut out, &s.outcome.encode());
        }
        // Only when there are databases, so a state without SQL keeps the format
        // it had before SQL existed.
        if !self.sql.is_empty() {
            self.sql.snapshot_into(&mut out);
        }
        out.freeze()
    }

    fn restore(&mut self, mut data: Bytes) -> Result<(), StateError> {
        let mut restored = BuiltinState { applied: get_u64(&mut data)?, ..BuiltinState::default() };
        for _ in 0..get_u64(&mut data)? {
            let key = get_bytes(&mut data)?;
            let value = get_bytes(&mut data)?;
            restored.keys.insert(key.clone());
            restored.kv.insert(key, Versioned { value, revision: get_u64(&mut data)? });
        }
        for _ in 0..get_u64(&mut data)? {
            let name = get_bytes(&mut data)?;
            let n = get_u64(&mut data)?;
            let entries = (0..n).map(|_| get_bytes(&mut data)).collect::<Result<_, _>>()?;
            restored.logs.insert(name, entries);
        }
        for _ in 0..get_u64(&mut data)? {
            let client = get_u64(&mut data)?;
            let sequence = get_u64(&mut data)?;
            let last_index = get_u64(&mut data)?;
            let outcome = Outcome::decode(get_bytes(&mut data)?).ok_or(StateError::Corrupt("session outcome"))?;
            restored.sessions.insert(client, Session { sequence, outcome, last_index });
        }
        let mut ages: Vec<_> = restored.sessions.iter().map(|(client, s)| (s.last_index, *client)).collect();
        ages.sort_unstable();
        restored.sessions_by_age = ages.into();
        if !data.is_empty() {
            restored.sql = SqlDatabases::restore_from(&mut data).map_err(StateError::Corrupt)?;
        }
        if !data.is_empty() {
            return Err(StateError::Corrupt("trailing bytes"));
        }
        restored.changes = ChangeHistory::starting_after(restored.applied);
        *self = restored;
        Ok(())
    }
}

/// A length-prefixed byte string (u32 length), the framing of every encoding here.
pub(super) fn put_bytes(out: &mut BytesMut, data: &[u8]) {
    out.put_u32_le(data.len() as u32);
    out.extend_from_slice(data);
}

pub(super) fn get_u64(data: &mut Bytes) -> Result<u64, StateError> {
    if data.len() < 8 {
        return Err(StateError::Corrupt("truncated"));
    }
    Ok(data.get_u64_le())
}

pub(super) fn get_bytes(data: &mut Bytes) -> Result<Bytes, StateError> {
    if data.len() < 4 {
        return Err(StateError::Corrupt("truncated"));
    }
    let len = data.get_u32_le() as usize;
    if data.len() < len {
        return Err(StateError::Corrupt("truncated"));
    }
    Ok(data.split_to(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn cmd(client: u64, sequence: u64, operation: Operation) -> Command {
        Command { client, sequence, operation }
    }

    #[test]
    fn cas_compares_revisions_and_reports_the_current_one() {
        let mut s = BuiltinState::default();
        let put = Operation::Put { key: b("k"), value: b("v1") };
        assert_eq!(s.apply(1, &cmd(0, 0, put)), Outcome::Written { revision: 1 });
        let stale = Operation::Cas { key: b("k"), expected_revision: 0, value: b("v2") };
        assert_eq!(s.apply(2, &cmd(0, 0, stale)), Outcome::CasFailed { current_revision: 1 });
        let fresh = Operation::Cas { key: b("k"), expected_revision: 1, value: b("v2") };
        assert_eq!(s.apply(3, &cmd(0, 0, fresh)), Outcome::Written { revision: 3 });
        assert_eq!(s.get(b"k").map(|v| v.value.clone()), Some(b("v2")));
    }

    #[test]
    fn a_batch_applies_whole_or_not_at_all() {
        let mut s = BuiltinState::default();
        let batch = Operation::Batch(vec![
            Operation::Put { key: b("a"), value: b("1") },
            Operation::Cas { key: b("b"), expected_revision: 7, value: b("2") },
        ]);
        assert_eq!(s.apply(1, &cmd(0, 0, batch)), Outcome::BatchAborted { failed_at: 1, current_revision: 0 });
        assert_eq!(s.get(b"a"), None);
        let batch = Operation::Batch(vec![
            Operation::Put { key: b("a"), value: b("1") },
            Operation::Append { log: b("wal"), data: b("x") },
        ]);
        let expected = Outcome::Batch(vec![Outcome::Written { revision: 2 }, Outcome::Appended { log_index: 1 }]);
        assert_eq!(s.apply(2, &cmd(0, 0, batch)), expected);
    }

    #[test]
    fn a_retried_command_applies_once_and_gets_the_same_answer() {
        let mut s = BuiltinState::default();
        let append = Operation::Append { log: b("wal"), data: b("rec") };
        assert_eq!(s.apply(1, &cmd(9, 1, append.clone())), Outcome::Appended { log_index: 1 });
        assert_eq!(s.apply(2, &cmd(9, 1, append.clone())), Outcome::Appended { log_index: 1 });
        assert_eq!(s.log_len(b"wal"), Some(1));
        assert_eq!(s.apply(3, &cmd(9, 2, append.clone())), Outcome::Appended { log_index: 2 });
        assert!(matches!(s.apply(4, &cmd(9, 1, append)), Outcome::Rejected(_)));
        assert_eq!(s.read_log(b"wal", 2, 10), Some(vec![b("rec")]));
        assert_eq!(s.read_log(b"nope", 1, 10), None);
    }

    #[test]
    fn sessions_are_bounded_and_evict_the_oldest() {
        let mut s = BuiltinState::default();
        for client in 1..=SESSIONS_MAX as u64 + 1 {
            s.apply(client, &cmd(client, 1, Operation::Delete { key: b("k") }));
        }
        assert_eq!(s.sessions.len(), SESSIONS_MAX);
        assert!(!s.sessions.contains_key(&1), "the session applied longest ago goes first");
    }

    #[test]
    fn eviction_follows_each_client_s_latest_write_and_survives_a_snapshot() {
        let max = SESSIONS_MAX as u64;
        let write = |s: &mut BuiltinState, index: u64, client: u64| {
            s.apply(index, &cmd(client, index, Operation::Delete { key: b("k") }));
        };
        let mut live = BuiltinState::default();
        for client in 1..=max {
            write(&mut live, client, client);
        }
        // Client 1 writes again and again: client 2's write is now the oldest latest one.
        for index in max + 1..=4 * max {
            write(&mut live, index, 1);
        }
        assert!(live.sessions_by_age.len() <= 2 * SESSIONS_MAX, "stale queue entries are dropped");
        let mut restored = BuiltinState::default();
        restored.restore(live.snapshot()).unwrap();
        for s in [&mut live, &mut restored] {
            write(s, 4 * max + 1, max + 1);
            assert!(!s.sessions.contains_key(&2) && s.sessions.contains_key(&1) && s.sessions.contains_key(&3));
        }
        assert_eq!(live, restored);
        assert_eq!(live.snapshot(), restored.snapshot(), "replicas write the same bytes");
    }

    #[test]
    fn snapshot_restores_everything() {
        let mut s = BuiltinState::default();
        s.apply(1, &cmd(3, 1, Operation::Put { key: b("k"), value: b("v") }));
        s.apply(2, &cmd(0, 0, Operation::Append { log: b("wal"), data: b("x") }));
        s.skip(3);
        let mut restored = BuiltinState::default();
        restored.restore(s.snapshot()).unwrap();
        assert_eq!(restored, s);
        assert!(restored.restore(s.snapshot().slice(..10)).is_err());
    }

    #[test]
    fn range_respects_bounds_and_limit() {
        let mut s = BuiltinState::default();
        for (i, k) in ["a", "b", "c", "d"].into_iter().enumerate() {
            s.apply(i as u64 + 1, &cmd(0, 0, Operation::Put { key: b(k), value: b(k) }));
        }
        let keys = |r: Vec<(Bytes, Versioned)>| r.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(keys(s.range(b"b", b"d", 10)), vec![b("b"), b("c")]);
        assert_eq!(keys(s.range(b"b", b"", 2)), vec![b("b"), b("c")]);
        assert!(s.range(b"z", b"a", 10).is_empty(), "a start past the end is an empty range, not a panic");
        assert!(s.range(b"b", b"b", 10).is_empty());
    }

    const ALL: ReadBounds = ReadBounds { max_changes: 100, max_bytes: 1 << 20, max_scanned: 100 };

    #[test]
    fn applied_writes_are_recorded_as_changes_with_their_previous_values() {
        let mut s = BuiltinState::default();
        s.apply(1, &cmd(7, 1, Operation::Put { key: b("k"), value: b("v1") }));
        s.apply(2, &cmd(7, 1, Operation::Put { key: b("k"), value: b("v1") })); // a retry: nothing new
        s.apply(3, &cmd(0, 0, Operation::Put { key: b("k"), value: b("v2") }));
        s.apply(4, &cmd(0, 0, Operation::Cas { key: b("k"), expected_revision: 1, value: b("no") })); // fails
        s.apply(5, &cmd(0, 0, Operation::Delete { key: b("absent") })); // nothing to delete
        let batch = vec![Operation::Delete { key: b("k") }, Operation::Put { key: b("j"), value: b("w") }];
        s.apply(6, &cmd(0, 0, Operation::Batch(batch)));
        s.apply(7, &cmd(0, 0, Operation::Append { log: b("wal"), data: b("x") }));
        let read = s.changes_since(1, &KeyFilter::Prefix(Bytes::new()), ALL).unwrap();
        let seen: Vec<_> = read
            .changes
            .iter()
            .map(|c| {
                (c.revision, c.key.clone(), c.value.clone(), c.prev.as_ref().map(|p| (p.value.clone(), p.revision)))
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (1, b("k"), Some(b("v1")), None),
                (3, b("k"), Some(b("v2")), Some((b("v1"), 1))),
                (6, b("k"), None, Some((b("v2"), 3))),
                (6, b("j"), Some(b("w")), None),
            ]
        );
        assert_eq!(read.next, 8);
    }

    #[test]
    fn a_restored_state_holds_changes_only_after_its_snapshot() {
        let mut s = BuiltinState::default();
        s.apply(1, &cmd(0, 0, Operation::Put { key: b("k"), value: b("v") }));
        let mut restored = BuiltinState::default();
        restored.restore(s.snapshot()).unwrap();
        let all = KeyFilter::Prefix(Bytes::new());
        assert_eq!(restored.changes_since(1, &all, ALL), Err(Compacted { asked: 1, oldest: 2 }));
        restored.apply(2, &cmd(0, 0, Operation::Put { key: b("k"), value: b("w") }));
        assert_eq!(restored.changes_since(2, &all, ALL).unwrap().changes.len(), 1);
        // Deletions outside the log (a restore's) end the history there.
        restored.remove_prefix(b"k");
        assert_eq!(restored.changes_since(2, &all, ALL), Err(Compacted { asked: 2, oldest: 3 }));
    }
}
