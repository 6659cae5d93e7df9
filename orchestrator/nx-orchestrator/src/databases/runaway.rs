//! Tenants' statements held to bounds a tenant cannot lift. A role may `SET statement_timeout
//! = 0`, `SET idle_in_transaction_session_timeout = 0` and `SET work_mem = '4GB'` (all
//! USERSET): nxd ends (`pg_terminate_backend`) a tenant backend whose statement has run longer
//! than `databases.statement_timeout_secs`, that has sat idle in a transaction longer than
//! `databases.idle_in_transaction_timeout_secs` (a LISTENing session's open transaction pins
//! PostgreSQL's NOTIFY queue, in the cluster's data directory: 1 GB in 27 s, up to 8 GB, then
//! NOTIFY fails in every database; attacker s12 M1), or whose
//! anonymous memory (`RssAnon`, proc(5): not the shared buffers it maps) passed
//! `databases.backend_memory_max_mb` (on the embedded cluster, whose processes nxd reads).
//! A role's backends together are held to `databases.sandbox_memory_max_mb`, and all tenants'
//! together to three quarters of `databases.memory_max_mb`: past either, the largest are
//! ended until the rest fit. Bounds per backend alone let one tenant's parallel sessions
//! (each under its bound) reach the cluster unit's `MemoryMax`, where the kernel kills a
//! backend and PostgreSQL restarts every session of every tenant (attacker s10 F6).
//! The one session of nxd's own pg_restore (into a restore's scratch database, or a branch's
//! copy) has no statement time bound, since a restore takes as long as its data, but is held
//! to the memory bounds: it runs the dump's SQL, which its tenant wrote. It runs as the
//! sandbox's role, so it is told apart by what no other session of the role can have: it is
//! the first to connect to that database with the restore's random `application_name`
//! ([`Restoring`]). Every other session there is held to every bound (attacker s11 G10: the
//! watch left every session in a restoring database alone, whoever's, and unbounded ones there
//! took the cluster past its `MemoryMax`).

use super::{Databases, DbError};
use rand::RngCore;
use std::collections::HashMap;
use std::sync::Mutex;

/// Entries of PostgreSQL's shared lock table one tenant session may hold (see
/// [`Databases::lock_hogs`]); the embedded cluster's table holds
/// `MAX_LOCKS_PER_TRANSACTION` × connections.
pub const MAX_LOCKS_PER_SESSION: i64 = 1024;

/// A tenant's backend.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantBackend {
    /// Its process id, as PostgreSQL knows it (`pg_stat_activity.pid`).
    pub pid: i32,
    /// Its role: `nx_*` (a sandbox's) or `nxb_*` (a preview branch's).
    pub role: String,
    /// How long its statement has run, in seconds (0 while it is idle).
    pub running_secs: f64,
    /// How long it has sat idle in a transaction, in seconds (0 while it is not).
    pub idle_in_transaction_secs: f64,
    /// Whether it is nxd's own restore's session, which has no statement time bound.
    pub restore: bool,
}

/// Why a backend was ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Overrun {
    /// Its statement ran this many seconds.
    Time(f64),
    /// It sat idle in a transaction this many seconds.
    IdleInTransaction(f64),
    /// Its anonymous memory reached this many bytes.
    Memory(u64),
    /// Its role's backends together held this many bytes; it was the largest of them.
    SandboxMemory(u64),
    /// All tenants' backends together held this many bytes; it was the largest of them.
    TenantsMemory(u64),
}

impl std::fmt::Display for Overrun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Time(secs) => write!(f, "its statement ran {secs:.0} s"),
            Self::IdleInTransaction(secs) => {
                write!(f, "it sat idle in a transaction for {secs:.0} s")
            }
            Self::Memory(bytes) => write!(f, "it held {} MiB", bytes >> 20),
            Self::SandboxMemory(bytes) => write!(
                f,
                "its role's sessions held {} MiB together and it was the largest",
                bytes >> 20
            ),
            Self::TenantsMemory(bytes) => write!(
                f,
                "all tenants' sessions held {} MiB together and it was the largest",
                bytes >> 20
            ),
        }
    }
}

