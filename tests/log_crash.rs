//! A real process appends to a shard log and reports each acknowledged (durable)
//! index; the test SIGKILLs it mid-stream, reopens the log and checks that every
//! acknowledged entry is there and intact, and that nothing appears half-written.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quarry::log::io::{flush, SegmentWriter};
use quarry::log::{LogStore, ShardLog, ShardLogConfig};
use quarry::raft::{ConfState, Entry, EntryPayload, Index, SnapshotMeta};

use common::{run_glommio, TempDir};

const GROUPS: u64 = 4;
const DIR_VAR: &str = "QUARRY_LOG_CRASH_DIR";

fn config(dir: &str) -> ShardLogConfig {
    ShardLogConfig { segment_bytes: 256 << 10, free_segments_max: 2, ..ShardLogConfig::new(dir) }
}

fn payload(group: u64, index: Index) -> Bytes {
    Bytes::from(vec![(group * 31 + index) as u8; (index % 300) as usize])
}

/// The child half, started by the parent test below (ignored when run directly).
#[test]
#[ignore = "run as a child process by killed_appender_loses_no_acknowledged_entry"]
fn crash_child_appender() {
    let dir = std::env::var(DIR_VAR).expect("child needs its log directory");
    run_glommio(move || async move {
        let log = RefCell::new(ShardLog::open(config(&dir)).expect("child opens the log"));
        let mut writer = SegmentWriter::default();
        for round in 0..200_000u64 {
            for group in 0..GROUPS {
                let next = log.borrow().last_index(group) + 1;
                let count = 1 + (round + group) % 3;
                let entries: Vec<Entry> = (next..next + count)
                    .map(|index| Entry { index, term: 1, payload: EntryPayload::Normal(payload(group, index)) })
                    .collect();
                log.borrow_mut().append(group, &entries).expect("append");
                if round % 25 == 24 {
                    let index = next.saturating_sub(10).max(1);
                    let meta = SnapshotMeta { index, term: 1, conf_state: ConfState::new([1]) };
                    log.borrow_mut().compact(group, meta).expect("compact");
                    log.borrow_mut().release_unneeded_segments().expect("release");
                }
            }
            flush(&log, &mut writer).await.expect("flush");
            let acked: Vec<String> = (0..GROUPS).map(|g| log.borrow().last_index(g).to_string()).collect();
            println!("ack {}", acked.join(" "));
        }
    });
}

#[test]
fn killed_appender_loses_no_acknowledged_entry() {
    let dir = TempDir::new("crash");
    let mut child = Command::new(std::env::current_exe().expect("test binary path"))
        .args(["crash_child_appender", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(DIR_VAR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("child starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut acked: BTreeMap<u64, Index> = BTreeMap::new();
    let mut acks = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("child output");
        let Some(rest) = line.strip_prefix("ack ") else {
            continue;
        };
        for (group, last) in rest.split(' ').enumerate() {
            acked.insert(group as u64, last.parse().expect("numeric ack"));
        }
        acks += 1;
        if acks == 400 || Instant::now() > deadline {
            break;
        }
    }
    // SIGKILL mid-stream, by PID (Child::kill sends SIGKILL on Unix).
    child.kill().expect("kill child");
    child.wait().expect("reap child");
    assert!(acks >= 100, "child acknowledged only {acks} rounds before the deadline");

    let log = ShardLog::open(config(dir.path().to_str().expect("utf-8 temp path"))).expect("reopens after SIGKILL");
    for group in 0..GROUPS {
        let (first, last) = (log.first_index(group), log.last_index(group));
        let acked_last = acked[&group];
        assert!(last >= acked_last, "group {group}: acknowledged {acked_last} but recovered only {last}");
        // Everything present — acknowledged or not — is whole and exactly what was written.
        for entry in log.entries(group, first, last + 1, u64::MAX).expect("entries readable") {
            assert_eq!(
                entry.payload,
                EntryPayload::Normal(payload(group, entry.index)),
                "group {group} entry {}",
                entry.index
            );
            assert_eq!(entry.term, 1);
        }
    }
}
