//! `quarryd --force-new-cluster`: disaster recovery when a majority is lost for good.
//!
//! The survivor's data becomes a new single-member cluster, as etcd's flag of the same
//! name does. Every group's state is rebuilt from its latest snapshot and *every*
//! entry its log holds, committed or not: an acknowledged write reached a majority, so
//! if this node was part of it the write is in its log even when it never learned the
//! write committed. (Writes this node never received are lost with the majority; ones
//! it holds but that were never acknowledged become applied, as their outcome was
//! unknown.) The images are then written as a new data dir whose only voter is this
//! node, with a member registry that names it alone and marks every old member
//! removed (their ids are never reused). The old data dir is kept beside the new one.
//!
//! Steps, each safe to repeat after a crash: the new data dir is written in full under
//! a temporary name; the old one is renamed aside; the new one takes its name.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::log::{GroupId, LogStore, ShardLog};
use crate::raft::{EntryPayload, NodeId, SnapshotMeta};
use crate::snapshot::{Manifest, SnapshotStore};
use crate::state::{BuiltinState, Command, StateMachine};

use super::members::{Member, Registry, REGISTRY_KEY};
use super::{identity, shard_config, NodeConfig};

/// The new data dir's name (after the old one's) while it is written.
const TEMPORARY: &str = "force-new-cluster.tmp";
/// Entry bytes read from a log at once while replaying it.
const REPLAY_CHUNK_BYTES: u64 = 16 << 20;

/// What the recovery found and did, for the operator's log.
#[derive(Debug)]
pub struct Forced {
    pub kept_at: PathBuf,
    /// Entries past a group's known commit index, applied all the same, in all groups.
    pub uncommitted_applied: u64,
    pub removed_members: BTreeSet<NodeId>,
}

/// What `--force-new-cluster` did.
#[derive(Debug)]
pub enum ForceOutcome {
    /// The data was already a cluster of this node alone (the flag left on).
    AlreadyAlone,
    /// A recovery interrupted between its two renames was finished.
    Finished,
    Forced(Forced),
}

/// Rewrites `config.data_dir` as a single-member cluster of this node (see the module
/// comment). `config.members` must hold this node's address.
pub fn force_new_cluster(config: &NodeConfig) -> Result<ForceOutcome, String> {
    let data_dir = &config.data_dir;
    let fresh = sibling(data_dir, TEMPORARY);
    if !identity::check(config)? {
        // Interrupted after the old dir was moved aside: the new one is complete
        // (its identity is written last).
        let written = NodeConfig { data_dir: fresh.clone(), ..config.clone() };
        if fresh.exists() && identity::check(&written)? {
            std::fs::rename(&fresh, data_dir)
                .map_err(|e| format!("cannot move {} to {}: {e}", fresh.display(), data_dir.display()))?;
            return Ok(ForceOutcome::Finished);
        }
        return Err(format!("--force-new-cluster needs this node's existing data; {} holds none", data_dir.display()));
    }
    let recovered = read_groups(config)?;
    let alone = crate::raft::ConfState::new([config.node_id]);
    if recovered.values().all(|(meta, _, _)| meta.conf_state == alone) {
        return Ok(ForceOutcome::AlreadyAlone);
    }
    let mut old_members: BTreeSet<NodeId> = config.members.keys().copied().collect();
    for (meta, state, _) in recovered.values() {
        old_members.extend(meta.conf_state.members());
        if let Some(registry) = state.get(REGISTRY_KEY).and_then(|v| Registry::decode(&v.value).ok()) {
            old_members.extend(registry.members.keys());
            old_members.extend(registry.removed);
        }
    }
    old_members.remove(&config.node_id);
    let address = config.members.get(&config.node_id).copied().ok_or("this node is not in --initial-cluster")?;
    let registry = Registry {
        members: BTreeMap::from([(config.node_id, Member { address, voter: true })]),
        change: None,
        removed: old_members.clone(),
    };
    let uncommitted_applied = recovered.values().map(|(_, _, uncommitted)| uncommitted).sum();
    let mut backup = BTreeMap::new();
    for (group, (meta, state, _)) in recovered {
        let image = state.snapshot();
        backup.insert(group, (Manifest::of(group, meta, &image), image));
    }
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh).map_err(|e| format!("cannot clear {}: {e}", fresh.display()))?;
    }
    let mut single = config.clone();
    single.data_dir = fresh.clone();
    single.members = BTreeMap::from([(config.node_id, address)]);
    let group_of_registry = crate::group::group_of_key(REGISTRY_KEY, config.groups);
    super::restore::write_data_dir(&single, crate::snapshot::backup::Backup { groups: backup }, |group, state| {
        if group == group_of_registry {
            state.put_outside_log(REGISTRY_KEY, registry.encode());
        }
    })?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let kept_at = sibling(data_dir, &format!("before-force-new-cluster.{stamp}"));
    std::fs::rename(data_dir, &kept_at)
        .map_err(|e| format!("cannot move {} aside to {}: {e}", data_dir.display(), kept_at.display()))?;
    std::fs::rename(&fresh, data_dir)
        .map_err(|e| format!("cannot move {} to {}: {e}", fresh.display(), data_dir.display()))?;
    Ok(ForceOutcome::Forced(Forced { kept_at, uncommitted_applied, removed_members: old_members }))
}

