//! The JSON request and response bodies of nxd's HTTP API, shared by nxd and its clients.

use crate::kinds::{BackendKind, Desired, Egress, Limits, Phase, Runtime};
use crate::names::{DeploymentId, SandboxName};
use crate::systemd::{ActiveState, ServiceResult, SubState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactInfo {
    pub sha256: String,
    pub size: u64,
    /// "binary", "image", or "file" (a bundle's).
    pub kind: String,
    /// A binary's linkage ("static" or its interpreter), an image's format and architecture.
    pub details: String,
    /// An image's layers unpacked (gunzipped), in bytes: about what Podman's storage takes
    /// once it is loaded, counted with `size` toward its owner's `store.max_owner_mb`; 0 for
    /// a binary or a file.
    #[serde(default)]
    pub unpacked_size: u64,
}

/// What nxd made of a bundle (`POST /v1/bundles`); its id is what a push names as its
/// `artifact`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleInfo {
    /// The sha256 of its manifest.
    pub id: String,
    pub files: u64,
    /// All files' bytes.
    pub size: u64,
    /// The program, relative to `/app`.
    pub entry: String,
    /// Its argv\[0\].
    pub argv0: String,
    /// The entry's linkage: "static" or its interpreter.
    pub details: String,
}

/// `POST /v1/blobs/missing`: which of these files (by sha256) nxd lacks.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobDigests {
    pub sha256: Vec<String>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsOverride {
    pub memory_max_mb: Option<u64>,
    pub cpu_quota_percent: Option<u32>,
    pub tasks_max: Option<u64>,
    #[serde(default)]
    pub disk_mb: Option<u64>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub tmp_mb: Option<u64>,
    #[serde(default)]
    pub nofile: Option<u64>,
    #[serde(default)]
    pub log_max_mb: Option<u64>,
}

impl LimitsOverride {
    /// `base` with each limit set here in its place, for a deployment on `backend`; a `tmp_mb`
    /// not set here is `base`'s, or the most `backend` allows where that is less
    /// ([`Limits::with_tmp_within_memory`]).
    pub fn apply(&self, base: Limits, backend: BackendKind) -> Limits {
        let limits = Limits {
            memory_max_mb: self.memory_max_mb.unwrap_or(base.memory_max_mb),
            cpu_quota_percent: self.cpu_quota_percent.unwrap_or(base.cpu_quota_percent),
            tasks_max: self.tasks_max.unwrap_or(base.tasks_max),
            disk_mb: self.disk_mb.unwrap_or(base.disk_mb),
            tmp_mb: self.tmp_mb.unwrap_or(base.tmp_mb),
            nofile: self.nofile.unwrap_or(base.nofile),
            log_max_mb: self.log_max_mb.unwrap_or(base.log_max_mb),
        };
        match self.tmp_mb {
            Some(_) => limits,
            None => limits.with_tmp_within_memory(backend),
        }
    }

