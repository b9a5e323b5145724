//! Segment files: a fixed-size, preallocated file with a one-page header, then batches.
//!
//! ```text
//! header page = magic [u8; 8] | version u8 | seq u64 | size_bytes u64 | crc32 u32 | zeros
//! ```
//!
//! Files are named by slot (`000007.qseg`) and reused: a recycled slot gets a new
//! sequence number in its header, and batches carry the sequence number they were
//! written under, so nothing from a file's previous life is ever read as current.

use std::path::{Path, PathBuf};

use bytes::{Buf, BufMut};

use super::codec::{
    decode_batch, DecodedBatch, Record, BATCH_BODY_MAX_BYTES, BATCH_HEADER_BYTES, BATCH_MAGIC, FLUSH_MAGIC,
};

pub const PAGE_BYTES: u64 = 4096;
pub const SEGMENT_MAGIC: [u8; 8] = *b"QRYSEG\0\0";
pub const FORMAT_VERSION: u8 = 1;
const HEADER_FIELDS_BYTES: usize = 8 + 1 + 8 + 8;

pub fn align_up(n: u64) -> u64 {
    n.div_ceil(PAGE_BYTES) * PAGE_BYTES
}

pub fn slot_path(dir: &Path, slot: u32) -> PathBuf {
    dir.join(format!("{slot:06}.qseg"))
}

pub fn parse_slot(path: &Path) -> Option<u32> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".qseg")?.parse().ok()
}

/// The header page for a segment with sequence number `seq`.
pub fn encode_header(seq: u64, size_bytes: u64) -> Vec<u8> {
    let mut page = Vec::with_capacity(PAGE_BYTES as usize);
    page.extend_from_slice(&SEGMENT_MAGIC);
    page.put_u8(FORMAT_VERSION);
    page.put_u64_le(seq);
    page.put_u64_le(size_bytes);
    let crc = crc32fast::hash(&page);
    page.put_u32_le(crc);
    page.resize(PAGE_BYTES as usize, 0);
    page
}

#[derive(Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// An all-zero or released header: the slot holds no live segment.
    Free,
    Corrupt(&'static str),
    UnsupportedVersion(u8),
}

/// Parses a header page: the segment's sequence number and size.
pub fn decode_header(page: &[u8]) -> Result<(u64, u64), HeaderError> {
    if page.len() < HEADER_FIELDS_BYTES + 4 {
        return Err(HeaderError::Corrupt("short header"));
    }
    if page[..8] != SEGMENT_MAGIC {
        return if page[..8].iter().all(|&b| b == 0) {
            Err(HeaderError::Free)
        } else {
            Err(HeaderError::Corrupt("bad magic"))
        };
    }
    let mut fields = &page[8..];
    let version = fields.get_u8();
    let seq = fields.get_u64_le();
    let size = fields.get_u64_le();
    let crc = fields.get_u32_le();
    if crc32fast::hash(&page[..HEADER_FIELDS_BYTES]) != crc {
        return Err(HeaderError::Corrupt("header checksum mismatch"));
    }
    if version != FORMAT_VERSION {
        return Err(HeaderError::UnsupportedVersion(version));
    }
    Ok((seq, size))
}

/// How a scan of a segment's batches ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// A seal record: the segment was closed cleanly.
    Sealed { end: u64 },
    /// Zeros, or a batch from an earlier life of the file: nothing more was written.
    Clean { end: u64 },
    /// A batch that fails verification at `at` (a torn write, or corruption).
    Corrupt { at: u64, reason: String },
}

/// Walks the batches of segment `seq` in `data` (the whole file), calling `on_batch`
/// with each verified batch and its offset.
pub fn scan(data: &[u8], seq: u64, mut on_batch: impl FnMut(u64, &DecodedBatch)) -> ScanEnd {
    let mut pos = PAGE_BYTES;
    loop {
        let at = pos as usize;
        if at + 4 > data.len() {
            return ScanEnd::Clean { end: pos };
        }
        if (&data[at..at + 4]).get_u32_le() == 0 {
            // Padding to the end of a flush's last page, or the end of the log.
            if pos.is_multiple_of(PAGE_BYTES) {
                return ScanEnd::Clean { end: pos };
            }
            pos = align_up(pos);
            continue;
        }
        match decode_batch(&data[at..]) {
            Ok(batch) if batch.segment_seq == seq => {
                on_batch(pos, &batch);
                pos += batch.len as u64;
                if batch.records.iter().any(|r| matches!(r, Record::Seal)) {
                    return ScanEnd::Sealed { end: pos };
                }
            }
            Ok(_) => return ScanEnd::Clean { end: pos },
            Err(_) if resumed_after_cut(data, seq, pos) => pos = align_up(pos),
            Err(e) => return ScanEnd::Corrupt { at: pos, reason: e.to_string() },
        }
    }
}

