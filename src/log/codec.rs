//! On-disk framing of the shard log: batches of records.
//!
//! ```text
//! batch  = magic u32 | body_len u32 | segment_seq u64 | record_count u32 | crc32 u32 | body
//!          (magic "QFLU" marks the first batch of a flush, "QBAT" the others)
//! record = kind u8 | group u64 | term u64 | index u64 | payload_len u32 | payload
//! ```
//!
//! All integers are little-endian. The CRC32 covers the first 20 header bytes and the
//! whole body, so a batch is verified — and made durable — whole: a record is never
//! written or trusted outside its batch. `segment_seq` ties a batch to the life of the
//! segment file it was written in, so bytes left over from a recycled file's previous
//! life can never be mistaken for new records.

use bytes::{Buf, BufMut, Bytes};

use crate::raft::{ConfChange, ConfState, Entry, EntryPayload, HardState, Index, NodeId, SingleChange, Term};

pub use crate::group::GroupId;

pub const BATCH_MAGIC: u32 = 0x5441_4251; // "QBAT"
pub const FLUSH_MAGIC: u32 = 0x554c_4651; // "QFLU"
pub const BATCH_HEADER_BYTES: usize = 24;
pub const RECORD_HEADER_BYTES: usize = 29;
/// Largest batch body; a batch must fit in a segment with room to spare.
pub const BATCH_BODY_MAX_BYTES: usize = 16 << 20;

/// What a record says about its group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A log entry; an entry at an index the group already has replaces it and
    /// everything after it.
    Entry {
        group: GroupId,
        entry: Entry,
    },
    HardState {
        group: GroupId,
        hard_state: HardState,
    },
    /// Entries from `from` onward are discarded (a follower's conflict).
    Truncate {
        group: GroupId,
        from: Index,
    },
    /// The group's state machine snapshot covers everything up to `index`: entries up
    /// to it are released, and a group with no entries restarts from here.
    Snapshot {
        group: GroupId,
        index: Index,
        term: Term,
        conf_state: ConfState,
    },
    /// The last record of a sealed segment.
    Seal,
    /// Writing resumed here after recovery cut the log at `cut_at` (a torn or damaged
    /// tail, mid-page): the bytes from `cut_at` to this batch are not part of the log.
    Resume {
        cut_at: u64,
    },
}

const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_TRUNCATE: u8 = 3;
const KIND_SNAPSHOT: u8 = 4;
const KIND_SEAL: u8 = 5;
const KIND_RESUME: u8 = 6;

const PAYLOAD_NOOP: u8 = 0;
const PAYLOAD_NORMAL: u8 = 1;
const PAYLOAD_CONF_CHANGE: u8 = 2;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("truncated: needs {needed} bytes, {available} left")]
    Truncated { needed: usize, available: usize },
    #[error("bad batch magic {0:#x}")]
    BadMagic(u32),
    #[error("batch checksum mismatch")]
    BadChecksum,
    #[error("batch body of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("unknown {what} tag {tag}")]
    UnknownTag { what: &'static str, tag: u8 },
    #[error("record count {declared} but body holds {found}")]
    CountMismatch { declared: u32, found: u32 },
}

impl Record {
    pub fn group(&self) -> Option<GroupId> {
        match self {
            Record::Entry { group, .. }
            | Record::HardState { group, .. }
            | Record::Truncate { group, .. }
            | Record::Snapshot { group, .. } => Some(*group),
            Record::Seal | Record::Resume { .. } => None,
        }
    }

