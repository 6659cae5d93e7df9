//! The bubblewrap command line of a deployment: new user, pid, ipc, uts and cgroup namespaces;
//! read-only binds of only the binary and what it needs; private /tmp, /dev and /proc; its own
//! writable /data; the PostgreSQL socket's directory, read-only (a directory, not the socket
//! file, so that a restarted server's new socket appears in running sandboxes); no
//! capabilities; no nested user namespaces; dies with its parent (bubblewrap, which exits as
//! soon as the program has: the sandbox's init, its pid 1, is then killed, and with it
//! whatever the program left running, as a container ends with its first process).
//! A deployment runs in the network namespace its launcher set up (`network::attach`), with
//! the gateway as its resolver; a task gets a network namespace of its own, loopback only.

use super::{DataDir, SandboxNetwork};
use crate::artifact::verify::Linkage;
use crate::backend::host_files::{EtcTree, HOST_FILES, LOADER_FILES};
use crate::backend::launch::{SANDBOX_ENV_FD, SECCOMP_FIRST_FD};
use crate::databases::SANDBOX_SOCKET_DIR;
use nx_artifact::closure::SANDBOX_LIBRARY_DIRS;
use std::path::{Path, PathBuf};

/// Where the binary appears inside the sandbox.
pub const APP_PATH: &str = "/app/main";
/// Where the data dir appears inside the sandbox.
pub const DATA_PATH: &str = "/data";

fn push(argv: &mut Vec<String>, items: &[&str]) {
    argv.extend(items.iter().map(|s| s.to_string()));
}

use crate::backend::BUNDLE_ARGV0_DIR as ARGV0_DIR;

/// What the sandbox runs.
pub enum App<'a> {
    /// One binary, at [`APP_PATH`].
    Binary(&'a Path),
    /// A bundle's tree at `/app`; `entry` (relative) is run as `argv0`.
    Bundle {
        root: &'a Path,
        entry: &'a str,
        argv0: &'a str,
    },
    /// A standby's (`crate::standby`): `slot`, empty until its push links the binary in as
    /// `main`, at `/app`; `waiter` (nx-vm-init) at [`STANDBY_WAITER_PATH`] is run, and execs
    /// the program nxd gives it on standard input (its `--exec-on-input`).
    Standby { slot: &'a Path, waiter: &'a Path },
}

/// Where a standby's waiter appears inside the sandbox.
pub const STANDBY_WAITER_PATH: &str = "/run/nx/standby";

/// One bubblewrap sandbox: a deployment's or a task's.
pub struct Sandbox<'a> {
    pub hostname: &'a str,
    pub app: App<'a>,
    pub linkage: &'a Linkage,
    pub args: &'a [String],
    /// /data (a deployment's); without it the program starts in its private /tmp.
    pub data_dir: Option<DataDir<'a>>,
    /// The PostgreSQL socket; its directory is bound at `/run/postgresql`.
    pub database_socket: Option<&'a Path>,
    pub network: SandboxNetwork<'a>,
    /// The size of `/tmp` (a tmpfs), in bytes.
    pub tmp_bytes: u64,
    /// A deployment's `/etc` (its own `passwd`, `group`, `resolv.conf` and `hosts` among the
    /// host's files), bound in one mount, with its sandbox's hosts directory (`network`'s
    /// `hosts_dir`) over the tree's mount point; without it (a task's) each of `HOST_FILES`
    /// present is bound on its own.
    pub etc: Option<&'a EtcTree>,
    /// Volumes: mounted on the host side by the launcher, bound read-write at their paths.
    pub volumes: &'a [VolumeBind],
    /// The sandbox's devpts instance of at most `pts_mount::MAX_PTYS` (the launcher mounts
    /// it), bound at `/dev/pts` over bubblewrap's own; `None`: bubblewrap's, unbounded.
    pub ptys: Option<&'a Path>,
}

/// A volume the launcher mounted on `mountpoint`, for the program at `path`.
#[derive(Debug, Clone)]
pub struct VolumeBind {
    pub mountpoint: PathBuf,
    pub path: String,
}

/// bubblewrap's path, found once in nxd's own `PATH` (never in a program's: the launcher runs
/// it with NX's environment, see `launch::SandboxEnvForm`); `/usr/bin/bwrap` if none has it.
/// The microVM backend runs its VMM under the same bubblewrap (`microvm::jail`).
pub(crate) fn program() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join("bwrap"))
            .find(|path| path.is_absolute() && path.is_file())
            .map_or_else(
                || "/usr/bin/bwrap".into(),
                |path| path.display().to_string(),
            )
    })
}

/// What every process bubblewrap runs for NX is kept from (bwrap(1)): namespaces of its own
/// but the network's (user, PID, IPC, UTS, cgroup; no user namespace of its own inside),
/// ended with its parent, a session of its own (no terminal to inject input into), and no
/// capabilities. The sandboxes' programs and the microVMs' VMM (`microvm::jail`).
pub(crate) const ISOLATION: &[&str] = &[
    "--unshare-user",
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup",
    "--disable-userns",
    "--die-with-parent",
    "--new-session",
    "--cap-drop",
    "ALL",
];

