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

/// One task; returns the time to its first stdout and whether it ran warm.
async fn one(client: &Client, sha: &str) -> anyhow::Result<(Duration, bool)> {
    let started = Instant::now();
    let req = TaskRequest {
        artifact: sha.to_owned(),
        args: vec!["task".into(), "print".into(), "hi".into()],
        env: Default::default(),
        timeout_secs: None,
        memory_max_mb: None,
        backend: None,
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

/// `n` tasks one after the other, `pause` between them (time for the pool to refill).
pub async fn start_to_output(
    host: &Host,
    sha: &str,
    n: usize,
    pause: Duration,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let http = client(host);
    one(&http, sha).await?; // first use: loads the program (and the image)
    let mut samples = Vec::with_capacity(n);
    let mut warm = 0;
    for _ in 0..n {
        tokio::time::sleep(pause).await;
        let (first, was_warm) = one(&http, sha).await?;
        samples.push(first);
        warm += usize::from(was_warm);
    }
    Ok((samples, warm))
}

/// Tasks completed per second by `workers` clients running tasks back to back for `secs`.
pub async fn sustained(host: &Host, sha: &str, workers: usize, secs: u64) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let runs = (0..workers).map(|_| async {
        let http = client(host);
        let mut done = 0usize;
        while Instant::now() < deadline {
            one(&http, sha).await?;
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
