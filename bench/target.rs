//! The system under test, behind one `execute`: Quarry through its routing client or
//! a fixed node, or etcd through its v3 KV API.

use std::collections::HashMap;

use bytes::Bytes;
use quarry::client::{Client, ClientError};
use quarry::proto::kv_client::KvClient;
use quarry::proto::log_client::LogClient;
use quarry::proto::{sql_value, SqlStatement, SqlValue};
use quarry::tls::ClientTls;
use tonic::transport::Channel;

use crate::args::{Plan, Routing, System};
use crate::etcd;
use crate::workload::{Generator, Op, OpKind};

/// What a request observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    Written,
    Read(Option<Bytes>),
    Cas { succeeded: bool },
}

/// One client's memory between requests: the revision it last saw per key (CAS).
#[derive(Default)]
pub struct ClientState {
    revisions: HashMap<u64, u64>,
}

pub enum Target {
    /// One routing client per connection.
    QuarryRouted(Vec<Client>),
    QuarryFixed(Vec<(KvClient<Channel>, LogClient<Channel>)>),
    Etcd(Vec<etcd::kv_client::KvClient<Channel>>),
}

fn channel(endpoint: &str, tls: &ClientTls) -> Result<Channel, String> {
    let endpoint = quarry::transport::endpoint(endpoint).map_err(|_| format!("bad endpoint {endpoint:?}"))?;
    Ok(tls.channel(endpoint))
}

