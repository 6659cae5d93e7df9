//! The egress policy: one nftables table, `inet nx`, replaced atomically (one `nft -f`
//! transaction) when nxd starts. It is static: a deployment's rights follow from the half of
//! `network.subnet` its address is in, so starting or removing a deployment changes no rule.
//!
//! For packets that come in on a deployment's link (`nx-*`):
//! - to the host itself (input): only replies (connections the host opened, e.g. the router's)
//!   and DNS DNATed to the host's resolver, for deployments with egress; nothing else: not the
//!   API, the router, SSH, PostgreSQL, nor anything listening on any host address;
//! - through the host (forward): replies; nothing at all from the no-egress half; never into
//!   another deployment's link; never cloud metadata, link-local, loopback, RFC 1918, CGNAT,
//!   multicast or reserved destinations unless `network.allow` lists them, and for IPv6 the
//!   same: never metadata (fd00:ec2::254), ULA, link-local, loopback, multicast, and no IPv4
//!   range of those through its IPv6 forms (IPv4-mapped, NAT64, 6to4); the rest (the public
//!   internet) masqueraded behind the host's address (no IPv6 at all where deployments have
//!   none).
//! - to the host itself over IPv6: only neighbour discovery (the deployment resolving its
//!   gateway `fe80::1`), besides replies.
//!
//! And on the host, only nxd's sockets (the router, readiness: its uid, or root) may open
//! connections into a deployment's link.
//!
//! TCP services (`nx push --tcp`, see `crate::tcp`): the map `tcp_ports` (host port → a
//! deployment's address and port) and, for services within a sandbox (`nx push --service`,
//! see `crate::services`), the set `service_pairs` (a deployment's address → a declared
//! service's address and port of the same sandbox: exactly those pairs pass between two
//! deployments' links) are all nxd changes after start, each replaced in one transaction
//! ([`tcp_ports_update`], [`service_pairs_update`]). A connection to one of its ports on any of the host's
//! own addresses is DNATed to the deployment, as Docker publishes ports: from outside (any
//! client), from the host itself (loopback sources are SNATed to the gateway, since the
//! deployment's loopback is its own), and from deployments with egress, which reach it as any
//! client would, through the host's address; the no-egress half does not.
//! Sources: nft(8), RFC 1918, RFC 6598 (CGNAT), RFC 3927 (link-local), RFC 6890 (special-
//! purpose registries), RFC 4193 (ULA), RFC 4291 (IPv6 addressing), RFC 6052 (NAT64),
//! RFC 8215 (local-use NAT64), RFC 3056 (6to4), RFC 4861 (neighbour discovery).

use super::{NetworkError, Plan, LINK_PREFIX};
use ipnet::IpNet;
use std::fmt::Write;
use std::net::Ipv4Addr;

/// Destinations no deployment reaches unless `network.allow` lists them: "this network",
/// RFC 1918, CGNAT, loopback, link-local (with cloud metadata), multicast and reserved.
pub const BLOCKED_V4: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// IPv6 destinations no deployment reaches unless `network.allow` lists them: unspecified,
/// loopback, IPv4-mapped, discard-only, local-use NAT64, ULA, link-local, site-local
/// (deprecated) and multicast. IPv4's blocked ranges in their NAT64 and 6to4 forms follow from
/// [`BLOCKED_V4`] (see [`blocked_v6`]).
pub const BLOCKED_V6: &[&str] = &[
    "::/128",
    "::1/128",
    "::ffff:0:0/96",
    "64:ff9b:1::/48",
    "100::/64",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
];

/// The cloud metadata services' addresses (AWS's, GCP's and Azure's IPv4 one; AWS's IPv6 one
/// on Nitro): blocked even where `network.allow` opens their range, unless it lists them
/// exactly.
pub const METADATA: &[&str] = &["169.254.169.254/32", "fd00:ec2::254/128"];

/// Every IPv6 destination blocked: [`BLOCKED_V6`], plus each of [`BLOCKED_V4`] as a NAT64
/// well-known-prefix network (`64:ff9b::/96`, RFC 6052: a NAT64 gateway on the host's network
/// would translate it to the IPv4 range) and as a 6to4 one (`2002::/16`, RFC 3056).
pub fn blocked_v6() -> Vec<String> {
    let mut all: Vec<String> = BLOCKED_V6.iter().map(|s| (*s).to_owned()).collect();
    for v4 in BLOCKED_V4 {
        let net: ipnet::Ipv4Net = v4.parse().expect("literal");
        let bits = u32::from(net.network());
        let nat64 = std::net::Ipv6Addr::from((0x64_ff9b_u128 << 96) | u128::from(bits));
        let six_to_four = std::net::Ipv6Addr::from((0x2002_u128 << 112) | (u128::from(bits) << 80));
        all.push(format!("{nat64}/{}", 96 + net.prefix_len()));
        all.push(format!("{six_to_four}/{}", 16 + net.prefix_len()));
    }
    all
}

