//! Views against the number of deployments on the host: `nx ls` and `nx status` of a sandbox
//! with one deployment, on a host with only that one and again after `many` more deployments
//! were pushed to another sandbox (all but `running` of them stopped again), each timed as a
//! user runs it (the CLI process, its request, nxd's view, the table printed) and as the API
//! request alone.

use nx_testkit::Host;
use std::time::{Duration, Instant};

/// The first deployment port of the bench's host: its range (one port per deployment, stopped
/// ones included) stays below the test hosts' blocks (21000 and up).
const FIRST_PORT: u16 = 10000;
/// The uid block of the bench's host (beyond the test hosts' 256 blocks).
const UID_BLOCK: u16 = 300;
/// Clients pushing at once while the deployments are registered.
const PUSHERS: usize = 4;

/// Samples of one view, on the host as it was then.
pub struct ViewSamples {
    pub ls_cli: Vec<Duration>,
    pub ls_api: Vec<Duration>,
    pub status_cli: Vec<Duration>,
    pub status_api: Vec<Duration>,
}

pub struct Figures {
    /// With the one deployment of the measured sandbox only.
    pub alone: ViewSamples,
    /// With `many` more, `running` of them running.
    pub among_many: ViewSamples,
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

/// `samples` of each view, interleaved so that none profits from running later.
fn measure(host: &Host, samples: usize) -> ViewSamples {
    let mut all = ViewSamples {
        ls_cli: Vec::new(),
        ls_api: Vec::new(),
        status_cli: Vec::new(),
        status_api: Vec::new(),
    };
    for _ in 0..samples {
        all.ls_cli.extend(timed(1, || nx_ok(host, &["ls"])));
        all.ls_api
            .extend(timed(1, || api_get(host, "/v1/sandboxes")));
        all.status_cli
            .extend(timed(1, || nx_ok(host, &["status", "solo"])));
        all.status_api
            .extend(timed(1, || api_get(host, "/v1/sandboxes/solo")));
    }
    all
}

/// Pushes `many` deployments of the sample to sandbox `many` from [`PUSHERS`] clients at once
/// and stops all but `running` of them.
fn register(host: &Host, many: usize, running: usize) {
    let done = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for client in 0..PUSHERS {
            let done = &done;
            scope.spawn(move || {
                for i in (client..many).step_by(PUSHERS) {
                    let id = host.push_sample("many", &["--disk", "0"]);
                    if i >= running {
                        host.nx_json(&["stop", &id]);
                    }
                    let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    if n.is_multiple_of(100) {
                        eprintln!("views: {n} of {many} deployments registered");
                    }
                }
            });
        }
    });
}

pub fn run(many: usize, running: usize, samples: usize) -> anyhow::Result<Figures> {
    let last_port = FIRST_PORT + u16::try_from(many + 50)?;
    let host = Host::start_with_ports(
        nx_testkit::bin("nxd"),
        (FIRST_PORT, last_port),
        UID_BLOCK,
        "",
    );
    host.push_sample("solo", &["--disk", "0"]);
    // The first request of each kind warms nxd's connections and caches.
    measure(&host, 2);
    let alone = measure(&host, samples);
    let started = Instant::now();
    register(&host, many, running);
    let registering = started.elapsed();
    measure(&host, 2);
    let among_many = measure(&host, samples);
    Ok(Figures {
        alone,
        among_many,
        many,
        running,
        registering,
    })
}
