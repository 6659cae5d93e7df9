//! The VMM's own view of the host (QEMU's, as the launcher runs it): bubblewrap runs the VMM
//! as it runs a sandbox's program (`container::BWRAP_ISOLATION`: mount, PID, IPC, UTS, cgroup
//! and user namespaces of its own, a session of its own, no capabilities), and not in a
//! network namespace of its own (it stays in the deployment's, where its forwards
//! listen). Of the host it sees the system's programs and libraries read-only (QEMU, its
//! firmware, the `socat` of the database forward, the `cat` of a snapshot's restore), a
//! `/proc` of its PID namespace, a minimal `/dev` (and `/dev/kvm` when KVM runs the guest),
//! and of the host's other files only the guest's own: its kernel, its initramfs, its disk,
//! the snapshot it restores and the directory of its database socket, each at its own path.
//! Code that takes over the VMM from inside the guest thus reads no other deployment's files,
//! none of nxd's state and nothing of the host's `/etc`, `/home`, `/root` or `/var` (as
//! Firecracker's jailer does for its VMM with a chroot of the guest's files).

use std::path::Path;

/// The host's programs and libraries, bound read-only where they exist: Debian's (`/bin`,
/// `/lib`, ... are links into `/usr` there) and NixOS's (`/nix/store`, the system profile
/// whose `sw/bin` is on the VMM's `PATH`).
const SYSTEM_DIRS: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/nix/store",
    "/run/current-system",
];

/// The files of the host's `/etc` the VMM reads: the dynamic loader's cache (ld.so(8)).
const ETC_FILES: &[&str] = &["/etc/ld.so.cache"];

/// The size of the VMM's own `/tmp` (a tmpfs, bytes): QEMU writes nothing there in NX's use.
const TMP_BYTES: u64 = 1 << 20;

/// How the VMM may use one of the guest's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// `vmm` (a VMM's argv) run by bubblewrap with nothing of the host's files but the system's
/// (see the module's docs) and `files`, each bound at its own path with its access; `kvm`
/// binds `/dev/kvm` too. bubblewrap is found as the bubblewrap backend finds it; it runs the
/// VMM's `argv[0]` through the `PATH` of its environment. The result runs as the deployment's
/// uid (an unprivileged user namespace, bwrap(1)).
pub fn wrap(vmm: Vec<String>, files: &[(&Path, Access)], kvm: bool) -> Vec<String> {
    use crate::backend::container::{bwrap_program, BWRAP_ISOLATION};
    let mut argv: Vec<String> = std::iter::once(bwrap_program())
        .chain(BWRAP_ISOLATION.iter().copied())
        .map(str::to_owned)
        .collect();
    for dir in SYSTEM_DIRS.iter().chain(ETC_FILES) {
        argv.extend(["--ro-bind-try".into(), dir.to_string(), dir.to_string()]);
    }
    argv.extend(
        ["--proc", "/proc", "--dev", "/dev", "--size"]
            .iter()
            .map(|s| s.to_string()),
    );
    argv.extend([TMP_BYTES.to_string(), "--tmpfs".into(), "/tmp".into()]);
    if kvm {
        argv.extend(["--dev-bind".into(), "/dev/kvm".into(), "/dev/kvm".into()]);
    }
    for (path, access) in files {
        let bind = match access {
            Access::ReadOnly => "--ro-bind",
            Access::ReadWrite => "--bind",
        };
        let path = path.display().to_string();
        argv.extend([bind.into(), path.clone(), path]);
    }
    argv.push("--".into());
    argv.extend(vmm);
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vmm_gets_the_system_its_files_at_their_paths_and_kvm_only_when_asked() {
        let vmm = vec!["qemu-system-x86_64".to_owned(), "-m".to_owned()];
        let argv = wrap(
            vmm.clone(),
            &[
                (Path::new("/var/lib/nx/k"), Access::ReadOnly),
                (Path::new("/var/lib/nx/d.img"), Access::ReadWrite),
            ],
            false,
        );
        let text = argv.join(" ");
        assert!(argv[0].ends_with("bwrap"), "{text}");
        assert!(
            text.contains(" --ro-bind /var/lib/nx/k /var/lib/nx/k "),
            "{text}"
        );
        assert!(
            text.contains(" --bind /var/lib/nx/d.img /var/lib/nx/d.img "),
            "{text}"
        );
        assert!(text.contains(" --ro-bind-try /usr /usr "), "{text}");
        assert!(text.contains(" --unshare-pid ") && text.contains(" --cap-drop ALL "));
        assert!(!text.contains("/dev/kvm"), "{text}");
        assert!(!text.contains("--share-net") && !text.contains("--unshare-net"));
        // The VMM's own argv, whole, after bubblewrap's.
        assert_eq!(argv[argv.len() - 3..], ["--", "qemu-system-x86_64", "-m"]);
        let kvm = wrap(vmm, &[], true).join(" ");
        assert!(kvm.contains(" --dev-bind /dev/kvm /dev/kvm "), "{kvm}");
    }
}
