//! The Raft core: one consensus group as a pure state machine (sans-IO).
//!
//! Nothing in this module reads a clock, draws unseeded randomness, spawns, blocks or
//! does I/O. Time arrives as [`RaftNode::tick`], messages as [`RaftNode::step`], and
//! requests as [`RaftNode::propose`], [`RaftNode::read_index`],
//! [`RaftNode::propose_conf_change`] and [`RaftNode::transfer_leader`]. Everything the
//! host must do comes out as a numbered [`Ready`].
//!
//! # The host loop
//!
//! 1. Feed inputs: `tick()` every tick interval, `step()` each message received,
//!    `propose()` / `read_index()` for clients.
//! 2. While `has_ready()`, take `ready()` and carry it out as its documentation says:
//!    send `messages`, persist snapshot, entries and hard state, send
//!    `persisted_messages` once durable, apply `committed_entries`, answer
//!    `read_states` once applied.
//! 3. Call `advance(number)` once the Ready's work is done. Acknowledgements are
//!    cumulative, so a host that syncs many Readies with one fdatasync acknowledges
//!    them with one call.
//!
//! ```
//! use quarry::raft::{Config, ConfState, MemStorage, RaftNode, Role};
//!
//! let storage = MemStorage::new_with_conf(ConfState::new([1]));
//! let mut node = RaftNode::new(Config::new(1), storage).unwrap();
//! while node.role() != Role::Leader {
//!     node.tick();
//!     while node.has_ready() {
//!         let ready = node.ready();
//!         let store = node.storage_mut();
//!         if let Some(snapshot) = ready.snapshot { store.apply_snapshot(snapshot); }
//!         store.append(&ready.entries);
//!         if let Some(hs) = ready.hard_state { store.set_hard_state(hs); }
//!         node.advance(ready.number);
//!     }
//! }
//! let proposed = node.propose(bytes::Bytes::from_static(b"hello")).unwrap();
//! let mut applied = Vec::new();
//! while node.has_ready() {
//!     let ready = node.ready();
//!     node.storage_mut().append(&ready.entries);
//!     applied.extend(ready.committed_entries.iter().map(|e| e.index));
//!     node.advance(ready.number);
//! }
//! assert!(applied.contains(&proposed.index));
//! ```

mod confchange;
mod config;
mod election;
mod error;
#[cfg(test)]
mod hostile_tests;
mod log;
mod node;
mod progress;
mod quiesce;
mod quorum;
mod read_index;
mod reads;
mod ready;
mod recovery;
mod replication;
mod storage;
#[cfg(test)]
mod tests;
mod types;

pub use confchange::apply_conf_change;
pub use config::{Config, ReadOnlyOption};
pub use error::{ConfigError, ProposeError, StorageError};
pub use node::{Proposed, RaftNode, StepError, INDEX_MAX, READIES_IN_FLIGHT_MAX, TERM_MAX};
pub use progress::{Progress, ProgressState};
pub use ready::Ready;
pub use storage::{bootstrap_state, limit_size, MemStorage, Storage};
pub use types::*;
