//! The typed operation envelope carried in log entries, and its encoding.
//!
//! The encoding is Quarry's own (version byte first), not the client wire protocol:
//! the log outlives API versions, so the two are kept apart.
//!
//! ```text
//! command   = version u8 (=1) | client u64 | sequence u64 | operation
//! operation = tag u8 | fields (bytes fields are u32 length + data)
//! sql       = database | now_ms i64 | seed u64 | n u32 | statement*n
//! statement = kind u8 | text | n u32 | value*n | n u32 | (name | value)*n
//! value     = 0 (null) | 1 i64 | 2 f64 bits | 3 text | 4 blob
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::builtin::put_bytes;
use crate::sql::{self, StatementKind, Value};

/// Operations a batch may hold; more is refused before proposal.
pub const BATCH_OPS_MAX: usize = 128;
/// Largest key (KV key or log name).
pub const KEY_MAX_BYTES: usize = 4096;
const VERSION: u8 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    Put {
        key: Bytes,
        value: Bytes,
    },
    Delete {
        key: Bytes,
    },
    /// Writes `value` if the key's revision is `expected_revision` (0: the key must
    /// not exist).
    Cas {
        key: Bytes,
        expected_revision: u64,
        value: Bytes,
    },
    /// Appends `data` to the named append-only log.
    Append {
        log: Bytes,
        data: Bytes,
    },
    /// Applied atomically: every operation or none.
    Batch(Vec<Operation>),
    /// For an embedding state machine (a database's schema change, say); the built-in
    /// state machine refuses it.
    Custom {
        kind: u32,
        data: Bytes,
    },
    /// Statements applied atomically to a SQL database (created by its first write).
    Sql(sql::Execute),
}

/// An operation with the identity that makes retries apply once: a client's
/// sequence numbers increase, and a state machine remembers each client's last one.
/// Client 0 opts out of deduplication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub client: u64,
    pub sequence: u64,
    pub operation: Operation,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("command is truncated")]
    Truncated,
    #[error("unsupported command version {0}")]
    Version(u8),
    #[error("unknown operation tag {0}")]
    UnknownTag(u8),
    #[error("key of {0} bytes exceeds {KEY_MAX_BYTES}")]
    KeyTooLarge(usize),
    #[error("empty key")]
    EmptyKey,
    #[error("batch of {0} operations exceeds {BATCH_OPS_MAX}")]
    BatchTooLarge(usize),
    #[error("batches cannot be nested")]
    NestedBatch,
    #[error("trailing bytes after the command")]
    Trailing,
    #[error("{0}")]
    Sql(String),
    #[error("SQL writes cannot be part of a batch")]
    SqlInBatch,
    #[error("text is not UTF-8")]
    NotUtf8,
}

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_CAS: u8 = 3;
const TAG_APPEND: u8 = 4;
const TAG_BATCH: u8 = 5;
const TAG_CUSTOM: u8 = 6;
const TAG_SQL: u8 = 7;
const VALUE_NULL: u8 = 0;
const VALUE_INTEGER: u8 = 1;
const VALUE_REAL: u8 = 2;
const VALUE_TEXT: u8 = 3;
const VALUE_BLOB: u8 = 4;

impl Operation {
    /// Checks the bounds a proposal must respect (key sizes, batch shape).
    pub fn validate(&self) -> Result<(), CommandError> {
        match self {
            Operation::Put { key, .. } | Operation::Delete { key } | Operation::Cas { key, .. } => check_key(key),
            Operation::Append { log, .. } => check_key(log),
            Operation::Batch(ops) => {
                if ops.len() > BATCH_OPS_MAX {
                    return Err(CommandError::BatchTooLarge(ops.len()));
                }
                for op in ops {
                    match op {
                        Operation::Batch(_) => return Err(CommandError::NestedBatch),
                        Operation::Sql(_) => return Err(CommandError::SqlInBatch),
                        _ => {}
                    }
                    op.validate()?;
                }
                Ok(())
            }
            Operation::Custom { .. } => Ok(()),
            Operation::Sql(write) => write.validate().map_err(CommandError::Sql),
        }
    }

    fn encode(&self, out: &mut BytesMut) {
        match self {
            Operation::Put { key, value } => {
                out.put_u8(TAG_PUT);
                put_bytes(out, key);
                put_bytes(out, value);
            }
            Operation::Delete { key } => {
                out.put_u8(TAG_DELETE);
                put_bytes(out, key);
            }
            Operation::Cas { key, expected_revision, value } => {
                out.put_u8(TAG_CAS);
                put_bytes(out, key);
                out.put_u64_le(*expected_revision);
                put_bytes(out, value);
            }
            Operation::Append { log, data } => {
                out.put_u8(TAG_APPEND);
                put_bytes(out, log);
                put_bytes(out, data);
            }
            Operation::Batch(ops) => {
                out.put_u8(TAG_BATCH);
                out.put_u32_le(ops.len() as u32);
                ops.iter().for_each(|op| op.encode(out));
            }
            Operation::Custom { kind, data } => {
                out.put_u8(TAG_CUSTOM);
                out.put_u32_le(*kind);
                put_bytes(out, data);
            }
            Operation::Sql(write) => {
                out.put_u8(TAG_SQL);
                encode_sql(write, out);
            }
        }
    }

