//! Is a deployment ready? Its port accepts a connection; when a health path is configured,
//! `GET <path>` answers below 400; behind a VMM's port forward (which accepts before the guest
//! listens), `GET /` gets any HTTP answer. [`wait`] asks until it is, until its program ends
//! (known at once, with how it ended), or until its readiness [`timeout`] passes.

use crate::api::systemd::{ActiveState, ServiceResult, SubState};
use crate::api::UnitState;
use crate::config::SandboxDefaults;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How a deployment's readiness is asked.
pub enum Probe<'a> {
    /// Its port accepts a TCP connection.
    Connect,
    /// `GET <path>` answers below 400 (its health check's path).
    Health(&'a str),
    /// `GET /` gets any HTTP answer: behind a VMM's port forward, which accepts at once.
    AnyAnswer,
}

impl<'a> Probe<'a> {
    /// The probe for a deployment: its health check's path when it has one (see
    /// `health::HealthCheck`), else any answer behind a forwarded port, else a connection.
    pub fn for_deployment(health_path: Option<&'a str>, port_is_forwarded: bool) -> Self {
        match health_path {
            Some(path) => Probe::Health(path),
            None if port_is_forwarded => Probe::AnyAnswer,
            None => Probe::Connect,
        }
    }
}

/// The time a deployment has to become ready: its own (`own`: from its push, else its
/// sandbox's settings), else the host's `sandbox.ready_timeout_secs`; never more than
/// `sandbox.max_ready_timeout_secs` (a maximum lowered after the push holds too).
pub fn timeout(own: Option<u64>, sandbox: &SandboxDefaults) -> Duration {
    let secs = own.unwrap_or(sandbox.ready_timeout_secs);
    Duration::from_secs(secs.min(sandbox.max_ready_timeout_secs))
}

/// How a wait for readiness ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ready,
    /// The program ended first: how, e.g. "exit status 0" (see [`exited`]).
    Exited(String),
    /// The timeout passed while the program ran.
    TimedOut,
}

/// How often [`wait`] asks during its first [`FINE`]: most programs are ready within a few
/// milliseconds of their start (a push that takes a standby, within one or two), and a wake
/// (scale to zero) waits on this. Below tokio's timer's resolution (a `sleep` of 1 ms ends at
/// the timer's next tick but one: 1-2 ms, which the program's first answer waited for), so
/// slept on a blocking thread ([`pause`]). A probe is a connect over the deployment's veth,
/// answered at once (~20 µs of CPU).
const FINE_PAUSE: Duration = Duration::from_micros(200);
/// How long [`wait`] asks every [`FINE_PAUSE`].
const FINE: Duration = Duration::from_millis(20);
/// How often [`wait`] asks after [`FINE`], during its first [`EAGER`].
const EAGER_PAUSE: Duration = Duration::from_millis(1);
/// How long [`wait`] asks every [`EAGER_PAUSE`] at most.
const EAGER: Duration = Duration::from_millis(200);
/// How often [`wait`] asks after [`EAGER`].
const PAUSE: Duration = Duration::from_millis(10);

/// Waits until the deployment at `addr` is ready by `probe`, asking every 1 ms for the first
/// 200 ms, then every 10 ms; between asks, `unit_state` reports its unit (every 10 ms, the
/// first time 10 ms in), so that a program that ends stops the wait within 10 ms.
/// `timeout` counts from the call, which is right after the unit's start. Errors: those of
/// `unit_state`.
#[tracing::instrument(skip_all, fields(%addr, timeout_secs = timeout.as_secs()))]
pub async fn wait<F, Fut, E>(
    addr: SocketAddr,
    probe: &Probe<'_>,
    timeout: Duration,
    mut unit_state: F,
) -> Result<Outcome, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<UnitState, E>>,
{
    let started = Instant::now();
    let mut seen_up = false;
    // First asked a PAUSE in: a program ready at once (most) costs the manager no question.
    let mut asked = started;
    loop {
        if self::probe(addr, probe).await {
            tracing::info!(after_ms = started.elapsed().as_millis(), "ready");
            return Ok(Outcome::Ready);
        }
        // The unit's state is a D-Bus round trip to the manager: asked every PAUSE at most,
        // however often the (cheap) probe is.
        if asked.elapsed() >= PAUSE {
            asked = Instant::now();
            let state = unit_state().await?;
            seen_up |= !state.active.is_down();
            if let Some(how) = exited(&state, seen_up, started.elapsed()) {
                return Ok(Outcome::Exited(how));
            }
        }
        if started.elapsed() > timeout {
            return Ok(Outcome::TimedOut);
        }
        let pause = match started.elapsed() {
            e if e < FINE => FINE_PAUSE,
            e if e < EAGER => EAGER_PAUSE,
            _ => PAUSE,
        };
        self::pause(pause).await;
    }
}

