//! nxd's configuration file (TOML). Every field has a default, so an empty file is a working
//! single-host setup; `orchestrator/nxd.example.toml` documents each one and is parsed by a test.

pub use nx_api::Limits;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where nxd keeps artifacts, deployment data, its token and (embedded) its database.
    pub state_dir: PathBuf,
    /// The JSON API (used by `nx`).
    pub api_listen: SocketAddr,
    /// Open API connections beyond this are closed as soon as they are accepted; those already
    /// open keep working.
    pub api_max_connections: usize,
    /// Of those, the most one peer may hold open (an IPv4 address, or an IPv6 /64); beyond it
    /// its new connections are closed as soon as they are accepted, so that one client cannot
    /// hold every connection and lock the others out (at or above `api_max_connections`: no
    /// share of its own).
    pub api_max_connections_per_address: usize,
    /// Of `api_max_connections`, this many are kept for the root token (as PostgreSQL's
    /// `superuser_reserved_connections`): a connection accepted while no more than this many
    /// are free serves only the root token's requests, others get 503 and the connection is
    /// closed, so that clients holding connections (log follows) cannot lock the operator out.
    /// Below `api_max_connections`.
    pub api_reserved_connections: usize,
    /// The most requests one deploy token may have under way at once, on every route: a
    /// request counts from its authentication until its answer's body is sent or dropped (an
    /// upload whose body is coming, a log read or follow, a task's events); beyond it, 429
    /// (tasks also have `tasks.max_concurrent_per_token`). So that one token cannot hold every
    /// API connection (attacker s12 H6). The root token has no such cap. Read under its
    /// former name `api_max_streams_per_token` too (it counted log follows only).
    #[serde(alias = "api_max_streams_per_token")]
    pub api_max_requests_per_token: usize,
    /// Seconds a client has to send a request's head (request line and header fields) once nxd
    /// starts reading it, on a new connection or between keep-alive requests; a connection that
    /// has not sent it by then is closed (as the router's `router.head_timeout_secs`).
    pub api_head_timeout_secs: u64,
    /// Seconds a request's body may send nothing while nxd waits for it (as nginx's
    /// `client_body_timeout`); then the request ends with 408 and its connection is closed, and
    /// an upload's temp file goes. So that a body that never comes cannot hold a connection
    /// (attacker s12 H6).
    pub api_body_timeout_secs: u64,
    /// Seconds an answer may wait for the client to take any of it (its receive window full, as
    /// nginx's `send_timeout`); then the answer is dropped and the connection closed, which gives
    /// its token's request back. So that an answer never read cannot hold a connection (attacker
    /// s12 H6). A log follow with nothing new to send is not waiting on the client.
    pub api_send_timeout_secs: u64,
    /// `GET /metrics` without a token (Prometheus text format), e.g. `127.0.0.1:9770`. Unset: the
    /// series are only on the API, for the root token.
    pub metrics_listen: Option<SocketAddr>,
    /// The router: `Host: <deployment>.<sandbox>.<base_domain>` and `Host: <sandbox>.<base_domain>`.
    pub router_listen: SocketAddr,
    /// The domain under which preview and production URLs live.
    pub base_domain: String,
    /// The bearer token file (mode 0600). Created with a random token when missing.
    /// Default: `<state_dir>/token`.
    pub token_file: Option<PathBuf>,
    /// PostgreSQL for nxd's own state. Absent: nxd runs its own cluster in `<state_dir>/postgres`.
    pub database_url: Option<String>,
    pub ports: PortRange,
    pub sandbox: SandboxDefaults,
    pub limits: Limits,
    pub systemd: SystemdConfig,
    pub logs: LogsConfig,
    pub bundles: BundlesConfig,
    pub databases: DatabasesConfig,
    pub tasks: TasksConfig,
    pub microvm: MicrovmConfig,
    pub router: crate::router::RouterConfig,
    pub sftp: SftpConfig,
    pub tls: crate::tls::TlsConfig,
    pub network: crate::network::NetworkConfig,
    /// Usage sampling and prices (`nx usage`).
    pub usage: crate::usage::UsageConfig,
    /// The most volumes a sandbox may have, and the largest (`nx volume create`).
    pub volumes: crate::volumes::VolumesConfig,
    /// The content store's bounds: what one owner may hold, and when unused content goes.
    pub store: StoreConfig,
}

/// The content store (`<state_dir>/artifacts`, `blobs`, `bundles`, `executables`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The most stored content one owner (a sandbox; a token for every sandbox that may not
    /// push) may hold, in MiB: the sizes of the programs and bundles' files it uploaded or had
    /// pushed to it, each once. An upload past it gets 507.
    pub max_owner_mb: u64,
    /// Seconds after its last use (an upload, a push or a task naming it, a bundle holding it)
    /// that content no deployment runs is deleted by nxd's collection, which runs every
    /// `unused_grace_secs / 2` (at least every second, at most every 5 minutes).
    pub unused_grace_secs: u64,
    /// The most an image's layers may hold unpacked (gunzipped), in MiB: what `podman load`
    /// writes to Podman's storage on the state directory's disk (attacker s11 G6: a 2 MB
    /// archive of a gzipped layer of zeros put 1 GiB there). A larger image is refused (422)
    /// before anything is stored; so is one whose layers grow past 64 times the archive's size
    /// (at least 256 MiB).
    pub max_image_unpacked_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_owner_mb: 10_240,
            unused_grace_secs: 3600,
            max_image_unpacked_mb: 8192,
        }
    }
}

