//! What Pingora leaves to its user about client connections: a cap on open connections, a
//! deadline for a whole request head (Pingora's timeouts are per read, so a client that sends a
//! byte every few seconds would never be cut off), and one for a whole TLS handshake.
//!
//! [`Connections`] wraps the proxy as Pingora's `ServerApp`: it refuses connections over the cap,
//! and those of a client (an IPv4 address, an IPv6 /64) that holds `max_connections_per_address`
//! already (one client's silent connections must not take every slot: attacker s10 F3); it reads
//! each HTTP/1 request head itself under `head_timeout` (on a new connection from its accept,
//! so that a silent one is gone after `head_timeout`, not `idle_timeout`; on a kept-alive one
//! from the next request's first byte), puts the bytes back into the stream (Pingora's
//! `rewind`) and hands the request to the proxy; HTTP/2 with prior knowledge (h2c) goes to
//! Pingora's own handling.
//!
//! On the HTTPS listener (a plain TCP listener to Pingora) it also runs the TLS handshake, with
//! Pingora's rustls acceptor and our `rustls::ServerConfig` (see [`crate::tls::acceptor`]), under
//! `head_timeout` as nginx's `client_header_timeout` covers its handshakes: a client that opens
//! TLS and never finishes is closed. A finished TLS-ALPN-01 validation handshake (RFC 8737,
//! ALPN `acme-tls/1`) is closed at once; any other goes to Pingora's HTTP handling (h2 or
//! HTTP/1.1 by ALPN; its per-read timeouts apply to TLS request heads).
//!
//! Its lines about single connections are rate-limited (`log_budget::CONNECTIONS`).

use crate::log_budget::CONNECTIONS;
use async_trait::async_trait;
use nx_router_api::{ClientCounts, ClientSlot};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::listeners::tls::Acceptor;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::{GetSocketDigest, Ssl, Stream, ALPN};
use pingora::server::ShutdownWatch;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::time::{timeout, timeout_at, Instant};

/// HTTP/2's connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A head longer than this goes to Pingora as it is, which refuses it.
const MAX_HEAD_BYTES: usize = 64 << 10;

pub struct Connections<A> {
    proxy: Arc<A>,
    caps: Caps,
    idle_timeout: Duration,
    head_timeout: Duration,
    /// The HTTPS listener's TLS; `None` on the plain HTTP listener.
    tls: Option<Acceptor>,
}

/// How many connections may be open: all together, and one client's.
pub struct Caps {
    /// The open connections (shared with the metrics).
    pub open: Arc<AtomicUsize>,
    /// `router.max_connections`.
    pub max: usize,
    /// Each client's open connections (shared by the listeners).
    pub by_client: Arc<ClientCounts>,
    /// `router.max_connections_per_address`.
    pub max_per_address: usize,
}

