//! What makes a SQLite write reach the same bytes on every replica.
//!
//! - **Time.** Connections are opened on a VFS whose clock reads the time the entry
//!   carries, so `datetime('now')`, `CURRENT_TIMESTAMP` and the like give the same
//!   answer everywhere. `'localtime'` is UTC on every host.
//! - **Randomness.** `random()` and `randomblob()` draw from a generator seeded by
//!   the entry. SQLite's own generator (used for a new rowid once the largest rowid
//!   is taken) is reseeded from the entry too, under one lock for all shards, since
//!   it is shared by the whole process.
//! - **What is not in the database file** is refused by an authorizer while a
//!   statement is prepared: temporary objects, attached files, pragmas, transactions
//!   opened by the statement, virtual tables, and functions that read the
//!   connection's history (`changes()`, `total_changes()`).
//! - **Runaway statements** are stopped after a number of virtual-machine steps,
//!   which is the same on every replica.

use std::cell::{Cell, RefCell};
use std::ffi::{c_int, c_void, CStr};
use std::sync::{Mutex, MutexGuard, OnceLock};

use rusqlite::ffi;
use rusqlite::functions::FunctionFlags;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{Connection, OpenFlags};

use super::{FailureCause, StatementKind, DATABASE_BYTES_MAX, QUERY_STEPS_MAX, STATEMENT_STEPS_MAX};

const VFS_NAME: &CStr = c"quarry-replica";
const PAGE_BYTES: u64 = 4096;
/// `SQLITE_TESTCTRL_PRNG_SEED` (newer than the bindings' API level).
const TESTCTRL_PRNG_SEED: c_int = 28;
/// Virtual-machine steps between two calls of the progress handler.
const STEPS_PER_PROGRESS_CALL: u64 = 1000;
/// Bytes `randomblob(N)` may make.
const RANDOMBLOB_MAX: i64 = 1 << 20;
/// Julian day of the Unix epoch in milliseconds, SQLite's clock unit.
const UNIX_EPOCH_JULIAN_MS: i64 = 210_866_760_000_000;
/// Pragmas a query may read (schema introspection), in lower case.
const QUERY_PRAGMAS: [&str; 7] =
    ["table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list", "table_list"];

extern "C" {
    // In the bundled library; newer than the bindings' API level.
    fn sqlite3_set_last_insert_rowid(db: *mut ffi::sqlite3, rowid: i64);
}

/// What the statement being prepared or run may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// Quarry's own statements (BEGIN, COMMIT, settings): anything.
    Internal,
    /// A write statement of this kind, applied from the log.
    Apply(StatementKind),
    /// A read on one replica.
    Query,
}

thread_local! {
    static MODE: Cell<Mode> = const { Cell::new(Mode::Internal) };
    static NOW_MS: Cell<i64> = const { Cell::new(0) };
    static RANDOM: Cell<u64> = const { Cell::new(0) };
    static STEPS: Cell<u64> = const { Cell::new(0) };
    /// Why the authorizer or the step limit stopped the last statement.
    static STOPPED: RefCell<Option<(FailureCause, String)>> = const { RefCell::new(None) };
}

/// Held while a write applies: SQLite's generator is one per process.
static APPLY_LOCK: Mutex<()> = Mutex::new(());

/// The context one write applies in; dropping it ends the write.
pub(super) struct ApplyContext {
    _lock: MutexGuard<'static, ()>,
}

impl ApplyContext {
    pub(super) fn enter(now_ms: i64, seed: u64) -> ApplyContext {
        let lock = APPLY_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        NOW_MS.set(now_ms);
        RANDOM.set(seed);
        // SAFETY: a documented test-control call with its documented arguments; the
        // seed is nonzero (zero would mean "seed from the host").
        unsafe {
            ffi::sqlite3_test_control(TESTCTRL_PRNG_SEED, (seed as c_int) | 1, std::ptr::null_mut::<ffi::sqlite3>())
        };
        ApplyContext { _lock: lock }
    }
}

/// Sets up a query: the host's clock, a seed from it.
pub(super) fn enter_query() {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    NOW_MS.set(now);
    RANDOM.set(now as u64);
}

/// Starts a statement in `mode`: its step count and stop reason reset.
pub(super) fn begin_statement(mode: Mode) {
    MODE.set(mode);
    STEPS.set(0);
    STOPPED.with_borrow_mut(|s| *s = None);
}

