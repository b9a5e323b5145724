//! A shard: many Raft groups over one shard log, driven in turns.
//!
//! Each turn, in two halves: [`Shard::stage`] takes every busy group's Ready, writes
//! all of them to the log, applies what committed and answers the clients waiting on
//! it; the host sends the outbox (appends reach followers while the leader syncs);
//! [`Shard::sync`] makes the writes durable with **one** fdatasync (group commit) and
//! acknowledges them. Messages for peers collect in an outbox batched per node. There is no task, channel or timer per group:
//! the shard holds thousands of passive group structs and batches their work.
//!
//! Client answers go back through bounded `flume` channels, so the caller may live on
//! another runtime (the network's tokio threads).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;

use bytes::Bytes;

use crate::log::io::{flush_one, SegmentWriter};
use crate::log::store::SnapshotImages;
use crate::log::{GroupId, GroupStorage, LogError, LogStore, ShardLog, ShardLogConfig};
use crate::raft::{
    bootstrap_state, ConfChange, ConfState, Config, Entry, EntryPayload, HardState, Index, Message, NodeId,
    ProposeError, RaftNode, ReadCtx, Role, Snapshot, SnapshotMeta, StepError, Storage, Term,
};
use crate::snapshot::writer::SnapshotWriter;
use crate::snapshot::{Manifest, SnapshotError, SnapshotStore};
use crate::state::{Command, Outcome, StateMachine};

/// Sealed log segments a shard holds before it snapshots the groups pinning the
/// oldest one, whatever their distance: bounds the log's disk use under skewed load.
pub const SEALED_SEGMENTS_MAX: usize = 4;

/// Entries a follower must lag by before its leader invites it to pull them in bulk.
pub const CATCH_UP_MIN_ENTRIES: u64 = 1024;
/// Ticks before the same follower is invited again for the same group.
const CATCH_UP_REOFFER_TICKS: u64 = 20;
/// Requests for a snapshot now (backups) one group may have waiting.
const SNAPSHOT_REQUESTS_MAX: usize = 16;

/// Bytes of entries one bulk read returns.
pub const CATCH_UP_READ_MAX_BYTES: u64 = 4 << 20;

/// A leader's invitation to a follower far behind to pull committed entries
/// `from..=to` in bulk (over Flight) rather than through many appends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatchUp {
    pub group: GroupId,
    pub term: Term,
    pub from: Index,
    pub to: Index,
}

/// Entries read for a follower's bulk catch-up, with what makes them an append from
/// this leader: its term, its commit index and the term of the entry before them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryRange {
    pub term: Term,
    pub commit: Index,
    pub prev_term: Term,
    pub entries: Vec<Entry>,
}

/// A failure that stops the shard: its log, its snapshot files, or a state machine
/// refusing an image.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("group {group}: cannot restore its snapshot at index {index}: {reason}")]
    Restore { group: GroupId, index: Index, reason: String },
}

/// The group a key (or log name) belongs to: a stable hash, so every node, client and
/// version agrees.
pub fn group_of_key(key: &[u8], groups: u64) -> GroupId {
    u64::from(crc32fast::hash(key)) % groups
}

/// Where a client's answer goes.
pub type Reply<T> = flume::Sender<Result<T, RequestError>>;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("group {0} is not hosted here")]
    UnknownGroup(GroupId),
    #[error("not the leader of the group (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("refused: {0}")]
    Refused(String),
    /// Leadership changed before the write was known to commit; it may or may not
    /// apply. Retrying with the same client id and sequence is safe.
    #[error("outcome unknown: leadership changed")]
    Unknown,
    /// Another entry took this write's place in the log: it will never apply.
    #[error("write dropped by a leader change; retry")]
    Dropped,
    #[error("not found: {0}")]
    NotFound(String),
}

impl From<ProposeError> for RequestError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::NotLeader { leader_hint } => RequestError::NotLeader { leader: leader_hint },
            other => RequestError::Refused(other.to_string()),
        }
    }
}

/// A read, answered from the state machine once it is known to be up to date.
pub type Query<S> = Box<dyn FnOnce(&S) -> Bytes + Send>;

