//! Majority arithmetic over a possibly joint configuration.

use std::collections::{BTreeMap, BTreeSet};

use super::types::{ConfState, NodeId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    Pending,
    Lost,
    Won,
}

/// The largest value that a majority of `voters` has reached, given each voter's
/// value from `value_of` (missing voters count as 0). An empty set places no
/// constraint, so it answers `u64::MAX`.
pub fn majority_value(voters: &BTreeSet<NodeId>, value_of: impl Fn(NodeId) -> u64) -> u64 {
    if voters.is_empty() {
        return u64::MAX;
    }
    let mut values: Vec<u64> = voters.iter().map(|&id| value_of(id)).collect();
    values.sort_unstable_by(|a, b| b.cmp(a));
    values[voters.len() / 2]
}

/// The value reached by a majority of each half of a joint configuration.
pub fn joint_value(conf: &ConfState, value_of: impl Fn(NodeId) -> u64) -> u64 {
    let incoming = majority_value(&conf.voters, &value_of);
    let outgoing = majority_value(&conf.voters_outgoing, &value_of);
    incoming.min(outgoing)
}

fn majority_vote(voters: &BTreeSet<NodeId>, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut granted, mut missing) = (0, 0);
    for id in voters {
        match votes.get(id) {
            Some(true) => granted += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    let quorum = voters.len() / 2 + 1;
    if granted >= quorum {
        VoteResult::Won
    } else if granted + missing >= quorum {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

/// An election is won when both halves of a joint configuration grant it.
pub fn vote_result(conf: &ConfState, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
    match (majority_vote(&conf.voters, votes), majority_vote(&conf.voters_outgoing, votes)) {
        (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
        (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
        _ => VoteResult::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_value_is_the_median_from_the_top() {
        let voters: BTreeSet<NodeId> = [1, 2, 3].into();
        let matched = BTreeMap::from([(1, 5), (2, 3), (3, 9)]);
        assert_eq!(majority_value(&voters, |id| matched[&id]), 5);
        let four: BTreeSet<NodeId> = [1, 2, 3, 4].into();
        let matched = BTreeMap::from([(1, 5), (2, 3), (3, 9), (4, 1)]);
        assert_eq!(majority_value(&four, |id| matched[&id]), 3);
    }

    #[test]
    fn joint_value_takes_the_lower_half() {
        let conf = ConfState { voters: [1, 2, 3].into(), voters_outgoing: [3, 4, 5].into(), learners: BTreeSet::new() };
        let matched = BTreeMap::from([(1, 10), (2, 10), (3, 10), (4, 2), (5, 1)]);
        assert_eq!(joint_value(&conf, |id| matched[&id]), 2);
    }

    #[test]
    fn joint_vote_needs_both_halves() {
        let conf = ConfState { voters: [1, 2, 3].into(), voters_outgoing: [1, 4, 5].into(), learners: BTreeSet::new() };
        let votes = BTreeMap::from([(1, true), (2, true), (3, true)]);
        assert_eq!(vote_result(&conf, &votes), VoteResult::Pending);
        let votes = BTreeMap::from([(1, true), (2, true), (4, false), (5, false)]);
        assert_eq!(vote_result(&conf, &votes), VoteResult::Lost);
        let votes = BTreeMap::from([(1, true), (2, true), (4, true)]);
        assert_eq!(vote_result(&conf, &votes), VoteResult::Won);
    }
}
