//! What a data dir belongs to, written once its groups exist: a restart must not
//! found the cluster again, and must not start with another node id, cluster id or
//! group layout than the one its logs were made with.

use std::path::Path;

use super::NodeConfig;

const FILE: &str = "quarry-node.json";

#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Identity {
    cluster_id: u64,
    node_id: u64,
    groups: u64,
    shards: usize,
}

impl Identity {
    fn of(config: &NodeConfig) -> Identity {
        Identity {
            cluster_id: config.cluster_id,
            node_id: config.node_id,
            groups: config.groups,
            shards: config.shards,
        }
    }
}

/// Whether the data dir is already initialized; an error when it belongs to another
/// node, cluster or layout.
pub fn check(config: &NodeConfig) -> Result<bool, String> {
    let path = config.data_dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let found: Identity = serde_json::from_str(&text).map_err(|e| format!("{} is damaged: {e}", path.display()))?;
    let wanted = Identity::of(config);
    if found != wanted {
        return Err(format!(
            "data dir {} was made for {found:?}, but this node is configured as {wanted:?}",
            config.data_dir.display()
        ));
    }
    Ok(true)
}

/// Records the data dir's identity (atomically: temp file, fsync, rename).
pub fn write(data_dir: &Path, config: &NodeConfig) -> Result<(), String> {
    let path = data_dir.join(FILE);
    let temp = data_dir.join(format!("{FILE}.tmp"));
    let text = serde_json::to_vec_pretty(&Identity::of(config)).expect("identity serializes");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temp)?;
        std::io::Write::write_all(&mut file, &text)?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)?;
        std::fs::File::open(data_dir)?.sync_all()
    };
    write().map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::Args;
    use clap::Parser;

    fn config(dir: &Path, node: &str, groups: &str) -> NodeConfig {
        let data = dir.to_str().unwrap();
        let argv = ["quarryd", "--node-id", node, "--data-dir", data, "--groups", groups, "--shards", "1"];
        let cluster = ["--initial-cluster", "1=127.0.0.1:7001,2=127.0.0.1:7002"];
        Args::try_parse_from(argv.iter().chain(&cluster)).unwrap().check().unwrap()
    }

    #[test]
    fn a_data_dir_refuses_another_node_or_layout() {
        let dir = tempfile::tempdir().unwrap();
        let first = config(dir.path(), "1", "8");
        assert!(!check(&first).unwrap(), "a new data dir is not initialized");
        write(dir.path(), &first).unwrap();
        assert!(check(&first).unwrap());
        assert!(check(&config(dir.path(), "2", "8")).unwrap_err().contains("node_id: 1"));
        assert!(check(&config(dir.path(), "1", "16")).unwrap_err().contains("groups: 8"));
    }
}
