//! `[router]` in nxd's config, and the settings file nxd writes for the router process.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// `[router]`: timeouts, limits and trust of the reverse proxy. Every field has a default.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Peers (CIDRs, e.g. a CDN's published ranges) whose `X-Forwarded-For`, `X-Forwarded-Proto`,
    /// `X-Forwarded-Host`, `Forwarded` (RFC 7239), `X-Real-IP` and `X-Request-Id` are kept and
    /// appended to. From any other peer those headers are replaced.
    pub trusted_proxies: Vec<IpNet>,
    /// A request head (request line and headers) must arrive within this many seconds of its
    /// first byte; a slower client is disconnected.
    pub head_timeout_secs: u64,
    /// An idle keep-alive connection (no request in progress) is closed after this many seconds.
    /// (A new connection that sends nothing is closed after `head_timeout_secs`.)
    pub idle_timeout_secs: u64,
    /// Connecting to a deployment may take this many seconds (then 502).
    pub connect_timeout_secs: u64,
    /// The longest wait for the next bytes from a deployment: its response head, or the next
    /// bytes of a streamed body or WebSocket (like nginx's `proxy_read_timeout`). Server-sent
    /// events must send something (a comment line) within this interval.
    pub upstream_read_timeout_secs: u64,
    /// The largest request body, in MiB (413 beyond it).
    pub max_body_mb: u64,
    /// Open client connections beyond this are closed as soon as they are accepted; those
    /// already open keep working. Also the most requests under way to deployments (each holds
    /// an upstream connection; an HTTP/2 stream is one): 503 beyond. The router holds it to
    /// what its open files hold.
    pub max_connections: usize,
    /// Of those, one client's (an IPv4 address, an IPv6 /64): its further connections are closed
    /// as soon as they are accepted, and its further requests to deployments answered 429, so
    /// that one client cannot take every connection.
    pub max_connections_per_address: usize,
    /// The share of requests written to the access log, 0.0 to 1.0; responses of 500 and up
    /// are always logged.
    pub access_log_sample: f64,
    /// The most the router's log (`<state_dir>/router/router.log` and its rotated files
    /// together) holds, in MiB: it rotates like a deployment's log, at
    /// `log_max_mb / ([logs] keep + 1)`. Read by nxd for the router's unit (its log writer),
    /// not by the proxy.
    pub log_max_mb: u64,
    /// The router's unit's `MemoryMax`, in MiB (0: none): past it the kernel ends the router
    /// and systemd starts it again (`Restart=always`), rather than it taking the host's memory
    /// (newcomer17 N5: 1.5 GB at 11,000 held connections). Read by nxd for the router's unit,
    /// not by the proxy.
    pub memory_max_mb: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            head_timeout_secs: 10,
            idle_timeout_secs: 60,
            connect_timeout_secs: 5,
            upstream_read_timeout_secs: 300,
            max_body_mb: 1024,
            max_connections: 16384,
            max_connections_per_address: 512,
            access_log_sample: 1.0,
            log_max_mb: 100,
            memory_max_mb: 2048,
        }
    }
}

impl RouterConfig {
    /// Refuses zero timeouts, limits and log size, and a sample share outside 0..=1.
    pub fn validate(&self) -> Result<(), String> {
        let timeouts = [
            ("head_timeout_secs", self.head_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("connect_timeout_secs", self.connect_timeout_secs),
            (
                "upstream_read_timeout_secs",
                self.upstream_read_timeout_secs,
            ),
        ];
        if let Some((name, _)) = timeouts.iter().find(|(_, v)| *v == 0) {
            return Err(format!("router.{name} must be at least 1"));
        }
        if self.max_connections == 0
            || self.max_connections_per_address == 0
            || self.max_body_mb == 0
            || self.log_max_mb == 0
        {
            return Err(
                "router.max_connections, router.max_connections_per_address, router.max_body_mb and router.log_max_mb must be at least 1"
                    .into(),
            );
        }
        if !(0.0..=1.0).contains(&self.access_log_sample) {
            return Err(format!(
                "router.access_log_sample ({}) must be between 0.0 and 1.0",
                self.access_log_sample
            ));
        }
        Ok(())
    }
}

/// What the router process is started with (`nx-router --settings <file>`, JSON): written by
/// nxd into `<dir>/settings.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouterSettings {
    /// The plain HTTP listener (HTTP/1.1, and HTTP/2 with prior knowledge).
    pub listen: SocketAddr,
    /// For the error pages' hints.
    pub base_domain: String,
    /// The router's own directory: `control.sock`, `routes.json`, `upgrade.sock`.
    pub dir: PathBuf,
    /// HTTPS, when `tls.https_listen` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RouterTls>,
    /// nxd's socket that starts an idle deployment (see [`crate::wake`]); none: an idle
    /// route answers 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_socket: Option<PathBuf>,
    #[serde(flatten)]
    pub config: RouterConfig,
}

/// The router's HTTPS side, from `[tls]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouterTls {
    /// The HTTPS listener (ALPN: `h2`, `http/1.1`).
    pub listen: SocketAddr,
    /// The ACME certificates, `<name>.pem` (see [`crate::store`]); re-read on
    /// `POST /v1/certificates`.
    pub certs_dir: PathBuf,
    /// HTTP-01 key authorizations, one file per token.
    pub challenges_dir: PathBuf,
    /// A fixed certificate chain and key (PEM), served for the names it covers.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// 308 from HTTP to HTTPS for names that have a certificate.
    pub redirect_http: bool,
    /// `Strict-Transport-Security` on HTTPS responses.
    pub hsts: bool,
}

impl RouterSettings {
    /// The unix socket nxd sends tables to (mode 0600).
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// The last table the router received, kept for its own restarts.
    pub fn table_file(&self) -> PathBuf {
        self.dir.join("routes.json")
    }

    /// The settings file itself.
    pub fn file(dir: &Path) -> PathBuf {
        dir.join("settings.json")
    }
}
