//! Every sandbox's own PostgreSQL database and role, on the host's cluster: provisioning,
//! preview branches, backups (pg_dump custom format) and restores (into a fresh database,
//! swapped in only when the restore succeeded). Dumps restore with the stock `pg_restore`.
//!
//! Isolation: a sandbox's role may connect to its own database only (`CONNECT` is revoked
//! from PUBLIC on every database NX makes, before it takes a connection, and on `postgres`
//! and `template1`; a sandbox's gate passes on only a connection to its role's own
//! database), has a `CONNECTION LIMIT` and its own `statement_timeout` and
//! `idle_in_transaction_session_timeout` ([`RolePolicy`]). PostgreSQL cannot cap a database's size: on the embedded cluster each
//! sandbox's databases live in a tablespace of their own on a disk of `databases.max_size_mb`
//! ([`disk`]); [`Databases::size`] reports production's size, [`Databases::max_size`] the cap.
//! Deployments reach the cluster through their sandbox's own socket ([`gate`]), which admits
//! the role's connection limit at once before authentication, as PostgreSQL does only after.

pub(crate) mod backup;
pub mod disk;
pub mod gate;
pub mod ident;
mod legacy_names;
pub mod runaway;
mod startup;

pub use backup::{BackupInfo, RestoreInfo};
pub use gate::GateError;

use crate::config::DatabasesConfig;
use crate::embedded_db::EmbeddedDbError;
use crate::names::{DeploymentId, SandboxName};
use crate::supervisor::Supervisor;
use ident::{quote, SandboxIdents};
use rand::RngCore;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the cluster's socket appears inside a deployment.
pub const SANDBOX_SOCKET_DIR: &str = "/run/postgresql";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("database files: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tools(#[from] EmbeddedDbError),
    #[error("{tool} failed: {message}")]
    Tool { tool: &'static str, message: String },
    #[error("no backup {id} of sandbox {sandbox}; `nx db backups {sandbox}` lists them")]
    NoBackup { sandbox: String, id: String },
    #[error(
        "invalid backup id {0:?}: ids look like 20261129T052012123Z (`nx db backups` lists them)"
    )]
    BadBackupId(String),
    #[error("not a usable PostgreSQL custom-format dump: {0}; nothing was changed")]
    BadDump(String),
    #[error(transparent)]
    Gate(#[from] GateError),
    /// A sandbox's database disk could not be made, mounted or removed (see [`disk`]).
    #[error("sandbox database disk: {0}")]
    Disk(String),
    /// A restore or a branch copy ran past `databases.restore_timeout_secs`.
    #[error("restoring the dump (`nx db restore`, or a `--db-branch` copy of production) ran past databases.restore_timeout_secs ({secs} s), and its session was ended: the dump's own SQL (a function in a CHECK constraint, a default or an index expression) may sleep or loop; restore a dump without it, or ask the host's operator for a larger databases.restore_timeout_secs; nothing was changed")]
    RestoreTimeout { secs: u64 },
    /// nxd's runaway watch ended the pg_dump or pg_restore session of a backup, a restore or
    /// a branch copy (`why`: the bound it passed).
    #[error("{tool}'s database session was ended by nxd's runaway watch: {why}, past a bound that holds it as the sandbox's own sessions are held (memory: databases.backend_memory_max_mb, sandbox_memory_max_mb, memory_max_mb; PostgreSQL's shared lock table: an entry per table it reads): the sandbox's data needs more than the host allows, such as values of hundreds of MB or tens of thousands of tables; make them fewer or smaller (store large files elsewhere) or ask the host's operator for larger bounds; nothing was changed")]
    ToolSessionEnded { tool: &'static str, why: String },
    /// A restore or a branch copy ran out of room on the sandbox's database disk.
    #[error("sandbox {sandbox}'s databases filled their disk ({size_mb} MiB, databases.max_size_mb; `nx db url {sandbox} --json` shows it): drop tables or databases it no longer needs (those restores and swaps kept, nxo_*), or ask the host's operator for a larger databases.max_size_mb; nothing was changed")]
    DiskFull { sandbox: String, size_mb: u64 },
}

/// Whether a tool's or PostgreSQL's error is a full filesystem (ENOSPC's text, or SQLSTATE
/// 53100 `disk_full`).
fn is_disk_full(message: &str) -> bool {
    message.contains("No space left on device") || message.contains("53100")
}

/// A role, its password and its database.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub database: String,
    pub role: String,
    pub password: String,
}

/// How a preview branch was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BranchMethod {
    /// `CREATE DATABASE ... TEMPLATE`: a file-level copy.
    Template,
    /// pg_dump | pg_restore, when production had open connections (a template needs none).
    DumpRestore,
}

/// The `log_min_messages` of sandboxes' roles: the least severe of their messages that goes
/// to the server log.
pub const TENANT_LOG_MIN_MESSAGES: &str = "fatal";

/// What every sandbox role (production's and preview branches') is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolePolicy {
    /// `CONNECTION LIMIT`: connections the role may hold at once.
    pub connection_limit: u32,
    /// `statement_timeout`, in seconds; 0: none.
    pub statement_timeout_secs: u64,
    /// `idle_in_transaction_session_timeout`, in seconds; 0: none.
    pub idle_in_transaction_timeout_secs: u64,
    /// `temp_file_limit`, in MiB; 0: none (-1 to PostgreSQL).
    pub temp_file_limit_mb: u64,
}

impl RolePolicy {
    /// The policy of `config` on a cluster with `open_slots` connection slots not reserved for
    /// superusers: `connection_limit_percent` of them, at least 1.
    pub fn new(config: &DatabasesConfig, open_slots: u32) -> Self {
        Self {
            connection_limit: (open_slots * config.connection_limit_percent / 100).max(1),
            statement_timeout_secs: config.statement_timeout_secs,
            idle_in_transaction_timeout_secs: config.idle_in_transaction_timeout_secs,
            temp_file_limit_mb: config.temp_file_limit_mb,
        }
    }

