//! HTTPS through the router against plain HTTP through the same router, side by side in one
//! run (issue 13's figures): requests/s, p50 and p99 over keep-alive connections (16), and new
//! connections per second with one request each (wrk with `Connection: close`: each is a TCP
//! connect, and on HTTPS a TLS handshake, TLS 1.3 with an ECDSA P-256 certificate).
//!
//! The host has `[tls] https_listen` with a fixed certificate (made here by openssl) for the
//! sample's production name; ACME is off. wrk names the host in SNI from the URL, so it runs in
//! a mount namespace of its own whose `/etc/hosts` maps that name to loopback. All of it runs
//! inside the host's network namespace, where the router listens.

use crate::router::{print_header, print_row, run_wrk, wrk_args, Load};
use nx_testkit::Host;
use std::path::Path;
use std::process::Command;

/// A self-signed ECDSA P-256 certificate for `name` (openssl), as (cert file, key file).
fn certificate(dir: &Path, name: &str) -> anyhow::Result<(String, String)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj"])
        .arg(format!("/CN={name}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "openssl req failed");
    Ok((cert.display().to_string(), key.display().to_string()))
}

/// wrk against `url` in a mount namespace whose /etc/hosts is `hosts`, with `headers`.
fn wrk_named(
    hosts: &Path,
    url: &str,
    headers: &[&str],
    connections: usize,
    secs: u64,
) -> anyhow::Result<Load> {
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/hosts && exec wrk "$@""#)
        .arg(hosts)
        .args(wrk_args(connections, secs));
    for header in headers {
        command.args(["-H", header]);
    }
    command.arg(url);
    run_wrk(command)
}

/// Starts its own host (HTTPS on), pushes and promotes the sample, and prints the table.
pub fn run(secs: u64) -> anyhow::Result<()> {
    // Not under /tmp: the router's unit has a private /tmp.
    let dir = tempfile::Builder::new()
        .prefix("nx-bench-tls-")
        .tempdir_in("/var/tmp")?;
    let name = format!("bench-tls.{}", nx_testkit::BASE_DOMAIN);
    let (cert, key) = certificate(dir.path(), &name)?;
    let https_port = nx_testkit::free_port();
    let host = Host::start_with(&format!(
        "[tls]\nhttps_listen = \"127.0.0.1:{https_port}\"\nacme = false\ncert_file = {cert:?}\nkey_file = {key:?}\n"
    ));
    let id = host.push_sample("bench-tls", &["--tasks", "1024"]);
    host.nx_json(&["promote", "bench-tls", &id]);
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, format!("127.0.0.1 {name} localhost\n"))?;
    let http_url = format!("http://{name}:{}/", host.router.port());
    let https_url = format!("https://{name}:{https_port}/");
    let close = ["Connection: close"];
    let (http, https, http_new, https_new) = host.netns.run(|| {
        anyhow::Ok((
            wrk_named(&hosts, &http_url, &[], 16, secs)?,
            wrk_named(&hosts, &https_url, &[], 16, secs)?,
            wrk_named(&hosts, &http_url, &close, 16, secs)?,
            wrk_named(&hosts, &https_url, &close, 16, secs)?,
        ))
    })?;
    println!(
        "\nHTTPS against plain HTTP through the same router ({secs} s of wrk each, 16 connections, GET / of the sample; ratio: req/s over HTTP's)\n"
    );
    print_header("keep-alive");
    print_row("HTTP", &http, &http);
    print_row("HTTPS", &https, &http);
    println!();
    print_header("new conn/req");
    print_row("HTTP", &http_new, &http_new);
    print_row("HTTPS", &https_new, &http_new);
    println!(
        "\nNew TLS connections (handshake + one request): {:.0}/s, {:.2}x plain HTTP's new connections",
        https_new.per_sec,
        https_new.per_sec / http_new.per_sec
    );
    Ok(())
}
