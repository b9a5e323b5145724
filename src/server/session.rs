//! Client sessions (`Kv.Session`): many calls in flight on one stream, answered as
//! each commits, in batches. A call's answer is built by the completion the shard
//! runs, straight into the session's answer queue — no channel or task per call — and
//! the answer stream drains that queue into one message at a time.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tonic::{Status, Streaming};

use crate::group::RequestError;
use crate::proto::{self, session_answer, session_call, ResponseHeader, SessionAnswer, SessionResponse};
use crate::shard::Reply;
use crate::state::{BuiltinState, Outcome};

use super::calls::WriteCall;
use super::router::{status_of, Router};
use super::service::{check_key, decode_found, encode_found};
use super::shard_thread::ShardInput;

/// Calls one session may have in flight; past it the session stops reading (HTTP/2
/// flow control then holds the caller back).
pub const SESSION_CALLS_IN_FLIGHT_MAX: usize = 4096;
/// Calls one request message may carry.
pub const SESSION_CALLS_PER_MESSAGE_MAX: usize = 1024;
/// Answers gathered into one response message.
const ANSWERS_PER_MESSAGE_MAX: usize = 1024;

pub type SessionStream = Pin<Box<dyn Stream<Item = Result<SessionResponse, Status>> + Send>>;

type Answers = flume::Sender<(SessionAnswer, OwnedSemaphorePermit)>;

/// One call waiting for its answer; it holds a place in the session's window until
/// the answer has left in a message.
struct Pending {
    id: u64,
    answers: Answers,
    permit: OwnedSemaphorePermit,
}

impl Pending {
    fn answer(self, result: Result<session_answer::Result, Status>) {
        let result = result.unwrap_or_else(|status| session_answer::Result::Error(error_of(&status, 0)));
        self.finish(result);
    }

    fn answer_request(self, result: Result<session_answer::Result, RequestError>) {
        let result = result.unwrap_or_else(|e| {
            let leader = match e {
                RequestError::NotLeader { leader: Some(leader) } => leader,
                _ => 0,
            };
            session_answer::Result::Error(error_of(&status_of(e), leader))
        });
        self.finish(result);
    }

    fn finish(self, result: session_answer::Result) {
        let answer = SessionAnswer { id: self.id, result: Some(result) };
        // The window bounds the queue, so it has room; a closed session drops it.
        let _ = self.answers.try_send((answer, self.permit));
    }
}

fn error_of(status: &Status, leader: u64) -> proto::SessionError {
    proto::SessionError { code: status.code() as i32, message: status.message().to_string(), leader }
}

/// Serves one session: reads calls until the caller closes its side, and streams the
/// answers until the last call in flight is answered.
pub fn serve(router: Router, mut calls: Streaming<proto::SessionRequest>) -> SessionStream {
    let (answers, queued) = flume::bounded(SESSION_CALLS_IN_FLIGHT_MAX);
    let window = Arc::new(Semaphore::new(SESSION_CALLS_IN_FLIGHT_MAX));
    let refusals = answers.clone();
    tokio::spawn(async move {
        loop {
            let request = match calls.message().await {
                Ok(Some(request)) => request,
                Ok(None) | Err(_) => return, // Closed by the caller, or broken.
            };
            if request.calls.len() > SESSION_CALLS_PER_MESSAGE_MAX {
                let why = format!("{} calls in one message; at most {SESSION_CALLS_PER_MESSAGE_MAX}", request.calls.len());
                let error = proto::SessionError { code: tonic::Code::InvalidArgument as i32, message: why, leader: 0 };
                let answer = SessionAnswer { id: 0, result: Some(session_answer::Result::Error(error)) };
                if let Ok(permit) = window.clone().acquire_owned().await {
                    let _ = refusals.try_send((answer, permit));
                }
                return;
            }
            for call in request.calls {
                let Ok(permit) = window.clone().acquire_owned().await else { return };
                start(&router, call, Pending { id: 0, answers: answers.clone(), permit });
            }
        }
    });
    Box::pin(futures_lite::stream::unfold(queued, |queued| async move {
        let (first, _permit) = queued.recv_async().await.ok()?;
        let mut answers = Vec::with_capacity(queued.len().min(ANSWERS_PER_MESSAGE_MAX) + 1);
        answers.push(first);
        answers.extend(queued.try_iter().take(ANSWERS_PER_MESSAGE_MAX - 1).map(|(answer, _permit)| answer));
        Some((Ok(SessionResponse { answers }), queued))
    }))
}

/// Starts one call: checked, then handed to its group's shard with a completion that
/// answers it.
fn start(router: &Router, call: proto::SessionCall, mut pending: Pending) {
    pending.id = call.id;
    match call.op {
        Some(session_call::Op::Put(put)) => write(router, put, pending, session_answer::Result::Put),
        Some(session_call::Op::Delete(delete)) => write(router, delete, pending, session_answer::Result::Delete),
        Some(session_call::Op::Cas(cas)) => write(router, cas, pending, session_answer::Result::Cas),
        Some(session_call::Op::Append(append)) => write(router, append, pending, session_answer::Result::Append),
        Some(session_call::Op::Get(get)) => read(router, get, pending),
        None => pending.answer(Err(Status::invalid_argument("a call without an operation"))),
    }
}

fn write<C>(router: &Router, call: C, pending: Pending, wrap: fn(C::Response) -> session_answer::Result)
where
    C: WriteCall + 'static,
{
    if let Err(status) = call.check(router.max_value_bytes) {
        return pending.answer(Err(status));
    }
    let group = router.group_of(&call.routing_key());
    let header = ResponseHeader { group, leader: router.node };
    let reply = Reply::new(move |outcome: Result<Outcome, RequestError>| {
        pending.answer_request(outcome.and_then(|outcome| C::answer(header, outcome)).map(wrap));
    });
    router.submit(group, ShardInput::Propose { group, command: call.command(), reply });
}

fn read(router: &Router, get: proto::GetRequest, pending: Pending) {
    if let Err(status) = check_key(&get.key) {
        return pending.answer(Err(status));
    }
    let group = router.group_of(&get.key);
    // A serializable read is served by whichever replica got it: no leader claimed.
    let leader = if get.serializable { 0 } else { router.node };
    let key = get.key;
    let query = Box::new(move |s: &BuiltinState| encode_found(s.get(&key)));
    let reply = Reply::new(move |data: Result<Bytes, RequestError>| {
        pending.answer_request(data.map(|data| {
            let (found, revision, value) = decode_found(data);
            let header = Some(ResponseHeader { group, leader });
            session_answer::Result::Get(proto::GetResponse { header, found, value, revision })
        }));
    });
    router.submit(group, ShardInput::Read { group, query, reply, serializable: get.serializable });
}