    /// The `ALTER ROLE` statements that apply it to `role` (a quoted identifier).
    /// `temp_file_limit` and `log_min_messages` are superuser-only (PGC_SUSET): set on the
    /// role, the role cannot lift them (PostgreSQL's "Resource Consumption" and "When to
    /// Log"). The role's sessions write to the server log only what ends them (`FATAL`:
    /// a session nxd ended, a timeout): its `RAISE WARNING`s and errors go to its client alone
    /// (attacker s12 H4: a loop of them wrote 84 MB/s to the cluster's log).
    fn statements(&self, role: &str) -> [String; 5] {
        let temp_file_limit = match self.temp_file_limit_mb {
            0 => "-1".to_owned(),
            mb => format!("'{mb}MB'"),
        };
        [
            format!(
                "ALTER ROLE {role} CONNECTION LIMIT {}",
                self.connection_limit
            ),
            format!(
                "ALTER ROLE {role} SET statement_timeout = '{}s'",
                self.statement_timeout_secs
            ),
            format!(
                "ALTER ROLE {role} SET idle_in_transaction_session_timeout = '{}s'",
                self.idle_in_transaction_timeout_secs
            ),
            format!("ALTER ROLE {role} SET temp_file_limit = {temp_file_limit}"),
            format!("ALTER ROLE {role} SET log_min_messages = {TENANT_LOG_MIN_MESSAGES}"),
        ]
    }
}

pub struct Databases {
    admin: PgPool,
    /// pg_dump and pg_restore run as its transient units.
    supervisor: Arc<Supervisor>,
    policy: RolePolicy,
    admin_url: String,
    socket_dir: PathBuf,
    port: u16,
    secrets: PathBuf,
    /// Names sandboxes' roles and databases (opaque to other tenants).
    idents: SandboxIdents,
    backups: PathBuf,
    retention: usize,
    /// `databases.restore_timeout_secs`.
    restore_timeout_secs: u64,
    /// One provisioning at a time: two first pushes to a new sandbox would both create its role.
    provisioning: tokio::sync::Mutex<()>,
    /// Each sandbox's own socket in front of the cluster's (see [`gate`]).
    gates: gate::Gates,
    /// A tenant backend past this much memory (anonymous and dynamic shared), MiB, is ended
    /// (0: never).
    backend_memory_max_mb: u64,
    /// `databases.sandbox_memory_max_mb`.
    sandbox_memory_max_mb: u64,
    /// All tenants' backends together: three quarters of `databases.memory_max_mb`, in MiB.
    tenants_memory_max_mb: u64,
    /// nxd's own pg_dump and pg_restore sessions under way (see [`runaway::ToolSessions`]).
    tool_sessions: runaway::ToolSessions,
    /// Which sandbox each tenant role is held as by the runaway watch.
    sandbox_roles: runaway::SandboxRoles,
    /// Entries of PostgreSQL's shared lock table all tenants' sessions may hold together
    /// (see [`runaway::lock_hogs`]).
    tenants_locks_max: u64,
    /// Each sandbox's databases' own disk (embedded cluster, `databases.max_size_mb` > 0).
    disks: Option<disk::DatabaseDisks>,
    /// Sandboxes provisioned by this process, by role: their credentials stay what they were
    /// until the sandbox is dropped (a swap or a restore renames databases under the same
    /// role and restricts the new one itself), so later pushes skip the DDL.
    provisioned: std::sync::Mutex<HashMap<String, Credentials>>,
}

fn random_password() -> String {
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The statements that let only `role` (and superusers) connect to `database`, and let it
/// (`ALLOW_CONNECTIONS true`: a database is made closed, see [`Databases::create_database`]).
fn open_to_statements(database: &str, role: &str) -> [String; 3] {
    [
        format!("REVOKE ALL ON DATABASE {} FROM PUBLIC", quote(database)),
        format!(
            "GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}",
            quote(database),
            quote(role)
        ),
        format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", quote(database)),
    ]
}

/// What nxd's own sessions in a tenant's database start with, whatever the database's owner
/// set there ([`Databases::tenant_session_url`]): its own role (`role = none`: not one
/// the owner named), writable transactions, no time bounds, the system catalogs first (never a
/// tenant's objects of the same names), standard string literals, and no session ended on its
/// first error. Every other setting the owner set there is put back to nxd's own value.
const TENANT_DATABASE_OVERRIDES: [(&str, &str); 8] = [
    ("role", "none"),
    ("default_transaction_read_only", "off"),
    ("statement_timeout", "0"),
    ("lock_timeout", "0"),
    ("idle_in_transaction_session_timeout", "0"),
    ("search_path", "pg_catalog"),
    ("standard_conforming_strings", "on"),
    ("exit_on_error", "off"),
];

/// What a new database holds at first.
#[derive(Debug, Clone, Copy)]
pub(super) enum Contents<'a> {
    /// Nothing yet, in this tablespace (see [`Databases::tablespace`]).
    Empty { tablespace: &'a str },
    /// A file-level copy of this database (`TEMPLATE`), in its tablespace.
    CopyOf(&'a str),
}

/// `url` (a libpq connection URI) with query parameter `key` set to `value`, percent-encoded
/// (libpq, "Connection URIs"; sqlx reads the same).
fn with_parameter(url: &str, key: &str, value: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    let value = percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC);
    format!("{url}{separator}{key}={value}")
}

/// libpq's `options` (the server's command-line options for the session) that set each of
/// `settings` (`name`, `value`) with `-c name=value`, spaces and backslashes in a value
/// escaped with a backslash (libpq, "Parameter Key Words", options).
fn options_setting<'a>(settings: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut options = String::new();
    for (name, value) in settings {
        if !options.is_empty() {
            options.push(' ');
        }
        options.push_str("-c ");
        options.push_str(name);
        options.push('=');
        for c in value.chars() {
            if c == '\\' || c.is_whitespace() {
                options.push('\\');
            }
            options.push(c);
        }
    }
    options
}

/// `admin_url` with its database replaced.
fn with_database(admin_url: &str, database: &str) -> String {
    let (base, query) = admin_url.split_once('?').unwrap_or((admin_url, ""));
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[authority_end..].find('/') {
        Some(i) => &base[..authority_end + i],
        None => base,
    };
    if query.is_empty() {
        format!("{host_part}/{database}")
    } else {
        format!("{host_part}/{database}?{query}")
    }
}

