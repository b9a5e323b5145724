//! Forged messages against the core: whatever a peer sends — terms and indexes
//! anywhere in `u64`, entries that do not fit the log, answers to questions never
//! asked — the core refuses it or takes it, but never panics and never breaks its own
//! invariants, in every role.

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

/// Values where arithmetic goes wrong, beside ordinary small ones.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..8,
        1 => Just(u64::MAX),
        1 => Just(u64::MAX - 1),
        1 => Just(TERM_MAX),
        1 => Just(TERM_MAX + 1),
        1 => any::<u64>(),
    ]
}

fn entries() -> impl Strategy<Value = Vec<Entry>> {
    prop::collection::vec((number(), number(), 0u8..3), 0..4).prop_map(|raw| {
        raw.into_iter()
            .map(|(term, index, kind)| {
                let payload = match kind {
                    0 => EntryPayload::Noop,
                    1 => EntryPayload::Normal(Bytes::from_static(b"x")),
                    _ => EntryPayload::ConfChange(ConfChange::Change(vec![SingleChange::AddLearner(4)])),
                };
                Entry { term, index, payload }
            })
            .collect()
    })
}

fn known_commit() -> impl Strategy<Value = KnownCommit> {
    (number(), number()).prop_map(|(index, term)| KnownCommit { index, term })
}

fn kind() -> impl Strategy<Value = MessageKind> {
    prop_oneof![
        (number(), number(), known_commit()).prop_map(|(last_index, last_term, commit)| MessageKind::PreVote {
            last_index,
            last_term,
            commit
        }),
        (any::<bool>(), known_commit()).prop_map(|(reject, commit)| MessageKind::PreVoteResponse { reject, commit }),
        (number(), number(), any::<bool>(), known_commit()).prop_map(|(last_index, last_term, transfer, commit)| {
            MessageKind::Vote { last_index, last_term, transfer, commit }
        }),
        (any::<bool>(), known_commit()).prop_map(|(reject, commit)| MessageKind::VoteResponse { reject, commit }),
        (number(), number(), entries(), number()).prop_map(|(prev_index, prev_term, entries, commit)| {
            MessageKind::Append { prev_index, prev_term, entries, commit }
        }),
        (number(), proptest::option::of((number(), number()))).prop_map(|(index, hint)| {
            MessageKind::AppendResponse { index, reject: hint.map(|(index, term)| RejectHint { index, term }) }
        }),
        (number(), number(), any::<bool>()).prop_map(|(commit, round, quiesce)| MessageKind::Heartbeat {
            commit,
            round,
            quiesce
        }),
        number().prop_map(|round| MessageKind::HeartbeatResponse { round }),
        Just(MessageKind::TimeoutNow),
        (number(), number()).prop_map(|(nonce, last_index)| MessageKind::CommitQuery { nonce, last_index }),
        (number(), number()).prop_map(|(nonce, commit)| MessageKind::CommitAnswer { nonce, commit }),
    ]
}

/// A forged message from one of the members or a stranger, at a term near the node's
/// or anywhere.
fn message() -> impl Strategy<Value = (NodeId, u64, MessageKind)> {
    (prop_oneof![Just(1u64), Just(3), Just(9)], prop_oneof![3 => 0u64..6, 1 => number()], kind())
}

/// Node 2 of {1, 2, 3}, with a log of three entries, in the role `role` asks for.
fn node_in_role(role: u8) -> RaftNode<MemStorage> {
    let mut storage = MemStorage::new_with_conf(ConfState::new([1, 2, 3]));
    let log: Vec<Entry> =
        (1..=3).map(|i| Entry { term: 1, index: i, payload: EntryPayload::Normal(Bytes::from_static(b"v")) }).collect();
    storage.append(&log);
    storage.set_hard_state(HardState { term: 1, vote: None, commit: 2 });
    let mut config = Config::new(2);
    config.quiesce = role == 3;
    let mut node = RaftNode::new(config, storage).expect("valid");
    if role >= 1 {
        node.campaign(super::election::CampaignKind::Vote);
        drain(&mut node);
    }
    if role >= 2 {
        let term = node.term();
        node.step(Message {
            from: 1,
            to: 2,
            term,
            kind: MessageKind::VoteResponse { reject: false, commit: KnownCommit::default() },
        })
        .expect("a real vote");
        drain(&mut node);
    }
    node
}

/// Carries out every Ready at once, as a host with an instant disk would.
fn drain(node: &mut RaftNode<MemStorage>) {
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
        node.advance(ready.number);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: crate::fuzz_cases(2000), ..ProptestConfig::default() })]

    #[test]
    fn forged_messages_never_panic_the_core(role in 0u8..4, script in prop::collection::vec(message(), 1..12)) {
        let mut node = node_in_role(role);
        for (from, term, kind) in script {
            let _ = node.step(Message { from, to: 2, term, kind });
            node.check_invariants();
            drain(&mut node);
            node.tick();
            drain(&mut node);
            node.check_invariants();
        }
    }
}
