//! HTTPS: the `[tls]` config, the certificate store shared by nxd (which writes it) and the
//! router (which serves it), and where the ACME challenges are kept.
//!
//! Layout under `<state_dir>/tls/`: `certs/<name>.pem` (see [`store`], shared with the router), `challenges/<token>`
//! (HTTP-01 key authorizations the router answers at `/.well-known/acme-challenge/<token>`,
//! RFC 8555 §8.3).

pub mod acme;
pub mod config;

pub use config::TlsConfig;
pub use nx_router_api::store;
pub use nx_router_api::store::is_challenge_token;
use std::path::{Path, PathBuf};

/// `<state_dir>/tls`.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("tls")
}

/// `<state_dir>/tls/certs`: the ACME certificates.
pub fn certs_dir(state_dir: &Path) -> PathBuf {
    dir(state_dir).join("certs")
}

/// `<state_dir>/tls/challenges`: HTTP-01 key authorizations by token.
pub fn challenges_dir(state_dir: &Path) -> PathBuf {
    dir(state_dir).join("challenges")
}

/// The API's host name on the router: `api.<base_domain>` (lower case).
pub fn api_host(base_domain: &str) -> String {
    format!("api.{}", base_domain.to_ascii_lowercase())
}

/// With HTTPS on, the route of `api.<base_domain>` to nxd's own API (`api_listen`, on
/// loopback when it listens on every address), so that a remote `nx` reaches it over TLS.
pub fn api_route(config: &crate::config::Config) -> Option<crate::router::Route> {
    config.tls.https_listen?;
    let mut upstream = config.api_listen;
    if upstream.ip().is_unspecified() {
        upstream.set_ip(match upstream {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Some(crate::router::Route {
        host: api_host(&config.base_domain),
        upstream,
        sandbox: String::new(),
        deployment: "nxd".into(),
    })
}

/// The names in `table` that get certificates by ACME: every routed name except preview hosts
/// (`<deployment>.<sandbox>.<base_domain>`), i.e. production hosts, custom domains and the
/// API. Previews would need a wildcard per sandbox, which only DNS-01 can prove: they stay on
/// HTTP unless `cert_file` covers them.
pub fn certificate_names(
    table: &crate::router::RouteTable,
    base_domain: &str,
) -> std::collections::BTreeSet<String> {
    let suffix = format!(".{}", base_domain.to_ascii_lowercase());
    table
        .routes
        .iter()
        .filter(|r| {
            r.host
                .strip_suffix(&suffix)
                .is_none_or(|label| !label.contains('.'))
        })
        .map(|r| r.host.clone())
        .collect()
}
