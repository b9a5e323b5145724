//! Per-group configuration. Every bound the core enforces is named here, units last.

use super::error::ConfigError;
use super::types::NodeId;

/// How `read_index` confirms leadership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOnlyOption {
    /// A heartbeat round acknowledged by a quorum confirms each read (ReadIndex).
    Safe,
    /// Serve reads from a leader lease, without a round trip. Sound only while clocks
    /// of the members run at rates within `lease_drift_margin_ticks` per election
    /// timeout of each other. Requires `check_quorum`.
    LeaseBased,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// Ticks without hearing from a leader before a follower campaigns. The actual
    /// timeout is drawn uniformly from `[election_ticks, 2 * election_ticks)`.
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within `election_ticks` steps down,
    /// and followers ignore vote requests while they hear from a leader.
    pub check_quorum: bool,
    pub read_only: ReadOnlyOption,
    /// The lease is shortened by this many ticks to absorb clock-rate differences
    /// between members; must be at least 1 and less than `election_ticks`.
    pub lease_drift_margin_ticks: u32,
    /// Seed of the RNG that randomizes election timeouts.
    pub seed: u64,
    /// Largest entry payload a proposal may carry.
    pub entry_max_bytes: u64,
    /// Largest total size of entries in one append message (at least one entry is
    /// always sent).
    pub append_max_bytes: u64,
    /// Append messages in flight to one follower in replicate state.
    pub inflight_max_msgs: usize,
    /// Bytes of entries in flight to one follower in replicate state.
    pub inflight_max_bytes: u64,
    /// Bytes of entries the leader holds appended but uncommitted; proposals beyond
    /// are refused.
    pub uncommitted_max_bytes: u64,
    /// Bytes of committed entries handed out in one `Ready`.
    pub apply_batch_max_bytes: u64,
    /// Read-index requests waiting for confirmation.
    pub pending_reads_max: usize,
    /// Ticks a follower may stay in snapshot state before the leader retries.
    pub snapshot_retry_ticks: u32,
    /// Idle groups sleep (`quiesce.rs`); the host must then skip sleeping nodes'
    /// ticks, report the ticks they slept through and watch node-level liveness.
    pub quiesce: bool,
    /// Index the host's state machine has applied up to when the node starts.
    pub applied: u64,
}

impl Config {
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            election_ticks: 10,
            heartbeat_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            read_only: ReadOnlyOption::Safe,
            lease_drift_margin_ticks: 2,
            seed: id,
            entry_max_bytes: 1 << 20,
            append_max_bytes: 1 << 20,
            inflight_max_msgs: 256,
            inflight_max_bytes: 16 << 20,
            uncommitted_max_bytes: 64 << 20,
            apply_batch_max_bytes: 16 << 20,
            pending_reads_max: 4096,
            snapshot_retry_ticks: 50,
            quiesce: false,
            applied: 0,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |why| Err(ConfigError::Invalid(why));
        if self.id == 0 {
            return invalid("node id 0 is reserved");
        }
        if self.heartbeat_ticks == 0 {
            return invalid("heartbeat_ticks must be at least 1");
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return invalid("election_ticks must exceed heartbeat_ticks");
        }
        if self.inflight_max_msgs == 0 || self.inflight_max_bytes == 0 {
            return invalid("in-flight window must be positive");
        }
        if self.append_max_bytes == 0 || self.entry_max_bytes == 0 {
            return invalid("size limits must be positive");
        }
        if self.uncommitted_max_bytes < self.entry_max_bytes {
            return invalid("uncommitted_max_bytes must hold at least one maximal entry");
        }
        if self.pending_reads_max == 0 {
            return invalid("pending_reads_max must be positive");
        }
        if self.read_only == ReadOnlyOption::LeaseBased {
            if !self.check_quorum {
                return invalid("lease reads require check_quorum");
            }
            if self.lease_drift_margin_ticks == 0 || self.lease_drift_margin_ticks >= self.election_ticks {
                return invalid("lease_drift_margin_ticks must be in 1..election_ticks");
            }
        }
        Ok(())
    }
}
