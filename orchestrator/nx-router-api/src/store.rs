//! The certificate store nxd writes and the router reads: `<state_dir>/tls/certs/<name>.pem`,
//! mode 0600, each the certificate chain (leaf first) followed by its private key, in PEM
//! (RFC 7468). A file is replaced whole (temp file and rename), so a reader sees the old pair
//! or the new one.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no private key")]
    NoKey { path: PathBuf },
    #[error("{path}: the certificate is not valid X.509: {message}")]
    BadCertificate { path: PathBuf, message: String },
}

/// A certificate chain and its key, as read from PEM.
#[derive(Debug)]
pub struct CertificatePair {
    /// Leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The leaf's `notAfter`, seconds since the Unix epoch.
    pub not_after: i64,
}

/// Reads a chain from `cert_file` and the key from `key_file` (they may be the same file).
pub fn read_pair(cert_file: &Path, key_file: &Path) -> Result<CertificatePair, StoreError> {
    let read = |path: &Path, e: rustls_pki_types::pem::Error| StoreError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| read(cert_file, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(cert_file, e))?;
    let leaf = chain.first().ok_or_else(|| StoreError::NoCertificate {
        path: cert_file.to_owned(),
    })?;
    let not_after = not_after(leaf).map_err(|message| StoreError::BadCertificate {
        path: cert_file.to_owned(),
        message,
    })?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => StoreError::NoKey {
            path: key_file.to_owned(),
        },
        e => read(key_file, e),
    })?;
    Ok(CertificatePair {
        chain,
        key,
        not_after,
    })
}

/// The `notAfter` of a DER certificate, seconds since the Unix epoch (RFC 5280 §4.1.2.5).
pub fn not_after(cert: &CertificateDer<'_>) -> Result<i64, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| e.to_string())?;
    Ok(parsed.validity().not_after.timestamp())
}

/// The store's file for `name` (a lower-case DNS name, checked by the caller).
pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.pem"))
}

/// Writes `name`'s chain and key (PEM text) as one 0600 file, replacing any older one whole.
pub fn save(dir: &Path, name: &str, chain_pem: &str, key_pem: &str) -> Result<PathBuf, StoreError> {
    let target = path(dir, name);
    let mut text = chain_pem.trim_end().to_owned();
    text.push('\n');
    text.push_str(key_pem);
    write_private(&target, text.as_bytes())?;
    Ok(target)
}

/// Writes `bytes` to `target` as a 0600 file (created with its directory), through a synced
/// temporary file renamed over it, so a reader sees the old file or the new one whole.
pub fn write_private(target: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(target.file_name().unwrap_or_default());
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let write = |path: &Path| {
        let path = path.to_owned();
        move |source| StoreError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write(dir))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write(&tmp))?;
    std::io::Write::write_all(&mut file, bytes).map_err(write(&tmp))?;
    file.sync_all().map_err(write(&tmp))?;
    std::fs::rename(&tmp, target).map_err(write(target))
}

/// Every `<name>.pem` in `dir` with its name; files that do not read are returned as errors
/// beside the others (one bad file does not hide the rest). A missing `dir` is empty.
pub fn load_dir(dir: &Path) -> Vec<(String, Result<CertificatePair, StoreError>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut pairs: Vec<_> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let file = e.path();
            let name = file.file_name()?.to_str()?.strip_suffix(".pem")?.to_owned();
            (!name.starts_with('.')).then(|| (name, read_pair(&file, &file)))
        })
        .collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    pairs
}

/// Whether the leaf certificate `cert` is valid for the DNS name `name` (RFC 6125 matching,
/// wildcards included, by webpki).
pub fn covers(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(server_name) = rustls_pki_types::ServerName::try_from(name) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .and_then(|cert| cert.verify_is_valid_for_subject_name(&server_name))
        .is_ok()
}

/// Where nxd puts TLS-ALPN-01 validation certificates (RFC 8737 §3: self-signed, for the name
/// being validated, with the `acmeIdentifier` extension) for the router's HTTPS listener to
/// serve to a handshake that offers only ALPN `acme-tls/1`: `<challenges_dir>/tls-alpn-01/`,
/// one `<name>.pem` each, written by [`save`] and read by [`read_pair`] like the store.
pub fn tls_alpn_dir(challenges_dir: &Path) -> PathBuf {
    challenges_dir.join("tls-alpn-01")
}

/// Whether `token` may name an HTTP-01 challenge file: base64url characters only (RFC 8555
/// §8.3), so no path can be formed from it.
pub fn is_challenge_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
