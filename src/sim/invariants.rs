//! Raft's safety properties (Figure 3 of the paper), checked across the whole
//! simulated cluster after every step.

use std::collections::{BTreeMap, HashMap};

use crate::raft::{Index, NodeId, Role, Term};

use super::host::SimNode;

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

    /// State-machine safety: every node applies the same entry at each index.
    pub fn on_apply(&mut self, node: &SimNode, index: Index, hash: u64) -> Check {
        self.observe_commit(node)?;
        match self.committed_hash(index) {
            Some(expected) if expected == hash => Ok(()),
            Some(_) => Err(format!("state machine safety: node {} applied a different entry at {index}", node.id)),
            None => Err(format!("node {} applied {index} before it was committed", node.id)),
        }
    }

    /// Records what `node` knows to be committed, checking it agrees with the rest.
    fn observe_commit(&mut self, node: &SimNode) -> Check {
        let Some(raft) = &node.raft else {
            return Ok(());
        };
        // The core may hold committed entries it has not yet handed to the host (its
        // window of unacknowledged Readies is full); they are checked once written.
        let commit = raft.committed().min(node.hashes.last_index());
        let known = self.committed.len() as Index - 1;
        for index in (node.hashes.base + 1).max(1)..=commit {
            let hash = node.hashes.at(index).ok_or_else(|| {
                format!(
                    "node {} commit {commit} beyond its log (hashed {}..={}, raft last {}, {:?} in term {})",
                    node.id,
                    node.hashes.base,
                    node.hashes.last_index(),
                    raft.last_index(),
                    raft.role(),
                    raft.term()
                )
            })?;
            if index <= known {
                if self.committed[index as usize].0 != hash {
                    return Err(format!("node {} committed a different entry at {index}", node.id));
                }
            } else {
                self.committed.push((hash, raft.term()));
                let top = self.committed_by_term.entry(raft.term()).or_insert(0);
                *top = (*top).max(index);
            }
        }
        Ok(())
    }

    /// Runs every cross-node check; called after each simulation step.
    pub fn check(&mut self, nodes: &[SimNode]) -> Check {
        for node in nodes {
            let Some(raft) = &node.raft else { continue };
            raft.check_invariants();
            self.observe_commit(node)?;
            self.check_commit_monotonic(node)?;
            if raft.role() == Role::Leader {
                self.check_leader(node)?;
            }
        }
        Ok(())
    }

    fn check_commit_monotonic(&mut self, node: &SimNode) -> Check {
        let raft = node.raft.as_ref().expect("running");
        let entry = self.commits.entry(node.id).or_insert((node.incarnation, 0));
        if entry.0 == node.incarnation && raft.committed() < entry.1 {
            return Err(format!("node {} commit went back from {} to {}", node.id, entry.1, raft.committed()));
        }
        *entry = (node.incarnation, raft.committed());
        Ok(())
    }

    fn check_leader(&mut self, node: &SimNode) -> Check {
        let raft = node.raft.as_ref().expect("running");
        let term = raft.term();
        // Election safety.
        let leader = *self.leaders.entry(term).or_insert(node.id);
        if leader != node.id {
            return Err(format!("election safety: nodes {leader} and {} both lead term {term}", node.id));
        }
        // Leader append-only: what it held earlier in its term is still there.
        if let Some(&(mark_term, index, hash)) = self.leader_marks.get(&node.id) {
            if mark_term == term && node.hashes.at(index) != Some(hash) && index >= node.hashes.base {
                return Err(format!("leader append-only: leader {} of term {term} lost or changed {index}", node.id));
            }
        }
        let last = node.hashes.last_index();
        let last_hash = node.hashes.at(last).expect("last index hashed");
        self.leader_marks.insert(node.id, (term, last, last_hash));
        // Leader completeness: every entry committed in an earlier term is in its log.
        let newest_earlier = self.committed_by_term.range(..term).map(|(_, &index)| index).max();
        if let Some(index) = newest_earlier {
            let expected = self.committed[index as usize].0;
            let covered_by_snapshot = index <= node.hashes.base;
            if !covered_by_snapshot && node.hashes.at(index) != Some(expected) {
                return Err(format!(
                    "leader completeness: leader {} of term {term} lacks committed entry {index}",
                    node.id
                ));
            }
        }
        Ok(())
    }
}
