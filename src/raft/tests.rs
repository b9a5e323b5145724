//! Scenario tests that script the paper's figures, and exact-output tests for the
//! message handlers. A tiny synchronous network delivers messages in order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use super::election::CampaignKind;
use super::*;

/// A synchronous cluster: every Ready is persisted and acknowledged at once.
struct Net {
    nodes: BTreeMap<NodeId, RaftNode<MemStorage>>,
    queue: VecDeque<Message>,
    /// Nodes cut off from everyone (their messages, both ways, are dropped).
    isolated: BTreeSet<NodeId>,
    applied: BTreeMap<NodeId, Vec<(Index, Term)>>,
    /// Messages delivered so far; a scenario that never quiets down fails at
    /// `DELIVERIES_MAX` instead of spinning forever (a broken rule can make it loop).
    deliveries: usize,
}

/// More deliveries than any scenario here needs by two orders of magnitude.
const DELIVERIES_MAX: usize = 10_000;

fn config(id: NodeId) -> Config {
    let mut config = Config::new(id);
    config.append_max_bytes = 1; // one entry per append: lets a script split replication
    config
}

/// A storage whose log has one entry per term in `terms` (index 1 upward).
fn log_of(voters: &[NodeId], terms: &[Term]) -> MemStorage {
    let mut storage = MemStorage::new_with_conf(ConfState::new(voters.iter().copied()));
    let entries: Vec<Entry> = terms
        .iter()
        .enumerate()
        .map(|(i, &term)| Entry {
            term,
            index: i as Index + 1,
            payload: EntryPayload::Normal(Bytes::from(vec![term as u8])),
        })
        .collect();
    storage.append(&entries);
    let term = terms.iter().copied().max().unwrap_or(0);
    storage.set_hard_state(HardState { term, vote: None, commit: 0 });
    storage
}

impl Net {
    fn new(logs: Vec<(NodeId, MemStorage)>) -> Net {
        let nodes = logs.into_iter().map(|(id, storage)| (id, RaftNode::new(config(id), storage).unwrap())).collect();
        Net { nodes, queue: VecDeque::new(), isolated: BTreeSet::new(), applied: BTreeMap::new(), deliveries: 0 }
    }

    fn with_empty_logs(n: u64) -> Net {
        let voters: Vec<NodeId> = (1..=n).collect();
        Net::new(voters.iter().map(|&id| (id, log_of(&voters, &[]))).collect())
    }

    fn node(&mut self, id: NodeId) -> &mut RaftNode<MemStorage> {
        self.nodes.get_mut(&id).unwrap()
    }

    fn drain(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).unwrap();
        while node.has_ready() {
            let ready = node.ready();
            let store = node.storage_mut();
            if let Some(snapshot) = ready.snapshot {
                store.apply_snapshot(snapshot);
            }
            store.append(&ready.entries);
            if let Some(hs) = ready.hard_state {
                store.set_hard_state(hs);
            }
            self.applied.entry(id).or_default().extend(ready.committed_entries.iter().map(|e| (e.index, e.term)));
            self.queue.extend(ready.messages.into_iter().chain(ready.persisted_messages));
            node.advance(ready.number);
        }
    }

    /// The next message to deliver, counted against `DELIVERIES_MAX`.
    fn next_message(&mut self) -> Option<Message> {
        let m = self.queue.pop_front()?;
        self.deliveries += 1;
        assert!(self.deliveries <= DELIVERIES_MAX, "scenario did not settle within {DELIVERIES_MAX} deliveries");
        Some(m)
    }

    /// Delivers messages until the network is quiet.
    fn stabilize(&mut self) {
        loop {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.drain(id);
            }
            let Some(m) = self.next_message() else {
                return;
            };
            // Nodes cut off, or not part of this scenario, hear nothing.
            if self.isolated.contains(&m.from) || self.isolated.contains(&m.to) || !self.nodes.contains_key(&m.to) {
                continue;
            }
            self.node(m.to).step(m).unwrap();
        }
    }

    fn campaign(&mut self, id: NodeId) {
        self.node(id).campaign(CampaignKind::PreVote);
        self.stabilize();
    }

    fn terms(&self, id: NodeId) -> Vec<Term> {
        let node = &self.nodes[&id];
        (1..=node.last_index()).map(|i| node.term_at(i).unwrap()).collect()
    }
}

#[test]
fn a_campaign_elects_a_leader_who_commits_a_noop_of_its_term() {
    let mut net = Net::with_empty_logs(3);
    net.campaign(1);
    assert_eq!(net.node(1).role(), Role::Leader);
    assert_eq!(net.node(2).leader(), Some(1));
    // Raft §8: the leader's term starts with a no-op, committed everywhere.
    for id in 1..=3 {
        assert_eq!(net.terms(id), vec![1]);
        assert_eq!(net.node(id).committed(), 1);
    }
}

