//! The simulation driver: a cluster of production shards, their clients and their
//! faults, all driven by one seed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rand::seq::IndexedRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::group::{group_of_key, GroupId, RequestError};
use crate::log::ShardLogConfig;
use crate::raft::{ConfChange, Config, Index, NodeId, ReadOnlyOption, Role, SingleChange, Storage};
use crate::shard::ShardConfig;
use crate::state::{BuiltinState, Command, Operation as Op, Outcome as Answer, StateMachine};

use super::invariants::{Invariants, Replica};
use super::linearizability::{self, Key, OpKind, Operation, Outcome, Value, Verdict};
use super::network::{Network, NetworkProfile, Packet};
use super::node::SimNode;

mod storage_faults;
use storage_faults::{storage_rng, StorageProfile};

/// Time units per Raft tick; message and disk delays are drawn in units.
const UNITS_PER_TICK: u64 = 10;
const ELECTION_TICKS: u32 = 10;
/// Ticks of faults before the cluster is healed.
const FAULT_TICKS: u64 = 300;
/// After healing, every group must elect a leader that commits in its term, and a
/// client write must be acknowledged, within this.
pub const LIVENESS_TICKS_MAX: u64 = 300;
/// Ticks given to clients to finish after liveness is shown.
const DRAIN_TICKS: u64 = 40;
/// A client sends a request unanswered for this long again, to another node, with
/// the same client id and sequence (as the real client retries).
const RESEND_TICKS: u64 = 15;
/// A client gives up on a request after this long: its outcome stays unknown.
const GIVE_UP_TICKS: u64 = 60;
/// Turns one step may take before the simulator calls it a livelock.
const TURNS_PER_STEP_MAX: usize = 1000;

/// Everything a seed decides about a run, drawn up front (swarm testing: each seed
/// draws its own mix and rates of faults).
#[derive(Clone, Debug)]
pub struct Profile {
    pub voters: usize,
    pub groups: u64,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub lease_reads: bool,
    pub network: NetworkProfile,
    pub sync_delay_max_units: u64,
    /// One node whose fdatasyncs take this many times longer.
    pub slow_disk: Option<(usize, u64)>,
    pub crash_per_mille: u32,
    /// Of crashes, the share aimed at a node with writes in flight (per mille): the
    /// window between messages leaving and the fdatasync they depend on.
    pub crash_mid_flush_per_mille: u32,
    pub partition_per_mille: u32,
    pub conf_change_per_mille: u32,
    pub transfer_per_mille: u32,
    pub snapshot_distance: u64,
    pub clients: usize,
    pub keys: u8,
    /// Idle groups sleep (drawn from its own stream, so that adding it left every
    /// other draw of a seed as it was).
    pub quiesce: bool,
    /// Some writes are SQL statements (its own stream too; seeds without SQL draw
    /// nothing more than before).
    pub sql: bool,
}

impl Profile {
    fn draw(rng: &mut ChaCha8Rng) -> Profile {
        let check_quorum = rng.random_ratio(4, 5);
        let voters = if rng.random_bool(0.5) { 3 } else { 5 };
        Profile {
            voters,
            groups: rng.random_range(1..=3),
            pre_vote: rng.random_ratio(4, 5),
            check_quorum,
            lease_reads: check_quorum && rng.random_ratio(1, 3),
            network: NetworkProfile {
                drop_per_mille: rng.random_range(0..=100),
                duplicate_per_mille: rng.random_range(0..=50),
                delay_max_units: rng.random_range(1..=40),
            },
            sync_delay_max_units: rng.random_range(1..=30),
            slow_disk: rng.random_ratio(1, 4).then(|| (rng.random_range(0..voters), rng.random_range(3..=10))),
            crash_per_mille: rng.random_range(0..=20),
            crash_mid_flush_per_mille: rng.random_range(0..=1000),
            partition_per_mille: rng.random_range(0..=20),
            conf_change_per_mille: rng.random_range(0..=20),
            transfer_per_mille: rng.random_range(0..=10),
            snapshot_distance: rng.random_range(10..=80),
            clients: rng.random_range(2..=5),
            keys: rng.random_range(1..=4),
            quiesce: false,
            sql: false,
        }
    }
}

/// What one seed's run did, for the summary.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub ticks: u64,
    pub steps: u64,
    pub operations: usize,
    pub operations_completed: usize,
    pub resends: u64,
    pub crashes: u64,
    pub crashes_mid_flush: u64,
    pub writes_torn: u64,
    pub writes_lost: u64,
    pub partitions: u64,
    pub conf_changes: u64,
    pub transfers: u64,
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
    /// Bit flips and lost pages injected (each followed by a power cut).
    pub storage_faults: u64,
    /// Restarts after which the node abstained from elections (it lost entries).
    pub abstentions: u64,
    /// Recoveries that refused a damaged log (the node then stays down).
    pub nodes_refused: u64,
    pub fdatasync_failures: u64,
    /// Periods of a full disk, and flushes that waited for space in them.
    pub disks_full: u64,
    pub flushes_without_space: u64,
    /// Groups found asleep by a tick, and sleeping followers woken by node liveness.
    pub groups_slept: u64,
    pub liveness_wakes: u64,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    pub recovery_ticks: u64,
}

#[derive(Debug)]
pub struct Failure {
    pub seed: u64,
    pub reason: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} failed: {}\n  replay: cargo run --profile ci --bin quarry-sim -- --seed {}",
            self.seed, self.reason, self.seed
        )
    }
}

/// Test-only switches that break the system on purpose, to prove the checks can fail.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sabotage {
    /// Commit entries of earlier terms by counting replicas (Raft Figure 8).
    #[cfg(test)]
    pub commit_any_term: bool,
    /// Grant votes without the candidate's log being up to date (§5.4.1).
    #[cfg(test)]
    pub vote_for_stale_logs: bool,
    /// Send a vote grant before the vote is durable.
    #[cfg(test)]
    pub vote_before_durable: bool,
    /// The log's fdatasync returns without making anything durable.
    #[cfg(test)]
    pub skip_fdatasync: bool,
    /// A replica that lost acknowledged entries to a storage fault votes at once.
    #[cfg(test)]
    pub ignore_damage: bool,
}

