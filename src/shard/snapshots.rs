//! Snapshots of a shard's groups: which are due, the file writes the host carries
//! out, compaction once a file is durable, and installing a leader's image.

use std::cell::RefCell;

use bytes::Bytes;

use super::{Group, GroupId, Shard, ShardError};
use crate::log::{LogError, LogStore, ShardLog};
use crate::raft::{Index, Snapshot, SnapshotMeta};
use crate::snapshot::store::FileWriteJob;
use crate::snapshot::writer::WRITES_IN_FLIGHT_MAX;
use crate::snapshot::{Manifest, SnapshotError, SnapshotStore};
use crate::state::StateMachine;

/// Sealed log segments a shard holds before it snapshots the groups pinning the
/// oldest one, whatever their distance: bounds the log's disk use under skewed load.
pub const SEALED_SEGMENTS_MAX: usize = 4;

/// Ticks a group waits after a snapshot file failed (a full disk, say) before the
/// next try: one notice and one image copy per try, not one per turn.
const SNAPSHOT_RETRY_TICKS: u64 = 100;

/// A snapshot file for the host to write (`job.write(&image)`), off the shard's
/// thread; the host reports the result with `Shard::snapshot_written`.
pub struct SnapshotWrite {
    pub job: FileWriteJob,
    pub image: Bytes,
}

impl<S: StateMachine + Default> Shard<S> {
    /// Snapshot files to write now. At most `WRITES_IN_FLIGHT_MAX` are out at once,
    /// one per group.
    pub fn take_snapshot_writes(&mut self) -> Vec<SnapshotWrite> {
        std::mem::take(&mut self.snapshot_writes)
    }

    /// A snapshot file from `take_snapshot_writes` is written (durably) or failed;
    /// the next turn records it in the log.
    pub fn snapshot_written(&mut self, job: FileWriteJob, result: Result<Manifest, SnapshotError>) {
        self.snapshot_writes_in_flight.remove(&job.group);
        self.snapshot_writes_done.push((job, result));
    }

    /// Files older than the marker just staged at `index` are deleted once that
    /// marker is durable: until then a crash recovers the marker before it, whose file
    /// must still be there. (Markers of one group may be staged in several turns
    /// before one is durable when the host pipelines its flushes.)
    pub(super) fn release_files_once_durable(&mut self, group: GroupId, index: Index) {
        let ticket = self.log.borrow().staged_ticket();
        self.snapshot_releases.push_back((ticket, group, index));
    }

    /// Deletes the snapshot files whose replacement's marker is now durable.
    pub(super) fn release_durably_replaced_files(&mut self) -> Result<(), ShardError> {
        let durable = self.log.borrow().durable_ticket();
        while let Some(&(ticket, group, index)) = self.snapshot_releases.front() {
            if ticket > durable {
                break;
            }
            self.snapshot_releases.pop_front();
            self.snapshots.borrow_mut().release_before(group, index)?;
        }
        Ok(())
    }

    fn can_write_snapshot(&self, group: GroupId) -> bool {
        let backing_off = self.snapshot_failed_at.get(&group).is_some_and(|&at| self.ticks < at + SNAPSHOT_RETRY_TICKS);
        self.snapshot_writes_in_flight.len() < WRITES_IN_FLIGHT_MAX
            && !self.snapshot_writes_in_flight.contains(&group)
            && !backing_off
    }

    /// Snapshots the groups that applied `snapshot_distance` entries since their last
    /// one, and those pinning the oldest log segment once too many are held; then
    /// releases the segments no group needs.
    ///
    /// Only groups that had a Ready this turn (`busy`) can have newly reached their
    /// distance, so only they and the pinning ones are looked at: a turn costs nothing
    /// per idle group.
    pub(super) fn take_due_snapshots(&mut self, busy: &[GroupId]) -> Result<(), ShardError> {
        let automatic = self.snapshot_distance > 0;
        if !automatic && self.snapshot_requests.is_empty() {
            return Ok(());
        }
        let pinning = {
            let log = self.log.borrow();
            if automatic && log.sealed_segments() > SEALED_SEGMENTS_MAX {
                log.groups_pinning_oldest_segment()
            } else {
                Vec::new()
            }
        };
        let requested: Vec<GroupId> = self.snapshot_requests.keys().copied().collect();
        let mut candidates: Vec<GroupId> = busy.iter().chain(&pinning).chain(&requested).copied().collect();
        candidates.sort_unstable();
        candidates.dedup();
        for group in candidates {
            let Some(g) = self.groups.get(&group) else { continue };
            let base = self.log.borrow().snapshot_meta(group).index;
            let applied = g.state.last_applied();
            let due = (automatic && applied >= base + self.snapshot_distance)
                || (applied > base && (pinning.contains(&group) || requested.contains(&group)));
            if due && self.can_write_snapshot(group) {
                let term =
                    self.log.borrow().term(group, applied).map_err(|_| LogError::Missing { group, index: applied })?;
                // Every committed entry handed out is applied in the same turn, so the
                // core's configuration is the one as of `applied`.
                let meta = SnapshotMeta { index: applied, term, conf_state: g.raft.conf_state().clone() };
                let job = self.snapshots.borrow().file_writer(group, &meta);
                self.snapshot_writes_in_flight.insert(group);
                self.snapshot_writes.push(SnapshotWrite { job, image: g.state.snapshot() });
            }
        }
        Ok(())
    }

