//! The kernel's cgroup option `favordynmods`, which the embedded manager turns on before it
//! starts systemd. Without it, moving a process into a cgroup (a write to `cgroup.procs`, which
//! systemd does for the process of every unit it starts) write-locks the kernel's global
//! `cgroup_threadgroup_rwsem`, and that lock first waits for an RCU grace period unless another
//! move happened within the previous one: 9–16 ms on the 2-core hosts NX is measured on, most
//! of a push's `launcher` step and of a task's start. With it, moves do not wait, and forks and
//! exits take the lock's slower (non-per-CPU) read path (Documentation/admin-guide/
//! cgroup-v2.rst, "favordynmods"; kernel commit 6a010a49b63a, Linux 6.0).
//!
//! The option belongs to the cgroup2 root but the lock is global, so it also holds for every
//! cgroup v1 hierarchy, and it is set by mounting cgroup2 with it (from the initial cgroup
//! namespace): every cgroup2 mount sets all of the root's options, so the mount repeats those
//! the host's cgroup2 has (`nsdelegate`, `memory_recursiveprot`, ...). The mount is made in the
//! manager's private mount namespace and removed at once; the option stays on. Since Linux 6.18
//! (commit 0568f89d4fb8) it cannot be turned off again until the next boot.

use nix::mount::{mount, umount, MsFlags};
use std::path::Path;

/// The option's name, as the kernel's cgroup2 mount takes it.
const OPTION: &str = "favordynmods";

/// The options to mount cgroup2 with so that `favordynmods` is on and the root's other
/// options stay as the host has them, from the text of `/proc/self/mountinfo` (proc(5): the
/// super options are the last field, after the separator `-`, the type and the source); `None`
/// when a cgroup2 mount shows it on already.
pub(super) fn mount_options(mountinfo: &str) -> Option<String> {
    let host = mountinfo.lines().find_map(|line| {
        let (_, fs) = line.split_once(" - ")?;
        let mut fields = fs.split_whitespace();
        (fields.next()? == "cgroup2").then(|| fields.nth(1).unwrap_or_default())
    });
    let mut options: Vec<&str> = host
        .unwrap_or_default()
        .split(',')
        .filter(|o| !o.is_empty() && *o != "rw" && *o != "ro")
        .collect();
    if options.contains(&OPTION) {
        return None;
    }
    options.push(OPTION);
    Some(options.join(","))
}

/// Turns `favordynmods` on by mounting cgroup2 with it on `dir` (an empty directory of this
/// process's private mount namespace) and unmounting it. Returns whether it was off before.
/// Errors: the mount's, e.g. `EINVAL` from a kernel before 6.0, which has no such option.
pub(super) fn turn_on(dir: &Path) -> Result<bool, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    let Some(options) = mount_options(&mountinfo) else {
        return Ok(false);
    };
    mount(
        Some("cgroup2"),
        dir,
        Some("cgroup2"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(options.as_str()),
    )
    .map_err(|e| format!("mount -t cgroup2 -o {options}: {e}"))?;
    umount(dir).map_err(|e| format!("umount {}: {e}", dir.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::mount_options;

    #[test]
    fn the_hosts_cgroup2_options_are_kept_and_favordynmods_added_once() {
        // cgroups v1 only (this machine): the option alone.
        let v1 =
            "30 25 0:26 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory\n";
        assert_eq!(mount_options(v1).as_deref(), Some("favordynmods"));
        // A unified host (systemd's options): they are kept, favordynmods added.
        let v2 = "26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        assert_eq!(
            mount_options(&format!("{v1}{v2}")).as_deref(),
            Some("nsdelegate,memory_recursiveprot,favordynmods")
        );
        // On already: nothing to mount.
        let on = v2.replace("recursiveprot", "recursiveprot,favordynmods");
        assert_eq!(mount_options(&on), None);
    }
}
