//! The seccomp programs every deployment runs under (compiled with seccompiler):
//! 1. EPERM for creating user namespaces (clone/unshare with CLONE_NEWUSER) and for a few
//!    kernel interfaces a web service has no use for (keyrings, bpf, perf, kexec, modules,
//!    ptrace, userfaultfd, mount API);
//! 2. ENOSYS for clone3, whose flags seccomp cannot inspect, so that libc falls back to clone.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    ] {
        rules.insert(always, vec![]);
    }
    Ok(rules)
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
