//! Runs the deterministic Raft simulator over many seeds, or replays one.
//!
//! `quarry-sim --seeds 100000` runs seeds 0..100000; `quarry-sim --seed 42` replays one.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use quarry::sim::{run_seed, Report};

#[derive(Parser)]
#[command(about = "Deterministic simulation of Quarry's Raft core")]
struct Args {
    /// Replay exactly this seed and print its report.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// How many consecutive seeds to run.
    #[arg(long, default_value_t = 2000)]
    seeds: u64,
    /// First seed of the range.
    #[arg(long, default_value_t = 0)]
    start: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(seed) = args.seed {
        return match run_seed(seed) {
            Ok(report) => {
                println!("{report:#?}");
                ExitCode::SUCCESS
            }
            Err(failure) => {
                eprintln!("{failure}");
                ExitCode::FAILURE
            }
        };
    }
    let started = Instant::now();
    let mut totals = Report::default();
    let mut failures = 0u64;
    for seed in args.start..args.start + args.seeds {
        match run_seed(seed) {
            Ok(report) => add(&mut totals, &report),
            Err(failure) => {
                failures += 1;
                eprintln!("{failure}");
            }
        }
    }
    println!(
        "{} seeds ({}..{}) in {:.1}s: {} steps, {} ops ({} answered), {} crashes, {} partitions, \
         {} membership changes, {} transfers, {} snapshots installed, {} messages ({} dropped), \
         worst recovery {} ticks",
        args.seeds,
        args.start,
        args.start + args.seeds,
        started.elapsed().as_secs_f64(),
        totals.steps,
        totals.operations,
        totals.operations_completed,
        totals.crashes,
        totals.partitions,
        totals.conf_changes,
        totals.transfers,
        totals.snapshots_installed,
        totals.messages_sent,
        totals.messages_dropped,
        totals.recovery_ticks,
    );
    println!("{} passed, {} failed", args.seeds - failures, failures);
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn add(totals: &mut Report, r: &Report) {
    totals.steps += r.steps;
    totals.operations += r.operations;
    totals.operations_completed += r.operations_completed;
    totals.crashes += r.crashes;
    totals.partitions += r.partitions;
    totals.conf_changes += r.conf_changes;
    totals.transfers += r.transfers;
    totals.snapshots_installed += r.snapshots_installed;
    totals.messages_sent += r.messages_sent;
    totals.messages_dropped += r.messages_dropped;
    totals.recovery_ticks = totals.recovery_ticks.max(r.recovery_ticks);
}
