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

use super::codec::{decode_batch, DecodedBatch, Record, BATCH_HEADER_BYTES};

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
            Err(e) => return ScanEnd::Corrupt { at: pos, reason: e.to_string() },
        }
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
