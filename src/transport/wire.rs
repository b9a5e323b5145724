//! Raft messages on the wire: conversions between the core's types and the protobuf
//! messages of `proto/quarry.proto`. Decoding is a trust boundary: anything a peer
//! sends that does not make a well-formed message is refused with a reason.

use std::collections::BTreeSet;

use crate::log::GroupId;
use crate::proto;
use crate::raft::{
    ConfChange, ConfState, Entry, EntryPayload, KnownCommit, Message, MessageKind, NodeId, RejectHint, SingleChange,
    Snapshot, SnapshotMeta,
};
use crate::shard::CatchUp;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed peer message: {0}")]
pub struct WireError(pub &'static str);

pub fn encode_message(group: GroupId, m: &Message) -> proto::RaftMessage {
    use proto::raft_message::Kind;
    let kind = match &m.kind {
        MessageKind::PreVote { last_index, last_term, commit } => Kind::PreVote(proto::MsgPreVote {
            last_index: *last_index,
            last_term: *last_term,
            commit: commit.index,
            commit_term: commit.term,
        }),
        MessageKind::PreVoteResponse { reject, commit } => {
            Kind::PreVoteResponse(encode_vote_response(*reject, *commit))
        }
        MessageKind::Vote { last_index, last_term, transfer, commit } => Kind::Vote(proto::MsgVote {
            last_index: *last_index,
            last_term: *last_term,
            transfer: *transfer,
            commit: commit.index,
            commit_term: commit.term,
        }),
        MessageKind::VoteResponse { reject, commit } => Kind::VoteResponse(encode_vote_response(*reject, *commit)),
        MessageKind::Append { prev_index, prev_term, entries, commit } => Kind::Append(proto::MsgAppend {
            prev_index: *prev_index,
            prev_term: *prev_term,
            entries: entries.iter().map(encode_entry).collect(),
            commit: *commit,
        }),
        MessageKind::AppendResponse { index, reject } => Kind::AppendResponse(proto::MsgAppendResponse {
            index: *index,
            reject: reject.map(|h| proto::RejectHint { index: h.index, term: h.term }),
        }),
        MessageKind::Heartbeat { commit, round, quiesce } => {
            Kind::Heartbeat(proto::MsgHeartbeat { commit: *commit, round: *round, quiesce: *quiesce })
        }
        MessageKind::HeartbeatResponse { round } => {
            Kind::HeartbeatResponse(proto::MsgHeartbeatResponse { round: *round })
        }
        // Only an offer travels here; the receiver pulls the image over Flight.
        MessageKind::Snapshot { snapshot } => Kind::Snapshot(proto::Snapshot {
            meta: Some(encode_snapshot_meta(&snapshot.meta)),
            size: snapshot.data.len() as u64,
            crc32: crc32fast::hash(&snapshot.data),
        }),
        MessageKind::TimeoutNow => Kind::TimeoutNow(proto::MsgTimeoutNow {}),
        MessageKind::CommitQuery { nonce, last_index } => {
            Kind::CommitQuery(proto::MsgCommitQuery { nonce: *nonce, last_index: *last_index })
        }
        MessageKind::CommitAnswer { nonce, commit } => {
            Kind::CommitAnswer(proto::MsgCommitAnswer { nonce: *nonce, commit: *commit })
        }
    };
    proto::RaftMessage { group, from: m.from, to: m.to, term: m.term, kind: Some(kind) }
}

fn encode_vote_response(reject: bool, commit: KnownCommit) -> proto::MsgVoteResponse {
    proto::MsgVoteResponse { reject, commit: commit.index, commit_term: commit.term }
}

fn known_commit(index: u64, term: u64) -> KnownCommit {
    KnownCommit { index, term }
}

pub fn decode_message(m: proto::RaftMessage) -> Result<(GroupId, Message), WireError> {
    use proto::raft_message::Kind;
    let kind = match m.kind.ok_or(WireError("message without a kind"))? {
        Kind::PreVote(v) => MessageKind::PreVote {
            last_index: v.last_index,
            last_term: v.last_term,
            commit: known_commit(v.commit, v.commit_term),
        },
        Kind::PreVoteResponse(v) => {
            MessageKind::PreVoteResponse { reject: v.reject, commit: known_commit(v.commit, v.commit_term) }
        }
        Kind::Vote(v) => MessageKind::Vote {
            last_index: v.last_index,
            last_term: v.last_term,
            transfer: v.transfer,
            commit: known_commit(v.commit, v.commit_term),
        },
        Kind::VoteResponse(v) => {
            MessageKind::VoteResponse { reject: v.reject, commit: known_commit(v.commit, v.commit_term) }
        }
        Kind::Append(a) => MessageKind::Append {
            prev_index: a.prev_index,
            prev_term: a.prev_term,
            entries: a.entries.into_iter().map(decode_entry).collect::<Result<_, _>>()?,
            commit: a.commit,
        },
        Kind::AppendResponse(r) => MessageKind::AppendResponse {
            index: r.index,
            reject: r.reject.map(|h| RejectHint { index: h.index, term: h.term }),
        },
        Kind::Heartbeat(h) => MessageKind::Heartbeat { commit: h.commit, round: h.round, quiesce: h.quiesce },
        Kind::HeartbeatResponse(h) => MessageKind::HeartbeatResponse { round: h.round },
        Kind::Snapshot(_) => return Err(WireError("a snapshot offer must be fetched, not stepped")),
        Kind::TimeoutNow(_) => MessageKind::TimeoutNow,
        Kind::CommitQuery(q) => MessageKind::CommitQuery { nonce: q.nonce, last_index: q.last_index },
        Kind::CommitAnswer(a) => MessageKind::CommitAnswer { nonce: a.nonce, commit: a.commit },
    };
    if m.from == 0 || m.to == 0 {
        return Err(WireError("node id 0"));
    }
    Ok((m.group, Message { from: m.from, to: m.to, term: m.term, kind }))
}

/// Encodes messages of many groups from node `from` to node `to` as one batch,
/// coalescing heartbeats and heartbeat responses into packed columns (a dozen bytes
/// per group instead of a full message each).
pub fn encode_batch(
    cluster_id: u64,
    from: NodeId,
    to: NodeId,
    messages: &[(GroupId, Message)],
    catch_up: &[CatchUp],
) -> proto::PeerBatch {
    let mut batch = proto::PeerBatch { cluster_id, from_node: from, to_node: to, ..Default::default() };
    batch.catch_up = catch_up
        .iter()
        .map(|c| proto::CatchUpOffer { group: c.group, term: c.term, from_index: c.from, to_index: c.to })
        .collect();
    let mut heartbeats = proto::CoalescedHeartbeats::default();
    let mut responses = proto::CoalescedHeartbeatResponses::default();
    for (group, m) in messages {
        let between_the_batch_nodes = m.from == from && m.to == to;
        match m.kind {
            // The last heartbeat before a group sleeps is rare: it travels whole.
            MessageKind::Heartbeat { commit, round, quiesce: false } if between_the_batch_nodes => {
                heartbeats.groups.push(*group);
                heartbeats.terms.push(m.term);
                heartbeats.commits.push(commit);
                heartbeats.rounds.push(round);
            }
            MessageKind::HeartbeatResponse { round } if between_the_batch_nodes => {
                responses.groups.push(*group);
                responses.terms.push(m.term);
                responses.rounds.push(round);
            }
            _ => batch.messages.push(encode_message(*group, m)),
        }
    }
    batch.heartbeats = (!heartbeats.groups.is_empty()).then_some(heartbeats);
    batch.heartbeat_responses = (!responses.groups.is_empty()).then_some(responses);
    batch
}

/// Decodes a batch into per-group messages. A malformed message (or malformed set of
/// coalesced columns) is refused on its own; the rest of the batch still counts.
pub fn decode_batch(batch: proto::PeerBatch) -> Vec<Result<(GroupId, Message), WireError>> {
    let (from, to) = (batch.from_node, batch.to_node);
    let mut decoded: Vec<_> = batch.messages.into_iter().map(decode_message).collect();
    if let Some(h) = batch.heartbeats {
        let n = h.groups.len();
        if from == 0 || to == 0 {
            decoded.push(Err(WireError("coalesced heartbeats without both node ids")));
        } else if h.terms.len() != n || h.commits.len() != n || h.rounds.len() != n {
            decoded.push(Err(WireError("coalesced heartbeat columns of different lengths")));
        } else {
            for i in 0..n {
                let kind = MessageKind::Heartbeat { commit: h.commits[i], round: h.rounds[i], quiesce: false };
                decoded.push(Ok((h.groups[i], Message { from, to, term: h.terms[i], kind })));
            }
        }
    }
    if let Some(r) = batch.heartbeat_responses {
        let n = r.groups.len();
        if from == 0 || to == 0 {
            decoded.push(Err(WireError("coalesced heartbeat responses without both node ids")));
        } else if r.terms.len() != n || r.rounds.len() != n {
            decoded.push(Err(WireError("coalesced heartbeat response columns of different lengths")));
        } else {
            for i in 0..n {
                let kind = MessageKind::HeartbeatResponse { round: r.rounds[i] };
                decoded.push(Ok((r.groups[i], Message { from, to, term: r.terms[i], kind })));
            }
        }
    }
    decoded
}

/// A leader's offer of a snapshot image, to be fetched over Flight before the Raft
/// message (with the image) can be stepped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotOffer {
    pub group: GroupId,
    pub from: NodeId,
    pub to: NodeId,
    pub term: u64,
    pub meta: SnapshotMeta,
    pub size: u64,
    pub crc32: u32,
}