/// Figure 7: a leader of term 8 with log 1 1 1 4 4 5 5 6 6 6 brings followers with
/// missing, extra and conflicting entries to exactly its own log.
#[test]
fn figure_7_followers_converge_on_the_leaders_log() {
    let voters = [1, 2, 3, 4, 5, 6, 7];
    let leader_log = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let shapes: [&[Term]; 6] = [
        &[1, 1, 1, 4, 4, 5, 5, 6, 6],          // (a) missing one
        &[1, 1, 1, 4],                         // (b) missing many
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],    // (c) one extra, same term
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7], // (d) extra from a later term
        &[1, 1, 1, 4, 4, 4, 4],                // (e) conflicting term 4 suffix
        &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],    // (f) terms 2 and 3 never committed
    ];
    let mut logs = vec![(1, log_of(&voters, &leader_log))];
    for (i, shape) in shapes.iter().enumerate() {
        logs.push((i as NodeId + 2, log_of(&voters, shape)));
    }
    let mut net = Net::new(logs);
    // The leader of term 8 is elected by the followers whose logs it covers.
    for id in 1..=7 {
        let term = net.node(id).term();
        net.node(id).term = term.max(7);
    }
    net.campaign(1);
    assert_eq!(net.node(1).role(), Role::Leader);
    assert_eq!(net.node(1).term(), 8);
    let mut expected = leader_log.to_vec();
    expected.push(8);
    for id in 1..=7 {
        assert_eq!(net.terms(id), expected, "follower {id}");
    }
}

/// Figure 8: a leader must not commit an entry of an earlier term by counting
/// replicas. Scripted with the rule intact (index 2 stays uncommitted and is safely
/// overwritten) and broken (index 2 is committed, then lost). Returns S1's commit
/// index, what S1 and S3 applied, and the term S5 (the final leader) holds at index 2.
type Applied = Vec<(Index, Term)>;

fn figure_8(broken: bool) -> (Index, Applied, Applied, Option<Term>) {
    let voters = [1, 2, 3, 4, 5];
    // (a)+(b): S1 led term 2 and put index 2 on S2; S5 led term 3 and wrote index 2 alone.
    let mut net = Net::new(vec![
        (1, log_of(&voters, &[1, 2])),
        (2, log_of(&voters, &[1, 2])),
        (3, log_of(&voters, &[1])),
        (4, log_of(&voters, &[1])),
        (5, log_of(&voters, &[1, 3])),
    ]);
    for id in 1..=5 {
        net.node(id).term = 3;
        net.node(id).log.commit_to(1);
    }
    net.node(1).broken_commit_rule = broken;
    // (c): with S5 away, S1 wins term 4 and copies index 2 (term 2) to S3 and S4, but
    // its term-4 no-op never reaches them.
    net.isolated.insert(5);
    net.node(1).campaign(CampaignKind::PreVote);
    loop {
        net.drain(1);
        let Some(mut m) = net.next_message() else {
            break;
        };
        if net.isolated.contains(&m.to) || net.isolated.contains(&m.from) {
            continue;
        }
        if let MessageKind::Append { entries, .. } = &mut m.kind {
            if m.to == 3 || m.to == 4 {
                entries.retain(|e| e.term != 4);
            }
        }
        let to = m.to;
        net.node(to).step(m).unwrap();
        net.drain(to);
    }
    assert_eq!(net.node(1).role(), Role::Leader);
    assert_eq!(net.node(1).progress(3).map(|p| p.matched), Some(2));
    let s1_commit = net.node(1).committed();
    // (d): S1 and S2 go away; S5 wins term 5 with S3 and S4, whose last entry
    // (term 2) is older than its own (term 3), and overwrites index 2.
    net.isolated = BTreeSet::from([1, 2]);
    net.queue.clear();
    net.node(5).term = 4;
    for id in [3, 4] {
        net.node(id).election_elapsed = net.node(id).config.election_ticks; // lease expired
    }
    net.campaign(5);
    assert_eq!(net.node(5).role(), Role::Leader);
    let s5_at_2 = net.node(5).term_at(2);
    (s1_commit, net.applied.remove(&1).unwrap_or_default(), net.applied.remove(&3).unwrap_or_default(), s5_at_2)
}

#[test]
fn figure_8_old_term_entries_are_not_committed_by_counting() {
    let (s1_commit, s1_applied, s3_applied, _) = figure_8(false);
    assert_eq!(s1_commit, 1, "index 2 (term 2) must not commit on replica count alone");
    assert!(!s1_applied.contains(&(2, 2)));
    assert!(s3_applied.contains(&(2, 3)), "S5 legitimately replaces index 2 with its term-3 entry");
}

#[test]
fn figure_8_hazard_appears_when_the_rule_is_broken() {
    let (s1_commit, s1_applied, _, s5_at_2) = figure_8(true);
    assert_eq!(s1_commit, 2, "the broken rule commits index 2 of term 2");
    assert!(s1_applied.contains(&(2, 2)), "S1 applied (2, term 2)");
    assert_eq!(s5_at_2, Some(3), "S5 leads term 5 without the committed entry: leader completeness is lost");
}

