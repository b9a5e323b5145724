//! One shard on its own glommio executor thread, fed through a bounded inbox.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::log::GroupId;
use crate::raft::{ConfChange, Message, NodeId};
use crate::shard::driver::LocalShard;
use crate::shard::{EntryRange, GroupStatus, Query, Reply, RequestError, Shard, ShardConfig, TurnStats};
use crate::snapshot::Manifest;
use crate::state::{BuiltinState, Command, Outcome};
use crate::transport::peer::{Outgoing, PeerLinks};

use super::metrics::Metrics;
use super::watch::WatchHub;

/// Requests queued for a shard; past it, senders are told the node is overloaded.
pub const INBOX_MAX: usize = 16_384;
/// Inputs taken per turn, so a flood cannot starve ticks and fsyncs.
const INPUTS_PER_TURN_MAX: usize = 4096;

pub enum ShardInput {
    Peer {
        group: GroupId,
        message: Message,
    },
    Propose {
        group: GroupId,
        command: Command,
        reply: Reply<Outcome>,
    },
    Read {
        group: GroupId,
        query: Query<BuiltinState>,
        reply: Reply<Bytes>,
        serializable: bool,
    },
    Status {
        reply: flume::Sender<Vec<GroupStatus>>,
    },
    /// A membership change of one group (at its leader).
    ConfChange {
        group: GroupId,
        change: ConfChange,
        reply: Reply<Outcome>,
    },
    TransferLeader {
        group: GroupId,
        to: NodeId,
        reply: flume::Sender<Result<(), RequestError>>,
    },
    /// A snapshot of the group now, for a backup (at its leader).
    SnapshotNow {
        group: GroupId,
        reply: Reply<Manifest>,
    },
    /// Committed entries for a follower's bulk catch-up (see `Shard::read_entries`).
    ReadEntries {
        group: GroupId,
        from: u64,
        to: u64,
        reply: flume::Sender<Result<EntryRange, RequestError>>,
    },
}

impl ShardInput {
    /// Answers the input's caller with `why` instead of carrying it out.
    pub fn refuse(self, why: RequestError) {
        match self {
            ShardInput::Peer { .. } => {} // Raft retransmits.
            ShardInput::Propose { reply, .. } | ShardInput::ConfChange { reply, .. } => reply.send(Err(why)),
            ShardInput::Read { reply, .. } => reply.send(Err(why)),
            ShardInput::SnapshotNow { reply, .. } => reply.send(Err(why)),
            ShardInput::Status { .. } => {} // The caller sees the channel close.
            ShardInput::TransferLeader { reply, .. } => drop(reply.try_send(Err(why))),
            ShardInput::ReadEntries { reply, .. } => drop(reply.try_send(Err(why))),
        }
    }
}

/// The exit status of a node whose shard failed (EX_SOFTWARE).
pub const SHARD_FAILED_EXIT: i32 = 70;

/// A shard failed (its log, a snapshot file, a panic): the node stops at once with the
/// cause on stderr, rather than listening on without the shard, so that the service
/// manager restarts it (recovery runs again and says what it finds) and the operator
/// sees why. Nothing acknowledged is lost by stopping: acknowledgements follow
/// fdatasync, and clients waiting on the shard learn their outcome is unknown.
pub fn fail_node(shard: &str, cause: &str) -> ! {
    tracing::error!("{shard} failed: {cause}; stopping the node (exit status {SHARD_FAILED_EXIT})");
    std::process::exit(SHARD_FAILED_EXIT)
}

/// What a shard thread shares with the rest of the node.
pub struct ShardHost {
    pub links: PeerLinks,
    pub metrics: Arc<Metrics>,
    pub watch_hub: Arc<WatchHub>,
}

