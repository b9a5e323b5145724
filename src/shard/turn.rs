//! A shard's turn: stage every busy group's Ready, make the log durable (the host
//! does the I/O), then acknowledge.

use super::requests::{apply, fail_pending, serve_confirmed_reads};
use super::{snapshots, GroupId, Shard, ShardError};
use crate::log::{FlushJob, LogError, LogStore};
use crate::raft::{Entry, HardState, Index, Message, Role, Term};
use crate::state::{Outcome, StateMachine};

/// What a turn wrote and applied, kept only when the shard records a trace.
#[derive(Clone, Debug)]
pub enum TraceEvent {
    /// A leader's snapshot installed in place of the group's log.
    Installed { group: GroupId, index: Index, term: Term },
    /// Entries written to the group's log (the first may replace a suffix).
    Appended { group: GroupId, entries: Vec<Entry> },
    /// A hard state written to the group's log.
    HardState { group: GroupId, hard_state: HardState },
    /// A committed entry applied: for a command, its writer's (client, sequence) and
    /// the outcome the state machine gave.
    Applied { group: GroupId, index: Index, identity: Option<(u64, u64)>, outcome: Option<Outcome> },
}

/// A staged turn waiting for its writes to be durable: per group, the Ready number
/// and the messages to send once it is.
#[must_use = "a staged turn must be acknowledged with on_durable"]
#[derive(Debug)]
pub struct Staged {
    acks: Vec<(GroupId, u64, Vec<Message>)>,
    /// The log's staged ticket after this turn's writes: durable once the log's
    /// durable ticket reaches it.
    pub ticket: u64,
    pub stats: TurnStats,
}

/// What one turn did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TurnStats {
    /// Group Readies carried out.
    pub readies: usize,
    pub fdatasyncs: u64,
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
    /// Log entries written (appended or replaced) for all groups.
    pub entries_written: u64,
    /// Groups whose leader changed, as this node learned.
    pub leader_changes: u64,
    /// Writes proposed here that were applied and answered, and their microseconds
    /// from proposal to that point, together.
    pub commits: u64,
    pub commit_micros: u64,
    /// Committed entries applied to the state machines, and the microseconds that took.
    pub entries_applied: u64,
    pub apply_micros: u64,
    /// Microseconds the turn's log flushes (write and fdatasync) took, together.
    pub flush_micros: u64,
}

impl Staged {
    /// Folds a later turn into this one, for a host that waits for both to be durable
    /// (its disk is full): acknowledgements are cumulative and stay in order.
    pub fn absorb(&mut self, later: Staged) {
        assert!(later.ticket >= self.ticket, "staged tickets go forward");
        self.acks.extend(later.acks);
        self.ticket = later.ticket;
        self.stats.add(&later.stats);
    }
}

impl TurnStats {
    pub fn add(&mut self, other: &TurnStats) {
        self.readies += other.readies;
        self.fdatasyncs += other.fdatasyncs;
        self.snapshots_taken += other.snapshots_taken;
        self.snapshots_installed += other.snapshots_installed;
        self.entries_written += other.entries_written;
        self.leader_changes += other.leader_changes;
        self.flush_micros += other.flush_micros;
        self.commits += other.commits;
        self.commit_micros += other.commit_micros;
        self.entries_applied += other.entries_applied;
        self.apply_micros += other.apply_micros;
    }
}

