//! The router's certificates: ACME certificates by name from the store nxd writes
//! (`nx_router_api::store`), swapped whole on `POST /v1/certificates`, and the fixed
//! `tls.cert_file`, served for the names it covers (checked by webpki, wildcards included).
//!
//! [`Certificates`] is the rustls resolver of the HTTPS listener: it picks by SNI, so a name
//! the router has no certificate for gets a failed handshake, not someone else's certificate.
//! A handshake that offers only ALPN `acme-tls/1` is an ACME TLS-ALPN-01 validation (RFC 8737):
//! it gets the validation certificate nxd put up for that name, if any, and nothing else.

use arc_swap::ArcSwap;
use nx_router_api::store::{self, CertificatePair};
use nx_router_api::{normalize_host, RouterTls};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// The ALPN protocol id of TLS-ALPN-01 validation handshakes (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The HTTPS listener's TLS: TLS 1.2 and 1.3 (ring, as Pingora's own listener), certificates by
/// SNI from `certs`, ALPN `h2`, `http/1.1` and `acme-tls/1` (in that order of preference;
/// Pingora's own listener takes a fixed list without the last).
pub fn acceptor(certs: Arc<Certificates>) -> pingora::listeners::tls::Acceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    pingora::listeners::tls::Acceptor::from_server_config(Arc::new(config))
}

/// One fixed certificate and the leaf to check names against.
#[derive(Debug)]
struct Fixed {
    key: Arc<CertifiedKey>,
    leaf: CertificateDer<'static>,
}

#[derive(Debug)]
pub struct Certificates {
    certs_dir: PathBuf,
    /// TLS-ALPN-01 validation certificates, read when a validation handshake comes.
    alpn_dir: PathBuf,
    acme: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    fixed: Option<Fixed>,
}

/// A rustls signing key for a stored pair (ring's provider, as Pingora's listener uses).
fn certified(pair: CertificatePair) -> anyhow::Result<Arc<CertifiedKey>> {
    let provider = rustls::crypto::ring::default_provider();
    let key = provider
        .key_provider
        .load_private_key(pair.key)
        .map_err(|e| anyhow::anyhow!("unusable private key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(pair.chain, key)))
}

impl Certificates {
    /// Reads the fixed certificate (an error if set and unreadable: the router does not start
    /// half-configured) and the store.
    pub fn load(tls: &RouterTls) -> anyhow::Result<Self> {
        let fixed = match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => {
                let pair = store::read_pair(cert, key)?;
                let leaf = pair.chain[0].clone();
                let key = certified(pair)
                    .map_err(|e| anyhow::anyhow!("tls.key_file {}: {e}", key.display()))?;
                tracing::info!(cert_file = %cert.display(), "fixed certificate loaded");
                Some(Fixed { key, leaf })
            }
            _ => None,
        };
        let certs = Self {
            certs_dir: tls.certs_dir.clone(),
            alpn_dir: store::tls_alpn_dir(&tls.challenges_dir),
            acme: ArcSwap::default(),
            fixed,
        };
        certs.reload();
        Ok(certs)
    }

    /// Re-reads the store and swaps it in whole; a file that does not read is logged and
    /// skipped. Answers how many certificates are served.
    pub fn reload(&self) -> usize {
        let mut by_name = HashMap::new();
        for (name, pair) in store::load_dir(&self.certs_dir) {
            match pair.map_err(anyhow::Error::from).and_then(certified) {
                Ok(key) => {
                    by_name.insert(name, key);
                }
                Err(e) => tracing::warn!(name, error = %e, "stored certificate skipped"),
            }
        }
        let count = by_name.len();
        self.acme.store(Arc::new(by_name));
        tracing::info!(certificates = count, "certificates loaded");
        count
    }

    /// The certificate for a host name (any case, port or trailing dot allowed).
    pub fn find(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let name = normalize_host(host);
        if let Some(key) = self.acme.load().get(&name) {
            return Some(key.clone());
        }
        self.fixed
            .as_ref()
            .filter(|f| store::covers(&f.leaf, &name))
            .map(|f| f.key.clone())
    }
}

impl Certificates {
    /// The TLS-ALPN-01 validation certificate nxd put up for `sni`, if any (read from its
    /// file: validations are rare, and the file comes and goes with the order).
    fn validation(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let name = normalize_host(sni);
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            || name.starts_with('.')
        {
            return None;
        }
        let file = store::path(&self.alpn_dir, &name);
        let pair = store::read_pair(&file, &file).ok()?;
        certified(pair)
            .inspect_err(|e| tracing::warn!(name, error = %e, "TLS-ALPN-01 certificate unusable"))
            .ok()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let validation = hello
            .alpn()
            .is_some_and(|mut offered| offered.all(|p| p == ACME_TLS_ALPN));
        if validation {
            // RFC 8737 §3: the validation certificate only to a client offering only acme-tls/1.
            return hello.server_name().and_then(|name| self.validation(name));
        }
        let found = hello.server_name().and_then(|name| self.find(name));
        if found.is_none() {
            tracing::debug!(sni = ?hello.server_name(), "no certificate for this name: handshake refused");
        }
        found
    }
}

/// What the plain HTTP listener does for HTTPS: ACME HTTP-01 answers and the redirect.
#[derive(Debug)]
pub struct HttpSide {
    pub certs: Arc<Certificates>,
    pub settings: RouterTls,
}

/// RFC 8555 §8.3's path prefix for HTTP-01.
const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// What an HTTP request gets instead of being proxied.
pub enum Answer {
    /// 200 with the key authorization (text), or 404 when there is no such token.
    Challenge(Option<String>),
    /// 308 to this `https://` URL.
    Redirect(String),
}

impl HttpSide {
    /// The answer for a plain HTTP request to `host` at `path_and_query`, if it is not proxied.
    pub fn answer(&self, host: &str, path_and_query: &str) -> Option<Answer> {
        if let Some(token) = path_and_query.strip_prefix(CHALLENGE_PREFIX) {
            let text = store::is_challenge_token(token)
                .then(|| std::fs::read_to_string(self.settings.challenges_dir.join(token)).ok())
                .flatten();
            return Some(Answer::Challenge(text));
        }
        if !self.settings.redirect_http || self.certs.find(host).is_none() {
            return None;
        }
        let name = normalize_host(host);
        let port = match self.settings.listen.port() {
            443 => String::new(),
            port => format!(":{port}"),
        };
        Some(Answer::Redirect(format!(
            "https://{name}{port}{path_and_query}"
        )))
    }
}
