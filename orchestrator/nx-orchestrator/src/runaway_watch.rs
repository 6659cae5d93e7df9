//! Every [`WATCH_EVERY`], tenants' backends that overran their bounds are ended and logged
//! with their sandbox's name (see `databases::runaway` for the bounds and why), and the
//! reserves of the sandboxes' database disks are freed or kept (see `databases::disk`).

use crate::databases::disk::ReserveChange;
use crate::databases::{ident, runaway, DbError};
use crate::error::Error;
use crate::{embedded_db, Orchestrator};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How often tenants' backends are looked at. A hash growing at ~200 MiB/s passes its bound
/// by at most that much in between.
pub const WATCH_EVERY: Duration = Duration::from_millis(250);

/// What one look of the watch tells the next.
#[derive(Default)]
struct Seen {
    /// When each autovacuum worker's ANALYZE phase was first seen (`runaway::
    /// time_analyze_phases`).
    analyzing: HashMap<(i32, i64), std::time::Instant>,
    /// Whether the last look with tenants' sessions read no process of the embedded cluster.
    blind: bool,
}

impl Seen {
    /// Records whether a look read any process of the embedded cluster while it served
    /// `sessions` tenant sessions (so it runs), and says so when that changes: a look that
    /// reads none bounds nothing (no session's memory, no lock-table hog ended by signal, no
    /// full disk's reserve freed), and is said once, not at every look (session 16's closing
    /// note: nxd reads the processes in the cgroup of the cluster's unit, and found none there
    /// in silence).
    fn cluster(&mut self, read_any: bool, sessions: usize) {
        let blind = !read_any;
        if blind == self.blind {
            return;
        }
        self.blind = blind;
        if blind {
            tracing::warn!(
                unit = embedded_db::UNIT,
                sessions,
                "the database watch reads no process of the embedded PostgreSQL in its unit's cgroup while {sessions} tenant sessions run: until it does, no session is held to the memory bounds, no lock-table hog is ended by signal and no full disk's reserve is freed; something moved the cluster's processes out of the unit's cgroup, or /sys/fs/cgroup is not the host's: restart the unit (with nxd's embedded systemd manager: stop nxd, run `nxd manager-stop --state-dir <state_dir>`, start nxd; its deployments start again)"
            );
        } else {
            tracing::info!(
                unit = embedded_db::UNIT,
                "the database watch reads the embedded PostgreSQL's processes again"
            );
        }
    }
}