impl<S: StateMachine + Default> Shard<S> {
    /// The first half of a turn: writes every busy group's Ready to the log (not yet
    /// durable), applies what committed and answers its clients, and asks for the
    /// snapshots that are due. Messages that need no local persistence (a leader's
    /// appends to followers, heartbeats) are in the outbox now: sending them before
    /// the log is durable lets followers write in parallel with the leader.
    pub fn stage(&mut self) -> Result<Staged, ShardError> {
        let mut acks = Vec::new();
        let mut entries_written = 0;
        let (mut entries_applied, mut apply_micros, mut commits, mut commit_micros) = (0, 0, 0, 0);
        let mut new_votes = Vec::new();
        let (taken_before, installed_before) = (self.snapshots_taken, self.snapshots_installed);
        let leader_changes_before = self.leader_changes;
        self.finish_snapshot_writes()?;
        for group in std::mem::take(&mut self.touched) {
            let Some(g) = self.groups.get_mut(&group) else { continue };
            g.touched = false;
            while g.raft.has_ready() {
                let ready = g.raft.ready();
                if ready.soft_state.is_some_and(|s| s.role != Role::Leader) {
                    fail_pending(g);
                }
                if let Some(leader) = ready.soft_state.and_then(|s| s.leader) {
                    if g.announced_leader != Some(leader) {
                        g.announced_leader = Some(leader);
                        let term = g.raft.term();
                        let text = format!("group {group}: node {leader} leads (term {term})");
                        self.notices.push(super::Notice::info(text));
                        self.leader_changes += 1;
                    }
                }
                if let Some(snapshot) = &ready.snapshot {
                    snapshots::install(&self.log, &self.snapshots, group, g, snapshot)?;
                    let ticket = self.log.borrow().staged_ticket();
                    self.snapshot_releases.push_back((ticket, group, snapshot.meta.index));
                    self.snapshots_installed += 1;
                    let (index, bytes) = (snapshot.meta.index, snapshot.data.len());
                    let text =
                        format!("group {group}: installed the leader's snapshot at index {index} ({bytes} bytes)");
                    self.notices.push(super::Notice::info(text));
                    if let Some(trace) = &mut self.trace {
                        let (index, term) = (snapshot.meta.index, snapshot.meta.term);
                        trace.push(TraceEvent::Installed { group, index, term });
                    }
                }
                if let (Some(trace), false) = (&mut self.trace, ready.entries.is_empty()) {
                    trace.push(TraceEvent::Appended { group, entries: ready.entries.clone() });
                }
                {
                    let mut log = self.log.borrow_mut();
                    log.append(group, &ready.entries)?;
                    entries_written += ready.entries.len() as u64;
                    // A hard state whose only change is the commit index is not
                    // written: it rides along with the next write that must be synced.
                    if let (Some(hard_state), true) = (ready.hard_state, ready.must_sync) {
                        log.set_hard_state(group, hard_state)?;
                        if let Some(trace) = &mut self.trace {
                            trace.push(TraceEvent::HardState { group, hard_state });
                        }
                        if (hard_state.term, hard_state.vote) != g.written_vote {
                            g.written_vote = (hard_state.term, hard_state.vote);
                            new_votes.push((group, hard_state));
                        }
                    }
                }
                for m in ready.messages {
                    self.outbox.entry(m.to).or_default().push((group, m));
                }
                for read in ready.read_states {
                    if let Some(pending) = g.reads.remove(&read.ctx) {
                        g.confirmed.push((read.index, pending));
                    }
                }
                // Committed entries are already durable here and on a quorum: apply and
                // answer now, without waiting for this turn's writes.
                let applying = std::time::Instant::now();
                entries_applied += ready.committed_entries.len() as u64;
                for entry in ready.committed_entries {
                    let index = entry.index;
                    let (identity, outcome) = apply(g, entry);
                    if let Some(trace) = &mut self.trace {
                        trace.push(TraceEvent::Applied { group, index, identity, outcome });
                    }
                }
                apply_micros += applying.elapsed().as_micros() as u64;
                let (count, micros) = std::mem::take(&mut g.committed_since_stats);
                (commits, commit_micros) = (commits + count, commit_micros + micros);
                serve_confirmed_reads(g);
                acks.push((group, ready.number, ready.persisted_messages));
            }
        }
        self.write_votes_again(new_votes)?;
        let busy: Vec<GroupId> = acks.iter().map(|(group, _, _)| *group).collect();
        self.take_due_snapshots(&busy)?;
        let stats = TurnStats {
            readies: acks.len(),
            fdatasyncs: 0,
            snapshots_taken: self.snapshots_taken - taken_before,
            snapshots_installed: self.snapshots_installed - installed_before,
            leader_changes: self.leader_changes - leader_changes_before,
            flush_micros: 0,
            entries_written,
            commits,
            commit_micros,
            entries_applied,
            apply_micros,
        };
        self.end_abstention_if_caught_up();
        Ok(Staged { acks, ticket: self.log.borrow().staged_ticket(), stats })
    }

