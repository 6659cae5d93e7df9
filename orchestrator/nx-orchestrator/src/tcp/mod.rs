//! TCP services (`nx push --tcp`): a deployment whose port speaks raw TCP (Redis, NATS, MQTT)
//! rather than HTTP is reached on a host port of `network.tcp_ports`, shown as
//! `tcp://<base_domain>:<port>`.
//!
//! - **Ports** ([`store`]): a sandbox gets one for production the first time it has a TCP
//!   deployment (`--tcp=PORT` asks for one; else the lowest free one) and keeps it until it is
//!   removed; every TCP deployment gets one of its own besides (its "preview" address, freed
//!   by `nx rm`).
//! - **Routing**: no proxy of ours. The host ports are elements of the nftables map
//!   `tcp_ports` in nxd's table `inet nx` (see `network::firewall`), DNATed in the kernel to
//!   the deployment's address and port. Every time nxd rebuilds the router's table (push,
//!   promote, rollback, rm, start, stop) it rebuilds the map from the same state and replaces
//!   it in one nft transaction, so promote and rollback move production's port atomically, as
//!   they move its HTTP route. A TCP deployment has no HTTP route: its port is not HTTP.
//! - **Isolation**: the network issue's rules stand; the only new way into a deployment is its
//!   host port, the way any client reaches it.
//!
//! - **MicroVMs** are published the same way: their VMM runs in the deployment's network
//!   namespace and forwards the deployment's own address and port to the guest.
//!
//! Refused at push: a port outside the range, one another sandbox or deployment holds, one
//! something else on the host listens on, another port for a sandbox that has one, an idle
//! timeout (the router wakes on HTTP requests only) and a health path (a health check is an
//! HTTP GET) given with the push; the sandbox's own are for its HTTP deployments, and a TCP
//! push does not take them.

pub mod store;

use crate::api::{DeploymentView, PushRequest, SandboxView};
use crate::config::Config;
use crate::domain::Deployment;
use crate::error::Error;
use crate::names::{DeploymentId, SandboxName};
use crate::network::firewall;
use crate::rows_of::Of;
use crate::state::StateError;
use crate::Orchestrator;
use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, SocketAddrV4};
use store::AllocateError;

/// Checks `network.tcp_ports` against itself and against the ports nxd listens on.
pub fn check_range(config: &Config) -> Result<(), String> {
    let range = config.network.tcp_ports;
    if range.start == 0 || range.end < range.start {
        return Err(format!(
            "network.tcp_ports.start ({}) must be above 0 and not above network.tcp_ports.end ({})",
            range.start, range.end
        ));
    }
    let own = [
        ("api_listen", Some(config.api_listen)),
        ("router_listen", Some(config.router_listen)),
        ("tls.https_listen", config.tls.https_listen),
        ("metrics_listen", config.metrics_listen),
        ("sftp.listen", config.sftp.listen),
    ];
    for (key, addr) in own {
        if let Some(addr) = addr.filter(|a| (range.start..=range.end).contains(&a.port())) {
            return Err(format!(
                "network.tcp_ports ({}-{}) holds {key}'s port {}: TCP services are DNATed on every address of the host, so move one of them",
                range.start,
                range.end,
                addr.port()
            ));
        }
    }
    Ok(())
}

/// Whether nothing on the host listens on TCP `port` (any address): binding the wildcard
/// address fails when anything holds the port.
fn unused_on_host(port: u16) -> bool {
    std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
}

/// `tcp://HOST:PORT` for a host port: HOST is `base_domain`, or `127.0.0.1` when that is
/// `localhost` or a name under it (such as the default `nx.localhost`): RFC 6761 keeps those
/// names for loopback, and curl and browsers resolve them so, but glibc does not (it knows
/// `localhost` from /etc/hosts only), so redis-cli, nc or a program's client library would
/// fail on `nx.localhost` ("Name or service not known").
fn tcp_url(base_domain: &str, port: u16) -> String {
    let domain = base_domain.trim_end_matches('.').to_ascii_lowercase();
    if domain == "localhost" || domain.ends_with(".localhost") {
        format!("tcp://127.0.0.1:{port}")
    } else {
        format!("tcp://{domain}:{port}")
    }
}

