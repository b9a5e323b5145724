//! The load itself: `clients` tasks, each with one request outstanding. Closed loop:
//! a client sends its next request when the last is answered. Open loop: each
//! client has a schedule (rate / clients per second) and latency runs from the
//! intended send time, so a stalled server is charged for the requests it delayed
//! (no coordinated omission).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use quarry::sim::linearizability::{OpKind as CheckedKind, Operation, Outcome as CheckedOutcome};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::args::Plan;
use crate::report::new_histogram;
use crate::target::{ClientState, Observed, Target};
use crate::workload::{value_id, Generator, OpKind};

/// How often the progress line is refreshed.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// What the measured part of a run produced.
pub struct Outcome {
    pub histogram: Histogram<u64>,
    /// Successful measured requests.
    pub requests: u64,
    pub errors: BTreeMap<String, u64>,
    /// The first message seen of each error kind.
    pub error_examples: BTreeMap<String, String>,
    /// From the end of warm-up to the last measured answer.
    pub seconds: f64,
    /// Every operation (warm-up included), with --verify.
    pub history: Vec<Operation>,
}

struct Clock {
    start: Instant,
    measure_from: Instant,
    deadline: Instant,
}

struct Shared {
    issued: AtomicU64,
    completed: AtomicU64,
}

struct ClientResult {
    histogram: Histogram<u64>,
    requests: u64,
    errors: BTreeMap<String, u64>,
    error_examples: BTreeMap<String, String>,
    last_answer: Option<Instant>,
    history: Vec<Operation>,
}

pub async fn run(plan: &Plan, target: Arc<Target>, workload: Arc<Generator>, progress: ProgressBar) -> Outcome {
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let clock = Arc::new(Clock { start, measure_from, deadline: measure_from + plan.duration });
    let shared = Arc::new(Shared { issued: AtomicU64::new(0), completed: AtomicU64::new(0) });
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..plan.args.clients {
        let (plan, target, workload) = (plan.clone(), target.clone(), workload.clone());
        let (clock, shared) = (clock.clone(), shared.clone());
        clients.spawn(async move { one_client(client, &plan, &target, &workload, &clock, &shared).await });
    }
    let goal = match plan.args.requests {
        Some(n) => Goal::Requests(n),
        None => Goal::Time(plan.duration),
    };
    let ticker = tokio::spawn(show_progress(progress.clone(), shared.clone(), start, measure_from, goal));
    let mut outcome = Outcome {
        histogram: new_histogram(),
        requests: 0,
        errors: BTreeMap::new(),
        error_examples: BTreeMap::new(),
        seconds: 0.0,
        history: Vec::new(),
    };
    let mut last_answer = measure_from;
    while let Some(joined) = clients.join_next().await {
        let Ok(result) = joined else { continue };
        outcome.histogram.add(&result.histogram).expect("histograms share bounds");
        outcome.requests += result.requests;
        for (kind, n) in result.errors {
            *outcome.errors.entry(kind).or_default() += n;
        }
        for (kind, message) in result.error_examples {
            outcome.error_examples.entry(kind).or_insert(message);
        }
        last_answer = last_answer.max(result.last_answer.unwrap_or(measure_from));
        outcome.history.extend(result.history);
    }
    ticker.abort();
    progress.finish_and_clear();
    outcome.seconds = last_answer.duration_since(measure_from).as_secs_f64();
    outcome
}