    /// These overrides over other ones: each limit set here wins.
    pub fn over(&self, base: &LimitsOverride) -> LimitsOverride {
        LimitsOverride {
            memory_max_mb: self.memory_max_mb.or(base.memory_max_mb),
            cpu_quota_percent: self.cpu_quota_percent.or(base.cpu_quota_percent),
            tasks_max: self.tasks_max.or(base.tasks_max),
            disk_mb: self.disk_mb.or(base.disk_mb),
            tmp_mb: self.tmp_mb.or(base.tmp_mb),
            nofile: self.nofile.or(base.nofile),
            log_max_mb: self.log_max_mb.or(base.log_max_mb),
        }
    }
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    pub sandbox: SandboxName,
    pub artifact: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub limits: LimitsOverride,
    /// Run against a copy of production's database (dropped with the deployment).
    #[serde(default)]
    pub db_branch: bool,
    /// For an image: runc (default) or gVisor's runsc.
    #[serde(default)]
    pub runtime: Runtime,
    /// container or microvm; none: the sandbox's default (container for a new sandbox).
    #[serde(default)]
    pub backend: Option<BackendKind>,
    /// Seconds the program has to become ready (accept connections on `$PORT`, or answer the
    /// health path), 1 to the host's `sandbox.max_ready_timeout_secs`; none: the sandbox's
    /// (`nx sandbox set --ready-timeout`), else nxd's `sandbox.ready_timeout_secs`.
    #[serde(default)]
    pub ready_timeout_secs: Option<u64>,
    /// The port the program listens on by itself (1-65535; it gets it as `PORT`). None: nxd
    /// picks one and passes it as `PORT`.
    #[serde(default)]
    pub port: Option<u16>,
    /// Connections out of the deployment's network namespace: none or public; absent: the
    /// sandbox's (`nx sandbox set --egress`), else none.
    #[serde(default)]
    pub egress: Option<Egress>,
    /// Its health check (`--health-path` etc.); unset fields: the sandbox's, else nxd's.
    #[serde(default)]
    pub health_check: crate::HealthCheck,
    /// Seconds with no request after which nxd stops it (scale to zero); the next request
    /// starts it again. None: the sandbox's (`nx sandbox set --idle-timeout`), else never.
    #[serde(default)]
    pub idle_timeout_secs: Option<u64>,
    /// The sandbox's volumes to mount (`nx volume create` first).
    #[serde(default)]
    pub volumes: Vec<crate::volumes::VolumeMount>,
    /// What this deployment (a preview until promoted) mounts for them: an empty filesystem
    /// of each volume's size (default), a copy of production's files (`--volume-branch`), or
    /// production's live volume itself (`--volume-live`). Promoting it mounts the live ones.
    #[serde(default)]
    pub volume_source: crate::volumes::VolumeSource,
    /// Its port speaks raw TCP, not HTTP (`nx push --tcp`): it is reached on a host port of
    /// nxd's `network.tcp_ports` rather than through the router. None: an HTTP deployment.
    #[serde(default)]
    pub tcp: Option<TcpRequest>,
    /// Declares it a service of its sandbox under this name (`nx push --service NAME`, a DNS
    /// label): the sandbox's other deployments reach it as NAME on its port; no other
    /// sandbox does.
    #[serde(default)]
    pub service: Option<String>,
    /// A pet (`nx push --persistent`, microvm backend only): its VMM pinned to CPUs and no
    /// memory balloon (tier `persistent`). False: tier `ephemeral`.
    #[serde(default)]
    pub persistent: bool,
}

/// `PushRequest.tcp`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpRequest {
    /// The host port the sandbox's production is reached on, when it has none yet (or the one
    /// it has); in nxd's `network.tcp_ports`. None: nxd picks a free one.
    #[serde(default)]
    pub host_port: Option<u16>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    pub deployment: DeploymentId,
    /// For a deployment with a preview branch: make the branch production's database (the
    /// old one is kept). Default: keep production's database.
    #[serde(default)]
    pub swap_db: bool,
}

