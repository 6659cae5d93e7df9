//! The bubblewrap command line of a deployment: new user, pid, ipc, uts and cgroup namespaces;
//! read-only binds of only the binary and what it needs; private /tmp, /dev and /proc; its own
//! writable /data; the PostgreSQL socket (the socket file alone); no capabilities; no nested
//! user namespaces; dies with its parent.
//! The host network is shared so that the router reaches the port on 127.0.0.1 (a network
//! namespace per deployment with pasta costs ~30 MiB and ~100 ms each; see the README).

use super::launch::SECCOMP_FIRST_FD;
use crate::artifact::verify::Linkage;
use crate::backend::SandboxSpec;
use crate::databases::SANDBOX_SOCKET_DIR;
use std::path::Path;

/// Where the binary appears inside the sandbox.
pub const APP_PATH: &str = "/app/main";
/// Where the data dir appears inside the sandbox.
pub const DATA_PATH: &str = "/data";

/// Read if present: TLS roots and name resolution.
const HOST_FILES: &[&str] = &["/etc/ssl/certs", "/etc/resolv.conf", "/etc/hosts"];
/// What a dynamically linked binary may load from.
const LIBRARY_DIRS: &[&str] = &["/lib", "/lib64", "/usr/lib", "/usr/lib64"];

fn push(argv: &mut Vec<String>, items: &[&str]) {
    argv.extend(items.iter().map(|s| s.to_string()));
}

pub fn command(
    spec: &SandboxSpec,
    binary: &Path,
    linkage: &Linkage,
    data_dir: &Path,
) -> Vec<String> {
    let mut argv = vec!["bwrap".to_string()];
    push(
        &mut argv,
        &[
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
            "--hostname",
        ],
    );
    argv.push(spec.deployment.sandbox.to_string());
    push(
        &mut argv,
        &["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"],
    );
    push(
        &mut argv,
        &["--ro-bind", &binary.display().to_string(), APP_PATH],
    );
    for file in HOST_FILES {
        push(&mut argv, &["--ro-bind-try", file, file]);
    }
    if let Linkage::Dynamic { interpreter } = linkage {
        push(&mut argv, &["--ro-bind", interpreter, interpreter]);
        for dir in LIBRARY_DIRS {
            push(&mut argv, &["--ro-bind-try", dir, dir]);
        }
    }
    if let Some(socket) = &spec.database_socket {
        let name = socket.file_name().unwrap_or_default().to_string_lossy();
        let inside = format!("{SANDBOX_SOCKET_DIR}/{name}");
        push(
            &mut argv,
            &["--bind", &socket.display().to_string(), &inside],
        );
    }
    push(
        &mut argv,
        &[
            "--bind",
            &data_dir.display().to_string(),
            DATA_PATH,
            "--chdir",
            DATA_PATH,
        ],
    );
    for i in 0..super::seccomp::PROGRAMS {
        argv.push("--add-seccomp-fd".into());
        argv.push((SECCOMP_FIRST_FD + i as i32).to_string());
    }
    argv.push("--".into());
    argv.push(APP_PATH.into());
    argv.extend(spec.deployment.args.iter().cloned());
    argv
}
