//! A shard: many Raft groups over one shard log, driven in turns. The shard does no
//! I/O of its own (sans-IO, like the Raft core and `ShardLog`): its host carries out
//! what it asks for and tells it when that is done.
//!
//! The host loop, for each turn:
//!
//! 1. Hand the shard its inputs: [`step`](Shard::step) peer messages,
//!    [`propose`](Shard::propose) writes, [`read`](Shard::read) reads,
//!    [`tick`](Shard::tick) when a tick is due.
//! 2. [`stage`](Shard::stage): every busy group's Ready is written to the log (not yet
//!    durable), what committed is applied and its clients answered; the returned
//!    [`Staged`] remembers which Readies wait for durability.
//! 3. Send [`take_outbox`](Shard::take_outbox) (appends reach followers while the
//!    leader syncs) and start [`take_snapshot_writes`](Shard::take_snapshot_writes).
//! 4. Make the log durable: carry out each [`begin_flush`](Shard::begin_flush) job
//!    (one write and **one** fdatasync covering every group: group commit) and report
//!    it with [`finish_flush`](Shard::finish_flush).
//! 5. [`on_durable`](Shard::on_durable) with the `Staged` once the log's durable ticket
//!    covers it: the messages that vouch for durable state (votes, append
//!    acknowledgements) join the outbox and the groups learn their Readies are durable.
//! 6. Report finished snapshot files with [`snapshot_written`](Shard::snapshot_written).
//!
//! quarryd's host is [`driver::LocalShard`] (glommio, io_uring); the simulator drives
//! the same shard over a simulated disk (`sim`). There is no task, channel or timer per
//! group: the shard holds thousands of passive group structs and batches their work.
//! Client answers go back through bounded `flume` channels, so the caller may live on
//! another runtime (the network's tokio threads).

mod catch_up;
pub mod driver;
mod quiescence;
mod recovery;
mod reply;
mod requests;
mod snapshots;
mod status;
mod turn;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;

use bytes::Bytes;

pub use crate::group::{group_of_key, GroupId, RequestError};
use crate::log::store::SnapshotImages;
use crate::log::{GroupStorage, LogError, LogStore, ShardLog, ShardLogConfig};
use crate::raft::{bootstrap_state, Config, Index, Message, NodeId, RaftNode, ReadCtx, Role, StepError, Term};
use crate::snapshot::store::FileWriteJob;
use crate::snapshot::{Manifest, SnapshotError, SnapshotStore};
use crate::state::StateMachine;

pub use catch_up::{CatchUp, EntryRange, CATCH_UP_MIN_ENTRIES, CATCH_UP_READ_MAX_BYTES};
pub use reply::Reply;
pub use snapshots::{SnapshotWrite, SEALED_SEGMENTS_MAX};
pub use status::GroupStatus;
pub use turn::{Staged, TraceEvent, TurnStats};

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

/// A read, answered from the state machine once it is known to be up to date.
pub type Query<S> = Box<dyn FnOnce(&S) -> Bytes + Send>;

struct PendingRead<S> {
    query: Query<S>,
    reply: Reply<Bytes>,
}

struct Group<S> {
    raft: RaftNode<GroupStorage<ShardLog>>,
    state: S,
    /// Writes by log index: the term they were proposed in, who waits, and when.
    writes: BTreeMap<Index, (Term, Reply<crate::state::Outcome>, std::time::Instant)>,
    /// Writes proposed here answered since the last turn's stats, and their time from
    /// proposal to applied, in microseconds together (`TurnStats::commit_micros`).
    committed_since_stats: (u64, u64),
    /// Reads waiting for leadership to be confirmed, by context.
    reads: BTreeMap<ReadCtx, PendingRead<S>>,
    /// Reads confirmed at an index, waiting for the state machine to reach it.
    confirmed: Vec<(Index, PendingRead<S>)>,
    /// The term and vote last written to the log.
    written_vote: (Term, Option<NodeId>),
    /// The shard tick the group's Raft clock has reached (behind while it sleeps).
    clock: u64,
    /// Listed in `Shard::touched` for the next turn.
    touched: bool,
    /// In `Shard::awake` (kept beside the set so an input costs no set lookup).
    awake: bool,
    /// The leader last announced in a notice, so each change is told once.
    announced_leader: Option<NodeId>,
}

/// Something operators should hear of (a damaged log, a snapshot not written, a new
/// leader); the host logs it, the shard itself prints nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub level: NoticeLevel,
    pub text: String,
}

/// How loud a notice is: routine events (a snapshot taken) are `Debug`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoticeLevel {
    Debug,
    Info,
    Warn,
}

impl Notice {
    pub fn warn(text: String) -> Notice {
        Notice { level: NoticeLevel::Warn, text }
    }

