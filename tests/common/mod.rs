//! Helpers shared by the log tests.
#![allow(dead_code)]

use std::fmt::Write;
use std::future::Future;
use std::path::Path;

use bytes::Bytes;
use quarry::log::{LogStore, ShardLogConfig};
use quarry::raft::{Entry, EntryPayload, Index, Term};

pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        TempDir(tempfile::Builder::new().prefix(&format!("quarry-{label}-")).tempdir().expect("temp dir"))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

pub fn entry(index: Index, term: Term, tag: u8) -> Entry {
    Entry { index, term, payload: EntryPayload::Normal(Bytes::from(vec![tag; 16])) }
}

/// Tiny segments, so tests roll, seal and release segments often.
pub fn small_config(dir: &Path) -> ShardLogConfig {
    ShardLogConfig { segment_bytes: 64 << 10, free_segments_max: 2, ..ShardLogConfig::new(dir) }
}

/// Runs `f` on a glommio executor thread and returns its result.
pub fn run_glommio<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    glommio::LocalExecutorBuilder::default().spawn(f).expect("executor starts").join().expect("executor finishes")
}

/// Everything a store answers about every group it knows, as text to compare.
pub fn dump(store: &dyn LogStore) -> String {
    let mut out = String::new();
    for (&group, log) in &store.index().groups {
        let (first, last) = (store.first_index(group), store.last_index(group));
        let _ = writeln!(
            out,
            "group {group}: {:?} {:?} [{first}, {last}]",
            store.hard_state(group),
            store.snapshot_meta(group)
        );
        let _ = writeln!(out, "  base {}", log.entries_base);
        if last >= first {
            for e in store.entries(group, first, last + 1, u64::MAX).expect("readable") {
                let _ = writeln!(out, "  {e:?}");
            }
        }
    }
    out
}
