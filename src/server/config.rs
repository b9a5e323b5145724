//! `quarryd`'s configuration: command-line flags, checked into a `NodeConfig`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::placement::{allowed_cpus, PinThreads, Placement};
use crate::raft::NodeId;
use crate::tls::TlsSettings;

#[derive(Parser, Debug, Clone, Default)]
#[command(name = "quarryd", about = "Quarry server: replicated key-value store and logs over multi-Raft", version = crate::VERSION)]
pub struct Args {
    /// A TOML file with any of the settings below (snake_case keys); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This node's id (must appear in --initial-cluster).
    #[arg(long)]
    pub node_id: Option<NodeId>,
    /// Directory for the shard logs.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Every member as id=host:port, e.g. 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003.
    /// The address serves the client, admin and peer services.
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// `new` founds a cluster with the members of --initial-cluster; `existing` joins a
    /// running one (after `quarryctl member add`): the node's groups start empty and
    /// learn everything from their leaders. Ignored once the data dir is initialized
    /// [default: new].
    #[arg(long, value_parser = ["new", "existing"])]
    pub initial_cluster_state: Option<String>,
    /// Disaster recovery after losing a majority for good: start this node as a new
    /// single-member cluster from its data (every entry its log holds, committed or
    /// not), marking every other member removed. The old data dir is kept beside the
    /// new one. Grow the cluster again with `quarryctl member add`; remove the flag
    /// afterwards (a node already alone ignores it). See docs/operations.md.
    #[arg(long)]
    pub force_new_cluster: bool,
    /// Refuse peers of another cluster [default: 1].
    #[arg(long)]
    pub cluster_id: Option<u64>,
    /// Raft groups, created at bootstrap; a key maps to a group by hash [default: 64].
    #[arg(long)]
    pub groups: Option<u64>,
    /// Shards (glommio executors); groups are spread over them [default: one per core].
    #[arg(long)]
    pub shards: Option<usize>,
    /// Length of one Raft tick in milliseconds [default: 50].
    #[arg(long)]
    pub tick_ms: Option<u64>,
    /// Ticks without a leader before an election, randomized up to twice this [default: 10].
    #[arg(long)]
    pub election_ticks: Option<u32>,
    /// Ticks between heartbeats [default: 2].
    #[arg(long)]
    pub heartbeat_ticks: Option<u32>,
    /// Where to serve Prometheus `/metrics` and `/health` (off when absent).
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Largest value (or log record) a client may write, in bytes [default: 1 MiB].
    #[arg(long)]
    pub max_value_bytes: Option<u64>,
    /// Bytes of recent key changes each group keeps in memory for watchers; a watch
    /// from an older revision is refused as compacted [default: 1 MiB].
    #[arg(long)]
    pub watch_history_bytes: Option<u64>,
    /// Applied entries after which a group snapshots its state and compacts its log;
    /// 0 never does (the log then grows without bound) [default: 10000].
    #[arg(long)]
    pub snapshot_distance: Option<u64>,
    /// Size of each shard log segment file in MiB, preallocated [default: 64].
    #[arg(long)]
    pub segment_mib: Option<u64>,
    /// Connections (clients and peers) served at once; more wait in the listen
    /// backlog until one closes [default: 4096].
    #[arg(long)]
    pub connections_max: Option<usize>,
    /// Close a connection that has had no request open for this many seconds (its
    /// client reconnects when it next calls); 0 never does [default: 300].
    #[arg(long)]
    pub idle_timeout_s: Option<u64>,
    /// How a leader confirms a linearizable read: `read-index` (a heartbeat round
    /// acknowledged by a quorum, per read batch) or `lease` (no round trip while the
    /// leader's lease holds; sound only while the members' clocks run at rates within
    /// 2 ticks per election timeout of each other) [default: read-index].
    #[arg(long, value_parser = ["read-index", "lease"])]
    pub read_mode: Option<String>,
    /// Threads serving the network (gRPC, Flight, peer streams) [default: the CPUs
    /// left after the shards, at least 2].
    #[arg(long)]
    pub network_threads: Option<usize>,
    /// Pin each shard thread to a CPU of its own and the network threads to the CPUs
    /// after them: `auto` does when the CPUs this process may use cover every thread,
    /// `on` refuses to start otherwise [default: auto].
    #[arg(long, value_parser = ["auto", "on", "off"])]
    pub pin_threads: Option<String>,
    /// This node's certificate (PEM), presented to clients and peers alike (one port
    /// serves both): turns TLS on. Its subject alternative names must hold the
    /// address clients and peers dial (an IP address or a DNS name).
    #[arg(long)]
    pub cert_file: Option<PathBuf>,
    /// The private key of --cert-file (PEM).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// The CA that signs client certificates [default: the peer CA only].
    #[arg(long)]
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse connections without a certificate signed by a trusted CA [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub client_cert_auth: Option<bool>,
    /// The certificate this node presents to the peers it connects to; it must name
    /// this node as a subject alternative name URI `quarry://node/<id>`
    /// [default: --cert-file].
    #[arg(long)]
    pub peer_cert_file: Option<PathBuf>,
    /// The private key of --peer-cert-file [default: --key-file].
    #[arg(long)]
    pub peer_key_file: Option<PathBuf>,
    /// The CA that signs node certificates; only its certificates may speak for a
    /// node [default: --trusted-ca-file].
    #[arg(long)]
    pub peer_trusted_ca_file: Option<PathBuf>,
}

/// The same settings, from `/etc/quarry/quarry.toml` (or `--config`).
#[derive(serde::Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<NodeId>,
    data_dir: Option<PathBuf>,
    initial_cluster: Option<String>,
    initial_cluster_state: Option<String>,
    cluster_id: Option<u64>,
    groups: Option<u64>,
    shards: Option<usize>,
    tick_ms: Option<u64>,
    election_ticks: Option<u32>,
    heartbeat_ticks: Option<u32>,
    metrics_listen: Option<SocketAddr>,
    max_value_bytes: Option<u64>,
    watch_history_bytes: Option<u64>,
    snapshot_distance: Option<u64>,
    segment_mib: Option<u64>,
    connections_max: Option<usize>,
    idle_timeout_s: Option<u64>,
    read_mode: Option<String>,
    network_threads: Option<usize>,
    pin_threads: Option<String>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    trusted_ca_file: Option<PathBuf>,
    client_cert_auth: Option<bool>,
    peer_cert_file: Option<PathBuf>,
    peer_key_file: Option<PathBuf>,
    peer_trusted_ca_file: Option<PathBuf>,
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    pub members: BTreeMap<NodeId, SocketAddr>,
    /// Whether this node founds the cluster (bootstraps its groups with `members`).
    pub founding: bool,
    /// `--force-new-cluster`: make the data a single-member cluster first.
    pub force_new_cluster: bool,
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub cluster_id: u64,
    pub groups: u64,
    pub shards: usize,
    pub tick: Duration,
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
    pub max_value_bytes: u64,
    pub watch_history_bytes: u64,
    pub snapshot_distance: u64,
    pub segment_bytes: u64,
    pub connections_max: usize,
    /// A connection with no request open this long is closed.
    pub idle_timeout: Option<Duration>,
    /// Linearizable reads from a leader lease instead of ReadIndex.
    pub lease_reads: bool,
    pub network_threads: usize,
    /// The CPUs of the shard and network threads (`placement.rs`).
    pub placement: Placement,
    /// TLS files; `None` serves plain text to anyone.
    pub tls: Option<TlsSettings>,
}

