//! Header rules of the router: the client-address headers it sets (`X-Forwarded-For`,
//! `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Real-IP`, and `Forwarded` of RFC 7239), the
//! hop-by-hop headers it removes (RFC 9110 §7.6.1), and the cookies a deployment may not set
//! ([`shared_cookie_domain`]).

use http::HeaderMap;
use std::net::IpAddr;

/// The forwarding headers of one request, computed from what the client sent.
#[derive(Debug, PartialEq, Eq)]
pub struct Forwarding {
    pub x_forwarded_for: String,
    pub x_forwarded_proto: String,
    pub x_forwarded_host: String,
    pub x_real_ip: String,
    pub forwarded: String,
}

/// What to send upstream for a request from `peer` over `proto` ("http"/"https") for `host`.
/// From a `trusted` peer (in `router.trusted_proxies`) the client's values are kept and this
/// hop appended; from anyone else they are replaced.
pub fn forwarding(
    received: &HeaderMap,
    peer: IpAddr,
    trusted: bool,
    proto: &str,
    host: &str,
) -> Forwarding {
    let joined = |name: &str| -> Option<String> {
        if !trusted {
            return None;
        }
        let values: Vec<&str> = received
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    };
    let append = |name: &str, hop: String| match joined(name) {
        Some(before) => format!("{before}, {hop}"),
        None => hop,
    };
    // RFC 7239 §6: an IPv6 node is quoted and bracketed; §4: values that are not tokens
    // (a host with a port) are quoted.
    let peer_text = peer.to_string();
    let node = match peer {
        IpAddr::V4(_) => peer_text.clone(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let host_value = host.replace(['"', '\\'], "");
    Forwarding {
        x_forwarded_for: append("x-forwarded-for", peer_text.clone()),
        x_forwarded_proto: joined("x-forwarded-proto").unwrap_or_else(|| proto.to_owned()),
        x_forwarded_host: joined("x-forwarded-host").unwrap_or_else(|| host_value.clone()),
        x_real_ip: joined("x-real-ip").unwrap_or(peer_text),
        forwarded: append(
            "forwarded",
            format!("for={node};host=\"{host_value}\";proto={proto}"),
        ),
    }
}

/// The hop-by-hop headers of a message, to remove before it goes on: `Connection`, the names
/// it lists, `Keep-Alive`, `Proxy-Connection`, `TE` (but `TE: trailers`, which gRPC needs end
/// to end) and `Upgrade`. In an upgrade (`Connection: upgrade` with `Upgrade`, e.g. a WebSocket
/// handshake or its 101) `Connection` and `Upgrade` stay: the engine tunnels it.
///
/// Only the names present in `headers` are returned (sorted, lower case), and nothing is
/// allocated for a message that has none, the common case (this runs twice per request).
pub fn hop_by_hop(headers: &HeaderMap) -> Vec<String> {
    let listed = || {
        headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|name| !name.is_empty())
    };
    let upgrade = listed().any(|n| n.eq_ignore_ascii_case("upgrade"))
        && headers.contains_key(http::header::UPGRADE);
    let te_trailers_only = headers.get_all(http::header::TE).iter().all(|v| {
        v.to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("trailers"))
    });
    let fixed = ["keep-alive", "proxy-connection"]
        .into_iter()
        .chain(
            (!upgrade)
                .then_some(["connection", "upgrade"])
                .into_iter()
                .flatten(),
        )
        .chain((!te_trailers_only).then_some("te"))
        .filter(|n| headers.contains_key(*n))
        .map(str::to_owned);
    let named = listed()
        .map(str::to_ascii_lowercase)
        .filter(|n| n != "upgrade" && n != "te" && headers.contains_key(n.as_str()));
    let mut names: Vec<String> = fixed.chain(named).collect();
    names.sort();
    names.dedup();
    names
}

