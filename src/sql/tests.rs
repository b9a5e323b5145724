use bytes::{Bytes, BytesMut};

use super::*;

fn statement(text: &str, params: Vec<Value>) -> Statement {
    let kind = classify(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    Statement { kind, text: text.into(), params, named: Vec::new() }
}

fn write(statements: Vec<Statement>) -> Execute {
    Execute { database: "app".into(), now_ms: 1_700_000_000_123, seed: 42, statements }
}

fn run(dbs: &mut SqlDatabases, index: u64, texts: &[&str]) -> Result<Vec<StatementResult>, SqlFailure> {
    dbs.execute(index, &write(texts.iter().map(|t| statement(t, Vec::new())).collect()))
}

fn query(dbs: &SqlDatabases, text: &str) -> Result<QueryAnswer, SqlFailure> {
    dbs.query("app", &Statement { kind: StatementKind::Data, text: text.into(), params: vec![], named: vec![] }, 0)
}

fn image(dbs: &SqlDatabases) -> Bytes {
    let mut out = BytesMut::new();
    dbs.snapshot_into(&mut out);
    out.freeze()
}

fn restored(dbs: &SqlDatabases) -> SqlDatabases {
    SqlDatabases::restore_from(&mut image(dbs)).expect("a snapshot restores")
}

/// Statements whose answer SQLite would take from the host: the clock, randomness,
/// local time, a rowid picked at random once the largest is taken.
const HOST_DEPENDENT: [&str; 5] = [
    "INSERT INTO t(a, b) VALUES (datetime('now'), random())",
    "INSERT INTO t(a, b) VALUES (CURRENT_TIMESTAMP, hex(randomblob(16)))",
    "INSERT INTO t(a, b) VALUES (datetime('now', 'localtime'), unixepoch('now'))",
    "INSERT INTO t(rowid, a) VALUES (9223372036854775807, 'last')",
    "INSERT INTO t(a) VALUES ('after the last rowid')",
];

#[test]
fn replicas_reach_the_same_bytes_whether_fresh_or_restored_midway() {
    let mut fresh = SqlDatabases::default();
    run(&mut fresh, 1, &["CREATE TABLE t(a, b)", "CREATE INDEX ta ON t(a)"]).unwrap();
    let mut from_snapshot = restored(&fresh);
    for (i, text) in HOST_DEPENDENT.iter().enumerate() {
        let index = 2 + i as u64;
        let a = run(&mut fresh, index, &[text]);
        let b = run(&mut from_snapshot, index, &[text]);
        assert_eq!(a, b, "{text}");
        assert!(a.is_ok(), "{text}: {a:?}");
    }
    assert_eq!(image(&fresh), image(&from_snapshot), "the same bytes, header included");
    let rows = query(&fresh, "SELECT a FROM t WHERE rowid = 1").unwrap().rows;
    assert_eq!(rows, vec![vec![Value::Text("2023-11-14 22:13:20".into())]], "the entry's clock");
    let local = query(&fresh, "SELECT a, b FROM t WHERE rowid = 3").unwrap().rows;
    assert_eq!(local[0], vec![Value::Text("2023-11-14 22:13:20".into()), Value::Integer(1_700_000_000)]);
}

#[test]
fn answers_do_not_depend_on_the_connection_s_history() {
    // Found by the simulator (seed 398): a schema change answered the row count of
    // the connection's previous write, which a replica restored from a snapshot
    // never made.
    let mut live = SqlDatabases::default();
    run(&mut live, 1, &["CREATE TABLE t(a)", "INSERT INTO t VALUES (1)"]).unwrap();
    let mut restored = restored(&live);
    let texts = ["CREATE TABLE IF NOT EXISTS t(a)", "CREATE TABLE u(b)", "UPDATE t SET a = 2 WHERE a = 9"];
    let a = run(&mut live, 2, &texts).unwrap();
    assert_eq!(run(&mut restored, 2, &texts).unwrap(), a);
    assert!(a.iter().all(|r| r.rows_affected == 0 && r.last_insert_rowid == 0), "{a:?}");
}

#[test]
fn a_failing_statement_fails_the_same_way_everywhere_and_changes_nothing() {
    let mut a = SqlDatabases::default();
    run(&mut a, 1, &["CREATE TABLE users(name TEXT UNIQUE NOT NULL, value INTEGER)"]).unwrap();
    let mut b = restored(&a);
    let before = image(&a);
    let texts = ["INSERT INTO users VALUES ('ann', 1)", "INSERT INTO users VALUES ('ann', 2)"];
    let failure = run(&mut a, 2, &texts).unwrap_err();
    assert_eq!(run(&mut b, 2, &texts), Err(failure.clone()));
    assert_eq!((failure.statement, failure.cause), (1, FailureCause::Constraint), "{failure:?}");
    assert!(failure.message.contains("UNIQUE"), "{failure:?}");
    assert_eq!(image(&a), before, "the first statement was rolled back too");
    let syntax = run(&mut a, 3, &["INSERT INTO nowhere VALUES (1)"]).unwrap_err();
    assert_eq!(syntax.cause, FailureCause::Invalid);
    // A message quoting a long name is cut: sessions remember failures.
    let long = format!("INSERT INTO {} VALUES (1)", "n".repeat(60_000));
    let cut = run(&mut a, 3, &[long.as_str()]).unwrap_err();
    assert!(cut.message.len() <= 1030 && cut.message.ends_with('…'), "{} bytes", cut.message.len());
    assert_eq!(image(&a), before);
    assert_eq!(run(&mut a, 4, &["INSERT INTO users VALUES ('bob', 2)"]).unwrap()[0].rows_affected, 1);
}

#[test]
fn what_is_not_in_the_database_file_is_refused_with_its_reason() {
    let mut dbs = SqlDatabases::default();
    run(&mut dbs, 1, &["CREATE TABLE t(a)"]).unwrap();
    let refused = |dbs: &mut SqlDatabases, text: &str, kind| {
        let forged = write(vec![Statement { kind, text: text.into(), params: vec![], named: vec![] }]);
        dbs.execute(9, &forged).unwrap_err().message
    };
    // Statements the classifier refuses never reach SQLite; forged entries that
    // carry them anyway are refused when they apply.
    assert!(refused(&mut dbs, "PRAGMA foreign_keys = OFF", StatementKind::Data).contains("PRAGMA"));
    assert!(refused(&mut dbs, "INSERT INTO t SELECT changes()", StatementKind::Data).contains("changes()"));
    assert!(refused(&mut dbs, "CREATE TABLE u(a)", StatementKind::Data).contains("labelled data change"));
    let with_ddl = "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x";
    assert!(run(&mut dbs, 2, &[with_ddl]).is_ok());
    assert!(refused(&mut dbs, "WITH x AS (SELECT 1) SELECT * FROM x", StatementKind::Data).contains("read-only"));
    assert!(query(&dbs, "INSERT INTO t VALUES (1)").unwrap_err().message.contains("Execute"));
    assert!(query(&dbs, "PRAGMA foreign_keys = OFF").is_err());
    assert_eq!(query(&dbs, "PRAGMA table_info(t)").unwrap().rows.len(), 1);
}

#[test]
fn runaway_statements_and_oversized_answers_are_stopped() {
    let mut dbs = SqlDatabases::default();
    run(&mut dbs, 1, &["CREATE TABLE t(a)"]).unwrap();
    let forever = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) INSERT INTO t SELECT i FROM n";
    let stopped = run(&mut dbs, 2, &[forever]).unwrap_err();
    assert_eq!(stopped.cause, FailureCause::Limit, "{stopped:?}");
    assert!(stopped.message.contains("steps"));
    assert_eq!(query(&dbs, "SELECT count(*) FROM t").unwrap().rows, vec![vec![Value::Integer(0)]]);
    let slow_read = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n";
    assert_eq!(query(&dbs, slow_read).unwrap_err().cause, FailureCause::Limit, "a query has a step limit too");
    let many =
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 20000) INSERT INTO t SELECT i FROM n";
    run(&mut dbs, 3, &[many]).unwrap();
    assert_eq!(query(&dbs, "SELECT a FROM t").unwrap_err().cause, FailureCause::Limit);
    let page = Statement { kind: StatementKind::Data, text: "SELECT a FROM t".into(), params: vec![], named: vec![] };
    let answer = dbs.query("app", &page, 10).unwrap();
    assert_eq!((answer.rows.len(), answer.more), (10, true));
    let full = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 100) \
                INSERT INTO t SELECT randomblob(1000000) FROM n";
    assert_eq!(run(&mut dbs, 4, &[full]).unwrap_err().cause, FailureCause::Limit, "past the database bound");
}

