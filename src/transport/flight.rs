//! Bulk transfer over Arrow Flight. A node serves two kinds of `DoGet`:
//!
//! - `log/<from>/<name>`: a change stream of the named log's committed records from
//!   index `from` (1-based), as batches of (`index`, `data`), following new appends
//!   until the client goes away. Read from this node's replica, so every node serves it.
//! - `watch/key/<revision>/<key>` and `watch/prefix/<revision>/<prefix>`: a watch
//!   (see `Kv.Watch`) as batches of [`watch_schema`], from `revision` in every group
//!   (0: from now). The key is the rest of the ticket, any bytes.
//! - `entries/<group>/<from>/<to>`: a leader's committed log entries, for a follower
//!   far behind (invited by a catch-up offer), as batches of (`index`, `term`,
//!   `entry`: the protobuf `Entry`), with the leader's term, commit index and the
//!   term before `from` in the schema metadata.
//! - `snapshot/<group>/<index>/<offset>`: a snapshot file's chunk batches from
//!   `offset`, paced to `TRANSFER_BYTES_PER_SEC` so a transfer cannot starve the
//!   groups' normal traffic.
//!
//! A follower offered a snapshot pulls it with [`fetch_snapshot`]: every chunk is
//! checked as it arrives; after a broken stream or a bad chunk it asks again from the
//! last good byte, and the image is handed over only once it matches the offer's
//! size and CRC32.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::{Array, BinaryArray, RecordBatch, UInt64Array};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo, HandshakeRequest, HandshakeResponse,
    PollInfo, PutResult, SchemaResult, Ticket,
};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use tonic::transport::Channel;

use crate::tls::{identity_of, ConnInfo, Identity};
use tonic::{Request, Response, Status, Streaming};

use super::wire::{decode_entry, encode_entry, SnapshotOffer};
use crate::log::GroupId;
use crate::proto;
use crate::raft::{Entry, Index, Message, MessageKind, NodeId};
use crate::shard::{CatchUp, EntryRange};
use crate::snapshot::{Assembler, Manifest, SnapshotError};

/// The pace a node serves snapshot bytes at, per transfer.
pub const TRANSFER_BYTES_PER_SEC: f64 = 128.0 * 1024.0 * 1024.0;
/// Chunks read ahead of the network, per transfer (the memory a transfer holds).
const READ_AHEAD_CHUNKS: usize = 2;
/// Tries of one fetch (each resumes where the last stopped) before giving up.
pub const FETCH_ATTEMPTS_MAX: u32 = 8;
const FETCH_BACKOFF: Duration = Duration::from_millis(100);

/// Transfer requests whose starting offsets are remembered (for tests).
const REQUESTS_REMEMBERED: usize = 64;

/// Faults a test injects into the serving side, each firing once, and the offsets
/// transfers were asked to start at.
#[derive(Debug)]
pub struct TransferFaults {
    /// End the stream with an error after this many chunks.
    pub fail_after_chunks: AtomicUsize,
    /// Flip a byte of the chunk with this ordinal (its checksum left as it was).
    pub corrupt_chunk: AtomicUsize,
    /// The latest `REQUESTS_REMEMBERED` only.
    pub requested_offsets: Mutex<Vec<u64>>,
}

impl Default for TransferFaults {
    fn default() -> Self {
        TransferFaults {
            fail_after_chunks: AtomicUsize::new(usize::MAX),
            corrupt_chunk: AtomicUsize::new(usize::MAX),
            requested_offsets: Mutex::default(),
        }
    }
}

/// Records a named-log tail reads, from this node's replica.
#[tonic::async_trait]
pub trait RecordSource: Send + Sync + 'static {
    /// Up to `max` records of log `name` from index `from`; none while the log does
    /// not exist yet.
    async fn records(&self, name: &str, from: u64, max: u32) -> Result<Vec<Bytes>, Status>;
}

/// Committed entries, read from the leader's log, for a follower's bulk catch-up.
#[tonic::async_trait]
pub trait EntrySource: Send + Sync + 'static {
    async fn entries(&self, group: GroupId, from: Index, to: Index) -> Result<EntryRange, Status>;
}

/// A watch's changes as record batches of [`watch_schema`] (`server::watch`).
pub trait ChangeSource: Send + Sync + 'static {
    fn watch(&self, ticket: WatchTicket, connection: Option<ConnInfo>) -> Result<BoxStream<RecordBatch>, Status>;
}

