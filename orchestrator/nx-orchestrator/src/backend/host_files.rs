//! The files a program reads from the OS at start, made visible read-only in a bubblewrap
//! sandbox and copied into a microVM guest's initramfs (each only where the host has it), so
//! that common programs behave as on a normal host. Worked through from what the standard libraries read on Linux:
//! - time zones: Go's `time` (`/etc/localtime`, `/usr/share/zoneinfo/`, `ZONEINFO`), glibc's
//!   `tzset(3)` (the same), and libraries that name the zone from `/etc/timezone`;
//! - TLS roots: Go's `crypto/x509` (`/etc/ssl/certs/ca-certificates.crt`, then the
//!   directory), OpenSSL and rustls-native-certs (the directory's hash links, which point into
//!   `/usr/share/ca-certificates`);
//! - names and services: Go's `net` and glibc's resolver (`/etc/resolv.conf`, `/etc/hosts`,
//!   `/etc/nsswitch.conf`, `/etc/host.conf`, `/etc/gai.conf`, `/etc/services`,
//!   `/etc/protocols`), Go's `mime` (`/etc/mime.types`);
//! - users: Go's `os/user` and glibc's `getpwuid(3)` read `/etc/passwd` and `/etc/group`: the
//!   sandbox gets its own two (written per deployment), naming only root, the deployment's
//!   uid (`app`, home `/data`) and nobody; the host's are never shown;
//! - a dynamically linked program's loader: `/etc/ld.so.cache` with the library directories.
//!
//! `/dev` (with `/dev/shm`), `/proc` and `/tmp` are fresh; `/sys` and the host's
//! `/etc/machine-id` and `/etc/os-release` are left out (they describe the host).
//! Images under Podman bring their own files; NX adds none.

use std::path::Path;

/// Bound read-only where present, for every program.
pub const HOST_FILES: &[&str] = &[
    "/etc/localtime",
    "/etc/timezone",
    "/usr/share/zoneinfo",
    "/etc/ssl/certs",
    "/usr/share/ca-certificates",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/mime.types",
];

/// Bound read-only where present, for a dynamically linked program.
pub const LOADER_FILES: &[&str] = &["/etc/ld.so.cache"];

/// The user name of a deployment's uid inside its sandbox.
pub const USER_NAME: &str = "app";

/// The sandbox's `passwd` and `group` (passwd(5), group(5)): root, the program's `uid` as
/// [`USER_NAME`] (home `/data`), and nobody.
pub fn identity(uid: u32) -> [(&'static str, String); 2] {
    let passwd = format!(
        "root:x:0:0:root:/root:/usr/sbin/nologin\n{USER_NAME}:x:{uid}:{uid}:NX deployment:/data:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    );
    let group = format!("root:x:0:\n{USER_NAME}:x:{uid}:\nnogroup:x:65534:\n");
    [("passwd", passwd), ("group", group)]
}

/// A deployment's `/etc`, laid out in one directory that bubblewrap binds read-only at `/etc`
/// in one mount when nxd starts the deployment (a push, `nx start`; systemd's restart of a
/// failed program reuses it): copies of the host's regular files of [`HOST_FILES`] under
/// `/etc` (what the host had then; not hard links, whose link count told a sandbox how many
/// deployments' trees the host keeps, other tenants' included: attacker s15 E1), the
/// sandbox's own `passwd` and `group` ([`identity`]), a copy of the deployment network's
/// `resolv.conf`, `/etc/hosts` as a link into [`crate::services::SANDBOX_DIR`]
/// (bound over its empty mount point here), and `/etc/ld.so.cache` for a dynamically linked
/// program. Each bind costs bubblewrap a mount and a read-only remount: one bind per file took
/// 2.3 ms of a 7.2–7.9 ms bubblewrap start here (session 14, 2 cores, median of 60), the tree's
/// one bind leaves 4.9–5.9 ms. Host directories under `/etc` (`/etc/ssl/certs`) stay bound on
/// their own over mount points made in the tree, so updates to them show as before.
pub struct EtcTree {
    /// The directory bound at `/etc`.
    pub dir: std::path::PathBuf,
    /// Host directories under `/etc` that the sandbox binds on their own (each has its mount
    /// point in `dir`).
    pub bound_dirs: Vec<&'static str>,
}

impl EtcTree {
    /// Lays out `dir` (replacing what a previous start left there), for a program run as `uid`,
    /// with `resolv_conf` as its `/etc/resolv.conf` and, when `loader`, the host's
    /// [`LOADER_FILES`]. Errors: a file that cannot be linked, copied or written into `dir`.
    pub fn lay_out(
        dir: std::path::PathBuf,
        uid: u32,
        resolv_conf: &Path,
        loader: bool,
    ) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let bound_dirs = host_dirs(loader);
        let own = ["/etc/hosts", "/etc/resolv.conf"];
        let host = HOST_FILES
            .iter()
            .chain(if loader { LOADER_FILES } else { &[] });
        for path in host.filter(|p| !own.contains(p)) {
            let Some(inside) = path.strip_prefix("/etc/") else {
                continue;
            };
            match std::fs::metadata(path) {
                Ok(meta) if meta.is_dir() => std::fs::create_dir_all(dir.join(inside))?,
                // Regular files only: a device or a FIFO there is no file to show.
                Ok(meta) if meta.is_file() => {
                    copy(&std::fs::canonicalize(path)?, &dir.join(inside))?
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        for (name, text) in identity(uid) {
            let path = dir.join(name);
            std::fs::write(&path, text)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        }
        copy(resolv_conf, &dir.join("resolv.conf"))?;
        let sandbox_dir = crate::services::SANDBOX_DIR;
        let mount_point = sandbox_dir.strip_prefix("/etc/").unwrap_or(sandbox_dir);
        std::fs::create_dir_all(dir.join(mount_point))?;
        std::os::unix::fs::symlink(crate::services::HOSTS_LINK, dir.join("hosts"))?;
        Ok(Self { dir, bound_dirs })
    }

    /// The tree a `lay_out` with the same `loader` left at `dir`, as it is: nothing is
    /// written (a standby's, which its running sandbox binds at `/etc`: laid out again, the
    /// sandbox would see an empty directory, review18 #1).
    pub fn as_laid_out(dir: std::path::PathBuf, loader: bool) -> Self {
        Self {
            dir,
            bound_dirs: host_dirs(loader),
        }
    }
}

/// The host directories under `/etc` of [`HOST_FILES`] (and, with `loader`, [`LOADER_FILES`])
/// there are: each bound on its own over its mount point in a tree.
fn host_dirs(loader: bool) -> Vec<&'static str> {
    HOST_FILES
        .iter()
        .chain(if loader { LOADER_FILES } else { &[] })
        .filter(|p| p.starts_with("/etc/") && Path::new(p).is_dir())
        .copied()
        .collect()
}

/// A copy of the regular file `from` at `to` (its bytes and mode). Errors name both paths.
fn copy(from: &Path, to: &Path) -> std::io::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(from, to).map(|_| ()).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("copying {} to {}: {e}", from.display(), to.display()),
        )
    })
}
