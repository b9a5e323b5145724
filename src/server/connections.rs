//! The listener's accept loop, bounded: at most `--connections-max` connections are
//! served at once.
//!
//! At the limit, the client connection idle the longest (no request open for at
//! least `EVICT_IDLE_MIN`) is closed to make room, so idle connections held open (the
//! attack of issue 14) cannot lock out a restarted peer, whose stream is never idle.
//! In plain text, when no connection is idle, the node stops accepting: new
//! connections wait in the kernel's listen backlog (and time out there) instead of
//! costing the node memory and tasks. With TLS a connection is known by its
//! certificate once its handshake is done, so slots are also kept for the cluster's
//! nodes, against clients that keep a request open on every other slot. Handshakes
//! run in tasks of their own, at most `HANDSHAKES_MAX` at once and each under a
//! deadline; a client past the limit waits up to `SLOT_WAIT` for a slot (at most
//! `WAITING_MAX` of them wait), then is closed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::metrics::Metrics;
use crate::tls::{ConnInfo, Identity, OpenRequests, ServerTls};

/// Pause after a failed accept (e.g. out of file descriptors) before the next one.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);
/// A TLS handshake not finished by then is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections handed to the server but not yet taken by it.
const READY_MAX: usize = 64;
/// Slots kept for the cluster's nodes (TLS only), at most a quarter of the limit.
const MEMBER_SLOTS: usize = 64;
/// TLS handshakes in progress at once.
const HANDSHAKES_MAX: usize = 256;
/// Connections past the limit waiting for a slot; more are closed at once.
const WAITING_MAX: usize = 256;
/// How long a connection past the limit waits for a slot before it is closed.
const SLOT_WAIT: Duration = Duration::from_secs(10);
/// A connection idle at least this long may be closed to make room at the limit.
const EVICT_IDLE_MIN: Duration = Duration::from_secs(1);

/// The connections open now, for closing the one idle the longest at the limit.
#[derive(Default)]
struct OpenConnections(Mutex<Vec<Weak<Eviction>>>);

/// One connection's side of eviction: its requests, and the flag that closes it.
struct Eviction {
    requests: Arc<OpenRequests>,
    /// Connections of the cluster's nodes (known under TLS) are never evicted.
    member: bool,
    evicted: AtomicBool,
    reader: futures::task::AtomicWaker,
}

impl OpenConnections {
    fn register(&self, info: &ConnInfo) -> Arc<Eviction> {
        let eviction = Arc::new(Eviction {
            requests: info.open_requests.clone(),
            member: matches!(info.identity, Identity::Node(_)),
            evicted: Default::default(),
            reader: Default::default(),
        });
        let mut open = self.0.lock().expect("connections lock");
        open.retain(|c| c.strong_count() > 0);
        open.push(Arc::downgrade(&eviction));
        eviction
    }

    /// Closes the client connection idle the longest, if one has been idle for
    /// `EVICT_IDLE_MIN`; whether one was.
    fn evict_idlest(&self) -> bool {
        let open = self.0.lock().expect("connections lock");
        let idlest = open
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| !c.member && !c.evicted.load(Ordering::SeqCst))
            .filter_map(|c| c.requests.idle_since().map(|since| (since, c)))
            .filter(|(since, _)| since.elapsed() >= EVICT_IDLE_MIN)
            .min_by_key(|(since, _)| *since);
        let Some((_, connection)) = idlest else { return false };
        connection.evicted.store(true, Ordering::SeqCst);
        connection.reader.wake();
        true
    }
}

/// An accepted connection holding one of the listener's permits until it closes.
pub struct Counted {
    stream: Socket,
    info: ConnInfo,
    _permit: OwnedSemaphorePermit,
    /// When to look again whether the connection has been idle too long.
    idle: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
    eviction: Arc<Eviction>,
}

impl Counted {
    fn new(
        stream: Socket,
        info: ConnInfo,
        permit: OwnedSemaphorePermit,
        limits: Limits,
        open: &OpenConnections,
    ) -> Counted {
        let idle = limits.idle_timeout.map(|timeout| (timeout, Box::pin(tokio::time::sleep(timeout))));
        let eviction = open.register(&info);
        Counted { stream, info, _permit: permit, idle, eviction }
    }

    /// Whether the connection was chosen to make room at the limit.
    fn evicted(&self, cx: &mut Context<'_>) -> bool {
        self.eviction.reader.register(cx.waker());
        self.eviction.evicted.load(Ordering::SeqCst)
    }

