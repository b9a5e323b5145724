//! quarryd's host for a shard: glommio writes and syncs the log through io_uring and a
//! thread of its own writes snapshot files. Everything the shard asks for is carried
//! out here and nowhere else.
//!
//! Turns are pipelined: while one flush (a write and its fdatasync) is in flight, the
//! host keeps taking inputs and staging turns — their appends already leave for the
//! followers — and the next flush covers everything staged meanwhile. A request never
//! waits behind a sync it is not part of; turns are acknowledged in order as their
//! writes become durable. The simulator drives the same `Shard` the same way.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use super::{Shard, ShardConfig, ShardError, Staged, TurnStats};
use crate::log::io::{GlommioFiles, SegmentWriter};
use crate::log::{FlushJob, LogError};
use crate::snapshot::writer::SnapshotWriter;
use crate::state::StateMachine;

/// How often a flush waiting for disk space is tried again; the shard keeps serving
/// (reads, Raft as a follower) meanwhile and refuses new writes.
const NO_SPACE_RETRY: Duration = Duration::from_millis(250);

/// Staged turns kept apart while they wait: the one the flush in flight covers and
/// the ones after it. Later turns are folded into the last (acknowledgements are
/// cumulative), so a long wait for disk space grows no queue.
const WAITING_TURNS_MAX: usize = 2;

/// A flush that ended: the writer comes back with the job and its outcome.
pub struct Flushed {
    writer: SegmentWriter<GlommioFiles>,
    job: FlushJob,
    result: Result<(), LogError>,
    /// How long the write and its fdatasync took.
    took: std::time::Duration,
}

/// A shard with its I/O: dereferences to the [`Shard`] for inputs and outputs.
pub struct LocalShard<S: StateMachine + Default> {
    shard: Shard<S>,
    /// The log's writer; the flush in flight holds it.
    writer: Option<SegmentWriter<GlommioFiles>>,
    /// The flush in flight, on its own task so the host takes inputs meanwhile.
    flush: Option<glommio::Task<Flushed>>,
    /// Turns staged but not yet durable, oldest first.
    waiting: VecDeque<Staged>,
    /// While the disk is full: when to try the waiting flush again.
    retry_no_space_at: Option<Instant>,
    // Dropped last: waits for the snapshot files under way.
    snapshot_writer: SnapshotWriter,
}

impl<S: StateMachine + Default> LocalShard<S> {
    pub fn open(config: ShardConfig) -> Result<Self, ShardError> {
        let name = format!("quarry-snap-{}", config.node);
        let snapshot_dir = config.snapshot_dir.clone();
        let node = config.node;
        let mut shard = Shard::open(config)?;
        log_notices(node, &mut shard);
        let snapshot_writer = SnapshotWriter::start(name).map_err(|e| LogError::io(&snapshot_dir, e))?;
        Ok(LocalShard {
            shard,
            writer: Some(SegmentWriter::default()),
            flush: None,
            waiting: VecDeque::new(),
            retry_no_space_at: None,
            snapshot_writer,
        })
    }

    /// Stages a turn (see [`Shard::stage`]), after handing the shard the snapshot
    /// files written since the last one, and starts its flush unless one is in flight.
    /// Returns what turns became durable with it (nothing new needed writing).
    pub fn stage(&mut self) -> Result<TurnStats, ShardError> {
        for (job, result) in self.snapshot_writer.finished() {
            self.shard.snapshot_written(job, result);
        }
        let staged = self.shard.stage()?;
        log_notices(self.shard.node(), &mut self.shard);
        for write in self.shard.take_snapshot_writes() {
            self.snapshot_writer.submit(write.job, write.image);
        }
        self.waiting.push_back(staged);
        while self.waiting.len() > WAITING_TURNS_MAX {
            let later = self.waiting.pop_back().expect("more than one waits");
            self.waiting.back_mut().expect("more than one waits").absorb(later);
        }
        let stats = self.acknowledge_durable();
        self.start_flush()?;
        Ok(stats)
    }