    /// Bytes this record takes in a batch body.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_BYTES + self.payload_len()
    }

    fn payload_len(&self) -> usize {
        match self {
            Record::Entry { entry, .. } => {
                1 + match &entry.payload {
                    EntryPayload::Noop => 0,
                    EntryPayload::Normal(data) => data.len(),
                    EntryPayload::ConfChange(ConfChange::LeaveJoint) => 1,
                    EntryPayload::ConfChange(ConfChange::Change(changes)) => 5 + 9 * changes.len(),
                }
            }
            Record::HardState { .. } => 16,
            Record::Truncate { .. } | Record::Seal | Record::Resume { .. } => 0,
            Record::Snapshot { conf_state, .. } => {
                12 + 8 * (conf_state.voters.len() + conf_state.voters_outgoing.len() + conf_state.learners.len())
            }
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let (kind, group, term, index) = match self {
            Record::Entry { group, entry } => (KIND_ENTRY, *group, entry.term, entry.index),
            Record::HardState { group, hard_state } => (KIND_HARD_STATE, *group, hard_state.term, hard_state.commit),
            Record::Truncate { group, from } => (KIND_TRUNCATE, *group, 0, *from),
            Record::Snapshot { group, index, term, .. } => (KIND_SNAPSHOT, *group, *term, *index),
            Record::Seal => (KIND_SEAL, 0, 0, 0),
            Record::Resume { cut_at } => (KIND_RESUME, 0, 0, *cut_at),
        };
        out.put_u8(kind);
        out.put_u64_le(group);
        out.put_u64_le(term);
        out.put_u64_le(index);
        out.put_u32_le(self.payload_len() as u32);
        match self {
            Record::Entry { entry, .. } => encode_payload(&entry.payload, out),
            Record::HardState { hard_state, .. } => {
                out.put_u64_le(hard_state.vote.unwrap_or(0));
                out.put_u64_le(hard_state.commit);
            }
            Record::Snapshot { conf_state, .. } => {
                for set in [&conf_state.voters, &conf_state.voters_outgoing, &conf_state.learners] {
                    out.put_u32_le(set.len() as u32);
                    set.iter().for_each(|&id| out.put_u64_le(id));
                }
            }
            Record::Truncate { .. } | Record::Seal | Record::Resume { .. } => {}
        }
    }

    /// Decodes one record from the front of `buf`, advancing it.
    pub fn decode(buf: &mut &[u8]) -> Result<Record, CodecError> {
        need(buf, RECORD_HEADER_BYTES)?;
        let kind = buf.get_u8();
        let (group, term, index) = (buf.get_u64_le(), buf.get_u64_le(), buf.get_u64_le());
        let len = buf.get_u32_le() as usize;
        need(buf, len)?;
        let mut payload = &buf[..len];
        buf.advance(len);
        let record = match kind {
            KIND_ENTRY => {
                let payload = decode_payload(&mut payload)?;
                Record::Entry { group, entry: Entry { term, index, payload } }
            }
            KIND_HARD_STATE => {
                need(payload, 16)?;
                let vote = payload.get_u64_le();
                let commit = payload.get_u64_le();
                let vote = (vote != 0).then_some(vote);
                Record::HardState { group, hard_state: HardState { term, vote, commit } }
            }
            KIND_TRUNCATE => Record::Truncate { group, from: index },
            KIND_SNAPSHOT => {
                let mut sets = Vec::with_capacity(3);
                for _ in 0..3 {
                    need(payload, 4)?;
                    let n = payload.get_u32_le() as usize;
                    need(payload, n.saturating_mul(8))?;
                    sets.push((0..n).map(|_| payload.get_u64_le()).collect());
                }
                let learners = sets.pop().expect("three sets");
                let voters_outgoing = sets.pop().expect("three sets");
                let voters = sets.pop().expect("three sets");
                Record::Snapshot { group, index, term, conf_state: ConfState { voters, voters_outgoing, learners } }
            }
            KIND_SEAL => Record::Seal,
            KIND_RESUME => Record::Resume { cut_at: index },
            tag => return Err(CodecError::UnknownTag { what: "record", tag }),
        };
        Ok(record)
    }
}

fn need(buf: &[u8], needed: usize) -> Result<(), CodecError> {
    if buf.len() < needed {
        return Err(CodecError::Truncated { needed, available: buf.len() });
    }
    Ok(())
}