/// Sleeps `d`: one shorter than tokio's timer's millisecond on a thread of the blocking pool
/// (`std::thread::sleep`, within tens of µs), a longer one on tokio's timer.
async fn pause(d: Duration) {
    if d < Duration::from_millis(1) {
        // A pool thread that ended the sleep cannot fail to send its unit back.
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(d)).await;
    } else {
        tokio::time::sleep(d).await;
    }
}

/// How long a [`Probe::Connect`] ask waits for its connection.
const CONNECT_LIMIT: Duration = Duration::from_millis(200);

/// One ask: whether the deployment at `addr` is ready by `how` now.
pub async fn probe(addr: SocketAddr, how: &Probe<'_>) -> bool {
    // Behind a VMM's forward, a guest that is not up yet leaves the request hanging: give up
    // soon and ask again.
    let (path, limit) = match how {
        Probe::Connect => {
            // Over the deployment's veth a SYN is answered at once (accepted or refused); a
            // connect that hangs means nothing holds the address: its namespace is not up yet,
            // or is gone because its program ended. Give up soon, so that the unit's state is
            // read and an ended program ends the wait (a 2 s limit here once made an exit
            // before ready take 2 s more).
            let connect = TcpStream::connect(addr);
            let within = tokio::time::timeout(CONNECT_LIMIT, connect).await;
            return matches!(within, Ok(Ok(_)));
        }
        Probe::Health(path) => (*path, Duration::from_secs(2)),
        Probe::AnyAnswer => ("/", Duration::from_millis(100)),
    };
    match get_status(addr, path, limit).await {
        Ok(code) => code < 400 || matches!(how, Probe::AnyAnswer),
        Err(_) => false,
    }
}

/// Why `GET` of a deployment's path got no status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoAnswer {
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("{0}")]
    Failed(String),
}

/// `GET <path>` (HTTP/1.0) of the deployment at `addr`: the response's status code, within
/// `limit` (connecting included).
pub async fn get_status(addr: SocketAddr, path: &str, limit: Duration) -> Result<u16, NoAnswer> {
    let attempt = async {
        let failed = |e: std::io::Error| NoAnswer::Failed(e.to_string());
        let mut stream = TcpStream::connect(addr).await.map_err(failed)?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(failed)?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.map_err(failed)?;
        // "HTTP/1.x NNN"
        std::str::from_utf8(&head[9..12])
            .ok()
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| NoAnswer::Failed("not an HTTP response".into()))
    };
    tokio::time::timeout(limit, attempt)
        .await
        .unwrap_or(Err(NoAnswer::TimedOut(limit)))
}

/// How long a unit that was just started may still read `inactive` (its start job not run yet)
/// before that means its program has already ended.
const START_GRACE: Duration = Duration::from_millis(500);

/// Whether a deployment's program has ended while it is waited for, and how, e.g. "exit
/// status 0" or "killed by signal 9, systemd result signal". `seen_up`: its unit was seen
/// activating or active since it was started; `since_start`: time since the start. A program
/// that ends with status 0 leaves no unit behind (systemd unloads it), hence `success`.
pub fn exited(unit: &UnitState, seen_up: bool, since_start: Duration) -> Option<String> {
    let restarting = unit.sub == SubState::AutoRestart || unit.restarts > 0;
    let ended = unit.active == ActiveState::Failed
        || restarting
        || (unit.active == ActiveState::Inactive && (seen_up || since_start > START_GRACE));
    if !ended {
        return None;
    }
    // waitid(2) codes: 1 exited, 2 killed, 3 dumped core; 0: systemd no longer knows.
    Some(match unit.exit_code {
        1 => format!("exit status {}", unit.exit_status),
        2 | 3 => format!(
            "killed by signal {}, systemd result {}",
            unit.exit_status, unit.result
        ),
        _ if unit.result == ServiceResult::Success => "exit status 0".to_owned(),
        _ => format!("systemd result {}", unit.result),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployments_own_timeout_wins_up_to_the_hosts_maximum() {
        let sandbox = SandboxDefaults {
            ready_timeout_secs: 15,
            max_ready_timeout_secs: 60,
            ..Default::default()
        };
        assert_eq!(timeout(None, &sandbox), Duration::from_secs(15));
        assert_eq!(timeout(Some(30), &sandbox), Duration::from_secs(30));
        // A maximum lowered after the push still holds.
        assert_eq!(timeout(Some(600), &sandbox), Duration::from_secs(60));
    }
}
