//! What nxd and the router (`nx-router`) share, and nothing else: the route table nxd hands
//! over ([`Route`], [`RouteTable`]), the router's settings ([`RouterSettings`], with `[router]`
//! as [`RouterConfig`], HTTPS as [`RouterTls`]), the client of the router's control socket
//! ([`RouterClient`]), the certificate store nxd writes and the router serves ([`store`]), what
//! the router saw of each deployment ([`traffic`]) and how it asks nxd to start an idle one
//! ([`wake`]), how both count what one client holds open ([`clients`]) and rate-limit the log
//! lines anyone can cause ([`log_budget`]).
//!
//! It depends on no server crate of nxd's (no sqlx, zbus or backends), so `nx-router` builds
//! and tests on its own: `cargo test -p nx-router`.

pub mod client;
pub mod clients;
pub mod log_budget;
mod settings;
pub mod store;
pub mod traffic;
pub mod wake;

pub use client::{RouterClient, RouterClientError};
pub use clients::{client_share, ClientCounts, ClientSlot, Counts, Slot};
pub use settings::{RouterConfig, RouterSettings, RouterTls};
pub use traffic::{DeploymentTraffic, Traffic};

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// One route: a host name and the deployment that answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The lower-case host name without port or trailing dot, e.g. `d1.web.nx.localhost`.
    pub host: String,
    /// Where the deployment listens: a full socket address (each deployment may have its own
    /// address, e.g. in a network namespace of its own).
    pub upstream: SocketAddr,
    /// The sandbox and deployment, for the access log.
    pub sandbox: String,
    pub deployment: String,
    /// The deployment is stopped until a request comes (scale to zero): the router asks nxd
    /// to start it (see [`wake`]) and holds the request until it is ready.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub idle: bool,
    /// A unix socket the router connects to instead of `upstream`: nxd's own API
    /// (`api.<base_domain>`), served to the router on a socket only nxd's user may open, so
    /// that nxd counts the router's connections apart from its local clients' addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix_socket: Option<PathBuf>,
    /// At most this many of one client's requests (one [`client_share`]) under way on this
    /// route at once; beyond it the router answers 429 (nxd's `api_max_connections_per_address`
    /// for its API: behind the router, every client would otherwise be the router's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_address: Option<usize>,
}

/// The whole table, as nxd sends it (`PUT /v1/routes`) and the router keeps it on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTable {
    pub routes: Vec<Route>,
}

/// A `Host` header value (or `:authority`) as the table keys it: the port and one trailing
/// dot (a fully qualified name, RFC 1034 §3.1) removed, lower case. `[::1]:80` keeps its
/// brackets' content only.
pub fn normalize_host(host: &str) -> String {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::normalize_host;

    #[test]
    fn hosts_are_normalized_as_the_router_keys_them() {
        assert_eq!(normalize_host("WEB.nx.test:7780"), "web.nx.test");
        assert_eq!(normalize_host("web.nx.test."), "web.nx.test");
        assert_eq!(normalize_host("web.nx.test.:80"), "web.nx.test");
        assert_eq!(normalize_host("[::1]:7780"), "::1");
    }
}
