//! A sandbox's pseudo-terminals: a devpts instance of its own with at most [`MAX_PTYS`],
//! mounted by the unit's launcher in the launcher's own mount namespace (on
//! `<deployment dir>/pts` for a deployment, on `<state_dir>/task-pts` for each task, unmounted
//! after it) and bound at `/dev/pts` by bubblewrap (over the unbounded instance its `--dev`
//! makes) or by Podman (over its own), so that one sandbox cannot take the host's
//! pseudo-terminals from every other (attacker s15 P1: every devpts instance but the host's
//! own shares `kernel.pty.max` less `kernel.pty.reserve`, 3,071 here; one program opened them
//! all and other sandboxes' programs got ENOSPC from `/dev/ptmx`; review15 #4: a task's
//! bubblewrap still could). That shared pool stays the host's real bound: it holds
//! `pool / MAX_PTYS` sandboxes that each take all they may: nxd raises `kernel.pty.max` at
//! start for its deployments, or warns where it may not ([`size_host_pool`]; the NixOS module
//! sets it too).
//! Podman's own `--mount type=devpts,max=N` does not do: it takes no `ptmxmode`, so that
//! instance's `ptmx` is 0000 and the container's non-root user gets EACCES from `/dev/ptmx`.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The most pseudo-terminals one deployment or task may hold at once (devpts' `max=`, see
/// `Documentation/filesystems/devpts.rst`): a shell server or a few terminals' worth, and
/// 48 sandboxes' worth before the host's shared 3,071 (Debian's default) run out.
pub const MAX_PTYS: u32 = 64;

/// The devpts instance of one deployment or task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtsMount {
    /// Where it is mounted (created if missing): the directory bound at /dev/pts.
    pub dir: PathBuf,
}

impl PtsMount {
    /// In the launcher, as root, in the unit's own mount namespace: a new devpts instance on
    /// `dir` (nosuid, noexec; `ptmx` 0666 and terminals 0620, as bubblewrap's own; at most
    /// [`MAX_PTYS`]).
    #[cfg(target_os = "linux")]
    pub fn mount(&self) -> Result<(), String> {
        use nix::mount::{mount, MsFlags};
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("creating {}: {e}", self.dir.display()))?;
        mount(
            Some("devpts"),
            &self.dir,
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some(format!("newinstance,ptmxmode=0666,mode=620,max={MAX_PTYS}").as_str()),
        )
        .map_err(|e| format!("mounting a devpts instance on {}: {e}", self.dir.display()))
    }

    /// In a task's launcher, after the task (nothing of it holds a terminal any more): detaches
    /// the instance from `dir` (umount2(2) `MNT_DETACH`), so that the unit's next task mounts
    /// a fresh one. Errors: umount2's, naming `dir`.
    #[cfg(target_os = "linux")]
    pub fn unmount(&self) -> Result<(), String> {
        nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH).map_err(|e| {
            format!(
                "unmounting the devpts instance on {}: {e}",
                self.dir.display()
            )
        })
    }
}

/// The most `kernel.pty.max` may be (the kernel's `NR_UNIX98_PTY_MAX`).
const PTY_MAX_LIMIT: u64 = 1 << 20;

/// Sizes the host's shared pool of pseudo-terminals for `sandboxes` deployments at once (the
/// slots of `[ports]`): every devpts instance but the host's own draws from `kernel.pty.max`
/// less `kernel.pty.reserve` (proc_sys_kernel(5); the kernel's devpts.rst), 4096 less 1024 by
/// default, which 48 sandboxes taking their [`MAX_PTYS`] each use up. Where the pool is
/// smaller than `sandboxes` x [`MAX_PTYS`], nxd raises `kernel.pty.max` (an open terminal costs
/// kernel memory, a closed one nothing), as the NixOS module does; where it may not write it (a
/// read-only `/proc/sys`, as systemd's `ProtectKernelTunables` makes), a warning names the
/// sysctl, the value wanted, the sandboxes the pool holds and those nxd serves.
pub fn size_host_pool(sandboxes: u32) {
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/proc/sys/kernel/pty/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let (Some(max), Some(reserve)) = (read("max"), read("reserve")) else {
        tracing::debug!("no kernel.pty.max here: the pseudo-terminals' pool is not sized");
        return;
    };
    let per_sandbox = u64::from(MAX_PTYS);
    let wanted = (u64::from(sandboxes) * per_sandbox + reserve).min(PTY_MAX_LIMIT);
    if max >= wanted {
        return;
    }
    let holds = max.saturating_sub(reserve) / per_sandbox;
    match std::fs::write("/proc/sys/kernel/pty/max", wanted.to_string()) {
        Ok(()) => tracing::info!(
            from = max,
            to = wanted,
            "raised kernel.pty.max from {max} to {wanted}: {sandboxes} sandboxes, {MAX_PTYS} pseudo-terminals each, and kernel.pty.reserve ({reserve}); it held {holds} sandboxes' worth"
        ),
        Err(e) => tracing::warn!(
            max,
            wanted,
            "kernel.pty.max is {max} and nxd cannot raise it ({e}): the pseudo-terminals' pool shared by every sandbox holds {holds} sandboxes that take their {MAX_PTYS} each, and nxd serves {sandboxes}; past it a program's open of /dev/ptmx fails ENOSPC: set kernel.pty.max to {wanted} or more (sysctl -w kernel.pty.max={wanted}, and in /etc/sysctl.d/ to keep it)"
        ),
    }
}
