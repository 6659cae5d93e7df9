//! Is a deployment ready? Its port accepts a connection; when a health path is configured,
//! `GET <path>` answers below 400; behind a VMM's port forward (which accepts before the guest
//! listens), `GET /` gets any HTTP answer.

use crate::api::systemd::{ActiveState, ServiceResult, SubState};
use crate::api::UnitState;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub enum Probe<'a> {
    Connect,
    Health(&'a str),
    AnyAnswer,
}

pub async fn probe(addr: SocketAddr, how: &Probe<'_>) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let path = match how {
            Probe::Connect => return Some(true),
            Probe::Health(path) => path,
            Probe::AnyAnswer => "/",
        };
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        // "HTTP/1.x NNN"
        let code: u16 = std::str::from_utf8(&head[9..12]).ok()?.parse().ok()?;
        Some(code < 400 || matches!(how, Probe::AnyAnswer))
    };
    // Behind a VMM's forward, a guest that is not up yet leaves the request hanging: give up
    // soon and ask again.
    let limit = match how {
        Probe::AnyAnswer => Duration::from_millis(100),
        _ => Duration::from_secs(2),
    };
    matches!(tokio::time::timeout(limit, attempt).await, Ok(Some(true)))
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