async fn one_client(
    client: usize,
    plan: &Plan,
    target: &Target,
    workload: &Generator,
    clock: &Clock,
    shared: &Shared,
) -> ClientResult {
    let args = &plan.args;
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed.wrapping_mul(1_000_003).wrapping_add(client as u64));
    let mut state = ClientState::default();
    let mut result = ClientResult {
        histogram: new_histogram(),
        requests: 0,
        errors: BTreeMap::new(),
        error_examples: BTreeMap::new(),
        last_answer: None,
        history: Vec::new(),
    };
    // Open loop: this client's share of the rate, its first slot staggered.
    let interval = args.rate.map(|rate| Duration::from_secs_f64(args.clients as f64 / rate));
    let offset = interval.map(|i| i.mul_f64(client as f64 / args.clients as f64)).unwrap_or_default();
    let connection = client % plan.connections;
    for k in 0u64.. {
        let intended = match interval {
            Some(interval) => {
                let at = clock.start + offset + interval.mul_f64(k as f64);
                tokio::time::sleep_until(at.into()).await;
                at
            }
            None => Instant::now(),
        };
        let measured = intended >= clock.measure_from;
        if measured {
            let over = match args.requests {
                Some(max) => shared.issued.fetch_add(1, Ordering::Relaxed) >= max,
                None => intended >= clock.deadline,
            };
            if over {
                break;
            }
        }
        let op = workload.next(&mut rng);
        let id = ((client as u64 + 1) << 40) | k;
        let call = Instant::now();
        let answer = target.execute(connection, op, workload.value(id), workload, args.serializable, &mut state).await;
        let done = Instant::now();
        if args.verify {
            result.history.push(checked(client, op, id, &answer, clock.start, call, done));
        }
        if !measured {
            continue;
        }
        match answer {
            Ok(_) => {
                let micros = done.duration_since(intended).as_micros() as u64;
                result.histogram.saturating_record(micros.max(1));
                result.requests += 1;
                result.last_answer = Some(done);
                shared.completed.fetch_add(1, Ordering::Relaxed);
            }
            Err((kind, message)) => {
                *result.errors.entry(kind.clone()).or_default() += 1;
                result.error_examples.entry(kind).or_insert(message);
            }
        }
    }
    result
}

/// The operation as the linearizability checker sees it.
fn checked(
    client: usize,
    op: crate::workload::Op,
    id: u64,
    answer: &Result<Observed, (String, String)>,
    start: Instant,
    call: Instant,
    done: Instant,
) -> Operation {
    let nanos = |t: Instant| t.duration_since(start).as_nanos() as u64;
    let kind = match op.kind {
        OpKind::Get => CheckedKind::Get,
        _ => CheckedKind::Put(id),
    };
    let outcome = match answer {
        Ok(Observed::Read(value)) => CheckedOutcome::Read(value.as_deref().and_then(value_id)),
        Ok(_) => CheckedOutcome::Done,
        Err(_) => CheckedOutcome::Unknown,
    };
    let ret = if outcome == CheckedOutcome::Unknown { u64::MAX } else { nanos(done) };
    // Keys are at most 256 under --verify (checked with the arguments).
    Operation { client: client as u64, key: op.key as u8, kind, call: nanos(call), ret, outcome }
}

/// What ends the measured part of a run.
#[derive(Clone, Copy)]
enum Goal {
    Time(Duration),
    Requests(u64),
}

/// The progress bar: the warm-up first (its own bar, in seconds), then the measured
/// part (in seconds or requests) with the rate and an ETA.
async fn show_progress(bar: ProgressBar, shared: Arc<Shared>, start: Instant, measure_from: Instant, goal: Goal) {
    let mut last = (Instant::now(), 0);
    let mut measuring = false;
    bar.set_prefix("warm-up");
    bar.set_length(measure_from.duration_since(start).as_millis() as u64);
    loop {
        let now = Instant::now();
        let done = shared.completed.load(Ordering::Relaxed);
        let rate = (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-3);
        last = (now, done);
        if now < measure_from {
            bar.set_position(now.duration_since(start).as_millis() as u64);
            bar.set_message("requests not measured yet");
        } else {
            if !measuring {
                measuring = true;
                bar.set_prefix("measuring");
                bar.set_length(match goal {
                    Goal::Time(d) => d.as_millis() as u64,
                    Goal::Requests(n) => n,
                });
                bar.reset_eta();
            }
            bar.set_position(match goal {
                Goal::Time(_) => now.duration_since(measure_from).as_millis() as u64,
                Goal::Requests(_) => done,
            });
            bar.set_message(format!("{done} requests, {rate:.0} req/s"));
        }
        tokio::time::sleep(PROGRESS_EVERY).await;
    }
}
