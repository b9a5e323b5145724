//! Membership changes on real `quarryd` processes, through `quarryctl`: a 3-node
//! cluster grows to 5 while clients write, a failed node is replaced, one is removed
//! and a node's leaderships are drained. Every acknowledged write stays readable and
//! the clients' history is linearizable. Every process started is stopped by PID.

mod process;

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quarry::proto::admin_client::AdminClient;
use quarry::proto::kv_client::KvClient;
use quarry::proto::{GetRequest, PutRequest, StatusRequest};

use process::*;

/// Runs quarryctl against `endpoints` (node ids of `cluster`).
fn ctl(cluster: &Cluster, endpoints: &[usize], args: &[&str]) -> Output {
    let endpoints: Vec<&str> = endpoints.iter().map(|&id| cluster.addrs[id - 1].as_str()).collect();
    Command::new(env!("CARGO_BIN_EXE_quarryctl"))
        .envs(cluster.ctl_env())
        .arg("--endpoints")
        .arg(endpoints.join(","))
        .args(args)
        .output()
        .expect("quarryctl runs")
}

/// The members `member list --json` reports: (node, voter).
fn members(cluster: &Cluster, endpoints: &[usize]) -> (BTreeSet<(u64, bool)>, String) {
    let out = ctl(cluster, endpoints, &["--json", "member", "list"]);
    succeeded("member list", &out);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("member list --json is JSON");
    let members = list["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| (m["node"].as_u64().expect("node"), m["voter"].as_bool().expect("voter")))
        .collect();
    (members, list["change"].as_str().unwrap_or_default().to_string())
}

/// Every group's configuration and leader as node `via` sees them once they settle:
/// waits until each group on `via` lists exactly `voters` and no learner.
async fn wait_for_voters(cluster: &Cluster, via: usize, voters: &[u64]) -> Vec<quarry::proto::GroupStatus> {
    let mut admin = AdminClient::new(channel(&cluster.addrs[via - 1]).await);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(status) = admin.status(StatusRequest {}).await {
            let groups = status.into_inner().groups;
            let settled = groups
                .iter()
                .all(|g| g.voters == voters && g.outgoing_voters.is_empty() && g.learners.is_empty() && g.leader != 0);
            if settled && groups.len() as u64 == GROUPS {
                return groups;
            }
        }
        assert!(Instant::now() < deadline, "node {via}: groups never settled on voters {voters:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `signal` to node `id`'s process (by PID).
fn signal(cluster: &Cluster, id: usize, signal: libc::c_int) {
    let pid = cluster.children[id - 1].id() as libc::pid_t;
    // SAFETY: kill(2) on a PID this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "signal node {id}");
}

/// Writes distinct keys through `client` until `stop`, one at a time; the keys whose
/// write was acknowledged.
async fn write_until(client: KvClient<tonic::transport::Channel>, stop: Arc<AtomicBool>) -> Vec<u64> {
    let mut acknowledged = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let put = PutRequest {
            key: Bytes::from(format!("ack-{i}")),
            value: Bytes::from(i.to_string()),
            client_id: 0,
            sequence: 0,
        };
        let mut c = client.clone();
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), c.put(put)).await {
            acknowledged.push(i);
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    acknowledged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_grows_replaces_removes_and_drains_without_losing_a_write() {
    // Snapshots every 50 entries, so new members catch up by snapshot and log.
    let mut cluster = start_cluster_with(&["--snapshot-distance", "50"]);
    wait_for_leaders(&cluster).await;
    let node1 = KvClient::new(channel(&cluster.addrs[0]).await);
    put_concurrently(std::slice::from_ref(&node1), 8, 600, |i| (format!("pre-{i}"), format!("v{i}"))).await;
    let (founders, change) = members(&cluster, &[1]);
    assert_eq!(founders, [(1, true), (2, true), (3, true)].into());
    assert_eq!(change, "");

    // With node 3 down, removing node 2 would leave {1, 3} with one answering.
    cluster.kill(3);
    let unsafe_removal = ctl(&cluster, &[1, 2], &["member", "remove", "2"]);
    assert_eq!(unsafe_removal.status.code(), Some(1), "a removal leaving no quorum is refused");
    let reason = String::from_utf8_lossy(&unsafe_removal.stderr);
    assert!(reason.contains("quorum"), "{reason}");
    cluster.restart(3);
    assert_eq!(members(&cluster, &[1]).0, founders, "the refused removal changed nothing");

    // Clients write (through node 1, which stays a member) during every change.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_until(node1.clone(), stop.clone()));
    let started = Instant::now();
    let lin = tokio::spawn(run_clients(vec![node1.clone()], started, started + Duration::from_secs(8)));

    // A node that is not running cannot be added.
    let id = cluster.reserve_node();
    let address = cluster.addrs[id - 1].clone();
    let absent = ctl(&cluster, &[1], &["member", "add", &id.to_string(), &address]);
    assert_eq!(absent.status.code(), Some(1), "adding a node that does not answer is refused");
    assert!(String::from_utf8_lossy(&absent.stderr).contains("does not answer"));

    // Node 4 joins as a learner, then stops answering (SIGSTOP). Its promotion waits
    // for it; the CLI dies meanwhile. The change stays recorded, refuses other
    // changes, and finishes when run again once node 4 runs.
    cluster.start_joining(id);
    channel(&cluster.addrs[id - 1]).await; // serving
    succeeded("member add --learner", &ctl(&cluster, &[1], &["member", "add", &id.to_string(), &address, "--learner"]));
    assert_eq!(members(&cluster, &[1]).0, [(1, true), (2, true), (3, true), (4, false)].into());
    signal(&cluster, id, libc::SIGSTOP);
    // Leaders forget a silent peer's activity at their next check-quorum (one
    // election timeout, 200-400 ms here); wait well past two.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut interrupted = Command::new(env!("CARGO_BIN_EXE_quarryctl"))
        .envs(cluster.ctl_env())
        .args(["--endpoints", &cluster.addrs[0], "member", "promote", &id.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("quarryctl starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while members(&cluster, &[1]).1 != "adding node 4" {
        assert!(Instant::now() < deadline, "the promotion was never recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Well past an election timeout: a silent learner is never promoted.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(interrupted.try_wait().expect("poll quarryctl").is_none(), "promoted a learner that does not answer");
    interrupted.kill().expect("kill quarryctl");
    interrupted.wait().expect("reap quarryctl");
    let conflicting = ctl(&cluster, &[1], &["member", "remove", "3"]);
    assert_eq!(conflicting.status.code(), Some(1), "a change while another is in progress is refused");
    let reason = String::from_utf8_lossy(&conflicting.stderr);
    assert!(reason.contains("adding node 4 is in progress"), "{reason}");
    signal(&cluster, id, libc::SIGCONT);
    succeeded("member promote (resumed)", &ctl(&cluster, &[2], &["member", "promote", &id.to_string()]));

    // Grow to five.
    let id = cluster.start_joining_node();
    let address = cluster.addrs[id - 1].clone();
    channel(&cluster.addrs[id - 1]).await; // serving
    succeeded("member add", &ctl(&cluster, &[1, 2, 3], &["member", "add", &id.to_string(), &address]));
    // The new members caught up by snapshot (the founders' logs are compacted).
    for id in [4, 5] {
        let installed = counter(&cluster.metrics[id - 1], "quarry_snapshots_installed_total").await;
        assert!(installed > 0, "node {id} installed no snapshot");
    }
    let (grown, _) = members(&cluster, &[2]);
    assert_eq!(grown, [(1, true), (2, true), (3, true), (4, true), (5, true)].into());
    wait_for_voters(&cluster, 4, &[1, 2, 3, 4, 5]).await;

    // Unsafe or conflicting changes are refused with a reason, and change nothing.
    let taken = ctl(&cluster, &[1], &["member", "add", "9", &cluster.addrs[3]]);
    assert_eq!(taken.status.code(), Some(1), "adding at a member's address is refused");
    assert!(
        String::from_utf8_lossy(&taken.stderr).contains("already listens"),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
    let missing = ctl(&cluster, &[1], &["member", "remove", "42"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not a member"));

    // Node 3 fails; node 6 replaces it in one command.
    cluster.kill(3);
    let id = cluster.start_joining_node();
    let address = cluster.addrs[id - 1].clone();
    channel(&cluster.addrs[id - 1]).await; // serving
    succeeded("member replace", &ctl(&cluster, &[1, 2], &["member", "replace", "3", &id.to_string(), &address]));
    wait_for_voters(&cluster, 6, &[1, 2, 4, 5, 6]).await;

    // Node 2 is removed (its leaderships move first), then stopped.
    succeeded("member remove", &ctl(&cluster, &[1, 2], &["member", "remove", "2"]));
    wait_for_voters(&cluster, 1, &[1, 4, 5, 6]).await;
    cluster.kill(2);
    let (now, change) = members(&cluster, &[1]);
    assert_eq!(now, [(1, true), (4, true), (5, true), (6, true)].into());
    assert_eq!(change, "");

    // Node 1 is drained: it leads nothing afterwards, and balance spreads leaders.
    succeeded("leader drain", &ctl(&cluster, &[1, 4], &["leader", "drain", "1"]));
    let groups = wait_for_voters(&cluster, 4, &[1, 4, 5, 6]).await;
    let led_by_1: Vec<u64> = groups.iter().filter(|g| g.leader == 1).map(|g| g.group).collect();
    assert!(led_by_1.is_empty(), "node 1 still leads groups {led_by_1:?} after the drain");
    succeeded("leader balance", &ctl(&cluster, &[4], &["leader", "balance"]));
    let groups = wait_for_voters(&cluster, 4, &[1, 4, 5, 6]).await;
    let led = |node: u64| groups.iter().filter(|g| g.leader == node).count();
    let counts: Vec<usize> = [1, 4, 5, 6].into_iter().map(led).collect();
    let (most, fewest) = (counts.iter().max().copied(), counts.iter().min().copied());
    assert!(most.zip(fewest).is_some_and(|(m, f)| m <= f + 1), "groups led by nodes 1, 4, 5, 6: {counts:?}");

    // One group's leadership moves to a chosen voter; a non-voter is refused.
    let g0 = &groups[0];
    let to = [1u64, 4, 5, 6].into_iter().find(|&n| n != g0.leader).expect("another voter");
    let group = g0.group.to_string();
    succeeded("leader transfer", &ctl(&cluster, &[4], &["leader", "transfer", &group, &to.to_string()]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while leader_of(&cluster, to as usize, g0.group).await != Some(to as usize) {
        assert!(Instant::now() < deadline, "node {to} never saw itself lead group {group}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = ctl(&cluster, &[4], &["leader", "transfer", &group, "2"]);
    assert_eq!(refused.status.code(), Some(1), "node 2 is no longer a voter");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a voter"));

    stop.store(true, Ordering::Relaxed);
    let acknowledged = writer.await.expect("writer");
    let history = lin.await.expect("clients");
    eprintln!(
        "{} writes acknowledged during the changes; {} operations in the checked history",
        acknowledged.len(),
        history.len()
    );
    assert!(acknowledged.len() > 50, "only {} writes acknowledged", acknowledged.len());
    match quarry::sim::linearizability::check(&history) {
        quarry::sim::linearizability::Verdict::Linearizable => {}
        verdict => panic!("history of {} operations is not linearizable: {verdict:?}", history.len()),
    }

    // Every acknowledged write, before and during the changes, is on every member.
    let keys = (0..600)
        .map(|i| (format!("pre-{i}"), format!("v{i}")))
        .chain(acknowledged.iter().map(|i| (format!("ack-{i}"), i.to_string())));
    let keys: Vec<(String, String)> = keys.collect();
    for id in [1, 4, 5, 6] {
        let kv = KvClient::new(channel(&cluster.addrs[id - 1]).await);
        for (key, value) in &keys {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let get = GetRequest { key: Bytes::from(key.clone()), serializable: true };
                if let Ok(r) = kv.clone().get(get).await {
                    if r.get_ref().found {
                        assert_eq!(r.into_inner().value, Bytes::from(value.clone()), "{key} on node {id}");
                        break;
                    }
                }
                assert!(Instant::now() < deadline, "acknowledged {key} never appeared on node {id}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_as_a_founder_is_refused_and_joins_once_started_right() {
    let mut cluster = start_cluster();
    wait_for_leaders(&cluster).await;
    // Node 4 wrongly started as a founding member: its groups have their own entry 1.
    let id = cluster.reserve_node();
    cluster.start_new(id, &[]);
    let address = cluster.addrs[id - 1].clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let out = ctl(&cluster, &[1], &["member", "add", "4", &address]);
        let reason = String::from_utf8_lossy(&out.stderr).into_owned();
        if reason.contains("already holds group data") {
            break out;
        }
        // Until node 4 answers, the add would go ahead: it must not have got that far.
        assert!(!out.status.success(), "a node holding its own bootstrap was added");
        assert!(Instant::now() < deadline, "never refused: {reason}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(members(&cluster, &[1]).0, [(1, true), (2, true), (3, true)].into(), "nothing recorded");
    // The per-group change RPC refuses the reserved id and empty changes.
    let mut admin = AdminClient::new(channel(&cluster.addrs[0]).await);
    for bad in [vec![0], vec![]] {
        let change = quarry::proto::ChangeGroupRequest { group: 0, add_learners: bad, ..Default::default() };
        let status = admin.change_group(change).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{}", status.message());
    }

    // Restarted empty, as a joining node, it is added.
    cluster.kill(id);
    std::fs::remove_dir_all(cluster.data_dir(id)).expect("wipe node 4");
    cluster.children.pop();
    cluster.start_joining(id);
    channel(&cluster.addrs[id - 1]).await; // serving
    succeeded("member add", &ctl(&cluster, &[1], &["member", "add", "4", &address]));
    wait_for_voters(&cluster, 4, &[1, 2, 3, 4]).await;
}