#[test]
fn follower_rejects_a_mismatched_append_with_a_hint_that_skips_its_term() {
    let mut node = RaftNode::new(config(2), log_of(&[1, 2, 3], &[1, 1, 2, 2, 2])).unwrap();
    node.step(Message {
        from: 1,
        to: 2,
        term: 3,
        kind: MessageKind::Append { prev_index: 5, prev_term: 3, entries: vec![], commit: 0 },
    })
    .unwrap();
    let ready = node.ready();
    assert!(ready.messages.is_empty(), "a rejection waits for the new term to be durable");
    assert_eq!(ready.hard_state, Some(HardState { term: 3, vote: None, commit: 0 }));
    // The hint is our last index whose term is at most the leader's prev_term: (5, 2).
    assert_eq!(
        ready.persisted_messages,
        vec![Message {
            from: 2,
            to: 1,
            term: 3,
            kind: MessageKind::AppendResponse { index: 5, reject: Some(RejectHint { index: 5, term: 2 }) },
        }]
    );
}

#[test]
fn follower_truncates_a_conflicting_suffix_and_acknowledges_after_persisting() {
    let mut node = RaftNode::new(config(2), log_of(&[1, 2, 3], &[1, 1, 2, 2])).unwrap();
    let entries = vec![Entry { term: 3, index: 3, payload: EntryPayload::Noop }];
    node.step(Message {
        from: 1,
        to: 2,
        term: 3,
        kind: MessageKind::Append { prev_index: 2, prev_term: 1, entries: entries.clone(), commit: 3 },
    })
    .unwrap();
    let ready = node.ready();
    assert_eq!(ready.entries, entries, "the host overwrites from index 3");
    assert_eq!(ready.hard_state, Some(HardState { term: 3, vote: None, commit: 3 }));
    assert_eq!(
        ready.persisted_messages,
        vec![Message { from: 2, to: 1, term: 3, kind: MessageKind::AppendResponse { index: 3, reject: None } }]
    );
    let applied: Vec<Index> = ready.committed_entries.iter().map(|e| e.index).collect();
    assert_eq!(applied, vec![1, 2], "index 3 is not applied before it is durable");
    node.storage_mut().append(&ready.entries);
    node.advance(ready.number);
    let ready = node.ready();
    let applied: Vec<Index> = ready.committed_entries.iter().map(|e| e.index).collect();
    assert_eq!(applied, vec![3]);
}

#[test]
fn vote_requires_an_up_to_date_log_and_is_given_once_per_term() {
    let mut node = RaftNode::new(config(3), log_of(&[1, 2, 3], &[1, 2])).unwrap();
    let vote = |from, last_index, last_term| Message {
        from,
        to: 3,
        term: 5,
        kind: MessageKind::Vote { last_index, last_term, transfer: false, commit: KnownCommit::default() },
    };
    node.step(vote(1, 5, 1)).unwrap(); // longer log, older last term: stale
    node.step(vote(2, 2, 2)).unwrap(); // as up to date as ours: granted
    node.step(vote(1, 9, 9)).unwrap(); // more up to date, but we voted this term
    let ready = node.ready();
    let replies: Vec<(NodeId, MessageKind)> = ready.persisted_messages.into_iter().map(|m| (m.to, m.kind)).collect();
    assert_eq!(
        replies,
        vec![
            (1, MessageKind::VoteResponse { reject: true, commit: KnownCommit::default() }),
            (2, MessageKind::VoteResponse { reject: false, commit: KnownCommit::default() }),
            (1, MessageKind::VoteResponse { reject: true, commit: KnownCommit::default() }),
        ]
    );
    assert_eq!(ready.hard_state, Some(HardState { term: 5, vote: Some(2), commit: 0 }));
}

#[test]
fn leader_without_a_quorum_steps_down_after_an_election_timeout() {
    let mut net = Net::with_empty_logs(3);
    net.campaign(1);
    net.isolated.extend([2, 3]);
    // The first check after election counts everyone as recently active; the second fails.
    for _ in 0..2 * net.node(1).config.election_ticks {
        net.node(1).tick();
        net.stabilize();
    }
    assert_eq!(net.node(1).role(), Role::Follower);
}

#[test]
fn leadership_transfer_catches_up_the_target_then_hands_over() {
    let mut net = Net::with_empty_logs(3);
    net.campaign(1);
    net.isolated.insert(3);
    net.node(1).propose(Bytes::from_static(b"x")).unwrap();
    net.stabilize();
    net.isolated.clear();
    net.node(1).transfer_leader(3).unwrap();
    assert!(matches!(net.node(1).propose(Bytes::new()), Err(ProposeError::TransferInProgress { to: 3 })));
    net.stabilize();
    assert_eq!(net.node(3).role(), Role::Leader);
    assert_eq!(net.node(1).leader(), Some(3));
    assert_eq!(net.terms(3), vec![1, 1, 2]);
}

