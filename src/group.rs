//! Raft groups as every layer names them, and the answers a request on a group can
//! get: shared by the log, the shard, the server and the client, so none of them
//! imports another for these.

use crate::raft::{NodeId, ProposeError};

/// A Raft group, numbered from 0 at bootstrap.
pub type GroupId = u64;

/// The group a key (or log name) belongs to: a stable hash, so every node, client and
/// version agrees.
pub fn group_of_key(key: &[u8], groups: u64) -> GroupId {
    u64::from(crc32fast::hash(key)) % groups
}

/// Why a request on a group was not carried out (or may not have been).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("group {0} is not hosted here")]
    UnknownGroup(GroupId),
    #[error("not the leader of the group (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("refused: {0}")]
    Refused(String),
    /// Leadership changed before the write was known to commit; it may or may not
    /// apply. Retrying with the same client id and sequence is safe.
    #[error("outcome unknown: leadership changed")]
    Unknown,
    /// Another entry took this write's place in the log: it will never apply.
    #[error("write dropped by a leader change; retry")]
    Dropped,
    #[error("not found: {0}")]
    NotFound(String),
    /// The request was applied and failed the same way on every replica, through
    /// the caller's mistake (a SQL syntax error, say); nothing changed.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The node cannot take the request now (a queue or window is full); nothing was
    /// done. Retry after a pause.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The node's disk is full: the write was not proposed (nothing will apply).
    #[error("disk full: {0}")]
    DiskFull(String),
}

impl From<ProposeError> for RequestError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::NotLeader { leader_hint } => RequestError::NotLeader { leader: leader_hint },
            // Leadership is moving: nothing was proposed; retry once it has moved.
            ProposeError::TransferInProgress { .. } => RequestError::NotLeader { leader: None },
            e @ (ProposeError::UncommittedFull { .. } | ProposeError::ReadQueueFull { .. }) => {
                RequestError::Overloaded(e.to_string())
            }
            other => RequestError::Refused(other.to_string()),
        }
    }
}
