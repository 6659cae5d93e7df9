//! Task benchmarks: start-to-first-output (from the request to the first line of the program's
//! stdout, through nxd's HTTP API) cold and from the warm pool, for bubblewrap and Podman; and
//! tasks per second sustained.

use nx_api::client::Client;
use nx_api::{TaskEvent, TaskRequest};
use nx_testkit::Host;
use std::time::{Duration, Instant};

/// Stores a file on a host; returns its sha256.
pub fn upload(host: &Host, file: &std::path::Path) -> anyhow::Result<String> {
    let (status, body, sha) = host.put_artifact(std::fs::read(file)?);
    anyhow::ensure!(status == 200, "upload: {status} {body}");
    Ok(sha)
}

/// The longest a measured task may run, in seconds.
const TASK_TIMEOUT_SECS: f64 = 300.0;

/// One task (on `backend`, nxd's default when `None`); returns the time to its first stdout
/// and whether it ran warm.
async fn one(
    client: &Client,
    sha: &str,
    backend: Option<&str>,
) -> anyhow::Result<(Duration, bool)> {
    let started = Instant::now();
    let req = TaskRequest {
        artifact: sha.to_owned(),
        args: vec!["task".into(), "print".into(), "hi".into()],
        env: Default::default(),
        // Beyond nxd's default 30 s: a cold TCG guest on a loaded host boots for as long.
        timeout_secs: Some(TASK_TIMEOUT_SECS),
        memory_max_mb: None,
        backend: backend.map(str::to_owned),
    };
    let mut events = client.run_task(&req).await?;
    let (mut first, mut warm, mut exit) = (None, false, None);
    while let Some(event) = events.next().await? {
        match event {
            TaskEvent::Started { warm: w, .. } => warm = w,
            TaskEvent::Stdout { .. } if first.is_none() => first = Some(started.elapsed()),
            TaskEvent::Exited(outcome) => exit = outcome.exit_code,
            _ => {}
        }
    }
    anyhow::ensure!(exit == Some(0), "a task ended with {exit:?}");
    Ok((first.ok_or_else(|| anyhow::anyhow!("no output"))?, warm))
}

/// The typed API client of a test host.
fn client(host: &Host) -> Client {
    Client::new(format!("http://{}", host.api), host.token.clone())
}

/// What comes before each measured task: time for the pool to refill.
#[derive(Debug, Clone, Copy)]
pub enum Pause {
    For(Duration),
    /// Until a microVM guest booted ahead waits (nxd's `nx_microvm_pool_ready`).
    UntilGuestReady,
}

/// nxd's `nx_microvm_pool_ready` now.
async fn guests_ready(host: &Host) -> anyhow::Result<u64> {
    let metrics = reqwest::Client::new()
        .get(format!("http://{}/metrics", host.api))
        .bearer_auth(&host.token)
        .send()
        .await?
        .text()
        .await?;
    Ok(metrics
        .lines()
        .find_map(|l| l.strip_prefix("nx_microvm_pool_ready "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

impl Pause {
    async fn wait(self, host: &Host) -> anyhow::Result<()> {
        match self {
            Pause::For(d) => tokio::time::sleep(d).await,
            Pause::UntilGuestReady => {
                let deadline = Instant::now() + Duration::from_secs(120);
                while guests_ready(host).await? == 0 {
                    anyhow::ensure!(Instant::now() < deadline, "no guest was booted ahead");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        Ok(())
    }
}

/// `n` tasks on `backend` one after the other, `pause` before each.
pub async fn start_to_output(
    host: &Host,
    sha: &str,
    backend: Option<&str>,
    n: usize,
    pause: Pause,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let run = measure(host, sha, backend, n, pause).await?;
    Ok((run.samples, run.warm))
}

/// What `measure` saw.
pub struct Run {
    /// Start to first output, per task.
    pub samples: Vec<Duration>,
    /// Tasks that ran warm.
    pub warm: usize,
    /// With [`Pause::UntilGuestReady`]: from a task's start (when it took the waiting guest)
    /// until the pool had a guest waiting again (booted or restored), per task but the last.
    pub refills: Vec<Duration>,
}

/// `n` tasks on `backend` one after the other, `pause` before each.
pub async fn measure(
    host: &Host,
    sha: &str,
    backend: Option<&str>,
    n: usize,
    pause: Pause,
) -> anyhow::Result<Run> {
    let http = client(host);
    one(&http, sha, backend).await?; // first use: loads the program (and the image)
    let mut run = Run {
        samples: Vec::with_capacity(n),
        warm: 0,
        refills: Vec::new(),
    };
    let mut last_start: Option<Instant> = None;
    for _ in 0..n {
        pause.wait(host).await?;
        if let (Pause::UntilGuestReady, Some(start)) = (pause, last_start) {
            run.refills.push(start.elapsed());
        }
        last_start = Some(Instant::now());
        let (first, was_warm) = one(&http, sha, backend).await?;
        run.samples.push(first);
        run.warm += usize::from(was_warm);
    }
    Ok(run)
}

/// Tasks completed per second by `workers` clients running tasks back to back for `secs`.
pub async fn sustained(host: &Host, sha: &str, workers: usize, secs: u64) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let runs = (0..workers).map(|_| async {
        let http = client(host);
        let mut done = 0usize;
        while Instant::now() < deadline {
            one(&http, sha, None).await?;
            done += 1;
        }
        Ok::<_, anyhow::Error>(done)
    });
    let mut total = 0;
    for done in futures_util::future::join_all(runs).await {
        total += done?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}