fn encode_payload(payload: &EntryPayload, out: &mut Vec<u8>) {
    match payload {
        EntryPayload::Noop => out.put_u8(PAYLOAD_NOOP),
        EntryPayload::Normal(data) => {
            out.put_u8(PAYLOAD_NORMAL);
            out.extend_from_slice(data);
        }
        EntryPayload::ConfChange(ConfChange::LeaveJoint) => {
            out.put_u8(PAYLOAD_CONF_CHANGE);
            out.put_u8(0);
        }
        EntryPayload::ConfChange(ConfChange::Change(changes)) => {
            out.put_u8(PAYLOAD_CONF_CHANGE);
            out.put_u8(1);
            out.put_u32_le(changes.len() as u32);
            for change in changes {
                let (tag, id) = match *change {
                    SingleChange::AddVoter(id) => (1, id),
                    SingleChange::AddLearner(id) => (2, id),
                    SingleChange::RemoveNode(id) => (3, id),
                };
                out.put_u8(tag);
                out.put_u64_le(id);
            }
        }
    }
}

fn decode_payload(buf: &mut &[u8]) -> Result<EntryPayload, CodecError> {
    need(buf, 1)?;
    match buf.get_u8() {
        PAYLOAD_NOOP => Ok(EntryPayload::Noop),
        // Copied out: a payload must not pin the whole mapped segment or read buffer.
        PAYLOAD_NORMAL => Ok(EntryPayload::Normal(Bytes::copy_from_slice(buf))),
        PAYLOAD_CONF_CHANGE => {
            need(buf, 1)?;
            if buf.get_u8() == 0 {
                return Ok(EntryPayload::ConfChange(ConfChange::LeaveJoint));
            }
            need(buf, 4)?;
            let n = buf.get_u32_le() as usize;
            need(buf, n.saturating_mul(9))?;
            let mut changes = Vec::with_capacity(n);
            for _ in 0..n {
                let tag = buf.get_u8();
                let id: NodeId = buf.get_u64_le();
                changes.push(match tag {
                    1 => SingleChange::AddVoter(id),
                    2 => SingleChange::AddLearner(id),
                    3 => SingleChange::RemoveNode(id),
                    tag => return Err(CodecError::UnknownTag { what: "membership change", tag }),
                });
            }
            Ok(EntryPayload::ConfChange(ConfChange::Change(changes)))
        }
        tag => Err(CodecError::UnknownTag { what: "payload", tag }),
    }
}

/// Appends one batch holding `records` to `out`; `starts_flush` marks the first batch
/// of a write.
pub fn encode_batch(segment_seq: u64, starts_flush: bool, records: &[Record], out: &mut Vec<u8>) {
    let start = out.len();
    out.put_u32_le(if starts_flush { FLUSH_MAGIC } else { BATCH_MAGIC });
    out.put_u32_le(0); // body length, patched below
    out.put_u64_le(segment_seq);
    out.put_u32_le(records.len() as u32);
    out.put_u32_le(0); // crc, patched below
    let body_start = out.len();
    records.iter().for_each(|r| r.encode(out));
    let body_len = out.len() - body_start;
    assert!(body_len <= BATCH_BODY_MAX_BYTES, "batch body of {body_len} bytes exceeds the limit");
    out[start + 4..start + 8].copy_from_slice(&(body_len as u32).to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&out[start..start + 20]);
    hasher.update(&out[body_start..]);
    let crc = hasher.finalize();
    out[start + 20..start + 24].copy_from_slice(&crc.to_le_bytes());
}

/// A verified batch read from a segment.
pub struct DecodedBatch {
    pub segment_seq: u64,
    pub starts_flush: bool,
    /// Bytes the batch takes (header and body).
    pub len: usize,
    pub records: Vec<Record>,
}

