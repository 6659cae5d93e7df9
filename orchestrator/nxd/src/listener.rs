//! The API's listener and its server loop. Over `api_max_connections` open connections, a new
//! one is closed as soon as it is accepted, and those already open keep working. Accept errors
//! (EMFILE, ENFILE, ECONNABORTED) are logged and retried by axum's `TcpListener` (after 1 s for
//! the resource errors), never fatal. A connection whose request head (request line and header
//! fields) is not complete within `api_head_timeout_secs` of the moment nxd starts reading it,
//! on a new connection or between keep-alive requests, is closed (hyper's `header_read_timeout`),
//! so that silent or half-sent requests cannot hold every slot.
//!
//! Every accepted connection gets `TCP_NODELAY` (tcp(7)): the API streams small writes (a
//! task's events, a log followed live, the end of a chunked body), and with Nagle's algorithm
//! each of them waits for the client's acknowledgement of the one before, which the client
//! delays (up to 40 ms on Linux) while it has nothing to send.

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A TCP listener that holds at most `max` connections open at once.
pub struct CappedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    max: usize,
}

impl CappedListener {
    /// `inner` with room for `max` open connections.
    pub fn new(inner: TcpListener, max: usize) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// The next connection that gets a slot (with `TCP_NODELAY`) and its peer's address; those
    /// over the cap are closed here. Never fails: accept errors are retried.
    async fn accept(&mut self) -> (CappedStream, SocketAddr) {
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, %addr, "TCP_NODELAY");
            }
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    return (
                        CappedStream {
                            stream,
                            _slot: slot,
                        },
                        addr,
                    )
                }
                Err(_) => {
                    tracing::warn!(max = self.max, %addr, "api_max_connections reached: connection refused");
                    drop(stream);
                }
            }
        }
    }
}

/// A connection holding one of the listener's slots until it is dropped.
pub struct CappedStream {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

/// Serves `app` on `listener` over HTTP/1.1 until the future is dropped (it never ends on its
/// own), each connection in a task of its own; a request head not complete within `head_timeout` closes its connection.
///
/// HTTP/1 only (`http1_only`): hyper-util's version detection would otherwise read the first
/// bytes of each connection before hyper's head timer starts, with no time limit of its own.
pub async fn serve(
    mut listener: CappedListener,
    app: axum::Router,
    head_timeout: Duration,
) -> Infallible {
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout);
    let builder = Arc::new(builder);
    loop {
        let (stream, addr) = listener.accept().await;
        let (builder, service) = (builder.clone(), TowerToHyperService::new(app.clone()));
        tokio::spawn(async move {
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                // A client that went away or sent no complete head in time: nothing to act on,
                // and one line each would let any client fill the log.
                tracing::debug!(error = %e, %addr, "API connection ended");
            }
        });
    }
}

impl AsyncRead for CappedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
