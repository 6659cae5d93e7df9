//! The proxy logic on Pingora: route by `Host`, set the forwarding headers, strip hop-by-hop
//! headers, cap the request body, speak h2c to gRPC deployments, add a request id, log access,
//! and answer with pages that say what to do when there is no route or no answer.
//!
//! A request to a deployment holds an upstream connection, an open file, while it lasts, and
//! an HTTP/2 client sends up to 100 at once on one connection (Pingora's default
//! `max_concurrent_streams`): the router has at most `router.max_connections` of them under
//! way at once (503 past them; `main` holds that to what its open files hold), and one client
//! at most `router.max_connections_per_address` (429 past them), as many as its HTTP/1
//! connections would have (review17 #1: 30 h2c connections' 3,000 held streams took all of a
//! router's 2,048 files).
//!
//! Pingora does the rest: HTTP/1.1 and HTTP/2 to clients, upgrades (WebSocket) tunnelled both
//! ways, pooled upstream connections, and sending a request again on another connection when a
//! reused one fails before any response byte, only if its method is idempotent (RFC 9110
//! §9.2.2) and its body is still buffered (`ProxyHttp::error_while_proxy`'s default): POST and
//! PATCH are never sent twice, and a fresh connection's failure is not retried.

use crate::access_log::{AccessLog, Entry};
use crate::connections::Slot;
use crate::headers::{forwarding, hop_by_hop, shared_cookie_domain};
use crate::log_budget::{CONNECTIONS, TOSSED_COOKIES, UNROUTED};
use crate::metrics::{Finished, RouterMetrics};
use crate::table::Table;
use crate::tls::{Answer, HttpSide};
use crate::traffic::TrafficLog;
use crate::wake::{Waker, RETRY_AFTER};
use async_trait::async_trait;
use bytes::Bytes;
use nx_router_api::{ClientCounts, ClientSlot, Route, RouterConfig};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::proxy::FailToProxy;
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct NxProxy {
    table: Arc<Table>,
    metrics: Arc<RouterMetrics>,
    traffic: Arc<TrafficLog>,
    waker: Arc<Waker>,
    access_log: Arc<AccessLog>,
    requests_by_client: Arc<ClientCounts>,
    upstream_requests: UpstreamRequests,
    config: RouterConfig,
    base_domain: String,
    listener: Listener,
}

/// The listener a proxy serves.
pub enum Listener {
    /// Plain HTTP; with HTTPS configured it also answers ACME challenges and redirects.
    Http(Option<Arc<HttpSide>>),
    /// HTTPS: `X-Forwarded-Proto: https`, and HSTS when `hsts` is set.
    Https { hsts: bool },
}

/// Per request.
pub struct Ctx {
    started: Instant,
    request_id: String,
    host: String,
    route: Option<Arc<Route>>,
    body_bytes: u64,
    /// The client's count on a route with `max_requests_per_address`, while the request lasts.
    client_slot: Option<ClientSlot>,
    /// The request's places among those under way to deployments (all, and its client's),
    /// from before it connects upstream until it ends.
    upstream_slots: Option<(Slot, Option<ClientSlot>)>,
}

/// What the router keeps of the deployments it serves: their traffic and their wakes.
#[derive(Clone)]
pub struct Deployments {
    /// Requests under way and bytes sent, per deployment (nxd reads them for idle upkeep).
    pub traffic: Arc<TrafficLog>,
    /// Starts an idle deployment through nxd's wake socket.
    pub waker: Arc<Waker>,
}

/// What the proxies of all listeners share.
#[derive(Clone)]
pub struct Shared {
    /// The route table nxd sends (swapped whole on each `PUT /v1/routes`).
    pub table: Arc<Table>,
    /// The counters `GET /metrics` on the control socket serves.
    pub metrics: Arc<RouterMetrics>,
    /// Each deployment's traffic (for nxd's idle upkeep) and wakes (scale to zero).
    pub deployments: Deployments,
    /// Where each finished request's line goes (see `access_log`).
    pub access_log: Arc<AccessLog>,
    /// Each client's requests under way on routes with `max_requests_per_address` (nxd's API).
    pub requests_by_client: Arc<ClientCounts>,
    /// Each client's open connections, on every listener (`router.max_connections_per_address`).
    pub connections_by_client: Arc<ClientCounts>,
    /// Requests under way to deployments, on every listener.
    pub upstream_requests: UpstreamRequests,
}

/// Requests under way to deployments (each holds an upstream connection): all of them, at most
/// `router.max_connections`, and each client's, at most `router.max_connections_per_address`.
#[derive(Clone, Default)]
pub struct UpstreamRequests {
    /// All of them, on every listener.
    pub all: Arc<AtomicUsize>,
    /// Each client's ([`nx_router_api::client_share`]).
    pub by_client: Arc<ClientCounts>,
}

