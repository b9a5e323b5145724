//! The shard log: one segmented log shared by every Raft group of a shard, so one
//! fdatasync makes a whole batch durable for all of them (group commit).
//!
//! The type itself does no asynchronous I/O: writes are staged into a buffer and
//! handed out as [`FlushJob`]s, which the glommio writer (`io.rs`) carries out. While
//! one job is being written and synced the next buffer fills (double buffering).
//! Opening (recovery) and reads use plain files and memory maps.

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::raft::{Entry, Index};

use super::codec::{
    encode_batch, GroupId, Record, BATCH_BODY_MAX_BYTES, BATCH_HEADER_BYTES, BATCH_MAGIC, FLUSH_MAGIC,
    RECORD_HEADER_BYTES,
};
use super::index::{GroupLog, Location, LogIndex};
use super::segment::{
    align_up, decode_header, later_flush_exists, parse_slot, scan, single_bit_damage, slot_path, HeaderError, ScanEnd,
    PAGE_BYTES,
};
use super::store::LogStore;
use super::LogError;

/// Room kept at the end of every segment for its seal batch.
const SEAL_RESERVE_BYTES: u64 = (BATCH_HEADER_BYTES + RECORD_HEADER_BYTES) as u64;

#[derive(Clone, Debug)]
pub struct ShardLogConfig {
    pub dir: PathBuf,
    /// Size of every segment file, preallocated.
    pub segment_bytes: u64,
    /// Released segment files kept for reuse; more are deleted.
    pub free_segments_max: usize,
}

impl ShardLogConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ShardLogConfig { dir: dir.into(), segment_bytes: 64 << 20, free_segments_max: 4 }
    }

    fn validate(&self) -> Result<(), LogError> {
        if !self.segment_bytes.is_multiple_of(PAGE_BYTES) || self.segment_bytes < 16 * PAGE_BYTES {
            return Err(LogError::Invalid("segment_bytes must be a multiple of 4 KiB and at least 64 KiB"));
        }
        Ok(())
    }

    /// The largest batch (header and body) one write may produce: it must fit in an
    /// empty segment with its seal.
    pub fn batch_max_bytes(&self) -> u64 {
        (self.segment_bytes - PAGE_BYTES - SEAL_RESERVE_BYTES).min(BATCH_BODY_MAX_BYTES as u64)
    }
}

/// One write and fdatasync for the glommio writer to carry out.
#[derive(Debug)]
pub struct FlushJob {
    pub seq: u64,
    pub path: PathBuf,
    /// The file must be created (or recycled) and given its header first.
    pub open: bool,
    pub segment_bytes: u64,
    /// Page-aligned offset and page-padded bytes.
    pub offset: u64,
    pub bytes: Vec<u8>,
    /// The bytes end with the segment's seal: close the file afterwards.
    pub seal: bool,
    /// Files whose records were all carried forward (or are no longer needed): mark
    /// them free once `bytes` are durable.
    pub release: Vec<(u64, PathBuf)>,
    /// Every write staged up to this ticket is durable once the job completes.
    pub ticket: u64,
}

struct Sealed {
    slot: u32,
    path: PathBuf,
    map: Mmap,
    /// Chosen for release; freed once the job carrying the release completes.
    releasing: bool,
}

pub struct ShardLog {
    config: ShardLogConfig,
    index: LogIndex,
    sealed: BTreeMap<u64, Sealed>,
    active_seq: u64,
    active_slot: u32,
    /// The active file exists and its header is durable.
    active_opened: bool,
    /// Where `staging` will be written. Invariant: page-aligned.
    write_pos: u64,
    staging: Vec<u8>,
    /// Closed buffers (a segment roll) waiting to be flushed, oldest first.
    jobs: VecDeque<FlushJob>,
    flushing: bool,
    /// Invariant: `durable_ticket <= staged_ticket`.
    staged_ticket: u64,
    durable_ticket: u64,
    free_slots: Vec<u32>,
    next_slot: u32,
    /// Segments to release with the next flush (their carry-forward is staged).
    releasing: Vec<(u64, u32)>,
    /// A failed write or sync: the log can no longer promise durability.
    failed: Option<String>,
    /// The last flush found no room for a new segment; it is retried as it was.
    no_space: Option<String>,
    /// Recovery cut a tail that was damaged after it was written whole (not torn by a
    /// crash): entries this node may have acknowledged are gone.
    damage: Option<String>,
}

