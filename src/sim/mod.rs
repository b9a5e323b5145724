//! A deterministic simulator for the Raft core: one seed decides every message delay,
//! drop, partition, crash, membership change and client request, so any failure
//! replays from its seed. After every step it checks Raft's safety properties; at the
//! end, the linearizability of the clients' history and that the healed cluster
//! recovers within a bound.

mod host;
mod invariants;
pub mod kv;
pub mod linearizability;
mod network;
mod simulation;

pub use simulation::{run_seed, run_seed_with, Failure, Report, Sabotage, LIVENESS_TICKS_MAX};