/// What a `watch/…` ticket asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchTicket {
    pub prefix: bool,
    pub start_revision: u64,
    pub key: Bytes,
}

impl WatchTicket {
    pub fn parse(ticket: &[u8]) -> Result<WatchTicket, Status> {
        let bad = || Status::invalid_argument("ticket is not watch/key|prefix/<revision>/<key>");
        let rest = ticket.strip_prefix(b"watch/").ok_or_else(bad)?;
        let (prefix, rest) = match (rest.strip_prefix(b"key/"), rest.strip_prefix(b"prefix/")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => return Err(bad()),
        };
        let slash = rest.iter().position(|&b| b == b'/').ok_or_else(bad)?;
        let start_revision = std::str::from_utf8(&rest[..slash]).ok().and_then(|r| r.parse().ok()).ok_or_else(bad)?;
        Ok(WatchTicket { prefix, start_revision, key: Bytes::copy_from_slice(&rest[slash + 1..]) })
    }

    pub fn encode(&self) -> Vec<u8> {
        let kind = if self.prefix { "prefix" } else { "key" };
        let mut ticket = format!("watch/{kind}/{}/", self.start_revision).into_bytes();
        ticket.extend_from_slice(&self.key);
        ticket
    }
}

/// A watch's batches: one row per change; a delete has no value; the previous value
/// and its revision are null where the key did not exist.
pub fn watch_schema() -> arrow_schema::SchemaRef {
    use arrow_schema::{DataType, Field};
    Arc::new(arrow_schema::Schema::new(vec![
        Field::new("group", DataType::UInt64, false),
        Field::new("revision", DataType::UInt64, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("key", DataType::Binary, false),
        Field::new("value", DataType::Binary, true),
        Field::new("prev_value", DataType::Binary, true),
        Field::new("prev_revision", DataType::UInt64, true),
    ]))
}

/// What a Flight ticket asks for, for the gate that decides who may have it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transfer {
    /// A named log's records (a client's tail).
    Tail,
    /// A watch's key changes.
    Watch,
    /// Committed entries for a follower's catch-up.
    Entries,
    /// A group's snapshot image.
    Snapshot,
}

/// Decides whether the caller may have a transfer (`server::authorize`).
pub trait TransferGate: Send + Sync + 'static {
    fn allow(&self, identity: Identity, transfer: Transfer) -> Result<(), Status>;
}

/// Records per batch of a log tail.
pub const TAIL_BATCH_RECORDS_MAX: u32 = 1024;
/// Snapshot and entry transfers a node serves at once; more are refused (the
/// follower tries again).
pub const SERVED_TRANSFERS_MAX: usize = 8;
/// Log tails a node serves at once; more are refused.
pub const TAILS_MAX: usize = 256;
/// How often a tail that has caught up looks for new records.
const TAIL_POLL: Duration = Duration::from_millis(20);

/// Serves this node's snapshot files (and, given a record source, log tails) over Flight.
#[derive(Clone)]
pub struct FlightEndpoint {
    /// Snapshot directory of each shard; group g lives on shard g mod shards.
    snapshot_dirs: Arc<Vec<PathBuf>>,
    records: Option<Arc<dyn RecordSource>>,
    changes: Option<Arc<dyn ChangeSource>>,
    entries: Option<Arc<dyn EntrySource>>,
    /// Without one, every caller may have everything (tests of the transfer itself).
    gate: Option<Arc<dyn TransferGate>>,
    tails: Arc<tokio::sync::Semaphore>,
    transfers: Arc<tokio::sync::Semaphore>,
    pub faults: Arc<TransferFaults>,
}

impl FlightEndpoint {
    pub fn new(snapshot_dirs: Vec<PathBuf>) -> FlightEndpoint {
        FlightEndpoint {
            snapshot_dirs: Arc::new(snapshot_dirs),
            records: None,
            changes: None,
            entries: None,
            gate: None,
            tails: Arc::new(tokio::sync::Semaphore::new(TAILS_MAX)),
            transfers: Arc::new(tokio::sync::Semaphore::new(SERVED_TRANSFERS_MAX)),
            faults: Arc::default(),
        }
    }

    pub fn with_records(self, records: Arc<dyn RecordSource>) -> FlightEndpoint {
        FlightEndpoint { records: Some(records), ..self }
    }

