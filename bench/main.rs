//! quarry-bench: drives a Quarry (or etcd) cluster with a chosen workload and reports
//! throughput and latency percentiles (hdrhistogram), errors by kind, server-side
//! figures from the nodes' metrics, and optionally checks the history linearizable.
//!
//! Exit codes: 0 done; 1 the run failed (no request succeeded, a file could not be
//! written, or the history is not linearizable); 2 bad arguments.

mod args;
mod etcd;
mod plot;
mod report;
mod run;
mod server;
mod target;
mod workload;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use quarry::sim::linearizability::{check, Verdict};
use rand::RngCore;

use args::{Args, Plan};
use report::Summary;

fn main() -> ExitCode {
    let plan = match Args::parse().check() {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("quarry-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("quarry-bench: cannot start a runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(bench(plan)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("quarry-bench: {e}");
            ExitCode::from(1)
        }
    }
}

async fn bench(plan: Plan) -> Result<ExitCode, String> {
    let a = &plan.args;
    // A verified run starts from keys nobody wrote before, as the checker assumes.
    let prefix = if a.verify { format!("v{:06x}-", rand::rng().next_u32() & 0xff_ffff) } else { "k".to_string() };
    let workload = Arc::new(workload::Generator::new(&plan, &prefix)?);
    let target = Arc::new(target::Target::connect(&plan)?);
    target.prepare(&plan, &workload).await.map_err(|e| format!("preparing the SQL tables: {e}"))?;
    let warmup_millis = plan.warmup.as_millis().max(1) as u64;
    let progress = if a.no_progress || a.json { ProgressBar::hidden() } else { ProgressBar::new(warmup_millis) };
    let template = "{prefix:>9} [{bar:30}] {percent:>3}% {elapsed:>4} ETA {eta:>4}  {msg}";
    progress.set_style(ProgressStyle::with_template(template).expect("a valid template").progress_chars("=> "));

    // Server counters are read when warm-up ends and again after the last answer.
    let before = {
        let (system, metrics, warmup) = (a.system, a.metrics.clone(), plan.warmup);
        tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            if metrics.is_empty() {
                return None;
            }
            Some(server::sample(system, &metrics).await)
        })
    };
    let outcome = run::run(&plan, target, workload, progress).await;
    let server = match before.await.map_err(|e| e.to_string())? {
        Some(Ok(before)) => {
            Some(server::figures(before, server::sample(a.system, &a.metrics).await?, outcome.requests))
        }
        Some(Err(e)) => return Err(e),
        None => None,
    };
    let verify = a.verify.then(|| match check(&outcome.history) {
        Verdict::Linearizable => format!("linearizable ({} operations checked)", outcome.history.len()),
        Verdict::NotLinearizable(v) => format!("NOT linearizable: key {} ({} operations)", v.key, v.operations.len()),
        Verdict::Undecided { key } => format!("undecided: the search budget ran out on key {key}"),
    });
    let summary = Summary {
        label: plan.label.clone(),
        system: format!("{:?}", a.system).to_lowercase(),
        workload: format!("{:?}", a.workload).to_lowercase(),
        clients: a.clients,
        connections: plan.connections,
        rate: a.rate,
        seconds: outcome.seconds,
        requests: outcome.requests,
        throughput: if outcome.seconds > 0.0 { outcome.requests as f64 / outcome.seconds } else { 0.0 },
        latency: report::latency(&outcome.histogram),
        errors: outcome.errors,
        error_examples: outcome.error_examples,
        curve: report::curve(&outcome.histogram),
        server,
        verify,
    };
    if let Some(dir) = &a.out {
        write_outputs(dir, &plan, &summary, &outcome.histogram)?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?);
    } else {
        print!("{}", summary.text());
    }
    if summary.requests == 0 {
        return Err("no request succeeded".into());
    }
    if summary.verify.as_ref().is_some_and(|v| !v.starts_with("linearizable")) {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn write_outputs(
    dir: &Path,
    plan: &Plan,
    summary: &Summary,
    histogram: &hdrhistogram::Histogram<u64>,
) -> Result<(), String> {
    let write = |name: String, contents: String| {
        let path = dir.join(name);
        std::fs::write(&path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    write(format!("{}.hgrm", plan.label), report::hgrm(histogram))?;
    write(format!("{}.json", plan.label), serde_json::to_string_pretty(summary).map_err(|e| e.to_string())?)?;
    let mut runs = Vec::new();
    for path in &plan.args.plot_with {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        runs.push(serde_json::from_str(&text).map_err(|e| format!("{} is not a summary: {e}", path.display()))?);
    }
    runs.push(summary.clone());
    plot::draw(&dir.join(format!("{}.png", plan.label)), &runs)
}
