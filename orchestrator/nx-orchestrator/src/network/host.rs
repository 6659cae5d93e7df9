//! The host side, set up when nxd starts: `nx0` holding the gateway address, IPv4 forwarding,
//! IPv6 forwarding where the host has IPv6, the firewall table, the deployments' resolv.conf;
//! and reconciliation: links of deployments nxd no longer has are removed (after a crash, a
//! deployment's link goes with its namespace; this catches what a kill at the wrong moment
//! left).
//!
//! IPv6 forwarding changes how the host itself takes router advertisements: with
//! `net.ipv6.conf.all.forwarding=1` the kernel ignores them on interfaces with `accept_ra=1`
//! and drops the default routes they gave (a router does not autoconfigure, RFC 4861 §6.2;
//! ip-sysctl.txt `accept_ra`). So before turning it on, nxd sets `accept_ra=2` ("even when
//! forwarding") on every interface (and `default`) that has 1: a cloud host keeps its IPv6
//! default route.

use super::attach::{delete_link, failed_with, host_route, host_route6, index_of, link_named};
use super::claim::NetworkClaim;
use super::{
    dns, firewall, Attachment, NetworkConfig, NetworkError, Plan, GATEWAY_LINK, LINK_PREFIX,
};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::RouteType;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, RouteMessageBuilder};
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// The host's network as nxd set it up.
pub struct HostNetwork {
    plan: Plan,
    resolv_conf: PathBuf,
    handle: Handle,
    /// This nxd's claim on the namespace's network (`claim`), held as long as it runs; nx0's
    /// mark names its state dir for longer.
    _claim: NetworkClaim,
}

fn netlink(what: &'static str) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    move |e| NetworkError::Netlink {
        what: what.to_owned(),
        source: Box::new(e),
    }
}

impl HostNetwork {
    /// What [`Self::start`] needs and cannot make, checked before anything of the host changes
    /// (nxd's other refusals come after it and before `start`): the network namespace's
    /// deployments' network, which no other nxd may run (`claim`: the claim is returned, for
    /// `start`), and `conntrack`, which removing a deployment needs. Errors: another nxd's
    /// claim, naming it, or nx0 naming another state dir; conntrack missing or failing
    /// (`conntrack::check`).
    pub async fn check(state_dir: &Path) -> Result<NetworkClaim, NetworkError> {
        let claim = super::claim::claim(state_dir).await?;
        super::conntrack::check().await?;
        Ok(claim)
    }