    pub fn with_changes(self, changes: Arc<dyn ChangeSource>) -> FlightEndpoint {
        FlightEndpoint { changes: Some(changes), ..self }
    }

    pub fn with_entries(self, entries: Arc<dyn EntrySource>) -> FlightEndpoint {
        FlightEndpoint { entries: Some(entries), ..self }
    }

    pub fn with_gate(self, gate: Arc<dyn TransferGate>) -> FlightEndpoint {
        FlightEndpoint { gate: Some(gate), ..self }
    }

    fn allow<T>(&self, request: &Request<T>, transfer: Transfer) -> Result<(), Status> {
        match &self.gate {
            Some(gate) => gate.allow(identity_of(request), transfer),
            None => Ok(()),
        }
    }

    async fn entry_stream(&self, ticket: &str) -> Result<BoxStream<FlightData>, Status> {
        let bad = || Status::invalid_argument("ticket is not entries/<group>/<from>/<to>");
        let mut parts = ticket.strip_prefix("entries/").ok_or_else(bad)?.split('/');
        let mut number = || parts.next().and_then(|p| p.parse::<u64>().ok()).ok_or_else(bad);
        let (group, from, to) = (number()?, number()?, number()?);
        let source = self.entries.clone().ok_or_else(|| Status::unimplemented("this endpoint serves no entries"))?;
        let permit = self.transfer_permit()?;
        // The first read fixes the term every later read must still be leader in.
        let first = source.entries(group, from, to).await?;
        let (term, commit, prev_term) = (first.term, first.commit, first.prev_term);
        let schema = entries_schema(term, commit, prev_term);
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD_CHUNKS);
        let batch_schema = schema.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut range = first;
            loop {
                let Some(last) = range.entries.last().map(|e| e.index) else { return };
                if tx.send(Ok(entries_batch(&batch_schema, &range.entries))).await.is_err() || last >= to {
                    return;
                }
                range = match source.entries(group, last + 1, to).await {
                    Ok(next) if next.term == term => next,
                    Ok(_) => return, // Leadership moved on: the follower has what it got.
                    Err(status) => {
                        let _ = tx.send(Err(FlightError::Tonic(Box::new(status)))).await;
                        return;
                    }
                };
            }
        });
        let batches = tokio_stream::wrappers::ReceiverStream::new(rx);
        let flight = FlightDataEncoderBuilder::new().with_schema(schema).build(batches);
        Ok(Box::pin(flight.map_err(|e| Status::aborted(e.to_string()))))
    }

    fn tail(&self, ticket: &str) -> Result<BoxStream<FlightData>, Status> {
        let bad = || Status::invalid_argument("ticket is not log/<from>/<name>");
        let (from, name) = ticket.strip_prefix("log/").and_then(|t| t.split_once('/')).ok_or_else(bad)?;
        let from: u64 = from.parse().map_err(|_| bad())?;
        if name.is_empty() {
            return Err(bad());
        }
        let source = self.records.clone().ok_or_else(|| Status::unimplemented("this endpoint serves no logs"))?;
        let permit = self
            .tails
            .clone()
            .try_acquire_owned()
            .map_err(|_| Status::resource_exhausted(format!("{TAILS_MAX} log tails already open here")))?;
        let name = name.to_string();
        let schema = tail_schema();
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD_CHUNKS);
        let batch_schema = schema.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut next = from.max(1);
            loop {
                let records = match source.records(&name, next, TAIL_BATCH_RECORDS_MAX).await {
                    Ok(records) => records,
                    Err(status) => {
                        let _ = tx.send(Err(FlightError::Tonic(Box::new(status)))).await;
                        return;
                    }
                };
                if records.is_empty() {
                    if tx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(TAIL_POLL).await;
                    continue;
                }
                let indexes = UInt64Array::from_iter_values(next..next + records.len() as u64);
                let data = BinaryArray::from_iter_values(records.iter());
                next += records.len() as u64;
                let batch = RecordBatch::try_new(batch_schema.clone(), vec![Arc::new(indexes), Arc::new(data)])
                    .expect("the columns match the schema");
                if tx.send(Ok(batch)).await.is_err() {
                    return; // The client went away.
                }
            }
        });
        let batches = tokio_stream::wrappers::ReceiverStream::new(rx);
        let flight = FlightDataEncoderBuilder::new().with_schema(schema).build(batches);
        Ok(Box::pin(flight.map_err(|e| Status::aborted(e.to_string()))))
    }

    fn transfer_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.transfers.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!("{SERVED_TRANSFERS_MAX} transfers already served here; retry"))
        })
    }

    fn snapshot_path(&self, group: GroupId, index: Index) -> Result<PathBuf, Status> {
        let dir = &self.snapshot_dirs[(group % self.snapshot_dirs.len() as u64) as usize];
        let prefix = format!("{group:06}-{index:020}-");
        let found = std::fs::read_dir(dir).ok().and_then(|entries| {
            entries.filter_map(Result::ok).map(|e| e.path()).find(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name.starts_with(&prefix) && name.ends_with(".arrow")
            })
        });
        found.ok_or_else(|| Status::not_found(format!("no snapshot of group {group} at index {index} here")))
    }
}

