//! Replicated SQL on real `quarryd` processes: replicas hold identical databases
//! after statements whose answers SQLite would take from the host, a failing write
//! changes nothing anywhere, and a node that missed compacted entries gets the
//! database in a snapshot. Every process started is stopped by PID.

mod process;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use quarry::proto::sql_client::SqlClient;
use quarry::proto::sql_value::Value as V;
use quarry::proto::{SqlSchemaRequest, SqlStatement, SqlValue};
use tonic::Code;

use process::*;

const DB: &str = "app";
const ROWS: i64 = 300;

fn quarryctl(cluster: &Cluster, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quarryctl"))
        .envs(cluster.ctl_env())
        .arg("--endpoints")
        .arg(cluster.addrs.join(","))
        .args(args)
        .output()
        .expect("quarryctl runs")
}

fn statement(sql: &str, params: Vec<SqlValue>) -> SqlStatement {
    SqlStatement { sql: sql.into(), params, named: Default::default() }
}

fn int(i: i64) -> SqlValue {
    SqlValue { value: Some(V::Integer(i)) }
}

/// Size and CRC of the database file at node `id`'s own replica.
async fn image_at(cluster: &Cluster, id: usize) -> Option<(u64, u32)> {
    let mut sql = SqlClient::new(channel(&cluster.addrs[id - 1]).await);
    let request = SqlSchemaRequest { database: DB.into(), serializable: true };
    let answer = sql.schema(request).await.ok()?.into_inner();
    Some((answer.image_bytes, answer.image_crc32))
}

/// Polls until every node's replica holds the same database file as node 1's.
async fn wait_for_identical_replicas(cluster: &Cluster) -> (u64, u32) {
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        let images = futures::future::join_all((1..=3).map(|id| image_at(cluster, id))).await;
        if images[0].is_some() && images.iter().all(|i| *i == images[0]) {
            return images[0].expect("checked above");
        }
        assert!(Instant::now() < deadline, "replicas never held the same database: {images:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_hold_identical_databases_through_failures_and_a_snapshot_catch_up() {
    let mut cluster = start_cluster_with(&["--snapshot-distance", "100"]);
    wait_for_leaders(&cluster).await;
    let client = client(&cluster.addrs);

    // Schema and rows through quarryctl, a script applied atomically.
    let script = cluster.dir.path().join("schema.sql");
    std::fs::write(
        &script,
        "CREATE TABLE users(name TEXT PRIMARY KEY, value INTEGER);\n\
         CREATE TABLE events(id INTEGER PRIMARY KEY, at TEXT, token BLOB, roll INTEGER);\n\
         INSERT INTO users VALUES ('ann', 1); -- a comment; with a semicolon\n",
    )
    .expect("script");
    succeeded("sql --file", &quarryctl(&cluster, &["sql", DB, "--file", script.to_str().expect("utf-8")]));
    let out = quarryctl(
        &cluster,
        &["--json", "sql", DB, "INSERT INTO users VALUES (?, ?)", "--param", "bob", "--param", "2"],
    );
    succeeded("sql with parameters", &out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["results"][0]["rows_affected"], 1);

    // Statements whose answer SQLite would take from the host (clock, randomness,
    // a rowid picked at random once the largest is taken) reach the same bytes.
    let host_dependent = [
        "INSERT INTO events(at, token, roll) VALUES (datetime('now'), randomblob(16), random())",
        "INSERT INTO events(at, token, roll) VALUES (CURRENT_TIMESTAMP, randomblob(8), abs(random()) % 6)",
        "INSERT INTO events(id, at) VALUES (9223372036854775807, datetime('now', 'localtime'))",
        "INSERT INTO events(at) VALUES (strftime('%s', 'now'))",
    ];
    for text in host_dependent {
        client.sql_execute(DB, vec![statement(text, vec![])]).await.unwrap_or_else(|e| panic!("{text}: {e}"));
    }

    // A write whose second statement breaks a constraint changes nothing; a syntax
    // error and a read sent as a write are the caller's mistakes. The group goes on.
    let failing = vec![
        statement("INSERT INTO users VALUES ('cy', 3)", vec![]),
        statement("INSERT INTO users VALUES ('ann', 9)", vec![]),
    ];
    let refused = client.sql_execute(DB, failing).await.expect_err("a UNIQUE violation");
    let quarry::client::ClientError::Status(status) = refused else { panic!("{refused:?}") };
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("statement 1") && status.message().contains("UNIQUE"), "{status:?}");
    for (bad, code) in
        [("INSERT INTO nowhere VALUES (1)", 1), ("SELECT * FROM users", 1), ("PRAGMA foreign_keys=OFF", 1)]
    {
        let out = quarryctl(&cluster, &["sql", DB, bad]);
        assert_eq!(out.status.code(), Some(code), "{bad}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = quarryctl(&cluster, &["--json", "query", DB, "SELECT name, value FROM users ORDER BY name"]);
    succeeded("query", &out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["rows"], serde_json::json!([["ann", 1], ["bob", 2]]), "the failed write left no row");

    // Node 3 misses enough writes that every leader compacts past them; it returns
    // and gets the database in a snapshot image.
    cluster.kill(3);
    for i in 0..ROWS {
        let insert = statement(
            "INSERT INTO users VALUES (?, ?)",
            vec![SqlValue { value: Some(V::Text(format!("u{i:04}"))) }, int(i)],
        );
        client.sql_execute(DB, vec![insert]).await.expect("insert while node 3 is down");
    }
    let taken = counter(&cluster.metrics[0], "quarry_snapshots_taken_total").await;
    assert!(taken >= 1, "node 1 took {taken} snapshots");
    cluster.restart(3);
    let (bytes, crc) = wait_for_identical_replicas(&cluster).await;
    assert!(bytes >= 8192, "a database of {bytes} bytes (crc {crc:08x})");
    assert!(counter(&cluster.metrics[2], "quarry_snapshots_installed_total").await >= 1, "node 3 installed a snapshot");
    let out = quarryctl(
        &cluster,
        &["--json", "--endpoints", &cluster.addrs[2], "query", DB, "SELECT count(*) FROM users", "--serializable"],
    );
    succeeded("query at node 3", &out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["rows"], serde_json::json!([[ROWS + 2]]));

    // The schema and its changes, as the log applied them.
    let out = quarryctl(&cluster, &["--json", "sql", "schema", DB]);
    succeeded("sql schema", &out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let kinds: Vec<&str> =
        json["changes"].as_array().expect("changes").iter().filter_map(|c| c["kind"].as_str()).collect();
    assert_eq!(kinds, ["create table", "create table"]);
    assert_eq!(json["image"]["crc32"], crc);
}
