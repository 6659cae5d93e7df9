//! nxd's state in PostgreSQL (sqlx, migrations embedded from `migrations/`).

use crate::config::{Limits, PortRange};
use crate::domain::{BackendKind, Deployment, Desired, Egress, Runtime, Tier};
use crate::names::{DeploymentId, NameError, SandboxName};
use crate::standby::Standbys;
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("state database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the host has no deployment slot left (ports {start}-{end}, one per deployment, stopped ones too): ask its operator to widen [ports]; deployments you no longer need free theirs (`nx rm`)")]
    NoPort { start: u16, end: u16 },
    /// A push into a sandbox that has `max` deployments already (`sandbox.max_deployments`,
    /// attacker s10 F5): one tenant may not take every slot of the host.
    #[error("sandbox {sandbox} has {max} deployments, the most a sandbox may have on this host (sandbox.max_deployments); remove those it no longer needs, oldest first: {}", .oldest.iter().map(|id| format!("`nx rm {id}`")).collect::<Vec<_>>().join(", "))]
    SandboxFull {
        sandbox: String,
        max: u64,
        /// Its oldest deployments but its production, oldest first (at most three).
        oldest: Vec<String>,
    },
    #[error("no deployment {0}; `nx ls` lists them")]
    NoDeployment(String),
    #[error("sandbox {0} has no earlier promotion to roll back to")]
    NothingToRollBack(String),
    #[error("production of sandbox {0} changed meanwhile; look at `nx status {0}` and try again")]
    ProductionMoved(String),
    #[error("corrupt row in the state database: {0}")]
    Corrupt(String),
    /// The sandbox's removal has begun (`sandboxes.removing`): it takes nothing new.
    #[error("sandbox {0} is being removed (`nx sandbox rm` began and did not finish): run `nx sandbox rm {0}` to finish the removal, then create it again")]
    Removing(String),
    /// A push's volume was removed (`nx volume rm`) before the push was recorded.
    #[error("volume {volume} of sandbox {sandbox} was removed while this push was being made; nothing was deployed. Push again without --volume {volume}:PATH, or `nx volume create {sandbox} {volume}` first")]
    VolumeGone { sandbox: String, volume: String },
}

impl From<NameError> for StateError {
    fn from(e: NameError) -> Self {
        StateError::Corrupt(e.to_string())
    }
}

pub struct StateStore {
    pool: PgPool,
    /// Writes of the tables views show ended so far (see [`StateStore::views_write`]).
    views_changes: AtomicU64,
    /// Sandboxes' rows as pushes read them, kept until a write of the table.
    sandbox_rows: crate::sandbox_settings::RowCache,
}

/// A write in progress, counted in its counter when dropped, at the end of the write, after
/// its commit (or its failure). Counted at the end, not the start: what was read while the
/// write was in progress may not show it, and is then older than the count. Counters: the
/// tables views show ([`StateStore::views_write`]: sandboxes, deployments, promotions,
/// upkeep, TCP ports, service names), the `sandboxes` table
/// ([`RowCache::write`](crate::sandbox_settings::RowCache::write)).
#[must_use = "the write is counted when this is dropped, at its end"]
pub struct CountedWrite<'a>(&'a AtomicU64);

impl<'a> CountedWrite<'a> {
    /// A write counted in `counter` once it ends.
    pub(crate) fn of(counter: &'a AtomicU64) -> Self {
        Self(counter)
    }
}

impl Drop for CountedWrite<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// What a push asks for; the store adds id, port and uid.
#[derive(Clone)]
pub struct NewDeployment {
    /// Chosen by the push, which is under way under this id before the record is written
    /// (`pushes`).
    pub id: DeploymentId,
    pub sandbox: SandboxName,
    pub artifact: String,
    pub env: BTreeMap<String, String>,
    pub args: Vec<String>,
    pub limits: Limits,
    pub db_branch: bool,
    pub runtime: Runtime,
    pub backend: BackendKind,
    pub ready_timeout_secs: Option<u64>,
    pub listen_port: Option<u16>,
    pub egress: Egress,
    pub volumes: Vec<nx_api::volumes::MountedVolume>,
    pub tier: Tier,
}

