//! One simulated server: a Raft node over a simulated disk, with the KV state machine.
//!
//! The disk distinguishes what was written from what was synced: a crash keeps every
//! synced write and only a random prefix of the unsynced ones (writes reach the disk
//! in order, but need not all reach it).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::raft::{
    apply_conf_change, ConfState, Config, Entry, EntryPayload, HardState, Index, MemStorage, Message, RaftNode,
    ReadCtx, Ready, Snapshot, Storage, Term,
};

use super::kv::{Key, KvCommand, KvStore};

/// A write issued to the simulated disk.
#[derive(Clone, Debug)]
enum Write {
    Snapshot(Snapshot),
    Entries(Vec<Entry>),
    HardState(HardState),
    Compact { index: Index, conf_state: ConfState, data: bytes::Bytes },
}

fn apply_write(storage: &mut MemStorage, write: Write) {
    match write {
        Write::Snapshot(snapshot) => storage.apply_snapshot(snapshot),
        Write::Entries(entries) => storage.append(&entries),
        Write::HardState(hard_state) => storage.set_hard_state(hard_state),
        Write::Compact { index, conf_state, data } => storage.compact(index, conf_state, data),
    }
}

/// Hash of a log prefix ending at an entry: equal hashes mean equal prefixes.
pub fn chain_hash(prev: u64, entry: &Entry) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (prev, entry.index, entry.term, &entry.payload).hash(&mut hasher);
    hasher.finish()
}

/// Prefix hashes of the node's log, so the checker compares whole logs in O(1).
#[derive(Clone, Debug, Default)]
pub struct LogHashes {
    /// Index of `chain[0]` (the snapshot index).
    pub base: Index,
    pub chain: Vec<u64>,
}

impl LogHashes {
    pub fn at(&self, index: Index) -> Option<u64> {
        index.checked_sub(self.base).and_then(|k| self.chain.get(k as usize)).copied()
    }

    pub fn last_index(&self) -> Index {
        self.base + self.chain.len() as u64 - 1
    }

    pub fn reset(&mut self, base: Index, base_hash: u64) {
        self.base = base;
        self.chain = vec![base_hash];
    }

    /// Appends entries (truncating a conflicting suffix); returns each new prefix hash.
    pub fn append(&mut self, entries: &[Entry]) -> Vec<(Index, Term, u64)> {
        let Some(first) = entries.first() else {
            return Vec::new();
        };
        self.chain.truncate((first.index - self.base) as usize);
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let hash = chain_hash(*self.chain.last().expect("chain has a base"), entry);
            self.chain.push(hash);
            out.push((entry.index, entry.term, hash));
        }
        out
    }

    pub fn compact(&mut self, index: Index) {
        if index > self.base {
            self.chain.drain(..(index - self.base) as usize);
            self.base = index;
        }
    }
}

/// A client request waiting on this node.
#[derive(Clone, Copy, Debug)]
pub struct Waiting {
    pub op: usize,
    pub key: Key,
}

pub struct SimNode {
    pub id: u64,
    /// `None` while crashed.
    pub raft: Option<RaftNode<MemStorage>>,
    /// What survives a crash.
    pub disk: MemStorage,
    unsynced: Vec<Write>,
    /// Readies written but not synced: (number, messages to send once durable).
    awaiting_sync: Vec<(u64, Vec<Message>)>,
    pub sync_scheduled: bool,
    /// Bumped at each restart so events of an earlier life are ignored.
    pub incarnation: u64,
    pub kv: KvStore,
    /// Configuration as of `applied`, recorded in snapshots.
    pub conf_at_applied: ConfState,
    pub applied: Index,
    pub hashes: LogHashes,
    /// Proposals by index: the term they were proposed in and the client op.
    pub pending_writes: BTreeMap<Index, (Term, Waiting)>,
    pub pending_reads: BTreeMap<ReadCtx, Waiting>,
    /// Reads confirmed at an index, waiting for the state machine to reach it.
    pub confirmed_reads: Vec<(Index, Waiting)>,
}

