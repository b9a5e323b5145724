//! Peer transport: Raft messages between nodes over gRPC (`proto::Peer`).
//!
//! `wire` encodes Raft messages; `peer` keeps one outbound stream per peer node,
//! batched per destination and reconnecting with back-off. The inbound side is the
//! `Peer` service in `server::service`. `flight` carries the bulk data (snapshot
//! images) over Arrow Flight.

pub mod flight;
pub mod peer;
pub mod wire;