impl Target {
    /// `connections` independent connections (HTTP/2 channels) to the endpoints.
    pub fn connect(plan: &Plan) -> Result<Target, String> {
        let endpoints = &plan.args.endpoints;
        let args = &plan.args;
        let tls = ClientTls::from_files(args.cacert.as_deref(), args.cert.as_deref(), args.key.as_deref())?;
        let fixed = |i: usize| channel(&endpoints[i % endpoints.len()], &tls);
        Ok(match (plan.args.system, plan.args.routing) {
            (System::Quarry, Routing::Leader) => Target::QuarryRouted(
                (0..plan.connections)
                    .map(|_| Client::with_tls(endpoints, tls.clone()).map_err(|e| e.to_string()))
                    .collect::<Result<_, _>>()?,
            ),
            (System::Quarry, Routing::Fixed) => Target::QuarryFixed(
                (0..plan.connections)
                    .map(|i| fixed(i).map(|ch| (KvClient::new(ch.clone()), LogClient::new(ch))))
                    .collect::<Result<_, _>>()?,
            ),
            // etcd forwards writes to its leader itself; connections spread over members.
            (System::Etcd, _) => Target::Etcd(
                (0..plan.connections)
                    .map(|i| fixed(i).map(etcd::kv_client::KvClient::new))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    /// Sends one request on connection `conn`. Errors come as (kind, message): the
    /// kind (the gRPC code) keys the error table.
    pub async fn execute(
        &self,
        conn: usize,
        op: Op,
        value: Bytes,
        workload: &Generator,
        serializable: bool,
        state: &mut ClientState,
    ) -> Result<Observed, (String, String)> {
        let key = workload.key(op.key);
        match self {
            Target::QuarryRouted(clients) => {
                let client = &clients[conn % clients.len()];
                let kind = |e: ClientError| match e {
                    ClientError::Status(s) => status_kind(s),
                    other => ("Client".to_string(), other.to_string()),
                };
                match op.kind {
                    OpKind::Put => client.put(key, value).await.map(|_| Observed::Written).map_err(kind),
                    OpKind::Get => {
                        client.get(key, serializable).await.map(|v| Observed::Read(v.map(|(v, _)| v))).map_err(kind)
                    }
                    OpKind::Cas => {
                        let expected = state.revisions.get(&op.key).copied().unwrap_or(0);
                        let (succeeded, revision) = client.cas(key, expected, value).await.map_err(kind)?;
                        state.revisions.insert(op.key, revision);
                        Ok(Observed::Cas { succeeded })
                    }
                    OpKind::Append => {
                        let log = String::from_utf8_lossy(&key).into_owned();
                        client.append(&log, value).await.map(|_| Observed::Written).map_err(kind)
                    }
                    OpKind::SqlInsert => {
                        let blob = SqlValue { value: Some(sql_value::Value::Blob(value)) };
                        let insert = sql_statement(SQL_INSERT, vec![text(&key), blob]);
                        client
                            .sql_execute(&sql_database(op.key), vec![insert])
                            .await
                            .map(|_| Observed::Written)
                            .map_err(kind)
                    }
                    OpKind::SqlQuery => {
                        let select = sql_statement(SQL_SELECT, vec![text(&key)]);
                        let answer =
                            client.sql_query(&sql_database(op.key), select, serializable, 0).await.map_err(kind)?;
                        let value =
                            answer.rows.first().and_then(|row| row.values.first()).and_then(|v| match &v.value {
                                Some(sql_value::Value::Blob(b)) => Some(b.clone()),
                                _ => None,
                            });
                        Ok(Observed::Read(value))
                    }
                }
            }
            Target::QuarryFixed(clients) => {
                let (kv, log) = &clients[conn % clients.len()];
                let (mut kv, mut log) = (kv.clone(), log.clone());
                let kind = status_kind;
                use quarry::proto::{CasRequest, GetRequest, LogAppendRequest, PutRequest};
                match op.kind {
                    OpKind::Put => {
                        let request = PutRequest { key, value, client_id: 0, sequence: 0 };
                        kv.put(request).await.map(|_| Observed::Written).map_err(kind)
                    }
                    OpKind::Get => {
                        let answer = kv.get(GetRequest { key, serializable }).await.map_err(kind)?.into_inner();
                        Ok(Observed::Read(answer.found.then_some(answer.value)))
                    }
                    OpKind::Cas => {
                        let expected_revision = state.revisions.get(&op.key).copied().unwrap_or(0);
                        let request = CasRequest { key, expected_revision, value, client_id: 0, sequence: 0 };
                        let answer = kv.cas(request).await.map_err(kind)?.into_inner();
                        state.revisions.insert(op.key, answer.revision);
                        Ok(Observed::Cas { succeeded: answer.succeeded })
                    }
                    OpKind::Append => {
                        let request = LogAppendRequest {
                            log: String::from_utf8_lossy(&key).into_owned(),
                            data: value,
                            client_id: 0,
                            sequence: 0,
                        };
                        log.append(request).await.map(|_| Observed::Written).map_err(kind)
                    }
                    OpKind::SqlInsert | OpKind::SqlQuery => {
                        Err(("Unsupported".into(), "SQL workloads use --routing leader".into()))
                    }
                }
            }
            Target::Etcd(clients) => {
                let mut kv = clients[conn % clients.len()].clone();
                let kind = status_kind;
                match op.kind {
                    OpKind::Put => {
                        let request = etcd::PutRequest { key: key.to_vec(), value: value.to_vec(), lease: 0 };
                        kv.put(request).await.map(|_| Observed::Written).map_err(kind)
                    }
                    OpKind::Get => {
                        let request = etcd::RangeRequest { key: key.to_vec(), serializable, ..Default::default() };
                        let answer = kv.range(request).await.map_err(kind)?.into_inner();
                        Ok(Observed::Read(answer.kvs.into_iter().next().map(|kv| Bytes::from(kv.value))))
                    }
                    OpKind::Cas => {
                        let expected = state.revisions.get(&op.key).copied().unwrap_or(0);
                        let answer = kv.txn(etcd::cas(key.to_vec(), expected, value.to_vec())).await.map_err(kind)?;
                        let (succeeded, revision) = etcd::cas_outcome(&answer.into_inner());
                        state.revisions.insert(op.key, revision);
                        Ok(Observed::Cas { succeeded })
                    }
                    OpKind::Append => Err(("Unsupported".into(), "etcd has no named logs".into())),
                    OpKind::SqlInsert | OpKind::SqlQuery => Err(("Unsupported".into(), "etcd has no SQL".into())),
                }
            }
        }
    }
}

/// Databases the SQL workloads spread their rows over (key `n` in database `n % 16`).
const SQL_DATABASES: u64 = 16;
/// Rows loaded per write before a `sql-query` run.
const SQL_LOAD_BATCH: u64 = 100;

fn sql_database(key: u64) -> String {
    format!("bench{}", key % SQL_DATABASES)
}

fn sql_statement(sql: &str, params: Vec<SqlValue>) -> SqlStatement {
    SqlStatement { sql: sql.into(), params, named: Default::default() }
}

fn text(key: &Bytes) -> SqlValue {
    SqlValue { value: Some(sql_value::Value::Text(String::from_utf8_lossy(key).into_owned())) }
}

impl Target {
    /// Creates the SQL workloads' tables and, for `sql-query`, a row for every key.
    pub async fn prepare(&self, plan: &Plan, workload: &Generator) -> Result<(), String> {
        let Target::QuarryRouted(clients) = self else { return Ok(()) };
        if !plan.args.workload.is_sql() {
            return Ok(());
        }
        let client = &clients[0];
        let create = "CREATE TABLE IF NOT EXISTS kv(k TEXT PRIMARY KEY, v BLOB)";
        for db in 0..SQL_DATABASES.min(plan.args.keys) {
            client
                .sql_execute(&sql_database(db), vec![sql_statement(create, vec![])])
                .await
                .map_err(|e| e.to_string())?;
        }
        if plan.args.workload != crate::args::Workload::SqlQuery {
            return Ok(());
        }
        let value = SqlValue { value: Some(sql_value::Value::Blob(Bytes::from(vec![b'v'; plan.args.value_size]))) };
        for db in 0..SQL_DATABASES.min(plan.args.keys) {
            let keys: Vec<u64> = (db..plan.args.keys).step_by(SQL_DATABASES as usize).collect();
            for chunk in keys.chunks(SQL_LOAD_BATCH as usize) {
                let inserts = chunk
                    .iter()
                    .map(|&k| sql_statement(SQL_INSERT, vec![text(&workload.key(k)), value.clone()]))
                    .collect();
                client.sql_execute(&sql_database(db), inserts).await.map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

const SQL_INSERT: &str = "INSERT OR REPLACE INTO kv VALUES (?, ?)";
const SQL_SELECT: &str = "SELECT v FROM kv WHERE k = ?";

fn status_kind(s: tonic::Status) -> (String, String) {
    (format!("{:?}", s.code()), s.message().to_string())
}