/// What processing a Ready produced for the rest of the simulation.
#[derive(Default)]
pub struct ReadyOutput {
    pub messages: Vec<Message>,
    /// Entries written to the log, with their prefix hashes (for log matching).
    pub appended: Vec<(Index, Term, u64)>,
    /// Entries applied, with their prefix hashes (for state-machine safety).
    pub applied: Vec<(Index, u64)>,
    /// Client ops finished: (op, result of a CAS / value read).
    pub completed: Vec<(usize, Completion)>,
    /// Client ops that definitely did not take effect.
    pub failed: Vec<usize>,
    pub lost_leadership: bool,
    pub installed_snapshot: Option<Index>,
}

#[derive(Clone, Copy, Debug)]
pub enum Completion {
    Written { swapped: bool },
    Read(Option<u64>),
}

impl SimNode {
    pub fn new(id: u64, disk: MemStorage) -> SimNode {
        SimNode {
            id,
            raft: None,
            disk,
            unsynced: Vec::new(),
            awaiting_sync: Vec::new(),
            sync_scheduled: false,
            incarnation: 0,
            kv: KvStore::default(),
            conf_at_applied: ConfState::default(),
            applied: 0,
            hashes: LogHashes::default(),
            pending_writes: BTreeMap::new(),
            pending_reads: BTreeMap::new(),
            confirmed_reads: Vec::new(),
        }
    }

    /// Starts the node from its disk. `base_hash` is the prefix hash at the disk's
    /// snapshot index, known to the checker because snapshots hold committed entries.
    pub fn start(&mut self, config: Config, base_hash: u64) {
        let mut storage = self.disk.clone();
        let snapshot = storage.snapshot_ref().clone();
        storage.set_conf_state(snapshot.meta.conf_state.clone());
        self.kv = KvStore::decode(&snapshot.data).expect("simulated snapshot decodes");
        self.conf_at_applied = snapshot.meta.conf_state.clone();
        self.applied = snapshot.meta.index;
        self.hashes.reset(snapshot.meta.index, base_hash);
        self.hashes.append(storage.entries_all());
        let config = Config { applied: snapshot.meta.index, ..config };
        self.raft = Some(RaftNode::new(config, storage).expect("simulated config is valid"));
        self.incarnation += 1;
        self.sync_scheduled = false;
    }

    /// Loses everything volatile; keeps synced writes and a random prefix of the rest.
    pub fn crash(&mut self, rng: &mut ChaCha8Rng) {
        let kept = rng.random_range(0..=self.unsynced.len());
        for write in self.unsynced.drain(..).take(kept) {
            apply_write(&mut self.disk, write);
        }
        self.awaiting_sync.clear();
        self.raft = None;
        self.pending_writes.clear();
        self.pending_reads.clear();
        self.confirmed_reads.clear();
        self.sync_scheduled = false;
    }