    /// A new term or vote is written in two flushes, and the messages that vouch for
    /// it (a granted vote, a candidate's own) wait for both. Recovery cuts a damaged
    /// last flush as if it were torn by a crash — it cannot tell the two apart — so a
    /// vote held only there could be forgotten and given again in the same term. With
    /// a second copy in a later flush, damage to that one leaves the first, and damage
    /// to the first is followed by a later flush, which recovery refuses to cut: the
    /// node stops and says so. Votes change only at elections, so this costs one
    /// fdatasync per election, not per write.
    fn write_votes_again(&mut self, votes: Vec<(GroupId, crate::raft::HardState)>) -> Result<(), ShardError> {
        if votes.is_empty() {
            return Ok(());
        }
        let mut log = self.log.borrow_mut();
        log.end_flush();
        for (group, hard_state) in votes {
            log.set_hard_state(group, hard_state)?;
        }
        Ok(())
    }

    /// The next write and fdatasync for the host to carry out, if anything is staged
    /// and no other is in flight.
    pub fn begin_flush(&mut self) -> Result<Option<FlushJob>, ShardError> {
        Ok(self.log.borrow_mut().begin_flush()?)
    }

    /// The outcome of a job from `begin_flush`. A failure stops the shard: after a
    /// failed fdatasync nothing staged can be promised durable.
    pub fn finish_flush(&mut self, job: FlushJob, result: Result<(), LogError>) -> Result<(), ShardError> {
        self.log.borrow_mut().finish_flush(job, result)?;
        self.fdatasyncs += 1;
        self.release_durably_replaced_files()
    }

    /// Whether everything `staged` wrote is durable.
    pub fn is_durable(&self, staged: &Staged) -> bool {
        self.log.borrow().durable_ticket() >= staged.ticket
    }

