//! Removing what [`super::host::HostNetwork::start`] put on the host, once nothing of NX runs
//! any more (`nxd manager-stop`, after the embedded manager and every deployment are gone):
//! the table `inet nx` (with it the `tcp_ports` map, which would otherwise keep DNATing the
//! host's TCP service ports to addresses nobody has: a client's connect hangs instead of being
//! refused), `nx0` with the gateway address, and the unreachable route of `network.subnet`.
//! IPv4 forwarding is left as it is (the host may need it for something else).
//!
//! Never while deployments run: their isolation is that table. nxd itself does not call this
//! when it stops, since deployments outlive it (under systemd, and in the embedded manager
//! until `manager-stop`).

use super::{firewall, NetworkError, GATEWAY_LINK};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteType};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

/// What [`remove`] found and removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// The table `inet nx` was there and is gone.
    pub table: bool,
    /// `nx0` was there and is gone.
    pub gateway_link: bool,
    /// Unreachable routes removed (the subnet's: those holding nx0's address), e.g.
    /// `10.213.0.0/16`.
    pub routes: Vec<String>,
}

/// Removes the host network of the nxd whose state dir is `state_dir`, if that nxd set one up
/// (it wrote `<state_dir>/network/resolv.conf`): otherwise nothing is touched, so a state dir
/// that never ran the network (or an nxd in another network namespace) leaves this one's
/// alone. Needs root (CAP_NET_ADMIN) and nft. Errors: netlink, nft.
#[tracing::instrument]
pub fn remove(state_dir: &Path) -> Result<Removed, NetworkError> {
    if !super::resolv_conf_path(state_dir).exists() {
        return Ok(Removed::default());
    }
    let mut removed = Removed::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(NetworkError::io("starting a runtime for netlink"))?;
    runtime.block_on(async {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(NetworkError::io("opening a netlink socket"))?;
        tokio::spawn(connection);
        if let Some(index) = gateway_index(&handle).await? {
            let gateways = ipv4_addresses(&handle, index).await?;
            removed.routes = remove_unreachable_routes(&handle, &gateways).await?;
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

/// The IPv4 addresses on the interface `index`.
async fn ipv4_addresses(handle: &Handle, index: u32) -> Result<Vec<Ipv4Addr>, NetworkError> {
    let mut found = Vec::new();
    let mut addresses = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(msg) = addresses
        .try_next()
        .await
        .map_err(netlink("listing nx0's addresses"))?
    {
        for attr in msg.attributes {
            if let AddressAttribute::Address(IpAddr::V4(a)) = attr {
                found.push(a);
            }
        }
    }
    Ok(found)
}

/// Removes the unreachable IPv4 routes whose prefix holds one of `gateways`; their prefixes.
async fn remove_unreachable_routes(
    handle: &Handle,
    gateways: &[Ipv4Addr],
) -> Result<Vec<String>, NetworkError> {
    let mut routes = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut doomed = Vec::new();
    while let Some(route) = routes.try_next().await.map_err(netlink("listing routes"))? {
        if route.header.kind != RouteType::Unreachable
            || route.header.address_family != AddressFamily::Inet
        {
            continue;
        }
        let prefix = route.header.destination_prefix_length;
        let destination = route.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
            _ => None,
        });
        let Some(destination) = destination else {
            continue;
        };
        let Ok(net) = ipnet::Ipv4Net::new(destination, prefix) else {
            continue;
        };
        if gateways.iter().any(|g| net.contains(g)) {
            doomed.push((route, net));
        }
    }
    let mut removed = Vec::new();
    for (route, net) in doomed {
        handle
            .route()
            .del(route)
            .execute()
            .await
            .map_err(netlink("removing the subnet's unreachable route"))?;
        removed.push(net.to_string());
    }
    Ok(removed)
}
