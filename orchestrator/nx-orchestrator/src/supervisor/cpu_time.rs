//! A unit's CPU time, read from its cgroups (systemd's `CPUUsageNSec` has none on cgroup v1 hosts
//! that mount the `cpu` and `cpuacct` controllers apart, like this one). In order of preference:
//! 1. cgroup v2: `cpu.stat`'s `usage_usec` in the unit's unified cgroup (cgroups(7));
//! 2. cgroup v1: `cpuacct.usage` (nanoseconds) in the unit's cpuacct cgroup, when one exists;
//! 3. otherwise the sum over the unit's processes (`cgroup.procs` of any of its hierarchies) of
//!    `utime + stime + cutime + cstime` from `/proc/<pid>/stat` (proc(5)): the time of the live
//!    processes and of the children they have reaped (a unit's launcher reaps its program).

use super::{Supervisor, SupervisorError};
use std::path::{Path, PathBuf};

impl Supervisor {
    /// CPU time of `unit`'s cgroup since the unit started, nanoseconds; `None` when it has no
    /// cgroup (it does not run) or none of the sources above answers.
    pub async fn cpu_nsec(&self, unit: &str) -> Result<Option<u64>, SupervisorError> {
        Ok(cpu_nsec(&self.unit_dirs(unit).await?))
    }

    /// The process ids of `unit`'s processes (`cgroup.procs`), as this process sees them;
    /// empty when it does not run. Read in the cgroup the unit was last found in while it is
    /// there; only otherwise is the manager asked where it is, for [`PIDS_ASK_TIMEOUT`] at
    /// most (attacker s16 W2: asked at every look of the database watch, a manager that did
    /// not answer, stopped or slow, held the watch, and a backend grew 2.4 GiB past its bound).
    /// Errors: the manager's, or its silence past the timeout.
    pub async fn unit_pids(&self, unit: &str) -> Result<Vec<u32>, SupervisorError> {
        let known = self.pid_dirs.lock().expect("pid dirs").get(unit).cloned();
        if let Some(pids) = known.as_deref().and_then(read_pids) {
            return Ok(pids);
        }
        let dirs = tokio::time::timeout(PIDS_ASK_TIMEOUT, self.unit_dirs(unit))
            .await
            .map_err(|_| SupervisorError::NoAnswer {
                what: format!("where unit {unit} runs"),
                within: PIDS_ASK_TIMEOUT,
            })??;
        let pids = read_pids(&dirs).unwrap_or_default();
        if !dirs.is_empty() {
            self.pid_dirs
                .lock()
                .expect("pid dirs")
                .insert(unit.to_owned(), dirs);
        }
        Ok(pids)
    }

    /// The directories of `unit`'s cgroup in each hierarchy; none when it does not run.
    async fn unit_dirs(&self, unit: &str) -> Result<Vec<PathBuf>, SupervisorError> {
        let control_group = self.control_group(unit).await?;
        if control_group.is_empty() {
            return Ok(Vec::new());
        }
        let roots = match &self.embedded {
            #[cfg(target_os = "linux")]
            Some(state_dir) => super::embedded::hierarchy_roots(state_dir),
            _ => system_roots(),
        };
        Ok(unit_dirs(&roots, &control_group))
    }
}

/// How long [`Supervisor::unit_pids`] waits for the manager to say where a unit runs.
pub const PIDS_ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The process ids in the first of `dirs` whose `cgroup.procs` reads; `None` when none does
/// (the cgroup is gone: the unit stopped).
fn read_pids(dirs: &[PathBuf]) -> Option<Vec<u32>> {
    dirs.iter()
        .find_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .map(|procs| {
            procs
                .lines()
                .filter_map(|p| p.trim().parse().ok())
                .collect()
        })
}

/// The directories of the cgroup `control_group` (a unit's `ControlGroup`, e.g.
/// `/nx.slice/nx-d1.service`) under each hierarchy root that holds it.
fn unit_dirs(roots: &[PathBuf], control_group: &str) -> Vec<PathBuf> {
    let relative = control_group.trim_start_matches('/');
    roots
        .iter()
        .flat_map(|root| {
            // A manager in a cgroup namespace reports paths below its own root; one without
            // reports them from the hierarchy's root.
            [
                Some(root.join(relative)),
                root.parent().map(|p| p.join(relative)),
            ]
        })
        .flatten()
        .filter(|dir| dir.is_dir())
        .collect()
}

/// The hierarchy roots of the host's own systemd: the unified hierarchy, or every v1 one.
fn system_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").is_file() {
        return vec![base.to_owned()];
    }
    std::fs::read_dir(base)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.join("cgroup.procs").is_file())
                .collect()
        })
        .unwrap_or_default()
}

/// CPU time of the cgroup whose directories are `dirs`, nanoseconds.
fn cpu_nsec(dirs: &[PathBuf]) -> Option<u64> {
    let keyed = |path: PathBuf, key: &str| -> Option<u64> {
        std::fs::read_to_string(path)
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
    };
    if let Some(usec) = dirs
        .iter()
        .find_map(|d| keyed(d.join("cpu.stat"), "usage_usec"))
    {
        return Some(usec * 1000);
    }
    let cpuacct = dirs.iter().find_map(|d| {
        std::fs::read_to_string(d.join("cpuacct.usage"))
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    if cpuacct.is_some() {
        return cpuacct;
    }
    let procs = dirs
        .iter()
        .find_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())?;
    let ticks_per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&t| t > 0)? as u64;
    let ticks: u64 = procs
        .lines()
        .filter_map(|pid| process_ticks(pid.trim()))
        .sum();
    Some(ticks * 1_000_000_000 / ticks_per_sec)
}

/// `utime + stime + cutime + cstime` of one process, clock ticks.
fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    // rest starts at field 3 (state); utime..cstime are fields 14..17.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let sum = fields
        .get(11..15)?
        .iter()
        .map(|f| f.parse::<i64>().unwrap_or(0).max(0) as u64)
        .sum();
    Some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_process_s_time_is_counted_from_the_cgroup_s_process_list() {
        // A cgroup directory of one hierarchy without CPU accounting that lists this process.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cgroup.procs"),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        let dirs = [dir.path().to_owned()];
        let own = || {
            let usage =
                nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
            let nsec = |t: nix::sys::time::TimeVal| {
                t.tv_sec() as u64 * 1_000_000_000 + t.tv_usec() as u64 * 1000
            };
            nsec(usage.user_time()) + nsec(usage.system_time())
        };
        let before = cpu_nsec(&dirs).expect("a CPU time");
        // Busy for 300 ms of CPU time (however long that takes on a shared machine).
        let start = own();
        let mut x = 0u64;
        while own() < start + 300_000_000 {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = cpu_nsec(&dirs).expect("a CPU time");
        // Clock ticks are 10 ms.
        assert!(after >= before + 250_000_000, "{before} -> {after}");
        // cpuacct.usage, where there is one, wins.
        std::fs::write(dir.path().join("cpuacct.usage"), "1234\n").unwrap();
        assert_eq!(cpu_nsec(&dirs), Some(1234));
        std::fs::write(dir.path().join("cpu.stat"), "usage_usec 7\nuser_usec 5\n").unwrap();
        assert_eq!(cpu_nsec(&dirs), Some(7000));
    }

    #[test]
    fn the_stat_line_s_times_are_summed_past_a_name_with_spaces() {
        assert!(process_ticks("self").is_some());
        assert_eq!(process_ticks("0"), None);
    }
}
