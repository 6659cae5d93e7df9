//! Let's Encrypt's test ACME server, Pebble (Debian's `pebble`), with `pebble-challtestsrv` as
//! its DNS server answering 127.0.0.1 for every name: both on free loopback ports, started by
//! the test and killed when dropped. Pebble validates HTTP-01 on `http_port` (the router's
//! HTTP listener) and TLS-ALPN-01 on `tls_port`.
//!
//! Pebble's own HTTPS certificate comes from a test CA ([`TestCertificate`]: `api_root`, for
//! `tls.acme_ca_roots`); the root of the certificates Pebble issues is random per run
//! ([`Pebble::issuing_root`]).

use crate::certs::TestCertificate;
use crate::free_port;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Pebble {
    /// The ACME directory URL.
    pub directory: String,
    /// Where Pebble's ACME API listens (the directory's port, on the test's loopback).
    pub listen: SocketAddr,
    /// The root (PEM file) of Pebble's own HTTPS certificate.
    pub api_root: PathBuf,
    management: SocketAddr,
    dns_management: SocketAddr,
    children: Vec<Child>,
    pub dir: tempfile::TempDir,
    http: reqwest::blocking::Client,
}

impl Pebble {
    /// Starts challtestsrv and Pebble; waits until Pebble's directory answers.
    pub fn start(http_port: u16, tls_port: u16) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("nx-pebble-")
            .tempdir_in("/var/tmp")
            .expect("pebble dir");
        let own = TestCertificate::write(dir.path(), &["localhost", "127.0.0.1"]);
        let api_root = own.root;

        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let (listen, management) = (addr(free_port()), addr(free_port()));
        let (dns, dns_management) = (addr(free_port()), addr(free_port()));
        let config = serde_json::json!({"pebble": {
            "listenAddress": listen.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": own.cert,
            "privateKey": own.key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        let config_file = dir.path().join("pebble.json");
        std::fs::write(&config_file, config.to_string()).expect("write config");
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).expect("log file");
        let challtestsrv = Command::new("pebble-challtestsrv")
            .args([
                "-dns01",
                &dns.to_string(),
                "-management",
                &dns_management.to_string(),
            ])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("pebble-challtestsrv (orchestrator/install-deps.sh installs pebble)");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_file)
            .args(["-dnsserver", &dns.to_string()])
            // No sleeps before validation, no random nonce rejections: faster, deterministic.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdin(Stdio::null())
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("pebble (orchestrator/install-deps.sh installs it)");
        let root = reqwest::Certificate::from_pem(&std::fs::read(&api_root).expect("root"))
            .expect("root PEM");
        let http = reqwest::blocking::Client::builder()
            .add_root_certificate(root)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let pebble = Self {
            directory: format!("https://localhost:{}/dir", listen.port()),
            listen,
            api_root,
            management,
            dns_management,
            children: vec![challtestsrv, pebble],
            dir,
            http,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while pebble
            .http
            .get(&pebble.directory)
            .send()
            .map_or(true, |r| !r.status().is_success())
        {
            assert!(
                Instant::now() < deadline,
                "Pebble did not answer at {}:\n{}",
                pebble.directory,
                pebble.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pebble
    }

    /// Pebble's and challtestsrv's output.
    pub fn log(&self) -> String {
        ["pebble.log", "pebble.err", "challtestsrv.err"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The root (PEM) of the certificates Pebble issues (random per run).
    pub fn issuing_root(&self) -> String {
        self.http
            .get(format!(
                "https://localhost:{}/roots/0",
                self.management.port()
            ))
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.text())
            .expect("Pebble's issuing root")
    }

    /// Makes challtestsrv answer `host`'s A queries with `ip` (instead of 127.0.0.1).
    pub fn set_a_record(&self, host: &str, ip: &str) {
        self.http
            .post(format!("http://{}/add-a", self.dns_management))
            .json(&serde_json::json!({"host": format!("{host}."), "addresses": [ip]}))
            .send()
            .and_then(|r| r.error_for_status())
            .expect("challtestsrv add-a");
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
