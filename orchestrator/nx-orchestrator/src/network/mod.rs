//! Every deployment in a network namespace of its own, on a routed veth that nxd owns.
//!
//! - **Addresses**: `network.subnet` (default `10.213.0.0/16`) holds the gateway (its first
//!   address, on the host's `nx0`) and two halves: deployments with no egress take addresses
//!   from the lower half, deployments with egress from the upper one. A deployment's address is
//!   `half + 2 + slot`, where `slot` is its index in `[ports]` (the same index that gives its
//!   uid), so an address is allocated and freed with the deployment, never stored apart.
//!   IPv6 where the host has it (the kernel's, and forwarding on or nxd may turn it on):
//!   `network.subnet6` (default `fd6e:7800:213::/64`, a ULA, RFC 4193) is laid out the same
//!   way, halves and `half + 2 + slot`; the gateway is `fe80::1` on each deployment's link.
//! - **Links** (`attach`): the deployment's unit's launcher creates the namespace at every start
//!   (`unshare(CLONE_NEWNET)`), a veth pair `nx-<id>` (host) / `eth0` (inside) over netlink,
//!   the deployment's `/32` (and `/128`) and a default route via the gateway inside, a `/32`
//!   (and `/128`) route to it on the host; then it drops privileges and execs the sandbox, which stays in that namespace.
//!   When the deployment's last process ends, the kernel removes the namespace and with it
//!   both ends of the veth and the routes, but asynchronously and only once nothing else
//!   holds the namespace: `nx rm` deletes the link itself and forgets the connections tracked
//!   to the deployment's addresses before its slot is freed (`host::HostNetwork::release`,
//!   `conntrack`).
//! - **Policy** (`firewall`): one static nftables table `inet nx`, loaded atomically when nxd
//!   starts. It needs no change per deployment: what a deployment may reach follows from the
//!   half its address is in, and the host side's strict reverse-path filter drops packets whose
//!   source is not the address routed to that link (a program has no capability in its
//!   namespace to change its address or send raw packets anyway).
//! - **Host** (`host`): `nx0`, forwarding, the table, and removal of links of deployments nxd
//!   no longer has (after a crash).
//! - **Teardown** (`teardown`): `nxd manager-stop` removes the table, `nx0` and the subnet's
//!   route once every deployment is gone.

#[cfg(target_os = "linux")]
pub mod attach;
#[cfg(target_os = "linux")]
pub mod claim;
#[cfg(target_os = "linux")]
pub mod conntrack;
pub mod dns;
pub mod firewall;
#[cfg(target_os = "linux")]
pub mod host;
#[cfg(target_os = "linux")]
pub mod teardown;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, Ipv6Addr};

/// `[network]` of nxd's config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// The IPv4 network of deployments' addresses (at most a /20): its first address is the
    /// gateway on the host, its lower half deployments with `--egress none`, its upper half
    /// deployments with `--egress public`. Must not overlap a network the host uses.
    pub subnet: Ipv4Net,
    /// The IPv6 network of deployments' addresses (a /64 is the custom; at most a /112), laid
    /// out as `subnet`: lower half egress none, upper half egress public (masqueraded behind
    /// the host's address). Used where the host has IPv6; a ULA (fc00::/7) keeps it off every
    /// other network. Must not overlap a network the host uses.
    pub subnet6: Ipv6Net,
    /// Private destinations (RFC 1918, CGNAT, ULA, link-local) that deployments with egress may
    /// reach nevertheless: CIDRs such as `10.20.0.0/16` or `fd12::/64`. Cloud metadata
    /// (169.254.169.254, fd00:ec2::254) stays blocked unless listed exactly.
    pub allow: Vec<Cidr>,
    /// Host ports for TCP services (`nx push --tcp`): each sandbox with one gets a port of this
    /// range for production and each TCP deployment one of its own. nftables DNATs them on
    /// every address of the host, so keep the range clear of the host's own services (nxd
    /// refuses one that holds its API, router, metrics or SFTP port).
    pub tcp_ports: crate::config::PortRange,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            subnet: "10.213.0.0/16".parse().expect("literal"),
            subnet6: "fd6e:7800:213::/64".parse().expect("literal"),
            allow: Vec::new(),
            tcp_ports: crate::config::PortRange {
                start: 30000,
                end: 30999,
            },
        }
    }
}

/// A CIDR of `network.allow`: `a.b.c.d/n` or `x::/n`, with no host bits set.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Cidr(pub IpNet);

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let net: IpNet = s.parse().map_err(|_| {
            format!("{s:?} is not a CIDR: write an address and a prefix length, e.g. 10.20.0.0/16 or fd12::/64")
        })?;
        if net.trunc() != net {
            return Err(format!(
                "{s:?} has bits set past its prefix length: did you mean {}?",
                net.trunc()
            ));
        }
        Ok(Self(net))
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

