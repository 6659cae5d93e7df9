//! The embedded PostgreSQL cluster: with no `database_url`, nxd initdb's a cluster into
//! `<state_dir>/postgres` and runs it as the unit `nx-postgres.service` under the same systemd
//! manager as the deployments, listening on a unix socket only (`<state_dir>/postgres/socket`).
//! It holds nxd's state (in the database `nx`, which only superusers may connect to) and, by
//! default, the sandboxes' databases. Authentication: the `postgres` role by peer only, for the
//! OS users root and postgres; every other role by password (scram-sha-256), which is how
//! deployments connect through the socket. `superuser_reserved_connections` keeps
//! [`RESERVED_FOR_NXD`] connection slots for nxd, which connects as `postgres`, so tenants
//! holding every other slot cannot lock it out.
//!
//! The unit runs nxd's launcher (`nxd launch`), whose monitor passes PostgreSQL's output
//! through the log writer that deployments' logs use: `postgres.log`, rotated and capped at
//! [`LOG_MAX_BYTES`] with `[logs] keep` rotated files. Any role may write the server log
//! (`RAISE WARNING` in a loop wrote 304 MB in 3.6 s, attacker s12 H4), so sandboxes' roles
//! log only what ends a session (`log_min_messages`, see `databases::RolePolicy`), and nothing
//! written there outgrows the cap.

use crate::api::systemd::ActiveState;
use crate::backend::launch::{LaunchSpec, MonitorSpec, StopForward};
use crate::backend::tmp_mount::TmpMount;
use crate::logs::LogFiles;
use crate::supervisor::service::{self, ServiceError};
use crate::supervisor::{Restart, SliceKind, Supervisor, SupervisorError, UnitOutput, UnitSpec};
use std::collections::HashMap;
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod shared_memory;

