//! The router's side that nxd needs: the route table it hands over, the router's settings, the
//! control client that swaps the table, and the systemd unit the router runs in.
//!
//! The router itself (the `nx-router` crate, on Pingora) is a process of its own: a transient
//! unit `nx-router.service` of the same manager as the deployments, so it outlives nxd and
//! keeps serving the last table it was given while nxd restarts or upgrades. nxd feeds it the
//! whole table over a unix socket (`PUT /v1/routes`); the router swaps it in one atomic store
//! and keeps a copy in `<state_dir>/router/routes.json` for its own restarts.

pub mod client;
mod settings;
pub mod unit;

pub use client::{RouterClient, RouterClientError};
pub use settings::{RouterConfig, RouterSettings};

use crate::domain::RouteKey;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

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
}

/// The whole table, as nxd sends it (`PUT /v1/routes`) and the router keeps it on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTable {
    pub routes: Vec<Route>,
}

/// The host name of a route under `base_domain` (lower case).
pub fn host_name(key: &RouteKey, base_domain: &str) -> String {
    let base = base_domain.to_ascii_lowercase();
    match key {
        RouteKey::Preview(sandbox, id) => format!("{id}.{sandbox}.{base}"),
        RouteKey::Production(sandbox) => format!("{sandbox}.{base}"),
    }
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

impl RouteTable {
    /// The table of `(key, deployment, upstream)` rows under `base_domain`.
    pub fn build<'a>(
        base_domain: &str,
        rows: impl IntoIterator<Item = (&'a RouteKey, &'a str, SocketAddr)>,
    ) -> Self {
        let routes = rows
            .into_iter()
            .map(|(key, deployment, upstream)| {
                let sandbox = match key {
                    RouteKey::Preview(s, _) | RouteKey::Production(s) => s.to_string(),
                };
                Route {
                    host: host_name(key, base_domain),
                    upstream,
                    sandbox,
                    deployment: deployment.to_owned(),
                }
            })
            .collect();
        Self { routes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{DeploymentId, SandboxName};

    #[test]
    fn hosts_are_named_and_normalized_as_the_router_keys_them() {
        let web = SandboxName::parse("web").unwrap();
        let d1 = DeploymentId::parse("d1").unwrap();
        let key = RouteKey::Preview(web.clone(), d1);
        assert_eq!(host_name(&key, "NX.test"), "d1.web.nx.test");
        assert_eq!(
            host_name(&RouteKey::Production(web), "nx.test"),
            "web.nx.test"
        );
        assert_eq!(normalize_host("WEB.nx.test:7780"), "web.nx.test");
        assert_eq!(normalize_host("web.nx.test."), "web.nx.test");
        assert_eq!(normalize_host("web.nx.test.:80"), "web.nx.test");
        assert_eq!(normalize_host("[::1]:7780"), "::1");
    }
}
