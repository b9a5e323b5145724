//! Outbound peer streams: one long-lived gRPC stream to each other node, fed by a
//! bounded queue, reconnecting with back-off when it breaks. Shard threads encode
//! their turn's messages for each peer into one batch and queue it themselves; the
//! stream reads the queue directly, so a message passes one queue between its shard
//! and the peer's socket.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tonic::transport::Channel;

use super::wire;
use crate::log::GroupId;
use crate::proto::{self, peer_client::PeerClient};
use crate::raft::{Message, NodeId};
use crate::shard::CatchUp;

/// Batches queued for one peer; beyond it batches are dropped (Raft retransmits).
pub const PEER_QUEUE_MAX: usize = 1024;
/// Messages in one batch on the wire.
pub const BATCH_MESSAGES_MAX: usize = 4096;
/// Entry bytes in one batch: a turn with more for one peer is split (a batch beyond
/// the receiver's message limit would break the stream every time it was resent).
/// One entry larger than this travels alone.
pub const BATCH_BYTES_MAX: usize = 16 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What the peer transport counts, for `/metrics`.
#[derive(Clone, Default)]
pub struct PeerCounters {
    pub batches_sent: Counter,
    pub batches_dropped: Counter,
    pub messages_sent: Counter,
    /// Heartbeats and responses that travelled as packed columns.
    pub heartbeats_coalesced: Counter,
    /// Log entries received in bulk over Flight to catch up.
    pub catch_up_entries: Counter,
}

/// What a shard sends one peer in one turn.
#[derive(Debug, Default)]
pub struct Outgoing {
    pub messages: Vec<(GroupId, Message)>,
    pub catch_up: Vec<CatchUp>,
}

/// The peers this node streams to: one queue and sender task each. Members come and
/// go with the cluster's membership.
#[derive(Clone)]
pub struct PeerLinks {
    node: NodeId,
    cluster_id: u64,
    /// This node's listen address, sent in every batch.
    address: String,
    queues: Arc<Mutex<BTreeMap<NodeId, flume::Sender<proto::PeerBatch>>>>,
    /// This node's life, drawn at start and sent in every batch.
    incarnation: u64,
    /// When a batch last arrived from each peer, and in which of its lives: node-level
    /// liveness, which wakes sleeping groups (`shard::quiescence`).
    heard: Arc<Mutex<BTreeMap<NodeId, (Instant, u64)>>>,
    counters: PeerCounters,
}

impl PeerLinks {
    pub fn new(node: NodeId, cluster_id: u64, address: String, counters: PeerCounters) -> Self {
        // Never 0, which a receiver reads as "unknown".
        let incarnation = rand::random::<u64>().max(1);
        PeerLinks { node, cluster_id, address, queues: Arc::default(), incarnation, heard: Arc::default(), counters }
    }

    /// Starts streaming to `peer` over `channel`, unless it already is.
    pub fn connect(&self, peer: NodeId, channel: Channel) {
        let mut queues = self.queues.lock().expect("peer links lock");
        if peer == self.node || queues.contains_key(&peer) {
            return;
        }
        let (tx, rx) = flume::bounded(PEER_QUEUE_MAX);
        queues.insert(peer, tx);
        tokio::spawn(sender(Link { node: self.node, peer, cluster_id: self.cluster_id }, channel, rx));
    }

    /// Stops streaming to `peer` (removed from the cluster); its sender task ends.
    pub fn disconnect(&self, peer: NodeId) {
        self.queues.lock().expect("peer links lock").remove(&peer);
    }

    pub fn peers(&self) -> Vec<NodeId> {
        self.queues.lock().expect("peer links lock").keys().copied().collect()
    }

    /// A batch (possibly an empty beacon) arrived from `peer` in its life `incarnation`.
    pub fn heard_from(&self, peer: NodeId, incarnation: u64) {
        self.heard.lock().expect("peer liveness lock").insert(peer, (Instant::now(), incarnation));
    }

    /// The peers heard from at or after `since`, with the life they were heard in.
    pub fn heard_since(&self, since: Instant) -> Vec<(NodeId, u64)> {
        let heard = self.heard.lock().expect("peer liveness lock");
        heard.iter().filter(|&(_, &(at, _))| at >= since).map(|(&peer, &(_, life))| (peer, life)).collect()
    }

    fn queue(&self, peer: NodeId) -> Option<flume::Sender<proto::PeerBatch>> {
        self.queues.lock().expect("peer links lock").get(&peer).cloned()
    }

