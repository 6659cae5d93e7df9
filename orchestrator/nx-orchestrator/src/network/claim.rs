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
//!
//! What the claim guards outlives nxd: a plain stop (SIGTERM, `systemctl stop nxd`, an upgrade,
//! a crash) leaves the deployments running on their links, and nx0 and the table with them. So
//! the claim has a second, lasting half stored with the network itself: nx0's alias
//! (IFLA_IFALIAS, rtnetlink(7); `ip link show nx0` prints `alias nxd state dir <path>`) names
//! the state dir whose network it is. It goes with nx0 (`nxd manager-stop`) or with the
//! namespace, never with nxd. A starting nxd of another state dir refuses, naming that state dir
//! (newcomer18 N4: one took over a stopped nxd's network, and the first's URLs served the
//! second's deployments); the same state dir takes it back (a restart keeps its deployments).
//! nx0 without an alias (made before the mark) is taken by whichever nxd starts.

use super::{NetworkError, GATEWAY_LINK};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::{Handle, LinkUnspec};
use std::io::Read;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The abstract name nxd's claim is bound to.
const NAME: &[u8] = b"nx-deployment-network";

/// What nx0's alias says before the state dir's path.
const MARK: &str = "nxd state dir ";

/// The longest alias the kernel keeps (IFALIASZ - 1, in bytes).
const MAX_ALIAS: usize = 255;

/// This nxd's claim on its network namespace; held while it runs (dropped, it is released).
/// Its lasting half, nx0's mark, is written by [`NetworkClaim::mark`].
pub struct NetworkClaim {
    /// The state dir as nx0's mark names it (canonical: [`canonical`]).
    state_dir: PathBuf,
    answering: tokio::task::JoinHandle<()>,
}

impl Drop for NetworkClaim {
    fn drop(&mut self) {
        self.answering.abort();
    }
}

impl NetworkClaim {
    /// Marks nx0 (which must exist) as this state dir's network. Errors: netlink.
    pub(super) async fn mark(&self, handle: &Handle) -> Result<(), NetworkError> {
        handle
            .link()
            .set(
                LinkUnspec::new_with_name(GATEWAY_LINK)
                    .append_extra_attribute(LinkAttribute::IfAlias(mark(&self.state_dir)))
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| NetworkError::Netlink {
                what: "naming the state dir in nx0's alias".to_owned(),
                source: Box::new(e),
            })
    }
}

fn mark(state_dir: &Path) -> String {
    format!("{MARK}{}", state_dir.display())
}

/// `state_dir` as nx0's mark names it: canonical (`/var/lib/nx/` and `/var/lib/./nx` are one
/// state dir), or as given where it does not exist (any more).
pub(super) fn canonical(state_dir: &Path) -> PathBuf {
    std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_owned())
}

/// The state dir whose network this namespace's is, as nx0's alias names it. None: no nx0, or
/// one without the mark (made before it). Errors: netlink.
pub(super) async fn owner(handle: &Handle) -> Result<Option<PathBuf>, NetworkError> {
    let link = super::attach::link_named(handle, GATEWAY_LINK)
        .await
        .map_err(|e| NetworkError::Netlink {
            what: "reading nx0's alias".to_owned(),
            source: Box::new(e),
        })?;
    Ok(link
        .into_iter()
        .flat_map(|l| l.attributes)
        .find_map(|a| match a {
            LinkAttribute::IfAlias(alias) => alias.strip_prefix(MARK).map(PathBuf::from),
            _ => None,
        }))
}

/// Binds the claim's name: while the listener is held, no nxd starts in this namespace. The
/// inner error names the process that holds it (see [`holder`]), as "another nxd" when it
/// does not say. Errors: `Io` other than the name being taken.
pub(super) fn bind() -> Result<Result<UnixListener, String>, NetworkError> {
    let address = SocketAddr::from_abstract_name(NAME)
        .map_err(NetworkError::io("naming the network's claim"))?;
    match UnixListener::bind_addr(&address) {
        Ok(listener) => Ok(Ok(listener)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(Err(
            holder(&address).unwrap_or_else(|| "another nxd".to_owned())
        )),
        Err(e) => Err(NetworkError::io("claiming the network namespace")(e)),
    }
}

/// Claims the deployments' network of this network namespace for the nxd of `state_dir`.
/// Errors: `Config` naming the nxd that holds it (pid, state dir), or the state dir nx0 names
/// when its nxd is stopped, and what to do; `Config` for a state dir path too long for nx0's
/// alias; `Io`, `Netlink`.
pub async fn claim(state_dir: &Path) -> Result<NetworkClaim, NetworkError> {
    let bound = tokio::task::spawn_blocking(bind)
        .await
        .map_err(|e| NetworkError::io("claiming the network namespace")(e.into()))??;
    let listener = bound.map_err(|holder| {
        NetworkError::Config(format!(
            "{holder} runs the deployments' network of this network namespace ({GATEWAY_LINK}, the nftables table inet nx, the links nx-<id>, their addresses, ports and uids): a second nxd beside it would take them over. Stop it first (kill its pid, then `nxd manager-stop --state-dir` its state dir), or run this nxd in a network namespace of its own (`ip netns add NAME`, then `nsenter --net=/run/netns/NAME nxd ...`: not `ip netns exec`, which mounts a /sys without cgroups)",
        ))
    })?;
    let canonical = canonical(state_dir);
    if mark(&canonical).len() > MAX_ALIAS {
        return Err(NetworkError::Config(format!(
            "the state dir {} is too long a path for nx0's alias, which names it ({MAX_ALIAS} bytes at most with {MARK:?}): give nxd a shorter state_dir",
            canonical.display()
        )));
    }
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(NetworkError::io("opening a netlink socket"))?;
    let connection = tokio::spawn(connection);
    let owner = owner(&handle).await;
    connection.abort();
    if let Some(owner) = owner?.filter(|owner| *owner != canonical) {
        return Err(NetworkError::Config(format!(
            "the deployments' network of this network namespace ({GATEWAY_LINK}, the nftables table inet nx, the links nx-<id>, their addresses, ports and uids) belongs to the nxd of state dir {owner}, which is stopped while its deployments may still run: a second nxd beside them would take them over. Start that nxd again, or stop its deployments and remove its network first (`nxd manager-stop --state-dir {owner}`), or run this nxd in a network namespace of its own (`ip netns add NAME`, then `nsenter --net=/run/netns/NAME nxd ...`: not `ip netns exec`, which mounts a /sys without cgroups)",
            owner = owner.display(),
        )));
    }
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
    Ok(NetworkClaim {
        state_dir: canonical,
        answering,
    })
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
