//! Watches: a client's stream of every put and delete of a key, or of the keys under
//! a prefix, served from this node's replica.
//!
//! Each group's state keeps its recent changes (`state::ChangeHistory`). A watcher
//! keeps, per group it watches, the next revision it wants, and reads the changes
//! from there on the shard thread whenever the shard says the group applied
//! something (`WatchHub`). Reads end between revisions, so a batch's changes are never
//! split, and a position is always "everything below it was sent": a client that
//! resumes anywhere from its positions misses and repeats nothing.
//!
//! Everything is bounded: watchers per node and per connection, changes and bytes per
//! answer, answers buffered per watcher. A watcher that takes no answer for
//! `STALL_MAX` is cancelled; one whose position falls out of the history (it read too
//! slowly) is told the oldest revision held, as is one that asks for an older one.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, Notify};
use tokio_stream::Stream;
use tonic::Status;

use super::members::is_system_key;
use super::router::{status_of, Router};
use crate::group::RequestError;
use crate::log::GroupId;
use crate::proto;
use crate::raft::Index;
use crate::state::{Change, Compacted, KeyFilter, ReadBounds, StateMachine, KEY_MAX_BYTES};
use crate::tls::OpenRequests;

/// Watchers one node serves at once.
pub const WATCHERS_MAX: usize = 1024;
/// Watchers one connection may hold.
pub const WATCHERS_PER_CONNECTION_MAX: usize = 64;
/// Answers waiting for a slow reader, per watcher (plus one slot kept for the answer
/// that cancels it).
const ANSWERS_BUFFERED: usize = 8;
/// Changes and bytes (keys and values, about) per answer.
const ANSWER_CHANGES_MAX: usize = 1024;
const ANSWER_BYTES_MAX: usize = 1 << 20;
/// Changes one read looks through, matching or not, before it yields the shard.
const SCANNED_PER_READ_MAX: usize = 16_384;
/// The first pause before reading again from a shard whose queue was full.
const OVERLOADED_PAUSE: Duration = Duration::from_millis(5);
/// How often positions that moved without a matching change are reported.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// A watcher that cannot hand over an answer for this long is cancelled.
const STALL_MAX: Duration = Duration::from_secs(30);
/// Metadata on a compaction error: the oldest revision the node holds.
pub const OLDEST_REVISION_KEY: &str = "x-quarry-oldest-revision";

/// What the shards tell watchers: each group's applied index, and a wake-up when one
/// moves. Shards publish only while someone watches.
pub struct WatchHub {
    applied: Vec<AtomicU64>,
    changed: Notify,
    watchers: AtomicUsize,
    /// Watchers per connection (by the address of its shared request counter).
    per_connection: Mutex<HashMap<usize, usize>>,
    /// `quarry_watchers`.
    gauge: Gauge,
}

impl WatchHub {
    pub fn new(groups: u64, gauge: Gauge) -> Arc<WatchHub> {
        Arc::new(WatchHub {
            applied: (0..groups).map(|_| AtomicU64::new(0)).collect(),
            changed: Notify::new(),
            watchers: AtomicUsize::new(0),
            per_connection: Mutex::default(),
            gauge,
        })
    }

    pub fn watchers(&self) -> usize {
        self.watchers.load(Ordering::SeqCst)
    }

    /// A shard's groups after its turn: wakes the watchers if one moved.
    pub fn publish(&self, applied: impl Iterator<Item = (GroupId, Index)>) {
        let mut moved = false;
        for (group, index) in applied {
            if let Some(slot) = self.applied.get(group as usize) {
                if slot.swap(index, Ordering::SeqCst) != index {
                    moved = true;
                }
            }
        }
        if moved {
            self.changed.notify_waiters();
        }
    }

    fn applied(&self, group: GroupId) -> Index {
        self.applied.get(group as usize).map_or(0, |a| a.load(Ordering::SeqCst))
    }

