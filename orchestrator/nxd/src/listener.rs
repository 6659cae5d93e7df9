//! The API's listener and its server loop. Over `api_max_connections` open connections, or
//! over `api_max_connections_per_address` from one peer address (an IPv6 peer's /64: one host's
//! usual share), a new one is closed as soon as it is accepted, and those already open keep
//! working: one client holding connections cannot lock every other client out. Accept errors
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
use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A TCP listener that holds at most `max` connections open at once, and at most
/// `per_address` of them from one peer (see [`peer_key`]).
pub struct CappedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    max: usize,
    per_address: usize,
    /// Open connections by peer (only peers with at least one).
    by_peer: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// Whose share a connection from `addr` counts against: its IPv4 address, or the /64 of an
/// IPv6 one (a host is commonly given a whole /64, RFC 7421); an IPv4-mapped IPv6 address
/// counts as the IPv4 address.
fn peer_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

impl CappedListener {
    /// `inner` with room for `max` open connections, `per_address` from one peer.
    pub fn new(inner: TcpListener, max: usize, per_address: usize) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(max)),
            max,
            per_address,
            by_peer: Arc::default(),
        }
    }

    /// Counts a connection from `peer` unless it already has `per_address` open.
    fn take_peer_slot(&self, peer: IpAddr) -> Option<PeerSlot> {
        let mut by_peer = self.by_peer.lock().expect("peer counts");
        let open = by_peer.entry(peer).or_default();
        if *open >= self.per_address {
            return None;
        }
        *open += 1;
        Some(PeerSlot {
            by_peer: self.by_peer.clone(),
            peer,
        })
    }

    /// The next connection that gets a slot (with `TCP_NODELAY`) and its peer's address; those
    /// over the cap are closed here. Never fails: accept errors are retried.
    async fn accept(&mut self) -> (CappedStream, SocketAddr) {
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, %addr, "TCP_NODELAY");
            }
            let Some(peer_slot) = self.take_peer_slot(peer_key(addr.ip())) else {
                // Debug only: a client over its share would otherwise fill the log.
                tracing::debug!(max = self.per_address, %addr, "api_max_connections_per_address reached: connection closed");
                continue;
            };
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    return (
                        CappedStream {
                            stream,
                            _slot: slot,
                            _peer_slot: peer_slot,
                        },
                        addr,
                    )
                }
                Err(_) => {
                    tracing::warn!(max = self.max, %addr, "api_max_connections reached: connection refused");
                }
            }
        }
    }
}

/// One of a peer's connections, counted until it is dropped.
struct PeerSlot {
    by_peer: Arc<Mutex<HashMap<IpAddr, usize>>>,
    peer: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut by_peer = self.by_peer.lock().expect("peer counts");
        if let Some(open) = by_peer.get_mut(&self.peer) {
            *open -= 1;
            if *open == 0 {
                by_peer.remove(&self.peer);
            }
        }
    }
}

/// A connection holding one of the listener's slots, and one of its peer's, until it is
/// dropped.
pub struct CappedStream {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    _peer_slot: PeerSlot,
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

#[cfg(test)]
mod tests {
    use super::peer_key;

    #[test]
    fn a_peer_is_its_ipv4_address_or_its_ipv6_64() {
        let key = |a: &str| peer_key(a.parse().unwrap()).to_string();
        assert_eq!(key("127.0.0.2"), "127.0.0.2");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(key("::1"), "::");
    }
}