/// The table's name in the `inet` family.
pub const TABLE: &str = "nx";

/// The map of TCP services: `inet_service : ipv4_addr . inet_service`.
pub const TCP_PORTS: &str = "tcp_ports";

/// The set of (client address, service address, service port) a sandbox's declared services
/// allow (`crate::services`): `ipv4_addr . ipv4_addr . inet_service`.
pub const SERVICE_PAIRS: &str = "service_pairs";

/// The complete `nft -f` input that replaces the table: `allow` are the CIDRs of
/// `network.allow` (IPv6 ones have no effect where deployments have no IPv6), `resolver` the host's
/// DNS server that port 53 of the gateway is forwarded to, `router_uid` the uid whose sockets
/// (besides root's) may connect into deployments: nxd's.
pub fn ruleset(
    plan: &Plan,
    allow: &[IpNet],
    resolver: Option<Ipv4Addr>,
    router_uid: u32,
) -> String {
    let links = format!("\"{LINK_PREFIX}*\"");
    // "No route to host" at once, rather than a connect that hangs until it times out.
    let reject = "counter reject with icmpx type admin-prohibited";
    let public = plan.half(super::Egress::Public);
    let gateway = plan.gateway();
    let (allow6, allow4): (Vec<IpNet>, Vec<IpNet>) =
        allow.iter().partition(|net| matches!(net, IpNet::V6(_)));
    let public6 = plan.half6(super::Egress::Public);
    let mut t = String::new();
    // Declaring the table first makes the delete succeed when it does not exist yet; the whole
    // file is one transaction.
    let _ = writeln!(
        t,
        "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{"
    );
    for (name, kind, nets) in [
        ("allow4", "ipv4_addr", allow4),
        ("allow6", "ipv6_addr", allow6),
    ] {
        let _ = writeln!(t, "\tset {name} {{\n\t\ttype {kind}\n\t\tflags interval");
        if !nets.is_empty() {
            let list: Vec<String> = nets.iter().map(IpNet::to_string).collect();
            let _ = writeln!(t, "\t\telements = {{ {} }}", list.join(", "));
        }
        let _ = writeln!(t, "\t}}");
    }
    let _ = writeln!(
        t,
        "\tmap {TCP_PORTS} {{\n\t\ttype inet_service : ipv4_addr . inet_service\n\t}}\n\tset {SERVICE_PAIRS} {{\n\t\ttype ipv4_addr . ipv4_addr . inet_service\n\t}}"
    );
    let publish = format!("fib daddr type local dnat ip to tcp dport map @{TCP_PORTS}");
    let _ = writeln!(
        t,
        "\tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tiifname != {links} {publish}\n\t\tiifname {links} ip saddr {public} {publish}"
    );
    if let Some(resolver) = resolver {
        let _ = writeln!(
            t,
            "\t\tiifname {links} ip saddr {public} ip daddr {gateway} meta l4proto {{ tcp, udp }} th dport 53 dnat ip to {resolver}"
        );
    }
    let _ = writeln!(t, "\t}}");
    // `priority dstnat` is for prerouting only; -100 is its value (nft(8)).
    let _ = writeln!(
        t,
        "\tchain output_nat {{\n\t\ttype nat hook output priority -100; policy accept;\n\t\t{publish}\n\t}}"
    );
    let _ = writeln!(
        t,
        "\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\toifname {links} ct status dnat ip saddr 127.0.0.0/8 snat ip to {gateway}\n\t\tip saddr {public} oifname != {links} masquerade"
    );
    if let Some(public6) = public6 {
        let _ = writeln!(t, "\t\tip6 saddr {public6} oifname != {links} masquerade");
    }
    let _ = writeln!(t, "\t}}");
    let _ = writeln!(
        t,
        "\tchain input {{\n\t\ttype filter hook input priority filter; policy accept;\n\t\tiifname != {links} accept\n\t\tct state established,related accept"
    );
    if public6.is_some() {
        // A deployment resolving its gateway fe80::1 (and answering the host's questions).
        let _ = writeln!(
            t,
            "\t\tip6 hoplimit 255 icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept"
        );
    }
    if let Some(resolver) = resolver {
        let _ = writeln!(
            t,
            "\t\tct status dnat ip saddr {public} ip daddr {resolver} meta l4proto {{ tcp, udp }} th dport 53 accept"
        );
    }
    let _ = writeln!(t, "\t\t{reject}\n\t}}");
    let _ = writeln!(
        t,
        "\tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tiifname != {links} oifname != {links} accept\n\t\tct state established,related accept\n\t\tiifname {links} oifname {links} meta l4proto {{ tcp, udp }} ip saddr . ip daddr . th dport @{SERVICE_PAIRS} accept\n\t\toifname {links} ct status dnat accept\n\t\toifname {links} {reject}\n\t\tip saddr != {public} {reject}"
    );
    if let Some(resolver) = resolver {
        let _ = writeln!(
            t,
            "\t\tct status dnat ip daddr {resolver} meta l4proto {{ tcp, udp }} th dport 53 accept"
        );
    }
    match public6 {
        Some(public6) => {
            let _ = writeln!(t, "\t\tip6 saddr != {public6} {reject}");
        }
        None => {
            let _ = writeln!(t, "\t\tmeta nfproto ipv6 {reject}");
        }
    }
    for metadata in METADATA {
        let net: IpNet = metadata.parse().expect("literal");
        if !allow.contains(&net) {
            let family = if net.addr().is_ipv4() { "ip" } else { "ip6" };
            let _ = writeln!(t, "\t\t{family} daddr {} {reject}", net.addr());
        }
    }
    let _ = writeln!(
        t,
        "\t\tip daddr @allow4 accept\n\t\tip6 daddr @allow6 accept\n\t\tip daddr {{ {} }} {reject}\n\t\tip6 daddr {{ {} }} {reject}\n\t\taccept\n\t}}",
        BLOCKED_V4.join(", "),
        blocked_v6().join(", ")
    );
    let uids = match router_uid {
        0 => "0".to_owned(),
        uid => format!("{{ 0, {uid} }}"),
    };
    let _ = writeln!(
        t,
        "\tchain output {{\n\t\ttype filter hook output priority filter; policy accept;\n\t\toifname {links} ct status dnat accept\n\t\toifname {links} meta skuid != {uids} counter reject\n\t}}\n}}"
    );
    t
}

