//! Tenants' statements held to bounds a tenant cannot lift. A role may `SET statement_timeout
//! = 0`, `SET idle_in_transaction_session_timeout = 0` and `SET work_mem = '4GB'` (all
//! USERSET): nxd ends (`pg_terminate_backend`) a tenant backend whose statement has run longer
//! than `databases.statement_timeout_secs`, that has sat idle in a transaction longer than
//! `databases.idle_in_transaction_timeout_secs` (a LISTENing session's open transaction pins
//! PostgreSQL's NOTIFY queue, in the cluster's data directory: 1 GB in 27 s, up to 8 GB, then
//! NOTIFY fails in every database; attacker s12 M1), or whose
//! memory (`RssAnon`, proc(5): not the shared buffers it maps; and the dynamic shared memory
//! segments only it and its parallel workers map, see `embedded_db::backend_memory`) passed
//! `databases.backend_memory_max_mb` (on the embedded cluster, whose processes nxd reads).
//! A sandbox's backends together (of its own role and of its `--db-branch` previews' roles,
//! [`SandboxRoles`]) are held to `databases.sandbox_memory_max_mb`, and all tenants'
//! together to three quarters of `databases.memory_max_mb`: past either, the largest are
//! ended until the rest fit. Bounds per backend alone let one tenant's parallel sessions
//! (each under its bound) reach the cluster unit's `MemoryMax`, where the kernel kills a
//! backend and PostgreSQL restarts every session of every tenant (attacker s10 F6).
//! The one session of nxd's own pg_restore (into a restore's scratch database, or a branch's
//! copy) has no statement time bound, since a restore takes as long as its data (the restore
//! as a whole is held to `databases.restore_timeout_secs`, by the restore itself), but is held
//! to the memory bounds and to the tenants' share of the lock table ([`lock_hogs`]): it runs
//! the dump's SQL, which its tenant wrote. It runs as the
//! sandbox's role, so it is told apart by its random `application_name`, its role and
//! database, and its start: the first such session since nxd started pg_restore
//! ([`ToolSessionAt`]). Every other session there is held to every bound (attacker s11 G10: the
//! watch left every session in a restoring database alone, whoever's, and unbounded ones there
//! took the cluster past its `MemoryMax`).
//! nxd's own pg_dump (a backup, or the first half of a branch's copy) runs in a superuser
//! session, told apart the same way (its role is nxd's), and is held to the
//! same memory bounds as a session of the sandbox's role, and to the tenants' share of the
//! lock table, with no statement time bound: the tenant's rows decide its memory (attacker
//! s15: four backups of three 400 MB values held 773 MB each, beyond every bound). One the
//! watch ends fails its backup saying why ([`ToolSessions::ended`]).

use super::{Databases, DbError};
use rand::RngCore;
use std::collections::HashMap;
use std::sync::Mutex;

/// Entries of PostgreSQL's shared lock table one tenant session may hold (see
/// [`lock_hogs`]); the embedded cluster's table holds
/// `MAX_LOCKS_PER_TRANSACTION` × connections.
pub const MAX_LOCKS_PER_SESSION: u64 = 1024;
/// Entries of the shared lock table all sessions of one sandbox (of its own role and of its
/// previews' roles, [`SandboxRoles`]) may hold together: a role's `CONNECTION LIMIT` (20 on
/// the embedded cluster) × [`MAX_LOCKS_PER_SESSION`] is 20,480 of a table of ~31,000, and three
/// roles' sessions, each under its own bound, filled it (attacker s13 C2). All tenants'
/// sessions together are held to half the table (`max_locks_per_transaction` ×
/// `max_connections` / 2, read at connect).
pub const MAX_LOCKS_PER_SANDBOX: u64 = 4096;

/// A tenant session's entries in PostgreSQL's shared lock table.
#[derive(Debug, Clone, PartialEq)]
pub struct LockHolder {
    /// Its process id, as PostgreSQL knows it.
    pub pid: i32,
    /// Its role's oid (`usesysid`: a role's name is in a shared catalog, which cannot be read
    /// while the table is full).
    pub role: u32,
    /// The sandbox it is held as, by its own role's name ([`SandboxRoles::of_oid`]; a dump's:
    /// the sandbox it dumps).
    pub sandbox: String,
    /// The entries it holds (locks that are not fast-path ones).
    pub locks: u64,
    /// The `application_name` of nxd's own pg_restore or pg_dump session, when it is one:
    /// held to the tenants' bound alone (`pg_restore --single-transaction` takes an entry per
    /// object it makes, and runs the dump's SQL, which its tenant wrote: a CHECK constraint's
    /// function took entries until the table was full, attacker s13 C3; pg_dump locks every
    /// table it dumps).
    pub tool: Option<String>,
}

/// Why a session was ended for the entries it held in the shared lock table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LockOverrun {
    /// It held this many, past [`MAX_LOCKS_PER_SESSION`].
    Session(u64),
    /// Its sandbox's sessions held this many together, past [`MAX_LOCKS_PER_SANDBOX`]; it held
    /// the most of them.
    Sandbox(u64),
    /// All tenants' sessions held this many together, past the tenants' bound (the second
    /// field); it held the most of them.
    Tenants(u64, u64),
}

impl std::fmt::Display for LockOverrun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Session(held) => write!(
                f,
                "it held {held} entries of PostgreSQL's shared lock table, past its bound of {MAX_LOCKS_PER_SESSION}"
            ),
            Self::Sandbox(held) => write!(
                f,
                "its sandbox's sessions held {held} entries of PostgreSQL's shared lock table together, past their bound of {MAX_LOCKS_PER_SANDBOX}, and it held the most"
            ),
            Self::Tenants(held, bound) => write!(
                f,
                "all tenants' sessions held {held} entries of PostgreSQL's shared lock table together, past their bound of {bound}, and it held the most"
            ),
        }
    }
}