impl ShardLog {
    /// Opens the log in `config.dir`, recovering every segment found there.
    pub fn open(config: ShardLogConfig) -> Result<ShardLog, LogError> {
        config.validate()?;
        fs::create_dir_all(&config.dir).map_err(|e| LogError::io(&config.dir, e))?;
        let Listing { live, free: free_slots, next_slot } = list_segments(&config.dir)?;
        let mut log = ShardLog {
            config,
            index: LogIndex::default(),
            sealed: BTreeMap::new(),
            active_seq: 0,
            active_slot: 0,
            active_opened: false,
            write_pos: PAGE_BYTES,
            staging: Vec::new(),
            jobs: VecDeque::new(),
            flushing: false,
            staged_ticket: 0,
            durable_ticket: 0,
            free_slots,
            next_slot,
            releasing: Vec::new(),
            failed: None,
            no_space: None,
            damage: None,
        };
        log.recover(live)?;
        Ok(log)
    }

    /// Replays every live segment, oldest first.
    fn recover(&mut self, live: Vec<(u64, u32)>) -> Result<(), LogError> {
        let newest = live.last().map(|&(seq, _)| seq);
        let mut active: Option<(u64, u32, u64)> = None;
        let mut cut_mid_page = false;
        for (seq, slot) in live {
            let path = slot_path(&self.config.dir, slot);
            let map = map_file(&path)?;
            let is_newest = Some(seq) == newest;
            let mut failure = None;
            let end = scan(&map, seq, |offset, batch| {
                let mut at = offset + BATCH_HEADER_BYTES as u64;
                for record in &batch.records {
                    let location = Location { segment: seq, offset: at };
                    if let Err(e) = self.index.apply(record, location, is_newest) {
                        failure.get_or_insert(e);
                    }
                    at += record.encoded_len() as u64;
                }
            });
            if let Some(e) = failure {
                return Err(LogError::Corrupt { path, offset: 0, reason: e.to_string() });
            }
            match end {
                ScanEnd::Sealed { .. } => {
                    self.sealed.insert(seq, Sealed { slot, path, map, releasing: false });
                }
                ScanEnd::Corrupt { at, reason } if !is_newest || later_flush_exists(&map, seq, at) => {
                    return Err(LogError::Corrupt { path, offset: at, reason });
                }
                ScanEnd::Clean { end } if !is_newest => {
                    let reason = "sealed segment ends without a seal".to_string();
                    return Err(LogError::Corrupt { path, offset: end, reason });
                }
                // Zeroes or stale bytes where a batch should be, with a later flush
                // behind them: a write that was acknowledged and then lost.
                ScanEnd::Clean { end } if later_flush_exists(&map, seq, end) => {
                    let reason = "a later flush follows the end of the log (a lost write)".to_string();
                    return Err(LogError::Corrupt { path, offset: end, reason });
                }
                // The newest segment's torn or clean tail: writing resumes there.
                ScanEnd::Corrupt { at: end, reason } => {
                    if let Some(bit) = single_bit_damage(&map, seq, end) {
                        self.damage = Some(format!(
                            "{}: the batch at offset {end} has bit {} of byte {} flipped ({reason}): it was written \
                             whole, so what it held was durable and may have been acknowledged; it is cut",
                            path.display(),
                            bit % 8,
                            bit / 8
                        ));
                    }
                    cut_mid_page = !end.is_multiple_of(PAGE_BYTES);
                    active = Some((seq, slot, end));
                }
                ScanEnd::Clean { end } => active = Some((seq, slot, end)),
            }
        }
        self.index.validate()?;
        match active {
            Some((seq, slot, end)) => {
                self.active_seq = seq;
                self.active_slot = slot;
                self.active_opened = true;
                self.write_pos = align_up(end);
                if cut_mid_page {
                    // The cut batch's remains stay before the next page: the first
                    // flush tells later recoveries to step over them.
                    encode_batch(seq, true, &[Record::Resume { cut_at: end }], &mut self.staging);
                }
            }
            None => {
                self.active_seq = newest.unwrap_or(0) + 1;
                self.active_slot = self.take_slot();
            }
        }
        Ok(())
    }

    fn take_slot(&mut self) -> u32 {
        self.free_slots.pop().unwrap_or_else(|| {
            self.next_slot += 1;
            self.next_slot - 1
        })
    }

