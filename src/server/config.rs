//! `quarryd`'s configuration: command-line flags, checked into a `NodeConfig`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::raft::NodeId;

#[derive(Parser, Debug, Clone)]
#[command(name = "quarryd", about = "Quarry server: replicated key-value store and logs over multi-Raft")]
pub struct Args {
    /// This node's id (must appear in --initial-cluster).
    #[arg(long)]
    pub node_id: NodeId,
    /// Directory for the shard logs.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Every member as id=host:port, e.g. 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003.
    /// The address serves the client, admin and peer services.
    #[arg(long)]
    pub initial_cluster: String,
    /// Refuse peers of another cluster.
    #[arg(long, default_value_t = 1)]
    pub cluster_id: u64,
    /// Raft groups, created at bootstrap; a key maps to a group by hash.
    #[arg(long, default_value_t = 64)]
    pub groups: u64,
    /// Shards (glommio executors); groups are spread over them.
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// Length of one Raft tick.
    #[arg(long, default_value_t = 50)]
    pub tick_ms: u64,
    /// Ticks without a leader before an election (randomized up to twice this).
    #[arg(long, default_value_t = 10)]
    pub election_ticks: u32,
    #[arg(long, default_value_t = 2)]
    pub heartbeat_ticks: u32,
    /// Where to serve Prometheus `/metrics` and `/health` (off when absent).
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Largest value (or log record) a client may write.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_value_bytes: u64,
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    pub members: BTreeMap<NodeId, SocketAddr>,
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub cluster_id: u64,
    pub groups: u64,
    pub shards: usize,
    pub tick: Duration,
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
    pub max_value_bytes: u64,
}

/// Groups a node may host; more would make startup and heartbeats unreasonable.
pub const GROUPS_MAX: u64 = 65_536;
pub const SHARDS_MAX: usize = 256;

impl Args {
    /// Checks the flags; the error is one line, for an operator.
    pub fn check(self) -> Result<NodeConfig, String> {
        let members = parse_cluster(&self.initial_cluster)?;
        let listen = *members
            .get(&self.node_id)
            .ok_or_else(|| format!("--node-id {} is not in --initial-cluster", self.node_id))?;
        if self.groups == 0 || self.groups > GROUPS_MAX {
            return Err(format!("--groups must be in 1..={GROUPS_MAX}"));
        }
        if self.shards == 0 || self.shards > SHARDS_MAX {
            return Err(format!("--shards must be in 1..={SHARDS_MAX}"));
        }
        if self.tick_ms == 0 {
            return Err("--tick-ms must be positive".into());
        }
        if self.heartbeat_ticks == 0 || self.election_ticks <= self.heartbeat_ticks {
            return Err("--election-ticks must exceed --heartbeat-ticks, which must be positive".into());
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > 64 << 20 {
            return Err("--max-value-bytes must be in 1..=64 MiB".into());
        }
        Ok(NodeConfig {
            node_id: self.node_id,
            data_dir: self.data_dir,
            members,
            listen,
            metrics_listen: self.metrics_listen,
            cluster_id: self.cluster_id,
            groups: self.groups,
            shards: self.shards,
            tick: Duration::from_millis(self.tick_ms),
            election_ticks: self.election_ticks,
            heartbeat_ticks: self.heartbeat_ticks,
            max_value_bytes: self.max_value_bytes,
        })
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
    }
}
