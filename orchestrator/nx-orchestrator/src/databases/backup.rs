//! Backups with the stock tools: `pg_dump --format=custom`, restored by `pg_restore`, so a dump
//! made by NX restores into any PostgreSQL.
//!
//! Crash safety: pg_dump and pg_restore run in transient units `nxdb-*.service` (listed by
//! systemd, stopped with their job); a restore writes into a scratch database `nxr_<time>`;
//! the swap that puts a database in production's place is one transaction. Whatever an
//! interrupted backup or restore left (units, `.partial` files, uploaded dumps, scratch
//! databases) [`Databases::recover`] removes at nxd's start.

use super::{ident, open_to_statements, quote, with_parameter, Contents, Databases, DbError};
use crate::embedded_db::find_binary;
use crate::names::{DeploymentId, SandboxName};
use crate::supervisor::UnitSpec;
use futures_util::StreamExt;
pub use nx_api::{BackupInfo, RestoreInfo};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// The units pg_dump and pg_restore run in.
const TOOL_UNITS: &str = "nxdb-*.service";
/// A swap retries when a client connected in the instant between ending the connections and
/// the rename's lock (SQLSTATE 55006, object in use).
const SWAP_ATTEMPTS: usize = 5;
/// How long nxd's start tries again to drop a database left from before whose sessions
/// outlive `DROP DATABASE ... WITH (FORCE)`'s own wait for them (5 s; e.g. the backend of a
/// restore's large COPY, whose pg_restore a crash cut short, ends only at its next check for
/// interrupts). Past it the database stays, for the next start.
const LEFTOVER_DROP_PATIENCE: Duration = Duration::from_secs(30);
/// How many databases left from before [`Databases::drop_left_from_before`] drops at once.
const LEFTOVER_DROPS_AT_ONCE: usize = 4;

/// What [`Databases::recover`] found at nxd's start.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The deployments whose branch was swapped in, and the swap finished now: they must
    /// reconnect as production.
    pub swapped: Vec<DeploymentId>,
    /// Scratch databases and branches of deployments that are gone, for
    /// [`Databases::drop_left_from_before`] (off the start's path).
    pub leftovers: Vec<String>,
}

/// A backup id: a UTC time stamp `YYYYMMDDTHHMMSSmmmZ` (`now_id`), else `BadBackupId`.
pub(crate) fn check_id(id: &str) -> Result<(), DbError> {
    let ok = id.len() == 19
        && id.ends_with('Z')
        && id.as_bytes()[8] == b'T'
        && id
            .chars()
            .enumerate()
            .all(|(i, c)| i == 8 || i == 18 || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(DbError::BadBackupId(id.chars().take(80).collect()))
    }
}

/// A new backup's id: now, UTC, to the millisecond.
pub(crate) fn now_id() -> String {
    chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ").to_string()
}

/// The backups in `dir`, files `<id>.<extension>` (`id` a [`now_id`]; other files are not
/// backups), oldest first; none when `dir` does not exist.
pub(crate) fn list_backups(dir: &Path, extension: &str) -> std::io::Result<Vec<BackupInfo>> {
    let suffix = format!(".{extension}");
    let mut list: Vec<BackupInfo> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let id = name.strip_suffix(&suffix)?.to_owned();
                check_id(&id).ok()?;
                Some(BackupInfo {
                    id,
                    size: e.metadata().ok()?.len(),
                })
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    list.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(list)
}

/// Deletes the oldest of `dir`'s backups (`list_backups(dir, extension)`) beyond the newest
/// `keep`, and logs each.
pub(crate) fn prune_backups(dir: &Path, extension: &str, keep: usize) -> std::io::Result<()> {
    let all = list_backups(dir, extension)?;
    for old in &all[..all.len().saturating_sub(keep)] {
        std::fs::remove_file(dir.join(format!("{}.{extension}", old.id)))?;
        tracing::info!(dir = %dir.display(), id = %old.id, keep, "an old backup deleted");
    }
    Ok(())
}

