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

/// Writes the sandbox's `passwd` and `group` (see [`identity`]) into `dir` (0644) and returns
/// their paths.
pub fn write_identity(dir: &Path, uid: u32) -> std::io::Result<[std::path::PathBuf; 2]> {
    let [(passwd_name, passwd), (group_name, group)] = identity(uid);
    let paths = [dir.join(passwd_name), dir.join(group_name)];
    for (path, text) in paths.iter().zip([passwd, group]) {
        std::fs::write(path, text)?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    }
    Ok(paths)
}