/// nxd's pool of superuser connections to the cluster (4), on which the runaway watch reads
/// and ends tenants' sessions: two kept open, and none closed for its age or idleness
/// (sqlx's defaults replace one after 30 min and close idle ones after 10): while a tenant's
/// locks fill the shared lock table PostgreSQL refuses every new connection, so a connection
/// replaced then is the watch's way in lost (attacker s13 H7).
fn admin_pool() -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(4)
        .min_connections(2)
        .max_lifetime(None)
        .idle_timeout(None)
}

impl Databases {
    /// Connects to the cluster at `admin_url` (its socket in `socket_dir`) and makes sure the
    /// gate process runs in front of it, run by the installed `launcher` as
    /// `databases.gate_uid` with `log_keep` rotated logs (see [`gate`]).
    #[tracing::instrument(skip_all)]
    pub async fn connect(
        admin_url: &str,
        socket_dir: &Path,
        state_dir: &Path,
        config: &DatabasesConfig,
        supervisor: Arc<Supervisor>,
        launcher: PathBuf,
        log_keep: u32,
    ) -> Result<Self, DbError> {
        let admin = admin_pool().connect(admin_url).await?;
        // Tenants' roles reach neither the maintenance databases nor the admin connection's.
        let own: String = sqlx::query_scalar("SELECT current_database()::text")
            .fetch_one(&admin)
            .await?;
        for database in ["postgres", "template1", own.as_str()] {
            sqlx::query(&format!(
                "REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC",
                quote(database)
            ))
            .execute(&admin)
            .await?;
        }
        let open_slots: i32 = sqlx::query_scalar(
            "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int",
        )
        .fetch_one(&admin)
        .await?;
        let policy = RolePolicy::new(config, u32::try_from(open_slots).unwrap_or(1));
        let lock_table: i64 = sqlx::query_scalar(
            "SELECT current_setting('max_locks_per_transaction')::int8 * current_setting('max_connections')::int8",
        )
        .fetch_one(&admin)
        .await?;
        let secrets = state_dir.join("secrets");
        let backups = state_dir.join("backups");
        for dir in [&secrets, &backups] {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let idents = SandboxIdents::load_or_create(&secrets.join("ident.key"))?;
        let disks = match config.max_size_mb {
            mb if mb > 0 && config.sandboxes_on_embedded_cluster() => Some(
                disk::DatabaseDisks::new(state_dir, mb, Arc::clone(&supervisor))?,
            ),
            _ => None,
        };
        let gates = gate::Gates::start(
            Arc::clone(&supervisor),
            launcher,
            log_keep,
            config.gate_uid,
            state_dir,
            socket_dir.join(format!(".s.PGSQL.{}", config.port)),
            config.port,
            policy.connection_limit,
            u32::try_from(open_slots).unwrap_or(1),
        )
        .await?;
        Ok(Self {
            admin,
            supervisor,
            policy,
            admin_url: admin_url.to_owned(),
            socket_dir: socket_dir.to_owned(),
            port: config.port,
            secrets,
            idents,
            backups,
            retention: config.backup_retention,
            restore_timeout_secs: config.restore_timeout_secs,
            provisioning: tokio::sync::Mutex::new(()),
            gates,
            backend_memory_max_mb: config.backend_memory_max_mb,
            sandbox_memory_max_mb: config.sandbox_memory_max_mb,
            tenants_memory_max_mb: config.memory_max_mb / 4 * 3,
            tool_sessions: runaway::ToolSessions::default(),
            sandbox_roles: runaway::SandboxRoles::default(),
            tenants_locks_max: u64::try_from(lock_table / 2).unwrap_or(0),
            disks,
            provisioned: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The socket `sandbox`'s deployments reach the cluster by (its directory is bind-mounted
    /// at [`SANDBOX_SOCKET_DIR`]): the sandbox's gate, opened if it is not, which admits the
    /// role's connection limit at once, and only the sandbox's role and those of the preview
    /// branches named here (`branch`: a `--db-branch` deployment's) (see [`gate`]).
    ///
    /// # Errors
    /// [`DbError::Gate`] when the gate process cannot open it or does not answer.
    pub async fn sandbox_socket(
        &self,
        sandbox: &SandboxName,
        branch: Option<&DeploymentId>,
    ) -> Result<PathBuf, DbError> {
        Ok(self
            .gates
            .socket(
                &self.idents.sandbox(sandbox),
                sandbox.as_str(),
                branch.map(ident::branch),
            )
            .await?)
    }

    /// The gate process's log, `<state_dir>/db-gate/gate.log`.
    pub fn gate_log(&self) -> PathBuf {
        self.gates.log_file()
    }

    /// Makes sure the gate process runs and has applied the table of gates (after the manager
    /// was started again), adopting it if it runs with the settings wanted.
    ///
    /// # Errors
    /// [`DbError::Gate`] when it cannot be started or does not answer.
    pub async fn ensure_gate(&self) -> Result<(), DbError> {
        Ok(self.gates.ensure_running().await?)
    }

    /// A URL through the socket in `socket_dir`, in libpq's form with an empty host
    /// (`postgres://role:password@/database?host=DIR&port=N`, PostgreSQL's "Connection URIs"):
    /// with a host name in it (`@localhost:5432`), drivers that give the URL's host precedence
    /// over the `host` parameter (Go's lib/pq) connect over TCP instead, and fail.
    fn url(&self, c: &Credentials, socket_dir: &str) -> String {
        format!(
            "postgres://{}:{}@/{}?host={socket_dir}&port={}",
            c.role, c.password, c.database, self.port
        )
    }

    /// A URL for nxd's own tools to connect as `role` to `database` through the socket,
    /// its password read from the libpq password file `passfile` (never in a command line),
    /// without the role's `statement_timeout` and `idle_in_transaction_session_timeout`
    /// (a restore's index builds take as long as its data; a role may lift both itself, and
    /// a connection's `options` win over `ALTER ROLE ... SET`: PostgreSQL's "Setting
    /// Parameters"), under `application_name` (by which the runaway watch knows it).
    /// Paths and the name percent-encoded (libpq's "Connection URIs").
    fn role_url(
        &self,
        database: &str,
        role: &str,
        passfile: &Path,
        application_name: &str,
    ) -> String {
        let encoded = |text: &str| {
            percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC)
                .to_string()
        };
        format!(
            "postgres://{role}@/{database}?host={}&port={}&passfile={}&application_name={}&options=-c%20statement_timeout%3D0%20-c%20idle_in_transaction_session_timeout%3D0",
            encoded(&self.socket_dir.display().to_string()),
            self.port,
            encoded(&passfile.display().to_string()),
            encoded(application_name)
        )
    }

    /// The connection URL on the host (for `nx db url`).
    pub fn host_url(&self, c: &Credentials) -> String {
        self.url(c, &self.socket_dir.display().to_string())
    }

    /// The connection URL inside a sandbox: a deployment's `DATABASE_URL`.
    pub fn sandbox_url(&self, c: &Credentials) -> String {
        self.url(c, SANDBOX_SOCKET_DIR)
    }

    /// What a deployment gets: DATABASE_URL and the libpq variables, through the socket.
    pub fn env(&self, c: &Credentials) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("DATABASE_URL".into(), self.sandbox_url(c)),
            ("PGHOST".into(), SANDBOX_SOCKET_DIR.into()),
            ("PGPORT".into(), self.port.to_string()),
            ("PGDATABASE".into(), c.database.clone()),
            ("PGUSER".into(), c.role.clone()),
            ("PGPASSWORD".into(), c.password.clone()),
        ])
    }

