//! The Sql service: writes go through the log as one entry each; queries and schema
//! reads run at a replica (the leader, after ReadIndex, unless serializable).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::group::RequestError;
use crate::proto::{self, sql_server::Sql, ResponseHeader};
use crate::sql::{self, classify, FailureCause, SqlFailure, StatementKind, Value};
use crate::state::{BuiltinState, Command, Operation, Outcome};

use super::calls::WriteCall;
use super::router::status_of;
use super::service::{forward_request, forwarded, forwarding_failed, Services};

impl WriteCall for proto::SqlExecuteRequest {
    type Response = proto::SqlExecuteResponse;

    fn routing_key(&self) -> Bytes {
        Bytes::from(self.database.clone().into_bytes())
    }

    fn check(&self, max_value_bytes: u64) -> Result<(), Status> {
        sql::check_database_name(&self.database).map_err(Status::invalid_argument)?;
        if self.statements.is_empty() || self.statements.len() > sql::STATEMENTS_MAX {
            let n = self.statements.len();
            return Err(Status::invalid_argument(format!("{n} statements: send 1 to {}", sql::STATEMENTS_MAX)));
        }
        let mut bytes = 0u64;
        for (at, s) in self.statements.iter().enumerate() {
            check_statement(s).map_err(|e| Status::invalid_argument(format!("statement {at}: {e}")))?;
            classify(&s.sql).map_err(|e| Status::invalid_argument(format!("statement {at}: {e}")))?;
            bytes += statement_bytes(s);
        }
        if bytes > max_value_bytes {
            return Err(Status::invalid_argument(format!("statements of {bytes} bytes exceed {max_value_bytes}")));
        }
        Ok(())
    }

    /// Called once, at the node that proposes the write: it picks the clock and
    /// the seed every replica then uses.
    fn command(&self) -> Command {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let statements = self
            .statements
            .iter()
            .map(|s| {
                // `check` classified it already; a label that does not match is
                // refused when the entry applies.
                let kind = classify(&s.sql).unwrap_or(StatementKind::Data);
                statement_of(s, kind)
            })
            .collect();
        let write = sql::Execute { database: self.database.clone(), now_ms, seed: rand::random(), statements };
        Command { client: self.client_id, sequence: self.sequence, operation: Operation::Sql(write) }
    }

    fn answer(header: ResponseHeader, outcome: Outcome) -> Result<Self::Response, RequestError> {
        match outcome {
            Outcome::SqlApplied(results) => {
                let results = results
                    .into_iter()
                    .map(|r| proto::SqlStatementResult {
                        rows_affected: r.rows_affected,
                        last_insert_rowid: r.last_insert_rowid,
                        kind: 0, // filled in by the caller, which has the statements
                    })
                    .collect();
                Ok(proto::SqlExecuteResponse { header: Some(header), results })
            }
            Outcome::SqlFailed(failure) => Err(request_error(failure)),
            Outcome::Rejected(reason) => Err(RequestError::Refused(reason)),
            other => Err(RequestError::Refused(format!("unexpected outcome {other:?}"))),
        }
    }
}

fn check_statement(s: &proto::SqlStatement) -> Result<(), String> {
    sql::check_statement(&s.sql, s.params.len() + s.named.len())?;
    if let Some(name) = s.named.keys().find(|n| n.is_empty() || n.len() > sql::DATABASE_NAME_MAX) {
        return Err(format!("parameter name {name:?} must have 1 to {} bytes", sql::DATABASE_NAME_MAX));
    }
    Ok(())
}

fn statement_bytes(s: &proto::SqlStatement) -> u64 {
    let value_bytes = |v: &proto::SqlValue| value_of(v).size() as u64;
    s.sql.len() as u64
        + s.params.iter().map(value_bytes).sum::<u64>()
        + s.named.iter().map(|(n, v)| n.len() as u64 + value_bytes(v)).sum::<u64>()
}

fn statement_of(s: &proto::SqlStatement, kind: StatementKind) -> sql::Statement {
    let mut named: Vec<(String, Value)> = s.named.iter().map(|(n, v)| (n.clone(), value_of(v))).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0)); // One encoding for one request.
    sql::Statement { kind, text: s.sql.clone(), params: s.params.iter().map(value_of).collect(), named }
}

fn value_of(v: &proto::SqlValue) -> Value {
    use proto::sql_value::Value as V;
    match &v.value {
        None => Value::Null,
        Some(V::Integer(i)) => Value::Integer(*i),
        Some(V::Real(r)) => Value::Real(*r),
        Some(V::Text(t)) => Value::Text(t.clone()),
        Some(V::Blob(b)) => Value::Blob(b.clone()),
    }
}

fn proto_value(v: Value) -> proto::SqlValue {
    use proto::sql_value::Value as V;
    let value = match v {
        Value::Null => None,
        Value::Integer(i) => Some(V::Integer(i)),
        Value::Real(r) => Some(V::Real(r)),
        Value::Text(t) => Some(V::Text(t)),
        Value::Blob(b) => Some(V::Blob(b)),
    };
    proto::SqlValue { value }
}

fn proto_kind(kind: StatementKind) -> i32 {
    use proto::SqlStatementKind as K;
    (match kind {
        StatementKind::Data => K::SqlDataChange,
        StatementKind::CreateTable => K::SqlCreateTable,
        StatementKind::DropTable => K::SqlDropTable,
        StatementKind::AlterTable => K::SqlAlterTable,
        StatementKind::CreateIndex => K::SqlCreateIndex,
        StatementKind::DropIndex => K::SqlDropIndex,
        StatementKind::OtherSchema => K::SqlOtherSchemaChange,
    }) as i32
}