impl SnapshotOffer {
    /// The offer in `m`, if `m` is one (`None` for every other message).
    pub fn of(m: &proto::RaftMessage) -> Option<Result<SnapshotOffer, WireError>> {
        let Some(proto::raft_message::Kind::Snapshot(s)) = &m.kind else { return None };
        let offer = || {
            let meta = decode_snapshot_meta(s.meta.clone().ok_or(WireError("snapshot without metadata"))?)?;
            if m.from == 0 || m.to == 0 || meta.index == 0 {
                return Err(WireError("snapshot offer without nodes or index"));
            }
            Ok(SnapshotOffer {
                group: m.group,
                from: m.from,
                to: m.to,
                term: m.term,
                meta,
                size: s.size,
                crc32: s.crc32,
            })
        };
        Some(offer())
    }

    /// The Raft message the offer stands for, once its image is fetched and checked.
    pub fn into_message(self, image: bytes::Bytes) -> (GroupId, Message) {
        let snapshot = Box::new(Snapshot { meta: self.meta, data: image });
        (
            self.group,
            Message { from: self.from, to: self.to, term: self.term, kind: MessageKind::Snapshot { snapshot } },
        )
    }
}

pub fn encode_entry(e: &Entry) -> proto::Entry {
    use proto::entry::Payload;
    let payload = match &e.payload {
        EntryPayload::Noop => Payload::Noop(proto::Noop {}),
        EntryPayload::Normal(data) => Payload::Normal(data.clone()),
        EntryPayload::ConfChange(cc) => Payload::ConfChange(encode_conf_change(cc)),
    };
    proto::Entry { term: e.term, index: e.index, payload: Some(payload) }
}

