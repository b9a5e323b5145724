//! The simulated network: messages in flight with delays, drops, duplicates and
//! partitions, all decided by the simulation's RNG.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::group::GroupId;
use crate::raft::{Message, NodeId};

/// How this seed's network misbehaves.
#[derive(Clone, Debug)]
pub struct NetworkProfile {
    pub drop_per_mille: u32,
    pub duplicate_per_mille: u32,
    /// Delivery delay is uniform in `1..=delay_max_units` (so messages reorder).
    pub delay_max_units: u64,
}

/// Messages in flight at once; beyond it the network drops (a bounded switch queue).
pub const IN_FLIGHT_MAX: usize = 100_000;

/// What travels between simulated nodes: a group's Raft message, or none (a beacon,
/// the empty batch a shard sends a peer it has told nothing lately), stamped with the
/// sender's incarnation as quarryd stamps its batches.
#[derive(Clone, Debug)]
pub struct Packet {
    pub from: NodeId,
    pub to: NodeId,
    pub incarnation: u64,
    pub raft: Option<(GroupId, Message)>,
}

impl Packet {
    fn link(&self) -> (NodeId, NodeId) {
        (self.from, self.to)
    }
}

#[derive(Debug, Default)]
pub struct Network {
    /// (delivery time, sequence) → message of a group; the sequence keeps delivery
    /// deterministic.
    in_flight: BTreeMap<(u64, u64), Packet>,
    sequence: u64,
    /// Directed links that drop everything: (from, to).
    blocked: BTreeSet<(NodeId, NodeId)>,
    pub sent: u64,
    pub dropped: u64,
}

impl Network {
    pub fn send(&mut self, packet: Packet, now: u64, profile: &NetworkProfile, rng: &mut ChaCha8Rng) {
        self.sent += 1;
        let lost = rng.random_range(0..1000) < profile.drop_per_mille;
        if lost || self.blocked.contains(&packet.link()) || self.in_flight.len() >= IN_FLIGHT_MAX {
            self.dropped += 1;
            return;
        }
        if rng.random_range(0..1000) < profile.duplicate_per_mille {
            let delay = rng.random_range(1..=profile.delay_max_units);
            self.enqueue(now + delay, packet.clone());
        }
        let delay = rng.random_range(1..=profile.delay_max_units);
        self.enqueue(now + delay, packet);
    }

    fn enqueue(&mut self, at: u64, packet: Packet) {
        self.sequence += 1;
        self.in_flight.insert((at, self.sequence), packet);
    }

    /// The next packet due at or before `now`, unless a partition now blocks it.
    pub fn next_due(&mut self, now: u64) -> Option<Packet> {
        loop {
            let (&key, _) = self.in_flight.iter().next()?;
            if key.0 > now {
                return None;
            }
            let packet = self.in_flight.remove(&key).expect("key just seen");
            if self.blocked.contains(&packet.link()) {
                self.dropped += 1;
                continue;
            }
            return Some(packet);
        }
    }

    pub fn block(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }
}