    /// Compacts the log of every group whose snapshot file is now durable. The file
    /// the log stood on before is deleted only once the new marker is in the log
    /// (durable by the end of this turn), so a crash always finds a file matching it.
    pub(super) fn finish_snapshot_writes(&mut self) -> Result<(), ShardError> {
        if self.snapshot_writes_done.is_empty() {
            return Ok(());
        }
        for (job, result) in std::mem::take(&mut self.snapshot_writes_done) {
            let (group, meta) = (job.group, job.meta);
            let manifest = match result {
                Ok(manifest) => manifest,
                Err(e) => {
                    // The log keeps its entries; the group tries again after a while.
                    let notice = format!(
                        "snapshot of group {group} at {} not written: {e}; next try in {SNAPSHOT_RETRY_TICKS} ticks",
                        meta.index
                    );
                    self.notices.push(super::Notice::warn(notice));
                    self.snapshot_failed_at.insert(group, self.ticks);
                    continue;
                }
            };
            self.snapshot_failed_at.remove(&group);
            if let Some(waiting) = self.snapshot_requests.get_mut(&group) {
                let (served, still): (Vec<_>, Vec<_>) =
                    std::mem::take(waiting).into_iter().partition(|(covers, _)| *covers <= meta.index);
                *waiting = still;
                for (_, reply) in served {
                    reply.send(Ok(manifest.clone()));
                }
                if waiting.is_empty() {
                    self.snapshot_requests.remove(&group);
                }
            }
            let base = self.log.borrow().snapshot_meta(group).index;
            self.snapshots.borrow_mut().saved(group, &meta);
            if meta.index > base {
                // Entries up to an applied index are committed: never truncated since.
                let index = meta.index;
                self.log.borrow_mut().compact(group, meta)?;
                self.release_files_once_durable(group, index);
                self.snapshots_taken += 1;
                let text = format!("group {group}: snapshot taken at index {index}; log compacted up to it");
                self.notices.push(super::Notice::debug(text));
            }
        }
        self.log.borrow_mut().release_unneeded_segments()?;
        Ok(())
    }
}

pub(super) fn restore<S: StateMachine>(
    group: GroupId,
    state: &mut S,
    index: Index,
    image: Bytes,
) -> Result<(), ShardError> {
    let failed = |reason: String| ShardError::Restore { group, index, reason };
    state.restore(image).map_err(|e| failed(e.to_string()))?;
    if state.last_applied() != index {
        return Err(failed(format!("the image is of index {}", state.last_applied())));
    }
    Ok(())
}

/// Installs an image the leader sent: the file first (durable), then the state
/// machine, then the log marker that makes the log start after it (the files it
/// replaces go once the marker is durable). NB: the file is written here, on the
/// shard's thread: installs are rare, and the file must be durable before the marker
/// is staged.
pub(super) fn install<S: StateMachine>(
    log: &RefCell<ShardLog>,
    snapshots: &RefCell<SnapshotStore>,
    group: GroupId,
    g: &mut Group<S>,
    snapshot: &Snapshot,
) -> Result<(), ShardError> {
    snapshots.borrow_mut().save(group, &snapshot.meta, &snapshot.data)?;
    restore(group, &mut g.state, snapshot.meta.index, snapshot.data.clone())?;
    log.borrow_mut().install_snapshot(group, snapshot.meta.clone())?;
    Ok(())
}
