//! The client's end of a session (`Kv.Session`) with one node: calls from every task
//! of the client share one stream, leave in batches, and are matched to their answers
//! by id. When the stream breaks, every call in flight hears that its outcome is
//! unknown (the caller retries with the same client id and sequence, which is safe).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::Status;

use crate::proto::kv_client::KvClient;
use crate::proto::{session_answer, session_call, SessionCall, SessionRequest};

/// Calls queued to leave on one session; callers wait for room beyond it.
const QUEUED_CALLS_MAX: usize = 4096;
/// Calls gathered into one request message (the server takes at most 1,024).
const CALLS_PER_MESSAGE_MAX: usize = 1024;
/// Bytes of values gathered into one request message, well under gRPC's 4 MiB.
const BYTES_PER_MESSAGE_MAX: usize = 1 << 20;
/// The largest answer message the client decodes: the node bounds its messages (about
/// 1 MiB of values, or one larger value alone; a range's share per group), and a
/// value may be up to 64 MiB.
pub const RESPONSE_MAX_BYTES: usize = 256 << 20;

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<session_answer::Result, Status>>>>>;

/// An open session; a new one replaces it once it breaks.
struct Open {
    calls: flume::Sender<SessionCall>,
    waiting: Waiting,
    broken: Arc<AtomicBool>,
}

/// Sessions with one node, opened on first use and again after a break.
pub struct SessionLink {
    channel: Channel,
    open: Mutex<Option<Arc<Open>>>,
    next_id: AtomicU64,
}

fn lost(why: &str) -> Status {
    Status::unavailable(format!(
        "outcome unknown: the session broke ({why}); retrying with the same client_id and sequence is safe"
    ))
}

impl SessionLink {
    pub fn new(channel: Channel) -> Self {
        SessionLink { channel, open: Mutex::new(None), next_id: AtomicU64::new(1) }
    }

    /// Sends one call and waits for its answer (an error answer comes back as `Ok`
    /// with `Result::Error`; `Err` means the session broke).
    pub async fn call(&self, op: session_call::Op) -> Result<session_answer::Result, Status> {
        let open = self.session();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        open.waiting.lock().expect("session lock").insert(id, tx);
        let _forget = Forget { waiting: &open.waiting, id };
        // The reader marks a session broken before failing what waits: a call
        // registered after that sweep sees the mark here.
        if open.broken.load(Ordering::Acquire) || open.calls.send_async(SessionCall { id, op: Some(op) }).await.is_err()
        {
            return Err(lost("closed"));
        }
        rx.await.unwrap_or_else(|_| Err(lost("closed")))
    }

    fn session(&self) -> Arc<Open> {
        let mut open = self.open.lock().expect("session lock");
        if let Some(session) = open.as_ref().filter(|s| !s.broken.load(Ordering::Acquire)) {
            return session.clone();
        }
        let session = Arc::new(start(self.channel.clone()));
        *open = Some(session.clone());
        session
    }
}

/// Opens a session: calls leave through a stream that batches whatever is queued; a
/// task reads answers and hands each to its caller.
fn start(channel: Channel) -> Open {
    let (calls, queued) = flume::bounded::<SessionCall>(QUEUED_CALLS_MAX);
    let waiting: Waiting = Arc::default();
    let broken = Arc::new(AtomicBool::new(false));
    let outgoing = futures_lite::stream::unfold(queued, |queued| async move {
        let first = queued.recv_async().await.ok()?;
        let mut bytes = call_bytes(&first);
        let mut calls = vec![first];
        while calls.len() < CALLS_PER_MESSAGE_MAX && bytes < BYTES_PER_MESSAGE_MAX {
            let Ok(call) = queued.try_recv() else { break };
            bytes += call_bytes(&call);
            calls.push(call);
        }
        Some((SessionRequest { calls }, queued))
    });
    let (reader_waiting, reader_broken) = (waiting.clone(), broken.clone());
    tokio::spawn(async move {
        let why = match KvClient::new(channel).max_decoding_message_size(RESPONSE_MAX_BYTES).session(outgoing).await {
            Ok(answers) => {
                let mut answers = answers.into_inner();
                loop {
                    match answers.message().await {
                        Ok(Some(response)) => {
                            let mut waiting = reader_waiting.lock().expect("session lock");
                            for answer in response.answers {
                                let Some(result) = answer.result else { continue };
                                if let Some(caller) = waiting.remove(&answer.id) {
                                    let _ = caller.send(Ok(result));
                                }
                            }
                        }
                        Ok(None) => break "closed by the node".to_string(),
                        Err(status) => break status.message().to_string(),
                    }
                }
            }
            Err(status) => status.message().to_string(),
        };
        reader_broken.store(true, Ordering::Release);
        for (_, caller) in reader_waiting.lock().expect("session lock").drain() {
            let _ = caller.send(Err(lost(&why)));
        }
    });
    Open { calls, waiting, broken }
}

/// Forgets a call's place among those waiting once its caller stops waiting (answered,
/// or gave up: its deadline passed).
struct Forget<'a> {
    waiting: &'a Waiting,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.waiting.lock().expect("session lock").remove(&self.id);
    }
}

fn call_bytes(call: &SessionCall) -> usize {
    match &call.op {
        Some(session_call::Op::Put(p)) => p.key.len() + p.value.len(),
        Some(session_call::Op::Cas(c)) => c.key.len() + c.value.len(),
        Some(session_call::Op::Append(a)) => a.log.len() + a.data.len(),
        Some(session_call::Op::Get(g)) => g.key.len(),
        Some(session_call::Op::Delete(d)) => d.key.len(),
        None => 0,
    }
}