fn request_error(failure: SqlFailure) -> RequestError {
    let message = failure.to_string();
    match failure.cause {
        FailureCause::Invalid => RequestError::Invalid(message),
        FailureCause::Constraint | FailureCause::Limit => RequestError::Refused(message),
        FailureCause::NotFound => RequestError::NotFound(failure.message),
    }
}

/// A query's answer through the shard: 0 and the encoded response, or 1, the
/// failure's cause and its message.
fn encode_answer<M: Message>(answer: Result<M, SqlFailure>) -> Bytes {
    let mut out = BytesMut::new();
    match answer {
        Ok(message) => {
            out.put_u8(0);
            message.encode(&mut out).unwrap_or_else(|_| unreachable!("a BytesMut grows as needed"));
        }
        Err(failure) => {
            out.put_u8(1);
            out.put_u8(failure.cause as u8);
            out.extend_from_slice(failure.message.as_bytes());
        }
    }
    out.freeze()
}

fn decode_answer<M: Message + Default>(mut data: Bytes) -> Result<M, RequestError> {
    match data.first() {
        Some(0) => M::decode(data.slice(1..)).map_err(|e| RequestError::Refused(format!("bad shard answer: {e}"))),
        Some(1) if data.len() >= 2 => {
            data.advance(1);
            let cause = FailureCause::from_u8(data.get_u8());
            let message = String::from_utf8_lossy(&data).into_owned();
            Err(request_error(SqlFailure { statement: 0, cause, message }))
        }
        _ => Err(RequestError::Refused("empty shard answer".into())),
    }
}

impl Services {
    async fn execute_sql(&self, req: &proto::SqlExecuteRequest) -> Result<proto::SqlExecuteResponse, RequestError> {
        let mut response = self.write(req).await?;
        for (result, statement) in response.results.iter_mut().zip(&req.statements) {
            result.kind = proto_kind(classify(&statement.sql).unwrap_or(StatementKind::Data));
        }
        Ok(response)
    }

    async fn query_sql(&self, req: &proto::SqlQueryRequest) -> Result<proto::SqlQueryResponse, RequestError> {
        let group = self.router.group_of(req.database.as_bytes());
        let database = req.database.clone();
        let statement =
            statement_of(req.statement.as_ref().unwrap_or(&proto::SqlStatement::default()), StatementKind::Data);
        let max_rows = req.max_rows as usize;
        let query = Box::new(move |s: &BuiltinState| {
            encode_answer(s.sql().query(&database, &statement, max_rows).map(|answer| {
                proto::SqlQueryResponse {
                    header: None,
                    columns: answer
                        .columns
                        .into_iter()
                        .map(|(name, declared_type)| proto::SqlColumn { name, declared_type })
                        .collect(),
                    rows: answer
                        .rows
                        .into_iter()
                        .map(|row| proto::SqlRow { values: row.into_iter().map(proto_value).collect() })
                        .collect(),
                    more: answer.more,
                }
            }))
        });
        let data = self.router.read(group, query, req.serializable).await?;
        let mut response: proto::SqlQueryResponse = decode_answer(data)?;
        response.header = Some(ResponseHeader { group, leader: self.router.node });
        Ok(response)
    }

    async fn sql_schema(&self, req: &proto::SqlSchemaRequest) -> Result<proto::SqlSchemaResponse, RequestError> {
        let group = self.router.group_of(req.database.as_bytes());
        let database = req.database.clone();
        let query = Box::new(move |s: &BuiltinState| {
            let schema = s.sql().schema(&database).ok_or_else(|| SqlFailure {
                statement: 0,
                cause: FailureCause::NotFound,
                message: format!("no database named {database:?}"),
            });
            encode_answer(schema.map(|schema| {
                proto::SqlSchemaResponse {
                    header: None,
                    objects: schema
                        .objects
                        .into_iter()
                        .map(|[r#type, name, table, sql]| proto::SqlSchemaObject { r#type, name, table, sql })
                        .collect(),
                    changes: schema
                        .changes
                        .into_iter()
                        .map(|c| proto::SqlSchemaChange { index: c.index, kind: proto_kind(c.kind), sql: c.text })
                        .collect(),
                    image_bytes: schema.image_bytes,
                    image_crc32: schema.image_crc32,
                }
            }))
        });
        let data = self.router.read(group, query, req.serializable).await?;
        let mut response: proto::SqlSchemaResponse = decode_answer(data)?;
        response.header = Some(ResponseHeader { group, leader: self.router.node });
        Ok(response)
    }
}

#[tonic::async_trait]
impl Sql for Services {
    async fn execute(
        &self,
        request: Request<proto::SqlExecuteRequest>,
    ) -> Result<Response<proto::SqlExecuteResponse>, Status> {
        request.get_ref().check(self.router.max_value_bytes)?;
        serve_or_forward!(self, request, sql_client, execute, |req| self.execute_sql(&req).await)
    }

    async fn query(
        &self,
        request: Request<proto::SqlQueryRequest>,
    ) -> Result<Response<proto::SqlQueryResponse>, Status> {
        let req = request.get_ref();
        sql::check_database_name(&req.database).map_err(Status::invalid_argument)?;
        let statement = req.statement.as_ref().ok_or_else(|| Status::invalid_argument("no statement"))?;
        check_statement(statement).map_err(Status::invalid_argument)?;
        serve_or_forward!(self, request, sql_client, query, |req| self.query_sql(&req).await)
    }

    async fn schema(
        &self,
        request: Request<proto::SqlSchemaRequest>,
    ) -> Result<Response<proto::SqlSchemaResponse>, Status> {
        sql::check_database_name(&request.get_ref().database).map_err(Status::invalid_argument)?;
        serve_or_forward!(self, request, sql_client, schema, |req| self.sql_schema(&req).await)
    }
}