/// bubblewrap's argv for `sandbox`. The program's environment is not in it: the launcher hands
/// it over on `SANDBOX_ENV_FD` (`--args`, as `SandboxEnvForm::BwrapArgs`).
pub fn command(sandbox: &Sandbox<'_>) -> Vec<String> {
    let mut argv = vec![program().to_string()];
    let env_fd = SANDBOX_ENV_FD.to_string();
    push(&mut argv, &["--args", &env_fd]);
    push(&mut argv, ISOLATION);
    push(&mut argv, &["--hostname", sandbox.hostname]);
    if let SandboxNetwork::Loopback = sandbox.network {
        argv.push("--unshare-net".into());
    }
    // /dev/shm (POSIX shared memory, shm_overview(7)) is a tmpfs of the same size as /tmp: in
    // bubblewrap's /dev it was a directory of /dev's tmpfs, which has no size (attacker s13 L4:
    // 200 MiB there beside a 16 MiB /tmp); /dev itself is made read-only below.
    let tmp_bytes = sandbox.tmp_bytes.to_string();
    push(
        &mut argv,
        &[
            "--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", &tmp_bytes, "--tmpfs",
            "/dev/shm", "--size", &tmp_bytes, "--tmpfs", "/tmp",
        ],
    );
    // /dev/ptmx is bubblewrap's link to pts/ptmx: the bounded instance's (--dev-bind: its
    // ptmx is a device node, which --bind's nodev would refuse to open).
    if let Some(ptys) = sandbox.ptys {
        push(
            &mut argv,
            &["--dev-bind", &ptys.display().to_string(), "/dev/pts"],
        );
    }
    // bwrap execs with execvp(3): a bundle's entry is found through PATH (ARGV0_DIR), so
    // that argv[0] is its name while /proc/self/exe (and $ORIGIN) stay under /app.
    let exec = match &sandbox.app {
        App::Binary(binary) => {
            push(
                &mut argv,
                &["--ro-bind", &binary.display().to_string(), APP_PATH],
            );
            APP_PATH.to_owned()
        }
        App::Bundle { root, entry, argv0 } => {
            let mount = nx_artifact::bundle::MOUNT_POINT;
            push(
                &mut argv,
                &[
                    "--ro-bind",
                    &root.display().to_string(),
                    mount,
                    "--dir",
                    ARGV0_DIR,
                    "--symlink",
                    &format!("{mount}/{entry}"),
                    &format!("{ARGV0_DIR}/{argv0}"),
                ],
            );
            (*argv0).to_owned()
        }
        App::Standby { slot, waiter } => {
            push(
                &mut argv,
                &[
                    "--ro-bind",
                    &slot.display().to_string(),
                    "/app",
                    "--ro-bind",
                    &waiter.display().to_string(),
                    STANDBY_WAITER_PATH,
                ],
            );
            STANDBY_WAITER_PATH.to_owned()
        }
    };
    match sandbox.etc {
        Some(tree) => {
            push(
                &mut argv,
                &["--ro-bind", &tree.dir.display().to_string(), "/etc"],
            );
            for dir in &tree.bound_dirs {
                push(&mut argv, &["--ro-bind-try", dir, dir]);
            }
            for file in HOST_FILES.iter().filter(|f| !f.starts_with("/etc/")) {
                push(&mut argv, &["--ro-bind-try", file, file]);
            }
            if let SandboxNetwork::Launcher { hosts_dir, .. } = sandbox.network {
                // Its mount point and the /etc/hosts link into it are in the tree.
                let hosts = hosts_dir.display().to_string();
                push(
                    &mut argv,
                    &["--ro-bind", &hosts, crate::services::SANDBOX_DIR],
                );
            }
        }
        None => {
            for file in HOST_FILES {
                push(&mut argv, &["--ro-bind-try", file, file]);
            }
        }
    }
    if let Linkage::Dynamic { interpreter } = sandbox.linkage {
        push(&mut argv, &["--ro-bind", interpreter, interpreter]);
        // A tree holds the loader's files.
        let loader: &[&str] = if sandbox.etc.is_some() {
            &[]
        } else {
            LOADER_FILES
        };
        for dir in SANDBOX_LIBRARY_DIRS.iter().chain(loader) {
            push(&mut argv, &["--ro-bind-try", dir, dir]);
        }
    }
    if let Some(dir) = sandbox.database_socket.and_then(Path::parent) {
        push(
            &mut argv,
            &["--ro-bind", &dir.display().to_string(), SANDBOX_SOCKET_DIR],
        );
    }
    match sandbox.data_dir {
        Some(data) => {
            let bind = if data.read_only {
                "--ro-bind"
            } else {
                "--bind"
            };
            push(
                &mut argv,
                &[
                    bind,
                    &data.path.display().to_string(),
                    DATA_PATH,
                    "--chdir",
                    DATA_PATH,
                ],
            );
        }
        None => push(&mut argv, &["--chdir", "/tmp"]),
    }
    for volume in sandbox.volumes {
        let source = volume.mountpoint.display().to_string();
        push(&mut argv, &["--bind", &source, &volume.path]);
    }
    // Last of the mounts: bubblewrap's root and /dev tmpfs (no size, the program's own) become
    // read-only, so that the program writes only where it has a size: /tmp, /dev/shm, /data
    // and volumes (attacker s13 L4; each is a mount of its own, which a remount leaves as it is).
    push(&mut argv, &["--remount-ro", "/dev", "--remount-ro", "/"]);
    for i in 0..super::seccomp::PROGRAMS {
        argv.push("--add-seccomp-fd".into());
        argv.push((SECCOMP_FIRST_FD + i as i32).to_string());
    }
    argv.push("--".into());
    argv.push(exec);
    argv.extend(sandbox.args.iter().cloned());
    argv
}
