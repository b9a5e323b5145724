//! Snapshots of groups' state machines: the Arrow image format, the files a shard
//! keeps them in, and the thread that writes them.

pub mod backup;
pub mod image;
pub mod store;
pub mod writer;

pub use image::{Assembler, Manifest, SnapshotError};
pub use store::SnapshotStore;