    /// Waits for the flush in flight to end; never ends when none is. Cancel-safe:
    /// the flush stays in flight when this future is dropped.
    pub async fn flushed(&mut self) -> Flushed {
        let Some(flush) = self.flush.as_mut() else { return std::future::pending().await };
        let done = flush.await;
        self.flush = None;
        done
    }

    /// Records a flush's outcome (from [`flushed`](Self::flushed)), acknowledges the
    /// turns it made durable and starts the next flush. When the disk is full, the
    /// turns wait and the flush is tried again every `NO_SPACE_RETRY` (from `stage`
    /// or `retry_flush`); nothing is lost and the shard stays up.
    pub fn on_flushed(&mut self, Flushed { writer, job, result, took }: Flushed) -> Result<TurnStats, ShardError> {
        self.writer = Some(writer);
        self.shard.finish_flush(job, result)?;
        if let Some(reason) = self.shard.disk_full() {
            if self.retry_no_space_at.is_none() {
                tracing::warn!(node = self.shard.node(), "{reason}");
            }
            self.retry_no_space_at = Some(Instant::now() + NO_SPACE_RETRY);
            return Ok(TurnStats::default());
        }
        if self.retry_no_space_at.take().is_some() {
            tracing::info!(node = self.shard.node(), "disk space is back; writes resume");
        }
        let mut stats = self.acknowledge_durable();
        stats.fdatasyncs = 1;
        stats.flush_micros = took.as_micros() as u64;
        self.start_flush()?;
        Ok(stats)
    }

    /// Tries a flush that waits for disk space again, when it is time.
    pub fn retry_flush(&mut self) -> Result<(), ShardError> {
        self.start_flush()
    }

    /// Whether a flush is in flight (one that waits for disk space is not).
    pub fn flush_in_flight(&self) -> bool {
        self.flush.is_some()
    }

    /// Starts the next flush if something is staged, none is in flight and the disk
    /// is not known to be full.
    fn start_flush(&mut self) -> Result<(), ShardError> {
        if self.flush.is_some() || self.retry_no_space_at.is_some_and(|at| Instant::now() < at) {
            return Ok(());
        }
        let Some(job) = self.shard.begin_flush()? else { return Ok(()) };
        let mut writer = self.writer.take().expect("no flush in flight holds the writer");
        self.flush = Some(glommio::spawn_local(async move {
            let started = Instant::now();
            let result = writer.execute(&job).await;
            Flushed { writer, job, result, took: started.elapsed() }
        }));
        Ok(())
    }

    /// Acknowledges, oldest first, every waiting turn whose writes are durable.
    fn acknowledge_durable(&mut self) -> TurnStats {
        let mut stats = TurnStats::default();
        while self.waiting.front().is_some_and(|staged| self.shard.is_durable(staged)) {
            let staged = self.waiting.pop_front().expect("checked");
            stats.add(&self.shard.on_durable(staged));
        }
        stats
    }

    /// One whole turn, for tests and tools: stage, then wait until it is durable (or
    /// the disk is full).
    pub async fn turn(&mut self) -> Result<TurnStats, ShardError> {
        let mut stats = self.stage()?;
        while self.flush_in_flight() {
            let flushed = self.flushed().await;
            stats.add(&self.on_flushed(flushed)?);
        }
        Ok(stats)
    }
}

fn log_notices<S: StateMachine + Default>(node: u64, shard: &mut Shard<S>) {
    for notice in shard.take_notices() {
        match notice.level {
            super::NoticeLevel::Warn => tracing::warn!(node, "{notice}"),
            super::NoticeLevel::Info => tracing::info!(node, "{notice}"),
            super::NoticeLevel::Debug => tracing::debug!(node, "{notice}"),
        }
    }
}

impl<S: StateMachine + Default> Deref for LocalShard<S> {
    type Target = Shard<S>;
    fn deref(&self) -> &Shard<S> {
        &self.shard
    }
}

impl<S: StateMachine + Default> DerefMut for LocalShard<S> {
    fn deref_mut(&mut self) -> &mut Shard<S> {
        &mut self.shard
    }
}