impl From<AllocateError> for Error {
    fn from(e: AllocateError) -> Self {
        match e {
            AllocateError::Db(e) => Error::State(StateError::Db(e)),
            AllocateError::Exhausted { .. } | AllocateError::Taken { .. } => {
                Error::Conflict(e.to_string())
            }
            AllocateError::Moved { .. } => Error::Invalid(e.to_string()),
        }
    }
}

impl Orchestrator {
    /// Refuses a TCP push that cannot be served, before anything is stored (see the module's
    /// docs). `req` has its sandbox's settings applied.
    pub(crate) async fn check_tcp(&self, req: &PushRequest) -> Result<(), Error> {
        let Some(tcp) = &req.tcp else {
            return Ok(());
        };
        let range = self.config.network.tcp_ports;
        if let Some(port) = tcp.host_port {
            if !(range.start..=range.end).contains(&port) {
                return Err(Error::Invalid(format!(
                    "TCP port {port} is outside nxd's network.tcp_ports ({}-{}): push with a port of that range, or with --tcp alone and nxd picks a free one",
                    range.start, range.end
                )));
            }
            store::check(self.state.pool(), req.sandbox.as_str(), port).await?;
            let held = store::of_sandbox(self.state.pool(), req.sandbox.as_str())
                .await
                .map_err(StateError::from)?;
            if !held.iter().any(|r| r.host_port() == port) && !unused_on_host(port) {
                return Err(Error::Conflict(format!(
                    "TCP port {port} is in use by another program on the host: push with another port of network.tcp_ports, or with --tcp alone"
                )));
            }
        }
        if req.idle_timeout_secs.is_some() {
            return Err(Error::Invalid(
                "--tcp and an idle timeout do not go together: only an HTTP request wakes a stopped deployment; drop --idle-timeout (or the sandbox's, `nx sandbox set --idle-timeout 0`)".into(),
            ));
        }
        if req.health_check.path.is_some() {
            return Err(Error::Invalid(
                "--tcp and a health path do not go together: a health check is an HTTP GET and a TCP deployment's port is not HTTP; drop --health-path (readiness is a TCP connect)".into(),
            ));
        }
        Ok(())
    }

    /// Gives a new TCP deployment its host port (and its sandbox production's, if it has none);
    /// on failure the push removes its deployment (`Orchestrator::discard`).
    pub(crate) async fn allocate_tcp(
        &self,
        deployment: &Deployment,
        req: &PushRequest,
    ) -> Result<(), Error> {
        let Some(tcp) = &req.tcp else {
            return Ok(());
        };
        let write = self.state.views_write();
        let allocated = store::allocate(
            self.state.pool(),
            deployment.sandbox.as_str(),
            deployment.id.as_str(),
            tcp.host_port,
            self.config.network.tcp_ports,
            unused_on_host,
        )
        .await;
        drop(write);
        let (production, own) = allocated?;
        tracing::info!(production, own, "TCP ports");
        Ok(())
    }

