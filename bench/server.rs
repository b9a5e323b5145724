//! Server-side figures from the nodes' Prometheus `/metrics`, read before and after
//! the measured window.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::args::System;
use crate::report::ServerFigures;

const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
const BODY_MAX_BYTES: u64 = 16 << 20;

/// Counter names per system: (fsyncs, entries written, process CPU seconds).
fn names(system: System) -> [&'static str; 3] {
    match system {
        System::Quarry => ["quarry_fdatasyncs_total", "quarry_log_entries_total", "process_cpu_seconds_total"],
        System::Etcd => [
            "etcd_disk_wal_fsync_duration_seconds_count",
            "etcd_server_proposals_committed_total",
            "process_cpu_seconds_total",
        ],
    }
}

/// The sums over all nodes of the three counters.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample([f64; 3]);

/// Sums the samples of `name` (over all label sets) in Prometheus text.
pub fn value_of(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

async fn get_metrics(addr: &str) -> Result<String, String> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        stream
            .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = String::new();
        stream.take(BODY_MAX_BYTES).read_to_string(&mut response).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, fetch).await.map_err(|_| "timed out".to_string())?
}

pub async fn sample(system: System, addrs: &[String]) -> Result<Sample, String> {
    let mut sum = [0.0; 3];
    for addr in addrs {
        let body = get_metrics(addr).await.map_err(|e| format!("metrics from {addr}: {e}"))?;
        for (total, name) in sum.iter_mut().zip(names(system)) {
            *total += value_of(&body, name);
        }
    }
    Ok(Sample(sum))
}

pub fn figures(before: Sample, after: Sample, requests: u64) -> ServerFigures {
    let [fsyncs, entries, cpu_seconds] = [0, 1, 2].map(|i| after.0[i] - before.0[i]);
    ServerFigures {
        fsyncs,
        entries,
        entries_per_fsync: (fsyncs > 0.0).then(|| entries / fsyncs),
        cpu_seconds,
        cpu_ms_per_request: (requests > 0).then(|| cpu_seconds * 1000.0 / requests as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_over_label_sets_and_deltas_make_figures() {
        let body = "# HELP x\nquarry_fdatasyncs_total 10\nquarry_log_entries_total{shard=\"0\"} 300\n\
                    quarry_log_entries_total{shard=\"1\"} 100\nquarry_log_entries_total_x 5\n";
        assert_eq!(value_of(body, "quarry_log_entries_total"), 400.0);
        assert_eq!(value_of(body, "absent"), 0.0);
        let f = figures(Sample([10.0, 400.0, 1.0]), Sample([20.0, 1400.0, 3.0]), 1000);
        assert_eq!(f.entries_per_fsync, Some(100.0));
        assert_eq!(f.cpu_ms_per_request, Some(2.0));
    }
}