#[derive(sqlx::FromRow)]
struct DeploymentRow {
    id: String,
    sandbox: String,
    artifact: String,
    port: i32,
    uid: i64,
    env: sqlx::types::Json<BTreeMap<String, String>>,
    args: sqlx::types::Json<Vec<String>>,
    limits: sqlx::types::Json<Limits>,
    desired: String,
    db_branch: bool,
    runtime: String,
    backend: String,
    ready_timeout_secs: Option<i64>,
    listen_port: Option<i32>,
    egress: String,
    volumes: sqlx::types::Json<Vec<nx_api::volumes::MountedVolume>>,
    tier: String,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl TryFrom<DeploymentRow> for Deployment {
    type Error = StateError;
    fn try_from(row: DeploymentRow) -> Result<Self, StateError> {
        let corrupt = |what: &str| StateError::Corrupt(format!("{what} of deployment {}", row.id));
        Ok(Deployment {
            id: DeploymentId::parse(&row.id)?,
            sandbox: SandboxName::parse(&row.sandbox)?,
            artifact: row.artifact.clone(),
            port: u16::try_from(row.port).map_err(|_| corrupt("port"))?,
            listen_port: row
                .listen_port
                .map(u16::try_from)
                .transpose()
                .map_err(|_| corrupt("listen port"))?,
            egress: row.egress.parse().map_err(|_| corrupt("egress"))?,
            uid: u32::try_from(row.uid).map_err(|_| corrupt("uid"))?,
            env: row.env.0,
            args: row.args.0,
            limits: row.limits.0,
            desired: row.desired.parse().map_err(|_| corrupt("desired state"))?,
            db_branch: row.db_branch,
            runtime: row.runtime.parse().map_err(|_| corrupt("runtime"))?,
            backend: row.backend.parse().map_err(|_| corrupt("backend"))?,
            ready_timeout_secs: row
                .ready_timeout_secs
                .map(u64::try_from)
                .transpose()
                .map_err(|_| corrupt("ready timeout"))?,
            volumes: row.volumes.0,
            tier: row.tier.parse().map_err(|_| corrupt("tier"))?,
            created_at: row.created_at,
        })
    }
}

/// Where [`StateStore::create_deployment`] puts a deployment.
pub enum Slot<'a> {
    /// The lowest port of the range that no deployment has and no standby holds.
    Free(&'a Standbys),
    /// The port of a standby (`crate::standby`), whose id the push took.
    Standby(u16),
}

/// The lowest port of `ports` no deployment has and no standby holds. Called with the
/// deployments table locked (a port is also a slot: its uid and address come from it).
/// Errors: `NoPort`.
async fn free_port(
    tx: &mut sqlx::PgConnection,
    ports: PortRange,
    standbys: &Standbys,
) -> Result<u16, StateError> {
    let used: Vec<i32> = sqlx::query_scalar("SELECT port FROM deployments")
        .fetch_all(&mut *tx)
        .await?;
    let reserved = standbys.reserved();
    // A deployment listens in a network namespace of its own: no host port is taken.
    (ports.start..=ports.end)
        .find(|p| !used.contains(&i32::from(*p)) && !reserved.contains(p))
        .ok_or(StateError::NoPort {
            start: ports.start,
            end: ports.end,
        })
}

const SELECT_DEPLOYMENTS: &str = "SELECT id, sandbox, artifact, port, uid, env, args, limits, desired, db_branch, runtime, backend, ready_timeout_secs, listen_port, egress, volumes, tier, created_at FROM deployments";

impl StateStore {
    #[tracing::instrument(skip_all)]
    pub async fn connect(url: &str) -> Result<Self, StateError> {
        let options: sqlx::postgres::PgConnectOptions = url.parse()?;
        // Each statement is planned once per connection, at its first run, not at each
        // (PostgreSQL plans a prepared statement's first five runs for their parameters: a
        // push's record took 0.4 ms to plan, on each of the pool's connections). nxd's
        // statements look rows up by key, where a plan for any parameters is the plan
        // (PostgreSQL docs, `plan_cache_mode`; PREPARE, "generic plan").
        let options = options.options([("plan_cache_mode", "force_generic_plan")]);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self {
            pool,
            views_changes: AtomicU64::new(0),
            sandbox_rows: Default::default(),
        })
    }