    /// Why the last flush is waiting for disk space, if it is.
    pub fn no_space(&self) -> Option<&str> {
        self.no_space.as_deref()
    }

    /// Damage recovery found and cut in the last flush (see [`single_bit_damage`]):
    /// the node may have lost entries it acknowledged.
    pub fn recovered_damage(&self) -> Option<&str> {
        self.damage.as_deref()
    }

    pub fn config(&self) -> &ShardLogConfig {
        &self.config
    }

    /// Ticket of the last write staged; it is durable once `durable_ticket()` reaches it.
    pub fn staged_ticket(&self) -> u64 {
        self.staged_ticket
    }

    pub fn durable_ticket(&self) -> u64 {
        self.durable_ticket
    }

    /// The active segment's file and the offset its next write goes to.
    pub fn active_position(&self) -> (PathBuf, u64) {
        (slot_path(&self.config.dir, self.active_slot), self.write_pos)
    }

    fn check_healthy(&self) -> Result<(), LogError> {
        match &self.failed {
            Some(reason) => Err(LogError::Failed(reason.clone())),
            None => Ok(()),
        }
    }

    /// Closes the active segment with a seal and starts the next one.
    fn roll(&mut self) {
        let starts_flush = self.staging.is_empty();
        encode_batch(self.active_seq, starts_flush, &[Record::Seal], &mut self.staging);
        let job = self.cut_job(true);
        self.jobs.push_back(job);
        self.active_seq += 1;
        self.active_slot = self.take_slot();
        self.active_opened = false;
        self.write_pos = PAGE_BYTES;
    }

    /// Turns the staging buffer into a job for the active segment.
    fn cut_job(&mut self, seal: bool) -> FlushJob {
        let mut bytes = std::mem::take(&mut self.staging);
        bytes.resize(align_up(bytes.len() as u64) as usize, 0);
        let release = self.releasing.drain(..).map(|(seq, slot)| (seq, slot_path(&self.config.dir, slot))).collect();
        let job = FlushJob {
            seq: self.active_seq,
            path: slot_path(&self.config.dir, self.active_slot),
            open: !self.active_opened,
            segment_bytes: self.config.segment_bytes,
            offset: self.write_pos,
            seal,
            release,
            ticket: self.staged_ticket,
            bytes,
        };
        self.write_pos += job.bytes.len() as u64;
        self.active_opened = true;
        job
    }

    /// Ends the current flush: what is staged so far is written and synced on its own,
    /// and later writes go to the next flush. (A vote is written in two flushes, so
    /// that damage to the last flush cannot take it: see `Shard::stage`.)
    pub fn end_flush(&mut self) {
        if !self.staging.is_empty() {
            let job = self.cut_job(false);
            self.jobs.push_back(job);
        }
    }

    /// The next write to carry out, if any; at most one is outstanding at a time.
    pub fn begin_flush(&mut self) -> Result<Option<FlushJob>, LogError> {
        self.check_healthy()?;
        if self.flushing {
            return Ok(None);
        }
        let job = match self.jobs.pop_front() {
            Some(job) => job,
            None if self.staging.is_empty() && self.releasing.is_empty() => return Ok(None),
            None => self.cut_job(false),
        };
        self.flushing = true;
        Ok(Some(job))
    }

    /// Records the outcome of a job from `begin_flush`.
    pub fn finish_flush(&mut self, job: FlushJob, result: Result<(), LogError>) -> Result<(), LogError> {
        assert!(self.flushing, "finish_flush without begin_flush");
        self.flushing = false;
        if let (Err(e @ LogError::NoSpace { .. }), true) = (&result, job.open) {
            // Nothing was written (the new file could not be sized): the same job is
            // carried out again once there is room.
            self.no_space = Some(e.to_string());
            self.jobs.push_front(job);
            return Ok(());
        }
        if let Err(e) = result {
            // After a failed fdatasync the page cache state is unknown (fsyncgate):
            // nothing staged can be promised durable any more.
            self.failed = Some(e.to_string());
            return Err(e);
        }
        assert!(job.ticket >= self.durable_ticket, "durable ticket went back");
        self.no_space = None;
        self.durable_ticket = job.ticket;
        if job.seal {
            self.seal_done(job.seq, &job.path)?;
        }
        for (seq, path) in job.release {
            let Some(sealed) = self.sealed.remove(&seq) else {
                continue;
            };
            drop(sealed.map);
            if self.free_slots.len() < self.config.free_segments_max {
                self.free_slots.push(sealed.slot);
            } else {
                fs::remove_file(&path).map_err(|e| LogError::io(&path, e))?;
            }
        }
        Ok(())
    }

