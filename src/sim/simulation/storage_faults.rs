//! Storage faults on one node's disk (a minority: the fault model Quarry promises to
//! survive), drawn from their own random stream so a seed's other faults stay where
//! they were:
//!
//! - a flipped bit in the last flush, after its fdatasync returned (the node may have
//!   acknowledged what it held), then a power cut; often the leader of a group goes
//!   down at the same moment, so elections run while the node is behind;
//! - a flipped bit, or a page lost (a write the device acknowledged and dropped), in
//!   an earlier flush, then a power cut: recovery must refuse the log (the node then
//!   stays down until repaired, as an operator would restore the file, 50 to 150
//!   ticks later or when the cluster heals) or find nothing lost;
//! - an fdatasync that fails (EIO): the shard stops, as quarryd exits for systemd to
//!   restart it; what the page cache held is then as uncertain as after a power cut;
//! - a full disk for a while: flushes that need a new segment file wait for space
//!   and the node refuses new writes meanwhile.
//!
//! Whatever recovery makes of it, the checks hold it to the same bar: nothing a
//! message vouched for is lost unless a storage fault struck, and a node that lost
//! committed entries it acknowledged does not vote or campaign until it has them again.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{trace_on, Simulation, Stream, UNITS_PER_TICK};

/// Which node's disk misbehaves and how often, drawn per seed.
#[derive(Clone, Debug)]
pub struct StorageProfile {
    pub faulty_node: Option<usize>,
    pub fault_per_mille: u32,
    /// Of the faults in the last flush, the share that also takes a leader down.
    pub leader_down_per_mille: u32,
}

impl StorageProfile {
    pub fn draw(rng: &mut ChaCha8Rng, voters: usize) -> StorageProfile {
        // (Draws only ever get appended here, so a seed's earlier draws stay put.)
        StorageProfile {
            faulty_node: rng.random_bool(0.5).then(|| rng.random_range(0..voters)),
            fault_per_mille: rng.random_range(1..=15),
            leader_down_per_mille: rng.random_range(0..=1000),
        }
    }
}

/// The storage faults' own random stream for `seed`.
pub fn storage_rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed.rotate_left(29) ^ 0x5354_4f52_4147_4521)
}

impl Simulation {
    pub(super) fn inject_storage_fault(&mut self) -> Result<(), String> {
        let Some(i) = self.storage.faulty_node else { return Ok(()) };
        if self.disk_full_until.is_some_and(|until| self.now >= until) {
            self.free_disk_space();
        }
        if self.storage_rng.random_range(0..1000) >= self.storage.fault_per_mille || self.nodes[i].shard.is_none() {
            return Ok(());
        }
        match self.storage_rng.random_range(0..5) {
            4 if self.disk_full_until.is_none() => {
                let ticks = self.storage_rng.random_range(10..=80);
                self.disk_full_until = Some(self.now + ticks * UNITS_PER_TICK);
                self.nodes[i].set_disk_full(true);
                self.report.disks_full += 1;
                Ok(())
            }
            4 => Ok(()),
            0 => self.damage_last_flush(i),
            1 => self.damage_earlier_flush(i, false),
            2 => self.damage_earlier_flush(i, true),
            _ => {
                self.nodes[i].fail_next_fdatasync = true;
                Ok(())
            }
        }
    }

    /// The faulty node's disk has room again: its waiting flush goes out on its next
    /// turn (at its next tick at the latest).
    pub(super) fn free_disk_space(&mut self) {
        if let (Some(i), Some(_)) = (self.storage.faulty_node, self.disk_full_until.take()) {
            self.nodes[i].set_disk_full(false);
        }
    }

    /// Flips a bit in the node's last completed flush and cuts its power.
    fn damage_last_flush(&mut self, i: usize) -> Result<(), String> {
        let Some((path, offset, len)) = self.nodes[i].flushes_done.back().cloned() else { return Ok(()) };
        if self.nodes[i].flush.is_some() || len == 0 || !path.exists() {
            return Ok(()); // A later write is under way: not the last flush.
        }
        let at = offset + self.storage_rng.random_range(0..len as u64);
        let bit = self.storage_rng.random_range(0..8);
        self.nodes[i].damage_undo.push((path.clone(), at, read_at(&path, at, 1)?));
        flip_bit(&path, at, bit)?;
        self.report.storage_faults += 1;
        self.nodes[i].storage_fault = true;
        if trace_on() {
            eprintln!(
                "t={} node {}: bit flipped in its last flush at {}:{at}",
                self.now,
                self.nodes[i].id,
                path.display()
            );
        }
        let leader_down = self.storage_rng.random_range(0..1000) < self.storage.leader_down_per_mille;
        self.crash_node(i, Stream::Storage)?;
        if leader_down {
            let group = self.storage_rng.random_range(0..self.profile.groups);
            if let Some(leader) = self.leader_index(group).filter(|&l| l != i) {
                self.crash_node(leader, Stream::Storage)?;
            }
        }
        Ok(())
    }

