//! The bounds requests are checked against ([`nx_api::checks`]): sizes from the config, and
//! limits no larger than this host: its memory (`MemTotal` of /proc/meminfo), its CPUs and its
//! `pid_max` (/proc/sys/kernel/pid_max; see proc(5)).

use crate::config::SandboxDefaults;
use nx_api::checks::RequestBounds;

/// `MemTotal` in MiB.
fn host_memory_mb() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

fn pid_max() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// This host's bounds under `sandbox`'s sizes. Where /proc cannot say, the host's limit is
/// taken as unbounded (systemd and the kernel still refuse what cannot be).
pub fn for_host(sandbox: &SandboxDefaults) -> RequestBounds {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    RequestBounds {
        max_args_bytes: sandbox.max_args_bytes,
        max_env_bytes: sandbox.max_env_bytes,
        max_memory_mb: host_memory_mb().unwrap_or(u64::MAX >> 20),
        max_cpu_quota_percent: u32::try_from(cpus * 100).unwrap_or(u32::MAX),
        max_tasks: pid_max().unwrap_or(u64::MAX),
        max_nofile: sandbox.max_nofile,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_host_has_memory_cpus_and_pids() {
        let bounds = super::for_host(&Default::default());
        assert!(bounds.max_memory_mb > 64 && bounds.max_memory_mb < u64::MAX >> 20);
        assert!(bounds.max_cpu_quota_percent >= 100);
        assert!(bounds.max_tasks >= 1024 && bounds.max_tasks < u64::MAX);
    }
}
