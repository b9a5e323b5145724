//! A linearizability checker for histories of single-register operations, in the
//! style of Wing & Gong with Lowe's memoization (as in porcupine). A history over
//! many keys is checked key by key, which is sound because keys are independent.
//!
//! An operation whose outcome the client never learned (a timeout) has no return
//! time: it may take effect at any point after its call, or never.

use std::collections::{BTreeMap, HashSet};

/// A register the checked histories read and write.
pub type Key = u8;
pub type Value = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    Put(Value),
    Get,
    Cas {
        expected: Option<Value>,
        new: Value,
    },
    /// A SQL write: no register changes (left out of the check).
    Sql {
        failing: bool,
    },
}

/// What the client observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The write was acknowledged.
    Done,
    Read(Option<Value>),
    CasResult(bool),
    /// No answer: the operation may or may not have taken effect.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operation {
    pub client: u64,
    pub key: Key,
    pub kind: OpKind,
    pub call: u64,
    /// `u64::MAX` when the outcome is unknown.
    pub ret: u64,
    pub outcome: Outcome,
}

/// The first key whose history admits no linearization, with its operations.
#[derive(Debug, PartialEq, Eq)]
pub struct Violation {
    pub key: Key,
    pub operations: Vec<Operation>,
}

/// States explored per key before the checker gives up. Histories the simulator
/// produces stay far below it; reaching it is reported as a failure, never a pass.
pub const SEARCH_STATES_MAX: usize = 5_000_000;

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable(Violation),
    /// The search budget ran out: the history is too concurrent to decide.
    Undecided {
        key: Key,
    },
}

pub fn check(history: &[Operation]) -> Verdict {
    let mut by_key: BTreeMap<Key, Vec<Operation>> = BTreeMap::new();
    for op in history {
        // An unanswered read has no effect and no observation: nothing to check.
        if op.kind == OpKind::Get && op.outcome == Outcome::Unknown {
            continue;
        }
        by_key.entry(op.key).or_default().push(*op);
    }
    for (key, mut ops) in by_key {
        ops.sort_by_key(|op| (op.call, op.ret));
        match check_register(&ops) {
            Some(true) => {}
            Some(false) => return Verdict::NotLinearizable(Violation { key, operations: ops }),
            None => return Verdict::Undecided { key },
        }
    }
    Verdict::Linearizable
}

/// Applies `op` to register state `state`: the next state, or `None` if the observed
/// outcome is impossible from `state`.
fn step(state: Option<Value>, op: &Operation) -> Option<Option<Value>> {
    match (op.kind, op.outcome) {
        (OpKind::Put(v), Outcome::Done | Outcome::Unknown) => Some(Some(v)),
        (OpKind::Get, Outcome::Read(seen)) => (seen == state).then_some(state),
        (OpKind::Cas { expected, new }, Outcome::CasResult(true)) => (state == expected).then_some(Some(new)),
        (OpKind::Cas { expected, .. }, Outcome::CasResult(false)) => (state != expected).then_some(state),
        (OpKind::Cas { expected, new }, Outcome::Unknown) => Some(if state == expected { Some(new) } else { state }),
        _ => None,
    }
}