    /// The password of a role: read from its 0600 file, or made and written there.
    fn password(&self, role: &str) -> Result<String, DbError> {
        let path = self.secrets.join(format!("{role}.password"));
        match std::fs::read_to_string(&path) {
            Ok(p) => Ok(p.trim().to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let password = random_password();
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                writeln!(file, "{password}")?;
                Ok(password)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn ensure_role(&self, role: &str) -> Result<Credentials, DbError> {
        let password = self.password(role)?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(role)
                .fetch_one(&self.admin)
                .await?;
        // The password is hex we generated: safe inside a literal (DDL takes no parameters).
        let verb = if exists { "ALTER" } else { "CREATE" };
        sqlx::query(&format!(
            "{verb} ROLE {} LOGIN PASSWORD '{password}'",
            quote(role)
        ))
        .execute(&self.admin)
        .await?;
        for sql in self.policy.statements(&quote(role)) {
            sqlx::query(&sql).execute(&self.admin).await?;
        }
        let oid: i64 = sqlx::query_scalar("SELECT oid::int8 FROM pg_roles WHERE rolname = $1")
            .bind(role)
            .fetch_one(&self.admin)
            .await?;
        self.sandbox_roles
            .role(u32::try_from(oid).unwrap_or(u32::MAX), role);
        Ok(Credentials {
            database: role.to_owned(),
            role: role.to_owned(),
            password,
        })
    }

    async fn database_exists(&self, database: &str) -> Result<bool, DbError> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(database)
                .fetch_one(&self.admin)
                .await?,
        )
    }

    /// Creates `database` owned by `owner`, holding `contents`, that only `owner` (and
    /// superusers) may ever connect to: it is made with `ALLOW_CONNECTIONS false` (no one
    /// connects, superusers neither), restricted, then opened ([`open_to_statements`]).
    /// PostgreSQL gives a new database `CONNECT` for PUBLIC: a restore's scratch database and a
    /// branch being copied took any tenant's connections, until the copy was done (attacker s11
    /// G10: from there a tenant's sessions escaped its bounds, or dropped its own production).
    ///
    /// # Errors
    /// The SQL's (e.g. 53100 when the sandbox's disk is full: see [`Self::disk_full`]).
    pub(super) async fn create_database(
        &self,
        database: &str,
        owner: &str,
        contents: Contents<'_>,
    ) -> Result<(), DbError> {
        let from = match contents {
            Contents::Empty { tablespace } => format!("TABLESPACE {}", quote(tablespace)),
            Contents::CopyOf(template) => format!("TEMPLATE {}", quote(template)),
        };
        let sql = format!(
            "CREATE DATABASE {} OWNER {} {from} ALLOW_CONNECTIONS false",
            quote(database),
            quote(owner),
        );
        sqlx::query(&sql).execute(&self.admin).await?;
        self.open_to(database, owner).await
    }

    /// The tablespace new databases of the sandbox whose role is `role` go to: its own, on its
    /// disk (made, mounted and created now where missing), or `pg_default` without disks.
    /// Errors: the disk's, or the SQL's.
    #[tracing::instrument(skip(self))]
    pub(super) async fn tablespace(&self, role: &str) -> Result<String, DbError> {
        let Some(disks) = &self.disks else {
            return Ok("pg_default".into());
        };
        let location = disks.ensure(role).await.map_err(DbError::Disk)?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_tablespace WHERE spcname = $1)")
                .bind(role)
                .fetch_one(&self.admin)
                .await?;
        if !exists {
            // A path in a string literal: quotes doubled (DDL takes no parameters).
            let location = location.display().to_string().replace('\'', "''");
            sqlx::query(&format!(
                "CREATE TABLESPACE {} LOCATION '{location}'",
                quote(role)
            ))
            .execute(&self.admin)
            .await?;
            tracing::info!(tablespace = %role, %location, "sandbox database disk created");
        }
        Ok(role.to_owned())
    }

    /// The tablespace `database` is in.
    async fn tablespace_of(&self, database: &str) -> Result<String, DbError> {
        Ok(sqlx::query_scalar(
            "SELECT t.spcname::text FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace WHERE d.datname = $1",
        )
        .bind(database)
        .fetch_one(&self.admin)
        .await?)
    }

    /// `error` as [`DbError::DiskFull`] when it says the sandbox's disk is full.
    pub(super) fn disk_full(&self, sandbox: &SandboxName, error: DbError) -> DbError {
        let full = match &error {
            DbError::Tool { message, .. } | DbError::BadDump(message) => is_disk_full(message),
            DbError::Sql(sqlx::Error::Database(e)) => e.code().as_deref() == Some("53100"),
            _ => false,
        };
        match (&self.disks, full) {
            (Some(disks), true) => DbError::DiskFull {
                sandbox: sandbox.to_string(),
                size_mb: disks.size(&self.role(sandbox)).unwrap_or(0) >> 20,
            },
            _ => error,
        }
    }