pub const UNIT: &str = "nx-postgres.service";
const OS_USER: &str = "postgres";
/// nxd's own database: its state (sqlx migrations and tables).
pub const STATE_DATABASE: &str = "nx";
/// Connection slots only superusers (nxd, its pg_dump and pg_restore) may take: nxd's pools
/// (12) and its tools, with room to spare. PostgreSQL's `superuser_reserved_connections`.
pub const RESERVED_FOR_NXD: u32 = 20;
/// The cluster's `max_locks_per_transaction`: its shared lock table holds this many entries
/// per connection (PostgreSQL's default is 64), so that tenants' sessions at
/// [`crate::databases::runaway::MAX_LOCKS_PER_SESSION`] each leave room for the others.
pub const MAX_LOCKS_PER_TRANSACTION: u32 = 256;
/// The mode of `<state_dir>/postgres`, owned by the `postgres` user and the database gate's
/// group (`databases.gate_uid`), which may only pass through it to the socket directory.
pub const DIR_MODE: u32 = 0o710;
/// The mode of `<state_dir>/postgres/socket`, owned likewise: PostgreSQL and the gate (and
/// root) reach the cluster's socket, no other user of the host does.
pub const SOCKET_DIR_MODE: u32 = 0o750;
/// PostgreSQL's `authentication_timeout`, in seconds (its default: 60): how long a connection
/// may hold a backend slot before it authenticates. Deployments' connections pass their
/// sandbox's gate (`databases::gate`), which counts them; this bounds how long each is held.
pub const AUTHENTICATION_TIMEOUT_SECS: u32 = 10;
/// The most `postgres.log` and its rotated copies hold together, bytes: each file rotates at
/// this over `[logs] keep` + 1 (`logs::LogFiles`); past what the disk takes in, lines are
/// dropped and counted, never held up.
pub const LOG_MAX_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedDbError {
    #[error("PostgreSQL's {0} was not found on PATH or in /usr/lib/postgresql/*/bin; install postgresql or pass --database-url")]
    MissingBinary(&'static str),
    #[error("the '{OS_USER}' user does not exist; install postgresql (it creates it) or pass --database-url")]
    MissingUser,
    #[error("initdb failed ({status}); see {log}")]
    Initdb { status: String, log: PathBuf },
    #[error("the embedded PostgreSQL did not accept connections within 30 s; see {0}")]
    NotReady(PathBuf),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error("the embedded PostgreSQL's unit: {0}")]
    Service(#[from] ServiceError),
    #[error("embedded PostgreSQL: {0}")]
    Sql(#[from] sqlx::Error),
    /// The sandboxes' database disks could not be mounted (see `databases::disk`).
    #[error("{0}; PostgreSQL is not started without its tablespaces: check the image named (`e2fsck -f IMAGE`) and that loop devices can be attached (`losetup -f`)")]
    Disks(String),
    #[error("embedded PostgreSQL I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Finds a PostgreSQL program on PATH, else in the newest /usr/lib/postgresql/<v>/bin.
pub fn find_binary(name: &'static str) -> Result<PathBuf, EmbeddedDbError> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name));
    let mut versioned: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .collect();
    versioned.sort();
    versioned.reverse();
    on_path
        .chain(versioned)
        .find(|p| p.is_file())
        .ok_or(EmbeddedDbError::MissingBinary(name))
}

const PG_HBA: &str =
    "# Written by nxd.\nlocal all postgres peer map=nx\nlocal all all scram-sha-256\n";
const PG_IDENT: &str = "# Written by nxd.\nnx root postgres\nnx postgres postgres\n";

/// The running embedded cluster.
pub struct EmbeddedCluster {
    /// A superuser connection (the `postgres` role, by peer authentication).
    pub url: String,
    /// The same, to nxd's own database [`STATE_DATABASE`].
    pub state_url: String,
    pub socket_dir: PathBuf,
}

/// The embedded cluster's log (its output): `<state_dir>/postgres/postgres.log`, its rotated
/// copies `postgres.log.1` (newest) .. `postgres.log.<keep>` beside it; each line stamped as a
/// deployment's (`logs`: `<time> stderr <PostgreSQL's line>`).
pub fn log_path(state_dir: &Path) -> PathBuf {
    state_dir.join("postgres").join("postgres.log")
}

/// Where PostgreSQL makes its dynamic shared memory segments (`dynamic_shared_memory_type =
/// posix`, its default on Linux: shm_open(3)).
const DSM_DIR: &str = "/dev/shm";

/// The size of the embedded cluster's own `/dev/shm`, MiB: half of `databases.memory_max_mb`
/// (2,048 when that is 0, no bound), so that one backend at its bound
/// (`databases.backend_memory_max_mb`, a quarter of it by default) leaves others room
/// (review16 #6). A tmpfs of the unit's own
/// mount namespace, mounted by its launcher: its dynamic shared memory segments (a parallel
/// query's hash tables, PostgreSQL 15's statistics) are bounded there (a query past it fails
/// "could not resize shared memory segment": No space left on device) and go with the unit;
/// in the host's `/dev/shm`, every killed cluster (`nxd manager-stop`, an OOM kill of the
/// postmaster) left its segments for good (attacker s16 D1: 3,599 files, 1.9 GB of RAM).
fn dsm_size_mb(memory_max_mb: u64) -> u64 {
    match memory_max_mb {
        0 => 2048,
        mb => (mb / 2).max(64),
    }
}

/// Starts (or adopts) the embedded cluster, its unit's `MemoryMax` set to
/// `databases.memory_max_mb` MiB (0: none), its socket directory the group of
/// `databases.gate_uid` ([`SOCKET_DIR_MODE`]), run by the installed `launcher` with its log
/// capped ([`LOG_MAX_BYTES`], `log_keep` rotated files). A running cluster is adopted when its
/// launch spec (`<state_dir>/postgres/launch.json`) is the one wanted, else restarted with it
/// (once, after an upgrade from an nxd that ran it without its log cap).
#[tracing::instrument(skip_all)]
pub async fn ensure(
    supervisor: &Supervisor,
    state_dir: &Path,
    config: &crate::config::DatabasesConfig,
    launcher: &Path,
    log_keep: u32,
) -> Result<EmbeddedCluster, EmbeddedDbError> {
    let dir = state_dir.join("postgres");
    let data = dir.join("data");
    let socket_dir = dir.join("socket");
    let url = format!(
        "postgres://{OS_USER}@localhost/postgres?host={}",
        socket_dir.display()
    );
    let user = nix::unistd::User::from_name(OS_USER)
        .ok()
        .flatten()
        .ok_or(EmbeddedDbError::MissingUser)?;
    if !data.join("PG_VERSION").is_file() {
        initdb(&dir, &data, &user)?;
    }
    // Only PostgreSQL (their owner), the database gate (their group) and root (nxd, pg_dump)
    // reach the cluster's socket: deployments reach it through their sandbox's gate, and the
    // host's other users not at all (PostgreSQL makes the socket itself 0777).
    std::fs::create_dir_all(&socket_dir)?;
    for (path, mode) in [(&dir, DIR_MODE), (&socket_dir, SOCKET_DIR_MODE)] {
        chown(path, Some(user.uid.as_raw()), Some(config.gate_uid))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    std::fs::write(data.join("pg_hba.conf"), PG_HBA)?;
    std::fs::write(data.join("pg_ident.conf"), PG_IDENT)?;
    let launch = LaunchSpec {
        argv: vec![
            find_binary("postgres")?.display().to_string(),
            "-D".into(),
            data.display().to_string(),
            "-k".into(),
            socket_dir.display().to_string(),
            "-c".into(),
            "listen_addresses=".into(),
            "-c".into(),
            format!("superuser_reserved_connections={RESERVED_FOR_NXD}"),
            "-c".into(),
            format!("authentication_timeout={AUTHENTICATION_TIMEOUT_SECS}s"),
            "-c".into(),
            format!("max_locks_per_transaction={MAX_LOCKS_PER_TRANSACTION}"),
        ],
        uid: Some(user.uid.as_raw()),
        gid: Some(user.gid.as_raw()),
        monitor: Some(MonitorSpec {
            log: LogFiles {
                path: log_path(state_dir),
                max_bytes: LOG_MAX_BYTES,
                keep: log_keep,
            },
            dir: dir.clone(),
            oom_score: crate::backend::launch::OomScore::Service,
        }),
        // SIGTERM: PostgreSQL's smart shutdown (the unit's other processes get it too).
        stop: StopForward::Child,
        tmp: Some(TmpMount {
            dir: PathBuf::from(DSM_DIR),
            size_mb: dsm_size_mb(config.memory_max_mb),
        }),
        ..LaunchSpec::default()
    };
    let launch_file = dir.join("launch.json");
    let files = [(
        launch_file.clone(),
        serde_json::to_string_pretty(&launch).expect("launch spec serializes"),
    )];
    let active = supervisor.state(UNIT).await?.active == ActiveState::Active;
    if !active || !service::unchanged(&files) {
        // The sandboxes' tablespaces are on disks of their own: there before PostgreSQL looks.
        crate::databases::disk::mount_all(supervisor, state_dir)
            .await
            .map_err(EmbeddedDbError::Disks)?;
    }
    let spec = UnitSpec {
        name: UNIT.into(),
        description: "NX embedded PostgreSQL (nxd state)".into(),
        argv: vec![
            launcher.display().to_string(),
            "launch".into(),
            launch_file.display().to_string(),
        ],
        // The launcher's monitor stays root (it writes the log); PostgreSQL runs as its user.
        user: None,
        limits: None,
        // Only what the launcher says before its monitor starts.
        output: UnitOutput::File(log_path(state_dir)),
        restart: Restart::OnFailure(Duration::from_secs(1)),
        slice: SliceKind::Control,
        remain_after_exit: false,
        ambient_capabilities: 0,
        cpu_affinity: Vec::new(),
        graceful_stop: None,
    };
    service::adopt_or_start(supervisor, &files, &spec).await?;
    // Set on an adopted unit too; UINT64_MAX is systemd's "infinity".
    let memory_max = match config.memory_max_mb {
        0 => u64::MAX,
        mb => mb << 20,
    };
    supervisor.set_memory_max(UNIT, memory_max).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        use sqlx::Connection;
        let connected = sqlx::PgConnection::connect(&url).await;
        if let Err(e) = &connected {
            end_tenant_sessions_if_refused(supervisor, e).await?;
        }
        if let Ok(mut conn) = connected {
            // An adopted cluster picks up the authentication files written above.
            sqlx::query("SELECT pg_reload_conf()")
                .execute(&mut conn)
                .await
                .ok();
            ensure_state_database(&mut conn).await?;
            let state_url = url.replace("/postgres?", &format!("/{STATE_DATABASE}?"));
            return Ok(EmbeddedCluster {
                url,
                state_url,
                socket_dir,
            });
        }
        if Instant::now() > deadline {
            return Err(EmbeddedDbError::NotReady(log_path(state_dir)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates nxd's own database, closed to PUBLIC like `postgres` and `template1`. nxd's state
/// used to live in `postgres`: such a cluster's state is copied over (a template copy) and its
/// tables then dropped from `postgres`, so tenants' roles reach neither.
async fn ensure_state_database(conn: &mut sqlx::PgConnection) -> Result<(), EmbeddedDbError> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(STATE_DATABASE)
            .fetch_one(&mut *conn)
            .await?;
    if !exists {
        let legacy: Vec<String> = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' \
             AND EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = 'public' AND tablename = '_sqlx_migrations')",
        )
        .fetch_all(&mut *conn)
        .await?;
        if legacy.is_empty() {
            sqlx::query(&format!("CREATE DATABASE {STATE_DATABASE}"))
                .execute(&mut *conn)
                .await?;
        } else {
            tracing::info!(
                tables = legacy.len(),
                "moving nxd's state from postgres to {STATE_DATABASE}"
            );
            sqlx::query(&format!(
                "CREATE DATABASE {STATE_DATABASE} TEMPLATE postgres STRATEGY file_copy"
            ))
            .execute(&mut *conn)
            .await?;
            for table in legacy {
                sqlx::query(&format!("DROP TABLE IF EXISTS public.\"{table}\" CASCADE"))
                    .execute(&mut *conn)
                    .await?;
            }
        }
    }
    for database in ["postgres", "template1", STATE_DATABASE] {
        sqlx::query(&format!(
            "REVOKE CONNECT, TEMPORARY ON DATABASE {database} FROM PUBLIC"
        ))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

fn initdb(dir: &Path, data: &Path, user: &nix::unistd::User) -> Result<(), EmbeddedDbError> {
    let initdb = find_binary("initdb")?;
    std::fs::create_dir_all(dir)?;
    chown(dir, Some(user.uid.as_raw()), Some(user.gid.as_raw()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let log_path = dir.join("initdb.log");
    let log = std::fs::File::create(&log_path)?;
    chown(&log_path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))?;
    let status = std::process::Command::new(initdb)
        .args([
            "--auth-local=peer",
            "--auth-host=reject",
            "--encoding=UTF8",
            "--locale=C",
            "-U",
        ])
        .arg(OS_USER)
        .arg("-D")
        .arg(data)
        .current_dir(dir)
        .uid(user.uid.as_raw())
        .gid(user.gid.as_raw())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()?;
    if !status.success() {
        return Err(EmbeddedDbError::Initdb {
            status: status.to_string(),
            log: log_path,
        });
    }
    Ok(())
}

/// The memory each of `pids` (the cluster's processes as nxd sees them) holds for itself, in
/// bytes, by the pid PostgreSQL knows it by (the last of `NSpid`: the embedded manager runs in
/// a PID namespace of its own): its anonymous memory (`RssAnon`, proc(5): not the shared
/// buffers every backend maps); and, added to a backend of `groups` (each tenant backend's
/// pid with its parallel workers' pids), the dynamic shared memory segments ([`DSM_PREFIX`])
/// that it or its workers map and no other process does: a parallel query's hash tables,
/// sized by the tenant's own `work_mem` and `hash_mem_multiplier` (attacker s15 A2 took the
/// cluster past its MemoryMax with them), at the room each takes in its tmpfs (`st_blocks`).
/// A segment other processes map too (PostgreSQL 15's shared statistics grow into such
/// segments) is charged to nobody, so that no session is ended for memory it shares.
/// The processes' maps are read only while the cluster's own `/dev/shm` holds more than
/// [`DSM_UNCHARGED_MAX`]. Processes that ended meanwhile are left out.
pub fn backend_memory(pids: &[u32], groups: &[(i32, Vec<i32>)]) -> HashMap<i32, u64> {
    let mut memory = HashMap::new();
    // PostgreSQL's pid -> nxd's.
    let mut host_pids = HashMap::new();
    for &pid in pids {
        let Some(status) = ProcStatus::read(pid) else {
            continue;
        };
        let (Some(postgres_pid), Some(kib)) = (
            status.postgres_pid(),
            status
                .field("RssAnon")
                .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok()),
        ) else {
            continue;
        };
        memory.insert(postgres_pid, kib * 1024);
        host_pids.insert(postgres_pid, pid);
    }
    if pids
        .first()
        .is_none_or(|&pid| dsm_in_use(pid) <= DSM_UNCHARGED_MAX)
    {
        return memory;
    }
    // Each segment: its size, and the processes (PostgreSQL's pids) that map it.
    let mut segments: HashMap<String, (u64, Vec<i32>)> = HashMap::new();
    for (&postgres_pid, &pid) in &host_pids {
        for path in dsm_segments(pid) {
            let segment = segments.entry(path).or_insert_with_key(|path| {
                let size = std::fs::metadata(format!("/proc/{pid}/root{path}"))
                    .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
                    .unwrap_or(0);
                (size, Vec::new())
            });
            segment.1.push(postgres_pid);
        }
    }
    for (leader, workers) in groups {
        let own: u64 = segments
            .values()
            .filter(|(_, mappers)| mappers.iter().all(|p| p == leader || workers.contains(p)))
            .map(|(size, _)| size)
            .sum();
        if let Some(bytes) = memory.get_mut(leader) {
            *bytes += own;
        }
    }
    memory
}

/// Where PostgreSQL's dynamic shared memory segments are (`dynamic_shared_memory_type =
/// posix`, its default on Linux: shm_open(3) names `/PostgreSQL.<n>`).
const DSM_PREFIX: &str = "/dev/shm/PostgreSQL.";

/// The bytes the cluster's dynamic shared memory segments may take together before its
/// processes' maps are read to charge them: no more than this can matter against a backend's
/// bound (`databases.backend_memory_max_mb`, 1,024 MiB by default), and PostgreSQL 15's shared
/// statistics alone are a few MiB. Reading every process's maps at the runaway watch's pace
/// cost an idle nxd 3-5% of a core with 4 idle tenant sessions (issue 20: nxd uses no CPU
/// when idle); the cluster's `/dev/shm` is its own ([`DSM_DIR`]), so one statvfs(3) tells.
pub const DSM_UNCHARGED_MAX: u64 = 32 << 20;

/// The bytes in use in the cluster's own `/dev/shm`, seen through `pid`'s root (statvfs(3):
/// `(f_blocks - f_bfree) * f_frsize`); `u64::MAX` when it cannot be read, so that the maps are.
fn dsm_in_use(pid: u32) -> u64 {
    match nix::sys::statvfs::statvfs(format!("/proc/{pid}/root{DSM_DIR}").as_str()) {
        Ok(stat) => (stat.blocks() - stat.blocks_free()) * stat.fragment_size(),
        Err(_) => u64::MAX,
    }
}

/// The dynamic shared memory segments `pid` maps (their paths, from /proc/<pid>/maps).
fn dsm_segments(pid: u32) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|path| path.starts_with(DSM_PREFIX))
        .map(str::to_owned)
        .collect()
}

/// Of `pids` (the cluster's processes as nxd sees them), the one PostgreSQL knows as
/// `postgres_pid`, as nxd sees it: to signal a backend where PostgreSQL's own
/// `pg_terminate_backend` cannot run (it reads the target's role from a shared catalog).
pub fn host_pid(pids: &[u32], postgres_pid: i32) -> Option<u32> {
    pids.iter()
        .copied()
        .find(|&pid| ProcStatus::read(pid).and_then(|s| s.postgres_pid()) == Some(postgres_pid))
}

/// Whether PostgreSQL refused a connection with SQLSTATE 53200, `out of memory` (its "out of
/// shared memory" when the shared lock table is full: every new session needs an entry).
fn refused_for_shared_memory(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "53200")
}

/// When `e` (nxd's connection to the embedded cluster, or a query on it) is PostgreSQL
/// refusing for lack of shared memory: ends every tenant's session of the cluster by signal
/// ([`end_tenant_sessions`]) and logs it, so that nxd reaches it again; how many were ended
/// (0 for any other error). Used at start and by the runaway watch, whose own connection may
/// have been lost while a tenant's locks filled the table (attacker s13 H7).
///
/// # Errors
/// The manager's, listing the cluster's processes.
pub(crate) async fn end_tenant_sessions_if_refused(
    supervisor: &Supervisor,
    e: &sqlx::Error,
) -> Result<usize, EmbeddedDbError> {
    if !refused_for_shared_memory(e) {
        return Ok(0);
    }
    let pids = supervisor.unit_pids(UNIT).await?;
    let ended = end_tenant_sessions(&pids);
    if ended > 0 {
        tracing::warn!(
            ended,
            "PostgreSQL refuses nxd's connections for lack of shared memory (a tenant's locks can fill its lock table): ended every tenant's session (SIGTERM) to reach it"
        );
    }
    Ok(ended)
}

/// Sends SIGTERM (PostgreSQL's "terminate the session", as `pg_terminate_backend`) to every
/// client session of `pids` (the cluster's processes as nxd sees them) whose user is not
/// nxd's ([`OS_USER`]): a tenant's. A client session's process title is `postgres: <user>
/// <database> [local] <activity>` (postgres(1); the cluster listens on its socket only), so
/// background processes (`postgres: checkpointer`, `postgres: parallel worker for PID <n>`)
/// are never ones; and every autovacuum worker in a database not nxd's
/// ([`STATE_DATABASE`]) but NX's (`nx...`: `postgres: autovacuum worker <db>`), which runs
/// the database owner's expression-index functions (attacker s15 A3: one filled the lock
/// table). For when PostgreSQL takes no new
/// connection, not even the superuser's, so SQL cannot say whose session holds what (attacker
/// s13 H7: a tenant's locks filling the lock table while nxd was away kept nxd from starting,
/// and so from ending them). How many were signalled.
fn end_tenant_sessions(pids: &[u32]) -> usize {
    pids.iter()
        .filter(|&&pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let title = String::from_utf8_lossy(&cmdline);
            let fields: Vec<&str> = title
                .strip_prefix("postgres: ")
                .unwrap_or("")
                .split(|c: char| c.is_whitespace() || c == '\0')
                .filter(|f| !f.is_empty())
                .collect();
            match fields.as_slice() {
                ["autovacuum", "worker", database, ..] => {
                    *database != STATE_DATABASE && database.starts_with("nx")
                }
                [user, _database, "[local]", ..] => *user != OS_USER,
                _ => false,
            }
        })
        .filter(|&&pid| {
            i32::try_from(pid).is_ok_and(|pid| {
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                )
                .is_ok()
            })
        })
        .count()
}

/// A process's `/proc/<pid>/status` (proc(5)).
struct ProcStatus(String);

impl ProcStatus {
    /// `None` for a process that ended.
    fn read(pid: u32) -> Option<Self> {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .map(Self)
    }

    /// The value of the line `name:`, trimmed.
    fn field(&self, name: &str) -> Option<&str> {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    }

    /// The pid in the innermost PID namespace (the last of `NSpid`), PostgreSQL's.
    fn postgres_pid(&self) -> Option<i32> {
        self.field("NSpid")?.split_whitespace().last()?.parse().ok()
    }
}

/// After the embedded manager of `state_dir` was killed (`nxd manager-stop`): removes the
/// System V shared-memory segment its PostgreSQL could not remove (see `shared_memory`). Whether
/// one was removed.
///
/// # Errors
/// shmctl(2)'s error when the recorded segment is orphaned but cannot be removed.
pub fn forget_killed_cluster(state_dir: &Path) -> std::io::Result<bool> {
    shared_memory::remove_orphaned(&state_dir.join("postgres").join("data"))
}
