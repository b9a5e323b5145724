//! The system under test, behind one `execute`: Quarry through its routing client or
//! a fixed node, or etcd through its v3 KV API.

use std::collections::HashMap;

use bytes::Bytes;
use quarry::client::{Client, ClientError};
use quarry::proto::kv_client::KvClient;
use quarry::proto::log_client::LogClient;
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
                }
            }
        }
    }
}

fn status_kind(s: tonic::Status) -> (String, String) {
    (format!("{:?}", s.code()), s.message().to_string())
}
