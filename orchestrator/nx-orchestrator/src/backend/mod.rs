//! The narrow boundary between NX and an isolation technology. A backend turns a deployment into
//! something that runs (prepare), runs and stops it, reports on it, and removes every trace of it.
//! Backends are chosen by cargo features: `container` (bubblewrap and Podman) and `microvm`
//! (QEMU's microvm machine; command lines for Cloud Hypervisor and Firecracker).
//! Tasks (programs run once) go through the same backends: `task_launch`.

pub mod args;
mod by_kind;
#[cfg(feature = "container")]
pub mod container;
pub mod cpu_affinity;
pub mod data_disk;
pub mod exit;
pub mod guest_exit;
pub mod host_files;
pub mod launch;
pub mod launch_times;
#[cfg(target_os = "linux")]
pub mod launcher;
#[cfg(target_os = "linux")]
mod loop_device;
#[cfg(feature = "microvm")]
pub mod microvm;
#[cfg(target_os = "linux")]
pub(crate) mod monitor;
pub mod monitor_files;
pub mod pts_mount;
pub mod spawn_failure;
#[cfg(target_os = "linux")]
mod task_end;
pub mod tmp_mount;
#[cfg(any(feature = "container", feature = "microvm"))]
mod unit;
pub mod volume_job;

pub use by_kind::Backends;
#[cfg(any(feature = "container", feature = "microvm"))]
pub use unit::UnitSettings;

use crate::api::UnitState;
use crate::artifact::verify::Linkage;
use crate::domain::{BackendKind, Deployment};
use crate::supervisor::SupervisorError;
use launch::LaunchSpec;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// How long `nx stop` gives a program between SIGTERM and SIGKILL unless told otherwise.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest stop timeout a stop may ask for; systemd's own (`TimeoutStopSec`) for
/// deployments.
pub const MAX_STOP_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error("preparing the sandbox: {0}")]
    Prepare(String),
    #[error("sandbox I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Unavailable(String),
}

/// What a deployment runs, from the artifact store.
#[derive(Debug, Clone)]
pub enum Program {
    /// A bare binary, run under bubblewrap.
    Binary { path: PathBuf, linkage: Linkage },
    /// An image archive, loaded into Podman and run from there.
    Image {
        archive: PathBuf,
        /// The image's id (`nx_artifact::image::ImageInfo::id`).
        image_id: String,
        /// What its layers take unpacked, in bytes (`ImageInfo::unpacked_bytes`).
        unpacked_bytes: u64,
    },
    /// A bundle's tree (read-only at `/app`), its entry run under bubblewrap.
    Bundle {
        root: PathBuf,
        manifest: nx_artifact::bundle::BundleManifest,
        linkage: Linkage,
    },
}

/// What a bundle's program gets in its environment: `PATH` that finds its entry under its
/// argv\[0\] first, and `LD_LIBRARY_PATH` with its library directories (when it has some).
pub fn bundle_env(manifest: &nx_artifact::bundle::BundleManifest) -> BTreeMap<String, String> {
    let mut env = BTreeMap::from([(
        "PATH".to_owned(),
        format!("{}:/usr/bin:/bin", BUNDLE_ARGV0_DIR),
    )]);
    if let Some(path) = nx_artifact::bundle::library_path(manifest) {
        env.insert("LD_LIBRARY_PATH".into(), path);
    }
    env
}

/// Where a bundle's entry is linked under its argv\[0\] in the sandbox (see `container`).
pub const BUNDLE_ARGV0_DIR: &str = "/run/nx/argv0";

/// Everything a backend needs to run one deployment.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub deployment: Deployment,
    pub program: Program,
    /// The complete environment of the program: PORT, NX_*, the database's and the user's.
    pub env: BTreeMap<String, String>,
    /// The program's arguments, variable references expanded (`args::expand`).
    pub args: Vec<String>,
    /// The PostgreSQL socket on the host, made visible in the sandbox (nothing else of the
    /// cluster is).
    pub database_socket: Option<PathBuf>,
    /// Its network namespace: address, gateway, host-side link.
    pub network: crate::network::Attachment,
    /// The sandbox's volumes it mounts.
    pub volumes: Vec<AttachedVolume>,
}

/// A volume as a deployment's backend needs it: its image, its group, where it goes.
#[derive(Debug, Clone)]
pub struct AttachedVolume {
    pub name: nx_api::names::VolumeName,
    pub image: PathBuf,
    pub gid: u32,
    pub path: String,
}

/// One run of a task: its program, run once as `uid` with no network but its own loopback.
#[derive(Debug, Clone)]
pub struct TaskLaunch {
    /// The task's id; the backend names what it creates after it.
    pub id: String,
    pub program: Program,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub uid: u32,
    pub backend: BackendKind,
    /// The task's limits: its unit's MemoryMax (a VM's RAM is sized from it), `/tmp`'s size,
    /// `RLIMIT_NOFILE`.
    pub limits: crate::config::Limits,
}

/// A sandbox booted ahead of its task, for the task pool (a microVM guest whose init waits for
/// its task): the unit `nxt-<id>.service` runs it as `uid`, under `limits`.
#[derive(Debug, Clone)]
pub struct WarmSandbox {
    pub id: String,
    pub uid: u32,
    pub backend: BackendKind,
    pub limits: crate::config::Limits,
}

