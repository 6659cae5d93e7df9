//! CPU pinning of persistent deployments (pets, `nx push --persistent`): which CPUs a
//! deployment's unit is pinned to with systemd's `CPUAffinity=` (systemd.exec(5)), which the
//! manager applies with sched_setaffinity(2) before it runs the launcher, so that every thread
//! of the VMM (its vCPU threads too) inherits it.

use crate::config::Limits;
use crate::domain::{BackendKind, Deployment, Tier};
use crate::error::Error;

/// The tier of a push (`PushRequest.persistent`) on `backend`: `persistent` is defined for
/// microVMs only (vCPUs pinned, no balloon); asking for it on another backend is
/// [`Error::Invalid`], with what to do instead.
pub fn tier(persistent: bool, backend: BackendKind) -> Result<Tier, Error> {
    match (persistent, backend) {
        (false, _) => Ok(Tier::Ephemeral),
        (true, BackendKind::Microvm) => Ok(Tier::Persistent),
        (true, other) => Err(Error::Invalid(format!(
            "--persistent is for microVM deployments (a guest pinned to CPUs of its own, no memory balloon); this sandbox runs {other}: push with --backend microvm, or without --persistent"
        ))),
    }
}

/// The CPUs `limits` give a deployment: its `CPUQuota` rounded up to whole CPUs, at least one
/// (a microVM gets as many vCPUs).
pub fn cpus_needed(limits: &Limits) -> u32 {
    limits.cpu_quota_percent.div_ceil(100).max(1)
}

/// The CPUs nxd may run on (its own affinity mask, sched_getaffinity(2)), ascending; the
/// embedded manager and its units start inside it.
pub fn available() -> Vec<u32> {
    let Ok(set) = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) else {
        return Vec::new();
    };
    (0..nix::sched::CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .filter_map(|cpu| u32::try_from(cpu).ok())
        .collect()
}

/// The CPUs a deployment's unit is pinned to, from the CPUs nxd may use (`available`): none
/// for an ephemeral deployment; for a persistent one [`cpus_needed`] of them (all, when it
/// needs as many or more), taken in turn from an offset its slot (its `port`) gives, `slot ×
/// count` modulo the CPUs. Persistent deployments so spread over the host's CPUs, and each
/// keeps the same CPUs across its restarts and nxd's.
pub fn pinned(deployment: &Deployment, available: &[u32]) -> Vec<u32> {
    if deployment.tier != Tier::Persistent || available.is_empty() {
        return Vec::new();
    }
    let n = available.len();
    let count = (cpus_needed(&deployment.limits) as usize).min(n);
    let offset = usize::from(deployment.port) * count % n;
    let mut cpus: Vec<u32> = (0..count).map(|i| available[(offset + i) % n]).collect();
    cpus.sort_unstable();
    cpus
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(port: u16, tier: Tier, cpu_quota_percent: u32) -> Deployment {
        Deployment {
            id: crate::names::DeploymentId::generate(),
            sandbox: crate::names::SandboxName::parse("pets").unwrap(),
            artifact: String::new(),
            port,
            listen_port: None,
            egress: Default::default(),
            uid: 0,
            env: Default::default(),
            args: Vec::new(),
            limits: Limits {
                cpu_quota_percent,
                ..crate::config::Config::default().limits
            },
            desired: crate::domain::Desired::Running,
            db_branch: false,
            runtime: Default::default(),
            backend: crate::domain::BackendKind::Microvm,
            ready_timeout_secs: None,
            volumes: Vec::new(),
            tier,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn persistent_deployments_spread_over_the_cpus_and_ephemeral_ones_are_not_pinned() {
        let four = [0, 1, 2, 3];
        assert!(pinned(&deployment(21000, Tier::Ephemeral, 100), &four).is_empty());
        let one_each: Vec<Vec<u32>> = (21000..21004)
            .map(|port| pinned(&deployment(port, Tier::Persistent, 100), &four))
            .collect();
        assert_eq!(one_each, [vec![0], vec![1], vec![2], vec![3]]);
        // Two vCPUs: two CPUs, wrapping around; more than the host has: all of them.
        assert_eq!(
            pinned(&deployment(21001, Tier::Persistent, 150), &four),
            [2, 3]
        );
        assert_eq!(
            pinned(&deployment(21003, Tier::Persistent, 200), &[4, 6, 9]),
            [4, 6]
        );
        assert_eq!(
            pinned(&deployment(21000, Tier::Persistent, 800), &four),
            four
        );
    }
}
