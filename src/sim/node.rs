//! One simulated server: the production shard (`Shard<BuiltinState>`) over the real
//! shard log and snapshot files, on a disk that loses whatever no completed fdatasync
//! covers. The simulator decides when each fdatasync and snapshot file completes and
//! when the power goes.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;

use rand_chacha::ChaCha8Rng;

use crate::group::GroupId;
use crate::log::fault::{CrashDamage, FaultyDisk};
use crate::log::io::SegmentWriter;
use crate::log::{FlushJob, LogError};
use crate::raft::{NodeId, Storage};
use crate::shard::{Shard, ShardConfig, ShardError, SnapshotWrite, Staged};
use crate::state::BuiltinState;

use super::hashes::LogHashes;
use super::invariants::Durable;

/// A write the shard staged, as far as durability checks care.
#[derive(Clone, Copy, Debug)]
pub enum DurableChange {
    HardState(crate::raft::HardState),
    /// The log now ends here (entries appended, or a snapshot installed).
    LastIndex(crate::raft::Index),
}

pub struct SimNode {
    pub id: NodeId,
    pub config: ShardConfig,
    /// `None` while crashed.
    pub shard: Option<Shard<BuiltinState>>,
    writer: SegmentWriter<FaultyDisk>,
    /// Turns staged, waiting for their writes to be durable, oldest first.
    pub staged: VecDeque<Staged>,
    /// The flush whose fdatasyncs are under way, and how its writes went.
    pub flush: Option<(FlushJob, Result<(), LogError>)>,
    /// Snapshot files being written, by the simulator's event sequence number.
    pub snapshot_writes: BTreeMap<u64, SnapshotWrite>,
    /// Bumped at each restart so events of an earlier life are ignored.
    pub incarnation: u64,
    pub hashes: BTreeMap<GroupId, LogHashes>,
    /// What a crash now would leave of each group.
    pub durable: BTreeMap<GroupId, Durable>,
    /// Writes staged but not yet durable: (staged ticket, group, change), oldest first.
    unsynced: VecDeque<(u64, GroupId, DurableChange)>,
    /// Where the latest completed flushes went (file, offset, bytes of batches), newest last:
    /// where storage faults strike.
    pub flushes_done: VecDeque<(PathBuf, u64, usize)>,
    /// A storage fault struck this node's disk since it last started: recovery may
    /// refuse the log, or cut entries the node acknowledged (and must then abstain).
    pub storage_fault: bool,
    /// Recovery refused the damaged log: the node stays down until the cluster heals,
    /// when the damage is repaired (as an operator would restore the file).
    pub refused: bool,
    /// What the storage faults since the node last started overwrote: (file, offset,
    /// the bytes that were there), oldest first.
    pub damage_undo: Vec<(PathBuf, u64, Vec<u8>)>,
    /// The next flush's fdatasync fails (EIO).
    pub fail_next_fdatasync: bool,
    /// The flush under way is the one whose fdatasync was made to fail.
    pub fdatasync_failing: bool,
    /// Flushes that found the disk full (and waited for space).
    pub flushes_without_space: u64,
    /// The shard's sleep counters, summed over the node's lives.
    pub groups_slept: u64,
    pub liveness_wakes: u64,
}

/// Completed flushes remembered per node.
const FLUSHES_REMEMBERED: usize = 16;

impl SimNode {
    pub fn new(id: NodeId, config: ShardConfig) -> SimNode {
        SimNode {
            id,
            config,
            shard: None,
            writer: SegmentWriter::new(FaultyDisk::deferred()),
            staged: VecDeque::new(),
            flush: None,
            snapshot_writes: BTreeMap::new(),
            incarnation: 0,
            hashes: BTreeMap::new(),
            durable: BTreeMap::new(),
            unsynced: VecDeque::new(),
            flushes_done: VecDeque::new(),
            storage_fault: false,
            refused: false,
            damage_undo: Vec::new(),
            fail_next_fdatasync: false,
            fdatasync_failing: false,
            flushes_without_space: 0,
            groups_slept: 0,
            liveness_wakes: 0,
        }
    }

    pub fn shard(&mut self) -> &mut Shard<BuiltinState> {
        self.shard.as_mut().expect("node is running")
    }

    /// The disk fills up (writes that need a new segment file wait) or frees up.
    pub fn set_disk_full(&mut self, full: bool) {
        self.writer.files_mut().no_space = full;
    }

    #[cfg(test)]
    pub fn disk(&mut self) -> &mut FaultyDisk {
        self.writer.files_mut()
    }

