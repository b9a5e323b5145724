//! Client requests on a shard's groups: writes, membership changes, leadership
//! transfers, snapshots on demand and reads, and how each is answered.

use bytes::Bytes;

use super::{Group, GroupId, PendingRead, Query, Reply, RequestError, Shard};
use crate::log::LogStore;
use crate::raft::{ConfChange, Entry, EntryPayload, NodeId, Role};
use crate::snapshot::Manifest;
use crate::state::{Command, Outcome, StateMachine};

/// Requests for a snapshot now (backups) one group may have waiting.
const SNAPSHOT_REQUESTS_MAX: usize = 16;

impl<S: StateMachine + Default> Shard<S> {
    /// Proposes a write; `reply` hears its outcome once it is committed and applied.
    pub fn propose(&mut self, group: GroupId, command: &Command, reply: impl Into<Reply<Outcome>>) {
        let reply = reply.into();
        if let Err(e) = self.check_disk_space() {
            reply.send(Err(e));
            return;
        }
        let g = match self.group_mut(group) {
            Ok(g) => g,
            Err(e) => return reply.send(Err(e)),
        };
        match g.raft.propose(command.encode()) {
            Ok(proposed) => drop(g.writes.insert(proposed.index, (proposed.term, reply, std::time::Instant::now()))),
            Err(e) => reply.send(Err(e.into())),
        }
    }

    /// Proposes a membership change of one group; `reply` hears `Written { revision }`
    /// with the entry's index once it is applied (the leader then leaves a joint
    /// configuration on its own).
    pub fn propose_conf_change(&mut self, group: GroupId, change: ConfChange, reply: impl Into<Reply<Outcome>>) {
        let reply = reply.into();
        if let Err(e) = self.check_disk_space() {
            reply.send(Err(e));
            return;
        }
        let g = match self.group_mut(group) {
            Ok(g) => g,
            Err(e) => return reply.send(Err(e)),
        };
        match g.raft.propose_conf_change(change) {
            Ok(proposed) => drop(g.writes.insert(proposed.index, (proposed.term, reply, std::time::Instant::now()))),
            Err(e) => reply.send(Err(e.into())),
        }
    }

    /// Starts handing the group's leadership to `to` (a voter); the caller watches
    /// the leader change.
    pub fn transfer_leader(&mut self, group: GroupId, to: NodeId) -> Result<(), RequestError> {
        Ok(self.group_mut(group)?.raft.transfer_leader(to)?)
    }

    /// Hands every group this node leads to its most caught-up active voter (as TiKV
    /// evicts leaders from a store out of space): while the disk is full this node
    /// refuses writes, and its groups stay writable through another leader.
    pub(super) fn hand_off_leadership(&mut self) {
        let me = self.node;
        let led: Vec<GroupId> =
            self.groups.iter().filter(|(_, g)| g.raft.role() == Role::Leader).map(|(&group, _)| group).collect();
        for group in led {
            let Some(g) = self.rouse(group) else { continue };
            let raft = &g.raft;
            let best = raft
                .conf_state()
                .voters
                .iter()
                .filter(|&&v| v != me)
                .filter_map(|&v| raft.progress(v).filter(|p| p.recent_active).map(|p| (p.matched, v)))
                .max();
            if let Some((_, to)) = best {
                let _ = g.raft.transfer_leader(to);
            }
        }
    }

    /// Asks the group's leader for a snapshot covering everything applied so far (so
    /// every write acknowledged before the call); `reply` hears its manifest once the
    /// file is durable. The file can then be fetched over Flight.
    pub fn snapshot_now(&mut self, group: GroupId, reply: impl Into<Reply<Manifest>>) {
        let reply = reply.into();
        let result = self.group_mut(group).and_then(|g| {
            if g.raft.role() != Role::Leader {
                return Err(RequestError::NotLeader { leader: g.raft.leader() });
            }
            Ok(g.state.last_applied())
        });
        let applied = match result {
            Ok(applied) => applied,
            Err(e) => {
                reply.send(Err(e));
                return;
            }
        };
        let base = self.log.borrow().snapshot_meta(group).index;
        if base > 0 && base >= applied {
            reply.send(
                self.snapshots
                    .borrow()
                    .load(group, base)
                    .map(|(m, _)| m)
                    .map_err(|e| RequestError::Refused(format!("snapshot of group {group} at {base} unreadable: {e}"))),
            );
            return;
        }
        let waiting = self.snapshot_requests.entry(group).or_default();
        if waiting.len() >= SNAPSHOT_REQUESTS_MAX {
            reply.send(Err(RequestError::Refused("too many snapshot requests waiting; retry".into())));
            return;
        }
        waiting.push((applied, reply));
    }