    /// Whether the connection has had no request open for its idle timeout. The timer
    /// is only looked at when due (no cost per read); when due it is set again for the
    /// earliest time the connection could have been idle long enough.
    fn idle_too_long(&mut self, cx: &mut Context<'_>) -> bool {
        let Some((timeout, timer)) = &mut self.idle else { return false };
        while timer.as_mut().poll(cx).is_ready() {
            let due = match self.info.open_requests.idle_since() {
                Some(since) if since.elapsed() >= *timeout => return true,
                Some(since) => since + *timeout,
                None => std::time::Instant::now() + *timeout,
            };
            timer.as_mut().reset(due.into());
        }
        false
    }
}

enum Socket {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Connections accepted from `listener`, never more than `max` open at once; over TLS
/// when `tls` is given, each knowing who is at the other end.
pub fn accept_bounded(
    listener: TcpListener,
    limits: Limits,
    tls: Option<Arc<ServerTls>>,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = io::Result<Counted>> {
    let (ready, incoming) = mpsc::channel(READY_MAX);
    match tls {
        None => tokio::spawn(accept_plain(listener, limits, ready)),
        Some(tls) => tokio::spawn(accept_tls(listener, limits, tls, metrics, ready)),
    };
    ReceiverStream::new(incoming)
}

type Ready = mpsc::Sender<io::Result<Counted>>;

/// What one connection, and the listener, may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once (`--connections-max`).
    pub connections: usize,
    /// Request bytes a connection may hold that are not yet whole messages
    /// (`server::inflight`).
    pub connection_bytes: usize,
    /// A connection with no request open for this long is closed (`None`: never).
    pub idle_timeout: Option<Duration>,
}

fn conn_info(remote: Option<SocketAddr>, identity: Identity, connection_bytes: usize) -> ConnInfo {
    let bytes_in_flight = Arc::new(Semaphore::new(connection_bytes));
    ConnInfo { remote, identity, bytes_in_flight, open_requests: Arc::default() }
}

/// Accepts a connection (with TCP_NODELAY set), or hands the error on.
async fn accept(listener: &TcpListener, ready: &Ready) -> Option<(TcpStream, Option<SocketAddr>)> {
    let accepted = listener.accept().await.and_then(|(stream, remote)| {
        // Without TCP_NODELAY a small response frame waits for the client's delayed
        // ACK (about 40 ms): a lone Get took 43 ms. (tonic's own setting does not
        // reach connections served from our incoming stream.)
        stream.set_nodelay(true)?;
        Ok((stream, Some(remote)))
    });
    match accepted {
        Ok(accepted) => Some(accepted),
        Err(e) => {
            tokio::time::sleep(ACCEPT_RETRY).await;
            let _ = ready.send(Err(e)).await;
            None
        }
    }
}

async fn accept_plain(listener: TcpListener, limits: Limits, ready: Ready) {
    let (permits, connection_bytes) = (Arc::new(Semaphore::new(limits.connections)), limits.connection_bytes);
    let open = OpenConnections::default();
    // Ends when the server stops taking connections.
    while !ready.is_closed() {
        // At the limit an idle connection makes room; with none idle, this waits
        // while `max` connections are open (the semaphore is never closed).
        let Some(permit) = slot_or_eviction(&permits, &open, None).await else { return };
        let Some((stream, remote)) = accept(&listener, &ready).await else { continue };
        let info = conn_info(remote, Identity::Open, connection_bytes);
        let _ = ready.send(Ok(Counted::new(Socket::Plain(stream), info, permit, limits, &open))).await;
    }
}

async fn accept_tls(listener: TcpListener, limits: Limits, tls: Arc<ServerTls>, metrics: Arc<Metrics>, ready: Ready) {
    let (handshakes, slots) = (Arc::new(Semaphore::new(HANDSHAKES_MAX)), Arc::new(Slots::new(limits.connections)));
    let open = Arc::new(OpenConnections::default());
    let connection_bytes = limits.connection_bytes;
    while !ready.is_closed() {
        let Ok(handshaking) = handshakes.clone().acquire_owned().await else { return };
        let Some((stream, remote)) = accept(&listener, &ready).await else { continue };
        let (tls, slots, metrics, ready, open) =
            (tls.clone(), slots.clone(), metrics.clone(), ready.clone(), open.clone());
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await;
            drop(handshaking);
            let (stream, identity) = match handshake {
                Ok(Ok(done)) => done,
                failed => {
                    if metrics.count_refusal("tls_handshake") {
                        let why = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => "no handshake in time".to_string(),
                        };
                        tracing::warn!(
                            "TLS handshake from {} failed: {why} (logged at powers of two; counted in \
                             quarry_unauthorized_total)",
                            remote.map_or_else(|| "?".into(), |a| a.to_string())
                        );
                    }
                    return;
                }
            };
            let Some(permit) = slots.admit(identity, &open).await else {
                metrics.count_refusal("connection_slots");
                return;
            };
            let info = conn_info(remote, identity, connection_bytes);
            let _ = ready.send(Ok(Counted::new(Socket::Tls(Box::new(stream)), info, permit, limits, &open))).await;
        });
    }
}

