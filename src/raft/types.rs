//! The data the Raft core exchanges with its host: log entries, hard state,
//! membership, snapshots and messages.

use std::collections::BTreeSet;

use bytes::Bytes;

pub type NodeId = u64;
pub type Term = u64;
/// Log position. Indices are 1-based; index 0 is the empty sentinel with term 0.
pub type Index = u64;
/// An opaque token the host attaches to a read-index request to recognise its answer.
pub type ReadCtx = u64;

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EntryPayload {
    /// Appended by every new leader at the start of its term, so that it can commit
    /// entries of earlier terms (Raft §5.4.2) and serve reads.
    Noop,
    /// Application data, opaque to the core.
    Normal(Bytes),
    /// A membership change, applied by the core when the entry is committed.
    ConfChange(ConfChange),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub term: Term,
    pub index: Index,
    pub payload: EntryPayload,
}

impl Entry {
    /// Bytes this entry counts for against size bounds (payload plus a fixed header).
    pub fn size_bytes(&self) -> u64 {
        const HEADER_BYTES: u64 = 24;
        let payload = match &self.payload {
            EntryPayload::Noop => 0,
            EntryPayload::Normal(data) => data.len() as u64,
            EntryPayload::ConfChange(cc) => cc.size_bytes(),
        };
        HEADER_BYTES + payload
    }
}

/// State that must be durable before the messages that depend on it are sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: Term,
    /// The candidate voted for in `term`, if any.
    pub vote: Option<NodeId>,
    pub commit: Index,
}

/// A cluster configuration. When `voters_outgoing` is non-empty the configuration is
/// joint: decisions need a majority of `voters` *and* a majority of `voters_outgoing`.
///
/// Invariant: `voters` is non-empty once bootstrapped; `learners` and `voters` are
/// disjoint. A learner may also be an outgoing voter while joint (a voter being
/// demoted), in which case it still counts for the outgoing majority.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfState {
    pub voters: BTreeSet<NodeId>,
    pub voters_outgoing: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

impl ConfState {
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Self {
        ConfState { voters: voters.into_iter().collect(), ..ConfState::default() }
    }

    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Whether `id` votes in either half of the configuration.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    /// Every node that receives replication: voters of both halves and learners.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut all = self.voters.clone();
        all.extend(&self.voters_outgoing);
        all.extend(&self.learners);
        all
    }
}

/// One step of a membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SingleChange {
    AddVoter(NodeId),
    AddLearner(NodeId),
    RemoveNode(NodeId),
}

/// A membership change proposal. A change set that alters the voters enters a joint
/// configuration, which the leader leaves automatically once the change is applied;
/// a change set that only touches learners takes effect directly.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ConfChange {
    Change(Vec<SingleChange>),
    LeaveJoint,
}

impl ConfChange {
    fn size_bytes(&self) -> u64 {
        match self {
            ConfChange::Change(changes) => 9 * changes.len() as u64,
            ConfChange::LeaveJoint => 1,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Last index covered by the snapshot.
    pub index: Index,
    pub term: Term,
    /// The configuration as of `index`.
    pub conf_state: ConfState,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    /// The state machine's image, opaque to the core.
    pub data: Bytes,
}

/// A node's commit index and the term of its entry there, carried in (pre-)vote
/// requests and answers: a receiver whose log holds that entry with that term holds the same log
/// up to it (Log Matching), so a node learns a commit index it lost in a crash (a
/// commit index alone is not synced), and one whose log ends before it learns that
/// it cannot win an election. `index` 0: nothing to tell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KnownCommit {
    pub index: Index,
    pub term: Term,
}

/// Why a follower rejected an append, so the leader can skip back a whole term at a
/// time instead of one index per round trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RejectHint {
    /// The follower's largest index at or below the rejected `prev_index` whose term
    /// is at most the rejected `prev_term`.
    pub index: Index,
    pub term: Term,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// Pre-vote request; `term` of the envelope is the term the sender would campaign in.
    PreVote {
        last_index: Index,
        last_term: Term,
        commit: KnownCommit,
    },
    PreVoteResponse {
        reject: bool,
        commit: KnownCommit,
    },
    /// Vote request. `transfer` is set when leadership is being handed over, which lets
    /// voters ignore their leader lease.
    Vote {
        last_index: Index,
        last_term: Term,
        transfer: bool,
        commit: KnownCommit,
    },
    VoteResponse {
        reject: bool,
        commit: KnownCommit,
    },
    Append {
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: Index,
    },
    /// `index` is the follower's matching last index when accepted, or the rejected
    /// `prev_index` when `reject` is set.
    AppendResponse {
        index: Index,
        reject: Option<RejectHint>,
    },
    /// `round` numbers the leader's heartbeat broadcasts within its term; a quorum
    /// acknowledging a round confirms leadership for reads issued before it.
    Heartbeat {
        commit: Index,
        round: u64,
        /// The leader's last heartbeat before it sleeps (`quiesce.rs`).
        quiesce: bool,
    },
    HeartbeatResponse {
        round: u64,
    },
    Snapshot {
        snapshot: Box<Snapshot>,
    },
    /// Tells a caught-up follower to campaign at once (leadership transfer).
    TimeoutNow,
    /// An abstaining follower asks the leader for its commit index (see `recovery.rs`);
    /// `nonce` ties the answer to this life of the follower, `last_index` tells the
    /// leader where the follower's log now ends.
    CommitQuery {
        nonce: u64,
        last_index: Index,
    },
    /// The leader's commit index, sent only once it has committed in its term.
    CommitAnswer {
        nonce: u64,
        commit: Index,
    },
}

impl MessageKind {
    /// The commit index an election message vouches for.
    pub fn known_commit(&self) -> Option<KnownCommit> {
        match self {
            MessageKind::PreVote { commit, .. }
            | MessageKind::Vote { commit, .. }
            | MessageKind::PreVoteResponse { commit, .. }
            | MessageKind::VoteResponse { commit, .. } => Some(*commit),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub kind: MessageKind,
}

impl Message {
    /// Messages whose sender may be the leader of `term`: receiving one from a higher
    /// term tells the receiver who leads.
    pub fn is_from_leader(&self) -> bool {
        matches!(self.kind, MessageKind::Append { .. } | MessageKind::Heartbeat { .. } | MessageKind::Snapshot { .. })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Volatile state the host may want to observe; it need not be persisted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    pub leader: Option<NodeId>,
    pub role: Role,
}

/// The answer to a `read_index` request: once the host has applied up to `index`, a
/// read of the state machine is linearizable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub ctx: ReadCtx,
    pub index: Index,
}
