//! Quiescence: an idle group stops ticking. Its leader sends no heartbeats, its
//! followers run no election timer, and the host skips it on every tick, so a node
//! can hold thousands of idle groups for nothing (CockroachDB's quiesced ranges,
//! TiKV's hibernate regions).
//!
//! A leader whose every member holds and has applied its whole log, with nothing in
//! flight, sends one last heartbeat marked `quiesce` and stops. A follower that
//! receives it, and is caught up to the commit index it carries, stops too. Anything
//! that is not part of that exchange wakes the group: a proposal, a read, a transfer,
//! a message of another kind or from another node, a role change.
//!
//! Heartbeats are what tells followers their leader is alive; while they sleep, the
//! host's node-level liveness stands in for them: a host that stops hearing from a
//! leader's node for an election timeout wakes that node's followers with
//! [`RaftNode::leader_unreachable`], and they elect a new leader as usual.
//!
//! Safety does not depend on any of this: a quiescent node's timers are frozen,
//! which only delays elections. The lease clock does not freeze: the host reports
//! the ticks a node slept through ([`RaftNode::advance_clock`]) before handing it
//! anything, so a lease read after a long sleep finds its lease expired.

use super::progress::ProgressState;
use super::storage::Storage;
use super::types::*;
use super::RaftNode;

impl<S: Storage> RaftNode<S> {
    /// Whether the group is asleep: the host need not tick it.
    pub fn is_quiesced(&self) -> bool {
        self.quiesced
    }

    /// The host's clock moved `ticks` ticks without calling `tick` (the node slept).
    pub fn advance_clock(&mut self, ticks: u64) {
        debug_assert!(self.quiesced || ticks == 0, "an awake node is ticked, not advanced");
        self.ticks += ticks;
    }

    /// The host has not heard from the leader's node for an election timeout: a
    /// sleeping follower wakes with its election timer run out, as if heartbeats had
    /// stopped reaching it.
    pub fn leader_unreachable(&mut self) {
        if !self.quiesced || self.role == Role::Leader {
            return;
        }
        self.wake();
        self.election_elapsed = self.config.election_ticks;
    }

    /// Whether a leader may go to sleep: every member has and has applied its whole
    /// log, and nothing waits (proposals, reads, a membership change, a transfer).
    pub(super) fn quiescable(&self) -> bool {
        let last = self.log.last_index();
        let settled = self.log.committed == last
            && self.log.persisted == last
            && self.log.applied == last
            && self.in_flight_is_empty()
            && !self.append_broadcast_needed
            && self.reads.is_empty()
            && self.transferee.is_none()
            && self.log_conf.is_none()
            && self.pending_conf_index <= self.log.applied
            && self.log.unstable_snapshot().is_none();
        settled
            && self.progress.iter().all(|(&id, pr)| {
                id == self.id || (pr.matched == last && pr.state == ProgressState::Replicate && pr.inflights.is_empty())
            })
    }

    /// A leader's heartbeat tick: sleep if idle, after one last heartbeat telling the
    /// followers to sleep too. Returns whether it went to sleep.
    pub(super) fn maybe_quiesce(&mut self) -> bool {
        if !self.config.quiesce || !self.quiescable() {
            return false;
        }
        self.broadcast_heartbeat_marked(true);
        self.quiesced = true;
        true
    }

    /// A follower takes the leader's last heartbeat: it sleeps if it holds everything
    /// the leader committed. (One that does not stays awake; when its election timer
    /// runs out, its pre-vote wakes the leader, whose heartbeats bring it up to date.)
    pub(super) fn follow_into_quiescence(&mut self, leader: NodeId, commit: Index) {
        // What is committed but not yet applied is applied in the coming Readies,
        // which need no tick.
        if self.config.quiesce
            && self.log.committed == commit
            && self.role == Role::Follower
            && self.leader == Some(leader)
            && self.abstention.is_none()
        {
            self.quiesced = true;
        }
    }

    /// Whether `m` must wake a sleeping node. The exchange that put the group to sleep
    /// does not: the leader's marked heartbeat (a duplicate, say) and the followers'
    /// answers to it.
    pub(super) fn wakes_on(&self, m: &Message) -> bool {
        if m.term != self.term {
            return true;
        }
        match (self.role, &m.kind) {
            (Role::Follower, MessageKind::Heartbeat { quiesce: true, .. }) => self.leader != Some(m.from),
            (Role::Leader, MessageKind::HeartbeatResponse { .. }) => false,
            (Role::Leader, MessageKind::AppendResponse { index, reject: None }) => {
                self.progress.get(&m.from).is_none_or(|pr| *index > pr.matched)
            }
            _ => true,
        }
    }

    /// Resumes ticking (the host wakes a sleeping leader whose follower restarted,
    /// so that heartbeats reach it). A leader's followers must prove themselves again
    /// before the next check-quorum (the marks from before the sleep say nothing
    /// about now).
    pub fn wake(&mut self) {
        if !self.quiesced {
            return;
        }
        self.quiesced = false;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        if self.role == Role::Leader {
            let id = self.id;
            for (&pid, pr) in self.progress.iter_mut() {
                pr.recent_active = pid == id;
            }
        }
    }
}