    /// Carries out one Ready up to (not including) the sync: writes, sends, applies.
    /// `committed_hash` gives the prefix hash of a committed index, which a snapshot's
    /// index must be.
    pub fn handle_ready(
        &mut self,
        ready: Ready,
        committed_hash: impl Fn(Index) -> Option<u64>,
        out: &mut ReadyOutput,
    ) -> Result<(), String> {
        out.messages.extend(ready.messages);
        if let Some(soft) = ready.soft_state {
            if soft.role != crate::raft::Role::Leader {
                out.lost_leadership = true;
                out.failed.extend(self.pending_reads.values().map(|w| w.op));
                self.pending_reads.clear();
            }
        }
        let raft = self.raft.as_mut().expect("ready from a running node");
        if let Some(snapshot) = ready.snapshot {
            let index = snapshot.meta.index;
            let base_hash = committed_hash(index)
                .ok_or_else(|| format!("node {} received a snapshot at uncommitted index {index}", self.id))?;
            self.hashes.reset(index, base_hash);
            out.installed_snapshot = Some(index);
            self.kv = KvStore::decode(&snapshot.data).expect("snapshot decodes");
            self.conf_at_applied = snapshot.meta.conf_state.clone();
            self.applied = snapshot.meta.index;
            raft.storage_mut().apply_snapshot(snapshot.clone());
            self.unsynced.push(Write::Snapshot(snapshot));
        }
        if !ready.entries.is_empty() {
            raft.storage_mut().append(&ready.entries);
            out.appended.extend(self.hashes.append(&ready.entries));
            self.unsynced.push(Write::Entries(ready.entries));
        }
        if let Some(hard_state) = ready.hard_state {
            raft.storage_mut().set_hard_state(hard_state);
            self.unsynced.push(Write::HardState(hard_state));
        }
        self.awaiting_sync.push((ready.number, ready.persisted_messages));
        for entry in &ready.committed_entries {
            self.apply(entry, out);
        }
        for read in ready.read_states {
            if let Some(waiting) = self.pending_reads.remove(&read.ctx) {
                self.confirmed_reads.push((read.index, waiting));
            }
        }
        self.serve_confirmed_reads(out);
        Ok(())
    }

    fn apply(&mut self, entry: &Entry, out: &mut ReadyOutput) {
        assert_eq!(entry.index, self.applied + 1, "node {} applies out of order", self.id);
        self.applied = entry.index;
        let hash = self.hashes.at(entry.index).expect("applied entry is in the log");
        out.applied.push((entry.index, hash));
        let result = match &entry.payload {
            EntryPayload::Normal(data) => {
                let command = KvCommand::decode(data).expect("simulated commands decode");
                Some(self.kv.apply(command))
            }
            EntryPayload::ConfChange(change) => {
                if let Ok(next) = apply_conf_change(&self.conf_at_applied, change) {
                    self.conf_at_applied = next;
                }
                None
            }
            EntryPayload::Noop => None,
        };
        let Some((term, waiting)) = self.pending_writes.remove(&entry.index) else {
            return;
        };
        match result {
            Some(swapped) if term == entry.term => out.completed.push((waiting.op, Completion::Written { swapped })),
            // Another entry won this index: the proposal can never commit.
            _ => out.failed.push(waiting.op),
        }
    }

    fn serve_confirmed_reads(&mut self, out: &mut ReadyOutput) {
        let applied = self.applied;
        let kv = &self.kv;
        self.confirmed_reads.retain(|(index, waiting)| {
            if *index > applied {
                return true;
            }
            out.completed.push((waiting.op, Completion::Read(kv.get(waiting.key))));
            false
        });
    }

    /// The disk synced: everything written is durable. Returns the messages that were
    /// waiting for it and acknowledges the Readies.
    pub fn sync(&mut self) -> Vec<Message> {
        self.sync_scheduled = false;
        for write in self.unsynced.drain(..) {
            apply_write(&mut self.disk, write);
        }
        let Some(&(last, _)) = self.awaiting_sync.last() else {
            return Vec::new();
        };
        let messages = self.awaiting_sync.drain(..).flat_map(|(_, msgs)| msgs).collect();
        self.raft.as_mut().expect("sync on a running node").advance(last);
        messages
    }

    pub fn has_unsynced(&self) -> bool {
        !self.awaiting_sync.is_empty()
    }

    /// Takes a snapshot of the state machine and releases the log it covers.
    pub fn compact(&mut self) {
        let raft = self.raft.as_mut().expect("compact on a running node");
        let index = self.applied;
        if index <= raft.storage().first_index() {
            return;
        }
        let data = self.kv.encode();
        let conf_state = self.conf_at_applied.clone();
        raft.storage_mut().compact(index, conf_state.clone(), data.clone());
        self.hashes.compact(index);
        self.unsynced.push(Write::Compact { index, conf_state, data });
    }
}
