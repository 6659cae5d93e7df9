//! Views against the number of deployments on the host: `nx ls` and `nx status` of a sandbox
//! with one deployment, on a host with only that one and on another where `many` more
//! deployments were pushed to another sandbox (all but `running` of them stopped again), both
//! measured in the same rounds, each view timed as a user runs it (the CLI process, its
//! request, nxd's view, the table printed) and as the API request alone. Given another build
//! of nxd (a baseline), both builds serve both hosts in turn, round after round.

use nx_testkit::Host;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The first deployment port of the bench's host: its range (one port per deployment, stopped
/// ones included) stays below the test hosts' blocks (21000 and up).
const FIRST_PORT: u16 = 10000;
/// The uid block of the bench's host (beyond the test hosts' 256 blocks).
const UID_BLOCK: u16 = 300;
/// Clients pushing at once while the deployments are registered.
const PUSHERS: usize = 4;
/// Rounds in which the samples of each view are taken (each build of nxd serving in turn).
const ROUNDS: usize = 5;

/// Samples of one view, on the host as it was then.
#[derive(Default)]
pub struct ViewSamples {
    pub ls_cli: Vec<Duration>,
    pub ls_api: Vec<Duration>,
    pub status_cli: Vec<Duration>,
    pub status_api: Vec<Duration>,
}

impl ViewSamples {
    fn extend(&mut self, more: ViewSamples) {
        self.ls_cli.extend(more.ls_cli);
        self.ls_api.extend(more.ls_api);
        self.status_cli.extend(more.status_cli);
        self.status_api.extend(more.status_api);
    }
}

/// The samples of one build of nxd.
pub struct BuildFigures {
    /// The nxd binary.
    pub nxd: PathBuf,
    /// On the host with the measured sandbox's one deployment only.
    pub alone: ViewSamples,
    /// With `many` more, `running` of them running.
    pub among_many: ViewSamples,
}

pub struct Figures {
    /// This workspace's nxd first, then the baseline, if one was given.
    pub builds: Vec<BuildFigures>,
    pub many: usize,
    pub running: usize,
    /// How long registering them took.
    pub registering: Duration,
}

fn timed(n: usize, mut f: impl FnMut()) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect()
}

fn api_get(host: &Host, path: &str) {
    let response = host
        .http()
        .get(format!("http://{}{path}", host.api))
        .bearer_auth(&host.token)
        .send()
        .expect("nxd answers");
    assert!(response.status().is_success(), "GET {path}: {response:?}");
    response.bytes().expect("body");
}

fn nx_ok(host: &Host, args: &[&str]) {
    let out = host.nx(args);
    assert!(out.ok, "nx {args:?}: {}", out.stderr);
}

/// `samples` of each view, each view's in a row. Not interleaved: on a host of many
/// deployments, an `nx ls` prints a thousand rows from a megabyte of JSON, and a request just
/// after it, of any kind, waited on what that left behind (caches, memory being freed) and
/// not on its own view (`nx status solo` 1.2x its time alone when each followed an `nx ls`,
/// 1.0x in nxd's CPU and PostgreSQL's per request: session 28). Rounds (see
/// [`measure_builds`]) keep one view from profiting from running later.
pub fn measure(host: &Host, samples: usize) -> ViewSamples {
    ViewSamples {
        ls_cli: timed(samples, || nx_ok(host, &["ls"])),
        ls_api: timed(samples, || api_get(host, "/v1/sandboxes")),
        status_cli: timed(samples, || nx_ok(host, &["status", "solo"])),
        status_api: timed(samples, || api_get(host, "/v1/sandboxes/solo")),
    }
}

/// About `samples` of each view from each nxd in `builds` on each of `hosts`, by host then by
/// build, in [`ROUNDS`] rounds: each round measures every host and build in turn, so that a
/// machine that is slower for a while slows them all alike. With more than one build, each
/// host's nxd is restarted as each in turn (same state dir, units left running).
fn measure_builds(
    hosts: &mut [&mut Host],
    builds: &[PathBuf],
    samples: usize,
) -> Vec<Vec<ViewSamples>> {
    let mut all: Vec<Vec<ViewSamples>> = hosts
        .iter()
        .map(|_| builds.iter().map(|_| ViewSamples::default()).collect())
        .collect();
    for _ in 0..ROUNDS {
        for (nxd, b) in builds.iter().zip(0..) {
            for (host, taken) in hosts.iter_mut().zip(&mut all) {
                if builds.len() > 1 {
                    host.restart_nxd_as(nxd.clone());
                }
                // The first request of each kind warms nxd's connections and caches.
                measure(host, 2);
                taken[b].extend(measure(host, samples.div_ceil(ROUNDS)));
            }
        }
    }
    all
}

/// How the deployments that are registered but not left running are put to rest.
#[derive(Clone, Copy)]
pub enum AtRest {
    /// `nx stop` after its push (phase `stopped`: no route, no unit).
    Stopped,
    /// Pushed with a 1 s idle timeout, which nxd's upkeep stops on its own, with no call of the
    /// bench's (phase `idle`: its route stays, the next request wakes it). Registering this way
    /// saves an `nx stop` per deployment.
    Idle,
}

