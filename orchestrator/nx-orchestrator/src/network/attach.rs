//! The namespace side: what a deployment's launcher does, as root, before it drops privileges
//! and execs the sandbox (which then stays in this namespace). All over netlink in-process
//! (rtnetlink), plus a few sysctl writes; no `ip` process.
//!
//! 1. Remove a previous run's `nx-<id>` (its namespace may still be being torn down);
//!    `unshare(CLONE_NEWNET)`; in the new namespace `ip_unprivileged_port_start=0` (the program
//!    may bind any port, also below 1024) and, for devices to come, IPv6 off when the
//!    deployment has no IPv6 address, else no link-local address of their own
//!    (`addr_gen_mode=1`: the deployment's address is all it needs on a link with two ends);
//!    then `setns` back to the host's namespace.
//! 2. On the host: one RTM_NEWLINK creates the veth pair, `nx-<id>` here and `eth0` directly
//!    in the new namespace, one transmit and one receive queue each; the host side gets a
//!    strict reverse-path filter (rp_filter=1: only the deployment's own address may come in on
//!    it) and route_localnet (so DNS can be DNATed to a resolver on the host's loopback).
//! 3. `setns` into the new namespace: `lo` and `eth0` up, the deployment's /32 (and /128) on
//!    `eth0`, a default route via the gateway (on-link) and one via `fe80::1`.
//! 4. Last, on the host: a /32 route to the deployment with the gateway as source; with IPv6,
//!    `fe80::1` (the deployment's IPv6 gateway) as the link's only IPv6 address and a /128
//!    route to the deployment; without, no IPv6. Only now can anything on the host reach the
//!    address, and `eth0` answers its ARP at once: a SYN routed to the link before `eth0` was
//!    up with its address (nxd's readiness probe asks from the unit's start) made the host's
//!    ARP request go unanswered, and the kernel asks again only after `retrans_time_ms`
//!    (1 s), so that push's readiness took a second more.
//!    The /32 (and /128) is added, never replaced: a route to the address on another link
//!    means a previous holder of the slot is still there (nxd removes a deployment's link
//!    before its slot is freed: `HostNetwork::release`), and a live deployment's address must
//!    never be turned to another link; the start fails instead.
//!
//! Both IPv6 addresses are added without duplicate address detection (the link has two ends,
//! both ours) and without a prefix route (see `add_address6`).
//!
//! Memory (issue 11's mark: 256 KiB per deployment with 500 up; `nx-bench --only network`):
//! the empty namespace is most of it (~150-190 KiB on this kernel), then the pair of devices
//! (~85 KiB: the kernel gives every device its sysctl tables, sysfs nodes and IPv4/IPv6
//! per-device state whatever we ask). What is ours to choose is small: one transmit and one
//! receive queue per end, asked for explicitly (this kernel's default for a veth is one
//! already; a kernel that gives a veth a queue per possible CPU would multiply that state),
//! and the devices' IPv6 settings made before they come up: off for a deployment without IPv6,
//! else no link-local addresses of the kernel's making (none needed: one address per end),
//! so that `lo` and `eth0` never get addresses, routes or multicast memberships they would
//! drop again or never use. IPv6's own share is then 3 addresses and 7 routes (`::1`'s, the
//! two addresses' local routes, the default route, the /128 to the deployment, and the
//! `ff00::/8` route of each end, which neighbour discovery's multicast needs to be received),
//! ~6 KiB: an IPv6 route holds ~700 bytes (a 512-byte `fib6_info`, its tree node, per-CPU
//! caches) and an address 512 bytes (`inet6_ifaddr`), counted with the kernel's kmem
//! tracepoints. The rest of IPv6's per-device state (`inet6_dev` with its 4 KiB ICMPv6
//! message counters, the `net.ipv6.conf.<dev>` and neighbour sysctl tables, ~16 KiB a device)
//! comes with every device of a kernel that has IPv6, also with IPv6 off.
//!
//! Sources: rtnetlink(7), veth(4), arp(7), ip-sysctl.txt (rp_filter, route_localnet, disable_ipv6,
//! addr_gen_mode, ip_unprivileged_port_start, neigh retrans_time_ms) of the kernel's documentation,
//! network_namespaces(7), RFC 4862 §5.4 (duplicate address detection).

