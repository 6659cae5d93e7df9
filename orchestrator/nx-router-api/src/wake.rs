//! How the router asks nxd to start a deployment that was stopped for being idle (scale to
//! zero): `POST /v1/wake/<deployment>` on nxd's unix socket ([`crate::RouterSettings`]'s
//! `wake_socket`, HTTP/1.1). nxd answers 204 once the deployment is ready for requests, or an
//! error status with a line of text that says why it is not (it was removed: 404; it did not
//! start: 503, with `Retry-After` (RFC 9110 §10.2.3, in seconds) when nxd waits that long
//! before it tries to start it again).

use crate::client::exchange;
use hyper::Method;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The wake path of a deployment on nxd's socket.
pub fn path(deployment: &str) -> String {
    format!("/v1/wake/{deployment}")
}

/// Why a wake did not end with the deployment ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WakeError {
    #[error("nxd does not answer on {socket}: {message}")]
    Unreachable { socket: PathBuf, message: String },
    #[error("{message}")]
    Refused {
        /// nxd's status (404, 409, 503).
        status: u16,
        /// nxd's line of text.
        message: String,
        /// From `Retry-After`: nxd tries no start of it before this has passed.
        retry_after: Option<Duration>,
    },
}

/// The router's client of nxd's wake socket.
#[derive(Debug, Clone)]
pub struct WakeClient {
    socket: PathBuf,
}

impl WakeClient {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_owned(),
        }
    }

    /// Asks nxd to start `deployment`; returns once it is ready (nxd waits for its readiness).
    pub async fn wake(&self, deployment: &str) -> Result<(), WakeError> {
        let answer = exchange(&self.socket, Method::POST, &path(deployment), Vec::new())
            .await
            .map_err(|message| WakeError::Unreachable {
                socket: self.socket.clone(),
                message,
            })?;
        if answer.status().is_success() {
            return Ok(());
        }
        let retry_after = answer
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Err(WakeError::Refused {
            status: answer.status().as_u16(),
            message: String::from_utf8_lossy(answer.body()).trim().to_owned(),
            retry_after,
        })
    }
}
