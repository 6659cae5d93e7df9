//! Uploads: a 50 MiB binary to a running deployment through `sftp` (OpenSSH's client against
//! nxd's SFTP server) and through `nx push` (HTTP), side by side, on one host. Every round
//! uploads new bytes (a random tail), so neither path finds them stored already; the row
//! "deploy only" is `nx push` of bytes the host has, to tell upload from deployment.

use nx_testkit::Host;
use rand::RngCore;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const MIB: usize = 50;

pub struct Figures {
    pub nx_push: Vec<Duration>,
    pub sftp: Vec<Duration>,
    pub deploy_only: Vec<Duration>,
}

/// The sample app padded with random bytes to `MIB` MiB (an ELF still: the tail is ignored).
fn fresh_binary(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let mut bytes = std::fs::read(nx_testkit::sample_app())?;
    let pad = (MIB << 20).saturating_sub(bytes.len());
    let mut tail = vec![0u8; pad];
    rand::thread_rng().fill_bytes(&mut tail);
    bytes.extend_from_slice(&tail);
    let path = dir.join(name);
    std::fs::write(&path, bytes)?;
    // `nx push` checks that it is executable, as for any binary.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(path)
}

fn check(what: &str, out: std::process::Output) -> anyhow::Result<()> {
    anyhow::ensure!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `sftp -b -` with `put <file>`: returns once the upload is deployed (nxd answers the close
/// of the file when the deployment is ready).
fn sftp_put(key: &Path, known_hosts: &Path, port: u16, file: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new("sftp")
        .args([
            "-q",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
        ])
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .arg("-i")
        .arg(key)
        .args(["-P", &port.to_string(), "-b", "-", "up@127.0.0.1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    writeln!(child.stdin.take().expect("stdin"), "put {}", file.display())?;
    check("sftp put", child.wait_with_output()?)
}

/// `rounds` uploads each way, on a host with SFTP on `port`.
pub fn run_rounds(host: &Host, port: u16, rounds: usize) -> anyhow::Result<Figures> {
    let dir = host.path("bench-uploads");
    std::fs::create_dir_all(&dir)?;
    host.nx_json(&["sandbox", "create", "up"]);
    let key = dir.join("key");
    check(
        "ssh-keygen",
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .output()?,
    )?;
    host.nx_json(&[
        "keys",
        "add",
        "up",
        key.with_extension("pub").to_str().expect("utf-8"),
    ]);
    let host_key = host.nx_json(&["keys", "host"]);
    let known_hosts = dir.join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!(
            "[127.0.0.1]:{port} {}\n",
            host_key["public_key"].as_str().unwrap_or_default()
        ),
    )?;
    let mut figures = Figures {
        nx_push: Vec::new(),
        sftp: Vec::new(),
        deploy_only: Vec::new(),
    };
    for round in 0..rounds {
        let file = fresh_binary(&dir, &format!("http-{round}"))?;
        let started = Instant::now();
        let pushed = host.nx_json(&["push", file.to_str().expect("utf-8"), "--sandbox", "up"]);
        figures.nx_push.push(started.elapsed());
        anyhow::ensure!(pushed["uploaded"] == true, "nx push found the bytes stored");
        let id = pushed["deployment"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        host.nx_json(&["rm", &id]);

        let started = Instant::now();
        let again = host.nx_json(&["push", file.to_str().expect("utf-8"), "--sandbox", "up"]);
        figures.deploy_only.push(started.elapsed());
        host.nx_json(&["rm", again["deployment"]["id"].as_str().unwrap_or_default()]);

        let file = fresh_binary(&dir, &format!("sftp-{round}"))?;
        let started = Instant::now();
        sftp_put(&key, &known_hosts, port, &file)?;
        figures.sftp.push(started.elapsed());
        let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
            host.path(&format!("uploads/up/sftp-{round}.result")),
        )?)?;
        anyhow::ensure!(
            result["ok"] == true,
            "the SFTP upload did not deploy: {result}"
        );
        host.nx_json(&["rm", result["deployment"].as_str().unwrap_or_default()]);
        std::fs::remove_file(&file)?;
        std::fs::remove_file(dir.join(format!("http-{round}")))?;
    }
    Ok(figures)
}