impl Orchestrator {
    /// Watches tenants' backends in the background for as long as the orchestrator lives.
    pub(crate) fn watch_tenant_backends(self: &Arc<Self>) {
        let app = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WATCH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seen = Seen::default();
            loop {
                tick.tick().await;
                let Some(app) = app.upgrade() else { return };
                if let Err(e) = app.end_runaway_backends(&mut seen).await {
                    tracing::debug!(error = %e, "tenants' backends: trying again");
                }
                if let Err(e) = app.keep_disk_reserves().await {
                    tracing::debug!(error = %e, "database disks' reserves: trying again");
                }
            }
        });
    }

    /// One look: ends every tenant backend past its bounds; `seen` carries what one look tells
    /// the next.
    async fn end_runaway_backends(&self, seen: &mut Seen) -> Result<(), Error> {
        // First, and by reading functions only: while the shared lock table is full, every
        // other query here fails. Without a connection to read on (the table filled while the
        // pool's was lost: PostgreSQL refuses a new one), every tenant's session is ended.
        let holders = match self.databases.lock_holders().await {
            Err(DbError::Sql(e)) if self.embedded_db => {
                embedded_db::end_tenant_sessions_if_refused(&self.supervisor, &e).await?;
                return Err(DbError::Sql(e).into());
            }
            other => other?,
        };
        let hogs = runaway::lock_hogs(&holders, self.databases.tenants_locks_max());
        for (hog, overrun) in hogs {
            if self.end_lock_hog(hog.pid).await? {
                if let Some(tool) = &hog.tool {
                    self.databases.tool_session_ended(tool, overrun.to_string());
                }
                tracing::warn!(
                    pid = hog.pid,
                    locks = hog.locks,
                    role_oid = hog.role,
                    sandbox_role = %hog.sandbox,
                    "ended a database session: {overrun}; every other session needs room there"
                );
            }
        }
        let mut backends = self.databases.tenant_backends().await?;
        runaway::time_analyze_phases(
            &mut backends,
            &mut seen.analyzing,
            std::time::Instant::now(),
        );
        if backends.is_empty() {
            return Ok(());
        }
        let memory = if self.embedded_db {
            let pids = self.supervisor.unit_pids(embedded_db::UNIT).await?;
            let groups: Vec<(i32, Vec<i32>)> = backends
                .iter()
                .map(|b| (b.pid, b.workers.clone()))
                .collect();
            let memory = embedded_db::backend_memory(&pids, &groups);
            seen.cluster(!memory.is_empty(), backends.len());
            memory
        } else {
            HashMap::new()
        };
        for (backend, overrun) in self.databases.overruns(&backends, &memory) {
            if self.databases.terminate(backend.pid).await? {
                if let Some(tool) = &backend.tool {
                    self.databases.tool_session_ended(tool, overrun.to_string());
                }
                let sandbox = self.sandbox_of_role(&backend.sandbox).await;
                tracing::warn!(
                    sandbox = sandbox.as_deref().unwrap_or("(removed)"),
                    role = %backend.role,
                    pid = backend.pid,
                    "ended a tenant's database session: {overrun}, past its bound (databases.statement_timeout_secs, idle_in_transaction_timeout_secs, backend_memory_max_mb, sandbox_memory_max_mb, memory_max_mb)"
                );
            }
        }
        Ok(())
    }

    /// Frees the reserve of each full database disk of the embedded cluster, and makes it
    /// again once the disk has room, each change logged with its sandbox's name. The disks
    /// are mounted in the cluster's manager's mount namespace, reached through a process of
    /// the cluster's unit (`/proc/<pid>/root`).
    async fn keep_disk_reserves(&self) -> Result<(), Error> {
        if !self.embedded_db {
            return Ok(());
        }
        let pids = self.supervisor.unit_pids(embedded_db::UNIT).await?;
        let Some(pid) = pids.first() else {
            return Ok(());
        };
        let root = std::path::PathBuf::from(format!("/proc/{pid}/root"));
        for (role, change) in self.databases.keep_disk_reserves(&root) {
            let sandbox = self.sandbox_of_role(&role).await;
            let sandbox = sandbox.as_deref().unwrap_or("(removed)");
            let reserve_mib = crate::databases::disk::RESERVE_BYTES >> 20;
            match change {
                ReserveChange::Freed => tracing::warn!(
                    sandbox,
                    role,
                    "sandbox {sandbox}'s database disk is full (databases.max_size_mb): its reserve of {reserve_mib} MiB was freed so that new sessions can start and TRUNCATE or DROP TABLE can make room; stop what writes first, it would take that room too"
                ),
                ReserveChange::Kept => tracing::info!(
                    sandbox,
                    role,
                    "sandbox {sandbox}'s database disk keeps a reserve of {reserve_mib} MiB"
                ),
            }
        }
        Ok(())
    }

    /// Ends the backend PostgreSQL knows as `pid`: on the embedded cluster with SIGTERM from
    /// here (what `pg_terminate_backend` sends; PostgreSQL's function itself reads the
    /// target's role from a shared catalog, which fails while the lock table is full), else
    /// with `pg_terminate_backend`. Whether it was there to end.
    async fn end_lock_hog(&self, pid: i32) -> Result<bool, Error> {
        if !self.embedded_db {
            return Ok(self.databases.terminate(pid).await?);
        }
        let pids = self.supervisor.unit_pids(embedded_db::UNIT).await?;
        let Some(host_pid) = embedded_db::host_pid(&pids, pid) else {
            return Ok(false);
        };
        let Ok(host_pid) = i32::try_from(host_pid) else {
            return Ok(false);
        };
        let host_pid = nix::unistd::Pid::from_raw(host_pid);
        Ok(nix::sys::signal::kill(host_pid, nix::sys::signal::Signal::SIGTERM).is_ok())
    }

    /// The sandbox whose role (production's or a preview branch's) `role` is.
    async fn sandbox_of_role(&self, role: &str) -> Option<String> {
        if let Some(deployment) = self
            .state
            .deployments()
            .await
            .ok()?
            .into_iter()
            .find(|d| d.db_branch && ident::branch(&d.id) == role)
        {
            return Some(deployment.sandbox.to_string());
        }
        self.state
            .sandbox_names()
            .await
            .ok()?
            .into_iter()
            .find(|name| self.databases.role(name) == role)
            .map(|name| name.to_string())
    }
}
