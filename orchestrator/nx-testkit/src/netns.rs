//! Network namespaces for test hosts: every `Host` runs nxd (and so its manager, its
//! deployments, its bridge and its firewall table) in a network namespace of its own, so that
//! parallel hosts never share an interface or a rule and nothing touches the machine's real
//! network. The test process reaches the host's API and router through forwarders on its own
//! loopback, at the same address nxd listens on inside (and nxd a server the test runs, such
//! as an ACME server, through a forwarder back).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A network namespace held open by a file descriptor; it ends when the last holder (this or a
/// process in it) is gone.
pub struct Netns {
    fd: OwnedFd,
}

impl Netns {
    /// A fresh namespace with its loopback up.
    pub fn new() -> Arc<Self> {
        let fd = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET): tests need root");
            OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net").expect("own netns"))
        })
        .join()
        .expect("netns thread");
        let ns = Arc::new(Self { fd });
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Holds the network namespace process `pid` is in (`/proc/<pid>/ns/net`): the kernel
    /// keeps it, with its devices, while this is held, also after the process is gone.
    /// Errors: the process is gone (or not visible).
    pub fn of_process(pid: u32) -> std::io::Result<Arc<Self>> {
        let file = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
        Ok(Arc::new(Self {
            fd: OwnedFd::from(file),
        }))
    }

    /// The namespace's inode number: two handles on one namespace have the same.
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
            .expect("stat the namespace's fd")
            .ino()
    }

    /// Moves the calling thread into this namespace (for good: use a thread of its own).
    pub fn enter(&self) {
        nix::sched::setns(self.fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("setns into the test host's network namespace");
    }

    /// Runs `f` on a thread inside this namespace: sockets it opens live there.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter();
                f()
            })
            .join()
            .expect("thread in the test host's namespace")
        })
    }

    /// Whether the calling thread is in this namespace (`Self::enter`, `Self::run`).
    pub fn holds_this_thread(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/thread-self/ns/net").is_ok_and(|m| m.ino() == self.inode())
    }

    /// A command that runs inside this namespace. Called from a thread inside it, a plain
    /// command: std spawns it with posix_spawn (vfork), as a benchmark's floor is spawned;
    /// from elsewhere, setns(2) runs between fork and exec, and fork copies this process's
    /// page tables first (a bigger test process takes longer).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        if self.holds_this_thread() {
            return cmd;
        }
        let fd = self.fd.as_raw_fd();
        // SAFETY: setns is a plain system call, safe between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if nix::libc::setns(fd, nix::libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        cmd
    }

    /// Runs iproute2's `ip` inside this namespace and asserts it succeeded.
    pub fn ip(&self, args: &[&str]) {
        let out = self
            .command("ip")
            .args(args)
            .output()
            .expect("ip (install iproute2)");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Connects two namespaces with a veth pair: `local` here with `local_addr` (CIDR), `remote`
/// in `other` with `remote_addr`, both up.
pub fn link(ns: &Netns, local: (&str, &str), other: &Netns, remote: (&str, &str)) {
    ns.ip(&[
        "link", "add", local.0, "type", "veth", "peer", "name", remote.0,
    ]);
    // `ip link set ... netns` takes a pid: a process that lives in `other` for the moment.
    let mut holder = other
        .command("sleep")
        .arg("60")
        .spawn()
        .expect("sleep in the other namespace");
    ns.ip(&["link", "set", remote.0, "netns", &holder.id().to_string()]);
    let _ = holder.kill();
    let _ = holder.wait();
    ns.ip(&["addr", "add", local.1, "dev", local.0]);
    ns.ip(&["link", "set", local.0, "up"]);
    other.ip(&["addr", "add", remote.1, "dev", remote.0]);
    other.ip(&["link", "set", remote.0, "up"]);
}

/// A TCP listener in `ns` on `addr` that accepts and closes every connection, until the
/// process ends.
pub fn listen(ns: &Netns, addr: SocketAddr) {
    let listener = ns.run(|| {
        TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("a listener on {addr} in the namespace: {e}"))
    });
    std::thread::spawn(move || for _ in listener.incoming() {});
}

