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
    for always in [
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_keyctl,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_kexec_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_ptrace,
        libc::SYS_userfaultfd,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_setns,
        libc::SYS_open_tree,
        libc::SYS_move_mount,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_mount_setattr,
        libc::SYS_chroot,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_pidfd_getfd,
        libc::SYS_kcmp,
        libc::SYS_kexec_file_load,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_quotactl,
        libc::SYS_acct,
        libc::SYS_reboot,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_syslog,
        libc::SYS_mbind,
        libc::SYS_set_mempolicy,
        libc::SYS_migrate_pages,
        libc::SYS_move_pages,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_fanotify_init,
    ] {
        rules.insert(always, vec![]);
    }
    Ok(rules)
}

/// `socket(family, ..)` for any family but those a web service uses.
fn other_families() -> Result<Vec<SeccompRule>, String> {
    let allowed = [
        libc::AF_UNIX,
        libc::AF_INET,
        libc::AF_INET6,
        libc::AF_NETLINK,
    ];
    let conditions = allowed
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