#[test]
fn read_index_is_answered_after_a_quorum_confirms_leadership() {
    let mut net = Net::with_empty_logs(3);
    net.campaign(1);
    net.node(1).read_index(42).unwrap();
    let ready = net.node(1).ready();
    assert!(ready.read_states.is_empty(), "not before the heartbeat round is acknowledged");
    let heartbeats = ready.messages.iter().filter(|m| matches!(m.kind, MessageKind::Heartbeat { .. })).count();
    assert_eq!(heartbeats, 2);
    net.queue.extend(ready.messages);
    net.node(1).advance(ready.number);
    let mut answered = Vec::new();
    while let Some(m) = net.next_message() {
        let to = m.to;
        let node = net.nodes.get_mut(&to).unwrap();
        node.step(m).unwrap();
        while node.has_ready() {
            let ready = node.ready();
            answered.extend(ready.read_states.iter().copied());
            net.queue.extend(ready.messages.into_iter().chain(ready.persisted_messages));
            node.advance(ready.number);
        }
    }
    assert_eq!(answered, vec![ReadState { ctx: 42, index: 1 }]);
}

#[test]
fn proposals_beyond_the_bounds_are_refused_with_a_reason() {
    let mut net = Net::with_empty_logs(1);
    net.campaign(1);
    let too_big = Bytes::from(vec![0; (net.node(1).config.entry_max_bytes + 1) as usize]);
    assert!(matches!(net.node(1).propose(too_big), Err(ProposeError::TooLarge { .. })));
    let mut follower = Net::with_empty_logs(3);
    assert!(matches!(follower.node(2).propose(Bytes::new()), Err(ProposeError::NotLeader { leader_hint: None })));
    let change = ConfChange::Change(vec![SingleChange::RemoveNode(1)]);
    assert!(matches!(net.node(1).propose_conf_change(change), Err(ProposeError::InvalidConfChange { .. })));
}

#[test]
fn a_removed_leader_steps_down_once_the_change_commits() {
    let mut net = Net::with_empty_logs(3);
    net.campaign(1);
    net.node(1).propose_conf_change(ConfChange::Change(vec![SingleChange::RemoveNode(1)])).unwrap();
    net.stabilize();
    // Joint (C_old,new) commits, the leader leaves it on its own, then steps down.
    assert_eq!(net.node(1).conf_state(), &ConfState::new([2, 3]));
    assert_ne!(net.node(1).role(), Role::Leader);
    assert!([2, 3].into_iter().any(|id| net.nodes[&id].role() == Role::Leader));
}

fn lease_net() -> Net {
    let voters = [1, 2, 3];
    let mut net = Net::new(voters.iter().map(|&id| (id, log_of(&voters, &[]))).collect());
    for id in 1..=3 {
        let node = net.node(id);
        node.config.read_only = ReadOnlyOption::LeaseBased;
        node.ticks = u64::from(node.config.election_ticks); // past the boot-time refusal
    }
    net
}

#[test]
fn a_lease_read_is_answered_without_a_round_trip_once_a_quorum_acknowledged() {
    let mut net = lease_net();
    net.campaign(1);
    // Before any heartbeat round is acknowledged there is no lease: a round is needed.
    net.node(1).read_index(1).unwrap();
    let ready = net.node(1).ready();
    assert!(ready.read_states.is_empty());
    net.queue.extend(ready.messages);
    net.node(1).advance(ready.number);
    net.stabilize();
    // Now the lease holds: the next read is answered in the same Ready, no messages.
    net.node(1).read_index(2).unwrap();
    let ready = net.node(1).ready();
    assert_eq!(ready.read_states, vec![ReadState { ctx: 2, index: 1 }]);
    assert!(ready.messages.is_empty());
}

#[test]
fn no_lease_read_after_a_leadership_transfer_starts() {
    let mut net = lease_net();
    net.campaign(1);
    net.node(1).read_index(1).unwrap();
    net.stabilize();
    net.isolated.insert(3); // the transfer cannot complete
    net.node(1).transfer_leader(3).unwrap();
    net.node(1).read_index(2).unwrap();
    let ready = net.node(1).ready();
    assert!(ready.read_states.is_empty(), "the lease is revoked: reads need a quorum round again");
    let rounds = ready.messages.iter().filter(|m| matches!(m.kind, MessageKind::Heartbeat { .. })).count();
    assert_eq!(rounds, 2);
}

#[test]
fn malformed_messages_are_refused_and_change_nothing() {
    let mut node = RaftNode::new(config(2), log_of(&[1, 2, 3], &[1])).unwrap();
    let before = node.hard_state();
    let gap = vec![Entry { term: 1, index: 3, payload: EntryPayload::Noop }];
    let cases = [
        (3, MessageKind::Append { prev_index: 1, prev_term: 1, entries: gap, commit: 0 }),
        (
            3,
            MessageKind::Append {
                prev_index: 1,
                prev_term: 1,
                entries: vec![Entry { term: 9, index: 2, payload: EntryPayload::Noop }],
                commit: 0,
            },
        ),
        (2, MessageKind::Heartbeat { commit: 0, round: 1, quiesce: false }),
        // A commit index, or its term, beyond any a log can reach.
        (3, MessageKind::VoteResponse { reject: true, commit: KnownCommit { index: INDEX_MAX + 1, term: 1 } }),
        (3, MessageKind::PreVote { last_index: 1, last_term: 1, commit: KnownCommit { index: 1, term: u64::MAX } }),
    ];
    for (from, kind) in cases {
        let m = Message { from, to: 2, term: 5, kind };
        assert!(node.step(m).is_err());
    }
    // A forged term at the top of the range would overflow the next election's `+ 1`.
    for term in [u64::MAX, TERM_MAX + 1] {
        let vote = MessageKind::Vote { last_index: 9, last_term: 1, transfer: false, commit: KnownCommit::default() };
        assert!(node.step(Message { from: 3, to: 2, term, kind: vote }).is_err());
    }
    let wrong_recipient = Message { from: 1, to: 3, term: 5, kind: MessageKind::TimeoutNow };
    assert!(matches!(node.step(wrong_recipient), Err(StepError::WrongRecipient { .. })));
    assert_eq!(node.hard_state(), before);
    assert!(!node.has_ready());
}

