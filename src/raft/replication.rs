//! Log replication: the leader's side (appends, snapshots, commit, transfer) and the
//! follower's (accepting appends and snapshots).

use super::election::CampaignKind;
use super::error::{ProposeError, StorageError};
use super::progress::ProgressState;
use super::quorum::joint_value;
use super::storage::Storage;
use super::types::*;
use super::{RaftNode, StepError};

impl<S: Storage> RaftNode<S> {
    pub(super) fn step_leader(&mut self, m: Message) -> Result<(), StepError> {
        if let MessageKind::Append { .. } | MessageKind::Heartbeat { .. } | MessageKind::Snapshot { .. } = m.kind {
            // Two leaders in one term: Raft's election safety is broken, or the message
            // is forged. Refused, and loud: the host reports it (the simulator fails).
            return Err(StepError::SecondLeader { from: m.from, term: m.term });
        }
        if let Some(pr) = self.progress.get_mut(&m.from) {
            pr.recent_active = true;
        } else {
            return Ok(()); // Not a member (removed, or not yet added): nothing to track.
        }
        match m.kind {
            MessageKind::AppendResponse { index, reject: Some(hint) } => self.on_append_rejected(m.from, index, hint),
            MessageKind::AppendResponse { index, reject: None } => self.on_append_accepted(m.from, index),
            MessageKind::HeartbeatResponse { round } => self.on_heartbeat_response(m.from, round),
            _ => {}
        }
        Ok(())
    }

    pub(super) fn step_follower(&mut self, m: Message) {
        match m.kind {
            MessageKind::Append { prev_index, prev_term, entries, commit } => {
                self.hear_from_leader(m.from);
                self.on_append(m.from, prev_index, prev_term, &entries, commit);
            }
            MessageKind::Heartbeat { commit, round, quiesce } => {
                self.hear_from_leader(m.from);
                // The leader's idea of what we match may predate entries we lost.
                if self.abstention.is_none() {
                    self.log.commit_to(commit.min(self.log.last_index()));
                }
                self.send(m.from, MessageKind::HeartbeatResponse { round });
                if quiesce {
                    self.follow_into_quiescence(m.from, commit);
                }
            }
            MessageKind::Snapshot { snapshot } => {
                self.hear_from_leader(m.from);
                self.on_snapshot(m.from, *snapshot);
            }
            MessageKind::TimeoutNow => self.campaign(CampaignKind::Transfer),
            _ => {}
        }
    }

    fn hear_from_leader(&mut self, leader: NodeId) {
        self.election_elapsed = 0;
        self.leader = Some(leader);
    }

    /// Raft §5.3: accept entries that follow a matching `prev`, else hint where to retry.
    fn on_append(&mut self, leader: NodeId, prev_index: Index, prev_term: Term, entries: &[Entry], commit: Index) {
        if prev_index < self.log.committed {
            // Everything up to our commit matches the leader already.
            let index = self.log.committed;
            self.send(leader, MessageKind::AppendResponse { index, reject: None });
            return;
        }
        if let Some(last_new) = self.log.maybe_append(prev_index, prev_term, commit, entries) {
            self.send(leader, MessageKind::AppendResponse { index: last_new, reject: None });
            return;
        }
        let (index, term) = self.log.find_conflict_by_term(prev_index, prev_term);
        let hint = RejectHint { index, term };
        self.send(leader, MessageKind::AppendResponse { index: prev_index, reject: Some(hint) });
    }

    fn on_snapshot(&mut self, leader: NodeId, snapshot: Snapshot) {
        let (index, term) = (snapshot.meta.index, snapshot.meta.term);
        if index <= self.log.committed {
            let committed = self.log.committed;
            self.send(leader, MessageKind::AppendResponse { index: committed, reject: None });
            return;
        }
        if self.log.match_term(index, term) {
            // We hold the snapshot's last entry: the log is a superset; just commit.
            self.log.commit_to(index);
            self.send(leader, MessageKind::AppendResponse { index, reject: None });
            return;
        }
        self.conf = snapshot.meta.conf_state.clone();
        self.pending_conf_index = index;
        self.log.restore(snapshot);
        self.rebuild_progress();
        self.send(leader, MessageKind::AppendResponse { index, reject: None });
    }