fn entries_schema(term: u64, commit: u64, prev_term: u64) -> arrow_schema::SchemaRef {
    let metadata = std::collections::HashMap::from([
        ("quarry.term".to_string(), term.to_string()),
        ("quarry.commit".to_string(), commit.to_string()),
        ("quarry.prev_term".to_string(), prev_term.to_string()),
    ]);
    Arc::new(arrow_schema::Schema::new_with_metadata(
        vec![
            arrow_schema::Field::new("index", arrow_schema::DataType::UInt64, false),
            arrow_schema::Field::new("term", arrow_schema::DataType::UInt64, false),
            arrow_schema::Field::new("entry", arrow_schema::DataType::Binary, false),
        ],
        metadata,
    ))
}

fn entries_batch(schema: &arrow_schema::SchemaRef, entries: &[Entry]) -> RecordBatch {
    use prost::Message as _;
    let index = UInt64Array::from_iter_values(entries.iter().map(|e| e.index));
    let term = UInt64Array::from_iter_values(entries.iter().map(|e| e.term));
    let encoded: Vec<Vec<u8>> = entries.iter().map(|e| encode_entry(e).encode_to_vec()).collect();
    let entry = BinaryArray::from_iter_values(encoded.iter());
    RecordBatch::try_new(schema.clone(), vec![Arc::new(index), Arc::new(term), Arc::new(entry)])
        .expect("the columns match the schema")
}

/// What a bulk catch-up delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaughtUp {
    pub entries: u64,
}

/// Pulls the entries a catch-up offer names from the leader behind `channel` and
/// hands each batch to `deliver` as the append that leader could have sent (its
/// term, the previous index and term, the entries, its commit index); stops early
/// when `deliver` refuses one.
pub async fn pull_entries(
    channel: Channel,
    leader: NodeId,
    me: NodeId,
    offer: &CatchUp,
    mut deliver: impl FnMut(Message) -> bool,
) -> Result<CaughtUp, Status> {
    use prost::Message as _;
    let malformed = |what: &str| Status::data_loss(format!("catch-up stream: {what}"));
    let ticket = Ticket { ticket: format!("entries/{}/{}/{}", offer.group, offer.from, offer.to).into() };
    let response = FlightServiceClient::new(channel).do_get(ticket).await?;
    let mut batches = FlightRecordBatchStream::new_from_flight_data(
        response.into_inner().map_err(|s| FlightError::Tonic(Box::new(s))),
    );
    let mut caught_up = CaughtUp::default();
    // (leader term, commit, previous index, previous term) for the next append.
    let mut next: Option<(u64, u64, u64, u64)> = None;
    while let Some(batch) = batches.next().await {
        let batch = batch.map_err(|e| Status::aborted(e.to_string()))?;
        let (term, commit, prev_index, prev_term) = match next {
            Some(n) => n,
            None => {
                let metadata = batches.schema().map(|s| s.metadata().clone()).unwrap_or_default();
                let get = |k: &str| metadata.get(k).and_then(|v| v.parse::<u64>().ok());
                let (Some(term), Some(commit), Some(prev_term)) =
                    (get("quarry.term"), get("quarry.commit"), get("quarry.prev_term"))
                else {
                    return Err(malformed("no term, commit or previous term"));
                };
                (term, commit, offer.from - 1, prev_term)
            }
        };
        let Some(encoded) = batch.columns().get(2).and_then(|c| c.as_any().downcast_ref::<BinaryArray>()) else {
            return Err(malformed("no entry column"));
        };
        let mut entries = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let entry = proto::Entry::decode(encoded.value(row)).map_err(|_| malformed("undecodable entry"))?;
            let entry = decode_entry(entry).map_err(|e| malformed(&e.to_string()))?;
            if entry.index != prev_index + 1 + row as u64 {
                return Err(malformed("entries out of order"));
            }
            entries.push(entry);
        }
        let Some((last_index, last_term)) = entries.last().map(|e| (e.index, e.term)) else { continue };
        let count = entries.len() as u64;
        let kind = MessageKind::Append { prev_index, prev_term, entries, commit };
        if !deliver(Message { from: leader, to: me, term, kind }) {
            break;
        }
        caught_up.entries += count;
        next = Some((term, commit, last_index, last_term));
    }
    Ok(caught_up)
}

