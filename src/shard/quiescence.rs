//! The shard's side of quiescence (`raft::quiesce`): which groups are awake and
//! need ticks, which have work for the next turn, and node-level liveness.
//!
//! A tick visits only awake groups and a turn only the groups that got an input, so
//! thousands of sleeping groups cost nothing per tick or per turn. A sleeping group
//! is woken by any input (its clock first catches up with the ticks it slept), and
//! the sleeping followers of a leader whose node has gone silent for an election
//! timeout are woken to elect another.
//!
//! Liveness: every message from a node says it is alive, and so does an empty batch
//! (a beacon): a shard that has sent a peer nothing for a heartbeat interval puts an
//! empty entry for it in the outbox, which the host sends as an empty batch and the
//! peer's host reports with [`Shard::heard_from`].

use super::{Group, GroupId, Shard};
use crate::raft::NodeId;
use crate::state::StateMachine;

impl<S: StateMachine + Default> Shard<S> {
    /// The host heard from `node` (a batch, possibly empty, arrived from it).
    pub fn heard_from(&mut self, node: NodeId) {
        if node != self.node {
            self.last_heard.insert(node, self.ticks);
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
        self.awake.insert(group);
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
    /// election timeout, so that they elect another leader.
    pub(super) fn wake_followers_of_silent_leaders(&mut self) {
        let timeout = u64::from(self.election_ticks);
        let silent: Vec<NodeId> =
            self.last_heard.iter().filter(|&(_, &at)| self.ticks - at >= timeout).map(|(&node, _)| node).collect();
        if silent.is_empty() {
            return;
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
