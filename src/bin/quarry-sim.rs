//! Runs the deterministic simulator over many seeds, or replays one.
//!
//! `quarry-sim --seeds 100000` runs seeds 0..100000 on every core; `quarry-sim --seed 42`
//! replays one and prints its report.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use clap::Parser;
use quarry::sim::{run_seed, Report};

#[derive(Parser)]
#[command(about = "Deterministic simulation of Quarry's shards under faults", version = quarry::VERSION)]
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
    /// Worker threads (default: one per core). Each seed still runs alone on one.
    #[arg(long)]
    jobs: Option<usize>,
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
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    let next = AtomicU64::new(args.start);
    let end = args.start + args.seeds;
    let totals = Mutex::new(Report::default());
    let failures = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                match run_seed(seed) {
                    Ok(report) => add(&mut totals.lock().expect("no worker panics holding it"), &report),
                    Err(failure) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        eprintln!("{failure}");
                    }
                }
            });
        }
    });
    let totals = totals.into_inner().expect("no worker panics holding it");
    let failures = failures.into_inner();
    println!(
        "{} seeds ({}..{}) in {:.1}s on {jobs} threads: {} steps, {} ops ({} answered, {} resends), \
         {} crashes ({} mid-flush; {} writes torn, {} lost), {} partitions, {} membership changes, \
         {} transfers, {} snapshots taken, {} installed, {} messages ({} dropped), worst recovery {} ticks; \
         storage faults: {} (bit flips and lost pages; {} restarts abstained, {} damaged logs refused), \
         {} failed fdatasyncs, {} full disks ({} flushes waited for space), {} group sleeps, {} liveness wakes",
        args.seeds,
        args.start,
        end,
        started.elapsed().as_secs_f64(),
        totals.steps,
        totals.operations,
        totals.operations_completed,
        totals.resends,
        totals.crashes,
        totals.crashes_mid_flush,
        totals.writes_torn,
        totals.writes_lost,
        totals.partitions,
        totals.conf_changes,
        totals.transfers,
        totals.snapshots_taken,
        totals.snapshots_installed,
        totals.messages_sent,
        totals.messages_dropped,
        totals.recovery_ticks,
        totals.storage_faults,
        totals.abstentions,
        totals.nodes_refused,
        totals.fdatasync_failures,
        totals.disks_full,
        totals.flushes_without_space,
        totals.groups_slept,
        totals.liveness_wakes,
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
    totals.resends += r.resends;
    totals.crashes += r.crashes;
    totals.crashes_mid_flush += r.crashes_mid_flush;
    totals.writes_torn += r.writes_torn;
    totals.writes_lost += r.writes_lost;
    totals.partitions += r.partitions;
    totals.conf_changes += r.conf_changes;
    totals.transfers += r.transfers;
    totals.snapshots_taken += r.snapshots_taken;
    totals.snapshots_installed += r.snapshots_installed;
    totals.messages_sent += r.messages_sent;
    totals.messages_dropped += r.messages_dropped;
    totals.recovery_ticks = totals.recovery_ticks.max(r.recovery_ticks);
    totals.storage_faults += r.storage_faults;
    totals.abstentions += r.abstentions;
    totals.nodes_refused += r.nodes_refused;
    totals.fdatasync_failures += r.fdatasync_failures;
    totals.disks_full += r.disks_full;
    totals.flushes_without_space += r.flushes_without_space;
    totals.groups_slept += r.groups_slept;
    totals.liveness_wakes += r.liveness_wakes;
}
