//! The shard's side of quiescence (`raft::quiesce`): which groups are awake and
//! need ticks, which have work for the next turn, and node-level liveness.
//!
//! A tick visits only awake groups and a turn only the groups that got an input, so
//! thousands of sleeping groups cost nothing per tick or per turn. A sleeping group
//! is woken by any input (its clock first catches up with the ticks it slept), and
//! the sleeping followers of a leader whose node has gone silent for an election
//! timeout are woken to elect another.
//!
//! Liveness: every batch from a node says it is alive, an empty one (a beacon) too.
//! A shard that has sent a peer nothing for a heartbeat interval puts an empty entry
//! for it in the outbox, which the host sends as an empty batch; the peer's host
//! reports every batch it gets with [`Shard::heard_from`], with the sender's incarnation (a
//! number drawn at each start). A new incarnation means the peer restarted and knows
//! no leader: the groups led here that it belongs to wake, so that their heartbeats
//! reach it (a restarted node that may not campaign — it abstains after losing
//! entries, or is a learner — would otherwise never hear of its sleeping leader), and
//! the sleeping followers of its former leaders wake to elect another.

use super::{Group, GroupId, Shard};
use crate::raft::NodeId;
use crate::state::StateMachine;

impl<S: StateMachine + Default> Shard<S> {
    /// The host heard from `node` (a batch, possibly empty, arrived from it), in
    /// its life `incarnation` (0: unknown).
    pub fn heard_from(&mut self, node: NodeId, incarnation: u64) {
        if node == self.node {
            return;
        }
        self.last_heard.insert(node, self.ticks);
        if incarnation == 0 {
            return;
        }
        let previous = self.incarnations.insert(node, incarnation);
        if previous.is_some_and(|p| p != incarnation) {
            self.wake_groups_of_restarted(node);
        }
    }

    /// `node` restarted: wake the sleeping groups it belongs to that are led here,
    /// and the sleeping followers of the groups it led.
    fn wake_groups_of_restarted(&mut self, node: NodeId) {
        let me = self.node;
        let sleeping: Vec<(GroupId, bool)> = self
            .groups
            .iter()
            .filter(|(_, g)| g.raft.is_quiesced())
            .filter_map(|(&group, g)| {
                let led_here = g.raft.leader() == Some(me) && g.raft.conf_state().members().contains(&node);
                let led_there = g.raft.leader() == Some(node);
                (led_here || led_there).then_some((group, led_here))
            })
            .collect();
        for (group, led_here) in sleeping {
            let Some(g) = self.rouse(group) else { continue };
            if led_here {
                g.raft.wake();
            } else {
                g.raft.leader_unreachable();
                self.liveness_wakes += 1;
            }
        }
    }

    /// The group an input is for, awake and listed for the next turn. A sleeping
    /// group's clock first catches up with the ticks it slept through.
    pub(super) fn rouse(&mut self, group: GroupId) -> Option<&mut Group<S>> {
        let g = self.groups.get_mut(&group)?;
        let slept = self.ticks - g.clock;
        if slept > 0 {
            g.raft.advance_clock(slept);
            g.clock = self.ticks;
        }
        if !g.touched {
            g.touched = true;
            self.touched.push(group);
        }
        // Whatever the input is, the group may be awake after it: tick it from now on
        // (a tick finds out if it is asleep after all).
        if !g.awake {
            g.awake = true;
            self.awake.insert(group);
        }
        Some(g)
    }

    /// Ticks every awake group; a group found asleep leaves the awake set, its clock
    /// stopped at the last tick it was given.
    pub(super) fn tick_awake_groups(&mut self) {
        let now = self.ticks;
        let (groups, touched, slept) = (&mut self.groups, &mut self.touched, &mut self.groups_slept);
        self.awake.retain(|group| {
            let Some(g) = groups.get_mut(group) else { return false };
            if g.raft.is_quiesced() {
                *slept += 1;
                g.awake = false;
                return false;
            }
            g.raft.tick();
            g.clock = now;
            if !g.touched {
                g.touched = true;
                touched.push(*group);
            }
            true
        });
    }

