//! `quarryctl snapshot restore`: turns a backup into a new node's data dir. Every node
//! of the new cluster is restored from the same backup with its own id; each group
//! starts from its image, with the new cluster's members as voters, at the image's
//! index and term. The old cluster's member registry is dropped from the images.

use std::cell::RefCell;
use std::rc::Rc;

use crate::log::io::{flush_one, SegmentWriter};
use crate::log::{GroupId, LogStore, ShardLog};
use crate::raft::{ConfState, HardState, SnapshotMeta};
use crate::snapshot::backup::Backup;
use crate::snapshot::SnapshotStore;
use crate::state::{BuiltinState, StateMachine};

use super::members::SYSTEM_KEY_PREFIX;
use super::{identity, shard_config, NodeConfig};

/// Writes `config.data_dir` from `backup`. The data dir must not exist or be empty;
/// `config.groups` must be the backup's.
pub fn restore(config: &NodeConfig, backup: Backup) -> Result<(), String> {
    write_data_dir(config, backup, |_, _| {})
}

/// As [`restore`]; `adjust` may change each group's state once the old cluster's
/// records are dropped (`--force-new-cluster` writes its registry so).
pub(super) fn write_data_dir(
    config: &NodeConfig,
    backup: Backup,
    adjust: impl Fn(GroupId, &mut BuiltinState),
) -> Result<(), String> {
    if backup.group_count() != config.groups {
        return Err(format!("the backup holds {} groups, not {}", backup.group_count(), config.groups));
    }
    let dir = &config.data_dir;
    if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(format!("data dir {} is not empty; restore into a new one", dir.display()));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let voters = ConfState::new(config.members.keys().copied());
    let mut images = Vec::new();
    for (group, (manifest, image)) in backup.groups {
        let mut state = BuiltinState::default();
        state.restore(image).map_err(|e| format!("group {group}: image unreadable: {e}"))?;
        state.remove_prefix(SYSTEM_KEY_PREFIX);
        adjust(group, &mut state);
        let meta = SnapshotMeta { conf_state: voters.clone(), ..manifest.meta };
        images.push((group, meta, state.snapshot()));
    }
    let shards: Vec<_> = (0..config.shards).map(|i| shard_config(config, i, false)).collect();
    // The shard log writes through glommio (io_uring), as quarryd does.
    let written = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            for shard in shards {
                let log = Rc::new(RefCell::new(ShardLog::open(shard.log.clone()).map_err(|e| e.to_string())?));
                let mut snapshots = SnapshotStore::open(&shard.snapshot_dir).map_err(|e| e.to_string())?;
                for (group, meta, image) in images.iter().filter(|(g, _, _)| shard.groups.contains(g)) {
                    snapshots.save(*group, meta, image).map_err(|e| e.to_string())?;
                    let hard_state = HardState { term: meta.term, vote: None, commit: meta.index };
                    let mut log = log.borrow_mut();
                    log.install_snapshot(*group, meta.clone()).map_err(|e| e.to_string())?;
                    log.set_hard_state(*group, hard_state).map_err(|e| e.to_string())?;
                }
                let mut writer = SegmentWriter::default();
                while flush_one(&log, &mut writer).await.map_err(|e| e.to_string())?.is_some() {}
            }
            Ok::<(), String>(())
        })
        .map_err(|e| format!("cannot start the restore thread: {e}"))?
        .join()
        .map_err(|e| format!("restore thread failed: {e}"))?;
    written?;
    identity::write(dir, config)
}