    /// Queues what one shard turn sends `to`: its messages in batches of at most
    /// `BATCH_MESSAGES_MAX`, catch-up invitations with the first; nothing at all is
    /// sent as an empty batch (a liveness beacon). A peer without a stream (no
    /// address yet) or with a full queue misses them; Raft retransmits.
    pub fn send(&self, to: NodeId, output: Outgoing) {
        let Some(queue) = self.queue(to) else { return };
        let send = |messages: &[(GroupId, Message)], catch_up: &[CatchUp]| {
            let mut batch = wire::encode_batch(self.cluster_id, self.node, to, messages, catch_up);
            batch.from_address.clone_from(&self.address);
            batch.incarnation = self.incarnation;
            let coalesced = batch.heartbeats.as_ref().map_or(0, |h| h.groups.len())
                + batch.heartbeat_responses.as_ref().map_or(0, |r| r.groups.len());
            if queue.try_send(batch).is_ok() {
                self.counters.batches_sent.inc();
                self.counters.messages_sent.inc_by(messages.len() as u64);
                self.counters.heartbeats_coalesced.inc_by(coalesced as u64);
            } else {
                self.counters.batches_dropped.inc();
            }
        };
        let mut catch_up = output.catch_up;
        for chunk in batches(&output.messages) {
            send(chunk, &std::mem::take(&mut catch_up));
        }
        if output.messages.is_empty() {
            send(&[], &catch_up);
        }
    }
}

/// `messages` cut into runs of at most `BATCH_MESSAGES_MAX` messages and about
/// `BATCH_BYTES_MAX` bytes of entries (a run holds at least one message).
fn batches(messages: &[(GroupId, Message)]) -> Vec<&[(GroupId, Message)]> {
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (_, m)) in messages.iter().enumerate() {
        let size = entry_bytes(m);
        let full = i - start >= BATCH_MESSAGES_MAX || (i > start && bytes + size > BATCH_BYTES_MAX);
        if full {
            runs.push(&messages[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < messages.len() {
        runs.push(&messages[start..]);
    }
    runs
}

fn entry_bytes(m: &Message) -> usize {
    match &m.kind {
        crate::raft::MessageKind::Append { entries, .. } => entries.iter().map(|e| e.size_bytes() as usize).sum(),
        _ => 0,
    }
}

/// Which stream a sender keeps: from `node` to `peer`.
#[derive(Clone, Copy)]
struct Link {
    node: NodeId,
    peer: NodeId,
    cluster_id: u64,
}

/// Keeps one stream open to a peer, re-opening it after failures. The stream reads
/// the peer's queue itself; a batch taken by a stream that then broke is lost, and
/// Raft retransmits it. Opening and losing the stream are logged once each, not per
/// retry.
async fn sender(link: Link, channel: Channel, queue: flume::Receiver<proto::PeerBatch>) {
    let Link { node, peer, cluster_id } = link;
    let mut backoff = BACKOFF_MIN;
    // Whether this outage was logged already (one line per outage, not per retry).
    let mut outage_logged = false;
    // The queue's sender is dropped when the peer leaves the cluster.
    while !queue.is_disconnected() {
        let mut client = PeerClient::new(channel.clone());
        let batches = futures_lite::stream::unfold(queue.clone(), |queue| async move {
            let batch = queue.recv_async().await.ok()?;
            Some((batch, queue))
        });
        match client.stream(batches).await {
            Ok(response) => {
                backoff = BACKOFF_MIN;
                tracing::info!(node, "peer stream to node {peer} open");
                let mut answers = response.into_inner();
                // The peer answers only to refuse us (e.g. another cluster's id).
                match answers.message().await {
                    Err(status) => {
                        tracing::warn!(node, cluster_id, "peer stream to node {peer} refused: {}", status.message())
                    }
                    Ok(_) => tracing::warn!(node, "peer stream to node {peer} closed; reopening"),
                }
                outage_logged = true;
            }
            Err(status) if !outage_logged => {
                tracing::warn!(
                    node,
                    "cannot open a peer stream to node {peer}: {}; retrying with back-off",
                    status.message()
                );
                outage_logged = true;
            }
            Err(_) => {}
        }
        // What was queued for a broken stream is stale by the time one reopens (a
        // restarted peer would get a flood of old heartbeats and probes): drop it.
        // Raft sends again what still matters.
        drop(queue.drain());
        tokio::time::sleep(backoff).await;
        drop(queue.drain());
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::raft::{Entry, EntryPayload, MessageKind};

    fn append(bytes: usize) -> (GroupId, Message) {
        let entries = vec![Entry { term: 1, index: 1, payload: EntryPayload::Normal(Bytes::from(vec![0; bytes])) }];
        let kind = MessageKind::Append { prev_index: 0, prev_term: 0, entries, commit: 0 };
        (0, Message { from: 1, to: 2, term: 1, kind })
    }

    #[test]
    fn a_turn_is_cut_into_batches_by_count_and_by_bytes() {
        let heartbeat = MessageKind::Heartbeat { commit: 0, round: 1, quiesce: false };
        let many = vec![(0, Message { from: 1, to: 2, term: 1, kind: heartbeat }); BATCH_MESSAGES_MAX + 1];
        let runs: Vec<usize> = batches(&many).iter().map(|run| run.len()).collect();
        assert_eq!(runs, vec![BATCH_MESSAGES_MAX, 1]);

        let big = vec![append(BATCH_BYTES_MAX / 2), append(BATCH_BYTES_MAX / 2), append(BATCH_BYTES_MAX * 2)];
        let runs: Vec<usize> = batches(&big).iter().map(|run| run.len()).collect();
        assert_eq!(runs, vec![1, 1, 1], "each half plus headers overflows the budget; an oversize entry goes alone");
        assert!(batches(&[]).is_empty());
        let small = vec![append(100); 10];
        assert_eq!(batches(&small).len(), 1);
    }
}
