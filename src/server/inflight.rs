//! Bytes in flight: request bytes received but not yet a whole gRPC message are held
//! against a budget per connection and one per node. A sender that declares large
//! messages and never finishes them (the attack of issue 14: a few such streams grew a
//! node from 21 to 501 MiB) fills its budget and then waits: the body is not read
//! further, so HTTP/2 flow control stops the sender, and memory stays bounded. A
//! message's bytes are given back once it is whole (tonic decodes it at once and the
//! bounded queues behind take over) or when its stream ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use tokio::sync::Semaphore;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::tls::{ConnInfo, Identity, OpenRequests};

/// Wraps every request's body in a [`Budgeted`] one.
#[derive(Clone)]
pub struct InFlightLayer {
    node: Arc<Semaphore>,
}

impl InFlightLayer {
    pub fn new(node_bytes: usize) -> InFlightLayer {
        InFlightLayer { node: Arc::new(Semaphore::new(node_bytes)) }
    }
}

impl<S> Layer<S> for InFlightLayer {
    type Service = InFlight<S>;

    fn layer(&self, inner: S) -> InFlight<S> {
        InFlight { inner, node: self.node.clone() }
    }
}

#[derive(Clone)]
pub struct InFlight<S> {
    inner: S,
    node: Arc<Semaphore>,
}

impl<S> Service<http::Request<Body>> for InFlight<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let info = request.extensions().get::<ConnInfo>();
        let connection = info.map(|info| info.bytes_in_flight.clone());
        // Peers are held to their connection's budget only, so that clients filling
        // the node's cannot stall replication.
        let node = match info.map(|info| info.identity) {
            Some(Identity::Node(_)) => None,
            _ => Some(self.node.clone()),
        };
        // The request is open until its response has been sent (or dropped).
        let open = info.map(|info| OpenGuard::new(info.open_requests.clone()));
        let answer = self.inner.call(request.map(|body| Body::new(Budgeted::new(body, node, connection))));
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| Body::new(Tracked { inner: body, _open: open })))
        })
    }
}

/// Counts one request open on its connection while it lives.
struct OpenGuard(Arc<OpenRequests>);

impl OpenGuard {
    fn new(open: Arc<OpenRequests>) -> OpenGuard {
        open.open();
        OpenGuard(open)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// A response body that keeps its request counted as open until it is dropped.
struct Tracked {
    inner: Body,
    _open: Option<OpenGuard>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

type Acquiring = Pin<Box<dyn Future<Output = bool> + Send>>;

/// A request body whose unfinished messages are held against the budgets.
pub struct Budgeted {
    inner: Body,
    budgets: Vec<Arc<Semaphore>>,
    /// Bytes taken from every budget and not yet given back.
    held: usize,
    /// A data frame waiting for its bytes to be granted.
    waiting: Option<(Bytes, Acquiring)>,
    frames: MessageFrames,
}

impl Budgeted {
    fn new(inner: Body, node: Option<Arc<Semaphore>>, connection: Option<Arc<Semaphore>>) -> Budgeted {
        // The connection's budget first: a connection at its cap waits there without
        // holding any of the node's.
        let budgets = connection.into_iter().chain(node).collect();
        Budgeted { inner, budgets, held: 0, waiting: None, frames: MessageFrames::default() }
    }

    fn give_back(&mut self, bytes: usize) {
        let bytes = bytes.min(self.held);
        self.held -= bytes;
        for budget in &self.budgets {
            budget.add_permits(bytes);
        }
    }
}

impl Drop for Budgeted {
    fn drop(&mut self) {
        self.give_back(self.held);
    }
}

/// Takes `bytes` from every budget (HTTP/2 data frames are at most 16 KiB here, far
/// below any budget); false if a budget was closed (never here).
fn acquire(budgets: &[Arc<Semaphore>], bytes: usize) -> Acquiring {
    let budgets = budgets.to_vec();
    Box::pin(async move {
        for budget in &budgets {
            let Ok(n) = u32::try_from(bytes) else { return false };
            match budget.acquire_many(n).await {
                Ok(permit) => permit.forget(),
                Err(_) => return false,
            }
        }
        true
    })
}

impl HttpBody for Budgeted {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        loop {
            if let Some((data, acquiring)) = &mut this.waiting {
                if !ready!(acquiring.as_mut().poll(cx)) {
                    return Poll::Ready(Some(Err(tonic::Status::unavailable("the node is stopping"))));
                }
                let data = std::mem::take(data);
                this.waiting = None;
                this.held += data.len();
                let finished = this.frames.take(&data);
                this.give_back(finished);
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                other => return Poll::Ready(other),
            };
            match frame.into_data() {
                Ok(data) if !data.is_empty() => {
                    let acquiring = acquire(&this.budgets, data.len());
                    this.waiting = Some((data, acquiring));
                }
                Ok(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.waiting.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Follows gRPC's message framing (a flag byte, a 4-byte big-endian length, the
/// message) through the body's data frames.
#[derive(Default)]
struct MessageFrames {
    header: [u8; 5],
    header_len: usize,
    /// Message bytes still to come, once the header is read.
    remaining: usize,
    /// Bytes of the message in progress seen so far, its header included.
    current: usize,
}

impl MessageFrames {
    /// Takes in `data`; returns the bytes of the messages it completed.
    fn take(&mut self, mut data: &[u8]) -> usize {
        let mut finished = 0;
        while !data.is_empty() {
            if self.header_len < 5 {
                let n = (5 - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
                (self.header_len, self.current, data) = (self.header_len + n, self.current + n, &data[n..]);
                if self.header_len < 5 {
                    break;
                }
                let length = u32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]]);
                self.remaining = length as usize;
            }
            let n = self.remaining.min(data.len());
            (self.remaining, self.current, data) = (self.remaining - n, self.current + n, &data[n..]);
            if self.remaining == 0 {
                finished += self.current;
                (self.header_len, self.current) = (0, 0);
            }
        }
        finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(7, len));
        m
    }

    #[test]
    fn message_bytes_are_given_back_when_each_message_is_whole() {
        let mut frames = MessageFrames::default();
        let (a, b) = (message(10), message(0));
        let mut stream = [a.clone(), b.clone(), message(3)].concat();
        stream.truncate(a.len() + b.len() + 6); // the third cut short
        assert_eq!(frames.take(&stream[..3]), 0, "a header in pieces");
        assert_eq!(frames.take(&stream[3..a.len()]), a.len());
        assert_eq!(frames.take(&stream[a.len()..]), b.len(), "the empty message is whole; the third is not");
        assert_eq!(frames.take(&[7, 7]), 8, "the third is whole now");
    }

    #[tokio::test]
    async fn an_unfinished_message_holds_its_bytes_until_its_stream_ends() {
        let node = Arc::new(Semaphore::new(100));
        let connection = Arc::new(Semaphore::new(64));
        let declared = message(1_000)[..50].to_vec(); // declares 1,000 bytes, sends 45
        let body = Body::new(http_body_util::Full::new(Bytes::from(declared)));
        let mut budgeted = Budgeted::new(body, Some(node.clone()), Some(connection.clone()));
        let frame = std::future::poll_fn(|cx| Pin::new(&mut budgeted).poll_frame(cx)).await;
        assert!(frame.expect("a frame").expect("data").is_data());
        assert_eq!((node.available_permits(), connection.available_permits()), (50, 14));
        drop(budgeted);
        assert_eq!((node.available_permits(), connection.available_permits()), (100, 64), "given back");
    }
}
