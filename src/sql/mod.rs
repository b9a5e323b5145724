//! Replicated SQL databases: SQLite databases applied from the log.
//!
//! A named database lives in the Raft group its name maps to (as a key does). Each
//! replica holds it as an in-memory SQLite database inside that group's state machine,
//! rebuilt like the rest of the state from the latest snapshot and the log after a
//! restart. Writes (`Execute`) are log entries; reads (`Query`) run on one replica.
//!
//! Every replica must reach the same bytes, so what SQLite would take from the host
//! is taken from the log instead (see [`determinism`]): the time and the random seed
//! are chosen once by the node that proposes the write, and anything that is not
//! part of the database file (temporary tables, attached files, connection settings,
//! transactions opened by the statement itself) is refused.

pub mod classify;
mod database;
mod determinism;

use bytes::Bytes;

pub use classify::{classify, split_statements, ClassifyError, StatementKind};
pub use database::{FailureCause, QueryAnswer, SchemaAnswer, SchemaChange, SqlDatabases, SqlFailure};

/// Statements one `Execute` may apply (atomically, as one log entry).
pub const STATEMENTS_MAX: usize = 128;
/// Bytes of one statement's text.
pub const STATEMENT_TEXT_MAX: usize = 64 << 10;
/// Parameters one statement may bind.
pub const PARAMS_MAX: usize = 256;
/// Bytes of a database's name; names are letters, digits, `_`, `-` and `.`.
pub const DATABASE_NAME_MAX: usize = 128;
/// Databases one group may hold; creating one more is refused.
pub const DATABASES_PER_GROUP_MAX: usize = 32;
/// Largest database (pages of 4 KiB); past it a write fails with "database is full".
pub const DATABASE_BYTES_MAX: u64 = 64 << 20;
/// Rows one query may return; a query that would return more is refused.
pub const QUERY_ROWS_MAX: usize = 10_000;
/// Bytes of values one query may return; a query that would return more is refused.
pub const QUERY_BYTES_MAX: usize = 4 << 20;
/// SQLite virtual-machine steps one write statement may take before it is stopped
/// (about a fifth of a second here). The count is the same on every replica, so a write
/// stopped here fails everywhere.
pub const STATEMENT_STEPS_MAX: u64 = 20_000_000;
/// Steps one query may take: a query runs on the shard thread, between the Raft
/// work of every group there, so it gets half of a write's budget.
pub const QUERY_STEPS_MAX: u64 = 10_000_000;
/// Schema changes remembered per database for `quarryctl sql schema`.
pub const SCHEMA_HISTORY_MAX: usize = 64;

/// A SQL value, as SQLite stores it.
#[derive(Clone, Debug)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Bytes),
}

/// Values are equal when their bits are: the log compares encodings, not numbers.
impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Integer(a), Value::Integer(b)) => a == b,
            (Value::Real(a), Value::Real(b)) => a.to_bits() == b.to_bits(),
            (Value::Text(a), Value::Text(b)) => a == b,
            (Value::Blob(a), Value::Blob(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl Value {
    /// Bytes the value takes in an answer (a rough count, for the answer's bound).
    pub fn size(&self) -> usize {
        match self {
            Value::Null => 1,
            Value::Integer(_) | Value::Real(_) => 8,
            Value::Text(s) => s.len(),
            Value::Blob(b) => b.len(),
        }
    }
}

/// One SQL statement with its parameters, as the log carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// What the statement does, decided before it was proposed (and checked again
    /// when it applies), so the log says what happened.
    pub kind: StatementKind,
    pub text: String,
    /// Bound to `?`, `?NNN` in order.
    pub params: Vec<Value>,
    /// Bound by name (`:name`, `@name`, `$name`; the prefix may be left out).
    pub named: Vec<(String, Value)>,
}

/// A write to one database: statements applied atomically, with the clock and seed
/// every replica uses for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Execute {
    pub database: String,
    /// Milliseconds since the Unix epoch: what `datetime('now')` and friends see.
    pub now_ms: i64,
    /// Seeds `random()` and `randomblob()`.
    pub seed: u64,
    pub statements: Vec<Statement>,
}

/// What one applied statement did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatementResult {
    pub rows_affected: u64,
    pub last_insert_rowid: i64,
}

/// Checks a database name: 1 to [`DATABASE_NAME_MAX`] bytes of letters, digits, `_`,
/// `-` and `.`.
pub fn check_database_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > DATABASE_NAME_MAX {
        return Err(format!("a database name has 1 to {DATABASE_NAME_MAX} bytes (got {})", name.len()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))) {
        return Err(format!("database name {name:?} holds {c:?}: use letters, digits, '_', '-' and '.'"));
    }
    Ok(())
}

/// Checks the bounds of a statement (text, parameters) before it is proposed or run.
pub fn check_statement(text: &str, params: usize) -> Result<(), String> {
    if text.len() > STATEMENT_TEXT_MAX {
        return Err(format!("statement of {} bytes exceeds {STATEMENT_TEXT_MAX}", text.len()));
    }
    if params > PARAMS_MAX {
        return Err(format!("{params} parameters exceed {PARAMS_MAX}"));
    }
    if text.contains('\0') {
        return Err("statement text holds a NUL byte".into());
    }
    Ok(())
}

impl Execute {
    /// Checks what a write may hold before it is proposed or applied.
    pub fn validate(&self) -> Result<(), String> {
        check_database_name(&self.database)?;
        if self.statements.is_empty() {
            return Err("no statement to execute".into());
        }
        if self.statements.len() > STATEMENTS_MAX {
            return Err(format!("{} statements exceed {STATEMENTS_MAX}", self.statements.len()));
        }
        for (at, s) in self.statements.iter().enumerate() {
            check_statement(&s.text, s.params.len() + s.named.len()).map_err(|e| format!("statement {at}: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
