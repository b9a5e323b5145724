//! A shard's snapshot files are written on a thread of their own, so a shard turn
//! pays only for copying the state machine's image, not for writing and syncing it.

use std::thread::JoinHandle;

use bytes::Bytes;

use super::store::FileWriteJob;
use super::{Manifest, SnapshotError};

/// Images a shard may have waiting to be written (each held in memory until then).
pub const WRITES_IN_FLIGHT_MAX: usize = 4;

pub type Written = (FileWriteJob, Result<Manifest, SnapshotError>);

pub struct SnapshotWriter {
    jobs: Option<flume::Sender<(FileWriteJob, Bytes)>>,
    done: flume::Receiver<Written>,
    thread: Option<JoinHandle<()>>,
}

impl SnapshotWriter {
    pub fn start(name: String) -> std::io::Result<SnapshotWriter> {
        let (jobs, queue) = flume::bounded::<(FileWriteJob, Bytes)>(WRITES_IN_FLIGHT_MAX);
        let (report, done) = flume::bounded(WRITES_IN_FLIGHT_MAX);
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            for (job, image) in queue.iter() {
                let result = job.write(&image);
                if report.send((job, result)).is_err() {
                    return;
                }
            }
        })?;
        Ok(SnapshotWriter { jobs: Some(jobs), done, thread: Some(thread) })
    }

    /// Queues a write. The shard hands out at most `WRITES_IN_FLIGHT_MAX` at once
    /// (it counts them until they are reported back), so the queue cannot be full.
    pub fn submit(&mut self, job: FileWriteJob, image: Bytes) {
        if let Some(jobs) = &self.jobs {
            let sent = jobs.try_send((job, image));
            assert!(sent.is_ok(), "more snapshot writes in flight than WRITES_IN_FLIGHT_MAX");
        }
    }

    /// Writes finished since the last call.
    pub fn finished(&mut self) -> Vec<Written> {
        self.done.try_iter().collect()
    }
}

impl Drop for SnapshotWriter {
    /// Lets the writes under way finish, so a reopened shard never races them.
    fn drop(&mut self) {
        self.jobs = None;
        while self.done.recv().is_ok() {}
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
