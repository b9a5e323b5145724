//! Three shards (one per simulated node, in one process) hosting several Raft groups
//! over their own shard logs, with the built-in state machine: writes commit with one
//! fdatasync per turn for all groups, linearizable reads see them, a node restarted
//! from its log catches up, and retried writes apply once.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use quarry::log::{GroupId, ShardLogConfig};
use quarry::raft::{Config, NodeId};
use quarry::shard::driver::LocalShard;
use quarry::shard::{RequestError, ShardConfig};
use quarry::state::{BuiltinState, Command, Operation, Outcome, StateMachine};

use common::{run_glommio, TempDir};

const GROUPS: GroupId = 6;
const VOTERS: [NodeId; 3] = [1, 2, 3];
const TURNS_MAX: usize = 1000;

fn open(node: NodeId, dir: &Path) -> LocalShard<BuiltinState> {
    open_with_snapshots(node, dir, 0)
}

fn open_with_snapshots(node: NodeId, dir: &Path, snapshot_distance: u64) -> LocalShard<BuiltinState> {
    let config = ShardConfig {
        node,
        groups: (0..GROUPS).collect(),
        voters: VOTERS.to_vec(),
        raft: Config { seed: node * 7919, ..Config::new(node) },
        log: ShardLogConfig { segment_bytes: 1 << 20, ..ShardLogConfig::new(dir) },
        snapshot_dir: dir.join("snapshots"),
        snapshot_distance,
    };
    LocalShard::open(config).expect("shard opens")
}

struct Cluster {
    dirs: Vec<PathBuf>,
    shards: BTreeMap<NodeId, LocalShard<BuiltinState>>,
    turns: u64,
}

impl Cluster {
    async fn turn(&mut self) {
        self.turns += 1;
        let mut mail = Vec::new();
        for shard in self.shards.values_mut() {
            shard.tick();
            shard.turn().await.expect("turn");
            mail.extend(shard.take_outbox().into_values().flatten());
        }
        for (group, m) in mail {
            if let Some(shard) = self.shards.get_mut(&m.to) {
                shard.step(group, m).expect("valid message");
            }
        }
    }

    async fn until(&mut self, what: &str, done: impl Fn(&Cluster) -> bool) {
        for _ in 0..TURNS_MAX {
            if done(self) {
                return;
            }
            self.turn().await;
        }
        panic!("not within {TURNS_MAX} turns: {what}");
    }

    async fn leader(&mut self, group: GroupId) -> NodeId {
        self.until("a leader", |c| c.shards.values().any(|s| s.is_leader(group))).await;
        *self.shards.iter().find(|(_, s)| s.is_leader(group)).expect("leader").0
    }

    /// Proposes through the leader and runs turns until the answer arrives.
    async fn write(&mut self, group: GroupId, command: Command) -> Result<Outcome, RequestError> {
        let leader = self.leader(group).await;
        let (tx, rx) = flume::bounded(1);
        self.shards.get_mut(&leader).expect("leader").propose(group, &command, tx);
        for _ in 0..TURNS_MAX {
            if let Ok(answer) = rx.try_recv() {
                return answer;
            }
            self.turn().await;
        }
        panic!("no answer to {command:?}");
    }

    /// Proposes every command through the leader at once; runs turns until all are
    /// answered.
    async fn write_all(&mut self, group: GroupId, commands: Vec<Command>) {
        let leader = self.leader(group).await;
        let answers: Vec<_> = commands
            .iter()
            .map(|command| {
                let (tx, rx) = flume::bounded(1);
                self.shards.get_mut(&leader).expect("leader").propose(group, command, tx);
                rx
            })
            .collect();
        for _ in 0..TURNS_MAX {
            if answers.iter().all(|rx| !rx.is_empty()) {
                for rx in answers {
                    assert!(matches!(rx.try_recv(), Ok(Ok(Outcome::Written { .. }))), "a write failed");
                }
                return;
            }
            self.turn().await;
        }
        panic!("writes to group {group} unanswered");
    }

    async fn read(&mut self, group: GroupId, key: &'static [u8]) -> Option<Bytes> {
        let leader = self.leader(group).await;
        let (tx, rx) = flume::bounded(1);
        let query = Box::new(move |s: &BuiltinState| s.get(key).map(|v| v.value.clone()).unwrap_or_default());
        self.shards.get_mut(&leader).expect("leader").read(group, query, tx);
        for _ in 0..TURNS_MAX {
            if let Ok(answer) = rx.try_recv() {
                let value = answer.expect("read answered");
                return (!value.is_empty()).then_some(value);
            }
            self.turn().await;
        }
        panic!("no answer to read");
    }
}

fn put(client: u64, sequence: u64, key: &'static [u8], value: String) -> Command {
    Command { client, sequence, operation: Operation::Put { key: Bytes::from_static(key), value: Bytes::from(value) } }
}

