//! `RaftNode`: one Raft group's state machine. Inputs are method calls; outputs are
//! collected into a numbered [`Ready`] that the host drains and acknowledges.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::confchange::apply_conf_change;
use super::config::{Config, ReadOnlyOption};
use super::error::{ConfigError, ProposeError};
use super::log::RaftLog;
use super::progress::Progress;
use super::read_index::{ReadIndexQueue, Rounds};
use super::ready::{InFlightReady, Ready};
use super::recovery::Abstention;
use super::storage::Storage;
use super::types::*;

/// The highest term a message may carry: at an election every millisecond, no
/// cluster reaches it in nine thousand years, and term arithmetic (`term + 1`)
/// cannot overflow below it. A forged message beyond it is refused as malformed.
pub const TERM_MAX: Term = 1 << 48;

/// The highest log index a message may carry: no log reaches it, and index
/// arithmetic (`index + 1`, `prev_index + entries`) cannot overflow below it.
pub const INDEX_MAX: Index = 1 << 62;

/// Whether every index and term `kind` carries is one a real log could hold.
fn within_reach(kind: &MessageKind) -> bool {
    let index = |i: &Index| *i <= INDEX_MAX;
    let term = |t: &Term| *t <= TERM_MAX;
    match kind {
        MessageKind::PreVote { last_index, last_term, commit }
        | MessageKind::Vote { last_index, last_term, commit, .. } => {
            index(last_index) && term(last_term) && index(&commit.index) && term(&commit.term)
        }
        MessageKind::Append { prev_index, prev_term, entries, commit } => {
            index(prev_index)
                && term(prev_term)
                && index(commit)
                && entries.len() as u64 <= INDEX_MAX - prev_index
                && entries.iter().all(|e| index(&e.index) && term(&e.term))
        }
        MessageKind::AppendResponse { index: i, reject } => {
            index(i) && reject.as_ref().is_none_or(|h| index(&h.index) && term(&h.term))
        }
        MessageKind::Heartbeat { commit, .. } | MessageKind::CommitAnswer { commit, .. } => index(commit),
        MessageKind::CommitQuery { last_index, .. } => index(last_index),
        MessageKind::Snapshot { snapshot } => index(&snapshot.meta.index) && term(&snapshot.meta.term),
        MessageKind::PreVoteResponse { commit, .. } | MessageKind::VoteResponse { commit, .. } => {
            index(&commit.index) && term(&commit.term)
        }
        MessageKind::HeartbeatResponse { .. } | MessageKind::TimeoutNow => true,
    }
}

/// Readies the host may hold unacknowledged at once; past it `has_ready` answers false
/// until the host catches up.
pub const READIES_IN_FLIGHT_MAX: usize = 64;

/// Where a proposal landed. The host recognises its entry among the committed entries
/// by both fields: an entry at `index` with another term means the proposal was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposed {
    pub index: Index,
    pub term: Term,
}

/// A message the core refuses to process because it is malformed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error("message addressed to {to}, this node is {id}")]
    WrongRecipient { to: NodeId, id: NodeId },
    #[error("malformed message from {from}: {reason}")]
    Malformed { from: NodeId, reason: &'static str },
    #[error("node {from} acts as leader of term {term}, which this node leads (election safety broken, or forged)")]
    SecondLeader { from: NodeId, term: Term },
}

