//! Tenants' statements held to bounds a tenant cannot lift. A role may `SET statement_timeout
//! = 0` and `SET work_mem = '4GB'` (both USERSET): nxd ends (`pg_terminate_backend`) a tenant
//! backend whose statement has run longer than `databases.statement_timeout_secs`, or whose
//! anonymous memory (`RssAnon`, proc(5): not the shared buffers it maps) passed
//! `databases.backend_memory_max_mb` (on the embedded cluster, whose processes nxd reads).
//! Sessions of nxd's own pg_restore (into a restore's scratch database, or a branch's copy)
//! are left alone: a restore takes as long as its data.

use super::{Databases, DbError};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// A tenant's backend running a statement now.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantBackend {
    /// Its process id, as PostgreSQL knows it (`pg_stat_activity.pid`).
    pub pid: i32,
    /// Its role: `nx_*` (a sandbox's) or `nxb_*` (a preview branch's).
    pub role: String,
    /// How long its statement has run, in seconds.
    pub running_secs: f64,
}

/// Why a backend was ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Overrun {
    /// Its statement ran this many seconds.
    Time(f64),
    /// Its anonymous memory reached this many bytes.
    Memory(u64),
}

impl std::fmt::Display for Overrun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Time(secs) => write!(f, "its statement ran {secs:.0} s"),
            Self::Memory(bytes) => write!(f, "it held {} MiB", bytes >> 20),
        }
    }
}

/// Databases nxd's own pg_restore writes into now: their sessions are nxd's.
#[derive(Default)]
pub(super) struct Restoring(Mutex<HashSet<String>>);

/// While it lives, `database` is being restored into by nxd.
pub(super) struct RestoringGuard<'a> {
    set: &'a Restoring,
    database: String,
}

impl Restoring {
    /// Marks `database` as nxd's restore target until the guard is dropped.
    pub(super) fn start(&self, database: &str) -> RestoringGuard<'_> {
        self.0
            .lock()
            .expect("restoring lock")
            .insert(database.to_owned());
        RestoringGuard {
            set: self,
            database: database.to_owned(),
        }
    }

    fn contains(&self, database: &str) -> bool {
        self.0.lock().expect("restoring lock").contains(database)
    }
}

impl Drop for RestoringGuard<'_> {
    fn drop(&mut self) {
        self.set
            .0
            .lock()
            .expect("restoring lock")
            .remove(&self.database);
    }
}

impl Databases {
    /// Tenants' client backends running a statement now, but nxd's own restores.
    ///
    /// # Errors
    /// The query's.
    pub async fn tenant_backends(&self) -> Result<Vec<TenantBackend>, DbError> {
        let rows: Vec<(i32, String, String, f64)> = sqlx::query_as(
            "SELECT pid, usename::text, datname::text, \
                    extract(epoch FROM clock_timestamp() - query_start)::float8 \
             FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND state = 'active' \
               AND query_start IS NOT NULL \
               AND (usename LIKE 'nx\\_%' OR usename LIKE 'nxb\\_%')",
        )
        .fetch_all(&self.admin)
        .await?;
        Ok(rows
            .into_iter()
            .filter(|(_, _, database, _)| !self.restoring.contains(database))
            .map(|(pid, role, _, running_secs)| TenantBackend {
                pid,
                role,
                running_secs,
            })
            .collect())
    }

    /// Which of `backends` overran their bounds: their statement ran past the role's
    /// `statement_timeout`, or `memory` (their anonymous memory, bytes, by PostgreSQL's pid,
    /// where known) passed `databases.backend_memory_max_mb`.
    pub fn overruns(
        &self,
        backends: &[TenantBackend],
        memory: &HashMap<i32, u64>,
    ) -> Vec<(TenantBackend, Overrun)> {
        let time_bound = self.policy.statement_timeout_secs;
        let memory_bound = self.backend_memory_max_mb << 20;
        backends
            .iter()
            .filter_map(|b| {
                let overrun = if time_bound > 0 && b.running_secs > time_bound as f64 {
                    Overrun::Time(b.running_secs)
                } else {
                    match memory.get(&b.pid) {
                        Some(&bytes) if memory_bound > 0 && bytes > memory_bound => {
                            Overrun::Memory(bytes)
                        }
                        _ => return None,
                    }
                };
                Some((b.clone(), overrun))
            })
            .collect()
    }

    /// Ends a backend (`pg_terminate_backend`); whether it was there to end.
    ///
    /// # Errors
    /// The query's.
    #[tracing::instrument(skip(self))]
    pub async fn terminate(&self, pid: i32) -> Result<bool, DbError> {
        Ok(sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&self.admin)
            .await?)
    }
}
