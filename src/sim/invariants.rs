//! Raft's safety properties (Figure 3 of the paper) and the rules behind them, checked
//! for one group across the whole simulated cluster after every step; and what the
//! shard promises on top: every write applied at most once, identical outcomes and
//! state at equal indices, nothing vouched for lost in a crash.

use std::collections::{BTreeMap, HashMap};

use crate::log::{GroupStorage, ShardLog};
use crate::raft::{HardState, Index, Message, MessageKind, NodeId, RaftNode, Role, Term};
use crate::state::Outcome;

use super::hashes::LogHashes;

/// One replica of the group as the checker sees it.
pub struct Replica<'a> {
    pub node: NodeId,
    pub incarnation: u64,
    pub raft: &'a RaftNode<GroupStorage<ShardLog>>,
    pub hashes: &'a LogHashes,
}

/// What of one replica a crash now could not take away, as the simulator tracks it
/// from the writes the shard staged and the tickets its log made durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Durable {
    pub hard_state: HardState,
    /// The last index of the log a crash now would recover (entries or snapshot).
    pub last_index: Index,
}

/// What a node's messages vouched for: a crash must not take it back.
#[derive(Clone, Copy, Debug, Default)]
struct Promise {
    /// The latest vote granted: (term, candidate).
    vote: Option<(Term, NodeId)>,
    /// The latest append acknowledged: (term, index).
    ack: Option<(Term, Index)>,
}

#[derive(Default)]
pub struct Invariants {
    /// Election safety: the one leader each term had.
    leaders: BTreeMap<Term, NodeId>,
    /// Log matching: the prefix hash of every (index, term) ever written anywhere.
    prefixes: HashMap<(Index, Term), u64>,
    /// Committed entries: `committed[i]` is (prefix hash, the term in which index `i`
    /// was first seen committed). Slot 0 is the empty log.
    committed: Vec<(u64, Term)>,
    /// Highest index first seen committed in each term.
    committed_by_term: BTreeMap<Term, Index>,
    /// Leader append-only: per leader, (term, an index it held, its prefix hash).
    leader_marks: BTreeMap<NodeId, (Term, Index, u64)>,
    /// Commit index monotonicity: (incarnation, commit) per node.
    commits: BTreeMap<NodeId, (u64, Index)>,
    /// The commit rule: (incarnation, term led, commit) of each node last seen leading.
    leading: BTreeMap<NodeId, (u64, Term, Index)>,
    /// One vote per term, across restarts: the candidate each node granted in a term.
    votes: BTreeMap<(NodeId, Term), NodeId>,
    promises: BTreeMap<NodeId, Promise>,
    /// Nodes that lost committed entries they had acknowledged to a storage fault: the
    /// commit index each must reach before it may vote or campaign again, and the
    /// (term, vote) it recovered.
    catching_up: BTreeMap<NodeId, (Index, (Term, Option<NodeId>))>,
    /// The outcome every replica must give the entry at an index.
    outcomes: HashMap<Index, Option<Outcome>>,
    /// At most once: per node, the index at which each (client, sequence) took effect.
    effects: HashMap<(NodeId, u64, u64), Index>,
    /// The state machine's image hash at each applied index.
    states: HashMap<Index, u64>,
}

pub type Check = Result<(), String>;

impl Invariants {
    pub fn new() -> Self {
        Invariants { committed: vec![(0, 0)], ..Invariants::default() }
    }

    /// The committed prefix hash at `index` (a snapshot's base).
    pub fn committed_hash(&self, index: Index) -> Option<u64> {
        self.committed.get(index as usize).map(|&(hash, _)| hash)
    }

    /// The highest index known committed anywhere.
    pub fn committed_index(&self) -> Index {
        self.committed.len() as Index - 1
    }

    /// Log matching, checked as entries are written: equal (index, term) means equal
    /// prefixes.
    pub fn on_append(&mut self, node: NodeId, index: Index, term: Term, hash: u64) -> Check {
        match self.prefixes.insert((index, term), hash) {
            Some(old) if old != hash => {
                Err(format!("log matching: node {node} wrote ({index}, term {term}) with a different prefix"))
            }
            _ => Ok(()),
        }
    }