pub struct RaftNode<S: Storage> {
    pub(super) config: Config,
    pub(super) id: NodeId,
    /// Invariant: `term` never decreases.
    pub(super) term: Term,
    pub(super) vote: Option<NodeId>,
    pub(super) role: Role,
    pub(super) leader: Option<NodeId>,
    pub(super) log: RaftLog<S>,
    /// The configuration in force: every committed configuration entry handed out so far.
    pub(super) conf: ConfState,
    /// One entry per member (self included). Meaningful while leader.
    pub(super) progress: BTreeMap<NodeId, Progress>,
    pub(super) votes: BTreeMap<NodeId, bool>,
    pub(super) rng: ChaCha8Rng,
    pub(super) election_elapsed: u32,
    pub(super) heartbeat_elapsed: u32,
    pub(super) randomized_election_ticks: u32,
    /// Ticks since this node started: the clock of the leader lease.
    pub(super) ticks: u64,
    pub(super) transferee: Option<NodeId>,
    /// Index of the latest membership change proposed (leader) or known (follower);
    /// no new change is accepted until it is applied.
    pub(super) pending_conf_index: Index,
    pub(super) uncommitted_bytes: u64,
    pub(super) reads: ReadIndexQueue,
    pub(super) rounds: Rounds,
    pub(super) read_states: Vec<ReadState>,
    pub(super) msgs: Vec<Message>,
    pub(super) msgs_after_persist: Vec<Message>,
    /// Proposals arrived since the last broadcast: send appends when taking a Ready.
    pub(super) append_broadcast_needed: bool,
    prev_hard_state: HardState,
    prev_soft_state: SoftState,
    next_ready_number: u64,
    in_flight: VecDeque<InFlightReady>,
    /// A candidate counts its own vote only once the Ready carrying it is durable.
    pub(super) self_vote_ready: Option<u64>,
    /// While campaigning or leading: the configuration that the membership changes in
    /// the log beyond the applied ones lead to, and the index of the last of them.
    /// Until they are applied, every quorum (votes, commit, leadership checks) must
    /// hold in it as well as in `conf` (see `latest_conf_in_log`).
    pub(super) log_conf: Option<(Index, ConfState)>,
    /// Set while this replica may lack entries it acknowledged (`recovery.rs`).
    pub(super) abstention: Option<Abstention>,
    /// A commit index a voter reported beyond this log's end: until the log reaches
    /// it this node cannot win an election (every leader holds every committed
    /// entry), so it does not campaign and raise the term for nothing.
    pub(super) commit_beyond_log: Index,
    /// Asleep: not ticked, no heartbeats, no election timer (`quiesce.rs`).
    pub(super) quiesced: bool,
    #[cfg(test)]
    pub(crate) broken_commit_rule: bool,
    #[cfg(test)]
    pub(crate) broken_vote_rule: bool,
    /// Test-only sabotage: send vote grants before the vote is durable.
    #[cfg(test)]
    pub(crate) broken_vote_durability: bool,
}

