//! Protocol-aware recovery, the shard's part. When the log's recovery cut damage from
//! its last flush (`ShardLog::recovered_damage`), this replica may have lost entries
//! it acknowledged, in any of its groups: every group abstains from elections until it
//! has caught up with its leader (`raft::recovery`). The decision must outlive a
//! restart, because the first new flush overwrites the evidence: a marker file, made
//! durable before the shard writes anything, keeps the groups abstaining across
//! restarts until every one of them has caught up.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{GroupId, Notice, Shard};
use crate::log::{LogError, LogStore, ShardLog};
use crate::state::StateMachine;

const MARKER_FILE: &str = "ABSTAINING";

pub(super) fn marker_path(log_dir: &Path) -> PathBuf {
    log_dir.join(MARKER_FILE)
}

/// Records `reason` in the marker file, durably (file and directory entry).
pub(super) fn persist_marker(path: &Path, reason: &str) -> Result<(), LogError> {
    let io = |e| LogError::io(path, e);
    let mut file = fs::File::create(path).map_err(io)?;
    writeln!(file, "{reason}").map_err(io)?;
    file.sync_all().map_err(io)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| LogError::io(dir, e))
}

/// After damage was cut from the last flush, a group's commit index may lie beyond
/// its log: the cut can take a snapshot marker whose entries' segment was released
/// once the marker was durable (the simulator's seed 128147: commit 2, log empty).
/// The commit index need not be durable — the leader tells it again — so it is
/// lowered to what the log holds; the group abstains until caught up (what it lost
/// may include entries it acknowledged).
pub(super) fn clamp_commit_to_log(log: &mut ShardLog, groups: &[GroupId]) -> Result<(), LogError> {
    for &group in groups {
        let mut hard_state = log.hard_state(group);
        let last = log.last_index(group);
        if hard_state.commit > last {
            hard_state.commit = last;
            log.set_hard_state(group, hard_state)?;
        }
    }
    Ok(())
}

impl<S: StateMachine + Default> Shard<S> {
    /// Once every group has caught up, the marker goes (removing it need not be
    /// durable: a crash that brings it back only makes the groups abstain again).
    pub(super) fn end_abstention_if_caught_up(&mut self) {
        let Some(marker) = &self.abstention_marker else { return };
        if self.groups.values().any(|g| g.raft.is_abstaining()) {
            return;
        }
        let notice = match fs::remove_file(marker) {
            Ok(()) => format!("{}: every group caught up with its leader; voting again", marker.display()),
            Err(e) => format!("{}: not removed: {e} (the groups will abstain again after a restart)", marker.display()),
        };
        self.notices.push(Notice::info(notice));
        self.abstention_marker = None;
    }
}