pub use nx_api::Egress;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network: {0}")]
    Config(String),
    #[error("network: {what}: {source}")]
    Netlink {
        what: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("network: {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("network: nftables: {0}")]
    Firewall(String),
    #[error("network: conntrack: {0}")]
    Conntrack(String),
}

impl NetworkError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

/// What a deployment's launcher sets up before it execs the sandbox (see `attach`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The host side of the veth: `nx-<deployment id>` (IFNAMSIZ: at most 15 bytes).
    pub link: String,
    /// The deployment's address (a /32 on its `eth0`).
    pub address: Ipv4Addr,
    /// The host's address on `nx0`: the deployment's default gateway and DNS server.
    pub gateway: Ipv4Addr,
    /// The deployment's IPv6 address (a /128 on `eth0`, its gateway [`GATEWAY6`] on the host
    /// side of the link); None: IPv6 off in its namespace (the host has none).
    #[serde(default)]
    pub address6: Option<Ipv6Addr>,
}

/// The deployments' IPv6 gateway: a link-local address on the host side of every deployment's
/// link (each link its own scope, so one address serves them all).
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The resolv.conf deployments get as /etc/resolv.conf: `<state_dir>/network/resolv.conf`.
pub fn resolv_conf_path(state_dir: &std::path::Path) -> std::path::PathBuf {
    state_dir.join("network").join("resolv.conf")
}

/// Host-side links are `nx-<deployment id>`; `nx0` holds the gateway.
pub const LINK_PREFIX: &str = "nx-";
/// The interface that holds the gateway address (a bridge with no ports: this needs no
/// `dummy` driver, which not every kernel has).
pub const GATEWAY_LINK: &str = "nx0";
/// The longest interface name the kernel takes (IFNAMSIZ - 1).
const MAX_LINK_NAME: usize = 15;

/// The address layout of `network.subnet` (see the module's docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    subnet: Ipv4Net,
    /// None: deployments get no IPv6.
    subnet6: Option<Ipv6Net>,
    /// How many slots each half holds.
    slots: u32,
}

impl Plan {
    /// Checks that `slots` deployments fit in each half of the subnet (and of `subnet6`, the
    /// IPv6 network, None where the host has no IPv6).
    pub fn new(
        subnet: Ipv4Net,
        subnet6: Option<Ipv6Net>,
        slots: u32,
    ) -> Result<Self, NetworkError> {
        if subnet.prefix_len() > 20 {
            return Err(NetworkError::Config(format!(
                "network.subnet {subnet} is too small: use a /20 or larger (e.g. 10.213.0.0/16)"
            )));
        }
        if let Some(net) = subnet6.filter(|net| net.prefix_len() > 112) {
            return Err(NetworkError::Config(format!(
                "network.subnet6 {net} is too small: use a /112 or larger (a /64 is the custom, e.g. fd6e:7800:213::/64)"
            )));
        }
        let nets = std::iter::once(("subnet", IpNet::V4(subnet)))
            .chain(subnet6.map(|net| ("subnet6", IpNet::V6(net))));
        for (key, net) in nets {
            let bits = u32::from(net.max_prefix_len() - net.prefix_len()) - 1;
            let half = 1u64.checked_shl(bits).unwrap_or(u64::MAX);
            if u64::from(slots) + 2 > half {
                return Err(NetworkError::Config(format!(
                    "network.{key} {net} holds {} deployments per egress mode, [ports] hands out {slots}: widen the subnet or narrow [ports]",
                    half - 2
                )));
            }
        }
        Ok(Self {
            subnet: subnet.trunc(),
            subnet6: subnet6.map(|net| net.trunc()),
            slots,
        })
    }

    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// The IPv6 network of deployments; None: they have no IPv6.
    pub fn subnet6(&self) -> Option<Ipv6Net> {
        self.subnet6
    }

