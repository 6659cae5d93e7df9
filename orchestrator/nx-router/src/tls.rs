//! The router's certificates: ACME certificates by name from the store nxd writes
//! (`nx_router_api::store`), swapped whole on `POST /v1/certificates`, and the fixed
//! `tls.cert_file`, served for the names it covers (checked by webpki, wildcards included).
//!
//! [`Certificates`] is the rustls resolver of the HTTPS listener: it picks by SNI, so a name
//! the router has no certificate for gets a failed handshake, not someone else's certificate.

use arc_swap::ArcSwap;
use nx_router_api::store::{self, CertificatePair};
use nx_router_api::{normalize_host, RouterTls};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// One fixed certificate and the leaf to check names against.
#[derive(Debug)]
struct Fixed {
    key: Arc<CertifiedKey>,
    leaf: CertificateDer<'static>,
}

#[derive(Debug)]
pub struct Certificates {
    certs_dir: PathBuf,
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

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
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
