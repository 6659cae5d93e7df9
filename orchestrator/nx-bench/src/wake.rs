//! Scale to zero: a request to a deployment stopped for being idle, from the client's first
//! byte to its whole answer (the router holds it, nxd starts the deployment over D-Bus and
//! waits until it is ready, the router forwards), against the same request to it running.

use nx_testkit::Host;
use std::time::{Duration, Instant};

pub struct Figures {
    /// Requests that woke the deployment.
    pub wake: Vec<Duration>,
    /// The same request while it runs.
    pub running: Vec<Duration>,
}

/// Whether the deployment's phase is `idle` (its unit stopped).
fn idle(host: &Host, sandbox: &str, id: &str) -> anyhow::Result<bool> {
    let view: serde_json::Value = host
        .http()
        .get(format!("http://{}/v1/sandboxes/{sandbox}", host.api))
        .bearer_auth(&host.token)
        .send()?
        .json()?;
    let deployments = view["deployments"].as_array().cloned().unwrap_or_default();
    Ok(deployments
        .iter()
        .any(|d| d["id"] == id && d["phase"] == "idle"))
}

/// One timed `GET /` through the router; its status must be 200.
fn timed_get(host: &Host, preview: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let response = host
        .http()
        .get(format!("http://{}/", host.router))
        .header("Host", preview)
        .send()?;
    anyhow::ensure!(response.status() == 200, "GET /: {}", response.status());
    response.bytes()?;
    Ok(started.elapsed())
}

/// `rounds` wakes of a sample app pushed with a 1 s idle timeout, each once it is idle, each
/// followed by the same request to it running.
pub fn run(rounds: usize) -> anyhow::Result<Figures> {
    let host = Host::start();
    let id = host.push_sample("bench-wake", &["--idle-timeout", "1s"]);
    let preview = host.preview_host("bench-wake", &id);
    let mut figures = Figures {
        wake: Vec::new(),
        running: Vec::new(),
    };
    for _ in 0..rounds {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !idle(&host, "bench-wake", &id)? {
            anyhow::ensure!(Instant::now() < deadline, "{id} never went idle");
            std::thread::sleep(Duration::from_millis(20));
        }
        figures.wake.push(timed_get(&host, &preview)?);
        figures.running.push(timed_get(&host, &preview)?);
    }
    Ok(figures)
}
