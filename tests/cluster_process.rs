//! Real `quarryd` processes on 127.0.0.1 with ports picked here: a 3-node cluster
//! serves writes through any node and linearizable reads from every node; bad input
//! gets a clear error and the node keeps serving. Every process started is stopped
//! by PID when the test ends, pass or fail.

mod process;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quarry::proto::admin_client::AdminClient;
use quarry::proto::kv_client::KvClient;
use quarry::proto::log_client::LogClient;
use quarry::proto::{GetRequest, LogAppendRequest, LogReadRequest, PutRequest, StatusRequest};
use tonic::transport::Channel;
use tonic::Code;

use process::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_serves_writes_and_linearizable_reads_from_every_node() {
    let cluster = start_cluster();
    wait_for_leaders(&cluster).await;
    let mut clients = Vec::new();
    for addr in &cluster.addrs {
        clients.push(KvClient::new(channel(addr).await));
    }

    // 10,000 keys written through the three nodes, 32 at a time.
    const KEYS: usize = 10_000;
    put_concurrently(&clients, 32, KEYS, |i| (format!("key-{i}"), format!("value-{i}"))).await;

    // Every node answers every key (linearizable reads are forwarded to leaders).
    for (n, client) in clients.iter().enumerate() {
        for i in (n..KEYS).step_by(7) {
            let request = GetRequest { key: Bytes::from(format!("key-{i}")), serializable: false };
            let response = retry(|| {
                let (mut c, r) = (client.clone(), request.clone());
                async move { c.get(r).await }
            })
            .await
            .unwrap_or_else(|e| panic!("get key-{i} from node {}: {e}", n + 1))
            .into_inner();
            assert!(response.found, "key-{i} missing on node {}", n + 1);
            assert_eq!(response.value, Bytes::from(format!("value-{i}")));
        }
    }

    // A range spans every group: key-10, key-100..109 and key-1000..1099 sort between
    // key-10 and key-11 (111 keys), answered in key order up to the limit.
    let range = quarry::proto::RangeRequest {
        start: Bytes::from("key-10"),
        end: Bytes::from("key-11"),
        limit: 500,
        serializable: false,
        group: None,
    };
    let kvs = retry(|| {
        let (mut c, r) = (clients[0].clone(), range.clone());
        async move { c.range(r).await }
    })
    .await
    .expect("range")
    .into_inner()
    .kvs;
    assert_eq!(kvs.len(), 111);
    assert!(kvs.windows(2).all(|w| w[0].key < w[1].key), "range answers in key order");
    let limited = quarry::proto::RangeRequest { limit: 5, ..range.clone() };
    let page = clients[1].clone().range(limited).await.expect("range").into_inner();
    assert_eq!((page.kvs.len(), page.more), (5, true));
    assert_eq!(page.kvs[0].key, Bytes::from("key-10"));
    // A start past the end is refused, on the serving node and at every group's
    // leader (it once panicked the shard threads of every node that served it).
    for serializable in [false, true] {
        let reversed = quarry::proto::RangeRequest {
            start: Bytes::from("z"),
            end: Bytes::from("a"),
            serializable,
            ..range.clone()
        };
        let refused = clients[2].clone().range(reversed).await.expect_err("a reversed range is refused");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    }
    let after = clients[2].clone().range(range.clone()).await.expect("still serving").into_inner();
    assert_eq!(after.kvs.len(), 111);

    // A range begun after a write is acknowledged sees it, whichever node serves the
    // range and whoever leads the key's group.
    for i in 0..60usize {
        let key = Bytes::from(format!("fresh-{}", i % 5));
        let value = Bytes::from(format!("v{i}"));
        let put = PutRequest { key: key.clone(), value: value.clone(), client_id: 0, sequence: 0 };
        retry(|| {
            let (mut c, r) = (clients[i % 3].clone(), put.clone());
            async move { c.put(r).await }
        })
        .await
        .expect("put");
        let fresh = quarry::proto::RangeRequest {
            start: Bytes::from("fresh-"),
            end: Bytes::from("fresh."),
            limit: 10,
            serializable: false,
            group: None,
        };
        let kvs = retry(|| {
            let (mut c, r) = (clients[(i + 1) % 3].clone(), fresh.clone());
            async move { c.range(r).await }
        })
        .await
        .expect("range")
        .into_inner()
        .kvs;
        let seen = kvs.iter().find(|kv| kv.key == key).map(|kv| kv.value.clone());
        assert_eq!(seen, Some(value), "range from node {} after put {i}", (i + 1) % 3 + 1);
    }
    let no_such_group = quarry::proto::RangeRequest { group: Some(GROUPS), ..Default::default() };
    let refused = clients[0].clone().range(no_such_group).await.expect_err("unknown group refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{}", refused.message());

    // Named logs: append through one node, read through another.
    let log_a = LogClient::new(channel(&cluster.addrs[0]).await);
    let log_b = LogClient::new(channel(&cluster.addrs[2]).await);
    for n in 1..=3u64 {
        let request =
            LogAppendRequest { log: "wal".into(), data: Bytes::from(format!("rec{n}")), client_id: 7, sequence: n };
        let index = retry(|| {
            let (mut c, r) = (log_a.clone(), request.clone());
            async move { c.append(r).await }
        })
        .await
        .expect("append")
        .into_inner()
        .index;
        assert_eq!(index, n);
    }
    let read = LogReadRequest { log: "wal".into(), from: 2, limit: 10, serializable: false };
    let entries = retry(|| {
        let (mut c, r) = (log_b.clone(), read.clone());
        async move { c.read(r).await }
    })
    .await
    .expect("read")
    .into_inner()
    .entries;
    assert_eq!(entries, vec![Bytes::from("rec2"), Bytes::from("rec3")]);

    // Bad input: clear errors, and the node keeps serving.
    let mut kv = clients[1].clone();
    let oversize =
        PutRequest { key: Bytes::from("big"), value: Bytes::from(vec![0u8; 2 << 20]), client_id: 0, sequence: 0 };
    let err = kv.put(oversize).await.expect_err("oversize value refused");
    assert!(matches!(err.code(), Code::InvalidArgument | Code::OutOfRange | Code::ResourceExhausted), "{err:?}");
    let empty = PutRequest { key: Bytes::new(), value: Bytes::new(), client_id: 0, sequence: 0 };
    assert_eq!(kv.put(empty).await.expect_err("empty key refused").code(), Code::InvalidArgument);
    let unknown = LogReadRequest { log: "no-such-log".into(), from: 1, limit: 1, serializable: false };
    let err = retry(|| {
        let (mut c, r) = (log_b.clone(), unknown.clone());
        async move { c.read(r).await }
    })
    .await
    .expect_err("unknown log refused");
    assert_eq!(err.code(), Code::NotFound);
    let get = GetRequest { key: Bytes::from("key-1"), serializable: false };
    let still = retry(|| {
        let (mut c, r) = (kv.clone(), get.clone());
        async move { c.get(r).await }
    })
    .await
    .expect("node still serves");
    assert!(still.into_inner().found);
    drop(log_a);
    drop(log_b);
}

#[test]
fn bad_configuration_exits_with_code_2_and_one_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_quarryd"))
        .args(["--node-id", "9", "--data-dir", "/nonexistent/q", "--initial-cluster", "1=127.0.0.1:1"])
        .output()
        .expect("quarryd runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not in --initial-cluster"), "{stderr}");
    let output = Command::new(env!("CARGO_BIN_EXE_quarryd"))
        .args(["--node-id", "1", "--data-dir", "/nonexistent/q", "--initial-cluster", "1=127.0.0.1:1"])
        .args(["--read-mode", "lease", "--election-ticks", "2", "--heartbeat-ticks", "1"])
        .output()
        .expect("quarryd runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--read-mode lease needs --election-ticks above 2"), "{stderr}");
    let output = Command::new(env!("CARGO_BIN_EXE_quarryd"))
        .args(["--node-id", "1", "--data-dir", "/nonexistent/q", "--initial-cluster", "1=127.0.0.1:1"])
        .args(["--shards", "1", "--network-threads", "256", "--pin-threads", "on"])
        .output()
        .expect("quarryd runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--pin-threads on needs a CPU for each of 1 shards and 256 network threads"), "{stderr}");
}

/// CPUs in a `/proc` list such as `0-3,8`.
fn cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        cpus.extend(first.parse::<usize>().expect("cpu")..=last.parse::<usize>().expect("cpu"));
    }
    cpus
}

/// Each thread of process `pid` (or this process): its name and the CPUs it may use.
fn thread_cpus(pid: &str) -> Vec<(String, Vec<usize>)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks").flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).map(String::from);
        if let (Some(name), Some(cpus)) = (field("Name:"), field("Cpus_allowed_list:")) {
            threads.push((name, cpu_list(&cpus)));
        }
    }
    threads
}

/// `--pin-threads on`: each shard thread on a CPU of its own, the network threads on
/// the CPUs after (skipped where this process may use fewer than two CPUs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_threads_run_on_the_cpus_they_were_given() {
    let allowed = thread_cpus("self").into_iter().next().expect("a thread").1;
    if allowed.len() < 2 {
        eprintln!("skipped: this process may use {allowed:?}, pinning needs two CPUs");
        return;
    }
    let cluster = start_cluster_with(&["--shards", "1", "--network-threads", "1", "--pin-threads", "on"]);
    wait_for_leaders(&cluster).await;
    put_through(&cluster.addrs[0], "pinned", "yes").await;
    let threads = thread_cpus(&cluster.children[0].id().to_string());
    // glommio names its helper threads after the executor too.
    let shard: Vec<_> = threads.iter().filter(|(name, _)| name.starts_with("quarry-shard-0")).collect();
    assert!(!shard.is_empty(), "the shard thread: {threads:?}");
    assert!(shard.iter().all(|(_, cpus)| cpus == &vec![allowed[0]]), "the shard has the first CPU: {threads:?}");
    let network: Vec<_> = threads.iter().filter(|(name, _)| name.starts_with("tokio-r")).collect();
    assert!(!network.is_empty(), "network threads: {threads:?}");
    assert!(network.iter().all(|(_, cpus)| cpus == &vec![allowed[1]]), "network threads on the next CPU: {network:?}");
    let stderr = std::fs::read_to_string(cluster.dir.path().join("node1.log")).expect("node 1's stderr");
    assert!(stderr.contains(&format!("shards pinned to CPUs [{}]", allowed[0])), "{stderr}");
}