struct PendingRead<S> {
    query: Query<S>,
    reply: Reply<Bytes>,
}

struct Group<S> {
    raft: RaftNode<GroupStorage<ShardLog>>,
    state: S,
    /// Writes by log index: the term they were proposed in and who waits.
    writes: BTreeMap<Index, (Term, Reply<Outcome>)>,
    /// Reads waiting for leadership to be confirmed, by context.
    reads: BTreeMap<ReadCtx, PendingRead<S>>,
    /// Reads confirmed at an index, waiting for the state machine to reach it.
    confirmed: Vec<(Index, PendingRead<S>)>,
    /// The hard state last written to the log.
    written_hard_state: HardState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    pub group: GroupId,
    pub role: Role,
    pub leader: Option<NodeId>,
    pub term: Term,
    pub commit: Index,
    pub applied: Index,
    pub last_index: Index,
    pub conf: ConfState,
    /// Only on the leader: each other member's matched index, and whether it was
    /// heard from recently.
    pub progress: Vec<(NodeId, Index, bool)>,
}

/// A staged turn waiting for its sync: per group, the Ready number and the messages
/// to send once it is durable.
#[must_use = "a staged turn must be synced"]
pub struct Staged {
    acks: Vec<(GroupId, u64, Vec<Message>)>,
    stats: TurnStats,
}

/// What one turn did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TurnStats {
    /// Group Readies carried out.
    pub readies: usize,
    pub fdatasyncs: u64,
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
    /// Log entries written (appended or replaced) for all groups.
    pub entries_written: u64,
}

/// Static description of a shard's groups.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    pub node: NodeId,
    pub groups: Vec<GroupId>,
    /// The founding voters, for groups created on first start; empty on a node joining
    /// an existing cluster, whose groups start empty and learn everything from their
    /// leaders (the configuration included).
    pub voters: Vec<NodeId>,
    pub raft: Config,
    pub log: ShardLogConfig,
    /// Where the shard keeps its groups' snapshot files.
    pub snapshot_dir: PathBuf,
    /// Applied entries after which a group snapshots and compacts its log (0: never).
    pub snapshot_distance: u64,
}

pub struct Shard<S: StateMachine + Default> {
    node: NodeId,
    log: Rc<RefCell<ShardLog>>,
    writer: SegmentWriter,
    groups: BTreeMap<GroupId, Group<S>>,
    outbox: BTreeMap<NodeId, Vec<(GroupId, Message)>>,
    catch_up: BTreeMap<NodeId, Vec<CatchUp>>,
    /// When each (group, follower) was last invited to catch up, in ticks.
    catch_up_offered: BTreeMap<(GroupId, NodeId), u64>,
    /// Snapshots asked for now, per group: the applied index each must cover.
    snapshot_requests: BTreeMap<GroupId, Vec<(Index, Reply<Manifest>)>>,
    ticks: u64,
    next_read_ctx: ReadCtx,
    snapshots: Rc<RefCell<SnapshotStore>>,
    snapshot_writer: SnapshotWriter,
    snapshot_distance: u64,
    pub fdatasyncs: u64,
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
}

/// Images for the Raft core to send, read from the snapshot files.
struct StoredImages(Rc<RefCell<SnapshotStore>>);

impl SnapshotImages for StoredImages {
    fn image(&self, group: GroupId, index: Index) -> Option<Bytes> {
        // Loaded whole: the Raft message carries it to the transport, which sends only
        // an offer (size and CRC32); followers pull the file over Flight.
        self.0.borrow().load(group, index).ok().map(|(_, image)| image)
    }
}

