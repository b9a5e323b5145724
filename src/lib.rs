//! Quarry: a strongly consistent, replicated key-value store and log service built on
//! multi-Raft. See `docs/architecture.md` for how the pieces fit.

pub mod client;
pub mod group;
pub mod log;
pub mod proto;
pub mod raft;
pub mod server;
pub mod shard;
pub mod sim;
pub mod snapshot;
pub mod state;
pub mod tls;
pub mod transport;
