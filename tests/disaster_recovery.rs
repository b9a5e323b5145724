//! Disaster recovery on real `quarryd` processes: two of three nodes are lost for
//! good; the survivor restarts with `--force-new-cluster` as a single-member cluster
//! holding every acknowledged write, takes writes alone, and grows again with
//! `member add`. Every process started is stopped by PID.

mod process;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quarry::proto::admin_client::AdminClient;
use quarry::proto::StatusRequest;

use process::*;

fn quarryctl(cluster: &Cluster, endpoints: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quarryctl"))
        .envs(cluster.ctl_env())
        .args(["--endpoints", endpoints])
        .args(args)
        .output()
        .expect("quarryctl runs")
}

/// Polls node `id` until it leads every group.
async fn wait_until_leading_everything(cluster: &Cluster, id: usize) {
    let deadline = Instant::now() + READY_DEADLINE;
    let mut admin = AdminClient::new(cluster.channel(id).await);
    loop {
        if let Ok(status) = admin.status(StatusRequest {}).await {
            let groups = status.into_inner().groups;
            if groups.len() as u64 == GROUPS && groups.iter().all(|g| g.leader == id as u64) {
                return;
            }
        }
        let log = std::fs::read_to_string(cluster.dir.path().join(format!("node{id}.log"))).unwrap_or_default();
        assert!(Instant::now() < deadline, "node {id} never led every group alone:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_forced_into_a_new_cluster_keeps_every_acknowledged_write_and_grows_again() {
    let mut cluster = start_cluster();
    wait_for_leaders(&cluster).await;
    let all = client(&cluster.addrs);
    let mut acked = Vec::new();
    for i in 0..100 {
        let (key, value) = (format!("dr/a/{i}"), format!("v{i}"));
        all.put(Bytes::from(key.clone()), Bytes::from(value.clone())).await.expect("put with three nodes up");
        acked.push((key, value));
    }
    // Node 1 must hold the first writes before node 3 goes (they may have reached 2 and 3 only).
    let deadline = Instant::now() + READY_DEADLINE;
    while all_pairs(&cluster.addrs[0]).await.len() < 100 {
        assert!(Instant::now() < deadline, "node 1 never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.kill(3);
    // With node 3 gone, every acknowledged write is in node 1's log (and node 2's);
    // the last ones possibly beyond what node 1 knows is committed.
    for i in 0..200 {
        let (key, value) = (format!("dr/b/{i}"), format!("w{i}"));
        all.put(Bytes::from(key.clone()), Bytes::from(value.clone())).await.expect("put with two nodes up");
        acked.push((key, value));
    }
    cluster.kill(2);
    cluster.kill(1);

    cluster.restart_with(1, &["--force-new-cluster"]);
    wait_until_leading_everything(&cluster, 1).await;
    let survivor = cluster.addrs[0].clone();
    let alone = client(std::slice::from_ref(&survivor));
    for (key, value) in &acked {
        let got = alone.get(Bytes::from(key.clone()), false).await.expect("linearizable get");
        assert_eq!(got.map(|(v, _)| v), Some(Bytes::from(value.clone())), "acknowledged write {key} lost");
    }
    alone.put(Bytes::from_static(b"dr/after"), Bytes::from_static(b"alone")).await.expect("a write with one node");
    let members = quarryctl(&cluster, &survivor, &["--json", "member", "list"]);
    succeeded("member list", &members);
    let members: serde_json::Value = serde_json::from_slice(&members.stdout).expect("JSON");
    let ids: Vec<u64> = members["members"].as_array().unwrap().iter().map(|m| m["node"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![1], "{members}");
    let kept = std::fs::read_dir(cluster.dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().starts_with("node1.before-force-new-cluster."));
    assert!(kept, "the old data dir was not kept");

    // Restarted with the flag still on, it is already alone: nothing changes.
    cluster.kill(1);
    cluster.restart_with(1, &["--force-new-cluster"]);
    wait_until_leading_everything(&cluster, 1).await;
    assert_eq!(
        alone.get(Bytes::from_static(b"dr/after"), false).await.unwrap().map(|(v, _)| v),
        Some(Bytes::from_static(b"alone"))
    );
    // A recovery interrupted between its renames (the new dir still under its
    // temporary name) is finished by running it again.
    cluster.kill(1);
    let data = cluster.data_dir(1);
    std::fs::rename(&data, data.with_file_name("node1.force-new-cluster.tmp")).unwrap();
    // Started without the flag, the node refuses rather than found a new cluster.
    cluster.restart(1);
    let refused = cluster.children[0].wait().expect("quarryd exits");
    assert!(!refused.success(), "a node started on an empty data dir beside an unfinished recovery");
    let log = std::fs::read_to_string(cluster.dir.path().join("node1.log")).unwrap();
    assert!(log.contains("interrupted --force-new-cluster"), "{log}");
    cluster.restart_with(1, &["--force-new-cluster"]);
    wait_until_leading_everything(&cluster, 1).await;
    let got = alone.get(Bytes::from_static(b"dr/after"), false).await.unwrap().map(|(v, _)| v);
    assert_eq!(got, Some(Bytes::from_static(b"alone")), "the finished recovery lost data");
    cluster.kill(1);
    cluster.restart(1);
    wait_until_leading_everything(&cluster, 1).await;

    // The old ids are removed for good; a new node joins under a new id.
    let reused = quarryctl(&cluster, &survivor, &["member", "add", "2", "127.0.0.1:1"]);
    assert!(!reused.status.success(), "an old member's id was accepted again");
    let id = cluster.reserve_node();
    let address = cluster.addrs[id - 1].clone();
    // Nodes 2 and 3 are not started again: a new node joins in their place.
    cluster.start_joining(id);
    channel(&address).await; // serving
    succeeded("member add", &quarryctl(&cluster, &survivor, &["member", "add", &id.to_string(), &address]));
    let deadline = Instant::now() + READY_DEADLINE;
    let joined = client(std::slice::from_ref(&address));
    loop {
        if let Ok(Some((v, _))) = joined.get(Bytes::from_static(b"dr/after"), true).await {
            assert_eq!(v, Bytes::from_static(b"alone"));
            break;
        }
        assert!(Instant::now() < deadline, "the new member never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
