//! The API's listener and its server loop. Over `api_max_connections` open connections, or
//! over `api_max_connections_per_address` from one peer address (an IPv6 peer's /64: one host's
//! usual share), a new one is closed as soon as it is accepted, and those already open keep
//! working: one client holding connections cannot lock every other client out. With HTTPS on,
//! the router reaches the API on a unix socket of its own (`tls::api_socket`): its
//! connections take from `api_max_connections` but from no address's share, since the router
//! holds each of its clients to that share itself (all of them would otherwise count as the
//! router's loopback address, and 256 of anyone's requests through the router would lock out
//! every remote user and the local CLI). Accept errors
//! (EMFILE, ENFILE, ECONNABORTED) are logged and retried by axum's `TcpListener` (after 1 s for
//! the resource errors), never fatal. A connection whose request head (request line and header
//! fields) is not complete within `api_head_timeout_secs` of the moment nxd starts reading it,
//! on a new connection or between keep-alive requests, is closed (hyper's `header_read_timeout`),
//! so that silent or half-sent requests cannot hold every slot. A connection accepted while no
//! more than `api_reserved_connections` slots are free is a [`ReservedConnection`]: only the
//! root token's requests are served on it (see `scopes::authorize`). A connection whose writes
//! stay blocked for `api_send_timeout_secs` (the client takes none of an answer: its receive
//! window is full) fails with `TimedOut`, so hyper closes it and drops the answer, which gives
//! its token's request back (`token_requests`); hyper has no such timer, and an answer never read
//! held its connection for good (attacker s12 H6: 4,096 unread log answers of one `--can logs`
//! token). Request bodies have their own bound (`request_body`).
//!
//! Every accepted connection gets `TCP_NODELAY` (tcp(7)): the API streams small writes (a
//! task's events, a log followed live, the end of a chunked body), and with Nagle's algorithm
//! each of them waits for the client's acknowledgement of the one before, which the client
//! delays (up to 40 ms on Linux) while it has nothing to send.

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use nx_orchestrator::router::{ClientCounts, ClientSlot};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::either::Either;

/// A TCP listener (and the router's unix socket) that holds at most `max` connections open at
/// once, and at most `per_address` of them from one TCP peer (see
/// [`nx_orchestrator::router::client_share`]).
pub struct CappedListener {
    inner: TcpListener,
    router: Option<UnixListener>,
    slots: Arc<Semaphore>,
    max: usize,
    reserved: usize,
    per_address: usize,
    /// Open TCP connections by peer.
    by_peer: Arc<ClientCounts>,
    /// `api_send_timeout_secs`.
    send_timeout: Duration,
}

impl CappedListener {
    /// `inner` with room for `max` open connections, the last `reserved` of them for the root
    /// token, `per_address` from one peer; `router` (the router's unix socket, if any) shares
    /// the `max`. A connection whose writes stay blocked for `send_timeout` fails.
    pub fn new(
        inner: TcpListener,
        router: Option<UnixListener>,
        (max, reserved): (usize, usize),
        per_address: usize,
        send_timeout: Duration,
    ) -> Self {
        Self {
            inner,
            router,
            slots: Arc::new(Semaphore::new(max)),
            max,
            reserved,
            per_address,
            by_peer: Arc::default(),
            send_timeout,
        }
    }