/// The `Domain` attribute of a `Set-Cookie` value when it names `base_domain` or a parent of
/// it: a cookie every tenant's host would receive (cookie tossing: one tenant's deployment
/// fixing another's session). `None` for a host-only cookie (no or an empty `Domain`) and for
/// one scoped to a name that only one tenant's hosts are under (its own production host, a
/// custom domain's parent). As a browser reads it (RFC 6265 §5.2.3, §5.3 step 4): the last
/// `Domain` attribute counts, a leading dot is ignored, case too; a name that is not ASCII
/// is taken in its ASCII form (UTS #46 processing: a full-width `．` is a dot), and one that
/// has none is treated as shared (dropped: attacker s11, `Domain=nx．test`).
pub fn shared_cookie_domain(set_cookie: &str, base_domain: &str) -> Option<String> {
    let domain = set_cookie
        .split(';')
        .skip(1)
        .filter_map(|attribute| attribute.split_once('='))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("domain"))
        .last()?
        .1
        .trim();
    let domain = if domain.is_ascii() {
        domain.to_ascii_lowercase()
    } else {
        match idna::domain_to_ascii(domain) {
            Ok(ascii) => ascii,
            Err(_) => return Some(domain.to_owned()),
        }
    };
    let domain = domain.strip_prefix('.').unwrap_or(&domain).to_owned();
    let domain = domain.strip_suffix('.').unwrap_or(&domain);
    let base = base_domain.to_ascii_lowercase();
    let shared = !domain.is_empty()
        && (base == domain
            || base
                .strip_suffix(domain)
                .is_some_and(|rest| rest.ends_with('.')));
    shared.then(|| domain.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    const SPOOFED: &[(&str, &str)] = &[
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
        ("x-real-ip", "6.6.6.6"),
        ("forwarded", "for=6.6.6.6"),
    ];

    #[test]
    fn an_untrusted_peer_cannot_choose_its_address() {
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let f = forwarding(&map(SPOOFED), peer, false, "http", "web.nx.test:7780");
        assert_eq!(
            f,
            Forwarding {
                x_forwarded_for: "127.0.0.1".into(),
                x_forwarded_proto: "http".into(),
                x_forwarded_host: "web.nx.test:7780".into(),
                x_real_ip: "127.0.0.1".into(),
                forwarded: "for=127.0.0.1;host=\"web.nx.test:7780\";proto=http".into(),
            }
        );
    }

    #[test]
    fn a_trusted_proxy_is_appended_to() {
        let peer: IpAddr = "::1".parse().unwrap();
        let f = forwarding(&map(SPOOFED), peer, true, "http", "web.nx.test");
        assert_eq!(f.x_forwarded_for, "6.6.6.6, ::1");
        assert_eq!(f.x_forwarded_proto, "https");
        assert_eq!(f.x_real_ip, "6.6.6.6");
        assert_eq!(
            f.forwarded,
            "for=6.6.6.6, for=\"[::1]\";host=\"web.nx.test\";proto=http"
        );
    }

    #[test]
    fn cookies_for_the_base_domain_or_its_parents_are_shared_and_others_not() {
        let shared = |v: &str| shared_cookie_domain(v, "nx.test");
        assert_eq!(
            shared("s=1; Domain=nx.test; Path=/").as_deref(),
            Some("nx.test")
        );
        assert_eq!(
            shared("s=1; path=/; domain=.NX.test.").as_deref(),
            Some("nx.test")
        );
        assert_eq!(shared("s=1; Domain=test").as_deref(), Some("test"));
        // The last Domain counts.
        assert_eq!(
            shared("s=1; Domain=web.nx.test; Domain=nx.test").as_deref(),
            Some("nx.test")
        );
        assert_eq!(shared("s=1; Domain=nx.test; Domain=web.nx.test"), None);
        // Names a browser maps to ASCII first: full-width dots, full-width letters.
        assert_eq!(shared("s=1; Domain=nx．test").as_deref(), Some("nx.test"));
        assert_eq!(
            shared("s=1; Domain=．ｎｘ．test").as_deref(),
            Some("nx.test")
        );
        assert_eq!(shared("s=1; Domain=web．nx．test"), None);
        // No ASCII form: dropped as well.
        assert!(shared("s=1; Domain=nx\u{FFFD}test").is_some());
        for own in [
            "s=1",
            "s=1; Path=/; HttpOnly",
            "s=1; Domain=",
            "s=1; Domain=web.nx.test",
            "s=1; Domain=d1.web.nx.test",
            "s=1; Domain=example.com",
            "s=1; Domain=onx.test",
            "domain=nx.test",
        ] {
            assert_eq!(shared(own), None, "{own}");
        }
    }

    #[test]
    fn hop_by_hop_headers_go_but_an_upgrade_and_te_trailers_stay() {
        let plain = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "gzip"),
            ("host", "a"),
        ]);
        assert_eq!(
            hop_by_hop(&plain),
            ["connection", "keep-alive", "te", "x-secret"]
        );
        let ws = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
        ]);
        assert!(hop_by_hop(&ws).is_empty());
    }
}