/// Starts the shard's thread (on `cpu` alone, if given). It runs until every sender of
/// `inbox` is dropped.
pub fn spawn(
    name: String,
    config: ShardConfig,
    tick: Duration,
    cpu: Option<usize>,
    inbox: flume::Receiver<ShardInput>,
    ShardHost { links, metrics, watch_hub }: ShardHost,
) -> std::io::Result<glommio::ExecutorJoinHandle<Result<(), String>>> {
    let thread_name = name.clone();
    let placement = cpu.map_or(glommio::Placement::Unbound, glommio::Placement::Fixed);
    glommio::LocalExecutorBuilder::new(placement)
        .name(&thread_name)
        .spawn(move || async move {
            super::session::defer_wakes_on_this_thread();
            let result = match LocalShard::<BuiltinState>::open(config) {
                Ok(mut shard) => run(&mut shard, tick, inbox, links, &metrics, &watch_hub).await,
                Err(e) => Err(format!("cannot recover: {e}")),
            };
            if let Err(cause) = &result {
                fail_node(&name, cause);
            }
            result
        })
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// What woke the shard's loop.
enum Woken {
    Input(Result<ShardInput, flume::RecvError>),
    Flushed(Box<crate::shard::driver::Flushed>),
    Tick,
}

async fn run(
    shard: &mut LocalShard<BuiltinState>,
    tick: Duration,
    inbox: flume::Receiver<ShardInput>,
    links: PeerLinks,
    metrics: &Metrics,
    watch_hub: &WatchHub,
) -> Result<(), String> {
    let failed = |e: crate::shard::ShardError| format!("shard failed: {e}");
    let mut next_tick = Instant::now() + tick;
    let mut liveness_checked = Instant::now();
    loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        let woken = futures_lite::future::or(
            // A finished flush first: a flood of inputs must not hold back acknowledgements.
            futures_lite::future::or(async { Woken::Flushed(Box::new(shard.flushed().await)) }, async {
                Woken::Input(inbox.recv_async().await)
            }),
            async {
                glommio::timer::sleep(wait).await;
                Woken::Tick
            },
        )
        .await;
        let started = Instant::now();
        let mut stats = TurnStats::default();
        match woken {
            Woken::Input(Err(_)) => {
                // Every sender is gone: finish the flushes under way and shut down
                // (not waiting for disk space: what waits for it was never acknowledged).
                while shard.flush_in_flight() {
                    let flushed = shard.flushed().await;
                    shard.on_flushed(flushed).map_err(failed)?;
                }
                return Ok(());
            }
            Woken::Input(Ok(input)) => handle(shard, input, metrics),
            Woken::Flushed(flushed) => stats.add(&shard.on_flushed(*flushed).map_err(failed)?),
            Woken::Tick => shard.retry_flush().map_err(failed)?,
        }
        for input in inbox.try_iter().take(INPUTS_PER_TURN_MAX) {
            handle(shard, input, metrics);
        }
        if Instant::now() >= next_tick {
            let now = Instant::now();
            for (peer, incarnation) in links.heard_since(liveness_checked) {
                shard.heard_from(peer, incarnation);
            }
            liveness_checked = now;
            shard.tick();
            next_tick = Instant::now() + tick;
        }
        stats.add(&shard.stage().map_err(failed)?);
        send(shard, &links);
        if watch_hub.watchers() > 0 {
            watch_hub.publish(shard.applied_indexes());
        }
        super::session::wake_deferred();
        metrics.turn_seconds.observe(started.elapsed().as_secs_f64());
        record(metrics, &stats);
    }
}

fn record(metrics: &Metrics, stats: &TurnStats) {
    metrics.snapshots_taken.inc_by(stats.snapshots_taken);
    metrics.snapshots_installed.inc_by(stats.snapshots_installed);
    metrics.log_entries.inc_by(stats.entries_written);
    metrics.leader_changes.inc_by(stats.leader_changes);
    if stats.commits > 0 {
        metrics.commit_seconds.observe(stats.commit_micros as f64 / 1e6 / stats.commits as f64);
    }
    if stats.entries_applied > 0 {
        metrics.apply_seconds.observe(stats.apply_micros as f64 / 1e6);
    }
    if stats.fdatasyncs > 0 {
        metrics.fdatasyncs.inc_by(stats.fdatasyncs);
        metrics.readies_per_fdatasync.observe(stats.readies as f64 / stats.fdatasyncs as f64);
        metrics.fdatasync_seconds.observe(stats.flush_micros as f64 / 1e6 / stats.fdatasyncs as f64);
    }
}

/// Hands the turn's messages and catch-up invitations to the peers' queues.
fn send(shard: &mut Shard<BuiltinState>, links: &PeerLinks) {
    let mut catch_up = shard.take_catch_up();
    for (to, messages) in shard.take_outbox() {
        links.send(to, Outgoing { messages, catch_up: catch_up.remove(&to).unwrap_or_default() });
    }
    for (to, catch_up) in catch_up {
        links.send(to, Outgoing { messages: Vec::new(), catch_up });
    }
}

fn handle(shard: &mut Shard<BuiltinState>, input: ShardInput, metrics: &Metrics) {
    if let ShardInput::Propose { .. } = input {
        metrics.proposals.inc();
    }
    match input {
        ShardInput::Peer { group, message } => {
            // The transport validated the message's shape; the core refuses what does
            // not fit. The first refusal is logged with its cause, the rest counted.
            if let Err(refused) = shard.step(group, message) {
                if metrics.peer_messages_refused.inc() == 0 {
                    tracing::warn!(
                        group,
                        "refused a peer message: {refused} (further refusals are counted in \
                         quarry_peer_messages_refused_total)"
                    );
                }
            }
        }
        ShardInput::Propose { group, command, reply } => shard.propose(group, &command, reply),
        ShardInput::Read { group, query, reply, serializable: false } => shard.read(group, query, reply),
        ShardInput::Read { group, query, reply, serializable: true } => {
            reply.send(shard.read_local(group, query));
        }
        ShardInput::Status { reply } => {
            let _ = reply.try_send(shard.status());
        }
        ShardInput::ConfChange { group, change, reply } => shard.propose_conf_change(group, change, reply),
        ShardInput::SnapshotNow { group, reply } => shard.snapshot_now(group, reply),
        ShardInput::TransferLeader { group, to, reply } => {
            let _ = reply.try_send(shard.transfer_leader(group, to));
        }
        ShardInput::ReadEntries { group, from, to, reply } => {
            let _ = reply.try_send(shard.read_entries(group, from, to));
        }
    }
}