    /// Starts the node from its disk; `base_hash` gives the committed prefix hash at
    /// each group's snapshot index.
    pub fn start(&mut self, seed: u64, base_hash: impl Fn(GroupId, u64) -> Option<u64>) -> Result<(), String> {
        let config =
            ShardConfig { raft: crate::raft::Config { seed, ..self.config.raft.clone() }, ..self.config.clone() };
        let mut shard =
            Shard::open(config).map_err(|e| format!("node {} failed to recover its shard: {e}", self.id))?;
        shard.record_trace();
        self.hashes.clear();
        self.durable.clear();
        self.unsynced.clear();
        // Storage faults strike this life's flushes: one of an earlier life may have
        // become the last valid one after a damaged tail was cut, and losing it then
        // is a second fault on the same data (two copies of a vote, say).
        self.flushes_done.clear();
        self.damage_undo.clear();
        for &group in &self.config.groups {
            let raft = shard.raft(group).expect("hosted group");
            let storage = raft.storage();
            let (hard_state, _) = storage.initial_state();
            self.durable.insert(group, Durable { hard_state, last_index: storage.last_index() });
            let base = storage.first_index() - 1;
            let hash = base_hash(group, base)
                .ok_or_else(|| format!("node {} group {group} recovered a snapshot at uncommitted {base}", self.id))?;
            let mut hashes = LogHashes::default();
            hashes.reset(base, hash);
            let entries = storage
                .entries(base + 1, storage.last_index() + 1, u64::MAX)
                .map_err(|e| format!("node {} group {group}: recovered log unreadable: {e:?}", self.id))?;
            hashes.append(&entries)?;
            self.hashes.insert(group, hashes);
        }
        self.shard = Some(shard);
        self.incarnation += 1;
        Ok(())
    }

    /// Records a write staged with `ticket`.
    pub fn staged(&mut self, ticket: u64, group: GroupId, change: DurableChange) {
        self.unsynced.push_back((ticket, group, change));
    }

    /// Moves the writes the log has made durable into `durable`.
    pub fn settle(&mut self) {
        let Some(shard) = &self.shard else { return };
        let durable_ticket = shard.durable_ticket();
        while let Some(&(ticket, group, change)) = self.unsynced.front() {
            if ticket > durable_ticket {
                break;
            }
            self.unsynced.pop_front();
            let durable = self.durable.get_mut(&group).expect("hosted group");
            match change {
                DurableChange::HardState(hard_state) => durable.hard_state = hard_state,
                DurableChange::LastIndex(index) => durable.last_index = index,
            }
        }
    }

    /// A power cut: everything in memory goes, and the disk keeps only what was synced
    /// (plus whatever of the unsynced writes happens to have reached it).
    pub fn crash(&mut self, rng: &mut ChaCha8Rng) -> Result<CrashDamage, String> {
        self.count_sleeps();
        self.shard = None;
        self.fdatasync_failing = false;
        self.unsynced.clear();
        self.staged.clear();
        self.flush = None;
        self.snapshot_writes.clear();
        self.writer.forget_active();
        self.writer.files_mut().crash(rng).map_err(|e| format!("simulated disk: {e}"))
    }

    /// Adds the running shard's sleep counters to the node's (and resets them).
    pub fn count_sleeps(&mut self) {
        if let Some(shard) = &mut self.shard {
            self.groups_slept += std::mem::take(&mut shard.groups_slept);
            self.liveness_wakes += std::mem::take(&mut shard.liveness_wakes);
        }
    }

    /// Starts the next flush if none is under way: its writes go to the (volatile)
    /// disk now, its fdatasyncs complete when the simulator says.
    pub fn begin_flush(&mut self) -> Result<bool, ShardError> {
        if self.flush.is_some() || (self.shard().disk_full().is_some() && self.writer.files_mut().no_space) {
            return Ok(false);
        }
        let Some(job) = self.shard().begin_flush()? else {
            return Ok(false);
        };
        let mut result = futures_lite::future::block_on(self.writer.execute(&job));
        if let Err(LogError::NoSpace { .. }) = result {
            self.flushes_without_space += 1;
        }
        if std::mem::take(&mut self.fail_next_fdatasync) && result.is_ok() {
            self.fdatasync_failing = true;
            result = Err(LogError::Io { path: job.path.clone(), reason: "fdatasync: EIO (injected)".into() });
        }
        self.flush = Some((job, result));
        Ok(true)
    }

    /// The flush's fdatasyncs complete (or fail: then its writes stay volatile).
    pub fn finish_flush(&mut self) -> Result<(), ShardError> {
        let (job, result) = self.flush.take().expect("a flush is under way");
        if result.is_ok() {
            self.writer.files_mut().complete_fdatasyncs();
            if self.flushes_done.len() >= FLUSHES_REMEMBERED {
                self.flushes_done.pop_front();
            }
            // Bytes up to the last non-zero one: the batches, not the page padding.
            let used = job.bytes.iter().rposition(|&b| b != 0).map_or(0, |last| last + 1);
            self.flushes_done.push_back((job.path.clone(), job.offset, used));
        }
        self.shard().finish_flush(job, result)
    }
}