    /// Flips a bit in, or loses a page of, an earlier flush, and cuts the power.
    fn damage_earlier_flush(&mut self, i: usize, lose_page: bool) -> Result<(), String> {
        let done = &self.nodes[i].flushes_done;
        if done.len() < 2 {
            return Ok(());
        }
        let earlier: Vec<_> = done.iter().take(done.len() - 1).cloned().collect();
        let (path, offset, len) = earlier.choose(&mut self.storage_rng).expect("not empty").clone();
        if len == 0 || !path.exists() {
            return Ok(()); // Nothing written there, or the segment was since deleted.
        }
        let at = if lose_page {
            let at = offset + self.storage_rng.random_range(0..(len as u64).div_ceil(4096)) * 4096;
            self.nodes[i].damage_undo.push((path.clone(), at, read_at(&path, at, 4096)?));
            write_at(&path, at, &[0u8; 4096])?;
            at
        } else {
            let at = offset + self.storage_rng.random_range(0..len as u64);
            let bit = self.storage_rng.random_range(0..8);
            self.nodes[i].damage_undo.push((path.clone(), at, read_at(&path, at, 1)?));
            flip_bit(&path, at, bit)?;
            at
        };
        if trace_on() {
            let what = if lose_page { "page lost" } else { "bit flipped" };
            eprintln!(
                "t={} node {}: {what} in an earlier flush at {}:{at}",
                self.now,
                self.nodes[i].id,
                path.display()
            );
        }
        self.report.storage_faults += 1;
        self.nodes[i].storage_fault = true;
        self.crash_node(i, Stream::Storage)
    }

    /// The shard of node `i` failed. A failure the simulator caused (an fdatasync made
    /// to fail) stops the node for a restart, as quarryd exits for systemd to restart
    /// it; any other is a bug.
    pub(super) fn shard_failed(&mut self, i: usize, reason: String) -> Result<(), String> {
        if !self.nodes[i].fdatasync_failing {
            return Err(format!("node {}: shard failed: {reason}", self.nodes[i].id));
        }
        if trace_on() {
            eprintln!("t={} node {}: shard stopped: {reason}", self.now, self.nodes[i].id);
        }
        self.report.fdatasync_failures += 1;
        self.crash_node(i, Stream::Storage)
    }

    /// A node whose recovery refused its log after a storage fault stays down until an
    /// operator has repaired it (50 to 150 ticks, or the cluster heals); the refusal
    /// is right (damage to acknowledged data must never pass silently), and a refusal
    /// without a storage fault is a bug.
    pub(super) fn recovery_refused(&mut self, i: usize, reason: String) -> Result<(), String> {
        if !self.nodes[i].storage_fault {
            return Err(reason);
        }
        if trace_on() {
            eprintln!("t={} {reason}: the node stays down until repaired", self.now);
        }
        self.nodes[i].refused = true;
        self.report.nodes_refused += 1;
        let repair_ticks = self.storage_rng.random_range(50..=150);
        self.restarts.insert(i, self.now + repair_ticks * UNITS_PER_TICK);
        Ok(())
    }

    /// Puts back the bytes the storage faults overwrote on node `i` (newest first), as
    /// an operator restoring the damaged file would, so that it can start again.
    pub(super) fn repair(&mut self, i: usize) -> Result<(), String> {
        let node = &mut self.nodes[i];
        for (path, at, bytes) in node.damage_undo.drain(..).rev() {
            write_at(&path, at, &bytes)?;
        }
        node.refused = false;
        node.storage_fault = false;
        Ok(())
    }

    /// At healing, every node down with a damaged log is repaired.
    pub(super) fn repair_damaged_nodes(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            if self.nodes[i].shard.is_none() && self.nodes[i].storage_fault {
                self.repair(i)?;
            }
        }
        Ok(())
    }
}

fn flip_bit(path: &std::path::Path, at: u64, bit: u8) -> Result<(), String> {
    let mut byte = [0u8];
    let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    file.read_exact_at(&mut byte, at).map_err(|e| format!("{}: {e}", path.display()))?;
    byte[0] ^= 1 << bit;
    file.write_all_at(&byte, at).map_err(|e| format!("{}: {e}", path.display()))
}

fn read_at(path: &std::path::Path, at: u64, len: usize) -> Result<Vec<u8>, String> {
    let mut bytes = vec![0u8; len];
    let file = OpenOptions::new().read(true).open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    file.read_exact_at(&mut bytes, at).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(bytes)
}

fn write_at(path: &std::path::Path, at: u64, bytes: &[u8]) -> Result<(), String> {
    let file = OpenOptions::new().write(true).open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all_at(bytes, at).map_err(|e| format!("{}: {e}", path.display()))
}
