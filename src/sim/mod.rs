//! A deterministic simulator of the code users run: production shards
//! (`Shard<BuiltinState>` over the real shard log and snapshot files) on a disk that
//! loses what no completed fdatasync covers, a network that drops, delays, duplicates
//! and partitions, and clients that use the real command envelope and retry with the
//! same client id and sequence. One seed decides every delay, fault, membership change
//! and request, so any failure replays from its seed. After every step it checks
//! Raft's safety properties and the rules behind them; at the end, the
//! linearizability of the clients' history and that the healed cluster recovers
//! within a bound.

mod hashes;
mod invariants;
pub mod linearizability;
mod network;
mod node;
mod simulation;

pub use simulation::{run_seed, run_seed_with, Failure, Report, Sabotage, LIVENESS_TICKS_MAX};

#[cfg(test)]
mod tests {
    use super::*;

    fn first_failure(sabotage: Sabotage, seeds: u64) -> Option<Failure> {
        (0..seeds).find_map(|seed| run_seed_with(seed, sabotage).err())
    }

    /// The simulator must be able to fail: with voters ignoring whether a candidate's
    /// log is up to date, some early seed elects a leader that lacks committed entries.
    #[test]
    fn simulator_catches_votes_for_stale_logs() {
        let sabotage = Sabotage { vote_for_stale_logs: true, ..Sabotage::default() };
        let failure = first_failure(sabotage, 500).expect("a broken vote rule must be caught");
        println!("caught: {failure}");
        let safety = ["leader completeness", "committed a different", "state machine safety", "linearizability"];
        assert!(safety.iter().any(|s| failure.reason.contains(s)), "unexpected failure: {failure}");
    }

    /// A leader that commits an earlier term's entry by counting replicas (Figure 8)
    /// is caught by the rule check the moment it does so, within the CI seeds, even
    /// when no later election turns it into a lost write.
    #[test]
    fn simulator_catches_a_commit_rule_that_counts_earlier_terms() {
        let sabotage = Sabotage { commit_any_term: true, ..Sabotage::default() };
        let failure = first_failure(sabotage, 2000).expect("a broken commit rule must be caught");
        println!("caught: {failure}");
        assert!(failure.reason.contains("commit rule"), "unexpected failure: {failure}");
    }

    /// A vote granted before it is durable is caught as it leaves, within the CI seeds.
    #[test]
    fn simulator_catches_a_vote_sent_before_it_is_durable() {
        let sabotage = Sabotage { vote_before_durable: true, ..Sabotage::default() };
        let failure = first_failure(sabotage, 2000).expect("a vote sent before it is durable must be caught");
        println!("caught: {failure}");
        assert!(failure.reason.contains("vote before durable"), "unexpected failure: {failure}");
    }

    /// A log whose fdatasync does nothing loses what it acknowledged in the first
    /// crash that lands before the page cache would have been written back.
    #[test]
    fn simulator_catches_a_log_without_fdatasync() {
        let sabotage = Sabotage { skip_fdatasync: true, ..Sabotage::default() };
        let failure = first_failure(sabotage, 2000).expect("a missing fdatasync must be caught");
        println!("caught: {failure}");
        let caught = ["lost", "failed to recover"].iter().any(|s| failure.reason.contains(s));
        assert!(caught, "unexpected failure: {failure}");
    }

    /// A replica that lost committed entries it acknowledged (a flipped bit in its
    /// last flush) and votes at once is caught by the recovery rule, within the CI
    /// seeds, whether or not its vote went on to lose a write.
    #[test]
    fn simulator_catches_a_replica_that_votes_after_losing_acknowledged_entries() {
        let sabotage = Sabotage { ignore_damage: true, ..Sabotage::default() };
        let failure = first_failure(sabotage, 2000).expect("voting after a storage fault must be caught");
        println!("caught: {failure}");
        assert!(failure.reason.contains("recovery rule"), "unexpected failure: {failure}");
    }

    #[test]
    fn a_seed_replays_identically() {
        let first = run_seed(7).expect("seed 7 passes");
        let second = run_seed(7).expect("seed 7 passes");
        assert_eq!(format!("{first:?}"), format!("{second:?}"));
    }
}
