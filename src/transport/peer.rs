//! Outbound peer streams: one long-lived gRPC stream to each other node, fed by a
//! bounded queue, reconnecting with back-off when it breaks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Batches buffered between the queue and one connection.
const STREAM_BUFFER: usize = 16;

async fn pump(queue: flume::Receiver<proto::PeerBatch>, tx: tokio::sync::mpsc::Sender<proto::PeerBatch>) {
    while let Ok(batch) = queue.recv_async().await {
        if tx.send(batch).await.is_err() {
            return;
        }
    }
}

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

/// Shard outputs merged into one round of batches, so a node pair's heartbeats from
/// every shard coalesce. Bounds the work done before the queues see anything.
const OUTPUTS_PER_ROUND_MAX: usize = 256;

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
}

impl PeerLinks {
    /// Starts streaming to `peer` over `channel`, unless it already is.
    pub fn connect(&self, peer: NodeId, channel: Channel) {
        let mut queues = self.queues.lock().expect("peer links lock");
        if peer == self.node || queues.contains_key(&peer) {
            return;
        }
        let (tx, rx) = flume::bounded(PEER_QUEUE_MAX);
        queues.insert(peer, tx);
        tokio::spawn(sender(self.node, self.cluster_id, channel, rx));
    }

    /// Stops streaming to `peer` (removed from the cluster); its sender task ends.
    pub fn disconnect(&self, peer: NodeId) {
        self.queues.lock().expect("peer links lock").remove(&peer);
    }

    pub fn peers(&self) -> Vec<NodeId> {
        self.queues.lock().expect("peer links lock").keys().copied().collect()
    }

    fn queue(&self, peer: NodeId) -> Option<flume::Sender<proto::PeerBatch>> {
        self.queues.lock().expect("peer links lock").get(&peer).cloned()
    }
}

/// Starts the dispatcher that routes shard output to the peers' queues; peers are
/// added through the returned links.
pub fn start(
    node: NodeId,
    cluster_id: u64,
    address: String,
    outbound: flume::Receiver<(NodeId, Outgoing)>,
    counters: PeerCounters,
) -> PeerLinks {
    let links = PeerLinks { node, cluster_id, address, queues: Arc::default() };
    let dispatcher_links = links.clone();
    tokio::spawn(async move {
        let links = dispatcher_links;
        let mut round: BTreeMap<NodeId, Outgoing> = BTreeMap::new();
        while let Ok(first) = outbound.recv_async().await {
            for (to, output) in std::iter::once(first).chain(outbound.try_iter().take(OUTPUTS_PER_ROUND_MAX)) {
                let merged = round.entry(to).or_default();
                merged.messages.extend(output.messages);
                merged.catch_up.extend(output.catch_up);
            }
            for (to, output) in std::mem::take(&mut round) {
                let Some(queue) = links.queue(to) else { continue };
                let send = |messages: &[(GroupId, Message)], catch_up: &[CatchUp]| {
                    let mut batch = wire::encode_batch(cluster_id, node, to, messages, catch_up);
                    batch.from_address.clone_from(&links.address);
                    let coalesced = batch.heartbeats.as_ref().map_or(0, |h| h.groups.len())
                        + batch.heartbeat_responses.as_ref().map_or(0, |r| r.groups.len());
                    // A full queue to a slow peer drops the batch; Raft retransmits.
                    if queue.try_send(batch).is_ok() {
                        counters.batches_sent.inc();
                        counters.messages_sent.inc_by(messages.len() as u64);
                        counters.heartbeats_coalesced.inc_by(coalesced as u64);
                    } else {
                        counters.batches_dropped.inc();
                    }
                };
                // Catch-up invitations ride with the first batch, or alone.
                let mut catch_up = output.catch_up;
                for chunk in output.messages.chunks(BATCH_MESSAGES_MAX) {
                    send(chunk, &std::mem::take(&mut catch_up));
                }
                if !catch_up.is_empty() {
                    send(&[], &catch_up);
                }
            }
        }
    });
    links
}

/// Keeps one stream open to a peer, re-opening it after failures.
async fn sender(node: NodeId, cluster_id: u64, channel: Channel, queue: flume::Receiver<proto::PeerBatch>) {
    let mut backoff = BACKOFF_MIN;
    // The queue's sender is dropped when the peer leaves the cluster.
    while !queue.is_disconnected() {
        let mut client = PeerClient::new(channel.clone());
        // Bridge the shared queue into this connection's stream; the pump stops when
        // the connection does.
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        let pump = tokio::spawn(pump(queue.clone(), tx));
        let result = client.stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
        if let Ok(response) = result {
            backoff = BACKOFF_MIN;
            let mut answers = response.into_inner();
            // The peer answers only to refuse us (e.g. another cluster's id).
            if let Err(status) = answers.message().await {
                eprintln!("node {node} (cluster {cluster_id}): peer stream refused: {}", status.message());
            }
        }
        pump.abort();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
