//! The simulation driver: a cluster, its clients and its faults, all driven by one seed.

use std::collections::BTreeMap;

use rand::seq::IndexedRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::raft::{ConfChange, Config, MemStorage, NodeId, ProposeError, ReadOnlyOption, Role, SingleChange};

use super::host::{Completion, ReadyOutput, SimNode, Waiting};
use super::invariants::Invariants;
use super::kv::{Key, KvCommand};
use super::linearizability::{self, OpKind, Operation, Outcome, Verdict};
use super::network::{Network, NetworkProfile};

/// Time units per Raft tick; message and disk delays are drawn in units.
const UNITS_PER_TICK: u64 = 10;
const ELECTION_TICKS: u32 = 10;
/// Ticks of faults before the cluster is healed.
const FAULT_TICKS: u64 = 300;
/// After healing, the cluster must elect a leader and commit a client write within this.
pub const LIVENESS_TICKS_MAX: u64 = 300;
/// Ticks given to clients to finish after liveness is shown.
const DRAIN_TICKS: u64 = 40;
const CLIENT_TIMEOUT_TICKS: u64 = 40;

/// Everything a seed decides about a run, drawn up front.
#[derive(Clone, Debug)]
pub struct Profile {
    pub voters: usize,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub lease_reads: bool,
    pub network: NetworkProfile,
    pub sync_delay_max_units: u64,
    pub crash_per_mille: u32,
    pub partition_per_mille: u32,
    pub conf_change_per_mille: u32,
    pub transfer_per_mille: u32,
    pub compact_every_entries: u64,
    pub clients: usize,
    pub keys: u8,
}