    /// The host's address on `nx0`.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.network()) + 1)
    }

    /// The half of the subnet whose deployments have this egress.
    pub fn half(&self, egress: Egress) -> Ipv4Net {
        let prefix = self.subnet.prefix_len() + 1;
        let mut halves = self.subnet.subnets(prefix).expect("prefix below 32");
        halves.nth(half_index(egress)).expect("two halves")
    }

    /// The half of `subnet6` whose deployments have this egress (None: no IPv6).
    pub fn half6(&self, egress: Egress) -> Option<Ipv6Net> {
        let subnet6 = self.subnet6?;
        let mut halves = subnet6
            .subnets(subnet6.prefix_len() + 1)
            .expect("prefix below 112");
        halves.nth(half_index(egress))
    }

    /// The address of the deployment in `slot` (0-based) with this egress.
    pub fn address(&self, slot: u32, egress: Egress) -> Result<Ipv4Addr, NetworkError> {
        self.check_slot(slot)?;
        Ok(Ipv4Addr::from(
            u32::from(self.half(egress).network()) + 2 + slot,
        ))
    }

    /// The IPv6 address of the deployment in `slot` with this egress (None: no IPv6).
    pub fn address6(&self, slot: u32, egress: Egress) -> Result<Option<Ipv6Addr>, NetworkError> {
        self.check_slot(slot)?;
        Ok(self
            .half6(egress)
            .map(|half| Ipv6Addr::from(u128::from(half.network()) + 2 + u128::from(slot))))
    }

    fn check_slot(&self, slot: u32) -> Result<(), NetworkError> {
        if slot >= self.slots {
            return Err(NetworkError::Config(format!(
                "slot {slot} is outside the {} slots of [ports]",
                self.slots
            )));
        }
        Ok(())
    }

    /// Everything the launcher of deployment `id` needs.
    pub fn attachment(
        &self,
        id: &str,
        slot: u32,
        egress: Egress,
    ) -> Result<Attachment, NetworkError> {
        let link = format!("{LINK_PREFIX}{id}");
        if link.len() > MAX_LINK_NAME {
            return Err(NetworkError::Config(format!(
                "deployment id {id:?} is too long for an interface name"
            )));
        }
        Ok(Attachment {
            link,
            address: self.address(slot, egress)?,
            gateway: self.gateway(),
            address6: self.address6(slot, egress)?,
        })
    }
}

/// Which of the two halves of a subnet holds deployments with this egress: the lower for
/// none, the upper for public.
fn half_index(egress: Egress) -> usize {
    match egress {
        Egress::None => 0,
        Egress::Public => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan::new(
            "10.213.0.0/16".parse().unwrap(),
            Some("fd6e:7800:213::/64".parse().unwrap()),
            1000,
        )
        .unwrap()
    }

    #[test]
    fn addresses_follow_slot_and_egress() {
        let plan = plan();
        assert_eq!(plan.gateway(), Ipv4Addr::new(10, 213, 0, 1));
        assert_eq!(
            plan.address(0, Egress::None).unwrap(),
            Ipv4Addr::new(10, 213, 0, 2)
        );
        assert_eq!(
            plan.address(300, Egress::Public).unwrap(),
            Ipv4Addr::new(10, 213, 129, 46)
        );
        assert!(plan.address(1000, Egress::None).is_err());
        let a = plan.attachment("d1234567", 3, Egress::Public).unwrap();
        assert_eq!(a.link, "nx-d1234567");
        assert!(plan.half(Egress::Public).contains(&a.address));
        assert!(plan.attachment("a-very-long-id", 3, Egress::None).is_err());
        assert_eq!(
            a.address6,
            Some("fd6e:7800:213:0:8000::5".parse().unwrap()),
            "the upper half of the /64, 2 + slot"
        );
        assert_eq!(
            plan.address6(0, Egress::None).unwrap(),
            Some("fd6e:7800:213::2".parse().unwrap())
        );
        let v4_only = Plan::new("10.213.0.0/16".parse().unwrap(), None, 10).unwrap();
        assert_eq!(v4_only.address6(3, Egress::Public).unwrap(), None);
        assert_eq!(v4_only.half6(Egress::Public), None);
    }

    #[test]
    fn a_subnet_too_small_for_the_ports_is_refused() {
        let v4 = |s: &str| s.parse::<Ipv4Net>().unwrap();
        let v6 = |s: &str| Some(s.parse::<Ipv6Net>().unwrap());
        let e = Plan::new(v4("10.213.0.0/20"), None, 3000).unwrap_err();
        assert!(e.to_string().contains("widen the subnet"), "{e}");
        let e = Plan::new(v4("10.213.0.0/24"), None, 10).unwrap_err();
        assert!(e.to_string().contains("use a /20 or larger"), "{e}");
        assert!(Plan::new(v4("10.213.0.0/20"), None, 2046).is_ok());
        let e = Plan::new(v4("10.213.0.0/16"), v6("fd00::/120"), 10).unwrap_err();
        assert!(e.to_string().contains("use a /112 or larger"), "{e}");
        let e = Plan::new(v4("10.0.0.0/8"), v6("fd00::/112"), 40000).unwrap_err();
        assert!(
            e.to_string()
                .contains("network.subnet6 fd00::/112 holds 32766"),
            "{e}"
        );
    }

    #[test]
    fn allow_entries_must_be_cidrs() {
        assert!("10.20.0.0/16".parse::<Cidr>().is_ok());
        assert!("fd12::/64".parse::<Cidr>().is_ok());
        let e = "10.20.0.1/16".parse::<Cidr>().unwrap_err();
        assert!(e.contains("did you mean 10.20.0.0/16"), "{e}");
        assert!("intranet"
            .parse::<Cidr>()
            .unwrap_err()
            .contains("not a CIDR"));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    }
}
