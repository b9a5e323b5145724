//! `quarryctl snapshot save` then `snapshot restore` on real processes: a new cluster
//! restored from the backup holds exactly the data acknowledged before the save.
//! Every process started is stopped by PID.

mod process;

use std::process::{Command, Output};

use bytes::Bytes;
use quarry::proto::kv_client::KvClient;
use quarry::proto::log_client::LogClient;
use quarry::proto::{LogAppendRequest, LogReadRequest, PutRequest};

use process::*;

fn quarryctl(cluster: &Cluster, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quarryctl")).envs(cluster.ctl_env()).args(args).output().expect("quarryctl runs")
}

const RECORDS: u64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restored_from_a_saved_snapshot_has_the_same_data() {
    // Snapshots every 50 entries: the saved images cover compacted and live entries.
    let old = start_cluster_with(&["--snapshot-distance", "50"]);
    wait_for_leaders(&old).await;
    let kv = KvClient::new(channel(&old.addrs[0]).await);
    put_concurrently(std::slice::from_ref(&kv), 8, 1_000, |i| (format!("key-{i}"), format!("value-{i}"))).await;
    let log = LogClient::new(channel(&old.addrs[1]).await);
    for n in 1..=RECORDS {
        let append =
            LogAppendRequest { log: "wal".into(), data: Bytes::from(format!("rec{n}")), client_id: 5, sequence: n };
        retry(|| {
            let (mut c, r) = (log.clone(), append.clone());
            async move { c.append(r).await }
        })
        .await
        .expect("append");
    }
    let saved = all_pairs(&old.addrs[0]).await;
    assert_eq!(saved.len(), 1_000);
    let sql = "CREATE TABLE users(name TEXT, value INTEGER); INSERT INTO users VALUES ('ann', 1), ('bob', 2)";
    succeeded("sql", &quarryctl(&old, &["--endpoints", &old.addrs.join(","), "sql", "app", sql]));

    let file = old.dir.path().join("cluster.backup");
    let file = file.to_str().expect("utf-8 path");
    let endpoints = old.addrs.join(",");
    succeeded("snapshot save", &quarryctl(&old, &["--endpoints", &endpoints, "snapshot", "save", file]));
    let out = quarryctl(&old, &["--json", "snapshot", "status", file]);
    succeeded("snapshot status", &out);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(status["groups"].as_array().map(Vec::len), Some(GROUPS as usize));

    // A write after the save is not in the backup.
    let after = PutRequest { key: "after-save".into(), value: "x".into(), client_id: 0, sequence: 0 };
    kv.clone().put(after).await.expect("put after save");

    // Restore every node of a new cluster (other ports, other dirs) and start it.
    let mut new = prepare_cluster(&[]);
    for id in 1..=3 {
        let dir = new.data_dir(id);
        let args = [
            "snapshot",
            "restore",
            file,
            "--data-dir",
            dir.to_str().expect("utf-8"),
            "--node-id",
            &id.to_string(),
            "--initial-cluster",
            &new.initial,
        ];
        succeeded("snapshot restore", &quarryctl(&old, &args));
    }
    let again = quarryctl(
        &old,
        &[
            "snapshot",
            "restore",
            file,
            "--data-dir",
            new.data_dir(1).to_str().expect("utf-8"),
            "--node-id",
            "1",
            "--initial-cluster",
            &new.initial,
        ],
    );
    assert_eq!(again.status.code(), Some(1), "restoring over a data dir is refused");
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
    new.start_founders();
    wait_for_leaders(&new).await;

    for id in 1..=3 {
        assert_eq!(all_pairs(&new.addrs[id - 1]).await, saved, "node {id} of the restored cluster");
    }
    let mut log = LogClient::new(channel(&new.addrs[2]).await);
    let read = LogReadRequest { log: "wal".into(), from: 1, limit: 100, serializable: false };
    let records = log.read(read).await.expect("read the restored log").into_inner().entries;
    let expected: Vec<Bytes> = (1..=RECORDS).map(|n| Bytes::from(format!("rec{n}"))).collect();
    assert_eq!(records, expected);
    let query =
        ["--json", "--endpoints", &new.addrs[1], "query", "app", "SELECT * FROM users ORDER BY name", "--serializable"];
    let out = quarryctl(&new, &query);
    succeeded("query the restored database", &out);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(rows["rows"], serde_json::json!([["ann", 1], ["bob", 2]]));
    // The restored cluster takes writes, and its members are its own.
    let kv = KvClient::new(channel(&new.addrs[0]).await);
    let put = PutRequest { key: "after-restore".into(), value: "y".into(), client_id: 0, sequence: 0 };
    retry(|| {
        let (mut c, r) = (kv.clone(), put.clone());
        async move { c.put(r).await }
    })
    .await
    .expect("put after restore");
    let out = quarryctl(&new, &["--endpoints", &new.addrs.join(","), "--json", "member", "list"]);
    succeeded("member list", &out);
    let members: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let addresses: Vec<&str> =
        members["members"].as_array().expect("members").iter().filter_map(|m| m["address"].as_str()).collect();
    assert_eq!(addresses, new.addrs.iter().map(String::as_str).collect::<Vec<_>>());

    // A damaged backup is refused.
    let mut bytes = std::fs::read(file).expect("read backup");
    let at = bytes.windows(7).position(|w| w == b"value-1").expect("a value in the backup");
    bytes[at] ^= 1;
    let damaged = old.dir.path().join("damaged.backup");
    std::fs::write(&damaged, bytes).expect("write");
    let out = quarryctl(&old, &["snapshot", "status", damaged.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1), "a damaged backup exits with 1");
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum"), "{}", String::from_utf8_lossy(&out.stderr));
}
