//! Command-line arguments, checked into a `Plan` before anything connects.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Operations a `--verify` run may record: the checker's search is exponential in the
/// worst case, so histories stay small.
pub const VERIFY_OPS_MAX: u64 = 20_000;
/// Keys a `--verify` run may use (the checker names keys with one byte).
pub const VERIFY_KEYS_MAX: u64 = 256;
pub const CLIENTS_MAX: usize = 10_000;
pub const VALUE_BYTES_MAX: usize = 1 << 20;
pub const KEY_BYTES_MAX: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Quarry,
    Etcd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    Put,
    Get,
    /// Gets and puts, `--read-ratio` of them gets.
    Mixed,
    /// Compare-and-swap on the revision this client last saw for the key.
    Cas,
    /// Appends to named logs (Quarry only); `--keys` names the logs.
    Append,
    /// SQL: `INSERT OR REPLACE` of a row per key into one of 16 databases (Quarry only).
    SqlInsert,
    /// SQL: `SELECT` of a row by its primary key, rows loaded first (Quarry only).
    SqlQuery,
}

impl Workload {
    pub fn is_sql(self) -> bool {
        matches!(self, Workload::SqlInsert | Workload::SqlQuery)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    Uniform,
    Zipfian,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    /// Each key's request goes to its group's leader (Quarry's client); for etcd, to
    /// the endpoints in turn.
    Leader,
    /// Connection i always talks to endpoint i mod endpoints; followers forward.
    Fixed,
}

/// Load generator for Quarry (and etcd, for comparison): closed or open loop,
/// latency percentiles from hdrhistogram.
#[derive(Parser, Debug, Clone)]
#[command(name = "quarry-bench", version = quarry::VERSION)]
pub struct Args {
    /// System under test.
    #[arg(long, value_enum, default_value = "quarry")]
    pub system: System,
    /// Client endpoints, host:port, comma-separated.
    #[arg(long, env = "QUARRY_ENDPOINTS", value_delimiter = ',', required = true)]
    pub endpoints: Vec<String>,
    /// The CA that signed the nodes' certificates (PEM): talk TLS.
    #[arg(long, env = "QUARRY_CACERT")]
    pub cacert: Option<std::path::PathBuf>,
    /// This client's certificate (PEM), for nodes that require one.
    #[arg(long, env = "QUARRY_CERT")]
    pub cert: Option<std::path::PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, env = "QUARRY_KEY")]
    pub key: Option<std::path::PathBuf>,
    /// Metrics endpoints (host:port serving /metrics), for server-side figures.
    #[arg(long, value_delimiter = ',')]
    pub metrics: Vec<String>,
    #[arg(long, value_enum, default_value = "put")]
    pub workload: Workload,
    /// Share of gets in the mixed workload, 0..=1.
    #[arg(long, default_value_t = 0.5)]
    pub read_ratio: f64,
    /// Gets read from the serving replica, without confirming leadership.
    #[arg(long)]
    pub serializable: bool,
    /// Distinct keys (or logs) the workload touches.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    #[arg(long, value_enum, default_value = "uniform")]
    pub distribution: Distribution,
    /// Exponent of the zipfian distribution.
    #[arg(long, default_value_t = 0.99)]
    pub zipf_exponent: f64,
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    #[arg(long, value_enum, default_value = "leader")]
    pub routing: Routing,
    /// Concurrent clients, each with one request outstanding.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Connections the clients share [default: min(clients, 8)].
    #[arg(long)]
    pub connections: Option<usize>,
    /// Open loop: this many requests per second in all, latency measured from each
    /// request's intended send time. Without it, closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of measured load (unless --requests).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many measured requests instead of after --duration.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Name of this run in outputs and plots [default: <system>-<workload>-c<clients>].
    #[arg(long)]
    pub label: Option<String>,
    /// Directory for <label>.hgrm, <label>.json and <label>.png.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Earlier runs' JSON summaries to draw on the same plot.
    #[arg(long, value_delimiter = ',')]
    pub plot_with: Vec<PathBuf>,
    /// Record the history and check it is linearizable (put, get or mixed; at most
    /// 20,000 operations and 256 keys).
    #[arg(long)]
    pub verify: bool,
    /// Print only the JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Checked arguments.
#[derive(Debug, Clone)]
pub struct Plan {
    pub args: Args,
    pub label: String,
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
}