/// The internet stand-in of the network tests: outside every range deployments are kept from.
pub const INTERNET: &str = "198.51.100.1:80";
/// The cloud metadata stand-in (AWS's, GCP's and Azure's address).
pub const METADATA: &str = "169.254.169.254:80";
/// A host's address on its link to the upstream namespace.
pub const HOST_UPLINK: &str = "198.18.0.1";
/// The IPv6 internet stand-in (the documentation prefix, RFC 3849: outside every blocked range).
pub const INTERNET6: &str = "[2001:db8::1]:80";
/// AWS's IPv6 metadata service stand-in.
pub const METADATA6: &str = "[fd00:ec2::254]:80";
/// A unique local address (RFC 4193) behind the host: a private network of the host's.
pub const PRIVATE6: &str = "[fd12:3456:789a::1]:80";
/// The host's IPv6 address on its link to the upstream namespace (the benchmarking prefix,
/// RFC 5180: global, neither ULA nor documentation).
pub const HOST_UPLINK6: &str = "2001:2::1";

/// An "upstream" namespace behind `host` (a Host's namespace), as a cloud host's network is:
/// linked to it by a veth (`HOST_UPLINK`/30 and `HOST_UPLINK6`/64), the host's default routes,
/// holding the internet and metadata stand-ins of both families and a ULA (`PRIVATE6`), each
/// with a listener. (An address of the host itself would be blocked as the host's own whatever
/// its range. This kernel has no `dummy` driver: the upstream's loopback holds the addresses.)
/// It lives as long as the returned handle.
pub fn upstream(host: &Netns) -> Arc<Netns> {
    let up = Netns::new();
    link(
        host,
        ("uplink", &format!("{HOST_UPLINK}/30")),
        &up,
        ("downlink", "198.18.0.2/30"),
    );
    host.ip(&["route", "add", "default", "via", "198.18.0.2"]);
    // No duplicate address detection: usable at once.
    host.ip(&[
        "addr",
        "add",
        &format!("{HOST_UPLINK6}/64"),
        "dev",
        "uplink",
        "nodad",
    ]);
    up.ip(&["addr", "add", "2001:2::2/64", "dev", "downlink", "nodad"]);
    host.ip(&["-6", "route", "add", "default", "via", "2001:2::2"]);
    for addr in [INTERNET, METADATA, INTERNET6, METADATA6, PRIVATE6] {
        let addr: SocketAddr = addr.parse().expect("socket address");
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        // nodad: an IPv6 address is tentative until its (skipped) DAD has run, and a bind
        // meanwhile fails with EADDRNOTAVAIL.
        let ip = format!("{}/{prefix}", addr.ip());
        up.ip(&["addr", "add", &ip, "dev", "lo", "nodad"]);
        listen(&up, addr);
    }
    up
}

/// A resolver on the host's loopback, as systemd-resolved's 127.0.0.53 is: dnsmasq in the
/// host's namespace answers `internet.test` with the internet stand-in; it is killed on drop.
pub struct LoopbackResolver(std::process::Child);

impl LoopbackResolver {
    pub const ADDR: &str = "127.0.0.53";

