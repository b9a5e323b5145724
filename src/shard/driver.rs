//! quarryd's host for a shard: glommio writes and syncs the log through io_uring and a
//! thread of its own writes snapshot files. Everything the shard asks for is carried
//! out here and nowhere else.

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use super::{Shard, ShardConfig, ShardError, Staged, TurnStats};
use crate::log::io::{GlommioFiles, SegmentWriter};
use crate::log::LogError;
use crate::snapshot::writer::SnapshotWriter;
use crate::state::StateMachine;

/// How often a flush waiting for disk space is tried again; the shard keeps serving
/// (reads, Raft as a follower) meanwhile and refuses new writes.
const NO_SPACE_RETRY: Duration = Duration::from_millis(250);

/// A shard with its I/O: dereferences to the [`Shard`] for inputs and outputs.
pub struct LocalShard<S: StateMachine + Default> {
    shard: Shard<S>,
    writer: SegmentWriter<GlommioFiles>,
    /// Turns staged but not yet durable (the disk is full), folded into one.
    waiting: Option<Staged>,
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
            writer: SegmentWriter::default(),
            waiting: None,
            retry_no_space_at: None,
            snapshot_writer,
        })
    }

    /// Stages a turn (see [`Shard::stage`]), after handing the shard the snapshot
    /// files written since the last one.
    pub fn stage(&mut self) -> Result<Staged, ShardError> {
        for (job, result) in self.snapshot_writer.finished() {
            self.shard.snapshot_written(job, result);
        }
        let staged = self.shard.stage()?;
        log_notices(self.shard.node(), &mut self.shard);
        for write in self.shard.take_snapshot_writes() {
            self.snapshot_writer.submit(write.job, write.image);
        }
        Ok(staged)
    }

    /// Makes a staged turn durable — one write and one fdatasync per flush job, for
    /// every group — and acknowledges it. When the disk is full, the turn waits
    /// (folded with the next ones) and the flush is tried again every
    /// `NO_SPACE_RETRY`; nothing is lost and the shard stays up.
    pub async fn make_durable(&mut self, staged: Staged) -> Result<TurnStats, ShardError> {
        match &mut self.waiting {
            Some(waiting) => waiting.absorb(staged),
            None => self.waiting = Some(staged),
        }
        let mut fdatasyncs = 0;
        while !self.waiting.as_ref().is_some_and(|w| self.shard.is_durable(w)) {
            if self.retry_no_space_at.is_some_and(|at| Instant::now() < at) {
                return Ok(TurnStats { fdatasyncs, ..TurnStats::default() });
            }
            let Some(job) = self.shard.begin_flush()? else {
                unreachable!("writes staged but no flush to make them durable");
            };
            let result = self.writer.execute(&job).await;
            self.shard.finish_flush(job, result)?;
            if let Some(reason) = self.shard.disk_full() {
                if self.retry_no_space_at.is_none() {
                    eprintln!("node {}: {reason}", self.shard.node());
                }
                self.retry_no_space_at = Some(Instant::now() + NO_SPACE_RETRY);
                return Ok(TurnStats { fdatasyncs, ..TurnStats::default() });
            }
            if self.retry_no_space_at.take().is_some() {
                eprintln!("node {}: disk space is back; writes resume", self.shard.node());
            }
            fdatasyncs += 1;
        }
        let staged = self.waiting.take().expect("checked in the loop");
        let mut stats = self.shard.on_durable(staged);
        stats.fdatasyncs = fdatasyncs;
        Ok(stats)
    }

    /// One whole turn: stage, then make durable.
    pub async fn turn(&mut self) -> Result<TurnStats, ShardError> {
        let staged = self.stage()?;
        self.make_durable(staged).await
    }
}

fn log_notices<S: StateMachine + Default>(node: u64, shard: &mut Shard<S>) {
    for notice in shard.take_notices() {
        eprintln!("node {node}: {notice}");
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