impl<S: StateMachine + Default> Shard<S> {
    /// Opens the shard's log (recovering it) and starts its groups from their latest
    /// snapshots. A group the log has never seen is bootstrapped with `config.voters`.
    pub fn open(config: ShardConfig) -> Result<Self, ShardError> {
        let log = Rc::new(RefCell::new(ShardLog::open(config.log.clone())?));
        let snapshots = Rc::new(RefCell::new(SnapshotStore::open(&config.snapshot_dir)?));
        let images: Rc<dyn SnapshotImages> = Rc::new(StoredImages(snapshots.clone()));
        let mut groups = BTreeMap::new();
        for &group in &config.groups {
            if log.borrow().index().group(group).is_none() && !config.voters.is_empty() {
                let (entry, hard_state) = bootstrap_state(config.voters.iter().copied());
                log.borrow_mut().append(group, &[entry])?;
                log.borrow_mut().set_hard_state(group, hard_state)?;
            }
            let mut state = S::default();
            let base = log.borrow().snapshot_meta(group).index;
            if base > 0 {
                let (_, image) = snapshots.borrow().load(group, base)?;
                restore(group, &mut state, base, image)?;
            }
            let raft_config =
                Config { id: config.node, seed: config.raft.seed ^ group, applied: base, ..config.raft.clone() };
            let storage = GroupStorage { log: log.clone(), group, images: Some(images.clone()) };
            let raft = RaftNode::new(raft_config, storage).map_err(|_| LogError::Invalid("invalid raft config"))?;
            let group_state = Group {
                raft,
                state,
                writes: BTreeMap::new(),
                reads: BTreeMap::new(),
                confirmed: Vec::new(),
                written_hard_state: log.borrow().hard_state(group),
            };
            groups.insert(group, group_state);
        }
        Ok(Shard {
            node: config.node,
            log,
            writer: SegmentWriter::default(),
            groups,
            outbox: BTreeMap::new(),
            catch_up: BTreeMap::new(),
            catch_up_offered: BTreeMap::new(),
            snapshot_requests: BTreeMap::new(),
            ticks: 0,
            next_read_ctx: 1,
            snapshots,
            snapshot_writer: SnapshotWriter::start(format!("quarry-snap-{}", config.node))
                .map_err(|e| LogError::io(&config.snapshot_dir, e))?,
            snapshot_distance: config.snapshot_distance,
            fdatasyncs: 0,
            snapshots_taken: 0,
            snapshots_installed: 0,
        })
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn leader(&self, group: GroupId) -> Option<NodeId> {
        self.groups.get(&group).and_then(|g| g.raft.leader())
    }

    pub fn is_leader(&self, group: GroupId) -> bool {
        self.groups.get(&group).is_some_and(|g| g.raft.role() == Role::Leader)
    }

    pub fn state(&self, group: GroupId) -> Option<&S> {
        self.groups.get(&group).map(|g| &g.state)
    }

    fn group_mut(&mut self, group: GroupId) -> Result<&mut Group<S>, RequestError> {
        self.groups.get_mut(&group).ok_or(RequestError::UnknownGroup(group))
    }

    /// Proposes a write; `reply` hears its outcome once it is committed and applied.
    pub fn propose(&mut self, group: GroupId, command: &Command, reply: Reply<Outcome>) {
        let result = self.group_mut(group).and_then(|g| {
            let proposed = g.raft.propose(command.encode())?;
            g.writes.insert(proposed.index, (proposed.term, reply.clone()));
            Ok(())
        });
        if let Err(e) = result {
            let _ = reply.try_send(Err(e));
        }
    }

    /// Proposes a membership change of one group; `reply` hears `Written { revision }`
    /// with the entry's index once it is applied (the leader then leaves a joint
    /// configuration on its own).
    pub fn propose_conf_change(&mut self, group: GroupId, change: ConfChange, reply: Reply<Outcome>) {
        let result = self.group_mut(group).and_then(|g| {
            let proposed = g.raft.propose_conf_change(change)?;
            g.writes.insert(proposed.index, (proposed.term, reply.clone()));
            Ok(())
        });
        if let Err(e) = result {
            let _ = reply.try_send(Err(e));
        }
    }

    /// Starts handing the group's leadership to `to` (a voter); the caller watches
    /// the leader change.
    pub fn transfer_leader(&mut self, group: GroupId, to: NodeId) -> Result<(), RequestError> {
        Ok(self.group_mut(group)?.raft.transfer_leader(to)?)
    }

    /// Asks the group's leader for a snapshot covering everything applied so far (so
    /// every write acknowledged before the call); `reply` hears its manifest once the
    /// file is durable. The file can then be fetched over Flight.
    pub fn snapshot_now(&mut self, group: GroupId, reply: Reply<Manifest>) {
        let result = self.group_mut(group).and_then(|g| {
            if g.raft.role() != Role::Leader {
                return Err(RequestError::NotLeader { leader: g.raft.leader() });
            }
            Ok(g.state.last_applied())
        });
        let applied = match result {
            Ok(applied) => applied,
            Err(e) => {
                let _ = reply.try_send(Err(e));
                return;
            }
        };
        let base = self.log.borrow().snapshot_meta(group).index;
        if base > 0 && base >= applied {
            let _ =
                reply.try_send(self.snapshots.borrow().load(group, base).map(|(m, _)| m).map_err(|e| {
                    RequestError::Refused(format!("snapshot of group {group} at {base} unreadable: {e}"))
                }));
            return;
        }
        let waiting = self.snapshot_requests.entry(group).or_default();
        if waiting.len() >= SNAPSHOT_REQUESTS_MAX {
            let _ = reply.try_send(Err(RequestError::Refused("too many snapshot requests waiting; retry".into())));
            return;
        }
        waiting.push((applied, reply));
    }

    /// A linearizable read: `query` runs once leadership is confirmed and the state
    /// machine has caught up with the read index.
    pub fn read(&mut self, group: GroupId, query: Query<S>, reply: Reply<Bytes>) {
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        let result = self.group_mut(group).and_then(|g| {
            g.raft.read_index(ctx)?;
            g.reads.insert(ctx, PendingRead { query, reply: reply.clone() });
            Ok(())
        });
        if let Err(e) = result {
            let _ = reply.try_send(Err(e));
        }
    }

    /// A serializable read from this replica's state, possibly stale.
    pub fn read_local(&self, group: GroupId, query: Query<S>) -> Result<Bytes, RequestError> {
        let g = self.groups.get(&group).ok_or(RequestError::UnknownGroup(group))?;
        Ok(query(&g.state))
    }

    pub fn step(&mut self, group: GroupId, message: Message) -> Result<(), StepError> {
        match self.groups.get_mut(&group) {
            Some(g) => g.raft.step(message),
            None => Ok(()), // A group this node does not host: nothing to do.
        }
    }

    pub fn tick(&mut self) {
        self.groups.values_mut().for_each(|g| g.raft.tick());
        self.ticks += 1;
        self.invite_far_behind_followers();
    }

    /// For every group led here, invites each follower lagging the commit index by
    /// more than `CATCH_UP_MIN_ENTRIES` (while the log still holds what it lacks) to
    /// pull the entries in bulk; at most once per `CATCH_UP_REOFFER_TICKS`.
    fn invite_far_behind_followers(&mut self) {
        for (&group, g) in &self.groups {
            if g.raft.role() != Role::Leader {
                continue;
            }
            let (committed, first) = (g.raft.committed(), g.raft.storage().first_index());
            let conf = g.raft.conf_state();
            let members = conf.voters.iter().chain(&conf.voters_outgoing).chain(&conf.learners);
            for &peer in members.filter(|&&p| p != self.node) {
                let Some(matched) = g.raft.progress(peer).map(|p| p.matched) else { continue };
                if matched + CATCH_UP_MIN_ENTRIES >= committed || matched + 1 < first {
                    continue;
                }
                let last = self.catch_up_offered.get(&(group, peer)).copied();
                if last.is_some_and(|at| at + CATCH_UP_REOFFER_TICKS > self.ticks) {
                    continue;
                }
                self.catch_up_offered.insert((group, peer), self.ticks);
                let invitation = CatchUp { group, term: g.raft.term(), from: matched + 1, to: committed };
                self.catch_up.entry(peer).or_default().push(invitation);
            }
        }
    }

    /// Catch-up invitations for peers, per destination node.
    pub fn take_catch_up(&mut self) -> BTreeMap<NodeId, Vec<CatchUp>> {
        std::mem::take(&mut self.catch_up)
    }

    /// Committed entries `from..=to` (as many as fit `CATCH_UP_READ_MAX_BYTES`) for a
    /// follower's bulk catch-up. Only a leader answers, and only from its log.
    pub fn read_entries(&self, group: GroupId, from: Index, to: Index) -> Result<EntryRange, RequestError> {
        let g = self.groups.get(&group).ok_or(RequestError::UnknownGroup(group))?;
        if g.raft.role() != Role::Leader {
            return Err(RequestError::NotLeader { leader: g.raft.leader() });
        }
        let to = to.min(g.raft.committed());
        if from == 0 || to < from {
            return Err(RequestError::Refused(format!("no committed entries in {from}..={to}")));
        }
        let gone = || RequestError::Refused(format!("entries from {from} are compacted"));
        let prev_term = g.raft.term_at(from - 1).ok_or_else(gone)?;
        let entries = g.raft.storage().entries(from, to + 1, CATCH_UP_READ_MAX_BYTES).map_err(|_| gone())?;
        Ok(EntryRange { term: g.raft.term(), commit: g.raft.committed(), prev_term, entries })
    }

    /// Each group's Raft status, for operators.
    pub fn status(&self) -> Vec<GroupStatus> {
        self.groups
            .iter()
            .map(|(&group, g)| GroupStatus {
                group,
                role: g.raft.role(),
                leader: g.raft.leader(),
                term: g.raft.term(),
                commit: g.raft.committed(),
                applied: g.state.last_applied(),
                last_index: g.raft.last_index(),
                conf: g.raft.conf_state().clone(),
                progress: g
                    .raft
                    .conf_state()
                    .members()
                    .into_iter()
                    .filter(|&peer| peer != self.node)
                    .filter_map(|peer| g.raft.progress(peer).map(|p| (peer, p.matched, p.recent_active)))
                    .collect(),
            })
            .collect()
    }

    /// Messages for peers, batched per destination node.
    pub fn take_outbox(&mut self) -> BTreeMap<NodeId, Vec<(GroupId, Message)>> {
        std::mem::take(&mut self.outbox)
    }

    /// One turn: [`stage`](Self::stage) then [`sync`](Self::sync).
    pub async fn turn(&mut self) -> Result<TurnStats, ShardError> {
        let staged = self.stage()?;
        self.sync(staged).await
    }

    /// The first half of a turn: writes every busy group's Ready to the log (not yet
    /// durable), applies what committed and answers its clients, snapshots the groups
    /// that are due. Messages that need no local persistence (a leader's appends to
    /// followers, heartbeats) are in the outbox now: sending them before the sync lets
    /// followers write in parallel with the leader.
    pub fn stage(&mut self) -> Result<Staged, ShardError> {
        let mut acks = Vec::new();
        let mut entries_written = 0;
        let (taken_before, installed_before) = (self.snapshots_taken, self.snapshots_installed);
        self.finish_snapshot_writes()?;
        for (&group, g) in self.groups.iter_mut() {
            while g.raft.has_ready() {
                let ready = g.raft.ready();
                if ready.soft_state.is_some_and(|s| s.role != Role::Leader) {
                    fail_pending(g);
                }
                if let Some(snapshot) = &ready.snapshot {
                    install_snapshot(&self.log, &self.snapshots, group, g, snapshot)?;
                    self.snapshots_installed += 1;
                }
                {
                    let mut log = self.log.borrow_mut();
                    log.append(group, &ready.entries)?;
                    entries_written += ready.entries.len() as u64;
                    if let Some(hard_state) = ready.hard_state {
                        // A change of commit index alone need not be durable (Raft
                        // recovers it from the leader): it rides along with the next
                        // write that must be synced instead of costing a sync itself.
                        let must_sync = hard_state.term != g.written_hard_state.term
                            || hard_state.vote != g.written_hard_state.vote
                            || !ready.entries.is_empty()
                            || ready.snapshot.is_some();
                        if must_sync {
                            log.set_hard_state(group, hard_state)?;
                            g.written_hard_state = hard_state;
                        }
                    }
                }
                for m in ready.messages {
                    self.outbox.entry(m.to).or_default().push((group, m));
                }
                for read in ready.read_states {
                    if let Some(pending) = g.reads.remove(&read.ctx) {
                        g.confirmed.push((read.index, pending));
                    }
                }
                // Committed entries are already durable here and on a quorum: apply and
                // answer now, without waiting for this turn's sync.
                for entry in ready.committed_entries {
                    apply(g, entry);
                }
                serve_confirmed_reads(g);
                acks.push((group, ready.number, ready.persisted_messages));
            }
        }
        let busy: Vec<GroupId> = acks.iter().map(|(group, _, _)| *group).collect();
        self.take_due_snapshots(&busy)?;
        let stats = TurnStats {
            readies: acks.len(),
            fdatasyncs: 0,
            snapshots_taken: self.snapshots_taken - taken_before,
            snapshots_installed: self.snapshots_installed - installed_before,
            entries_written,
        };
        Ok(Staged { acks, stats })
    }

    /// The second half: one fdatasync covers everything staged; then each group
    /// learns its Ready is durable and the messages that waited for it (votes,
    /// append acknowledgements) join the outbox.
    pub async fn sync(&mut self, staged: Staged) -> Result<TurnStats, ShardError> {
        let Staged { acks, mut stats } = staged;
        while flush_one(&self.log, &mut self.writer).await?.is_some() {
            stats.fdatasyncs += 1;
        }
        self.fdatasyncs += stats.fdatasyncs;
        for (group, number, persisted_messages) in acks {
            for m in persisted_messages {
                self.outbox.entry(m.to).or_default().push((group, m));
            }
            self.groups.get_mut(&group).expect("group exists").raft.advance(number);
        }
        Ok(stats)
    }
}

impl<S: StateMachine + Default> Shard<S> {
    /// Snapshots the groups that applied `snapshot_distance` entries since their last
    /// one, and those pinning the oldest log segment once too many are held; then
    /// releases the segments no group needs.
    ///
    /// Only groups that had a Ready this turn (`busy`) can have newly reached their
    /// distance, so only they and the pinning ones are looked at: a turn costs nothing
    /// per idle group.
    fn take_due_snapshots(&mut self, busy: &[GroupId]) -> Result<(), ShardError> {
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
            if due && self.snapshot_writer.can_take(group) {
                let term =
                    self.log.borrow().term(group, applied).map_err(|_| LogError::Missing { group, index: applied })?;
                // Every committed entry handed out is applied in the same turn, so the
                // core's configuration is the one as of `applied`.
                let meta = SnapshotMeta { index: applied, term, conf_state: g.raft.conf_state().clone() };
                let job = self.snapshots.borrow().file_writer(group, &meta);
                self.snapshot_writer.submit(job, g.state.snapshot());
            }
        }
        Ok(())
    }

