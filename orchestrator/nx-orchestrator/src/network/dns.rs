//! Name resolution inside a deployment: its `/etc/resolv.conf` names the gateway, and the
//! firewall DNATs port 53 there to the host's first IPv4 resolver, for deployments with egress
//! only. That is what makes a resolver on the host's loopback (systemd-resolved's 127.0.0.53,
//! the common case) work from inside a namespace, where 127.0.0.53 is the deployment's own.
//! Source: resolv.conf(5).

use std::net::Ipv4Addr;

/// The host's first IPv4 `nameserver` in resolv.conf text.
pub fn host_resolver(resolv_conf: &str) -> Option<Ipv4Addr> {
    resolv_conf.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("nameserver"))
            .then(|| words.next()?.parse().ok())
            .flatten()
    })
}

/// A deployment's resolv.conf: the gateway as its only nameserver, the host's `search` and
/// `options` lines kept.
pub fn sandbox_resolv_conf(host_resolv_conf: &str, gateway: Ipv4Addr) -> String {
    let mut out = format!(
        "# Written by nxd: the gateway forwards to the host's resolver.\nnameserver {gateway}\n"
    );
    for line in host_resolv_conf.lines() {
        let first = line.split_whitespace().next();
        if matches!(first, Some("search" | "domain" | "options")) {
            out.push_str(line.trim());
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_ipv4_nameserver_is_the_resolver() {
        let text = "# comment\nnameserver fe80::1\nnameserver 127.0.0.53\nnameserver 1.1.1.1\nsearch example.org\noptions edns0 trust-ad\n";
        assert_eq!(host_resolver(text), Some(Ipv4Addr::new(127, 0, 0, 53)));
        assert_eq!(host_resolver("search x\n"), None);
        let conf = sandbox_resolv_conf(text, Ipv4Addr::new(10, 213, 0, 1));
        assert!(conf.contains("nameserver 10.213.0.1\n"));
        assert!(!conf.contains("127.0.0.53"));
        assert!(conf.contains("search example.org\n") && conf.contains("options edns0 trust-ad\n"));
    }
}
