//! Outbound peer streams: one long-lived gRPC stream to each other node, fed by a
//! bounded queue, reconnecting with back-off when it breaks.

use std::collections::BTreeMap;
use std::time::Duration;

use tonic::transport::Channel;

use crate::proto::{self, peer_client::PeerClient};
use crate::raft::NodeId;

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

/// Starts a sender task per peer and a dispatcher that routes shard output to them.
pub fn start(
    node: NodeId,
    cluster_id: u64,
    peers: BTreeMap<NodeId, Channel>,
    outbound: flume::Receiver<(NodeId, Vec<proto::RaftMessage>)>,
) {
    let mut queues = BTreeMap::new();
    for (peer, channel) in peers {
        let (tx, rx) = flume::bounded(PEER_QUEUE_MAX);
        queues.insert(peer, tx);
        tokio::spawn(sender(node, cluster_id, channel, rx));
    }
    tokio::spawn(async move {
        while let Ok((to, messages)) = outbound.recv_async().await {
            if let Some(queue) = queues.get(&to) {
                for chunk in messages.chunks(BATCH_MESSAGES_MAX) {
                    let batch = proto::PeerBatch { cluster_id, from_node: node, messages: chunk.to_vec() };
                    let _ = queue.try_send(batch);
                }
            }
        }
    });
}

/// Keeps one stream open to a peer, re-opening it after failures.
async fn sender(node: NodeId, cluster_id: u64, channel: Channel, queue: flume::Receiver<proto::PeerBatch>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let mut client = PeerClient::new(channel.clone());
        // Bridge the shared queue into this connection's stream; the pump stops when
        // the connection does.
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        let pump = tokio::spawn(pump(queue.clone(), tx));
        let result = client.stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
        match result {
            Ok(response) => {
                backoff = BACKOFF_MIN;
                let mut answers = response.into_inner();
                // The peer answers only to refuse us (e.g. another cluster's id).
                if let Err(status) = answers.message().await {
                    eprintln!("node {node} (cluster {cluster_id}): peer stream refused: {}", status.message());
                }
            }
            Err(_) => {
                if queue.is_disconnected() {
                    return;
                }
            }
        }
        pump.abort();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