impl NxProxy {
    pub fn new(
        shared: Shared,
        config: RouterConfig,
        base_domain: String,
        listener: Listener,
    ) -> Self {
        Self {
            table: shared.table,
            metrics: shared.metrics,
            traffic: shared.deployments.traffic,
            waker: shared.deployments.waker,
            access_log: shared.access_log,
            requests_by_client: shared.requests_by_client,
            upstream_requests: shared.upstream_requests,
            config,
            base_domain,
            listener,
        }
    }

    fn scheme(&self) -> &'static str {
        match self.listener {
            Listener::Http(_) => "http",
            Listener::Https { .. } => "https",
        }
    }

    /// Takes the request's places among those under way to deployments (see
    /// [`UpstreamRequests`]) into `ctx`; `Err` with the status and page to answer when its
    /// client holds its share (429) or the router all it may have (503).
    fn take_upstream_slots(&self, session: &Session, ctx: &mut Ctx) -> Result<(), (u16, String)> {
        let per_address = self.config.max_connections_per_address;
        let client = match peer_ip(session) {
            None => None,
            Some(peer) => match self.upstream_requests.by_client.take_for(peer, per_address) {
                Some(slot) => Some(slot),
                None => {
                    if CONNECTIONS.allow() {
                        tracing::info!(max = per_address, %peer, "router.max_connections_per_address requests of one client under way to deployments: answered 429");
                    }
                    return Err((
                        429,
                        format!(
                            "NX: {per_address} requests from your address are under way through this router, the most one address may have \
                             (router.max_connections_per_address; each HTTP/2 stream is one): end one and try again.\n"
                        ),
                    ));
                }
            },
        };
        let max = self.config.max_connections;
        let Some(all) = Slot::take(&self.upstream_requests.all, max) else {
            if CONNECTIONS.allow() {
                tracing::warn!(max, "router.max_connections requests under way to deployments (each HTTP/2 stream is one; the most the router's open files hold): answered 503");
            }
            return Err((
                503,
                format!(
                    "NX: this router has as many requests under way as it may ({max}): try again in {} s.\n",
                    RETRY_AFTER.as_secs()
                ),
            ));
        };
        ctx.upstream_slots = Some((all, client));
        Ok(())
    }

    fn trusted(&self, session: &Session) -> bool {
        peer_ip(session)
            .is_some_and(|ip| self.config.trusted_proxies.iter().any(|n| n.contains(&ip)))
    }
}

impl NxProxy {
    /// Removes the `Set-Cookie` headers of a deployment's response that name `base_domain` or
    /// a parent of it (see [`shared_cookie_domain`]), and says so in the log: one tenant must
    /// not set cookies that every other tenant's hosts receive. Host-only cookies and those
    /// for the deployment's own names pass.
    fn drop_shared_cookies(&self, upstream: &mut ResponseHeader, ctx: &Ctx) -> Result<()> {
        let cookies = upstream.headers.get_all(http::header::SET_COOKIE);
        let shared = |v: &http::HeaderValue| {
            shared_cookie_domain(&String::from_utf8_lossy(v.as_bytes()), &self.base_domain)
        };
        if !cookies.iter().any(|v| shared(v).is_some()) {
            return Ok(());
        }
        let all: Vec<http::HeaderValue> = cookies.iter().cloned().collect();
        upstream.remove_header(&http::header::SET_COOKIE);
        for cookie in all {
            match shared(&cookie) {
                None => upstream.append_header(http::header::SET_COOKIE, cookie)?,
                Some(domain) => {
                    if TOSSED_COOKIES.allow() {
                        let route = ctx.route.as_deref();
                        tracing::warn!(
                            host = %ctx.host,
                            sandbox = route.map_or("", |r| r.sandbox.as_str()),
                            deployment = route.map_or("", |r| r.deployment.as_str()),
                            %domain,
                            "Set-Cookie for a domain every tenant's hosts share dropped (a cookie may name only the deployment's own host or names under it)"
                        );
                    }
                    false
                }
            };
        }
        Ok(())
    }
}

fn peer_ip(session: &Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// The request's authority: `Host`, or HTTP/2's `:authority` (in the URI).
fn authority(req: &RequestHeader) -> String {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
        .to_owned()
}

fn is_grpc(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// A new request id: 128 random bits, hex.
fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Writes a plain-text page and ends the response.
async fn page(session: &mut Session, ctx: &Ctx, status: u16, text: String) -> Result<()> {
    page_with(session, ctx, status, text, None).await
}

/// [`page`] with one more header (`Location` of a redirect, `Retry-After` of a 503).
async fn page_with(
    session: &mut Session,
    ctx: &Ctx,
    status: u16,
    text: String,
    header: Option<(http::header::HeaderName, &str)>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    if let Some((name, value)) = header {
        resp.insert_header(name, value)?;
    }
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(http::header::CONTENT_LENGTH, text.len())?;
    resp.insert_header("x-request-id", &ctx.request_id)?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(text)), true)
        .await
}

