//! Linearizable reads on the leader: ReadIndex (a quorum heartbeat round confirms
//! leadership) and, as an option, a leader lease.

use super::config::ReadOnlyOption;
use super::error::ProposeError;
use super::quorum::joint_value;
use super::storage::Storage;
use super::types::*;
use super::RaftNode;

impl<S: Storage> RaftNode<S> {
    /// Requests a linearizable read. The answer arrives as a [`ReadState`] carrying
    /// `ctx` in a later Ready; the host serves the read once it has applied up to its
    /// index. If leadership is lost first, the request is dropped (the Ready's soft
    /// state shows the change) and the host should fail or retry it.
    pub fn read_index(&mut self, ctx: ReadCtx) -> Result<(), ProposeError> {
        self.wake_leader();
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader_hint: self.leader });
        }
        if self.reads.is_full() {
            return Err(ProposeError::ReadQueueFull { max: self.config.pending_reads_max });
        }
        let committed = self.log.committed;
        if self.log.term_or_zero(committed) != self.term {
            // Until an entry of this term commits we do not know the true commit index.
            self.reads.add_awaiting_commit(ctx);
            return Ok(());
        }
        let lease = self.config.read_only == ReadOnlyOption::LeaseBased && self.rounds.lease_valid(self.ticks);
        if lease {
            self.read_states.push(ReadState { ctx, index: committed });
            return Ok(());
        }
        self.reads.add(ctx, committed, self.rounds.next_round());
        Ok(())
    }

    /// Sends a heartbeat round to every member; it carries each follower's safe commit.
    pub(super) fn broadcast_heartbeat(&mut self) {
        self.broadcast_heartbeat_marked(false);
    }

    /// A heartbeat round; `quiesce` marks the leader's last before it sleeps.
    pub(super) fn broadcast_heartbeat_marked(&mut self, quiesce: bool) {
        let round = self.rounds.send(self.ticks);
        self.reads.on_round_sent();
        let committed = self.log.committed;
        let peers: Vec<(NodeId, Index)> = self
            .progress
            .iter()
            .filter(|(&id, _)| id != self.id)
            .map(|(&id, pr)| (id, pr.matched.min(committed)))
            .collect();
        for (to, commit) in peers {
            self.send(to, MessageKind::Heartbeat { commit, round, quiesce });
        }
        // With no other voter the round is acknowledged by ourselves alone.
        self.on_round_acked();
    }

    /// Recomputes the highest round a quorum acknowledged; confirms reads and the lease.
    pub(super) fn on_round_acked(&mut self) {
        let (id, own_round) = (self.id, self.rounds.last_sent());
        let round_of = |pid| if pid == id { own_round } else { self.progress.get(&pid).map_or(0, |pr| pr.acked_round) };
        let acked = self.quorum_confs().map(|conf| joint_value(conf, round_of)).min().unwrap_or(0);
        let lease_ticks = u64::from(self.config.election_ticks - self.config.lease_drift_margin_ticks);
        if self.rounds.acked(acked.min(own_round), lease_ticks) {
            self.reads.confirm(self.rounds.quorum_acked, &mut self.read_states);
        }
    }
}
