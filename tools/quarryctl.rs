//! quarryctl: Quarry's command-line client. `quarryctl --help`.
//!
//! Exit codes: 0 success, 1 the cluster refused or failed the request (or a snapshot
//! file is damaged), 2 bad usage, 3 a key that `get` did not find, 4 a `cas` or
//! `batch` whose condition did not hold (nothing was written).

use std::io::Write;
use std::process::ExitCode;

use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use quarry::client::{Client, ClientError};
use quarry::proto::{self, admin_client::AdminClient};
use quarry::snapshot::backup::Backup;
use quarry::snapshot::Manifest;
use quarry::tls::{Authority, ClientTls, Holder, Validity};
use quarry::transport::flight::fetch_snapshot;
use quarry::transport::wire::SnapshotOffer;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tonic::transport::Channel;

mod kv_commands;
mod sql_commands;

#[derive(Parser)]
#[command(name = "quarryctl", about = "Quarry command-line client", version = quarry::VERSION)]
struct Cli {
    /// Nodes to talk to, host:port, comma-separated.
    #[arg(
        long,
        global = true,
        env = "QUARRY_ENDPOINTS",
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003",
        value_delimiter = ','
    )]
    endpoints: Vec<String>,
    /// The CA that signed the nodes' certificates (PEM): talk TLS.
    #[arg(long = "cacert", id = "tls_cacert", global = true, env = "QUARRY_CACERT")]
    cacert: Option<PathBuf>,
    /// This client's certificate (PEM), for nodes that require one; an operator's
    /// (`quarryctl certs admin`) for member, leader and snapshot commands.
    #[arg(long = "cert", id = "tls_cert", global = true, env = "QUARRY_CERT")]
    cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long = "key", id = "tls_key", global = true, env = "QUARRY_KEY")]
    key: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// With --sequence: the write carries this client id and sequence number, so
    /// running the command again with the same pair applies it once (and answers as
    /// the first time).
    #[arg(long, global = true, requires = "sequence", value_parser = clap::value_parser!(u64).range(1..))]
    client_id: Option<u64>,
    /// See --client-id.
    #[arg(long, global = true, requires = "client_id", value_parser = clap::value_parser!(u64).range(1..))]
    sequence: Option<u64>,
    /// Seconds a call keeps retrying (no leader, a node down) before it fails.
    #[arg(long, global = true, env = "QUARRY_TIMEOUT", default_value_t = 10.0, value_name = "SECONDS")]
    timeout: f64,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a value (from the argument, --file, or standard input).
    Put {
        /// The key.
        key: String,
        #[command(flatten)]
        value: kv_commands::ValueSource,
    },
    /// Write a value only if the key is at REVISION (0: the key must not exist).
    /// Exits 4 when it is not, printing the current revision.
    Cas {
        /// The key.
        key: String,
        /// The revision the key must have.
        revision: u64,
        #[command(flatten)]
        value: kv_commands::ValueSource,
    },
    /// Several writes to keys of one group, atomically: `put KEY VALUE`, `delete KEY`,
    /// `cas KEY REVISION VALUE`, in any number. Exits 4 when a cas does not hold.
    Batch {
        /// The operations, e.g. `put a 1 delete b cas c 7 x`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true, value_name = "OP")]
        ops: Vec<String>,
    },
    /// Print every put and delete of KEY (or, with --prefix, of the keys under it) as
    /// it happens, until Ctrl-C or --count events. A broken stream resumes at another
    /// node from where it stopped, missing and repeating nothing.
    Watch(kv_commands::WatchArgs),
    /// Named append-only logs: append, read, tail.
    Log {
        #[command(subcommand)]
        command: kv_commands::LogCmd,
    },
    /// Read a value (linearizable unless --serializable).
    Get {
        /// The key.
        key: String,
        /// Read this node's replica without confirming leadership (may be stale).
        #[arg(long)]
        serializable: bool,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: String,
    },
    /// Keys in [start, end) across all groups, in key order (empty end: to the last key).
    Range {
        /// The first key.
        start: String,
        /// The key after the last (empty: to the last key).
        #[arg(default_value = "")]
        end: String,
        /// Most keys to print.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Read each group at this node's replica without confirming leadership.
        #[arg(long)]
        serializable: bool,
    },
    /// A one-screen summary of the cluster (nodes up, groups with a leader, lagging
    /// groups, leaders per node); --groups adds every node's view of every group.
    /// Exits 1 when a node does not answer.
    Status {
        /// Also print every node's view of every group: leader, term, commit, applied,
        /// lag, members.
        #[arg(long)]
        groups: bool,
    },
    /// Cluster members: list, add, promote, remove, replace.
    Member {
        #[command(subcommand)]
        command: MemberCmd,
    },
    /// Group leadership: transfer one group, drain a node, balance leaders.
    Leader {
        #[command(subcommand)]
        command: LeaderCmd,
    },
    /// Snapshot files.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCmd,
    },
    /// Make a CA and certificates for TLS (files in --dir, PEM).
    Certs {
        #[command(subcommand)]
        command: CertsCmd,
    },
    /// Apply SQL statements to a database atomically (created by its first write);
    /// `sql schema DB` shows its tables, indexes and latest schema changes.
    Sql(sql_commands::SqlArgs),
    /// Run a read-only SQL statement; rows as an aligned table (or --json).
    Query(sql_commands::QueryArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum CertsCmd {
    /// A new CA: ca.pem and ca.key (keep ca.key off the nodes).
    Ca {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Days it stays valid.
        #[arg(long, default_value_t = 3650)]
        days: i64,
    },
    /// A node's certificate, node-ID.pem and node-ID.key, signed by the CA in --dir:
    /// it names the node (URI quarry://node/ID) and the hosts it is dialled at.
    Node {
        id: u64,
        /// IP addresses or DNS names clients and peers use to reach the node.
        #[arg(long, value_delimiter = ',', required = true)]
        hosts: Vec<String>,
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
    /// An operator's certificate (URI quarry://admin): admin.pem and admin.key.
    Admin {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
    /// An ordinary client's certificate, NAME.pem and NAME.key: Kv and Log only.
    Client {
        name: String,
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
}

#[derive(Subcommand)]
enum MemberCmd {
    /// The members and the change in progress, if any.
    List,
    /// Add a node (started with --initial-cluster-state existing): it becomes a
    /// learner in every group, catches up, and is promoted to voter.
    Add {
        node: u64,
        address: String,
        /// Stop once it is a learner everywhere (promote it later).
        #[arg(long)]
        learner: bool,
    },
    /// Promote a caught-up learner to voter in every group.
    Promote { node: u64 },
    /// Remove a node from every group (its leaderships move first).
    Remove { node: u64 },
    /// Replace a (failed) node with a new one, in one joint change per group.
    Replace { old: u64, new: u64, address: String },
}

#[derive(Subcommand)]
enum LeaderCmd {
    /// Hand one group's leadership to a voter.
    Transfer { group: u64, to: u64 },
    /// Move every leadership off a node (before maintenance).
    Drain { node: u64 },
    /// Spread group leaders evenly over the voters.
    Balance,
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Save a consistent snapshot of every group (each covering every write
    /// acknowledged before the command started) into one backup file, over Flight.
    Save { file: PathBuf },
    /// What a backup or snapshot file holds, with every chunk and image checked.
    Status { file: PathBuf },
    /// Make a new node's data dir from a backup: run it for every node of the new
    /// cluster (same --initial-cluster, each its own --node-id), then start quarryd
    /// on each with the same settings and the backup's group count as --groups.
    Restore {
        file: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        node_id: u64,
        /// The new cluster's members, id=host:port,...
        #[arg(long)]
        initial_cluster: String,
        #[arg(long)]
        cluster_id: Option<u64>,
        /// As quarryd's --shards [default: one per core].
        #[arg(long)]
        shards: Option<usize>,
        /// As quarryd's --segment-mib [default: 64].
        #[arg(long)]
        segment_mib: Option<u64>,
    },
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
    voters: String,
    learners: String,
}

#[derive(Serialize)]
struct NodeRow {
    endpoint: String,
    /// 0 when the endpoint did not answer.
    node: u64,
    health: String,
    /// Groups this node leads.
    leading: usize,
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
        Cmd::Certs { .. } => {
            let Cmd::Certs { command } = cli.command else { unreachable!("matched above") };
            return certs(command);
        }
        Cmd::Snapshot { command: SnapshotCmd::Status { file } } => return snapshot_status(file, cli.json),
        Cmd::Snapshot { command: SnapshotCmd::Restore { .. } } => {
            let Cmd::Snapshot { command } = cli.command else { unreachable!("matched above") };
            return snapshot_restore(command, cli.json);
        }
        _ => {}
    }
    let tls = match ClientTls::from_files(cli.cacert.as_deref(), cli.cert.as_deref(), cli.key.as_deref()) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("quarryctl: {e}");
            return ExitCode::from(2);
        }
    };
    if !(cli.timeout > 0.0 && cli.timeout.is_finite()) {
        eprintln!("quarryctl: --timeout must be a positive number of seconds");
        return ExitCode::from(2);
    }
    let client = match Client::with_tls(&cli.endpoints, tls) {
        Ok(client) => {
            let client = client.with_deadline(Duration::from_secs_f64(cli.timeout));
            match cli.client_id.zip(cli.sequence) {
                Some((id, sequence)) => client.with_identity(id, sequence),
                None => client,
            }
        }
        Err(e) => {
            eprintln!("quarryctl: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&client, cli.command, cli.json).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("quarryctl: {}", explain(&e, &client));
            ExitCode::FAILURE
        }
    }
}

async fn run(client: &Client, command: Cmd, json: bool) -> Result<ExitCode, ClientError> {
    match command {
        Cmd::Put { key, value } => {
            let value = match value.read() {
                Ok(value) => value,
                Err(e) => return Ok(usage(&e)),
            };
            let revision = client.put(Bytes::from(key), value).await?;
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
        Cmd::Status { groups } => status(client, json, groups).await?,
        Cmd::Member { command } => member(client, command, json).await?,
        Cmd::Leader { command } => leader(client, command, json).await?,
        Cmd::Snapshot { command: SnapshotCmd::Save { file } } => snapshot_save(client, &file, json).await?,
        Cmd::Cas { key, revision, value } => {
            return kv_outcome(kv_commands::cas(client, key, revision, &value, json).await)
        }
        Cmd::Batch { ops } => return kv_outcome(kv_commands::batch(client, &ops, json).await),
        Cmd::Log { command } => return kv_outcome(kv_commands::log(client, command, json).await),
        Cmd::Watch(args) => return kv_outcome(kv_commands::watch(client, args, json).await),
        Cmd::Sql(args) => return sql_outcome(sql_commands::sql(client, args, json).await),
        Cmd::Query(args) => return sql_outcome(sql_commands::query(client, args, json).await),
        Cmd::Snapshot { .. } | Cmd::Certs { .. } | Cmd::Completions { .. } => {
            unreachable!("handled before connecting")
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn usage(why: &str) -> ExitCode {
    eprintln!("quarryctl: {why}");
    ExitCode::from(2)
}

fn kv_outcome(outcome: Result<kv_commands::Outcome, kv_commands::Failure>) -> Result<ExitCode, ClientError> {
    match outcome {
        Ok(kv_commands::Outcome::Done) => Ok(ExitCode::SUCCESS),
        Ok(kv_commands::Outcome::ConditionFailed) => Ok(ExitCode::from(4)),
        Err(kv_commands::Failure::Usage(why)) => Ok(usage(&why)),
        Err(kv_commands::Failure::Client(e)) => Err(e),
    }
}

/// A failed call in Quarry's words: what happened, where, and what to do.
fn explain(error: &ClientError, client: &Client) -> String {
    let endpoints = client.endpoints();
    let ClientError::Status(status) = error else {
        return error.to_string();
    };
    let message = status.message();
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded if message.contains("outcome unknown") => {
            format!("{message} (endpoints {endpoints})")
        }
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown | tonic::Code::Cancelled => {
            format!(
                "no node answered at {endpoints} ({message}): is the cluster running? set --endpoints or \
                 QUARRY_ENDPOINTS"
            )
        }
        tonic::Code::InvalidArgument => format!("invalid request: {message}"),
        tonic::Code::FailedPrecondition => format!("refused: {message}"),
        tonic::Code::NotFound => format!("not found: {message}"),
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
            format!("not allowed: {message} (check --cert and --key)")
        }
        tonic::Code::ResourceExhausted => format!("the cluster is overloaded or full: {message}"),
        code => format!("{message} ({code:?})"),
    }
}

fn sql_outcome(outcome: Result<(), sql_commands::SqlError>) -> Result<ExitCode, ClientError> {
    match outcome {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(sql_commands::SqlError::Usage(usage)) => {
            eprintln!("quarryctl: {}", usage.0);
            Ok(ExitCode::from(2))
        }
        Err(sql_commands::SqlError::Client(e)) => Err(e),
    }
}

/// Tries to fetch one group's snapshot this many times (a newer snapshot may replace
/// the file between the request and the fetch).
const SNAPSHOT_FETCH_ATTEMPTS: usize = 3;

/// Groups snapshotted and fetched at once by `snapshot save`.
const GROUPS_SAVED_AT_ONCE: usize = 4;

async fn snapshot_save(client: &Client, file: &Path, json: bool) -> Result<(), ClientError> {
    let members = admin_call(client, |mut a| async move { a.members(proto::MembersRequest {}).await }).await?;
    let status = admin_call(client, |mut a| async move { a.status(proto::StatusRequest {}).await }).await?;
    let groups = status.groups.len() as u64;
    let bar = ProgressBar::new(groups).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} groups, {msg}").expect("valid progress template"),
    );
    let (members, bar_ref) = (&members.members, &bar);
    let one_group = |group: u64| async move {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r =
                admin_call(client, |mut a| async move { a.snapshot_now(proto::SnapshotNowRequest { group }).await })
                    .await?;
            match fetch_group(client.tls(), members, group, &r).await {
                Ok(fetched) => return Ok::<_, ClientError>((group, fetched)),
                Err(e) if attempt < SNAPSHOT_FETCH_ATTEMPTS => bar_ref.println(format!("group {group}: {e}; again")),
                Err(e) => return Err(tonic::Status::unavailable(format!("group {group}: {e}")).into()),
            }
        }
    };
    let mut fetches = futures::stream::iter(0..groups).map(one_group).buffer_unordered(GROUPS_SAVED_AT_ONCE);
    let mut images = BTreeMap::new();
    let mut bytes = 0u64;
    while let Some(fetched) = fetches.next().await {
        let (group, (manifest, image)) = fetched?;
        bytes += manifest.size;
        images.insert(group, (manifest, image));
        bar.set_message(format!("{} KiB", bytes / 1024));
        bar.inc(1);
    }
    bar.finish_and_clear();
    quarry::snapshot::backup::Backup { groups: images }
        .write(file)
        .map_err(|e| tonic::Status::internal(format!("cannot write {}: {e}", file.display())))?;
    let text = format!("saved {groups} groups ({bytes} bytes of state) to {}", file.display());
    print(json, &serde_json::json!({ "groups": groups, "bytes": bytes, "file": file }), &text);
    Ok(())
}

/// Pulls one group's image from the node that took it, over Flight.
async fn fetch_group(
    tls: &ClientTls,
    members: &[proto::Member],
    group: u64,
    r: &proto::SnapshotNowResponse,
) -> Result<(Manifest, Bytes), String> {
    let member = members.iter().find(|m| m.node == r.leader).ok_or(format!("node {} is not a member", r.leader))?;
    let endpoint =
        quarry::transport::endpoint(&member.address).map_err(|e| format!("bad address {}: {e}", member.address))?;
    let channel = tls.channel(endpoint);
    let conf_state = quarry::raft::ConfState {
        voters: r.voters.iter().copied().collect(),
        voters_outgoing: r.outgoing_voters.iter().copied().collect(),
        learners: r.learners.iter().copied().collect(),
    };
    let meta = quarry::raft::SnapshotMeta { index: r.index, term: r.term, conf_state };
    let offer =
        SnapshotOffer { group, from: r.leader, to: 0, term: r.term, meta: meta.clone(), size: r.size, crc32: r.crc32 };
    let image = fetch_snapshot(channel, &offer).await.map_err(|e| e.to_string())?;
    Ok((Manifest { group, meta, size: r.size, crc32: r.crc32 }, image))
}

fn snapshot_restore(command: SnapshotCmd, json: bool) -> ExitCode {
    let SnapshotCmd::Restore { file, data_dir, node_id, initial_cluster, cluster_id, shards, segment_mib } = command
    else {
        unreachable!("called for restore only")
    };
    let backup = match Backup::read(&file) {
        Ok(backup) => backup,
        Err(e) => {
            eprintln!("quarryctl: {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let args = quarry::server::Args {
        node_id: Some(node_id),
        data_dir: Some(data_dir.clone()),
        initial_cluster: Some(initial_cluster),
        cluster_id,
        groups: Some(backup.group_count()),
        shards,
        segment_mib,
        ..Default::default()
    };
    let config = match args.check() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("quarryctl: {e}");
            return ExitCode::from(2);
        }
    };
    let (groups, bytes) = (backup.group_count(), backup.bytes());
    if let Err(e) = quarry::server::restore(&config, backup) {
        eprintln!("quarryctl: {e}");
        return ExitCode::FAILURE;
    }
    let text = format!(
        "restored {groups} groups ({bytes} bytes) into {} for node {node_id}; start quarryd with --groups {groups} --shards {}",
        data_dir.display(),
        config.shards
    );
    print(json, &serde_json::json!({ "groups": groups, "bytes": bytes, "shards": config.shards }), &text);
    ExitCode::SUCCESS
}

fn snapshot_status(file: &Path, json: bool) -> ExitCode {
    match Backup::read(file) {
        Ok(backup) => {
            let groups: Vec<_> = backup
                .groups
                .values()
                .map(|(m, _)| serde_json::json!({ "group": m.group, "index": m.meta.index, "term": m.meta.term, "size": m.size, "crc32": m.crc32 }))
                .collect();
            let text = format!(
                "backup of {} groups, {} bytes of state: every chunk and image verified",
                backup.group_count(),
                backup.bytes()
            );
            let value =
                serde_json::json!({ "backup": true, "groups": groups, "bytes": backup.bytes(), "verified": true });
            print(json, &value, &text);
            return ExitCode::SUCCESS;
        }
        // Not a backup: a single group's snapshot file, perhaps.
        Err(e) if e.to_string().contains("not a Quarry backup") => {}
        Err(e) => {
            eprintln!("quarryctl: {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    }
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

/// Prints every node's health and its view of every group; an error when a node
/// does not answer (after printing what the others said), so scripts can check.
/// Entries a replica may trail its leader (or its own commit) by before its group
/// counts as lagging.
const LAGGING_ENTRIES: u64 = 1_000;

async fn status(client: &Client, json: bool, show_groups: bool) -> Result<(), ClientError> {
    let mut nodes = Vec::new();
    let mut rows = Vec::new();
    let mut unreachable = 0;
    let mut led = BTreeMap::new(); // group -> leader, as any node sees it
    let mut lagging = std::collections::BTreeSet::new();
    for endpoint in 0..client.nodes() {
        let status = match client.status(endpoint).await {
            Ok(status) => status,
            Err(e) => {
                unreachable += 1;
                nodes.push(NodeRow {
                    endpoint: client.endpoint(endpoint),
                    node: 0,
                    health: format!("unreachable: {e}"),
                    leading: 0,
                });
                continue;
            }
        };
        let leading = status.groups.iter().filter(|g| g.role == "leader").count();
        let leaderless = status.groups.iter().filter(|g| g.leader == 0).count();
        let abstaining = status.groups.iter().filter(|g| g.abstaining).count();
        let health = match (leaderless, abstaining) {
            (0, 0) => "ok".to_string(),
            (0, n) => format!("{n} groups rebuilding after a storage fault (not voting)"),
            (n, _) => format!("{n} groups without a leader"),
        };
        nodes.push(NodeRow { endpoint: client.endpoint(endpoint), node: status.node, health, leading });
        for g in &status.groups {
            if g.leader != 0 {
                led.insert(g.group, g.leader);
            } else {
                led.entry(g.group).or_insert(0);
            }
            let behind = g.progress.iter().any(|p| g.last_index.saturating_sub(p.matched) > LAGGING_ENTRIES);
            if behind || g.commit.saturating_sub(g.applied) > LAGGING_ENTRIES {
                lagging.insert(g.group);
            }
        }
        rows.extend(status.groups.into_iter().map(|g| GroupRow {
            node: status.node,
            group: g.group,
            role: if g.abstaining { format!("{} (abstaining)", g.role) } else { g.role },
            leader: g.leader,
            term: g.term,
            commit: g.commit,
            applied: g.applied,
            lag: g.commit.saturating_sub(g.applied),
            voters: ids(&g.voters),
            learners: ids(&g.learners),
        }));
    }
    let up = nodes.len() - unreachable;
    let with_leader = led.values().filter(|l| **l != 0).count();
    let summary = serde_json::json!({
        "nodes": nodes.len(),
        "nodes_up": up,
        "groups": led.len(),
        "groups_with_leader": with_leader,
        "groups_lagging": lagging.len(),
    });
    // Output errors (a closed pipe, say) are ignored: there is no one left to tell.
    let mut out = std::io::stdout().lock();
    if json {
        let value = serde_json::json!({ "summary": summary, "nodes": nodes, "groups": rows });
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(&value).expect("rows serialize"));
    } else {
        let lagging_text = if lagging.is_empty() {
            "none lagging".to_string()
        } else {
            format!(
                "{} lagging (groups {})",
                lagging.len(),
                lagging.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
            )
        };
        let _ = writeln!(
            out,
            "{up} of {} nodes up; {with_leader} of {} groups with a leader; {lagging_text}\n",
            nodes.len(),
            led.len()
        );
        let _ = writeln!(out, "{:<22} {:>4} {:>7}  HEALTH", "ENDPOINT", "NODE", "LEADING");
        for n in &nodes {
            let _ = writeln!(out, "{:<22} {:>4} {:>7}  {}", n.endpoint, n.node, n.leading, n.health);
        }
        if !show_groups {
            rows.clear();
        }
        if !rows.is_empty() {
            let _ = writeln!(
                out,
                "\n{:>4} {:>5} {:<13} {:>6} {:>6} {:>8} {:>8} {:>5}  {:<12} LEARNERS",
                "NODE", "GROUP", "ROLE", "LEADER", "TERM", "COMMIT", "APPLIED", "LAG", "VOTERS"
            );
        }
        for r in rows {
            let _ = writeln!(
                out,
                "{:>4} {:>5} {:<13} {:>6} {:>6} {:>8} {:>8} {:>5}  {:<12} {}",
                r.node, r.group, r.role, r.leader, r.term, r.commit, r.applied, r.lag, r.voters, r.learners
            );
        }
    }
    if unreachable > 0 {
        return Err(tonic::Status::unavailable(format!(
            "{unreachable} of {} endpoints did not answer",
            client.nodes()
        ))
        .into());
    }
    Ok(())
}

fn ids(list: &[u64]) -> String {
    list.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// Sends an admin request to the first endpoint that takes it. Another endpoint is
/// tried when one cannot be reached, and the whole list again while the answer is
/// "unavailable" (no leader yet, leadership moved): member changes are resumable, so
/// repeating one is safe.
async fn admin_call<T, F, Fut>(client: &Client, call: F) -> Result<T, ClientError>
where
    F: Fn(AdminClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut last = tonic::Status::unavailable("no endpoints");
    for round in 0..ADMIN_ROUNDS {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        for node in 0..client.nodes() {
            let Some(admin) = client.admin(node) else { continue };
            match call(admin).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if status.code() == tonic::Code::Unavailable => last = status,
                Err(status) => return Err(status.into()),
            }
        }
    }
    Err(last.into())
}

/// Rounds over the endpoints before an admin request is given up.
const ADMIN_ROUNDS: usize = 10;

fn spinner(message: String) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_message(message);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Whether the member at `address` answers as node `node`, within 2 s.
async fn probe(client: &Client, node: u64, address: &str) -> String {
    let Ok(endpoint) = quarry::transport::endpoint(address) else {
        return format!("no: bad address {address:?}");
    };
    let ask = async {
        let channel = client.tls().connect(endpoint).await.map_err(|e| e.to_string())?;
        AdminClient::new(channel).status(proto::StatusRequest {}).await.map_err(|e| e.message().to_string())
    };
    match tokio::time::timeout(Duration::from_secs(2), ask).await {
        Ok(Ok(status)) if status.get_ref().node == node => "yes".into(),
        Ok(Ok(status)) => format!("no: node {} answers there", status.get_ref().node),
        Ok(Err(e)) => format!("no: {e}"),
        Err(_) => "no: no answer within 2s".into(),
    }
}

/// The members as a table (or JSON); `answers`, when given, says for each whether it
/// answered (`member list`).
fn print_members(json: bool, members: &[proto::Member], change: &str, answers: Option<&[String]>) {
    let answer = |i: usize| answers.and_then(|a| a.get(i)).map(String::as_str);
    let rows: Vec<_> = members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut row = serde_json::json!({ "node": m.node, "address": m.address, "voter": m.voter });
            if let Some(a) = answer(i) {
                row["answers"] = a.into();
            }
            row
        })
        .collect();
    let answers_header = if answers.is_some() { " ANSWERS" } else { "" };
    let mut text = format!("{:>4} {:<22} {:<8}{answers_header}", "NODE", "ADDRESS", "ROLE").trim_end().to_string();
    for (i, m) in members.iter().enumerate() {
        let role = if m.voter { "voter" } else { "learner" };
        text += format!("\n{:>4} {:<22} {role:<8} {}", m.node, m.address, answer(i).unwrap_or("")).trim_end();
    }
    if !change.is_empty() {
        text += &format!("\nin progress: {change}");
    }
    print(json, &serde_json::json!({ "members": rows, "change": change }), &text);
}

async fn member(client: &Client, command: MemberCmd, json: bool) -> Result<(), ClientError> {
    let done = |what: String, r: proto::MemberChangeResponse| {
        eprintln!("{what} ({} group changes)", r.groups_changed);
        print_members(json, &r.members, "", None);
    };
    match command {
        MemberCmd::List => {
            let r = admin_call(client, |mut a| async move { a.members(proto::MembersRequest {}).await }).await?;
            let answers = futures::future::join_all(r.members.iter().map(|m| probe(client, m.node, &m.address))).await;
            print_members(json, &r.members, &r.change, Some(&answers));
        }
        MemberCmd::Add { node, address, learner } => {
            let bar = spinner(format!("adding node {node}: learner in every group, catching up, promoting"));
            let request = proto::AddMemberRequest { node, address, learner_only: learner };
            let r = admin_call(client, |mut a| {
                let request = request.clone();
                async move { a.add_member(request).await }
            })
            .await;
            bar.finish_and_clear();
            done(format!("node {node} added"), r?);
        }
        MemberCmd::Promote { node } => {
            let bar = spinner(format!("promoting node {node} in every group"));
            let r =
                admin_call(client, |mut a| async move { a.promote_member(proto::PromoteMemberRequest { node }).await })
                    .await;
            bar.finish_and_clear();
            done(format!("node {node} promoted"), r?);
        }
        MemberCmd::Remove { node } => {
            let bar = spinner(format!("removing node {node} from every group"));
            let r =
                admin_call(client, |mut a| async move { a.remove_member(proto::RemoveMemberRequest { node }).await })
                    .await;
            bar.finish_and_clear();
            done(format!("node {node} removed"), r?);
        }
        MemberCmd::Replace { old, new, address } => {
            let bar = spinner(format!("replacing node {old} with node {new}"));
            let request = proto::ReplaceMemberRequest { old_node: old, new_node: new, new_address: address };
            let r = admin_call(client, |mut a| {
                let request = request.clone();
                async move { a.replace_member(request).await }
            })
            .await;
            bar.finish_and_clear();
            done(format!("node {old} replaced by node {new}"), r?);
        }
    }
    Ok(())
}

async fn leader(client: &Client, command: LeaderCmd, json: bool) -> Result<(), ClientError> {
    let moves = match command {
        LeaderCmd::Transfer { group, to } => {
            let request = proto::TransferLeaderRequest { group, to };
            admin_call(client, |mut a| async move { a.transfer_leader(request).await }).await?;
            print(
                json,
                &serde_json::json!({ "group": group, "leader": to }),
                &format!("node {to} leads group {group}"),
            );
            return Ok(());
        }
        LeaderCmd::Drain { node } => {
            admin_call(client, |mut a| async move { a.drain_leaders(proto::DrainLeadersRequest { node }).await })
                .await?
        }
        LeaderCmd::Balance => {
            admin_call(client, |mut a| async move { a.balance_leaders(proto::BalanceLeadersRequest {}).await }).await?
        }
    };
    let rows: Vec<_> =
        moves.moves.iter().map(|m| serde_json::json!({ "group": m.group, "from": m.from, "to": m.to })).collect();
    let lines: Vec<String> =
        moves.moves.iter().map(|m| format!("group {}: node {} -> node {}", m.group, m.from, m.to)).collect();
    let text = if lines.is_empty() { "no leadership moved".to_string() } else { lines.join("\n") };
    print(json, &serde_json::json!({ "moves": rows }), &text);
    Ok(())
}

pub(crate) fn print(json: bool, value: &serde_json::Value, text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = if json { writeln!(out, "{value}") } else { writeln!(out, "{text}") };
}

/// `quarryctl certs`: a CA, then node, operator and client certificates signed by it.
fn certs(command: CertsCmd) -> ExitCode {
    match make_certs(command) {
        Ok(written) => {
            for path in written {
                println!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("quarryctl certs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn make_certs(command: CertsCmd) -> Result<Vec<PathBuf>, String> {
    let (dir, days, holder, name, hosts) = match command {
        CertsCmd::Ca { dir, days } => {
            std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let ca = Authority::new("quarry-ca", Validity::days(days))?;
            return write_pair(&dir, "ca", &ca.own().cert_pem, &ca.own().key_pem);
        }
        CertsCmd::Node { id, hosts, dir, days } => (dir, days, Holder::Node(id), format!("node-{id}"), hosts),
        CertsCmd::Admin { dir, days } => (dir, days, Holder::Admin, "admin".to_owned(), Vec::new()),
        CertsCmd::Client { name, dir, days } => (dir, days, Holder::Client(name.clone()), name, Vec::new()),
    };
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {} (make the CA first: quarryctl certs ca): {e}", path.display()))
    };
    let ca = Authority::load(&read("ca.pem")?, &read("ca.key")?)?;
    let issued = ca.issue(&holder, &hosts, Validity::days(days))?;
    write_pair(&dir, &name, &issued.cert_pem, &issued.key_pem)
}

/// Writes NAME.pem and NAME.key (the key readable by its owner only); never
/// overwrites a file.
fn write_pair(dir: &Path, name: &str, cert_pem: &str, key_pem: &str) -> Result<Vec<PathBuf>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut written = Vec::new();
    for (file, text, mode) in [(format!("{name}.pem"), cert_pem, 0o644), (format!("{name}.key"), key_pem, 0o600)] {
        let path = dir.join(file);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        out.write_all(text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}