    /// State-machine safety (every node applies the same entry at each index, with
    /// the same outcome) and at-most-once application of every client write.
    pub fn on_apply(
        &mut self,
        replica: &Replica,
        index: Index,
        identity: Option<(u64, u64)>,
        outcome: &Option<Outcome>,
    ) -> Check {
        self.observe_commit(replica)?;
        let node = replica.node;
        let hash = replica.hashes.at(index).ok_or_else(|| format!("node {node} applied {index}, not in its log"))?;
        match self.committed_hash(index) {
            Some(expected) if expected == hash => {}
            Some(_) => return Err(format!("state machine safety: node {node} applied a different entry at {index}")),
            None => return Err(format!("node {node} applied {index} before it was committed")),
        }
        let first = self.outcomes.entry(index).or_insert_with(|| outcome.clone());
        if first != outcome {
            return Err(format!("determinism: node {node} applied {index} with {outcome:?}, another with {first:?}"));
        }
        let took_effect = matches!(outcome, Some(Outcome::Written { revision }) if *revision == index);
        if let (Some((client, sequence)), true) = (identity, took_effect) {
            if client != 0 {
                let at = *self.effects.entry((node, client, sequence)).or_insert(index);
                if at != index {
                    return Err(format!(
                        "at most once: node {node} applied write {sequence} of client {client} at {at} and again at \
                         {index}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every client write, as (client, sequence), that changed some replica's state.
    pub fn writes_that_took_effect(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.effects.keys().map(|&(_, client, sequence)| (client, sequence))
    }

    /// Byte-identical state machines at equal applied index.
    pub fn on_state(&mut self, node: NodeId, applied: Index, image_hash: u64) -> Check {
        let first = *self.states.entry(applied).or_insert(image_hash);
        if first != image_hash {
            return Err(format!("state divergence: node {node} holds another state machine image at {applied}"));
        }
        Ok(())
    }

    /// Records what a replica knows to be committed, checking it agrees with the rest.
    fn observe_commit(&mut self, replica: &Replica) -> Check {
        let (raft, hashes) = (replica.raft, replica.hashes);
        if raft.snapshot_pending() {
            // The commit index is the snapshot's, the log still the one it replaces (the
            // Ready is held back: say, a full disk). The base is checked at install.
            return Ok(());
        }
        // The core may hold committed entries it has not yet handed to the host (its
        // window of unacknowledged Readies is full); they are checked once written.
        let commit = raft.committed().min(hashes.last_index());
        let known = self.committed_index();
        for index in (hashes.base + 1).max(1)..=commit {
            let hash = hashes.at(index).expect("index within the hashed log");
            if index <= known {
                if self.committed[index as usize].0 != hash {
                    return Err(format!("node {} committed a different entry at {index}", replica.node));
                }
            } else {
                self.committed.push((hash, raft.term()));
                let top = self.committed_by_term.entry(raft.term()).or_insert(0);
                *top = (*top).max(index);
            }
        }
        Ok(())
    }

    /// Runs every cross-node check for one replica; called after each step.
    pub fn check(&mut self, replica: &Replica) -> Check {
        replica.raft.check_invariants();
        self.observe_commit(replica)?;
        self.check_commit_monotonic(replica)?;
        self.check_catching_up(replica)?;
        if replica.raft.role() == Role::Leader {
            self.check_leader(replica)?;
            self.check_commit_rule(replica)?;
        }
        Ok(())
    }

    fn check_commit_monotonic(&mut self, replica: &Replica) -> Check {
        let commit = replica.raft.committed();
        let entry = self.commits.entry(replica.node).or_insert((replica.incarnation, 0));
        if entry.0 == replica.incarnation && commit < entry.1 {
            return Err(format!("node {} commit went back from {} to {commit}", replica.node, entry.1));
        }
        *entry = (replica.incarnation, commit);
        Ok(())
    }

    /// Protocol-aware recovery's rule: a replica that lost committed entries it had
    /// acknowledged neither campaigns nor votes until its commit index covers them
    /// again (otherwise its vote could elect a leader without them).
    fn check_catching_up(&mut self, replica: &Replica) -> Check {
        let node = replica.node;
        let Some(&(target, recovered_vote)) = self.catching_up.get(&node) else {
            return Ok(());
        };
        let raft = replica.raft;
        if raft.committed() >= target {
            self.catching_up.remove(&node);
            return Ok(());
        }
        let hs = raft.hard_state();
        let campaigned = matches!(raft.role(), Role::Candidate | Role::Leader);
        let voted = hs.vote.is_some() && (hs.term, hs.vote) != recovered_vote;
        if campaigned || voted {
            return Err(format!(
                "recovery rule: node {node} {} in term {} while it lacked committed entries up to {target} that a \
                 storage fault took from it (commit {})",
                if campaigned { "campaigned" } else { "voted" },
                hs.term,
                raft.committed()
            ));
        }
        Ok(())
    }

    fn check_leader(&mut self, replica: &Replica) -> Check {
        let (node, hashes) = (replica.node, replica.hashes);
        let term = replica.raft.term();
        let leader = *self.leaders.entry(term).or_insert(node);
        if leader != node {
            return Err(format!("election safety: nodes {leader} and {node} both lead term {term}"));
        }
        // Leader append-only: what it held earlier in its term is still there.
        if let Some(&(mark_term, index, hash)) = self.leader_marks.get(&node) {
            if mark_term == term && index >= hashes.base && hashes.at(index) != Some(hash) {
                return Err(format!("leader append-only: leader {node} of term {term} lost or changed {index}"));
            }
        }
        let last = hashes.last_index();
        let last_hash = hashes.at(last).expect("last index hashed");
        self.leader_marks.insert(node, (term, last, last_hash));
        // Leader completeness: every entry committed in an earlier term is in its log.
        let newest_earlier = self.committed_by_term.range(..term).map(|(_, &index)| index).max();
        if let Some(index) = newest_earlier {
            let expected = self.committed[index as usize].0;
            if index > hashes.base && hashes.at(index) != Some(expected) {
                return Err(format!("leader completeness: leader {node} of term {term} lacks committed entry {index}"));
            }
        }
        Ok(())
    }

    /// Raft §5.4.2: a leader advances its commit index only to an entry of its own
    /// term (by counting replicas); earlier entries commit with it, never on their own.
    fn check_commit_rule(&mut self, replica: &Replica) -> Check {
        let raft = replica.raft;
        let (term, commit) = (raft.term(), raft.committed());
        let before = self.leading.insert(replica.node, (replica.incarnation, term, commit));
        let Some((incarnation, led_term, was)) = before else {
            return Ok(());
        };
        if incarnation != replica.incarnation || led_term != term || commit <= was {
            return Ok(());
        }
        match raft.term_at(commit) {
            Some(t) if t == term => Ok(()),
            other => Err(format!(
                "commit rule: leader {} of term {term} advanced its commit from {was} to {commit}, an entry of term \
                 {other:?}",
                replica.node
            )),
        }
    }

    /// Checks what a message vouches for as it leaves: a granted vote is the only one
    /// its sender gave in that term (across restarts) and is durable; an append
    /// acknowledgement's entries are durable. `durable` is the sender's view of the
    /// group now.
    pub fn on_send(&mut self, durable: Durable, m: &Message) -> Check {
        let promise = self.promises.entry(m.from).or_default();
        match m.kind {
            MessageKind::VoteResponse { reject: false, .. } => {
                let granted = *self.votes.entry((m.from, m.term)).or_insert(m.to);
                if granted != m.to {
                    return Err(format!(
                        "one vote per term: node {} granted term {} to {granted} and then to {}",
                        m.from, m.term, m.to
                    ));
                }
                let hs = durable.hard_state;
                let held = hs.term > m.term || (hs.term == m.term && hs.vote == Some(m.to));
                if !held {
                    return Err(format!(
                        "vote before durable: node {} granted term {} to {} with {:?} durable",
                        m.from, m.term, m.to, durable.hard_state
                    ));
                }
                promise.vote = promise.vote.max(Some((m.term, m.to)));
            }
            MessageKind::AppendResponse { index, reject: None } => {
                // A later term's leader may have truncated the suffix since.
                let superseded = durable.hard_state.term > m.term;
                if index > durable.last_index && !superseded {
                    return Err(format!(
                        "append acknowledged before durable: node {} acknowledged {index} in term {} with entries \
                         durable to {}",
                        m.from, m.term, durable.last_index
                    ));
                }
                promise.ack = promise.ack.max(Some((m.term, index)));
            }
            _ => {}
        }
        Ok(())
    }

    /// After a crash, what the node recovered still holds everything its messages
    /// vouched for before it. After a storage fault (`damaged` holds the node's log
    /// hashes from before it) its votes must still hold, but entries it acknowledged
    /// may be gone: those that were committed must come back before it votes again.
    pub fn on_restart(&mut self, node: NodeId, recovered: Durable, damaged: Option<&LogHashes>) -> Check {
        let hs = recovered.hard_state;
        if let Some(entry) = self.catching_up.get_mut(&node) {
            entry.1 = (hs.term, hs.vote);
        }
        let Some(promise) = self.promises.get(&node).copied() else {
            return Ok(());
        };
        if let Some((term, candidate)) = promise.vote {
            if hs.term < term || (hs.term == term && hs.vote != Some(candidate)) {
                return Err(format!("lost vote: node {node} granted term {term} to {candidate}, but recovered {hs:?}"));
            }
        }
        if let Some((term, index)) = promise.ack {
            if hs.term <= term && recovered.last_index < index {
                let Some(before) = damaged else {
                    return Err(format!(
                        "lost entries: node {node} acknowledged {index} in term {term}, but recovered its log only \
                         to {} ({hs:?})",
                        recovered.last_index
                    ));
                };
                let top = index.min(self.committed_index());
                let held_committed = |j: &Index| before.at(*j).is_some() && before.at(*j) == self.committed_hash(*j);
                if let Some(target) = (recovered.last_index + 1..=top).rev().find(held_committed) {
                    let entry = self.catching_up.entry(node).or_insert((target, (hs.term, hs.vote)));
                    entry.0 = entry.0.max(target);
                }
                // What it vouches for starts again from what it holds.
                self.promises.get_mut(&node).expect("seen above").ack = None;
            }
        }
        Ok(())
    }
}
