//! A disk for tests and the simulator that loses what a power cut loses: every write
//! not covered by a completed fdatasync stays volatile, and [`crash`] drops it or tears
//! it (some of its pages reach the disk, some do not). Writes go to ordinary files at
//! once (reads see them, as reads see the page cache) and each volatile write keeps
//! the bytes it replaced; a crash puts those back for what it loses, so afterwards the
//! files hold what a power loss would have left and `ShardLog::open` recovers from
//! them exactly as it would then.
//!
//! With `defer_fdatasync` (the simulator), an fdatasync returns at once but only
//! marks a barrier; [`complete_fdatasyncs`] is the moment they all finish. A crash
//! before that keeps the writes before a random barrier, tears those after it up to
//! the next, and loses the rest: a sequence of write-and-sync steps cut anywhere.
//!
//! [`crash`]: FaultyDisk::crash
//! [`complete_fdatasyncs`]: FaultyDisk::complete_fdatasyncs

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rand::Rng;

use super::io::SegmentFiles;
use super::segment::PAGE_BYTES;
use super::LogError;

/// What a crash did to the volatile writes, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashDamage {
    /// Volatile writes lost whole.
    pub writes_lost: u64,
    /// Volatile writes of which only some pages reached the disk.
    pub writes_torn: u64,
    /// Volatile writes that reached the disk whole.
    pub writes_kept: u64,
}

#[derive(Debug)]
struct VolatileWrite {
    path: PathBuf,
    offset: u64,
    /// What the write replaced, restored if a crash loses it.
    replaced: Vec<u8>,
    /// fdatasyncs issued before it (and not completed).
    barrier: u64,
}

#[derive(Debug, Default)]
pub struct FaultyDisk {
    volatile: Vec<VolatileWrite>,
    /// fdatasyncs issued but not completed (only with `defer_fdatasync`).
    barriers_pending: u64,
    pub defer_fdatasync: bool,
    /// Test-only sabotage: fdatasync returns success without making anything durable.
    pub ignore_fdatasync: bool,
    /// The device is full: files cannot grow.
    pub no_space: bool,
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> LogError {
    LogError::Io { path: path.to_path_buf(), reason: e.to_string() }
}

fn write_through(path: &Path, offset: u64, bytes: &[u8]) -> Result<(), LogError> {
    let file = OpenOptions::new().write(true).open(path).map_err(|e| io_error(path, e))?;
    file.write_all_at(bytes, offset).map_err(|e| io_error(path, e))
}

/// The `len` bytes at `offset` (zeroes past the end of the file).
fn read_range(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>, LogError> {
    let file = OpenOptions::new().read(true).open(path).map_err(|e| io_error(path, e))?;
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], offset + done as u64).map_err(|e| io_error(path, e))? {
            0 => break,
            n => done += n,
        }
    }
    Ok(buf)
}

impl FaultyDisk {
    /// A disk whose fdatasyncs finish only at `complete_fdatasyncs` (the simulator's).
    pub fn deferred() -> FaultyDisk {
        FaultyDisk { defer_fdatasync: true, ..FaultyDisk::default() }
    }

    /// Every fdatasync issued so far finishes: all volatile writes become durable.
    pub fn complete_fdatasyncs(&mut self) {
        if !self.ignore_fdatasync {
            self.volatile.clear();
            self.barriers_pending = 0;
        }
    }

    /// A power cut (see the module docs). Lost writes are undone newest first, so
    /// overlapping writes come back to what the disk held.
    pub fn crash(&mut self, rng: &mut impl Rng) -> Result<CrashDamage, LogError> {
        let cut = rng.random_range(0..=self.barriers_pending);
        let mut damage = CrashDamage::default();
        for w in std::mem::take(&mut self.volatile).into_iter().rev() {
            if w.barrier < cut {
                damage.writes_kept += 1;
            } else if w.barrier > cut || rng.random_bool(0.3) {
                damage.writes_lost += 1;
                write_through(&w.path, w.offset, &w.replaced)?;
            } else {
                damage.writes_torn += 1;
                for (k, page) in w.replaced.chunks(PAGE_BYTES as usize).enumerate() {
                    if rng.random_bool(0.5) {
                        write_through(&w.path, w.offset + k as u64 * PAGE_BYTES, page)?;
                    }
                }
            }
        }
        self.barriers_pending = 0;
        Ok(damage)
    }
}

impl SegmentFiles for FaultyDisk {
    type File = PathBuf;

    async fn open(&mut self, path: &Path, create: bool) -> Result<PathBuf, LogError> {
        // The file's existence is durable at once (the real writer syncs the directory
        // right after creating it, before anything depends on it).
        OpenOptions::new().create(create).write(true).truncate(false).open(path).map_err(|e| io_error(path, e))?;
        Ok(path.to_path_buf())
    }

    async fn pre_allocate(&mut self, path: &PathBuf, bytes: u64) -> Result<(), LogError> {
        let file = OpenOptions::new().write(true).open(path).map_err(|e| io_error(path, e))?;
        let len = file.metadata().map_err(|e| io_error(path, e))?.len();
        if len < bytes {
            if self.no_space {
                let reason = "No space left on device (os error 28)".to_string();
                return Err(LogError::NoSpace { path: path.clone(), reason });
            }
            file.set_len(bytes).map_err(|e| io_error(path, e))?;
        }
        Ok(())
    }

    async fn write_at(&mut self, path: &PathBuf, bytes: &[u8], offset: u64) -> Result<(), LogError> {
        let replaced = read_range(path, offset, bytes.len())?;
        write_through(path, offset, bytes)?;
        let barrier = self.barriers_pending;
        self.volatile.push(VolatileWrite { path: path.clone(), offset, replaced, barrier });
        Ok(())
    }

    async fn fdatasync(&mut self, path: &PathBuf) -> Result<(), LogError> {
        if self.ignore_fdatasync {
            return Ok(());
        }
        if self.defer_fdatasync {
            self.barriers_pending += 1;
            return Ok(());
        }
        self.volatile.retain(|w| &w.path != path);
        Ok(())
    }

    async fn sync_dir(&mut self, _dir: &Path) -> Result<(), LogError> {
        Ok(())
    }

    async fn close(&mut self, _file: PathBuf) -> Result<(), LogError> {
        Ok(())
    }
}
