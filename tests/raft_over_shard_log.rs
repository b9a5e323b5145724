//! Raft groups hosted over one shard log per node, the way a shard will run them:
//! each turn takes every group's Ready, writes them all, makes them durable with one
//! fdatasync, then acknowledges. Three nodes, several groups; one node restarts from
//! its log and catches up.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;
use quarry::log::io::{flush_one, SegmentWriter};
use quarry::log::{GroupId, GroupStorage, LogStore, ShardLog, ShardLogConfig};
use quarry::raft::{bootstrap_state, Config, EntryPayload, Message, NodeId, RaftNode, Role};

use common::{run_glommio, TempDir};

const GROUPS: GroupId = 4;
const VOTERS: [NodeId; 3] = [1, 2, 3];

struct Host {
    log: Rc<RefCell<ShardLog>>,
    writer: SegmentWriter,
    groups: BTreeMap<GroupId, RaftNode<GroupStorage<ShardLog>>>,
    applied: BTreeMap<GroupId, Vec<Bytes>>,
    fdatasyncs: u64,
}

fn start_host(id: NodeId, dir: &Path, bootstrap: bool) -> Host {
    let log = Rc::new(RefCell::new(
        ShardLog::open(ShardLogConfig::new(dir)).expect("log opens"),
    ));
    if bootstrap {
        for group in 0..GROUPS {
            let (entry, hard_state) = bootstrap_state(VOTERS);
            log.borrow_mut()
                .append(group, &[entry])
                .expect("bootstrap entry");
            log.borrow_mut()
                .set_hard_state(group, hard_state)
                .expect("bootstrap hard state");
        }
    }
    let groups = (0..GROUPS)
        .map(|group| {
            let mut config = Config::new(id);
            config.seed = id * 1000 + group;
            let storage = GroupStorage {
                log: log.clone(),
                group,
            };
            (group, RaftNode::new(config, storage).expect("node starts"))
        })
        .collect();
    Host {
        log,
        writer: SegmentWriter::default(),
        groups,
        applied: BTreeMap::new(),
        fdatasyncs: 0,
    }
}

/// One shard loop turn: all Readies written, one flush, then acknowledged.
async fn turn(host: &mut Host, outbox: &mut Vec<(GroupId, Message)>) {
    let mut pending = Vec::new();
    for (&group, node) in host.groups.iter_mut() {
        while node.has_ready() {
            let ready = node.ready();
            let mut log = host.log.borrow_mut();
            if let Some(snapshot) = &ready.snapshot {
                log.install_snapshot(group, snapshot.meta.clone())
                    .expect("install");
            }
            log.append(group, &ready.entries).expect("append");
            if let Some(hard_state) = ready.hard_state {
                log.set_hard_state(group, hard_state).expect("hard state");
            }
            outbox.extend(ready.messages.into_iter().map(|m| (group, m)));
            pending.push((
                group,
                ready.number,
                ready.persisted_messages,
                ready.committed_entries,
            ));
        }
    }
    while flush_one(&host.log, &mut host.writer)
        .await
        .expect("flush")
        .is_some()
    {
        host.fdatasyncs += 1;
    }
    for (group, number, persisted_messages, committed) in pending {
        outbox.extend(persisted_messages.into_iter().map(|m| (group, m)));
        let applied = host.applied.entry(group).or_default();
        applied.extend(committed.into_iter().filter_map(|e| match e.payload {
            EntryPayload::Normal(data) => Some(data),
            _ => None,
        }));
        host.groups.get_mut(&group).expect("group").advance(number);
    }
}

struct Cluster {
    dirs: Vec<PathBuf>,
    hosts: BTreeMap<NodeId, Host>,
    network: Vec<(GroupId, Message)>,
    turns: u64,
}

impl Cluster {
    async fn run(&mut self, turns: u64) {
        for _ in 0..turns {
            self.turns += 1;
            for (group, m) in std::mem::take(&mut self.network) {
                if let Some(host) = self.hosts.get_mut(&m.to) {
                    host.groups
                        .get_mut(&group)
                        .expect("group")
                        .step(m)
                        .expect("valid message");
                }
            }
            for host in self.hosts.values_mut() {
                host.groups.values_mut().for_each(|node| node.tick());
                turn(host, &mut self.network).await;
            }
        }
    }

    fn leader(&self, group: GroupId) -> Option<NodeId> {
        self.hosts
            .iter()
            .find(|(_, h)| h.groups[&group].role() == Role::Leader)
            .map(|(&id, _)| id)
    }

    async fn run_until(&mut self, what: &str, mut done: impl FnMut(&Cluster) -> bool) {
        for _ in 0..500 {
            if done(self) {
                return;
            }
            self.run(1).await;
        }
        panic!("not reached within 500 turns: {what}");
    }

    async fn propose(&mut self, round: u64) {
        for group in 0..GROUPS {
            self.run_until("a leader", |c| c.leader(group).is_some())
                .await;
            let leader = self.leader(group).expect("leader");
            let data = Bytes::from(format!("g{group}-r{round}"));
            let node = self
                .hosts
                .get_mut(&leader)
                .expect("host")
                .groups
                .get_mut(&group)
                .expect("group");
            node.propose(data).expect("leader accepts");
        }
    }
}

fn applied_all(c: &Cluster, id: NodeId, rounds: u64) -> bool {
    let Some(host) = c.hosts.get(&id) else {
        return false;
    };
    (0..GROUPS).all(|g| host.applied.get(&g).map_or(0, |a| a.len() as u64) >= rounds)
}

#[test]
fn groups_commit_over_shard_logs_and_a_restarted_node_recovers() {
    let dirs: Vec<TempDir> = VOTERS
        .iter()
        .map(|id| TempDir::new(&format!("node{id}")))
        .collect();
    let paths: Vec<PathBuf> = dirs.iter().map(|d| d.path().to_path_buf()).collect();
    run_glommio(move || async move {
        let hosts = VOTERS
            .iter()
            .map(|&id| (id, start_host(id, &paths[id as usize - 1], true)))
            .collect();
        let mut c = Cluster {
            dirs: paths,
            hosts,
            network: Vec::new(),
            turns: 0,
        };
        for round in 0..10 {
            c.propose(round).await;
        }
        c.run_until("every node applied 10 rounds", |c| {
            VOTERS.iter().all(|&id| applied_all(c, id, 10))
        })
        .await;

        // Group commit: one fdatasync per turn covered every group's Ready.
        for (id, host) in &c.hosts {
            assert!(
                host.fdatasyncs <= c.turns,
                "node {id}: {} syncs in {} turns",
                host.fdatasyncs,
                c.turns
            );
        }

        // Node 3 stops (its log is durable up to its last turn) while the others go on.
        c.hosts.remove(&3);
        for round in 10..20 {
            c.propose(round).await;
        }
        c.run_until("nodes 1 and 2 applied 20 rounds", |c| {
            applied_all(c, 1, 20) && applied_all(c, 2, 20)
        })
        .await;

        // It restarts from its shard log, replays what it had and catches up.
        let dir = c.dirs[2].clone();
        c.hosts.insert(3, start_host(3, &dir, false));
        c.run_until("node 3 caught up", |c| applied_all(c, 3, 20))
            .await;
        for group in 0..GROUPS {
            let expected = &c.hosts[&1].applied[&group];
            assert_eq!(expected.len(), 20);
            for id in VOTERS {
                assert_eq!(
                    &c.hosts[&id].applied[&group], expected,
                    "group {group} on node {id}"
                );
            }
        }
    });
    drop(dirs);
}
