//! Watch on real `quarryd` processes: a watcher sees exactly the history of its keys
//! (each group's changes in order, none missed or repeated) while writers run, the
//! node it watches at is killed (leading groups), and it resumes at another node; a
//! compacted revision is refused naming the oldest one held, and a watcher that does
//! not read is cancelled with a reason. Every process started is stopped by PID.

mod process;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::{Array, BinaryArray, StringArray, UInt64Array};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::Ticket;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use quarry::client::{Client, WatchOptions};
use quarry::proto::kv_client::KvClient;
use quarry::proto::{watch_event::Kind, WatchEvent, WatchRequest};
use quarry::transport::flight::WatchTicket;
use tonic::Code;

use process::*;

const WRITERS: usize = 4;
const WRITES_PER_WRITER: usize = 150;

/// One change as a watcher saw it: (revision, key, value; None for a delete).
type Seen = (u64, Bytes, Option<Bytes>);
/// A watcher's changes so far, by group.
type Collected = Arc<Mutex<BTreeMap<u64, Vec<Seen>>>>;

fn seen(event: &WatchEvent) -> Seen {
    let value = (event.kind() == Kind::Put).then(|| event.value.clone());
    (event.revision, event.key.clone(), value)
}

/// Collects a watch's events per group until the task is aborted.
fn collect(
    client: Arc<Client>,
    key: &'static str,
    start_revision: u64,
) -> (Collected, tokio::task::JoinHandle<String>) {
    let events: Collected = Arc::default();
    let sink = events.clone();
    let task = tokio::spawn(async move {
        let options = WatchOptions { prefix: true, start_revision, prev_values: true };
        let mut watch = client.watch(Bytes::from_static(key.as_bytes()), options);
        loop {
            match watch.next().await {
                Ok(batch) => {
                    let mut events = sink.lock().unwrap();
                    for event in &batch {
                        events.entry(event.group).or_default().push(seen(event));
                    }
                }
                Err(e) => return e.to_string(),
            }
        }
    });
    (events, task)
}