    fn on_append_rejected(&mut self, from: NodeId, rejected: Index, hint: RejectHint) {
        // Skip the follower's whole conflicting term at once (etcd's fast back-off).
        let next_hint =
            if hint.term > 0 { self.log.find_conflict_by_term(hint.index, hint.term).0 + 1 } else { hint.index + 1 };
        let pr = self.progress.get_mut(&from).expect("member has progress");
        if rejected <= pr.matched && hint.index < rejected {
            // The follower lacks an entry it acknowledged in this term: its storage lost
            // the tail of its log (a damaged last flush cut at recovery). Accept that
            // its log went backwards, or it would be sent appends it must refuse
            // forever. Its match is forgotten until it accepts again. (A delayed
            // duplicate of an old rejection lands here too; that costs a probe, never
            // safety: a lower match only holds the commit index back.)
            pr.regress(next_hint.min(rejected));
            self.maybe_send_append(from, true);
            return;
        }
        if !pr.maybe_decr_to(rejected, next_hint) {
            return;
        }
        if pr.state == ProgressState::Replicate {
            pr.become_probe();
        }
        self.maybe_send_append(from, true);
    }

    fn on_append_accepted(&mut self, from: NodeId, index: Index) {
        let last_index = self.log.last_index();
        if index > last_index {
            return; // No follower of ours can hold more than we sent: a corrupt answer.
        }
        let first_index = self.log.first_index();
        let pr = self.progress.get_mut(&from).expect("member has progress");
        let was_paused = pr.is_paused();
        let advanced = pr.maybe_update(index);
        let probe_matched = pr.state == ProgressState::Probe && pr.matched == index;
        if !advanced && !probe_matched {
            return;
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot { pending_index }
                if pr.matched >= pending_index || pr.matched + 1 >= first_index =>
            {
                pr.become_probe();
                pr.become_replicate();
            }
            ProgressState::Replicate => pr.inflights.free_to(index),
            ProgressState::Snapshot { .. } => {}
        }
        let caught_up = pr.matched == last_index;
        if advanced && self.maybe_commit() {
            self.append_broadcast_needed = true;
        } else if was_paused {
            // A paused follower missed the broadcast of the latest commit index.
            self.maybe_send_append(from, true);
        }
        while self.maybe_send_append(from, false) {}
        if caught_up && self.transferee == Some(from) {
            self.send(from, MessageKind::TimeoutNow);
        }
    }

    fn on_heartbeat_response(&mut self, from: NodeId, round: u64) {
        let last_index = self.log.last_index();
        let pr = self.progress.get_mut(&from).expect("member has progress");
        pr.probe_sent = false;
        // A round we never sent is a corrupt answer; count it as the latest we did.
        pr.acked_round = pr.acked_round.max(round.min(self.rounds.last_sent()));
        if pr.state == ProgressState::Replicate && pr.inflights.is_full() {
            pr.inflights.free_first_one();
        }
        if pr.matched < last_index {
            self.maybe_send_append(from, true);
        }
        self.on_round_acked();
    }

    /// The host persisted part of the leader's own log: it counts toward commit.
    pub(super) fn after_leader_persist(&mut self) {
        let persisted = self.log.persisted;
        let id = self.id;
        if let Some(pr) = self.progress.get_mut(&id) {
            if pr.maybe_update(persisted) && self.maybe_commit() {
                self.append_broadcast_needed = true;
            }
        }
        let pending_conf_applied = self.log.applied >= self.pending_conf_index;
        if self.role == Role::Leader && self.conf.is_joint() && pending_conf_applied && self.transferee.is_none() {
            // The joint configuration is in force everywhere that matters: leave it.
            let proposed = self.propose_conf_change(ConfChange::LeaveJoint);
            debug_assert!(proposed.is_ok(), "auto-leave refused: {proposed:?}");
        }
    }