/// Why the last statement was stopped by Quarry's rules, if it was.
pub(super) fn stop_reason() -> Option<(FailureCause, String)> {
    STOPPED.with_borrow_mut(Option::take)
}

/// Forgets the rowid of the last insert (a connection's history, not the database's):
/// `last_insert_rowid()` means the same thing on a replica restored from a snapshot.
pub(super) fn reset_last_insert_rowid(conn: &Connection) {
    // SAFETY: the handle is valid for the connection's life; the call only sets a field.
    unsafe { sqlite3_set_last_insert_rowid(conn.handle(), 0) };
}

/// An empty database (or `image`, a serialized one) on the replica VFS, set up.
pub(super) fn open(image: &[u8]) -> rusqlite::Result<Connection> {
    register_vfs();
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags_and_vfs(":memory:", flags, VFS_NAME)?;
    // Fresh or restored, every database lives in the same kind of store (memdb), so
    // both write the same bytes from here on (a plain `:memory:` database does not
    // keep the file header's change counter).
    let size = image.len();
    // SAFETY: a buffer from sqlite3_malloc64 (at least one byte), handed to SQLite
    // with its size; SQLite frees it.
    let buffer = unsafe { ffi::sqlite3_malloc64(size.max(1) as u64) }.cast::<u8>();
    let buffer = std::ptr::NonNull::new(buffer).ok_or(rusqlite::Error::SqliteFailure(
        ffi::Error::new(ffi::SQLITE_NOMEM),
        Some("no memory for the database image".into()),
    ))?;
    // SAFETY: `buffer` holds `size` bytes (or one when `size` is zero).
    unsafe { std::ptr::copy_nonoverlapping(image.as_ptr(), buffer.as_ptr(), size) };
    let data = unsafe { rusqlite::serialize::OwnedData::from_raw_nonnull(buffer, size) };
    conn.deserialize(rusqlite::MAIN_DB, data, false)?;
    configure(&conn)?;
    Ok(conn)
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    begin_statement(Mode::Internal);
    conn.pragma_update(None, "journal_mode", "MEMORY")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "max_page_count", DATABASE_BYTES_MAX / PAGE_BYTES)?;
    conn.pragma_update(None, "cache_size", -1024)?;
    conn.create_scalar_function("random", 0, FunctionFlags::SQLITE_UTF8, |_| Ok(next_random() as i64))?;
    conn.create_scalar_function("randomblob", 1, FunctionFlags::SQLITE_UTF8, |ctx| {
        let n = ctx.get::<i64>(0)?.max(1);
        if n > RANDOMBLOB_MAX {
            return Err(rusqlite::Error::UserFunctionError(
                format!("randomblob({n}) exceeds {RANDOMBLOB_MAX} bytes").into(),
            ));
        }
        let mut blob = Vec::with_capacity(n as usize);
        while blob.len() < n as usize {
            blob.extend_from_slice(&next_random().to_le_bytes());
        }
        blob.truncate(n as usize);
        Ok(blob)
    })?;
    conn.progress_handler(STEPS_PER_PROGRESS_CALL as c_int, Some(count_steps));
    conn.authorizer(Some(authorize));
    Ok(())
}