/// A log tail's batches: each record with its index in the named log.
pub fn tail_schema() -> arrow_schema::SchemaRef {
    Arc::new(arrow_schema::Schema::new(vec![
        arrow_schema::Field::new("index", arrow_schema::DataType::UInt64, false),
        arrow_schema::Field::new("data", arrow_schema::DataType::Binary, false),
    ]))
}

/// A stream's error as the caller should see it: a status from the source keeps its
/// code (a watch's OUT_OF_RANGE, say).
fn status_of_flight(e: FlightError) -> Status {
    match e {
        FlightError::Tonic(status) => *status,
        other => Status::aborted(other.to_string()),
    }
}

fn parse_ticket(ticket: &[u8]) -> Result<(GroupId, Index, u64), Status> {
    let bad = || Status::invalid_argument("ticket is not snapshot/<group>/<index>/<offset>");
    let text = std::str::from_utf8(ticket).map_err(|_| bad())?;
    let mut parts = text.strip_prefix("snapshot/").ok_or_else(bad)?.split('/');
    let mut number = || parts.next().and_then(|p| p.parse::<u64>().ok()).ok_or_else(bad);
    let parsed = (number()?, number()?, number()?);
    Ok(parsed)
}

fn ticket(group: GroupId, index: Index, offset: u64) -> Ticket {
    Ticket { ticket: format!("snapshot/{group}/{index}/{offset}").into() }
}

