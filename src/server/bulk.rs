//! Bulk pulls a node makes over Flight when a leader offers: a snapshot image, or a
//! run of log entries to catch up with. At most one per group at a time (offers
//! arriving meanwhile are dropped: leaders offer again) and `BULK_TRANSFERS_MAX` at once.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use crate::log::GroupId;
use crate::raft::NodeId;
use crate::shard::CatchUp;
use crate::transport::flight::{fetch_snapshot, pull_entries};
use crate::transport::wire::SnapshotOffer;

use super::router::Router;
use super::shard_thread::ShardInput;

pub const BULK_TRANSFERS_MAX: usize = 4;

pub struct BulkTransfers {
    groups: Mutex<BTreeSet<GroupId>>,
    permits: tokio::sync::Semaphore,
}

impl Default for BulkTransfers {
    fn default() -> Self {
        BulkTransfers { groups: Mutex::default(), permits: tokio::sync::Semaphore::new(BULK_TRANSFERS_MAX) }
    }
}

impl BulkTransfers {
    /// Runs `transfer` for `group` in the background, unless one is under way.
    fn spawn(self: &Arc<Self>, group: GroupId, transfer: impl Future<Output = ()> + Send + 'static) {
        if !self.groups.lock().expect("transfers lock").insert(group) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            // The semaphore is never closed: acquiring only waits.
            if let Ok(_permit) = this.permits.acquire().await {
                transfer.await;
            }
            this.groups.lock().expect("transfers lock").remove(&group);
        });
    }
}

/// Pulls an offered snapshot from its sender, then steps it into the group's shard.
pub fn start_snapshot_fetch(router: &Router, transfers: &Arc<BulkTransfers>, offer: SnapshotOffer) {
    if offer.to != router.node || offer.group >= router.groups {
        return;
    }
    let Some(channel) = router.channel(offer.from) else { return };
    let router = router.clone();
    transfers.spawn(offer.group, async move {
        match fetch_snapshot(channel, &offer).await {
            Ok(image) => {
                let (group, message) = offer.into_message(image);
                // A full shard queue drops it like any message; the leader offers again.
                let _ = router.shard_of(group).try_send(ShardInput::Peer { group, message });
            }
            Err(e) => tracing::warn!(
                node = router.node,
                group = offer.group,
                "snapshot at index {} from node {} not installed: {e}",
                offer.meta.index,
                offer.from
            ),
        }
    });
}

/// Pulls the entries a leader invited this node to catch up with, stepping each
/// batch into the group's shard as that leader's append.
pub fn start_catch_up(router: &Router, transfers: &Arc<BulkTransfers>, leader: NodeId, offer: CatchUp) {
    if offer.group >= router.groups || offer.from == 0 || offer.to < offer.from {
        return;
    }
    let Some(channel) = router.channel(leader) else { return };
    let router = router.clone();
    transfers.spawn(offer.group, async move {
        let shard = router.shard_of(offer.group).clone();
        let deliver = |message| shard.try_send(ShardInput::Peer { group: offer.group, message }).is_ok();
        match pull_entries(channel, leader, router.node, &offer, deliver).await {
            Ok(caught_up) => {
                router.peer_counters().catch_up_entries.inc_by(caught_up.entries);
            }
            Err(e) => {
                let (node, group) = (router.node, offer.group);
                tracing::warn!(node, group, "bulk catch-up from node {leader} stopped: {}", e.message());
            }
        }
    });
}