#[test]
fn parameters_bind_by_position_and_name() {
    let mut dbs = SqlDatabases::default();
    run(&mut dbs, 1, &["CREATE TABLE users(name TEXT, value INTEGER)"]).unwrap();
    let mut named = statement("INSERT INTO users VALUES (:name, @value)", vec![]);
    named.named = vec![("name".into(), Value::Text("ann".into())), ("@value".into(), Value::Integer(7))];
    let positional = statement("INSERT INTO users VALUES (?, ?)", vec![Value::Text("bob".into()), Value::Real(1.5)]);
    let results = dbs.execute(2, &write(vec![named, positional])).unwrap();
    assert_eq!(results.iter().map(|r| r.last_insert_rowid).collect::<Vec<_>>(), vec![1, 2]);
    let answer = query(&dbs, "SELECT name, value FROM users ORDER BY rowid").unwrap();
    assert_eq!(answer.columns, vec![("name".into(), "TEXT".into()), ("value".into(), "INTEGER".into())]);
    assert_eq!(answer.rows[1], vec![Value::Text("bob".into()), Value::Real(1.5)]);
    let mut unknown = statement("INSERT INTO users VALUES (:name, 1)", vec![]);
    unknown.named = vec![("nope".into(), Value::Null)];
    assert!(dbs.execute(3, &write(vec![unknown])).unwrap_err().message.contains("nope"));
    let extra = statement("INSERT INTO users VALUES (?, 1)", vec![Value::Null, Value::Null]);
    assert!(dbs.execute(4, &write(vec![extra])).unwrap_err().message.contains("takes 1 parameters"));
}