/// SplitMix64 over the entry's seed: the same sequence on every replica.
fn next_random() -> u64 {
    let state = RANDOM.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
    RANDOM.set(state);
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn count_steps() -> bool {
    let steps = STEPS.get() + STEPS_PER_PROGRESS_CALL;
    STEPS.set(steps);
    let limit = match MODE.get() {
        Mode::Internal => return false,
        Mode::Apply(_) => STATEMENT_STEPS_MAX,
        Mode::Query => QUERY_STEPS_MAX,
    };
    if steps > limit {
        stop(FailureCause::Limit, format!("the statement was stopped after {limit} steps"));
        return true;
    }
    false
}

fn stop(cause: FailureCause, reason: String) {
    STOPPED.with_borrow_mut(|s| {
        s.get_or_insert((cause, reason));
    });
}

fn authorize(ctx: AuthContext<'_>) -> Authorization {
    let mode = MODE.get();
    match refusal(mode, &ctx.action) {
        None => Authorization::Allow,
        Some(reason) => {
            stop(FailureCause::Invalid, reason);
            Authorization::Deny
        }
    }
}

/// Why `action` may not happen in `mode`, if it may not.
fn refusal(mode: Mode, action: &AuthAction<'_>) -> Option<String> {
    use AuthAction::*;
    let kind = match mode {
        Mode::Internal => return None,
        Mode::Query => return query_refusal(action),
        Mode::Apply(kind) => kind,
    };
    match action {
        Attach { .. } | Detach { .. } => Some("ATTACH and DETACH cannot reach files on the nodes".into()),
        Pragma { pragma_name, .. } => Some(format!("PRAGMA {pragma_name} changes settings that are not replicated")),
        Transaction { .. } | Savepoint { .. } => {
            Some("each Execute is one transaction already; send the statements together".into())
        }
        CreateTempIndex { .. }
        | CreateTempTable { .. }
        | CreateTempTrigger { .. }
        | CreateTempView { .. }
        | DropTempIndex { .. }
        | DropTempTable { .. }
        | DropTempTrigger { .. }
        | DropTempView { .. } => Some("temporary objects live outside the database and are not replicated".into()),
        CreateVtable { .. } | DropVtable { .. } => Some("virtual tables are not replicated".into()),
        Function { function_name } if is_history_function(function_name) => {
            Some(format!("{function_name}() reads the connection's history, which replicas do not share"))
        }
        CreateTable { .. }
        | DropTable { .. }
        | AlterTable { .. }
        | CreateIndex { .. }
        | DropIndex { .. }
        | CreateView { .. }
        | DropView { .. }
        | CreateTrigger { .. }
        | DropTrigger { .. }
        | Analyze { .. }
        | Reindex { .. }
            if !kind.is_schema_change() =>
        {
            Some("a data-change statement may not change the schema".into())
        }
        Unknown { code, .. } => Some(format!("action {code} is not known to Quarry")),
        _ => None,
    }
}

fn query_refusal(action: &AuthAction<'_>) -> Option<String> {
    use AuthAction::*;
    match action {
        Select | Read { .. } | Recursive => None,
        Function { function_name } if !is_history_function(function_name) => None,
        Pragma { pragma_name, .. } if QUERY_PRAGMAS.contains(&pragma_name.to_ascii_lowercase().as_str()) => None,
        other => Some(format!("a query may only read; send writes with Execute ({other:?} refused)")),
    }
}

fn is_history_function(name: &str) -> bool {
    name.eq_ignore_ascii_case("changes") || name.eq_ignore_ascii_case("total_changes")
}

/// Registers the replica VFS once: the default VFS with the entry's clock.
fn register_vfs() {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        // SAFETY: the default VFS is copied, not changed; the copy is leaked so it
        // lives as long as the process, as SQLite requires of a registered VFS.
        unsafe {
            let default = ffi::sqlite3_vfs_find(std::ptr::null());
            assert!(!default.is_null(), "SQLite has no default VFS");
            let mut vfs = *default;
            vfs.zName = VFS_NAME.as_ptr();
            vfs.pNext = std::ptr::null_mut();
            vfs.xCurrentTime = Some(current_time);
            vfs.xCurrentTimeInt64 = Some(current_time_int64);
            ffi::sqlite3_vfs_register(Box::leak(Box::new(vfs)), 0);
            ffi::sqlite3_test_control(
                ffi::SQLITE_TESTCTRL_LOCALTIME_FAULT,
                2 as c_int,
                utc_as_localtime as unsafe extern "C" fn(*const c_void, *mut c_void) -> c_int,
            );
        }
    });
}

unsafe extern "C" fn current_time_int64(_: *mut ffi::sqlite3_vfs, now: *mut ffi::sqlite3_int64) -> c_int {
    *now = UNIX_EPOCH_JULIAN_MS + NOW_MS.get();
    ffi::SQLITE_OK
}

unsafe extern "C" fn current_time(_: *mut ffi::sqlite3_vfs, now: *mut f64) -> c_int {
    *now = (UNIX_EPOCH_JULIAN_MS + NOW_MS.get()) as f64 / 86_400_000.0;
    ffi::SQLITE_OK
}

/// SQLite's "local time" on every replica: UTC, so hosts in other zones agree.
unsafe extern "C" fn utc_as_localtime(time: *const c_void, out: *mut c_void) -> c_int {
    c_int::from(libc::gmtime_r(time.cast::<libc::time_t>(), out.cast::<libc::tm>()).is_null())
}
