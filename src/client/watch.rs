//! A watch that survives its node: it keeps each group's position (the next revision
//! it wants) from every answer, and when its stream breaks it watches again at the
//! next node from those positions, so no change is missed or repeated.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use tonic::{Code, Status, Streaming};

use super::{Client, ClientError, RETRY_PAUSE};
use crate::proto::kv_client::KvClient;
use crate::proto::{WatchEvent, WatchRequest, WatchResponse};

/// What to watch.
#[derive(Clone, Debug, Default)]
pub struct WatchOptions {
    /// Every key starting with the key given (the empty key: every key).
    pub prefix: bool,
    /// The first revision wanted in every group; 0: from now.
    pub start_revision: u64,
    /// Each event carries the key's previous value.
    pub prev_values: bool,
}

pub struct Watch<'a> {
    client: &'a Client,
    key: Bytes,
    options: WatchOptions,
    /// Per group, the next revision wanted; empty until the first answer.
    positions: BTreeMap<u64, u64>,
    stream: Option<Streaming<WatchResponse>>,
    /// The endpoint the stream is (or was last) open at.
    endpoint: usize,
}

/// Whether a broken watch is worth opening again elsewhere: a watch is a read, so
/// any failure of the node or the connection (a killed node's stream ends in an h2
/// error, `Unknown`) is resumed; a refusal of the request is not.
fn resumable(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Aborted | Code::Unknown | Code::Cancelled)
}

impl Client {
    /// Watches `key` (or the keys under it): see [`Watch::next`].
    pub fn watch(&self, key: Bytes, options: WatchOptions) -> Watch<'_> {
        let endpoint = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as usize % self.channels.len();
        Watch { client: self, key, options, positions: BTreeMap::new(), stream: None, endpoint }
    }
}

impl Watch<'_> {
    /// The next answer with events, in each group's revision order. A broken stream
    /// is opened again at the next node from the positions reached, until the
    /// client's deadline passes without an answer. A revision no longer held is an
    /// `OutOfRange` error once every node has said so.
    pub async fn next(&mut self) -> Result<Vec<WatchEvent>, ClientError> {
        let mut deadline = Instant::now() + self.client.deadline;
        // Nodes that said the positions are compacted there, in a row: another node,
        // up longer, may still hold them.
        let mut compacted_at = 0;
        loop {
            let failure = match self.stream.as_mut() {
                None => match self.open().await {
                    Ok(stream) => {
                        self.stream = Some(stream);
                        continue;
                    }
                    Err(status) => status,
                },
                Some(stream) => match stream.message().await {
                    Ok(Some(answer)) => {
                        deadline = Instant::now() + self.client.deadline;
                        self.advance(&answer);
                        if answer.events.is_empty() {
                            continue;
                        }
                        return Ok(answer.events);
                    }
                    Ok(None) => Status::unavailable("the node ended the watch"),
                    Err(status) => status,
                },
            };
            self.stream = None;
            let compacted = failure.code() == Code::OutOfRange && !self.positions.is_empty();
            compacted_at = if compacted { compacted_at + 1 } else { 0 };
            let elsewhere = compacted && compacted_at < self.client.channels.len();
            if !(resumable(&failure) || elsewhere) || Instant::now() >= deadline {
                return Err(failure.into());
            }
            self.endpoint = (self.endpoint + 1) % self.client.channels.len();
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Each watched group's next revision, as far as the answers so far reached.
    pub fn positions(&self) -> &BTreeMap<u64, u64> {
        &self.positions
    }

    fn advance(&mut self, answer: &WatchResponse) {
        for event in &answer.events {
            let next = self.positions.entry(event.group).or_default();
            *next = (*next).max(event.revision.saturating_add(1));
        }
        for (&group, &revision) in &answer.progress {
            let next = self.positions.entry(group).or_default();
            *next = (*next).max(revision);
        }
    }

    async fn open(&self) -> Result<Streaming<WatchResponse>, Status> {
        let request = WatchRequest {
            key: self.key.clone(),
            prefix: self.options.prefix,
            start_revision: self.options.start_revision,
            resume: self.positions.clone().into_iter().collect(),
            prev_value: self.options.prev_values,
        };
        let mut kv = KvClient::new(self.client.channels[self.endpoint].clone());
        let opened = tokio::time::timeout(super::ATTEMPT_TIMEOUT, kv.watch(request)).await;
        opened.unwrap_or_else(|_| Err(Status::unavailable("the node did not answer in time"))).map(|r| r.into_inner())
    }
}