pub fn decode_entry(e: proto::Entry) -> Result<Entry, WireError> {
    use proto::entry::Payload;
    let payload = match e.payload.ok_or(WireError("entry without a payload"))? {
        Payload::Noop(_) => EntryPayload::Noop,
        // Copied: a payload must not pin the whole HTTP/2 receive buffer.
        Payload::Normal(data) => EntryPayload::Normal(bytes::Bytes::copy_from_slice(&data)),
        Payload::ConfChange(cc) => EntryPayload::ConfChange(decode_conf_change(cc)?),
    };
    if e.index == 0 {
        return Err(WireError("entry at index 0"));
    }
    Ok(Entry { term: e.term, index: e.index, payload })
}

fn encode_conf_change(cc: &ConfChange) -> proto::ConfChange {
    use proto::conf_change_single::Kind;
    match cc {
        ConfChange::LeaveJoint => proto::ConfChange { leave_joint: true, changes: Vec::new() },
        ConfChange::Change(changes) => proto::ConfChange {
            leave_joint: false,
            changes: changes
                .iter()
                .map(|c| {
                    let (kind, node) = match *c {
                        SingleChange::AddVoter(n) => (Kind::AddVoter, n),
                        SingleChange::AddLearner(n) => (Kind::AddLearner, n),
                        SingleChange::RemoveNode(n) => (Kind::RemoveNode, n),
                    };
                    proto::ConfChangeSingle { kind: kind as i32, node }
                })
                .collect(),
        },
    }
}