/// Waits until `events` holds every acknowledged write, or fails saying what is missing.
async fn wait_for(events: &Mutex<BTreeMap<u64, Vec<Seen>>>, acked: &[(u64, Seen)], what: &str) {
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        let missing: Vec<_> = {
            let events = events.lock().unwrap();
            acked.iter().filter(|(g, s)| !events.get(g).is_some_and(|e| e.contains(s))).cloned().collect()
        };
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never saw {} acknowledged writes, e.g. {:?}",
            missing.len(),
            missing[0]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_each_change_once_in_order_across_a_leader_kill_and_a_reconnect() {
    let mut cluster = start_cluster();
    wait_for_leaders(&cluster).await;
    // The watcher starts at the node that leads group 0, which is killed mid-run.
    let victim = leader_of(&cluster, 1, 0).await.expect("group 0 has a leader");
    let first = cluster.addrs[victim - 1].clone();
    let mut order = vec![first.clone()];
    order.extend(cluster.addrs.iter().filter(|a| **a != first).cloned());
    let watcher = Arc::new(quarry::client::Client::with_tls(&order, client_tls(cluster.tls)).unwrap());
    let (live, live_task) = collect(watcher, "w/", 1);

    let writer = Arc::new(client(&cluster.addrs));
    let acked: Arc<Mutex<Vec<(u64, Seen)>>> = Arc::default();
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let (writer, acked) = (writer.clone(), acked.clone());
        writers.spawn(async move {
            let mut unknown = 0;
            for i in 0..WRITES_PER_WRITER {
                let key = Bytes::from(format!("w/{w}/{}", i % 10));
                let (value, result) = if i % 7 == 6 {
                    (None, writer.delete(key.clone()).await.map(|_| 0))
                } else {
                    let value = Bytes::from(format!("{w}-{i}"));
                    (Some(value.clone()), writer.put(key.clone(), value).await)
                };
                match result {
                    // A delete's revision is not answered: its presence is checked below.
                    Ok(revision) if value.is_some() => {
                        let group = quarry::group::group_of_key(&key, GROUPS);
                        acked.lock().unwrap().push((group, (revision, key, value)));
                    }
                    Ok(_) => {}
                    Err(_) => unknown += 1,
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            unknown
        });
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    cluster.kill(victim);
    let acked_before_kill = acked.lock().unwrap().len();
    let mut unknown = 0;
    while let Some(done) = writers.join_next().await {
        unknown += done.expect("writer");
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > acked_before_kill + 100,
        "too few writes after the kill: {acked_before_kill} of {}",
        acked.len()
    );
    assert!(
        acked.len() > WRITERS * WRITES_PER_WRITER / 2,
        "too few writes acknowledged: {} ({unknown} unknown)",
        acked.len()
    );
    if live_task.is_finished() {
        panic!("the live watch ended: {}", live_task.await.unwrap());
    }
    wait_for(&live, &acked, "the live watch").await;

    // The same history replayed from revision 1 at a surviving node, after the fact.
    let survivor = cluster.addrs.iter().enumerate().find(|(i, _)| i + 1 != victim).map(|(_, a)| a.clone()).unwrap();
    let replayer = Arc::new(Client::with_tls(std::slice::from_ref(&survivor), client_tls(cluster.tls)).unwrap());
    let (replay, replay_task) = collect(replayer, "w/", 1);
    wait_for(&replay, &acked, "the replay").await;
    // Let both settle on the last change, then compare them whole.
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        let (live, replay) = (live.lock().unwrap().clone(), replay.lock().unwrap().clone());
        if live == replay {
            for (group, events) in &live {
                let revisions: Vec<u64> = events.iter().map(|e| e.0).collect();
                assert!(revisions.windows(2).all(|w| w[0] <= w[1]), "group {group} out of order: {revisions:?}");
                let mut distinct: Vec<_> = events.iter().map(|e| (e.0, e.1.clone())).collect();
                distinct.dedup();
                assert_eq!(distinct.len(), events.len(), "group {group} repeated a change");
            }
            let deletes = live.values().flatten().filter(|e| e.2.is_none()).count();
            assert!(deletes > 0, "no delete was seen");
            break;
        }
        assert!(Instant::now() < deadline, "the live watch and the replay differ:\nlive {live:?}\nreplay {replay:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    live_task.abort();
    replay_task.abort();

    // The same changes over Flight, as record batches, from the survivor.
    let channel = channel(&survivor).await;
    let ticket = WatchTicket { prefix: true, start_revision: 1, key: Bytes::from_static(b"w/0/") };
    let response = FlightServiceClient::new(channel).do_get(Ticket { ticket: ticket.encode().into() }).await.unwrap();
    let mut batches = FlightRecordBatchStream::new_from_flight_data(response.into_inner().map_err(Into::into));
    let expected: usize = live.lock().unwrap().values().flatten().filter(|e| e.1.starts_with(b"w/0/")).count();
    let mut rows = 0;
    while rows < expected {
        let batch = tokio::time::timeout(READY_DEADLINE, batches.next()).await.expect("batches come").unwrap().unwrap();
        let keys = batch.column_by_name("key").unwrap().as_any().downcast_ref::<BinaryArray>().unwrap();
        let kinds = batch.column_by_name("kind").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        let values = batch.column_by_name("value").unwrap().as_any().downcast_ref::<BinaryArray>().unwrap();
        let revisions = batch.column_by_name("revision").unwrap().as_any().downcast_ref::<UInt64Array>().unwrap();
        for i in 0..batch.num_rows() {
            assert!(keys.value(i).starts_with(b"w/0/"));
            assert_eq!(kinds.value(i) == "DELETE", values.is_null(i), "row {i}");
            assert!(revisions.value(i) > 0);
        }
        rows += batch.num_rows();
    }
    assert_eq!(rows, expected, "Flight sent other changes than the watch");

    // quarryctl prints the changes of one key from a revision.
    let out = Command::new(env!("CARGO_BIN_EXE_quarryctl"))
        .envs(cluster.ctl_env())
        .args(["--endpoints", &survivor, "watch", "w/1/3", "--rev", "1", "--count", "2", "--prev"])
        .output()
        .unwrap();
    succeeded("quarryctl watch", &out);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("PUT\tw/1/3\t1-3\t"), "{text}");
    assert!(lines[1].contains("(was 1-3 at revision"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_revisions_and_watchers_that_do_not_read_are_refused_with_reasons() {
    let cluster = start_cluster_with(&["--watch-history-bytes", "4096"]);
    wait_for_leaders(&cluster).await;
    let writer = Arc::new(client(&cluster.addrs));
    for i in 0..100 {
        writer.put(Bytes::from_static(b"c/k"), Bytes::from(format!("{i:0>100}"))).await.unwrap();
    }
    let mut kv = KvClient::new(channel(&cluster.addrs[0]).await);
    // Node 1 must have applied every write, or its history moves on under the test.
    let last = Bytes::from(format!("{:0>100}", 99));
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        let get = quarry::proto::GetRequest { key: "c/k".into(), serializable: true };
        if kv.get(get).await.is_ok_and(|a| a.into_inner().value == last) {
            break;
        }
        assert!(Instant::now() < deadline, "node 1 never applied the last write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let from_one = WatchRequest { key: "c/k".into(), start_revision: 1, ..Default::default() };
    let mut stream = kv.watch(from_one).await.unwrap().into_inner();
    let refused = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the watch ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    let oldest: u64 = refused.metadata().get("x-quarry-oldest-revision").unwrap().to_str().unwrap().parse().unwrap();
    assert!(oldest > 50, "4 KiB hold only the latest changes, yet the oldest held is {oldest}");
    assert!(refused.message().contains(&format!("the oldest revision held is {oldest}")), "{}", refused.message());
    // From the oldest held, it works.
    let from_oldest = WatchRequest { key: "c/k".into(), start_revision: oldest, ..Default::default() };
    let mut stream = kv.watch(from_oldest).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(first.progress.values().all(|&p| p == oldest), "{first:?}");
    let deadline = Instant::now() + READY_DEADLINE;
    while counter(&cluster.metrics[0], "quarry_watchers ").await < 1 {
        let (_, body) = http_get(&cluster.metrics[0], "/metrics");
        assert!(Instant::now() < deadline, "the open watch is not counted:\n{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A watcher that reads nothing while 12 MiB of changes go by is cancelled.
    let slow = WatchRequest { key: "s/".into(), prefix: true, ..Default::default() };
    let mut slow = kv.watch(slow).await.unwrap().into_inner();
    let _positions = slow.message().await.unwrap().unwrap();
    let big = Bytes::from(vec![b'x'; 64 << 10]);
    for i in 0..200 {
        writer.put(Bytes::from(format!("s/{}", i % 8)), big.clone()).await.unwrap();
    }
    let deadline = Instant::now() + READY_DEADLINE;
    let cancelled = loop {
        assert!(Instant::now() < deadline, "the slow watcher was never cancelled");
        match tokio::time::timeout(READY_DEADLINE, slow.message()).await.expect("the stream moves") {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the slow watcher ended without a reason"),
            Err(status) => break status,
        }
    };
    assert_eq!(cancelled.code(), Code::OutOfRange, "{cancelled:?}");
    assert!(cancelled.message().contains("fell behind"), "{}", cancelled.message());
}