    /// A sealed segment is mapped for reads and its entries leave memory.
    fn seal_done(&mut self, seq: u64, path: &Path) -> Result<(), LogError> {
        let map = map_file(path)?;
        let slot = parse_slot(path).expect("segment paths are slot paths");
        self.sealed.insert(seq, Sealed { slot, path: path.to_path_buf(), map, releasing: false });
        for group in self.index.groups.values_mut() {
            for entry in group.entries.iter_mut().filter(|e| e.location.segment == seq) {
                entry.cached = None;
            }
        }
        Ok(())
    }

    /// Sealed segments still held (not being released).
    pub fn sealed_segments(&self) -> usize {
        self.sealed.values().filter(|s| !s.releasing).count()
    }

    /// Groups whose oldest entry lives in the oldest held sealed segment: the ones
    /// whose compaction would let it go.
    pub fn groups_pinning_oldest_segment(&self) -> Vec<GroupId> {
        let Some((&oldest, _)) = self.sealed.iter().find(|(_, s)| !s.releasing) else {
            return Vec::new();
        };
        let pins = |g: &&GroupLog| g.entries.front().is_some_and(|e| e.location.segment <= oldest);
        self.index.groups.iter().filter(|(_, g)| pins(g)).map(|(&group, _)| group).collect()
    }

    /// Releases the oldest sealed segments that no group needs entries from. Hard
    /// states and snapshot markers still current in them are written again first
    /// (otherwise a restart would forget a vote), and the files are freed only once
    /// those copies are durable.
    pub fn release_unneeded_segments(&mut self) -> Result<usize, LogError> {
        let candidates: Vec<(u64, u32)> =
            self.sealed.iter().filter(|(_, s)| !s.releasing).map(|(&seq, s)| (seq, s.slot)).collect();
        let oldest_needed = self
            .index
            .groups
            .values()
            .filter_map(|g| g.entries.front().map(|e| e.location.segment))
            .min()
            .unwrap_or(u64::MAX);
        let releasable: Vec<(u64, u32)> = candidates.into_iter().take_while(|&(seq, _)| seq < oldest_needed).collect();
        let mut carry = Vec::new();
        for (&group, g) in &self.index.groups {
            let held = |at: Option<Location>| at.is_some_and(|at| releasable.iter().any(|&(seq, _)| seq == at.segment));
            if held(g.hard_state_at) {
                carry.push(Record::HardState { group, hard_state: g.hard_state });
            }
            if held(g.snapshot_at) {
                let snap = g.snapshot.clone();
                carry.push(Record::Snapshot { group, index: snap.index, term: snap.term, conf_state: snap.conf_state });
            }
        }
        if !carry.is_empty() {
            // Twice, in two flushes, like a new vote: damage to the last flush (cut
            // like a torn write) leaves the first copy, and damage to the first is
            // followed by a later flush, which recovery refuses to cut. A single copy
            // in the last flush vanished with the file it came from (the simulator's
            // seed 18663: a node forgot its vote).
            self.write(carry.clone())?;
            self.end_flush();
            self.write(carry)?;
        }
        for &(seq, slot) in &releasable {
            self.releasing.push((seq, slot));
            self.sealed.get_mut(&seq).expect("candidate is sealed").releasing = true;
        }
        Ok(releasable.len())
    }
}

impl LogStore for ShardLog {
    fn write(&mut self, records: Vec<Record>) -> Result<(), LogError> {
        self.check_healthy()?;
        let body: u64 = records.iter().map(|r| r.encoded_len() as u64).sum();
        let batch_bytes = BATCH_HEADER_BYTES as u64 + body;
        if batch_bytes > self.config.batch_max_bytes() {
            return Err(LogError::TooLarge { bytes: batch_bytes, max: self.config.batch_max_bytes() });
        }
        let end = self.write_pos + self.staging.len() as u64 + batch_bytes + SEAL_RESERVE_BYTES;
        if end > self.config.segment_bytes {
            self.roll();
        }
        let batch_start = self.write_pos + self.staging.len() as u64;
        let starts_flush = self.staging.is_empty();
        encode_batch(self.active_seq, starts_flush, &records, &mut self.staging);
        let mut at = batch_start + BATCH_HEADER_BYTES as u64;
        for record in &records {
            self.index.apply(record, Location { segment: self.active_seq, offset: at }, true)?;
            at += record.encoded_len() as u64;
        }
        self.staged_ticket += 1;
        Ok(())
    }

