//! Errors of the core. Expected conditions a caller handles are values of
//! [`ProposeError`] and [`StorageError`]; broken invariants panic with context.

use super::types::{Index, NodeId};

/// Why a proposal, read or membership request was refused. None of these lose data:
/// nothing was appended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("entry of {size_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    TooLarge { size_bytes: u64, max_bytes: u64 },
    #[error("uncommitted log would exceed {max_bytes} bytes; retry after commits catch up")]
    UncommittedFull { max_bytes: u64 },
    #[error("leadership transfer to {to} in progress")]
    TransferInProgress { to: NodeId },
    #[error("membership change at index {pending_index} not yet applied")]
    ConfChangeInProgress { pending_index: Index },
    #[error("invalid membership change: {reason}")]
    InvalidConfChange { reason: String },
    #[error("too many reads pending (limit {max})")]
    ReadQueueFull { max: usize },
    #[error("node {0} is not a voter")]
    NotAVoter(NodeId),
}

/// What a [`super::storage::Storage`] read can report.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The index was released by log compaction; a snapshot covers it.
    #[error("index compacted")]
    Compacted,
    /// The index lies beyond the last entry.
    #[error("index unavailable")]
    Unavailable,
    /// A snapshot is being built; ask again later.
    #[error("snapshot temporarily unavailable")]
    SnapshotTemporarilyUnavailable,
    /// The storage cannot serve reads any more (an I/O error). Fatal for the node.
    #[error("storage failed: {0}")]
    Fatal(String),
}

/// Why a configuration was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid raft config: {0}")]
    Invalid(&'static str),
}