/// Pushes `many` deployments of the sample to sandbox `many` from [`PUSHERS`] clients at once
/// and puts all but `running` of them to rest (`at_rest`; with [`AtRest::Idle`] they may still
/// run when this returns: see [`wait_for_phases`]).
pub fn register(host: &Host, many: usize, running: usize, at_rest: AtRest) {
    let done = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for client in 0..PUSHERS {
            let done = &done;
            scope.spawn(move || {
                for i in (client..many).step_by(PUSHERS) {
                    let resting = i >= running;
                    match (resting, at_rest) {
                        (true, AtRest::Idle) => {
                            host.push_sample("many", &["--disk", "0", "--idle-timeout", "1s"]);
                        }
                        (true, AtRest::Stopped) => {
                            let id = host.push_sample("many", &["--disk", "0"]);
                            host.nx_json(&["stop", &id]);
                        }
                        (false, _) => {
                            host.push_sample("many", &["--disk", "0"]);
                        }
                    }
                    let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    if n.is_multiple_of(100) {
                        eprintln!("{n} of {many} deployments registered");
                    }
                }
            });
        }
    });
}

/// The deployments of `sandbox` as `GET /v1/sandboxes/{sandbox}` lists them (JSON objects
/// with `id` and `phase`).
pub fn deployments(host: &Host, sandbox: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let view: serde_json::Value = host
        .http()
        .get(format!("http://{}/v1/sandboxes/{sandbox}", host.api))
        .bearer_auth(&host.token)
        .send()?
        .error_for_status()?
        .json()?;
    Ok(view["deployments"].as_array().cloned().unwrap_or_default())
}

/// Waits until `sandbox` has `want` deployments in each phase named (e.g. `[("running", 200),
/// ("idle", 800)]`); errors after `within`, naming what it had.
pub fn wait_for_phases(
    host: &Host,
    sandbox: &str,
    want: &[(&str, usize)],
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let listed = deployments(host, sandbox)?;
        let count = |phase: &str| listed.iter().filter(|d| d["phase"] == phase).count();
        if want.iter().all(|&(phase, n)| count(phase) == n) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let mut had: Vec<String> = listed
                .iter()
                .filter_map(|d| d["phase"].as_str().map(str::to_owned))
                .collect();
            had.sort();
            had.dedup();
            let had: Vec<String> = had.iter().map(|p| format!("{p} {}", count(p))).collect();
            anyhow::bail!(
                "sandbox {sandbox}: wanted {want:?} within {} s, had {}",
                within.as_secs(),
                had.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A host (the nxd at `nxd`) with ports for one measured deployment and `many` more, whose
/// deployments' logs are capped at 1 MiB: a push's log cap must fit in the free disk beside
/// the caps of those already there (1,000 of the default 100 MiB would not on most hosts);
/// sandbox `many` may hold them all (`sandbox.max_deployments`: a baseline nxd must be a
/// build that knows the key).
pub fn host_for(nxd: PathBuf, many: usize) -> anyhow::Result<Host> {
    host_at(nxd, many, FIRST_PORT, UID_BLOCK)
}

/// [`host_for`] with its ports from `first_port` and its uids from block `uid_block`.
fn host_at(nxd: PathBuf, many: usize, first_port: u16, uid_block: u16) -> anyhow::Result<Host> {
    let last_port = first_port + u16::try_from(many + 50)?;
    let mut host = Host::start_with_ports(
        nxd,
        (first_port, last_port),
        uid_block,
        "[limits]\nlog_max_mb = 1\n",
    );
    host.restart_nxd_with_sandbox_keys(&format!("max_deployments = {}", many + 1));
    Ok(host)
}

/// The views of sandbox `solo` (one deployment) on two hosts measured in the same rounds: one
/// with nothing else (alone), one with `many` more deployments (`running` of them running).
/// Measured side by side rather than before and after registering them, so that the machine's
/// drift between the two (minutes apart, thousands of pushes between) is not taken for theirs.
pub fn run(
    many: usize,
    running: usize,
    samples: usize,
    baseline: Option<PathBuf>,
) -> anyhow::Result<Figures> {
    let builds: Vec<PathBuf> = std::iter::once(nx_testkit::bin("nxd"))
        .chain(baseline)
        .collect();
    // Its ports above the other's and its uids past theirs (a block is 100 uids).
    let lone_port = FIRST_PORT + u16::try_from(many + 60)?;
    let lone_block = UID_BLOCK + u16::try_from(many.div_ceil(100) + 1)?;
    let mut lone = host_at(builds[0].clone(), 0, lone_port, lone_block)?;
    lone.push_sample("solo", &["--disk", "0"]);
    let mut host = host_for(builds[0].clone(), many)?;
    host.push_sample("solo", &["--disk", "0"]);
    let started = Instant::now();
    register(&host, many, running, AtRest::Stopped);
    let registering = started.elapsed();
    let [alone, among_many]: [Vec<ViewSamples>; 2] =
        measure_builds(&mut [&mut lone, &mut host], &builds, samples)
            .try_into()
            .map_err(|_| anyhow::anyhow!("one set of samples per host"))?;
    Ok(Figures {
        builds: builds
            .into_iter()
            .zip(alone.into_iter().zip(among_many))
            .map(|(nxd, (alone, among_many))| BuildFigures {
                nxd,
                alone,
                among_many,
            })
            .collect(),
        many,
        running,
        registering,
    })
}
