//! The router's side that nxd needs: the route table it hands over, the router's settings, the
//! control client that swaps the table, and the systemd unit the router runs in.
//!
//! The router itself (the `nx-router` crate, on Pingora) is a process of its own: a transient
//! unit `nx-router.service` of the same manager as the deployments, so it outlives nxd and
//! keeps serving the last table it was given while nxd restarts or upgrades. nxd feeds it the
//! whole table over a unix socket (`PUT /v1/routes`), or a push's new preview route alone
//! (`PUT /v1/routes/{host}`); the router swaps it in one atomic store and keeps a copy in
//! `<state_dir>/router/routes.json` for its own restarts.

pub mod unit;

pub use nx_router_api::{
    client, client_share, log_budget, normalize_host, ClientCounts, ClientSlot, Counts,
    DeploymentTraffic, Route, RouteTable, RouterClient, RouterClientError, RouterConfig,
    RouterSettings, RouterTls, Slot, Traffic,
};

use crate::config::Config;
use crate::domain::RouteKey;
use std::net::SocketAddr;

/// The host name of a route under `base_domain` (lower case).
pub fn host_name(key: &RouteKey, base_domain: &str) -> String {
    let base = base_domain.to_ascii_lowercase();
    match key {
        RouteKey::Preview(sandbox, id) => format!("{id}.{sandbox}.{base}"),
        RouteKey::Production(sandbox) => format!("{sandbox}.{base}"),
    }
}

/// The table of `(key, deployment, upstream)` rows under `base_domain`.
pub fn table<'a>(
    base_domain: &str,
    rows: impl IntoIterator<Item = (&'a RouteKey, &'a str, SocketAddr)>,
) -> RouteTable {
    let routes = rows
        .into_iter()
        .map(|(key, deployment, upstream)| route(base_domain, key, deployment, upstream))
        .collect();
    RouteTable { routes }
}

/// The route of `key` under `base_domain` to `deployment` at `upstream`.
pub fn route(base_domain: &str, key: &RouteKey, deployment: &str, upstream: SocketAddr) -> Route {
    let sandbox = match key {
        RouteKey::Preview(s, _) | RouteKey::Production(s) => s.to_string(),
    };
    Route {
        host: host_name(key, base_domain),
        upstream,
        sandbox,
        deployment: deployment.to_owned(),
        idle: false,
        unix_socket: None,
        max_requests_per_address: None,
    }
}

/// nxd's router: `router_listen`, `base_domain`, `[router]`, in `<state_dir>/router`.
pub fn settings(config: &Config) -> RouterSettings {
    RouterSettings {
        listen: config.router_listen,
        base_domain: config.base_domain.clone(),
        dir: config.state_dir.join("router"),
        tls: config.tls.https_listen.map(|listen| RouterTls {
            listen,
            certs_dir: crate::tls::certs_dir(&config.state_dir),
            challenges_dir: crate::tls::challenges_dir(&config.state_dir),
            cert_file: config.tls.cert_file.clone(),
            key_file: config.tls.key_file.clone(),
            redirect_http: config.tls.redirect_http,
            hsts: config.tls.hsts,
        }),
        wake_socket: Some(crate::upkeep::wake_socket(&config.state_dir)),
        config: config.router.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{DeploymentId, SandboxName};

    #[test]
    fn hosts_are_named_as_the_router_keys_them() {
        let web = SandboxName::parse("web").unwrap();
        let d1 = DeploymentId::parse("d1").unwrap();
        let key = RouteKey::Preview(web.clone(), d1);
        assert_eq!(host_name(&key, "NX.test"), "d1.web.nx.test");
        assert_eq!(
            host_name(&RouteKey::Production(web), "nx.test"),
            "web.nx.test"
        );
    }
}
