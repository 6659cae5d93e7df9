//! A certificate for tests: a CA made here with rcgen and a leaf it signs for the names given,
//! as PEM files (Pebble's own HTTPS, a router's `tls.cert_file`).

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::path::{Path, PathBuf};

/// The files of [`TestCertificate::write`].
pub struct TestCertificate {
    /// The CA's certificate, for a client's roots.
    pub root: PathBuf,
    /// The leaf's certificate and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCertificate {
    /// A new CA and a leaf for `names` (DNS names or IP addresses), written into `dir` as
    /// `root.pem`, `cert.pem` and `key.pem`.
    pub fn write(dir: &Path, names: &[&str]) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key"))
            .expect("test CA");
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let leaf = CertificateParams::new(names)
            .expect("params")
            .signed_by(&key, &ca)
            .expect("the leaf certificate");
        let files = Self {
            root: dir.join("root.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&files.root, ca.pem()).expect("write root");
        std::fs::write(&files.cert, leaf.pem()).expect("write cert");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }
}
