//! Where a request's answer goes.

use crate::group::RequestError;

type Completion<T> = Box<dyn FnOnce(Result<T, RequestError>) + Send>;

/// A request's answer, given once: into a channel of its own (simple callers, tests)
/// or through a completion its caller supplied (a client session, which gathers many
/// requests' answers without a channel each). A reply dropped unanswered — the shard
/// stopped with the request in hand — answers that the outcome is unknown.
pub struct Reply<T>(Option<Completion<T>>);

impl<T> Reply<T> {
    pub fn new(complete: impl FnOnce(Result<T, RequestError>) + Send + 'static) -> Self {
        Reply(Some(Box::new(complete)))
    }

    /// Gives the answer.
    pub fn send(mut self, answer: Result<T, RequestError>) {
        if let Some(complete) = self.0.take() {
            complete(answer);
        }
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        if let Some(complete) = self.0.take() {
            complete(Err(RequestError::Unknown));
        }
    }
}

impl<T: Send + 'static> From<flume::Sender<Result<T, RequestError>>> for Reply<T> {
    fn from(channel: flume::Sender<Result<T, RequestError>>) -> Self {
        // The caller may have stopped waiting; its answer has nowhere to go then.
        Reply::new(move |answer| drop(channel.try_send(answer)))
    }
}

impl<T> std::fmt::Debug for Reply<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Reply(waiting)" } else { "Reply(answered)" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_dropped_unanswered_says_the_outcome_is_unknown() {
        let (tx, rx) = flume::bounded::<Result<u8, RequestError>>(1);
        drop(Reply::from(tx));
        assert_eq!(rx.try_recv(), Ok(Err(RequestError::Unknown)));
        let (tx, rx) = flume::bounded::<Result<u8, RequestError>>(1);
        Reply::from(tx).send(Ok(7));
        assert_eq!(rx.try_recv(), Ok(Ok(7)));
        assert!(rx.try_recv().is_err(), "answered once");
    }
}
