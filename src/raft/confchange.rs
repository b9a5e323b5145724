//! Applying a membership change to a configuration: a pure function, so the core and
//! a host's state machine (which records the configuration in its snapshots) agree.

use super::types::{ConfChange, ConfState, SingleChange};

/// The configuration after `change`, or why `change` is not allowed from `conf`.
pub fn apply_conf_change(conf: &ConfState, change: &ConfChange) -> Result<ConfState, String> {
    match change {
        ConfChange::LeaveJoint => {
            if !conf.is_joint() {
                return Err("not in a joint configuration".into());
            }
            let mut next = conf.clone();
            next.voters_outgoing.clear();
            // A demoted voter that was still an outgoing voter is now only a learner.
            Ok(next)
        }
        ConfChange::Change(changes) => apply_changes(conf, changes),
    }
}

fn apply_changes(conf: &ConfState, changes: &[SingleChange]) -> Result<ConfState, String> {
    if conf.is_joint() {
        return Err("a joint configuration must be left before the next change".into());
    }
    if changes.is_empty() {
        return Err("empty change".into());
    }
    let mut next = conf.clone();
    for change in changes {
        match *change {
            SingleChange::AddVoter(id) => {
                next.learners.remove(&id);
                next.voters.insert(id);
            }
            SingleChange::AddLearner(id) => {
                next.voters.remove(&id);
                next.learners.insert(id);
            }
            SingleChange::RemoveNode(id) => {
                next.voters.remove(&id);
                next.learners.remove(&id);
            }
        }
    }
    if next.voters.is_empty() {
        return Err("the change removes every voter".into());
    }
    if next.voters != conf.voters {
        // Voters change: enter the joint configuration C_old,new (Raft §6).
        next.voters_outgoing = conf.voters.clone();
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use SingleChange::*;

    #[test]
    fn adding_a_voter_enters_joint_and_leaving_drops_the_old_half() {
        let conf = ConfState::new([1, 2, 3]);
        let joint = apply_conf_change(&conf, &ConfChange::Change(vec![AddVoter(4)])).unwrap();
        assert_eq!(joint.voters, [1, 2, 3, 4].into());
        assert_eq!(joint.voters_outgoing, [1, 2, 3].into());
        let err = apply_conf_change(&joint, &ConfChange::Change(vec![AddVoter(5)])).unwrap_err();
        assert!(err.contains("joint"), "{err}");
        let left = apply_conf_change(&joint, &ConfChange::LeaveJoint).unwrap();
        assert_eq!(left, ConfState::new([1, 2, 3, 4]));
    }

    #[test]
    fn learner_only_changes_take_effect_directly() {
        let conf = ConfState::new([1, 2, 3]);
        let next = apply_conf_change(&conf, &ConfChange::Change(vec![AddLearner(4)])).unwrap();
        assert!(!next.is_joint());
        assert_eq!(next.learners, [4].into());
    }

    #[test]
    fn demoting_a_voter_keeps_it_in_the_outgoing_half() {
        let conf = ConfState::new([1, 2, 3]);
        let joint = apply_conf_change(&conf, &ConfChange::Change(vec![AddLearner(3)])).unwrap();
        assert_eq!(joint.voters, [1, 2].into());
        assert_eq!(joint.voters_outgoing, [1, 2, 3].into());
        assert_eq!(joint.learners, [3].into());
        assert!(joint.is_voter(3));
    }

    #[test]
    fn refuses_to_remove_every_voter_and_leaving_when_not_joint() {
        let conf = ConfState::new([1]);
        assert!(apply_conf_change(&conf, &ConfChange::Change(vec![RemoveNode(1)])).is_err());
        assert!(apply_conf_change(&conf, &ConfChange::LeaveJoint).is_err());
    }
}