/// Values up to `--max-value-bytes` (8 MiB here, beyond tonic's 4 MiB default) go
/// through sessions and unary calls both ways; a message past the client limit is
/// refused with the node still serving; a range over large values is cut by bytes and
/// pages through everything with `more`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_are_served_and_message_and_range_sizes_are_bounded() {
    let cluster = start_cluster_with(&["--max-value-bytes", "8388608"]);
    wait_for_leaders(&cluster).await;
    let client = client(&cluster.addrs);
    let big = |i: u8| Bytes::from(vec![i; 6 << 20]);
    for i in 0..4u8 {
        client.put(Bytes::from(format!("big-{i}")), big(i)).await.expect("a 6 MiB put on the session");
    }
    let gets = (0..4u8).map(|i| client.get(Bytes::from(format!("big-{i}")), false));
    for (i, got) in futures::future::join_all(gets).await.into_iter().enumerate() {
        let (value, _) = got.expect("get").expect("found");
        assert!(value == big(i as u8), "big-{i} came back whole");
    }
    let mut kv = KvClient::new(channel(&cluster.addrs[0]).await).max_decoding_message_size(64 << 20);
    let huge =
        PutRequest { key: Bytes::from("huge"), value: Bytes::from(vec![0; 20 << 20]), client_id: 0, sequence: 0 };
    let refused = kv.put(huge).await.expect_err("20 MiB is past what a client may send");
    assert!(
        matches!(refused.code(), Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument),
        "{refused:?}"
    );
    put_through(&cluster.addrs[0], "after-huge", "still serving").await;

    let (mut seen, mut pages) = (Vec::new(), 0);
    let mut start = Bytes::from("big-");
    loop {
        pages += 1;
        let page = quarry::proto::RangeRequest {
            start: start.clone(),
            end: Bytes::from("big."),
            limit: 100,
            serializable: true,
            group: None,
        };
        let answer = kv.range(page).await.expect("range").into_inner();
        let bytes: usize = answer.kvs.iter().map(|kv| kv.value.len()).sum();
        assert!(bytes < 24 << 20, "24 MiB in one answer: not cut by bytes");
        seen.extend(answer.kvs.iter().map(|kv| kv.key.clone()));
        match answer.kvs.last() {
            Some(last) if answer.more => start = Bytes::from([&last.key[..], b"\0"].concat()),
            _ => break,
        }
    }
    let expected: Vec<Bytes> = (0..4).map(|i| Bytes::from(format!("big-{i}"))).collect();
    assert_eq!(seen, expected, "paging with `more` sees every key once, in order");
    assert!(pages > 1, "the 24 MiB range came in pages");
}

/// A node that accepts connections but never answers (SIGSTOPped) costs the Rust
/// client one timeout, not a hang: discovery asks every node at once with a deadline,
/// each attempt has one, and keepalives close the dead connection. The bound asserted
/// (30 s for discovery plus 20 writes and reads) is far above the few seconds this
/// takes and far below the minute a sequential discovery without deadlines took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_costs_the_client_a_timeout_not_a_hang() {
    let mut cluster = start_cluster();
    wait_for_leaders(&cluster).await;
    let pid = libc::pid_t::try_from(cluster.children[0].id()).expect("pid fits");
    // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "SIGSTOP delivered");
    let client = client(&cluster.addrs);
    let work = async {
        for i in 0..20 {
            let key = Bytes::from(format!("stopped-{i}"));
            client.put(key.clone(), Bytes::from("v")).await.expect("put while node 1 is stopped");
            assert!(client.get(key, false).await.expect("get").is_some());
        }
        client.status(0).await.expect_err("the stopped node does not answer")
    };
    let refused = tokio::time::timeout(Duration::from_secs(30), work).await.expect("no hang");
    assert!(refused.to_string().contains("did not answer in time"), "{refused}");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0, "SIGCONT delivered");
    cluster.kill(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_node_cleanly_and_the_rest_keep_serving() {
    let mut cluster = start_cluster();
    wait_for_leaders(&cluster).await;
    let pid = libc::pid_t::try_from(cluster.children[0].id()).expect("pid fits");
    // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "SIGTERM delivered");
    let status = wait_for_exit(&mut cluster, 1, Duration::from_secs(20)).await;
    assert!(status.success(), "node 1 exited with {status}");
    put_through(&cluster.addrs[1], "after", "stop").await; // nodes 2 and 3 still commit
}

/// Waits for node `id`'s process to exit.
async fn wait_for_exit(cluster: &mut Cluster, id: usize, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = cluster.children[id - 1].try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "node {id} still running after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Puts through `addr`, retrying until the cluster commits it.
async fn put_through(addr: &str, key: &'static str, value: &'static str) {
    let kv = KvClient::new(channel(addr).await);
    let put = PutRequest { key: Bytes::from(key), value: Bytes::from(value), client_id: 0, sequence: 0 };
    retry(|| {
        let (mut c, r) = (kv.clone(), put.clone());
        async move { c.put(r).await }
    })
    .await
    .expect("a majority commits");
}

/// Which node leads `group`, as node `via` sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_leader_loses_no_acknowledged_write_and_stays_linearizable() {
    kill_a_leader_mid_run(&[]).await;
}

/// The same with linearizable reads served from the leader's lease: a new leader
/// must not serve a read before the old one's lease has run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lease_reads_killing_a_leader_stays_linearizable() {
    kill_a_leader_mid_run(&["--read-mode", "lease"]).await;
}