impl<S: Storage> RaftNode<S> {
    /// Starts (or restarts) a node from what `storage` holds.
    pub fn new(config: Config, storage: S) -> Result<Self, ConfigError> {
        config.validate()?;
        let (hard_state, conf) = storage.initial_state();
        let log = RaftLog::new(storage, hard_state.commit, config.applied);
        let soft = SoftState { leader: None, role: Role::Follower };
        let mut node = RaftNode {
            id: config.id,
            term: hard_state.term,
            vote: hard_state.vote,
            role: Role::Follower,
            leader: None,
            log,
            conf,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_ticks: config.election_ticks,
            ticks: 0,
            transferee: None,
            pending_conf_index: 0,
            uncommitted_bytes: 0,
            reads: ReadIndexQueue::new(config.pending_reads_max),
            rounds: Rounds::default(),
            read_states: Vec::new(),
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            append_broadcast_needed: false,
            prev_hard_state: hard_state,
            prev_soft_state: soft,
            next_ready_number: 1,
            in_flight: VecDeque::new(),
            self_vote_ready: None,
            log_conf: None,
            abstention: None,
            commit_beyond_log: 0,
            quiesced: false,
            #[cfg(test)]
            broken_commit_rule: false,
            #[cfg(test)]
            broken_vote_rule: false,
            #[cfg(test)]
            broken_vote_durability: false,
            config,
        };
        // Configuration entries between the persisted configuration and the last index
        // are re-applied as they are handed out again; until then the node uses the
        // configuration its storage recorded.
        node.rebuild_progress();
        node.reset_timers();
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn term(&self) -> Term {
        self.term
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    pub fn conf_state(&self) -> &ConfState {
        &self.conf
    }
    pub fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.log.committed }
    }
    pub fn committed(&self) -> Index {
        self.log.committed
    }
    pub fn applied(&self) -> Index {
        self.log.applied
    }
    pub fn last_index(&self) -> Index {
        self.log.last_index()
    }
    /// A leader's snapshot was taken in (the commit index moved to it) but not yet
    /// handed to the host in a Ready: the host's log still holds what it replaces.
    pub fn snapshot_pending(&self) -> bool {
        self.log.snapshot_not_handed_out()
    }
    /// Term of the entry at `index`, if the log holds it.
    pub fn term_at(&self, index: Index) -> Option<Term> {
        self.log.term(index).ok()
    }
    pub fn storage(&self) -> &S {
        &self.log.storage
    }
    /// The host writes what a Ready asks for through this; the core only reads.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.log.storage
    }
    /// The follower's replication state as the leader sees it (leader only).
    pub fn progress(&self, id: NodeId) -> Option<&Progress> {
        (self.role == Role::Leader).then(|| self.progress.get(&id)).flatten()
    }

    /// Proposes application data. The entry is appended to the leader's log; the host
    /// learns its fate from the committed entries (see [`Proposed`]).
    pub fn propose(&mut self, data: Bytes) -> Result<Proposed, ProposeError> {
        self.wake_leader();
        let size_bytes = data.len() as u64;
        if size_bytes > self.config.entry_max_bytes {
            return Err(ProposeError::TooLarge { size_bytes, max_bytes: self.config.entry_max_bytes });
        }
        self.check_can_propose(size_bytes)?;
        Ok(self.append_proposal(EntryPayload::Normal(data), size_bytes))
    }

    /// Proposes a membership change. Only one may be pending at a time; a change of
    /// voters enters a joint configuration that the leader leaves on its own.
    pub fn propose_conf_change(&mut self, change: ConfChange) -> Result<Proposed, ProposeError> {
        self.wake_leader();
        self.check_can_propose(0)?;
        if self.pending_conf_index > self.log.applying {
            return Err(ProposeError::ConfChangeInProgress { pending_index: self.pending_conf_index });
        }
        if let Err(reason) = apply_conf_change(&self.conf, &change) {
            return Err(ProposeError::InvalidConfChange { reason });
        }
        let proposed = self.append_proposal(EntryPayload::ConfChange(change), 0);
        self.pending_conf_index = proposed.index;
        Ok(proposed)
    }

    fn check_can_propose(&self, size_bytes: u64) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader_hint: self.leader });
        }
        if let Some(to) = self.transferee {
            return Err(ProposeError::TransferInProgress { to });
        }
        let max_bytes = self.config.uncommitted_max_bytes;
        if self.uncommitted_bytes > 0 && self.uncommitted_bytes + size_bytes > max_bytes {
            return Err(ProposeError::UncommittedFull { max_bytes });
        }
        Ok(())
    }

    pub(super) fn append_proposal(&mut self, payload: EntryPayload, size_bytes: u64) -> Proposed {
        let index = self.log.last_index() + 1;
        let entry = Entry { term: self.term, index, payload };
        self.log.append(&[entry]);
        self.uncommitted_bytes += size_bytes;
        self.append_broadcast_needed = true;
        Proposed { index, term: self.term }
    }

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        self.ticks += 1;
        if self.quiesced {
            return; // Asleep: the timers are frozen (`quiesce.rs`).
        }
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => {
                self.tick_abstention();
                self.tick_election();
            }
        }
    }

    /// Processes a message from a peer.
    pub fn step(&mut self, m: Message) -> Result<(), StepError> {
        self.validate(&m)?;
        if self.quiesced && self.wakes_on(&m) {
            self.wake();
        }
        if let Some(commit) = m.kind.known_commit() {
            self.learn_commit(commit);
        }
        if !self.step_term(&m) {
            return Ok(());
        }
        match m.kind {
            MessageKind::PreVote { last_index, last_term, .. } => self.on_vote_request(&m, true, last_index, last_term),
            MessageKind::Vote { last_index, last_term, .. } => self.on_vote_request(&m, false, last_index, last_term),
            MessageKind::CommitQuery { nonce, last_index } if self.role == Role::Leader => {
                self.on_commit_query(m.from, nonce, last_index)
            }
            MessageKind::CommitAnswer { nonce, commit } => self.on_commit_answer(nonce, commit),
            _ => match self.role {
                Role::Leader => self.step_leader(m)?,
                Role::Candidate | Role::PreCandidate => self.step_candidate(m),
                Role::Follower => self.step_follower(m),
            },
        }
        self.maybe_end_abstention();
        if self.quiesced && self.role == Role::Leader && !self.quiescable() {
            self.wake();
        }
        Ok(())
    }

    /// A request for the leader wakes it; one sent to a follower (refused) does not,
    /// or the follower would wait for heartbeats its sleeping leader never sends.
    pub(super) fn wake_leader(&mut self) {
        if self.role == Role::Leader {
            self.wake();
        }
    }

    pub(super) fn in_flight_is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Guards at the trust boundary: a peer's message must be well-formed.
    fn validate(&self, m: &Message) -> Result<(), StepError> {
        if m.to != self.id {
            return Err(StepError::WrongRecipient { to: m.to, id: self.id });
        }
        let malformed = |reason| Err(StepError::Malformed { from: m.from, reason });
        if m.from == self.id || m.from == 0 {
            return malformed("bad sender id");
        }
        if m.term > TERM_MAX {
            return malformed("term beyond any term an election can reach");
        }
        if !within_reach(&m.kind) {
            return malformed("index or term beyond any a log can reach");
        }
        if let MessageKind::Append { prev_index, entries, .. } = &m.kind {
            let contiguous = entries.iter().enumerate().all(|(i, e)| e.index == prev_index + 1 + i as u64);
            if !contiguous {
                return malformed("append entries are not contiguous");
            }
            if entries.iter().any(|e| e.term > m.term) {
                return malformed("append carries an entry from a future term");
            }
            if entries.windows(2).any(|w| w[0].term > w[1].term) {
                return malformed("append entries' terms decrease");
            }
        }
        if let MessageKind::Snapshot { snapshot } = &m.kind {
            if snapshot.meta.index == 0 || snapshot.meta.conf_state.voters.is_empty() {
                return malformed("snapshot without index or voters");
            }
        }
        Ok(())
    }

    pub fn has_ready(&self) -> bool {
        if self.in_flight.len() >= READIES_IN_FLIGHT_MAX {
            return false;
        }
        let leader_work = self.role == Role::Leader && (self.append_broadcast_needed || self.reads.round_needed());
        leader_work
            || !self.msgs.is_empty()
            || !self.msgs_after_persist.is_empty()
            || !self.read_states.is_empty()
            || self.hard_state() != self.prev_hard_state
            || self.soft_state() != self.prev_soft_state
            || self.log.has_unstable_to_hand_out()
            || self.log.committed.min(self.log.persisted) > self.log.applying && self.log.unstable_snapshot().is_none()
    }

    fn soft_state(&self) -> SoftState {
        SoftState { leader: self.leader, role: self.role }
    }

    /// Collects everything the host must do next. See [`Ready`] for the order.
    pub fn ready(&mut self) -> Ready {
        assert!(self.in_flight.len() < READIES_IN_FLIGHT_MAX, "too many unacknowledged readies");
        if self.role == Role::Leader {
            if self.append_broadcast_needed {
                self.broadcast_append();
            }
            if self.reads.round_needed() {
                self.broadcast_heartbeat();
            }
        }
        let committed_entries = self.take_committed_entries();
        let (snapshot, entries) = self.log.take_unstable();
        if let Some(snap) = &snapshot {
            self.log.applying = self.log.applying.max(snap.meta.index);
        }
        let hard_state = self.hard_state();
        let hard_state_changed = hard_state != self.prev_hard_state;
        // A change of the commit index alone need not be durable: a restarted node
        // learns it again from the leader (etcd's `MustSync`).
        let must_sync = snapshot.is_some()
            || !entries.is_empty()
            || hard_state.term != self.prev_hard_state.term
            || hard_state.vote != self.prev_hard_state.vote;
        self.prev_hard_state = hard_state;
        let soft_state = self.soft_state();
        let soft_state_changed = soft_state != self.prev_soft_state;
        self.prev_soft_state = soft_state;

        let number = self.next_ready_number;
        self.next_ready_number += 1;
        if self.role == Role::Candidate && self.self_vote_ready.is_none() && self.vote == Some(self.id) {
            self.self_vote_ready = Some(number);
        }
        self.in_flight.push_back(InFlightReady {
            number,
            last_entry: entries.last().map(|e| (e.index, e.term)),
            snapshot_index: snapshot.as_ref().map(|s| s.meta.index),
            applying_to: self.log.applying,
        });
        Ready {
            number,
            soft_state: soft_state_changed.then_some(soft_state),
            hard_state: hard_state_changed.then_some(hard_state),
            must_sync,
            snapshot,
            entries,
            messages: std::mem::take(&mut self.msgs),
            persisted_messages: std::mem::take(&mut self.msgs_after_persist),
            committed_entries,
            read_states: std::mem::take(&mut self.read_states),
        }
    }

    fn take_committed_entries(&mut self) -> Vec<Entry> {
        let entries = self.log.take_committed(self.config.apply_batch_max_bytes);
        for entry in &entries {
            match &entry.payload {
                EntryPayload::ConfChange(change) => self.apply_conf_entry(entry.index, change),
                EntryPayload::Normal(data) if self.role == Role::Leader && entry.term == self.term => {
                    self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(data.len() as u64);
                }
                _ => {}
            }
        }
        entries
    }

    /// Acknowledges every Ready up to and including `number`: its snapshot and entries
    /// are durable, its hard state is durable, and its committed entries are applied.
    pub fn advance(&mut self, number: u64) {
        assert!(number < self.next_ready_number, "ack of ready {number} never handed out");
        while let Some(r) = self.in_flight.front() {
            if r.number > number {
                break;
            }
            let r = self.in_flight.pop_front().expect("front exists");
            if let Some(index) = r.snapshot_index {
                self.log.stable_snapshot_to(index);
            }
            if let Some((index, term)) = r.last_entry {
                self.log.stable_to(index, term);
            }
            self.log.applied_to(r.applying_to);
        }
        if let Some(vote_ready) = self.self_vote_ready {
            if vote_ready <= number && self.role == Role::Candidate {
                self.self_vote_ready = None;
                self.record_vote(self.id, true);
            }
        }
        if self.role == Role::Leader {
            self.after_leader_persist();
        }
    }

    /// Applies a committed membership change to the core's view.
    fn apply_conf_entry(&mut self, index: Index, change: &ConfChange) {
        self.pending_conf_index = self.pending_conf_index.max(index);
        if self.log_conf.as_ref().is_some_and(|(last, _)| index >= *last) {
            self.log_conf = None; // Applied: `conf` is the log's latest again.
        }
        // An invalid change is ignored identically by every member and host, since it
        // is a pure function of the log.
        let Ok(next) = apply_conf_change(&self.conf, change) else {
            return;
        };
        self.conf = next;
        self.rebuild_progress();
        if self.role != Role::Leader {
            return;
        }
        if self.transferee.is_some_and(|to| !self.conf.voters.contains(&to)) {
            self.transferee = None;
        }
        if !self.conf.is_voter(self.id) {
            self.step_down_removed();
            return;
        }
        if self.maybe_commit() {
            self.append_broadcast_needed = true;
        }
    }

    /// The configurations every quorum must hold in: the applied one, and the one the
    /// log's unapplied membership changes lead to, while there is one.
    pub(super) fn quorum_confs(&self) -> impl Iterator<Item = &ConfState> {
        std::iter::once(&self.conf).chain(self.log_conf.as_ref().map(|(_, c)| c))
    }

    /// Makes the progress map hold exactly the members of the configurations.
    pub(super) fn rebuild_progress(&mut self) {
        let members: std::collections::BTreeSet<NodeId> = self.quorum_confs().flat_map(|c| c.members()).collect();
        self.progress.retain(|id, _| members.contains(id));
        let next = self.log.last_index() + 1;
        for id in members {
            self.progress.entry(id).or_insert_with(|| {
                let mut pr = Progress::new(next, self.config.inflight_max_msgs, self.config.inflight_max_bytes);
                pr.recent_active = true;
                pr
            });
        }
    }

    pub(super) fn reset_timers(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        let base = self.config.election_ticks;
        self.randomized_election_ticks = self.rng.random_range(base..2 * base);
    }

    /// Whether this node may campaign: only voters do.
    /// Whether this node may campaign: a voter (in the applied configuration or in the
    /// latest one in its log) that does not abstain. A learner whose promotion is in
    /// its log but not yet known committed may be the only node able to win: with a
    /// member lost for good, the others may all hold shorter logs (the simulator's
    /// seed 31412). It must still win in both configurations (`record_vote`).
    pub(super) fn promotable(&self) -> bool {
        if self.abstention.is_some() {
            return false;
        }
        self.conf.is_voter(self.id) || self.latest_conf_in_log().is_some_and(|(_, conf)| conf.is_voter(self.id))
    }

    /// Whether this node honours a leader lease, and so ignores vote requests.
    pub(super) fn in_lease(&self) -> bool {
        if !self.config.check_quorum {
            return false;
        }
        let hears_leader = self.leader.is_some() && self.election_elapsed < self.config.election_ticks;
        // A restarted node cannot know whether it promised a lease before the crash.
        let just_booted =
            self.config.read_only == ReadOnlyOption::LeaseBased && self.ticks < u64::from(self.config.election_ticks);
        hears_leader || just_booted
    }

    pub(super) fn send(&mut self, to: NodeId, kind: MessageKind) {
        self.send_with_term(to, self.term, kind);
    }

    /// Queues a message. Responses that vouch for local state (votes, appended entries)
    /// wait until that state is durable; everything else may leave at once.
    pub(super) fn send_with_term(&mut self, to: NodeId, term: Term, kind: MessageKind) {
        assert_ne!(to, self.id, "message to self");
        let after_persist = matches!(
            kind,
            MessageKind::AppendResponse { .. } | MessageKind::VoteResponse { .. } | MessageKind::PreVoteResponse { .. }
        );
        #[cfg(test)]
        let after_persist =
            after_persist && !(self.broken_vote_durability && matches!(kind, MessageKind::VoteResponse { .. }));
        let m = Message { from: self.id, to, term, kind };
        if after_persist {
            self.msgs_after_persist.push(m);
        } else {
            self.msgs.push(m);
        }
    }

    /// Checks the core's own invariants; the simulator calls this after every step.
    pub fn check_invariants(&self) {
        self.log.check_invariants();
        if self.role == Role::Leader {
            assert_eq!(self.leader, Some(self.id), "leader does not know itself as leader");
            let pr = self.progress.get(&self.id).unwrap_or_else(|| {
                panic!("leader {} of term {} is not in its configuration {:?}", self.id, self.term, self.conf)
            });
            assert!(pr.matched <= self.log.persisted, "self match beyond persisted");
        }
        if let Some(vote) = self.vote {
            if self.role == Role::Candidate {
                assert_eq!(vote, self.id, "candidate voted for another");
            }
        }
        for (id, pr) in &self.progress {
            assert!(pr.matched < pr.next, "progress of {id}: match {} >= next {}", pr.matched, pr.next);
        }
    }
}