#[test]
fn schema_changes_are_remembered_and_a_failed_first_write_creates_nothing() {
    let mut dbs = SqlDatabases::default();
    assert!(run(&mut dbs, 1, &["CREATE TABLE t(a)", "INSERT INTO nowhere VALUES (1)"]).is_err());
    assert!(dbs.is_empty(), "nothing is created by a write that failed");
    run(&mut dbs, 2, &["CREATE TABLE t(a)", "INSERT INTO t VALUES (1)", "CREATE INDEX ta ON t(a)"]).unwrap();
    let schema = dbs.schema("app").unwrap();
    assert_eq!(schema.objects.iter().map(|o| o[1].as_str()).collect::<Vec<_>>(), vec!["t", "ta"]);
    let kinds: Vec<_> = schema.changes.iter().map(|c| (c.index, c.kind)).collect();
    assert_eq!(kinds, vec![(2, StatementKind::CreateTable), (2, StatementKind::CreateIndex)]);
    assert_eq!(restored(&dbs).schema("app"), Some(schema));
}

#[test]
fn damaged_snapshot_images_are_refused() {
    let mut dbs = SqlDatabases::default();
    run(&mut dbs, 1, &["CREATE TABLE t(a)", "INSERT INTO t VALUES (1)"]).unwrap();
    let good = image(&dbs);
    for cut in [3, 20, good.len() - 1] {
        assert!(SqlDatabases::restore_from(&mut good.slice(..cut)).is_err(), "cut at {cut}");
    }
    let mut flipped = good.to_vec();
    let page_two = 8 + 4 + 3 + 4 + 4096; // count, name, image length: page 2's type byte
    flipped[page_two] ^= 0xff;
    assert!(SqlDatabases::restore_from(&mut Bytes::from(flipped)).is_err());
}