/// The largest of `backends` (with their anonymous memory, bytes) while together they hold
/// more than `bound` bytes, each with `why` of the sum it was ended at.
fn largest_past(
    backends: &mut [(&TenantBackend, u64)],
    bound: u64,
    why: fn(u64) -> Overrun,
) -> Vec<(TenantBackend, Overrun)> {
    backends.sort_unstable_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
    let mut total: u64 = backends.iter().map(|(_, bytes)| bytes).sum();
    let mut ended = Vec::new();
    for (backend, bytes) in backends.iter() {
        if total <= bound {
            break;
        }
        ended.push(((*backend).clone(), why(total)));
        total -= bytes;
    }
    ended
}

/// Databases nxd's own pg_restore writes into now, each with the `application_name` that
/// restore's session connects with.
#[derive(Default)]
pub(super) struct Restoring(Mutex<HashMap<String, String>>);

/// While it lives, `database` is being restored into by nxd.
pub(super) struct RestoringGuard<'a> {
    set: &'a Restoring,
    database: String,
    application_name: String,
}

impl Restoring {
    /// Marks `database` as nxd's restore target until the guard is dropped, under a new random
    /// `application_name` (`nxd-restore-` and 32 hex digits; PostgreSQL keeps 63 bytes).
    pub(super) fn start(&self, database: &str) -> RestoringGuard<'_> {
        let mut nonce = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut nonce);
        let application_name = format!("nxd-restore-{}", hex::encode(nonce));
        self.0
            .lock()
            .expect("restoring lock")
            .insert(database.to_owned(), application_name.clone());
        RestoringGuard {
            set: self,
            database: database.to_owned(),
            application_name,
        }
    }

    /// The databases being restored into and their restores' application names, as two
    /// arrays (for `unnest`).
    fn arrays(&self) -> (Vec<String>, Vec<String>) {
        self.0
            .lock()
            .expect("restoring lock")
            .iter()
            .map(|(database, name)| (database.clone(), name.clone()))
            .unzip()
    }
}