impl Args {
    pub fn check(self) -> Result<Plan, String> {
        let a = &self;
        if a.endpoints.iter().any(|e| e.trim().is_empty()) {
            return Err("--endpoints has an empty entry".into());
        }
        if a.clients == 0 || a.clients > CLIENTS_MAX {
            return Err(format!("--clients must be in 1..={CLIENTS_MAX}"));
        }
        let connections = a.connections.unwrap_or(a.clients.min(8));
        if connections == 0 || connections > a.clients {
            return Err("--connections must be in 1..=clients".into());
        }
        if a.keys == 0 {
            return Err("--keys must be positive".into());
        }
        if !(0.0..=1.0).contains(&a.read_ratio) {
            return Err("--read-ratio must be in 0..=1".into());
        }
        if a.distribution == Distribution::Zipfian && !(a.zipf_exponent > 0.0 && a.zipf_exponent.is_finite()) {
            return Err("--zipf-exponent must be positive".into());
        }
        if a.key_size == 0 || a.key_size > KEY_BYTES_MAX {
            return Err(format!("--key-size must be in 1..={KEY_BYTES_MAX}"));
        }
        if a.value_size > VALUE_BYTES_MAX {
            return Err(format!("--value-size must be at most {VALUE_BYTES_MAX}"));
        }
        let digits = (a.keys - 1).max(1).ilog10() as usize + 1;
        if a.key_size < digits + 1 {
            return Err(format!("--key-size {} cannot name {} keys (needs {})", a.key_size, a.keys, digits + 1));
        }
        if let Some(rate) = a.rate {
            if !(rate > 0.0 && rate.is_finite()) {
                return Err("--rate must be positive".into());
            }
        }
        if !(a.duration > 0.0 && a.duration.is_finite()) && a.requests.is_none() {
            return Err("--duration must be positive".into());
        }
        if a.requests == Some(0) {
            return Err("--requests must be positive".into());
        }
        if !(a.warmup >= 0.0 && a.warmup.is_finite()) {
            return Err("--warmup must be zero or positive".into());
        }
        if a.system == System::Etcd && a.workload == Workload::Append {
            return Err("--workload append is Quarry's named logs; etcd has none".into());
        }
        if a.workload.is_sql() && (a.system == System::Etcd || a.routing == Routing::Fixed) {
            return Err("SQL workloads run against Quarry with --routing leader".into());
        }
        if a.verify {
            if !matches!(a.workload, Workload::Put | Workload::Get | Workload::Mixed) {
                return Err("--verify checks put, get and mixed workloads".into());
            }
            if a.requests.is_none_or(|n| n > VERIFY_OPS_MAX) {
                return Err(format!("--verify needs --requests of at most {VERIFY_OPS_MAX}"));
            }
            if a.keys > VERIFY_KEYS_MAX {
                return Err(format!("--verify needs --keys of at most {VERIFY_KEYS_MAX}"));
            }
            if a.value_size < 8 {
                return Err("--verify needs --value-size of at least 8 (values carry their writer's id)".into());
            }
            if a.warmup > 0.0 {
                return Err("--verify records every operation: use --warmup 0".into());
            }
        }
        let label = a.label.clone().unwrap_or_else(|| {
            let workload = format!("{:?}", a.workload).to_lowercase();
            format!("{:?}-{workload}-c{}", a.system, a.clients).to_lowercase()
        });
        if label.is_empty() || label.contains('/') {
            return Err("--label must be a non-empty file name".into());
        }
        let duration = Duration::from_secs_f64(if a.requests.is_some() { 3600.0 } else { a.duration });
        let warmup = Duration::from_secs_f64(a.warmup);
        Ok(Plan { label, connections, duration, warmup, args: self })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(extra: &[&str]) -> Result<Plan, String> {
        let mut argv = vec!["quarry-bench", "--endpoints", "127.0.0.1:7001"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).map_err(|e| e.to_string())?.check()
    }

    #[test]
    fn defaults_make_a_closed_loop_put_run() {
        let p = plan(&[]).unwrap();
        assert_eq!((p.args.workload, p.args.clients, p.connections), (Workload::Put, 16, 8));
        assert_eq!(p.label, "quarry-put-c16");
        assert!(p.args.rate.is_none());
    }

    #[test]
    fn bad_arguments_are_refused_with_a_reason() {
        let refused = |extra: &[&str], why: &str| {
            let err = plan(extra).unwrap_err();
            assert!(err.contains(why), "{extra:?}: {err}");
        };
        refused(&["--clients", "0"], "--clients");
        refused(&["--clients", "4", "--connections", "5"], "--connections");
        refused(&["--read-ratio", "1.5"], "--read-ratio");
        refused(&["--rate=-3"], "--rate");
        refused(&["--keys", "100000", "--key-size", "4"], "--key-size");
        refused(&["--system", "etcd", "--workload", "append"], "etcd");
        refused(&["--verify"], "--requests");
        refused(&["--verify", "--requests", "100", "--keys", "1000"], "--keys");
        refused(&["--verify", "--requests", "100", "--keys", "10"], "--warmup");
        refused(&["--verify", "--workload", "cas", "--requests", "10", "--keys", "10"], "put, get");
        refused(&["--workload", "scan"], "invalid value");
        refused(&["--label", "a/b"], "--label");
        assert!(Args::try_parse_from(["quarry-bench"]).is_err(), "--endpoints is required");
        assert!(plan(&["--verify", "--requests", "100", "--keys", "10", "--warmup", "0"]).is_ok());
    }
}
