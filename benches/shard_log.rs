//! Shard log throughput and latency, next to the raw fdatasync rate of the same disk,
//! and the recovery scan rate. `cargo bench --bench shard_log` (set QUARRY_BENCH_DIR to
//! choose the disk; default `target/bench-log`). Results go in docs/performance.md.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::io::OpenOptions;
use hdrhistogram::Histogram;
use quarry::log::io::{flush, flush_one, SegmentWriter};
use quarry::log::{LogStore, ShardLog, ShardLogConfig};
use quarry::raft::{Entry, EntryPayload};

const RUN_SECS: u64 = 2;
/// Writes staged but not yet durable before the producer waits: the second buffer of
/// the double-buffered pipeline is bounded by this.
const STAGED_WRITES_MAX: u64 = 8192;

fn bench_dir(name: &str) -> PathBuf {
    let base =
        std::env::var("QUARRY_BENCH_DIR").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("target/bench-log"));
    let dir = base.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    dir
}

/// 4 KiB direct write + fdatasync in a loop over already-written space.
async fn raw_fdatasync_rate(dir: &Path) -> f64 {
    let path = dir.join("raw");
    let file = OpenOptions::new().create(true).read(true).write(true).dma_open(&path).await.expect("open");
    let mut zeros = file.alloc_dma_buffer(1 << 20);
    zeros.as_bytes_mut().fill(0);
    file.write_at(zeros, 0).await.expect("prefill");
    file.fdatasync().await.expect("sync");
    let started = Instant::now();
    let mut syncs = 0u64;
    while started.elapsed() < Duration::from_secs(RUN_SECS) {
        let buf = file.alloc_dma_buffer(4096);
        file.write_at(buf, (syncs % 256) * 4096).await.expect("write");
        file.fdatasync().await.expect("sync");
        syncs += 1;
    }
    file.close().await.expect("close");
    syncs as f64 / started.elapsed().as_secs_f64()
}

struct RunResult {
    appends_per_sec: f64,
    mb_per_sec: f64,
    records_per_sync: f64,
    p50_us: u64,
    p99_us: u64,
}

