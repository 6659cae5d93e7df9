//! nxd's client of the router's control socket: HTTP/1.1 over a unix socket.
//!
//! `PUT /v1/routes` with a [`RouteTable`] (JSON) replaces the whole table (204);
//! `PUT /v1/routes/{host}` with a [`Route`] adds the route of that host or replaces it, the
//! others left as they are (201 or 204); `GET /v1/routes` answers the table the router holds; `POST /v1/certificates` makes it
//! re-read the certificate store; `GET /v1/metrics` answers the router's series;
//! `GET /v1/traffic` what it saw of each deployment ([`Traffic`]).

use crate::{Route, RouteTable, Traffic};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum RouterClientError {
    #[error("the router does not answer on {socket}: {message} (is nx-router.service running? `nx status` and the router's log in <state_dir>/router/router.log tell)")]
    Unreachable { socket: PathBuf, message: String },
    #[error("the router on {socket} gave no answer within {} s: it is stopped (SIGSTOP) or stuck (its log, <state_dir>/router/router.log, may tell why)", after.as_secs())]
    Hung { socket: PathBuf, after: Duration },
    #[error("the router refused the request ({status}): {body}")]
    Refused { status: StatusCode, body: String },
}

/// How long one request waits for the router's answer: it swaps a table in memory, so one
/// that has not answered by then is stopped or stuck, and the change (which holds nxd's lock
/// on changes meanwhile) fails as a refused one does instead of waiting for it forever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The route table's path on the control socket.
pub const ROUTES: &str = "/v1/routes";
/// The router's Prometheus series.
pub const METRICS: &str = "/v1/metrics";
/// What the router saw of each deployment.
pub const TRAFFIC: &str = "/v1/traffic";

/// Talks to one router's control socket.
#[derive(Debug, Clone)]
pub struct RouterClient {
    socket: PathBuf,
}

impl RouterClient {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_owned(),
        }
    }

    /// Replaces the router's whole table; the router has swapped it when this returns.
    /// Retries for up to `patience` while the router is (re)starting.
    pub async fn replace(
        &self,
        table: &RouteTable,
        patience: Duration,
    ) -> Result<(), RouterClientError> {
        let body = serde_json::to_vec(table).expect("a route table serializes");
        self.call_retrying(Method::PUT, ROUTES, body, patience)
            .await?;
        tracing::debug!(
            routes = table.routes.len(),
            "route table sent to the router"
        );
        Ok(())
    }

    /// Adds `route` to the router's table, or replaces the route of its host; the router has
    /// swapped the table when this returns. Retries for up to `patience` while the router is
    /// (re)starting.
    pub async fn put_route(
        &self,
        route: &Route,
        patience: Duration,
    ) -> Result<(), RouterClientError> {
        let body = serde_json::to_vec(route).expect("a route serializes");
        let path = format!("{ROUTES}/{}", route.host);
        self.call_retrying(Method::PUT, &path, body, patience)
            .await?;
        tracing::debug!(host = route.host, "route sent to the router");
        Ok(())
    }

    /// The table the router holds now.
    pub async fn table(&self, patience: Duration) -> Result<RouteTable, RouterClientError> {
        let body = self
            .call_retrying(Method::GET, ROUTES, Vec::new(), patience)
            .await?;
        serde_json::from_slice(&body).map_err(|e| RouterClientError::Refused {
            status: StatusCode::OK,
            body: format!("not a route table: {e}"),
        })
    }

    /// Makes the router re-read `<state_dir>/tls/certs` (after nxd stored a certificate).
    pub async fn reload_certificates(&self, patience: Duration) -> Result<(), RouterClientError> {
        self.call_retrying(Method::POST, "/v1/certificates", Vec::new(), patience)
            .await?;
        Ok(())
    }

    /// The router's own series (`GET /v1/metrics`), Prometheus text format.
    pub async fn metrics(&self) -> Result<String, RouterClientError> {
        let body = self.call(Method::GET, METRICS, Vec::new()).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// What the router saw of each deployment since it started (`GET /v1/traffic`).
    pub async fn traffic(&self) -> Result<Traffic, RouterClientError> {
        let body = self.call(Method::GET, TRAFFIC, Vec::new()).await?;
        serde_json::from_slice(&body).map_err(|e| RouterClientError::Refused {
            status: StatusCode::OK,
            body: format!("not traffic: {e}"),
        })
    }

    async fn call_retrying(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        patience: Duration,
    ) -> Result<Bytes, RouterClientError> {
        let deadline = Instant::now() + patience;
        loop {
            match self.call(method.clone(), path, body.clone()).await {
                Err(RouterClientError::Unreachable { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Bytes, RouterClientError> {
        let answer =
            tokio::time::timeout(REQUEST_TIMEOUT, exchange(&self.socket, method, path, body))
                .await
                .map_err(|_| RouterClientError::Hung {
                    socket: self.socket.clone(),
                    after: REQUEST_TIMEOUT,
                })?
                .map_err(|message| RouterClientError::Unreachable {
                    socket: self.socket.clone(),
                    message,
                })?;
        let (status, body) = (answer.status(), answer.into_body());
        if !status.is_success() {
            return Err(RouterClientError::Refused {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok(body)
    }
}

/// One HTTP/1.1 request on the unix socket `socket` (JSON `body`): the answer (status,
/// headers, whole body), or why there was none.
pub(crate) async fn exchange(
    socket: &Path,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> Result<Response<Bytes>, String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "nx-router")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid request");
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Response::from_parts(parts, body))
}
