//! One nxd per network namespace runs the deployments' network: the bridge `nx0`, the
//! nftables table `inet nx`, the links `nx-<id>` and the addresses of `[network] subnet` have
//! the same names for every nxd, so a second one beside a running one (another state dir, other
//! ports: newcomer17 N13, the quick start's "second try") deleted the first's links and table,
//! gave its deployments the first's addresses, ports and uids, and the first's URLs served the
//! second's deployments. nxd therefore claims the namespace before it changes anything of the
//! host: it binds a Unix socket with an abstract name (unix(7): abstract names belong to the
//! network namespace and go with the process, kill -9 too), and answers whoever connects with
//! its pid and state dir, which a second nxd names in its refusal. Any local process may bind
//! an abstract name: a holder of another uid than nxd's (SO_PEERCRED, unix(7)) is named by the
//! kernel's pid and uid, not by what it answers (review17 #12).

use super::NetworkError;
use std::io::Read;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

/// The abstract name nxd's claim is bound to.
const NAME: &[u8] = b"nx-deployment-network";

/// This nxd's claim on its network namespace; held while it runs (dropped, it is released).
pub struct NetworkClaim {
    answering: tokio::task::JoinHandle<()>,
}

impl Drop for NetworkClaim {
    fn drop(&mut self) {
        self.answering.abort();
    }
}

/// Claims the deployments' network of this network namespace for the nxd of `state_dir`.
/// Errors: `Config` naming the nxd that holds it (pid, state dir) and what to do; `Io`.
pub async fn claim(state_dir: &Path) -> Result<NetworkClaim, NetworkError> {
    let address = SocketAddr::from_abstract_name(NAME)
        .map_err(NetworkError::io("naming the network's claim"))?;
    let listener = match UnixListener::bind_addr(&address) {
        Ok(listener) => listener,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let holder = tokio::task::spawn_blocking(move || holder(&address))
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| "another nxd".to_owned());
            return Err(NetworkError::Config(format!(
                "{holder} runs the deployments' network of this network namespace ({}, the nftables table inet nx, the links nx-<id>, their addresses, ports and uids): a second nxd beside it would take them over. Stop it first (kill its pid, then `nxd manager-stop --state-dir` its state dir), or run this nxd in a network namespace of its own (`ip netns exec`)",
                super::GATEWAY_LINK
            )));
        }
        Err(e) => return Err(NetworkError::io("claiming the network namespace")(e)),
    };
    listener
        .set_nonblocking(true)
        .map_err(NetworkError::io("claiming the network namespace"))?;
    let listener = tokio::net::UnixListener::from_std(listener)
        .map_err(NetworkError::io("claiming the network namespace"))?;
    let me = format!(
        "the nxd of pid {} and state dir {}\n",
        std::process::id(),
        state_dir.display()
    );
    let answering = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(me.as_bytes()).await;
        }
    });
    Ok(NetworkClaim { answering })
}

/// Who holds the claim at `address`: a process of nxd's own uid by what it says of itself (one
/// line of at most 512 bytes, read within a second), any other by its pid and uid as the
/// kernel gives them.
fn holder(address: &SocketAddr) -> Option<String> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let stream = UnixStream::connect_addr(address).ok()?;
    let peer = getsockopt(&stream, PeerCredentials).ok()?;
    if peer.uid() != nix::unistd::geteuid().as_raw() {
        return Some(format!(
            "a process of uid {} (pid {}), not an nxd of this user,",
            peer.uid(),
            peer.pid()
        ));
    }
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut said = [0u8; 512];
    let n = (&stream).read(&mut said).ok()?;
    let line = String::from_utf8_lossy(&said[..n]);
    let line = line.lines().next().unwrap_or_default().trim();
    (!line.is_empty()).then(|| line.to_owned())
}
