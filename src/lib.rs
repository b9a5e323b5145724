//! Quarry: a strongly consistent, replicated key-value store and log service built on
//! multi-Raft. See `docs/architecture.md` for how the pieces fit.

/// The version every binary reports: the crate's and the git commit it was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("QUARRY_GIT_COMMIT"), ")");

pub mod client;
pub mod group;
pub mod log;
pub mod proto;
pub mod raft;
pub mod server;
pub mod shard;
pub mod sim;
pub mod snapshot;
pub mod sql;
pub mod state;
pub mod tls;
pub mod transport;

/// Cases for the property tests that feed hostile input to the decoders and the core:
/// `default` in the normal run, `PROPTEST_CASES` for a long one
/// (`PROPTEST_CASES=200000 cargo test --profile ci --lib -- hostile forged any_bytes`).
#[cfg(test)]
pub(crate) fn fuzz_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(default)
}
