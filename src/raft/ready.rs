//! The batch of work the core hands its host, and the bookkeeping behind its
//! acknowledgement.

use super::types::{Entry, HardState, Index, Message, ReadState, Snapshot, SoftState, Term};

/// What the host must do, in this order, before calling `advance(number)`:
///
/// 1. Send `messages` right away (they may leave before anything is durable: a
///    leader's appends, Raft §10.2.1).
/// 2. Persist, in one atomic batch: install `snapshot` (replacing the log and the
///    state machine), then append `entries` (the first may overwrite an existing
///    suffix: truncate from its index first), then record `hard_state`.
/// 3. Once this Ready *and every earlier one* is durable, send `persisted_messages`.
/// 4. Apply `committed_entries` in order (they are committed and durable locally).
/// 5. Answer each of `read_states` once the applied index reaches its `index`.
/// 6. Call `advance(number)`; one call acknowledges every earlier Ready too.
///
/// The host may take further Readies before acknowledging earlier ones (pipelining),
/// but must persist them in order.
#[must_use = "a Ready must be carried out and acknowledged with advance()"]
#[derive(Debug, Default)]
pub struct Ready {
    pub number: u64,
    /// Changed leader or role. A host failing pending reads on lost leadership looks here.
    pub soft_state: Option<SoftState>,
    /// Persist BEFORE sending `persisted_messages`.
    pub hard_state: Option<HardState>,
    /// Whether this Ready must be durable before `persisted_messages` leave: it holds
    /// entries, a snapshot, or a new term or vote. When false, `hard_state` (if any)
    /// changed only its commit index and need not be written at all — it rides along
    /// with the next write that must be synced.
    pub must_sync: bool,
    /// Install BEFORE appending `entries`.
    pub snapshot: Option<Snapshot>,
    /// Append BEFORE sending `persisted_messages`.
    pub entries: Vec<Entry>,
    /// Send NOW, before persisting.
    pub messages: Vec<Message>,
    /// Send only AFTER this and every earlier Ready is durable.
    pub persisted_messages: Vec<Message>,
    /// Apply, in order.
    pub committed_entries: Vec<Entry>,
    /// Linearizable reads confirmed: serve each once applied >= its index.
    pub read_states: Vec<ReadState>,
}

/// What acknowledging a Ready tells the core.
#[derive(Debug)]
pub(super) struct InFlightReady {
    pub number: u64,
    pub last_entry: Option<(Index, Term)>,
    pub snapshot_index: Option<Index>,
    pub applying_to: Index,
}