/// The `nft -f` input that makes `elements` (host port → the deployment's address and port)
/// the whole of the TCP services map, in one transaction: a connection that arrives during
/// it meets the old map or the new one, never an empty one. Connections already open keep
/// the deployment they were DNATed to (conntrack).
pub fn tcp_ports_update(elements: &[(u16, std::net::SocketAddrV4)]) -> String {
    replace_elements(
        "map",
        TCP_PORTS,
        elements
            .iter()
            .map(|(port, to)| format!("{port} : {} . {}", to.ip(), to.port())),
    )
}

/// The `nft -f` input that makes `pairs` (client address, service address, service port) the
/// whole of the service pairs set, in one transaction; a set, so that the same pairs make the
/// same input whatever order they were found in.
pub fn service_pairs_update(
    pairs: &std::collections::BTreeSet<(std::net::Ipv4Addr, std::net::SocketAddrV4)>,
) -> String {
    replace_elements(
        "set",
        SERVICE_PAIRS,
        pairs
            .iter()
            .map(|(from, to)| format!("{from} . {} . {}", to.ip(), to.port())),
    )
}

/// `flush <kind> inet nx <name>`, then one `add element` with `elements` (none: the flush
/// alone): nft applies the file as one transaction, so readers see the old contents or the new.
fn replace_elements(kind: &str, name: &str, elements: impl Iterator<Item = String>) -> String {
    let mut t = format!("flush {kind} inet {TABLE} {name}\n");
    let list: Vec<String> = elements.collect();
    if !list.is_empty() {
        let _ = writeln!(
            t,
            "add element inet {TABLE} {name} {{ {} }}",
            list.join(", ")
        );
    }
    t
}

/// What nxd last loaded into the table's map and set ([`TCP_PORTS`], [`SERVICE_PAIRS`]), so
/// that a route change that leaves them as they are runs no `nft` (two `nft` processes per
/// push took 5 to 20 ms of its time to first answer). Empty when nxd starts: its first update
/// of each is loaded whatever it holds.
#[derive(Default)]
pub struct LoadedElements {
    last: std::sync::Mutex<std::collections::HashMap<&'static str, String>>,
}

impl LoadedElements {
    /// Loads `update` (from [`tcp_ports_update`] or [`service_pairs_update`]: the whole new
    /// contents of `name`) unless it is what was last loaded into `name`; whether `nft` ran.
    /// Callers serialise the updates of one name (nxd's route changes hold one lock).
    /// Errors: [`apply`]'s; the next update of `name` is then loaded again.
    pub async fn replace(&self, name: &'static str, update: String) -> Result<bool, NetworkError> {
        if self.lock().get(name) == Some(&update) {
            return Ok(false);
        }
        self.lock().remove(name);
        let loaded = tokio::task::spawn_blocking(move || apply(&update).map(|()| update))
            .await
            .map_err(|e| NetworkError::Firewall(format!("nft did not finish: {e}")))??;
        self.lock().insert(name, loaded);
        Ok(true)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<&'static str, String>> {
        self.last.lock().expect("loaded elements lock")
    }
}