use super::{Attachment, NetworkError, GATEWAY6};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteMessage, RouteScope};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

/// The name of the deployment's interface inside its namespace.
pub const INSIDE_LINK: &str = "eth0";
/// Its index: a new namespace holds only `lo` (1), so the peer is created as 2.
const INSIDE_INDEX: u32 = 2;
const LOOPBACK_INDEX: u32 = 1;
/// Transmit and receive queues of each end of the veth (each has its own memory and sysfs
/// nodes; a deployment's link needs no more than one: it has no XDP and no RSS).
const QUEUES: u32 = 1;

fn netlink(what: &str) -> impl FnOnce(rtnetlink::Error) -> NetworkError + '_ {
    move |e| NetworkError::Netlink {
        what: what.to_owned(),
        source: Box::new(e),
    }
}

fn sysctl(path: &str, value: &str) -> Result<(), NetworkError> {
    std::fs::write(path, value).map_err(NetworkError::io(format!("writing {path}")))
}

/// Moves the calling thread (the launcher: the process) into a new network namespace set up
/// for `attachment`. Needs CAP_NET_ADMIN in the starting namespace (root).
/// Errors: a netlink request or a sysctl write that failed, named.
pub fn enter(attachment: &Attachment) -> Result<(), NetworkError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(NetworkError::io("starting a tokio runtime"))?
        .block_on(enter_async(attachment))
}

/// A netlink connection in the calling thread's current network namespace.
fn connect() -> Result<Handle, NetworkError> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(NetworkError::io("opening a netlink socket"))?;
    tokio::spawn(connection);
    Ok(handle)
}

/// The link named `name`; `None` where there is none (the kernel answers ENODEV). Errors:
/// the kernel's other answers.
pub(super) async fn link_named(
    handle: &Handle,
    name: &str,
) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    let found = handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await;
    match found {
        Err(e) if failed_with(&e, nix::errno::Errno::ENODEV) => Ok(None),
        found => found,
    }
}

/// The index of the link named `name`. Errors: `Netlink`, `Config` when there is none.
pub(super) async fn index_of(handle: &Handle, name: &str) -> Result<u32, NetworkError> {
    let what = format!("finding {name}");
    let link = link_named(handle, name).await.map_err(netlink(&what))?;
    link.map(|l| l.header.index)
        .ok_or_else(|| NetworkError::Config(format!("{name} vanished")))
}

/// Whether the kernel answered a netlink request with `errno`.
pub(super) fn failed_with(error: &rtnetlink::Error, errno: nix::errno::Errno) -> bool {
    matches!(error, rtnetlink::Error::NetlinkError(e) if e.raw_code().abs() == errno as i32)
}

/// Deletes a link if it exists.
pub(crate) async fn delete_link(handle: &Handle, name: &str) -> Result<(), NetworkError> {
    let deleted = handle
        .link()
        .del_with_message(LinkUnspec::new_with_name(name).build())
        .execute()
        .await;
    match deleted {
        Err(e) if failed_with(&e, nix::errno::Errno::ENODEV) => Ok(()),
        other => other.map_err(netlink(&format!("deleting {name}"))),
    }
}

/// The host's route to the deployment of `a` through its link (index `index`): its /32 with
/// the gateway as source (the kernel removes such a route with the gateway's address, nx0's).
pub(super) fn host_route(a: &Attachment, index: u32) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(a.address, 32)
        .output_interface(index)
        .pref_source(a.gateway)
        .scope(RouteScope::Link)
        .build()
}

/// The host's route to the deployment's IPv6 address `address6` through its link: its /128.
pub(super) fn host_route6(address6: Ipv6Addr, index: u32) -> RouteMessage {
    RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(address6, 128)
        .output_interface(index)
        .build()
}