impl Profile {
    fn draw(rng: &mut ChaCha8Rng) -> Profile {
        let check_quorum = rng.random_ratio(4, 5);
        Profile {
            voters: if rng.random_bool(0.5) { 3 } else { 5 },
            pre_vote: rng.random_ratio(4, 5),
            check_quorum,
            lease_reads: check_quorum && rng.random_ratio(1, 3),
            network: NetworkProfile {
                drop_per_mille: rng.random_range(0..=100),
                duplicate_per_mille: rng.random_range(0..=50),
                delay_max_units: rng.random_range(1..=40),
            },
            sync_delay_max_units: rng.random_range(1..=30),
            crash_per_mille: rng.random_range(0..=20),
            partition_per_mille: rng.random_range(0..=20),
            conf_change_per_mille: rng.random_range(0..=20),
            transfer_per_mille: rng.random_range(0..=10),
            compact_every_entries: rng.random_range(10..=80),
            clients: rng.random_range(2..=5),
            keys: rng.random_range(1..=4),
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
    pub crashes: u64,
    pub partitions: u64,
    pub conf_changes: u64,
    pub transfers: u64,
    pub snapshots_installed: u64,
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

/// Test-only switches that break the core on purpose, to prove the checks can fail.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sabotage {
    /// Commit entries of earlier terms by counting replicas (Raft Figure 8).
    #[cfg(test)]
    pub commit_any_term: bool,
    /// Grant votes without the candidate's log being up to date (§5.4.1).
    #[cfg(test)]
    pub vote_for_stale_logs: bool,
}

struct Client {
    target: NodeId,
    /// The op in progress and the time it gives up.
    current: Option<(usize, u64)>,
}

struct Simulation {
    rng: ChaCha8Rng,
    profile: Profile,
    sabotage: Sabotage,
    now: u64,
    nodes: Vec<SimNode>,
    /// Tick phase and period (in units) of each node: nodes neither tick in lockstep
    /// nor at the same rate (within the lease's clock-drift bound).
    phases: Vec<u64>,
    periods: Vec<u64>,
    network: Network,
    /// (time, sequence) → (node index, incarnation).
    syncs: BTreeMap<(u64, u64), (usize, u64)>,
    sync_sequence: u64,
    restarts: BTreeMap<usize, u64>,
    partition_heals_at: Option<u64>,
    invariants: Invariants,
    clients: Vec<Client>,
    history: Vec<Operation>,
    discarded: Vec<bool>,
    report: Report,
}

/// Runs one seed to completion.
pub fn run_seed(seed: u64) -> Result<Report, Failure> {
    run_seed_with(seed, Sabotage::default())
}

pub fn run_seed_with(seed: u64, sabotage: Sabotage) -> Result<Report, Failure> {
    let mut sim = Simulation::new(seed, sabotage);
    sim.run().map_err(|reason| Failure { seed, reason })?;
    Ok(sim.report)
}

impl Simulation {
    fn new(seed: u64, sabotage: Sabotage) -> Simulation {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let profile = Profile::draw(&mut rng);
        let voters: Vec<NodeId> = (1..=profile.voters as NodeId).collect();
        // One spare node, outside the configuration, for membership changes.
        let node_count = profile.voters + 1;
        let nodes = (1..=node_count as NodeId)
            .map(|id| {
                let disk =
                    if voters.contains(&id) { MemStorage::bootstrap(voters.clone()) } else { MemStorage::default() };
                SimNode::new(id, disk)
            })
            .collect();
        let phases = (0..node_count).map(|_| rng.random_range(0..UNITS_PER_TICK)).collect();
        // ±10 % clock-rate drift, inside the 20 % that `lease_drift_margin_ticks` allows.
        let periods = (0..node_count).map(|_| rng.random_range(UNITS_PER_TICK - 1..=UNITS_PER_TICK + 1)).collect();
        let clients = (0..profile.clients).map(|_| Client { target: 1, current: None }).collect();
        Simulation {
            rng,
            profile,
            sabotage,
            now: 0,
            nodes,
            phases,
            periods,
            network: Network::default(),
            syncs: BTreeMap::new(),
            sync_sequence: 0,
            restarts: BTreeMap::new(),
            partition_heals_at: None,
            invariants: Invariants::new(),
            clients,
            history: Vec::new(),
            discarded: Vec::new(),
            report: Report { seed, ..Report::default() },
        }
    }

    fn run(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            self.start_node(i);
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
                    self.heal_everything();
                }
                self.restart_due();
                self.run_clients();
                self.compact_logs();
                if self.now >= heal_at {
                    if recovered_at.is_none() && self.recovered(heal_at) {
                        recovered_at = Some(tick);
                        self.report.recovery_ticks = tick - FAULT_TICKS;
                    }
                    match recovered_at {
                        Some(at) if tick >= at + DRAIN_TICKS => break,
                        None if tick > FAULT_TICKS + LIVENESS_TICKS_MAX => {
                            return Err(format!(
                                "liveness: no leader committed a client write within {LIVENESS_TICKS_MAX} ticks of \
                                 healing; cluster: {}",
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
        self.check_history()
    }

    /// Everything that happens at the current time unit: deliveries, syncs, ticks.
    fn step_time(&mut self) -> Result<(), String> {
        while let Some(m) = self.network.next_due(self.now) {
            let i = (m.to - 1) as usize;
            let Some(raft) = self.nodes[i].raft.as_mut() else {
                continue;
            };
            if std::env::var("SIM_TRACE").is_ok() {
                eprintln!("t={} deliver {:?}", self.now, m);
            }
            raft.step(m).map_err(|e| format!("core refused a message: {e}"))?;
            self.after_event(i)?;
        }
        while let Some((&key, &(i, incarnation))) = self.syncs.iter().next() {
            if key.0 > self.now {
                break;
            }
            self.syncs.remove(&key);
            let node = &mut self.nodes[i];
            if node.raft.is_none() || node.incarnation != incarnation {
                continue;
            }
            for m in node.sync() {
                self.network.send(m, self.now, &self.profile.network, &mut self.rng);
            }
            self.after_event(i)?;
        }
        for i in 0..self.nodes.len() {
            if self.now < self.phases[i] || !(self.now - self.phases[i]).is_multiple_of(self.periods[i]) {
                continue;
            }
            let Some(raft) = self.nodes[i].raft.as_mut() else {
                continue;
            };
            raft.tick();
            self.after_event(i)?;
        }
        Ok(())
    }

    /// Drains node `i`'s Readies and checks every invariant: one simulation step.
    fn after_event(&mut self, i: usize) -> Result<(), String> {
        self.report.steps += 1;
        loop {
            let node = &mut self.nodes[i];
            let Some(raft) = node.raft.as_mut() else {
                break;
            };
            if !raft.has_ready() {
                break;
            }
            let ready = raft.ready();
            let mut out = ReadyOutput::default();
            let invariants = &self.invariants;
            node.handle_ready(ready, |index| invariants.committed_hash(index), &mut out)?;
            self.absorb(i, out)?;
        }
        let node = &self.nodes[i];
        if node.has_unsynced() && !node.sync_scheduled {
            let delay = self.rng.random_range(1..=self.profile.sync_delay_max_units);
            self.sync_sequence += 1;
            self.syncs.insert((self.now + delay, self.sync_sequence), (i, node.incarnation));
            self.nodes[i].sync_scheduled = true;
        }
        self.invariants.check(&self.nodes)
    }

    fn absorb(&mut self, i: usize, out: ReadyOutput) -> Result<(), String> {
        let id = self.nodes[i].id;
        for m in out.messages {
            self.network.send(m, self.now, &self.profile.network, &mut self.rng);
        }
        if std::env::var("SIM_TRACE").is_ok() {
            eprintln!(
                "t={} node {} ready: appended {:?}",
                self.now,
                id,
                out.appended.iter().map(|a| (a.0, a.1)).collect::<Vec<_>>()
            );
        }
        for (index, term, hash) in out.appended {
            self.invariants.on_append(id, index, term, hash)?;
        }
        for (index, hash) in out.applied {
            self.invariants.on_apply(&self.nodes[i], index, hash)?;
        }
        if out.installed_snapshot.is_some() {
            self.report.snapshots_installed += 1;
        }
        for (op, completion) in out.completed {
            let outcome = match completion {
                Completion::Written { swapped } => match self.history[op].kind {
                    OpKind::Cas { .. } => Outcome::CasResult(swapped),
                    _ => Outcome::Done,
                },
                Completion::Read(value) => Outcome::Read(value),
            };
            self.finish_op(op, Some(outcome));
        }
        for op in out.failed {
            self.finish_op(op, None);
        }
        Ok(())
    }

    /// Records a client's answer; `None` means the op certainly did not take effect.
    fn finish_op(&mut self, op: usize, outcome: Option<Outcome>) {
        let client = &mut self.clients[self.history[op].client as usize];
        if client.current.map(|(current, _)| current) != Some(op) {
            return; // The client gave up on it already; its outcome stays unknown.
        }
        client.current = None;
        match outcome {
            Some(outcome) => {
                self.history[op].ret = self.now;
                self.history[op].outcome = outcome;
            }
            None => self.discarded[op] = true,
        }
    }

    fn start_node(&mut self, i: usize) {
        let base = self.nodes[i].disk.snapshot_ref().meta.index;
        let base_hash = self.invariants.committed_hash(base).expect("snapshots hold committed entries");
        let mut config = Config::new(self.nodes[i].id);
        config.election_ticks = ELECTION_TICKS;
        config.heartbeat_ticks = 2;
        config.pre_vote = self.profile.pre_vote;
        config.check_quorum = self.profile.check_quorum;
        config.read_only = if self.profile.lease_reads { ReadOnlyOption::LeaseBased } else { ReadOnlyOption::Safe };
        config.seed = self.rng.next_u64();
        // Small windows so that pipelining limits and probing are exercised.
        config.append_max_bytes = 256;
        config.inflight_max_msgs = 4;
        config.inflight_max_bytes = 1024;
        config.entry_max_bytes = 64;
        config.uncommitted_max_bytes = 4096;
        config.snapshot_retry_ticks = 20;
        self.nodes[i].start(config, base_hash);
        #[cfg(test)]
        {
            let raft = self.nodes[i].raft.as_mut().expect("just started");
            raft.broken_commit_rule = self.sabotage.commit_any_term;
            raft.broken_vote_rule = self.sabotage.vote_for_stale_logs;
        }
        let _ = self.sabotage;
    }

    fn inject_faults(&mut self) -> Result<(), String> {
        let p = self.profile.clone();
        if self.rng.random_range(0..1000) < p.crash_per_mille {
            let alive: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.nodes[i].raft.is_some()).collect();
            if let Some(&i) = alive.choose(&mut self.rng) {
                self.nodes[i].crash(&mut self.rng);
                self.report.crashes += 1;
                let down_ticks = self.rng.random_range(5..=60);
                self.restarts.insert(i, self.now + down_ticks * UNITS_PER_TICK);
            }
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

    fn leader_index(&self) -> Option<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].raft.as_ref().is_some_and(|r| r.role() == Role::Leader))
            .max_by_key(|&i| self.nodes[i].raft.as_ref().map(|r| r.term()))
    }

    /// Proposes a random membership change through the leader, if there is one.
    fn change_membership(&mut self) -> Result<(), String> {
        let Some(li) = self.leader_index() else {
            return Ok(());
        };
        let conf = self.nodes[li].raft.as_ref().expect("leader runs").conf_state().clone();
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
        if self.nodes[li].raft.as_mut().expect("leader runs").propose_conf_change(ConfChange::Change(change)).is_ok() {
            self.report.conf_changes += 1;
        }
        self.after_event(li)
    }

    fn transfer_leadership(&mut self) -> Result<(), String> {
        let Some(li) = self.leader_index() else {
            return Ok(());
        };
        let raft = self.nodes[li].raft.as_mut().expect("leader runs");
        let voters: Vec<NodeId> = raft.conf_state().voters.iter().copied().collect();
        let Some(&to) = voters.choose(&mut self.rng) else {
            return Ok(());
        };
        if raft.transfer_leader(to).is_ok() {
            self.report.transfers += 1;
        }
        self.after_event(li)
    }

    fn heal_everything(&mut self) {
        self.network.heal();
        self.partition_heals_at = None;
        self.profile.network.drop_per_mille = 0;
        self.profile.network.duplicate_per_mille = 0;
        for i in 0..self.nodes.len() {
            if self.nodes[i].raft.is_none() {
                self.restarts.insert(i, self.now);
            }
        }
    }

    fn restart_due(&mut self) {
        let due: Vec<usize> = self.restarts.iter().filter(|(_, &at)| at <= self.now).map(|(&i, _)| i).collect();
        for i in due {
            self.restarts.remove(&i);
            self.start_node(i);
        }
    }

    fn compact_logs(&mut self) {
        let every = self.profile.compact_every_entries;
        for node in &mut self.nodes {
            let Some(raft) = &node.raft else { continue };
            if node.applied >= raft.storage().snapshot_ref().meta.index + every {
                node.compact();
            }
        }
    }

    /// Whether, since healing, a leader has committed in its term and a client write
    /// issued after healing was acknowledged.
    fn recovered(&self, healed_at: u64) -> bool {
        let leader_committed = self.leader_index().is_some_and(|i| {
            let raft = self.nodes[i].raft.as_ref().expect("leader runs");
            raft.term_at(raft.committed()) == Some(raft.term())
        });
        let write_after_heal = self.history.iter().enumerate().any(|(op, o)| {
            o.call >= healed_at && !self.discarded[op] && matches!(o.outcome, Outcome::Done | Outcome::CasResult(_))
        });
        leader_committed && write_after_heal
    }

    /// One line per node: role, term, log and configuration.
    fn describe(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let Some(raft) = &node.raft else {
                out.push_str(&format!("\n  node {}: down", node.id));
                continue;
            };
            let conf = raft.conf_state();
            out.push_str(&format!(
                "\n  node {}: {:?} term {} leader {:?} last {} commit {} applied {} voters {:?} outgoing {:?} learners {:?}",
                node.id,
                raft.role(),
                raft.term(),
                raft.leader(),
                raft.last_index(),
                raft.committed(),
                node.applied,
                conf.voters,
                conf.voters_outgoing,
                conf.learners
            ));
        }
        out
    }

    /// Each idle client may start an operation; busy ones may give up.
    fn run_clients(&mut self) {
        for c in 0..self.clients.len() {
            if let Some((op, deadline)) = self.clients[c].current {
                if self.now >= deadline {
                    self.clients[c].current = None;
                    self.clients[c].target = self.random_node_id();
                    let _ = op; // The outcome stays unknown (return time infinite).
                }
                continue;
            }
            if self.rng.random_bool(0.5) {
                self.start_op(c);
            }
        }
    }

    fn random_node_id(&mut self) -> NodeId {
        self.rng.random_range(1..=self.nodes.len() as NodeId)
    }

    fn start_op(&mut self, c: usize) {
        let key: Key = self.rng.random_range(0..self.profile.keys);
        let op = self.history.len();
        let value = op as u64 + 1;
        let kind = match self.rng.random_range(0..10) {
            0..=3 => OpKind::Put(value),
            4..=7 => OpKind::Get,
            _ => {
                let expected = self.latest_known_value(key);
                OpKind::Cas { expected, new: value }
            }
        };
        let i = (self.clients[c].target - 1) as usize;
        let Some(raft) = self.nodes[i].raft.as_mut() else {
            self.clients[c].target = self.random_node_id();
            return;
        };
        let submitted = match kind {
            OpKind::Get => raft.read_index(op as u64).map(|()| None),
            OpKind::Put(value) => raft.propose(KvCommand::Put { key, value }.encode()).map(Some),
            OpKind::Cas { expected, new } => raft.propose(KvCommand::Cas { key, expected, new }.encode()).map(Some),
        };
        let waiting = Waiting { op, key };
        match submitted {
            Ok(Some(proposed)) => {
                self.nodes[i].pending_writes.insert(proposed.index, (proposed.term, waiting));
            }
            Ok(None) => {
                self.nodes[i].pending_reads.insert(op as u64, waiting);
            }
            Err(ProposeError::NotLeader { leader_hint }) => {
                self.clients[c].target = leader_hint.unwrap_or_else(|| self.random_node_id());
                return;
            }
            Err(_) => return,
        }
        self.history.push(Operation {
            client: c as u64,
            key,
            kind,
            call: self.now,
            ret: u64::MAX,
            outcome: Outcome::Unknown,
        });
        self.discarded.push(false);
        self.clients[c].current = Some((op, self.now + CLIENT_TIMEOUT_TICKS * UNITS_PER_TICK));
        let _ = self.after_event(i);
    }

    /// A plausible current value, so that some CAS operations succeed.
    fn latest_known_value(&self, key: Key) -> Option<u64> {
        self.history.iter().rev().find(|o| o.key == key && o.outcome != Outcome::Unknown).and_then(|o| {
            match (o.kind, o.outcome) {
                (OpKind::Put(v), _) => Some(v),
                (OpKind::Cas { new, .. }, Outcome::CasResult(true)) => Some(new),
                (_, Outcome::Read(v)) => v,
                _ => None,
            }
        })
    }

    fn check_history(&mut self) -> Result<(), String> {
        let ops: Vec<Operation> =
            self.history.iter().zip(&self.discarded).filter(|(_, &d)| !d).map(|(o, _)| *o).collect();
        self.report.operations = ops.len();
        self.report.operations_completed = ops.iter().filter(|o| o.outcome != Outcome::Unknown).count();
        match linearizability::check(&ops) {
            Verdict::Linearizable => Ok(()),
            Verdict::NotLinearizable(v) => {
                Err(format!("linearizability: history of key {} admits no linearization: {:?}", v.key, v.operations))
            }
            Verdict::Undecided { key } => Err(format!("linearizability: search budget exhausted on key {key}")),
        }
    }
}