/// What a unit of the task pool runs to have a sandbox wait for its task (see
/// [`SandboxBackend::boot_ahead`]).
#[derive(Debug)]
pub struct WarmLaunch {
    pub spec: LaunchSpec,
    /// The sandbox is restored from a snapshot of one that already said `NX-READY`: it says so
    /// again only when asked (`NX-PING` on its input).
    pub restored: bool,
}

/// A prepared sandbox: what the backend needs to find it again, also after nxd restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxHandle {
    pub backend: BackendKind,
    pub unit: String,
    /// Backend-owned directory of this deployment (its data dir, log and launch files).
    pub dir: PathBuf,
}

impl SandboxHandle {
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("output.log")
    }
    /// The deployment's log files under its cap (`limits.log_max_mb`) with `keep` rotated
    /// files (`[logs] keep`).
    pub fn log_files(&self, limits: &crate::config::Limits, keep: u32) -> crate::logs::LogFiles {
        crate::logs::LogFiles {
            path: self.log_file(),
            max_bytes: limits.log_max_mb << 20,
            keep,
        }
    }
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
}

#[async_trait::async_trait]
pub trait SandboxBackend: Send + Sync {
    /// The backend's name, as `nx status` shows it.
    fn kind(&self) -> &'static str;
    /// What it runs deployments with, as `nx status` shows it (e.g. the microVM accelerator).
    fn runs_on(&self) -> String {
        self.kind().to_owned()
    }
    /// Whether the deployment's port is a forward that accepts before the program listens (a
    /// VMM's), so that readiness needs an HTTP answer.
    fn port_is_forwarded(&self) -> bool {
        false
    }
    /// The handle of a deployment, whether or not it was prepared yet.
    fn handle(&self, deployment: &Deployment) -> SandboxHandle;
    /// Lays out what the deployment needs to run; idempotent.
    async fn prepare(&self, spec: &SandboxSpec) -> Result<SandboxHandle, BackendError>;
    async fn start(&self, handle: &SandboxHandle, spec: &SandboxSpec) -> Result<(), BackendError>;
    /// Stops it: SIGTERM to the program, SIGKILL to what still runs after `timeout`.
    async fn stop(&self, handle: &SandboxHandle, timeout: Duration) -> Result<(), BackendError>;
    async fn status(&self, handle: &SandboxHandle) -> Result<UnitState, BackendError>;
    /// Stops it and removes its files.
    async fn destroy(&self, handle: &SandboxHandle) -> Result<(), BackendError>;

    /// Lays out a standby (see `crate::standby`): the sandbox of `spec.deployment`, whose
    /// program is not known yet, set up to wait for it; `spec.program` is the waiter that
    /// execs it (nx-vm-init). Started with [`Self::start`]. `Unavailable` from a backend that
    /// keeps no standbys.
    async fn prepare_standby(&self, spec: &SandboxSpec) -> Result<SandboxHandle, BackendError> {
        Err(BackendError::Unavailable(format!(
            "the {} backend keeps no standby ({})",
            self.kind(),
            spec.deployment.id
        )))
    }
    /// Gives the running standby of `handle` its deployment's program (`spec`, prepared as
    /// [`Self::prepare`] would, so that its unit's restarts run it as any deployment's do),
    /// which it runs at once. Errors: the standby is not waiting (its unit ended), a file
    /// that cannot be laid out.
    async fn claim(&self, handle: &SandboxHandle, spec: &SandboxSpec) -> Result<(), BackendError> {
        let _ = handle;
        self.prepare_standby(spec).await.map(|_| ())
    }

    /// What a task's unit execs (see `launch`): the task's sandbox around its program.
    async fn task_launch(&self, task: &TaskLaunch) -> Result<LaunchSpec, BackendError>;
    /// Removes what a task's run may have left outside its unit (e.g. a killed container).
    async fn task_cleanup(&self, task: &TaskLaunch);

    /// What a unit of the task pool execs to boot (or restore) a sandbox ahead of its task (see
    /// [`WarmSandbox`]); the sandbox says `NX-READY` on its output once it waits.
    /// `Unavailable` from a backend that boots nothing ahead.
    async fn boot_ahead(&self, warm: &WarmSandbox) -> Result<WarmLaunch, BackendError> {
        Err(BackendError::Unavailable(format!(
            "the {} backend boots no sandbox ahead of its task ({})",
            self.kind(),
            warm.id
        )))
    }
    /// Gives a sandbox that `boot_ahead` started its task (`task.id` and `task.uid` are the
    /// warm sandbox's); it starts once the unit passes on `NX-GO`.
    async fn hand_over(&self, warm: &WarmSandbox, task: &TaskLaunch) -> Result<(), BackendError> {
        let _ = task;
        self.boot_ahead(warm).await.map(|_| ())
    }
    /// Removes what `boot_ahead` made for a sandbox that never got a task.
    async fn forget_warm(&self, warm: &WarmSandbox) {
        let _ = warm;
    }
    /// Removes the images it loaded (Podman's) whose id is not in `keep` and nothing runs,
    /// unless `unchanged()` says `keep` is out of date; returns their ids. Nothing for a
    /// backend that loads no images.
    async fn remove_images(
        &self,
        keep: &std::collections::HashSet<String>,
        unchanged: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<Vec<String>, BackendError> {
        let _ = (keep, unchanged);
        Ok(Vec::new())
    }
}