async fn enter_async(a: &Attachment) -> Result<(), NetworkError> {
    let host_ns = own_namespace()?;
    let host = connect()?;
    delete_link(&host, &a.link).await?;

    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| NetworkError::Io {
        what: "unshare(CLONE_NEWNET)".into(),
        source: e.into(),
    })?;
    let ns = own_namespace()?;
    // /proc/sys/net is the namespace of the thread that opens it: these are the new one's.
    sysctl("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0")?;
    if a.address6.is_some() {
        sysctl("/proc/sys/net/ipv6/conf/default/addr_gen_mode", "1")?;
    } else {
        // Absent where the kernel has no IPv6.
        for scope in ["all", "default"] {
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{scope}/disable_ipv6"), "1");
        }
    }
    // Opened here, this socket stays in the new namespace wherever the thread goes.
    let inside = connect()?;
    // Back to the host's namespace for the host side's sysctls (/proc/sys/net is the caller's).
    set_namespace(&host_ns)?;
    // The peer is created in the new namespace, as eth0 with a known index: moving a device
    // between namespaces would cost a synchronize_net() (milliseconds). (Asking for it up in
    // the same message fails with ENOTCONN.)
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(INSIDE_LINK.to_owned())
        .index(INSIDE_INDEX)
        .setns_by_fd(ns.as_raw_fd())
        .append_extra_attribute(LinkAttribute::NumTxQueues(QUEUES))
        .append_extra_attribute(LinkAttribute::NumRxQueues(QUEUES))
        .build();
    host.link()
        .add(
            LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
                .name(a.link.clone())
                .up()
                .append_extra_attribute(LinkAttribute::NumTxQueues(QUEUES))
                .append_extra_attribute(LinkAttribute::NumRxQueues(QUEUES))
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .build(),
        )
        .execute()
        .await
        .map_err(netlink(&format!("creating the veth pair {}", a.link)))?;
    let conf = format!("/proc/sys/net/ipv4/conf/{}", a.link);
    sysctl(&format!("{conf}/rp_filter"), "1")?;
    sysctl(&format!("{conf}/route_localnet"), "1")?;
    let conf6 = format!("/proc/sys/net/ipv6/conf/{}", a.link);
    if a.address6.is_some() {
        // Before the peer is up: the link never gets an address of the kernel's making.
        sysctl(&format!("{conf6}/addr_gen_mode"), "1")?;
    } else {
        // Absent where the host has IPv6 off altogether.
        let _ = std::fs::write(format!("{conf6}/disable_ipv6"), "1");
    }
    set_namespace(&ns)?;
    for (index, name) in [(LOOPBACK_INDEX, "lo"), (INSIDE_INDEX, INSIDE_LINK)] {
        inside
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(netlink(&format!("bringing {name} up")))?;
    }
    inside
        .address()
        .add(INSIDE_INDEX, IpAddr::V4(a.address), 32)
        .execute()
        .await
        .map_err(netlink(&format!("adding {} to eth0", a.address)))?;
    inside
        .route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(a.gateway)
                .output_interface(INSIDE_INDEX)
                .onlink()
                .build(),
        )
        .execute()
        .await
        .map_err(netlink("adding the default route"))?;
    if let Some(address6) = a.address6 {
        add_address6(&inside, INSIDE_INDEX, address6).await?;
        inside
            .route()
            .add(
                RouteMessageBuilder::<Ipv6Addr>::new()
                    .gateway(GATEWAY6)
                    .output_interface(INSIDE_INDEX)
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink("adding the IPv6 default route"))?;
    }
    // Last: until the host routes the address to the link, a probe's connect fails at once
    // (network.subnet is unreachable); once it does, `eth0` answers ARP (and neighbour
    // discovery) at once. A SYN routed here earlier would make the host ask for the address
    // while nothing answers, and the kernel asks again only after `retrans_time_ms` (1 s,
    // ip-sysctl.txt): every connect meanwhile waits for it.
    let index = index_of(&host, &a.link).await?;
    host.route()
        .add(host_route(a, index))
        .execute()
        .await
        .map_err(netlink(&format!("routing {} to {}", a.address, a.link)))?;
    if let Some(address6) = a.address6 {
        add_address6(&host, index, GATEWAY6).await?;
        host.route()
            .add(host_route6(address6, index))
            .execute()
            .await
            .map_err(netlink(&format!("routing {address6} to {}", a.link)))?;
    }

    Ok(())
}