/// Decodes and verifies the batch at the front of `buf`.
pub fn decode_batch(buf: &[u8]) -> Result<DecodedBatch, CodecError> {
    need(buf, BATCH_HEADER_BYTES)?;
    let mut header = &buf[..BATCH_HEADER_BYTES];
    let magic = header.get_u32_le();
    if magic != BATCH_MAGIC && magic != FLUSH_MAGIC {
        return Err(CodecError::BadMagic(magic));
    }
    let body_len = header.get_u32_le() as usize;
    let segment_seq = header.get_u64_le();
    let count = header.get_u32_le();
    let crc = header.get_u32_le();
    if body_len > BATCH_BODY_MAX_BYTES {
        return Err(CodecError::TooLarge(body_len));
    }
    need(&buf[BATCH_HEADER_BYTES..], body_len)?;
    let body = &buf[BATCH_HEADER_BYTES..BATCH_HEADER_BYTES + body_len];
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&buf[..20]);
    hasher.update(body);
    if hasher.finalize() != crc {
        return Err(CodecError::BadChecksum);
    }
    let mut rest = body;
    let mut records = Vec::with_capacity(count as usize);
    while !rest.is_empty() {
        records.push(Record::decode(&mut rest)?);
    }
    if records.len() != count as usize {
        return Err(CodecError::CountMismatch { declared: count, found: records.len() as u32 });
    }
    Ok(DecodedBatch { segment_seq, starts_flush: magic == FLUSH_MAGIC, len: BATCH_HEADER_BYTES + body_len, records })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::{btree_set, vec};
    use proptest::prelude::*;

    fn arb_payload() -> impl Strategy<Value = EntryPayload> {
        prop_oneof![
            Just(EntryPayload::Noop),
            vec(any::<u8>(), 0..300).prop_map(|d| EntryPayload::Normal(Bytes::from(d))),
            Just(EntryPayload::ConfChange(ConfChange::LeaveJoint)),
            vec((0u8..3, 1u64..10), 1..4).prop_map(|cs| {
                let changes = cs
                    .into_iter()
                    .map(|(k, id)| match k {
                        0 => SingleChange::AddVoter(id),
                        1 => SingleChange::AddLearner(id),
                        _ => SingleChange::RemoveNode(id),
                    })
                    .collect();
                EntryPayload::ConfChange(ConfChange::Change(changes))
            }),
        ]
    }

    pub(crate) fn arb_record() -> impl Strategy<Value = Record> {
        let ids = || btree_set(1u64..20, 0..4);
        prop_oneof![
            (any::<u64>(), any::<u64>(), 1u64..u64::MAX, arb_payload()).prop_map(|(group, term, index, payload)| {
                Record::Entry { group, entry: Entry { term, index, payload } }
            }),
            (any::<u64>(), any::<u64>(), proptest::option::of(1u64..u64::MAX), any::<u64>()).prop_map(
                |(group, term, vote, commit)| Record::HardState { group, hard_state: HardState { term, vote, commit } }
            ),
            (any::<u64>(), any::<u64>()).prop_map(|(group, from)| Record::Truncate { group, from }),
            (any::<u64>(), any::<u64>(), any::<u64>(), ids(), ids(), ids()).prop_map(
                |(group, index, term, voters, voters_outgoing, learners)| {
                    Record::Snapshot { group, index, term, conf_state: ConfState { voters, voters_outgoing, learners } }
                }
            ),
            Just(Record::Seal),
            any::<u64>().prop_map(|cut_at| Record::Resume { cut_at }),
        ]
    }

    proptest! {
        #[test]
        fn batches_round_trip(seq: u64, records in vec(arb_record(), 0..20)) {
            let mut buf = Vec::new();
            encode_batch(seq, true, &records, &mut buf);
            let expected_len: usize = BATCH_HEADER_BYTES + records.iter().map(Record::encoded_len).sum::<usize>();
            prop_assert_eq!(buf.len(), expected_len);
            let batch = decode_batch(&buf).unwrap();
            prop_assert_eq!(batch.segment_seq, seq);
            prop_assert_eq!(batch.len, buf.len());
            prop_assert_eq!(batch.records, records);
        }

        #[test]
        fn any_flipped_byte_is_detected(records in vec(arb_record(), 1..5), at: prop::sample::Index, bit in 0u8..8) {
            let mut buf = Vec::new();
            encode_batch(7, false, &records, &mut buf);
            let i = at.index(buf.len());
            buf[i] ^= 1 << bit;
            prop_assert!(decode_batch(&buf).is_err());
        }

        #[test]
        fn any_truncation_is_detected(records in vec(arb_record(), 1..5), at: prop::sample::Index) {
            let mut buf = Vec::new();
            encode_batch(7, false, &records, &mut buf);
            let cut = at.index(buf.len());
            prop_assert!(decode_batch(&buf[..cut]).is_err());
        }
    }
}