/// A node whose log holds a membership change it has not applied (its knowledge of the
/// commit index was lost in a crash) must win its election in the configuration that
/// change leads to as well: here the old configuration's majority {1, 2, 3} includes
/// node 3, which the change removed, while the new one's {4, 5, 6} can elect another
/// leader. The simulator found this (seed 5140).
#[test]
fn an_election_must_be_won_in_the_latest_configuration_in_the_log() {
    let voters = [1, 2, 3, 4, 5];
    let swap = ConfChange::Change(vec![SingleChange::AddVoter(6), SingleChange::RemoveNode(3)]);
    let log = || {
        let mut storage = log_of(&voters, &[1]);
        storage.append(&[
            Entry { term: 1, index: 2, payload: EntryPayload::ConfChange(swap.clone()) },
            Entry { term: 1, index: 3, payload: EntryPayload::ConfChange(ConfChange::LeaveJoint) },
        ]);
        storage // commit index 0: the changes are in the log, not applied
    };
    let mut net = Net::new(vec![(1, log()), (2, log()), (3, log())]);
    net.campaign(2);
    assert_ne!(net.node(2).role(), Role::Leader, "votes of 1 and 3 are not a majority of {{1, 2, 4, 5, 6}}");
    assert_eq!(net.node(2).conf_state().voters, voters.into_iter().collect(), "nothing applied yet");
}

/// A follower whose storage lost the tail of its log (a damaged last flush, cut at
/// recovery) refuses appends that follow entries it acknowledged. The leader must
/// accept that its log went backwards and send them again, or the follower stays
/// behind forever.
#[test]
fn a_leader_resends_what_a_follower_lost_from_its_storage() {
    let mut net = Net::with_empty_logs(3);
    net.campaign(1);
    for i in 0..3u8 {
        net.node(1).propose(Bytes::from(vec![i])).unwrap();
        net.stabilize();
    }
    let last = net.node(1).last_index();
    assert_eq!(net.node(1).progress(3).map(|p| p.matched), Some(last));
    // Node 3 restarts from storage that lost its last two entries (term and vote kept).
    let mut storage = net.node(3).storage().clone();
    let lost_from = last - 1;
    let kept = storage.entries(1, lost_from, u64::MAX).unwrap();
    let hard_state = storage.hard_state();
    storage = log_of(&[1, 2, 3], &[]);
    storage.append(&kept);
    storage.set_hard_state(HardState { commit: 0, ..hard_state });
    net.nodes.insert(3, RaftNode::new(config(3), storage).unwrap());
    net.node(1).propose(Bytes::from_static(b"after")).unwrap();
    net.stabilize();
    net.node(1).tick(); // a heartbeat round, in case the append raced the restart
    net.stabilize();
    assert_eq!(net.node(3).last_index(), net.node(1).last_index(), "node 3 caught up again");
    assert_eq!(net.terms(3), net.terms(1));
}

/// Exact output: an append from a leader of an older term changes nothing; the
/// follower only tells it the current term (so a deposed leader steps down).
#[test]
fn an_append_from_a_stale_term_changes_nothing_and_answers_the_current_term() {
    let mut storage = log_of(&[1, 2, 3], &[1, 2]);
    storage.set_hard_state(HardState { term: 5, vote: Some(3), commit: 1 });
    let mut node = RaftNode::new(config(2), storage).unwrap();
    let entries = vec![Entry { term: 4, index: 3, payload: EntryPayload::Noop }];
    node.step(Message {
        from: 1,
        to: 2,
        term: 4,
        kind: MessageKind::Append { prev_index: 2, prev_term: 2, entries, commit: 3 },
    })
    .unwrap();
    let ready = node.ready();
    assert!(ready.entries.is_empty(), "nothing appended");
    assert_eq!(ready.hard_state, None, "term, vote and commit unchanged");
    assert!(ready.messages.is_empty());
    assert_eq!(
        ready.persisted_messages,
        vec![Message { from: 2, to: 1, term: 5, kind: MessageKind::AppendResponse { index: 0, reject: None } }]
    );
    assert_eq!(ready.committed_entries.iter().map(|e| e.index).collect::<Vec<_>>(), vec![1]);
    assert_eq!((node.term(), node.last_index(), node.committed()), (5, 2, 1));
}