/// Groups a node may host; more would make startup and heartbeats unreasonable.
pub const GROUPS_MAX: u64 = 65_536;
pub const SHARDS_MAX: usize = 256;
pub const NETWORK_THREADS_MAX: usize = 256;
/// Ticks a leader lease is shortened by, for clock-rate differences between members.
pub const LEASE_DRIFT_MARGIN_TICKS: u32 = 2;

impl Args {
    /// Merges flags over the config file over defaults, and checks the result; the
    /// error is one line, for an operator.
    pub fn check(self) -> Result<NodeConfig, String> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| format!("config file {}: {}", path.display(), e.message()))?
            }
            None => FileConfig::default(),
        };
        let required = |name: &str| format!("missing --{} (or {} in the config file)", name.replace('_', "-"), name);
        let node_id = self.node_id.or(file.node_id).ok_or_else(|| required("node_id"))?;
        let data_dir = self.data_dir.or(file.data_dir).ok_or_else(|| required("data_dir"))?;
        // glommio cannot open a relative directory path (EBADF): make it absolute.
        let data_dir = std::path::absolute(&data_dir)
            .map_err(|e| format!("--data-dir {}: cannot make it absolute: {e}", data_dir.display()))?;
        let cluster = self.initial_cluster.or(file.initial_cluster).ok_or_else(|| required("initial_cluster"))?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let groups = self.groups.or(file.groups).unwrap_or(64);
        let shards = self.shards.or(file.shards).unwrap_or(cores);
        let tick_ms = self.tick_ms.or(file.tick_ms).unwrap_or(50);
        let election_ticks = self.election_ticks.or(file.election_ticks).unwrap_or(10);
        let heartbeat_ticks = self.heartbeat_ticks.or(file.heartbeat_ticks).unwrap_or(2);
        let max_value_bytes = self.max_value_bytes.or(file.max_value_bytes).unwrap_or(1 << 20);
        let members = parse_cluster(&cluster)?;
        let founding = match self.initial_cluster_state.or(file.initial_cluster_state).as_deref() {
            None | Some("new") => true,
            Some("existing") => false,
            Some(other) => return Err(format!("initial_cluster_state must be new or existing, not {other:?}")),
        };
        let listen =
            *members.get(&node_id).ok_or_else(|| format!("--node-id {node_id} is not in --initial-cluster"))?;
        if groups == 0 || groups > GROUPS_MAX {
            return Err(format!("--groups must be in 1..={GROUPS_MAX}"));
        }
        if shards == 0 || shards > SHARDS_MAX {
            return Err(format!("--shards must be in 1..={SHARDS_MAX}"));
        }
        if tick_ms == 0 {
            return Err("--tick-ms must be positive".into());
        }
        if heartbeat_ticks == 0 || election_ticks <= heartbeat_ticks {
            return Err("--election-ticks must exceed --heartbeat-ticks, which must be positive".into());
        }
        let segment_mib = self.segment_mib.or(file.segment_mib).unwrap_or(64);
        if !(1..=1024).contains(&segment_mib) {
            return Err("--segment-mib must be in 1..=1024".into());
        }
        // A segment must hold the largest entry with room to spare.
        if segment_mib << 20 < 4 * max_value_bytes {
            return Err("--segment-mib must be at least four times --max-value-bytes".into());
        }
        let connections_max = self.connections_max.or(file.connections_max).unwrap_or(4096);
        if connections_max < 2 {
            return Err("--connections-max must be at least 2".into());
        }
        if max_value_bytes == 0 || max_value_bytes > 64 << 20 {
            return Err("--max-value-bytes must be in 1..=64 MiB".into());
        }
        let watch_history_bytes = self
            .watch_history_bytes
            .or(file.watch_history_bytes)
            .unwrap_or(crate::state::CHANGE_HISTORY_BYTES_DEFAULT as u64);
        if watch_history_bytes > 1 << 30 {
            return Err("--watch-history-bytes must be at most 1 GiB".into());
        }
        let lease_reads = match self.read_mode.or(file.read_mode).as_deref() {
            None | Some("read-index") => false,
            Some("lease") => true,
            Some(other) => return Err(format!("read_mode must be read-index or lease, not {other:?}")),
        };
        if lease_reads && election_ticks <= LEASE_DRIFT_MARGIN_TICKS {
            return Err(format!("--read-mode lease needs --election-ticks above {LEASE_DRIFT_MARGIN_TICKS}"));
        }
        let shards = shards.min(groups as usize);
        let network_threads =
            self.network_threads.or(file.network_threads).unwrap_or(cores.saturating_sub(shards).max(2));
        if network_threads == 0 || network_threads > NETWORK_THREADS_MAX {
            return Err(format!("--network-threads must be in 1..={NETWORK_THREADS_MAX}"));
        }
        let pin: PinThreads = self.pin_threads.or(file.pin_threads).as_deref().unwrap_or("auto").parse()?;
        let allowed = allowed_cpus().map_err(|e| format!("cannot read this process's CPU affinity: {e}"))?;
        let placement = Placement::plan(&allowed, shards, network_threads, pin)?;
        let tls = TlsFlags {
            cert_file: self.cert_file.or(file.cert_file),
            key_file: self.key_file.or(file.key_file),
            trusted_ca_file: self.trusted_ca_file.or(file.trusted_ca_file),
            client_cert_auth: self.client_cert_auth.or(file.client_cert_auth),
            peer_cert_file: self.peer_cert_file.or(file.peer_cert_file),
            peer_key_file: self.peer_key_file.or(file.peer_key_file),
            peer_trusted_ca_file: self.peer_trusted_ca_file.or(file.peer_trusted_ca_file),
        }
        .check()?;
        Ok(NodeConfig {
            node_id,
            data_dir,
            members,
            founding,
            force_new_cluster: self.force_new_cluster,
            listen,
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            cluster_id: self.cluster_id.or(file.cluster_id).unwrap_or(1),
            groups,
            shards,
            tick: Duration::from_millis(tick_ms),
            election_ticks,
            heartbeat_ticks,
            max_value_bytes,
            watch_history_bytes,
            snapshot_distance: self.snapshot_distance.or(file.snapshot_distance).unwrap_or(10_000),
            segment_bytes: segment_mib << 20,
            connections_max,
            idle_timeout: match self.idle_timeout_s.or(file.idle_timeout_s).unwrap_or(300) {
                0 => None,
                seconds => Some(Duration::from_secs(seconds)),
            },
            lease_reads,
            network_threads,
            placement,
            tls,
        })
    }
}

