//! quarryctl: Quarry's command-line client. `quarryctl --help`.
//!
//! Exit codes: 0 success, 1 the cluster refused or failed the request (or a snapshot
//! file is damaged), 2 bad usage, 3 a key that `get` did not find.

use std::io::Write;
use std::process::ExitCode;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use quarry::client::{Client, ClientError};
use serde::Serialize;

#[derive(Parser)]
#[command(name = "quarryctl", about = "Quarry command-line client")]
struct Cli {
    /// Nodes to talk to, host:port, comma-separated.
    #[arg(long, default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a value.
    Put { key: String, value: String },
    /// Read a value (linearizable unless --serializable).
    Get {
        key: String,
        #[arg(long)]
        serializable: bool,
    },
    /// Delete a key.
    Delete { key: String },
    /// Keys in [start, end) across all groups, in key order (empty end: to the last key).
    Range {
        start: String,
        #[arg(default_value = "")]
        end: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        serializable: bool,
    },
    /// Every node's view of every group: leader, term, commit, applied, lag.
    Status,
    /// Snapshot files.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCmd,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// What a snapshot file holds, with every chunk and the whole image checked.
    Status { file: std::path::PathBuf },
}

#[derive(Serialize)]
struct GroupRow {
    node: u64,
    group: u64,
    role: String,
    leader: u64,
    term: u64,
    commit: u64,
    applied: u64,
    lag: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(*shell, &mut Cli::command(), "quarryctl", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Cmd::Snapshot { command: SnapshotCmd::Status { file } } => return snapshot_status(file, cli.json),
        _ => {}
    }
    let client = match Client::new(&cli.endpoints) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("quarryctl: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&client, cli.command, cli.json).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("quarryctl: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(client: &Client, command: Cmd, json: bool) -> Result<ExitCode, ClientError> {
    match command {
        Cmd::Put { key, value } => {
            let revision = client.put(Bytes::from(key), Bytes::from(value)).await?;
            print(json, &serde_json::json!({ "revision": revision }), &format!("OK revision {revision}"));
        }
        Cmd::Get { key, serializable } => match client.get(Bytes::from(key.clone()), serializable).await? {
            Some((value, revision)) => {
                let text = String::from_utf8_lossy(&value).into_owned();
                print(json, &serde_json::json!({ "key": key, "value": text, "revision": revision }), &text);
            }
            None => {
                eprintln!("quarryctl: key {key:?} not found");
                return Ok(ExitCode::from(3));
            }
        },
        Cmd::Delete { key } => {
            let existed = client.delete(Bytes::from(key)).await?;
            print(json, &serde_json::json!({ "existed": existed }), if existed { "deleted" } else { "not found" });
        }
        Cmd::Range { start, end, limit, serializable } => {
            let (kvs, more) = client.range(Bytes::from(start), Bytes::from(end), limit, serializable).await?;
            let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
            let rows: Vec<_> = kvs
                .iter()
                .map(
                    |kv| serde_json::json!({ "key": text(&kv.key), "value": text(&kv.value), "revision": kv.revision }),
                )
                .collect();
            let lines: Vec<String> = kvs.iter().map(|kv| format!("{}\t{}", text(&kv.key), text(&kv.value))).collect();
            let more_line = if more { "\n(more)" } else { "" };
            print(json, &serde_json::json!({ "kvs": rows, "more": more }), &format!("{}{more_line}", lines.join("\n")));
        }
        Cmd::Status => status(client, json).await?,
        Cmd::Snapshot { .. } | Cmd::Completions { .. } => unreachable!("handled before connecting"),
    }
    Ok(ExitCode::SUCCESS)
}

fn snapshot_status(file: &std::path::Path, json: bool) -> ExitCode {
    match quarry::snapshot::store::read_file(file) {
        Ok((m, _)) => {
            let ids = |s: &std::collections::BTreeSet<u64>| s.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
            let c = &m.meta.conf_state;
            let value = serde_json::json!({
                "group": m.group, "index": m.meta.index, "term": m.meta.term,
                "voters": c.voters, "voters_outgoing": c.voters_outgoing, "learners": c.learners,
                "size": m.size, "crc32": m.crc32, "verified": true,
            });
            let text = format!(
                "group {} at index {} (term {}), voters {}, learners {}, {} bytes, CRC32 {:08x}: every chunk verified",
                m.group,
                m.meta.index,
                m.meta.term,
                ids(&c.voters),
                ids(&c.learners),
                m.size,
                m.crc32
            );
            print(json, &value, &text);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("quarryctl: {}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

async fn status(client: &Client, json: bool) -> Result<(), ClientError> {
    let mut rows = Vec::new();
    for node in 0..client.nodes() {
        let status = client.status(node).await?;
        rows.extend(status.groups.into_iter().map(|g| GroupRow {
            node: status.node,
            group: g.group,
            role: g.role,
            leader: g.leader,
            term: g.term,
            commit: g.commit,
            applied: g.applied,
            lag: g.commit.saturating_sub(g.applied),
        }));
    }
    // Output errors (a closed pipe, say) are ignored: there is no one left to tell.
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(&rows).expect("rows serialize"));
        return Ok(());
    }
    let _ = writeln!(
        out,
        "{:>4} {:>5} {:<13} {:>6} {:>6} {:>8} {:>8} {:>5}",
        "NODE", "GROUP", "ROLE", "LEADER", "TERM", "COMMIT", "APPLIED", "LAG"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:>4} {:>5} {:<13} {:>6} {:>6} {:>8} {:>8} {:>5}",
            r.node, r.group, r.role, r.leader, r.term, r.commit, r.applied, r.lag
        );
    }
    Ok(())
}

fn print(json: bool, value: &serde_json::Value, text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = if json { writeln!(out, "{value}") } else { writeln!(out, "{text}") };
}
