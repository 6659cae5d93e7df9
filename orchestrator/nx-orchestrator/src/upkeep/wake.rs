//! The wake socket: the router asks nxd here to start a deployment that was stopped for being
//! idle (`POST /v1/wake/<deployment>`, HTTP/1.1 on the unix socket
//! `<state_dir>/router/wake.sock`, mode 0600: nxd's user only, as the router runs). nxd starts
//! it through the state machine and answers 204 once it is ready, 404 if there is no such
//! deployment, 409 if it was stopped on purpose (`nx stop`), 503 if it did not start. Wakes of
//! one deployment wait for each other and for its idle stop, so concurrent requests share one
//! start. Each wake that started a deployment is timed, in all and step by step
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
                            let (status, text) =
                                app.wake_request(req.method(), req.uri().path()).await;
                            let mut resp = Response::new(Full::new(Bytes::from(text)));
                            *resp.status_mut() = status;
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

    /// One request on the wake socket: its status and a line of text. The routes are rebuilt
    /// after the answer (the router forwards to the upstream its idle route names already).
    async fn wake_request(self: &Arc<Self>, method: &Method, path: &str) -> (StatusCode, String) {
        let Some(id) = path
            .strip_prefix("/v1/wake/")
            .filter(|_| method == Method::POST)
        else {
            return (
                StatusCode::NOT_FOUND,
                "only POST /v1/wake/<deployment>\n".into(),
            );
        };
        let Ok(id) = DeploymentId::parse(id) else {
            return (
                StatusCode::BAD_REQUEST,
                format!("{id:?} is not a deployment id\n"),
            );
        };
        let started = std::time::Instant::now();
        let (woke, steps) = crate::timing::collect(self.wake(&id)).await;
        match woke {
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
        }
    }

    /// Starts an idle deployment and returns once it is ready (at once when it runs), before
    /// its routes are rebuilt: whether it was idle (false: another wake started it, or it ran).
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
        let phase = step("phase", self.phase(&deployment)).await?;
        let woke = deployment.desired == Desired::Idle;
        self.start_routes_later(&deployment, phase).await?;
        if woke {
            self.metrics.woken(&DeploymentLabels::of(&deployment));
            tracing::info!("woken by a request");
        }
        Ok(woke)
    }
}