/// A client request and how far it got.
struct Request {
    op: usize,
    group: GroupId,
    key: Key,
    /// The write, sent again unchanged on every retry; `None` for a read.
    command: Option<Command>,
    answer: Pending,
    /// The highest index committed in the group when the request was made: a read
    /// must reflect at least that.
    committed_at_call: Index,
    resend_at: u64,
    give_up_at: u64,
}

enum Pending {
    /// To be sent (again) at the next opportunity.
    Unsent,
    Write(flume::Receiver<Result<Answer, RequestError>>),
    Read(flume::Receiver<Result<Bytes, RequestError>>),
}

struct Client {
    id: u64,
    sequence: u64,
    target: NodeId,
    request: Option<Request>,
}

/// The random streams faults draw from: storage faults have their own, so a seed's
/// other faults stay where they were.
#[derive(Clone, Copy)]
enum Stream {
    Main,
    Storage,
}

enum EventKind {
    FlushDone,
    SnapshotWritten(u64),
}

/// A directory for one seed's disks, removed afterwards.
struct SimDir(PathBuf);

impl SimDir {
    fn new(seed: u64) -> std::io::Result<SimDir> {
        // tmpfs when there is one: the simulated disk's durability is its own.
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = base.join(format!("quarry-sim-{}-{seed}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(SimDir(dir))
    }
}

impl Drop for SimDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Simulation {
    rng: ChaCha8Rng,
    profile: Profile,
    storage: StorageProfile,
    /// The storage faults' own stream: seeds keep their other faults where they were.
    storage_rng: ChaCha8Rng,
    /// While the faulty node's disk is full: when it frees up.
    disk_full_until: Option<u64>,
    sabotage: Sabotage,
    now: u64,
    nodes: Vec<SimNode>,
    /// Tick phase and period (in units) of each node: nodes neither tick in lockstep
    /// nor at the same rate (within the lease's clock-drift bound).
    phases: Vec<u64>,
    periods: Vec<u64>,
    network: Network,
    /// (time, sequence) → (node index, incarnation, what completes).
    events: BTreeMap<(u64, u64), (usize, u64, EventKind)>,
    event_sequence: u64,
    restarts: BTreeMap<usize, u64>,
    partition_heals_at: Option<u64>,
    invariants: BTreeMap<GroupId, Invariants>,
    clients: Vec<Client>,
    history: Vec<Operation>,
    discarded: Vec<bool>,
    /// Each operation's (client id, sequence), for writes.
    identities: Vec<Option<(u64, u64)>>,
    /// The revision each (key, value) was written at, as answers revealed it.
    revisions: HashMap<(Key, Value), u64>,
    report: Report,
    _dir: SimDir,
}

/// Runs one seed to completion.
pub fn run_seed(seed: u64) -> Result<Report, Failure> {
    run_seed_with(seed, Sabotage::default())
}

pub fn run_seed_with(seed: u64, sabotage: Sabotage) -> Result<Report, Failure> {
    let fail = |reason: String| Failure { seed, reason };
    // A panic (a broken invariant asserted in the code under test) is a failure of
    // this seed, reported with it.
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut sim = Simulation::new(seed, sabotage).map_err(|e| format!("simulator set-up: {e}"))?;
        sim.run()?;
        Ok(sim.report)
    }));
    match run {
        Ok(result) => result.map_err(fail),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(fail(format!("panicked: {message}")))
        }
    }
}

fn in_group(group: GroupId, reason: String) -> String {
    format!("group {group}: {reason}")
}

fn trace_on() -> bool {
    std::env::var_os("SIM_TRACE").is_some()
}

fn image_hash(state: &BuiltinState) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    state.snapshot().hash(&mut hasher);
    hasher.finish()
}

/// A SQL write for `key`: the row's value, with the entry's clock and randomness; a
/// failing one inserts the row twice, so it must fail whole, the same way everywhere.
fn sql_write(key: Key, value: Value, now: u64, failing: bool) -> crate::sql::Execute {
    use crate::sql::{Statement, StatementKind, Value as V};
    let statement = |kind, text: &str, params| Statement { kind, text: text.into(), params, named: Vec::new() };
    let row = vec![V::Integer(i64::from(key)), V::Integer(value as i64)];
    let mut statements = vec![
        statement(StatementKind::CreateTable, "CREATE TABLE IF NOT EXISTS t(k INTEGER PRIMARY KEY, v, at, r)", vec![]),
        statement(StatementKind::Data, "INSERT OR REPLACE INTO t VALUES (?, ?, datetime('now'), random())", row),
    ];
    if failing {
        statements.push(statement(
            StatementKind::Data,
            "INSERT INTO t(k) VALUES (?)",
            vec![V::Integer(i64::from(key))],
        ));
    }
    crate::sql::Execute { database: "sim".into(), now_ms: now as i64, seed: value, statements }
}

fn key_bytes(key: Key) -> Bytes {
    Bytes::from(vec![b'k', key])
}

/// A read's answer: the replica's applied index, then the value and its revision.
fn read_query(key: Key) -> crate::shard::Query<BuiltinState> {
    Box::new(move |state: &BuiltinState| {
        let mut out = BytesMut::new();
        out.put_u64(state.last_applied());
        if let Some(v) = state.get(&key_bytes(key)) {
            out.put_slice(&v.value);
            out.put_u64(v.revision);
        }
        out.freeze()
    })
}