    /// A place for one more watcher, or why there is none.
    fn admit(self: &Arc<Self>, connection: Option<Arc<OpenRequests>>) -> Result<WatcherSlot, Status> {
        let key = connection.as_ref().map(|c| Arc::as_ptr(c) as usize);
        let mut per_connection = self.per_connection.lock().expect("watch hub lock");
        if self.watchers.load(Ordering::SeqCst) >= WATCHERS_MAX {
            return Err(Status::resource_exhausted(format!("{WATCHERS_MAX} watchers already open on this node")));
        }
        if let Some(key) = key {
            let count = per_connection.entry(key).or_default();
            if *count >= WATCHERS_PER_CONNECTION_MAX {
                return Err(Status::resource_exhausted(format!(
                    "{WATCHERS_PER_CONNECTION_MAX} watchers already open on this connection"
                )));
            }
            *count += 1;
        }
        self.watchers.fetch_add(1, Ordering::SeqCst);
        self.gauge.inc();
        Ok(WatcherSlot { hub: self.clone(), connection: connection.zip(key) })
    }
}

/// A watcher's place in the bounds, given back when it ends.
struct WatcherSlot {
    hub: Arc<WatchHub>,
    /// Held so that the counter's address names this connection while counted.
    connection: Option<(Arc<OpenRequests>, usize)>,
}

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        let mut per_connection = self.hub.per_connection.lock().expect("watch hub lock");
        if let Some((_, key)) = &self.connection {
            if let Some(count) = per_connection.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    per_connection.remove(key);
                }
            }
        }
        self.hub.watchers.fetch_sub(1, Ordering::SeqCst);
        self.hub.gauge.dec();
    }
}

/// What a watcher asked for, checked.
#[derive(Clone, Debug)]
pub struct WatchSpec {
    pub filter: KeyFilter,
    pub groups: Vec<GroupId>,
    /// The next revision wanted in each watched group; 0: from now.
    pub from: BTreeMap<GroupId, u64>,
    pub prev_values: bool,
}

impl WatchSpec {
    pub fn from_request(req: &proto::WatchRequest, router: &Router) -> Result<WatchSpec, Status> {
        let key = req.key.clone();
        if key.len() > KEY_MAX_BYTES {
            return Err(Status::invalid_argument(format!("key of {} bytes exceeds {KEY_MAX_BYTES}", key.len())));
        }
        if is_system_key(&key) {
            return Err(Status::invalid_argument("keys starting with 0xFFFF are reserved for Quarry's own records"));
        }
        let (filter, groups): (_, Vec<GroupId>) = if req.prefix {
            (KeyFilter::Prefix(key), (0..router.groups).collect())
        } else if key.is_empty() {
            return Err(Status::invalid_argument("empty key (to watch every key, watch the empty prefix)"));
        } else {
            let group = router.group_of(&key);
            (KeyFilter::Key(key), vec![group])
        };
        if let Some(group) = req.resume.keys().find(|g| !groups.contains(g)) {
            return Err(Status::invalid_argument(format!(
                "resume names group {group}, which this watch does not cover"
            )));
        }
        let from = groups.iter().map(|&g| (g, req.resume.get(&g).copied().unwrap_or(req.start_revision))).collect();
        Ok(WatchSpec { filter, groups, from, prev_values: req.prev_value })
    }
}

/// One answer to a watcher: changes (with their group), and positions.
#[derive(Clone, Debug, Default)]
pub struct WatchBatch {
    pub changes: Vec<(GroupId, Change)>,
    pub progress: Vec<(GroupId, u64)>,
}

impl WatchBatch {
    pub fn to_proto(&self, prev_values: bool) -> proto::WatchResponse {
        let events = self.changes.iter().map(|(group, c)| event_of(*group, c, prev_values)).collect();
        proto::WatchResponse { events, progress: self.progress.iter().copied().collect() }
    }
}

fn event_of(group: GroupId, change: &Change, prev_values: bool) -> proto::WatchEvent {
    use proto::watch_event::Kind;
    let kind = if change.value.is_some() { Kind::Put } else { Kind::Delete };
    let prev = change.prev.as_ref().filter(|_| prev_values);
    proto::WatchEvent {
        kind: kind as i32,
        group,
        revision: change.revision,
        key: change.key.clone(),
        value: change.value.clone().unwrap_or_default(),
        has_prev: prev.is_some(),
        prev_value: prev.map(|p| p.value.clone()).unwrap_or_default(),
        prev_revision: prev.map_or(0, |p| p.revision),
    }
}