/// Depth-first search for a linearization of `ops` (sorted by call time).
/// `Some(found)`, or `None` when the search budget is exhausted.
fn check_register(ops: &[Operation]) -> Option<bool> {
    let n = ops.len();
    let words = n.div_ceil(64);
    let mut done = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, Option<Value>)> = HashSet::new();
    // Each frame: (state before, index of the op linearized at this depth).
    let mut stack: Vec<(Option<Value>, usize)> = Vec::new();
    let mut state: Option<Value> = None;
    let mut start = 0;
    let is_done = |done: &[u64], i: usize| done[i / 64] & (1 << (i % 64)) != 0;
    let required = ops.iter().filter(|op| op.outcome != Outcome::Unknown).count();
    let mut required_done = 0;
    loop {
        if required_done == required {
            return Some(true);
        }
        // The earliest return among pending operations bounds which may go next.
        let horizon = (0..n).filter(|&i| !is_done(&done, i)).map(|i| ops[i].ret).min().unwrap_or(u64::MAX);
        let mut chosen = None;
        for i in start..n {
            if ops[i].call > horizon {
                break;
            }
            if is_done(&done, i) {
                continue;
            }
            let Some(next) = step(state, &ops[i]) else {
                continue;
            };
            done[i / 64] |= 1 << (i % 64);
            if seen.insert((done.clone(), next)) {
                chosen = Some((i, next));
                break;
            }
            done[i / 64] &= !(1 << (i % 64));
        }
        if let Some((i, next)) = chosen {
            if seen.len() > SEARCH_STATES_MAX {
                return None;
            }
            stack.push((state, i));
            state = next;
            if ops[i].outcome != Outcome::Unknown {
                required_done += 1;
            }
            start = 0;
            continue;
        }
        // Dead end: undo the last choice and try the next candidate after it.
        let Some((prev_state, i)) = stack.pop() else {
            return Some(false);
        };
        done[i / 64] &= !(1 << (i % 64));
        if ops[i].outcome != Outcome::Unknown {
            required_done -= 1;
        }
        state = prev_state;
        start = i + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: OpKind, call: u64, ret: u64, outcome: Outcome) -> Operation {
        Operation { client: call, key: 0, kind, call, ret, outcome }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let history = [
            op(OpKind::Put(1), 0, 1, Outcome::Done),
            op(OpKind::Get, 2, 3, Outcome::Read(Some(1))),
            op(OpKind::Cas { expected: Some(1), new: 2 }, 4, 5, Outcome::CasResult(true)),
            op(OpKind::Get, 6, 7, Outcome::Read(Some(2))),
        ];
        assert_eq!(check(&history), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_after_acknowledged_write_is_caught() {
        let history = [
            op(OpKind::Put(1), 0, 1, Outcome::Done),
            op(OpKind::Put(2), 2, 3, Outcome::Done),
            op(OpKind::Get, 4, 5, Outcome::Read(Some(1))),
        ];
        assert!(matches!(check(&history), Verdict::NotLinearizable(v) if v.key == 0));
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        let history = [
            op(OpKind::Put(1), 0, 10, Outcome::Done),
            op(OpKind::Put(2), 1, 10, Outcome::Done),
            op(OpKind::Get, 2, 3, Outcome::Read(Some(2))),
            op(OpKind::Get, 4, 5, Outcome::Read(Some(1))),
        ];
        assert_eq!(check(&history), Verdict::Linearizable);
    }

    #[test]
    fn reads_must_not_flip_flop_between_concurrent_writes() {
        let history = [
            op(OpKind::Put(1), 0, 10, Outcome::Done),
            op(OpKind::Put(2), 1, 10, Outcome::Done),
            op(OpKind::Get, 2, 3, Outcome::Read(Some(2))),
            op(OpKind::Get, 4, 5, Outcome::Read(Some(1))),
            op(OpKind::Get, 6, 7, Outcome::Read(Some(2))),
        ];
        assert!(matches!(check(&history), Verdict::NotLinearizable(_)));
    }

    #[test]
    fn an_unanswered_write_may_or_may_not_have_happened() {
        let happened =
            [op(OpKind::Put(1), 0, u64::MAX, Outcome::Unknown), op(OpKind::Get, 5, 6, Outcome::Read(Some(1)))];
        assert_eq!(check(&happened), Verdict::Linearizable);
        let did_not = [op(OpKind::Put(1), 0, u64::MAX, Outcome::Unknown), op(OpKind::Get, 5, 6, Outcome::Read(None))];
        assert_eq!(check(&did_not), Verdict::Linearizable);
        let but_not_before_its_call =
            [op(OpKind::Get, 0, 1, Outcome::Read(Some(1))), op(OpKind::Put(1), 2, u64::MAX, Outcome::Unknown)];
        assert!(matches!(check(&but_not_before_its_call), Verdict::NotLinearizable(_)));
    }

    #[test]
    fn failed_cas_must_see_a_different_value() {
        let history = [
            op(OpKind::Put(7), 0, 1, Outcome::Done),
            op(OpKind::Cas { expected: Some(7), new: 8 }, 2, 3, Outcome::CasResult(false)),
        ];
        assert!(matches!(check(&history), Verdict::NotLinearizable(_)));
    }
}