    /// Only its own role (and superusers) may connect to a database, and it may.
    async fn open_to(&self, database: &str, role: &str) -> Result<(), DbError> {
        for sql in open_to_statements(database, role) {
            sqlx::query(&sql).execute(&self.admin).await?;
        }
        Ok(())
    }

    /// The sandbox's role and database, created when missing (the first time this process
    /// asks; then from memory until `drop_sandbox`).
    #[tracing::instrument(skip(self))]
    pub async fn ensure_sandbox(&self, sandbox: &SandboxName) -> Result<Credentials, DbError> {
        let name = self.idents.sandbox(sandbox);
        let known = || self.provisioned.lock().expect("lock").get(&name).cloned();
        if let Some(creds) = known() {
            return Ok(creds);
        }
        let _one_at_a_time = self.provisioning.lock().await;
        if let Some(creds) = known() {
            return Ok(creds);
        }
        let creds = self.ensure_role(&name).await?;
        if self.database_exists(&name).await? {
            // Made by an older nxd, or left closed by a crash within `create_database`.
            self.open_to(&name, &name).await?;
        } else {
            let tablespace = self.tablespace(&name).await?;
            let contents = Contents::Empty {
                tablespace: &tablespace,
            };
            self.create_database(&name, &name, contents).await?;
            tracing::info!(database = %name, "sandbox database created");
        }
        self.provisioned
            .lock()
            .expect("lock")
            .insert(name, creds.clone());
        Ok(creds)
    }

    /// Whether the sandbox's own database exists (false once `drop_sandbox` dropped it).
    pub async fn has_database(&self, sandbox: &SandboxName) -> Result<bool, DbError> {
        self.database_exists(&self.idents.sandbox(sandbox)).await
    }

    /// For a sandbox just recorded: drops the role, databases, tablespace and disk that an
    /// earlier holder of the name left without a record (a removal cut short by an nxd from
    /// before migration 0020, or a database made again by a push that raced the removal), and
    /// sets that holder's backups aside (`set_backups_aside`): a new holder never adopts them
    /// (names are the HMAC of the sandbox's name; attacker s12 H5). Nothing to drop when none
    /// are left.
    /// Errors: the SQL's, the disk's, the rename's.
    #[tracing::instrument(skip(self))]
    pub async fn drop_leftovers(&self, sandbox: &SandboxName) -> Result<(), DbError> {
        let role = self.idents.sandbox(sandbox);
        {
            // A first push to the sandbox at the same time provisions it after this.
            let _one_at_a_time = self.provisioning.lock().await;
            let role_left: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                    .bind(&role)
                    .fetch_one(&self.admin)
                    .await?;
            let left = role_left
                || self.database_exists(&role).await?
                || self.disks.as_ref().is_some_and(|d| d.size(&role).is_some());
            if left {
                tracing::warn!(%sandbox, "dropping the database, role and disk an earlier sandbox of this name left without a record");
                self.provisioned.lock().expect("lock").remove(&role);
                self.drop_role_and_disk(&role).await?;
            }
        }
        if let Some(to) = self.set_backups_aside(sandbox)? {
            tracing::warn!(%sandbox, to = %to.display(), "an earlier sandbox of this name left backups without a record: set aside");
        }
        Ok(())
    }

    /// Forgets that a sandbox was provisioned (waiting for a provisioning in progress).
    async fn forget_provisioned(&self, role: &str) {
        let _one_at_a_time = self.provisioning.lock().await;
        self.provisioned.lock().expect("lock").remove(role);
    }

    async fn drop_database_and_role(&self, name: &str) -> Result<(), DbError> {
        self.drop_database(name).await?;
        self.drop_grants_to(name).await?;
        sqlx::query(&format!("DROP ROLE IF EXISTS {}", quote(name)))
            .execute(&self.admin)
            .await?;
        let _ = std::fs::remove_file(self.secrets.join(format!("{name}.password")));
        self.sandbox_roles.forget(name);
        Ok(())
    }