/// Changes as a record batch of `transport::flight::watch_schema`.
pub fn record_batch(changes: &[(GroupId, Change)]) -> arrow_array::RecordBatch {
    use arrow_array::{BinaryArray, StringArray, UInt64Array};
    let group = UInt64Array::from_iter_values(changes.iter().map(|(g, _)| *g));
    let revision = UInt64Array::from_iter_values(changes.iter().map(|(_, c)| c.revision));
    let kind =
        StringArray::from_iter_values(changes.iter().map(|(_, c)| if c.value.is_some() { "PUT" } else { "DELETE" }));
    let key = BinaryArray::from_iter_values(changes.iter().map(|(_, c)| &c.key));
    let value = BinaryArray::from_iter(changes.iter().map(|(_, c)| c.value.as_deref()));
    let prev_value = BinaryArray::from_iter(changes.iter().map(|(_, c)| c.prev.as_ref().map(|p| p.value.as_ref())));
    let prev_revision = UInt64Array::from_iter(changes.iter().map(|(_, c)| c.prev.as_ref().map(|p| p.revision)));
    let columns: Vec<arrow_array::ArrayRef> = vec![
        Arc::new(group),
        Arc::new(revision),
        Arc::new(kind),
        Arc::new(key),
        Arc::new(value),
        Arc::new(prev_value),
        Arc::new(prev_revision),
    ];
    arrow_array::RecordBatch::try_new(crate::transport::flight::watch_schema(), columns)
        .expect("the columns match the schema")
}

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchBatch, Status>> + Send>>;