/// Loads a ruleset with `nft -f -` (one transaction: all of it or nothing).
/// Errors: nft missing (install nftables) or refusing the ruleset, with its message.
pub fn apply(ruleset: &str) -> Result<(), NetworkError> {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| NetworkError::Firewall(format!("cannot run nft ({e}): install nftables")))?;
    let written = child
        .stdin
        .take()
        .expect("piped")
        .write_all(ruleset.as_bytes());
    let out = child
        .wait_with_output()
        .map_err(|e| NetworkError::Firewall(format!("waiting for nft: {e}")))?;
    if !out.status.success() || written.is_err() {
        return Err(NetworkError::Firewall(format!(
            "nft refused the ruleset: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_follows_the_plan() {
        let plan = Plan::new("10.213.0.0/16".parse().unwrap(), None, 100).unwrap();
        let allow = [
            "10.20.0.0/16".parse().unwrap(),
            "fd12::/64".parse().unwrap(),
        ];
        let text = ruleset(&plan, &allow, Some(Ipv4Addr::new(127, 0, 0, 53)), 990);
        assert!(text.contains("elements = { 10.20.0.0/16 }"), "{text}");
        assert!(
            text.contains("ip saddr != 10.213.128.0/17 counter reject"),
            "{text}"
        );
        assert!(text.contains(
            "ip daddr 10.213.0.1 meta l4proto { tcp, udp } th dport 53 dnat ip to 127.0.0.53"
        ));
        assert!(text.contains("ip daddr 169.254.169.254 counter reject"));
        assert!(text.contains("meta skuid != { 0, 990 }"));
        let without = ruleset(&plan, &[], None, 0);
        assert!(!without.contains("th dport 53 dnat") && !without.contains("elements"));
        assert!(without.contains("meta skuid != 0 counter reject"));
        assert!(text.contains(
            "iifname \"nx-*\" ip saddr 10.213.128.0/17 fib daddr type local dnat ip to tcp dport map @tcp_ports"
        ));
        assert!(text.contains("ct status dnat ip saddr 127.0.0.0/8 snat ip to 10.213.0.1"));
        // No IPv6 for deployments: none leaves.
        assert!(text.contains("meta nfproto ipv6 counter reject"), "{text}");
        assert!(!text.contains("ip6 saddr"), "{text}");
    }

    #[test]
    fn ipv6_has_the_policy_of_ipv4() {
        let plan = Plan::new(
            "10.213.0.0/16".parse().unwrap(),
            Some("fd6e:7800:213::/64".parse().unwrap()),
            100,
        )
        .unwrap();
        let allow = ["fd12::/64".parse().unwrap()];
        let text = ruleset(&plan, &allow, None, 990);
        assert!(text.contains("set allow6 {\n\t\ttype ipv6_addr\n\t\tflags interval\n\t\telements = { fd12::/64 }"), "{text}");
        assert!(
            text.contains("ip6 saddr fd6e:7800:213:0:8000::/65 oifname != \"nx-*\" masquerade"),
            "{text}"
        );
        assert!(
            text.contains("ip6 saddr != fd6e:7800:213:0:8000::/65 counter reject"),
            "{text}"
        );
        assert!(
            text.contains("ip6 daddr fd00:ec2::254 counter reject"),
            "{text}"
        );
        assert!(!text.contains("meta nfproto ipv6"), "{text}");
        let blocked = blocked_v6();
        for net in [
            "fc00::/7",
            "fe80::/10",
            "64:ff9b::a9fe:0/112",
            "2002:a00::/24",
            "64:ff9b::a00:0/104",
        ] {
            assert!(blocked.iter().any(|b| b == net), "{net} in {blocked:?}");
        }
        // Listed exactly, metadata is let through.
        let text = ruleset(&plan, &["fd00:ec2::254/128".parse().unwrap()], None, 990);
        assert!(
            !text.contains("ip6 daddr fd00:ec2::254 counter reject"),
            "{text}"
        );
    }

    #[test]
    fn the_tcp_map_is_replaced_whole() {
        let update = tcp_ports_update(&[
            (30000, "10.213.0.5:6379".parse().unwrap()),
            (30001, "10.213.128.9:4222".parse().unwrap()),
        ]);
        assert_eq!(
            update,
            "flush map inet nx tcp_ports\nadd element inet nx tcp_ports { 30000 : 10.213.0.5 . 6379, 30001 : 10.213.128.9 . 4222 }\n"
        );
        assert_eq!(tcp_ports_update(&[]), "flush map inet nx tcp_ports\n");
        assert_eq!(
            service_pairs_update(&[(
                "10.213.0.3".parse().unwrap(),
                "10.213.0.4:6379".parse().unwrap()
            )]
            .into()),
            "flush set inet nx service_pairs\nadd element inet nx service_pairs { 10.213.0.3 . 10.213.0.4 . 6379 }\n"
        );
    }
}
