//! The only place the log touches glommio: creating segment files, direct-I/O writes
//! and fdatasync through io_uring. Kept thin so the log could move to another runtime.
//!
//! Reads never go through glommio: `DmaFile` reads of a freshly created file can fail
//! with EOPNOTSUPP on some virtual disks (glommio #605/#670), so recovery reads plain
//! files and sealed segments are read through memory maps.

use std::cell::RefCell;
use std::path::Path;

use glommio::io::{Directory, DmaFile, OpenOptions};

use super::segment::{encode_header, PAGE_BYTES};
use super::shard_log::{FlushJob, ShardLog};
use super::LogError;

/// Carries out flush jobs; owns the open handle of the active segment.
#[derive(Default)]
pub struct SegmentWriter {
    active: Option<(u64, DmaFile)>,
}

fn open_options(create: bool) -> OpenOptions {
    let mut options = OpenOptions::new();
    options.create(create).read(true).write(true);
    options
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> LogError {
    LogError::Io { path: path.to_path_buf(), reason: e.to_string() }
}

impl SegmentWriter {
    pub async fn execute(&mut self, job: &FlushJob) -> Result<(), LogError> {
        if job.open {
            self.create(job).await?;
        } else if self.active.as_ref().map(|(seq, _)| *seq) != Some(job.seq) {
            // A log reopened after a restart continues its newest segment in place.
            self.close().await?;
            let file = open_options(false).dma_open(&job.path).await.map_err(|e| io_error(&job.path, e))?;
            self.active = Some((job.seq, file));
        }
        let Some((_, file)) = &self.active else { unreachable!("opened above") };
        if !job.bytes.is_empty() {
            write_page_aligned(file, &job.bytes, job.offset, &job.path).await?;
        }
        file.fdatasync().await.map_err(|e| io_error(&job.path, e))?;
        if job.seal {
            self.close().await?;
        }
        for (_, path) in &job.release {
            release_file(path).await?;
        }
        Ok(())
    }

    /// Creates (or recycles) the job's segment file and makes its header durable on
    /// its own, before any record it vouches for, and the file's directory entry too
    /// (a new file could vanish in a crash otherwise).
    async fn create(&mut self, job: &FlushJob) -> Result<(), LogError> {
        self.close().await?;
        let file = open_options(true).dma_open(&job.path).await.map_err(|e| io_error(&job.path, e))?;
        file.pre_allocate(job.segment_bytes, false).await.map_err(|e| io_error(&job.path, e))?;
        write_page_aligned(&file, &encode_header(job.seq, job.segment_bytes), 0, &job.path).await?;
        file.fdatasync().await.map_err(|e| io_error(&job.path, e))?;
        sync_parent_dir(&job.path).await?;
        self.active = Some((job.seq, file));
        Ok(())
    }

    async fn close(&mut self) -> Result<(), LogError> {
        if let Some((_, file)) = self.active.take() {
            let path = file.path().map(|p| p.to_path_buf()).unwrap_or_default();
            file.close().await.map_err(|e| io_error(&path, e))?;
        }
        Ok(())
    }
}

async fn write_page_aligned(file: &DmaFile, bytes: &[u8], offset: u64, path: &Path) -> Result<(), LogError> {
    assert!(
        offset.is_multiple_of(PAGE_BYTES) && (bytes.len() as u64).is_multiple_of(PAGE_BYTES),
        "unaligned direct write"
    );
    let mut buf = file.alloc_dma_buffer(bytes.len());
    buf.as_bytes_mut().copy_from_slice(bytes);
    let written = file.write_at(buf, offset).await.map_err(|e| io_error(path, e))?;
    if written != bytes.len() {
        return Err(io_error(path, format!("short write: {written} of {} bytes", bytes.len())));
    }
    Ok(())
}

async fn sync_parent_dir(path: &Path) -> Result<(), LogError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let handle = Directory::open(dir).await.map_err(|e| io_error(dir, e))?;
    handle.sync().await.map_err(|e| io_error(dir, e))?;
    handle.close().await.map_err(|e| io_error(dir, e))
}

/// Marks a segment file free by zeroing its header and first data page, durably. (A
/// corrupt header followed by a valid batch is then always real damage: a new
/// segment's header is durable before its first batch is written.)
async fn release_file(path: &Path) -> Result<(), LogError> {
    let file = OpenOptions::new().write(true).dma_open(path).await.map_err(|e| io_error(path, e))?;
    write_page_aligned(&file, &vec![0u8; 2 * PAGE_BYTES as usize], 0, path).await?;
    file.fdatasync().await.map_err(|e| io_error(path, e))?;
    file.close().await.map_err(|e| io_error(path, e))
}

/// Writes and syncs one buffer of what is staged, if anything is. Writes staged while
/// it is in flight fill the next buffer (double buffering). Returns the new durable
/// ticket, or `None` when there was nothing to write.
pub async fn flush_one(log: &RefCell<ShardLog>, writer: &mut SegmentWriter) -> Result<Option<u64>, LogError> {
    let job = log.borrow_mut().begin_flush()?;
    let Some(job) = job else { return Ok(None) };
    let result = writer.execute(&job).await;
    log.borrow_mut().finish_flush(job, result)?;
    Ok(Some(log.borrow().durable_ticket()))
}

/// Writes and syncs everything staged in `log`, including whatever is staged while
/// earlier jobs are in flight. Returns the durable ticket.
pub async fn flush(log: &RefCell<ShardLog>, writer: &mut SegmentWriter) -> Result<u64, LogError> {
    while flush_one(log, writer).await?.is_some() {}
    Ok(log.borrow().durable_ticket())
}
