//! Peer transport: Raft messages between nodes over gRPC (`proto::Peer`).
//!
//! `wire` encodes Raft messages; `peer` keeps one outbound stream per peer node,
//! batched per destination and reconnecting with back-off. The inbound side is the
//! `Peer` service in `server::service`. `flight` carries the bulk data (snapshot
//! images) over Arrow Flight.

pub mod flight;
pub mod peer;
pub mod wire;

use std::fmt::Display;

use tonic::transport::Endpoint;

/// A gRPC endpoint for `address` (`host:port`), the way every Quarry connection is
/// made: with TCP_NODELAY, so a small frame (a unary call's trailers, a heartbeat)
/// leaves at once instead of waiting up to 40 ms for the peer's delayed ACK.
pub fn endpoint(address: impl Display) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{address}"))?.tcp_nodelay(true).http2_adaptive_window(true))
}
