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
use std::time::Duration;

use tonic::transport::Endpoint;

/// HTTP/2 PINGs on every connection, idle or not, this often...
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// ...and a connection whose PING goes unanswered this long is closed, failing what
/// waits on it: a peer that accepts TCP but never answers (a stopped process, a hung
/// host) costs one timeout, not a call that never returns.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A gRPC endpoint for `address` (`host:port`), the way every Quarry connection is
/// made: with TCP_NODELAY, so a small frame (a unary call's trailers, a heartbeat)
/// leaves at once instead of waiting up to 40 ms for the peer's delayed ACK; adaptive
/// flow-control windows; and keepalive PINGs.
pub fn endpoint(address: impl Display) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{address}"))?
        .tcp_nodelay(true)
        .http2_adaptive_window(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}
