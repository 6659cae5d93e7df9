//! HTTPS: the `[tls]` config, the certificate store shared by nxd (which writes it) and the
//! router (which serves it), and where the ACME challenges are kept.
//!
//! Layout under `<state_dir>/tls/`: `certs/<name>.pem` (see [`store`], shared with the router), `challenges/<token>`
//! (HTTP-01 key authorizations the router answers at `/.well-known/acme-challenge/<token>`,
//! RFC 8555 §8.3), `challenges/tls-alpn-01/<name>.pem` (TLS-ALPN-01 validation certificates
//! the router serves to `acme-tls/1` handshakes, RFC 8737, see [`store::tls_alpn_dir`]).

pub mod acme;
pub mod config;

pub use config::{AcmeChallenge, TlsConfig};
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

/// The first label of the API's host name, and so a sandbox name nobody may take.
pub const API_LABEL: &str = "api";

/// The API's host name on the router: `api.<base_domain>` (lower case).
pub fn api_host(base_domain: &str) -> String {
    format!("{API_LABEL}.{}", base_domain.to_ascii_lowercase())
}

/// Refuses to create a sandbox named `api`: its production host would be `api.<base_domain>`,
/// which the router gives to nxd's own API when HTTPS is on (also if it is turned on later).
/// A sandbox of that name made before this check keeps working.
///
/// Errors: [`Error::Invalid`] with what to do instead; a state read failure.
pub async fn check_new_sandbox(
    state: &crate::state::StateStore,
    name: &crate::names::SandboxName,
    base_domain: &str,
) -> Result<(), crate::error::Error> {
    if name.as_str() != API_LABEL || state.sandbox_exists(name).await? {
        return Ok(());
    }
    Err(crate::error::Error::Invalid(format!(
        "the sandbox name {API_LABEL:?} is reserved: {} is nxd's own API over HTTPS \
         (tls.https_listen). Choose another name, e.g. {API_LABEL}-app",
        api_host(base_domain)
    )))
}

/// `<state_dir>/router/api.sock`: nxd's API for the router alone (mode 0600, nxd's user).
/// Connections on it take from `api_max_connections` but from no address's share: the router
/// counts each client's requests itself (see [`api_route`]).
pub fn api_socket(state_dir: &Path) -> PathBuf {
    state_dir.join("router").join("api.sock")
}

/// With HTTPS on, the route of `api.<base_domain>` to nxd's own API on [`api_socket`], so
/// that a remote `nx` reaches it over TLS; the router holds each client (its address, an IPv6
/// /64) to `api_max_connections_per_address` requests under way, as nxd's listener holds a
/// local one to as many connections. (`upstream` names `api_listen`, on loopback when it
/// listens on every address; the router connects to the socket.)
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
        idle: false,
        unix_socket: Some(api_socket(&config.state_dir)),
        max_requests_per_address: Some(config.api_max_connections_per_address),
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