/// Exact output: a snapshot that ends below the follower's commit index is not
/// installed; the follower answers with its commit index.
#[test]
fn a_snapshot_older_than_the_commit_index_is_acknowledged_not_installed() {
    let mut storage = log_of(&[1, 2, 3], &[1, 1, 1, 1]);
    storage.set_hard_state(HardState { term: 1, vote: None, commit: 4 });
    let mut node = RaftNode::new(config(2), storage).unwrap();
    let meta = SnapshotMeta { index: 2, term: 1, conf_state: ConfState::new([1, 2, 3]) };
    let snapshot = Box::new(Snapshot { meta, data: Bytes::from_static(b"old") });
    node.step(Message { from: 1, to: 2, term: 1, kind: MessageKind::Snapshot { snapshot } }).unwrap();
    let ready = node.ready();
    assert!(ready.snapshot.is_none(), "an older snapshot is never installed");
    assert!(ready.entries.is_empty());
    assert_eq!(
        ready.persisted_messages,
        vec![Message { from: 2, to: 1, term: 1, kind: MessageKind::AppendResponse { index: 4, reject: None } }]
    );
    assert_eq!((node.last_index(), node.committed()), (4, 4));
}

/// A candidate that applies its own removal while the election runs (the entry was
/// committed but not yet applied when it started) does not become leader of a
/// configuration without it. The simulator found this (seed 37393).
#[test]
fn a_candidate_removed_while_campaigning_does_not_lead() {
    let voters = [1, 2, 3];
    let removal = ConfChange::Change(vec![SingleChange::RemoveNode(1)]);
    let log = |commit| {
        let mut storage = log_of(&voters, &[1]);
        storage.append(&[
            Entry { term: 1, index: 2, payload: EntryPayload::ConfChange(removal.clone()) },
            Entry { term: 1, index: 3, payload: EntryPayload::ConfChange(ConfChange::LeaveJoint) },
        ]);
        storage.set_hard_state(HardState { term: 1, vote: None, commit });
        storage
    };
    let mut net = Net::new(vec![(1, log(3)), (2, log(1)), (3, log(1))]);
    net.node(1).campaign(CampaignKind::Vote); // a candidate now; it applies 2..=3 next
    net.stabilize();
    assert_ne!(net.node(1).role(), Role::Leader, "node 1 is no longer a voter");
    assert_eq!(net.node(1).conf_state(), &ConfState::new([2, 3]));
}

/// A leader whose log holds membership changes it has not applied (its commit index
/// was lost in a crash) counts commits by quorums of their configuration too: here the
/// applied one {1, 2, 3} would commit with node 3, which the changes removed, while the
/// latest one {1, 2, 4} has only the leader. The simulator found this (seed 81810).
#[test]
fn a_leader_commits_by_the_latest_configuration_in_its_log_too() {
    let swap = ConfChange::Change(vec![SingleChange::AddVoter(4), SingleChange::RemoveNode(3)]);
    let log = || {
        let mut conf = ConfState::new([1, 2, 3]);
        conf.learners.insert(4);
        let mut storage = MemStorage::new_with_conf(conf);
        storage.append(&[
            Entry { term: 1, index: 1, payload: EntryPayload::Noop },
            Entry { term: 1, index: 2, payload: EntryPayload::ConfChange(swap.clone()) },
            Entry { term: 1, index: 3, payload: EntryPayload::ConfChange(ConfChange::LeaveJoint) },
        ]);
        storage.set_hard_state(HardState { term: 1, vote: None, commit: 1 });
        storage
    };
    let mut net = Net::new((1..=4).map(|id| (id, log())).collect());
    net.isolated.insert(4);
    net.node(2).campaign(CampaignKind::Vote);
    // Votes of 1 and 3 arrive; then node 1 is cut off too.
    loop {
        for id in 1..=3 {
            net.drain(id);
        }
        if net.node(2).role() == Role::Leader {
            break;
        }
        let Some(m) = net.next_message() else { panic!("node 2 was not elected") };
        if !net.isolated.contains(&m.to) {
            let to = m.to;
            net.node(to).step(m).unwrap();
        }
    }
    net.isolated.insert(1);
    net.stabilize();
    assert_eq!(net.node(2).committed(), 1, "node 3's acknowledgement is no quorum of {{1, 2, 4}}");
}

