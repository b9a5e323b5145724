//! `quarryctl cas`, `batch`, `watch` and `log append|read|tail`: the client
//! operations beyond put, get, delete and range.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use arrow_array::{Array, BinaryArray, UInt64Array};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::Ticket;
use bytes::Bytes;
use clap::{Args, Subcommand};
use futures::{StreamExt, TryStreamExt};
use quarry::client::{Client, ClientError, WatchOptions};
use quarry::proto::{self, batch_op::Op};

/// Where a value comes from: the argument, a file, or standard input (`-` or nothing).
#[derive(Args)]
pub struct ValueSource {
    /// The value; `-` or none reads standard input.
    value: Option<String>,
    /// Read the value from this file instead.
    #[arg(long, conflicts_with = "value")]
    file: Option<PathBuf>,
}

impl ValueSource {
    pub fn read(&self) -> Result<Bytes, String> {
        match (&self.value, &self.file) {
            (Some(v), None) if v != "-" => Ok(Bytes::from(v.clone())),
            (_, Some(file)) => std::fs::read(file).map(Bytes::from).map_err(|e| describe(file, e)),
            _ => {
                let mut data = Vec::new();
                std::io::stdin().read_to_end(&mut data).map_err(|e| format!("cannot read standard input: {e}"))?;
                Ok(Bytes::from(data))
            }
        }
    }
}

fn describe(file: &Path, e: std::io::Error) -> String {
    format!("cannot read {}: {e}", file.display())
}

#[derive(Subcommand)]
pub enum LogCmd {
    /// Append a record to a named log; prints its position.
    Append {
        /// The log's name.
        name: String,
        #[command(flatten)]
        data: ValueSource,
    },
    /// Records of a named log from a position, one per line: position, then data.
    Read {
        /// The log's name.
        name: String,
        /// First position to read (1-based).
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Most records to read.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Read this node's replica without confirming leadership (may be stale).
        #[arg(long)]
        serializable: bool,
    },
    /// Follow a named log's committed records over Arrow Flight from a position,
    /// printing each as it commits, until Ctrl-C (or --count records).
    Tail {
        /// The log's name.
        name: String,
        /// First position to print (1-based).
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Stop after this many records.
        #[arg(long)]
        count: Option<u64>,
    },
}

/// What a command that tests a condition reports when it did not hold.
pub enum Outcome {
    Done,
    /// A CAS or batch condition did not hold: nothing was written.
    ConditionFailed,
}

pub async fn cas(
    client: &Client,
    key: String,
    expected: u64,
    value: &ValueSource,
    json: bool,
) -> Result<Outcome, Failure> {
    let value = value.read().map_err(Failure::Usage)?;
    let (succeeded, revision) = client.cas(Bytes::from(key), expected, value).await?;
    let text =
        if succeeded { format!("OK revision {revision}") } else { format!("FAILED current revision {revision}") };
    crate::print(json, &serde_json::json!({ "succeeded": succeeded, "revision": revision }), &text);
    Ok(if succeeded { Outcome::Done } else { Outcome::ConditionFailed })
}

/// `batch put K V delete K cas K REV V ...`: the operations, parsed.
fn parse_batch(words: &[String]) -> Result<Vec<proto::BatchOp>, String> {
    let mut ops = Vec::new();
    let mut rest = words;
    while let Some((verb, tail)) = rest.split_first() {
        let need = match verb.as_str() {
            "put" => 2,
            "delete" => 1,
            "cas" => 3,
            other => {
                return Err(format!(
                    "unknown batch operation {other:?}: use put KEY VALUE, delete KEY, cas KEY REV VALUE"
                ))
            }
        };
        if tail.len() < need {
            return Err(format!("{verb} needs {need} arguments"));
        }
        let args = &tail[..need];
        let key = Bytes::from(args[0].clone());
        let op = match verb.as_str() {
            "put" => Op::Put(proto::PutRequest { key, value: Bytes::from(args[1].clone()), ..Default::default() }),
            "delete" => Op::Delete(proto::DeleteRequest { key, ..Default::default() }),
            _ => {
                let expected_revision =
                    args[1].parse().map_err(|_| format!("cas revision {:?} is not a number", args[1]))?;
                Op::Cas(proto::CasRequest {
                    key,
                    expected_revision,
                    value: Bytes::from(args[2].clone()),
                    ..Default::default()
                })
            }
        };
        ops.push(proto::BatchOp { op: Some(op) });
        rest = &tail[need..];
    }
    if ops.is_empty() {
        return Err("no operation given".into());
    }
    Ok(ops)
}

pub async fn batch(client: &Client, words: &[String], json: bool) -> Result<Outcome, Failure> {
    let ops = parse_batch(words).map_err(Failure::Usage)?;
    let answer = client.batch(ops).await?;
    let value = serde_json::json!({
        "succeeded": answer.succeeded,
        "failed_at": answer.failed_at,
        "current_revision": answer.current_revision,
    });
    if answer.succeeded {
        crate::print(json, &value, "OK");
        return Ok(Outcome::Done);
    }
    let text = format!(
        "FAILED: operation {} expected another revision (current {}); nothing was written",
        answer.failed_at, answer.current_revision
    );
    crate::print(json, &value, &text);
    Ok(Outcome::ConditionFailed)
}

