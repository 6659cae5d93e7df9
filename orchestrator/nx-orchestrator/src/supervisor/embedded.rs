//! The embedded systemd manager: where no systemd answers on the system bus, nxd starts a real
//! `systemd --system` of its own, as PID 1 of a new pid and mount namespace, in a cgroup of its
//! own (`nx-<tag>` in every hierarchy), with:
//! - `SYSTEMD_UNIT_PATH` holding only NX's units (stub targets and a D-Bus broker): the host's
//!   units are never loaded (the host's `systemd-tmpfiles-setup` would empty the host's /tmp);
//! - no generators; private /run, /tmp and /var/log; `/` read-only except the state dir;
//! - a dbus-daemon inside the namespace whose socket directory is bind-mounted from
//!   `<state_dir>/systemd/bus`, which is how nxd reaches it (systemd's private socket refuses
//!   peers outside its pid namespace).
//!
//! The manager outlives nxd (it runs in its own session), so deployments survive an nxd restart.

use super::dbus_api::ManagerProxy;
use super::{ManagerFound, SupervisorError};
use nix::mount::{mount, MsFlags};
use sha2::{Digest, Sha256};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TARGETS: &[&str] = &[
    "default",
    "sysinit",
    "basic",
    "shutdown",
    "sockets",
    "timers",
    "paths",
    "slices",
    "local-fs",
    "network",
    "multi-user",
];
/// Mounted fresh inside the namespace.
const PRIVATE_DIRS: &[&str] = &["/run", "/tmp", "/var/log"];

fn err(msg: impl std::fmt::Display) -> SupervisorError {
    SupervisorError::Embedded(msg.to_string())
}

/// The layout under `<state_dir>/systemd`.
struct Layout {
    state_dir: PathBuf,
    dir: PathBuf,
}

impl Layout {
    fn new(state_dir: &Path) -> Self {
        Self {
            state_dir: state_dir.to_owned(),
            dir: state_dir.join("systemd"),
        }
    }
    fn units(&self) -> PathBuf {
        self.dir.join("units")
    }
    fn bus_dir(&self) -> PathBuf {
        self.dir.join("bus")
    }
    fn socket(&self) -> PathBuf {
        self.bus_dir().join("system_bus_socket")
    }
    fn address(&self) -> String {
        format!("unix:path={}", self.socket().display())
    }
    fn pid_file(&self) -> PathBuf {
        self.dir.join("unshare.pid")
    }
    fn cgroups_file(&self) -> PathBuf {
        self.dir.join("cgroups")
    }
    fn empty(&self) -> PathBuf {
        self.dir.join("empty")
    }
    fn dbus_conf(&self) -> PathBuf {
        self.dir.join("dbus.conf")
    }
    /// `nx-<12 hex of sha256(state dir)>`: one cgroup per state dir.
    fn cgroup_name(&self) -> String {
        let digest = Sha256::digest(self.state_dir.as_os_str().as_encoded_bytes());
        format!("nx-{}", &hex::encode(digest)[..12])
    }
}