    /// Makes the TCP services map what the state says: each held port to its deployment, a
    /// sandbox's production port to its promoted deployment when that is a TCP one, only for
    /// deployments that run (`running`: their addresses). Returns the TCP deployments, which
    /// get no HTTP route.
    pub(crate) async fn publish_tcp(
        &self,
        promoted: &HashMap<SandboxName, DeploymentId>,
        running: &HashMap<&DeploymentId, SocketAddr>,
    ) -> Result<HashSet<DeploymentId>, Error> {
        let rows = store::all(self.state.pool())
            .await
            .map_err(StateError::from)?;
        let tcp: HashSet<DeploymentId> = rows
            .iter()
            .filter_map(|r| r.deployment.as_deref())
            .filter_map(|id| DeploymentId::parse(id).ok())
            .collect();
        let elements: Vec<(u16, SocketAddrV4)> = rows
            .iter()
            .filter_map(|row| {
                let id = match &row.deployment {
                    Some(id) => tcp.iter().find(|d| d.as_str() == id)?,
                    None => promoted
                        .iter()
                        .find(|(s, d)| s.as_str() == row.sandbox && tcp.contains(*d))
                        .map(|(_, d)| d)?,
                };
                match running.get(id)? {
                    SocketAddr::V4(addr) => Some((row.host_port(), *addr)),
                    SocketAddr::V6(_) => None,
                }
            })
            .collect();
        let update = firewall::tcp_ports_update(&elements);
        if self
            .firewall_elements
            .replace(firewall::TCP_PORTS, update)
            .await?
        {
            tracing::debug!(elements = elements.len(), "TCP services map replaced");
        }
        Ok(tcp)
    }

    /// The rows of the TCP port table that the views of the deployments `of` names show, for
    /// [`Self::apply_tcp_urls`]: the host's; a sandbox's production port with its deployments'
    /// (by its `sandbox` column, which no full index covers: at most one row per port of
    /// `network.tcp_ports` is read); one deployment's own.
    pub(crate) async fn tcp_rows(&self, of: Of<'_>) -> Result<Vec<store::TcpPort>, Error> {
        let pool = self.state.pool();
        let rows = match of {
            Of::Host => store::all(pool).await,
            Of::Sandbox(sandbox) => store::of_sandbox(pool, sandbox).await,
            Of::Deployment(_) => {
                of.fetch(pool, "port, sandbox, deployment", "tcp_ports")
                    .await
            }
        };
        Ok(rows.map_err(StateError::from)?)
    }

    /// Adds each TCP deployment's own address and each sandbox's production one (`rows`
    /// from [`Self::tcp_rows`]).
    pub(crate) fn apply_tcp_urls(
        &self,
        rows: &[store::TcpPort],
        sandboxes: &mut [SandboxView],
        deployments: &mut [DeploymentView],
    ) {
        for row in rows {
            let url = Some(tcp_url(&self.config.base_domain, row.host_port()));
            match &row.deployment {
                Some(id) => {
                    let views = deployments
                        .iter_mut()
                        .chain(sandboxes.iter_mut().flat_map(|s| s.deployments.iter_mut()));
                    for view in views.filter(|v| v.id.as_str() == id) {
                        view.tcp_url = url.clone();
                    }
                }
                None => {
                    for s in sandboxes
                        .iter_mut()
                        .filter(|s| s.name.as_str() == row.sandbox)
                    {
                        s.tcp_url = url.clone();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tcp_url_under_localhost_is_loopbacks_address() {
        assert_eq!(tcp_url("nx.localhost", 30001), "tcp://127.0.0.1:30001");
        assert_eq!(tcp_url("localhost.", 30001), "tcp://127.0.0.1:30001");
        assert_eq!(
            tcp_url("Apps.Example.org", 30001),
            "tcp://apps.example.org:30001"
        );
        assert_eq!(tcp_url("nx.test", 30002), "tcp://nx.test:30002");
    }

    #[test]
    fn a_range_that_holds_one_of_nxds_ports_is_refused() {
        let mut config = Config::default();
        assert!(check_range(&config).is_ok());
        config.api_listen = "0.0.0.0:30500".parse().unwrap();
        let e = check_range(&config).unwrap_err();
        assert!(e.contains("holds api_listen's port 30500"), "{e}");
        config.api_listen = "127.0.0.1:7700".parse().unwrap();
        config.network.tcp_ports.end = 29000;
        assert!(check_range(&config).unwrap_err().contains("not above"));
    }
}