    /// The second half of a turn, once its writes are durable: each group learns its
    /// Ready is durable and the messages that waited for it (votes, append
    /// acknowledgements) join the outbox. Turns must be acknowledged in order.
    pub fn on_durable(&mut self, staged: Staged) -> TurnStats {
        assert!(self.is_durable(&staged), "turn acknowledged before its writes are durable");
        let Staged { acks, stats, .. } = staged;
        for (group, number, persisted_messages) in acks {
            for m in persisted_messages {
                self.outbox.entry(m.to).or_default().push((group, m));
            }
            self.rouse(group).expect("group exists").raft.advance(number);
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use futures_lite::future::block_on;

    use crate::log::fault::FaultyDisk;
    use crate::log::io::SegmentWriter;
    use crate::log::ShardLogConfig;
    use crate::raft::KnownCommit;
    use crate::raft::{Config, MessageKind, Storage};
    use crate::shard::{Shard, ShardConfig};
    use crate::state::BuiltinState;

    use super::*;

    /// Carries out every flush `staged` needs; returns where each was written.
    fn make_durable(
        shard: &mut Shard<BuiltinState>,
        writer: &mut SegmentWriter<FaultyDisk>,
        staged: Staged,
    ) -> Vec<(std::path::PathBuf, u64)> {
        let mut flushes = Vec::new();
        while !shard.is_durable(&staged) {
            let job = shard.begin_flush().expect("log healthy").expect("writes staged");
            block_on(writer.execute(&job)).expect("written");
            flushes.push((job.path.clone(), job.offset));
            shard.finish_flush(job, Ok(())).expect("recorded");
        }
        shard.on_durable(staged);
        flushes
    }

    fn config(dir: &Path) -> ShardConfig {
        ShardConfig {
            node: 1,
            groups: vec![0],
            voters: vec![1, 2, 3],
            raft: Config::new(1),
            log: ShardLogConfig { segment_bytes: 64 << 10, ..ShardLogConfig::new(dir.join("log")) },
            snapshot_dir: dir.join("snapshots"),
            snapshot_distance: 0,
        }
    }

    /// Node 1 grants node 2 its vote in term 5; returns where the flushes that made it
    /// durable went, and what node 1 sent once they were.
    fn grant_a_vote(dir: &Path) -> (Vec<(std::path::PathBuf, u64)>, Vec<Message>) {
        let mut shard = Shard::<BuiltinState>::open(config(dir)).expect("opens");
        let mut writer = SegmentWriter::new(FaultyDisk::default());
        let request =
            MessageKind::Vote { last_index: 1, last_term: 1, transfer: false, commit: KnownCommit::default() };
        shard.step(0, Message { from: 2, to: 1, term: 5, kind: request }).expect("valid");
        let staged = shard.stage().expect("stages");
        assert!(shard.take_outbox().is_empty(), "a vote leaves only once durable");
        let flushes = make_durable(&mut shard, &mut writer, staged);
        let sent = shard.take_outbox().into_values().flatten().map(|(_, m)| m).collect();
        (flushes, sent)
    }

    /// Flips one bit in the first batch of the flush written at `offset`.
    fn damage((path, offset): &(std::path::PathBuf, u64)) {
        let mut bytes = std::fs::read(path).expect("segment");
        bytes[*offset as usize + 40] ^= 0x04;
        std::fs::write(path, &bytes).expect("damaged");
    }

    /// A vote is written in two flushes and granted only once both are durable, so
    /// damage to the last flush (which recovery cuts like a torn write) cannot make
    /// the node forget it and vote again in the same term.
    #[test]
    fn a_vote_survives_damage_to_the_last_flush() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (flushes, granted) = grant_a_vote(dir.path());
        assert_eq!(flushes.len(), 2, "the vote is in two flushes");
        assert!(matches!(
            granted[..],
            [Message { to: 2, term: 5, kind: MessageKind::VoteResponse { reject: false, .. }, .. }]
        ));

        damage(flushes.last().expect("two flushes"));
        let mut shard = Shard::<BuiltinState>::open(config(dir.path())).expect("recovers, cutting the damage");
        let (hard_state, _) = shard.raft(0).expect("hosted").storage().initial_state();
        assert_eq!((hard_state.term, hard_state.vote), (5, Some(2)), "the vote survived");
        assert!(shard.raft(0).expect("hosted").is_abstaining(), "a flipped bit is damage, not a torn write");
        let rival = MessageKind::Vote { last_index: 1, last_term: 1, transfer: false, commit: KnownCommit::default() };
        shard.step(0, Message { from: 3, to: 1, term: 5, kind: rival }).expect("valid");
        let staged = shard.stage().expect("stages");
        make_durable(&mut shard, &mut SegmentWriter::new(FaultyDisk::default()), staged);
        let refused: Vec<Message> = shard.take_outbox().into_values().flatten().map(|(_, m)| m).collect();
        assert!(
            matches!(refused[..], [Message { to: 3, kind: MessageKind::VoteResponse { reject: true, .. }, .. }]),
            "no second vote in term 5: {refused:?}"
        );
    }

    /// Damage to the first of the two flushes is followed by the second: recovery
    /// refuses the log instead of cutting it.
    #[test]
    fn damage_before_a_later_flush_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (flushes, _) = grant_a_vote(dir.path());
        damage(flushes.first().expect("a flush"));
        let refused = Shard::<BuiltinState>::open(config(dir.path())).err().expect("damage is refused");
        assert!(refused.to_string().contains("corrupt log"), "{refused}");
    }

    fn sent(shard: &mut Shard<BuiltinState>) -> Vec<Message> {
        shard.take_outbox().into_values().flatten().map(|(_, m)| m).collect()
    }

    /// A flipped bit in the last flush may have taken entries the node acknowledged:
    /// every group abstains, across restarts (after new flushes have overwritten the
    /// damage), until the leader's fresh commit index is reached.
    #[test]
    fn damage_to_the_last_flush_makes_every_group_abstain_until_caught_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (flushes, _) = grant_a_vote(dir.path());
        damage(flushes.last().expect("a flush"));
        let marker = dir.path().join("log").join("ABSTAINING");

        let mut shard = Shard::<BuiltinState>::open(config(dir.path())).expect("recovers");
        assert!(shard.raft(0).expect("hosted").is_abstaining());
        assert!(marker.exists(), "the decision is durable before anything is written");
        let heartbeat = MessageKind::Heartbeat { commit: 1, round: 1, quiesce: false };
        shard.step(0, Message { from: 2, to: 1, term: 5, kind: heartbeat }).expect("valid");
        let staged = shard.stage().expect("stages");
        make_durable(&mut shard, &mut SegmentWriter::new(FaultyDisk::default()), staged);
        drop(shard);