/// Adds an IPv6 /128 usable at once and with no route of its own: no duplicate address
/// detection (RFC 4862 §5.4), which would hold it tentative for a second on a link whose two
/// ends are both ours, and no prefix route (IFA_F_NOPREFIXROUTE, rtnetlink(7)): a /128's prefix
/// route only repeats what the address's local route and the link's one route (the default
/// route inside, the /128 to the deployment on the host) already say, and each IPv6 route
/// holds ~700 bytes of kernel memory (a 512-byte `fib6_info`, its tree node, per-CPU caches).
async fn add_address6(handle: &Handle, index: u32, address: Ipv6Addr) -> Result<(), NetworkError> {
    let mut request = handle.address().add(index, IpAddr::V6(address), 128);
    request
        .message_mut()
        .attributes
        .push(AddressAttribute::Flags(
            AddressFlags::Nodad | AddressFlags::Noprefixroute,
        ));
    request
        .execute()
        .await
        .map_err(netlink(&format!("adding {address}")))
}

/// The calling thread's network namespace.
fn own_namespace() -> Result<std::fs::File, NetworkError> {
    std::fs::File::open("/proc/thread-self/ns/net")
        .map_err(NetworkError::io("opening /proc/thread-self/ns/net"))
}

fn set_namespace(ns: &std::fs::File) -> Result<(), NetworkError> {
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| NetworkError::Io {
        what: "setns(CLONE_NEWNET)".into(),
        source: e.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Egress, Plan};
    use super::*;
    use std::io::ErrorKind;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// The deployment's port in the test.
    const PORT: u16 = 8080;

    /// Connects to `addr` over and over (each connect given 200 ms, as readiness's probe),
    /// until one succeeds; returns when it did. A refused or unroutable connect is asked again
    /// at once.
    /// Connects to `addr` until it accepts; panics after 10 s.
    fn probe_until_connected(addr: SocketAddr) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(
                Instant::now() < deadline,
                "no connection to {addr} within 10 s"
            );
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(_) => return Instant::now(),
                Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => std::thread::yield_now(),
            }
        }
    }

    /// A probe that starts while the launcher sets the deployment's namespace up (as nxd's
    /// readiness probe does, from the unit's start) connects as soon as the program listens.
    /// The host's route to the deployment must come last: a SYN routed to the link before
    /// `eth0` inside is up with its address makes the host ask ARP for the address, the
    /// request is lost, and the kernel asks again only after `retrans_time_ms` (1 s;
    /// ip-sysctl.txt, arp(7)) while every connect meanwhile waits: the ~1 s `ready` of one
    /// push in fifty in nx-bench. Runs in network namespaces of its own (needs root).
    #[test]
    fn a_probe_during_the_setup_connects_once_the_program_listens() {
        let plan = Plan::new("10.213.0.0/16".parse().unwrap(), None, 8).unwrap();
        let attachment = plan.attachment("dprobe01", 0, Egress::None).unwrap();
        let addr = SocketAddr::new(IpAddr::V4(attachment.address), PORT);
        for round in 0..5 {
            let (host_ns_tx, host_ns_rx) = mpsc::channel();
            let (listening_tx, listening_rx) = mpsc::channel();
            let (attachment, plan) = (attachment.clone(), plan.clone());
            // The launcher: in a namespace standing in for the host's, with its gateway.
            let launcher = std::thread::spawn(move || {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
                tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .unwrap()
                    .block_on(async {
                        let handle = connect().unwrap();
                        super::super::host::gateway_link(&handle, &plan).await
                    })
                    .expect("the gateway");
                host_ns_tx.send(own_namespace().unwrap()).unwrap();
                // Let the probe spin first.
                std::thread::sleep(Duration::from_millis(20));
                enter(&attachment).expect("entering the deployment's namespace");
                let listener = TcpListener::bind(("0.0.0.0", PORT)).expect("listen");
                listening_tx.send(Instant::now()).unwrap();
                let _ = listener.accept();
            });
            let host_ns = host_ns_rx.recv().unwrap();
            let prober = std::thread::spawn(move || {
                set_namespace(&host_ns).unwrap();
                probe_until_connected(addr)
            });
            let connected = prober.join().expect("the probe");
            let listening = listening_rx.recv().unwrap();
            launcher.join().expect("the launcher");
            let waited = connected.saturating_duration_since(listening);
            assert!(
                waited < Duration::from_millis(500),
                "round {round}: the probe connected {waited:?} after the program listened"
            );
        }
    }
}
