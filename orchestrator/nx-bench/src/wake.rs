//! Scale to zero: a request to a deployment stopped for being idle, from the client's first
//! byte to its whole answer (the router holds it, nxd starts the deployment over D-Bus and
//! waits until it is ready, the router forwards), against the same request to it running; and
//! where nxd's part of the time goes, step by step, as its metrics report it.

use nx_testkit::Host;
use std::time::{Duration, Instant};

pub struct Figures {
    /// Requests that woke the deployment.
    pub wake: Vec<Duration>,
    /// The same request while it runs.
    pub running: Vec<Duration>,
    /// nxd's side of the wakes (`nx_wake_duration_seconds`): its mean.
    pub nxd_mean: Duration,
    /// Each step of nxd's side (`nx_wake_step_duration_seconds{step}`): its mean, in the order
    /// nxd first reported the steps.
    pub steps: Vec<(String, Duration)>,
}

/// nxd's mean wake and its steps' means, from `GET /metrics`.
fn nxd_side(host: &Host) -> anyhow::Result<(Duration, Vec<(String, Duration)>)> {
    let text = nx_testkit::metrics::scrape(host);
    let value = |name: &str| nx_testkit::metrics::value(&text, name);
    let total = match (
        value("nx_wake_duration_seconds_sum"),
        value("nx_wake_duration_seconds_count"),
    ) {
        (Some(sum), Some(count)) if count > 0.0 => Duration::from_secs_f64(sum / count),
        _ => anyhow::bail!("nxd timed no wake (nx_wake_duration_seconds)"),
    };
    let steps = crate::steps::means("nx_wake_step_duration_seconds", "", &text);
    Ok((total, steps))
}

/// Whether the deployment's phase is `idle` (its unit stopped).
fn idle(host: &Host, sandbox: &str, id: &str) -> anyhow::Result<bool> {
    Ok(crate::views::deployments(host, sandbox)?
        .iter()
        .any(|d| d["id"] == id && d["phase"] == "idle"))
}

/// One timed `GET /` through the router to the deployment at `preview` (its Host); its status
/// must be 200.
pub fn timed_get(host: &Host, preview: &str) -> anyhow::Result<Duration> {
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
    let (mut wake, mut running) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !idle(&host, "bench-wake", &id)? {
            anyhow::ensure!(Instant::now() < deadline, "{id} never went idle");
            std::thread::sleep(Duration::from_millis(20));
        }
        wake.push(timed_get(&host, &preview)?);
        running.push(timed_get(&host, &preview)?);
    }
    let (nxd_mean, steps) = nxd_side(&host)?;
    Ok(Figures {
        wake,
        running,
        nxd_mean,
        steps,
    })
}