        let mut shard = Shard::<BuiltinState>::open(config(dir.path())).expect("recovers");
        assert!(shard.raft(0).expect("hosted").is_abstaining(), "still abstaining after a restart");
        let rival = MessageKind::Vote { last_index: 9, last_term: 5, transfer: false, commit: KnownCommit::default() };
        shard.step(0, Message { from: 3, to: 1, term: 6, kind: rival }).expect("valid");
        let staged = shard.stage().expect("stages");
        make_durable(&mut shard, &mut SegmentWriter::new(FaultyDisk::default()), staged);
        assert!(
            matches!(
                sent(&mut shard)[..],
                [Message { to: 3, kind: MessageKind::VoteResponse { reject: true, .. }, .. }]
            ),
            "no vote while abstaining"
        );
        drop(shard);
        let mut shard = Shard::<BuiltinState>::open(config(dir.path())).expect("recovers");
        assert_eq!(shard.log.borrow().recovered_damage(), None, "new flushes overwrote the damage");
        assert!(shard.raft(0).expect("hosted").is_abstaining(), "the marker keeps the group abstaining");

        let heartbeat = MessageKind::Heartbeat { commit: 1, round: 2, quiesce: false };
        shard.step(0, Message { from: 2, to: 1, term: 6, kind: heartbeat }).expect("valid");
        shard.tick();
        let staged = shard.stage().expect("stages");
        make_durable(&mut shard, &mut SegmentWriter::new(FaultyDisk::default()), staged);
        let nonce = sent(&mut shard)
            .into_iter()
            .find_map(|m| match m.kind {
                MessageKind::CommitQuery { nonce, .. } => Some(nonce),
                _ => None,
            })
            .expect("asks the leader for its commit index");
        let answer = MessageKind::CommitAnswer { nonce, commit: 1 };
        shard.step(0, Message { from: 2, to: 1, term: 6, kind: answer }).expect("valid");
        let staged = shard.stage().expect("stages");
        make_durable(&mut shard, &mut SegmentWriter::new(FaultyDisk::default()), staged);
        assert!(!shard.raft(0).expect("hosted").is_abstaining(), "caught up");
        assert!(!marker.exists(), "the marker goes once every group caught up");
    }

    /// A full disk stops no node: the flush that found no room for a new segment is
    /// kept as it was, new writes are refused with a clear error, and once space is
    /// back the same flush completes and what waited on it goes out.
    #[test]
    fn a_full_disk_refuses_writes_and_resumes_when_space_is_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut shard = Shard::<BuiltinState>::open(config(dir.path())).expect("opens");
        let mut writer = SegmentWriter::new(FaultyDisk::default());
        writer.files_mut().no_space = true;
        let request =
            MessageKind::Vote { last_index: 1, last_term: 1, transfer: false, commit: KnownCommit::default() };
        shard.step(0, Message { from: 2, to: 1, term: 5, kind: request }).expect("valid");
        let staged = shard.stage().expect("stages");
        let job = shard.begin_flush().expect("healthy").expect("a flush");
        let result = block_on(writer.execute(&job));
        assert!(matches!(result, Err(LogError::NoSpace { .. })), "{result:?}");
        shard.finish_flush(job, result).expect("a full disk is not a failure");
        assert!(!shard.is_durable(&staged));
        assert!(shard.disk_full().is_some());

        let (reply, answer) = flume::bounded(1);
        let operation = crate::state::Operation::Delete { key: "k".into() };
        let command = crate::state::Command { client: 1, sequence: 1, operation };
        shard.propose(0, &command, reply);
        let refused = answer.try_recv().expect("answered at once");
        assert!(matches!(refused, Err(crate::group::RequestError::DiskFull(_))), "{refused:?}");
        assert!(sent(&mut shard).is_empty(), "the vote waits for its flush");

        writer.files_mut().no_space = false;
        let flushes = make_durable(&mut shard, &mut writer, staged);
        assert!(!flushes.is_empty());
        assert_eq!(shard.disk_full(), None);
        assert!(matches!(
            sent(&mut shard)[..],
            [Message { to: 2, term: 5, kind: MessageKind::VoteResponse { reject: false, .. }, .. }]
        ));
    }
}
