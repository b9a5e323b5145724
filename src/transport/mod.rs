//! Peer transport: Raft messages between nodes over gRPC (`proto::Peer`).
//!
//! So far: the wire encoding of Raft messages. The streams themselves (one per node
//! pair, batched per destination, reconnecting with back-off) come with `quarryd`.

pub mod wire;
