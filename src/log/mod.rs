//! The shard log: one batched, pipelined, segmented log per shard, shared by all of
//! its Raft groups, so one fdatasync makes a batch durable for every group.
//!
//! - [`codec`]: batches of CRC-checked records (entries, hard states, truncate and
//!   snapshot markers, seals);
//! - [`segment`]: preallocated, recycled segment files and how to scan them;
//! - [`index`]: per-group index rebuilt from records;
//! - [`store`]: the [`LogStore`] contract and the in-memory [`MemLogStore`];
//! - [`shard_log`]: the on-disk [`ShardLog`]; [`io`]: its writer (glommio in production);
//!   [`fault`]: a disk that loses unsynced writes, for tests and the simulator.

pub mod codec;
pub mod fault;
pub mod index;
pub mod io;
pub mod segment;
pub mod shard_log;
pub mod store;

use std::path::{Path, PathBuf};

pub use codec::{GroupId, Record};
pub use shard_log::{FlushJob, ShardLog, ShardLogConfig};
pub use store::{GroupStorage, LogStore, MemLogStore};

use crate::raft::Index;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    /// Damage that recovery must not paper over: it names the file and offset.
    #[error("corrupt log {path} at offset {offset}: {reason}")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    #[error("group {group}: entry {index} does not follow last index {last}")]
    Gap { group: GroupId, index: Index, last: Index },
    #[error("group {group}: entry {index} is not where the index says")]
    Missing { group: GroupId, index: Index },
    #[error("unknown group {0}")]
    UnknownGroup(GroupId),
    #[error("batch of {bytes} bytes exceeds the limit of {max}")]
    TooLarge { bytes: u64, max: u64 },
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    /// No room for a new segment file: nothing was written, the flush waits for space.
    #[error("no space left for a new segment {path}: {reason}; writes are refused until space is freed")]
    NoSpace { path: PathBuf, reason: String },
    /// An earlier write or sync failed; the log refuses further work.
    #[error("log failed earlier: {0}")]
    Failed(String),
}

impl LogError {
    pub fn io(path: &Path, e: std::io::Error) -> LogError {
        LogError::Io { path: path.to_path_buf(), reason: e.to_string() }
    }
}