    fn index(&self) -> &LogIndex {
        &self.index
    }

    fn read_entry(&self, group: GroupId, index: Index, location: Location) -> Result<Entry, LogError> {
        let sealed = self.sealed.get(&location.segment).ok_or(LogError::Missing { group, index })?;
        let mut at = sealed.map.get(location.offset as usize..).ok_or(LogError::Missing { group, index })?;
        match Record::decode(&mut at) {
            Ok(Record::Entry { entry, .. }) if entry.index == index => Ok(entry),
            _ => Err(LogError::Corrupt {
                path: sealed.path.clone(),
                offset: location.offset,
                reason: format!("expected entry {index} of group {group}"),
            }),
        }
    }
}

/// Segment files found in a log directory.
struct Listing {
    /// (seq, slot), sorted by seq.
    live: Vec<(u64, u32)>,
    free: Vec<u32>,
    next_slot: u32,
}

fn list_segments(dir: &Path) -> Result<Listing, LogError> {
    let mut live = Vec::new();
    let mut free = Vec::new();
    let mut next_slot = 0;
    for entry in fs::read_dir(dir).map_err(|e| LogError::io(dir, e))? {
        let path = entry.map_err(|e| LogError::io(dir, e))?.path();
        let Some(slot) = parse_slot(&path) else {
            continue;
        };
        next_slot = next_slot.max(slot + 1);
        let mut pages = vec![0u8; 2 * PAGE_BYTES as usize];
        let read = read_prefix(&path, &mut pages)?;
        match decode_header(&pages[..read.min(PAGE_BYTES as usize)]) {
            Ok((seq, _)) => live.push((seq, slot)),
            Err(HeaderError::Corrupt(reason))
                if starts_with_batch(&pages[PAGE_BYTES as usize..read.max(PAGE_BYTES as usize)]) =>
            {
                // Headers are durable before the first batch: this is damage, not a crash.
                return Err(LogError::Corrupt { path, offset: 0, reason: reason.to_string() });
            }
            // A free slot, or a segment whose creation crashed before its header was
            // durable (no record in it was ever acknowledged).
            Err(HeaderError::Free) | Err(HeaderError::Corrupt(_)) => free.push(slot),
            Err(HeaderError::UnsupportedVersion(v)) => {
                return Err(LogError::Corrupt { path, offset: 0, reason: format!("unsupported format version {v}") })
            }
        }
    }
    live.sort_unstable();
    for pair in live.windows(2) {
        if pair[1].0 != pair[0].0 + 1 {
            let path = slot_path(dir, pair[1].1);
            let reason = format!("segment {} missing before segment {}", pair[0].0 + 1, pair[1].0);
            return Err(LogError::Corrupt { path, offset: 0, reason });
        }
    }
    free.sort_unstable_by(|a, b| b.cmp(a));
    Ok(Listing { live, free, next_slot })
}

fn starts_with_batch(page: &[u8]) -> bool {
    page.len() >= 4 && matches!(u32::from_le_bytes([page[0], page[1], page[2], page[3]]), BATCH_MAGIC | FLUSH_MAGIC)
}

fn read_prefix(path: &Path, buf: &mut [u8]) -> Result<usize, LogError> {
    use std::io::Read;
    let mut file = fs::File::open(path).map_err(|e| LogError::io(path, e))?;
    let mut read = 0;
    while read < buf.len() {
        match file.read(&mut buf[read..]).map_err(|e| LogError::io(path, e))? {
            0 => break,
            n => read += n,
        }
    }
    Ok(read)
}

fn map_file(path: &Path) -> Result<Mmap, LogError> {
    let file = fs::File::open(path).map_err(|e| LogError::io(path, e))?;
    // SAFETY: segment files are preallocated to full size and never truncated or
    // written through this mapping while mapped; sealed segments are never written
    // again until released (and the map dropped). See docs/architecture.md on SIGBUS.
    unsafe { Mmap::map(&file) }.map_err(|e| LogError::io(path, e))
}
