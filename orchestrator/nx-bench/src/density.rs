//! Density: how much one host spends on deployments when most of them are scaled to zero. On a
//! host of its own, one deployment (sandbox `solo`) is measured alone; then `deployments` more
//! of the sample are registered in sandbox `many`, `running` of them left running and the rest
//! pushed with a 1 s idle timeout, which nxd's upkeep stops on its own (phase `idle`: their
//! routes stay in the router's table, the next request would wake them). Measured beside the
//! host with one deployment: memory per running deployment (its unit's cgroup, as `/metrics`
//! reports it), the whole manager's cgroup (every unit, the router and the manager), the
//! resident memory of nxd and of the router, `nx ls`, and one request through the router to the
//! same running deployment with 1 route in the table and with all of them (the router's lookup
//! is a hash map behind an `ArcSwap`, so a larger table should cost nothing per request).

use crate::views::{self, AtRest, ViewSamples};
use nx_testkit::Host;
use std::time::{Duration, Instant};

/// What the host spends, at one moment.
pub struct Spent {
    /// `nx ls` and the other views (see [`views::measure`]).
    pub views: ViewSamples,
    /// `GET /` through the router to solo's running deployment.
    pub routed: Vec<Duration>,
    /// nxd's resident memory (VmRSS), bytes.
    pub nxd_rss: u64,
    /// nx-router's resident memory (VmRSS), bytes.
    pub router_rss: u64,
    /// The memory cgroup of the embedded manager (every unit below it), bytes
    /// (`memory.usage_in_bytes`, page cache included).
    pub units_memory: u64,
}

pub struct Figures {
    pub deployments: usize,
    pub running: usize,
    /// Pushing them all.
    pub registering: Duration,
    /// From the last push until every one of them was in its phase (running or idle).
    pub settling: Duration,
    /// With solo's deployment only.
    pub alone: Spent,
    /// With solo's and the `deployments` more.
    pub dense: Spent,
    /// Each running deployment's memory (`nx_deployment_memory_bytes`), bytes, sorted.
    pub per_deployment: Vec<u64>,
    /// nxd's peak resident memory (VmHWM) over the whole run, bytes.
    pub nxd_peak_rss: u64,
}

/// The process whose executable is `exe` (a unit's, found by its binary), if one runs.
fn pid_of(exe: &std::path::Path) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe))
}

/// `memory.usage_in_bytes` of the manager's memory cgroup (cgroup v1) or `memory.current`
/// (v2), whichever it has.
fn units_memory(host: &Host) -> anyhow::Result<u64> {
    host.manager_cgroups()
        .iter()
        .flat_map(|dir| {
            [
                dir.join("memory.usage_in_bytes"),
                dir.join("memory.current"),
            ]
        })
        .find_map(|file| std::fs::read_to_string(file).ok()?.trim().parse().ok())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no memory cgroup of the manager: {:?}",
                host.manager_cgroups()
            )
        })
}

/// `samples` of each view and of a routed request to `preview`, and the memory now.
fn spent(host: &Host, preview: &str, samples: usize) -> anyhow::Result<Spent> {
    // The first request of each kind warms nxd's connections and caches.
    views::measure(host, 2);
    crate::wake::timed_get(host, preview)?;
    let views = views::measure(host, samples);
    let routed = (0..samples)
        .map(|_| crate::wake::timed_get(host, preview))
        .collect::<anyhow::Result<_>>()?;
    let router = host.path("bin/nx-router");
    Ok(Spent {
        views,
        routed,
        nxd_rss: nx_testkit::proc_status_bytes(host.nxd_pid(), "VmRSS")
            .ok_or_else(|| anyhow::anyhow!("nxd is gone"))?,
        router_rss: pid_of(&router)
            .and_then(|pid| nx_testkit::proc_status_bytes(pid, "VmRSS"))
            .ok_or_else(|| anyhow::anyhow!("no process runs {}", router.display()))?,
        units_memory: units_memory(host)?,
    })
}

/// Each running deployment of sandbox `many`'s memory, from `GET /metrics`, sorted.
fn memory_of_running(host: &Host) -> Vec<u64> {
    let text = nx_testkit::metrics::scrape(host);
    let of = |name: &str| -> Vec<(String, f64)> {
        let prefix = format!("{name}{{sandbox=\"many\",");
        text.lines()
            .filter_map(|l| {
                let (labels, value) = l.strip_prefix(&prefix)?.rsplit_once(' ')?;
                Some((labels.to_owned(), value.parse().ok()?))
            })
            .collect()
    };
    let up: std::collections::HashSet<String> = of("nx_deployment_up")
        .into_iter()
        .filter(|(_, v)| *v == 1.0)
        .map(|(labels, _)| labels)
        .collect();
    let mut memory: Vec<u64> = of("nx_deployment_memory_bytes")
        .into_iter()
        .filter(|(labels, _)| up.contains(labels))
        .map(|(_, v)| v as u64)
        .collect();
    memory.sort();
    memory
}

pub fn run(deployments: usize, running: usize, samples: usize) -> anyhow::Result<Figures> {
    anyhow::ensure!(
        running <= deployments,
        "--running {running} is more than --deployments {deployments}"
    );
    let host = views::host_for(nx_testkit::bin("nxd"), deployments)?;
    let solo = host.push_sample("solo", &["--disk", "0"]);
    let preview = host.preview_host("solo", &solo);
    let alone = spent(&host, &preview, samples)?;

    let started = Instant::now();
    views::register(&host, deployments, running, AtRest::Idle);
    let registering = started.elapsed();
    let started = Instant::now();
    views::wait_for_phases(
        &host,
        "many",
        &[("running", running), ("idle", deployments - running)],
        Duration::from_secs(300),
    )?;
    let settling = started.elapsed();

    let dense = spent(&host, &preview, samples)?;
    let per_deployment = memory_of_running(&host);
    anyhow::ensure!(
        per_deployment.len() == running,
        "/metrics has the memory of {} running deployments of sandbox many, not {running}",
        per_deployment.len()
    );
    Ok(Figures {
        deployments,
        running,
        registering,
        settling,
        alone,
        dense,
        per_deployment,
        nxd_peak_rss: host.nxd_peak_rss(),
    })
}