    fn decode(buf: &mut Bytes, depth: u8) -> Result<Operation, CommandError> {
        need(buf, 1)?;
        let op = match buf.get_u8() {
            TAG_PUT => Operation::Put { key: get_bytes(buf)?, value: get_bytes(buf)? },
            TAG_DELETE => Operation::Delete { key: get_bytes(buf)? },
            TAG_CAS => {
                let key = get_bytes(buf)?;
                need(buf, 8)?;
                let expected_revision = buf.get_u64_le();
                Operation::Cas { key, expected_revision, value: get_bytes(buf)? }
            }
            TAG_APPEND => Operation::Append { log: get_bytes(buf)?, data: get_bytes(buf)? },
            TAG_BATCH if depth > 0 => return Err(CommandError::NestedBatch),
            TAG_BATCH => {
                need(buf, 4)?;
                let n = buf.get_u32_le() as usize;
                if n > BATCH_OPS_MAX {
                    return Err(CommandError::BatchTooLarge(n));
                }
                let ops = (0..n).map(|_| Operation::decode(buf, depth + 1)).collect::<Result<_, _>>()?;
                Operation::Batch(ops)
            }
            TAG_CUSTOM => {
                need(buf, 4)?;
                let kind = buf.get_u32_le();
                Operation::Custom { kind, data: get_bytes(buf)? }
            }
            TAG_SQL => Operation::Sql(decode_sql(buf)?),
            tag => return Err(CommandError::UnknownTag(tag)),
        };
        Ok(op)
    }
}

impl Command {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64);
        out.put_u8(VERSION);
        out.put_u64_le(self.client);
        out.put_u64_le(self.sequence);
        self.operation.encode(&mut out);
        out.freeze()
    }

    /// Decodes and validates a command. Payload bytes share `data`'s buffer.
    pub fn decode(mut data: Bytes) -> Result<Command, CommandError> {
        need(&data, 17)?;
        let version = data.get_u8();
        if version != VERSION {
            return Err(CommandError::Version(version));
        }
        let client = data.get_u64_le();
        let sequence = data.get_u64_le();
        let operation = Operation::decode(&mut data, 0)?;
        if !data.is_empty() {
            return Err(CommandError::Trailing);
        }
        operation.validate()?;
        Ok(Command { client, sequence, operation })
    }
}

fn encode_sql(write: &sql::Execute, out: &mut BytesMut) {
    put_bytes(out, write.database.as_bytes());
    out.put_i64_le(write.now_ms);
    out.put_u64_le(write.seed);
    out.put_u32_le(write.statements.len() as u32);
    for statement in &write.statements {
        out.put_u8(statement.kind as u8);
        put_bytes(out, statement.text.as_bytes());
        out.put_u32_le(statement.params.len() as u32);
        statement.params.iter().for_each(|v| encode_value(v, out));
        out.put_u32_le(statement.named.len() as u32);
        for (name, value) in &statement.named {
            put_bytes(out, name.as_bytes());
            encode_value(value, out);
        }
    }
}

fn encode_value(value: &Value, out: &mut BytesMut) {
    match value {
        Value::Null => out.put_u8(VALUE_NULL),
        Value::Integer(i) => {
            out.put_u8(VALUE_INTEGER);
            out.put_i64_le(*i);
        }
        Value::Real(r) => {
            out.put_u8(VALUE_REAL);
            out.put_u64_le(r.to_bits());
        }
        Value::Text(t) => {
            out.put_u8(VALUE_TEXT);
            put_bytes(out, t.as_bytes());
        }
        Value::Blob(b) => {
            out.put_u8(VALUE_BLOB);
            put_bytes(out, b);
        }
    }
}

fn decode_sql(buf: &mut Bytes) -> Result<sql::Execute, CommandError> {
    let database = get_text(buf)?;
    need(buf, 20)?;
    let now_ms = buf.get_i64_le();
    let seed = buf.get_u64_le();
    let n = get_count(buf, sql::STATEMENTS_MAX)?;
    let mut statements = Vec::with_capacity(n);
    for _ in 0..n {
        need(buf, 1)?;
        let kind = buf.get_u8();
        let kind = StatementKind::from_u8(kind).ok_or(CommandError::Sql(format!("unknown statement kind {kind}")))?;
        let text = get_text(buf)?;
        let params = (0..get_count(buf, sql::PARAMS_MAX)?).map(|_| decode_value(buf)).collect::<Result<_, _>>()?;
        let named = (0..get_count(buf, sql::PARAMS_MAX)?)
            .map(|_| Ok((get_text(buf)?, decode_value(buf)?)))
            .collect::<Result<_, CommandError>>()?;
        statements.push(sql::Statement { kind, text, params, named });
    }
    Ok(sql::Execute { database, now_ms, seed, statements })
}

