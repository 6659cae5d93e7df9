//! The control socket nxd feeds tables through: HTTP/1.1 on a unix socket (mode 0600, so only
//! root, which nxd runs as, may connect). `PUT /v1/routes` replaces the table (204),
//! `GET /v1/routes` answers it; `PUT /v1/routes/{host}` adds the route of one host or replaces
//! it, leaving the others (201 when it is new, 204 when it replaced one); `POST /v1/certificates` re-reads the certificate store (204,
//! or 404 without HTTPS); `GET /v1/metrics` answers the router's series (see `metrics`);
//! `GET /v1/traffic` what it saw of each deployment (see `traffic`). Runs on
//! a thread of its own, beside Pingora's runtimes.

use crate::metrics::RouterMetrics;
use crate::table::Table;
use crate::tls::Certificates;
use crate::traffic::TrafficLog;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use nx_router_api::{client, normalize_host, Route, RouteTable};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

/// A table larger than this (bytes of JSON) is refused.
const MAX_TABLE_BYTES: usize = 64 << 20;
/// One route larger than this (bytes of JSON) is refused.
const MAX_ROUTE_BYTES: usize = 64 << 10;

/// Binds `socket` (replacing a stale one) and serves it on a new thread.
pub fn spawn(
    socket: &Path,
    table: Arc<Table>,
    certs: Option<Arc<Certificates>>,
    metrics: Arc<RouterMetrics>,
    traffic: Arc<TrafficLog>,
) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(socket);
    let listener = std::os::unix::net::UnixListener::bind(socket)
        .map_err(|e| anyhow::anyhow!("cannot bind the control socket {}: {e}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("nx-router-control".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the control thread's runtime");
            runtime.block_on(serve(listener, table, certs, metrics, traffic));
        })?;
    Ok(())
}

async fn serve(
    listener: std::os::unix::net::UnixListener,
    table: Arc<Table>,
    certs: Option<Arc<Certificates>>,
    metrics: Arc<RouterMetrics>,
    traffic: Arc<TrafficLog>,
) {
    let listener = tokio::net::UnixListener::from_std(listener).expect("a tokio unix listener");
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (table, certs, metrics, traffic) = (
            table.clone(),
            certs.clone(),
            metrics.clone(),
            traffic.clone(),
        );
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (table, certs, metrics, traffic) = (
                    table.clone(),
                    certs.clone(),
                    metrics.clone(),
                    traffic.clone(),
                );
                async move {
                    Ok::<_, std::convert::Infallible>(
                        handle(&table, certs.as_deref(), &metrics, &traffic, req).await,
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    table: &Table,
    certs: Option<&Certificates>,
    metrics: &RouterMetrics,
    traffic: &TrafficLog,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if let Some(host) = req
        .uri()
        .path()
        .strip_prefix(client::ROUTES)
        .and_then(|p| p.strip_prefix('/'))
    {
        if req.method() != Method::PUT {
            return reply(StatusCode::METHOD_NOT_ALLOWED, b"PUT\n".to_vec());
        }
        let host = normalize_host(host);
        return match body::<Route>(req, MAX_ROUTE_BYTES, "a route").await {
            Err(refused) => refused,
            Ok(route) if normalize_host(&route.host) != host => reply(
                StatusCode::BAD_REQUEST,
                format!("the route's host {} is not the path's {host}\n", route.host).into_bytes(),
            ),
            Ok(route) => match table.put(route) {
                Ok(true) => reply(StatusCode::CREATED, Vec::new()),
                Ok(false) => reply(StatusCode::NO_CONTENT, Vec::new()),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot keep the table: {e}\n").into_bytes(),
                ),
            },
        };
    }
    match (req.uri().path(), req.method(), certs) {
        (client::ROUTES, _, _) => {}
        (client::METRICS, &Method::GET, _) => {
            return reply(StatusCode::OK, metrics.encode().into_bytes())
        }
        (client::TRAFFIC, &Method::GET, _) => {
            let body = serde_json::to_vec(&traffic.snapshot()).expect("traffic serializes");
            return reply(StatusCode::OK, body);
        }
        ("/v1/certificates", &Method::POST, Some(certs)) => {
            certs.reload();
            return reply(StatusCode::NO_CONTENT, Vec::new());
        }
        ("/v1/certificates", _, None) => {
            return reply(
                StatusCode::NOT_FOUND,
                b"HTTPS is off (tls.https_listen)\n".to_vec(),
            )
        }
        _ => {
            return reply(
                StatusCode::NOT_FOUND,
                b"only /v1/routes, PUT /v1/routes/{host}, POST /v1/certificates, GET /v1/metrics and GET /v1/traffic\n"
                    .to_vec(),
            )
        }
    }
    match *req.method() {
        Method::GET => reply(
            StatusCode::OK,
            serde_json::to_vec(&table.snapshot()).expect("a table serializes"),
        ),
        Method::PUT => {
            let new = match body::<RouteTable>(req, MAX_TABLE_BYTES, "a route table").await {
                Ok(new) => new,
                Err(refused) => return refused,
            };
            match table.replace(new) {
                Ok(()) => reply(StatusCode::NO_CONTENT, Vec::new()),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot keep the table: {e}\n").into_bytes(),
                ),
            }
        }
        _ => reply(StatusCode::METHOD_NOT_ALLOWED, b"GET or PUT\n".to_vec()),
    }
}

/// The JSON body of `req` as a `T` (`what` names it), at most `max` bytes; or the answer that
/// refuses it (400).
async fn body<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    max: usize,
    what: &str,
) -> Result<T, Response<Full<Bytes>>> {
    let refused = |message: String| reply(StatusCode::BAD_REQUEST, message.into_bytes());
    let bytes = Limited::new(req.into_body(), max)
        .collect()
        .await
        .map_err(|e| refused(e.to_string()))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| refused(format!("not {what}: {e}\n")))
}

/// An answer of `status` with `body`.
fn reply(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}