    /// Sets up the host side for `slots` deployments (the size of `[ports]`); the deployments'
    /// resolv.conf goes to `<state_dir>/network/resolv.conf`. Deployments get IPv6 when the
    /// host has it and IPv6 forwarding is on or nxd may turn it on (else a warning says why
    /// not). nx0's alias names the claim's state dir (see `claim`). Needs root
    /// (CAP_NET_ADMIN), nftables, and conntrack ([`Self::check`] first).
    /// Errors: a bad subnet, netlink, nft.
    #[tracing::instrument(skip_all, fields(subnet = %config.subnet, subnet6 = %config.subnet6))]
    pub async fn start(
        claim: NetworkClaim,
        config: &NetworkConfig,
        slots: u32,
        state_dir: &Path,
    ) -> Result<Self, NetworkError> {
        let subnet6 = ipv6_forwarding().then_some(config.subnet6);
        let plan = Plan::new(config.subnet, subnet6, slots)?;
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(NetworkError::io("opening a netlink socket"))?;
        tokio::spawn(connection);
        gateway_link(&handle, &plan).await?;
        claim.mark(&handle).await?;
        super::teardown::record(state_dir, &plan)?;
        // Written only when off: a host may set it itself (and keep /proc/sys read-only to nxd).
        if !sysctl_is("/proc/sys/net/ipv4/ip_forward", "1") {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(NetworkError::io(
                "enabling IPv4 forwarding (net.ipv4.ip_forward)",
            ))?;
        }
        let host_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let resolver = dns::host_resolver(&host_conf);
        let allow: Vec<_> = config.allow.iter().map(|c| c.0).collect();
        let uid = nix::unistd::geteuid().as_raw();
        firewall::apply(&firewall::ruleset(&plan, &allow, resolver, uid))?;
        let resolv_conf = super::resolv_conf_path(state_dir);
        if let Some(dir) = resolv_conf.parent() {
            std::fs::create_dir_all(dir).map_err(NetworkError::io("creating the network dir"))?;
        }
        std::fs::write(
            &resolv_conf,
            dns::sandbox_resolv_conf(&host_conf, plan.gateway()),
        )
        .map_err(NetworkError::io("writing the deployments' resolv.conf"))?;
        tracing::info!(gateway = %plan.gateway(), subnet6 = ?plan.subnet6(), ?resolver, "deployment network ready");
        Ok(Self {
            plan,
            resolv_conf,
            handle,
            _claim: claim,
        })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The resolv.conf deployments see as /etc/resolv.conf.
    pub fn resolv_conf(&self) -> &Path {
        &self.resolv_conf
    }

    /// Names of the host-side links of deployments (`nx-<id>`).
    pub async fn links(&self) -> Result<Vec<String>, NetworkError> {
        let mut names = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(link) = links.try_next().await.map_err(netlink("listing links"))? {
            for attr in link.attributes {
                if let LinkAttribute::IfName(name) = attr {
                    if deployment_of(&name).is_some() {
                        names.push(name);
                    }
                }
            }
        }
        Ok(names)
    }

    /// Removes what is left on the host of a deployment once its unit has stopped for good
    /// (`nx rm`, `nx sandbox rm`): its link `nx-<id>`, with it the peer in its namespace and
    /// the host's routes to its addresses (IPv4 and IPv6), then the connections tracked from or
    /// to those addresses (`conntrack::forget`). The kernel would remove the link and routes
    /// only when it destroys the namespace, asynchronously (`cleanup_net`) and only once
    /// nothing holds the namespace any more (a process, an open `/proc/<pid>/ns/net`, a bind
    /// mount); until then a new deployment given the same slot could not route its address
    /// (EEXIST). So this runs before the deployment's record, and with it its slot, is freed.
    /// A link already gone is no error. Errors: netlink, conntrack.
    #[tracing::instrument(skip_all, fields(link = %attachment.link))]
    pub async fn release(&self, attachment: &Attachment) -> Result<(), NetworkError> {
        delete_link(&self.handle, &attachment.link).await?;
        let addresses = std::iter::once(IpAddr::V4(attachment.address))
            .chain(attachment.address6.map(IpAddr::V6));
        let forgotten =
            futures_util::future::try_join_all(addresses.map(super::conntrack::forget)).await?;
        tracing::debug!(?forgotten, "tracked connections forgotten");
        Ok(())
    }

    /// Puts back the host's routes to a running deployment (its /32, and /128 with IPv6) where
    /// they are gone: the kernel removes the /32 with its source, nx0's address, so nx0 removed
    /// under a running nxd (newcomer18 N5) left every deployment unreachable, and adoption
    /// found their units running. Returns false when the deployment's link is gone too (only
    /// a start of the deployment makes it again). Errors: netlink.
    #[tracing::instrument(skip_all, fields(link = %attachment.link))]
    pub async fn restore_routes(&self, attachment: &Attachment) -> Result<bool, NetworkError> {
        let found = self
            .handle
            .link()
            .get()
            .match_name(attachment.link.clone())
            .execute()
            .try_next()
            .await;
        let index = match found {
            Ok(Some(link)) => link.header.index,
            Ok(None) => return Ok(false),
            Err(e) if failed_with(&e, nix::errno::Errno::ENODEV) => return Ok(false),
            Err(e) => return Err(netlink("finding a deployment's link")(e)),
        };
        let routes = std::iter::once(host_route(attachment, index))
            .chain(attachment.address6.map(|a| host_route6(a, index)));
        for route in routes {
            match self.handle.route().add(route).execute().await {
                Ok(()) => tracing::warn!("put back a route to a running deployment that was gone"),
                Err(e) if failed_with(&e, nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(netlink("putting back a route to a deployment")(e)),
            }
        }
        Ok(true)
    }

    /// Removes the links of deployments not in `keep` (ids); returns the names removed.
    pub async fn reconcile(&self, keep: &HashSet<String>) -> Result<Vec<String>, NetworkError> {
        let mut removed = Vec::new();
        for name in self.links().await? {
            let id = deployment_of(&name).unwrap_or_default();
            if !keep.contains(id) {
                delete_link(&self.handle, &name).await?;
                removed.push(name);
            }
        }
        if !removed.is_empty() {
            tracing::info!(?removed, "removed links of deployments nxd no longer has");
        }
        Ok(removed)
    }
}

fn sysctl_is(path: &str, value: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|v| v.trim() == value)
}

/// Whether deployments can have IPv6: the kernel has it, it is on, and forwarding is on (or
/// nxd turned it on, after `accept_ra=2` where it was 1: see the module's docs). False, with
/// a warning that names the sysctl, where forwarding is off and cannot be written.
fn ipv6_forwarding() -> bool {
    let conf = Path::new("/proc/sys/net/ipv6/conf");
    if !conf.exists() || sysctl_is("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1") {
        tracing::info!("the host has no IPv6: deployments get IPv4 only");
        return false;
    }
    let forwarding = "/proc/sys/net/ipv6/conf/all/forwarding";
    if sysctl_is(forwarding, "1") {
        return true;
    }
    let interfaces = std::fs::read_dir(conf).into_iter().flatten().flatten();
    let written = interfaces
        .map(|entry| entry.path().join("accept_ra"))
        .filter(|path| sysctl_is(&path.to_string_lossy(), "1"))
        .try_for_each(|path| std::fs::write(&path, "2"))
        .and_then(|()| std::fs::write(forwarding, "1"));
    match written {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, "deployments get IPv4 only: IPv6 forwarding is off and nxd cannot turn it on (set net.ipv6.conf.all.forwarding=1, and accept_ra=2 on interfaces that take router advertisements)");
            false
        }
    }
}