/// One producer appends single-entry writes round-robin over `groups` while a flusher
/// task writes and syncs whatever is staged (double buffering).
async fn run(groups: u64, entry_bytes: usize) -> RunResult {
    let dir = bench_dir(&format!("g{groups}-b{entry_bytes}"));
    let log = Rc::new(RefCell::new(ShardLog::open(ShardLogConfig::new(&dir)).expect("open")));
    let staged_at: Rc<RefCell<VecDeque<(u64, Instant)>>> = Rc::default();
    let done = Rc::new(Cell::new(false));
    let flusher = glommio::spawn_local({
        let (log, staged_at, done) = (log.clone(), staged_at.clone(), done.clone());
        async move {
            let mut writer = SegmentWriter::default();
            let mut histogram = Histogram::<u64>::new(3).expect("histogram");
            let mut syncs = 0u64;
            while !done.get() {
                let Some(durable) = flush_one(&log, &mut writer).await.expect("flush") else {
                    glommio::timer::sleep(Duration::from_micros(20)).await;
                    continue;
                };
                syncs += 1;
                let now = Instant::now();
                let mut staged = staged_at.borrow_mut();
                while staged.front().is_some_and(|&(ticket, _)| ticket <= durable) {
                    let (_, at) = staged.pop_front().expect("front");
                    histogram.record((now - at).as_micros() as u64).expect("record");
                }
            }
            (histogram, syncs)
        }
    });
    let payload = Bytes::from(vec![7u8; entry_bytes]);
    let mut next_index = vec![1u64; groups as usize];
    let started = Instant::now();
    let mut appended = 0u64;
    while started.elapsed() < Duration::from_secs(RUN_SECS) {
        let (staged, durable) = {
            let l = log.borrow();
            (l.staged_ticket(), l.durable_ticket())
        };
        if staged - durable >= STAGED_WRITES_MAX {
            // Park, so the executor polls io_uring and the flusher's sync completes.
            glommio::timer::sleep(Duration::from_micros(20)).await;
            continue;
        }
        let group = appended % groups;
        let index = next_index[group as usize];
        next_index[group as usize] += 1;
        let entry = Entry { index, term: 1, payload: EntryPayload::Normal(payload.clone()) };
        log.borrow_mut().append(group, &[entry]).expect("append");
        staged_at.borrow_mut().push_back((log.borrow().staged_ticket(), Instant::now()));
        appended += 1;
        if appended.is_multiple_of(64) {
            glommio::executor().yield_task_queue_now().await;
        }
    }
    // Drain what is staged so every append is counted as durable.
    while log.borrow().durable_ticket() < log.borrow().staged_ticket() {
        glommio::timer::sleep(Duration::from_micros(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    done.set(true);
    let (histogram, syncs) = flusher.await;
    let _ = std::fs::remove_dir_all(&dir);
    RunResult {
        appends_per_sec: appended as f64 / elapsed,
        mb_per_sec: (appended * entry_bytes as u64) as f64 / elapsed / 1e6,
        records_per_sync: appended as f64 / syncs.max(1) as f64,
        p50_us: histogram.value_at_quantile(0.50),
        p99_us: histogram.value_at_quantile(0.99),
    }
}

/// Writes at least 1 GiB of 4 KiB entries, then times a cold-ish reopen.
async fn recovery_scan_rate() -> (f64, f64) {
    let dir = bench_dir("recovery");
    let total_bytes: u64 = 1 << 30;
    let entry_bytes = 4096usize;
    {
        let log = RefCell::new(ShardLog::open(ShardLogConfig::new(&dir)).expect("open"));
        let mut writer = SegmentWriter::default();
        let payload = Bytes::from(vec![3u8; entry_bytes]);
        let entries = total_bytes / entry_bytes as u64;
        let mut next_index = [1u64; 64];
        for n in 1..=entries {
            let group = n % 64;
            let index = next_index[group as usize];
            next_index[group as usize] += 1;
            let entry = Entry { index, term: 1, payload: EntryPayload::Normal(payload.clone()) };
            log.borrow_mut().append(group, &[entry]).expect("append");
            if n % 1024 == 0 {
                flush(&log, &mut writer).await.expect("flush");
            }
        }
        flush(&log, &mut writer).await.expect("flush");
    }
    let on_disk: u64 =
        std::fs::read_dir(&dir).expect("dir").map(|e| e.expect("entry").metadata().expect("meta").len()).sum();
    // Best effort: drop the page cache so the scan reads the disk (needs root).
    let cold = std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok();
    let started = Instant::now();
    let log = ShardLog::open(ShardLogConfig::new(&dir)).expect("reopen");
    let secs = started.elapsed().as_secs_f64();
    assert!(log.last_index(1) > 0);
    drop(log);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "recovery scan: {:.2} GiB in {:.2}s ({}page cache dropped)",
        on_disk as f64 / (1u64 << 30) as f64,
        secs,
        if cold { "" } else { "NOT " }
    );
    (on_disk as f64 / 1e9 / secs, secs)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; there is nothing to test here.
    }
    glommio::LocalExecutorBuilder::default()
        .spawn(|| async {
            let raw = raw_fdatasync_rate(&bench_dir("raw")).await;
            println!("raw 4 KiB write + fdatasync: {raw:.0}/s");
            println!("| groups | entry | appends/s | MB/s | records/fdatasync | p50 µs | p99 µs |");
            println!("|---:|---:|---:|---:|---:|---:|---:|");
            for groups in [1u64, 64, 1024] {
                for entry_bytes in [64usize, 256, 4096] {
                    let r = run(groups, entry_bytes).await;
                    println!(
                        "| {groups} | {entry_bytes} B | {:.0} | {:.1} | {:.0} | {} | {} |",
                        r.appends_per_sec, r.mb_per_sec, r.records_per_sync, r.p50_us, r.p99_us
                    );
                }
            }
            let (gb_per_sec, _) = recovery_scan_rate().await;
            println!("recovery scan rate: {gb_per_sec:.2} GB/s");
        })
        .expect("executor")
        .join()
        .expect("bench");
}