/// Whether the flush at the next page boundary says that writing resumed there after
/// an earlier recovery cut the log at `cut_at` (mid-page: the cut batch's remains stay
/// before it, since writes are whole pages and rewriting the page could tear the
/// durable batches before the cut).
fn resumed_after_cut(data: &[u8], seq: u64, cut_at: u64) -> bool {
    let next = align_up(cut_at);
    if next == cut_at {
        return false;
    }
    match data.get(next as usize..).map(decode_batch) {
        Some(Ok(batch)) => {
            batch.segment_seq == seq
                && batch.starts_flush
                && matches!(batch.records.first(), Some(Record::Resume { cut_at: at }) if *at == cut_at)
        }
        _ => false,
    }
}

/// Whether a flush of segment `seq` begins somewhere after `from`. Flushes are
/// written one after another, each only once the previous one is durable, so a bad
/// batch followed by a later flush is corruption of acknowledged data, not a torn
/// tail. (Only the first batch of a flush is marked, so the pages of one torn flush
/// can never look like a later flush.)
pub fn later_flush_exists(data: &[u8], seq: u64, from: u64) -> bool {
    let mut pos = align_up(from + 1);
    while (pos as usize) + BATCH_HEADER_BYTES <= data.len() {
        if let Ok(batch) = decode_batch(&data[pos as usize..]) {
            if batch.segment_seq == seq && batch.starts_flush {
                return true;
            }
        }
        pos += PAGE_BYTES;
    }
    false
}

/// Bytes of a batch header covered by its CRC (everything before the CRC field).
const CRC_COVERED_HEADER_BYTES: usize = 20;

/// Whether the bad batch at `at` is a whole batch of segment `seq` with exactly one bit
/// flipped: then it was written whole (a crash tears a write at page boundaries, it
/// does not flip a bit), so the damage struck data that was durable and possibly
/// acknowledged. Returns the flipped bit's offset in the file, in bits.
///
/// CRC32 is linear, so a single flipped bit leaves a syndrome (stored XOR computed
/// CRC) that names its position; a torn write matches a position only by chance (about
/// one in 2^32 / (bits in the batch)), and that chance errs on the safe side: the node
/// abstains from elections until it has caught up. Other damage (several bits, a lost
/// write) cannot be told from a torn write by this format and is cut like one.
pub fn single_bit_damage(data: &[u8], seq: u64, at: u64) -> Option<u64> {
    let buf = data.get(at as usize..)?;
    if buf.len() < BATCH_HEADER_BYTES {
        return None;
    }
    let mut header = [0u8; BATCH_HEADER_BYTES];
    header.copy_from_slice(&buf[..BATCH_HEADER_BYTES]);
    if let Some(body) = plausible_body(&header, buf, seq) {
        let stored = u32::from_le_bytes(header[20..24].try_into().expect("4 bytes"));
        let syndrome = stored ^ batch_crc(&header, body);
        if syndrome.count_ones() == 1 {
            // The flipped bit is in the stored CRC itself.
            let bit = 8 * CRC_COVERED_HEADER_BYTES as u64 + u64::from(syndrome.trailing_zeros());
            return Some(at * 8 + bit);
        }
        if let Some(position) = locate_flipped_bit(CRC_COVERED_HEADER_BYTES + body.len(), syndrome) {
            let byte = (position / 8) as u64;
            // The CRC field sits between the covered header and the body.
            let file_byte = if byte < CRC_COVERED_HEADER_BYTES as u64 { byte } else { byte + 4 };
            return Some(at * 8 + file_byte * 8 + (position % 8) as u64);
        }
    }
    // The flip is in the header's magic, length or sequence number: try each bit.
    for bit in 0..CRC_COVERED_HEADER_BYTES * 8 {
        header[bit / 8] ^= 1 << (bit % 8);
        let matches = plausible_body(&header, buf, seq).is_some_and(|body| {
            batch_crc(&header, body) == u32::from_le_bytes(header[20..24].try_into().expect("4 bytes"))
        });
        header[bit / 8] ^= 1 << (bit % 8);
        if matches {
            return Some(at * 8 + bit as u64);
        }
    }
    None
}