/// The live state of a deployment's unit, as systemd reports it.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnitState {
    /// systemd ActiveState: active, activating, failed, inactive, ...
    pub active: ActiveState,
    /// systemd SubState: running, auto-restart, dead, ...
    pub sub: SubState,
    pub main_pid: u32,
    pub restarts: u32,
    pub memory_bytes: Option<u64>,
    pub tasks: Option<u64>,
    /// systemd's Result of the last run: success, exit-code, signal, oom-kill, ...
    pub result: ServiceResult,
    /// Exit status (or signal number) of the last main process.
    pub exit_status: i32,
    /// How it ended (1 exited, 2 killed by a signal, 3 dumped core), as waitid(2) says.
    #[serde(default)]
    pub exit_code: i32,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentView {
    pub id: DeploymentId,
    pub sandbox: SandboxName,
    pub artifact: String,
    /// The port the program listens on (its `PORT`).
    pub port: u16,
    /// Where the router reaches it: its own address in its network namespace, and its port.
    pub listen: std::net::SocketAddr,
    /// Its IPv6 address in its network namespace (of nxd's `network.subnet6`), where the
    /// program may listen too (`[::]` takes both families); none where the host has no IPv6.
    /// The router reaches it at `listen`.
    #[serde(default)]
    pub address6: Option<std::net::Ipv6Addr>,
    pub egress: Egress,
    pub desired: Desired,
    /// Where it is in its life (from `desired` and `state`).
    pub phase: Phase,
    pub unit: String,
    pub state: UnitState,
    pub promoted: bool,
    pub preview_url: String,
    pub limits: Limits,
    pub db_branch: bool,
    pub runtime: Runtime,
    pub backend: BackendKind,
    /// What the backend runs it with, e.g. the microVM's accelerator.
    pub runs_on: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// How its program last ended (none yet: it never ended).
    #[serde(default)]
    pub last_exit: Option<LastExit>,
    /// `/data`'s usage, when it has a size (`limits.disk_mb`) and has run.
    #[serde(default)]
    pub disk: Option<DiskUsage>,
    /// Its health check, every field resolved; none: it has no health path.
    #[serde(default)]
    pub health_check: Option<crate::HealthCheck>,
    /// Seconds with no request after which it is stopped (phase `idle`) until the next one.
    #[serde(default)]
    pub idle_timeout_secs: Option<u64>,
    /// Kept even when no request comes for the sandbox's preview time to live (`nx pin`).
    #[serde(default)]
    pub pinned: bool,
    /// When the router last passed it a request (none: never, as far as nxd knows).
    #[serde(default)]
    pub last_request_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The volumes it mounts, and whether each is the volume itself or its own copy.
    #[serde(default)]
    pub volumes: Vec<crate::volumes::MountedVolume>,
    /// A TCP deployment's own address, `tcp://<host>:<port>` (none: an HTTP deployment, reached
    /// at `preview_url`).
    #[serde(default)]
    pub tcp_url: Option<String>,
    /// The service name it declared (`--service`): its sandbox's deployments reach it by it.
    #[serde(default)]
    pub service: Option<String>,
    /// `ephemeral` (the default) or `persistent` (`nx push --persistent`).
    #[serde(default)]
    pub tier: crate::Tier,
    /// The CPUs its unit is pinned to (systemd `CPUAffinity=`), numbered as the host numbers
    /// them; empty: not pinned (every CPU nxd may use).
    #[serde(default)]
    pub cpu_affinity: Vec<u32>,
}

/// How a deployment's program ended, as the monitor in its unit saw it, named as systemd names
/// a service's `Result` (systemd.exec(5), `$SERVICE_RESULT`).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastExit {
    pub at: chrono::DateTime<chrono::Utc>,
    /// `success` (also a stop on request), `exit-code`, `signal`, `core-dump`, `oom-kill` or
    /// `timeout` (still running at a stop's timeout, then killed).
    pub result: String,
    /// The exit code, when it exited (for a program under bubblewrap, 128 + N when signal N
    /// ended it inside the sandbox).
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// What `nx logs` shows, e.g. `killed: out of memory, MemoryMax 128 MiB`.
    pub message: String,
}

impl LastExit {
    /// Whether it ended in a failure (anything but `success`).
    pub fn failed(&self) -> bool {
        self.result != "success"
    }
}

/// A deployment's `/data` usage (statvfs(3) of its filesystem image).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUsage {
    pub used_bytes: u64,
    pub size_bytes: u64,
    /// When it was measured (every few seconds while the deployment runs).
    pub at: chrono::DateTime<chrono::Utc>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxView {
    pub name: SandboxName,
    pub production_url: String,
    pub promoted: Option<DeploymentId>,
    pub deployments: Vec<DeploymentView>,
    /// Production's TCP address, `tcp://<host>:<port>`, once the sandbox had a TCP deployment:
    /// it reaches the promoted deployment when that is a TCP one.
    #[serde(default)]
    pub tcp_url: Option<String>,
}

/// Every error nxd returns: what went wrong, and where it helps, the deployment's last log lines.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    pub name: SandboxName,
    /// Where its pushes run when they name no backend.
    #[serde(default)]
    pub backend: BackendKind,
}

/// `nx db url`: where the sandbox's database is, from the host.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabaseInfo {
    pub sandbox: SandboxName,
    pub database: String,
    pub role: String,
    /// The connection URL on the nxd host (through the server's socket directory there).
    pub url: String,
    /// The URL a deployment uses: its `DATABASE_URL` (through the socket directory bound at
    /// /run/postgresql in the sandbox). Refer to it as `$DATABASE_URL` in `nx push -e`.
    #[serde(default)]
    pub sandbox_url: String,
    /// The database's size in bytes (`pg_database_size`).
    #[serde(default)]
    pub size_bytes: u64,
    /// The cap on the sandbox's databases together (production's, its preview branches',
    /// those restores and swaps kept), in bytes: the size of the disk they are on
    /// (`databases.max_size_mb`); a write past it fails with "No space left on device".
    /// `null`: no cap (none configured, another cluster, or a database made before caps:
    /// `nx db restore` moves it onto its disk).
    #[serde(default)]
    pub max_size_bytes: Option<u64>,
    /// The role's `CONNECTION LIMIT`: connections its deployments may hold at once.
    #[serde(default)]
    pub connection_limit: u32,
}

