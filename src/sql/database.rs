//! A group's SQL databases: applying writes, answering queries, snapshots.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, Statement as Prepared, ToSql};

use super::determinism::{self, ApplyContext, Mode};
use super::{
    classify, Execute, Statement, StatementKind, StatementResult, Value, DATABASES_PER_GROUP_MAX, DATABASE_BYTES_MAX,
    QUERY_BYTES_MAX, QUERY_ROWS_MAX, SCHEMA_HISTORY_MAX,
};

/// Bytes of a failure's message kept (see [`SqlFailure::new`]).
const FAILURE_MESSAGE_MAX: usize = 1024;

/// Why a statement failed; nothing of its write was applied. The same on every
/// replica, since it depends only on the database and the entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlFailure {
    /// The statement that failed (0-based).
    pub statement: u32,
    pub cause: FailureCause,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FailureCause {
    /// Syntax, unknown table or column, a refused construct: the caller's mistake.
    Invalid = 1,
    /// A constraint (UNIQUE, NOT NULL, CHECK, FOREIGN KEY) held.
    Constraint = 2,
    /// A bound was reached: database size, steps, answer size, databases per group.
    Limit = 3,
    /// No database by that name.
    NotFound = 4,
}

impl FailureCause {
    pub fn from_u8(value: u8) -> FailureCause {
        match value {
            2 => FailureCause::Constraint,
            3 => FailureCause::Limit,
            4 => FailureCause::NotFound,
            _ => FailureCause::Invalid,
        }
    }
}

impl SqlFailure {
    /// The message is cut at [`FAILURE_MESSAGE_MAX`] bytes: it is remembered in the
    /// client's session, and SQLite's messages can quote the statement's names.
    fn new(statement: usize, cause: FailureCause, message: impl Into<String>) -> SqlFailure {
        let mut message = message.into();
        if message.len() > FAILURE_MESSAGE_MAX {
            let mut end = FAILURE_MESSAGE_MAX;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        SqlFailure { statement: statement as u32, cause, message }
    }

    /// A failure SQLite reported; a stop by Quarry's own rules names its reason.
    fn from_sqlite(statement: usize, error: &rusqlite::Error) -> SqlFailure {
        if let Some((cause, reason)) = determinism::stop_reason() {
            return SqlFailure::new(statement, cause, reason);
        }
        let cause = match error.sqlite_error_code() {
            Some(ErrorCode::ConstraintViolation) => FailureCause::Constraint,
            Some(ErrorCode::DiskFull | ErrorCode::TooBig) => FailureCause::Limit,
            _ => FailureCause::Invalid,
        };
        let message = match cause {
            FailureCause::Limit => format!("{error} (a database holds at most {} MiB)", DATABASE_BYTES_MAX >> 20),
            _ => error.to_string(),
        };
        SqlFailure::new(statement, cause, message)
    }
}

impl std::fmt::Display for SqlFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "statement {}: {}", self.statement, self.message)
    }
}

/// A schema change as the log applied it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaChange {
    pub index: u64,
    pub kind: StatementKind,
    pub text: String,
}

/// A query's rows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueryAnswer {
    /// Name and declared type (empty for an expression) of each column.
    pub columns: Vec<(String, String)>,
    pub rows: Vec<Vec<Value>>,
    /// More rows follow the ones answered (only when the caller set a row limit).
    pub more: bool,
}

/// A database's schema objects (type, name, table, SQL) and its recent changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchemaAnswer {
    pub objects: Vec<[String; 4]>,
    pub changes: Vec<SchemaChange>,
    /// Size and CRC-32 of the database file, to compare replicas.
    pub image_bytes: u64,
    pub image_crc32: u32,
}

struct Database {
    conn: Connection,
    /// The latest schema changes, oldest first (at most [`SCHEMA_HISTORY_MAX`]).
    changes: VecDeque<SchemaChange>,
}

/// The SQL databases of one group, by name.
#[derive(Default)]
pub struct SqlDatabases {
    databases: BTreeMap<String, Database>,
}

impl std::fmt::Debug for SqlDatabases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.databases.keys()).finish()
    }
}

