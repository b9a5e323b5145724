//! A Rust client for Quarry. It spreads calls over the given nodes; a node that does
//! not lead a key's group forwards the call to the leader, and a call that meets a
//! leaderless moment is retried (writes carry a client id and sequence, so a retry
//! applies once).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::RngCore;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::proto::admin_client::AdminClient;
use crate::proto::kv_client::KvClient;
use crate::proto::{DeleteRequest, GetRequest, PutRequest, StatusRequest, StatusResponse};

/// How long a call keeps retrying while the cluster has no leader for its group.
pub const RETRY_DEADLINE: Duration = Duration::from_secs(10);
const RETRY_PAUSE: Duration = Duration::from_millis(50);

pub struct Client {
    channels: Vec<Channel>,
    client_id: u64,
    sequence: AtomicU64,
    next: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad endpoint {0:?}")]
    Endpoint(String),
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] Status),
}

impl Client {
    /// A client for the nodes at `addrs` (host:port). Connections open lazily.
    pub fn new(addrs: &[String]) -> Result<Client, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::Endpoint(String::new()));
        }
        let channels = addrs
            .iter()
            .map(|a| {
                Endpoint::from_shared(format!("http://{a}"))
                    .map(|e| e.connect_timeout(Duration::from_secs(2)).connect_lazy())
                    .map_err(|_| ClientError::Endpoint(a.clone()))
            })
            .collect::<Result<_, _>>()?;
        let client_id = rand::rng().next_u64() | 1;
        Ok(Client { channels, client_id, sequence: AtomicU64::new(1), next: AtomicU64::new(0) })
    }

    fn channel(&self) -> Channel {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.channels.len();
        self.channels[i].clone()
    }

    /// Runs `call` against the nodes in turn until it succeeds, fails for good, or
    /// the retry deadline passes.
    async fn retry<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + RETRY_DEADLINE;
        loop {
            match call(self.channel()).await {
                Err(s) if matches!(s.code(), Code::Unavailable | Code::Aborted) && Instant::now() < deadline => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                result => return result.map_err(ClientError::from),
            }
        }
    }

    /// Writes `value` under `key`; returns the new revision.
    pub async fn put(&self, key: Bytes, value: Bytes) -> Result<u64, ClientError> {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let request = PutRequest { key, value, client_id: self.client_id, sequence };
        let response = self
            .retry(|ch| {
                let request = request.clone();
                async move { KvClient::new(ch).put(request).await }
            })
            .await?;
        Ok(response.into_inner().revision)
    }

    /// The value and revision under `key`, read linearizably unless `serializable`.
    pub async fn get(&self, key: Bytes, serializable: bool) -> Result<Option<(Bytes, u64)>, ClientError> {
        let request = GetRequest { key, serializable };
        let response = self
            .retry(|ch| {
                let request = request.clone();
                async move { KvClient::new(ch).get(request).await }
            })
            .await?
            .into_inner();
        Ok(response.found.then_some((response.value, response.revision)))
    }

    /// Deletes `key`; returns whether it existed.
    pub async fn delete(&self, key: Bytes) -> Result<bool, ClientError> {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let request = DeleteRequest { key, client_id: self.client_id, sequence };
        let response = self
            .retry(|ch| {
                let request = request.clone();
                async move { KvClient::new(ch).delete(request).await }
            })
            .await?;
        Ok(response.into_inner().existed)
    }

    /// The status of the node at position `node` in the address list.
    pub async fn status(&self, node: usize) -> Result<StatusResponse, ClientError> {
        let channel = self.channels.get(node).cloned().ok_or_else(|| ClientError::Endpoint(node.to_string()))?;
        Ok(AdminClient::new(channel).status(StatusRequest {}).await?.into_inner())
    }

    pub fn nodes(&self) -> usize {
        self.channels.len()
    }
}