impl Simulation {
    fn new(seed: u64, sabotage: Sabotage) -> std::io::Result<Simulation> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut profile = Profile::draw(&mut rng);
        profile.quiesce = ChaCha8Rng::seed_from_u64(seed ^ 0x5149_4553_4345_4e54).random_ratio(3, 4);
        profile.sql = ChaCha8Rng::seed_from_u64(seed ^ 0x5351_4c5f_5752_4954).random_ratio(1, 2);
        if let Some(forced) = std::env::var_os("SIM_QUIESCE") {
            profile.quiesce = forced == "1";
        }
        let dir = SimDir::new(seed)?;
        let voters: Vec<NodeId> = (1..=profile.voters as NodeId).collect();
        // One spare node, outside the configuration, for membership changes.
        let node_count = profile.voters + 1;
        let nodes = (1..=node_count as NodeId)
            .map(|id| SimNode::new(id, shard_config(&profile, &dir.0, id, &voters)))
            .collect();
        let phases = (0..node_count).map(|_| rng.random_range(0..UNITS_PER_TICK)).collect();
        // ±10 % clock-rate drift, inside the 20 % that `lease_drift_margin_ticks` allows.
        let periods = (0..node_count).map(|_| rng.random_range(UNITS_PER_TICK - 1..=UNITS_PER_TICK + 1)).collect();
        let clients =
            (0..profile.clients).map(|c| Client { id: c as u64 + 1, sequence: 0, target: 1, request: None }).collect();
        let invariants = (0..profile.groups).map(|g| (g, Invariants::new())).collect();
        let mut storage_rng = storage_rng(seed);
        let storage = StorageProfile::draw(&mut storage_rng, profile.voters);
        Ok(Simulation {
            rng,
            profile,
            storage,
            storage_rng,
            disk_full_until: None,
            sabotage,
            now: 0,
            nodes,
            phases,
            periods,
            network: Network::default(),
            events: BTreeMap::new(),
            event_sequence: 0,
            restarts: BTreeMap::new(),
            partition_heals_at: None,
            invariants,
            clients,
            history: Vec::new(),
            discarded: Vec::new(),
            identities: Vec::new(),
            revisions: HashMap::new(),
            report: Report { seed, ..Report::default() },
            _dir: dir,
        })
    }

    fn run(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            self.start_node(i)?;
        }
        let heal_at = FAULT_TICKS * UNITS_PER_TICK;
        let mut recovered_at: Option<u64> = None;
        loop {
            self.step_time()?;
            if self.now.is_multiple_of(UNITS_PER_TICK) {
                let tick = self.now / UNITS_PER_TICK;
                if self.now < heal_at {
                    self.inject_faults()?;
                } else if self.now == heal_at {
                    self.heal_everything()?;
                }
                self.restart_due()?;
                self.run_clients()?;
                if self.now >= heal_at {
                    if recovered_at.is_none() && self.recovered(heal_at) {
                        recovered_at = Some(tick);
                        self.report.recovery_ticks = tick - FAULT_TICKS;
                    }
                    match recovered_at {
                        Some(at) if tick >= at + DRAIN_TICKS => break,
                        None if tick > FAULT_TICKS + LIVENESS_TICKS_MAX => {
                            return Err(format!(
                                "liveness: not every group had a leader committing in its term, and a client write \
                                 acknowledged, within {LIVENESS_TICKS_MAX} ticks of healing; cluster: {}",
                                self.describe()
                            ))
                        }
                        _ => {}
                    }
                }
            }
            self.now += 1;
        }
        self.report.ticks = self.now / UNITS_PER_TICK;
        self.report.messages_sent = self.network.sent;
        self.report.messages_dropped = self.network.dropped;
        self.report.snapshots_taken =
            self.nodes.iter().filter_map(|n| n.shard.as_ref()).map(|s| s.snapshots_taken).sum();
        self.report.flushes_without_space = self.nodes.iter().map(|n| n.flushes_without_space).sum();
        for node in &mut self.nodes {
            node.count_sleeps();
        }
        self.report.groups_slept = self.nodes.iter().map(|n| n.groups_slept).sum();
        self.report.liveness_wakes = self.nodes.iter().map(|n| n.liveness_wakes).sum();
        self.check_history()
    }

    /// Everything that happens at the current time unit: deliveries, completed disk
    /// writes, ticks.
    fn step_time(&mut self) -> Result<(), String> {
        while let Some(packet) = self.network.next_due(self.now) {
            let i = (packet.to - 1) as usize;
            let Some(shard) = self.nodes[i].shard.as_mut() else {
                continue;
            };
            if trace_on() {
                eprintln!("t={} deliver {packet:?}", self.now);
            }
            shard.heard_from(packet.from, packet.incarnation);
            if let Some((group, m)) = packet.raft {
                shard.step(group, m).map_err(|e| format!("the core refused a message: {e}"))?;
            }
            self.node_turn(i)?;
        }
        while let Some((&key, _)) = self.events.iter().next() {
            if key.0 > self.now {
                break;
            }
            let (i, incarnation, kind) = self.events.remove(&key).expect("key just seen");
            if self.nodes[i].shard.is_none() || self.nodes[i].incarnation != incarnation {
                continue;
            }
            match kind {
                EventKind::FlushDone => {
                    if let Err(e) = self.nodes[i].finish_flush() {
                        self.shard_failed(i, e.to_string())?;
                        continue;
                    }
                }
                EventKind::SnapshotWritten(n) => {
                    let Some(write) = self.nodes[i].snapshot_writes.remove(&n) else { continue };
                    let result = write.job.write(&write.image);
                    self.nodes[i].shard().snapshot_written(write.job, result);
                }
            }
            self.node_turn(i)?;
        }
        for i in 0..self.nodes.len() {
            if self.now < self.phases[i] || !(self.now - self.phases[i]).is_multiple_of(self.periods[i]) {
                continue;
            }
            let Some(shard) = self.nodes[i].shard.as_mut() else {
                continue;
            };
            shard.tick();
            self.node_turn(i)?;
        }
        Ok(())
    }

    fn schedule(&mut self, i: usize, delay: u64, kind: EventKind) {
        self.event_sequence += 1;
        let incarnation = self.nodes[i].incarnation;
        self.events.insert((self.now + delay.max(1), self.event_sequence), (i, incarnation, kind));
    }

    fn sync_delay(&mut self, i: usize) -> u64 {
        let delay = self.rng.random_range(1..=self.profile.sync_delay_max_units);
        match self.profile.slow_disk {
            Some((slow, factor)) if slow == i => delay * factor,
            _ => delay,
        }
    }

    /// Runs node `i`'s shard until it has nothing more to do now: stage turns, send,
    /// start the disk writes, acknowledge what is durable; then checks every
    /// invariant. One simulation step.
    fn node_turn(&mut self, i: usize) -> Result<(), String> {
        self.report.steps += 1;
        let id = self.nodes[i].id;
        let failed = |e: crate::shard::ShardError| format!("node {id}: shard failed: {e}");
        for _ in 0..TURNS_PER_STEP_MAX {
            let Some(shard) = self.nodes[i].shard.as_mut() else {
                return Ok(());
            };
            let staged = shard.stage().map_err(failed)?;
            let (readies, ticket) = (staged.stats.readies, staged.ticket);
            self.nodes[i].staged.push_back(staged);
            self.absorb_trace(i, ticket)?;
            self.nodes[i].settle();
            self.start_snapshot_writes(i);
            self.send_outbox(i)?;
            let mut acked = 0;
            while self.nodes[i]
                .staged
                .front()
                .is_some_and(|s| self.nodes[i].shard.as_ref().is_some_and(|sh| sh.is_durable(s)))
            {
                let staged = self.nodes[i].staged.pop_front().expect("front exists");
                acked += self.nodes[i].shard().on_durable(staged).readies;
            }
            self.send_outbox(i)?;
            if self.nodes[i].begin_flush().map_err(failed)? {
                let delay = self.sync_delay(i);
                self.schedule(i, delay, EventKind::FlushDone);
            }
            if readies == 0 && acked == 0 {
                return self.check_node(i);
            }
        }
        Err(format!("node {id} still busy after {TURNS_PER_STEP_MAX} turns in one step"))
    }

    /// Feeds what the shard wrote and applied to the checks.
    fn absorb_trace(&mut self, i: usize, ticket: u64) -> Result<(), String> {
        use super::node::DurableChange;
        use crate::shard::TraceEvent;
        let trace = self.nodes[i].shard().take_trace();
        for notice in self.nodes[i].shard().take_notices() {
            if trace_on() {
                eprintln!("t={} node {}: {notice}", self.now, self.nodes[i].id);
            }
        }
        let id = self.nodes[i].id;
        let mut applied_groups = Vec::new();
        for event in trace {
            match event {
                TraceEvent::Installed { group, index, .. } => {
                    let base = self.invariants[&group].committed_hash(index).ok_or_else(|| {
                        format!("node {id} group {group} installed a snapshot at uncommitted {index}")
                    })?;
                    self.nodes[i].hashes.get_mut(&group).expect("hosted").reset(index, base);
                    self.nodes[i].staged(ticket, group, DurableChange::LastIndex(index));
                    self.report.snapshots_installed += 1;
                }
                TraceEvent::HardState { group, hard_state } => {
                    self.nodes[i].staged(ticket, group, DurableChange::HardState(hard_state));
                }
                TraceEvent::Appended { group, entries } => {
                    let last = entries.last().expect("appends are not empty").index;
                    self.nodes[i].staged(ticket, group, DurableChange::LastIndex(last));
                    let written = self.nodes[i].hashes.get_mut(&group).expect("hosted").append(&entries)?;
                    let invariants = self.invariants.get_mut(&group).expect("group checked");
                    for (index, term, hash) in written {
                        invariants.on_append(id, index, term, hash).map_err(|e| in_group(group, e))?;
                    }
                }
                TraceEvent::Applied { group, index, identity, outcome } => {
                    let node = &self.nodes[i];
                    let replica = Replica {
                        node: id,
                        incarnation: node.incarnation,
                        raft: node.shard.as_ref().expect("running").raft(group).expect("hosted"),
                        hashes: &node.hashes[&group],
                    };
                    let invariants = self.invariants.get_mut(&group).expect("group checked");
                    invariants.on_apply(&replica, index, identity, &outcome).map_err(|e| in_group(group, e))?;
                    applied_groups.push(group);
                }
            }
        }
        applied_groups.dedup();
        for group in applied_groups {
            let state = self.nodes[i].shard().state(group).expect("hosted");
            let (applied, hash) = (state.last_applied(), image_hash(state));
            let invariants = self.invariants.get_mut(&group).expect("group checked");
            invariants.on_state(id, applied, hash).map_err(|e| in_group(group, e))?;
        }
        Ok(())
    }

    fn start_snapshot_writes(&mut self, i: usize) {
        for write in self.nodes[i].shard().take_snapshot_writes() {
            self.event_sequence += 1;
            let n = self.event_sequence;
            self.nodes[i].snapshot_writes.insert(n, write);
            let delay = self.sync_delay(i) * 2;
            self.schedule(i, delay, EventKind::SnapshotWritten(n));
        }
    }

    /// Sends what node `i`'s shard has for its peers, checking first what each
    /// message vouches for.
    fn send_outbox(&mut self, i: usize) -> Result<(), String> {
        let shard = self.nodes[i].shard.as_mut().expect("running");
        let _ = shard.take_catch_up(); // No bulk transfer here: appends and snapshots do.
        let outbox = shard.take_outbox();
        let (from, incarnation) = (self.nodes[i].id, self.nodes[i].incarnation);
        for (to, messages) in outbox {
            if messages.is_empty() {
                let beacon = Packet { from, to, incarnation, raft: None };
                self.network.send(beacon, self.now, &self.profile.network, &mut self.rng);
            }
            for (group, m) in messages {
                let durable = self.nodes[i].durable[&group];
                let invariants = self.invariants.get_mut(&group).expect("group checked");
                invariants.on_send(durable, &m).map_err(|e| in_group(group, e))?;
                let packet = Packet { from, to, incarnation, raft: Some((group, m)) };
                self.network.send(packet, self.now, &self.profile.network, &mut self.rng);
            }
        }
        Ok(())
    }

    /// The per-replica checks of every group, after a step of node `i`.
    fn check_node(&mut self, i: usize) -> Result<(), String> {
        let node = &mut self.nodes[i];
        let Some(shard) = node.shard.as_ref() else { return Ok(()) };
        for (&group, invariants) in self.invariants.iter_mut() {
            let raft = shard.raft(group).expect("hosted");
            let hashes = node.hashes.get_mut(&group).expect("hosted");
            let replica = Replica { node: node.id, incarnation: node.incarnation, raft, hashes };
            invariants.check(&replica).map_err(|e| in_group(group, e))?;
            hashes.compact(raft.storage().first_index() - 1);
        }
        Ok(())
    }

    fn start_node(&mut self, i: usize) -> Result<(), String> {
        if self.nodes[i].refused {
            self.repair(i)?;
        }
        let seed = self.rng.next_u64();
        if trace_on() {
            eprintln!("t={} start node {}", self.now, self.nodes[i].id);
        }
        // After a storage fault, the node's log as it was before (for the checks).
        let damaged = self.nodes[i].storage_fault.then(|| self.nodes[i].hashes.clone());
        let invariants = &self.invariants;
        if let Err(reason) = self.nodes[i].start(seed, |group, index| invariants[&group].committed_hash(index)) {
            return self.recovery_refused(i, reason);
        }
        self.nodes[i].storage_fault = false;
        let id = self.nodes[i].id;
        for (&group, invariants) in self.invariants.iter_mut() {
            let before = damaged.as_ref().and_then(|hashes| hashes.get(&group));
            invariants.on_restart(id, self.nodes[i].durable[&group], before).map_err(|e| in_group(group, e))?;
        }
        let shard = self.nodes[i].shard();
        if (0..self.profile.groups).any(|g| shard.raft(g).is_some_and(|r| r.is_abstaining())) {
            self.report.abstentions += 1;
        }
        #[cfg(test)]
        {
            let sabotage = self.sabotage;
            self.nodes[i].disk().ignore_fdatasync = sabotage.skip_fdatasync;
            for raft in self.nodes[i].shard().rafts_mut() {
                raft.broken_commit_rule = sabotage.commit_any_term;
                raft.broken_vote_rule = sabotage.vote_for_stale_logs;
                raft.broken_vote_durability = sabotage.vote_before_durable;
                if sabotage.ignore_damage {
                    raft.forget_abstention();
                }
            }
        }
        let _ = self.sabotage;
        self.node_turn(i)
    }

    fn inject_faults(&mut self) -> Result<(), String> {
        let p = self.profile.clone();
        if self.rng.random_range(0..1000) < p.crash_per_mille {
            self.crash_one()?;
        }
        match self.partition_heals_at {
            Some(at) if self.now >= at => {
                self.network.heal();
                self.partition_heals_at = None;
            }
            None if self.rng.random_range(0..1000) < p.partition_per_mille => {
                self.partition();
                let ticks = self.rng.random_range(10..=80);
                self.partition_heals_at = Some(self.now + ticks * UNITS_PER_TICK);
                self.report.partitions += 1;
            }
            _ => {}
        }
        if self.rng.random_range(0..1000) < p.conf_change_per_mille {
            self.change_membership()?;
        }
        if self.rng.random_range(0..1000) < p.transfer_per_mille {
            self.transfer_leadership()?;
        }
        self.inject_storage_fault()
    }

    /// Crashes a running node: often one whose writes are in flight (messages have
    /// left that its fdatasync vouches for), otherwise any.
    fn crash_one(&mut self) -> Result<(), String> {
        let alive: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.nodes[i].shard.is_some()).collect();
        let flushing: Vec<usize> = alive.iter().copied().filter(|&i| self.nodes[i].flush.is_some()).collect();
        let aim = self.rng.random_range(0..1000) < self.profile.crash_mid_flush_per_mille;
        let pool = if aim && !flushing.is_empty() { &flushing } else { &alive };
        let Some(&i) = pool.choose(&mut self.rng) else { return Ok(()) };
        if self.nodes[i].flush.is_some() {
            self.report.crashes_mid_flush += 1;
        }
        self.crash_node(i, Stream::Main)
    }

    /// A power cut on node `i`, which comes back 5 to 60 ticks later; its draws come
    /// from `stream`.
    fn crash_node(&mut self, i: usize, stream: Stream) -> Result<(), String> {
        let rng = match stream {
            Stream::Main => &mut self.rng,
            Stream::Storage => &mut self.storage_rng,
        };
        let damage = self.nodes[i].crash(rng)?;
        let down_ticks = rng.random_range(5..=60);
        if trace_on() {
            eprintln!("t={} crash node {}: {damage:?}", self.now, self.nodes[i].id);
        }
        self.report.crashes += 1;
        self.report.writes_torn += damage.writes_torn;
        self.report.writes_lost += damage.writes_lost;
        self.restarts.insert(i, self.now + down_ticks * UNITS_PER_TICK);
        Ok(())
    }

    /// Cuts the network: symmetric halves, one node's outbound or inbound links, or a ring.
    fn partition(&mut self) {
        let ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        match self.rng.random_range(0..3) {
            0 => {
                let side: Vec<bool> = ids.iter().map(|_| self.rng.random_bool(0.5)).collect();
                for (a, &x) in ids.iter().enumerate() {
                    for (b, &y) in ids.iter().enumerate() {
                        if side[a] != side[b] {
                            self.network.block(x, y);
                        }
                    }
                }
            }
            1 => {
                let victim = *ids.choose(&mut self.rng).expect("nodes exist");
                let outbound = self.rng.random_bool(0.5);
                for &other in ids.iter().filter(|&&o| o != victim) {
                    if outbound {
                        self.network.block(victim, other);
                    } else {
                        self.network.block(other, victim);
                    }
                }
            }
            _ => {
                let n = ids.len();
                for a in 0..n {
                    for b in 0..n {
                        let neighbours = (a + 1) % n == b || (b + 1) % n == a;
                        if a != b && !neighbours {
                            self.network.block(ids[a], ids[b]);
                        }
                    }
                }
            }
        }
    }

    /// The node leading `group` in the highest term, if any.
    fn leader_index(&self, group: GroupId) -> Option<usize> {
        let leading =
            |i: &usize| self.nodes[*i].shard.as_ref().and_then(|s| s.raft(group)).filter(|r| r.role() == Role::Leader);
        (0..self.nodes.len()).filter(|i| leading(i).is_some()).max_by_key(|i| leading(i).map(|r| r.term()))
    }

    /// Proposes a random membership change of a random group through its leader.
    fn change_membership(&mut self) -> Result<(), String> {
        let group = self.rng.random_range(0..self.profile.groups);
        let Some(li) = self.leader_index(group) else {
            return Ok(());
        };
        let conf = self.nodes[li].shard().raft(group).expect("hosted").conf_state().clone();
        let outsiders: Vec<NodeId> =
            self.nodes.iter().map(|n| n.id).filter(|id| !conf.members().contains(id)).collect();
        let learners: Vec<NodeId> = conf.learners.iter().copied().collect();
        let voters: Vec<NodeId> = conf.voters.iter().copied().collect();
        let change = match self.rng.random_range(0..5) {
            0 => outsiders.choose(&mut self.rng).map(|&id| vec![SingleChange::AddLearner(id)]),
            1 => learners.choose(&mut self.rng).map(|&id| vec![SingleChange::AddVoter(id)]),
            2 if voters.len() > 3 => voters.choose(&mut self.rng).map(|&id| vec![SingleChange::RemoveNode(id)]),
            3 if voters.len() > 3 => voters.choose(&mut self.rng).map(|&id| vec![SingleChange::AddLearner(id)]),
            4 => match (learners.choose(&mut self.rng), voters.choose(&mut self.rng)) {
                (Some(&new), Some(&old)) => Some(vec![SingleChange::AddVoter(new), SingleChange::RemoveNode(old)]),
                _ => None,
            },
            _ => None,
        };
        let Some(change) = change else { return Ok(()) };
        let (reply, answer) = flume::bounded(1);
        self.nodes[li].shard().propose_conf_change(group, ConfChange::Change(change), reply);
        if matches!(answer.try_recv(), Err(flume::TryRecvError::Empty)) {
            self.report.conf_changes += 1;
        }
        self.node_turn(li)
    }

    fn transfer_leadership(&mut self) -> Result<(), String> {
        let group = self.rng.random_range(0..self.profile.groups);
        let Some(li) = self.leader_index(group) else {
            return Ok(());
        };
        let voters: Vec<NodeId> =
            self.nodes[li].shard().raft(group).expect("hosted").conf_state().voters.iter().copied().collect();
        let Some(&to) = voters.choose(&mut self.rng) else {
            return Ok(());
        };
        if self.nodes[li].shard().transfer_leader(group, to).is_ok() {
            self.report.transfers += 1;
        }
        self.node_turn(li)
    }

    fn heal_everything(&mut self) -> Result<(), String> {
        self.network.heal();
        self.partition_heals_at = None;
        self.profile.network.drop_per_mille = 0;
        self.profile.network.duplicate_per_mille = 0;
        // A disk slower than the election timeout keeps its node from ever leading
        // (as in etcd): liveness is owed once disks are healthy again.
        self.profile.slow_disk = None;
        self.free_disk_space();
        self.repair_damaged_nodes()?;
        for i in 0..self.nodes.len() {
            if self.nodes[i].shard.is_none() {
                self.restarts.insert(i, self.now);
            }
        }
        Ok(())
    }

    fn restart_due(&mut self) -> Result<(), String> {
        let due: Vec<usize> = self.restarts.iter().filter(|(_, &at)| at <= self.now).map(|(&i, _)| i).collect();
        for i in due {
            self.restarts.remove(&i);
            self.start_node(i)?;
        }
        Ok(())
    }

    /// Whether, since healing, every group's leader has committed in its term and a
    /// client write issued after healing was acknowledged.
    fn recovered(&self, healed_at: u64) -> bool {
        let leaders_committed = (0..self.profile.groups).all(|group| {
            self.leader_index(group).is_some_and(|i| {
                let raft = self.nodes[i].shard.as_ref().and_then(|s| s.raft(group)).expect("leader runs");
                raft.term_at(raft.committed()) == Some(raft.term())
            })
        });
        let write_after_heal = self.history.iter().enumerate().any(|(op, o)| {
            o.call >= healed_at && !self.discarded[op] && matches!(o.outcome, Outcome::Done | Outcome::CasResult(_))
        });
        leaders_committed && write_after_heal
    }

    /// One line per node and group: role, term, log and configuration.
    fn describe(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let Some(shard) = &node.shard else {
                let why = if node.refused { " (its recovery refused a damaged log)" } else { "" };
                out.push_str(&format!("\n  node {}: down{why}", node.id));
                continue;
            };
            for group in 0..self.profile.groups {
                let raft = shard.raft(group).expect("hosted");
                let conf = raft.conf_state();
                out.push_str(&format!(
                    "\n  node {} group {group}: {:?}{} term {} leader {:?} last {} commit {} voters {:?} outgoing {:?} \
                     learners {:?}",
                    node.id,
                    raft.role(),
                    if raft.is_abstaining() { " (abstaining)" } else { "" },
                    raft.term(),
                    raft.leader(),
                    raft.last_index(),
                    raft.committed(),
                    conf.voters,
                    conf.voters_outgoing,
                    conf.learners
                ));
            }
        }
        out
    }

    fn random_node_id(&mut self) -> NodeId {
        self.rng.random_range(1..=self.nodes.len() as NodeId)
    }

    /// Each client with a request polls for its answer, sends it again or gives up;
    /// each idle client may start a new one.
    fn run_clients(&mut self) -> Result<(), String> {
        for c in 0..self.clients.len() {
            if self.clients[c].request.is_some() {
                self.poll_client(c)?;
            } else if self.rng.random_bool(0.5) {
                self.start_request(c);
            }
            if self.clients[c].request.as_ref().is_some_and(|r| matches!(r.answer, Pending::Unsent)) {
                self.send_request(c)?;
            }
        }
        Ok(())
    }

    fn start_request(&mut self, c: usize) {
        let key: Key = self.rng.random_range(0..self.profile.keys);
        let group = group_of_key(&key_bytes(key), self.profile.groups);
        let op = self.history.len();
        let value = op as Value + 1;
        let sql = self.profile.sql && self.rng.random_ratio(1, 8);
        let (kind, operation) = match self.rng.random_range(0..10) {
            _ if sql => {
                let failing = self.rng.random_ratio(1, 4);
                (OpKind::Sql { failing }, Some(Op::Sql(sql_write(key, value, self.now, failing))))
            }
            0..=3 => (
                OpKind::Put(value),
                Some(Op::Put { key: key_bytes(key), value: Bytes::from(value.to_be_bytes().to_vec()) }),
            ),
            4..=7 => (OpKind::Get, None),
            _ => {
                let known = self.latest_known_value(key);
                let revision = known.and_then(|v| self.revisions.get(&(key, v)).copied());
                let expected = if revision.is_some() { known } else { None };
                let value_bytes = Bytes::from(value.to_be_bytes().to_vec());
                let cas = Op::Cas { key: key_bytes(key), expected_revision: revision.unwrap_or(0), value: value_bytes };
                (OpKind::Cas { expected, new: value }, Some(cas))
            }
        };
        let client = &mut self.clients[c];
        let command = operation.map(|operation| {
            client.sequence += 1;
            Command { client: client.id, sequence: client.sequence, operation }
        });
        let committed_at_call = self.invariants[&group].committed_index();
        self.clients[c].request = Some(Request {
            op,
            group,
            key,
            command,
            answer: Pending::Unsent,
            committed_at_call,
            resend_at: 0,
            give_up_at: self.now + GIVE_UP_TICKS * UNITS_PER_TICK,
        });
        let identity =
            self.clients[c].request.as_ref().and_then(|r| r.command.as_ref()).map(|w| (w.client, w.sequence));
        self.history.push(Operation {
            client: c as u64,
            key,
            kind,
            call: self.now,
            ret: u64::MAX,
            outcome: Outcome::Unknown,
        });
        // SQL writes touch no register: the replicas' equal images check them.
        self.discarded.push(sql);
        self.identities.push(identity);
    }

    /// Sends the client's request to its target node (the same command every time).
    fn send_request(&mut self, c: usize) -> Result<(), String> {
        let i = (self.clients[c].target - 1) as usize;
        if self.nodes[i].shard.is_none() {
            self.clients[c].target = self.random_node_id();
            return Ok(());
        }
        let now = self.now;
        let request = self.clients[c].request.as_mut().expect("a request to send");
        if request.resend_at > 0 {
            self.report.resends += 1;
        }
        request.resend_at = now + RESEND_TICKS * UNITS_PER_TICK;
        let shard = self.nodes[i].shard.as_mut().expect("running");
        match &request.command {
            Some(command) => {
                let (reply, answer) = flume::bounded(1);
                shard.propose(request.group, command, reply);
                request.answer = Pending::Write(answer);
            }
            None => {
                let (reply, answer) = flume::bounded(1);
                shard.read(request.group, read_query(request.key), reply);
                request.answer = Pending::Read(answer);
            }
        }
        self.node_turn(i)
    }

    fn poll_client(&mut self, c: usize) -> Result<(), String> {
        let request = self.clients[c].request.as_ref().expect("polled with a request");
        let answered: Option<Result<Result<Answer, Bytes>, RequestError>> = match &request.answer {
            Pending::Unsent => None,
            Pending::Write(rx) => match rx.try_recv() {
                Ok(answer) => Some(answer.map(Ok)),
                Err(flume::TryRecvError::Empty) => None,
                // The node crashed with the request: its fate is unknown; resend.
                Err(flume::TryRecvError::Disconnected) => Some(Err(RequestError::Unknown)),
            },
            Pending::Read(rx) => match rx.try_recv() {
                Ok(answer) => Some(answer.map(Err)),
                Err(flume::TryRecvError::Empty) => None,
                Err(flume::TryRecvError::Disconnected) => Some(Err(RequestError::Unknown)),
            },
        };
        match answered {
            Some(Ok(Ok(answer))) => self.finish_write(c, answer),
            Some(Ok(Err(read))) => self.finish_read(c, read),
            Some(Err(RequestError::NotLeader { leader })) => {
                self.clients[c].target = leader.unwrap_or_else(|| self.random_node_id());
                self.resend_or_give_up(c);
                Ok(())
            }
            Some(Err(
                RequestError::Unknown | RequestError::Dropped | RequestError::Refused(_) | RequestError::DiskFull(_),
            )) => {
                self.clients[c].target = self.random_node_id();
                self.resend_or_give_up(c);
                Ok(())
            }
            Some(Err(e)) => Err(format!("client {c}: unexpected answer {e}")),
            None if self.now >= request.give_up_at => {
                self.give_up(c);
                Ok(())
            }
            None if self.now >= request.resend_at && request.resend_at > 0 => {
                self.clients[c].target = self.random_node_id();
                self.clients[c].request.as_mut().expect("checked").answer = Pending::Unsent;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn resend_or_give_up(&mut self, c: usize) {
        let request = self.clients[c].request.as_mut().expect("a request");
        if self.now >= request.give_up_at {
            self.give_up(c);
        } else {
            request.answer = Pending::Unsent;
        }
    }

    /// The client stops waiting: a write's outcome stays unknown (it may still
    /// apply); a read had no effect and is dropped from the history.
    fn give_up(&mut self, c: usize) {
        let request = self.clients[c].request.take().expect("a request");
        if request.command.is_none() {
            self.discarded[request.op] = true;
        }
        self.clients[c].target = self.random_node_id();
    }

    fn finish_write(&mut self, c: usize, answer: Answer) -> Result<(), String> {
        let request = self.clients[c].request.take().expect("a request");
        let op = &mut self.history[request.op];
        op.ret = self.now;
        op.outcome = match (op.kind, answer) {
            (OpKind::Put(v), Answer::Written { revision }) => {
                self.revisions.insert((request.key, v), revision);
                Outcome::Done
            }
            (OpKind::Cas { new, .. }, Answer::Written { revision }) => {
                self.revisions.insert((request.key, new), revision);
                Outcome::CasResult(true)
            }
            (OpKind::Cas { .. }, Answer::CasFailed { .. }) => Outcome::CasResult(false),
            (OpKind::Sql { failing: false }, Answer::SqlApplied(_)) => Outcome::Done,
            (OpKind::Sql { failing: true }, Answer::SqlFailed(f)) if f.message.contains("UNIQUE") => Outcome::Done,
            (kind, answer) => return Err(format!("client {c}: {kind:?} answered {answer:?}")),
        };
        Ok(())
    }

    fn finish_read(&mut self, c: usize, mut read: Bytes) -> Result<(), String> {
        let request = self.clients[c].request.take().expect("a request");
        if read.len() != 8 && read.len() != 24 {
            return Err(format!("client {c}: malformed read answer of {} bytes", read.len()));
        }
        let applied = read.get_u64();
        if applied < request.committed_at_call {
            return Err(format!(
                "stale read: group {} answered at applied index {applied}, but {} was committed before the read \
                 was made",
                request.group, request.committed_at_call
            ));
        }
        let value = (read.len() == 16).then(|| {
            let value = read.get_u64();
            self.revisions.insert((request.key, value), read.get_u64());
            value
        });
        let op = &mut self.history[request.op];
        op.ret = self.now;
        op.outcome = Outcome::Read(value);
        Ok(())
    }

    /// A plausible current value, so that some CAS operations succeed.
    fn latest_known_value(&self, key: Key) -> Option<Value> {
        let register_op = |o: &&Operation| !matches!(o.kind, OpKind::Sql { .. });
        self.history.iter().rev().filter(register_op).find(|o| o.key == key && o.outcome != Outcome::Unknown).and_then(
            |o| match (o.kind, o.outcome) {
                (OpKind::Put(v), _) => Some(v),
                (OpKind::Cas { new, .. }, Outcome::CasResult(true)) => Some(new),
                (_, Outcome::Read(v)) => v,
                _ => None,
            },
        )
    }

    fn check_history(&mut self) -> Result<(), String> {
        // A write whose outcome the client never learned is settled by what the
        // replicas did: one that changed no replica's state was observed by no read,
        // so it is left out (as the search could leave it out, only cheaper); one that
        // did must be linearized somewhere after its call.
        let took_effect: HashSet<(u64, u64)> =
            self.invariants.values().flat_map(|inv| inv.writes_that_took_effect()).collect();
        let mut ops = Vec::new();
        for ((op, &discarded), identity) in self.history.iter().zip(&self.discarded).zip(&self.identities) {
            let mut op = *op;
            if discarded {
                continue;
            }
            if let (Outcome::Unknown, Some(identity)) = (op.outcome, identity) {
                if !took_effect.contains(identity) {
                    continue;
                }
                op.outcome = match op.kind {
                    OpKind::Cas { .. } => Outcome::CasResult(true),
                    _ => Outcome::Done,
                };
            }
            ops.push(op);
        }
        let asked: Vec<&Operation> =
            self.history.iter().zip(&self.discarded).filter(|(_, &d)| !d).map(|(o, _)| o).collect();
        self.report.operations = asked.len();
        self.report.operations_completed = asked.iter().filter(|o| o.outcome != Outcome::Unknown).count();
        match linearizability::check(&ops) {
            Verdict::Linearizable => Ok(()),
            Verdict::NotLinearizable(v) => {
                Err(format!("linearizability: history of key {} admits no linearization: {:?}", v.key, v.operations))
            }
            Verdict::Undecided { key } => {
                let on_key: Vec<&Operation> = ops.iter().filter(|o| o.key == key).collect();
                let unknown = on_key.iter().filter(|o| o.outcome == Outcome::Unknown).count();
                Err(format!(
                    "linearizability: search budget exhausted on key {key} ({} operations, {unknown} of unknown outcome)",
                    on_key.len()
                ))
            }
        }
    }
}

/// One node's shard: every group, small log segments (so segments roll, seal and are
/// released often) and small Raft windows (so pipelining limits and probing happen).
fn shard_config(profile: &Profile, root: &Path, id: NodeId, voters: &[NodeId]) -> ShardConfig {
    let dir = root.join(format!("node{id}"));
    let mut raft = Config::new(id);
    raft.election_ticks = ELECTION_TICKS;
    raft.heartbeat_ticks = 2;
    raft.pre_vote = profile.pre_vote;
    raft.check_quorum = profile.check_quorum;
    raft.read_only = if profile.lease_reads { ReadOnlyOption::LeaseBased } else { ReadOnlyOption::Safe };
    raft.quiesce = profile.quiesce;
    raft.append_max_bytes = 512;
    raft.inflight_max_msgs = 4;
    raft.inflight_max_bytes = 2048;
    raft.entry_max_bytes = 256;
    raft.uncommitted_max_bytes = 8192;
    raft.snapshot_retry_ticks = 20;
    let founder = voters.contains(&id);
    ShardConfig {
        node: id,
        groups: (0..profile.groups).collect(),
        voters: if founder { voters.to_vec() } else { Vec::new() },
        raft,
        log: ShardLogConfig { segment_bytes: 64 << 10, free_segments_max: 2, ..ShardLogConfig::new(dir.join("log")) },
        snapshot_dir: dir.join("snapshots"),
        snapshot_distance: profile.snapshot_distance,
    }
}