/// Holds one of a count's places (a connection of `router.max_connections`, a request to a
/// deployment) until dropped.
pub struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// One more of `count`, unless it already holds `max`.
    pub fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        let n = count.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(count.clone());
        (n < max).then_some(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

enum Head {
    /// The client closed, sent nothing in time, or did not finish its head in time.
    Gone,
    Http1(Stream),
    Http2(Stream),
}

impl<A> Connections<A> {
    /// `proxy` behind the connection `caps` and the timeouts.
    pub fn new(proxy: A, caps: Caps, idle_timeout: Duration, head_timeout: Duration) -> Self {
        Self {
            proxy: Arc::new(proxy),
            caps,
            idle_timeout,
            head_timeout,
            tls: None,
        }
    }

    /// Serves TLS: each connection's handshake is run by `acceptor` under `head_timeout`.
    pub fn with_tls(mut self, acceptor: Acceptor) -> Self {
        self.tls = Some(acceptor);
        self
    }

    /// The TLS handshake of a new connection, within `head_timeout`; `None` when it failed,
    /// did not finish in time, or was an ACME TLS-ALPN-01 validation (done once it finished).
    async fn handshake(&self, acceptor: &Acceptor, stream: Stream) -> Option<Stream> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().cloned());
        let tcp: Box<TcpStream> = stream.into_any().downcast().ok()?;
        match timeout(self.head_timeout, acceptor.tls_handshake(*tcp)).await {
            Ok(Ok(tls)) => {
                if matches!(tls.selected_alpn_proto(),
                    Some(ALPN::Custom(p)) if p.protocol() == crate::tls::ACME_TLS_ALPN)
                {
                    if CONNECTIONS.allow() {
                        tracing::info!(?peer, "ACME TLS-ALPN-01 validation handshake answered");
                    }
                    return None;
                }
                Some(Box::new(tls))
            }
            Ok(Err(e)) => {
                // Only a line that is written takes from the budget.
                if tracing::enabled!(tracing::Level::DEBUG) && CONNECTIONS.allow() {
                    tracing::debug!(?peer, error = %e, "TLS handshake failed");
                }
                None
            }
            Err(_) => {
                if CONNECTIONS.allow() {
                    tracing::info!(
                        ?peer,
                        secs = self.head_timeout.as_secs(),
                        "TLS handshake not complete within router.head_timeout_secs: closed"
                    );
                }
                None
            }
        }
    }

    /// The client's share for a connection from `peer` (none for a peer that is not an IP
    /// address); `Err` when the client holds all it may.
    fn client_slot(&self, peer: Option<std::net::IpAddr>) -> Result<Option<ClientSlot>, ()> {
        match peer {
            Some(ip) => self
                .caps
                .by_client
                .take_for(ip, self.caps.max_per_address)
                .map(Some)
                .ok_or(()),
            None => Ok(None),
        }
    }

    /// Reads one request head (or h2c's preface) under the deadlines, then rewinds it. A kept-
    /// alive connection (not `first`) waiting for its next request is closed when the router
    /// shuts down (SIGTERM, or a graceful upgrade handing the listener to a new process); a new
    /// connection is still served.
    async fn read_head(
        &self,
        mut stream: Box<TcpStream>,
        first: bool,
        shutdown: &ShutdownWatch,
    ) -> Head {
        // Read straight into the head's spare capacity (`read_buf`): no buffer to zero and copy.
        let mut head = Vec::with_capacity(1024);
        let mut shutdown = shutdown.clone();
        let idle_until_shutdown = async {
            if first || shutdown.wait_for(|down| *down).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        // A new connection has its head timeout from the accept (a silent one is not idle); a
        // kept-alive one from its next request's first byte.
        let accepted = Instant::now();
        let first_byte = if first {
            self.head_timeout
        } else {
            self.idle_timeout
        };
        tokio::select! {
            read = timeout(first_byte, stream.read_buf(&mut head)) => match read {
                Ok(Ok(n)) if n > 0 => {}
                _ => return Head::Gone,
            },
            () = idle_until_shutdown => return Head::Gone,
        }
        let deadline = if first { accepted } else { Instant::now() } + self.head_timeout;
        loop {
            if first && head.starts_with(H2_PREFACE) {
                stream.rewind(&head);
                return Head::Http2(stream);
            }
            let partial_preface = first && H2_PREFACE.starts_with(&head);
            let complete =
                head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n");
            if (complete && !partial_preface) || head.len() > MAX_HEAD_BYTES {
                stream.rewind(&head);
                return Head::Http1(stream);
            }
            head.reserve(4096);
            match timeout_at(deadline, stream.read_buf(&mut head)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return Head::Gone,
                Err(_) => {
                    if CONNECTIONS.allow() {
                        tracing::info!(
                            peer = ?stream.get_socket_digest().and_then(|d| d.peer_addr().cloned()),
                            bytes = head.len(),
                            secs = self.head_timeout.as_secs(),
                            "request head not complete within router.head_timeout_secs: closed"
                        );
                    }
                    return Head::Gone;
                }
            }
        }
    }
}

#[async_trait]
impl<A> ServerApp for Connections<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let Ok(_client_slot) = self.client_slot(peer) else {
            if CONNECTIONS.allow() {
                tracing::info!(
                    max = self.caps.max_per_address,
                    ?peer,
                    "router.max_connections_per_address reached: connection refused"
                );
            }
            return None;
        };
        let Some(_slot) = Slot::take(&self.caps.open, self.caps.max) else {
            if CONNECTIONS.allow() {
                tracing::warn!(
                    max = self.caps.max,
                    "router.max_connections reached: connection refused"
                );
            }
            return None;
        };
        if let Some(acceptor) = &self.tls {
            let tls = self.handshake(acceptor, stream).await?;
            // Pingora's own handling: h2 or HTTP/1.1 by ALPN, timeouts per read.
            return ServerApp::process_new(&self.proxy, tls, shutdown).await;
        }
        if !stream.as_any().is::<TcpStream>() {
            return ServerApp::process_new(&self.proxy, stream, shutdown).await;
        }
        let mut stream: Box<TcpStream> = stream.into_any().downcast().ok()?;
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut first = true;
        loop {
            let stream_after = match self.read_head(stream, first, shutdown).await {
                Head::Gone => return None,
                Head::Http2(s) => return ServerApp::process_new(&self.proxy, s, shutdown).await,
                Head::Http1(s) => s,
            };
            first = false;
            let mut session = ServerSession::new_http1(stream_after);
            let keepalive = (!*shutdown.borrow()).then_some(self.idle_timeout.as_secs());
            session.set_keepalive(keepalive);
            if let Some(s) = settings.take() {
                s.apply_to_session(&mut session);
            }
            let reused = self.proxy.process_new_http(session, shutdown).await?;
            let (next, persistent) = reused.consume();
            settings = persistent;
            stream = match next.into_any().downcast() {
                Ok(s) => s,
                Err(_) => return None,
            };
        }
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}
