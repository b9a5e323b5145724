//! Replicated state machines: what committed log entries do.
//!
//! A [`StateMachine`] applies [`Command`]s in log order and must be deterministic:
//! every replica applying the same sequence reaches the same state and answers.
//! [`BuiltinState`] is Quarry's own (key-value map and append-only logs); an embedding
//! database can bring its own and carry its operations as [`Operation::Custom`].

mod builtin;
mod changes;
mod command;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::raft::Index;
use crate::sql::{FailureCause, SqlFailure, StatementResult, STATEMENTS_MAX};

pub use builtin::{BuiltinState, Versioned, SESSIONS_MAX};
pub use changes::{
    set_change_history_bytes, Change, ChangeHistory, ChangesSince, Compacted, KeyFilter, ReadBounds,
    CHANGE_HISTORY_BYTES_DEFAULT,
};
pub use command::{Command, CommandError, Operation, BATCH_OPS_MAX, KEY_MAX_BYTES};

/// What applying a command produced, returned to the client that proposed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Written {
        revision: u64,
    },
    Deleted {
        existed: bool,
    },
    /// A CAS whose expected revision did not match; nothing changed.
    CasFailed {
        current_revision: u64,
    },
    Appended {
        log_index: u64,
    },
    Batch(Vec<Outcome>),
    /// A batch whose operation `failed_at` had a failed condition; nothing changed.
    BatchAborted {
        failed_at: u32,
        current_revision: u64,
    },
    Custom(Bytes),
    /// The command was refused deterministically (nothing changed).
    Rejected(String),
    /// A SQL write applied: what each statement did.
    SqlApplied(Vec<StatementResult>),
    /// A SQL write failed at one statement; nothing of it applied.
    SqlFailed(SqlFailure),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("corrupt snapshot: {0}")]
    Corrupt(&'static str),
}

/// A replicated state machine. Implementations must guarantee:
/// - `apply` and `skip` are called with strictly increasing indices, and the result of
///   `apply` depends only on the state and the command (no clock, no randomness);
/// - `snapshot` captures the state as of `last_applied()`, and `restore` of it yields
///   a state that answers every later command as the original would.
pub trait StateMachine {
    fn apply(&mut self, index: Index, command: &Command) -> Outcome;
    /// An entry without a command (a leader's no-op, a membership change) at `index`.
    fn skip(&mut self, index: Index);
    fn last_applied(&self) -> Index;
    fn snapshot(&self) -> Bytes;
    fn restore(&mut self, data: Bytes) -> Result<(), StateError>;
}

const OUTCOME_WRITTEN: u8 = 1;
const OUTCOME_DELETED: u8 = 2;
const OUTCOME_CAS_FAILED: u8 = 3;
const OUTCOME_APPENDED: u8 = 4;
const OUTCOME_BATCH: u8 = 5;
const OUTCOME_BATCH_ABORTED: u8 = 6;
const OUTCOME_CUSTOM: u8 = 7;
const OUTCOME_REJECTED: u8 = 8;
const OUTCOME_SQL_APPLIED: u8 = 9;
const OUTCOME_SQL_FAILED: u8 = 10;