    /// Raft §5.3/§5.4.2: commit the highest index a quorum has, if it is of this term.
    pub(super) fn maybe_commit(&mut self) -> bool {
        let matched = |id| self.progress.get(&id).map_or(0, |pr: &super::progress::Progress| pr.matched);
        let quorum_index = self.quorum_confs().map(|conf| joint_value(conf, matched)).min().unwrap_or(0);
        #[cfg(test)]
        if self.broken_commit_rule {
            // Deliberately wrong (Figure 8 hazard): commit by counting in any term.
            let index = quorum_index.min(self.log.last_index());
            let advanced = index > self.log.committed;
            self.log.commit_to(index);
            if advanced {
                self.on_commit_advanced();
            }
            return advanced;
        }
        if !self.log.maybe_commit(quorum_index, self.term) {
            return false;
        }
        self.on_commit_advanced();
        true
    }

    fn on_commit_advanced(&mut self) {
        if self.log.term_or_zero(self.log.committed) == self.term {
            // Reads that waited for this term's first commit can now be confirmed.
            let next_round = self.rounds.next_round();
            self.reads.on_first_commit(self.log.committed, next_round);
        }
    }

    pub(super) fn broadcast_append(&mut self) {
        self.append_broadcast_needed = false;
        let peers: Vec<NodeId> = self.progress.keys().copied().filter(|&id| id != self.id).collect();
        for to in peers {
            self.maybe_send_append(to, true);
        }
    }

    /// Sends the next append (or a snapshot, if the entries are compacted) to `to`.
    /// Returns whether a message carrying entries was sent.
    pub(super) fn maybe_send_append(&mut self, to: NodeId, send_if_empty: bool) -> bool {
        let pr = &self.progress[&to];
        if pr.is_paused() {
            return false;
        }
        let next = pr.next;
        let prev_index = next - 1;
        let prev_term = self.log.term(prev_index);
        let entries = self.log.entries(next, self.log.last_index() + 1, self.config.append_max_bytes);
        let (prev_term, entries) = match (prev_term, entries) {
            (Ok(term), Ok(entries)) => (term, entries),
            (Err(StorageError::Compacted), _) | (_, Err(StorageError::Compacted)) => return self.send_snapshot(to),
            (Err(e), _) | (_, Err(e)) => panic!("leader cannot read its log at {next}: {e}"),
        };
        if entries.is_empty() && !send_if_empty {
            return false;
        }
        let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
        let count = entries.len();
        let last = entries.last().map_or(prev_index, |e| e.index);
        let commit = self.log.committed;
        self.send(to, MessageKind::Append { prev_index, prev_term, entries, commit });
        self.progress.get_mut(&to).expect("member has progress").sent_entries(last, bytes, count);
        count > 0
    }

    fn send_snapshot(&mut self, to: NodeId) -> bool {
        let snapshot = match self.log.storage.snapshot() {
            Ok(snapshot) => snapshot,
            Err(StorageError::SnapshotTemporarilyUnavailable) => return false,
            Err(e) => panic!("leader cannot read its snapshot: {e}"),
        };
        assert!(snapshot.meta.index > 0, "entries compacted but no snapshot");
        let pr = self.progress.get_mut(&to).expect("member has progress");
        pr.become_snapshot(snapshot.meta.index);
        self.send(to, MessageKind::Snapshot { snapshot: Box::new(snapshot) });
        false
    }

    /// Hands leadership to `to`: bring it up to date, then tell it to campaign now.
    /// Proposals are refused until the transfer completes or times out.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), ProposeError> {
        self.wake_leader();
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader_hint: self.leader });
        }
        if to == self.id || self.transferee == Some(to) {
            return Ok(());
        }
        if !self.conf.voters.contains(&to) {
            return Err(ProposeError::NotAVoter(to));
        }
        self.transferee = Some(to);
        self.election_elapsed = 0;
        // The new leader will be elected by voters that ignore our lease.
        self.rounds.revoke_lease();
        if self.progress[&to].matched == self.log.last_index() {
            self.send(to, MessageKind::TimeoutNow);
        } else {
            self.maybe_send_append(to, true);
        }
        Ok(())
    }
}