/// Which of `holders` to end so that each session holds at most [`MAX_LOCKS_PER_SESSION`]
/// entries of the shared lock table, each sandbox's sessions together at most
/// [`MAX_LOCKS_PER_SANDBOX`] and all of them together at most `tenants_bound`: first every
/// session past its own bound, then the largest of a sandbox past its bound, then those of the
/// sandbox holding the most ([`heaviest_sandboxes_past`]), each until the rest fit. nxd's own
/// pg_restore and pg_dump sessions are held to the last bound alone.
pub fn lock_hogs(holders: &[LockHolder], tenants_bound: u64) -> Vec<(LockHolder, LockOverrun)> {
    let mut ended: Vec<(LockHolder, LockOverrun)> = holders
        .iter()
        .filter(|h| h.tool.is_none() && h.locks > MAX_LOCKS_PER_SESSION)
        .map(|h| (h.clone(), LockOverrun::Session(h.locks)))
        .collect();
    let mut left: Vec<(&LockHolder, u64)> = holders
        .iter()
        .filter(|h| h.tool.is_some() || h.locks <= MAX_LOCKS_PER_SESSION)
        .map(|h| (h, h.locks))
        .collect();
    let untooled: Vec<(&LockHolder, u64)> = left
        .iter()
        .copied()
        .filter(|(h, _)| h.tool.is_none())
        .collect();
    ended.extend(each_sandbox_past(
        &untooled,
        MAX_LOCKS_PER_SANDBOX,
        |h| h.sandbox.as_str(),
        LockOverrun::Sandbox,
    ));
    left.retain(|(h, _)| !ended.iter().any(|(e, _)| e.pid == h.pid));
    ended.extend(heaviest_sandboxes_past(
        &mut left,
        tenants_bound,
        |h| h.sandbox.as_str(),
        |held| LockOverrun::Tenants(held, tenants_bound),
    ));
    ended
}

/// Of each sandbox (`sandbox`) whose `backends` together hold more than `bound`: its largest
/// ([`largest_past`]).
fn each_sandbox_past<'a, T: Clone, W>(
    backends: &[(&'a T, u64)],
    bound: u64,
    sandbox: impl Fn(&'a T) -> &'a str,
    why: impl Fn(u64) -> W,
) -> Vec<(T, W)> {
    let mut sandboxes: Vec<&str> = backends.iter().map(|(b, _)| sandbox(b)).collect();
    sandboxes.sort_unstable();
    sandboxes.dedup();
    let mut ended = Vec::new();
    for name in sandboxes {
        let mut of_sandbox: Vec<(&T, u64)> = backends
            .iter()
            .copied()
            .filter(|(b, _)| sandbox(b) == name)
            .collect();
        ended.extend(largest_past(&mut of_sandbox, bound, &why));
    }
    ended
}

/// What `held` (each backend's memory with its workers', bytes) takes past
/// `databases.sandbox_memory_max_mb` (`sandbox_bound`, bytes; 0: none) and the tenants'
/// memory bound (`tenants_bound`, bytes; 0: none): the largest of a sandbox whose backends
/// together pass the first, then while all together pass the second those of the sandbox
/// holding the most ([`heaviest_sandboxes_past`]), each until the rest fit.
fn memory_hogs(
    mut held: Vec<(&TenantBackend, u64)>,
    sandbox_bound: u64,
    tenants_bound: u64,
) -> Vec<(TenantBackend, Overrun)> {
    let mut ended = Vec::new();
    if sandbox_bound > 0 {
        ended = each_sandbox_past(
            &held,
            sandbox_bound,
            |b| b.sandbox.as_str(),
            Overrun::SandboxMemory,
        );
        held.retain(|(b, _)| !ended.iter().any(|(e, _)| e.pid == b.pid));
    }
    if tenants_bound > 0 {
        ended.extend(heaviest_sandboxes_past(
            &mut held,
            tenants_bound,
            |b| b.sandbox.as_str(),
            Overrun::TenantsMemory,
        ));
    }
    ended
}

/// A tenant's backend.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantBackend {
    /// Its process id, as PostgreSQL knows it (`pg_stat_activity.pid`).
    pub pid: i32,
    /// Its role: `nx_*` (a sandbox's) or `nxb_*` (a preview branch's); for nxd's pg_dump,
    /// nxd's own.
    pub role: String,
    /// The sandbox it is held as, by its own role's name ([`SandboxRoles::of`]; a dump's: the
    /// sandbox it dumps).
    pub sandbox: String,
    /// How long its statement, or its fast-path function call, has run, in seconds (0 while
    /// it is idle).
    pub running_secs: f64,
    /// How long it has sat idle in a transaction, in seconds (0 while it is not).
    pub idle_in_transaction_secs: f64,
    /// The `application_name` of nxd's own pg_restore or pg_dump session, when it is one: it
    /// has no statement time bound (a restore or a dump takes as long as its data).
    pub tool: Option<String>,
    /// The parallel workers its statement runs on (`leader_pid` = its pid): their memory is
    /// its own (attacker s13 H8: `SET force_parallel_mode = on` moved a whole sort into a
    /// worker the watch did not look at, and it took the cluster to its `MemoryMax`).
    pub workers: Vec<i32>,
    /// An autovacuum worker in the ANALYZE phase of a `VACUUM ANALYZE` pass: the oid of the
    /// table it analyzes (`pg_stat_progress_analyze.relid`). Its time is that phase's, which
    /// PostgreSQL does not record: [`time_analyze_phases`] counts it from the first look
    /// that saw it.
    pub analyzing: Option<i64>,
}

/// A row of [`Databases::tenant_backends`]'s query: [`TenantBackend`]'s fields in order.
type BackendRow = (i32, String, f64, f64, Option<String>, Vec<i32>, Option<i64>);

/// Sets the `running_secs` of each backend in the ANALYZE phase of a `VACUUM ANALYZE` pass
/// ([`TenantBackend::analyzing`]) to the time since `seen` first held it, at `now` (0 at the
/// first look); forgets the phases no longer seen (attacker s16 V1: the tenant's index
/// expressions run there too, and a `VACUUM ANALYZE` pass's `query_start` is the whole
/// pass's, so that phase had no time bound and one tenant held every autovacuum worker).
pub fn time_analyze_phases(
    backends: &mut [TenantBackend],
    seen: &mut HashMap<(i32, i64), std::time::Instant>,
    now: std::time::Instant,
) {
    let mut now_seen = HashMap::new();
    for backend in backends.iter_mut() {
        if let Some(table) = backend.analyzing {
            let since = seen.get(&(backend.pid, table)).copied().unwrap_or(now);
            backend.running_secs = now.duration_since(since).as_secs_f64();
            now_seen.insert((backend.pid, table), since);
        }
    }
    *seen = now_seen;
}

/// Why a backend was ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Overrun {
    /// Its statement ran this many seconds.
    Time(f64),
    /// It sat idle in a transaction this many seconds.
    IdleInTransaction(f64),
    /// Its memory (anonymous, and dynamic shared memory) reached this many bytes.
    Memory(u64),
    /// Its sandbox's backends together held this many bytes; it was the largest of them.
    SandboxMemory(u64),
    /// All tenants' backends together held this many bytes; its sandbox's held the most of
    /// them, and it was its sandbox's largest.
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
                "its sandbox's sessions held {} MiB together and it was the largest",
                bytes >> 20
            ),
            Self::TenantsMemory(bytes) => write!(
                f,
                "all tenants' sessions held {} MiB together, its sandbox's the most, and it was its sandbox's largest",
                bytes >> 20
            ),
        }
    }
}

