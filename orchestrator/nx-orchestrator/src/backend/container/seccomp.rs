//! The seccomp programs every deployment runs under (compiled with seccompiler):
//! 1. EPERM for creating user namespaces (clone/unshare with CLONE_NEWUSER), for sockets of
//!    any family but AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK (AF_VSOCK reaches the host's
//!    hypervisor sockets, AF_PACKET and the rest are not for a web service), and for the
//!    kernel interfaces a hosted program has no business with: io_uring (its own path into
//!    the kernel, beside seccomp, and the source of many of its privilege escalations),
//!    keyrings, bpf, perf, kexec, modules, ptrace and other processes' memory, userfaultfd,
//!    the mount API, chroot, swap, quotas, accounting, the clock, reboot, NUMA placement and
//!    file handles;
//! 2. ENOSYS for clone3, whose flags seccomp cannot inspect, so that libc falls back to clone.
//!
//! Podman's containers (images, under runc) get the same filter as an OCI profile
//! ([`oci_profile`]) instead of Podman's default, which lets a container create user
//! namespaces.
//!
//! What we chose, against the two best-known default profiles: Docker's (moby's
//! `profiles/seccomp/default.json`) is an allow-list that denies the same privileged calls,
//! io_uring (since moby 25) and AF_VSOCK sockets; Flatpak's (`common/flatpak-run.c`) is a
//! deny-list like this one that also allows only AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK
//! sockets, and returns ENOSYS for clone3 and the new mount API. This is a deny-list, as
//! Flatpak's: an unknown new syscall is allowed, but a static binary built against a newer
//! libc does not break on a call the list forgot. Namespaces, capabilities and the uid do
//! the rest of the isolation.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How many programs [`write_programs`] writes (bwrap reads them from that many fds).
pub const PROGRAMS: usize = 2;

use nix::libc;

const CLONE_NEWUSER: u64 = libc::CLONE_NEWUSER as u64;

fn arch() -> TargetArch {
    match std::env::consts::ARCH {
        "aarch64" => TargetArch::aarch64,
        _ => TargetArch::x86_64,
    }
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    action: SeccompAction,
) -> Result<BpfProgram, String> {
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, action, arch())
        .map_err(|e| e.to_string())?;
    BpfProgram::try_from(filter).map_err(|e| e.to_string())
}

/// The calls every deployment is denied outright (EPERM), by their names in syscalls(2) and
/// their numbers on this architecture.
const DENIED: &[(&str, i64)] = &[
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("keyctl", libc::SYS_keyctl),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("kexec_load", libc::SYS_kexec_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("ptrace", libc::SYS_ptrace),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("setns", libc::SYS_setns),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("chroot", libc::SYS_chroot),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("kcmp", libc::SYS_kcmp),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("quotactl", libc::SYS_quotactl),
    ("acct", libc::SYS_acct),
    ("reboot", libc::SYS_reboot),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("syslog", libc::SYS_syslog),
    ("mbind", libc::SYS_mbind),
    ("set_mempolicy", libc::SYS_set_mempolicy),
    ("migrate_pages", libc::SYS_migrate_pages),
    ("move_pages", libc::SYS_move_pages),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("fanotify_init", libc::SYS_fanotify_init),
];

fn deny_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, String> {
    let newuser = |arg| -> Result<Vec<SeccompRule>, String> {
        let cond = SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(CLONE_NEWUSER),
            CLONE_NEWUSER,
        )
        .map_err(|e| e.to_string())?;
        Ok(vec![
            SeccompRule::new(vec![cond]).map_err(|e| e.to_string())?
        ])
    };
    let mut rules = BTreeMap::new();
    rules.insert(libc::SYS_clone, newuser(0)?);
    rules.insert(libc::SYS_unshare, newuser(0)?);
    rules.insert(libc::SYS_socket, other_families()?);
    for (_, always) in DENIED {
        rules.insert(*always, vec![]);
    }
    Ok(rules)
}

/// The socket families a deployment may open: those a web service uses.
const ALLOWED_FAMILIES: [libc::c_int; 4] = [
    libc::AF_UNIX,
    libc::AF_INET,
    libc::AF_INET6,
    libc::AF_NETLINK,
];

