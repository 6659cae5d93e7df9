//! The router: a reverse proxy that sends `Host: <deployment>.<sandbox>.<base_domain>` to that
//! deployment and `Host: <sandbox>.<base_domain>` to the promoted one. The table is swapped
//! whole (arc-swap), so a promote or rollback changes routing atomically: a request sees the
//! old table or the new one, and both deployments keep running across the switch.

use crate::domain::RouteKey;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, hyper::Error>;

pub struct Router {
    base_domain: String,
    table: ArcSwap<HashMap<String, u16>>,
    client: Client<HttpConnector, Incoming>,
}

impl Router {
    pub fn new(base_domain: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            base_domain: base_domain.to_ascii_lowercase(),
            table: ArcSwap::from_pointee(HashMap::new()),
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// The host name of a route.
    pub fn host(&self, key: &RouteKey) -> String {
        match key {
            RouteKey::Preview(sandbox, id) => format!("{id}.{sandbox}.{}", self.base_domain),
            RouteKey::Production(sandbox) => format!("{sandbox}.{}", self.base_domain),
        }
    }

    /// Replaces the whole table in one atomic store.
    pub fn replace(&self, routes: impl IntoIterator<Item = (RouteKey, u16)>) {
        let table: HashMap<String, u16> = routes
            .into_iter()
            .map(|(key, port)| (self.host(&key), port))
            .collect();
        tracing::debug!(routes = table.len(), "route table replaced");
        self.table.store(Arc::new(table));
    }

    pub fn lookup(&self, host: &str) -> Option<u16> {
        let name = host.split(':').next().unwrap_or(host).to_ascii_lowercase();
        self.table.load().get(&name).copied()
    }

    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let router = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let router = router.clone();
                    async move { Ok::<_, std::convert::Infallible>(router.forward(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn forward(&self, mut req: Request<Incoming>) -> Response<Body> {
        let host = req
            .headers()
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().host())
            .unwrap_or("")
            .to_owned();
        let Some(port) = self.lookup(&host) else {
            return page(StatusCode::NOT_FOUND, &not_found(&host, &self.base_domain));
        };
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let uri = match format!("http://127.0.0.1:{port}{path}").parse() {
            Ok(uri) => uri,
            Err(_) => return page(StatusCode::BAD_REQUEST, "bad request path\n"),
        };
        *req.uri_mut() = uri;
        if let Ok(value) = host.parse() {
            req.headers_mut().insert("x-forwarded-host", value);
        }
        match self.client.request(req).await {
            Ok(resp) => resp.map(|b| b.boxed()),
            Err(e) => {
                tracing::warn!(%host, port, error = %e, "upstream failed");
                page(
                    StatusCode::BAD_GATEWAY,
                    &format!("NX: the deployment behind {host} did not answer ({e}).\nCheck it with `nx status` and `nx logs`.\n"),
                )
            }
        }
    }
}

fn not_found(host: &str, base: &str) -> String {
    format!(
        "NX: no deployment answers at {host:?}.\n\
         Preview URLs are <deployment>.<sandbox>.{base}; production URLs are <sandbox>.{base} once a deployment is promoted.\n\
         `nx ls` lists deployments; `nx promote <sandbox> <deployment>` sets production.\n"
    )
}

fn page(status: StatusCode, text: &str) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(text.to_owned()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{DeploymentId, SandboxName};

    #[test]
    fn hosts_map_to_ports_and_the_table_swaps_whole() {
        let router = Router::new("nx.test");
        let web = SandboxName::parse("web").unwrap();
        let d1 = DeploymentId::parse("d1").unwrap();
        router.replace([
            (RouteKey::Preview(web.clone(), d1.clone()), 20001),
            (RouteKey::Production(web.clone()), 20001),
        ]);
        assert_eq!(router.lookup("d1.web.nx.test:7780"), Some(20001));
        assert_eq!(router.lookup("WEB.nx.test"), Some(20001));
        assert_eq!(router.lookup("other.nx.test"), None);
        router.replace([(RouteKey::Preview(web, d1), 20001)]);
        assert_eq!(router.lookup("web.nx.test"), None);
    }
}
