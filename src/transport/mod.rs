//! Peer transport: Raft messages between nodes over gRPC (`proto::Peer`).
//!
//! `wire` encodes Raft messages; `peer` keeps one outbound stream per peer node,
//! batched per destination and reconnecting with back-off. The inbound side is the
//! `Peer` service in `server::service`.

pub mod peer;
pub mod wire;