    /// Compacts the log of every group whose snapshot file is now durable. The file
    /// the log stood on before is deleted only once the new marker is in the log
    /// (durable by the end of this turn), so a crash always finds a file matching it.
    fn finish_snapshot_writes(&mut self) -> Result<(), ShardError> {
        let finished = self.snapshot_writer.finished();
        if finished.is_empty() {
            return Ok(());
        }
        for (job, result) in finished {
            let (group, meta) = (job.group, job.meta);
            let manifest = match result {
                Ok(manifest) => manifest,
                Err(e) => {
                    // The log keeps its entries; the group is due again next turn.
                    eprintln!(
                        "shard of node {}: snapshot of group {group} at {} not written: {e}",
                        self.node, meta.index
                    );
                    continue;
                }
            };
            if let Some(waiting) = self.snapshot_requests.get_mut(&group) {
                waiting.retain(|(covers, reply)| {
                    let served = *covers <= meta.index;
                    if served {
                        let _ = reply.try_send(Ok(manifest.clone()));
                    }
                    !served
                });
                if waiting.is_empty() {
                    self.snapshot_requests.remove(&group);
                }
            }
            let base = self.log.borrow().snapshot_meta(group).index;
            let mut snapshots = self.snapshots.borrow_mut();
            snapshots.saved(group, &meta);
            if meta.index > base {
                // Entries up to an applied index are committed: never truncated since.
                self.log.borrow_mut().compact(group, meta)?;
                snapshots.release_before(group, base)?;
                self.snapshots_taken += 1;
            }
        }
        self.log.borrow_mut().release_unneeded_segments()?;
        Ok(())
    }