/// The body a batch header announces, if the header is that of a batch of `seq`.
fn plausible_body<'a>(header: &[u8; BATCH_HEADER_BYTES], buf: &'a [u8], seq: u64) -> Option<&'a [u8]> {
    let field = |at: usize, len: usize| &header[at..at + len];
    let magic = u32::from_le_bytes(field(0, 4).try_into().ok()?);
    let body_len = u32::from_le_bytes(field(4, 4).try_into().ok()?) as usize;
    let batch_seq = u64::from_le_bytes(field(8, 8).try_into().ok()?);
    let ok = (magic == BATCH_MAGIC || magic == FLUSH_MAGIC) && batch_seq == seq && body_len <= BATCH_BODY_MAX_BYTES;
    if !ok {
        return None;
    }
    buf.get(BATCH_HEADER_BYTES..BATCH_HEADER_BYTES + body_len)
}

fn batch_crc(header: &[u8; BATCH_HEADER_BYTES], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[..CRC_COVERED_HEADER_BYTES]);
    hasher.update(body);
    hasher.finalize()
}

/// The bit (in CRC order: bytes in order, least significant bit first) whose flip
/// changes the CRC32 of a `len`-byte message by `syndrome`, if one does. A flipped bit
/// `t` bit-steps before the end of the message changes the CRC register by the
/// polynomial shifted through `t` further steps, so walking back from the end finds it.
fn locate_flipped_bit(len: usize, syndrome: u32) -> Option<usize> {
    const POLY: u32 = 0xEDB8_8320; // CRC-32 (IEEE), reflected
    let mut register = POLY;
    for t in 0..len * 8 {
        if register == syndrome {
            return Some((len - 1 - t / 8) * 8 + (7 - t % 8));
        }
        register = if register & 1 == 1 { (register >> 1) ^ POLY } else { register >> 1 };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::codec::encode_batch;
    use crate::raft::HardState;

    fn batch(seq: u64, records: usize) -> Vec<u8> {
        let records: Vec<Record> = (0..records as u64)
            .map(|i| Record::HardState { group: i, hard_state: HardState { term: i, vote: Some(i), commit: i } })
            .collect();
        let mut out = vec![0u8; 4096];
        encode_batch(seq, true, &records, &mut out);
        out.resize(align_up(out.len() as u64) as usize + 4096, 0);
        out
    }

    #[test]
    fn every_single_flipped_bit_of_a_batch_is_found_where_it_is() {
        let clean = batch(3, 5);
        let len = BATCH_HEADER_BYTES + decode_batch(&clean[4096..]).unwrap().len - BATCH_HEADER_BYTES;
        for bit in 0..len * 8 {
            let mut data = clean.clone();
            data[4096 + bit / 8] ^= 1 << (bit % 8);
            assert!(decode_batch(&data[4096..]).is_err(), "bit {bit} went unnoticed");
            let found = single_bit_damage(&data, 3, 4096);
            assert_eq!(found, Some(4096 * 8 + bit as u64), "bit {bit}");
        }
    }

    #[test]
    fn a_torn_batch_is_not_taken_for_a_flipped_bit() {
        // A batch spanning three pages whose middle page never reached the disk.
        let records: Vec<Record> = (0..300u64)
            .map(|i| Record::HardState { group: i, hard_state: HardState { term: i, vote: Some(i), commit: i } })
            .collect();
        let mut data = vec![0u8; 4096];
        encode_batch(1, true, &records, &mut data);
        data.resize(6 * 4096, 0);
        assert!(decode_batch(&data[4096..]).unwrap().len > 2 * 4096);
        data[2 * 4096..3 * 4096].fill(0);
        assert!(decode_batch(&data[4096..]).is_err());
        assert_eq!(single_bit_damage(&data, 1, 4096), None);
        // Nor is a batch of another segment, or zeroes.
        assert_eq!(single_bit_damage(&batch(1, 3), 2, 4096), None);
        assert_eq!(single_bit_damage(&[0u8; 8192], 1, 4096), None);
    }
}
