//! The manager's watchdog. When the embedded systemd manager dies (its PID 1 killed), every
//! deployment and the embedded PostgreSQL die with it. nxd notices within
//! [`CHECK_EVERY`], says so in its health ([`Orchestrator::problem`]), starts the manager
//! again, starts PostgreSQL and the router under it, refills the warm task pool and re-adopts:
//! every deployment that should run is started again and the routes come back. No human needed.

use crate::error::Error;
use crate::router;
use crate::{embedded_db, host_limits, Orchestrator};
use std::sync::Arc;
use std::time::Duration;

/// How often the manager is asked whether it is alive.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long it may take to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

impl Orchestrator {
    /// Watches the manager in the background for as long as the orchestrator lives.
    pub(crate) fn watch_manager(self: &Arc<Self>) {
        let app = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECK_EVERY);
            loop {
                tick.tick().await;
                let Some(app) = app.upgrade() else { return };
                if app.supervisor.answers(ANSWER_WITHIN).await {
                    continue;
                }
                tracing::error!("the systemd manager does not answer; starting it again");
                app.set_problem(Some(
                    "the systemd manager died: nxd is starting it again and re-adopting every deployment".into(),
                ));
                match app.revive_manager().await {
                    Ok(()) => {
                        tracing::warn!("systemd manager back; deployments re-adopted");
                        app.set_problem(None);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "could not bring the systemd manager back; trying again");
                        app.set_problem(Some(format!(
                            "the systemd manager died and could not be started again ({e}); nxd keeps trying"
                        )));
                    }
                }
            }
        });
    }

    #[tracing::instrument(skip_all)]
    async fn revive_manager(self: &Arc<Self>) -> Result<(), Error> {
        self.supervisor.revive().await?;
        self.supervisor
            .configure_slices(host_limits::slice_caps(&self.config.systemd))
            .await?;
        if self.embedded_db {
            embedded_db::ensure(
                &self.supervisor,
                &self.config.state_dir,
                self.config.databases.memory_max_mb,
            )
            .await?;
        }
        let installed = crate::launcher_install::install(&self.config.state_dir)?;
        router::unit::ensure_running(
            &self.supervisor,
            &installed,
            &router::settings(&self.config),
            self.config.logs.keep,
        )
        .await?;
        self.tasks.refill_pool();
        self.adopt().await
    }

    fn set_problem(&self, problem: Option<String>) {
        *self.problem.lock().expect("problem lock") = problem;
    }

    /// What keeps nxd from serving, if anything: the watchdog's finding, a manager that does
    /// not answer now, or a PostgreSQL that refuses nxd a connection. `None`: healthy.
    pub async fn problem(&self) -> Option<String> {
        if let Some(problem) = self.problem.lock().expect("problem lock").clone() {
            return Some(problem);
        }
        if !self.supervisor.answers(ANSWER_WITHIN).await {
            return Some("the systemd manager does not answer".into());
        }
        if let Some(refusal) = self.databases.refusal(ANSWER_WITHIN).await {
            let log = if self.embedded_db {
                embedded_db::log_path(&self.config.state_dir)
                    .display()
                    .to_string()
            } else {
                "the cluster of databases.admin_url".into()
            };
            return Some(format!(
                "PostgreSQL refuses nxd's connections ({refusal}): pushes, backups and deployments' databases fail until it accepts them; see its log ({log})"
            ));
        }
        None
    }
}