/// `POST /v1/tasks`: run a stored artifact once, in a fresh sandbox with no network.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// sha256 of a stored binary or image (upload it first, as for a push).
    pub artifact: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Killed after this many seconds (default and maximum from nxd's config).
    pub timeout_secs: Option<f64>,
    /// MemoryMax in MiB (default from nxd's config).
    pub memory_max_mb: Option<u64>,
    /// `container` (the default); `microvm` where nxd has that backend.
    pub backend: Option<String>,
}

/// One line of the answer to `POST /v1/tasks` (newline-delimited JSON): `started`, then the
/// program's output as it comes, then `exited`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TaskEvent {
    Started {
        task: String,
        /// Whether a unit from the warm pool ran it.
        warm: bool,
        backend: String,
    },
    /// Output as UTF-8 text (invalid bytes become U+FFFD; a character is never split).
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    Exited(TaskOutcome),
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskOutcome {
    /// The program's exit code (a program killed by a signal inside the sandbox: 128 + signal).
    pub exit_code: Option<i32>,
    /// The number of the signal that ended the program (its sandbox exited 128 + N, which a
    /// program that exits with 128 + N itself also gives) or the sandbox (at the timeout: 9).
    pub signal: Option<i32>,
    /// It ran past its timeout and was killed.
    pub timed_out: bool,
    /// How it ended, as systemd names a service's Result: success, exit-code, signal (`signal`
    /// is set), oom-kill (the kernel's OOM killer, at the task's memory limit), ...
    pub result: ServiceResult,
    /// From the start of the task to its end.
    pub duration_ms: u64,
}

/// One backup of a sandbox's database (`pg_dump --format=custom`).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupInfo {
    /// When it was made, as `YYYYMMDDTHHMMSSmmmZ` (UTC); also its file name.
    pub id: String,
    pub size: u64,
}

/// What a restore did.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreInfo {
    /// The database that was in use before, kept until the user drops it.
    pub previous_database: String,
}

/// `GET /v1/health`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    /// false (and HTTP 503) while something keeps nxd from serving; `problem` says what.
    pub ok: bool,
    /// The backends this nxd runs deployments on: "container" or "container, microvm".
    pub backend: String,
    /// What is wrong, e.g. the systemd manager died and nxd is starting it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// `DELETE /v1/deployments/{id}`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeploymentRemoved {
    pub removed: DeploymentId,
}

/// `DELETE /v1/sandboxes/{name}`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxRemoved {
    pub removed: SandboxName,
    /// The backup made just before, kept on the host; none when asked not to make one.
    pub final_backup: Option<BackupInfo>,
    /// A final backup of each of its volumes (tar archives kept on the host); empty when
    /// asked not to make them.
    #[serde(default)]
    pub final_volume_backups: Vec<crate::volumes::VolumeBackup>,
    /// Where all its backups (these and earlier ones) now are on the nxd host: a directory
    /// only the host's operator reads, as no route serves it (a sandbox made again under the
    /// name starts with none). `None` when it had no backups.
    #[serde(default)]
    pub backups_kept_at: Option<String>,
}

/// `DELETE /v1/sandboxes/{name}/db/backups/{id}`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupRemoved {
    /// The backup's id.
    pub removed: String,
}

/// `GET /v1/deployments/{id}/logs` (query string). A parameter it does not name gets a 400
/// (`?n=-1` answered the last 100 lines as if it were understood).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Go on streaming what the program writes, across rotation.
    #[serde(default)]
    pub follow: bool,
    /// The last this many lines; default 100, or all of them since `since`.
    pub lines: Option<usize>,
    /// RFC 3339: only lines written at or after it.
    pub since: Option<String>,
    /// `json`: one JSON object per line (`time`, `stream`, `text`); else text lines
    /// `<time> <stdout|stderr|nx> <text>`.
    pub format: Option<String>,
}
