//! The writes a client can make (put, delete, cas, append), each checked, turned into
//! a command and answered the same way whether it came as a unary call or in a
//! session.

use bytes::Bytes;
use tonic::Status;

use crate::group::RequestError;
use crate::proto::{self, ResponseHeader};
use crate::state::{Command, Operation, Outcome};

use super::service::check_key;

/// A write call: what it writes and how its outcome answers it.
pub trait WriteCall {
    type Response;
    /// The key (or log name) whose group carries the write.
    fn routing_key(&self) -> Bytes;
    /// Refuses a malformed call before it reaches a shard.
    fn check(&self, max_value_bytes: u64) -> Result<(), Status>;
    fn command(&self) -> Command;
    fn answer(header: ResponseHeader, outcome: Outcome) -> Result<Self::Response, RequestError>;
}

pub(super) fn check_value(value: &[u8], max: u64) -> Result<(), Status> {
    if value.len() as u64 > max {
        return Err(Status::invalid_argument(format!("value of {} bytes exceeds {max}", value.len())));
    }
    Ok(())
}

fn unexpected<T>(outcome: Outcome) -> Result<T, RequestError> {
    match outcome {
        Outcome::Rejected(reason) => Err(RequestError::Refused(reason)),
        other => Err(RequestError::Refused(format!("unexpected outcome {other:?}"))),
    }
}

impl WriteCall for proto::PutRequest {
    type Response = proto::PutResponse;
    fn routing_key(&self) -> Bytes {
        self.key.clone()
    }
    fn check(&self, max_value_bytes: u64) -> Result<(), Status> {
        check_key(&self.key)?;
        check_value(&self.value, max_value_bytes)
    }
    fn command(&self) -> Command {
        let operation = Operation::Put { key: self.key.clone(), value: self.value.clone() };
        Command { client: self.client_id, sequence: self.sequence, operation }
    }
    fn answer(header: ResponseHeader, outcome: Outcome) -> Result<Self::Response, RequestError> {
        match outcome {
            Outcome::Written { revision } => Ok(proto::PutResponse { header: Some(header), revision }),
            other => unexpected(other),
        }
    }
}

impl WriteCall for proto::DeleteRequest {
    type Response = proto::DeleteResponse;
    fn routing_key(&self) -> Bytes {
        self.key.clone()
    }
    fn check(&self, _: u64) -> Result<(), Status> {
        check_key(&self.key)
    }
    fn command(&self) -> Command {
        let operation = Operation::Delete { key: self.key.clone() };
        Command { client: self.client_id, sequence: self.sequence, operation }
    }
    fn answer(header: ResponseHeader, outcome: Outcome) -> Result<Self::Response, RequestError> {
        match outcome {
            Outcome::Deleted { existed } => Ok(proto::DeleteResponse { header: Some(header), existed }),
            other => unexpected(other),
        }
    }
}

impl WriteCall for proto::CasRequest {
    type Response = proto::CasResponse;
    fn routing_key(&self) -> Bytes {
        self.key.clone()
    }
    fn check(&self, max_value_bytes: u64) -> Result<(), Status> {
        check_key(&self.key)?;
        check_value(&self.value, max_value_bytes)
    }
    fn command(&self) -> Command {
        let operation = Operation::Cas {
            key: self.key.clone(),
            expected_revision: self.expected_revision,
            value: self.value.clone(),
        };
        Command { client: self.client_id, sequence: self.sequence, operation }
    }
    fn answer(header: ResponseHeader, outcome: Outcome) -> Result<Self::Response, RequestError> {
        let header = Some(header);
        match outcome {
            Outcome::Written { revision } => Ok(proto::CasResponse { header, succeeded: true, revision }),
            Outcome::CasFailed { current_revision } => {
                Ok(proto::CasResponse { header, succeeded: false, revision: current_revision })
            }
            other => unexpected(other),
        }
    }
}

impl WriteCall for proto::LogAppendRequest {
    type Response = proto::LogAppendResponse;
    fn routing_key(&self) -> Bytes {
        Bytes::from(self.log.clone().into_bytes())
    }
    fn check(&self, max_value_bytes: u64) -> Result<(), Status> {
        check_key(self.log.as_bytes())?;
        check_value(&self.data, max_value_bytes)
    }
    fn command(&self) -> Command {
        let operation = Operation::Append { log: self.routing_key(), data: self.data.clone() };
        Command { client: self.client_id, sequence: self.sequence, operation }
    }
    fn answer(header: ResponseHeader, outcome: Outcome) -> Result<Self::Response, RequestError> {
        match outcome {
            Outcome::Appended { log_index } => Ok(proto::LogAppendResponse { header: Some(header), index: log_index }),
            other => unexpected(other),
        }
    }
}