    /// Bytes of snapshot files this shard holds.
    pub fn snapshot_disk_bytes(&self) -> u64 {
        self.snapshots.borrow().disk_bytes()
    }
}

fn restore<S: StateMachine>(group: GroupId, state: &mut S, index: Index, image: Bytes) -> Result<(), ShardError> {
    let failed = |reason: String| ShardError::Restore { group, index, reason };
    state.restore(image).map_err(|e| failed(e.to_string()))?;
    if state.last_applied() != index {
        return Err(failed(format!("the image is of index {}", state.last_applied())));
    }
    Ok(())
}

/// Installs an image the leader sent: the file first (durable), then the state
/// machine, then the log marker that makes the log start after it.
fn install_snapshot<S: StateMachine>(
    log: &RefCell<ShardLog>,
    snapshots: &RefCell<SnapshotStore>,
    group: GroupId,
    g: &mut Group<S>,
    snapshot: &Snapshot,
) -> Result<(), ShardError> {
    let base = log.borrow().snapshot_meta(group).index;
    let mut snapshots = snapshots.borrow_mut();
    snapshots.save(group, &snapshot.meta, &snapshot.data)?;
    restore(group, &mut g.state, snapshot.meta.index, snapshot.data.clone())?;
    log.borrow_mut().install_snapshot(group, snapshot.meta.clone())?;
    snapshots.release_before(group, base)?;
    Ok(())
}