async fn kill_a_leader_mid_run(flags: &[&str]) {
    let mut cluster = start_cluster_with(flags);
    wait_for_leaders(&cluster).await;
    let mut clients = Vec::new();
    for addr in &cluster.addrs {
        clients.push(KvClient::new(channel(addr).await));
    }
    let started = Instant::now();
    let lin_clients = clients.clone();
    let lin = tokio::spawn(run_clients(lin_clients, started, started + Duration::from_secs(6)));

    // A writer of distinct keys, recording which writes were acknowledged.
    let writer_client = clients[1].clone();
    let writer = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        for i in 0..400 {
            let put = PutRequest {
                key: Bytes::from(format!("ack-{i}")),
                value: Bytes::from(format!("{i}")),
                client_id: 0,
                sequence: 0,
            };
            let mut c = writer_client.clone();
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), c.put(put)).await {
                acknowledged.push(i);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        acknowledged
    });

    // The same through the Rust client's sessions, which retry a write whose outcome
    // is unknown with the same client id and sequence.
    let session_client = client(&cluster.addrs);
    let session_writer = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        for i in 0..400 {
            let (key, value) = (Bytes::from(format!("session-ack-{i}")), Bytes::from(format!("{i}")));
            if session_client.put(key, value).await.is_ok() {
                acknowledged.push(i);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        acknowledged
    });

    // Kill -9 the leader of the first key's group mid-stream, then bring it back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let group = u64::from(crc32fast::hash(b"lin-0")) % GROUPS;
    let victim = leader_of(&cluster, 2, group).await.expect("group has a leader");
    cluster.kill(victim);
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.restart(victim);

    let history = lin.await.expect("clients");
    let acknowledged = writer.await.expect("writer");
    assert!(acknowledged.len() > 100, "only {} writes acknowledged", acknowledged.len());
    let session_acknowledged = session_writer.await.expect("session writer");
    assert!(session_acknowledged.len() > 300, "sessions retry: only {} acknowledged", session_acknowledged.len());
    let completed = history.iter().filter(|o| o.ret != u64::MAX).count();
    assert!(completed > 50, "only {completed} operations completed");
    let unknown = history.len() - completed;
    eprintln!(
        "killed node {victim}: {} operations ({completed} answered, {unknown} unknown), {} of 400 writes acknowledged \
         ({} of 400 through sessions)",
        history.len(),
        acknowledged.len(),
        session_acknowledged.len()
    );
    match quarry::sim::linearizability::check(&history) {
        quarry::sim::linearizability::Verdict::Linearizable => {}
        verdict => panic!("history of {} operations is not linearizable: {verdict:?}", history.len()),
    }

    // Every acknowledged write is on every node, the restarted one included.
    wait_for_leaders(&cluster).await;
    let keys = acknowledged.iter().map(|i| (format!("ack-{i}"), *i));
    let keys: Vec<_> = keys.chain(session_acknowledged.iter().map(|i| (format!("session-ack-{i}"), *i))).collect();
    for (n, addr) in cluster.addrs.iter().enumerate() {
        let kv = KvClient::new(channel(addr).await);
        for (key, i) in &keys {
            let get = GetRequest { key: Bytes::from(key.clone()), serializable: true };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let mut c = kv.clone();
                if let Ok(r) = c.get(get.clone()).await {
                    if r.get_ref().found {
                        assert_eq!(r.into_inner().value, Bytes::from(format!("{i}")));
                        break;
                    }
                }
                assert!(Instant::now() < deadline, "acknowledged {key} never appeared on node {}", n + 1);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_describe_the_node() {
    let cluster = start_cluster();
    wait_for_leaders(&cluster).await;
    let kv = KvClient::new(channel(&cluster.addrs[0]).await);
    let put = PutRequest { key: Bytes::from("m"), value: Bytes::from("1"), client_id: 0, sequence: 0 };
    retry(|| {
        let (mut c, r) = (kv.clone(), put.clone());
        async move { c.put(r).await }
    })
    .await
    .expect("put");
    let addr = cluster.metrics[0].clone();
    let (status, head, body) =
        tokio::task::spawn_blocking(move || http_response(&addr, "/metrics")).await.expect("get");
    assert_eq!(status, 200);
    for name in [
        "quarry_group_commit_index",
        "quarry_group_leader",
        "quarry_fdatasyncs_total",
        "quarry_request_seconds",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "quarry_build_info{",
        "quarry_fdatasync_seconds_bucket",
        "quarry_leader_changes_total",
        "quarry_request_seconds_count{method=\"write\",outcome=",
    ] {
        assert!(body.contains(name), "/metrics lacks {name}:\n{body}");
    }
    // OpenMetrics text, and labelled as such.
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(head.to_lowercase().contains("content-type: application/openmetrics-text; version=1.0.0"), "{head}");
    // Heartbeats of all groups between a node pair travel together, packed.
    let counter = |name: &str| -> u64 {
        let line = body.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name}:\n{body}"));
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("bad line {line}"))
    };
    assert!(counter("quarry_data_bytes{what=\"log\"}") > 0, "no log bytes measured:\n{body}");
    assert!(body.contains("quarry_data_bytes{what=\"snapshots\"}"), "{body}");
    assert!(body.contains("quarry_watchers "), "{body}");
    for name in ["quarry_commit_seconds_count", "quarry_apply_seconds_count"] {
        assert!(counter(name) > 0, "{name} counted nothing:\n{body}");
    }
    let batches = counter("quarry_peer_batches_sent_total");
    let messages = counter("quarry_peer_messages_sent_total");
    let coalesced = counter("quarry_peer_heartbeats_coalesced_total");
    eprintln!("peer batches {batches}, messages {messages}, coalesced heartbeats {coalesced}");
    assert!(coalesced > 0 && messages > batches, "batches {batches}, messages {messages}, coalesced {coalesced}");
    let addr = cluster.metrics[1].clone();
    let (status, body) = tokio::task::spawn_blocking(move || http_get(&addr, "/health")).await.expect("get");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"groups_without_leader\":0"), "{body}");
    // Every peer is pinged every 2 s; node 1's round trips to node 2 are timed.
    let deadline = Instant::now() + READY_DEADLINE;
    while process::counter(&cluster.metrics[0], "quarry_peer_round_trip_seconds_count{peer=\"2\"}").await == 0 {
        assert!(Instant::now() < deadline, "node 1 never timed a round trip to node 2");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_503_once_groups_stay_without_a_leader() {
    let mut cluster = start_cluster();
    wait_for_leaders(&cluster).await;
    let health = |addr: String| async move {
        tokio::task::spawn_blocking(move || http_response(&addr, "/health")).await.expect("get")
    };
    let (status, head, body) = health(cluster.metrics[0].clone()).await;
    assert_eq!(status, 200, "{body}");
    assert!(head.to_lowercase().contains("content-type: application/json"), "{head}");
    // Node 1 alone cannot elect anyone: past the grace period it is not serving.
    cluster.kill(2);
    cluster.kill(3);
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        let (status, _, body) = health(cluster.metrics[0].clone()).await;
        if status == 503 {
            assert!(body.contains("\"status\":\"unavailable\"") && !body.contains("past_grace\":0"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "node 1 stayed healthy without a quorum: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_cluster_is_refused_and_the_node_keeps_serving() {
    use quarry::proto::peer_client::PeerClient;
    use quarry::proto::PeerBatch;
    let cluster = start_cluster();
    wait_for_leaders(&cluster).await;
    let mut peer = PeerClient::new(channel(&cluster.addrs[0]).await);
    let intruder = PeerBatch { cluster_id: 999, from_node: 2, ..Default::default() };
    let response = peer.stream(tokio_stream::iter(vec![intruder])).await.expect("stream opens");
    let refusal = response.into_inner().message().await.expect_err("wrong cluster refused");
    assert_eq!(refusal.code(), Code::FailedPrecondition);
    assert!(refusal.message().contains("cluster id 999"), "{}", refusal.message());
    let kv = KvClient::new(channel(&cluster.addrs[0]).await);
    let put = PutRequest { key: Bytes::from("still"), value: Bytes::from("here"), client_id: 0, sequence: 0 };
    retry(|| {
        let (mut c, r) = (kv.clone(), put.clone());
        async move { c.put(r).await }
    })
    .await
    .expect("node keeps serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarryctl_puts_gets_deletes_and_reports_status() {
    let cluster = start_cluster();
    wait_for_leaders(&cluster).await;
    let endpoints = cluster.addrs.join(",");
    let ctl = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_quarryctl"))
            .envs(cluster.ctl_env())
            .arg("--endpoints")
            .arg(&endpoints)
            .args(args)
            .output()
            .expect("runs")
    };
    let out = ctl(&["put", "greeting", "hello"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = ctl(&["get", "greeting"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");
    let out = ctl(&["--json", "status"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    let rows = &status["groups"];
    assert_eq!(rows.as_array().map(Vec::len), Some(3 * GROUPS as usize), "one row per node and group");
    assert!(rows[0]["leader"].as_u64().is_some_and(|l| l > 0));
    assert_eq!(rows[0]["voters"], "1,2,3");
    let nodes = status["nodes"].as_array().expect("nodes");
    assert!(nodes.iter().all(|n| n["health"] == "ok"), "{nodes:?}");
    // A node that does not answer is reported, and the exit code says so.
    let out = Command::new(env!("CARGO_BIN_EXE_quarryctl"))
        .envs(cluster.ctl_env())
        .args(["--endpoints", &format!("{endpoints},127.0.0.1:1"), "--json", "status"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "an unreachable endpoint exits with 1");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    assert!(status["nodes"][3]["health"].as_str().is_some_and(|h| h.starts_with("unreachable")));
    assert!(ctl(&["delete", "greeting"]).status.success());
    assert_eq!(ctl(&["get", "greeting"]).status.code(), Some(3), "a missing key exits with 3");
    let bad = Command::new(env!("CARGO_BIN_EXE_quarryctl")).args(["frobnicate"]).output().expect("runs");
    assert_eq!(bad.status.code(), Some(2), "bad usage exits with 2");

    // range: keys across groups, in order, with a limit.
    for k in ["r-a", "r-b", "r-c"] {
        assert!(ctl(&["put", k, &k.to_uppercase()]).status.success());
    }
    let out = ctl(&["range", "r-", "r.", "--limit", "2"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "r-a\tR-A\nr-b\tR-B\n(more)");

    // snapshot status reads a file offline and refuses a damaged one.
    let dir = cluster.dir.path().join("snaps");
    let meta = quarry::raft::SnapshotMeta { index: 9, term: 2, conf_state: Default::default() };
    quarry::snapshot::SnapshotStore::open(&dir).expect("store").save(4, &meta, b"image bytes").expect("save");
    let file = std::fs::read_dir(&dir).expect("dir").next().expect("a file").expect("entry").path();
    let file = file.to_str().expect("utf-8 path");
    let out = ctl(&["--json", "snapshot", "status", file]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        (status["group"].as_u64(), status["index"].as_u64(), status["size"].as_u64()),
        (Some(4), Some(9), Some(11))
    );
    let mut bytes = std::fs::read(file).expect("read");
    let at = bytes.windows(5).position(|w| w == b"image").expect("image bytes in the file");
    bytes[at] ^= 1;
    std::fs::write(file, bytes).expect("write");
    let out = ctl(&["snapshot", "status", file]);
    assert_eq!(out.status.code(), Some(1), "a damaged snapshot exits with 1");
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum"), "{}", String::from_utf8_lossy(&out.stderr));

    let out = ctl(&["completions", "bash"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("quarryctl"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarryctl_covers_cas_batch_logs_stdin_and_explains_errors() {
    let cluster = start_cluster();
    wait_for_leaders(&cluster).await;
    let endpoints = cluster.addrs.join(",");
    let ctl_with = |args: &[&str], stdin: &[u8]| {
        use std::io::Write as _;
        let mut child = Command::new(env!("CARGO_BIN_EXE_quarryctl"))
            .envs(cluster.ctl_env())
            .env("QUARRY_ENDPOINTS", &endpoints)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("runs");
        child.stdin.take().expect("stdin").write_all(stdin).expect("write stdin");
        child.wait_with_output().expect("exits")
    };
    let ctl = |args: &[&str]| ctl_with(args, b"");
    let stdout = |out: &std::process::Output| String::from_utf8_lossy(&out.stdout).trim().to_string();

    // Values from standard input and from a file.
    succeeded("put from stdin", &ctl_with(&["put", "piped"], b"from stdin"));
    assert_eq!(stdout(&ctl(&["get", "piped"])), "from stdin");
    let file = cluster.dir.path().join("value.txt");
    std::fs::write(&file, "from a file").expect("write");
    succeeded("put --file", &ctl(&["put", "filed", "--file", file.to_str().expect("utf-8")]));
    assert_eq!(stdout(&ctl(&["get", "filed"])), "from a file");

    // cas: succeeds at the current revision, exits 4 naming the current one otherwise.
    let out = ctl(&["--json", "cas", "counter", "0", "1"]);
    succeeded("cas on an absent key", &out);
    let revision = serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON")["revision"].as_u64();
    let revision = revision.expect("a revision").to_string();
    let stale = ctl(&["cas", "counter", "0", "2"]);
    assert_eq!(stale.status.code(), Some(4));
    assert_eq!(stdout(&stale), format!("FAILED current revision {revision}"));
    succeeded("cas at the revision", &ctl(&["cas", "counter", &revision, "2"]));
    assert_eq!(stdout(&ctl(&["get", "counter"])), "2");

    // batch: keys of one group, all or nothing.
    let group = quarry::group::group_of_key(b"b-0", GROUPS);
    let keys: Vec<String> = (0..)
        .map(|i| format!("b-{i}"))
        .filter(|k| quarry::group::group_of_key(k.as_bytes(), GROUPS) == group)
        .take(3)
        .collect();
    let aborted = ctl(&["batch", "put", &keys[0], "x", "cas", &keys[1], "99", "y"]);
    assert_eq!(aborted.status.code(), Some(4), "{}", stdout(&aborted));
    assert_eq!(ctl(&["get", &keys[0]]).status.code(), Some(3), "an aborted batch wrote nothing");
    succeeded("batch", &ctl(&["batch", "put", &keys[0], "x", "put", &keys[1], "y", "delete", &keys[2]]));
    assert_eq!(stdout(&ctl(&["get", &keys[1]])), "y");
    assert_eq!(ctl(&["batch", "put", &keys[0]]).status.code(), Some(2), "a malformed batch is bad usage");

    // Named logs: append (argument and stdin), read, tail over Flight.
    assert_eq!(stdout(&ctl(&["log", "append", "audit", "one"])), "OK index 1");
    assert_eq!(stdout(&ctl_with(&["log", "append", "audit"], b"two")), "OK index 2");
    assert_eq!(stdout(&ctl(&["log", "read", "audit", "--from", "2"])), "2\ttwo");
    assert_eq!(stdout(&ctl(&["log", "tail", "audit", "--count", "2"])), "1\tone\n2\ttwo");

    // The same --client-id and --sequence again: applied once, answered the same.
    for _ in 0..2 {
        let out = ctl(&["--client-id", "42", "--sequence", "7", "log", "append", "once", "x"]);
        assert_eq!(stdout(&out), "OK index 1", "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(stdout(&ctl(&["log", "read", "once"])), "1\tx");
    assert_eq!(ctl(&["--client-id", "42", "log", "append", "once", "y"]).status.code(), Some(2));

    // status leads with a summary; member list says whether each member answers.
    let status: serde_json::Value = serde_json::from_slice(&ctl(&["--json", "status"]).stdout).expect("JSON");
    assert_eq!(status["summary"]["nodes_up"], 3);
    assert_eq!(status["summary"]["groups_with_leader"], GROUPS);
    let text = stdout(&ctl(&["status"]));
    assert!(text.starts_with(&format!("3 of 3 nodes up; {GROUPS} of {GROUPS} groups with a leader")), "{text}");
    assert!(!text.contains("GROUP"), "the per-group table waits for --groups");
    assert!(stdout(&ctl(&["status", "--groups"])).contains("GROUP"));
    let members: serde_json::Value = serde_json::from_slice(&ctl(&["--json", "member", "list"]).stdout).expect("JSON");
    let answers: Vec<&str> =
        members["members"].as_array().expect("members").iter().filter_map(|m| m["answers"].as_str()).collect();
    assert_eq!(answers, ["yes", "yes", "yes"]);

    // Errors in Quarry's words; --version names the commit.
    let down = ctl(&["--endpoints", "127.0.0.1:1", "--timeout", "1", "get", "k"]);
    assert_eq!(down.status.code(), Some(1));
    let said = String::from_utf8_lossy(&down.stderr);
    assert!(said.contains("no node answered at 127.0.0.1:1") && said.contains("QUARRY_ENDPOINTS"), "{said}");
    let missing = ctl(&["log", "read", "no-such-log"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found: no log named"), "{missing:?}");
    let version = stdout(&ctl(&["--version"]));
    assert!(version.starts_with("quarryctl ") && version.contains('('), "{version}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_learns_leaders_and_sends_keys_straight_to_them() {
    let cluster = start_cluster();
    wait_for_leaders(&cluster).await;
    let client = client(&cluster.addrs);
    for i in 0..200 {
        let key = Bytes::from(format!("routed-{i}"));
        client.put(key.clone(), Bytes::from(format!("{i}"))).await.expect("put");
        let (value, _) = client.get(key.clone(), false).await.expect("get").expect("found");
        assert_eq!(value, Bytes::from(format!("{i}")));
        let group = u64::from(crc32fast::hash(&key)) % GROUPS;
        let believed = client.leader_of(&key).expect("leader learned from the answers");
        // The client's belief matches the cluster's (allowing for a change in between).
        let actual = leader_of(&cluster, 1, group).await.expect("leader") as u64;
        if believed != actual {
            let again = leader_of(&cluster, 1, group).await.expect("leader") as u64;
            assert_eq!(believed, again, "client routes key {i} (group {group}) to a non-leader");
        }
    }
    assert!(client.delete(Bytes::from("routed-0")).await.expect("delete"));
    assert_eq!(client.get(Bytes::from("routed-0"), false).await.expect("get"), None);

    // One client shared by concurrent writers: every write applies (each in-flight
    // write has its own session, so none supersedes another).
    let client = std::sync::Arc::new(client);
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..32 {
        let client = client.clone();
        writers.spawn(async move {
            for i in 0..10 {
                client.put(Bytes::from(format!("shared-{w}-{i}")), Bytes::from("x")).await.expect("concurrent put");
                let cas = client.cas(Bytes::from(format!("cas-{w}")), 0, Bytes::from("y")).await.expect("cas");
                assert_eq!(cas.0, i == 0, "only the first CAS on an absent key succeeds");
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.expect("writer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_compacted_entries_catches_up_by_snapshot() {
    const KEYS: usize = 2_000;
    let mut cluster = start_cluster_with(&["--snapshot-distance", "100"]);
    wait_for_leaders(&cluster).await;
    cluster.kill(3);
    // ~250 entries per group while node 3 is down: every group compacts past them.
    let clients = [KvClient::new(channel(&cluster.addrs[0]).await), KvClient::new(channel(&cluster.addrs[1]).await)];
    put_concurrently(&clients, 16, KEYS, |i| (format!("snap-{i:05}"), format!("v{i}"))).await;
    let taken = counter(&cluster.metrics[0], "quarry_snapshots_taken_total").await;
    assert!(taken >= GROUPS, "node 1 took {taken} snapshots");

    // Node 3 returns and, from its own replica, serves every key once caught up.
    cluster.restart(3);
    let node3 = KvClient::new(channel(&cluster.addrs[2]).await);
    let all = quarry::proto::RangeRequest {
        start: Bytes::from("snap-"),
        end: Bytes::from("snap."),
        limit: KEYS as u32,
        serializable: true,
        group: None,
    };
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        if let Ok(answer) = node3.clone().range(all.clone()).await {
            let kvs = answer.into_inner().kvs;
            if kvs.len() == KEYS {
                for (i, kv) in kvs.iter().enumerate() {
                    assert_eq!(kv.key, Bytes::from(format!("snap-{i:05}")));
                    assert_eq!(kv.value, Bytes::from(format!("v{i}")));
                }
                break;
            }
        }
        assert!(Instant::now() < deadline, "node 3 never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let installed = counter(&cluster.metrics[2], "quarry_snapshots_installed_total").await;
    assert!(installed >= GROUPS, "node 3 installed {installed} snapshots");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarry_bench_measures_a_short_verified_run() {
    let cluster = start_cluster();
    wait_for_leaders(&cluster).await;
    let out = cluster.dir.path().join("bench");
    let run = Command::new(env!("CARGO_BIN_EXE_quarry-bench"))
        .envs(cluster.ctl_env())
        .args(["--endpoints", &cluster.addrs.join(","), "--metrics", &cluster.metrics.join(",")])
        .args(["--workload", "mixed", "--clients", "4", "--requests", "300", "--keys", "16", "--warmup", "0"])
        .args(["--verify", "--json", "--label", "short"])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("quarry-bench runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON summary");
    assert_eq!(summary["requests"], 300, "{summary}");
    assert_eq!(summary["errors"], serde_json::json!({}), "{summary}");
    assert!(summary["verify"].as_str().is_some_and(|v| v.starts_with("linearizable")), "{summary}");
    assert!(summary["latency"]["p50_ms"].as_f64().is_some_and(|p| p > 0.0), "{summary}");
    assert!(summary["server"]["entries_per_fsync"].as_f64().is_some_and(|e| e > 0.0), "{summary}");
    for file in ["short.hgrm", "short.json", "short.png"] {
        let len = std::fs::metadata(out.join(file)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{file} not written");
    }

    // Bad arguments: one line, exit code 2, nothing run.
    let refused = Command::new(env!("CARGO_BIN_EXE_quarry-bench"))
        .args(["--endpoints", &cluster.addrs[0], "--clients", "0"])
        .output()
        .expect("runs");
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--clients"));
}

/// Bytes of the shard log segment files under a node's data directory.
fn segment_bytes_on_disk(dir: &std::path::Path) -> u64 {
    let Ok(shards) = std::fs::read_dir(dir) else { return 0 };
    let files = shards.filter_map(Result::ok).filter_map(|s| std::fs::read_dir(s.path()).ok()).flatten();
    files
        .filter_map(Result::ok)
        .filter(|f| f.path().extension().is_some_and(|e| e == "qseg"))
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// `n` puts of `value_size`-byte values over `n` keys through `addrs`, by quarry-bench
/// with `clients` clients; its JSON summary.
async fn put_with_bench(cluster: &Cluster, nodes: usize, n: u64, clients: u32, value_size: u32) -> serde_json::Value {
    let endpoints = cluster.addrs[..nodes].join(",");
    let env = cluster.ctl_env();
    let load = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_quarry-bench"))
            .envs(env)
            .args(["--endpoints", &endpoints, "--workload", "put", "--keys", &n.to_string()])
            .args(["--requests", &n.to_string(), "--clients", &clients.to_string()])
            .args(["--value-size", &value_size.to_string(), "--warmup", "0", "--json", "--no-progress"])
            .output()
            .expect("quarry-bench runs")
    })
    .await
    .expect("load");
    let stdout = String::from_utf8_lossy(&load.stdout);
    assert!(load.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&load.stderr));
    serde_json::from_str(&stdout).expect("a JSON summary")
}

/// Polls node `behind` until every group there has applied what node `ahead` had
/// committed when the wait began.
async fn wait_until_applied_everywhere_as_committed_on(cluster: &Cluster, ahead: usize, behind: usize) {
    let mut admin_ahead = AdminClient::new(channel(&cluster.addrs[ahead - 1]).await);
    let mut admin_behind = AdminClient::new(channel(&cluster.addrs[behind - 1]).await);
    let status = admin_ahead.status(StatusRequest {}).await.expect("status").into_inner();
    let target: Vec<u64> = status.groups.iter().map(|g| g.commit).collect();
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        if let Ok(status) = admin_behind.status(StatusRequest {}).await {
            let applied: Vec<u64> = status.into_inner().groups.iter().map(|g| g.applied).collect();
            if applied.len() == target.len() && applied.iter().zip(&target).all(|(a, t)| a >= t) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "node {behind} did not catch up with node {ahead}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_for_200k_entries_catches_up_by_snapshot_and_disk_stays_bounded() {
    const ENTRIES: u64 = 200_000;
    const SEGMENT_MIB: u64 = 1;
    // Per shard log: the active segment, SEALED_SEGMENTS_MAX sealed ones, up to four
    // free ones kept for reuse, and one more while a release is in flight.
    let log_bound = (1 + quarry::shard::SEALED_SEGMENTS_MAX as u64 + 4 + 1) * (SEGMENT_MIB << 20);
    let mut cluster = start_cluster_with(&[
        "--snapshot-distance",
        "2000",
        "--segment-mib",
        &SEGMENT_MIB.to_string(),
        "--max-value-bytes",
        "65536",
        "--shards",
        "1",
    ]);
    wait_for_leaders(&cluster).await;
    cluster.kill(3);

    // 200,000 writes through nodes 1 and 2 (quarry-bench as the client), while the
    // log segments on node 1's disk are sampled.
    let node1_dir = cluster.dir.path().join("node1");
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (dir, sampling) = (node1_dir.clone(), sampling.clone());
        tokio::task::spawn_blocking(move || {
            let mut most = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(segment_bytes_on_disk(&dir));
                std::thread::sleep(Duration::from_millis(100));
            }
            most
        })
    };
    let written = Instant::now();
    let summary = put_with_bench(&cluster, 2, ENTRIES, 128, 64).await;
    assert_eq!(summary["requests"], ENTRIES, "every write acknowledged: {summary}");
    eprintln!("200,000 writes in {:.1} s", written.elapsed().as_secs_f64());
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let most = sampler.await.expect("sampler");
    eprintln!("node 1 held at most {most} bytes of log segments (bound {log_bound})");
    assert!(most <= log_bound, "node 1 held {most} bytes of log segments (bound {log_bound})");
    assert!(counter(&cluster.metrics[0], "quarry_snapshots_taken_total").await >= ENTRIES / 2000 / 2);

    // Node 3 comes back: its log ends 200,000 entries ago, long compacted away.
    let restarted = Instant::now();
    cluster.restart(3);
    wait_until_applied_everywhere_as_committed_on(&cluster, 1, 3).await;
    eprintln!("node 3 caught up {ENTRIES} entries in {:.2} s", restarted.elapsed().as_secs_f64());
    assert!(counter(&cluster.metrics[2], "quarry_snapshots_installed_total").await >= GROUPS);
    let (on1, on3) = (all_pairs(&cluster.addrs[0]).await, all_pairs(&cluster.addrs[2]).await);
    assert!(on1.len() > 100_000, "{} keys", on1.len());
    assert!(on1 == on3, "node 3's state differs from node 1's ({} vs {} keys)", on3.len(), on1.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_tails_a_named_log_over_flight_from_any_node() {
    use arrow_array::{Array, BinaryArray, UInt64Array};
    use arrow_flight::decode::FlightRecordBatchStream;
    use arrow_flight::flight_service_client::FlightServiceClient;
    use arrow_flight::Ticket;
    use futures::{StreamExt, TryStreamExt};

    let cluster = start_cluster();
    wait_for_leaders(&cluster).await;
    let log = LogClient::new(channel(&cluster.addrs[0]).await);
    let append = |n: u64| {
        let request =
            LogAppendRequest { log: "wal".into(), data: Bytes::from(format!("rec{n}")), client_id: 9, sequence: n };
        let log = log.clone();
        async move {
            retry(|| {
                let (mut c, r) = (log.clone(), request.clone());
                async move { c.append(r).await }
            })
            .await
            .expect("append")
            .into_inner()
            .index
        }
    };
    for n in 1..=5 {
        assert_eq!(append(n).await, n);
    }
    // Tail from record 2 on node 2 (a replica, maybe not the leader): the four
    // records there, then three appended while the stream is open.
    let mut flight = FlightServiceClient::new(channel(&cluster.addrs[1]).await);
    let stream = flight.do_get(Ticket { ticket: "log/2/wal".into() }).await.expect("tail opens").into_inner();
    let mut batches = FlightRecordBatchStream::new_from_flight_data(
        stream.map_err(|s| arrow_flight::error::FlightError::Tonic(Box::new(s))),
    );
    let mut seen = Vec::new();
    let deadline = Instant::now() + READY_DEADLINE;
    let mut appended_more = false;
    while seen.len() < 7 {
        let next = tokio::time::timeout_at(deadline.into(), batches.next()).await.expect("records in time");
        let batch = next.expect("the tail stays open").expect("a batch");
        let indexes = batch.column(0).as_any().downcast_ref::<UInt64Array>().expect("index column");
        let data = batch.column(1).as_any().downcast_ref::<BinaryArray>().expect("data column");
        for row in 0..batch.num_rows() {
            seen.push((indexes.value(row), String::from_utf8_lossy(data.value(row)).into_owned()));
        }
        if seen.len() >= 4 && !appended_more {
            appended_more = true;
            for n in 6..=8 {
                append(n).await;
            }
        }
    }
    let expected: Vec<(u64, String)> = (2..=8).map(|n| (n, format!("rec{n}"))).collect();
    assert_eq!(seen, expected);
    let refused = flight.do_get(Ticket { ticket: "log/x/wal".into() }).await.expect_err("bad ticket");
    assert_eq!(refused.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_far_behind_catches_up_with_a_bulk_log_pull_over_flight() {
    // Far enough behind that appends alone take several ticks to close the gap (a
    // 20,000-entry gap closed in 0.1 s, before the leader's first offer, once the
    // shards pipelined their turns).
    const ENTRIES: u64 = 80_000;
    // No snapshots: every entry node 3 lacks stays in the leaders' logs.
    let mut cluster = start_cluster_with(&["--snapshot-distance", "0", "--shards", "1"]);
    wait_for_leaders(&cluster).await;
    cluster.kill(3);
    put_with_bench(&cluster, 2, ENTRIES, 64, 32).await;

    let restarted = Instant::now();
    cluster.restart(3);
    wait_until_applied_everywhere_as_committed_on(&cluster, 1, 3).await;
    let bulk = counter(&cluster.metrics[2], "quarry_peer_catch_up_entries_total").await;
    eprintln!("node 3 caught up in {:.2} s, {bulk} entries in bulk", restarted.elapsed().as_secs_f64());
    // Appends keep flowing beside the bulk pull (the leader does not pause them), so
    // only part of the gap comes in bulk — how much depends on how fast appends run
    // (60,000 to 80,000 here) — but without the pull it would be none. An offer is made
    // only for a lag beyond CATCH_UP_MIN_ENTRIES, so one pulled offer brings more.
    let one_offer = quarry::shard::CATCH_UP_MIN_ENTRIES;
    assert!(bulk > one_offer, "only {bulk} of ~{ENTRIES} entries came in bulk");
    assert_eq!(counter(&cluster.metrics[2], "quarry_snapshots_installed_total").await, 0);
    let (on1, on3) = (all_pairs(&cluster.addrs[0]).await, all_pairs(&cluster.addrs[2]).await);
    assert!(on1 == on3, "node 3's state differs from node 1's ({} vs {} keys)", on3.len(), on1.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_at_most_connections_max_connections_at_once_while_they_are_busy() {
    if tls_on() {
        return; // raw HTTP/2 below; the TLS variant is in tls_process.rs
    }
    // Each node holds one connection from each of its two peers; two more are left.
    let cluster = start_cluster_with(&["--connections-max", "4"]);
    wait_for_leaders(&cluster).await;
    let status = |channel: Channel| async move {
        tokio::time::timeout(Duration::from_secs(1), AdminClient::new(channel).status(StatusRequest {})).await
    };
    // Two connections kept busy, each with a request open (an idle one would be
    // closed to make room for the next; a busy one is not). The test's earlier
    // connections are idle: they make room for these.
    let busy = || async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "a connection within the limit was never served");
            let tcp = tokio::net::TcpStream::connect(&cluster.addrs[0]).await.expect("connect");
            let Ok(Ok((client, connection))) =
                tokio::time::timeout(Duration::from_secs(2), h2::client::handshake(tcp)).await
            else {
                continue;
            };
            let driver = tokio::spawn(connection);
            let request = http::Request::post(format!("http://{}/quarry.v1.Kv/Put", cluster.addrs[0]))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .expect("request");
            let ready = tokio::time::timeout(Duration::from_secs(2), client.ready()).await;
            let Ok(Ok(mut client)) = ready else {
                driver.abort();
                continue;
            };
            let (answer, stream) = client.send_request(request, false).expect("a request, never finished");
            return (driver, answer, stream);
        }
    };
    let (first, _first_answer, _first_stream) = busy().await;
    let second = busy().await;
    tokio::time::sleep(Duration::from_secs(2)).await; // past the idle minimum: still kept
                                                      // A fifth connection waits: it is not served while the four are open and busy...
    let third = client_tls(cluster.tls).channel(quarry::transport::endpoint(&cluster.addrs[0]).expect("uri"));
    assert!(status(third.clone()).await.is_err(), "a connection past the limit was served");
    assert!(!first.is_finished() && !second.0.is_finished(), "a busy connection was closed");
    // ...and is, once one of them closes.
    first.abort();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(status(third.clone()).await, Ok(Ok(_))) {
        assert!(Instant::now() < deadline, "the waiting connection was never served after one closed");
    }
    assert!(!second.0.is_finished(), "the busy connection is kept");
}

/// A node whose log is damaged beyond a torn tail does not stay up half-alive: its
/// shard fails at recovery, and the process stops at once with exit status 70 and the
/// cause (file and offset) on stderr, so that systemd restarts it and the operator
/// sees why. The other two nodes keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_damaged_log_stops_at_once_and_says_why() {
    let mut cluster = start_cluster();
    wait_for_leaders(&cluster).await;
    let mut clients = Vec::new();
    for addr in &cluster.addrs {
        clients.push(KvClient::new(channel(addr).await));
    }
    put_concurrently(&clients, 8, 200, |i| (format!("damage-{i}"), format!("v{i}"))).await;
    cluster.kill(3);
    // Flip a byte in the first batch of every segment: data that later flushes (or a
    // seal) vouch for, so recovery must refuse it rather than cut it as a torn tail.
    let mut damaged = 0;
    for shard in std::fs::read_dir(cluster.data_dir(3)).expect("data dir") {
        let shard = shard.expect("entry").path();
        let Ok(files) = std::fs::read_dir(&shard) else { continue };
        for file in files {
            let path = file.expect("entry").path();
            if path.extension().is_some_and(|e| e == "qseg") {
                let mut bytes = std::fs::read(&path).expect("segment");
                if bytes.len() > 4096 + 64 && bytes[4096..4100] != [0; 4] {
                    bytes[4096 + 40] ^= 0x10;
                    std::fs::write(&path, &bytes).expect("damage");
                    damaged += 1;
                }
            }
        }
    }
    assert!(damaged > 0, "no segment with data to damage");
    cluster.restart(3);
    let status = wait_for_exit(&mut cluster, 3, Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(70), "node 3 exited with {status}");
    let stderr = std::fs::read_to_string(cluster.dir.path().join("node3.log")).expect("node 3's stderr");
    assert!(stderr.contains("corrupt log") && stderr.contains(".qseg"), "cause not reported: {stderr}");
    put_through(&cluster.addrs[0], "after", "damage").await; // nodes 1 and 2 still commit
}

/// Flips one bit in the last batch a node flushed (its entries acknowledged to the
/// leaders): recovery cannot tell that from a write torn by a crash and cuts it, so
/// the node's log goes backwards below what its leaders believe it holds. The leaders
/// must accept that and send the entries again: nothing acknowledged is lost, and the
/// node is back in sync in every group (it once stayed below the commit index forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_in_the_last_flushed_batch_loses_nothing_and_the_node_catches_up() {
    const KEYS: usize = 300;
    let mut cluster = start_cluster();
    wait_for_leaders(&cluster).await;
    let mut clients = Vec::new();
    for addr in &cluster.addrs {
        clients.push(KvClient::new(channel(addr).await));
    }
    put_concurrently(&clients, 8, KEYS, |i| (format!("flip-{i}"), format!("v{i}"))).await;
    cluster.kill(3);
    let flipped = flip_a_bit_in_the_last_batch(&cluster.data_dir(3));
    assert!(flipped > 0, "no shard's last batch holds entries to lose");
    cluster.restart(3);
    wait_for_leaders(&cluster).await;
    let stderr = std::fs::read_to_string(cluster.dir.path().join("node3.log")).expect("node 3's stderr");
    assert!(stderr.contains("flipped") && stderr.contains("abstains"), "damage not recognised: {stderr}");
    // More writes, so every group's leader talks to node 3 again.
    put_concurrently(&clients[..2], 8, KEYS, |i| (format!("after-{i}"), format!("w{i}"))).await;
    wait_until_applied_everywhere_as_committed_on(&cluster, 1, 3).await;
    let kv = KvClient::new(channel(&cluster.addrs[2]).await);
    for (prefix, value) in [("flip", "v"), ("after", "w")] {
        for i in 0..KEYS {
            let get = GetRequest { key: Bytes::from(format!("{prefix}-{i}")), serializable: true };
            let answer = kv.clone().get(get).await.expect("node 3 answers").into_inner();
            assert!(answer.found, "{prefix}-{i} missing on node 3");
            assert_eq!(answer.value, Bytes::from(format!("{value}{i}")));
        }
    }
    // Caught up in every group: node 3 votes again and says so.
    let mut admin = AdminClient::new(channel(&cluster.addrs[2]).await);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = admin.status(StatusRequest {}).await.expect("status").into_inner();
        if status.groups.iter().all(|g| !g.abstaining) {
            break;
        }
        assert!(Instant::now() < deadline, "node 3 still abstains: {:?}", status.groups);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let markers = walk_files(&cluster.data_dir(3)).into_iter().filter(|p| p.ends_with("ABSTAINING")).count();
    assert_eq!(markers, 0, "the abstention markers are gone once caught up");
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk_files(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Flips a bit inside the last batch of each shard's newest segment when that batch
/// holds entries; returns how many were flipped.
fn flip_a_bit_in_the_last_batch(data_dir: &std::path::Path) -> usize {
    use quarry::log::codec::{Record, BATCH_HEADER_BYTES};
    use quarry::log::segment::{decode_header, scan, PAGE_BYTES};
    let mut flipped = 0;
    for shard in std::fs::read_dir(data_dir).expect("data dir") {
        let Ok(files) = std::fs::read_dir(shard.expect("entry").path()) else { continue };
        let newest = files
            .map(|f| f.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "qseg"))
            .filter_map(|p| {
                let bytes = std::fs::read(&p).expect("segment");
                let (seq, _) = decode_header(&bytes[..PAGE_BYTES as usize]).ok()?;
                Some((seq, p, bytes))
            })
            .max_by_key(|(seq, _, _)| *seq);
        let Some((seq, path, mut bytes)) = newest else { continue };
        let mut last = None;
        scan(&bytes, seq, |offset, batch| {
            let entries = batch.records.iter().any(|r| matches!(r, Record::Entry { .. }));
            last = Some((offset, batch.len, entries));
        });
        let Some((offset, len, true)) = last else { continue };
        let at = offset as usize + BATCH_HEADER_BYTES + (len - BATCH_HEADER_BYTES) / 2;
        bytes[at] ^= 0x08;
        std::fs::write(&path, &bytes).expect("damage");
        flipped += 1;
    }
    flipped
}

/// A small ext4 file system on a loop device, mounted at `at` and lazily unmounted
/// when dropped (processes may still hold files open).
struct LoopMount {
    at: std::path::PathBuf,
}

impl LoopMount {
    /// `None` where the test cannot mount file systems (not root, no loop devices).
    fn new(at: &std::path::Path, image: &std::path::Path, mib: u64) -> Option<LoopMount> {
        let run = |program: &str, args: &[&std::ffi::OsStr]| {
            Command::new(program).args(args).output().is_ok_and(|out| out.status.success())
        };
        std::fs::create_dir_all(at).ok()?;
        let size = format!("{mib}M");
        let made = run("truncate", &["-s".as_ref(), size.as_ref(), image.as_os_str()])
            && run("mkfs.ext4", &["-q".as_ref(), image.as_os_str()]);
        (made && run("mount", &["-o".as_ref(), "loop".as_ref(), image.as_os_str(), at.as_os_str()]))
            .then(|| LoopMount { at: at.to_path_buf() })
    }

    /// Writes a file until the file system is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.at.join("filler");
        let mut file = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0xAAu8; 64 << 10];
        while file.write_all(&chunk).and_then(|_| file.sync_data()).is_ok() {}
        path
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

/// A node whose disk fills up stays up: it hands its groups' leadership to the
/// others and refuses writes it would lead with a clear error (RESOURCE_EXHAUSTED)
/// meanwhile, the other two keep committing, nothing is lost, and once space is freed
/// the same process catches up and takes writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_and_the_node_resumes_once_space_is_freed() {
    const KEYS: usize = 600;
    let mut cluster = prepare_cluster(&["--segment-mib", "1", "--max-value-bytes", "65536", "--shards", "1"]);
    let image = cluster.dir.path().join("node3.img");
    let Some(disk) = LoopMount::new(&cluster.data_dir(3), &image, 24) else {
        eprintln!("skipped: mounting a loop file system needs root and loop devices");
        return;
    };
    cluster.start_founders();
    wait_for_leaders(&cluster).await;
    let filler = disk.fill();

    fn value(i: usize) -> Bytes {
        Bytes::from(format!("{i:04}-{}", "x".repeat(4000)))
    }
    let mut writers = Vec::new();
    for addr in &cluster.addrs[..2] {
        writers.push(KvClient::new(channel(addr).await));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let kv = writers[worker % 2].clone();
        tasks.spawn(async move {
            let mut refused = 0;
            for i in (worker..KEYS).step_by(8) {
                let key = Bytes::from(format!("full-{i}"));
                let put = PutRequest { key, value: value(i), client_id: 0, sequence: 0 };
                let deadline = Instant::now() + Duration::from_secs(30);
                // While node 3 still leads a group, a write it would lead is refused
                // (and not made): retrying is safe.
                loop {
                    match kv.clone().put(put.clone()).await {
                        Ok(_) => break,
                        Err(e) if e.code() == Code::ResourceExhausted && e.message().contains("disk is full") => {
                            refused += 1
                        }
                        Err(e) if e.code() == Code::Unavailable => {}
                        Err(e) => panic!("put full-{i}: {e:?}"),
                    }
                    assert!(Instant::now() < deadline, "full-{i} never committed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            refused
        });
    }
    let mut refused = 0;
    while let Some(done) = tasks.join_next().await {
        refused += done.expect("writer task");
    }
    eprintln!("{refused} writes refused while node 3 still led their group");
    let stderr = std::fs::read_to_string(cluster.dir.path().join("node3.log")).expect("node 3's stderr");
    assert!(stderr.contains("no space left"), "node 3 never ran out of space: {stderr}");
    let mut admin = AdminClient::new(channel(&cluster.addrs[2]).await);
    let status = admin.status(StatusRequest {}).await.expect("status").into_inner();
    assert!(status.groups.iter().all(|g| g.leader != 3), "node 3 still leads: {:?}", status.groups);

    std::fs::remove_file(&filler).expect("space freed");
    wait_until_applied_everywhere_as_committed_on(&cluster, 1, 3).await;
    assert!(cluster.children[2].try_wait().expect("status").is_none(), "node 3 kept running throughout");
    let held: std::collections::BTreeMap<Bytes, Bytes> = all_pairs(&cluster.addrs[2]).await.into_iter().collect();
    for i in 0..KEYS {
        assert_eq!(held.get(format!("full-{i}").as_bytes()), Some(&value(i)), "full-{i} on node 3");
    }
    put_through(&cluster.addrs[2], "after-space-freed", "v").await;
    for id in 1..=3 {
        cluster.kill(id);
    }
    drop(disk); // Unmounted before the cluster's directory is removed.
}

/// A key (of the form `session-N`) whose group `node` leads (`leads`) or does not.
async fn key_led(cluster: &Cluster, node: usize, leads: bool) -> Bytes {
    for i in 0..1000 {
        let key = format!("session-{i}");
        let group = u64::from(crc32fast::hash(key.as_bytes())) % GROUPS;
        if (leader_of(cluster, node, group).await == Some(node)) == leads {
            return Bytes::from(key);
        }
    }
    panic!("no key whose group node {node} leads={leads}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_answers_every_call_by_id_and_refuses_bad_ones_without_stopping() {
    use quarry::proto::{session_answer, session_call, SessionCall, SessionRequest};
    let cluster = start_cluster();
    wait_for_leaders(&cluster).await;
    let (here, elsewhere) = (key_led(&cluster, 1, true).await, key_led(&cluster, 1, false).await);
    let (calls, outgoing) = tokio::sync::mpsc::channel(4);
    let mut kv = KvClient::new(channel(&cluster.addrs[0]).await);
    let mut answers =
        kv.session(tokio_stream::wrappers::ReceiverStream::new(outgoing)).await.expect("session").into_inner();
    let put = |key: &Bytes, value: &[u8], sequence| {
        let value = Bytes::copy_from_slice(value);
        Some(session_call::Op::Put(PutRequest { key: key.clone(), value, client_id: 77, sequence }))
    };
    let batch = vec![
        SessionCall { id: 10, op: put(&here, b"one", 1) },
        SessionCall { id: 11, op: put(&Bytes::new(), b"empty key", 2) },
        SessionCall { id: 12, op: put(&here, &vec![0; (1 << 20) + 1], 3) },
        SessionCall { id: 13, op: None },
        SessionCall { id: 14, op: put(&elsewhere, b"elsewhere", 4) },
    ];
    calls.send(SessionRequest { calls: batch }).await.expect("sent");
    let mut got = std::collections::BTreeMap::new();
    let mut receive = async |got: &mut std::collections::BTreeMap<u64, session_answer::Result>, n| {
        while got.len() < n {
            let response = tokio::time::timeout(Duration::from_secs(30), answers.message())
                .await
                .expect("answers within 30 s")
                .expect("stream healthy")
                .expect("stream open");
            for answer in response.answers {
                let result = answer.result.expect("a result");
                assert!(got.insert(answer.id, result).is_none(), "id {} answered twice", answer.id);
            }
        }
    };
    receive(&mut got, 5).await;
    // Sent after the write's answer, a read sees it.
    let get = Some(session_call::Op::Get(GetRequest { key: here.clone(), serializable: false }));
    calls.send(SessionRequest { calls: vec![SessionCall { id: 15, op: get }] }).await.expect("sent");
    receive(&mut got, 6).await;
    assert!(matches!(&got[&10], session_answer::Result::Put(p) if p.revision > 0), "{:?}", got[&10]);
    for id in [11, 12, 13] {
        let session_answer::Result::Error(e) = &got[&id] else { panic!("call {id} accepted: {:?}", got[&id]) };
        assert_eq!(e.code, Code::InvalidArgument as i32, "call {id}: {e:?}");
    }
    // Not the leader here: the answer names the leader (unless leadership moved here).
    match &got[&14] {
        session_answer::Result::Error(e) => {
            assert_eq!(e.code, Code::Unavailable as i32, "{e:?}");
            assert!(e.leader != 0 && e.leader != 1, "names another leader: {e:?}");
        }
        session_answer::Result::Put(_) => {}
        other => panic!("unexpected {other:?}"),
    }
    match &got[&15] {
        session_answer::Result::Get(g) => assert_eq!(g.value, Bytes::from("one")),
        session_answer::Result::Error(e) => assert_eq!(e.code, Code::Unavailable as i32, "{e:?}"),
        other => panic!("unexpected {other:?}"),
    }

    // Too many calls in one message: refused, and the session ends.
    let flood = (0..1025).map(|id| SessionCall { id, op: put(&here, b"x", 1000 + id) }).collect();
    calls.send(SessionRequest { calls: flood }).await.expect("sent");
    let response = tokio::time::timeout(Duration::from_secs(30), answers.message())
        .await
        .expect("answer within 30 s")
        .expect("stream healthy")
        .expect("an answer");
    let refused = matches!(&response.answers[..], [a] if matches!(&a.result,
        Some(session_answer::Result::Error(e)) if e.code == Code::InvalidArgument as i32));
    assert!(refused, "{response:?}");
    // The node keeps serving.
    put_through(&cluster.addrs[0], "after-session", "ok").await;
}

/// The resident memory of process `pid`, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// Streams that declare large messages and never finish them (issue 14: a few grew a
/// node from 21 to 501 MiB) hold at most their connection's and the node's budget
/// of bytes in flight: here 4 connections x 48 streams each send 3.5 MiB of a
/// declared 3.9 MiB message (~670 MiB offered), and the node's memory stays far below
/// that while it keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_messages_hold_bounded_memory() {
    if tls_on() {
        return; // raw HTTP/2 below; the budgets are the same under TLS
    }
    let cluster = start_cluster();
    wait_for_leaders(&cluster).await;
    let pid = cluster.children[0].id();
    let before = rss_bytes(pid);
    const DECLARED: usize = (39 << 20) / 10;
    const SENT: usize = (35 << 20) / 10;
    let mut connections = Vec::new();
    for _ in 0..4 {
        let tcp = tokio::net::TcpStream::connect(&cluster.addrs[0]).await.expect("connect");
        let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2");
        connections.push(tokio::spawn(connection));
        for _ in 0..48 {
            let mut client = client.clone().ready().await.expect("a stream");
            let request = http::Request::post(format!("http://{}/quarry.v1.Kv/Put", cluster.addrs[0]))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .expect("request");
            let (_response, mut stream) = client.send_request(request, false).expect("stream opens");
            let mut data = vec![0u8];
            data.extend_from_slice(&(DECLARED as u32).to_be_bytes());
            data.resize(SENT, 7);
            stream.send_data(bytes::Bytes::from(data), false).expect("queued");
            std::mem::forget(stream); // never finished
        }
    }
    // Let the node take in all it will.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = rss_bytes(pid);
    eprintln!("node 1 RSS: {} MiB before, {} MiB with ~670 MiB offered", before >> 20, during >> 20);
    assert!(during < before + (400 << 20), "memory grew by {} MiB", (during - before) >> 20);
    // It keeps serving.
    let kv = KvClient::new(channel(&cluster.addrs[0]).await);
    let put = PutRequest { key: Bytes::from("still"), value: Bytes::from("serving"), client_id: 0, sequence: 0 };
    let put = retry(|| {
        let (mut c, r) = (kv.clone(), put.clone());
        async move { c.put(r).await }
    });
    tokio::time::timeout(Duration::from_secs(30), put).await.expect("in time").expect("put");
    for connection in connections {
        connection.abort();
    }
}

/// A connection with no request open for `--idle-timeout-s` is closed by the node
/// (keepalive PINGs keep it alive, not busy); one with a request open is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_busy_ones_kept() {
    if tls_on() {
        return; // raw HTTP/2 below; the timeout is the same under TLS
    }
    let cluster = start_cluster_with(&["--idle-timeout-s", "1"]);
    wait_for_leaders(&cluster).await;
    let open = |addr: String| async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2");
        (client, tokio::spawn(connection))
    };
    let (_idle_client, idle) = open(cluster.addrs[0].clone()).await;
    let (busy_client, busy) = open(cluster.addrs[0].clone()).await;
    let mut busy_client = busy_client.ready().await.expect("a stream");
    let request = http::Request::post(format!("http://{}/quarry.v1.Kv/Put", cluster.addrs[0]))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (_answer, _stream) = busy_client.send_request(request, false).expect("a request open, never finished");

    let closed = tokio::time::timeout(Duration::from_secs(20), idle).await;
    assert!(closed.is_ok(), "the idle connection was not closed");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!busy.is_finished(), "a connection with a request open was closed");
    busy.abort();
}

mod client_fuzz {
    //! Hostile client requests against a real node: structured requests with edge-case
    //! fields, the same encodings with bytes flipped or cut, and noise, on every
    //! client method (Kv, Log, the read-only Admin calls, Flight tickets). The node must
    //! answer each (or drop the stream), stay up, and keep its replicas in agreement.
    //! `QUARRY_FUZZ_REQUESTS=N` for a long run; `QUARRY_FUZZ_SEED` to replay one.
    use prost::Message as _;
    use quarry::proto;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const PATHS: &[&str] = &[
        "/quarry.v1.Kv/Put",
        "/quarry.v1.Kv/Get",
        "/quarry.v1.Kv/Delete",
        "/quarry.v1.Kv/Range",
        "/quarry.v1.Kv/Cas",
        "/quarry.v1.Kv/Batch",
        "/quarry.v1.Kv/Session",
        "/quarry.v1.Kv/Watch",
        "/quarry.v1.Log/Append",
        "/quarry.v1.Log/Read",
        "/quarry.v1.Admin/Status",
        "/quarry.v1.Admin/Members",
        "/quarry.v1.Sql/Execute",
        "/quarry.v1.Sql/Query",
        "/quarry.v1.Sql/Schema",
        "/arrow.flight.protocol.FlightService/DoGet",
    ];

    /// SQL writes that apply (given the table): the host-dependent functions, the
    /// largest rowid, schema changes, and writes that fail on a constraint of theirs.
    const SQL_WRITES: &[&str] = &[
        "CREATE TABLE IF NOT EXISTS f(a UNIQUE, b)",
        "INSERT INTO f VALUES (?, ?)",
        "INSERT OR REPLACE INTO f VALUES (:a, :b)",
        "INSERT INTO f(rowid, a) VALUES (9223372036854775807, random())",
        "INSERT INTO f(b) VALUES (datetime('now', 'localtime'))",
        "INSERT INTO f(b) VALUES (randomblob(16))",
        "UPDATE f SET b = ? WHERE a = ?",
        "DELETE FROM f WHERE rowid % 3 = ?",
        "CREATE INDEX IF NOT EXISTS fb ON f(b)",
    ];

    /// SQL that Quarry refuses or that fails: reads sent as writes, pragmas, ATTACH,
    /// transactions, temporary tables, connection history, runaway statements, two
    /// statements in one, broken text.
    const SQL_OTHERS: &[&str] = &[
        "SELECT * FROM f WHERE a = ?",
        "SELECT changes(), total_changes()",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) INSERT INTO f SELECT i, i FROM n",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n",
        "PRAGMA writable_schema = ON",
        "ATTACH '/etc/passwd' AS p",
        "BEGIN; DELETE FROM f; COMMIT",
        "CREATE TEMP TABLE t(a)",
        "DROP TABLE f",
        "INSERT INTO f VALUES (1, 2); INSERT INTO f VALUES (3, 4)",
        "INSERT INTO f VALUES ('\\0', x'00')",
        "SELEC",
        "",
    ];

    fn sql_value(rng: &mut ChaCha8Rng) -> proto::SqlValue {
        use proto::sql_value::Value;
        let value = match rng.random_range(0..6) {
            0 => None,
            1 => Some(Value::Integer(number(rng) as i64)),
            2 => Some(Value::Real([f64::NAN, f64::INFINITY, -0.0, 1e308][rng.random_range(0..4)])),
            3 => Some(Value::Text(text(rng))),
            _ => Some(Value::Blob(bytes(rng))),
        };
        proto::SqlValue { value }
    }

    fn sql_statement(rng: &mut ChaCha8Rng, writes_only: bool) -> proto::SqlStatement {
        let sql = match rng.random_range(0..8) {
            _ if writes_only => SQL_WRITES[rng.random_range(0..SQL_WRITES.len())].to_string(),
            0 => text(rng),
            1..=3 => SQL_OTHERS[rng.random_range(0..SQL_OTHERS.len())].to_string(),
            _ => SQL_WRITES[rng.random_range(0..SQL_WRITES.len())].to_string(),
        };
        if writes_only {
            // The parameters it takes, so that it applies (or fails on a constraint).
            let params = (0..sql.matches('?').count()).map(|_| sql_value(rng)).collect();
            let names: &[&str] = if sql.contains(":a") { &["a", ":b"] } else { &[] };
            let named = names.iter().map(|n| (n.to_string(), sql_value(rng))).collect();
            return proto::SqlStatement { sql, params, named };
        }
        let params = (0..rng.random_range(0..4)).map(|_| sql_value(rng)).collect();
        let named = (0..rng.random_range(0..3))
            .map(|_| (["a", ":b", "zz", ""][rng.random_range(0..4)].to_string(), sql_value(rng)))
            .collect();
        proto::SqlStatement { sql, params, named }
    }

    fn database(rng: &mut ChaCha8Rng) -> String {
        match rng.random_range(0..6) {
            0 => text(rng),
            1 => "fz2".into(),
            _ => "fz".into(),
        }
    }

    fn number(rng: &mut ChaCha8Rng) -> u64 {
        match rng.random_range(0..5) {
            0 => 0,
            1 => u64::MAX,
            2 => rng.random_range(0..16),
            3 => 1 << rng.random_range(0..64),
            _ => rng.random(),
        }
    }

    fn bytes(rng: &mut ChaCha8Rng) -> bytes::Bytes {
        let len = match rng.random_range(0..6) {
            0 => 0,
            1 => rng.random_range(4_000..4_200), // around the key limit
            2 => rng.random_range(60_000..70_000),
            _ => rng.random_range(1..24),
        };
        let mut data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if rng.random_bool(0.1) && data.len() >= 2 {
            data[..2].copy_from_slice(&[0xFF, 0xFF]); // Quarry's reserved prefix
        }
        data.into()
    }

    fn text(rng: &mut ChaCha8Rng) -> String {
        match rng.random_range(0..4) {
            0 => String::new(),
            1 => "é".repeat(rng.random_range(1..3_000)),
            _ => (0..rng.random_range(1..16)).map(|_| rng.random_range('a'..='z')).collect(),
        }
    }

    fn put(rng: &mut ChaCha8Rng) -> proto::PutRequest {
        proto::PutRequest { key: bytes(rng), value: bytes(rng), client_id: number(rng), sequence: number(rng) }
    }

    fn delete(rng: &mut ChaCha8Rng) -> proto::DeleteRequest {
        proto::DeleteRequest { key: bytes(rng), client_id: number(rng), sequence: number(rng) }
    }

    fn cas(rng: &mut ChaCha8Rng) -> proto::CasRequest {
        proto::CasRequest {
            key: bytes(rng),
            value: bytes(rng),
            client_id: number(rng),
            sequence: number(rng),
            ..Default::default()
        }
    }

    /// One request body for `path`: structured, mangled or noise.
    fn payload(rng: &mut ChaCha8Rng, path: &str) -> Vec<u8> {
        let mut encoded = match path {
            "/quarry.v1.Kv/Put" => put(rng).encode_to_vec(),
            "/quarry.v1.Kv/Get" => proto::GetRequest { key: bytes(rng), serializable: rng.random() }.encode_to_vec(),
            "/quarry.v1.Kv/Delete" => delete(rng).encode_to_vec(),
            "/quarry.v1.Kv/Range" => {
                let mut range = proto::RangeRequest::default();
                (range.start, range.end, range.limit) = (bytes(rng), bytes(rng), number(rng) as u32);
                range.serializable = rng.random();
                range.group = rng.random_bool(0.5).then(|| number(rng));
                range.encode_to_vec()
            }
            "/quarry.v1.Kv/Cas" => cas(rng).encode_to_vec(),
            "/quarry.v1.Kv/Watch" => {
                let resume = (0..rng.random_range(0..4)).map(|_| (number(rng), number(rng))).collect();
                let watch = proto::WatchRequest {
                    key: bytes(rng),
                    prefix: rng.random(),
                    start_revision: number(rng),
                    resume,
                    prev_value: rng.random(),
                };
                watch.encode_to_vec()
            }
            "/quarry.v1.Kv/Batch" => {
                let ops = (0..rng.random_range(0..40))
                    .map(|_| proto::BatchOp {
                        op: Some(match rng.random_range(0..3) {
                            0 => proto::batch_op::Op::Put(put(rng)),
                            1 => proto::batch_op::Op::Delete(delete(rng)),
                            _ => proto::batch_op::Op::Cas(cas(rng)),
                        }),
                    })
                    .collect();
                proto::BatchRequest { ops, client_id: number(rng), sequence: number(rng) }.encode_to_vec()
            }
            "/quarry.v1.Log/Append" => {
                let append = proto::LogAppendRequest {
                    log: text(rng),
                    data: bytes(rng),
                    client_id: number(rng),
                    sequence: number(rng),
                };
                append.encode_to_vec()
            }
            "/quarry.v1.Log/Read" => {
                let read = proto::LogReadRequest {
                    log: text(rng),
                    from: number(rng),
                    limit: number(rng) as u32,
                    serializable: rng.random(),
                };
                read.encode_to_vec()
            }
            "/quarry.v1.Sql/Execute" => {
                // Half the writes are well formed, so that databases exist and change.
                let writes_only = rng.random_bool(0.5);
                let mut statements: Vec<_> =
                    (0..rng.random_range(0..6)).map(|_| sql_statement(rng, writes_only)).collect();
                if writes_only {
                    statements.insert(0, proto::SqlStatement { sql: SQL_WRITES[0].into(), ..Default::default() });
                }
                let execute = proto::SqlExecuteRequest {
                    database: database(rng),
                    statements,
                    client_id: number(rng),
                    sequence: number(rng),
                };
                execute.encode_to_vec()
            }
            "/quarry.v1.Sql/Query" => {
                let query = proto::SqlQueryRequest {
                    database: database(rng),
                    statement: rng.random_bool(0.9).then(|| sql_statement(rng, false)),
                    serializable: rng.random(),
                    max_rows: number(rng) as u32,
                };
                query.encode_to_vec()
            }
            "/quarry.v1.Sql/Schema" => {
                proto::SqlSchemaRequest { database: database(rng), serializable: rng.random() }.encode_to_vec()
            }
            "/arrow.flight.protocol.FlightService/DoGet" => {
                let ticket = match rng.random_range(0..5) {
                    0 => format!("snapshot/{}/{}/{}", number(rng), number(rng), number(rng)),
                    1 => format!("entries/{}/{}/{}", number(rng), number(rng), number(rng)),
                    2 => format!("log/{}/{}", number(rng), text(rng)),
                    3 => {
                        format!("watch/{}/{}/{}", ["key", "prefix", ""][rng.random_range(0..3)], number(rng), text(rng))
                    }
                    _ => text(rng),
                };
                arrow_flight::Ticket { ticket: ticket.into() }.encode_to_vec()
            }
            _ => (0..rng.random_range(0..64)).map(|_| rng.random()).collect(),
        };
        match rng.random_range(0..6) {
            0 if !encoded.is_empty() => {
                let at = rng.random_range(0..encoded.len());
                encoded[at] ^= rng.random_range(1..=255);
            }
            1 => encoded.truncate(rng.random_range(0..=encoded.len())),
            2 => encoded = (0..rng.random_range(0..256)).map(|_| rng.random()).collect(),
            _ => {}
        }
        encoded
    }

    /// Size and CRC of the fuzz's SQL databases at one replica (None: not created).
    async fn sql_images(addr: &str) -> Vec<Option<(u64, u32)>> {
        let mut sql = proto::sql_client::SqlClient::new(super::channel(addr).await);
        let mut images = Vec::new();
        for database in ["fz", "fz2"] {
            let request = proto::SqlSchemaRequest { database: database.into(), serializable: true };
            images.push(sql.schema(request).await.ok().map(|a| a.into_inner()).map(|a| (a.image_bytes, a.image_crc32)));
        }
        images
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostile_client_requests_are_answered_and_change_nothing_unsafe() {
        if super::tls_on() {
            return; // raw HTTP/2 below; TLS changes nothing about decoding
        }
        let requests: usize = std::env::var("QUARRY_FUZZ_REQUESTS").ok().and_then(|n| n.parse().ok()).unwrap_or(300);
        let seed: u64 = std::env::var("QUARRY_FUZZ_SEED").ok().and_then(|n| n.parse().ok()).unwrap_or(1);
        eprintln!("client fuzz: {requests} requests, seed {seed}");
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut cluster = super::start_cluster();
        super::wait_for_leaders(&cluster).await;
        let addr = cluster.addrs[0].clone();
        let tcp = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2");
        let driver = tokio::spawn(connection);
        for _ in 0..requests {
            let path = PATHS[rng.random_range(0..PATHS.len())];
            let body = payload(&mut rng, path);
            let mut framed = vec![0u8];
            framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
            framed.extend_from_slice(&body);
            let request = http::Request::post(format!("http://{addr}{path}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .expect("request");
            let mut client = client.clone().ready().await.expect("the connection stays up");
            let (response, mut stream) = client.send_request(request, false).expect("a stream");
            stream.send_data(framed.clone().into(), true).expect("sent");
            // Each call is answered (or its stream reset) in time. A log tail's or a
            // watch's answer is a stream that stays open for new records: its start is
            // the answer.
            let answered = tokio::time::timeout(std::time::Duration::from_secs(15), response).await;
            assert!(answered.is_ok(), "{path}: no answer within 15 s to {body:?}");
            if let Ok(Ok(response)) = answered {
                let mut body = response.into_body();
                let drained = async {
                    while let Some(Ok(chunk)) = body.data().await {
                        let _ = body.flow_control().release_capacity(chunk.len());
                    }
                };
                let open_ended = path.ends_with("/Watch") || path.ends_with("/DoGet");
                let drain_for = std::time::Duration::from_millis(if open_ended { 300 } else { 2000 });
                let _ = tokio::time::timeout(drain_for, drained).await;
            }
        }
        driver.abort();
        assert!(cluster.children[0].try_wait().expect("wait").is_none(), "node 1 stopped");
        eprintln!("client fuzz: SQL databases at node 1: {:?}", sql_images(&cluster.addrs[0]).await);
        // Whatever the fuzz wrote, every replica holds the same.
        let deadline = std::time::Instant::now() + super::READY_DEADLINE;
        loop {
            let pairs = [
                super::all_pairs(&cluster.addrs[0]).await,
                super::all_pairs(&cluster.addrs[1]).await,
                super::all_pairs(&cluster.addrs[2]).await,
            ];
            let mut images = Vec::new();
            for addr in &cluster.addrs {
                images.push(sql_images(addr).await);
            }
            if pairs[0] == pairs[1] && pairs[1] == pairs[2] && images[0] == images[1] && images[1] == images[2] {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the replicas disagree after the fuzz: {images:?}");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        cluster.kill(1);
    }
}

/// Idle connections holding every slot of node 1 (the attack of issue 14: ~4,100 idle
/// HTTP/2 connections; here as many as `--connections-max`, 4,096 when this process may
/// open that many files) cannot lock out a restarted peer, in plain text: at the limit
/// the connection idle the longest makes room, and a peer's stream is never idle. With
/// node 3 down every write needs nodes 1 and 2 to hear each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_holding_every_slot_give_way_to_a_restarted_peer() {
    let files = raise_open_files_limit();
    let slots: usize = if files >= 12_000 { 4096 } else { 64 };
    let mut cluster = start_cluster_with(&["--connections-max", &slots.to_string()]);
    wait_for_leaders(&cluster).await;
    let kv = KvClient::new(channel(&cluster.addrs[0]).await);
    let mut held = Vec::new();
    for _ in 0..slots + 8 {
        let Ok(Ok(tcp)) =
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(&cluster.addrs[0])).await
        else {
            continue; // past the limit: waiting in the backlog
        };
        match tokio::time::timeout(Duration::from_secs(2), h2::client::handshake(tcp)).await {
            Ok(Ok((client, connection))) => held.push((client, tokio::spawn(connection))),
            _ => continue,
        }
    }
    eprintln!("{} idle connections held against {slots} slots", held.len());
    assert!(held.len() + 3 >= slots, "the idle connections did not fill the node");

    restart_node_2_without_node_3(&mut cluster, &kv, "idle").await;
    for (_, connection) in held {
        connection.abort();
    }
}

/// Raises this process's open-file limit to its hard limit (the nodes it starts
/// inherit it); the limit now.
fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    limit.rlim_cur
}

/// A forged vote at term 2^64-1 (issue 14: it overflowed the election code and stopped
/// the shards of all three nodes) is refused by every node, in plain text too: the
/// node logs and counts it, and every node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_from_the_last_term_is_refused_and_every_node_keeps_serving() {
    use quarry::proto::peer_client::PeerClient;
    use quarry::proto::{raft_message, MsgVote, PeerBatch, RaftMessage};
    if tls_on() {
        return; // a client certificate may not send peer batches at all (tls_process.rs)
    }
    let mut cluster = start_cluster();
    wait_for_leaders(&cluster).await;
    for (i, addr) in cluster.addrs.iter().enumerate() {
        let to = i as u64 + 1;
        let forged = (0..GROUPS)
            .map(|group| RaftMessage {
                group,
                from: if to == 1 { 2 } else { 1 },
                to,
                term: u64::MAX,
                kind: Some(raft_message::Kind::Vote(MsgVote {
                    last_index: u64::MAX,
                    last_term: u64::MAX,
                    transfer: true,
                    ..Default::default()
                })),
            })
            .collect();
        let batch =
            PeerBatch { cluster_id: 1, from_node: if to == 1 { 2 } else { 1 }, messages: forged, ..Default::default() };
        let mut peer = PeerClient::new(channel(addr).await);
        let _ = peer.stream(tokio_stream::iter(vec![batch])).await;
    }
    let deadline = Instant::now() + READY_DEADLINE;
    for metrics in &cluster.metrics {
        while counter(metrics, "quarry_peer_messages_refused_total").await == 0 {
            assert!(Instant::now() < deadline, "{metrics}: the forged votes were not refused");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let client = client(&cluster.addrs);
    for i in 0..(2 * GROUPS) {
        client.put(Bytes::from(format!("after-vote-{i}")), Bytes::from("v")).await.expect("still served");
    }
    wait_for_leaders(&cluster).await;
    let pairs = [all_pairs(&cluster.addrs[0]).await, all_pairs(&cluster.addrs[1]).await];
    assert!(pairs[0].len() >= 2 * GROUPS as usize, "writes went through");
    for (i, child) in cluster.children.iter_mut().enumerate() {
        assert!(child.try_wait().expect("wait").is_none(), "node {} stopped", i + 1);
    }
}