fn decode_conf_change(cc: proto::ConfChange) -> Result<ConfChange, WireError> {
    use proto::conf_change_single::Kind;
    if cc.leave_joint {
        return Ok(ConfChange::LeaveJoint);
    }
    let changes = cc
        .changes
        .into_iter()
        .map(|c| match Kind::try_from(c.kind) {
            Ok(Kind::AddVoter) => Ok(SingleChange::AddVoter(c.node)),
            Ok(Kind::AddLearner) => Ok(SingleChange::AddLearner(c.node)),
            Ok(Kind::RemoveNode) => Ok(SingleChange::RemoveNode(c.node)),
            Err(_) => Err(WireError("unknown membership change kind")),
        })
        .collect::<Result<_, _>>()?;
    Ok(ConfChange::Change(changes))
}

fn encode_snapshot_meta(meta: &SnapshotMeta) -> proto::SnapshotMeta {
    let set = |s: &BTreeSet<u64>| s.iter().copied().collect();
    proto::SnapshotMeta {
        index: meta.index,
        term: meta.term,
        conf_state: Some(proto::ConfState {
            voters: set(&meta.conf_state.voters),
            voters_outgoing: set(&meta.conf_state.voters_outgoing),
            learners: set(&meta.conf_state.learners),
        }),
    }
}

