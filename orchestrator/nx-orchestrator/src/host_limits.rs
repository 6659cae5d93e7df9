//! What this host has, and what nxd derives from it: the bounds requests are checked against
//! ([`nx_api::checks`]: sizes from the config, limits no larger than the host) and the caps of
//! the tenants' slice. The host's memory is `MemTotal` of /proc/meminfo, its task limit
//! `pid_max` (/proc/sys/kernel/pid_max; see proc(5)).

use crate::config::{Config, SystemdConfig};
use crate::supervisor::SliceCaps;
use nx_api::checks::RequestBounds;
use std::path::Path;

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

/// What nxd keeps free on the filesystem of its state directory, in MiB: a deployment's
/// `/data`, its log cap or a volume must fit in the free space less this, so that nxd's own
/// state, its database and the logs still have room when they are full.
pub const DISK_RESERVE_MB: u64 = 1024;

/// What the filesystem holding `dir` has free for nxd (root's reserved blocks not counted,
/// statvfs(3) `f_bavail`), in MiB.
pub fn disk_free_mb(dir: &Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(stat.blocks_available().saturating_mul(stat.fragment_size()) >> 20)
}

/// This host's bounds under `config`'s sizes (`[sandbox]`), the task limit of one sandbox's
/// slice (`systemd.sandbox_tasks_max`) and the free space of the state directory's filesystem,
/// with nothing promised to deployments' logs (a push counts those: `Orchestrator::push`).
/// Where /proc or statvfs cannot say, the host's limit is taken as unbounded (systemd, the
/// kernel and the filesystem still refuse what cannot be).
pub fn request_bounds(config: &Config) -> RequestBounds {
    let sandbox = &config.sandbox;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    RequestBounds {
        max_args_bytes: sandbox.max_args_bytes,
        max_env_bytes: sandbox.max_env_bytes,
        max_memory_mb: host_memory_mb().unwrap_or(u64::MAX >> 20),
        max_cpu_quota_percent: u32::try_from(cpus * 100).unwrap_or(u32::MAX),
        max_tasks: pid_max()
            .unwrap_or(u64::MAX)
            .min(config.systemd.sandbox_tasks_max),
        max_nofile: sandbox.max_nofile,
        max_ready_timeout_secs: sandbox.max_ready_timeout_secs,
        disk_free_mb: disk_free_mb(&config.state_dir).unwrap_or(u64::MAX >> 20),
        disk_reserve_mb: DISK_RESERVE_MB,
        disk_promised_mb: 0,
        max_log_mb: sandbox.max_log_mb,
    }
}

/// The tenants' slice's caps under `systemd`: `slice_tasks_max` tasks and
/// `slice_memory_max_percent` of the host's memory; each sandbox's slice `sandbox_tasks_max`,
/// the tasks' slice `tasks_slice_tasks_max`.
pub fn slice_caps(systemd: &SystemdConfig) -> SliceCaps {
    let memory_mb = host_memory_mb().unwrap_or(u64::MAX >> 20);
    SliceCaps {
        tasks_max: systemd.slice_tasks_max,
        sandbox_tasks_max: systemd.sandbox_tasks_max,
        tasks_slice_tasks_max: systemd.tasks_slice_tasks_max,
        memory_max_bytes: (memory_mb * u64::from(systemd.slice_memory_max_percent) / 100) << 20,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_host_has_memory_cpus_and_pids() {
        let caps = super::slice_caps(&Default::default());
        assert!(caps.memory_max_bytes > 64 << 20);
        let config = crate::config::Config {
            state_dir: "/".into(),
            ..Default::default()
        };
        let bounds = super::request_bounds(&config);
        assert!(bounds.max_memory_mb > 64 && bounds.max_memory_mb < u64::MAX >> 20);
        assert!(bounds.max_cpu_quota_percent >= 100);
        assert_eq!(
            bounds.max_tasks, 2048,
            "systemd.sandbox_tasks_max's default, below pid_max"
        );
        assert!(bounds.disk_free_mb > 0 && bounds.disk_free_mb < u64::MAX >> 20);
    }
}
