//! A shard's snapshot files are written on a thread of their own, so a shard turn
//! pays only for copying the state machine's image, not for writing and syncing it.

use std::collections::BTreeSet;
use std::thread::JoinHandle;

use bytes::Bytes;

use super::store::FileWriteJob;
use super::{Manifest, SnapshotError};
use crate::log::GroupId;

/// Images a shard may have waiting to be written (each held in memory until then).
pub const WRITES_IN_FLIGHT_MAX: usize = 4;

pub type Written = (FileWriteJob, Result<Manifest, SnapshotError>);

pub struct SnapshotWriter {
    jobs: Option<flume::Sender<(FileWriteJob, Bytes)>>,
    done: flume::Receiver<Written>,
    in_flight: BTreeSet<GroupId>,
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
        Ok(SnapshotWriter { jobs: Some(jobs), done, in_flight: BTreeSet::new(), thread: Some(thread) })
    }

    /// Whether another write may start now, for `group` (one per group at a time).
    pub fn can_take(&self, group: GroupId) -> bool {
        self.in_flight.len() < WRITES_IN_FLIGHT_MAX && !self.in_flight.contains(&group)
    }

    pub fn submit(&mut self, job: FileWriteJob, image: Bytes) {
        debug_assert!(self.can_take(job.group));
        self.in_flight.insert(job.group);
        if let Some(jobs) = &self.jobs {
            // Cannot be full: at most WRITES_IN_FLIGHT_MAX jobs are in flight.
            let _ = jobs.try_send((job, image));
        }
    }

    /// Writes finished since the last call.
    pub fn finished(&mut self) -> Vec<Written> {
        let done: Vec<Written> = self.done.try_iter().collect();
        for (job, _) in &done {
            self.in_flight.remove(&job.group);
        }
        done
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