impl RestoringGuard<'_> {
    /// The `application_name` nxd's restore session must connect with.
    pub(super) fn application_name(&self) -> &str {
        &self.application_name
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
    /// Tenants' client backends, idle ones too, nxd's own restores' sessions marked (of each
    /// database being restored into, the earliest backend with its restore's application
    /// name: one of the role's own sessions may take the name, read in `pg_stat_activity`,
    /// but connects after the restore did). An idle backend's statement time is 0, but its
    /// memory counts: what a session keeps between statements (`set_config` values, prepared
    /// statements, temp buffers) stays in its process (attacker s12 H1: idle sessions were
    /// not looked at, and one tenant's took the cluster to its `MemoryMax`).
    ///
    /// # Errors
    /// The query's.
    pub async fn tenant_backends(&self) -> Result<Vec<TenantBackend>, DbError> {
        let (databases, names) = self.restoring.arrays();
        let rows: Vec<(i32, String, f64, f64, bool)> = sqlx::query_as(
            "WITH restores AS ( \
               SELECT DISTINCT ON (a.datname) a.pid \
               FROM pg_stat_activity a \
               JOIN unnest($1::text[], $2::text[]) AS r(datname, application_name) \
                 ON a.datname = r.datname AND a.application_name = r.application_name \
               WHERE a.backend_type = 'client backend' \
               ORDER BY a.datname, a.backend_start, a.pid) \
             SELECT pid, usename::text, \
                    CASE WHEN state = 'active' AND query_start IS NOT NULL \
                         THEN extract(epoch FROM clock_timestamp() - query_start)::float8 \
                         ELSE 0 END, \
                    CASE WHEN state LIKE 'idle in transaction%' \
                         THEN extract(epoch FROM clock_timestamp() - state_change)::float8 \
                         ELSE 0 END, \
                    pid IN (SELECT pid FROM restores) \
             FROM pg_stat_activity \
             WHERE backend_type = 'client backend' \
               AND (usename LIKE 'nx\\_%' OR usename LIKE 'nxb\\_%')",
        )
        .bind(databases)
        .bind(names)
        .fetch_all(&self.admin)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(pid, role, running_secs, idle_in_transaction_secs, restore)| TenantBackend {
                    pid,
                    role,
                    running_secs,
                    idle_in_transaction_secs,
                    restore,
                },
            )
            .collect())
    }

    /// Which of `backends` overran their bounds: their statement ran past the role's
    /// `statement_timeout` or they sat idle in a transaction past its
    /// `idle_in_transaction_session_timeout` (not nxd's restores'), or `memory` (their anonymous memory, bytes,
    /// by PostgreSQL's pid, where known) passed `databases.backend_memory_max_mb`; then, of the others, the largest
    /// of a role whose backends together pass `databases.sandbox_memory_max_mb`, and the
    /// largest of all while all together pass three quarters of `databases.memory_max_mb`,
    /// each until the rest fit.
    pub fn overruns(
        &self,
        backends: &[TenantBackend],
        memory: &HashMap<i32, u64>,
    ) -> Vec<(TenantBackend, Overrun)> {
        let time_bound = self.policy.statement_timeout_secs;
        let idle_bound = self.policy.idle_in_transaction_timeout_secs;
        let memory_bound = self.backend_memory_max_mb << 20;
        let past = |bound: u64, secs: f64| bound > 0 && secs > bound as f64;
        let mut ended: Vec<(TenantBackend, Overrun)> = backends
            .iter()
            .filter_map(|b| {
                let overrun = if !b.restore && past(time_bound, b.running_secs) {
                    Overrun::Time(b.running_secs)
                } else if !b.restore && past(idle_bound, b.idle_in_transaction_secs) {
                    Overrun::IdleInTransaction(b.idle_in_transaction_secs)
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
            .collect();
        let mut left: Vec<(&TenantBackend, u64)> = backends
            .iter()
            .filter(|b| !ended.iter().any(|(e, _)| e.pid == b.pid))
            .filter_map(|b| memory.get(&b.pid).map(|&bytes| (b, bytes)))
            .collect();
        if self.sandbox_memory_max_mb > 0 {
            let mut roles: Vec<&str> = left.iter().map(|(b, _)| b.role.as_str()).collect();
            roles.sort_unstable();
            roles.dedup();
            for role in roles {
                let mut of_role: Vec<(&TenantBackend, u64)> = left
                    .iter()
                    .copied()
                    .filter(|(b, _)| b.role == role)
                    .collect();
                ended.extend(largest_past(
                    &mut of_role,
                    self.sandbox_memory_max_mb << 20,
                    Overrun::SandboxMemory,
                ));
            }
            left.retain(|(b, _)| !ended.iter().any(|(e, _)| e.pid == b.pid));
        }
        if self.tenants_memory_max_mb > 0 {
            ended.extend(largest_past(
                &mut left,
                self.tenants_memory_max_mb << 20,
                Overrun::TenantsMemory,
            ));
        }
        ended
    }

    /// Client backends of roles other than nxd's own holding more than
    /// [`MAX_LOCKS_PER_SESSION`] entries of PostgreSQL's shared lock table (locks that are not
    /// fast-path ones: advisory locks, and relation locks past a backend's 16 fast-path
    /// slots), idle ones too, but for nxd's own restore sessions (`pg_restore
    /// --single-transaction` locks every object it makes): `(pid, locks)`.
    ///
    /// The table is the whole cluster's (`max_locks_per_transaction` × connections) and a
    /// session keeps its advisory locks after its statement: one tenant's
    /// `SELECT pg_advisory_lock(g) FROM generate_series(1, 100000) g` filled it in ~30 ms, and
    /// then every other session, nxd's own state included, failed "out of shared memory"
    /// until that session chose to end (attacker s12 C1). So the query reads functions only
    /// (`pg_lock_status`, `pg_stat_get_activity`): a query naming `pg_stat_activity` or
    /// `pg_roles` takes locks on shared catalogs, which fail while the table is full.
    ///
    /// # Errors
    /// The query's.
    pub async fn lock_hogs(&self) -> Result<Vec<(i32, i64)>, DbError> {
        let (_, names) = self.restoring.arrays();
        Ok(sqlx::query_as(
            "WITH held AS ( \
               SELECT pid, count(*) AS locks FROM pg_lock_status() \
               WHERE NOT fastpath AND pid IS NOT NULL GROUP BY pid), \
             restores AS ( \
               SELECT DISTINCT ON (a.application_name) a.pid \
               FROM pg_stat_get_activity(NULL) a \
               WHERE a.application_name = ANY($2::text[]) \
               ORDER BY a.application_name, a.backend_start, a.pid) \
             SELECT s.pid, h.locks FROM pg_stat_get_activity(NULL) s JOIN held h ON h.pid = s.pid \
             WHERE s.backend_type = 'client backend' AND h.locks > $1 \
               AND s.usesysid <> (SELECT usesysid FROM pg_stat_get_activity(pg_backend_pid())) \
               AND s.pid NOT IN (SELECT pid FROM restores)",
        )
        .bind(MAX_LOCKS_PER_SESSION)
        .bind(names)
        .fetch_all(&self.admin)
        .await?)
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