    /// Wakes the sleeping followers of leaders on nodes not heard from for an
    /// election timeout, so that they elect another leader. A silent node is then
    /// forgotten until heard from again: no group can fall asleep following it
    /// meanwhile, so one that stays silent (removed from the cluster) costs nothing on
    /// later ticks.
    pub(super) fn wake_followers_of_silent_leaders(&mut self) {
        let timeout = u64::from(self.election_ticks);
        let silent: Vec<NodeId> =
            self.last_heard.iter().filter(|&(_, &at)| self.ticks - at >= timeout).map(|(&node, _)| node).collect();
        if silent.is_empty() {
            return;
        }
        for node in &silent {
            self.last_heard.remove(node);
        }
        let orphaned: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, g)| g.raft.is_quiesced() && g.raft.leader().is_some_and(|l| silent.contains(&l)))
            .map(|(&group, _)| group)
            .collect();
        for group in orphaned {
            if let Some(g) = self.rouse(group) {
                g.raft.leader_unreachable();
                self.liveness_wakes += 1;
            }
        }
    }

    /// Puts a beacon (an empty entry) in the outbox for every peer sent nothing for a
    /// heartbeat interval.
    pub(super) fn queue_beacons(&mut self) {
        let interval = u64::from(self.heartbeat_ticks);
        for (&peer, &at) in &self.last_sent {
            if self.ticks - at >= interval {
                self.outbox.entry(peer).or_default();
            }
        }
    }

    /// Records that the outbox about to be taken reaches its nodes now.
    pub(super) fn note_sent(&mut self) {
        for &peer in self.outbox.keys() {
            self.last_sent.insert(peer, self.ticks);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use bytes::Bytes;
    use futures_lite::future::block_on;

    use crate::log::fault::FaultyDisk;
    use crate::log::io::SegmentWriter;
    use crate::log::ShardLogConfig;
    use crate::raft::{Config, Message, ReadOnlyOption, Role};
    use crate::shard::{RequestError, Shard, ShardConfig};
    use crate::state::{BuiltinState, Command, Operation, Outcome};

    use super::*;

    const GROUPS: u64 = 4;
    const NODES: NodeId = 3;

    struct Node {
        shard: Option<Shard<BuiltinState>>,
        writer: SegmentWriter<FaultyDisk>,
        config: ShardConfig,
        /// Bumped at each restart, as quarryd draws a new one.
        incarnation: u64,
    }

    /// Three shards wired together in memory; a node that is `down` neither ticks nor
    /// sends nor receives.
    struct Cluster {
        nodes: Vec<Node>,
        down: Vec<bool>,
        /// Raft messages and beacons delivered so far.
        raft_messages: u64,
        beacons: u64,
        _dir: tempfile::TempDir,
    }

    fn config(dir: &Path, id: NodeId, read_only: ReadOnlyOption) -> ShardConfig {
        let mut raft = Config::new(id);
        raft.heartbeat_ticks = 2;
        raft.quiesce = true;
        raft.read_only = read_only;
        let dir = dir.join(format!("node{id}"));
        ShardConfig {
            node: id,
            groups: (0..GROUPS).collect(),
            voters: (1..=NODES).collect(),
            raft,
            log: ShardLogConfig::new(dir.join("log")),
            snapshot_dir: dir.join("snapshots"),
            snapshot_distance: 0,
        }
    }

    impl Cluster {
        fn new(read_only: ReadOnlyOption) -> Cluster {
            let dir = tempfile::tempdir().expect("temp dir");
            let nodes = (1..=NODES)
                .map(|id| {
                    let config = config(dir.path(), id, read_only);
                    let shard = Some(Shard::open(config.clone()).expect("opens"));
                    Node { shard, writer: SegmentWriter::new(FaultyDisk::default()), config, incarnation: 1 }
                })
                .collect();
            Cluster { nodes, down: vec![false; NODES as usize], raft_messages: 0, beacons: 0, _dir: dir }
        }

        fn shard(&mut self, id: NodeId) -> &mut Shard<BuiltinState> {
            self.nodes[id as usize - 1].shard.as_mut().expect("running")
        }

        /// One turn of node `id`, its writes made durable; returns what it sends.
        fn turn(&mut self, id: NodeId) -> BTreeMap<NodeId, Vec<(GroupId, Message)>> {
            let node = &mut self.nodes[id as usize - 1];
            let shard = node.shard.as_mut().expect("running");
            let staged = shard.stage().expect("stages");
            while !shard.is_durable(&staged) {
                let job = shard.begin_flush().expect("healthy").expect("writes staged");
                block_on(node.writer.execute(&job)).expect("written");
                shard.finish_flush(job, Ok(())).expect("recorded");
            }
            shard.on_durable(staged);
            shard.take_outbox()
        }

        /// Hands `from`'s outbox to the running nodes; returns whether any got something.
        fn deliver(&mut self, from: NodeId, outbox: BTreeMap<NodeId, Vec<(GroupId, Message)>>) -> bool {
            let mut delivered = false;
            for (to, messages) in outbox {
                if self.down[to as usize - 1] {
                    continue;
                }
                delivered = true;
                let incarnation = self.nodes[from as usize - 1].incarnation;
                self.shard(to).heard_from(from, incarnation);
                if messages.is_empty() {
                    self.beacons += 1;
                }
                for (group, m) in messages {
                    self.raft_messages += 1;
                    self.shard(to).step(group, m).expect("valid");
                }
            }
            delivered
        }

        /// Runs turns and deliveries until nothing is left to send.
        fn settle(&mut self) {
            for _ in 0..100 {
                let mut sent = false;
                for from in 1..=NODES {
                    if self.down[from as usize - 1] {
                        continue;
                    }
                    let outbox = self.turn(from);
                    sent |= self.deliver(from, outbox);
                }
                if !sent {
                    return;
                }
            }
            panic!("the cluster did not settle within 100 rounds");
        }

        fn tick(&mut self, ticks: u64) {
            for _ in 0..ticks {
                for id in 1..=NODES {
                    if !self.down[id as usize - 1] {
                        self.shard(id).tick();
                    }
                }
                self.settle();
            }
        }

        /// Restarts node `id` from its disk.
        fn restart(&mut self, id: NodeId) {
            let node = &mut self.nodes[id as usize - 1];
            node.shard = None;
            node.shard = Some(Shard::open(node.config.clone()).expect("recovers"));
            node.incarnation += 1;
        }

        fn leader(&mut self, group: GroupId) -> Option<NodeId> {
            (1..=NODES).find(|&id| !self.down[id as usize - 1] && self.shard(id).is_leader(group))
        }

        fn all_asleep(&mut self) -> bool {
            let up: Vec<NodeId> = (1..=NODES).filter(|&id| !self.down[id as usize - 1]).collect();
            up.into_iter().all(|id| {
                let shard = self.shard(id);
                (0..GROUPS).all(|group| shard.raft(group).expect("hosted").is_quiesced())
            })
        }

        /// Ticks until every group has a leader and every running replica sleeps.
        fn until_asleep(&mut self) -> u64 {
            for ticks in 0..300 {
                if (0..GROUPS).all(|group| self.leader(group).is_some()) && self.all_asleep() {
                    return ticks;
                }
                self.tick(1);
            }
            panic!("the idle cluster did not fall asleep within 300 ticks");
        }

        fn put(&mut self, group: GroupId, sequence: u64) -> flume::Receiver<Result<Outcome, RequestError>> {
            let leader = self.leader(group).expect("a leader");
            let (reply, answer) = flume::bounded(1);
            let operation = Operation::Put { key: Bytes::from("k"), value: Bytes::from("v") };
            self.shard(leader).propose(group, &Command { client: 7, sequence, operation }, reply);
            answer
        }
    }

    #[test]
    fn an_idle_cluster_sleeps_and_sends_only_beacons() {
        let mut cluster = Cluster::new(ReadOnlyOption::Safe);
        cluster.until_asleep();
        let (messages, beacons) = (cluster.raft_messages, cluster.beacons);
        cluster.tick(100);
        assert_eq!(cluster.raft_messages, messages, "sleeping groups send nothing");
        assert!(cluster.beacons - beacons >= 100, "each node tells each peer it is alive");
        assert!(cluster.all_asleep());
        let slept: u64 = (1..=NODES).map(|id| cluster.shard(id).groups_slept).sum();
        assert_eq!(slept, GROUPS * NODES, "each replica fell asleep once and was left alone");
    }

    #[test]
    fn a_write_wakes_its_group_and_it_sleeps_again() {
        let mut cluster = Cluster::new(ReadOnlyOption::Safe);
        cluster.until_asleep();
        cluster.tick(50);
        let answer = cluster.put(2, 1);
        cluster.settle();
        cluster.tick(1);
        assert!(matches!(answer.try_recv(), Ok(Ok(Outcome::Written { .. }))), "committed without waiting for a tick");
        for group in [0, 1, 3] {
            let leader = cluster.leader(group).expect("a leader");
            assert!(cluster.shard(leader).raft(group).expect("hosted").is_quiesced(), "group {group} slept on");
        }
        cluster.until_asleep();
    }

    #[test]
    fn followers_of_a_silent_leader_wake_and_elect_another() {
        let mut cluster = Cluster::new(ReadOnlyOption::Safe);
        cluster.until_asleep();
        let group = 1;
        let old = cluster.leader(group).expect("a leader");
        let term = cluster.shard(old).raft(group).expect("hosted").term();
        cluster.down[old as usize - 1] = true;
        let mut elected = None;
        for _ in 0..100 {
            cluster.tick(1);
            elected = cluster.leader(group);
            if elected.is_some() {
                break;
            }
        }
        let new = elected.expect("a new leader within 100 ticks (5 election timeouts)");
        assert_ne!(new, old);
        assert!(cluster.shard(new).raft(group).expect("hosted").term() > term);
        assert!(cluster.shard(new).liveness_wakes > 0 || cluster.shard(6 - old - new).liveness_wakes > 0);
        let answer = cluster.put(group, 1);
        cluster.tick(2);
        assert!(matches!(answer.try_recv(), Ok(Ok(Outcome::Written { .. }))), "the group takes writes again");
    }

    #[test]
    fn a_restarted_follower_finds_its_sleeping_leader() {
        let mut cluster = Cluster::new(ReadOnlyOption::Safe);
        cluster.until_asleep();
        let group = 0;
        let leader = cluster.leader(group).expect("a leader");
        let term = cluster.shard(leader).raft(group).expect("hosted").term();
        let follower = (1..=NODES).find(|&id| id != leader).expect("a follower");
        cluster.restart(follower);
        assert_eq!(cluster.shard(follower).leader(group), None, "a restarted node knows no leader");
        cluster.tick(60);
        assert_eq!(cluster.shard(follower).leader(group), Some(leader), "it found the leader");
        assert_eq!(cluster.shard(leader).raft(group).expect("hosted").term(), term, "without an election");
        cluster.until_asleep();
    }

    /// A restarted node that may not campaign (it abstains after losing entries) sends
    /// no pre-vote to wake its sleeping leaders: its new incarnation does.
    #[test]
    fn a_restarted_follower_that_may_not_campaign_still_finds_its_leaders() {
        let mut cluster = Cluster::new(ReadOnlyOption::Safe);
        cluster.until_asleep();
        let follower = (1..=NODES).find(|&id| (0..GROUPS).any(|g| cluster.leader(g) != Some(id))).expect("a follower");
        cluster.restart(follower);
        cluster.shard(follower).rafts_mut().for_each(|raft| raft.abstain());
        cluster.tick(60);
        for group in 0..GROUPS {
            let leader = cluster.leader(group).expect("a leader");
            if leader != follower {
                assert_eq!(cluster.shard(follower).leader(group), Some(leader), "group {group}: leader found");
            }
        }
    }

    #[test]
    fn a_leader_woken_after_a_long_sleep_does_not_read_from_an_expired_lease() {
        let mut cluster = Cluster::new(ReadOnlyOption::LeaseBased);
        cluster.until_asleep();
        cluster.tick(100);
        let group = 3;
        let leader = cluster.leader(group).expect("a leader");
        assert_eq!(cluster.shard(leader).raft(group).map(|r| r.role()), Some(Role::Leader));
        let (reply, answer) = flume::bounded(1);
        cluster.shard(leader).read(group, Box::new(|_| Bytes::from("read")), reply);
        let round = cluster.turn(leader);
        assert!(answer.try_recv().is_err(), "the lease expired while it slept: the read waits for a quorum");
        cluster.deliver(leader, round);
        cluster.settle();
        assert_eq!(answer.try_recv().expect("answered").expect("read"), Bytes::from("read"));
    }
}