/// An error when a recovery was cut short between its renames and this start is
/// not finishing it: starting on the empty data dir would found a new cluster.
pub fn refuse_unfinished(config: &NodeConfig) -> Result<(), String> {
    let fresh = sibling(&config.data_dir, TEMPORARY);
    if config.force_new_cluster || !fresh.exists() || identity::check(config)? {
        return Ok(());
    }
    Err(format!(
        "{} holds no data, but an interrupted --force-new-cluster left its new data dir at {}: start again with \
         --force-new-cluster to finish it",
        config.data_dir.display(),
        fresh.display()
    ))
}

/// `dir` with `suffix` after its name, beside it.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir.file_name().map_or_else(|| "data".into(), |n| n.to_string_lossy().into_owned());
    dir.with_file_name(format!("{name}.{suffix}"))
}

/// A group as recovered: its snapshot meta (index and term of its last entry, the
/// configuration the log ends with), its state, and how many entries past its commit
/// index it applied.
type Recovered = (SnapshotMeta, BuiltinState, u64);

/// Every group's state after its snapshot and every entry in its log.
fn read_groups(config: &NodeConfig) -> Result<BTreeMap<GroupId, Recovered>, String> {
    let shards: Vec<_> = (0..config.shards).map(|i| shard_config(config, i, false)).collect();
    // The shard log reads through glommio, as quarryd does.
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let mut groups = BTreeMap::new();
            for shard in shards {
                let log = Rc::new(RefCell::new(ShardLog::open(shard.log.clone()).map_err(|e| e.to_string())?));
                let snapshots = SnapshotStore::open(&shard.snapshot_dir).map_err(|e| e.to_string())?;
                for &group in &shard.groups {
                    let log = log.borrow();
                    let meta = log.snapshot_meta(group);
                    let mut state = BuiltinState::default();
                    let mut conf = meta.conf_state.clone();
                    if meta.index > 0 {
                        let (_, image) = snapshots.load(group, meta.index).map_err(|e| e.to_string())?;
                        state.restore(image).map_err(|e| format!("group {group}: snapshot unreadable: {e}"))?;
                    }
                    let last = log.last_index(group);
                    let mut next = meta.index + 1;
                    while next <= last {
                        let entries = log
                            .entries(group, next, last + 1, REPLAY_CHUNK_BYTES)
                            .map_err(|e| format!("group {group}: entry {next} unreadable: {e:?}"))?;
                        let Some(end) = entries.last().map(|e| e.index) else { break };
                        for entry in entries {
                            if let EntryPayload::ConfChange(change) = &entry.payload {
                                // The configuration as of the last entry, as Raft sees it.
                                conf = crate::raft::apply_conf_change(&conf, change).unwrap_or(conf);
                            }
                            replay(&mut state, entry);
                        }
                        next = end + 1;
                    }
                    let term = log.term(group, last).map_err(|e| format!("group {group}: term of {last}: {e:?}"))?;
                    let uncommitted = last.saturating_sub(log.hard_state(group).commit.max(meta.index));
                    let meta = SnapshotMeta { index: last, term, conf_state: conf };
                    groups.insert(group, (meta, state, uncommitted));
                }
            }
            Ok::<_, String>(groups)
        })
        .map_err(|e| format!("cannot start the recovery thread: {e}"))?
        .join()
        .map_err(|e| format!("recovery thread failed: {e}"))?
}

/// Applies one logged entry as the shard would once it committed.
fn replay(state: &mut BuiltinState, entry: crate::raft::Entry) {
    match entry.payload {
        EntryPayload::Normal(data) => match Command::decode(data) {
            Ok(command) => drop(state.apply(entry.index, &command)),
            Err(_) => state.skip(entry.index),
        },
        EntryPayload::ConfChange(_) | EntryPayload::Noop => state.skip(entry.index),
    }
}