#[test]
fn shards_replicate_read_restart_and_deduplicate() {
    let dirs: Vec<TempDir> = VOTERS.iter().map(|id| TempDir::new(&format!("shard{id}"))).collect();
    let paths: Vec<PathBuf> = dirs.iter().map(|d| d.path().to_path_buf()).collect();
    run_glommio(move || async move {
        let shards = VOTERS.iter().map(|&id| (id, open(id, &paths[id as usize - 1]))).collect();
        let mut c = Cluster { dirs: paths, shards, turns: 0 };
        for group in 0..GROUPS {
            let outcome = c.write(group, put(0, 0, b"k", format!("v{group}"))).await;
            assert!(matches!(outcome, Ok(Outcome::Written { .. })), "{outcome:?}");
            assert_eq!(c.read(group, b"k").await, Some(Bytes::from(format!("v{group}"))));
        }
        for (id, shard) in &c.shards {
            assert!(shard.fdatasyncs <= c.turns, "node {id}: {} fdatasyncs in {} turns", shard.fdatasyncs, c.turns);
        }

        // A retried write (same client and sequence) applies once and answers the same.
        let append = Command {
            client: 42,
            sequence: 1,
            operation: Operation::Append { log: Bytes::from_static(b"wal"), data: Bytes::from_static(b"r1") },
        };
        let first = c.write(0, append.clone()).await.expect("append");
        let retry = c.write(0, append).await.expect("retry");
        assert_eq!(first, retry);
        let leader = c.leader(0).await;
        assert_eq!(c.shards[&leader].state(0).and_then(|s| s.log_len(b"wal")), Some(1));

        // Node 3 stops; writes go on; it restarts from its log and catches up.
        c.shards.remove(&3);
        for group in 0..GROUPS {
            c.write(group, put(0, 0, b"k", format!("w{group}"))).await.expect("write without node 3");
        }
        let dir = c.dirs[2].clone();
        c.shards.insert(3, open(3, &dir));
        c.until("node 3 caught up", |c| {
            (0..GROUPS).all(|g| {
                let want = c.shards[&1].state(g).map(|s| s.get(b"k").cloned());
                c.shards[&3].state(g).map(|s| s.get(b"k").cloned()) == want
            })
        })
        .await;
        for group in 0..GROUPS {
            let value = c.shards[&3].read_local(
                group,
                Box::new(|s: &BuiltinState| s.get(b"k").map(|v| v.value.clone()).unwrap_or_default()),
            );
            assert_eq!(value, Ok(Bytes::from(format!("w{group}"))));
        }
    });
    drop(dirs);
}

#[test]
fn a_node_behind_compacted_logs_catches_up_by_snapshot_and_restarts_from_one() {
    const DISTANCE: u64 = 40;
    const WRITES_PER_GROUP: u64 = 300;
    let dirs: Vec<TempDir> = VOTERS.iter().map(|id| TempDir::new(&format!("snap{id}"))).collect();
    let paths: Vec<PathBuf> = dirs.iter().map(|d| d.path().to_path_buf()).collect();
    run_glommio(move || async move {
        let shards =
            VOTERS.iter().map(|&id| (id, open_with_snapshots(id, &paths[id as usize - 1], DISTANCE))).collect();
        let mut c = Cluster { dirs: paths, shards, turns: 0 };
        for group in 0..GROUPS {
            c.write(group, put(0, 0, b"k", "before".into())).await.expect("write");
        }
        // Node 3 stops; the others write far past the snapshot distance and compact.
        c.shards.remove(&3);
        for group in 0..GROUPS {
            for chunk in (0..WRITES_PER_GROUP).collect::<Vec<_>>().chunks(20) {
                let commands = chunk
                    .iter()
                    .map(|i| Command {
                        client: 0,
                        sequence: 0,
                        operation: Operation::Put {
                            key: Bytes::from(format!("key-{i}")),
                            value: Bytes::from(format!("{group}/{i}")),
                        },
                    })
                    .collect();
                c.write_all(group, commands).await;
            }
        }
        // Snapshot files are written in the background; a few turns see them done.
        let expected = GROUPS * (WRITES_PER_GROUP / DISTANCE - 1);
        c.until("snapshots written", |c| [1, 2].iter().all(|id| c.shards[id].snapshots_taken >= expected)).await;
        for id in [1, 2] {
            assert!(c.shards[&id].snapshot_disk_bytes() > 0);
        }
        // Node 3 returns: the entries it lacks are gone, so it must install snapshots.
        let dir = c.dirs[2].clone();
        c.shards.insert(3, open_with_snapshots(3, &dir, DISTANCE));
        c.until("node 3 equal to node 1", |c| (0..GROUPS).all(|g| c.shards[&3].state(g) == c.shards[&1].state(g)))
            .await;
        assert!(c.shards[&3].snapshots_installed >= GROUPS, "installed {}", c.shards[&3].snapshots_installed);
        for group in 0..GROUPS {
            let state = c.shards[&3].state(group).expect("hosted");
            assert_eq!(state.get(b"key-299").map(|v| v.value.clone()), Some(Bytes::from(format!("{group}/299"))));
            assert_eq!(state.get(b"k").map(|v| v.value.clone()), Some(Bytes::from("before")));
        }

        // Every node restarts from its latest snapshot (the entries before it are gone
        // from the log, so key-0 can only come from the image), then replays the rest.
        for id in VOTERS {
            c.shards.remove(&id);
            let dir = c.dirs[id as usize - 1].clone();
            c.shards.insert(id, open_with_snapshots(id, &dir, DISTANCE));
            for group in 0..GROUPS {
                let state = c.shards[&id].state(group).expect("hosted");
                assert!(state.last_applied() >= WRITES_PER_GROUP - DISTANCE, "node {id} group {group}");
                assert!(state.get(b"key-0").is_some(), "node {id} group {group} restored without its image");
            }
        }
        c.until("all nodes equal again", |c| {
            (0..GROUPS).all(|g| {
                c.shards[&1].state(g) == c.shards[&2].state(g) && c.shards[&2].state(g) == c.shards[&3].state(g)
            })
        })
        .await;
        for group in 0..GROUPS {
            c.write(group, put(0, 0, b"k", "after".into())).await.expect("write after restart");
            assert_eq!(c.read(group, b"k").await, Some(Bytes::from("after")));
        }
    });
    drop(dirs);
}