pub async fn log(client: &Client, command: LogCmd, json: bool) -> Result<Outcome, Failure> {
    match command {
        LogCmd::Append { name, data } => {
            let data = data.read().map_err(Failure::Usage)?;
            let index = client.append(&name, data).await?;
            crate::print(json, &serde_json::json!({ "index": index }), &format!("OK index {index}"));
        }
        LogCmd::Read { name, from, limit, serializable } => {
            let answer = client.read_log(&name, from, limit, serializable).await?;
            let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
            let records: Vec<_> = answer
                .entries
                .iter()
                .enumerate()
                .map(|(i, e)| serde_json::json!({ "index": from.max(1) + i as u64, "data": text(e) }))
                .collect();
            let lines: Vec<String> = answer
                .entries
                .iter()
                .enumerate()
                .map(|(i, e)| format!("{}\t{}", from.max(1) + i as u64, text(e)))
                .collect();
            crate::print(json, &serde_json::json!({ "records": records, "next": answer.next }), &lines.join("\n"));
        }
        LogCmd::Tail { name, from, count } => tail(client, &name, from, count, json).await?,
    }
    Ok(Outcome::Done)
}

async fn tail(client: &Client, name: &str, from: u64, count: Option<u64>, json: bool) -> Result<(), Failure> {
    let endpoint = client.endpoint(0);
    let address =
        quarry::transport::endpoint(&endpoint).map_err(|_| Failure::Usage(format!("bad endpoint {endpoint:?}")))?;
    let channel = client
        .tls()
        .connect(address)
        .await
        .map_err(|e| Failure::Client(ClientError::from(tonic::Status::unavailable(e.to_string()))))?;
    let ticket = Ticket { ticket: format!("log/{from}/{name}").into() };
    let response = FlightServiceClient::new(channel).do_get(ticket).await.map_err(ClientError::from)?;
    let mut batches = FlightRecordBatchStream::new_from_flight_data(
        response.into_inner().map_err(|s| FlightError::Tonic(Box::new(s))),
    );
    let mut printed = 0;
    while let Some(batch) = batches.next().await {
        let batch = batch.map_err(|e| ClientError::from(tonic::Status::aborted(e.to_string())))?;
        let (Some(indexes), Some(data)) = (
            batch.column(0).as_any().downcast_ref::<UInt64Array>(),
            batch.column(1).as_any().downcast_ref::<BinaryArray>(),
        ) else {
            return Err(ClientError::from(tonic::Status::data_loss("the tail's batches have another shape")).into());
        };
        for i in 0..batch.num_rows() {
            let text = String::from_utf8_lossy(data.value(i)).into_owned();
            let value = serde_json::json!({ "index": indexes.value(i), "data": text });
            crate::print(json, &value, &format!("{}\t{text}", indexes.value(i)));
            printed += 1;
            if count.is_some_and(|c| printed >= c) {
                return Ok(());
            }
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct WatchArgs {
    /// The key; with --prefix, the prefix ("" watches every key).
    key: String,
    /// Watch every key starting with KEY.
    #[arg(long)]
    prefix: bool,
    /// First revision to print in each group (revisions are per group); 0: from now.
    /// An older revision than the nodes hold exits 1, naming the oldest held.
    #[arg(long, default_value_t = 0)]
    rev: u64,
    /// Print each key's previous value too.
    #[arg(long)]
    prev: bool,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
}

/// One line per event: `PUT key value`, `DELETE key`, with group and revision.
pub async fn watch(client: &Client, args: WatchArgs, json: bool) -> Result<Outcome, Failure> {
    let options = WatchOptions { prefix: args.prefix, start_revision: args.rev, prev_values: args.prev };
    let mut watch = client.watch(Bytes::from(args.key), options);
    let mut printed = 0;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    loop {
        for event in watch.next().await? {
            let kind = if event.kind() == proto::watch_event::Kind::Put { "PUT" } else { "DELETE" };
            let mut value = serde_json::json!({
                "type": kind, "key": text(&event.key), "group": event.group, "revision": event.revision,
            });
            let mut line = format!("{kind}\t{}", text(&event.key));
            if kind == "PUT" {
                value["value"] = text(&event.value).into();
                line += &format!("\t{}", text(&event.value));
            }
            if args.prev && event.has_prev {
                value["prev_value"] = text(&event.prev_value).into();
                value["prev_revision"] = event.prev_revision.into();
                line += &format!("\t(was {} at revision {})", text(&event.prev_value), event.prev_revision);
            }
            line += &format!("\t[group {} revision {}]", event.group, event.revision);
            crate::print(json, &value, &line);
            printed += 1;
            if args.count.is_some_and(|c| printed >= c) {
                return Ok(Outcome::Done);
            }
        }
    }
}

pub enum Failure {
    Usage(String),
    Client(ClientError),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_words_parse_into_operations() {
        let words: Vec<String> = "put a 1 delete b cas c 7 x".split(' ').map(String::from).collect();
        let ops = parse_batch(&words).unwrap();
        assert_eq!(ops.len(), 3);
        assert!(matches!(&ops[2].op, Some(Op::Cas(c)) if c.expected_revision == 7 && c.value == "x"));
        for bad in ["put a", "cas c x y", "frob a", ""] {
            let words: Vec<String> = bad.split(' ').filter(|w| !w.is_empty()).map(String::from).collect();
            assert!(parse_batch(&words).is_err(), "{bad:?}");
        }
    }
}
