//! The cost of a deployment's network: namespace + veth + addresses + routes + sysctls, as the
//! launcher sets them up (`network::attach::enter`), timed one by one while 500 such
//! namespaces stay up, and the kernel memory they hold, against as many empty namespaces; with
//! IPv6 (what deployments get on a host that has it) and on a host without (IPv4 only). All
//! inside a network namespace made for the benchmark (with nxd's host side and firewall in
//! it), never the machine's own.

use nx_orchestrator::network::host::HostNetwork;
use nx_orchestrator::network::{attach, Egress, NetworkConfig};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// Kernel memory from /proc/meminfo, in KiB: (MemAvailable, SUnreclaim + Percpu + VmallocUsed).
fn meminfo() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (
        field("MemAvailable:"),
        field("SUnreclaim:") + field("Percpu:") + field("VmallocUsed:"),
    )
}

/// The calling thread's network namespace.
fn own_namespace() -> OwnedFd {
    std::fs::File::open("/proc/thread-self/ns/net")
        .expect("open /proc/thread-self/ns/net")
        .into()
}

/// How many times the namespaces are set up and torn down: memory is the median of the rounds
/// (others' work on the machine moves the kernel's counters by megabytes either way).
pub const ROUNDS: usize = 3;

pub struct SetupCost {
    /// Every setup of every round.
    pub samples: Vec<Duration>,
    /// KiB per deployment, the median of the rounds: (less MemAvailable, more kernel memory).
    pub kib_each: (f64, f64),
    /// Kernel memory of an empty network namespace (only `lo`), KiB, median of the rounds: the
    /// floor of any namespace per deployment on this kernel.
    pub bare_kib_each: f64,
}

/// Waits until the kernel has freed namespaces dropped earlier: the kernel tears them down in
/// a work queue (`cleanup_net`), seconds after the last reference goes, so a reading taken
/// meanwhile counts that release against what is being measured. Settled means kernel
/// memory fell less than 256 KiB over the last second; at most 60 s.
fn settle() {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = meminfo().1;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        let now = meminfo().1;
        if last.saturating_sub(now) < 256 {
            return;
        }
        last = now;
    }
}

/// KiB per item between two readings of `meminfo`: (less MemAvailable, more kernel memory).
fn per_item(before: (u64, u64), after: (u64, u64), n: usize) -> (f64, f64) {
    let n = n.max(1) as f64;
    (
        before.0.saturating_sub(after.0) as f64 / n,
        after.1.saturating_sub(before.1) as f64 / n,
    )
}

/// Kernel memory per empty network namespace, `n` of them kept up, in KiB.
fn bare_namespaces(n: usize) -> f64 {
    settle();
    let before = meminfo();
    let held: Vec<OwnedFd> = (0..n)
        .filter_map(|_| {
            std::thread::spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
                Some(own_namespace())
            })
            .join()
            .ok()
            .flatten()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let each = per_item(before, meminfo(), held.len()).1;
    drop(held);
    each
}

/// One round: `n` deployments' namespaces (slots 0..n, alternating egress) set up one by one
/// and all kept up until measured. Returns the setup times and the memory per deployment.
fn deployments(network: &HostNetwork, n: usize) -> anyhow::Result<(Vec<Duration>, (f64, f64))> {
    settle();
    let before = meminfo();
    let mut samples = Vec::with_capacity(n);
    let mut namespaces = Vec::with_capacity(n);
    for slot in 0..n {
        let egress = if slot % 2 == 0 {
            Egress::Public
        } else {
            Egress::None
        };
        let attachment = network
            .plan()
            .attachment(&format!("b{slot:07}"), slot as u32, egress)?;
        // A fresh thread starts in this (the benchmark's host) namespace, like a launcher.
        let (took, ns) = std::thread::spawn(move || -> anyhow::Result<_> {
            let started = Instant::now();
            attach::enter(&attachment)?;
            Ok((started.elapsed(), own_namespace()))
        })
        .join()
        .expect("setup thread")?;
        samples.push(took);
        namespaces.push(ns);
    }
    std::thread::sleep(Duration::from_millis(500));
    let each = per_item(before, meminfo(), n);
    drop(namespaces);
    Ok((samples, each))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Sets up `n` deployments' namespaces in a namespace of the benchmark's own, `ROUNDS` times,
/// each time alongside as many empty namespaces measured apart. `ipv6`: that namespace has
/// IPv6 (deployments get addresses of `network.subnet6`; an error where the kernel has none),
/// else IPv6 is off in it, as on a host without.
pub fn setup_cost(n: usize, ipv6: bool) -> anyhow::Result<SetupCost> {
    std::thread::spawn(move || -> anyhow::Result<SetupCost> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
        if !ipv6 {
            for scope in ["all", "default"] {
                std::fs::write(format!("/proc/sys/net/ipv6/conf/{scope}/disable_ipv6"), "1")?;
            }
        }
        let state = tempfile::Builder::new()
            .prefix("nx-bench-net-")
            .tempdir_in("/var/tmp")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let config = NetworkConfig::default();
        let network = runtime.block_on(async {
            let claim = HostNetwork::check(state.path()).await?;
            HostNetwork::start(claim, &config, n as u32, state.path()).await
        })?;
        anyhow::ensure!(
            network.plan().subnet6().is_some() == ipv6,
            "deployments' IPv6 is {} where the benchmark asked for {}",
            network.plan().subnet6().is_some(),
            ipv6
        );
        let (mut samples, mut available, mut kernel, mut bare) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            bare.push(bare_namespaces(n));
            let (times, each) = deployments(&network, n)?;
            samples.extend(times);
            available.push(each.0);
            kernel.push(each.1);
        }
        Ok(SetupCost {
            samples,
            kib_each: (median(available), median(kernel)),
            bare_kib_each: median(bare),
        })
    })
    .join()
    .expect("benchmark thread")
}