/// The TLS settings as given, before defaults.
struct TlsFlags {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    trusted_ca_file: Option<PathBuf>,
    client_cert_auth: Option<bool>,
    peer_cert_file: Option<PathBuf>,
    peer_key_file: Option<PathBuf>,
    peer_trusted_ca_file: Option<PathBuf>,
}

impl TlsFlags {
    /// TLS is on with a certificate and key; every other TLS setting needs them.
    fn check(self) -> Result<Option<TlsSettings>, String> {
        let (cert_file, key_file) = match (self.cert_file, self.key_file) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) => {
                let any = self.trusted_ca_file.is_some()
                    || self.client_cert_auth.is_some()
                    || self.peer_cert_file.is_some()
                    || self.peer_key_file.is_some()
                    || self.peer_trusted_ca_file.is_some();
                if any {
                    return Err("TLS settings need --cert-file and --key-file".into());
                }
                return Ok(None);
            }
            _ => return Err("--cert-file and --key-file go together".into()),
        };
        let peer_trusted_ca_file = self
            .peer_trusted_ca_file
            .or_else(|| self.trusted_ca_file.clone())
            .ok_or("TLS needs --peer-trusted-ca-file or --trusted-ca-file")?;
        Ok(Some(TlsSettings {
            peer_cert_file: self.peer_cert_file.unwrap_or_else(|| cert_file.clone()),
            peer_key_file: self.peer_key_file.unwrap_or_else(|| key_file.clone()),
            cert_file,
            key_file,
            trusted_ca_file: self.trusted_ca_file,
            client_cert_auth: self.client_cert_auth.unwrap_or(false),
            peer_trusted_ca_file,
        }))
    }
}

