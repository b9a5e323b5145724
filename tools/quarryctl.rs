//! quarryctl: Quarry's command-line client. `quarryctl --help`.
//!
//! Exit codes: 0 success, 1 the cluster refused or failed the request, 2 bad usage,
//! 3 a key that `get` did not find.

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
    /// Every node's view of every group: leader, term, commit, applied, lag.
    Status,
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
        Cmd::Status => status(client, json).await?,
    }
    Ok(ExitCode::SUCCESS)
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