/// Applies one committed entry and answers the client that proposed it, if any.
fn apply<S: StateMachine>(g: &mut Group<S>, entry: Entry) {
    let (index, entry_term) = (entry.index, entry.term);
    let outcome = match entry.payload {
        EntryPayload::Normal(data) => Some(match Command::decode(data) {
            Ok(command) => g.state.apply(index, &command),
            // Committed bytes that are not a command (cannot come from this node's
            // own proposals): every replica refuses them the same way.
            Err(e) => {
                g.state.skip(index);
                Outcome::Rejected(format!("undecodable command: {e}"))
            }
        }),
        EntryPayload::ConfChange(_) => {
            g.state.skip(index);
            // Whoever proposed the change learns the index it took effect at.
            Some(Outcome::Written { revision: index })
        }
        EntryPayload::Noop => {
            g.state.skip(index);
            None
        }
    };
    // Writes proposed at or below this index are settled now.
    while let Some(entry) = g.writes.first_entry() {
        if *entry.key() > index {
            break;
        }
        let at = *entry.key();
        let (term, reply) = entry.remove();
        let answer = match &outcome {
            Some(outcome) if at == index && term == entry_term => Ok(outcome.clone()),
            _ => Err(RequestError::Dropped),
        };
        let _ = reply.try_send(answer);
    }
}

fn serve_confirmed_reads<S: StateMachine>(g: &mut Group<S>) {
    let applied = g.state.last_applied();
    let mut i = 0;
    while i < g.confirmed.len() {
        if g.confirmed[i].0 <= applied {
            let (_, pending) = g.confirmed.swap_remove(i);
            let _ = pending.reply.try_send(Ok((pending.query)(&g.state)));
        } else {
            i += 1;
        }
    }
}

/// Leadership was lost: pending reads fail; pending writes may still commit, so
/// their outcome is unknown to us.
fn fail_pending<S>(g: &mut Group<S>) {
    for (_, pending) in std::mem::take(&mut g.reads) {
        let _ = pending.reply.try_send(Err(RequestError::NotLeader { leader: g.raft.leader() }));
    }
    for (_, (_, reply)) in std::mem::take(&mut g.writes) {
        let _ = reply.try_send(Err(RequestError::Unknown));
    }
}
