//! The manager's watchdog. When the embedded systemd manager dies (its PID 1 killed), every
//! deployment and the embedded PostgreSQL die with it. nxd notices within
//! [`CHECK_EVERY`], says so in its health ([`Orchestrator::problem`]), starts the manager
//! again, starts PostgreSQL and the router under it, refills the warm task pool and re-adopts:
//! every deployment that should run is started again and the routes come back. No human needed.
//! It also starts the router and the database gate again when their unit stopped and systemd
//! did not (systemd restarts one that ended, `Restart=always`, until its start limit).

use crate::api::systemd::ActiveState;
use crate::error::Error;
use crate::router;
use crate::supervisor::ManagerFound;
use crate::{embedded_db, host_limits, Orchestrator};
use std::sync::Arc;
use std::time::Duration;

/// How often the manager is asked whether it is alive.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long it may take to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// Checks in a row it must miss before nxd takes it for dead: a busy host can hold up one
/// answer past [`ANSWER_WITHIN`] (attacker s15 R1: one miss under load 9 "revived" a live
/// manager, and the re-adoption stopped every tenant's backup in flight as left from before).
const MISSES_BEFORE_REVIVE: u32 = 3;

impl Orchestrator {
    /// Watches the manager in the background for as long as the orchestrator lives.
    pub(crate) fn watch_manager(self: &Arc<Self>) {
        let app = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECK_EVERY);
            let mut misses = 0;
            loop {
                tick.tick().await;
                let Some(app) = app.upgrade() else { return };
                if app.supervisor.answers(ANSWER_WITHIN).await {
                    misses = 0;
                    app.keep_services_up().await;
                    continue;
                }
                misses += 1;
                if misses < MISSES_BEFORE_REVIVE {
                    tracing::warn!(
                        misses,
                        "the systemd manager did not answer within {} s",
                        ANSWER_WITHIN.as_secs()
                    );
                    continue;
                }
                tracing::error!(
                    misses,
                    "the systemd manager does not answer; starting it again"
                );
                app.set_problem(Some(
                    "the systemd manager does not answer: nxd is starting it again (if it died, re-adopting every deployment)".into(),
                ));
                match app.revive_manager().await {
                    Ok(ManagerFound::Started) => {
                        misses = 0;
                        tracing::warn!("systemd manager back; deployments re-adopted");
                        app.set_problem(None);
                    }
                    Ok(ManagerFound::Running) => {
                        misses = 0;
                        tracing::warn!("the systemd manager answers again: it was slow, not dead; its units ran on");
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

    /// Starts the router or the database gate again when its unit is inactive or failed
    /// (stopped from outside, or systemd gave up restarting it); one that systemd is about to
    /// restart is left to it.
    async fn keep_services_up(&self) {
        for service in Service::ALL {
            let down = match self.supervisor.state(service.unit()).await {
                Ok(state) => matches!(state.active, ActiveState::Inactive | ActiveState::Failed),
                Err(e) => {
                    tracing::warn!(error = %e, unit = service.unit(), "cannot tell whether it runs");
                    false
                }
            };
            if !down {
                continue;
            }
            tracing::error!(unit = service.unit(), "not running; starting it again");
            let started = match service {
                Service::Router => self.start_router().await,
                Service::DatabaseGate => self.databases.ensure_gate().await.map_err(Error::from),
            };
            if let Err(e) = started {
                tracing::error!(unit = service.unit(), error = %e, "could not start it again; trying again");
            }
        }
    }

    /// The log of `service`.
    fn service_log(&self, service: Service) -> std::path::PathBuf {
        match service {
            Service::Router => router::unit::log_file(&router::settings(&self.config)),
            Service::DatabaseGate => self.databases.gate_log(),
        }
    }

    /// Makes sure the router runs (`router::unit::ensure_running`) as the config says.
    async fn start_router(&self) -> Result<(), Error> {
        let installed = crate::launcher_install::install(&self.config.state_dir)?;
        router::unit::ensure_running(
            &self.supervisor,
            &installed,
            &router::settings(&self.config),
            self.config.logs.keep,
        )
        .await?;
        Ok(())
    }

    /// Starts the manager again and everything under it, and re-adopts every deployment; or,
    /// when the manager answers by then (it was slow, not dead), only talks to it anew: its
    /// units (deployments, tasks, database tools in flight) run on, and re-adopting would take
    /// those of nxd's running requests for leftovers.
    #[tracing::instrument(skip_all)]
    async fn revive_manager(self: &Arc<Self>) -> Result<ManagerFound, Error> {
        if self.supervisor.revive().await? == ManagerFound::Running {
            return Ok(ManagerFound::Running);
        }
        self.supervisor
            .configure_slices(host_limits::slice_caps(&self.config.systemd))
            .await?;
        if self.embedded_db {
            embedded_db::ensure(
                &self.supervisor,
                &self.config.state_dir,
                &self.config.databases,
                &crate::launcher_install::launcher_path(&self.config.state_dir),
                self.config.logs.keep,
            )
            .await?;
        }
        self.databases.ensure_gate().await?;
        self.start_router().await?;
        self.tasks.refill_pool();
        self.adopt(true).await?;
        Ok(ManagerFound::Started)
    }

    fn set_problem(&self, problem: Option<String>) {
        *self.problem.lock().expect("problem lock") = problem;
    }

    /// What keeps nxd from serving, if anything: the watchdog's finding, a manager that does
    /// not answer now, a PostgreSQL that refuses nxd a connection, or a router that does not
    /// run (no preview or production URL answers). `None`: healthy.
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
        for service in Service::ALL {
            match self.supervisor.state(service.unit()).await {
                Ok(state) if state.active == ActiveState::Active => {}
                Ok(state) => {
                    return Some(format!(
                        "{} ({}) is not running ({}): {} until it is started again, which systemd and nxd do by themselves; its log: {}",
                        service.name(),
                        service.unit(),
                        state.active,
                        service.outage(),
                        self.service_log(service).display()
                    ))
                }
                Err(e) => return Some(format!("cannot tell whether {} runs: {e}", service.name())),
            }
        }
        None
    }
}

/// nxd's own services that outlive it, which the watchdog keeps running.
#[derive(Debug, Clone, Copy)]
enum Service {
    /// `nx-router.service`: every preview and production URL.
    Router,
    /// `nx-db-gate.service`: every sandbox's socket to PostgreSQL.
    DatabaseGate,
}

impl Service {
    const ALL: [Self; 2] = [Self::Router, Self::DatabaseGate];

    fn unit(self) -> &'static str {
        match self {
            Self::Router => router::unit::UNIT,
            Self::DatabaseGate => crate::databases::gate::UNIT,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Router => "the router",
            Self::DatabaseGate => "the database gate",
        }
    }

    /// What fails while it is down.
    fn outage(self) -> &'static str {
        match self {
            Self::Router => "no URL answers",
            Self::DatabaseGate => "deployments cannot open database connections",
        }
    }
}
