//! Forgetting a removed deployment's connections. The host's connection tracking keeps an
//! entry per flow after both ends are gone (TCP up to 5 days established and 2 minutes in
//! TIME_WAIT, UDP 30 s, or 120 s once it saw traffic both ways: `nf_conntrack_*_timeout*` in
//! the kernel's nf_conntrack-sysctl.txt), and the firewall accepts a packet of a tracked flow
//! (`ct state established`) before it looks at who sends it. A new deployment given the same
//! address could otherwise send within a flow of its predecessor's, e.g. a UDP one to another
//! sandbox's service that the predecessor's sandbox was allowed to reach. So when a
//! deployment's slot is freed, every entry with its address goes: as the original source (its
//! own connections, masqueraded or not) and as the reply source (connections to it, DNATed
//! ones too), with conntrack-tools' `conntrack -D` (conntrack(8)), as Kubernetes does for a
//! removed service address.

use super::NetworkError;
use std::net::IpAddr;

/// Checks that `conntrack` runs (`conntrack --version`), for nxd's start: without it every
/// removal (`nx rm`, `nx sandbox rm`, preview expiry) would fail after its unit was gone.
/// Errors: `conntrack` missing or failing, with the package to install.
pub async fn check() -> Result<(), NetworkError> {
    let out = tokio::process::Command::new("conntrack")
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(cannot_run)?;
    if out.status.success() {
        return Ok(());
    }
    Err(NetworkError::Conntrack(format!(
        "`conntrack --version` failed ({}): {}; {INSTALL}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// What to do when `conntrack` is missing.
const INSTALL: &str = "install conntrack (Debian: apt-get install conntrack; Nix: conntrack-tools)";

fn cannot_run(e: std::io::Error) -> NetworkError {
    NetworkError::Conntrack(format!(
        "nxd forgets a removed deployment's connections with conntrack, and cannot run it \
         ({e}): {INSTALL}"
    ))
}

/// Deletes every tracked connection from or to `address` (see the module's docs); how many.
/// Needs CAP_NET_ADMIN and `conntrack` (Debian's and Nix's `conntrack-tools`).
/// Errors: `conntrack` missing or refused. Fail point `network::conntrack` (`return`): fails
/// as if `conntrack` were missing.
pub async fn forget(address: IpAddr) -> Result<u32, NetworkError> {
    fail::fail_point!("network::conntrack", |_| Err(cannot_run(
        std::io::ErrorKind::NotFound.into()
    )));
    // Each side is a process of its own (tens of ms under load): both at once.
    let (from, to) = tokio::join!(
        delete(address, "--orig-src"),
        delete(address, "--reply-src")
    );
    Ok(from? + to?)
}

/// `conntrack --delete` of the entries whose `side` (`--orig-src`, `--reply-src`) is
/// `address`; how many.
async fn delete(address: IpAddr, side: &str) -> Result<u32, NetworkError> {
    let family = match address {
        IpAddr::V4(_) => "ipv4",
        IpAddr::V6(_) => "ipv6",
    };
    let out = tokio::process::Command::new("conntrack")
        .args(["--delete", "--family", family, side, &address.to_string()])
        .stdout(std::process::Stdio::null())
        .output()
        .await
        .map_err(cannot_run)?;
    let said = String::from_utf8_lossy(&out.stderr);
    // It exits with 1 when nothing matched: the summary line tells that from an error.
    flows_deleted(&said).ok_or_else(|| {
        NetworkError::Conntrack(format!(
            "conntrack could not forget the connections of {address}: {}",
            said.trim()
        ))
    })
}

/// The count in conntrack's summary line, "conntrack v1.4.7 (conntrack-tools): N flow
/// entries have been deleted."; None when it said something else (an error).
fn flows_deleted(stderr: &str) -> Option<u32> {
    stderr.lines().find_map(|line| {
        let (_, summary) = line.split_once("): ")?;
        summary
            .strip_suffix(" flow entries have been deleted.")?
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_summary_line_gives_the_count() {
        let said = "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been deleted.\n";
        assert_eq!(super::flows_deleted(said), Some(3));
        assert_eq!(
            super::flows_deleted("conntrack v1.4.7 (conntrack-tools): Operation not permitted\n"),
            None
        );
    }
}