fn not_found(host: &str, base: &str) -> String {
    format!(
        "NX: no deployment answers at {host:?}.\n\
         Preview URLs are <deployment>.<sandbox>.{base}; production URLs are <sandbox>.{base} once a deployment is promoted.\n\
         `nx ls` lists deployments; `nx promote <sandbox> <deployment>` sets production.\n"
    )
}

/// The page of a route whose deployment does not run (503): it could not be started, or it
/// refuses connections (it crashed). What is down and when to try again, for visitors; the
/// reason is in the router's log and in `nx status` and `nx logs`, for the operator.
fn down_page(route: &Route, retry_after_secs: u64) -> String {
    let preview = route
        .host
        .strip_prefix(route.deployment.as_str())
        .is_some_and(|rest| rest.starts_with('.'));
    let what = if preview {
        format!(
            "deployment {} of {} is down",
            route.deployment, route.sandbox
        )
    } else {
        format!("production of {} is down", route.sandbox)
    };
    format!("NX: {what}: it does not run now. Try again in {retry_after_secs} s.\n")
}

#[async_trait]
impl ProxyHttp for NxProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            request_id: String::new(),
            host: String::new(),
            route: None,
            body_bytes: 0,
            client_slot: None,
            upstream_slots: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let req = session.req_header();
        ctx.host = authority(req);
        ctx.request_id = req
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 200 && self.trusted(session))
            .map_or_else(new_request_id, str::to_owned);
        let declared = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Listener::Http(Some(https)) = &self.listener {
            let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
            match https.answer(&ctx.host, target) {
                Some(Answer::Challenge(Some(text))) => {
                    page(session, ctx, 200, text).await?;
                    return Ok(true);
                }
                Some(Answer::Challenge(None)) => {
                    let text = "NX: no such ACME challenge here.\n".to_owned();
                    page(session, ctx, 404, text).await?;
                    return Ok(true);
                }
                Some(Answer::Redirect(location)) => {
                    let text = format!("NX: this site is served over HTTPS: {location}\n");
                    let location = Some((http::header::LOCATION, location.as_str()));
                    page_with(session, ctx, 308, text, location).await?;
                    return Ok(true);
                }
                None => {}
            }
        }
        ctx.route = self.table.lookup(&ctx.host);
        let Some(route) = ctx.route.clone() else {
            let text = not_found(&ctx.host, &self.base_domain);
            page(session, ctx, 404, text).await?;
            return Ok(true);
        };
        self.traffic.begin(&route.deployment);
        if let (Some(max), Some(peer)) = (route.max_requests_per_address, peer_ip(session)) {
            ctx.client_slot = self.requests_by_client.take_for(peer, max);
            if ctx.client_slot.is_none() {
                let text = format!(
                    "NX: {max} requests from your address are under way at {}, the most one address may have \
                     (api_max_connections_per_address in nxd's config): end one (an `nx logs -f`, an upload) and try again.\n",
                    ctx.host
                );
                page(session, ctx, 429, text).await?;
                return Ok(true);
            }
        }
        if route.idle {
            if let Err(down) = self.waker.wake(&route.deployment).await {
                let secs = down.retry_after.as_secs();
                let retry_after = secs.to_string();
                let header = Some((http::header::RETRY_AFTER, retry_after.as_str()));
                page_with(session, ctx, 503, down_page(&route, secs), header).await?;
                return Ok(true);
            }
        }
        if declared.is_some_and(|n| n > self.config.max_body_mb << 20) {
            let text = format!(
                "NX: the request body is larger than this router accepts ({} MiB: router.max_body_mb).\n",
                self.config.max_body_mb
            );
            page(session, ctx, 413, text).await?;
            return Ok(true);
        }
        if let Err((status, text)) = self.take_upstream_slots(session, ctx) {
            let retry_after = RETRY_AFTER.as_secs().to_string();
            let header = Some((http::header::RETRY_AFTER, retry_after.as_str()));
            page_with(session, ctx, status, text, header).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        if ctx.body_bytes > self.config.max_body_mb << 20 {
            return Error::e_explain(
                ErrorType::HTTPStatus(413),
                "request body over router.max_body_mb",
            );
        }
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route"))?;
        let mut peer = match &route.unix_socket {
            Some(socket) => HttpPeer::new_uds(&socket.to_string_lossy(), false, String::new())?,
            None => HttpPeer::new(route.upstream, false, String::new()),
        };
        let options = &mut peer.options;
        options.connection_timeout = Some(Duration::from_secs(self.config.connect_timeout_secs));
        options.read_timeout = Some(Duration::from_secs(self.config.upstream_read_timeout_secs));
        options.idle_timeout = Some(Duration::from_secs(self.config.idle_timeout_secs));
        if is_grpc(session.req_header()) {
            // gRPC is HTTP/2 only: a plaintext gRPC server speaks h2c with prior knowledge.
            options.set_http_version(2, 2);
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        for name in hop_by_hop(&upstream.headers) {
            upstream.remove_header(&name);
        }
        if let Some(peer) = peer_ip(session) {
            let f = forwarding(
                &upstream.headers,
                peer,
                self.trusted(session),
                self.scheme(),
                &ctx.host,
            );
            upstream.insert_header("x-forwarded-for", f.x_forwarded_for)?;
            upstream.insert_header("x-forwarded-proto", f.x_forwarded_proto)?;
            upstream.insert_header("x-forwarded-host", f.x_forwarded_host)?;
            upstream.insert_header("x-real-ip", f.x_real_ip)?;
            upstream.insert_header("forwarded", f.forwarded)?;
        }
        upstream.insert_header("x-request-id", &ctx.request_id)?;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if upstream.status != http::StatusCode::SWITCHING_PROTOCOLS {
            for name in hop_by_hop(&upstream.headers) {
                upstream.remove_header(&name);
            }
        }
        self.drop_shared_cookies(upstream, ctx)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        response.insert_header("x-request-id", &ctx.request_id)?;
        if let Listener::Https { hsts: true } = self.listener {
            // RFC 6797 §6.1: one year.
            response.insert_header(http::header::STRICT_TRANSPORT_SECURITY, "max-age=31536000")?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let host = &ctx.host;
        // Visitors learn what is wrong and when to come back, never the deployment's address
        // or Pingora's error chain: those are in the access line's `error` for the operator.
        let mut retry_after = None;
        let route = ctx.route.clone();
        let (code, text) = match (e.etype(), e.esource(), route.as_deref()) {
            (ErrorType::HTTPStatus(413), ..) => (
                413,
                format!(
                    "NX: the request body is larger than this router accepts ({} MiB: router.max_body_mb).\n",
                    self.config.max_body_mb
                ),
            ),
            (ErrorType::HTTPStatus(code), ..) => (*code, String::new()),
            (_, ErrorSource::Downstream, _) => (0, String::new()),
            // Nothing listens where it should (it crashed, or is restarting): down, as a
            // deployment whose wake failed.
            (
                ErrorType::ConnectRefused
                | ErrorType::ConnectNoRoute
                | ErrorType::ConnectTimedout
                | ErrorType::ConnectError,
                _,
                Some(route),
            ) => {
                let secs = RETRY_AFTER.as_secs();
                retry_after = Some(secs.to_string());
                (503, down_page(route, secs))
            }
            (ErrorType::ReadTimedout | ErrorType::WriteTimedout, ErrorSource::Upstream, _) => (
                504,
                format!("NX: the deployment behind {host} did not answer in time.\n"),
            ),
            _ => (
                502,
                format!("NX: the deployment behind {host} did not answer.\n"),
            ),
        };
        if code > 0 && session.response_written().is_none() {
            let written = if text.is_empty() {
                session.respond_error(code).await
            } else {
                let header = retry_after
                    .as_deref()
                    .map(|secs| (http::header::RETRY_AFTER, secs));
                page_with(session, ctx, code, text, header).await
            };
            if let Err(e) = written {
                tracing::debug!(error = %e, "could not send the error page");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        if let Some(route) = &ctx.route {
            self.traffic
                .end(&route.deployment, session.body_bytes_sent() as u64);
        }
        let (sandbox, deployment) = ctx
            .route
            .as_ref()
            .map_or(("", ""), |r| (r.sandbox.as_str(), r.deployment.as_str()));
        self.metrics.record(&Finished {
            sandbox,
            deployment,
            status,
            duration: ctx.started.elapsed(),
            bytes_received: ctx.body_bytes,
            bytes_sent: session.body_bytes_sent() as u64,
        });
        // Requests no route answers are anyone's to send: rate-limited (see `log_budget`).
        if !self.access_log.wants(status) || (ctx.route.is_none() && !UNROUTED.allow()) {
            return;
        }
        let req = session.req_header();
        self.access_log.write(&Entry {
            request_id: &ctx.request_id,
            peer: peer_ip(session),
            host: &ctx.host,
            method: req.method.as_str(),
            path: req.uri.path(),
            version: req.version,
            sandbox,
            deployment,
            status,
            duration: ctx.started.elapsed(),
            bytes_sent: session.body_bytes_sent(),
            bytes_received: ctx.body_bytes,
            error: e.map(|e| e as &dyn std::fmt::Display),
        });
    }
}