impl StoreConfig {
    /// How often the collection runs: half the grace period, 1 s to 5 min.
    pub fn collect_every(&self) -> std::time::Duration {
        std::time::Duration::from_secs((self.unused_grace_secs / 2).clamp(1, 300))
    }
}

/// The SFTP server: uploads without the CLI (the SSH user is the sandbox's name; public keys
/// from `nx keys add`). Off unless `listen` is set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SftpConfig {
    /// Where the SFTP server listens, e.g. `0.0.0.0:2222`. Unset: no SFTP server.
    pub listen: Option<SocketAddr>,
    /// The largest file an SFTP upload may be, in MiB; a larger one is refused while it arrives.
    pub max_upload_mb: u64,
    /// Files and listings one SFTP session may hold open at once (each open upload holds a
    /// file descriptor of nxd's and a temp file); beyond it an open is refused until one is
    /// closed.
    pub max_open_handles: usize,
    /// SFTP connections open at once; one more is closed as it is accepted.
    pub max_connections: usize,
    /// Of those, one client's (an IPv4 address, an IPv6 /64).
    pub max_connections_per_address: usize,
    /// Of those, connections that have not authenticated yet (OpenSSH's `MaxStartups`); when
    /// as many are open, a new one takes the place of the oldest of the client holding the
    /// most, so that a flood without a key never holds every connection. At most
    /// `max_connections`.
    pub max_startups: usize,
    /// Seconds a connection may take to authenticate before it is closed (OpenSSH's
    /// `LoginGraceTime`).
    pub login_grace_secs: u64,
}

impl Default for SftpConfig {
    fn default() -> Self {
        Self {
            listen: None,
            max_upload_mb: 1024,
            max_open_handles: 16,
            max_connections: 256,
            max_connections_per_address: 16,
            max_startups: 64,
            login_grace_secs: 30,
        }
    }
}

/// Deployments' logs (their size: `limits.log_max_mb`, per push `nx push --log-max`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// Rotated files kept beside `output.log` (and the router's `router.log`, the database
    /// gate's `gate.log`); each file rotates at `log_max_mb / (keep + 1)`.
    /// 0: `output.log` is emptied when full.
    pub keep: u32,
}

impl Default for LogsConfig {
    fn default() -> Self {
        Self { keep: 4 }
    }
}

/// Bundles (`nx push ./dir`, `nx push app.tar.gz`): the most one may hold.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BundlesConfig {
    /// All of a bundle's files together, in MiB (also the largest single file).
    pub max_mb: u64,
    /// Files and links in one bundle.
    pub max_files: u64,
}

impl Default for BundlesConfig {
    fn default() -> Self {
        Self {
            max_mb: 2048,
            max_files: 100_000,
        }
    }
}

impl BundlesConfig {
    /// The limits `nx_artifact::bundle` checks.
    pub fn limits(&self) -> nx_artifact::bundle::BundleLimits {
        nx_artifact::bundle::BundleLimits {
            max_mb: self.max_mb,
            max_files: self.max_files,
        }
    }
}

/// The `microvm` backend: a deployment's static binary as the only program of a VM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MicrovmConfig {
    /// The guest kernel: `vmlinux` (uncompressed) and `modules/` (virtio modules and `order`),
    /// as `orchestrator/fetch-kernel.sh` lays them out from Debian's linux-image package.
    /// Unset: nxd has no microvm backend.
    pub kernel_dir: Option<PathBuf>,
    /// `nx-vm-init`, the guest's PID 1 (a static binary from the workspace).
    pub init: PathBuf,
    /// The VMM that runs guests. Only `qemu` runs on a plain Linux host; `cloud-hypervisor`
    /// and `firecracker` need the tap devices a NixOS host (microvm.nix) provides.
    pub vmm: Vmm,
    /// `auto` probes KVM and TCG once and keeps the faster one that boots; or `kvm`, `tcg`.
    pub accel: AccelMode,
    /// Guests booted ahead for microVM tasks (QEMU), their init waiting for a task: a task of
    /// `tasks.limits`' memory takes one and starts without a boot; each serves one task and is
    /// destroyed with it; refilled in the background. Each waiting guest holds its memory.
    /// 0 (the default): every microVM task boots its own guest; a host that runs microVM tasks
    /// turns it on (1 or more), since each waiting guest holds its RAM and idles its vCPU.
    pub pool_size: usize,
    /// The pool restores its guests from a snapshot of one booted guest that waits for its
    /// task (QEMU's migration to a file, made once per nxd start and guest size) instead of
    /// booting each; false: each is booted. Only with `vmm = "qemu"`.
    pub snapshot: bool,
}

