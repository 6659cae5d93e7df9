//! The cost of a deployment's network: namespace + veth + addresses + routes + sysctls, as the
//! launcher sets them up (`network::attach::enter`), timed one by one while 500 such
//! namespaces stay up, and the kernel memory they hold. All inside a network namespace made
//! for the benchmark (with nxd's host side and firewall in it), never the machine's own.

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

pub struct SetupCost {
    pub samples: Vec<Duration>,
    /// KiB per deployment: (less MemAvailable, more kernel memory).
    pub kib_each: (f64, f64),
    /// Kernel memory of an empty network namespace (only `lo`), KiB: the floor of any
    /// namespace per deployment on this kernel.
    pub bare_kib_each: f64,
}

/// Kernel memory per empty network namespace, `n` of them kept up, in KiB.
fn bare_namespaces(n: usize) -> f64 {
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
    let after = meminfo();
    let each = after.1.saturating_sub(before.1) as f64 / held.len().max(1) as f64;
    drop(held);
    each
}

/// Sets up `n` deployments' namespaces (slots 0..n, alternating egress) in a namespace of the
/// benchmark's own; each stays up until all are measured.
pub fn setup_cost(n: usize) -> anyhow::Result<SetupCost> {
    std::thread::spawn(move || -> anyhow::Result<SetupCost> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
        let state = tempfile::Builder::new()
            .prefix("nx-bench-net-")
            .tempdir_in("/var/tmp")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let config = NetworkConfig::default();
        let network = runtime.block_on(HostNetwork::start(&config, n as u32, state.path()))?;
        let before = meminfo();
        let mut samples = Vec::with_capacity(n);
        let mut namespaces = Vec::with_capacity(n);
        for slot in 0..n {
            let egress = if slot % 2 == 0 {
                Egress::Public
            } else {
                Egress::None
            };
            let attachment =
                network
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
        // The kernel frees some of it lazily; give it a moment before reading.
        std::thread::sleep(Duration::from_millis(500));
        let after = meminfo();
        let each = |a: u64, b: u64| a.abs_diff(b) as f64 / n as f64;
        let kib_each = (each(before.0, after.0), each(after.1, before.1));
        drop(namespaces);
        Ok(SetupCost {
            samples,
            kib_each,
            bare_kib_each: bare_namespaces(n),
        })
    })
    .join()
    .expect("benchmark thread")
}