/// Equal when every database has the same bytes and history.
impl PartialEq for SqlDatabases {
    fn eq(&self, other: &Self) -> bool {
        let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
        self.snapshot_into(&mut a);
        other.snapshot_into(&mut b);
        a == b
    }
}

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn value_of(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(r) => Value::Real(r),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(Bytes::copy_from_slice(b)),
    }
}

impl SqlDatabases {
    pub fn is_empty(&self) -> bool {
        self.databases.is_empty()
    }

    /// Applies a write at log `index`: every statement, or none of them.
    pub fn execute(&mut self, index: u64, write: &Execute) -> Result<Vec<StatementResult>, SqlFailure> {
        write.validate().map_err(|e| SqlFailure::new(0, FailureCause::Invalid, e))?;
        for (at, statement) in write.statements.iter().enumerate() {
            let kind =
                classify(&statement.text).map_err(|e| SqlFailure::new(at, FailureCause::Invalid, e.to_string()))?;
            if kind != statement.kind {
                let why = format!("labelled {} but the statement is a {}", statement.kind.name(), kind.name());
                return Err(SqlFailure::new(at, FailureCause::Invalid, why));
            }
        }
        let _context = ApplyContext::enter(write.now_ms, write.seed ^ index);
        let created = !self.databases.contains_key(&write.database);
        if created {
            if self.databases.len() >= DATABASES_PER_GROUP_MAX {
                let why = format!(
                    "database {:?} cannot be created: its group holds {DATABASES_PER_GROUP_MAX} databases already",
                    write.database
                );
                return Err(SqlFailure::new(0, FailureCause::Limit, why));
            }
            let conn = determinism::open(&[]).map_err(|e| SqlFailure::from_sqlite(0, &e))?;
            self.databases.insert(write.database.clone(), Database { conn, changes: VecDeque::new() });
        }
        let Some(database) = self.databases.get_mut(&write.database) else {
            unreachable!("the database was found or created above");
        };
        let result = database.apply(index, &write.statements);
        if result.is_err() && created {
            self.databases.remove(&write.database); // A failed first write creates nothing.
        }
        result
    }

    /// Runs a read-only statement. `max_rows` 0 means "up to the bound, and past it
    /// the query is refused"; otherwise the answer stops there with `more` set.
    pub fn query(&self, database: &str, statement: &Statement, max_rows: usize) -> Result<QueryAnswer, SqlFailure> {
        let db = self
            .databases
            .get(database)
            .ok_or_else(|| SqlFailure::new(0, FailureCause::NotFound, format!("no database named {database:?}")))?;
        determinism::enter_query();
        determinism::begin_statement(Mode::Query);
        let sqlite = |e: rusqlite::Error| SqlFailure::from_sqlite(0, &e);
        let mut prepared = db.conn.prepare(&statement.text).map_err(sqlite)?;
        if !prepared.readonly() {
            return Err(SqlFailure::new(0, FailureCause::Invalid, "the statement writes: send it with Execute"));
        }
        bind(&mut prepared, statement).map_err(|e| SqlFailure::new(0, FailureCause::Invalid, e))?;
        let columns = prepared
            .columns()
            .iter()
            .map(|c| (c.name().to_string(), c.decl_type().unwrap_or("").to_string()))
            .collect();
        let limit = if max_rows == 0 { QUERY_ROWS_MAX } else { max_rows.min(QUERY_ROWS_MAX) };
        let width = prepared.column_count();
        let mut answer = QueryAnswer { columns, ..QueryAnswer::default() };
        let mut bytes = 0;
        let mut rows = prepared.raw_query();
        while let Some(row) = rows.next().map_err(sqlite)? {
            if answer.rows.len() == limit {
                if max_rows == 0 {
                    let why = format!("the query returns more than {QUERY_ROWS_MAX} rows: add a LIMIT or set max_rows");
                    return Err(SqlFailure::new(0, FailureCause::Limit, why));
                }
                answer.more = true;
                break;
            }
            let values: Vec<Value> =
                (0..width).map(|i| row.get_ref(i).map(value_of)).collect::<Result<_, _>>().map_err(sqlite)?;
            bytes += values.iter().map(Value::size).sum::<usize>();
            if bytes > QUERY_BYTES_MAX {
                let why = format!("the query returns more than {} MiB: add a LIMIT", QUERY_BYTES_MAX >> 20);
                return Err(SqlFailure::new(0, FailureCause::Limit, why));
            }
            answer.rows.push(values);
        }
        Ok(answer)
    }

