//! A run's figures: throughput, latency percentiles, errors by kind, server-side
//! figures; written as text, JSON and an `.hgrm` percentile distribution.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, from 1 µs to 10 minutes, 3 digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub p9999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// What the nodes' `/metrics` say about the measured window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerFigures {
    pub fsyncs: f64,
    pub entries: f64,
    pub entries_per_fsync: Option<f64>,
    pub cpu_seconds: f64,
    pub cpu_ms_per_request: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub label: String,
    pub system: String,
    pub workload: String,
    pub clients: usize,
    pub connections: usize,
    /// Open loop: the requested rate; closed loop: none.
    pub rate: Option<f64>,
    pub seconds: f64,
    pub requests: u64,
    pub throughput: f64,
    pub latency: Latency,
    pub errors: BTreeMap<String, u64>,
    /// The first message of each error kind.
    #[serde(default)]
    pub error_examples: BTreeMap<String, String>,
    /// (percentile, latency in ms) points of the latency curve, for plots.
    pub curve: Vec<(f64, f64)>,
    pub server: Option<ServerFigures>,
    /// The checker's verdict on the recorded history, with --verify.
    pub verify: Option<String>,
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

pub fn latency(h: &Histogram<u64>) -> Latency {
    Latency {
        p50_ms: ms(h.value_at_quantile(0.5)),
        p90_ms: ms(h.value_at_quantile(0.9)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        p9999_ms: ms(h.value_at_quantile(0.9999)),
        max_ms: ms(h.max()),
        mean_ms: h.mean() / 1000.0,
    }
}

/// The percentile curve (as in an .hgrm file), without the final 100 % point, which
/// a 1/(1-p) axis cannot show.
pub fn curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    h.iter_quantiles(5)
        .map(|v| (v.quantile_iterated_to() * 100.0, ms(v.value_iterated_to())))
        .filter(|(p, _)| *p < 100.0)
        .collect()
}

/// The classic HdrHistogram percentile distribution, values in milliseconds.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    let mut total = 0;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let inverse = if q < 1.0 { format!("{:14.2}", 1.0 / (1.0 - q)) } else { String::new() };
        let _ = writeln!(out, "{:12.3} {:14.12} {:10} {inverse}", ms(v.value_iterated_to()), q, total);
    }
    let _ = writeln!(out, "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]", h.mean() / 1000.0, h.stdev() / 1000.0);
    let _ = writeln!(out, "#[Max     = {:12.3}, Total count    = {:12}]", ms(h.max()), h.len());
    let _ = writeln!(out, "#[Buckets = {:12}, SubBuckets     = {:12}]", h.buckets(), h.distinct_values());
    out
}

impl Summary {
    pub fn text(&self) -> String {
        let l = &self.latency;
        let mut out = format!(
            "{}: {} requests in {:.1} s = {:.0} req/s ({} clients, {} connections{})\n",
            self.label,
            self.requests,
            self.seconds,
            self.throughput,
            self.clients,
            self.connections,
            self.rate.map(|r| format!(", open loop at {r:.0}/s")).unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  p99.99 {:.2}  max {:.2}",
            l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.p9999_ms, l.max_ms
        );
        if !self.errors.is_empty() {
            let errors: Vec<String> = self.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let _ = writeln!(out, "  errors: {}", errors.join(", "));
            for (kind, message) in &self.error_examples {
                let _ = writeln!(out, "    {kind}: {message}");
            }
        }
        if let Some(s) = &self.server {
            let per = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
            let _ = writeln!(
                out,
                "  server: {:.0} fsyncs, {} entries per fsync, {} CPU ms per request",
                s.fsyncs,
                per(s.entries_per_fsync),
                per(s.cpu_ms_per_request)
            );
        }
        if let Some(v) = &self.verify {
            let _ = writeln!(out, "  history: {v}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1..=10,000 µs once each: every percentile is known exactly (to 3 digits).
    fn synthetic() -> Histogram<u64> {
        let mut h = new_histogram();
        for us in 1..=10_000 {
            h.record(us).unwrap();
        }
        h
    }

    #[test]
    fn percentiles_of_a_synthetic_run() {
        let l = latency(&synthetic());
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.001 + 0.001;
        assert!(close(l.p50_ms, 5.0), "{l:?}");
        assert!(close(l.p90_ms, 9.0), "{l:?}");
        assert!(close(l.p99_ms, 9.9), "{l:?}");
        assert!(close(l.p999_ms, 9.99), "{l:?}");
        assert!(close(l.max_ms, 10.0), "{l:?}");
        assert!(close(l.mean_ms, 5.0005), "{l:?}");
    }

    #[test]
    fn hgrm_and_curve_describe_the_distribution() {
        let h = synthetic();
        let text = hgrm(&h);
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with(' ') && !l.trim().is_empty()).skip(1).collect();
        assert!(rows.len() > 20, "{text}");
        let last: Vec<&str> = rows.last().unwrap().split_whitespace().collect();
        assert_eq!((last[1], last[2]), ("1.000000000000", "10000"), "{text}");
        assert!(text.contains("Total count    =        10000"), "{text}");
        let points = curve(&h);
        assert!(points.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1), "monotone");
        assert!(points.iter().all(|(p, _)| *p < 100.0));
        assert!(curve(&new_histogram()).is_empty());
    }

    #[test]
    fn the_summary_round_trips_through_json() {
        let h = synthetic();
        let summary = Summary {
            label: "x".into(),
            requests: h.len(),
            latency: latency(&h),
            curve: curve(&h),
            errors: BTreeMap::from([("Unavailable".to_string(), 2)]),
            ..Summary::default()
        };
        let json = serde_json::to_string(&summary).unwrap();
        let parsed: Summary = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed.curve.len(), summary.curve.len());
        for (a, b) in parsed.curve.iter().zip(&summary.curve) {
            assert!((a.0 - b.0).abs() < 1e-9 && (a.1 - b.1).abs() < 1e-9, "{a:?} {b:?}");
        }
        assert_eq!(Summary { curve: Vec::new(), ..parsed }, Summary { curve: Vec::new(), ..summary.clone() });
        assert!(summary.text().contains("errors: Unavailable 2"));
    }
}
