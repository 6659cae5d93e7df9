//! The wake socket: the router asks nxd here to start a deployment that was stopped for being
//! idle (`POST /v1/wake/<deployment>`, HTTP/1.1 on the unix socket
//! `<state_dir>/router/wake.sock`, mode 0600: nxd's user only, as the router runs). nxd starts
//! it through the state machine and answers 204 once it is ready, 404 if there is no such
//! deployment, 409 if it was stopped on purpose (`nx stop`), 503 if it did not start. Wakes of
//! one deployment wait for each other and for its idle stop, so concurrent requests share one
//! start.
//!
//! A deployment that did not start stays idle, and its routes (preview and production) stay:
//! the next request may start it again after a back-off (`super::retries`: 2 s, doubling up to
//! 5 min), and until then a wake answers 503 at once with `Retry-After` (RFC 9110 §10.2.3),
//! the seconds left, which the router answers its visitors with too. Each wake that started a deployment is timed, in all and step by step
//! (`nx_wake_duration_seconds`, `nx_wake_step_duration_seconds{step}`).

use crate::domain::Desired;
use crate::error::Error;
use crate::metrics::DeploymentLabels;
use crate::names::DeploymentId;
use crate::state::StateError;
use crate::timing::step;
use crate::Orchestrator;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The socket's path under `state_dir`.
pub fn wake_socket(state_dir: &Path) -> PathBuf {
    state_dir.join("router").join("wake.sock")
}

impl Orchestrator {
    /// Binds the wake socket (replacing a stale one) and serves it for as long as the
    /// orchestrator lives.
    pub(crate) fn serve_wakes(self: &Arc<Self>) -> Result<(), Error> {
        let socket = wake_socket(&self.config.state_dir);
        let shown = socket.display().to_string();
        let io = |what: &str| Error::io(format!("{what} {shown}"));
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).map_err(io("cannot create the directory of"))?;
        }
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket).map_err(io("cannot bind"))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .map_err(io("cannot set the mode of"))?;
        let app = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "wake socket: accept failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(app) = app.upgrade() else { return };
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<_>| {
                        let app = Arc::clone(&app);
                        async move {
                            let (status, text, retry_after) =
                                app.wake_request(req.method(), req.uri().path()).await;
                            let mut resp = Response::new(Full::new(Bytes::from(text)));
                            *resp.status_mut() = status;
                            if let Some(wait) = retry_after {
                                // Whole seconds, rounded up: never "0".
                                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                                resp.headers_mut()
                                    .insert(hyper::header::RETRY_AFTER, secs.into());
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(())
    }

    /// One request on the wake socket: its status, a line of text, and for a 503 the wait
    /// before the next start may be tried (`Retry-After`). After a start the routes are rebuilt
    /// after the answer (the router forwards to the upstream its idle route names already).
    async fn wake_request(
        self: &Arc<Self>,
        method: &Method,
        path: &str,
    ) -> (StatusCode, String, Option<std::time::Duration>) {
        let Some(id) = path
            .strip_prefix("/v1/wake/")
            .filter(|_| method == Method::POST)
        else {
            return (
                StatusCode::NOT_FOUND,
                "only POST /v1/wake/<deployment>\n".into(),
                None,
            );
        };
        let Ok(id) = DeploymentId::parse(id) else {
            return (
                StatusCode::BAD_REQUEST,
                format!("{id:?} is not a deployment id\n"),
                None,
            );
        };
        let started = std::time::Instant::now();
        let (woke, steps) = crate::timing::collect(self.wake(&id)).await;
        let retry_after = self.upkeep.wake_retries.wait_left(&id);
        let (status, text) = match woke {
            Ok(woke) => {
                if woke {
                    self.metrics.wake_took(started.elapsed(), &steps);
                }
                let app = Arc::clone(self);
                tokio::spawn(async move {
                    if let Err(e) = app.reroute().await {
                        tracing::warn!(error = %e, "routes after a wake: the next change rebuilds them");
                    }
                });
                (StatusCode::NO_CONTENT, String::new())
            }
            Err(e @ Error::State(StateError::NoDeployment(_))) => {
                (StatusCode::NOT_FOUND, format!("{e}\n"))
            }
            Err(e @ Error::Conflict(_)) => (StatusCode::CONFLICT, format!("{e}\n")),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        };
        (
            status,
            text,
            retry_after.filter(|_| status.is_server_error()),
        )
    }

    /// Starts an idle deployment and returns once it is ready (at once when it runs), before
    /// its routes are rebuilt: whether it was idle (false: another wake started it, or it ran).
    /// One that does not start is put back to idle (its routes rebuilt) and not tried again
    /// before its back-off passed (`wake_retries`): until then, `NotReady` at once.
    #[tracing::instrument(skip(self))]
    async fn wake(&self, id: &DeploymentId) -> Result<bool, Error> {
        let lock = self.upkeep.lock(id);
        let _held = lock.lock().await;
        let deployment = step("record", self.state.deployment(id)).await?;
        if deployment.desired == Desired::Stopped {
            return Err(Error::Conflict(format!(
                "deployment {id} was stopped (`nx stop`); `nx start {id}` runs it again"
            )));
        }
        let woke = deployment.desired == Desired::Idle;
        let retries = &self.upkeep.wake_retries;
        if let Some(wait) = retries.wait_left(id).filter(|_| woke) {
            return Err(Error::NotReady {
                message: format!(
                    "deployment {id} did not start at its last wake; the next try is in {} s",
                    wait.as_secs().max(1)
                ),
                log_tail: Vec::new(),
            });
        }
        let phase = step("phase", self.phase(&deployment)).await?;
        if let Err(e) = self.start_routes_later(&deployment, phase).await {
            if woke {
                let wait = retries.failed(id);
                tracing::warn!(error = %e, retry_in_secs = wait.as_secs(), "a request woke it and it did not start: it stays idle, its URLs answer 503 until the next try");
                // Unless `nx stop` or `nx rm` came meanwhile: that stands.
                self.state
                    .set_desired_if(id, Desired::Running, Desired::Idle)
                    .await?;
            }
            if let Err(e) = self.reroute().await {
                tracing::warn!(error = %e, "routes after a failed wake: the next change rebuilds them");
            }
            return Err(e);
        }
        if woke {
            self.metrics.woken(&DeploymentLabels::of(&deployment));
            tracing::info!("woken by a request");
        }
        Ok(woke)
    }
}