    /// The schema objects of `database` and its recent schema changes.
    pub fn schema(&self, database: &str) -> Option<SchemaAnswer> {
        let db = self.databases.get(database)?;
        determinism::begin_statement(Mode::Internal);
        let objects = db
            .conn
            .prepare("SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_schema ORDER BY rowid")
            .and_then(|mut s| {
                s.query_map([], |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?]))?.collect::<Result<Vec<_>, _>>()
            })
            .unwrap_or_default();
        let (image_bytes, image_crc32) = match db.conn.serialize(rusqlite::MAIN_DB) {
            Ok(image) => (image.len() as u64, crc32fast::hash(&image)),
            Err(_) => (0, 0),
        };
        Some(SchemaAnswer { objects, changes: db.changes.iter().cloned().collect(), image_bytes, image_crc32 })
    }

    /// Appends every database (name, image, schema history) to a state snapshot.
    pub fn snapshot_into(&self, out: &mut BytesMut) {
        out.put_u64_le(self.databases.len() as u64);
        for (name, db) in &self.databases {
            put_bytes(out, name.as_bytes());
            match db.conn.serialize(rusqlite::MAIN_DB) {
                Ok(image) => put_bytes(out, &image),
                // Serializing an in-memory database only fails when memory runs out;
                // a snapshot without this database would lose it, so stop loudly.
                Err(e) => panic!("cannot serialize SQL database {name:?} for a snapshot: {e}"),
            }
            out.put_u64_le(db.changes.len() as u64);
            for change in &db.changes {
                out.put_u64_le(change.index);
                out.put_u8(change.kind as u8);
                put_bytes(out, change.text.as_bytes());
            }
        }
    }

    /// Reads what [`SqlDatabases::snapshot_into`] wrote, checking each image.
    pub fn restore_from(data: &mut Bytes) -> Result<SqlDatabases, &'static str> {
        let mut restored = SqlDatabases::default();
        let count = get_u64(data)?;
        if count > DATABASES_PER_GROUP_MAX as u64 {
            return Err("too many SQL databases");
        }
        for _ in 0..count {
            let name = String::from_utf8(get_bytes(data)?.to_vec()).map_err(|_| "SQL database name")?;
            super::check_database_name(&name).map_err(|_| "SQL database name")?;
            let image = get_bytes(data)?;
            if image.len() as u64 > DATABASE_BYTES_MAX {
                return Err("SQL database image too large");
            }
            let conn = determinism::open(&image).map_err(|_| "SQL database image")?;
            let check: String =
                conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(|_| "SQL database image")?;
            if check != "ok" {
                return Err("SQL database image fails its integrity check");
            }
            let n = get_u64(data)?;
            if n > SCHEMA_HISTORY_MAX as u64 {
                return Err("SQL schema history");
            }
            let mut changes = VecDeque::new();
            for _ in 0..n {
                let index = get_u64(data)?;
                if data.is_empty() {
                    return Err("truncated");
                }
                let kind = StatementKind::from_u8(data.get_u8()).ok_or("SQL statement kind")?;
                let text = String::from_utf8(get_bytes(data)?.to_vec()).map_err(|_| "SQL schema history")?;
                changes.push_back(SchemaChange { index, kind, text });
            }
            restored.databases.insert(name, Database { conn, changes });
        }
        Ok(restored)
    }
}