/// Protocol-aware recovery: entries 2..=4 were committed by nodes 1 and 2 alone, then
/// node 2's storage lost them. While node 1 is away, node 2 must not help node 3
/// (which never had them) win an election; once a leader's fresh commit index is
/// reached, node 2 votes again.
#[test]
fn a_replica_that_lost_acknowledged_entries_abstains_until_caught_up() {
    let mut net = Net::with_empty_logs(3);
    net.campaign(1);
    net.isolated.insert(3);
    for i in 0..3u8 {
        net.node(1).propose(Bytes::from(vec![i])).unwrap();
        net.stabilize();
    }
    let committed = net.node(1).committed();
    assert_eq!(committed, 4, "committed by nodes 1 and 2");
    // Node 2 restarts from storage that lost entries 2..=4 (its term and vote kept).
    let storage = net.node(2).storage().clone();
    let kept = storage.entries(1, 2, u64::MAX).unwrap();
    let mut damaged = log_of(&[1, 2, 3], &[]);
    damaged.append(&kept);
    damaged.set_hard_state(HardState { commit: 0, ..storage.hard_state() });
    net.nodes.insert(2, RaftNode::new(config(2), damaged).unwrap());
    net.node(2).abstain();
    assert!(net.node(2).is_abstaining());
    let recovered = net.node(2).hard_state();

    net.isolated = [1].into();
    for _ in 0..3 {
        net.campaign(3);
        assert_ne!(net.node(3).role(), Role::Leader, "node 3 lacks committed entries");
        net.campaign(2);
        assert_ne!(net.node(2).role(), Role::Leader, "an abstaining node does not campaign");
    }
    let after = net.node(2).hard_state();
    assert!(after.vote.is_none() || after.vote == recovered.vote && after.term == recovered.term, "{after:?}");

    net.isolated.clear();
    if net.node(1).role() != Role::Leader {
        net.campaign(1);
    }
    assert_eq!(net.node(1).role(), Role::Leader);
    for _ in 0..10 {
        if !net.node(2).is_abstaining() {
            break;
        }
        net.node(1).tick();
        net.node(2).tick();
        net.stabilize();
    }
    assert!(!net.node(2).is_abstaining(), "caught up with a fresh commit index");
    assert_eq!(net.terms(2), net.terms(1));
    assert!(net.node(2).committed() >= committed);
}

/// Exact output: a leader answers a commit query only once it has committed in its
/// term, and a follower ignores an answer carrying another life's nonce.
#[test]
fn commit_queries_are_answered_with_a_commit_of_the_leaders_term() {
    let mut net = Net::with_empty_logs(3);
    net.campaign(1);
    let term = net.node(1).term();
    let query = Message { from: 2, to: 1, term, kind: MessageKind::CommitQuery { nonce: 7, last_index: 1 } };
    net.node(1).step(query.clone()).unwrap();
    let ready = net.node(1).ready();
    let committed = net.node(1).committed();
    // The follower's log is probed again from its last index, then answered.
    let probe = MessageKind::Append { prev_index: 1, prev_term: 1, entries: vec![], commit: committed };
    let answer = MessageKind::CommitAnswer { nonce: 7, commit: committed };
    assert_eq!(
        ready.messages,
        vec![Message { from: 1, to: 2, term, kind: probe }, Message { from: 1, to: 2, term, kind: answer }]
    );
    net.node(1).advance(ready.number);

    // A new leader that has not committed in its term stays silent.
    let storage = net.node(1).storage().clone();
    let mut leader = RaftNode::new(config(1), storage).unwrap();
    leader.become_candidate();
    leader.become_leader();
    leader.step(Message { term: leader.term(), ..query }).unwrap();
    let ready = leader.ready();
    assert!(!ready.messages.iter().any(|m| matches!(m.kind, MessageKind::CommitAnswer { .. })));

    let follower = net.node(2);
    follower.abstain();
    let stale = MessageKind::CommitAnswer { nonce: 0, commit: 0 };
    follower.step(Message { from: 1, to: 2, term, kind: stale }).unwrap();
    assert!(follower.is_abstaining(), "an answer to another life's query is ignored");
}

/// Node 4's promotion (entry 2) committed with nodes 1 and 3, and node 4 also holds
/// entry 3; node 1 is gone for good. Node 3 cannot win without node 4's vote, which
/// its shorter log does not get; node 4, still a learner by what it knows committed,
/// must be allowed to campaign, and wins in both configurations (seed 31412).
#[test]
fn a_learner_promoted_in_its_log_campaigns_when_it_holds_the_longest_log() {
    let normal = |index| Entry { term: 1, index, payload: EntryPayload::Normal(Bytes::from_static(b"x")) };
    let promote = ConfChange::Change(vec![SingleChange::AddVoter(4)]);
    let add = Entry { term: 1, index: 2, payload: EntryPayload::ConfChange(promote) };
    let with_learner = ConfState { voters: [1, 2, 3].into(), voters_outgoing: BTreeSet::new(), learners: [4].into() };
    let storage = |conf: ConfState, entries: &[Entry], commit| {
        let mut storage = MemStorage::new_with_conf(conf);
        storage.append(entries);
        storage.set_hard_state(HardState { term: 1, vote: None, commit });
        storage
    };
    let mut net = Net::new(vec![
        (2, storage(with_learner.clone(), &[normal(1)], 1)),
        (3, storage(ConfState::new([1, 2, 3, 4]), &[normal(1), add.clone()], 2)),
        (4, storage(with_learner, &[normal(1), add, normal(3)], 1)),
    ]);
    net.campaign(3);
    assert_ne!(net.node(3).role(), Role::Leader, "node 4's log is longer");
    net.campaign(4);
    assert_eq!(net.node(4).role(), Role::Leader);
    assert_eq!(net.node(4).conf_state().voters, [1, 2, 3, 4].into());
}