/// Streams the file's chunks from `offset` into `tx`, paced, with the test faults.
fn stream_chunks(
    path: &Path,
    offset: u64,
    faults: &TransferFaults,
    tx: &tokio::sync::mpsc::Sender<Result<RecordBatch, FlightError>>,
    reader: arrow_ipc::reader::FileReader<std::fs::File>,
) -> Result<(), FlightError> {
    let (started, mut sent_bytes, mut sent_chunks) = (Instant::now(), 0u64, 0usize);
    let mut found_offset = false;
    for batch in reader {
        let batch = batch?;
        let start =
            batch.column(0).as_any().downcast_ref::<UInt64Array>().filter(|a| !a.is_empty()).map(|a| a.value(0));
        let Some(start) = start else {
            return Err(FlightError::ProtocolError(format!("{} has a chunk without an offset", path.display())));
        };
        if start < offset {
            continue;
        }
        if !found_offset && start != offset {
            return Err(FlightError::ProtocolError(format!("offset {offset} is not a chunk boundary")));
        }
        found_offset = true;
        if faults.fail_after_chunks.load(Ordering::Relaxed) == sent_chunks {
            faults.fail_after_chunks.store(usize::MAX, Ordering::Relaxed);
            return Err(FlightError::ProtocolError("injected: transfer cut".into()));
        }
        let batch = if faults.corrupt_chunk.load(Ordering::Relaxed) == sent_chunks {
            faults.corrupt_chunk.store(usize::MAX, Ordering::Relaxed);
            corrupt(batch)
        } else {
            batch
        };
        sent_bytes += batch.column(1).as_any().downcast_ref::<BinaryArray>().map_or(0, |d| d.values().len()) as u64;
        sent_chunks += 1;
        if tx.blocking_send(Ok(batch)).is_err() {
            return Ok(()); // The receiver went away.
        }
        let due = Duration::from_secs_f64(sent_bytes as f64 / TRANSFER_BYTES_PER_SEC);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    if !found_offset && offset > 0 {
        return Err(FlightError::ProtocolError(format!("offset {offset} is past the image")));
    }
    Ok(())
}

/// The batch with one byte of its data flipped (test fault).
fn corrupt(batch: RecordBatch) -> RecordBatch {
    let Some(data) = batch.column(1).as_any().downcast_ref::<BinaryArray>() else { return batch };
    let mut bytes = data.value(0).to_vec();
    if let Some(b) = bytes.first_mut() {
        *b ^= 0xff;
    }
    let mut columns = batch.columns().to_vec();
    columns[1] = Arc::new(BinaryArray::from_vec(vec![&bytes[..]]));
    RecordBatch::try_new(batch.schema(), columns).unwrap_or(batch)
}

pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn unimplemented<T>(what: &str) -> Result<T, Status> {
    Err(Status::unimplemented(format!("Flight {what} is not offered; DoGet serves snapshots")))
}

#[tonic::async_trait]
impl FlightService for FlightEndpoint {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoExchangeStream = BoxStream<FlightData>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;

    async fn do_get(&self, request: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        if let Some(ticket) = std::str::from_utf8(&request.get_ref().ticket).ok().filter(|t| t.starts_with("entries/"))
        {
            self.allow(&request, Transfer::Entries)?;
            return self.entry_stream(ticket).await.map(Response::new);
        }
        if request.get_ref().ticket.starts_with(b"watch/") {
            self.allow(&request, Transfer::Watch)?;
            let ticket = WatchTicket::parse(&request.get_ref().ticket)?;
            let source =
                self.changes.clone().ok_or_else(|| Status::unimplemented("this endpoint serves no watches"))?;
            let batches = source.watch(ticket, request.extensions().get::<ConnInfo>().cloned())?;
            let batches = batches.map_err(|s| FlightError::Tonic(Box::new(s)));
            let flight = FlightDataEncoderBuilder::new().with_schema(watch_schema()).build(batches);
            return Ok(Response::new(Box::pin(flight.map_err(status_of_flight))));
        }
        if let Some(tail) = std::str::from_utf8(&request.get_ref().ticket).ok().filter(|t| t.starts_with("log/")) {
            self.allow(&request, Transfer::Tail)?;
            return self.tail(tail).map(Response::new);
        }
        self.allow(&request, Transfer::Snapshot)?;
        let (group, index, offset) = parse_ticket(&request.get_ref().ticket)?;
        let path = self.snapshot_path(group, index)?;
        let permit = self.transfer_permit()?;
        {
            let mut offsets = self.faults.requested_offsets.lock().expect("faults lock");
            if offsets.len() >= REQUESTS_REMEMBERED {
                offsets.remove(0);
            }
            offsets.push(offset);
        }
        let opened = path.clone();
        let reader = tokio::task::spawn_blocking(move || {
            std::fs::File::open(&opened)
                .map_err(|e| e.to_string())
                .and_then(|f| arrow_ipc::reader::FileReader::try_new(f, None).map_err(|e| e.to_string()))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::not_found(format!("{}: {e}", path.display())))?;
        let schema = reader.schema();
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD_CHUNKS);
        let faults = self.faults.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            if let Err(e) = stream_chunks(&path, offset, &faults, &tx, reader) {
                let _ = tx.blocking_send(Err(e));
            }
        });
        let batches = tokio_stream::wrappers::ReceiverStream::new(rx);
        let flight = FlightDataEncoderBuilder::new().with_schema(schema).build(batches);
        Ok(Response::new(Box::pin(flight.map_err(|e| Status::aborted(e.to_string())))))
    }

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        unimplemented("Handshake")
    }
    async fn list_flights(&self, _: Request<Criteria>) -> Result<Response<Self::ListFlightsStream>, Status> {
        unimplemented("ListFlights")
    }
    async fn get_flight_info(&self, _: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        unimplemented("GetFlightInfo")
    }
    async fn poll_flight_info(&self, _: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        unimplemented("PollFlightInfo")
    }
    async fn get_schema(&self, _: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        unimplemented("GetSchema")
    }
    async fn do_put(&self, _: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        unimplemented("DoPut")
    }
    async fn do_exchange(&self, _: Request<Streaming<FlightData>>) -> Result<Response<Self::DoExchangeStream>, Status> {
        unimplemented("DoExchange")
    }
    async fn do_action(&self, _: Request<Action>) -> Result<Response<Self::DoActionStream>, Status> {
        unimplemented("DoAction")
    }
    async fn list_actions(&self, _: Request<Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        unimplemented("ListActions")
    }
}

/// Why a pull stopped: worth resuming (a cut stream, a bad chunk) or not (the sender
/// has no such snapshot, or serves another one).
enum PullError {
    Retry(SnapshotError),
    Fatal(SnapshotError),
}