fn decode_value(buf: &mut Bytes) -> Result<Value, CommandError> {
    need(buf, 1)?;
    Ok(match buf.get_u8() {
        VALUE_NULL => Value::Null,
        VALUE_INTEGER => {
            need(buf, 8)?;
            Value::Integer(buf.get_i64_le())
        }
        VALUE_REAL => {
            need(buf, 8)?;
            Value::Real(f64::from_bits(buf.get_u64_le()))
        }
        VALUE_TEXT => Value::Text(get_text(buf)?),
        VALUE_BLOB => Value::Blob(get_bytes(buf)?),
        tag => return Err(CommandError::Sql(format!("unknown SQL value type {tag}"))),
    })
}

/// A u32 count, refused past `max` before anything is allocated for it.
fn get_count(buf: &mut Bytes, max: usize) -> Result<usize, CommandError> {
    need(buf, 4)?;
    let n = buf.get_u32_le() as usize;
    if n > max {
        return Err(CommandError::Sql(format!("{n} items exceed {max}")));
    }
    Ok(n)
}

fn get_text(buf: &mut Bytes) -> Result<String, CommandError> {
    String::from_utf8(get_bytes(buf)?.to_vec()).map_err(|_| CommandError::NotUtf8)
}

fn check_key(key: &[u8]) -> Result<(), CommandError> {
    match key.len() {
        0 => Err(CommandError::EmptyKey),
        n if n > KEY_MAX_BYTES => Err(CommandError::KeyTooLarge(n)),
        _ => Ok(()),
    }
}

fn need(buf: &[u8], n: usize) -> Result<(), CommandError> {
    if buf.len() < n {
        return Err(CommandError::Truncated);
    }
    Ok(())
}

fn get_bytes(buf: &mut Bytes) -> Result<Bytes, CommandError> {
    need(buf, 4)?;
    let len = buf.get_u32_le() as usize;
    need(buf, len)?;
    Ok(buf.split_to(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
        vec(any::<u8>(), 0..max).prop_map(Bytes::from)
    }

    fn arb_key() -> impl Strategy<Value = Bytes> {
        vec(any::<u8>(), 1..32).prop_map(Bytes::from)
    }

    fn arb_simple_op() -> impl Strategy<Value = Operation> {
        prop_oneof![
            (arb_key(), arb_bytes(64)).prop_map(|(key, value)| Operation::Put { key, value }),
            arb_key().prop_map(|key| Operation::Delete { key }),
            (arb_key(), any::<u64>(), arb_bytes(64))
                .prop_map(|(key, expected_revision, value)| { Operation::Cas { key, expected_revision, value } }),
            (arb_key(), arb_bytes(64)).prop_map(|(log, data)| Operation::Append { log, data }),
            (any::<u32>(), arb_bytes(64)).prop_map(|(kind, data)| Operation::Custom { kind, data }),
        ]
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Integer),
            any::<f64>().prop_map(Value::Real),
            ".{0,16}".prop_map(Value::Text),
            arb_bytes(16).prop_map(Value::Blob),
        ]
    }

    fn arb_sql() -> impl Strategy<Value = Operation> {
        let statement = ("[a-z ]{1,40}", vec(arb_value(), 0..4), vec(("[a-z]{1,8}", arb_value()), 0..3))
            .prop_map(|(text, params, named)| sql::Statement { kind: StatementKind::Data, text, params, named });
        ("[a-z]{1,12}", any::<i64>(), any::<u64>(), vec(statement, 1..4)).prop_map(
            |(database, now_ms, seed, statements)| Operation::Sql(sql::Execute { database, now_ms, seed, statements }),
        )
    }

    fn arb_op() -> impl Strategy<Value = Operation> {
        prop_oneof![arb_simple_op(), vec(arb_simple_op(), 0..8).prop_map(Operation::Batch), arb_sql()]
    }

    proptest! {
        #[test]
        fn commands_round_trip(client: u64, sequence: u64, operation in arb_op()) {
            let command = Command { client, sequence, operation };
            prop_assert_eq!(Command::decode(command.encode()), Ok(command));
        }

        #[test]
        fn garbage_never_panics(data in arb_bytes(128)) {
            let _ = Command::decode(data);
        }

        #[test]
        fn truncated_commands_are_refused(operation in arb_op(), cut: prop::sample::Index) {
            let encoded = Command { client: 1, sequence: 1, operation }.encode();
            let cut = cut.index(encoded.len());
            prop_assert!(Command::decode(encoded.slice(..cut)).is_err());
        }
    }

    #[test]
    fn bounds_are_enforced() {
        let key = Bytes::from(vec![1; KEY_MAX_BYTES + 1]);
        assert_eq!(Operation::Delete { key }.validate(), Err(CommandError::KeyTooLarge(KEY_MAX_BYTES + 1)));
        assert_eq!(Operation::Delete { key: Bytes::new() }.validate(), Err(CommandError::EmptyKey));
        let nested = Operation::Batch(vec![Operation::Batch(vec![])]);
        assert_eq!(nested.validate(), Err(CommandError::NestedBatch));
        let many = Operation::Batch(vec![Operation::Delete { key: Bytes::from_static(b"k") }; BATCH_OPS_MAX + 1]);
        assert_eq!(many.validate(), Err(CommandError::BatchTooLarge(BATCH_OPS_MAX + 1)));
    }
}