/// The largest of `backends` (each with what it holds: bytes of memory, entries of the lock
/// table) while together they hold more than `bound`, each with `why` of the sum it was ended
/// at.
fn largest_past<T: Clone, W>(
    backends: &mut [(&T, u64)],
    bound: u64,
    why: impl Fn(u64) -> W,
) -> Vec<(T, W)> {
    backends.sort_unstable_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
    first_past(backends, bound, why)
}

/// At all tenants' bound (memory, or entries of the lock table): the backends of the sandbox
/// (`sandbox`) whose backends together hold the most, its largest first, then of the next such
/// sandbox, while all together hold more than `bound`. Attacker s16 T1: the largest single
/// backend of any tenant was ended, so a tenant that spread its memory over many small
/// sessions had another tenant's ordinary session ended, again and again, and kept its own;
/// and weighed role by role, a sandbox that spread them over its `--db-branch` previews'
/// roles still did (review16 #1).
fn heaviest_sandboxes_past<'a, T: Clone, W>(
    backends: &mut [(&'a T, u64)],
    bound: u64,
    sandbox: impl Fn(&'a T) -> &'a str,
    why: impl Fn(u64) -> W,
) -> Vec<(T, W)> {
    let mut held: HashMap<&str, u64> = HashMap::new();
    for (backend, bytes) in backends.iter() {
        *held.entry(sandbox(backend)).or_default() += bytes;
    }
    backends.sort_unstable_by_key(|(backend, bytes)| {
        let name = sandbox(backend);
        std::cmp::Reverse((held[name], name, *bytes))
    });
    first_past(backends, bound, why)
}

/// The first of `backends`, in their order, while together they hold more than `bound`.
fn first_past<T: Clone, W>(
    backends: &[(&T, u64)],
    bound: u64,
    why: impl Fn(u64) -> W,
) -> Vec<(T, W)> {
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

/// Which sandbox each tenant role is held as, by the sandbox's own role's name: a sandbox's
/// role (`nx_*`) is its own, a `--db-branch` preview's (`nxb_*`) its sandbox's; and each
/// tenant role's name by its oid (the lock table's holders are known by oid). Every bound past
/// one session's is a sandbox's (review16 #1: weighed role by role, a sandbox that spread its
/// sessions over its previews' roles held a sandbox's memory bound per preview, and had
/// another tenant's larger session ended at the tenants' bound). Filled at nxd's start from
/// its state's previews ([`Databases::recover`]) and PostgreSQL's roles, and as nxd makes
/// roles and branches.
#[derive(Default)]
pub(super) struct SandboxRoles(Mutex<RoleMap>);

#[derive(Default)]
struct RoleMap {
    /// A preview branch's role, and its sandbox's.
    branches: HashMap<String, String>,
    /// A tenant role's oid, and its name.
    names: HashMap<u32, String>,
}

impl SandboxRoles {
    /// The sandbox `role` is held as: its own for a sandbox's role, or a branch's not known.
    pub(super) fn of(&self, role: &str) -> String {
        let map = self.0.lock().expect("sandbox roles lock");
        map.branches
            .get(role)
            .cloned()
            .unwrap_or_else(|| role.to_owned())
    }

    /// The sandbox the role of oid `oid` is held as ([`Self::of`]); for a role not known
    /// (an autovacuum worker's, 0), `oid <oid>`: held as a sandbox of its own.
    fn of_oid(&self, oid: u32) -> String {
        let name = self
            .0
            .lock()
            .expect("sandbox roles lock")
            .names
            .get(&oid)
            .cloned();
        match name {
            Some(name) => self.of(&name),
            None => format!("oid {oid}"),
        }
    }

    /// Notes that the preview branch's role `branch` is of the sandbox whose role is `sandbox`.
    pub(super) fn branch(&self, branch: &str, sandbox: &str) {
        self.0
            .lock()
            .expect("sandbox roles lock")
            .branches
            .insert(branch.to_owned(), sandbox.to_owned());
    }

    /// Notes that tenant role `role` has oid `oid`.
    pub(super) fn role(&self, oid: u32, role: &str) {
        self.0
            .lock()
            .expect("sandbox roles lock")
            .names
            .insert(oid, role.to_owned());
    }

    /// Forgets the dropped role `role`.
    pub(super) fn forget(&self, role: &str) {
        let mut map = self.0.lock().expect("sandbox roles lock");
        map.branches.remove(role);
        map.names.retain(|_, name| name != role);
    }
}

/// nxd's own pg_dump and pg_restore sessions under way, by the random `application_name`
/// each connects with, and why the watch ended one, once it did (so that the backup, restore
/// or branch that ran it can say so).
#[derive(Default)]
pub(super) struct ToolSessions(Mutex<HashMap<String, ToolSession>>);

#[derive(Debug, Clone)]
struct ToolSession {
    /// The sandbox it is held as, by its own role's name: whose database it dumps, or whose
    /// (or whose preview's) it restores into.
    sandbox: String,
    /// As whom and where it connects, and since when.
    at: ToolSessionAt,
    /// Its backend's pid, from the first look that found it: later looks take no other.
    pid: Option<i32>,
    /// Why the watch ended its session (an [`Overrun`] or a [`LockOverrun`], as text).
    ended: Option<String>,
}

/// As whom and where one of nxd's tools connects, and when nxd started it (PostgreSQL's
/// clock): its session is the earliest client backend of that role (`usesysid`) in that
/// database (`datid`) that started since, with the tool's `application_name` ([`TOOLS`]).
/// Every role reads every backend's `application_name` in `pg_stat_activity`, and may take
/// it: matched by name alone, another tenant's older session that took the name of a
/// restore under way was the restore's, free of the bounds per session and per role, and
/// the real pg_restore was held to them (review16 #2). Role and database are oids, which
/// `pg_stat_get_activity` gives while the shared lock table is full.
#[derive(Debug, Clone, Copy)]
pub(super) struct ToolSessionAt {
    role: i64,
    database: i64,
    since: chrono::DateTime<chrono::Utc>,
}

/// While it lives, nxd's pg_dump or pg_restore session in `database` is known to the watch.
pub(super) struct ToolGuard<'a> {
    set: &'a ToolSessions,
    application_name: String,
}

/// The common table expression `tools`: nxd's own pg_restore and pg_dump sessions, each
/// backend's `pid` and its tool's `application_name` (`name`), for the arrays of
/// [`ToolSessions::arrays`] bound as `$1` to `$5` ([`ToolArrays::bind`]): of each tool, the
/// earliest client backend with its name, role and database that started since the tool did
/// (or the one backend found before). It reads `pg_stat_get_activity` only, which takes no
/// lock ([`Databases::lock_holders`]).
const TOOLS: &str = "tools AS ( \
   SELECT DISTINCT ON (t.name) a.pid, t.name \
   FROM pg_stat_get_activity(NULL) a \
   JOIN unnest($1::text[], $2::int8[], $3::int8[], $4::int4[], $5::timestamptz[]) \
        AS t(name, role, datid, pid, since) \
     ON a.application_name = t.name AND a.usesysid::int8 = t.role AND a.datid::int8 = t.datid \
        AND a.backend_start >= t.since AND (t.pid = 0 OR a.pid = t.pid) \
   WHERE a.backend_type = 'client backend' \
   ORDER BY t.name, a.backend_start, a.pid)";

impl ToolSessions {
    /// Marks nxd's `tool` session (`nxd-restore` or `nxd-dump`) `at`, held as `sandbox`'s,
    /// until the guard is dropped, under a new random `application_name` (`tool`, `-` and 32
    /// hex digits; PostgreSQL keeps 63 bytes).
    fn start(&self, tool: &str, at: ToolSessionAt, sandbox: String) -> ToolGuard<'_> {
        let mut nonce = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut nonce);
        let application_name = format!("{tool}-{}", hex::encode(nonce));
        let session = ToolSession {
            sandbox,
            at,
            pid: None,
            ended: None,
        };
        self.0
            .lock()
            .expect("tool sessions lock")
            .insert(application_name.clone(), session);
        ToolGuard {
            set: self,
            application_name,
        }
    }

    /// Notes that the watch ended the session of `application_name`, and why.
    pub(super) fn ended(&self, application_name: &str, why: String) {
        if let Some(session) = self
            .0
            .lock()
            .expect("tool sessions lock")
            .get_mut(application_name)
        {
            session.ended = Some(why);
        }
    }

    /// Notes that the session of `application_name` is backend `pid` (found by [`TOOLS`]),
    /// and gives the sandbox it is held as (`None`: its tool has ended meanwhile).
    fn found(&self, application_name: &str, pid: i32) -> Option<String> {
        let mut sessions = self.0.lock().expect("tool sessions lock");
        let session = sessions.get_mut(application_name)?;
        session.pid = Some(pid);
        Some(session.sandbox.clone())
    }

    /// Every session's name, role and database oids, pid (0 while not found) and start, as
    /// arrays (for [`TOOLS`]).
    fn arrays(&self) -> ToolArrays {
        let mut arrays = ToolArrays::default();
        for (name, session) in self.0.lock().expect("tool sessions lock").iter() {
            arrays.names.push(name.clone());
            arrays.roles.push(session.at.role);
            arrays.databases.push(session.at.database);
            arrays.pids.push(session.pid.unwrap_or(0));
            arrays.since.push(session.at.since);
        }
        arrays
    }
}

