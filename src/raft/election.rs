//! Terms, elections (with pre-vote), check-quorum and role transitions.

use super::confchange::apply_conf_change;
use super::progress::ProgressState;
use super::quorum::{vote_result, VoteResult};
use super::storage::Storage;
use super::types::*;
use super::RaftNode;

impl<S: Storage> RaftNode<S> {
    pub(super) fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.promotable() && self.election_elapsed >= self.randomized_election_ticks {
            self.election_elapsed = 0;
            if self.log.last_index() >= self.commit_beyond_log {
                self.campaign(CampaignKind::PreVote);
            } else {
                // The leader is gone all the same: forget it, so that this node's
                // lease no longer turns away the candidates that can win.
                self.become_follower(self.term, None);
            }
        }
    }

    pub(super) fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        self.tick_snapshot_retries();
        if self.election_elapsed >= self.config.election_ticks {
            self.election_elapsed = 0;
            if self.config.check_quorum && !self.quorum_recently_active() {
                self.become_follower(self.term, None);
                return;
            }
            // A transfer that has not finished within an election timeout is abandoned.
            self.transferee = None;
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            if !self.maybe_quiesce() {
                self.broadcast_heartbeat();
            }
        }
    }

    /// Check-quorum: whether a quorum was heard from since the last check. Resets
    /// the activity marks for the next round.
    fn quorum_recently_active(&mut self) -> bool {
        let id = self.id;
        let active = self.progress.iter().map(|(&pid, pr)| (pid, pid == id || pr.recent_active)).collect();
        for (&pid, pr) in self.progress.iter_mut() {
            pr.recent_active = pid == id;
        }
        self.quorum_confs().all(|conf| vote_result(conf, &active) == VoteResult::Won)
    }

    /// Starts an election. A `PreVote` campaign falls back to a real one when
    /// pre-vote is disabled.
    pub(super) fn campaign(&mut self, kind: CampaignKind) {
        if !self.promotable() {
            return;
        }
        let pre = kind == CampaignKind::PreVote && self.config.pre_vote;
        let transfer = kind == CampaignKind::Transfer;
        let request_term = if pre {
            self.become_pre_candidate();
            self.term + 1
        } else {
            self.become_candidate();
            self.term
        };
        let (last_index, last_term, commit) = (self.log.last_index(), self.log.last_term(), self.known_commit());
        let id = self.id;
        self.log_conf = self.latest_conf_in_log();
        let mut voters: Vec<NodeId> =
            self.quorum_confs().flat_map(|c| c.members().into_iter().filter(|&to| c.is_voter(to))).collect();
        voters.sort_unstable();
        voters.dedup();
        voters.retain(|&to| to != id);
        for to in voters {
            let request = if pre {
                MessageKind::PreVote { last_index, last_term, commit }
            } else {
                MessageKind::Vote { last_index, last_term, transfer, commit }
            };
            self.send_with_term(to, request_term, request);
        }
        if pre {
            // A pre-vote changes no durable state, so it counts at once.
            self.record_vote(self.id, true);
        }
    }

    pub(super) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        assert!(term >= self.term, "term went back from {} to {term}", self.term);
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.reset_role_state();
    }

    fn become_pre_candidate(&mut self) {
        assert_ne!(self.role, Role::Leader, "a leader does not pre-campaign");
        // Neither the term nor the vote change: a pre-vote that fails disturbs no one.
        self.role = Role::PreCandidate;
        self.leader = None;
        self.reset_role_state();
    }

    pub(super) fn become_candidate(&mut self) {
        assert_ne!(self.role, Role::Leader, "a leader does not campaign");
        self.term += 1;
        self.vote = Some(self.id);
        self.role = Role::Candidate;
        self.leader = None;
        self.reset_role_state();
        // The self-vote counts once the Ready carrying it is durable (see `advance`).
    }

    pub(super) fn become_leader(&mut self) {
        assert_eq!(self.role, Role::Candidate, "only a candidate becomes leader");
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.reset_role_state();
        // Until the log's membership changes are applied, the leader commits and
        // checks its leadership by quorums of their configuration too.
        self.log_conf = self.latest_conf_in_log();
        self.rebuild_progress();
        let next = self.log.last_index() + 1;
        let persisted = self.log.persisted;
        let id = self.id;
        for (&pid, pr) in self.progress.iter_mut() {
            pr.reset_for_leader(if pid == id { persisted } else { 0 }, next);
        }
        self.rounds.start_term();
        // Conservatively treat any membership change in the log as pending.
        self.pending_conf_index = self.log.last_index();
        self.uncommitted_bytes = 0;
        self.append_proposal(EntryPayload::Noop, 0);
    }

    /// Clears what belongs to the previous role.
    fn reset_role_state(&mut self) {
        self.quiesced = false;
        self.reset_timers();
        self.votes.clear();
        self.log_conf = None;
        self.transferee = None;
        self.self_vote_ready = None;
        self.reads.clear();
        self.append_broadcast_needed = false;
    }

    /// Term rules common to every message (Raft §5.1, plus pre-vote and lease).
    /// Returns whether the message should be processed further.
    pub(super) fn step_term(&mut self, m: &Message) -> bool {
        if m.term > self.term {
            if let MessageKind::PreVote { .. } | MessageKind::Vote { transfer: false, .. } = m.kind {
                if self.in_lease() {
                    // A leader we hear from holds a lease: the requester is disruptive.
                    return false;
                }
            }
            match m.kind {
                MessageKind::PreVote { .. } => {}
                // A granted pre-vote carries the future term; the sender did not change.
                MessageKind::PreVoteResponse { reject: false, .. } => {}
                _ => {
                    let leader = m.is_from_leader().then_some(m.from);
                    self.become_follower(m.term, leader);
                }
            }
            return true;
        }
        if m.term < self.term {
            match m.kind {
                // A stale leader cut off by a partition learns the new term from us and
                // steps down (otherwise, with check-quorum or pre-vote, it never would).
                MessageKind::Append { .. } | MessageKind::Heartbeat { .. }
                    if self.config.check_quorum || self.config.pre_vote =>
                {
                    self.send(m.from, MessageKind::AppendResponse { index: 0, reject: None });
                }
                // Raft §5.1: a stale candidate learns the term it is behind. Without
                // this, one that the others never ask (a learner in their
                // configuration) campaigns a term behind a node that cannot win,
                // and is refused forever (the simulator's seed 195081, no pre-vote).
                MessageKind::PreVote { .. } | MessageKind::Vote { .. } => {
                    let pre = matches!(m.kind, MessageKind::PreVote { .. });
                    self.send(m.from, self.vote_refusal(pre));
                }
                _ => {}
            }
            return false;
        }
        true
    }

    /// Raft §5.2 and §5.4.1: grant a (pre-)vote to an up-to-date candidate once per term.
    pub(super) fn on_vote_request(&mut self, m: &Message, pre: bool, last_index: Index, last_term: Term) {
        let can_vote =
            self.vote == Some(m.from) || (self.vote.is_none() && self.leader.is_none()) || (pre && m.term > self.term);
        let up_to_date = self.log.is_up_to_date(last_index, last_term);
        #[cfg(test)]
        // Deliberately wrong (§5.4.1 ignored): vote for candidates with stale logs.
        let up_to_date = up_to_date || self.broken_vote_rule;
        // A replica that lost entries it acknowledged grants nothing (`recovery.rs`).
        let grant = can_vote && up_to_date && self.abstention.is_none();
        let reply_term = if grant { m.term } else { self.term };
        let kind = self.vote_answer(pre, grant);
        if grant && !pre {
            self.election_elapsed = 0;
            self.vote = Some(m.from);
        }
        self.send_with_term(m.from, reply_term, kind);
    }

    pub(super) fn vote_refusal(&self, pre: bool) -> MessageKind {
        self.vote_answer(pre, false)
    }

    fn vote_answer(&self, pre: bool, grant: bool) -> MessageKind {
        let (reject, commit) = (!grant, self.known_commit());
        if pre {
            MessageKind::PreVoteResponse { reject, commit }
        } else {
            MessageKind::VoteResponse { reject, commit }
        }
    }

    /// What this node can vouch for as committed. An abstaining replica tells nothing:
    /// its log may have lost entries below its commit index.
    fn known_commit(&self) -> KnownCommit {
        let index = self.log.committed;
        match self.log.term(index) {
            Ok(term) if self.abstention.is_none() && index > 0 => KnownCommit { index, term },
            _ => KnownCommit::default(),
        }
    }

    /// Takes a commit index from a (pre-)vote answer when this log holds the same
    /// entry there (see [`KnownCommit`]). Without it, a leader that restarted having
    /// lost its commit index (not its entries) must win its old configuration again,
    /// which a removed member with a longer log and an abstaining one can deny for
    /// good (the simulator's seed 175238).
    pub(super) fn learn_commit(&mut self, commit: KnownCommit) {
        let holds_it = commit.index <= self.log.last_index() && self.log.term(commit.index).ok() == Some(commit.term);
        // A leader commits by counting alone (entries of its term, Figure 8); it
        // learns earlier commits when its no-op commits.
        if commit.index > self.log.committed && holds_it && self.role != Role::Leader {
            self.log.commit_to(commit.index);
        }
        // Without pre-vote, a node that cannot win would otherwise keep raising the
        // term a step ahead of one that can, which it never asks (a learner in its
        // stale configuration), and so refuses it forever (the simulator's seed 195081).
        if commit.index > self.log.last_index() {
            self.commit_beyond_log = self.commit_beyond_log.max(commit.index);
        }
    }

    pub(super) fn step_candidate(&mut self, m: Message) {
        match m.kind {
            MessageKind::Append { .. } | MessageKind::Heartbeat { .. } | MessageKind::Snapshot { .. } => {
                // A leader of our term exists (Raft §5.2): follow it.
                self.become_follower(m.term, Some(m.from));
                self.step_follower(m);
            }
            // A pre-vote answer is for the term we would campaign in.
            MessageKind::PreVoteResponse { reject, .. }
                if self.role == Role::PreCandidate && m.term == self.term + 1 =>
            {
                self.record_vote(m.from, !reject);
            }
            MessageKind::VoteResponse { reject, .. } if self.role == Role::Candidate => {
                self.record_vote(m.from, !reject);
            }
            _ => {}
        }
    }

    /// The configuration the log's latest membership change leads to, when the log
    /// holds changes not yet applied (committed or not).
    ///
    /// An election must be won in it as well as in the applied configuration (Raft
    /// thesis §4.1 uses the latest configuration in the log). The applied one alone
    /// is not enough: a node whose knowledge of the commit index was lost in a crash
    /// (it is not synced on its own) holds `[joint, leave-joint]` unapplied and would
    /// count the votes of its old configuration — removed members included — while
    /// the new configuration elects another leader (the simulator's seed 5140).
    pub(super) fn latest_conf_in_log(&self) -> Option<(Index, ConfState)> {
        // From the applied configuration on: the last one handed out, or a snapshot's
        // (taken into `conf` when it was received, before the host installs it).
        let from = (self.log.applying + 1).max(self.log.first_index());
        let last = self.log.last_index();
        if from > last {
            return None;
        }
        let entries = self
            .log
            .entries(from, last + 1, u64::MAX)
            .unwrap_or_else(|e| panic!("unapplied entries {from}..={last} unreadable: {e}"));
        let mut latest: Option<(Index, ConfState)> = None;
        for entry in entries {
            if let EntryPayload::ConfChange(change) = &entry.payload {
                let base = latest.as_ref().map_or(&self.conf, |(_, c)| c);
                // An invalid change is ignored here as it will be when applied.
                if let Ok(next) = apply_conf_change(base, change) {
                    latest = Some((entry.index, next));
                }
            }
        }
        latest
    }

    /// Counts a (pre-)vote and acts on the outcome: an election must be won in the
    /// applied configuration and in the latest one in the log.
    pub(super) fn record_vote(&mut self, from: NodeId, granted: bool) {
        self.votes.entry(from).or_insert(granted);
        let results: Vec<VoteResult> = self.quorum_confs().map(|c| vote_result(c, &self.votes)).collect();
        let result = if results.contains(&VoteResult::Lost) {
            VoteResult::Lost
        } else if results.iter().all(|&r| r == VoteResult::Won) {
            VoteResult::Won
        } else {
            VoteResult::Pending
        };
        match result {
            VoteResult::Pending => {}
            VoteResult::Lost => self.become_follower(self.term, None),
            VoteResult::Won if self.role == Role::PreCandidate => self.campaign(CampaignKind::Vote),
            // A configuration applied while campaigning may have removed us.
            VoteResult::Won if !self.promotable() => self.become_follower(self.term, None),
            VoteResult::Won => {
                // Our own vote must be durable before it counts.
                if self.votes.get(&self.id) == Some(&true) {
                    self.become_leader();
                }
            }
        }
    }

    /// A leader whose removal committed hands off to a caught-up voter and steps down.
    pub(super) fn step_down_removed(&mut self) {
        let last = self.log.last_index();
        let successor = self.progress.iter().find_map(|(&id, pr)| {
            (id != self.id && self.conf.voters.contains(&id) && pr.matched == last).then_some(id)
        });
        if let Some(to) = successor {
            self.send(to, MessageKind::TimeoutNow);
        }
        self.become_follower(self.term, None);
    }

    fn tick_snapshot_retries(&mut self) {
        let retry_ticks = self.config.snapshot_retry_ticks;
        for pr in self.progress.values_mut() {
            if let ProgressState::Snapshot { .. } = pr.state {
                pr.snapshot_ticks += 1;
                if pr.snapshot_ticks > retry_ticks {
                    // The snapshot (or its answer) was probably lost: probe again.
                    pr.become_probe();
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CampaignKind {
    /// An election timeout: ask for pre-votes first (if enabled).
    PreVote,
    /// A won pre-vote: campaign for real.
    Vote,
    /// A TimeoutNow from the leader: campaign at once; voters ignore their lease.
    Transfer,
}