/// `socket(family, ..)` for any family but those a web service uses.
fn other_families() -> Result<Vec<SeccompRule>, String> {
    let conditions = ALLOWED_FAMILIES
        .iter()
        .map(|family| {
            SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, *family as u64)
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(vec![
        SeccompRule::new(conditions).map_err(|e| e.to_string())?
    ])
}

fn to_bytes(program: &BpfProgram) -> Vec<u8> {
    program
        .iter()
        .flat_map(|insn| {
            let mut b = Vec::with_capacity(8);
            b.extend_from_slice(&insn.code.to_ne_bytes());
            b.push(insn.jt);
            b.push(insn.jf);
            b.extend_from_slice(&insn.k.to_ne_bytes());
            b
        })
        .collect()
}

/// Compiles both programs into `dir` and returns their paths, in the order bwrap loads them.
pub fn write_programs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let deny = compile(
        deny_rules().map_err(invalid)?,
        SeccompAction::Errno(libc::EPERM as u32),
    )
    .map_err(invalid)?;
    let mut clone3 = BTreeMap::new();
    clone3.insert(libc::SYS_clone3, vec![]);
    let no_clone3 = compile(clone3, SeccompAction::Errno(libc::ENOSYS as u32)).map_err(invalid)?;
    std::fs::create_dir_all(dir)?;
    let mut paths = Vec::new();
    for (name, program) in [("deny.bpf", deny), ("no-clone3.bpf", no_clone3)] {
        let path = dir.join(name);
        std::fs::write(&path, to_bytes(&program))?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o444))?;
        paths.push(path);
    }
    Ok(paths)
}

/// Above every socket family Linux has (`AF_MAX` is 46 in Linux 6.x, include/linux/socket.h),
/// with room for new ones: [`oci_profile`] names each family below it.
const FAMILIES_END: libc::c_int = 64;

/// libseccomp's name of [`arch`] (runtime-spec `config-linux.md`, "Seccomp").
fn oci_arch() -> &'static str {
    match arch() {
        TargetArch::aarch64 => "SCMP_ARCH_AARCH64",
        _ => "SCMP_ARCH_X86_64",
    }
}

/// The same filter as the bubblewrap programs, as an OCI runtime seccomp profile for Podman's
/// containers (the JSON of containers.conf(5)'s `seccomp_profile`; runtime-spec
/// `config-linux.md`, "Seccomp"): allowed by default; EPERM for [`DENIED`], for clone and
/// unshare with `CLONE_NEWUSER` and for sockets of families not in [`ALLOWED_FAMILIES`];
/// ENOSYS for clone3; calls of another architecture (i386's `int 0x80`) are not in the
/// profile, and libseccomp kills the thread that makes one.
pub fn oci_profile() -> serde_json::Value {
    let errno = |names: Vec<&str>, errno: i32, args: serde_json::Value| serde_json::json!({"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": errno, "args": args});
    let newuser = serde_json::json!([
        {"index": 0, "value": CLONE_NEWUSER, "valueTwo": CLONE_NEWUSER, "op": "SCMP_CMP_MASKED_EQ"}
    ]);
    let mut syscalls = vec![
        errno(
            DENIED.iter().map(|(name, _)| *name).collect(),
            libc::EPERM,
            serde_json::json!([]),
        ),
        errno(vec!["clone", "unshare"], libc::EPERM, newuser),
        errno(vec!["clone3"], libc::ENOSYS, serde_json::json!([])),
    ];
    // One comparison per argument in a rule (libseccomp), so one rule per family denied; the
    // last takes every larger value, also one whose upper 32 bits are set (the comparison is
    // of the whole register, the kernel reads an int).
    let family = |value: i32, op: &str| serde_json::json!([{"index": 0, "value": value, "op": op}]);
    for denied in (0..FAMILIES_END).filter(|f| !ALLOWED_FAMILIES.contains(f)) {
        syscalls.push(errno(
            vec!["socket"],
            libc::EPERM,
            family(denied, "SCMP_CMP_EQ"),
        ));
    }
    syscalls.push(errno(
        vec!["socket"],
        libc::EPERM,
        family(FAMILIES_END, "SCMP_CMP_GE"),
    ));
    serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": [oci_arch()],
        "syscalls": syscalls,
    })
}