impl Default for MicrovmConfig {
    fn default() -> Self {
        Self {
            kernel_dir: None,
            init: PathBuf::from("/usr/lib/nx/nx-vm-init"),
            vmm: Vmm::Qemu,
            accel: AccelMode::Auto,
            pool_size: 0,
            snapshot: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, strum::Display)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum Vmm {
    Qemu,
    CloudHypervisor,
    Firecracker,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AccelMode {
    Auto,
    Kvm,
    Tcg,
}

/// Tasks: programs run once, in a fresh sandbox with no network, time-limited.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TasksConfig {
    /// Task units started ahead and kept waiting, so that a task starts without paying for the
    /// unit and the launcher; refilled in the background. The fewest the pool keeps.
    pub pool_size: usize,
    /// The most units the pool keeps when tasks come faster than it refills: each task that
    /// finds it empty makes it keep one more, up to this; after 30 s with none it keeps one
    /// fewer again, down to `pool_size`. Below `pool_size` it counts as `pool_size` (a fixed
    /// pool). Unset: [`POOL_GROWTH`] times `pool_size` (see [`TasksConfig::pool_max`]), so a
    /// host with `pool_size = 0` starts every task cold unless it sets this.
    pub pool_max: Option<usize>,
    /// Tasks run as uids `uid_base` .. `uid_base + 65535`, a different one for each task in turn.
    pub uid_base: u32,
    /// A task's timeout when the request names none.
    pub default_timeout_secs: u64,
    /// The longest timeout a request may ask for.
    pub max_timeout_secs: u64,
    /// The most tasks one caller (a deploy token, or the root token) runs at once; one more
    /// gets 429 until one of them ends. All tasks share `systemd.tasks_slice_tasks_max`, and
    /// each may hold `limits.tasks_max` of it: this many times that is what one caller may take
    /// (the defaults: 16 × 64 = 1024 of 2048), so keep it below the slice's to leave room for
    /// other callers' tasks.
    pub max_concurrent_per_token: usize,
    /// A task's limits when the request names none (`memory_max_mb` may be asked per task).
    pub limits: Limits,
}

/// How far demand grows the task pool when `tasks.pool_max` is unset: up to this many times
/// `tasks.pool_size` (the default pool of 2 grows to 8, as four clients running tasks back to
/// back need on a 2-core host; a pool of 0 stays 0).
pub const POOL_GROWTH: usize = 4;

impl TasksConfig {
    /// The most units the warm pool keeps: `pool_max` if set, else [`POOL_GROWTH`] times
    /// `pool_size`; never fewer than `pool_size`.
    pub fn pool_max(&self) -> usize {
        self.pool_max
            .unwrap_or(self.pool_size.saturating_mul(POOL_GROWTH))
            .max(self.pool_size)
    }
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self {
            pool_size: 2,
            pool_max: None,
            uid_base: 300_000,
            default_timeout_secs: 30,
            max_timeout_secs: 3600,
            max_concurrent_per_token: 16,
            limits: Limits {
                memory_max_mb: 256,
                tasks_max: 64,
                ..Limits::default()
            },
        }
    }
}

/// Every sandbox's own PostgreSQL database and role, on the host's cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabasesConfig {
    /// A superuser connection to the cluster that holds the sandboxes' databases.
    /// Default: the embedded cluster (which also holds nxd's state).
    pub admin_url: Option<String>,
    /// The directory of that cluster's unix socket, which each sandbox's own socket (bound
    /// into its deployments at /run/postgresql) forwards to. Default: the embedded cluster's.
    pub socket_dir: Option<PathBuf>,
    /// The cluster's port (it names the socket file `.s.PGSQL.<port>`).
    pub port: u16,
    /// Backups kept per sandbox on the host; older ones are deleted.
    pub backup_retention: usize,
    /// Scheduled backups of every sandbox, every this many seconds; 0 turns them off.
    pub backup_interval_secs: u64,
    /// Each sandbox role's `CONNECTION LIMIT`, in percent of the cluster's slots that are not
    /// reserved for superusers (`max_connections - superuser_reserved_connections`); at least 1.
    pub connection_limit_percent: u32,
    /// `statement_timeout` of sandbox roles, in seconds; 0: none.
    pub statement_timeout_secs: u64,
    /// `idle_in_transaction_session_timeout` of sandbox roles, in seconds; 0: none. A session
    /// may lift it (`SET`); nxd's runaway watch ends one idle in a transaction past it anyway.
    pub idle_in_transaction_timeout_secs: u64,
    /// The longest nxd's restore of a dump may run (`nx db restore`, and a `--db-branch` copy
    /// of production through pg_dump | pg_restore), in seconds: past it the restore's session
    /// is ended and the restore fails, nothing swapped. The dump's SQL is its tenant's (a CHECK
    /// constraint's or a default's function may sleep) and that session has no statement
    /// timeout, since a restore takes as long as its data. 0: none.
    pub restore_timeout_secs: u64,
    /// `temp_file_limit` of sandbox roles, in MiB: the temporary files one session may hold
    /// (sorts and hashes past `work_mem`); superuser-only, so a role cannot lift it. 0: none.
    pub temp_file_limit_mb: u64,
    /// A tenant's backend whose memory (`RssAnon` and the dynamic shared memory segments it
    /// maps: see `embedded_db::backend_memory`) passes this, in MiB, is ended
    /// by nxd (embedded cluster only; a role may `SET work_mem` as high as it likes). 0: none.
    pub backend_memory_max_mb: u64,
    /// A sandbox's backends together (of its own role and of its preview branches' roles), in
    /// MiB of memory as for `backend_memory_max_mb`: past it nxd ends the sandbox's largest
    /// backends until they fit
    /// (embedded cluster only). All tenants' backends together are held to three quarters of
    /// `memory_max_mb` the same way, the rest left to shared buffers and nxd's own sessions, so
    /// that no set of sessions reaches the unit's `MemoryMax` (where the kernel kills one and
    /// PostgreSQL restarts every session of every tenant). 0: none.
    pub sandbox_memory_max_mb: u64,
    /// Each new sandbox's databases together (production's, its preview branches', those
    /// restores and swaps keep), in MiB: the size of the disk their tablespace is on (a sparse
    /// ext4 image, see `databases::disk`; embedded cluster only). A write past it fails in its
    /// session with "No space left on device"; other tenants and nxd go on. 0: no cap.
    pub max_size_mb: u64,
    /// systemd `MemoryMax` of the embedded cluster's unit (`nx-postgres.service`), in MiB:
    /// all of PostgreSQL, nxd's state included. 0: none. The cluster's own `/dev/shm` (its
    /// dynamic shared memory) is a tmpfs of half of it (2,048 MiB for 0).
    pub memory_max_mb: u64,
    /// The uid (and gid) the database gate (`nx-db-gate.service`) runs as when nxd runs as
    /// root: one no deployment, task or host user has and that the cluster's `pg_ident.conf`
    /// does not map, so the gate's own connections to the cluster can never be a superuser's
    /// (PostgreSQL's `peer` authentication maps root to `postgres`). The embedded cluster's
    /// socket directory is this group's. When nxd runs as another user, the gate runs as it.
    pub gate_uid: u32,
}