impl Database {
    fn apply(&mut self, index: u64, statements: &[Statement]) -> Result<Vec<StatementResult>, SqlFailure> {
        determinism::reset_last_insert_rowid(&self.conn);
        determinism::begin_statement(Mode::Internal);
        self.conn.execute_batch("BEGIN").map_err(|e| SqlFailure::from_sqlite(0, &e))?;
        let mut results = Vec::with_capacity(statements.len());
        for (at, statement) in statements.iter().enumerate() {
            match self.apply_one(at, statement) {
                Ok(result) => results.push(result),
                Err(failure) => {
                    determinism::begin_statement(Mode::Internal);
                    if !self.conn.is_autocommit() {
                        if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                            // Every replica hits this alike; the database may hold a
                            // partial write, which must not be served as if it did not.
                            panic!("ROLLBACK of a failed SQL write at index {index} failed: {e}");
                        }
                    }
                    return Err(failure);
                }
            }
        }
        determinism::begin_statement(Mode::Internal);
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(SqlFailure::from_sqlite(statements.len().saturating_sub(1), &e));
        }
        for statement in statements.iter().filter(|s| s.kind.is_schema_change()) {
            if self.changes.len() == SCHEMA_HISTORY_MAX {
                self.changes.pop_front();
            }
            self.changes.push_back(SchemaChange { index, kind: statement.kind, text: statement.text.clone() });
        }
        Ok(results)
    }

    /// Runs statement number `at`.
    fn apply_one(&self, at: usize, statement: &Statement) -> Result<StatementResult, SqlFailure> {
        determinism::begin_statement(Mode::Apply(statement.kind));
        let sqlite = |e: rusqlite::Error| SqlFailure::from_sqlite(at, &e);
        let invalid = |why: String| SqlFailure::new(at, FailureCause::Invalid, why);
        let mut prepared = self.conn.prepare(&statement.text).map_err(sqlite)?;
        if prepared.readonly() {
            return Err(invalid("a read-only statement: send it with Query, not Execute".into()));
        }
        bind(&mut prepared, statement).map_err(invalid)?;
        let changes_before = self.conn.total_changes();
        let mut rows = prepared.raw_query();
        while rows.next().map_err(sqlite)?.is_some() {} // RETURNING rows are not answered.
        drop(rows);
        // `changes()` keeps the count of the connection's last INSERT, UPDATE or
        // DELETE, which a schema change does not reset: history a restored replica
        // does not share. A statement that changed no row changed none.
        let changed_rows = self.conn.total_changes() != changes_before;
        let rows_affected = if changed_rows { self.conn.changes() } else { 0 };
        Ok(StatementResult { rows_affected, last_insert_rowid: self.conn.last_insert_rowid() })
    }
}

/// Binds a statement's positional and named parameters, refusing any it lacks.
fn bind(prepared: &mut Prepared<'_>, statement: &Statement) -> Result<(), String> {
    let expected = prepared.parameter_count();
    if statement.params.len() > expected {
        return Err(format!("the statement takes {expected} parameters; {} were given", statement.params.len()));
    }
    for (i, value) in statement.params.iter().enumerate() {
        prepared.raw_bind_parameter(i + 1, value).map_err(|e| e.to_string())?;
    }
    for (name, value) in &statement.named {
        let index = if name.starts_with([':', '@', '$']) {
            prepared.parameter_index(name).ok().flatten()
        } else {
            [":", "@", "$"]
                .iter()
                .find_map(|prefix| prepared.parameter_index(&format!("{prefix}{name}")).ok().flatten())
        };
        let index = index.ok_or_else(|| format!("the statement has no parameter named {name:?}"))?;
        prepared.raw_bind_parameter(index, value).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn put_bytes(out: &mut BytesMut, data: &[u8]) {
    out.put_u32_le(data.len() as u32);
    out.extend_from_slice(data);
}

fn get_u64(data: &mut Bytes) -> Result<u64, &'static str> {
    if data.len() < 8 {
        return Err("truncated");
    }
    Ok(data.get_u64_le())
}

fn get_bytes(data: &mut Bytes) -> Result<Bytes, &'static str> {
    if data.len() < 4 {
        return Err("truncated");
    }
    let len = data.get_u32_le() as usize;
    if data.len() < len {
        return Err("truncated");
    }
    Ok(data.split_to(len))
}