impl Outcome {
    /// Encoding used for remembered session outcomes in snapshots.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode_into(&mut out);
        out.freeze()
    }

    fn encode_into(&self, out: &mut BytesMut) {
        match self {
            Outcome::Written { revision } => {
                out.put_u8(OUTCOME_WRITTEN);
                out.put_u64_le(*revision);
            }
            Outcome::Deleted { existed } => {
                out.put_u8(OUTCOME_DELETED);
                out.put_u8(u8::from(*existed));
            }
            Outcome::CasFailed { current_revision } => {
                out.put_u8(OUTCOME_CAS_FAILED);
                out.put_u64_le(*current_revision);
            }
            Outcome::Appended { log_index } => {
                out.put_u8(OUTCOME_APPENDED);
                out.put_u64_le(*log_index);
            }
            Outcome::Batch(outcomes) => {
                out.put_u8(OUTCOME_BATCH);
                out.put_u32_le(outcomes.len() as u32);
                outcomes.iter().for_each(|o| o.encode_into(out));
            }
            Outcome::BatchAborted { failed_at, current_revision } => {
                out.put_u8(OUTCOME_BATCH_ABORTED);
                out.put_u32_le(*failed_at);
                out.put_u64_le(*current_revision);
            }
            Outcome::Custom(data) => {
                out.put_u8(OUTCOME_CUSTOM);
                builtin::put_bytes(out, data);
            }
            Outcome::Rejected(reason) => {
                out.put_u8(OUTCOME_REJECTED);
                builtin::put_bytes(out, reason.as_bytes());
            }
            Outcome::SqlApplied(results) => {
                out.put_u8(OUTCOME_SQL_APPLIED);
                out.put_u32_le(results.len() as u32);
                for r in results {
                    out.put_u64_le(r.rows_affected);
                    out.put_i64_le(r.last_insert_rowid);
                }
            }
            Outcome::SqlFailed(failure) => {
                out.put_u8(OUTCOME_SQL_FAILED);
                out.put_u32_le(failure.statement);
                out.put_u8(failure.cause as u8);
                builtin::put_bytes(out, failure.message.as_bytes());
            }
        }
    }

    pub fn decode(mut data: Bytes) -> Option<Outcome> {
        let outcome = Outcome::decode_from(&mut data)?;
        data.is_empty().then_some(outcome)
    }

    fn decode_from(data: &mut Bytes) -> Option<Outcome> {
        if data.is_empty() {
            return None;
        }
        let u64_of = |d: &mut Bytes| builtin::get_u64(d).ok();
        Some(match data.get_u8() {
            OUTCOME_WRITTEN => Outcome::Written { revision: u64_of(data)? },
            OUTCOME_DELETED if !data.is_empty() => Outcome::Deleted { existed: data.get_u8() != 0 },
            OUTCOME_CAS_FAILED => Outcome::CasFailed { current_revision: u64_of(data)? },
            OUTCOME_APPENDED => Outcome::Appended { log_index: u64_of(data)? },
            OUTCOME_BATCH if data.len() >= 4 => {
                let n = data.get_u32_le() as usize;
                if n > BATCH_OPS_MAX {
                    return None;
                }
                Outcome::Batch((0..n).map(|_| Outcome::decode_from(data)).collect::<Option<_>>()?)
            }
            OUTCOME_BATCH_ABORTED if data.len() >= 12 => {
                Outcome::BatchAborted { failed_at: data.get_u32_le(), current_revision: data.get_u64_le() }
            }
            OUTCOME_CUSTOM => Outcome::Custom(builtin::get_bytes(data).ok()?),
            OUTCOME_REJECTED => {
                let reason = builtin::get_bytes(data).ok()?;
                Outcome::Rejected(String::from_utf8_lossy(&reason).into_owned())
            }
            OUTCOME_SQL_APPLIED if data.len() >= 4 => {
                let n = data.get_u32_le() as usize;
                if n > STATEMENTS_MAX || data.len() < n * 16 {
                    return None;
                }
                let results = (0..n)
                    .map(|_| StatementResult { rows_affected: data.get_u64_le(), last_insert_rowid: data.get_i64_le() })
                    .collect();
                Outcome::SqlApplied(results)
            }
            OUTCOME_SQL_FAILED if data.len() >= 5 => {
                let statement = data.get_u32_le();
                let cause = FailureCause::from_u8(data.get_u8());
                let message = String::from_utf8_lossy(&builtin::get_bytes(data).ok()?).into_owned();
                Outcome::SqlFailed(SqlFailure { statement, cause, message })
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip() {
        let outcomes = [
            Outcome::Written { revision: 7 },
            Outcome::Deleted { existed: true },
            Outcome::CasFailed { current_revision: 3 },
            Outcome::Appended { log_index: 9 },
            Outcome::Batch(vec![Outcome::Written { revision: 1 }, Outcome::Deleted { existed: false }]),
            Outcome::BatchAborted { failed_at: 2, current_revision: 5 },
            Outcome::Custom(Bytes::from_static(b"x")),
            Outcome::Rejected("no".into()),
            Outcome::SqlApplied(vec![StatementResult { rows_affected: 2, last_insert_rowid: -1 }]),
            Outcome::SqlFailed(SqlFailure { statement: 1, cause: FailureCause::Constraint, message: "x".into() }),
        ];
        for outcome in outcomes {
            assert_eq!(Outcome::decode(outcome.encode()), Some(outcome));
        }
        assert_eq!(Outcome::decode(Bytes::from_static(&[OUTCOME_WRITTEN, 1])), None);
    }
}