/// Runs a PostgreSQL tool once, briefly, as a child of nxd (`pg_restore --list`); its stderr
/// becomes the error.
async fn run(tool: &'static str, cmd: &mut Command) -> Result<(), DbError> {
    let out = cmd
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| DbError::Tool {
            tool,
            message: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(DbError::Tool {
        tool,
        message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

impl Databases {
    /// Runs pg_dump or pg_restore to its end in a transient unit `nxdb-<tool>-<time>.service`;
    /// its output becomes the error when it fails.
    #[tracing::instrument(skip(self, args))]
    async fn run_unit(&self, tool: &'static str, args: Vec<String>) -> Result<(), DbError> {
        let name = format!("nxdb-{tool}-{}", now_id().to_lowercase());
        let log = self.backups.join(format!("{name}.log"));
        let mut argv = vec![find_binary(tool)?.display().to_string()];
        argv.extend(args);
        let spec = UnitSpec::run_to_end(
            format!("{name}.service"),
            format!("NX {tool}"),
            argv,
            log.clone(),
        );
        let failed = |message: String| DbError::Tool { tool, message };
        self.supervisor
            .start(&spec)
            .await
            .map_err(|e| failed(e.to_string()))?;
        fail::fail_point!("databases::tool");
        self.supervisor
            .finish_job(&spec.name, &log)
            .await
            .map_err(failed)
    }
}

/// Copies one database into another through pg_dump | pg_restore, objects owned by `role`.
pub(super) async fn copy(dbs: &Databases, from: &str, to: &str, role: &str) -> Result<(), DbError> {
    let dir = tempfile::tempdir_in(&dbs.backups)?;
    let dump = dir.path().join("copy.dump");
    dump_to(dbs, from, &dump, role).await?;
    restore_into(dbs, &dump, to, role).await
}

/// Dumps `database` into `file` in a superuser session that the runaway watch holds to
/// `role`'s memory bounds and the tenants' share of the lock table, with no time bound
/// ([`Databases::dump_session`]). Errors: pg_dump's, or
/// [`DbError::ToolSessionEnded`] when the watch ended its session.
async fn dump_to(dbs: &Databases, database: &str, file: &Path, role: &str) -> Result<(), DbError> {
    let session = dbs.dump_session(database, role).await?;
    let url = dbs.tenant_session_url(database).await?;
    let dumped = dbs
        .run_unit(
            "pg_dump",
            vec![
                "--format=custom".into(),
                format!("--file={}", file.display()),
                format!(
                    "--dbname={}",
                    with_parameter(&url, "application_name", session.application_name())
                ),
            ],
        )
        .await;
    ended_by_the_watch("pg_dump", dumped, &session)
}

/// `result`, or [`DbError::ToolSessionEnded`] when it failed after the runaway watch ended
/// the tool's session (its own error then says only that the server closed the connection).
fn ended_by_the_watch(
    tool: &'static str,
    result: Result<(), DbError>,
    session: &super::runaway::ToolGuard<'_>,
) -> Result<(), DbError> {
    match (result, session.ended()) {
        (Err(_), Some(why)) => Err(DbError::ToolSessionEnded { tool, why }),
        (result, _) => result,
    }
}

/// Restores `file` into `database` in a session OF `role` (its password given through a
/// libpq password file of its own, `nxdb-pgpass-*`, 0600, removed after; one left by a crash
/// goes with the other `nxdb-*` leftovers at start), never a superuser's: pg_restore runs the
/// dump's SQL as written, and a superuser session with `--role` is undone by a `RESET ROLE` in
/// it (pg_dump(1): a dump from an untrusted source must not be restored by a superuser).
/// The runaway watch holds that one session to the memory and lock bounds only
/// ([`super::runaway`]); its time is held here to `databases.restore_timeout_secs`: past it,
/// the sessions in `database` are ended (again each second until pg_restore has ended), and
/// pg_restore fails at its next statement
/// (attacker s13 C3: a dump's CHECK constraint slept, for as long as it said, in nxd's session).
/// Errors: the password file's, pg_restore's (the dump's first failing statement),
/// [`DbError::RestoreTimeout`], or [`DbError::ToolSessionEnded`].
async fn restore_into(
    dbs: &Databases,
    file: &Path,
    database: &str,
    role: &str,
) -> Result<(), DbError> {
    let nxds_own = dbs.restore_session(database, role).await?;
    let passfile = tempfile::Builder::new()
        .prefix("nxdb-pgpass-")
        .tempfile_in(&dbs.backups)?;
    // libpq's password file: hostname:port:database:username:password (libpq-pgpass).
    std::fs::write(
        passfile.path(),
        format!("*:*:*:{role}:{}\n", dbs.password(role)?),
    )?;
    let restore = dbs.run_unit(
        "pg_restore",
        vec![
            "--no-owner".into(),
            "--no-acl".into(),
            "--exit-on-error".into(),
            "--single-transaction".into(),
            format!(
                "--dbname={}",
                dbs.role_url(database, role, passfile.path(), nxds_own.application_name())
            ),
            file.display().to_string(),
        ],
    );
    let secs = dbs.restore_timeout_secs;
    if secs == 0 {
        return ended_by_the_watch("pg_restore", restore.await, &nxds_own);
    }
    tokio::pin!(restore);
    if let Ok(done) = tokio::time::timeout(Duration::from_secs(secs), &mut restore).await {
        return ended_by_the_watch("pg_restore", done, &nxds_own);
    }
    tracing::warn!(
        %database,
        secs,
        "a restore ran past databases.restore_timeout_secs: ending its session"
    );
    // pg_restore fails at its next statement, and its unit is stopped. Until then its session
    // is ended again each second: pg_terminate_backend fails while the shared lock table is
    // full, which a tenant may time to the bound (the runaway watch empties it).
    loop {
        if let Err(e) = dbs.end_sessions_in(database).await {
            tracing::warn!(%database, error = %e, "the restore's session was not ended yet: again in 1 s");
        }
        if tokio::time::timeout(Duration::from_secs(1), &mut restore)
            .await
            .is_ok()
        {
            return Err(DbError::RestoreTimeout { secs });
        }
    }
}

impl Databases {
    /// Puts `replacement` in the place of the sandbox's database. The old one is kept, renamed
    /// `nxo_<time>` and closed to connections, until the user drops it; open connections to
    /// both are ended (a rename needs none). One transaction: a crash at any point leaves
    /// production's database as it was. Returns the old one's new name.
    pub(super) async fn swap_in(
        &self,
        sandbox: &SandboxName,
        replacement: &str,
        why: &str,
    ) -> Result<String, DbError> {
        let production = self.idents.sandbox(sandbox);
        let previous = format!("nxo_{}", now_id().to_lowercase());
        // No sandbox name: every role reads pg_shdescription.
        let comment = format!("NX: kept before {why}");
        let mut attempt = 1;
        loop {
            match self
                .swap_once(&production, replacement, &previous, &comment)
                .await
            {
                Err(DbError::Sql(sqlx::Error::Database(e)))
                    if e.code().as_deref() == Some("55006") && attempt < SWAP_ATTEMPTS =>
                {
                    tracing::warn!(attempt, error = %e, "a client connected during the swap; again");
                    attempt += 1;
                }
                other => return other.map(|()| previous),
            }
        }
    }

    /// Ends every session in `database` (`pg_terminate_backend`, waiting up to 5 s for each).
    /// Fail point `databases::end_sessions` (`return`): fails as while the shared lock table is
    /// full.
    async fn end_sessions_in(&self, database: &str) -> Result<(), DbError> {
        fail::fail_point!("databases::end_sessions", |_| Err(DbError::Sql(
            sqlx::Error::Protocol("out of shared memory (fail point)".into())
        )));
        sqlx::query(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = $1",
        )
        .bind(database)
        .execute(&self.admin)
        .await?;
        Ok(())
    }

    async fn swap_once(
        &self,
        production: &str,
        replacement: &str,
        previous: &str,
        comment: &str,
    ) -> Result<(), DbError> {
        let mut tx = self.admin.begin().await?;
        // Waits up to 5 s for each to end; the renames below wait for the rest (and hold
        // new connections off until the commit).
        sqlx::query(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = $1 OR datname = $2",
        )
        .bind(production)
        .bind(replacement)
        .execute(&mut *tx)
        .await?;
        let mut statements = vec![
            format!(
                "ALTER DATABASE {} RENAME TO {}",
                quote(production),
                quote(previous)
            ),
            format!(
                "ALTER DATABASE {} RENAME TO {}",
                quote(replacement),
                quote(production)
            ),
            format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", quote(previous)),
            format!(
                "COMMENT ON DATABASE {} IS {}",
                quote(previous),
                ident::literal(comment)
            ),
        ];
        statements.extend(open_to_statements(production, production));
        for (i, sql) in statements.iter().enumerate() {
            sqlx::query(sql).execute(&mut *tx).await?;
            if i == 0 {
                fail::fail_point!("databases::swap");
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes what an interrupted backup, restore or swap left: tool units still running,
    /// `.partial` dumps, uploaded dumps and copies; returns the scratch databases and the
    /// branches of deployments that are gone (`branches` are the deployments with a branch,
    /// and their sandboxes) for [`Self::drop_left_from_before`], whose waits must not hold nxd's start
    /// up (review17 #9); learns which sandbox each tenant role is held as by the runaway watch
    /// ([`super::runaway::SandboxRoles`]). A branch that was swapped in although nxd did not
    /// get to finish is finished; those deployments are returned (they must reconnect as
    /// production). One whose finish fails is logged and left as it is, to the next start:
    /// one deployment's leftover never ends nxd's start.
    #[tracing::instrument(skip_all)]
    pub async fn recover(
        &self,
        branches: &[(DeploymentId, SandboxName)],
    ) -> Result<Recovered, DbError> {
        for unit in self
            .supervisor
            .list(TOOL_UNITS)
            .await
            .map_err(|e| DbError::Tool {
                tool: "systemd",
                message: e.to_string(),
            })?
        {
            tracing::warn!(%unit, "stopping a database tool left from before");
            let _ = self.supervisor.stop(&unit).await;
        }
        let wanted: Vec<String> = branches.iter().map(|(id, _)| ident::branch(id)).collect();
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(&self.backups)?.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type()?.is_dir() {
                if name.starts_with(".tmp") {
                    std::fs::remove_dir_all(&path)?;
                    removed.push(path);
                    continue;
                }
                for inner in std::fs::read_dir(&path)?.flatten() {
                    if inner.file_name().to_string_lossy().ends_with(".partial") {
                        std::fs::remove_file(inner.path())?;
                        removed.push(inner.path());
                    }
                }
            } else if name.starts_with("upload-")
                || name.starts_with("nxdb-")
                || name
                    .strip_prefix(".copying-")
                    .is_some_and(|branch| !wanted.iter().any(|w| w == branch))
            {
                // A branch's mark stays only while its deployment does (made again at its start).
                std::fs::remove_file(&path)?;
                removed.push(path);
            }
        }
        for path in &removed {
            tracing::warn!(path = %path.display(), "removed a file left from before");
        }
        let leftovers: Vec<String> = sqlx::query_scalar(
            "SELECT datname::text FROM pg_database WHERE datname LIKE 'nxr\\_%' OR datname LIKE 'nxb\\_%'",
        )
        .fetch_all(&self.admin)
        .await?;
        for (id, sandbox) in branches {
            self.sandbox_roles
                .branch(&ident::branch(id), &self.idents.sandbox(sandbox));
        }
        let roles: Vec<(i64, String)> = sqlx::query_as(
            "SELECT oid::int8, rolname::text FROM pg_roles WHERE rolname LIKE 'nx\\_%' OR rolname LIKE 'nxb\\_%'",
        )
        .fetch_all(&self.admin)
        .await?;
        for (oid, role) in roles {
            self.sandbox_roles
                .role(u32::try_from(oid).unwrap_or(u32::MAX), &role);
        }
        let mut swapped = Vec::new();
        for (id, sandbox) in branches {
            let branch = ident::branch(id);
            if leftovers.contains(&branch) {
                continue;
            }
            let evidence = format!("%deployment {id}'s branch was swapped in%");
            let was_swapped: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_shdescription WHERE description LIKE $1)",
            )
            .bind(&evidence)
            .fetch_one(&self.admin)
            .await?;
            if was_swapped {
                tracing::warn!(deployment = %id, "finishing the swap of a branch a crash interrupted");
                match self.finish_branch_swap(sandbox, id).await {
                    Ok(()) => swapped.push(id.clone()),
                    Err(e) => {
                        tracing::error!(deployment = %id, error = %e, "could not finish the swap of a branch a crash interrupted: the deployment stays as it is and nxd's next start tries again (see the error: `nx stop` the deployment if it fails on production's database meanwhile)")
                    }
                }
            }
        }
        let leftovers = leftovers
            .into_iter()
            .filter(|d| !wanted.contains(d))
            .collect();
        Ok(Recovered { swapped, leftovers })
    }

    /// Drops the databases (and their roles) [`Self::recover`] found left from before,
    /// [`LEFTOVER_DROPS_AT_ONCE`] at a time, each as [`Self::drop_leftover`] does; returns once
    /// each is dropped or given up. nxd runs it in the background, after its start.
    pub async fn drop_left_from_before(&self, databases: Vec<String>) {
        futures_util::stream::iter(databases)
            .map(|database| async move {
                tracing::warn!(%database, "dropping a database left from before");
                self.drop_leftover(&database).await;
            })
            .buffer_unordered(LEFTOVER_DROPS_AT_ONCE)
            .for_each(|()| async {})
            .await;
    }

    /// Drops a database (and its role) left from before, trying again while its sessions have
    /// not ended (SQLSTATE 55006) for [`LEFTOVER_DROP_PATIENCE`]; never fails nxd's start (newcomer
    /// s17 N6: it exited there): a database it could not drop is logged and left to the next start.
    async fn drop_leftover(&self, database: &str) {
        let deadline = std::time::Instant::now() + LEFTOVER_DROP_PATIENCE;
        loop {
            match self.drop_database_and_role(database).await {
                Ok(()) => return,
                Err(DbError::Sql(sqlx::Error::Database(e)))
                    if e.code().as_deref() == Some("55006")
                        && std::time::Instant::now() < deadline =>
                {
                    tracing::warn!(%database, error = %e, "its sessions have not ended yet; dropping it again in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    tracing::error!(%database, error = %e, "could not drop a database left from before: nxd's next start tries again (or drop it as PostgreSQL's superuser once its sessions ended)");
                    return;
                }
            }
        }
    }

    /// Puts back the database a swap replaced (`previous`, as the swap returned it); what was
    /// production's database meanwhile is kept, under the name this returns.
    pub async fn swap_back(
        &self,
        sandbox: &SandboxName,
        previous: &str,
    ) -> Result<String, DbError> {
        // A swapped-out database takes no connections: the swap opens it as production's.
        self.swap_in(sandbox, previous, "a failed promotion's swap was undone")
            .await
    }

    /// [`Self::swap_back`] unless it was done already (a crash cut short what followed): a
    /// swap back renames `previous` in the transaction that puts it in place, so a database
    /// still named `previous` was not put back. Returns the name production's database
    /// meanwhile is kept under, when it swapped it back now.
    pub async fn swap_back_unless_done(
        &self,
        sandbox: &SandboxName,
        previous: &str,
    ) -> Result<Option<String>, DbError> {
        if !self.database_exists(previous).await? {
            return Ok(None);
        }
        self.swap_back(sandbox, previous).await.map(Some)
    }

    fn backup_dir(&self, sandbox: &SandboxName) -> PathBuf {
        self.backups.join(sandbox.as_str())
    }

    /// For a removed sandbox: moves its backups (database dumps, `volumes/`) from
    /// `<state_dir>/backups/<sandbox>` to `<state_dir>/backups/.removed/<sandbox>.<id>`, out
    /// of every API route's reach, because names are reused: a sandbox made again under the
    /// name, and its tokens, must not read the previous holder's data. Returns where they went
    /// (`None` when there were none). Errors: the rename's.
    pub fn set_backups_aside(&self, sandbox: &SandboxName) -> std::io::Result<Option<PathBuf>> {
        let from = self.backup_dir(sandbox);
        if !from.exists() {
            return Ok(None);
        }
        let removed = self.backups.join(".removed");
        std::fs::create_dir_all(&removed)?;
        let to = removed.join(format!("{sandbox}.{}", now_id()));
        std::fs::rename(&from, &to)?;
        tracing::info!(sandbox = %sandbox, to = %to.display(), "the removed sandbox's backups are set aside");
        Ok(Some(to))
    }

    pub fn backup_path(&self, sandbox: &SandboxName, id: &str) -> Result<PathBuf, DbError> {
        check_id(id)?;
        let path = self.backup_dir(sandbox).join(format!("{id}.dump"));
        if !path.is_file() {
            return Err(DbError::NoBackup {
                sandbox: sandbox.to_string(),
                id: id.into(),
            });
        }
        Ok(path)
    }

    /// Backups kept on the host, oldest first.
    pub fn backups(&self, sandbox: &SandboxName) -> Result<Vec<BackupInfo>, DbError> {
        Ok(list_backups(&self.backup_dir(sandbox), "dump")?)
    }

    /// Dumps the sandbox's database into its backup dir, then deletes the oldest backups
    /// beyond the retention count.
    #[tracing::instrument(skip(self))]
    pub async fn backup(&self, sandbox: &SandboxName) -> Result<BackupInfo, DbError> {
        let creds = self.ensure_sandbox(sandbox).await?;
        let dir = self.backup_dir(sandbox);
        std::fs::create_dir_all(&dir)?;
        let id = now_id();
        let temp = tempfile::Builder::new()
            .suffix(".partial")
            .tempfile_in(&dir)?;
        dump_to(self, &creds.database, temp.path(), &creds.role).await?;
        let path = dir.join(format!("{id}.dump"));
        temp.persist(&path).map_err(|e| DbError::Io(e.error))?;
        prune_backups(&dir, "dump", self.retention)?;
        let size = std::fs::metadata(&path)?.len();
        tracing::info!(%id, size, "backup made");
        Ok(BackupInfo { id, size })
    }

    /// A temp file for an uploaded dump, removed when dropped.
    pub fn upload_file(&self) -> Result<tempfile::NamedTempFile, DbError> {
        Ok(tempfile::Builder::new()
            .prefix("upload-")
            .suffix(".dump")
            .tempfile_in(&self.backups)?)
    }

    /// The largest dump a restore takes, bytes: twice a sandbox's database disk
    /// (`databases.max_size_mb`; a dump that much larger than the database it makes is not
    /// one NX can restore) and 1 MiB; unbounded without such disks.
    pub fn restore_upload_bound(&self) -> u64 {
        self.disks.as_ref().map_or(u64::MAX, |disks| {
            (disks.size_mb().saturating_mul(2) + 1) << 20
        })
    }

    /// Claims room for `sandbox`'s dump upload of `wanted` bytes (its Content-Length; `None`:
    /// unknown) where uploads are kept, at most [`Databases::restore_upload_bound`]
    /// ([`crate::upload_room::claim`]): the claim, whose bytes are the upload's cap, or why
    /// not (the room left, or the sandbox's upload under way). Errors: statvfs(3)'s.
    pub fn claim_upload_room(
        &self,
        sandbox: &SandboxName,
        wanted: Option<u64>,
    ) -> Result<Result<crate::upload_room::Claim, crate::upload_room::Refused>, DbError> {
        Ok(crate::upload_room::claim(
            &self.backups,
            sandbox.as_str(),
            wanted,
            self.restore_upload_bound(),
        )?)
    }

    pub fn rm_backup(&self, sandbox: &SandboxName, id: &str) -> Result<(), DbError> {
        Ok(std::fs::remove_file(self.backup_path(sandbox, id)?)?)
    }

    /// Restores a dump into a fresh database and, only when that succeeded, swaps it in for
    /// the sandbox's database; the previous one is kept, renamed, until the user drops it.
    /// Deployments' open connections to the old database are ended by the swap.
    #[tracing::instrument(skip(self, dump))]
    pub async fn restore(
        &self,
        sandbox: &SandboxName,
        dump: &Path,
    ) -> Result<RestoreInfo, DbError> {
        run(
            "pg_restore --list",
            Command::new(find_binary("pg_restore")?)
                .arg("--list")
                .arg(dump),
        )
        .await
        .map_err(|e| DbError::BadDump(e.to_string()))?;
        let creds = self.ensure_sandbox(sandbox).await?;
        let stamp = now_id().to_lowercase();
        let fresh = format!("nxr_{stamp}");
        let tablespace = self.tablespace(&creds.role).await?;
        let contents = Contents::Empty {
            tablespace: &tablespace,
        };
        self.create_database(&fresh, &creds.role, contents)
            .await
            .map_err(|e| self.disk_full(sandbox, e))?;
        fail::fail_point!("databases::restore");
        if let Err(e) = restore_into(self, dump, &fresh, &creds.role).await {
            sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote(&fresh)
            ))
            .execute(&self.admin)
            .await?;
            return Err(match self.disk_full(sandbox, e) {
                DbError::Tool { message, .. } => DbError::BadDump(message),
                other => other,
            });
        }
        let previous = self
            .swap_in(sandbox, &fresh, &format!("the restore of {stamp}"))
            .await?;
        tracing::info!(%previous, "restored");
        Ok(RestoreInfo {
            previous_database: previous,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::check_id;

    #[test]
    fn backup_ids_are_timestamps_only() {
        assert!(check_id("20261129T052012123Z").is_ok());
        for bad in [
            "../../etc/passwd",
            "20261129T052012123Z; DROP",
            "",
            "x".repeat(200).as_str(),
        ] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }
}