/// The deployment id of a host-side link name.
fn deployment_of(link: &str) -> Option<&str> {
    link.strip_prefix(LINK_PREFIX).filter(|id| !id.is_empty())
}

/// `nx0`: a bridge with no ports, up, holding the gateway address.
pub(super) async fn gateway_link(handle: &Handle, plan: &Plan) -> Result<(), NetworkError> {
    let index = match link_named(handle, GATEWAY_LINK).await {
        Ok(Some(link)) => link.header.index,
        _ => {
            handle
                .link()
                .add(LinkBridge::new(GATEWAY_LINK).build())
                .execute()
                .await
                .map_err(netlink("creating nx0"))?;
            index_of(handle, GATEWAY_LINK).await?
        }
    };
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(netlink("bringing nx0 up"))?;
    handle
        .address()
        .add(index, IpAddr::V4(plan.gateway()), 32)
        .replace()
        .execute()
        .await
        .map_err(netlink("adding the gateway address to nx0"))?;
    // The subnet is unreachable but for the /32 routes of running deployments: a probe of a
    // deployment whose namespace is not up (yet, or any more) fails at once with
    // EHOSTUNREACH instead of leaving through the host's default route.
    handle
        .route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(plan.subnet().network(), plan.subnet().prefix_len())
                .kind(RouteType::Unreachable)
                .build(),
        )
        .replace()
        .execute()
        .await
        .map_err(netlink("adding the unreachable route of network.subnet"))?;
    if let Some(subnet6) = plan.subnet6() {
        handle
            .route()
            .add(
                RouteMessageBuilder::<Ipv6Addr>::new()
                    .destination_prefix(subnet6.network(), subnet6.prefix_len())
                    .kind(RouteType::Unreachable)
                    .build(),
            )
            .replace()
            .execute()
            .await
            .map_err(netlink("adding the unreachable route of network.subnet6"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn link_names_map_to_deployments() {
        assert_eq!(super::deployment_of("nx-d1234567"), Some("d1234567"));
        assert_eq!(super::deployment_of("nx0"), None);
        assert_eq!(super::deployment_of("eth0"), None);
    }
}
