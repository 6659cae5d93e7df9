//! The router's Prometheus series (prometheus-client), served on the control socket as
//! `GET /v1/metrics` (Prometheus text format) and merged by nxd into its own `GET /metrics`.
//!
//! Per route (labels `sandbox`, `deployment`; both empty for a host with no route):
//! `nx_router_requests_total{code}` (the response status; `0` when none was sent, e.g. the
//! client went away first), `nx_router_request_duration_seconds` (from the request head to the
//! end of the response), `nx_router_received_bytes_total` and `nx_router_sent_bytes_total`
//! (bodies), `nx_router_websocket_upgrades_total`; and `nx_router_open_connections`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    sandbox: String,
    deployment: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    sandbox: String,
    deployment: String,
    code: u16,
}

/// One finished request, as the access log sees it.
pub struct Finished<'a> {
    pub sandbox: &'a str,
    pub deployment: &'a str,
    /// The response status; 0 when none was sent.
    pub status: u16,
    pub duration: Duration,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

#[derive(Debug)]
pub struct RouterMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram>,
    received: Family<RouteLabels, Counter>,
    sent: Family<RouteLabels, Counter>,
    upgrades: Family<RouteLabels, Counter>,
    open_connections: Gauge,
    /// Each listener's count of open connections (see `connections`).
    open: Mutex<Vec<Arc<AtomicUsize>>>,
}

impl Default for RouterMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "nx_router_requests",
            "Requests the router answered, by route and response status (0: no response sent)",
            requests.clone(),
        );
        // 1 ms to about 33 s.
        let durations = Family::<RouteLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.001, 2.0, 16))) as fn() -> Histogram,
        );
        registry.register(
            "nx_router_request_duration_seconds",
            "From the request head to the end of the response, seconds",
            durations.clone(),
        );
        let received = Family::<RouteLabels, Counter>::default();
        registry.register(
            "nx_router_received_bytes",
            "Request body bytes received from clients",
            received.clone(),
        );
        let sent = Family::<RouteLabels, Counter>::default();
        registry.register(
            "nx_router_sent_bytes",
            "Response body bytes sent to clients",
            sent.clone(),
        );
        let upgrades = Family::<RouteLabels, Counter>::default();
        registry.register(
            "nx_router_websocket_upgrades",
            "Connections upgraded (101 Switching Protocols, e.g. WebSocket) to a deployment",
            upgrades.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "nx_router_open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        Self {
            registry,
            requests,
            durations,
            received,
            sent,
            upgrades,
            open_connections,
            open: Mutex::new(Vec::new()),
        }
    }
}

impl RouterMetrics {
    /// A new listener's count of open connections, summed into `nx_router_open_connections`.
    pub fn connections(&self) -> Arc<AtomicUsize> {
        let open = Arc::new(AtomicUsize::new(0));
        self.open.lock().expect("lock").push(open.clone());
        open
    }

    /// Counts one finished request.
    pub fn record(&self, r: &Finished<'_>) {
        let route = RouteLabels {
            sandbox: r.sandbox.to_owned(),
            deployment: r.deployment.to_owned(),
        };
        self.requests
            .get_or_create(&RequestLabels {
                sandbox: route.sandbox.clone(),
                deployment: route.deployment.clone(),
                code: r.status,
            })
            .inc();
        self.durations
            .get_or_create(&route)
            .observe(r.duration.as_secs_f64());
        self.received.get_or_create(&route).inc_by(r.bytes_received);
        self.sent.get_or_create(&route).inc_by(r.bytes_sent);
        if r.status == 101 {
            self.upgrades.get_or_create(&route).inc();
        }
    }

    /// The series, Prometheus text format.
    pub fn encode(&self) -> String {
        let open: usize = self
            .open
            .lock()
            .expect("lock")
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum();
        self.open_connections
            .set(i64::try_from(open).unwrap_or(i64::MAX));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }
}