fn decode_snapshot_meta(meta: proto::SnapshotMeta) -> Result<SnapshotMeta, WireError> {
    let conf = meta.conf_state.ok_or(WireError("snapshot without a configuration"))?;
    let conf_state = ConfState {
        voters: conf.voters.into_iter().collect(),
        voters_outgoing: conf.voters_outgoing.into_iter().collect(),
        learners: conf.learners.into_iter().collect(),
    };
    Ok(SnapshotMeta { index: meta.index, term: meta.term, conf_state })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use prost::Message as _;

    fn samples() -> Vec<Message> {
        let entries = vec![
            Entry { term: 2, index: 5, payload: EntryPayload::Noop },
            Entry { term: 2, index: 6, payload: EntryPayload::Normal(Bytes::from_static(b"data")) },
            Entry {
                term: 2,
                index: 7,
                payload: EntryPayload::ConfChange(ConfChange::Change(vec![
                    SingleChange::AddVoter(4),
                    SingleChange::AddLearner(5),
                    SingleChange::RemoveNode(1),
                ])),
            },
            Entry { term: 2, index: 8, payload: EntryPayload::ConfChange(ConfChange::LeaveJoint) },
        ];
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                index: 9,
                term: 2,
                conf_state: ConfState {
                    voters: [1, 2].into(),
                    voters_outgoing: [1, 2, 3].into(),
                    learners: [4].into(),
                },
            },
            data: Bytes::from_static(b"image"),
        };
        let kinds = vec![
            MessageKind::PreVote { last_index: 3, last_term: 1, commit: KnownCommit { index: 2, term: 1 } },
            MessageKind::PreVoteResponse { reject: true, commit: KnownCommit { index: 9, term: 2 } },
            MessageKind::Vote { last_index: 3, last_term: 1, transfer: true, commit: KnownCommit::default() },
            MessageKind::VoteResponse { reject: false, commit: KnownCommit::default() },
            MessageKind::Append { prev_index: 4, prev_term: 1, entries, commit: 4 },
            MessageKind::AppendResponse { index: 4, reject: Some(RejectHint { index: 2, term: 1 }) },
            MessageKind::AppendResponse { index: 8, reject: None },
            MessageKind::Heartbeat { commit: 3, round: 17, quiesce: false },
            MessageKind::Heartbeat { commit: 3, round: 18, quiesce: true },
            MessageKind::HeartbeatResponse { round: 17 },
            MessageKind::Snapshot { snapshot: Box::new(snapshot) },
            MessageKind::TimeoutNow,
            MessageKind::CommitQuery { nonce: 99, last_index: 4 },
            MessageKind::CommitAnswer { nonce: 99, commit: 12 },
        ];
        kinds.into_iter().map(|kind| Message { from: 1, to: 2, term: 2, kind }).collect()
    }

    #[test]
    fn every_message_kind_survives_the_wire() {
        for m in samples() {
            if let MessageKind::Snapshot { snapshot } = &m.kind {
                // A snapshot travels as an offer; the image comes separately.
                let encoded = proto::RaftMessage::decode(encode_message(7, &m).encode_to_vec().as_slice()).unwrap();
                assert!(decode_message(encoded.clone()).is_err(), "an offer is not a message");
                let offer = SnapshotOffer::of(&encoded).unwrap().unwrap();
                assert_eq!((offer.size, offer.crc32), (5, crc32fast::hash(b"image")));
                assert_eq!(offer.into_message(snapshot.data.clone()), (7, m.clone()));
                continue;
            }
            let bytes = encode_message(7, &m).encode_to_vec();
            let decoded = proto::RaftMessage::decode(bytes.as_slice()).unwrap();
            assert_eq!(decode_message(decoded), Ok((7, m)));
        }
    }

    #[test]
    fn a_batch_coalesces_heartbeats_and_decodes_to_the_same_messages() {
        let not_offers = samples().into_iter().filter(|m| !matches!(m.kind, MessageKind::Snapshot { .. }));
        let mut messages: Vec<(GroupId, Message)> = not_offers.map(|m| (3, m)).collect();
        for group in 0..100 {
            let kind = if group % 2 == 0 {
                MessageKind::Heartbeat { commit: group * 7, round: group + 1, quiesce: false }
            } else {
                MessageKind::HeartbeatResponse { round: group }
            };
            messages.push((group, Message { from: 1, to: 2, term: group / 10 + 1, kind }));
        }
        let batch = encode_batch(9, 1, 2, &messages, &[]);
        assert_eq!(batch.heartbeats.as_ref().map(|h| h.groups.len()), Some(51), "sample heartbeat included");
        assert_eq!(batch.heartbeat_responses.as_ref().map(|h| h.groups.len()), Some(51));
        assert_eq!(batch.messages.len(), samples().len() - 3);
        let wire = proto::PeerBatch::decode(batch.encode_to_vec().as_slice()).unwrap();
        let mut decoded: Vec<_> = decode_batch(wire).into_iter().map(Result::unwrap).collect();
        let key = |(g, m): &(GroupId, Message)| (*g, format!("{m:?}"));
        decoded.sort_by_key(key);
        messages.sort_by_key(key);
        assert_eq!(decoded, messages);
        let per_heartbeat = batch.heartbeats.unwrap().encoded_len() / 51;
        assert!(per_heartbeat <= 12, "{per_heartbeat} bytes per coalesced heartbeat");
    }

    #[test]
    fn malformed_coalesced_columns_are_refused_and_the_rest_survives() {
        let heartbeat =
            Message { from: 1, to: 2, term: 1, kind: MessageKind::Heartbeat { commit: 0, round: 1, quiesce: false } };
        let append = samples().swap_remove(4);
        let mut batch = encode_batch(9, 1, 2, &[(0, heartbeat), (1, append.clone())], &[]);
        batch.heartbeats.as_mut().unwrap().rounds.clear();
        let decoded = decode_batch(batch.clone());
        assert_eq!(decoded[0], Ok((1, append)));
        assert_eq!(decoded[1], Err(WireError("coalesced heartbeat columns of different lengths")));
        batch.to_node = 0;
        assert!(decode_batch(batch)[1].is_err());
    }

    #[test]
    fn malformed_messages_are_refused_with_a_reason() {
        let no_kind = proto::RaftMessage { group: 1, from: 1, to: 2, term: 1, kind: None };
        assert_eq!(decode_message(no_kind), Err(WireError("message without a kind")));
        let mut zero_from = encode_message(1, &samples()[0]);
        zero_from.from = 0;
        assert!(decode_message(zero_from).is_err());
        let mut bad_entry = encode_message(1, &samples()[4]);
        if let Some(proto::raft_message::Kind::Append(a)) = &mut bad_entry.kind {
            a.entries[0].payload = None;
        }
        assert_eq!(decode_message(bad_entry), Err(WireError("entry without a payload")));
        assert!(proto::RaftMessage::decode(&b"\xff\xff\xff"[..]).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: crate::fuzz_cases(256), ..Default::default() })]

        /// Any bytes a peer sends decode to messages or to errors, never a panic;
        /// a real batch with bytes flipped or cut short too.
        #[test]
        fn any_bytes_decode_without_panicking(
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            flips in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 0..8),
            cut in 0usize..4096,
        ) {
            if let Ok(batch) = proto::PeerBatch::decode(&noise[..]) {
                let _ = decode_batch(batch);
            }
            let messages: Vec<(GroupId, Message)> = samples().into_iter().map(|m| (3, m)).collect();
            let mut bytes = encode_batch(1, 1, 2, &messages, &[]).encode_to_vec();
            for (at, xor) in flips {
                let len = bytes.len();
                bytes[at % len] ^= xor;
            }
            bytes.truncate(cut.max(1));
            if let Ok(batch) = proto::PeerBatch::decode(&bytes[..]) {
                let _ = decode_batch(batch);
            }
        }
    }
}