/// [`ToolSessions::arrays`].
#[derive(Default)]
struct ToolArrays {
    names: Vec<String>,
    roles: Vec<i64>,
    databases: Vec<i64>,
    pids: Vec<i32>,
    since: Vec<chrono::DateTime<chrono::Utc>>,
}

impl ToolArrays {
    /// `query` with the arrays bound as [`TOOLS`]'s `$1` to `$5`.
    fn bind<'q, O>(
        self,
        query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
        query
            .bind(self.names)
            .bind(self.roles)
            .bind(self.databases)
            .bind(self.pids)
            .bind(self.since)
    }
}

impl ToolGuard<'_> {
    /// The `application_name` nxd's session must connect with.
    pub(super) fn application_name(&self) -> &str {
        &self.application_name
    }

    /// Why the watch ended the session, if it did.
    pub(super) fn ended(&self) -> Option<String> {
        self.set
            .0
            .lock()
            .expect("tool sessions lock")
            .get(&self.application_name)
            .and_then(|s| s.ended.clone())
    }
}

impl Drop for ToolGuard<'_> {
    fn drop(&mut self) {
        self.set
            .0
            .lock()
            .expect("tool sessions lock")
            .remove(&self.application_name);
    }
}

impl Databases {
    /// Tenants' client backends, idle ones too, nxd's own pg_restore and pg_dump sessions
    /// marked ([`ToolSessionAt`]; a dump's with the role of the sandbox it dumps). An idle backend's statement time is 0, but its
    /// memory counts: what a session keeps between statements (`set_config` values, prepared
    /// statements, temp buffers) stays in its process (attacker s12 H1: idle sessions were
    /// not looked at, and one tenant's took the cluster to its `MemoryMax`).
    ///
    /// Autovacuum workers in a tenant's database too, as its owner's: ANALYZE evaluates an
    /// expression index's expressions, a function the tenant wrote (and may declare
    /// IMMUTABLE), with `statement_timeout` 0 (attacker s15 A1: 4 GB in 30 s and the cluster
    /// OOM-killed; a `pg_sleep` ran on past 5 min holding one of `autovacuum_max_workers`).
    /// Their time counts in a plain ANALYZE (`query` `autovacuum: ANALYZE <table>`), and in
    /// the ANALYZE phase of `autovacuum: VACUUM ANALYZE ...` (the worker is then in
    /// `pg_stat_progress_analyze`: [`TenantBackend::analyzing`], timed by
    /// [`time_analyze_phases`]), not in the VACUUM itself, whose `query_start` is the whole
    /// pass's: a VACUUM takes as long as its table, and ending it every time would leave a
    /// large table never vacuumed. Ending a worker costs that table's pass: autovacuum comes
    /// back to it later.
    ///
    /// A backend runs in two of `pg_stat_activity.state`'s values (PostgreSQL 15's
    /// "pg_stat_activity View"): `active` (a statement, since `query_start`) and `fastpath
    /// function call` (the protocol's FunctionCall message: libpq's `PQfn`, which its
    /// large-object calls use; since `state_change`, as a fast-path call leaves `query_start`
    /// at the previous statement's). Attacker s13 M8: a fast-path `pg_sleep` was read as idle
    /// and ran 321 s past the 300 s bound.
    ///
    /// # Errors
    /// The query's.
    pub async fn tenant_backends(&self) -> Result<Vec<TenantBackend>, DbError> {
        let query = format!(
            "WITH {TOOLS} \
             SELECT l.pid, \
                    CASE WHEN l.backend_type = 'autovacuum worker' \
                         THEN pg_get_userbyid(d.datdba)::text ELSE l.usename::text END AS role, \
                    CASE WHEN l.backend_type = 'autovacuum worker' \
                         THEN CASE WHEN l.query LIKE 'autovacuum: ANALYZE %' \
                              THEN extract(epoch FROM clock_timestamp() - l.query_start)::float8 \
                              ELSE 0 END \
                         WHEN l.state = 'active' AND l.query_start IS NOT NULL \
                         THEN extract(epoch FROM clock_timestamp() - l.query_start)::float8 \
                         WHEN l.state = 'fastpath function call' \
                         THEN extract(epoch FROM clock_timestamp() - l.state_change)::float8 \
                         ELSE 0 END, \
                    CASE WHEN l.state LIKE 'idle in transaction%' \
                         THEN extract(epoch FROM clock_timestamp() - l.state_change)::float8 \
                         ELSE 0 END, \
                    tool.name, \
                    ARRAY(SELECT w.pid FROM pg_stat_activity w \
                          WHERE w.leader_pid = l.pid AND w.pid <> l.pid), \
                    CASE WHEN l.backend_type = 'autovacuum worker' \
                              AND l.query LIKE 'autovacuum: VACUUM ANALYZE %' \
                         THEN a.relid::int8 END \
             FROM pg_stat_activity l LEFT JOIN pg_database d ON d.oid = l.datid \
                  LEFT JOIN tools tool ON tool.pid = l.pid \
                  LEFT JOIN pg_stat_progress_analyze a ON a.pid = l.pid \
             WHERE (l.backend_type = 'client backend' \
                    AND (l.usename LIKE 'nx\\_%' OR l.usename LIKE 'nxb\\_%')) \
                OR tool.pid IS NOT NULL \
                OR (l.backend_type = 'autovacuum worker' \
                    AND (pg_get_userbyid(d.datdba) LIKE 'nx\\_%' \
                         OR pg_get_userbyid(d.datdba) LIKE 'nxb\\_%'))"
        );
        let rows: Vec<BackendRow> = self
            .tool_sessions
            .arrays()
            .bind(sqlx::query_as(&query))
            .fetch_all(&self.admin)
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(pid, role, running_secs, idle_in_transaction_secs, tool, workers, analyzing)| {
                    let sandbox = tool
                        .as_deref()
                        .and_then(|name| self.tool_sessions.found(name, pid))
                        .unwrap_or_else(|| self.sandbox_roles.of(&role));
                    TenantBackend {
                        pid,
                        role,
                        sandbox,
                        running_secs,
                        idle_in_transaction_secs,
                        tool,
                        workers,
                        analyzing,
                    }
                },
            )
            .collect())
    }

    /// Which of `backends` overran their bounds (a backend's memory counted with its parallel
    /// workers'): their statement ran past the role's
    /// `statement_timeout` or they sat idle in a transaction past its
    /// `idle_in_transaction_session_timeout` (not nxd's pg_restore's and pg_dump's), or `memory` (their anonymous and dynamic shared memory, bytes,
    /// by PostgreSQL's pid, where known) passed `databases.backend_memory_max_mb`; then, of
    /// the others, what [`memory_hogs`] says of the sandboxes' and all tenants' bounds.
    pub fn overruns(
        &self,
        backends: &[TenantBackend],
        memory: &HashMap<i32, u64>,
    ) -> Vec<(TenantBackend, Overrun)> {
        // A backend's memory with its parallel workers'.
        let with_workers: HashMap<i32, u64> = backends
            .iter()
            .filter_map(|b| {
                let workers: u64 = b.workers.iter().filter_map(|w| memory.get(w)).sum();
                memory.get(&b.pid).map(|own| (b.pid, own + workers))
            })
            .collect();
        let memory = &with_workers;
        let time_bound = self.policy.statement_timeout_secs;
        let idle_bound = self.policy.idle_in_transaction_timeout_secs;
        let memory_bound = self.backend_memory_max_mb << 20;
        let past = |bound: u64, secs: f64| bound > 0 && secs > bound as f64;
        let mut ended: Vec<(TenantBackend, Overrun)> = backends
            .iter()
            .filter_map(|b| {
                let overrun = if b.tool.is_none() && past(time_bound, b.running_secs) {
                    Overrun::Time(b.running_secs)
                } else if b.tool.is_none() && past(idle_bound, b.idle_in_transaction_secs) {
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
        let left: Vec<(&TenantBackend, u64)> = backends
            .iter()
            .filter(|b| !ended.iter().any(|(e, _)| e.pid == b.pid))
            .filter_map(|b| memory.get(&b.pid).map(|&bytes| (b, bytes)))
            .collect();
        ended.extend(memory_hogs(
            left,
            self.sandbox_memory_max_mb << 20,
            self.tenants_memory_max_mb << 20,
        ));
        ended
    }

    /// Client backends of roles other than nxd's own that hold entries of PostgreSQL's shared
    /// lock table (locks that are not fast-path ones: advisory locks, and relation locks past
    /// a backend's 16 fast-path slots), idle ones too, nxd's own pg_restore and pg_dump sessions
    /// marked (`pg_restore --single-transaction` locks every object it makes, pg_dump every
    /// table it dumps), and autovacuum workers
    /// (role 0: a tenant's expression-index function runs in one and took entries until the
    /// table was full, attacker s15 A3; the database's owner is in a shared catalog);
    /// [`lock_hogs`] says which to end, with [`Databases::tenants_locks_max`].
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
    pub async fn lock_holders(&self) -> Result<Vec<LockHolder>, DbError> {
        let query = format!(
            "WITH held AS ( \
               SELECT pid, count(*) AS locks FROM pg_lock_status() \
               WHERE NOT fastpath AND pid IS NOT NULL GROUP BY pid), \
             own AS (SELECT usesysid FROM pg_stat_get_activity(pg_backend_pid())), \
             {TOOLS} \
             SELECT s.pid, COALESCE(s.usesysid, 0)::int8, h.locks, tool.name \
             FROM pg_stat_get_activity(NULL) s JOIN held h ON h.pid = s.pid \
                  LEFT JOIN tools tool ON tool.pid = s.pid \
             WHERE (s.backend_type = 'client backend' \
                    AND s.usesysid <> (SELECT usesysid FROM own)) \
                OR tool.pid IS NOT NULL \
                OR s.backend_type = 'autovacuum worker'"
        );
        let rows: Vec<(i32, i64, i64, Option<String>)> = self
            .tool_sessions
            .arrays()
            .bind(sqlx::query_as(&query))
            .fetch_all(&self.admin)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(pid, role, locks, tool)| {
                let role = u32::try_from(role).unwrap_or(u32::MAX);
                let sandbox = tool
                    .as_deref()
                    .and_then(|name| self.tool_sessions.found(name, pid))
                    .unwrap_or_else(|| self.sandbox_roles.of_oid(role));
                LockHolder {
                    pid,
                    role,
                    sandbox,
                    locks: u64::try_from(locks).unwrap_or(0),
                    tool,
                }
            })
            .collect())
    }

    /// Marks nxd's pg_restore into `database`, in a session of `role`, held as the sandbox of
    /// `role`, until the guard is dropped ([`ToolSessionAt`]).
    ///
    /// # Errors
    /// The query's (which reads the oids of `role` and `database`).
    pub(super) async fn restore_session(
        &self,
        database: &str,
        role: &str,
    ) -> Result<ToolGuard<'_>, DbError> {
        let at = self.tool_session_at(database, Some(role)).await?;
        let sandbox = self.sandbox_roles.of(role);
        Ok(self.tool_sessions.start("nxd-restore", at, sandbox))
    }

    /// Marks nxd's pg_dump of `database`, in a session of nxd's own role held as the sandbox
    /// of `role` (the database's owner: the tenant's rows decide its memory; attacker s15:
    /// four backups of three 400 MB values held 773 MB each, beyond every bound), until the
    /// guard is dropped ([`ToolSessionAt`]).
    ///
    /// # Errors
    /// The query's (which reads the oids of nxd's role and of `database`).
    pub(super) async fn dump_session(
        &self,
        database: &str,
        role: &str,
    ) -> Result<ToolGuard<'_>, DbError> {
        let at = self.tool_session_at(database, None).await?;
        let sandbox = self.sandbox_roles.of(role);
        Ok(self.tool_sessions.start("nxd-dump", at, sandbox))
    }

    /// The oids of `role` (nxd's own: `None`) and `database`, and PostgreSQL's clock now.
    async fn tool_session_at(
        &self,
        database: &str,
        role: Option<&str>,
    ) -> Result<ToolSessionAt, DbError> {
        let (role, database, since) = sqlx::query_as(
            "SELECT (SELECT oid FROM pg_roles WHERE rolname = COALESCE($1, current_user::text))::int8, \
                    (SELECT oid FROM pg_database WHERE datname = $2)::int8, \
                    clock_timestamp()",
        )
        .bind(role)
        .bind(database)
        .fetch_one(&self.admin)
        .await?;
        Ok(ToolSessionAt {
            role,
            database,
            since,
        })
    }

    /// Notes why the watch ended nxd's own session `application_name` (a
    /// [`TenantBackend::tool`] or [`LockHolder::tool`]), so that its backup, restore or branch
    /// fails saying so.
    pub fn tool_session_ended(&self, application_name: &str, why: String) {
        self.tool_sessions.ended(application_name, why);
    }

    /// The entries of the shared lock table all tenants' sessions may hold together: half
    /// the table (`max_locks_per_transaction` × `max_connections` / 2, read at connect).
    pub fn tenants_locks_max(&self) -> u64 {
        self.tenants_locks_max
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

#[cfg(test)]
mod tests {
    use super::{
        heaviest_sandboxes_past, lock_hogs, memory_hogs, time_analyze_phases, LockHolder,
        LockOverrun, Overrun, TenantBackend,
    };
    use std::time::{Duration, Instant};

    /// Attacker s16 V1: an autovacuum worker's ANALYZE phase of a VACUUM ANALYZE is timed from
    /// the first look that saw it, per table; the VACUUM before it is not.
    #[test]
    fn an_analyze_phase_is_timed_from_when_it_was_first_seen() {
        let worker = |analyzing| TenantBackend {
            pid: 7,
            role: "nx_a".into(),
            sandbox: "nx_a".into(),
            running_secs: 0.0,
            idle_in_transaction_secs: 0.0,
            tool: None,
            workers: Vec::new(),
            analyzing,
        };
        let mut seen = std::collections::HashMap::new();
        let start = Instant::now();
        let look = |seen: &mut _, analyzing, secs| {
            let mut backends = [worker(analyzing)];
            time_analyze_phases(&mut backends, seen, start + Duration::from_secs(secs));
            backends[0].running_secs
        };
        assert_eq!(look(&mut seen, None, 0), 0.0, "vacuuming");
        assert_eq!(
            look(&mut seen, Some(16384), 100),
            0.0,
            "first seen analyzing"
        );
        assert_eq!(look(&mut seen, Some(16384), 400), 300.0);
        // The next table of the pass starts its own time.
        assert_eq!(look(&mut seen, Some(16390), 401), 0.0);
        assert_eq!(look(&mut seen, Some(16390), 402), 1.0);
        assert_eq!(look(&mut seen, None, 403), 0.0);
        assert!(seen.is_empty());
    }

    /// Attacker s16 T1: one sandbox's two roles (its own and a `--db-branch` preview's) hold
    /// ten sessions of ~145 MiB each, each role under its bound, and another tenant one
    /// ordinary session of 243 MiB; together past the tenants' 3,072 MiB. One session of the
    /// role holding the most is ended, not the other tenant's.
    #[test]
    fn at_the_tenants_bound_the_role_holding_the_most_gives_way_not_the_largest_session() {
        let backend = |pid: i32, role: &str| TenantBackend {
            pid,
            role: role.into(),
            sandbox: role.into(),
            running_secs: 0.0,
            idle_in_transaction_secs: 0.0,
            tool: None,
            workers: Vec::new(),
            analyzing: None,
        };
        let mut backends: Vec<TenantBackend> = (0..20)
            .map(|i| backend(i, if i < 10 { "nx_atk" } else { "nxb_branch" }))
            .collect();
        backends.push(backend(100, "nx_vic"));
        let mut held: Vec<(&TenantBackend, u64)> = backends
            .iter()
            .map(|b| {
                let mb = match b.role.as_str() {
                    "nx_vic" => 243,
                    "nx_atk" => 146,
                    _ => 145,
                };
                (b, mb << 20)
            })
            .collect();
        let held_mb: u64 = held.iter().map(|(_, bytes)| bytes >> 20).sum();
        assert_eq!(held_mb, 3153);
        let ended = heaviest_sandboxes_past(
            &mut held,
            3072 << 20,
            |b| b.sandbox.as_str(),
            Overrun::TenantsMemory,
        );
        assert_eq!(ended.len(), 1, "{ended:?}");
        assert_eq!(ended[0].0.role, "nx_atk", "{ended:?}");
        assert_eq!(ended[0].1, Overrun::TenantsMemory(3153 << 20));
    }

    /// T1's shape in the lock table: one role's four sessions of 1,000 entries (under the
    /// role's 4,096) and another tenant's one of 1,020; past the tenants' 4,500, one of the
    /// first role's is ended, not the other tenant's larger one.
    #[test]
    fn at_the_tenants_lock_bound_the_role_holding_the_most_gives_way() {
        let holder = |pid, role: u32, locks| LockHolder {
            pid,
            role,
            sandbox: format!("oid {role}"),
            locks,
            tool: None,
        };
        let mut holders: Vec<LockHolder> = (0..4).map(|pid| holder(pid, 1, 1000)).collect();
        holders.push(holder(9, 2, 1020));
        let ended = lock_hogs(&holders, 4500);
        assert_eq!(ended.len(), 1, "{ended:?}");
        assert_eq!(ended[0].0.role, 1, "{ended:?}");
        assert_eq!(ended[0].1, LockOverrun::Tenants(5020, 4500));
    }

    #[test]
    fn a_restore_session_is_held_to_the_tenants_bound_alone() {
        let restore = LockHolder {
            pid: 1,
            role: 1,
            sandbox: "nx_a".into(),
            locks: 9000,
            tool: Some("nxd-restore-1".into()),
        };
        let other = LockHolder {
            pid: 2,
            role: 1,
            sandbox: "nx_a".into(),
            locks: 900,
            tool: None,
        };
        let holders = [restore.clone(), other];
        assert_eq!(lock_hogs(&holders, 12_800), []);
        assert_eq!(
            lock_hogs(&holders, 5_000),
            [(restore, LockOverrun::Tenants(9_900, 5_000))]
        );
    }

    #[test]
    fn sessions_each_under_their_bound_are_held_to_their_roles_and_all_tenants_bounds() {
        // Attacker s13 C2: 3 roles x 19 sessions x 1,000 entries, and one session of 2,000.
        let mut holders: Vec<LockHolder> = (0..57)
            .map(|i| LockHolder {
                pid: i,
                role: 1 + (i as u32 % 3),
                sandbox: format!("nx_{}", i % 3),
                locks: 1000,
                tool: None,
            })
            .collect();
        holders.push(LockHolder {
            pid: 100,
            role: 4,
            sandbox: "nx_3".into(),
            locks: 2000,
            tool: None,
        });
        let ended = lock_hogs(&holders, 10_000);
        assert!(ended.contains(&(holders[57].clone(), LockOverrun::Session(2000))));
        let ended_of = |role: u32| {
            ended
                .iter()
                .filter(|(h, why)| h.role == role && matches!(why, LockOverrun::Sandbox(_)))
                .count()
        };
        // 19,000 each: 15 ended leave 4,000 under 4,096.
        assert_eq!(
            (1..=3).map(ended_of).collect::<Vec<_>>(),
            [15, 15, 15],
            "{ended:?}"
        );
        assert!(ended
            .iter()
            .any(|(_, why)| *why == LockOverrun::Sandbox(19_000)));
        // 12,000 left together, past 10,000: two more of the largest.
        assert_eq!(
            ended
                .iter()
                .filter(|(_, why)| matches!(why, LockOverrun::Tenants(_, 10_000)))
                .count(),
            2
        );
        let left: u64 = holders
            .iter()
            .filter(|h| !ended.iter().any(|(e, _)| e.pid == h.pid))
            .map(|h| h.locks)
            .sum();
        assert!(left <= 10_000, "{left}");
    }

    /// Review16 #1: one sandbox's sessions spread over its own role and two `--db-branch`
    /// previews' roles, three of 130 MiB each a role (390 MiB, under the bounds alone), and
    /// another tenant's one session of 450 MiB. They are weighed as one sandbox's: past its
    /// 1,000 MiB its largest give way, and past the tenants' 1,536 MiB its sessions, not the
    /// other tenant's larger one.
    #[test]
    fn a_sandboxs_preview_roles_are_held_as_the_sandbox_at_the_memory_bounds() {
        let backend = |pid: i32, role: &str, sandbox: &str| TenantBackend {
            pid,
            role: role.into(),
            sandbox: sandbox.into(),
            running_secs: 0.0,
            idle_in_transaction_secs: 0.0,
            tool: None,
            workers: Vec::new(),
            analyzing: None,
        };
        let mut backends: Vec<TenantBackend> = (0..9)
            .map(|i| backend(i, ["nx_a", "nxb_1", "nxb_2"][i as usize / 3], "nx_a"))
            .collect();
        backends.push(backend(100, "nx_b", "nx_b"));
        let held = || -> Vec<(&TenantBackend, u64)> {
            backends
                .iter()
                .map(|b| (b, if b.pid == 100 { 450 << 20 } else { 130 << 20 }))
                .collect()
        };
        let ended = memory_hogs(held(), 1000 << 20, 0);
        assert_eq!(ended.len(), 2, "{ended:?}");
        assert!(ended.iter().all(|(b, _)| b.sandbox == "nx_a"), "{ended:?}");
        assert_eq!(ended[0].1, Overrun::SandboxMemory(1170 << 20));
        let ended = memory_hogs(held(), 0, 1536 << 20);
        assert_eq!(ended.len(), 1, "{ended:?}");
        assert_eq!(ended[0].0.sandbox, "nx_a", "{ended:?}");
        assert_eq!(ended[0].1, Overrun::TenantsMemory(1620 << 20));
    }

    /// Review16 #1 in the lock table: five roles of one sandbox (its own and four previews'),
    /// each one session of 1,000 entries, under a sandbox's 4,096 each alone: together 5,000,
    /// and one gives way.
    #[test]
    fn a_sandboxs_preview_roles_are_held_as_the_sandbox_in_the_lock_table() {
        let holders: Vec<LockHolder> = (0..5)
            .map(|i| LockHolder {
                pid: i,
                role: 10 + i as u32,
                sandbox: "nx_a".into(),
                locks: 1000,
                tool: None,
            })
            .collect();
        let ended = lock_hogs(&holders, 12_800);
        assert_eq!(ended.len(), 1, "{ended:?}");
        assert_eq!(ended[0].1, LockOverrun::Sandbox(5000));
    }
}
