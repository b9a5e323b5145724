//! Client sessions (`Kv.Session`): many calls in flight on one stream, answered as
//! each commits, in batches. A call's answer is built by the completion the shard
//! runs and put straight into the session's answer queue — no channel or task per
//! call — and the shard wakes the session's answer stream once per turn, however
//! many answers the turn gave it (each wake-up costs a syscall and a context switch).

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::task::AtomicWaker;
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
/// Bytes of values in one answer message: past it the rest wait for the next (one
/// answer larger than this travels alone). Without it, many large gets answered in one
/// turn made a message beyond what the client decodes, and broke the session.
const ANSWER_BYTES_PER_MESSAGE_MAX: usize = 1 << 20;

pub type SessionStream = Pin<Box<dyn Stream<Item = Result<SessionResponse, Status>> + Send>>;

/// A session's answers waiting to leave. Each holds its call's place in the window
/// until it has left, so the queue never holds more than the window.
struct AnswerQueue {
    answers: Mutex<Vec<(SessionAnswer, OwnedSemaphorePermit)>>,
    window: Arc<Semaphore>,
    /// The session reads no more calls (the caller closed its side, or broke it).
    reading_done: AtomicBool,
    waker: AtomicWaker,
    /// A wake-up is already deferred to the end of the current shard turn.
    wake_deferred: AtomicBool,
}

thread_local! {
    /// Set on shard threads, which wake sessions at the end of each turn.
    static DEFERS_WAKES: Cell<bool> = const { Cell::new(false) };
    static DEFERRED: RefCell<Vec<Arc<AnswerQueue>>> = const { RefCell::new(Vec::new()) };
}

/// Marks this thread as a shard thread: it calls [`wake_deferred`] after each turn.
pub fn defer_wakes_on_this_thread() {
    DEFERS_WAKES.with(|d| d.set(true));
}

/// Wakes every session that got answers during this turn.
pub fn wake_deferred() {
    let queues = DEFERRED.with(|d| std::mem::take(&mut *d.borrow_mut()));
    for queue in queues {
        queue.wake_deferred.store(false, Ordering::Release);
        queue.waker.wake();
    }
}

impl AnswerQueue {
    fn push(self: &Arc<Self>, answer: SessionAnswer, permit: OwnedSemaphorePermit) {
        self.answers.lock().expect("answers lock").push((answer, permit));
        self.wake();
    }

    fn wake(self: &Arc<Self>) {
        if !DEFERS_WAKES.with(Cell::get) {
            self.waker.wake();
        } else if !self.wake_deferred.swap(true, Ordering::AcqRel) {
            DEFERRED.with(|d| d.borrow_mut().push(self.clone()));
        }
    }

    /// The next batch of answers; the end once reading is done and every call is
    /// answered.
    fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<Result<SessionResponse, Status>>> {
        for registered in [false, true] {
            let answers: Vec<SessionAnswer> = {
                let mut queued = self.answers.lock().expect("answers lock");
                let n = answers_in_one_message(queued.iter().map(|(answer, _)| answer));
                // The permits go back here, as the answers leave.
                queued.drain(..n).map(|(answer, _permit)| answer).collect()
            };
            if !answers.is_empty() {
                return Poll::Ready(Some(Ok(SessionResponse { answers })));
            }
            let all_answered = self.window.available_permits() == SESSION_CALLS_IN_FLIGHT_MAX;
            if self.reading_done.load(Ordering::Acquire) && all_answered {
                return Poll::Ready(None);
            }
            if !registered {
                // Look again once registered, so an answer pushed meanwhile is not missed.
                self.waker.register(cx.waker());
            }
        }
        Poll::Pending
    }
}

/// How many of the queued answers go in the next message: at most
/// `ANSWERS_PER_MESSAGE_MAX`, and no more values than `ANSWER_BYTES_PER_MESSAGE_MAX`
/// unless the first alone is larger.
fn answers_in_one_message<'a>(queued: impl Iterator<Item = &'a SessionAnswer>) -> usize {
    let mut bytes = 0;
    let mut n = 0;
    for answer in queued.take(ANSWERS_PER_MESSAGE_MAX) {
        bytes += answer_bytes(answer);
        if n > 0 && bytes > ANSWER_BYTES_PER_MESSAGE_MAX {
            break;
        }
        n += 1;
    }
    n
}

fn answer_bytes(answer: &SessionAnswer) -> usize {
    match &answer.result {
        Some(session_answer::Result::Get(get)) => get.value.len(),
        Some(session_answer::Result::Error(error)) => error.message.len(),
        _ => 0,
    }
}

/// One call waiting for its answer, holding its place in the session's window.
struct Pending {
    id: u64,
    queue: Arc<AnswerQueue>,
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
        self.queue.push(SessionAnswer { id: self.id, result: Some(result) }, self.permit);
    }
}

fn error_of(status: &Status, leader: u64) -> proto::SessionError {
    proto::SessionError { code: status.code() as i32, message: status.message().to_string(), leader }
}

/// Serves one session: reads calls until the caller closes its side, and streams the
/// answers until the last call in flight is answered.
pub fn serve(router: Router, mut calls: Streaming<proto::SessionRequest>) -> SessionStream {
    let window = Arc::new(Semaphore::new(SESSION_CALLS_IN_FLIGHT_MAX));
    let queue = Arc::new(AnswerQueue {
        answers: Mutex::default(),
        window: window.clone(),
        reading_done: AtomicBool::new(false),
        waker: AtomicWaker::new(),
        wake_deferred: AtomicBool::new(false),
    });
    let reader_queue = queue.clone();
    tokio::spawn(async move {
        let queue = reader_queue;
        while let Ok(Some(request)) = calls.message().await {
            if request.calls.len() > SESSION_CALLS_PER_MESSAGE_MAX {
                let why =
                    format!("{} calls in one message; at most {SESSION_CALLS_PER_MESSAGE_MAX}", request.calls.len());
                if let Ok(permit) = window.clone().acquire_owned().await {
                    Pending { id: 0, queue: queue.clone(), permit }.answer(Err(Status::invalid_argument(why)));
                }
                break;
            }
            for call in request.calls {
                let Ok(permit) = window.clone().acquire_owned().await else { break };
                start(&router, call, Pending { id: 0, queue: queue.clone(), permit });
            }
        }
        queue.reading_done.store(true, Ordering::Release);
        queue.waker.wake();
    });
    Box::pin(futures::stream::poll_fn(move |cx| queue.poll_next(cx)))
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
