//! How the router asks nxd to start a deployment that was stopped for being idle (scale to
//! zero): `POST /v1/wake/<deployment>` on nxd's unix socket ([`crate::RouterSettings`]'s
//! `wake_socket`, HTTP/1.1). nxd answers 204 once the deployment is ready for requests, or an
//! error status with a line of text that says why it is not (it was removed: 404; it did not
//! start: 503).

use crate::client::exchange;
use hyper::Method;
use std::path::{Path, PathBuf};

/// The wake path of a deployment on nxd's socket.
pub fn path(deployment: &str) -> String {
    format!("/v1/wake/{deployment}")
}

/// Why a wake did not end with the deployment ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WakeError {
    #[error("nxd does not answer on {socket}: {message}")]
    Unreachable { socket: PathBuf, message: String },
    #[error("{0}")]
    Refused(String),
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
        let (status, body) = exchange(&self.socket, Method::POST, &path(deployment), Vec::new())
            .await
            .map_err(|message| WakeError::Unreachable {
                socket: self.socket.clone(),
                message,
            })?;
        if status.is_success() {
            Ok(())
        } else {
            Err(WakeError::Refused(
                String::from_utf8_lossy(&body).trim().to_owned(),
            ))
        }
    }
}