impl DatabasesConfig {
    /// Whether the sandboxes' databases are on the embedded cluster: unless both `admin_url`
    /// and `socket_dir` name another.
    pub fn sandboxes_on_embedded_cluster(&self) -> bool {
        self.admin_url.is_none() || self.socket_dir.is_none()
    }
}

impl Default for DatabasesConfig {
    fn default() -> Self {
        Self {
            admin_url: None,
            socket_dir: None,
            port: 5432,
            backup_retention: 7,
            backup_interval_secs: 0,
            connection_limit_percent: 25,
            statement_timeout_secs: 300,
            idle_in_transaction_timeout_secs: 60,
            restore_timeout_secs: 600,
            temp_file_limit_mb: 2048,
            backend_memory_max_mb: 1024,
            sandbox_memory_max_mb: 1536,
            memory_max_mb: 4096,
            max_size_mb: 10240,
            gate_uid: 199_999,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PortRange {
    /// First port handed to a deployment (inclusive).
    pub start: u16,
    /// Last port handed to a deployment (inclusive).
    pub end: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxDefaults {
    /// Deployments run as uid `uid_base + (port - ports.start)`: one unprivileged uid each.
    pub uid_base: u32,
    /// How long a deployment may take to become ready (accept connections on its port, or
    /// answer `health_path`) when neither its push nor its sandbox's settings say.
    pub ready_timeout_secs: u64,
    /// The longest readiness timeout a push (`nx push --ready-timeout`) or a sandbox's settings
    /// (`nx sandbox set --ready-timeout`) may ask for; longer ones get a 400.
    pub max_ready_timeout_secs: u64,
    /// The health check's path of a deployment whose push and sandbox name none: when set,
    /// ready also needs `GET <health_path>` to answer below 400, and failing it
    /// `health_failure_threshold` times in a row restarts the deployment.
    pub health_path: Option<String>,
    /// Seconds between a deployment's health checks, unless its push or sandbox says.
    pub health_interval_secs: u64,
    /// Seconds a health check's answer may take, unless its push or sandbox says.
    pub health_timeout_secs: u64,
    /// Failed health checks in a row that restart a deployment, unless its push or sandbox
    /// says.
    pub health_failure_threshold: u32,
    /// A preview (not production, not pinned with `nx pin`) with no request for this many
    /// seconds is removed, unless its sandbox says (`nx sandbox set --preview-ttl`); 0: never.
    pub preview_ttl_secs: u64,
    /// Seconds systemd waits before restarting a deployment that failed.
    pub restart_delay_secs: u64,
    /// The arguments of a deployment or task, all together, in bytes (each with its NUL).
    pub max_args_bytes: usize,
    /// The `-e` variables of a deployment or task, all together, in bytes (`KEY=value\0`).
    pub max_env_bytes: usize,
    /// The largest `limits.nofile` a push may ask for (`RLIMIT_NOFILE`; the kernel's own
    /// ceiling is /proc/sys/fs/nr_open).
    pub max_nofile: u64,
    /// The largest log cap (`limits.log_max_mb`, `nx push --log-max`) a push may ask for, in
    /// MiB: one deployment's log, rotated files included, on the state directory's disk.
    pub max_log_mb: u64,
    /// The most deployments one sandbox may have (running, stopped or failed: each holds a
    /// slot of `[ports]` until `nx rm`); a push past it gets a 409 naming the sandbox's
    /// oldest ones to remove.
    pub max_deployments: u64,
    /// Keep a standby per sandbox that pushes: a deployment started ahead of the next push
    /// (a unit, its network namespace, `/data` and bubblewrap, waiting in nx-vm-init, which
    /// `[microvm] init` names), which a push of a single static binary with the sandbox's
    /// default limits takes, so that its program starts without waiting for any of those
    /// (see README "Standbys"). Each holds a slot of `[ports]` and a few MiB of memory.
    pub standby: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SystemdMode {
    /// The system manager when one answers on the system bus, else the embedded one.
    Auto,
    /// The host's systemd (PID 1) on the system bus.
    System,
    /// A private systemd manager nxd starts in its own mount and pid namespace.
    Embedded,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SystemdConfig {
    pub mode: SystemdMode,
    /// Parent slice of every deployment and task unit (the control plane's units run in
    /// `nxd.slice`, with a higher `CPUWeight`).
    pub slice: String,
    /// `TasksMax` of that slice: processes and threads of all tenants together; keep it below
    /// the host's `pid_max`.
    pub slice_tasks_max: u64,
    /// `TasksMax` of each sandbox's own slice inside it (`nx-<sandbox>.slice`, a `-` of the
    /// name as `_`): the processes and threads of all of one sandbox's deployments together,
    /// and so the most one deployment may ask for (`nx push --tasks`). [`SANDBOXES_AT_THEIR_CAP`]
    /// sandboxes at it, with every task at `tasks_slice_tasks_max` and one more deployment at
    /// `limits.tasks_max`, fit in `slice_tasks_max`, so that sandboxes at their limit leave room
    /// for every other sandbox's pushes and for tasks.
    pub sandbox_tasks_max: u64,
    /// `TasksMax` of the slice every task (`nx run-task`) runs in, inside it
    /// ([`crate::supervisor::TASKS_SLICE`] of `slice`): the processes and threads of all tasks
    /// together. Below `slice_tasks_max`, so that concurrent tasks at their limit leave room for
    /// deployments and pushes; at least `tasks.limits.tasks_max`.
    pub tasks_slice_tasks_max: u64,
    /// `MemoryMax` of that slice, in percent of the host's memory.
    pub slice_memory_max_percent: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/nx"),
            api_listen: "127.0.0.1:7700".parse().expect("literal"),
            api_max_connections: 4096,
            api_max_connections_per_address: 256,
            api_reserved_connections: 16,
            api_max_requests_per_token: 32,
            api_head_timeout_secs: 10,
            api_body_timeout_secs: 60,
            api_send_timeout_secs: 60,
            metrics_listen: None,
            router_listen: "127.0.0.1:7780".parse().expect("literal"),
            base_domain: "nx.localhost".into(),
            token_file: None,
            database_url: None,
            ports: PortRange::default(),
            sandbox: SandboxDefaults::default(),
            limits: Limits::default(),
            systemd: SystemdConfig::default(),
            logs: LogsConfig::default(),
            bundles: BundlesConfig::default(),
            databases: DatabasesConfig::default(),
            tasks: TasksConfig::default(),
            microvm: MicrovmConfig::default(),
            router: crate::router::RouterConfig::default(),
            sftp: SftpConfig::default(),
            tls: crate::tls::TlsConfig::default(),
            network: crate::network::NetworkConfig::default(),
            usage: crate::usage::UsageConfig::default(),
            volumes: crate::volumes::VolumesConfig::default(),
            store: StoreConfig::default(),
        }
    }
}

impl Default for PortRange {
    fn default() -> Self {
        Self {
            start: 20000,
            end: 20999,
        }
    }
}

impl Default for SandboxDefaults {
    fn default() -> Self {
        Self {
            uid_base: 200_000,
            ready_timeout_secs: 15,
            max_ready_timeout_secs: 600,
            health_path: None,
            health_interval_secs: 10,
            health_timeout_secs: 2,
            health_failure_threshold: 3,
            preview_ttl_secs: 7 * 24 * 3600,
            restart_delay_secs: 1,
            max_args_bytes: 131_072,
            max_env_bytes: 131_072,
            max_nofile: 1_048_576,
            max_log_mb: 1024,
            max_deployments: 100,
            standby: true,
        }
    }
}

/// How many sandboxes at their `systemd.sandbox_tasks_max` the tenants' `slice_tasks_max`
/// holds with every task at `tasks_slice_tasks_max` and one more deployment at the default
/// `limits.tasks_max` ([`Config::validate`] refuses less): fork bombs in this many sandboxes
/// (two tenants, or one deploy token for two sandboxes) leave room for every other sandbox's
/// pushes and for tasks (newcomer17 N10: two sandboxes at 4,096 each filled all 8,192).
pub const SANDBOXES_AT_THEIR_CAP: u64 = 2;

impl Default for SystemdConfig {
    fn default() -> Self {
        Self {
            mode: SystemdMode::Auto,
            slice: "nx.slice".into(),
            slice_tasks_max: 8192,
            sandbox_tasks_max: 2048,
            tasks_slice_tasks_max: 2048,
            slice_memory_max_percent: 80,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ports.start == 0 || self.ports.end < self.ports.start {
            return Err(ConfigError::Invalid(format!(
                "ports.start ({}) must be above 0 and not above ports.end ({})",
                self.ports.start, self.ports.end
            )));
        }
        if self.sandbox.uid_base < 1000 {
            return Err(ConfigError::Invalid(
                "sandbox.uid_base must be 1000 or more: deployments run as unprivileged uids"
                    .into(),
            ));
        }
        let health = crate::api::HealthCheck {
            path: self.sandbox.health_path.clone(),
            interval_secs: Some(self.sandbox.health_interval_secs),
            timeout_secs: Some(self.sandbox.health_timeout_secs),
            failure_threshold: Some(self.sandbox.health_failure_threshold),
        };
        if let Err(e) = health.check("sandbox.health") {
            // The keys are sandbox.health_path, sandbox.health_interval_secs, ...
            let e = e
                .to_string()
                .replacen("sandbox.health.", "sandbox.health_", 1);
            return Err(ConfigError::Invalid(e));
        }
        if self.sandbox.preview_ttl_secs > crate::api::health::MAX_SECONDS {
            return Err(ConfigError::Invalid(format!(
                "sandbox.preview_ttl_secs ({}) is more than 100 years: give at most {} s, or 0 for never",
                self.sandbox.preview_ttl_secs,
                crate::api::health::MAX_SECONDS
            )));
        }
        let gate = self.databases.gate_uid;
        let deployments = self.sandbox.uid_base
            ..self.sandbox.uid_base + u32::from(self.ports.end - self.ports.start) + 1;
        let tasks = self.tasks.uid_base..self.tasks.uid_base.saturating_add(65_536);
        if gate < 1000 || deployments.contains(&gate) || tasks.contains(&gate) {
            return Err(ConfigError::Invalid(format!(
                "databases.gate_uid ({gate}) must be 1000 or more and outside the deployments' uids ({}..{}) and the tasks' ({}..{}): the database gate runs as a uid of its own",
                deployments.start, deployments.end, tasks.start, tasks.end
            )));
        }
        if self.limits.log_max_mb == 0 || self.limits.log_max_mb > self.sandbox.max_log_mb {
            return Err(ConfigError::Invalid(format!(
                "limits.log_max_mb ({}) must be 1 to sandbox.max_log_mb ({}): it is what a push that names no --log-max gets",
                self.limits.log_max_mb, self.sandbox.max_log_mb
            )));
        }
        if self.store.max_owner_mb == 0
            || self.store.unused_grace_secs == 0
            || self.store.max_image_unpacked_mb == 0
        {
            return Err(ConfigError::Invalid(format!(
                "store.max_owner_mb ({}), store.unused_grace_secs ({}) and store.max_image_unpacked_mb ({}) must be 1 or more: the most one owner may store, how long unused content stays, and the most an image may unpack to",
                self.store.max_owner_mb, self.store.unused_grace_secs, self.store.max_image_unpacked_mb
            )));
        }
        if self.sandbox.max_deployments == 0 {
            return Err(ConfigError::Invalid(
                "sandbox.max_deployments must be 1 or more: it is how many deployments one sandbox may have".into(),
            ));
        }
        if self.tasks.uid_base < 1000 {
            return Err(ConfigError::Invalid(
                "tasks.uid_base must be 1000 or more: tasks run as unprivileged uids".into(),
            ));
        }
        if self.tasks.max_concurrent_per_token == 0 {
            return Err(ConfigError::Invalid(
                "tasks.max_concurrent_per_token must be 1 or more: it is how many tasks one token may run at once".into(),
            ));
        }
        if self.tasks.default_timeout_secs == 0
            || self.tasks.default_timeout_secs > self.tasks.max_timeout_secs
        {
            return Err(ConfigError::Invalid(format!(
                "tasks.default_timeout_secs ({}) must be above 0 and not above tasks.max_timeout_secs ({})",
                self.tasks.default_timeout_secs, self.tasks.max_timeout_secs
            )));
        }
        if !self.state_dir.is_absolute() {
            return Err(ConfigError::Invalid(format!(
                "state_dir {} must be an absolute path",
                self.state_dir.display()
            )));
        }
        if self.databases.admin_url.is_some() != self.databases.socket_dir.is_some() {
            return Err(ConfigError::Invalid(
                "databases.admin_url and databases.socket_dir go together: name the cluster and where its socket is".into(),
            ));
        }
        if self.databases.backup_retention == 0 {
            return Err(ConfigError::Invalid(
                "databases.backup_retention must be at least 1".into(),
            ));
        }
        if !(1..=100).contains(&self.databases.connection_limit_percent) {
            return Err(ConfigError::Invalid(format!(
                "databases.connection_limit_percent ({}) must be 1 to 100",
                self.databases.connection_limit_percent
            )));
        }
        self.router.validate().map_err(ConfigError::Invalid)?;
        self.tls.validate().map_err(ConfigError::Invalid)?;
        crate::tcp::check_range(self).map_err(ConfigError::Invalid)?;
        self.usage.validate().map_err(ConfigError::Invalid)?;
        self.volumes.validate().map_err(ConfigError::Invalid)?;
        if self.api_max_connections == 0 {
            return Err(ConfigError::Invalid(
                "api_max_connections must be at least 1".into(),
            ));
        }
        if self.api_max_connections_per_address == 0 {
            return Err(ConfigError::Invalid(
                "api_max_connections_per_address must be at least 1".into(),
            ));
        }
        if self.api_reserved_connections >= self.api_max_connections {
            return Err(ConfigError::Invalid(format!(
                "api_reserved_connections ({}) must be below api_max_connections ({}): the rest serve every token",
                self.api_reserved_connections, self.api_max_connections
            )));
        }
        if self.api_max_requests_per_token == 0 {
            return Err(ConfigError::Invalid(
                "api_max_requests_per_token must be at least 1".into(),
            ));
        }
        let timeouts = [
            ("api_head_timeout_secs", self.api_head_timeout_secs),
            ("api_body_timeout_secs", self.api_body_timeout_secs),
            ("api_send_timeout_secs", self.api_send_timeout_secs),
        ];
        if let Some((key, _)) = timeouts.iter().find(|(_, secs)| *secs == 0) {
            return Err(ConfigError::Invalid(format!("{key} must be at least 1")));
        }
        if !(1..=100).contains(&self.systemd.slice_memory_max_percent)
            || self.systemd.slice_tasks_max == 0
        {
            return Err(ConfigError::Invalid(format!(
                "systemd.slice_memory_max_percent ({}) must be 1 to 100 and systemd.slice_tasks_max ({}) above 0",
                self.systemd.slice_memory_max_percent, self.systemd.slice_tasks_max
            )));
        }
        let systemd = &self.systemd;
        // Each share of nx.slice, and the one limit that must fit in it.
        for (share_key, share, key, tasks_max) in [
            (
                "systemd.sandbox_tasks_max",
                systemd.sandbox_tasks_max,
                "limits.tasks_max",
                self.limits.tasks_max,
            ),
            (
                "systemd.tasks_slice_tasks_max",
                systemd.tasks_slice_tasks_max,
                "tasks.limits.tasks_max",
                self.tasks.limits.tasks_max,
            ),
        ] {
            if !(nx_api::checks::MIN_TASKS..systemd.slice_tasks_max).contains(&share) {
                return Err(ConfigError::Invalid(format!(
                    "{share_key} ({share}) must be {} or more and below systemd.slice_tasks_max ({}): one share at its limit must leave room for the others' pushes and tasks",
                    nx_api::checks::MIN_TASKS,
                    systemd.slice_tasks_max
                )));
            }
            if tasks_max > share {
                return Err(ConfigError::Invalid(format!(
                    "{key} ({tasks_max}) is above {share_key} ({share}), the most one may have; lower it or raise that"
                )));
            }
        }
        // Newcomer17 N10: two sandboxes' fork bombs at a cap of half the whole took all of it.
        let held = SANDBOXES_AT_THEIR_CAP * systemd.sandbox_tasks_max
            + systemd.tasks_slice_tasks_max
            + self.limits.tasks_max;
        if held > systemd.slice_tasks_max {
            return Err(ConfigError::Invalid(format!(
                "systemd.slice_tasks_max ({}) must hold {SANDBOXES_AT_THEIR_CAP} sandboxes at systemd.sandbox_tasks_max ({}), every task at systemd.tasks_slice_tasks_max ({}) and one more deployment at limits.tasks_max ({}): {held} in all, so that fork bombs in {SANDBOXES_AT_THEIR_CAP} sandboxes leave room for the others' pushes and tasks; lower systemd.sandbox_tasks_max or raise systemd.slice_tasks_max (below the kernel's pid_max)",
                systemd.slice_tasks_max,
                systemd.sandbox_tasks_max,
                systemd.tasks_slice_tasks_max,
                self.limits.tasks_max
            )));
        }
        if self.sftp.max_upload_mb == 0 {
            return Err(ConfigError::Invalid(
                "sftp.max_upload_mb must be at least 1".into(),
            ));
        }
        for (key, value) in [
            ("max_open_handles", self.sftp.max_open_handles),
            ("max_connections", self.sftp.max_connections),
            (
                "max_connections_per_address",
                self.sftp.max_connections_per_address,
            ),
            ("max_startups", self.sftp.max_startups),
            ("login_grace_secs", self.sftp.login_grace_secs as usize),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!(
                    "sftp.{key} must be at least 1"
                )));
            }
        }
        if self.sftp.max_startups > self.sftp.max_connections {
            return Err(ConfigError::Invalid(format!(
                "sftp.max_startups ({}) must be at most sftp.max_connections ({}): it is a part of them",
                self.sftp.max_startups, self.sftp.max_connections
            )));
        }
        if !self.systemd.slice.ends_with(".slice") {
            return Err(ConfigError::Invalid(format!(
                "systemd.slice {:?} must end in .slice",
                self.systemd.slice
            )));
        }
        Ok(())
    }

    pub fn token_file(&self) -> PathBuf {
        self.token_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_and_matches_the_defaults_it_states() {
        let example = include_str!("../../nxd.example.toml");
        let config: Config = toml::from_str(example).expect("example parses");
        config.validate().unwrap();
        assert_eq!(config.base_domain, "nx.example.com");
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.systemd.mode, SystemdMode::Auto);
        assert_eq!(config.ports, PortRange::default());
    }

    /// Renders services.nx option values with the NixOS module's own renderer
    /// (modules/nxd-config.nix, evaluated by nix-instantiate).
    fn render_with_the_nixos_module(overrides: &str) -> serde_json::Value {
        let modules = concat!(env!("CARGO_MANIFEST_DIR"), "/../../modules");
        let expr = format!(
            "let d = import {modules}/nxd-defaults.nix; in (import {modules}/nxd-config.nix) (d // {overrides})"
        );
        let out = std::process::Command::new("nix-instantiate")
            .args(["--eval", "--strict", "--json", "--option", "substituters", ""])
            .args(["--option", "build-users-group", "", "-E", &expr])
            .output()
            .expect("nix-instantiate is needed for this test: apt-get install --no-install-recommends nix-bin");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn keys(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        if let serde_json::Value::Object(map) = v {
            for (k, v) in map {
                let path = format!("{prefix}{k}");
                out.push(path.clone());
                keys(v, &format!("{path}."), out);
            }
        }
        out.sort();
    }

    #[test]
    fn the_nixos_module_renders_exactly_what_nxd_parses() {
        // The module's defaults are nxd's defaults.
        let rendered = render_with_the_nixos_module("{ }");
        let parsed: Config =
            serde_json::from_value(rendered).expect("nxd parses the module's file");
        assert_eq!(parsed, Config::default());
        // With every optional option set, module keys and nxd keys are the same set.
        let all = render_with_the_nixos_module(
            r#"{ tokenFile = "/run/keys/nx-token"; databaseUrl = "postgres:///nx?host=/run/postgresql";
                 sandbox = d.sandbox // { healthPath = "/healthz"; };
                 tasks = d.tasks // { poolMax = 8; };
                 databases = d.databases // { adminUrl = "postgres:///nx?host=/run/postgresql"; socketDir = "/run/postgresql"; };
                 microvm = d.microvm // { kernelDir = "/var/lib/nx/kernel"; };
                 sftp = d.sftp // { listen = "0.0.0.0:2222"; };
                 tls = d.tls // { httpsListen = "0.0.0.0:443"; acmeEmail = "ops@example.com";
                                  acmeCaRoots = "/etc/nx/acme-root.pem"; certFile = "/etc/nx/origin.pem";
                                  keyFile = "/etc/nx/origin.key"; };
                 usage = d.usage // { priceCpuHour = 0.04; priceMemoryGibHour = 0.005;
                                      priceDiskGibMonth = 0.1; priceMillionRequests = 0.5;
                                      priceEgressGib = 0.09; };
                 metricsListen = "127.0.0.1:9770"; }"#,
        );
        let parsed: Config =
            serde_json::from_value(all.clone()).expect("nxd parses the module's file");
        parsed.validate().unwrap();
        assert_eq!(parsed.sandbox.health_path.as_deref(), Some("/healthz"));
        let (mut from_module, mut from_nxd) = (Vec::new(), Vec::new());
        keys(&all, "", &mut from_module);
        keys(&serde_json::to_value(&parsed).unwrap(), "", &mut from_nxd);
        assert_eq!(from_module, from_nxd, "services.nx and nxd's config differ");
    }