    /// A linearizable read: `query` runs once leadership is confirmed and the state
    /// machine has caught up with the read index.
    pub fn read(&mut self, group: GroupId, query: Query<S>, reply: impl Into<Reply<Bytes>>) {
        let reply = reply.into();
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        let g = match self.group_mut(group) {
            Ok(g) => g,
            Err(e) => return reply.send(Err(e)),
        };
        match g.raft.read_index(ctx) {
            Ok(()) => drop(g.reads.insert(ctx, PendingRead { query, reply })),
            Err(e) => reply.send(Err(e.into())),
        }
    }

    /// A serializable read from this replica's state, possibly stale.
    pub fn read_local(&self, group: GroupId, query: Query<S>) -> Result<Bytes, RequestError> {
        let g = self.groups.get(&group).ok_or(RequestError::UnknownGroup(group))?;
        Ok(query(&g.state))
    }
}

/// Applies one committed entry and answers the client that proposed it, if any.
/// Returns the command's (client, sequence), if it was one, and its outcome.
pub(super) fn apply<S: StateMachine>(g: &mut Group<S>, entry: Entry) -> (Option<(u64, u64)>, Option<Outcome>) {
    let (index, entry_term) = (entry.index, entry.term);
    let mut identity = None;
    let outcome = match entry.payload {
        EntryPayload::Normal(data) => Some(match Command::decode(data) {
            Ok(command) => {
                identity = Some((command.client, command.sequence));
                g.state.apply(index, &command)
            }
            // Committed bytes that are not a command (cannot come from this node's
            // own proposals): every replica refuses them the same way.
            Err(e) => {
                g.state.skip(index);
                Outcome::Rejected(format!("undecodable command: {e}"))
            }
        }),
        EntryPayload::ConfChange(_) => {
            g.state.skip(index);
            // Whoever proposed the change learns the index it took effect at.
            Some(Outcome::Written { revision: index })
        }
        EntryPayload::Noop => {
            g.state.skip(index);
            None
        }
    };
    // Writes proposed at or below this index are settled now.
    while let Some(entry) = g.writes.first_entry() {
        if *entry.key() > index {
            break;
        }
        let at = *entry.key();
        let (term, reply, proposed_at) = entry.remove();
        let answer = match &outcome {
            Some(outcome) if at == index && term == entry_term => {
                let (count, micros) = &mut g.committed_since_stats;
                *count += 1;
                *micros += proposed_at.elapsed().as_micros() as u64;
                Ok(outcome.clone())
            }
            _ => Err(RequestError::Dropped),
        };
        reply.send(answer);
    }
    (identity, outcome)
}

pub(super) fn serve_confirmed_reads<S: StateMachine>(g: &mut Group<S>) {
    let applied = g.state.last_applied();
    let mut i = 0;
    while i < g.confirmed.len() {
        if g.confirmed[i].0 <= applied {
            let (_, pending) = g.confirmed.swap_remove(i);
            pending.reply.send(Ok((pending.query)(&g.state)));
        } else {
            i += 1;
        }
    }
}

/// Leadership was lost: pending reads fail; pending writes may still commit, so
/// their outcome is unknown to us.
pub(super) fn fail_pending<S>(g: &mut Group<S>) {
    for (_, pending) in std::mem::take(&mut g.reads) {
        pending.reply.send(Err(RequestError::NotLeader { leader: g.raft.leader() }));
    }
    for (_, (_, reply, _)) in std::mem::take(&mut g.writes) {
        reply.send(Err(RequestError::Unknown));
    }
}