/// A slot from `anyone` (or `members`, when given), closing the connection idle the
/// longest to make room whenever one has been idle long enough; `None` if a semaphore
/// was closed (never here).
async fn slot_or_eviction(
    anyone: &Arc<Semaphore>,
    open: &OpenConnections,
    members: Option<&Arc<Semaphore>>,
) -> Option<OwnedSemaphorePermit> {
    loop {
        if let Ok(permit) = anyone.clone().try_acquire_owned() {
            return Some(permit);
        }
        open.evict_idlest();
        let either = async {
            match members {
                Some(members) => tokio::select! {
                    permit = members.clone().acquire_owned() => permit.ok(),
                    permit = anyone.clone().acquire_owned() => permit.ok(),
                },
                None => anyone.clone().acquire_owned().await.ok(),
            }
        };
        // Connections become idle long enough as time passes: look again.
        if let Ok(permit) = tokio::time::timeout(EVICT_IDLE_MIN / 2, either).await {
            return permit;
        }
    }
}

/// Connection slots under TLS: some kept for nodes, the rest for anyone.
struct Slots {
    anyone: Arc<Semaphore>,
    members: Arc<Semaphore>,
    waiting: Arc<Semaphore>,
}

impl Slots {
    fn new(max: usize) -> Slots {
        let members = MEMBER_SLOTS.min(max / 4).max(1);
        Slots {
            anyone: Arc::new(Semaphore::new(max.saturating_sub(members).max(1))),
            members: Arc::new(Semaphore::new(members)),
            waiting: Arc::new(Semaphore::new(WAITING_MAX)),
        }
    }

    /// A slot for a connection from `identity`, waiting a while when none is free;
    /// `None`: close it.
    async fn admit(&self, identity: Identity, open: &OpenConnections) -> Option<OwnedSemaphorePermit> {
        let member = matches!(identity, Identity::Node(_));
        if member {
            if let Ok(permit) = self.members.clone().try_acquire_owned() {
                return Some(permit);
            }
        }
        if let Ok(permit) = self.anyone.clone().try_acquire_owned() {
            return Some(permit);
        }
        let _waiting = self.waiting.clone().try_acquire_owned().ok()?;
        let members = member.then_some(&self.members);
        tokio::time::timeout(SLOT_WAIT, slot_or_eviction(&self.anyone, open, members)).await.ok().flatten()
    }
}

impl Connected for Counted {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Counted {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let read = match &mut this.stream {
            Socket::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        // Idle too long: the peer is told the connection ended (HTTP/2 keepalive
        // PINGs keep a connection alive, not busy; this closes idle ones).
        if read.is_pending() && (this.idle_too_long(cx) || this.evicted(cx)) {
            return Poll::Ready(Ok(()));
        }
        read
    }
}

impl AsyncWrite for Counted {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Socket::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Socket::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Socket::Plain(s) => s.is_write_vectored(),
            Socket::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Socket::Plain(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Socket::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn accepted_connections_send_small_frames_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let limits = Limits { connections: 4, connection_bytes: 1 << 20, idle_timeout: None };
        let mut incoming = Box::pin(accept_bounded(listener, limits, None, Metrics::new()));
        let _client = TcpStream::connect(address).await.expect("connect");
        let accepted = incoming.next().await.expect("a connection").expect("accepted");
        let Socket::Plain(stream) = &accepted.stream else { panic!("plain text without TLS") };
        assert!(stream.nodelay().expect("socket option"), "TCP_NODELAY is off");
        assert_eq!(accepted.info.identity, Identity::Open);
    }

    #[tokio::test]
    async fn nodes_get_the_slots_kept_for_them_when_clients_hold_the_rest() {
        let (slots, open) = (Slots::new(8), OpenConnections::default()); // 2 kept for nodes, 6 for anyone
        let mut held = Vec::new();
        for _ in 0..6 {
            held.push(slots.admit(Identity::Client, &open).await.expect("a free slot"));
        }
        let late = tokio::time::timeout(Duration::from_millis(50), slots.admit(Identity::Client, &open)).await;
        assert!(late.is_err(), "a client past the limit waits");
        let node = tokio::time::timeout(Duration::from_millis(50), slots.admit(Identity::Node(2), &open)).await;
        assert!(node.expect("a node does not wait").is_some());
        let waiting = slots.admit(Identity::Admin, &open);
        tokio::pin!(waiting);
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut waiting).await.is_err());
        held.pop();
        assert!(waiting.await.is_some(), "a freed slot goes to the one waiting");
    }
}
