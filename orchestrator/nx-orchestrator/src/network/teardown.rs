//! Removing what [`super::host::HostNetwork::start`] put on the host, once nothing of NX runs
//! any more (`nxd manager-stop`, after the embedded manager and every deployment are gone):
//! the table `inet nx` (with it the `tcp_ports` map, which would otherwise keep DNATing the
//! host's TCP service ports to addresses nobody has: a client's connect hangs instead of being
//! refused), `nx0` with the gateway address, and the unreachable route of `network.subnet`.
//! IPv4 forwarding is left as it is (the host may need it for something else).
//!
//! Never while deployments run: their isolation is that table. nxd itself does not call this
//! when it stops, since deployments outlive it (under systemd, and in the embedded manager
//! until `manager-stop`). Only the state dir's own network (see `claim`): a manager-stop of
//! another state dir, run where another nxd runs or left its deployments running, removed that
//! one's nx0 and table, and with them every URL it served (newcomer18 N5).

use super::{firewall, NetworkError, Plan, GATEWAY_LINK};
use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use rtnetlink::{Handle, RouteMessageBuilder};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// What [`remove`] found and removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// The table `inet nx` was there and is gone.
    pub table: bool,
    /// `nx0` was there and is gone.
    pub gateway_link: bool,
    /// The unreachable routes removed, e.g. `10.213.0.0/16`.
    pub routes: Vec<IpNet>,
    /// Why the namespace's network was left as it is, though this state dir's nxd ran one (or
    /// nx0 names no state dir): it is another nxd's, e.g. "the nxd of pid 7 and state dir
    /// /var/lib/nx runs it". None: removed, or there was none of this state dir's.
    pub left: Option<String>,
}

/// `<state_dir>/network/subnets`: the subnets nxd routed as unreachable, one CIDR a line.
fn subnets_path(state_dir: &Path) -> PathBuf {
    state_dir.join("network").join("subnets")
}

/// Records the subnets of `plan` that the host routes as unreachable, for [`remove`].
pub(crate) fn record(state_dir: &Path, plan: &Plan) -> Result<(), NetworkError> {
    let mut lines = vec![plan.subnet().to_string()];
    lines.extend(plan.subnet6().map(|s| s.to_string()));
    let path = subnets_path(state_dir);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(NetworkError::io("creating the network dir"))?;
    }
    std::fs::write(&path, lines.join("\n") + "\n")
        .map_err(NetworkError::io("recording the subnets (network/subnets)"))
}

/// Removes the host network of the nxd whose state dir is `state_dir` if it is that state
/// dir's: nx0's alias names it (see `claim`), or nx0 names none (made before the mark, or gone)
/// and that nxd set one up (it wrote `<state_dir>/network/resolv.conf`). Otherwise nothing is
/// touched: a state dir that never ran the network here leaves this one's alone, and one that
/// is another nxd's, running (it holds the claim) or stopped (nx0 names its state dir), is left
/// with the reason in [`Removed::left`]. Holds the claim meanwhile, so that no nxd starts on a
/// network half removed. Needs root (CAP_NET_ADMIN) and nft. Errors: netlink, nft.
#[tracing::instrument]
pub fn remove(state_dir: &Path) -> Result<Removed, NetworkError> {
    let mut removed = Removed::default();
    let _claim = match super::claim::bind()? {
        Ok(listener) => listener,
        Err(holder) => {
            removed.left = Some(format!("{holder} runs it"));
            return Ok(removed);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(NetworkError::io("starting a runtime for netlink"))?;
    let handle = runtime.block_on(async {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(NetworkError::io("opening a netlink socket"))?;
        tokio::spawn(connection);
        Ok::<_, NetworkError>(handle)
    })?;
    match runtime.block_on(super::claim::owner(&handle))? {
        Some(owner) if owner != super::claim::canonical(state_dir) => {
            removed.left = Some(format!(
                "it belongs to the nxd of state dir {}",
                owner.display()
            ));
            return Ok(removed);
        }
        Some(_) => {}
        None if !super::resolv_conf_path(state_dir).exists() => return Ok(removed),
        None => {}
    }
    let subnets: Vec<IpNet> = std::fs::read_to_string(subnets_path(state_dir))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    runtime.block_on(async {
        removed.routes = remove_unreachable_routes(&handle, &subnets).await?;
        if let Some(index) = gateway_index(&handle).await? {
            handle
                .link()
                .del(index)
                .execute()
                .await
                .map_err(netlink("removing nx0"))?;
            removed.gateway_link = true;
        }
        Ok::<_, NetworkError>(())
    })?;
    removed.table = table_exists();
    if removed.table {
        let table = firewall::TABLE;
        firewall::apply(&format!("delete table inet {table}\n"))?;
    }
    tracing::info!(?removed, "host network removed");
    Ok(removed)
}

fn netlink(what: &'static str) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    move |e| NetworkError::Netlink {
        what: what.to_owned(),
        source: Box::new(e),
    }
}

/// Whether `inet nx` is loaded (`nft list table` fails when it is not).
fn table_exists() -> bool {
    std::process::Command::new("nft")
        .args(["list", "table", "inet", firewall::TABLE])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// nx0's interface index, if it exists.
async fn gateway_index(handle: &Handle) -> Result<Option<u32>, NetworkError> {
    let mut links = handle.link().get().execute();
    while let Some(link) = links.try_next().await.map_err(netlink("listing links"))? {
        let named = link.attributes.iter().any(|a| {
            matches!(a, rtnetlink::packet_route::link::LinkAttribute::IfName(n) if n == GATEWAY_LINK)
        });
        if named {
            return Ok(Some(link.header.index));
        }
    }
    Ok(None)
}

/// The destination of a route, as a network.
fn destination(route: &RouteMessage) -> Option<IpNet> {
    let prefix = route.header.destination_prefix_length;
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(d)) => IpNet::new((*d).into(), prefix).ok(),
        RouteAttribute::Destination(RouteAddress::Inet6(d)) => IpNet::new((*d).into(), prefix).ok(),
        _ => None,
    })
}

/// Removes the unreachable routes (IPv4 and IPv6) whose destination is one of `subnets`;
/// those removed.
async fn remove_unreachable_routes(
    handle: &Handle,
    subnets: &[IpNet],
) -> Result<Vec<IpNet>, NetworkError> {
    let mut doomed = Vec::new();
    let requests = [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ];
    for request in requests {
        let mut routes = handle.route().get(request).execute();
        while let Some(route) = routes.try_next().await.map_err(netlink("listing routes"))? {
            if route.header.kind != RouteType::Unreachable {
                continue;
            }
            if let Some(net) = destination(&route).filter(|n| subnets.contains(n)) {
                doomed.push((route, net));
            }
        }
    }
    let mut removed = Vec::new();
    for (route, net) in doomed {
        handle
            .route()
            .del(route)
            .execute()
            .await
            .map_err(netlink("removing a subnet's unreachable route"))?;
        removed.push(net);
    }
    Ok(removed)
}
