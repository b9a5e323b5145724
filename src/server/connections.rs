//! The listener's accept loop, bounded: at most `max` connections are served at once.
//! Past it the node stops accepting, so new connections wait in the kernel's listen
//! backlog (and time out there) instead of costing the node memory and tasks. With
//! TLS, each handshake runs in a task of its own under a deadline, so a client that
//! never finishes one holds a slot for that long and blocks no one else.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
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
use crate::tls::{ConnInfo, Identity, ServerTls};

/// Pause after a failed accept (e.g. out of file descriptors) before the next one.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);
/// A TLS handshake not finished by then is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections handed to the server but not yet taken by it.
const READY_MAX: usize = 64;

/// An accepted connection holding one of the listener's permits until it closes.
pub struct Counted {
    stream: Socket,
    info: ConnInfo,
    _permit: OwnedSemaphorePermit,
}

enum Socket {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Connections accepted from `listener`, never more than `max` open at once; over TLS
/// when `tls` is given, each knowing who is at the other end.
pub fn accept_bounded(
    listener: TcpListener,
    max: usize,
    tls: Option<Arc<ServerTls>>,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = io::Result<Counted>> {
    let (ready, incoming) = mpsc::channel(READY_MAX);
    tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(max));
        // Ends when the server stops taking connections.
        while !ready.is_closed() {
            // Waits while `max` connections are open; the semaphore is never closed.
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            let (stream, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    let _ = ready.send(Err(e)).await;
                    continue;
                }
            };
            // Without TCP_NODELAY a small response frame waits for the client's delayed
            // ACK (about 40 ms): a lone Get took 43 ms. (tonic's own setting does not
            // reach connections served from our incoming stream.)
            if let Err(e) = stream.set_nodelay(true) {
                let _ = ready.send(Err(e)).await;
                continue;
            }
            let remote = Some(remote);
            let Some(tls) = tls.clone() else {
                let info = ConnInfo { remote, identity: Identity::Open };
                let _ = ready.send(Ok(Counted { stream: Socket::Plain(stream), info, _permit: permit })).await;
                continue;
            };
            let (ready, metrics) = (ready.clone(), metrics.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok((stream, identity))) => {
                        let info = ConnInfo { remote, identity };
                        let counted = Counted { stream: Socket::Tls(Box::new(stream)), info, _permit: permit };
                        let _ = ready.send(Ok(counted)).await;
                    }
                    failed => {
                        if metrics.count_refusal("tls_handshake") {
                            let why = failed.map_or_else(
                                |_| "no handshake in time".to_string(),
                                |r| r.err().map_or_else(String::new, |e| e.to_string()),
                            );
                            eprintln!(
                                "quarryd: TLS handshake from {} failed: {why} (logged at powers of two; \
                                 counted in quarry_unauthorized_total)",
                                remote.map_or_else(|| "?".into(), |a| a.to_string())
                            );
                        }
                    }
                }
            });
        }
    });
    ReceiverStream::new(incoming)
}

impl Connected for Counted {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Counted {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Socket::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
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
        let mut incoming = Box::pin(accept_bounded(listener, 4, None, Metrics::new()));
        let _client = TcpStream::connect(address).await.expect("connect");
        let accepted = incoming.next().await.expect("a connection").expect("accepted");
        let Socket::Plain(stream) = &accepted.stream else { panic!("plain text without TLS") };
        assert!(stream.nodelay().expect("socket option"), "TCP_NODELAY is off");
        assert_eq!(accepted.info.identity, Identity::Open);
    }
}