    /// Taken by every write of the tables views show, before its first statement and held to
    /// its end (a write through [`Self::pool`] takes it too): see [`CountedWrite`].
    pub fn views_write(&self) -> CountedWrite<'_> {
        CountedWrite::of(&self.views_changes)
    }

    /// How many writes of the tables views show have ended: a view read after a count was
    /// taken is still true while the count is the same.
    pub fn views_changes(&self) -> u64 {
        self.views_changes.load(Ordering::SeqCst)
    }

    /// The connection pool, for the other stores of the same database (`access`,
    /// `sandbox_settings`).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Sandboxes' rows as pushes read them; every write of the `sandboxes` table takes its
    /// [`RowCache::write`](crate::sandbox_settings::RowCache::write).
    pub fn sandbox_rows(&self) -> &crate::sandbox_settings::RowCache {
        &self.sandbox_rows
    }

    /// Records a new deployment with the lowest port of the range no other deployment has.
    /// The port is also its slot: its uid and its address come from it (`network::Plan`), so
    /// the table is locked for the search (the port is UNIQUE: a race would fail the push).
    /// A sandbox holding `max_per_sandbox` deployments already gets `SandboxFull` (checked
    /// under the same lock: concurrent pushes cannot pass it together).
    /// Nothing is bound on the host: the program listens in its own network namespace. Its
    /// upkeep row (`health_check`, `idle_timeout_secs`: `upkeep::store`) is written by the
    /// statement that records it: no deployment without its row after a crash. Into a
    /// standby's slot it takes two statements between `BEGIN` and `COMMIT`: the lock and that one
    /// ([`insert_deployment`]).
    /// `slot` says where: the lowest free port (no standby's either), or a standby's port
    /// (`crate::standby`).
    #[allow(clippy::too_many_arguments)]
    #[tracing::instrument(skip_all, fields(sandbox = %new.sandbox))]
    pub async fn create_deployment(
        &self,
        new: NewDeployment,
        slot: Slot<'_>,
        ports: PortRange,
        uid_base: u32,
        max_per_sandbox: u64,
        health_check: &crate::api::HealthCheck,
        idle_timeout_secs: Option<u64>,
    ) -> Result<Deployment, StateError> {
        let _write = self.views_write();
        // Held past the commit when the sandbox's row is made again (`sandbox_removing`).
        let mut remade = None;
        let mut tx = self.pool.begin().await?;
        sqlx::query("LOCK TABLE deployments IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        // `nx volume rm` checks and deletes under a lock that conflicts with this one: each
        // volume checked here stays until the deployment is recorded.
        let volumes: Vec<&str> = new.volumes.iter().map(|m| m.volume.as_str()).collect();
        let existing: Vec<String> = if volumes.is_empty() {
            Vec::new()
        } else {
            sqlx::query_scalar("SELECT name FROM volumes WHERE sandbox = $1 AND name = ANY($2)")
                .bind(new.sandbox.as_str())
                .bind(&volumes)
                .fetch_all(&mut *tx)
                .await?
        };
        if let Some(gone) = volumes.iter().find(|v| !existing.iter().any(|e| e == *v)) {
            return Err(StateError::VolumeGone {
                sandbox: new.sandbox.to_string(),
                volume: (*gone).to_owned(),
            });
        }
        let port = match slot {
            Slot::Free(standbys) => {
                // Before a slot is looked for: a sandbox being removed is told so, a full one
                // that it is, not that the host is.
                if sandbox_removing(&mut tx, &new.sandbox, &self.sandbox_rows, &mut remade).await? {
                    return Err(StateError::Removing(new.sandbox.to_string()));
                }
                let held: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM deployments WHERE sandbox = $1")
                        .bind(new.sandbox.as_str())
                        .fetch_one(&mut *tx)
                        .await?;
                if u64::try_from(held).unwrap_or(0) >= max_per_sandbox {
                    return Err(sandbox_full(&mut tx, &new.sandbox, max_per_sandbox).await?);
                }
                free_port(&mut tx, ports, standbys).await?
            }
            Slot::Standby(port) => port,
        };
        let deployment = new.at(port, uid_base + u32::from(port - ports.start));
        let insert = || {
            insert_deployment(
                &deployment,
                max_per_sandbox,
                health_check,
                idle_timeout_secs,
            )
        };
        let (removing, recorded) = match insert().fetch_one(&mut *tx).await? {
            // Its sandbox's row is gone: its removal ran through since the push looked. It is
            // made again, as a first push makes it.
            (None, _) => {
                sandbox_removing(
                    &mut tx,
                    &deployment.sandbox,
                    &self.sandbox_rows,
                    &mut remade,
                )
                .await?;
                insert().fetch_one(&mut *tx).await?
            }
            row => row,
        };
        if removing != Some(false) {
            return Err(StateError::Removing(deployment.sandbox.to_string()));
        }
        if !recorded {
            return Err(sandbox_full(&mut tx, &deployment.sandbox, max_per_sandbox).await?);
        }
        tx.commit().await?;
        Ok(deployment)
    }

    /// A free port (slot) for a standby (`crate::standby`), reserved in `standbys` before the
    /// deployments table's lock is let go, so that no push's record takes it; `None` while a
    /// push waits for a slot (`Standbys::want_slot`). Errors: `NoPort`.
    pub async fn reserve_port(
        &self,
        ports: PortRange,
        standbys: &Standbys,
    ) -> Result<Option<u16>, StateError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("LOCK TABLE deployments IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let port = free_port(&mut tx, ports, standbys).await?;
        let reserved = standbys.reserve(port).then_some(port);
        tx.commit().await?;
        Ok(reserved)
    }

    pub async fn deployments(&self) -> Result<Vec<Deployment>, StateError> {
        let rows: Vec<DeploymentRow> = sqlx::query_as(&format!(
            "{SELECT_DEPLOYMENTS} ORDER BY sandbox, created_at"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Deployment::try_from).collect()
    }

    /// The deployments of one sandbox, oldest first.
    pub async fn deployments_in(
        &self,
        sandbox: &SandboxName,
    ) -> Result<Vec<Deployment>, StateError> {
        let rows: Vec<DeploymentRow> = sqlx::query_as(&format!(
            "{SELECT_DEPLOYMENTS} WHERE sandbox = $1 ORDER BY created_at"
        ))
        .bind(sandbox.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Deployment::try_from).collect()
    }

    pub async fn deployment(&self, id: &DeploymentId) -> Result<Deployment, StateError> {
        let row: Option<DeploymentRow> =
            sqlx::query_as(&format!("{SELECT_DEPLOYMENTS} WHERE id = $1"))
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
        row.ok_or_else(|| StateError::NoDeployment(id.to_string()))?
            .try_into()
    }

    pub async fn set_desired(&self, id: &DeploymentId, desired: Desired) -> Result<(), StateError> {
        let _write = self.views_write();
        sqlx::query("UPDATE deployments SET desired = $2 WHERE id = $1")
            .bind(id.as_str())
            .bind(desired.as_ref())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Marks the deployment as being removed (`nx rm`) and to be stopped: its record goes
    /// last ([`Self::delete_deployment`]), and nxd's start finishes a removal a crash cut
    /// short ([`Self::removing_deployments`]).
    pub async fn mark_deployment_removing(&self, id: &DeploymentId) -> Result<(), StateError> {
        let _write = self.views_write();
        sqlx::query("UPDATE deployments SET removing = true, desired = $2 WHERE id = $1")
            .bind(id.as_str())
            .bind(Desired::Stopped.as_ref())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The deployments whose removal began ([`Self::mark_deployment_removing`]) and did not
    /// finish, oldest first.
    pub async fn removing_deployments(&self) -> Result<Vec<Deployment>, StateError> {
        let rows: Vec<DeploymentRow> = sqlx::query_as(&format!(
            "{SELECT_DEPLOYMENTS} WHERE removing ORDER BY created_at"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Deployment::try_from).collect()
    }

    /// Compare-and-set: marks the deployment `to` only if it is still marked `from`; whether
    /// it was (false: something else, such as `nx stop` or `nx rm`, changed or removed it
    /// meanwhile, and that stands).
    pub async fn set_desired_if(
        &self,
        id: &DeploymentId,
        from: Desired,
        to: Desired,
    ) -> Result<bool, StateError> {
        let _write = self.views_write();
        let done =
            sqlx::query("UPDATE deployments SET desired = $3 WHERE id = $1 AND desired = $2")
                .bind(id.as_str())
                .bind(from.as_ref())
                .bind(to.as_ref())
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// A branched deployment whose branch became production's database runs against it now.
    pub async fn clear_db_branch(&self, id: &DeploymentId) -> Result<(), StateError> {
        self.set_db_branch(id, false).await
    }

    /// Whether deployment `id` runs on a preview branch of its own (`nxb_<id>`): false once
    /// its branch became production's database ([`Self::clear_db_branch`]), true again when
    /// that promotion was undone and the branch given back.
    pub async fn set_db_branch(&self, id: &DeploymentId, branch: bool) -> Result<(), StateError> {
        let _write = self.views_write();
        sqlx::query("UPDATE deployments SET db_branch = $2 WHERE id = $1")
            .bind(id.as_str())
            .bind(branch)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn delete_deployment(&self, id: &DeploymentId) -> Result<(), StateError> {
        let _write = self.views_write();
        sqlx::query("DELETE FROM deployments WHERE id = $1")
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a sandbox; false if it existed.
    /// Creates a sandbox whose pushes run on `backend` unless they name another; false when it
    /// exists already (its default is then left as it is).
    pub async fn create_sandbox(
        &self,
        name: &SandboxName,
        backend: BackendKind,
    ) -> Result<bool, StateError> {
        let (_write, _rows) = (self.views_write(), self.sandbox_rows.write());
        let done = sqlx::query(
            "INSERT INTO sandboxes (name, backend) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(name.as_str())
        .bind(backend.as_ref())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Whether the sandbox is being removed and the backend a push to it runs on when it names
    /// none, in one query; `None` when there is no such sandbox.
    pub async fn sandbox_removing_and_backend(
        &self,
        name: &SandboxName,
    ) -> Result<Option<(bool, BackendKind)>, StateError> {
        let row: Option<(bool, String)> =
            sqlx::query_as("SELECT removing, backend FROM sandboxes WHERE name = $1")
                .bind(name.as_str())
                .fetch_optional(&self.pool)
                .await?;
        row.map(|(removing, backend)| {
            let backend = backend
                .parse()
                .map_err(|_| StateError::Corrupt(format!("backend of sandbox {name}")))?;
            Ok((removing, backend))
        })
        .transpose()
    }

    pub async fn sandbox_names(&self) -> Result<Vec<SandboxName>, StateError> {
        let names: Vec<String> = sqlx::query_scalar("SELECT name FROM sandboxes ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        names.iter().map(|n| Ok(SandboxName::parse(n)?)).collect()
    }

    pub async fn sandbox_exists(&self, name: &SandboxName) -> Result<bool, StateError> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sandboxes WHERE name = $1)")
                .bind(name.as_str())
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Marks the sandbox as being removed (`nx sandbox rm`), with final backups if `backup`
    /// (what nxd's start finishes it with, [`Self::removing_sandboxes`]): from its commit on no
    /// deployment is recorded in it (`create_deployment`), and every one recorded before is in
    /// [`Self::deployments_in`]. `None` when there is no such sandbox, else whether it was
    /// marked already (a removal that did not finish).
    pub async fn mark_removing(
        &self,
        name: &SandboxName,
        backup: bool,
    ) -> Result<Option<bool>, StateError> {
        let _rows = self.sandbox_rows.write();
        let mut tx = self.pool.begin().await?;
        let was: Option<bool> =
            sqlx::query_scalar("SELECT removing FROM sandboxes WHERE name = $1 FOR UPDATE")
                .bind(name.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if was.is_some() {
            sqlx::query(
                "UPDATE sandboxes SET removing = true, removing_backup = $2 WHERE name = $1",
            )
            .bind(name.as_str())
            .bind(backup)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(was)
    }

    /// Takes back [`Self::mark_removing`] when nothing was removed yet (its final backup
    /// failed).
    pub async fn unmark_removing(&self, name: &SandboxName) -> Result<(), StateError> {
        let _rows = self.sandbox_rows.write();
        sqlx::query("UPDATE sandboxes SET removing = false WHERE name = $1")
            .bind(name.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Whether the sandbox exists and is not being removed: what a standby is made for (one
    /// made after a removal finished would open its database gate again).
    pub async fn is_live(&self, name: &SandboxName) -> Result<bool, StateError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sandboxes WHERE name = $1 AND NOT removing)",
        )
        .bind(name.as_str())
        .fetch_one(&self.pool)
        .await?)
    }

    /// Whether the sandbox is being removed (false when it does not exist).
    pub async fn is_removing(&self, name: &SandboxName) -> Result<bool, StateError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sandboxes WHERE name = $1 AND removing)",
        )
        .bind(name.as_str())
        .fetch_one(&self.pool)
        .await?)
    }

    /// The sandboxes whose removal began and did not finish (a crash, or an error), each with
    /// whether it was to keep final backups.
    pub async fn removing_sandboxes(&self) -> Result<Vec<(SandboxName, bool)>, StateError> {
        let rows: Vec<(String, bool)> = sqlx::query_as(
            "SELECT name, removing_backup FROM sandboxes WHERE removing ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(name, backup)| Ok((SandboxName::parse(&name)?, backup)))
            .collect()
    }

    /// Forgets a sandbox marked by [`Self::mark_removing`]: its promotions, its deployments'
    /// records and what it owns in the content store (`content_owners`; the files stay). Its
    /// units, files, volumes and database go before (attacker s12 H5: with its rows gone
    /// first, a crash left them to the next holder of the name).
    pub async fn delete_sandbox(&self, name: &SandboxName) -> Result<(), StateError> {
        let (_write, _rows) = (self.views_write(), self.sandbox_rows.write());
        let mut tx = self.pool.begin().await?;
        // Its tokens' uploads stay on disk, no longer its (`content_owners` rows go with the
        // sandbox's row): a sandbox made later under the same name (another tenant's, maybe)
        // starts owning nothing.
        for table in ["promotions", "deployments"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE sandbox = $1"))
                .bind(name.as_str())
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM sandboxes WHERE name = $1")
            .bind(name.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The promoted deployment of every sandbox that has one.
    /// The deployment that serves one sandbox's production URL, if one does.
    pub async fn promoted_in(
        &self,
        sandbox: &SandboxName,
    ) -> Result<Option<DeploymentId>, StateError> {
        let id: Option<String> = sqlx::query_scalar(
            "SELECT deployment FROM promotions WHERE sandbox = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(sandbox.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(id.map(|id| DeploymentId::parse(&id)).transpose()?)
    }

    pub async fn promoted(&self) -> Result<HashMap<SandboxName, DeploymentId>, StateError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT ON (sandbox) sandbox, deployment FROM promotions ORDER BY sandbox, seq DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(s, d)| Ok((SandboxName::parse(&s)?, DeploymentId::parse(&d)?)))
            .collect()
    }

    pub async fn promote(
        &self,
        sandbox: &SandboxName,
        id: &DeploymentId,
    ) -> Result<(), StateError> {
        let _write = self.views_write();
        sqlx::query("INSERT INTO promotions (sandbox, deployment) VALUES ($1, $2)")
            .bind(sandbox.as_str())
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The deployment a rollback of `sandbox` would go back to: the one promoted before the
    /// current one. A removed deployment's promotions go with it (`ON DELETE CASCADE`), so
    /// after `nx rm` of the target it is the one promoted before that.
    pub async fn rollback_target(&self, sandbox: &SandboxName) -> Result<DeploymentId, StateError> {
        let previous: Option<String> = sqlx::query_scalar(
            "SELECT deployment FROM promotions WHERE sandbox = $1 ORDER BY seq DESC OFFSET 1 LIMIT 1",
        )
        .bind(sandbox.as_str())
        .fetch_optional(&self.pool)
        .await?;
        match previous {
            Some(id) => Ok(DeploymentId::parse(&id)?),
            None => Err(StateError::NothingToRollBack(sandbox.to_string())),
        }
    }

    /// Drops the newest promotion of `sandbox`, so that `expected` (its rollback target) is in
    /// force again; refused if the target is no longer `expected`.
    pub async fn rollback(
        &self,
        sandbox: &SandboxName,
        expected: &DeploymentId,
    ) -> Result<(), StateError> {
        let _write = self.views_write();
        let mut tx = self.pool.begin().await?;
        let seqs: Vec<(i64, String)> = sqlx::query_as(
            "SELECT seq, deployment FROM promotions WHERE sandbox = $1 ORDER BY seq DESC LIMIT 2 FOR UPDATE",
        )
        .bind(sandbox.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let [(newest, _), (_, previous)] = seqs.as_slice() else {
            return Err(StateError::NothingToRollBack(sandbox.to_string()));
        };
        if previous != expected.as_str() {
            return Err(StateError::ProductionMoved(sandbox.to_string()));
        }
        sqlx::query("DELETE FROM promotions WHERE seq = $1")
            .bind(newest)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Whether `sandbox` is being removed (`StateStore::mark_removing`), its row locked FOR SHARE
/// to the end of `tx`: that waits for a mark under way, so that a removal marked before the
/// push refuses it and one marked after finds its record (and removes it too). A sandbox with
/// no row (its removal ran through since the push looked) is made again, and `remade` then
/// holds that write of the `sandboxes` table (for the caller to hold past its commit).
async fn sandbox_removing<'a>(
    tx: &mut sqlx::PgConnection,
    sandbox: &SandboxName,
    rows: &'a crate::sandbox_settings::RowCache,
    remade: &mut Option<CountedWrite<'a>>,
) -> Result<bool, StateError> {
    let removing = || {
        sqlx::query_scalar("SELECT removing FROM sandboxes WHERE name = $1 FOR SHARE")
            .bind(sandbox.as_str())
    };
    if let Some(removing) = removing().fetch_optional(&mut *tx).await? {
        return Ok(removing);
    }
    remade.get_or_insert_with(|| rows.write());
    sqlx::query("INSERT INTO sandboxes (name) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(sandbox.as_str())
        .execute(&mut *tx)
        .await?;
    Ok(removing().fetch_one(&mut *tx).await?)
}

/// One statement (one round trip) that records `deployment` and its upkeep row
/// (`upkeep::store`: `health_check`, `idle_timeout_secs`) while its sandbox is not being
/// removed and holds fewer than `max_per_sandbox` deployments; run with the deployments table
/// locked (`LOCK TABLE` before it, a statement of its own: this one's snapshot then sees every
/// record committed before the lock, so the count holds). Its sandbox's row is locked FOR
/// SHARE as in [`sandbox_removing`]. Gives (the sandbox's `removing`, `None` without a row;
/// whether the deployment was recorded).
fn insert_deployment<'q>(
    deployment: &'q Deployment,
    max_per_sandbox: u64,
    health_check: &'q crate::api::HealthCheck,
    idle_timeout_secs: Option<u64>,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, (Option<bool>, bool), sqlx::postgres::PgArguments> {
    let seconds = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
    sqlx::query_as(
        "WITH sandbox AS (SELECT removing FROM sandboxes WHERE name = $2 FOR SHARE), \
         recorded AS ( \
           INSERT INTO deployments (id, sandbox, artifact, port, uid, env, args, limits, desired, db_branch, runtime, backend, ready_timeout_secs, listen_port, egress, volumes, tier, created_at) \
           SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18 FROM sandbox \
           WHERE NOT sandbox.removing AND (SELECT count(*) FROM deployments WHERE sandbox = $2) < $19 \
           RETURNING id), \
         upkeep AS ( \
           INSERT INTO deployment_upkeep (deployment, health_check, idle_timeout_secs) \
           SELECT id, $20, $21 FROM recorded) \
         SELECT (SELECT removing FROM sandbox), EXISTS (SELECT 1 FROM recorded)",
    )
    .bind(deployment.id.as_str())
    .bind(deployment.sandbox.as_str())
    .bind(&deployment.artifact)
    .bind(i32::from(deployment.port))
    .bind(i64::from(deployment.uid))
    .bind(sqlx::types::Json(&deployment.env))
    .bind(sqlx::types::Json(&deployment.args))
    .bind(sqlx::types::Json(&deployment.limits))
    .bind(deployment.desired.as_ref())
    .bind(deployment.db_branch)
    .bind(deployment.runtime.as_ref())
    .bind(deployment.backend.as_ref())
    .bind(deployment.ready_timeout_secs.map(seconds))
    .bind(deployment.listen_port.map(i32::from))
    .bind(deployment.egress.as_ref())
    .bind(sqlx::types::Json(&deployment.volumes))
    .bind(deployment.tier.as_ref())
    .bind(deployment.created_at)
    .bind(seconds(max_per_sandbox))
    .bind(sqlx::types::Json(health_check))
    .bind(idle_timeout_secs.map(seconds))
}

/// `SandboxFull` for `sandbox`, which holds `max` deployments: with its three oldest that are
/// not in production, the ones to remove first. Errors: the query's.
async fn sandbox_full(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    sandbox: &SandboxName,
    max: u64,
) -> Result<StateError, StateError> {
    let oldest = sqlx::query_scalar(
        "SELECT id FROM deployments WHERE sandbox = $1 AND id IS DISTINCT FROM \
         (SELECT deployment FROM promotions WHERE sandbox = $1 ORDER BY seq DESC LIMIT 1) \
         ORDER BY created_at, id LIMIT 3",
    )
    .bind(sandbox.as_str())
    .fetch_all(&mut **tx)
    .await?;
    Ok(StateError::SandboxFull {
        sandbox: sandbox.to_string(),
        max,
        oldest,
    })
}
