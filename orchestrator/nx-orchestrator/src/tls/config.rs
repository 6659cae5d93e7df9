//! `[tls]` in nxd's config: HTTPS on the router, with certificates from ACME (RFC 8555) and/or
//! one fixed certificate.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Let's Encrypt's production directory (<https://letsencrypt.org/docs/acme-protocol-updates/>).
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// `[tls]`. HTTPS is off unless `https_listen` is set; every other field has a default.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The router's HTTPS listener (HTTP/2 and HTTP/1.1 through ALPN), e.g. `0.0.0.0:443`.
    /// Unset: no HTTPS.
    pub https_listen: Option<SocketAddr>,
    /// Ask the ACME server for certificates of the production hosts (`<sandbox>.<base_domain>`)
    /// and custom domains that `cert_file` does not cover.
    pub acme: bool,
    /// The ACME server's directory URL (RFC 8555 §7.1.1).
    pub acme_directory_url: String,
    /// How the ACME server checks that this host serves a name: `http-01` (RFC 8555 §8.3, on
    /// the router's HTTP listener: port 80 must reach it) or `tls-alpn-01` (RFC 8737, on the
    /// HTTPS listener: port 443 alone is enough).
    pub acme_challenge: AcmeChallenge,
    /// The contact address of the ACME account (optional at Let's Encrypt).
    pub acme_email: Option<String>,
    /// A PEM file whose (first) certificate is the root trusted for the ACME server itself,
    /// instead of the system's roots (e.g. a test server's, Pebble's). Unset: the system's roots.
    pub acme_ca_roots: Option<PathBuf>,
    /// A certificate is renewed when it expires within this many days.
    pub acme_renew_before_days: u32,
    /// How often, in seconds, nxd looks for names that need a certificate or a renewal (it
    /// also looks at once whenever the route table changes). Failed orders back off from 60 s
    /// doubling to 1 day.
    pub acme_check_interval_secs: u64,
    /// A fixed certificate chain (PEM), served for the names it covers: a Cloudflare Origin CA
    /// certificate, or a wildcard managed elsewhere. Goes with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The private key (PEM) of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Plain HTTP requests for a name that has a certificate are redirected to HTTPS (308);
    /// ACME's HTTP-01 challenges are still answered on HTTP.
    pub redirect_http: bool,
    /// HTTPS responses carry `Strict-Transport-Security: max-age=31536000` (RFC 6797).
    pub hsts: bool,
}

/// `tls.acme_challenge`: the ACME challenge type nxd answers (RFC 8555 §8, RFC 8737).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// The key authorization at `http://<name>/.well-known/acme-challenge/<token>`.
    #[serde(rename = "http-01")]
    Http01,
    /// A self-signed certificate with the `acmeIdentifier` extension, served on the HTTPS
    /// listener to a handshake that offers only ALPN `acme-tls/1`.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            https_listen: None,
            acme: true,
            acme_directory_url: LETS_ENCRYPT.into(),
            acme_challenge: AcmeChallenge::Http01,
            acme_email: None,
            acme_ca_roots: None,
            acme_renew_before_days: 30,
            acme_check_interval_secs: 3600,
            cert_file: None,
            key_file: None,
            redirect_http: true,
            hsts: false,
        }
    }
}

impl TlsConfig {
    /// Refuses a `cert_file` without `key_file` (or the reverse), a zero check interval and
    /// an ACME directory that is not an https URL (http only for loopback test servers).
    pub fn validate(&self) -> Result<(), String> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("tls.cert_file and tls.key_file go together: set both or neither".into());
        }
        if self.acme_check_interval_secs == 0 {
            return Err("tls.acme_check_interval_secs must be at least 1".into());
        }
        if !self.acme_directory_url.starts_with("https://") {
            return Err(format!(
                "tls.acme_directory_url {:?} must be an https:// URL (RFC 8555 §6.1)",
                self.acme_directory_url
            ));
        }
        Ok(())
    }

    /// Whether nxd orders certificates: HTTPS on and `acme` set.
    pub fn acme_enabled(&self) -> bool {
        self.https_listen.is_some() && self.acme
    }
}