    /// The next connection that gets a slot (with `TCP_NODELAY` over TCP), who it is from (a
    /// peer's address, or the router) and whether it took one of the reserved slots; those over
    /// a cap are closed here. Never fails: accept errors are retried.
    async fn accept(&mut self) -> (CappedStream, String, Option<ReservedConnection>) {
        loop {
            let accepted = tokio::select! {
                tcp = axum::serve::Listener::accept(&mut self.inner) => Either::Left(tcp),
                unix = accept_router(self.router.as_ref()) => Either::Right(unix),
            };
            let (stream, peer_slot, from) = match accepted {
                Either::Left((stream, addr)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, %addr, "TCP_NODELAY");
                    }
                    let Some(peer_slot) = self.by_peer.take_for(addr.ip(), self.per_address) else {
                        // Debug only: a client over its share would otherwise fill the log.
                        tracing::debug!(max = self.per_address, %addr, "api_max_connections_per_address reached: connection closed");
                        continue;
                    };
                    (Either::Left(stream), Some(peer_slot), addr.to_string())
                }
                Either::Right(stream) => (Either::Right(stream), None, "router".to_owned()),
            };
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let reserved = (self.slots.available_permits() < self.reserved).then_some(
                        ReservedConnection {
                            reserved: self.reserved,
                            max: self.max,
                        },
                    );
                    return (
                        CappedStream {
                            stream,
                            send_timeout: self.send_timeout,
                            blocked: None,
                            _slot: slot,
                            _peer_slot: peer_slot,
                        },
                        from,
                        reserved,
                    );
                }
                Err(_) => {
                    tracing::warn!(max = self.max, %from, "api_max_connections reached: connection refused");
                }
            }
        }
    }
}

/// A request's extension on a connection that took one of the `reserved` slots of `max`
/// (`api_reserved_connections` of `api_max_connections`): only the root token is served.
#[derive(Debug, Clone, Copy)]
pub struct ReservedConnection {
    pub reserved: usize,
    pub max: usize,
}

/// The next connection on the router's socket, or never without one. Accept errors are logged
/// and retried after 1 s (EMFILE and ENFILE heal as connections close).
async fn accept_router(router: Option<&UnixListener>) -> UnixStream {
    let Some(router) = router else {
        return std::future::pending().await;
    };
    loop {
        match router.accept().await {
            Ok((stream, _)) => return stream,
            Err(e) => {
                tracing::warn!(error = %e, "the router's API socket: accept failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Binds the router's API socket at `path` (replacing a stale one), mode 0600: only nxd's
/// user (the router's) may connect.
///
/// Errors: the directory, the bind or the mode, naming the path.
pub fn bind_router_socket(path: &std::path::Path) -> anyhow::Result<UnixListener> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the directory of {shown}"))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove the old {shown}"))
        }
        _ => {}
    }
    let listener = UnixListener::bind(path).with_context(|| format!("cannot listen on {shown}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set the mode of {shown}"))?;
    Ok(listener)
}

/// A connection holding one of the listener's slots, and one of its TCP peer's, until it is
/// dropped; its writes fail with `TimedOut` once blocked for `send_timeout`.
pub struct CappedStream {
    stream: Either<TcpStream, UnixStream>,
    send_timeout: Duration,
    /// Armed when a write found the connection full; disarmed by the next write that moves.
    blocked: Option<Pin<Box<Sleep>>>,
    _slot: OwnedSemaphorePermit,
    _peer_slot: Option<ClientSlot>,
}

impl CappedStream {
    /// `written` (a write's outcome), or `TimedOut` once writes have been blocked for
    /// `send_timeout` (the timer is polled with the write's waker, so it wakes the writer).
    fn unless_blocked_too_long<T>(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if written.is_ready() {
            self.blocked = None;
            return written;
        }
        let timeout = self.send_timeout;
        let blocked = self
            .blocked
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match blocked.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client took none of the answer for {} s (api_send_timeout_secs)",
                    timeout.as_secs()
                ),
            ))),
        }
    }
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
        let (stream, from, reserved) = listener.accept().await;
        // Rare (the API nearly full): the extension layered on this connection's router only.
        let app = match reserved {
            Some(reserved) => app.clone().layer(axum::Extension(reserved)),
            None => app.clone(),
        };
        let (builder, service) = (builder.clone(), TowerToHyperService::new(app));
        tokio::spawn(async move {
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                // A client that went away or sent no complete head in time: nothing to act on,
                // and one line each would let any client fill the log.
                tracing::debug!(error = %e, %from, "API connection ended");
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
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.unless_blocked_too_long(cx, written)
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
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.unless_blocked_too_long(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
