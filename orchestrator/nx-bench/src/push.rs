//! Push to first answer, beside its floor: `nx push` of the static sample (its bytes already
//! stored) until its preview URL answers 200 through the router, against the same binary
//! started by bare `bwrap` until it answers 200 on its port; rounds interleaved. And where a
//! push's time goes: the steps nxd reports for each push in its `Server-Timing` header. The
//! host keeps standbys (`nx_orchestrator::standby`): `nx push` takes the sandbox's, and the
//! same push into another sandbox with a limit no standby has shows a cold start beside it;
//! the API's pushes take standbys too, so their steps are a standby push's. Run on a thread in
//! the host's network namespace (`Netns::run`, as `main`'s `push_table` does): every client
//! (the polls, the API's push, `nx`, bare `bwrap` with its shared network) reaches its server
//! directly on that namespace's loopback, as a client on nxd's machine does, with no testkit
//! forwarder (a thread per connection) in the way of one side only.

use nx_orchestrator::timing::Steps;
use nx_testkit::Host;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Figures {
    /// `nx push` until the preview URL answers (taking the sandbox's standby).
    pub nx: Vec<Duration>,
    /// `nx push` until it exited (having answered the deployment, ready): the rest of `nx` is
    /// the router's first answer.
    pub nx_exited: Vec<Duration>,
    /// The same into another sandbox, with a limit no standby has (`--tasks`), so that it
    /// starts cold.
    pub cold: Vec<Duration>,
    /// `bwrap` until the program answers.
    pub bwrap: Vec<Duration>,
    /// `POST /v1/deployments` alone (the API's push, no CLI), until it returned.
    pub api: Vec<Duration>,
    /// Each step's durations over the API's pushes, in the order the steps first came.
    pub steps: Vec<(String, Vec<Duration>)>,
}

/// One GET of `path` with `Host: host` at `addr`: its status (0: no answer).
fn status(http: &reqwest::blocking::Client, addr: SocketAddr, host: &str, path: &str) -> u16 {
    http.get(format!("http://{addr}{path}"))
        .header("Host", host)
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Polls until a GET answers 200; the time from `started`.
fn until_200(
    http: &reqwest::blocking::Client,
    addr: SocketAddr,
    host: &str,
    started: Instant,
) -> anyhow::Result<Duration> {
    let deadline = started + Duration::from_secs(20);
    loop {
        if status(http, addr, host, "/") == 200 {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{host} at {addr} never answered 200"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The sample under bare bubblewrap (namespaces, the binary alone read-only, /proc, /dev,
/// a /tmp, the host's network so that its port can be reached) until it answers.
fn bwrap_once(http: &reqwest::blocking::Client, sample: &str) -> anyhow::Result<Duration> {
    let port = nx_testkit::free_port();
    let started = Instant::now();
    let mut child = Command::new("bwrap")
        .args([
            "--unshare-all",
            "--share-net",
            "--die-with-parent",
            "--new-session",
        ])
        .args([
            "--ro-bind",
            sample,
            "/app",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
        ])
        .args(["--tmpfs", "/tmp", "--clearenv"])
        .args([
            "--setenv",
            "PORT",
            &port.to_string(),
            "--setenv",
            "HOST",
            "127.0.0.1",
        ])
        .arg("/app")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let answered = until_200(
        http,
        SocketAddr::from(([127, 0, 0, 1], port)),
        "bare",
        started,
    );
    let _ = child.kill();
    let _ = child.wait();
    answered
}

/// `n` interleaved rounds of: `nx push` to first answer, bare `bwrap` to first answer, and a
/// push through the API whose `Server-Timing` is kept; each deployment removed afterwards.
/// Call it inside the host's network namespace (see the module's doc).
pub fn run(host: &Host, n: usize) -> anyhow::Result<Figures> {
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let sample = nx_testkit::sample_app();
    let sample = sample.to_str().expect("utf-8 path");
    let first = host.push_sample("bench-first", &[]); // stores the bytes, makes the sandbox
    host.nx_json(&["rm", &host.push_sample("bench-cold", &[])]);
    let sha = host.deployment("bench-first", &first)["artifact"]
        .as_str()
        .expect("artifact")
        .to_owned();
    host.nx_json(&["rm", &first]);
    let mut f = Figures {
        nx: Vec::new(),
        nx_exited: Vec::new(),
        cold: Vec::new(),
        bwrap: Vec::new(),
        api: Vec::new(),
        steps: Vec::new(),
    };
    // Between rounds: the sandbox's next standby is made in the background after each push
    // (`nx_orchestrator::standby`); each measurement starts once that is done.
    let settle = || std::thread::sleep(Duration::from_millis(300));
    for round in 0..n {
        // Cold pushes go to a sandbox of their own, each with a task limit no push had before
        // (a standby follows its sandbox's last push's limits: `nx_orchestrator::standby`), so
        // that the standby the API's push takes next is of `bench-first`'s limits.
        let tasks = (1000 + round).to_string();
        let pushes = [
            ("bench-first", &[][..], &mut f.nx),
            ("bench-cold", &["--tasks", tasks.as_str()][..], &mut f.cold),
        ];
        for (sandbox, extra, times) in pushes {
            settle();
            let started = Instant::now();
            let id = host.push_sample(sandbox, extra);
            let exited = started.elapsed();
            let preview = host.preview_host(sandbox, &id);
            times.push(until_200(&http, host.router, &preview, started)?);
            if sandbox == "bench-first" {
                f.nx_exited.push(exited);
            }
            host.nx_json(&["rm", &id]);
        }

        settle();
        f.bwrap.push(bwrap_once(&http, sample)?);

        settle();

        let started = Instant::now();
        let response = http
            .post(format!("http://{}/v1/deployments", host.api))
            .bearer_auth(&host.token)
            .json(&serde_json::json!({"sandbox": "bench-first", "artifact": sha}))
            .send()?;
        f.api.push(started.elapsed());
        let timing = response
            .headers()
            .get("server-timing")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        anyhow::ensure!(response.status().is_success(), "push: {response:?}");
        let view: serde_json::Value = response.json()?;
        for (name, took) in Steps::parse_server_timing(&timing) {
            match f.steps.iter_mut().find(|(n, _)| *n == name) {
                Some((_, samples)) => samples.push(took),
                None => f.steps.push((name, vec![took])),
            }
        }
        host.nx_json(&["rm", view["id"].as_str().expect("id")]);
    }
    anyhow::ensure!(!f.steps.is_empty(), "nxd sent no Server-Timing header");
    Ok(f)
}
