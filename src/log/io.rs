//! The segment writer: carries out the shard log's [`FlushJob`]s (creating segment
//! files, one write and one fdatasync per job, freeing released files) over a
//! [`SegmentFiles`] implementation. [`GlommioFiles`] is the only place the log touches
//! glommio (direct I/O and fdatasync through io_uring); the simulator and the log's
//! tests use `fault::FaultyDisk`, which keeps every write that no completed fdatasync
//! covers volatile, so a missing fdatasync here loses data in a test.
//!
//! Reads never go through glommio: `DmaFile` reads of a freshly created file can fail
//! with EOPNOTSUPP on some virtual disks (glommio #605/#670), so recovery reads plain
//! files and sealed segments are read through memory maps.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use glommio::io::{Directory, DmaFile, OpenOptions};

use super::segment::{encode_header, PAGE_BYTES};
use super::shard_log::{FlushJob, ShardLog};
use super::LogError;

/// The file operations the segment writer needs. Writes are page-aligned and
/// page-sized; a write is durable only once a later `fdatasync` of its file returns.
#[allow(async_fn_in_trait)] // Driven on one thread (glommio or the simulator).
pub trait SegmentFiles {
    type File;
    /// Opens `path` for writing, creating it if `create`.
    async fn open(&mut self, path: &Path, create: bool) -> Result<Self::File, LogError>;
    /// Gives the file its full size up front (its blocks, where the system can).
    /// `LogError::NoSpace` when the device is full (`open` too).
    async fn pre_allocate(&mut self, file: &Self::File, bytes: u64) -> Result<(), LogError>;
    async fn write_at(&mut self, file: &Self::File, bytes: &[u8], offset: u64) -> Result<(), LogError>;
    async fn fdatasync(&mut self, file: &Self::File) -> Result<(), LogError>;
    /// Makes the directory's entries (a newly created file) durable.
    async fn sync_dir(&mut self, dir: &Path) -> Result<(), LogError>;
    async fn close(&mut self, file: Self::File) -> Result<(), LogError>;
}

/// Carries out flush jobs; owns the open handle of the active segment.
pub struct SegmentWriter<F: SegmentFiles = GlommioFiles> {
    files: F,
    active: Option<(u64, F::File)>,
}

impl Default for SegmentWriter<GlommioFiles> {
    fn default() -> Self {
        SegmentWriter::new(GlommioFiles)
    }
}

impl<F: SegmentFiles> SegmentWriter<F> {
    pub fn new(files: F) -> Self {
        SegmentWriter { files, active: None }
    }

    pub fn files_mut(&mut self) -> &mut F {
        &mut self.files
    }

    /// Forgets the open handle without closing it (the simulator's crash).
    pub fn forget_active(&mut self) {
        self.active = None;
    }

    pub async fn execute(&mut self, job: &FlushJob) -> Result<(), LogError> {
        if job.open {
            self.create(job).await?;
        } else if self.active.as_ref().map(|(seq, _)| *seq) != Some(job.seq) {
            // A log reopened after a restart continues its newest segment in place.
            self.close().await?;
            let file = self.files.open(&job.path, false).await?;
            self.active = Some((job.seq, file));
        }
        let Some((_, file)) = &self.active else { unreachable!("opened above") };
        if !job.bytes.is_empty() {
            check_aligned(&job.bytes, job.offset);
            self.files.write_at(file, &job.bytes, job.offset).await?;
        }
        self.files.fdatasync(file).await?;
        if job.seal {
            self.close().await?;
        }
        for (_, path) in &job.release {
            self.release_file(path).await?;
        }
        Ok(())
    }

    /// Creates (or recycles) the job's segment file and makes its header durable on
    /// its own, before any record it vouches for, and the file's directory entry too
    /// (a new file could vanish in a crash otherwise).
    async fn create(&mut self, job: &FlushJob) -> Result<(), LogError> {
        self.close().await?;
        let file = self.files.open(&job.path, true).await?;
        self.files.pre_allocate(&file, job.segment_bytes).await?;
        self.files.write_at(&file, &encode_header(job.seq, job.segment_bytes), 0).await?;
        self.files.fdatasync(&file).await?;
        self.files.sync_dir(job.path.parent().unwrap_or(Path::new("."))).await?;
        self.active = Some((job.seq, file));
        Ok(())
    }

    async fn close(&mut self) -> Result<(), LogError> {
        if let Some((_, file)) = self.active.take() {
            self.files.close(file).await?;
        }
        Ok(())
    }