impl From<SnapshotError> for PullError {
    fn from(e: SnapshotError) -> Self {
        PullError::Retry(e)
    }
}

/// Pulls the image an offer describes from the node behind `channel`, resuming after
/// failures; returns it only once it is whole and matches the offer.
pub async fn fetch_snapshot(channel: Channel, offer: &SnapshotOffer) -> Result<Bytes, SnapshotError> {
    let manifest = Manifest { group: offer.group, meta: offer.meta.clone(), size: offer.size, crc32: offer.crc32 };
    let mut assembler = Assembler::new(manifest);
    let mut failures = 0;
    loop {
        let error = match pull(&channel, &mut assembler).await {
            Ok(()) if assembler.received() == offer.size => return assembler.finish().map(|(_, image)| image),
            Ok(()) => {
                SnapshotError::Corrupt(format!("stream ended at byte {} of {}", assembler.received(), offer.size))
            }
            Err(PullError::Retry(e)) => e,
            Err(PullError::Fatal(e)) => return Err(e),
        };
        failures += 1;
        if failures >= FETCH_ATTEMPTS_MAX {
            return Err(error);
        }
        tokio::time::sleep(FETCH_BACKOFF * failures).await;
    }
}

/// One DoGet from where the assembler stands, pushing every chunk it yields.
async fn pull(channel: &Channel, assembler: &mut Assembler) -> Result<(), PullError> {
    let transfer = |e: &dyn std::fmt::Display| SnapshotError::Corrupt(format!("transfer: {e}"));
    let m = assembler.manifest();
    let request = ticket(m.group, m.meta.index, assembler.received());
    let response = match FlightServiceClient::new(channel.clone()).do_get(request).await {
        Ok(response) => response,
        Err(s) if s.code() == tonic::Code::NotFound => return Err(PullError::Fatal(transfer(&s))),
        Err(s) => return Err(PullError::Retry(transfer(&s))),
    };
    let mut batches = FlightRecordBatchStream::new_from_flight_data(
        response.into_inner().map_err(|s| FlightError::Tonic(Box::new(s))),
    );
    let mut checked_schema = false;
    while let Some(batch) = batches.next().await {
        let batch = batch.map_err(|e| transfer(&e))?;
        if !checked_schema {
            let served = batches.schema().map(|s| Manifest::from_schema(s)).transpose()?;
            if served.as_ref() != Some(assembler.manifest()) {
                let e = SnapshotError::Corrupt("the sender serves another snapshot than it offered".into());
                return Err(PullError::Fatal(e));
            }
            checked_schema = true;
        }
        assembler.push(&batch)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: crate::fuzz_cases(512), ..Default::default() })]

        /// Any ticket, well-formed prefix or not, is answered with a stream or an
        /// error: never a panic, whatever numbers or bytes follow. `PROPTEST_CASES`
        /// raises the count for a long run.
        #[test]
        fn watch_tickets_round_trip_any_key(
            prefix in proptest::prelude::any::<bool>(),
            start_revision in proptest::prelude::any::<u64>(),
            key in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let ticket = WatchTicket { prefix, start_revision, key: Bytes::from(key) };
            proptest::prop_assert_eq!(WatchTicket::parse(&ticket.encode()).ok(), Some(ticket));
        }

        #[test]
        fn forged_tickets_are_answered_never_panicked_on(
            prefix in proptest::sample::select(vec!["", "snapshot/", "entries/", "log/", "watch/key/", "watch/prefix/", "watch/"]),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            numbers in proptest::collection::vec(proptest::prelude::any::<u64>(), 0..5),
        ) {
            let dir = tempfile::tempdir().expect("temp dir");
            let endpoint = FlightEndpoint::new(vec![dir.path().to_path_buf()]);
            let mut ticket = prefix.as_bytes().to_vec();
            let joined: Vec<String> = numbers.iter().map(u64::to_string).collect();
            ticket.extend_from_slice(joined.join("/").as_bytes());
            ticket.extend_from_slice(&tail);
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let answer = runtime.block_on(endpoint.do_get(Request::new(Ticket { ticket: ticket.into() })));
            if let Ok(response) = answer {
                // A stream that starts must end (no such snapshot or log here).
                let items = runtime.block_on(response.into_inner().take(4).collect::<Vec<_>>());
                proptest::prop_assert!(items.len() <= 4);
            }
        }
    }
}