/// Starts a watcher; its answers come on the stream until the caller drops it or
/// the watcher is cancelled (the stream's last item then says why).
pub fn start(router: &Router, spec: WatchSpec, connection: Option<Arc<OpenRequests>>) -> Result<WatchStream, Status> {
    let slot = router.watch_hub().admit(connection)?;
    let (tx, rx) = mpsc::channel(ANSWERS_BUFFERED + 1);
    let watcher = Watcher { router: router.clone(), spec, tx };
    tokio::spawn(async move {
        let _slot = slot;
        if let Err(reason) = watcher.run().await {
            // A slot is always free for this: answers never take the last one.
            let _ = watcher.tx.try_send(Err(reason));
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

struct Watcher {
    router: Router,
    spec: WatchSpec,
    tx: mpsc::Sender<Result<WatchBatch, Status>>,
}

/// Why a watcher stopped without an error to report: its client went away.
struct Gone;

impl Watcher {
    /// Serves the watcher; `Ok` when the client went away, `Err` with the reason it
    /// was cancelled.
    async fn run(&self) -> Result<(), Status> {
        let hub = self.router.watch_hub();
        let mut next = BTreeMap::new();
        for (&group, &from) in &self.spec.from {
            let from = match from {
                0 => self.read(group, |s| s.last_applied() + 1).await?,
                from => from,
            };
            next.insert(group, from);
        }
        let first = WatchBatch { changes: Vec::new(), progress: next.iter().map(|(&g, &n)| (g, n)).collect() };
        if self.send(first).await.is_err() {
            return Ok(());
        }
        let mut reported = next.clone();
        let mut reported_at = Instant::now();
        let mut first_round = true;
        loop {
            let notified = hub.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut more = false;
            for &group in &self.spec.groups {
                let from = next[&group];
                if !first_round && hub.applied(group) < from {
                    continue;
                }
                let (filter, bounds) = (self.spec.filter.clone(), read_bounds());
                let read = self.read(group, move |s| s.changes_since(from, &filter, bounds)).await?;
                let read = read.map_err(|c| compacted(group, c, self.router.node, !first_round))?;
                more |= !read.caught_up;
                next.insert(group, read.next);
                let changes: Vec<_> =
                    read.changes.into_iter().filter(|c| !is_system_key(&c.key)).map(|c| (group, c)).collect();
                if !changes.is_empty() {
                    reported.insert(group, read.next);
                    if self.send(WatchBatch { changes, progress: vec![(group, read.next)] }).await.is_err() {
                        return Ok(());
                    }
                }
            }
            first_round = false;
            if more {
                continue;
            }
            if reported_at.elapsed() >= PROGRESS_EVERY {
                let moved: Vec<_> =
                    next.iter().filter(|(g, n)| reported.get(g) != Some(n)).map(|(&g, &n)| (g, n)).collect();
                reported_at = Instant::now();
                if !moved.is_empty() {
                    reported.extend(moved.iter().copied());
                    if self.send(WatchBatch { changes: Vec::new(), progress: moved }).await.is_err() {
                        return Ok(());
                    }
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(PROGRESS_EVERY) => {}
                _ = self.tx.closed() => return Ok(()),
            }
        }
    }

    /// Runs `f` on the group's state on its shard thread; a shard too busy to take the
    /// read is asked again after a pause (the watcher falls behind, it is not cut off).
    async fn read<T: Send + 'static>(
        &self,
        group: GroupId,
        f: impl Fn(&crate::state::BuiltinState) -> T + Send + Sync + 'static,
    ) -> Result<T, Status> {
        let f = Arc::new(f);
        let mut pause = OVERLOADED_PAUSE;
        loop {
            let f = f.clone();
            match self.router.read_local_with(group, move |s| f(s)).await {
                Err(RequestError::Overloaded(_)) if !self.tx.is_closed() => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(PROGRESS_EVERY);
                }
                result => return result.map_err(status_of),
            }
        }
    }

    /// Hands an answer over, keeping the last slot free for a cancellation; a reader
    /// that takes nothing for `STALL_MAX` is cancelled.
    async fn send(&self, batch: WatchBatch) -> Result<(), Gone> {
        match tokio::time::timeout(STALL_MAX, self.tx.reserve_many(2)).await {
            Ok(Ok(mut permits)) => {
                permits.next().expect("two permits reserved").send(Ok(batch));
                Ok(())
            }
            Ok(Err(_)) => Err(Gone),
            Err(_) => {
                let why = format!(
                    "watch cancelled: it took no answer for {} s; watch again from the positions it last reported",
                    STALL_MAX.as_secs()
                );
                let _ = self.tx.try_send(Err(Status::resource_exhausted(why)));
                Err(Gone)
            }
        }
    }
}

fn read_bounds() -> ReadBounds {
    ReadBounds { max_changes: ANSWER_CHANGES_MAX, max_bytes: ANSWER_BYTES_MAX, max_scanned: SCANNED_PER_READ_MAX }
}

/// The error for a revision no longer held: OUT_OF_RANGE, naming the oldest one.
fn compacted(group: GroupId, c: Compacted, node: u64, fell_behind: bool) -> Status {
    let what = if fell_behind { "watch cancelled: it fell behind and " } else { "" };
    let mut status = Status::out_of_range(format!(
        "{what}revision {} of group {group} is compacted from node {node}'s watch history; the oldest revision held \
         is {} (read the current values with a range, then watch from there)",
        c.asked, c.oldest
    ));
    if let Ok(value) = c.oldest.to_string().parse() {
        status.metadata_mut().insert(OLDEST_REVISION_KEY, value);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchers_are_bounded_per_connection_and_per_node_and_give_their_place_back() {
        let hub = WatchHub::new(4, Gauge::default());
        let connection = Arc::new(OpenRequests::default());
        let held: Vec<_> =
            (0..WATCHERS_PER_CONNECTION_MAX).map(|_| hub.admit(Some(connection.clone())).unwrap()).collect();
        let refused = hub.admit(Some(connection.clone())).err().expect("past the connection's bound");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        let elsewhere = hub.admit(Some(Arc::new(OpenRequests::default()))).expect("another connection may");
        drop(held);
        assert_eq!((hub.watchers(), hub.gauge.get()), (1, 1));
        let again = hub.admit(Some(connection)).expect("places given back");
        let rest: Vec<_> = (2..WATCHERS_MAX).map(|_| hub.admit(None).unwrap()).collect();
        assert_eq!(hub.admit(None).err().expect("past the node's bound").code(), tonic::Code::ResourceExhausted);
        drop((elsewhere, again, rest));
        assert_eq!(hub.watchers(), 0);
        assert!(hub.per_connection.lock().unwrap().is_empty());
    }
}