    /// Marks a segment file free by zeroing its header and then its first data page,
    /// each durably. (A corrupt header followed by a valid batch is then always real
    /// damage: a new segment's header is durable before its first batch is written.)
    /// The header goes first, on its own: a crash tearing one two-page write could keep
    /// the header and zero the first batch, leaving a live segment without its records.
    async fn release_file(&mut self, path: &Path) -> Result<(), LogError> {
        let file = self.files.open(path, false).await?;
        let zeroes = vec![0u8; PAGE_BYTES as usize];
        self.files.write_at(&file, &zeroes, 0).await?;
        self.files.fdatasync(&file).await?;
        self.files.write_at(&file, &zeroes, PAGE_BYTES).await?;
        self.files.fdatasync(&file).await?;
        self.files.close(file).await
    }
}

fn check_aligned(bytes: &[u8], offset: u64) {
    assert!(
        offset.is_multiple_of(PAGE_BYTES) && (bytes.len() as u64).is_multiple_of(PAGE_BYTES),
        "unaligned direct write"
    );
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> LogError {
    LogError::Io { path: path.to_path_buf(), reason: e.to_string() }
}

/// Creating or sizing a segment file failed: a full disk (or quota) is worth waiting
/// out, since nothing was written yet; anything else is an I/O failure.
fn allocation_error(path: &Path, e: glommio::GlommioError<()>) -> LogError {
    let errno = match &e {
        glommio::GlommioError::IoError(source) | glommio::GlommioError::EnhancedIoError { source, .. } => {
            source.raw_os_error()
        }
        _ => None,
    };
    match errno {
        Some(libc::ENOSPC | libc::EDQUOT) => LogError::NoSpace { path: path.to_path_buf(), reason: e.to_string() },
        _ => io_error(path, e),
    }
}

/// Direct I/O and fdatasync through glommio's io_uring.
pub struct GlommioFiles;

impl SegmentFiles for GlommioFiles {
    type File = (DmaFile, PathBuf);

    async fn open(&mut self, path: &Path, create: bool) -> Result<Self::File, LogError> {
        let mut options = OpenOptions::new();
        options.create(create).read(true).write(true);
        let file = options.dma_open(path).await.map_err(|e| allocation_error(path, e))?;
        Ok((file, path.to_path_buf()))
    }

    async fn pre_allocate(&mut self, (file, path): &Self::File, bytes: u64) -> Result<(), LogError> {
        file.pre_allocate(bytes, false).await.map_err(|e| allocation_error(path, e))
    }

    async fn write_at(&mut self, (file, path): &Self::File, bytes: &[u8], offset: u64) -> Result<(), LogError> {
        check_aligned(bytes, offset);
        let mut buf = file.alloc_dma_buffer(bytes.len());
        buf.as_bytes_mut().copy_from_slice(bytes);
        let written = file.write_at(buf, offset).await.map_err(|e| io_error(path, e))?;
        if written != bytes.len() {
            return Err(io_error(path, format!("short write: {written} of {} bytes", bytes.len())));
        }
        Ok(())
    }

    async fn fdatasync(&mut self, (file, path): &Self::File) -> Result<(), LogError> {
        file.fdatasync().await.map_err(|e| io_error(path, e))
    }

    async fn sync_dir(&mut self, dir: &Path) -> Result<(), LogError> {
        let handle = Directory::open(dir).await.map_err(|e| io_error(dir, e))?;
        handle.sync().await.map_err(|e| io_error(dir, e))?;
        handle.close().await.map_err(|e| io_error(dir, e))
    }

    async fn close(&mut self, (file, path): Self::File) -> Result<(), LogError> {
        file.close().await.map_err(|e| io_error(&path, e))
    }
}

/// Writes and syncs one buffer of what is staged, if anything is. Writes staged while
/// it is in flight fill the next buffer (double buffering). Returns the new durable
/// ticket, or `None` when there was nothing to write.
pub async fn flush_one<F: SegmentFiles>(
    log: &RefCell<ShardLog>,
    writer: &mut SegmentWriter<F>,
) -> Result<Option<u64>, LogError> {
    let job = log.borrow_mut().begin_flush()?;
    let Some(job) = job else { return Ok(None) };
    let result = writer.execute(&job).await;
    log.borrow_mut().finish_flush(job, result)?;
    Ok(Some(log.borrow().durable_ticket()))
}

/// Writes and syncs everything staged in `log`, including whatever is staged while
/// earlier jobs are in flight. Returns the durable ticket.
pub async fn flush<F: SegmentFiles>(log: &RefCell<ShardLog>, writer: &mut SegmentWriter<F>) -> Result<u64, LogError> {
    while flush_one(log, writer).await?.is_some() {}
    Ok(log.borrow().durable_ticket())
}