/// Commit queries and answers are peer input: extreme values neither overflow nor
/// move anything they should not, and a non-member's query is ignored.
#[test]
fn hostile_commit_queries_and_answers_change_nothing_unsafe() {
    let mut net = Net::with_empty_logs(3);
    net.campaign(1);
    let (term, last) = (net.node(1).term(), net.node(1).last_index());
    let beyond = Message { from: 2, to: 1, term, kind: MessageKind::CommitQuery { nonce: 1, last_index: u64::MAX } };
    assert!(net.node(1).step(beyond).is_err(), "an index no log reaches is malformed");
    let huge = Message { from: 2, to: 1, term, kind: MessageKind::CommitQuery { nonce: 1, last_index: INDEX_MAX } };
    net.node(1).step(huge).unwrap();
    let ready = net.node(1).ready();
    assert!(ready
        .messages
        .iter()
        .any(|m| matches!(m.kind, MessageKind::Append { prev_index, .. } if m.to == 2 && prev_index == last)));
    net.node(1).advance(ready.number);
    let stranger = Message { from: 9, to: 1, term, kind: MessageKind::CommitQuery { nonce: 2, last_index: 0 } };
    net.node(1).step(stranger).unwrap();
    assert!(!net.node(1).ready().messages.iter().any(|m| m.to == 9), "a non-member is not answered");

    let follower = net.node(2);
    follower.abstain();
    for _ in 0..2 {
        follower.tick();
    }
    let ready = follower.ready();
    let nonce = ready
        .messages
        .iter()
        .find_map(|m| match m.kind {
            MessageKind::CommitQuery { nonce, .. } => Some(nonce),
            _ => None,
        })
        .expect("the abstaining follower asks");
    follower.advance(ready.number);
    let beyond = MessageKind::CommitAnswer { nonce, commit: u64::MAX };
    assert!(follower.step(Message { from: 1, to: 2, term, kind: beyond }).is_err(), "malformed");
    let forged = MessageKind::CommitAnswer { nonce, commit: INDEX_MAX };
    follower.step(Message { from: 1, to: 2, term, kind: forged }).unwrap();
    assert!(follower.is_abstaining(), "a commit index it can never reach keeps it abstaining, nothing worse");
}

/// Exact output: a commit index is taken from a (pre-)vote message only where this
/// log holds the same entry (Log Matching); one beyond the log stops campaigns,
/// which could not be won (the simulator's seeds 175238 and 195081).
#[test]
fn election_messages_teach_the_commit_index_and_when_a_campaign_is_futile() {
    let mut node = RaftNode::new(config(2), log_of(&[1, 2, 3], &[1, 1, 2])).unwrap();
    let mut refusal_with = |index, term| {
        let commit = KnownCommit { index, term };
        let kind = MessageKind::PreVoteResponse { reject: true, commit };
        node.step(Message { from: 1, to: 2, term: 2, kind }).unwrap();
        node.committed()
    };
    assert_eq!(refusal_with(3, 1), 0, "entry 3 has term 2 here: another log");
    assert_eq!(refusal_with(2, 1), 2, "entry 2 matches: everything up to it is committed");
    assert_eq!(refusal_with(1, 1), 2, "the commit index never goes back");
    assert_eq!(refusal_with(9, 3), 2, "beyond this log");

    // A commit index beyond the log: this node cannot win, so it does not campaign,
    // but it does forget its silent leader (or its lease would refuse those who can).
    let heartbeat = MessageKind::Heartbeat { commit: 2, round: 1, quiesce: false };
    node.step(Message { from: 1, to: 2, term: 2, kind: heartbeat }).unwrap();
    assert_eq!(node.leader(), Some(1));
    let answered = node.ready();
    node.advance(answered.number);
    for _ in 0..4 * node.config.election_ticks {
        node.tick();
    }
    assert_eq!((node.role(), node.leader()), (Role::Follower, None));
    let ready = node.ready();
    assert!(ready.messages.is_empty() && ready.persisted_messages.is_empty(), "no campaign");
}

/// Exact output: a vote request from a stale term is refused with the current term,
/// so that the candidate catches up (Raft §5.1), carrying what this node knows.
#[test]
fn a_stale_vote_request_is_refused_with_the_current_term() {
    let mut storage = log_of(&[1, 2, 3], &[1, 2]);
    storage.set_hard_state(HardState { term: 5, vote: None, commit: 2 });
    let mut node = RaftNode::new(config(2), storage).unwrap();
    let kind = MessageKind::Vote { last_index: 9, last_term: 4, transfer: false, commit: KnownCommit::default() };
    node.step(Message { from: 3, to: 2, term: 4, kind }).unwrap();
    let refusal = MessageKind::VoteResponse { reject: true, commit: KnownCommit { index: 2, term: 2 } };
    let ready = node.ready();
    let sent: Vec<Message> = ready.messages.into_iter().chain(ready.persisted_messages).collect();
    assert_eq!(sent, vec![Message { from: 2, to: 3, term: 5, kind: refusal }]);
    assert_eq!(node.term(), 5);
}