    pub fn info(text: String) -> Notice {
        Notice { level: NoticeLevel::Info, text }
    }

    pub fn debug(text: String) -> Notice {
        Notice { level: NoticeLevel::Debug, text }
    }
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
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
    groups: BTreeMap<GroupId, Group<S>>,
    outbox: BTreeMap<NodeId, Vec<(GroupId, Message)>>,
    catch_up: BTreeMap<NodeId, Vec<CatchUp>>,
    /// When each (group, follower) was last invited to catch up, in ticks.
    catch_up_offered: BTreeMap<(GroupId, NodeId), u64>,
    /// Snapshots asked for now, per group: the applied index each must cover.
    snapshot_requests: BTreeMap<GroupId, Vec<(Index, Reply<Manifest>)>>,
    ticks: u64,
    /// Groups that are (or may be) awake: the ones a tick visits (`quiescence.rs`).
    awake: BTreeSet<GroupId>,
    /// Groups given an input or a tick since the last turn: the ones a turn visits.
    touched: Vec<GroupId>,
    /// The shard tick each peer node was last heard from, and last sent anything.
    last_heard: BTreeMap<NodeId, u64>,
    last_sent: BTreeMap<NodeId, u64>,
    /// Each peer node's life as last heard: a new one means it restarted.
    incarnations: BTreeMap<NodeId, u64>,
    election_ticks: u32,
    heartbeat_ticks: u32,
    next_read_ctx: ReadCtx,
    snapshots: Rc<RefCell<SnapshotStore>>,
    /// Snapshot files for the host to write, and the groups whose file is being written.
    /// Invariant: `snapshot_writes_in_flight.len() <= snapshot::writer::WRITES_IN_FLIGHT_MAX`.
    snapshot_writes: Vec<SnapshotWrite>,
    snapshot_writes_in_flight: BTreeSet<GroupId>,
    /// Snapshot files the host finished, to be recorded in the log next turn.
    snapshot_writes_done: Vec<(FileWriteJob, Result<Manifest, SnapshotError>)>,
    /// (log ticket of a snapshot marker, group, its index): the group's older files are
    /// deleted once the ticket is durable. Oldest first.
    snapshot_releases: VecDeque<(u64, GroupId, Index)>,
    /// The tick each group's last snapshot file failed at (removed on success).
    snapshot_failed_at: BTreeMap<GroupId, u64>,
    snapshot_distance: u64,
    /// What turns did, for the simulator's checks; `None` (nothing kept) in quarryd.
    trace: Option<Vec<TraceEvent>>,
    /// While groups abstain after a storage fault: the marker file that keeps them
    /// abstaining across restarts (`recovery.rs`).
    abstention_marker: Option<PathBuf>,
    /// What operators must hear of (a damaged log, a snapshot not written), oldest
    /// first, for the host to log: the shard itself prints nothing.
    notices: Vec<Notice>,
    pub fdatasyncs: u64,
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
    /// Leaders learned (each group's first one included).
    pub leader_changes: u64,
    /// Times a group was found asleep by a tick, and sleeping followers woken because
    /// their leader's node went silent.
    pub groups_slept: u64,
    pub liveness_wakes: u64,
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
        let marker = recovery::marker_path(&config.log.dir);
        let mut notices = Vec::new();
        if let Some(damage) = log.borrow().recovered_damage() {
            recovery::persist_marker(&marker, damage)?;
            notices
                .push(Notice::warn(format!("shard log {damage}; every group abstains from elections until caught up")));
        }
        let abstain = marker.exists();
        let damaged = log.borrow().recovered_damage().is_some();
        if damaged {
            recovery::clamp_commit_to_log(&mut log.borrow_mut(), &config.groups)?;
        }
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
                snapshots::restore(group, &mut state, base, image)?;
            }
            let raft_config =
                Config { id: config.node, seed: config.raft.seed ^ group, applied: base, ..config.raft.clone() };
            let storage = GroupStorage { log: log.clone(), group, images: Some(images.clone()) };
            let mut raft = RaftNode::new(raft_config, storage).map_err(|_| LogError::Invalid("invalid raft config"))?;
            if abstain {
                raft.abstain();
            }
            let hard_state = log.borrow().hard_state(group);
            let group_state = Group {
                raft,
                state,
                writes: BTreeMap::new(),
                committed_since_stats: (0, 0),
                reads: BTreeMap::new(),
                confirmed: Vec::new(),
                written_vote: (hard_state.term, hard_state.vote),
                clock: 0,
                touched: true,
                awake: true,
                announced_leader: None,
            };
            groups.insert(group, group_state);
        }
        if damaged {
            // The damage may have taken one of the two copies of a vote: write every
            // group's hard state again, twice (two flushes), before anything else.
            let mut log = log.borrow_mut();
            for round in 0..2 {
                for &group in groups.keys() {
                    let hard_state = log.hard_state(group);
                    log.set_hard_state(group, hard_state)?;
                }
                if round == 0 {
                    log.end_flush();
                }
            }
        }
        let all: Vec<GroupId> = groups.keys().copied().collect();
        Ok(Shard {
            node: config.node,
            log,
            awake: all.iter().copied().collect(),
            touched: all,
            groups,
            last_heard: BTreeMap::new(),
            last_sent: BTreeMap::new(),
            incarnations: BTreeMap::new(),
            election_ticks: config.raft.election_ticks,
            heartbeat_ticks: config.raft.heartbeat_ticks,
            outbox: BTreeMap::new(),
            catch_up: BTreeMap::new(),
            catch_up_offered: BTreeMap::new(),
            snapshot_requests: BTreeMap::new(),
            ticks: 0,
            next_read_ctx: 1,
            snapshots,
            snapshot_writes: Vec::new(),
            snapshot_writes_in_flight: BTreeSet::new(),
            snapshot_writes_done: Vec::new(),
            snapshot_releases: VecDeque::new(),
            snapshot_failed_at: BTreeMap::new(),
            snapshot_distance: config.snapshot_distance,
            trace: None,
            abstention_marker: abstain.then_some(marker),
            notices,
            fdatasyncs: 0,
            snapshots_taken: 0,
            snapshots_installed: 0,
            leader_changes: 0,
            groups_slept: 0,
            liveness_wakes: 0,
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

    /// The group's Raft node, read-only (status, the simulator's checks).
    pub fn raft(&self, group: GroupId) -> Option<&RaftNode<GroupStorage<ShardLog>>> {
        self.groups.get(&group).map(|g| &g.raft)
    }

    /// Every write staged up to this ticket is durable (see `Staged::ticket`).
    pub fn durable_ticket(&self) -> u64 {
        self.log.borrow().durable_ticket()
    }

    /// Why writes are refused for now, if the log is waiting for disk space.
    pub fn disk_full(&self) -> Option<String> {
        self.log.borrow().no_space().map(str::to_string)
    }

    /// New writes are refused while the log waits for disk space: they could not be
    /// made durable, and memory would fill with them instead.
    fn check_disk_space(&self) -> Result<(), RequestError> {
        match self.disk_full() {
            Some(reason) => Err(RequestError::DiskFull(reason)),
            None => Ok(()),
        }
    }

    /// The group a request is for, roused for it (`quiescence.rs`).
    fn group_mut(&mut self, group: GroupId) -> Result<&mut Group<S>, RequestError> {
        self.rouse(group).ok_or(RequestError::UnknownGroup(group))
    }

    /// Steps a peer's message. (Its sender's liveness comes from the host, once per
    /// batch, through `heard_from`.)
    pub fn step(&mut self, group: GroupId, message: Message) -> Result<(), StepError> {
        match self.rouse(group) {
            Some(g) => g.raft.step(message),
            None => Ok(()), // A group this node does not host: nothing to do.
        }
    }

    /// Ticks the awake groups (sleeping ones cost nothing) and sends beacons to peers
    /// that would otherwise hear nothing.
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.tick_awake_groups();
        self.wake_followers_of_silent_leaders();
        if self.disk_full().is_some() {
            self.hand_off_leadership();
        }
        self.invite_far_behind_followers();
        self.queue_beacons();
    }

    /// Messages for peers, batched per destination node. An entry with no messages
    /// is a beacon: the host sends it as an empty batch, which tells the peer this
    /// node is alive (`quiescence.rs`).
    pub fn take_outbox(&mut self) -> BTreeMap<NodeId, Vec<(GroupId, Message)>> {
        self.note_sent();
        std::mem::take(&mut self.outbox)
    }

    /// Starts keeping a [`TraceEvent`] for everything turns write and apply (the
    /// simulator checks them).
    pub fn record_trace(&mut self) {
        self.trace = Some(Vec::new());
    }

    pub fn take_trace(&mut self) -> Vec<TraceEvent> {
        self.trace.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Test-only: the groups' Raft nodes, to switch on their sabotage.
    #[cfg(test)]
    pub(crate) fn rafts_mut(&mut self) -> impl Iterator<Item = &mut RaftNode<GroupStorage<ShardLog>>> {
        self.groups.values_mut().map(|g| &mut g.raft)
    }

    /// Notices for operators since the last call (see `notices`).
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// Bytes of snapshot files this shard holds.
    pub fn snapshot_disk_bytes(&self) -> u64 {
        self.snapshots.borrow().disk_bytes()
    }
}