fn parse_cluster(spec: &str) -> Result<BTreeMap<NodeId, SocketAddr>, String> {
    let mut members = BTreeMap::new();
    for part in spec.split(',').filter(|p| !p.trim().is_empty()) {
        let (id, addr) =
            part.split_once('=').ok_or_else(|| format!("--initial-cluster entry {part:?} is not id=host:port"))?;
        let id: NodeId = id.trim().parse().map_err(|_| format!("--initial-cluster: bad node id {id:?}"))?;
        if id == 0 {
            return Err("--initial-cluster: node id 0 is reserved".into());
        }
        let addr: SocketAddr =
            addr.trim().parse().map_err(|_| format!("--initial-cluster: bad address {addr:?} for node {id}"))?;
        if members.insert(id, addr).is_some() {
            return Err(format!("--initial-cluster: node {id} appears twice"));
        }
    }
    if members.is_empty() {
        return Err("--initial-cluster is empty".into());
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<NodeConfig, String> {
        let mut argv = vec!["quarryd", "--node-id", "2", "--data-dir", "/tmp/q", "--initial-cluster"];
        argv.push("1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003");
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).map_err(|e| e.to_string())?.check()
    }

    #[test]
    fn a_valid_configuration_names_this_nodes_address() {
        let config = args(&[]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:7002".parse().unwrap());
        assert_eq!(config.members.len(), 3);
    }

    #[test]
    fn bad_configurations_get_one_clear_line() {
        assert!(args(&["--groups", "0"]).unwrap_err().contains("--groups"));
        assert!(args(&["--shards", "0"]).unwrap_err().contains("--shards"));
        assert!(args(&["--election-ticks", "2"]).unwrap_err().contains("--election-ticks"));
        let bad = Args::try_parse_from([
            "quarryd",
            "--node-id",
            "9",
            "--data-dir",
            "d",
            "--initial-cluster",
            "1=127.0.0.1:1",
        ]);
        assert!(bad.unwrap().check().unwrap_err().contains("not in --initial-cluster"));
        assert!(parse_cluster("1=nowhere").unwrap_err().contains("bad address"));
        assert!(parse_cluster("1=127.0.0.1:1,1=127.0.0.1:2").unwrap_err().contains("twice"));
        let none = Args::try_parse_from(["quarryd"]).unwrap().check().unwrap_err();
        assert!(none.contains("missing --node-id"), "{none}");
    }

    #[test]
    fn tls_settings_need_a_certificate_and_a_ca() {
        assert_eq!(args(&[]).unwrap().tls, None, "plain text by default");
        let tls = args(&["--cert-file", "n.pem", "--key-file", "n.key", "--trusted-ca-file", "ca.pem"]).unwrap().tls;
        let tls = tls.expect("TLS on");
        assert_eq!((tls.peer_cert_file.to_str(), tls.peer_trusted_ca_file.to_str()), (Some("n.pem"), Some("ca.pem")));
        assert!(!tls.client_cert_auth);
        let strict =
            args(&["--cert-file", "n", "--key-file", "k", "--peer-trusted-ca-file", "ca", "--client-cert-auth"]);
        assert!(strict.unwrap().tls.unwrap().client_cert_auth);
        assert!(args(&["--cert-file", "n.pem"]).unwrap_err().contains("go together"));
        assert!(args(&["--client-cert-auth"]).unwrap_err().contains("need --cert-file"));
        assert!(args(&["--cert-file", "n", "--key-file", "k"]).unwrap_err().contains("trusted-ca-file"));
    }

    #[test]
    fn a_joining_node_does_not_found_the_cluster() {
        assert!(args(&[]).unwrap().founding);
        assert!(!args(&["--initial-cluster-state", "existing"]).unwrap().founding);
        assert!(args(&["--initial-cluster-state", "maybe"]).unwrap_err().contains("maybe"));
    }

    #[test]
    fn a_config_file_fills_in_and_flags_override_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quarry.toml");
        let toml = "node_id = 3\ndata_dir = \"/var/lib/quarry\"\ngroups = 16\n\
                    initial_cluster = \"1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003\"\n";
        std::fs::write(&path, toml).unwrap();
        let path_arg = path.to_str().unwrap();
        let config = Args::try_parse_from(["quarryd", "--config", path_arg, "--groups", "8"]).unwrap().check().unwrap();
        assert_eq!((config.node_id, config.groups), (3, 8));
        assert_eq!(config.listen, "127.0.0.1:7003".parse().unwrap());
        std::fs::write(&path, "node_id = 3\nbogus = 1\n").unwrap();
        let err = Args::try_parse_from(["quarryd", "--config", path_arg]).unwrap().check().unwrap_err();
        assert!(err.contains("bogus"), "{err}");
    }
}