    pub fn start(host: &crate::Host) -> Self {
        host.netns
            .ip(&["addr", "add", &format!("{}/8", Self::ADDR), "dev", "lo"]);
        let child = host
            .netns
            .command("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--user=root",
                "--pid-file=",
                // Local: it answers AAAA with no data (not REFUSED, which musl keeps waiting on).
                "--local=/test/",
                &format!("--listen-address={}", Self::ADDR),
                &format!(
                    "--host-record=internet.test,{}",
                    INTERNET.split(':').next().unwrap()
                ),
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dnsmasq (install dnsmasq-base)");
        // Up once it answers on TCP as well.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while host
            .netns
            .run(|| std::net::TcpStream::connect((Self::ADDR, 53)))
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "dnsmasq did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Self(child)
    }
}

impl Drop for LoopbackResolver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An nxd that reads `resolv_conf` as /etc/resolv.conf (bound over it in a mount namespace of
/// its own): a script in `dir` to start the host with.
pub fn nxd_reading(dir: &std::path::Path, resolv_conf: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let conf = dir.join("resolv.conf");
    std::fs::write(&conf, resolv_conf).unwrap();
    let script = dir.join("nxd");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec unshare --mount --propagation private sh -c 'mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"' {:?} {:?} \"$@\"\n",
            conf,
            crate::bin("nxd")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// What deployment `id`'s `/connect?addr=` (the sample app's) says through its preview URL:
/// true when it connected to `addr` (`host:port`).
pub fn connects(host: &crate::Host, sandbox: &str, id: &str, addr: &str) -> bool {
    let (status, body) = host.get(
        &host.preview_host(sandbox, id),
        &format!("/connect?addr={addr}"),
    );
    assert_eq!(status, 200, "{body}");
    body.starts_with("connected")
}

/// Deployment `id`'s own address and port (`listen` of its view).
pub fn listen_addr(host: &crate::Host, sandbox: &str, id: &str) -> SocketAddr {
    host.deployment(sandbox, id)["listen"]
        .as_str()
        .expect("listen")
        .parse()
        .expect("socket address")
}

/// Copies TCP connections between the test's namespace and a host's, to the same address on
/// the other side, until dropped.
pub struct Forwarder {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    /// Where it listens: None, the test's namespace.
    listens_in: Option<Arc<Netns>>,
}

impl Forwarder {
    /// Listens on 127.0.0.1:`port` in the test's namespace (`0`: any free port) and forwards
    /// to the same address inside `ns` (the API, the router, a listener the test configured).
    pub fn to(ns: &Arc<Netns>, port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("a forwarder's port");
        Self::start(listener, None, Some(ns.clone()))
    }

    /// Listens on 127.0.0.1:`port` inside `ns` and forwards to the same address in the test's
    /// namespace (a server the test runs, such as an ACME server nxd orders from).
    pub fn back(ns: &Arc<Netns>, port: u16) -> Self {
        let listener = ns.run(|| {
            TcpListener::bind(("127.0.0.1", port)).expect("a forwarder's port in the namespace")
        });
        Self::start(listener, Some(ns.clone()), None)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Accepts on `listener` (in `listens_in`) and connects each client to the same address
    /// inside `connects_in` (None: the test's namespace).
    fn start(
        listener: TcpListener,
        listens_in: Option<Arc<Netns>>,
        connects_in: Option<Arc<Netns>>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = listener.local_addr().expect("listener address");
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let (Ok(client), ns) = (client, connects_in.clone()) else {
                    continue;
                };
                std::thread::spawn(move || {
                    if let Some(ns) = ns {
                        ns.enter();
                    }
                    if let Ok(upstream) = TcpStream::connect(addr) {
                        pipe(client, upstream);
                    }
                });
            }
        });
        Self {
            stop,
            addr,
            listens_in,
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let addr = self.addr;
        match &self.listens_in {
            Some(ns) => ns.run(|| drop(TcpStream::connect(addr))),
            None => drop(TcpStream::connect(addr)),
        }
    }
}

/// Copies both ways until each side has ended.
fn pipe(a: TcpStream, b: TcpStream) {
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    let (Ok(mut a2), Ok(mut b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut b2, &mut a2);
        let _ = a2.shutdown(std::net::Shutdown::Write);
    });
    let (mut a, mut b) = (a, b);
    let _ = std::io::copy(&mut a, &mut b);
    let _ = b.shutdown(std::net::Shutdown::Write);
    let _ = back.join();
}