    /// Removes what other databases hold for role `name`, database by database (those
    /// `pg_shdepend` names: privileges granted to it, default privileges it set), with
    /// `DROP OWNED BY`, which revokes them and drops what the role owns there; DROP ROLE
    /// refuses a role still referenced in any database (PostgreSQL, "DROP ROLE"; REASSIGN
    /// OWNED moves no privileges). Every tenant reads the roles' names (`pg_roles`) and may
    /// grant on its own tables to any of them: before, one tenant's `GRANT ... TO` another's
    /// role made that role's DROP ROLE fail, and with it the other's `nx rm` of a preview, its
    /// `nx sandbox rm`, a `promote --swap-db` after its swap, and the next nxd start that
    /// finished that swap (review17 #4). Call it once the role's own databases are gone or
    /// given away (what it still owns elsewhere goes).
    async fn drop_grants_to(&self, name: &str) -> Result<(), DbError> {
        let databases: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT d.datname::text FROM pg_shdepend s \
               JOIN pg_database d ON d.oid = s.dbid \
             WHERE s.refclassid = 'pg_authid'::regclass AND d.datallowconn \
               AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = $1)",
        )
        .bind(name)
        .fetch_all(&self.admin)
        .await?;
        for database in databases {
            let mut conn = self.connect_to_tenant_database(&database).await?;
            sqlx::query(&format!("DROP OWNED BY {}", quote(name)))
                .execute(&mut conn)
                .await?;
            conn.close().await?;
        }
        Ok(())
    }

    /// A session of PostgreSQL's superuser (nxd's admin URL) in a tenant's database, started
    /// as [`Databases::tenant_session_url`] says.
    async fn connect_to_tenant_database(&self, database: &str) -> Result<PgConnection, DbError> {
        let options = self
            .tenant_session_url(database)
            .await?
            .parse::<sqlx::postgres::PgConnectOptions>()?;
        Ok(PgConnection::connect_with(&options).await?)
    }

    /// The URL of a session of PostgreSQL's superuser in tenant database `database` (DROP
    /// OWNED, pg_dump) that starts with [`TENANT_DATABASE_OVERRIDES`] and with every other
    /// setting the database holds (`ALTER DATABASE ... SET`, `pg_db_role_setting`) at the
    /// value nxd's own sessions start with (`pg_settings.reset_val` in the admin pool's), as
    /// its startup `options`, which take precedence over a database's settings (PostgreSQL,
    /// "Setting Parameters" and ALTER DATABASE). A database's owner sets what every session
    /// there starts with, nxd's too. Newcomer18 N1: a tenant's
    /// `default_transaction_read_only = on` on its own database, where it had granted something
    /// to another tenant's role, made nxd's DROP OWNED there fail, and with it the other's
    /// `nx sandbox rm` and `promote --swap-db`; `role = <its role>` ran nxd's session as the
    /// tenant. Review18 #11: `local_preload_libraries = 'nosuch'` refused every connection to
    /// the database, `transaction_timeout` (PostgreSQL 17) or `idle_session_timeout` ended
    /// them: each setting the database holds is put back, not a list that falls behind.
    async fn tenant_session_url(&self, database: &str) -> Result<String, DbError> {
        let held: Vec<(String, String)> = sqlx::query_as(
            "SELECT s.name::text, s.reset_val::text FROM pg_db_role_setting r \
               CROSS JOIN LATERAL unnest(r.setconfig) AS c(setting) \
               JOIN pg_settings s ON lower(s.name) = lower(split_part(c.setting, '=', 1)) \
             WHERE r.setrole = 0 \
               AND r.setdatabase = (SELECT oid FROM pg_database WHERE datname = $1)",
        )
        .bind(database)
        .fetch_all(&self.admin)
        .await?;
        let overridden = |name: &str| {
            TENANT_DATABASE_OVERRIDES
                .iter()
                .any(|(fixed, _)| fixed.eq_ignore_ascii_case(name))
        };
        let put_back = held
            .iter()
            .filter(|(name, _)| !overridden(name))
            .map(|(name, value)| (name.as_str(), value.as_str()));
        let options = options_setting(TENANT_DATABASE_OVERRIDES.into_iter().chain(put_back));
        Ok(with_parameter(
            &self.database_url(database),
            "options",
            &options,
        ))
    }

    /// Drops `database` if it is there, ending its sessions (waiting 5 s for them).
    async fn drop_database(&self, database: &str) -> Result<(), DbError> {
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote(database)
        ))
        .execute(&self.admin)
        .await?;
        Ok(())
    }

    /// Drops the sandbox's role and every database it owns: the current one and those that
    /// restores and swaps kept.
    #[tracing::instrument(skip(self))]
    pub async fn drop_sandbox(&self, sandbox: &SandboxName) -> Result<(), DbError> {
        let role = self.idents.sandbox(sandbox);
        self.forget_provisioned(&role).await;
        let dropped = self.drop_role_and_disk(&role).await;
        // A push during the drop may have provisioned it again meanwhile.
        self.forget_provisioned(&role).await;
        dropped
    }

    /// Closes `role`'s gate, drops it with every database it owns, then its tablespace and
    /// disk.
    async fn drop_role_and_disk(&self, role: &str) -> Result<(), DbError> {
        if let Err(e) = self.gates.close(role).await {
            // The table no longer names it: the gate closes it when it next applies the table.
            tracing::warn!(%role, error = %e, "database gate not closed yet");
        }
        self.drop_owned(role).await?;
        self.drop_disk(role).await
    }

    /// Drops the tablespace of `role` and removes its disk, if it has them.
    async fn drop_disk(&self, role: &str) -> Result<(), DbError> {
        let Some(disks) = &self.disks else {
            return Ok(());
        };
        sqlx::query(&format!("DROP TABLESPACE IF EXISTS {}", quote(role)))
            .execute(&self.admin)
            .await?;
        disks.remove(role).await.map_err(DbError::Disk)
    }

    /// Drops `role` and every database it owns.
    async fn drop_owned(&self, role: &str) -> Result<(), DbError> {
        let owned: Vec<String> = sqlx::query_scalar(
            "SELECT datname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE r.rolname = $1",
        )
        .bind(role)
        .fetch_all(&self.admin)
        .await?;
        for database in owned.iter().filter(|d| d.as_str() != role) {
            sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote(database)
            ))
            .execute(&self.admin)
            .await?;
        }
        self.drop_database_and_role(role).await
    }

    /// A copy of the sandbox's database under a role of its own, for one preview deployment.
    /// While it is made its mark ([`Self::branch_mark`]) lies in the backups' directory, and
    /// stays when it fails: a branch with its mark is not whole ([`Self::branch_is_whole`]).
    #[tracing::instrument(skip(self))]
    pub async fn branch(
        &self,
        sandbox: &SandboxName,
        id: &DeploymentId,
    ) -> Result<(Credentials, BranchMethod), DbError> {
        let name = ident::branch(id);
        let mark = self.branch_mark(&name);
        std::fs::write(&mark, b"")?;
        let made = self.copy_branch(sandbox, &name).await?;
        std::fs::remove_file(&mark)?;
        Ok(made)
    }

    /// The mark of branch `name` while it is made ([`Self::branch`]):
    /// `<state_dir>/backups/.copying-<name>`.
    pub(super) fn branch_mark(&self, name: &str) -> PathBuf {
        self.backups.join(format!(".copying-{name}"))
    }

    /// Whether deployment `id`'s preview branch is whole: its database is there and no copy
    /// into it was cut short (by a crash of nxd: its mark is left).
    pub async fn branch_is_whole(&self, id: &DeploymentId) -> Result<bool, DbError> {
        let name = ident::branch(id);
        Ok(self.database_exists(&name).await? && !self.branch_mark(&name).exists())
    }

    async fn copy_branch(
        &self,
        sandbox: &SandboxName,
        name: &str,
    ) -> Result<(Credentials, BranchMethod), DbError> {
        let production = self.ensure_sandbox(sandbox).await?;
        let name = name.to_owned();
        self.sandbox_roles.branch(&name, &production.role);
        let creds = self.ensure_role(&name).await?;
        let template = self
            .create_database(&name, &name, Contents::CopyOf(&production.database))
            .await;
        let method = match template {
            Ok(()) => {
                self.reassign_copied_objects(&name, &production.role)
                    .await?;
                BranchMethod::Template
            }
            // 55006: production has open connections, which a template copy cannot have.
            Err(DbError::Sql(sqlx::Error::Database(e))) if e.code().as_deref() == Some("55006") => {
                let tablespace = self.tablespace_of(&production.database).await?;
                let contents = Contents::Empty {
                    tablespace: &tablespace,
                };
                self.create_database(&name, &name, contents).await?;
                if let Err(e) = backup::copy(self, &production.database, &name, &name).await {
                    // No half-made copy is left, nor its role.
                    if let Err(dropped) = self.drop_branch_role(&name).await {
                        tracing::warn!(branch = %name, error = %dropped, "a failed branch copy is left until nxd's next start");
                    }
                    return Err(self.disk_full(sandbox, e));
                }
                BranchMethod::DumpRestore
            }
            Err(e) => return Err(self.disk_full(sandbox, e)),
        };
        tracing::info!(branch = %name, ?method, "preview branch created");
        Ok((creds, method))
    }

    /// The objects a template copy brought along are production's role's: give them to the
    /// branch's role. REASSIGN OWNED also moves shared objects: every database production's
    /// role owns (its own, and the `nxo_*` ones restores and swaps kept), so those are given
    /// back in the same transaction; else the branch could open or drop them, and its role
    /// could not be dropped while it owned them.
    async fn reassign_copied_objects(
        &self,
        branch: &str,
        production_role: &str,
    ) -> Result<(), DbError> {
        let mut conn = self.connect_to_tenant_database(branch).await?;
        let mut tx = conn.begin().await?;
        let owned: Vec<String> = sqlx::query_scalar(
            "SELECT datname::text FROM pg_database WHERE datdba = (SELECT oid FROM pg_roles WHERE rolname = $1)",
        )
        .bind(production_role)
        .fetch_all(&mut *tx)
        .await?;
        let give_back = owned.iter().map(|database| {
            format!(
                "ALTER DATABASE {} OWNER TO {}",
                quote(database),
                quote(production_role)
            )
        });
        let reassign = format!(
            "REASSIGN OWNED BY {} TO {}",
            quote(production_role),
            quote(branch)
        );
        for sql in std::iter::once(reassign).chain(give_back) {
            sqlx::query(&sql).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Makes a preview branch the sandbox's database: it takes production's name (production's
    /// database is kept as `nxo_<time>`, whose name this returns). The caller then finishes it
    /// ([`Self::finish_branch_swap`]: its objects go to production's role and the branch's
    /// role is dropped), or puts production's database back ([`Self::swap_back`]) when that or
    /// anything after it fails. A crash after the swap is finished at nxd's start
    /// ([`Self::finish_branch_swap_if_swapped`], [`Databases::recover`]). An error here means
    /// nothing was swapped.
    #[tracing::instrument(skip(self))]
    pub async fn swap_in_branch(
        &self,
        sandbox: &SandboxName,
        id: &DeploymentId,
    ) -> Result<String, DbError> {
        self.ensure_sandbox(sandbox).await?;
        let previous = self
            .swap_in(
                sandbox,
                &ident::branch(id),
                &format!("deployment {id}'s branch was swapped in"),
            )
            .await?;
        fail::fail_point!("databases::swapped");
        Ok(previous)
    }

    /// After a `--swap-db` promotion of deployment `id` was undone ([`Self::swap_back`]): the
    /// branch's data, which the swap back kept as database `kept`, is the deployment's branch
    /// again (`nxb_<id>`, its role made again if the swap's finish had dropped it, the objects
    /// that finish gave to production's role given back), so that the preview's next start runs
    /// on what it wrote, not on a new copy of production (review17 #7).
    #[tracing::instrument(skip(self))]
    pub async fn give_branch_back(
        &self,
        sandbox: &SandboxName,
        id: &DeploymentId,
        kept: &str,
    ) -> Result<(), DbError> {
        let production = self.idents.sandbox(sandbox);
        let branch = ident::branch(id);
        self.sandbox_roles.branch(&branch, &production);
        self.ensure_role(&branch).await?;
        let mut tx = self.admin.begin().await?;
        let statements = [
            format!(
                "ALTER DATABASE {} RENAME TO {}",
                quote(kept),
                quote(&branch)
            ),
            format!("COMMENT ON DATABASE {} IS NULL", quote(&branch)),
            format!(
                "ALTER DATABASE {} OWNER TO {}",
                quote(&branch),
                quote(&branch)
            ),
        ];
        for sql in statements
            .into_iter()
            .chain(open_to_statements(&branch, &branch))
        {
            sqlx::query(&sql).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.reassign_copied_objects(&branch, &production).await?;
        tracing::info!(%branch, %kept, "the undone swap's branch is the preview's again");
        Ok(())
    }

    /// After nxd's start cut short a `--swap-db` promotion of deployment `id`: whether its
    /// branch was swapped in (the swap renames the branch's database in the transaction that
    /// puts it in place, so a branch database still there was not swapped). One that was is
    /// finished ([`Self::finish_branch_swap`]) unless its role is gone already (finished).
    pub async fn finish_branch_swap_if_swapped(
        &self,
        sandbox: &SandboxName,
        id: &DeploymentId,
    ) -> Result<bool, DbError> {
        let branch = ident::branch(id);
        if self.database_exists(&branch).await? {
            return Ok(false);
        }
        if self.role_exists(&branch).await? {
            self.finish_branch_swap(sandbox, id).await?;
        }
        Ok(true)
    }

    /// After a branch took production's name: what its role owns there (the database too)
    /// goes to production's role, and the branch's role is dropped. Fail point
    /// `databases::finishing` (`return`): fails between the two, as DROP ROLE did while
    /// another database granted the role something (review17 #4).
    pub async fn finish_branch_swap(
        &self,
        sandbox: &SandboxName,
        id: &DeploymentId,
    ) -> Result<(), DbError> {
        let production = self.idents.sandbox(sandbox);
        let branch = ident::branch(id);
        let mut conn = self.connect_to_tenant_database(&production).await?;
        sqlx::query(&format!(
            "REASSIGN OWNED BY {} TO {}",
            quote(&branch),
            quote(&production)
        ))
        .execute(&mut conn)
        .await?;
        conn.close().await?;
        sqlx::query(&format!(
            "REVOKE ALL ON DATABASE {} FROM {}",
            quote(&production),
            quote(&branch)
        ))
        .execute(&self.admin)
        .await?;
        fail::fail_point!("databases::finishing", |_| Err(DbError::Sql(
            sqlx::Error::Protocol(format!(
                "role {branch} cannot be dropped because some objects depend on it (fail point)"
            ))
        )));
        self.drop_branch_role(&branch).await
    }

    /// Drops a preview branch's database and role (`branch`), and has its sandbox's gate stop
    /// admitting the role.
    async fn drop_branch_role(&self, branch: &str) -> Result<(), DbError> {
        if let Err(e) = self.gates.forget_branch(branch).await {
            // The role is gone: PostgreSQL refuses it. The gate forgets it with the next table.
            tracing::warn!(%branch, error = %e, "database gate still admits the dropped branch's role");
        }
        self.drop_database_and_role(branch).await
    }

    /// The size of the sandbox's database, in bytes (`pg_database_size`).
    pub async fn size(&self, sandbox: &SandboxName) -> Result<u64, DbError> {
        let bytes: i64 = sqlx::query_scalar("SELECT pg_database_size($1)")
            .bind(self.idents.sandbox(sandbox))
            .fetch_one(&self.admin)
            .await?;
        Ok(u64::try_from(bytes).unwrap_or(0))
    }

    /// The cap on the sandbox's databases together, in bytes: the size of the disk its
    /// database is on ([`disk`]); `None` when it is on none (no disks on this host, or a
    /// database made before them: a restore moves it onto one).
    pub async fn max_size(&self, sandbox: &SandboxName) -> Result<Option<u64>, DbError> {
        let Some(disks) = &self.disks else {
            return Ok(None);
        };
        let role = self.role(sandbox);
        if self.tablespace_of(&role).await? != role {
            return Ok(None);
        }
        Ok(disks.size(&role))
    }

    /// Why the cluster refuses nxd a new connection now, if it does (within `within`): e.g.
    /// "sorry, too many clients already". A new connection, not one of the pool's, which
    /// stay open and would hide it.
    pub async fn refusal(&self, within: std::time::Duration) -> Option<String> {
        match tokio::time::timeout(within, PgConnection::connect(&self.admin_url)).await {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                None
            }
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {within:?}")),
        }
    }

    /// Keeps the reserve of each sandbox's database disk (see
    /// [`disk::DatabaseDisks::keep_reserves`], `root` as there): the roles whose disk's reserve
    /// changed. None without disks.
    pub fn keep_disk_reserves(&self, root: &Path) -> Vec<(String, disk::ReserveChange)> {
        self.disks
            .as_ref()
            .map(|disks| disks.keep_reserves(root))
            .unwrap_or_default()
    }

    /// What every sandbox role is held to.
    pub fn policy(&self) -> RolePolicy {
        self.policy
    }

    /// The role (and database) of `sandbox`.
    pub fn role(&self, sandbox: &SandboxName) -> String {
        self.idents.sandbox(sandbox)
    }

    /// The credentials of deployment `id`'s preview branch, at each start of it: a branch that
    /// is not whole ([`Self::branch_is_whole`]) is made again first, from production's database
    /// as it is now (newcomer s17 N3: a preview whose copy a crash cut short was adopted
    /// running, with no database). Errors: the copy's ([`Self::branch`]).
    pub async fn branch_credentials(
        &self,
        sandbox: &SandboxName,
        id: &DeploymentId,
    ) -> Result<Credentials, DbError> {
        if self.branch_is_whole(id).await? {
            return self.ensure_role(&ident::branch(id)).await;
        }
        tracing::warn!(deployment = %id, "its preview branch is missing or its copy was cut short (by a crash of nxd): made again from production's database");
        crate::failpoint::wait("databases::remaking").await;
        self.drop_database(&ident::branch(id)).await?;
        self.branch(sandbox, id)
            .await
            .map(|(credentials, _)| credentials)
    }

    #[tracing::instrument(skip(self))]
    pub async fn drop_branch(&self, id: &DeploymentId) -> Result<(), DbError> {
        self.drop_branch_role(&ident::branch(id)).await
    }

    fn database_url(&self, database: &str) -> String {
        with_database(&self.admin_url, database)
    }
}

#[cfg(test)]
mod tests {
    use super::{admin_pool, options_setting, with_database, DatabasesConfig, RolePolicy};

    #[test]
    fn options_escape_spaces_and_backslashes_and_keep_empty_values() {
        assert_eq!(
            options_setting([
                ("DateStyle", "ISO, MDY"),
                ("local_preload_libraries", ""),
                ("x.y", r"a\b"),
            ]),
            r"-c DateStyle=ISO,\ MDY -c local_preload_libraries= -c x.y=a\\b"
        );
    }

    #[test]
    fn the_admin_pool_keeps_its_connections() {
        let pool = admin_pool();
        assert_eq!(
            (pool.get_max_lifetime(), pool.get_idle_timeout()),
            (None, None)
        );
        assert!(pool.get_min_connections() >= 1);
    }

    #[test]
    fn a_role_gets_its_share_of_the_open_slots_and_at_least_one() {
        let config = DatabasesConfig::default();
        assert_eq!(RolePolicy::new(&config, 80).connection_limit, 20);
        assert_eq!(RolePolicy::new(&config, 2).connection_limit, 1);
        let sql = RolePolicy::new(&config, 80).statements("\"nx_a\"");
        assert_eq!(sql[0], "ALTER ROLE \"nx_a\" CONNECTION LIMIT 20");
        assert_eq!(sql[1], "ALTER ROLE \"nx_a\" SET statement_timeout = '300s'");
        assert_eq!(sql[3], "ALTER ROLE \"nx_a\" SET temp_file_limit = '2048MB'");
    }

    #[test]
    fn replaces_the_database_of_a_url() {
        assert_eq!(
            with_database("postgres://postgres@localhost/postgres?host=/s", "nx_a"),
            "postgres://postgres@localhost/nx_a?host=/s"
        );
        assert_eq!(
            with_database("postgres://u:p@db:5432/x", "y"),
            "postgres://u:p@db:5432/y"
        );
    }
}