    #[test]
    fn the_task_pools_most_follows_its_fewest_unless_set() {
        let tasks = |toml: &str| toml::from_str::<Config>(toml).unwrap().tasks;
        assert_eq!(tasks("").pool_max(), 8, "the default pool of 2 grows to 8");
        assert_eq!(tasks("[tasks]\npool_size = 0").pool_max(), 0, "always cold");
        assert_eq!(tasks("[tasks]\npool_size = 3").pool_max(), 12);
        assert_eq!(tasks("[tasks]\npool_size = 0\npool_max = 4").pool_max(), 4);
        assert_eq!(tasks("[tasks]\npool_size = 5\npool_max = 2").pool_max(), 5);
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        let config: Config = toml::from_str("").unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn unknown_keys_and_bad_ranges_are_refused() {
        assert!(toml::from_str::<Config>("statedir = '/x'").is_err());
        let bad = Config {
            ports: PortRange { start: 30, end: 20 },
            ..Config::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("ports.start"));
    }

    #[test]
    fn a_sandboxs_task_share_stays_below_the_whole_and_a_peer_has_a_connection() {
        let refusal = |config: Config| config.validate().unwrap_err().to_string();
        let mut config = Config::default();
        config.systemd.sandbox_tasks_max = config.systemd.slice_tasks_max;
        assert!(refusal(config).contains("below systemd.slice_tasks_max"));
        // Two sandboxes at their cap and all tasks at theirs leave no room for a push.
        let mut config = Config::default();
        config.systemd.sandbox_tasks_max = 3000;
        assert!(refusal(config.clone()).contains(
            "must hold 2 sandboxes at systemd.sandbox_tasks_max (3000), every task at systemd.tasks_slice_tasks_max (2048) and one more deployment at limits.tasks_max (256): 8304 in all"
        ));
        config.systemd.sandbox_tasks_max = 2944;
        config.validate().unwrap();
        let mut config = Config::default();
        config.systemd.sandbox_tasks_max = 100;
        assert!(refusal(config.clone()).contains("limits.tasks_max (256) is above"));
        config.limits.tasks_max = 64;
        config.systemd.tasks_slice_tasks_max = 100;
        config.tasks.limits.tasks_max = 128;
        assert!(refusal(config).contains("tasks.limits.tasks_max (128) is above"));
        let config = Config {
            api_max_connections_per_address: 0,
            ..Config::default()
        };
        assert!(refusal(config).contains("api_max_connections_per_address must be at least 1"));
        let config = Config {
            api_max_connections: 16,
            ..Config::default()
        };
        assert!(refusal(config)
            .contains("api_reserved_connections (16) must be below api_max_connections (16)"));
        let config = Config {
            api_max_requests_per_token: 0,
            ..Config::default()
        };
        assert!(refusal(config).contains("api_max_requests_per_token must be at least 1"));
        let config = Config {
            api_send_timeout_secs: 0,
            ..Config::default()
        };
        assert!(refusal(config).contains("api_send_timeout_secs must be at least 1"));
    }
}
