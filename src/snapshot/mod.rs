//! Snapshots of groups' state machines: the Arrow image format and the files a shard
//! keeps them in.

pub mod image;
pub mod store;

pub use image::{Assembler, Manifest, SnapshotError};
pub use store::SnapshotStore;