/// The cgroup directories the embedded manager of `state_dir` lives in, one per hierarchy (its
/// units' cgroups are below them).
pub fn hierarchy_roots(state_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string(Layout::new(state_dir).cgroups_file())
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// Connects to the embedded manager, starting it if it is not running.
pub async fn connect(
    state_dir: &Path,
) -> Result<(zbus::Connection, String, ManagerFound), SupervisorError> {
    let layout = Layout::new(state_dir);
    // Before adopting too: a manager started by an earlier nxd outlives it, and an nxd without
    // the cgroup hierarchies (under `ip netns exec`) would find none of its units' processes
    // (review16 #4).
    check_cgroups(&layout)?;
    if let Ok(conn) = try_connect(&layout).await {
        tracing::info!("adopting the running embedded systemd manager");
        return Ok((
            conn,
            layout.dir.display().to_string(),
            ManagerFound::Running,
        ));
    }
    start(&layout)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match try_connect(&layout).await {
            Ok(conn) => {
                return Ok((
                    conn,
                    layout.dir.display().to_string(),
                    ManagerFound::Started,
                ))
            }
            Err(e) if Instant::now() > deadline => {
                return Err(err(format!(
                    "did not answer on {} within 15 s ({e}); see {}",
                    layout.socket().display(),
                    layout.dir.join("manager.log").display()
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn try_connect(layout: &Layout) -> Result<zbus::Connection, zbus::Error> {
    let conn = zbus::connection::Builder::address(layout.address().as_str())?
        .build()
        .await?;
    ManagerProxy::new(&conn).await?.version().await?;
    Ok(conn)
}

/// Refuses state dirs that the manager's private mounts would hide from its units.
fn check_state_dir(state_dir: &Path) -> Result<(), SupervisorError> {
    for private in PRIVATE_DIRS {
        if state_dir.starts_with(private) {
            return Err(err(format!(
                "state_dir {} is under {private}, which the embedded manager mounts privately; use a directory such as /var/lib/nx",
                state_dir.display()
            )));
        }
    }
    Ok(())
}

/// Refuses to start the manager where no cgroup hierarchy of this process is mounted under
/// /sys/fs/cgroup (attacker s16 C1: `ip netns exec` mounts a fresh /sys without it). There the
/// manager would mount the hierarchies itself and run at the host's root cgroups, beside the
/// host's own, and nxd, which finds its units' processes under the directories it joins here,
/// would see none: the database watch would bound and end nothing, and say nothing.
fn check_cgroups(layout: &Layout) -> Result<(), SupervisorError> {
    if !cgroup_dirs(layout).is_empty() {
        return Ok(());
    }
    Err(err(
        "no cgroup hierarchy is mounted under /sys/fs/cgroup here, so the embedded systemd \
         manager would run at the host's root cgroups and nxd could not see its units' \
         processes; `ip netns exec` mounts a fresh /sys without /sys/fs/cgroup: run nxd in a \
         network namespace with `nsenter --net=/run/netns/NAME nxd ...` instead, or mount the \
         host's cgroup hierarchies at /sys/fs/cgroup",
    ))
}

fn find_program(candidates: &[&str]) -> Result<PathBuf, SupervisorError> {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            err(format!(
                "none of {candidates:?} exists; install systemd and dbus"
            ))
        })
}

fn write_units(layout: &Layout) -> Result<(), SupervisorError> {
    let units = layout.units();
    for dir in [&units, &layout.bus_dir(), &layout.empty()] {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    for target in TARGETS {
        let wants = if *target == "default" {
            "Wants=dbus.socket dbus.service\n"
        } else {
            ""
        };
        std::fs::write(
            units.join(format!("{target}.target")),
            format!("[Unit]\nDescription=NX stub {target}.target\n{wants}"),
        )
        .map_err(err)?;
    }
    std::fs::write(
        units.join("dbus.socket"),
        "[Unit]\nDescription=NX private D-Bus socket\nDefaultDependencies=no\n\n[Socket]\nListenStream=/run/dbus/system_bus_socket\n",
    )
    .map_err(err)?;
    let daemon = find_program(&["/usr/bin/dbus-daemon", "/bin/dbus-daemon"])?;
    std::fs::write(
        units.join("dbus.service"),
        format!(
            "[Unit]\nDescription=NX private D-Bus\nDefaultDependencies=no\nRequires=dbus.socket\nAfter=dbus.socket\n\n[Service]\nExecStart={} --config-file={} --nofork --nopidfile --systemd-activation\n",
            daemon.display(),
            layout.dbus_conf().display()
        ),
    )
    .map_err(err)?;
    std::fs::write(layout.dbus_conf(), DBUS_CONF).map_err(err)?;
    Ok(())
}

/// Only root may own names or call methods; everyone may receive replies and signals.
const DBUS_CONF: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>systemd:</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="root"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus"/>
  </policy>
  <policy user="root">
    <allow own="*"/>
    <allow send_type="method_call"/>
  </policy>
</busconfig>
"#;

#[tracing::instrument(skip_all, fields(dir = %layout.dir.display()))]
fn start(layout: &Layout) -> Result<(), SupervisorError> {
    check_state_dir(&layout.state_dir)?;
    check_cgroups(layout)?;
    // A manager that is not answering is stale: end it before starting another.
    stop(&layout.state_dir);
    write_units(layout)?;
    let _ = std::fs::remove_file(layout.socket());
    let log = std::fs::File::create(layout.dir.join("manager.log")).map_err(err)?;
    let exe = std::env::current_exe().map_err(err)?;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--mount",
        "--fork",
        "--mount-proc",
        "--propagation",
        "private",
    ])
    .arg(exe)
    .arg("manager-init")
    .arg(&layout.state_dir)
    .stdin(Stdio::null())
    .stdout(log.try_clone().map_err(err)?)
    .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the manager from nxd's session so that
    // it outlives nxd.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
    }
    let child = cmd
        .spawn()
        .map_err(|e| err(format!("cannot run unshare: {e}")))?;
    std::fs::write(layout.pid_file(), child.id().to_string()).map_err(err)?;
    tracing::info!(pid = child.id(), "embedded systemd manager starting");
    Ok(())
}

/// The cgroup directories the manager lives in: `nx-<tag>` at the root of every mounted
/// hierarchy. systemd derives one root path for all hierarchies (from its unified or
/// name=systemd cgroup), so the path must be the same in each of them; nesting under this
/// process's own cgroups would not be, where those differ between hierarchies.
fn cgroup_dirs(layout: &Layout) -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let root = Path::new("/sys/fs/cgroup");
    own.lines()
        .filter_map(|line| {
            let controllers = line.split(':').nth(1)?;
            let mount = match controllers {
                "" if root.join("unified").is_dir() => root.join("unified"),
                "" => root.to_owned(),
                named if named.starts_with("name=") => root.join(&named[5..]),
                list => root.join(list),
            };
            mount
                .join("cgroup.procs")
                .is_file()
                .then(|| mount.join(layout.cgroup_name()))
        })
        .collect()
}

fn join_cgroups(layout: &Layout) -> Result<(), SupervisorError> {
    let dirs = cgroup_dirs(layout);
    for dir in &dirs {
        std::fs::create_dir_all(dir).map_err(err)?;
        for inherited in ["cpuset.cpus", "cpuset.mems"] {
            if let (Some(parent), true) = (dir.parent(), dir.join(inherited).is_file()) {
                let value = std::fs::read_to_string(parent.join(inherited)).map_err(err)?;
                std::fs::write(dir.join(inherited), value.trim()).map_err(err)?;
            }
        }
        std::fs::write(dir.join("cgroup.procs"), "0")
            .map_err(|e| err(format!("cannot join {}: {e}", dir.display())))?;
    }
    let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    std::fs::write(layout.cgroups_file(), list.join("\n")).map_err(err)
}

/// Runs as PID 1 of the new namespaces (`nxd manager-init <state_dir>`): set up the mounts and
/// cgroups, then exec systemd.
pub fn init(state_dir: &Path) -> SupervisorError {
    let layout = Layout::new(state_dir);
    match prepare_namespace(&layout) {
        Ok(mut systemd) => err(format!("cannot exec systemd: {}", systemd.exec())),
        Err(e) => e,
    }
}

fn prepare_namespace(layout: &Layout) -> Result<Command, SupervisorError> {
    join_cgroups(layout)?;
    let none: Option<&str> = None;
    let state = layout.state_dir.as_path();
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none).map_err(err)?;
    // On manager.log (this process's output): a host without it starts every unit ~10 ms
    // later, and works.
    match super::favordynmods::turn_on(&layout.empty()) {
        Ok(true) => println!("nx: turned the kernel's cgroup favordynmods on (units start without waiting for an RCU grace period)"),
        Ok(false) => {}
        Err(e) => eprintln!("nx: cannot turn the kernel's cgroup favordynmods on ({e}): each unit's start waits for an RCU grace period (~10 ms)"),
    }
    mount(
        Some(state),
        state,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .map_err(err)?;
    mount(
        none,
        "/",
        none,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
        none,
    )
    .map_err(|e| err(format!("remount / read-only: {e}")))?;
    for dir in PRIVATE_DIRS {
        let mode = if *dir == "/tmp" {
            "mode=1777"
        } else {
            "mode=755"
        };
        mount(
            Some("tmpfs"),
            *dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(mode),
        )
        .map_err(|e| err(format!("mount tmpfs on {dir}: {e}")))?;
    }
    std::fs::create_dir_all("/run/dbus").map_err(err)?;
    mount(
        Some(&layout.bus_dir()),
        "/run/dbus",
        none,
        MsFlags::MS_BIND,
        none,
    )
    .map_err(err)?;
    let systemd = find_program(&["/lib/systemd/systemd", "/usr/lib/systemd/systemd"])?;
    let mut cmd = Command::new(systemd);
    cmd.args(["--system", "--log-target=console", "--log-level=notice"])
        .env_clear()
        .env("container", "nx")
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("SYSTEMD_UNIT_PATH", layout.units())
        .env("SYSTEMD_GENERATOR_PATH", layout.empty())
        .env("SYSTEMD_ENVIRONMENT_GENERATOR_PATH", layout.empty());
    Ok(cmd)
}

/// Ends the embedded manager of `state_dir` and everything it runs, and removes its cgroups.
/// Killing PID 1 of the namespace makes the kernel kill every process in it.
pub fn stop(state_dir: &Path) {
    let layout = Layout::new(state_dir);
    let Ok(pid) = std::fs::read_to_string(layout.pid_file()) else {
        return;
    };
    let pid = pid.trim();
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for child in children.split_whitespace() {
        if let Ok(child) = child.parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if stat.contains(") Z ") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let cgroups = std::fs::read_to_string(layout.cgroups_file()).unwrap_or_default();
    for dir in cgroups.lines().filter(|l| !l.is_empty()) {
        remove_cgroup_tree(Path::new(dir), deadline);
    }
    let _ = std::fs::remove_file(layout.pid_file());
    let _ = std::fs::remove_file(layout.socket());
}

/// rmdir a cgroup and its children, deepest first; a cgroup whose processes are still dying is
/// retried until the deadline.
fn remove_cgroup_tree(dir: &Path, deadline: Instant) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path(), deadline);
            }
        }
    }
    while dir.exists() && std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}
