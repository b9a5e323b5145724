//! A deterministic simulator for the Raft core: one seed decides every message delay,
//! drop, partition, crash and client request, so any failure replays from its seed.

pub mod kv;
pub mod linearizability;
