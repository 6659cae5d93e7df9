//! The `microvm` backend: a deployment's static binary as the only program of a virtual
//! machine. The guest is a kernel (Debian's, see `orchestrator/fetch-kernel.sh`) and an
//! initramfs NX builds: `nx-vm-init` as PID 1, the virtio modules, the binary (cached by the
//! artifact's hash), and the deployment's environment and arguments (readable by the guest's
//! root only). The VMM runs as the deployment's uid in a transient systemd unit, like every
//! deployment; the launcher passes the guest's console to the log and exits with the program's
//! exit code. The VMM runs in the deployment's network namespace (the launcher sets it up as for
//! every deployment): the guest's port is forwarded from the deployment's own address, the
//! guest reaches the host's PostgreSQL through a forward and, with `--egress public`, opens
//! connections out through the VMM, which leave the namespace under the host's firewall.

mod accel;
mod handover;
mod initramfs;
mod jail;
mod qmp;
mod snapshot;
pub mod vmm;

use super::data_disk::DataTemplates;
use super::guest_exit;
use super::host_files::{identity, HOST_FILES};
use super::launch::{LaunchSpec, StopForward};
use super::unit::{DeploymentUnits, UnitSettings};
use super::{
    BackendError, Program, SandboxBackend, SandboxHandle, SandboxSpec, TaskLaunch, WarmLaunch,
    WarmSandbox,
};
use crate::api::UnitState;
use crate::artifact::verify::Linkage;
use crate::config::{Limits, MicrovmConfig, Vmm};
use crate::domain::{BackendKind, Deployment};
use crate::supervisor::Supervisor;
use initramfs::{nul_separated, Archive};
use snapshot::{Snapshots, Template};
use std::collections::BTreeMap;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use vmm::{Accel, Disk, Guest, GUEST_APP_UID, GUEST_DB_ADDR};

/// The initramfs file that gives the guest's init the size of `/tmp` and of `/dev/shm` (each a
/// tmpfs), in MiB as decimal text: the deployment's or task's `limits.tmp_mb` (nx-vm-init's
/// `TMP_MB`). Without it (the accelerator's probe guest) they get the kernel's default size,
/// half the guest's RAM.
const TMP_MB: &str = "nx/tmp-mb";

pub struct MicrovmBackend {
    units: DeploymentUnits,
    /// `<state_dir>/microvm`: `initramfs/` (per artifact, made again after each nxd start),
    /// `deployments/`, the probe's files.
    root: PathBuf,
    kernel: PathBuf,
    /// Module files in the order the guest loads them.
    modules: Vec<(String, PathBuf)>,
    init: PathBuf,
    vmm: Vmm,
    accel: accel::Choice,
    tsc_khz: Option<u64>,
    /// The deployments' resolv.conf (`network::dns`): a guest's `/etc/resolv.conf`, so that
    /// its queries go to the gateway like any deployment's.
    resolv_conf: PathBuf,
    /// Snapshots the task pool restores its guests from (`[microvm] snapshot`, QEMU only).
    snapshots: Option<Snapshots>,
}

/// The VMM's environment: where to find it (and socat).
fn vmm_env() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "PATH".into(),
        "/run/current-system/sw/bin:/usr/local/bin:/usr/bin:/bin".into(),
    )])
}

/// The host's TSC rate from /proc/cpuinfo, for TCG guests.
fn tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

fn missing(what: &str, path: &Path) -> BackendError {
    BackendError::Unavailable(format!(
        "the microvm backend needs {what} at {}: run orchestrator/fetch-kernel.sh (kernel) or build nx-vm-init (`cargo build --release -p nx-vm-init --target x86_64-unknown-linux-musl`), and set [microvm] in nxd's config",
        path.display()
    ))
}

impl MicrovmBackend {
    /// The backend of `config`, its probe and pool initramfs written; `task_tmp_mb` is every
    /// task's `/tmp` and `/dev/shm` size (`tasks.limits.tmp_mb`), which a pool guest mounts
    /// before its task comes.
    #[tracing::instrument(skip_all)]
    pub async fn new(
        supervisor: Arc<Supervisor>,
        state_dir: &Path,
        launcher: PathBuf,
        settings: UnitSettings,
        config: &MicrovmConfig,
        task_tmp_mb: u64,
    ) -> Result<Self, BackendError> {
        let kernel_dir = config
            .kernel_dir
            .as_deref()
            .ok_or_else(|| BackendError::Unavailable("[microvm] kernel_dir is not set".into()))?;
        let kernel = kernel_dir.join("vmlinux");
        if !kernel.is_file() {
            return Err(missing("an uncompressed kernel", &kernel));
        }
        if !config.init.is_file() {
            return Err(missing("nx-vm-init", &config.init));
        }
        let order = kernel_dir.join("modules/order");
        let modules = std::fs::read_to_string(&order)
            .map_err(|_| missing("the module list", &order))?
            .split_whitespace()
            .map(|name| {
                (
                    name.to_owned(),
                    kernel_dir.join(format!("modules/{name}.ko")),
                )
            })
            .collect();
        let root = state_dir.join("microvm");
        // No task outlives the nxd that ran it (its unit is stopped at start): nor its files.
        // The cached initramfs hold nx-vm-init, which may have changed since they were made.
        let _ = std::fs::remove_dir_all(root.join("tasks"));
        let _ = std::fs::remove_dir_all(root.join("initramfs"));
        for sub in ["initramfs", "deployments", "tasks"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711))?;
        std::fs::set_permissions(
            root.join("deployments"),
            std::fs::Permissions::from_mode(0o711),
        )?;
        let mut backend = Self {
            units: DeploymentUnits::new(
                supervisor,
                launcher,
                settings,
                Arc::new(DataTemplates::new(root.join("data-templates"))?),
            ),
            root,
            kernel,
            modules,
            init: config.init.clone(),
            vmm: config.vmm,
            accel: accel::Choice {
                accel: Accel::Tcg,
                report: String::new(),
            },
            tsc_khz: tsc_khz(),
            resolv_conf: crate::network::resolv_conf_path(state_dir),
            snapshots: None,
        };
        if config.snapshot && config.vmm == Vmm::Qemu {
            backend.snapshots = Some(Snapshots::new(backend.root.join("snapshots"))?);
        }
        let probe = backend.root.join("probe.cpio");
        std::fs::write(&probe, backend.guest_archive(None)?.finish()?)?;
        // Guests booted ahead: no program, and the marker that makes init wait for its task.
        // Nothing secret: readable by every task's uid.
        let mut warm = backend.guest_archive(None)?;
        warm.file("nx/await-task", 0o644, b"")?;
        // Its /tmp is mounted at boot, before a task comes: every task's size is the host's.
        warm.file(TMP_MB, 0o644, task_tmp_mb.to_string().as_bytes())?;
        std::fs::write(backend.warm_initrd(), warm.finish()?)?;
        backend.accel = accel::choose(
            config.accel,
            &backend.root,
            &backend.kernel,
            &probe,
            backend.tsc_khz,
        )
        .await?;
        Ok(backend)
    }

    /// NX's init, the modules, the OS files a program reads (as a bubblewrap sandbox has them,
    /// see `host_files`) and (for a deployment) the program; not yet finished.
    fn guest_archive(&self, program: Option<&Path>) -> Result<Archive<Vec<u8>>, BackendError> {
        let mut archive = Archive::new(Vec::new());
        for dir in [
            "nx",
            "nx/modules",
            "app",
            "dev",
            "etc",
            "proc",
            "sys",
            "tmp",
        ] {
            archive.dir(dir)?;
        }
        // Time zones, TLS roots, services; not the host's resolver config (a guest with a network
        // gets the deployments' own, see `write_initrd`). `right/`: the leap-second zones (2 MB)
        // no library reads by default.
        for path in HOST_FILES.iter().filter(|p| **p != "/etc/resolv.conf") {
            archive.host(Path::new(path), &["right"])?;
        }
        for (name, text) in identity(GUEST_APP_UID) {
            archive.file(&format!("etc/{name}"), 0o644, text.as_bytes())?;
        }
        archive.file("init", 0o755, &std::fs::read(&self.init)?)?;
        let mut order = Vec::new();
        for (name, path) in &self.modules {
            let module = std::fs::read(path).map_err(|_| missing("a kernel module", path))?;
            archive.file(&format!("nx/modules/{name}.ko"), 0o644, &module)?;
            order.push(name.as_str());
        }
        archive.file("nx/modules/order", 0o644, order.join(" ").as_bytes())?;
        if let Some(program) = program {
            archive.file("app/main", 0o755, &std::fs::read(program)?)?;
        }
        Ok(archive)
    }

    /// The archive of init, modules and program, cached by the artifact's hash (its file name).
    fn base_initramfs(&self, program: &Path) -> Result<Vec<u8>, BackendError> {
        let key = program.file_name().unwrap_or_default().to_string_lossy();
        let cached = self.root.join(format!("initramfs/{key}.cpio"));
        if let Ok(bytes) = std::fs::read(&cached) {
            return Ok(bytes);
        }
        let bytes = self.guest_archive(Some(program))?.finish()?;
        let temp = cached.with_extension("tmp");
        std::fs::write(&temp, &bytes)?;
        std::fs::rename(&temp, &cached)?;
        Ok(bytes)
    }

    /// The guest's environment: the database over the forward, listening on every interface.
    fn guest_env(spec: &SandboxSpec) -> BTreeMap<String, String> {
        let mut env = spec.env.clone();
        env.insert("HOST".into(), "0.0.0.0".into());
        let get = |k: &str| spec.env.get(k).cloned().unwrap_or_default();
        if spec.database_socket.is_some() && env.contains_key("PGUSER") {
            env.insert("PGHOST".into(), GUEST_DB_ADDR.into());
            env.insert("PGPORT".into(), "5432".into());
            env.insert(
                "DATABASE_URL".into(),
                format!(
                    "postgres://{}:{}@{GUEST_DB_ADDR}:5432/{}",
                    get("PGUSER"),
                    get("PGPASSWORD"),
                    get("PGDATABASE")
                ),
            );
        }
        env
    }

    fn guest_size(limits: &Limits) -> (u64, u32) {
        (
            crate::api::kinds::guest_memory_mb(limits.memory_max_mb),
            super::cpu_affinity::cpus_needed(limits),
        )
    }

    /// The guest's initramfs in `dir`: the cached base, then an archive of the environment and
    /// arguments, the key of its exit line (`guest_exit`), the small `facts` files that tell
    /// init what the guest has (`nx/network`, `nx/data`: empty markers; [`TMP_MB`]), and for a
    /// guest with a network `/etc/resolv.conf`; the VMM's uid owns it, 0600.
    #[allow(clippy::too_many_arguments)]
    fn write_initrd(
        &self,
        dir: &Path,
        program: &Path,
        env: &BTreeMap<String, String>,
        args: &[String],
        exit_key: &str,
        uid: u32,
        facts: &[(&str, &[u8])],
    ) -> Result<PathBuf, BackendError> {
        let mut initrd = self.base_initramfs(program)?;
        let pairs: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut own = Archive::new(Vec::new());
        own.file(
            "nx/env",
            0o600,
            &nul_separated(pairs.iter().map(String::as_str)),
        )?;
        own.file(
            "nx/args",
            0o600,
            &nul_separated(args.iter().map(String::as_str)),
        )?;
        own.file(guest_exit::KEY_FILE, 0o600, exit_key.as_bytes())?;
        for (name, text) in facts {
            own.file(name, 0o644, text)?;
        }
        if facts.iter().any(|(name, _)| *name == "nx/network") {
            own.dir("etc")?;
            own.file(
                "etc/resolv.conf",
                0o644,
                &std::fs::read(&self.resolv_conf).unwrap_or_default(),
            )?;
        }
        initrd.extend(own.finish()?);
        let path = dir.join("initrd.cpio");
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, &initrd)?;
        // The VMM runs as the deployment's (or task's) uid; nobody else reads the guest's secrets.
        chown(&path, Some(uid), Some(uid))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(path)
    }

    fn task_dir(&self, id: &str) -> PathBuf {
        self.root.join("tasks").join(id)
    }

    /// The initramfs of every guest booted ahead (see `handover`).
    fn warm_initrd(&self) -> PathBuf {
        self.root.join("warm.cpio")
    }

    /// The guest a snapshot is made of: a pool guest's (see `boot_ahead`), its empty task drive
    /// at `drive` (nxd's: the template runs as nxd).
    fn template(&self, drive: PathBuf, memory_max_mb: u64) -> Result<Template, BackendError> {
        let _ = std::fs::remove_file(&drive);
        handover::create_drive(&drive, nix::unistd::geteuid().as_raw())?;
        let disk = Disk {
            path: &drive,
            read_only: true,
        };
        let mut argv = self
            .task_vmm(&self.warm_initrd(), memory_max_mb, Some(disk), None)
            .argv;
        // It is saved with an `exec:` migration (see `snapshot`).
        vmm::allow_spawn(&mut argv);
        Ok(Template { argv, drive })
    }

    /// QEMU's `argv` in its jail (see `jail`): the guest's kernel and `files`.
    fn jailed(&self, argv: Vec<String>, files: &[(&Path, jail::Access)]) -> Vec<String> {
        let mut all = vec![(self.kernel.as_path(), jail::Access::ReadOnly)];
        all.extend_from_slice(files);
        jail::wrap(argv, &all, self.accel.accel == Accel::Kvm)
    }

    /// The VMM of a task's guest: no network device at all, only its own loopback; a disk when
    /// it is booted ahead (its task drive); the key of its exit line (`guest_exit`; none for a
    /// snapshot's template, which runs no task).
    fn task_vmm(
        &self,
        initrd: &Path,
        memory_max_mb: u64,
        disk: Option<Disk<'_>>,
        exit_key: Option<String>,
    ) -> LaunchSpec {
        let guest = Guest {
            kernel: &self.kernel,
            initrd,
            memory_mb: crate::api::kinds::guest_memory_mb(memory_max_mb),
            vcpus: 1,
            forward: None,
            egress: false,
            database_socket: None,
            tsc_khz: (self.accel.accel == Accel::Tcg)
                .then_some(self.tsc_khz)
                .flatten(),
            tap: "",
            disk,
        };
        LaunchSpec {
            argv: vmm::qemu(&guest, self.accel.accel),
            env: vmm_env(),
            seccomp: Vec::new(),
            console_exit: true,
            exit_key,
            ..LaunchSpec::default()
        }
    }
}

/// The guest runs static binaries only: it has no libraries.
fn static_binary(program: &Program) -> Result<&Path, BackendError> {
    match program {
        Program::Binary {
            path,
            linkage: Linkage::Static,
        } => Ok(path),
        Program::Binary { .. } => Err(BackendError::Prepare(
            "the microvm backend runs static binaries (the guest has no libraries): build with `--target x86_64-unknown-linux-musl` or `CGO_ENABLED=0`".into(),
        )),
        Program::Image { .. } => Err(BackendError::Prepare(
            "images run on the container backend (Podman): give the microvm backend a static binary".into(),
        )),
        Program::Bundle { .. } => Err(BackendError::Prepare(
            "bundles run on the container backend (bubblewrap): push it with --backend container, or give the microvm backend a static binary".into(),
        )),
    }
}

#[async_trait::async_trait]
impl SandboxBackend for MicrovmBackend {
    fn kind(&self) -> &'static str {
        "microvm"
    }

    fn runs_on(&self) -> String {
        format!("microvm: {} with {}", self.vmm, self.accel.report)
    }

    fn port_is_forwarded(&self) -> bool {
        true
    }

    fn handle(&self, deployment: &Deployment) -> SandboxHandle {
        SandboxHandle {
            backend: BackendKind::Microvm,
            unit: deployment.unit_name(),
            dir: self.root.join("deployments").join(deployment.id.as_str()),
        }
    }

    #[tracing::instrument(skip_all, fields(deployment = %spec.deployment.id))]
    async fn prepare(&self, spec: &SandboxSpec) -> Result<SandboxHandle, BackendError> {
        let path = static_binary(&spec.program)?;
        let handle = self.handle(&spec.deployment);
        std::fs::create_dir_all(&handle.dir)?;
        std::fs::set_permissions(&handle.dir, std::fs::Permissions::from_mode(0o711))?;
        let env = Self::guest_env(spec);
        let uid = spec.deployment.uid;
        // `/data`: an ext4 image as the guest's disk (the VMM opens it as the deployment's uid;
        // the guest's init gives its root to the program).
        let data = self.units.data_image(&handle, spec, GUEST_APP_UID)?;
        if let Some(image) = &data {
            chown(&image.image, Some(uid), Some(uid))?;
        }
        let tmp = spec.deployment.limits.tmp_mb.to_string();
        let mut facts = vec![("nx/network", &b""[..]), (TMP_MB, tmp.as_bytes())];
        if data.is_some() {
            facts.push(("nx/data", b""));
        }
        let exit_key = guest_exit::new_key();
        let initrd_path =
            self.write_initrd(&handle.dir, path, &env, &spec.args, &exit_key, uid, &facts)?;
        let (memory_mb, vcpus) = Self::guest_size(&spec.deployment.limits);
        let tap = format!("nx{}", spec.deployment.port);
        let guest = Guest {
            kernel: &self.kernel,
            initrd: &initrd_path,
            memory_mb,
            vcpus,
            forward: Some(std::net::SocketAddr::from((
                spec.network.address,
                spec.deployment.program_port(),
            ))),
            egress: spec.deployment.egress == crate::network::Egress::Public,
            database_socket: spec.database_socket.as_deref(),
            tsc_khz: (self.accel.accel == Accel::Tcg)
                .then_some(self.tsc_khz)
                .flatten(),
            tap: &tap,
            disk: data.as_ref().map(|image| Disk {
                path: &image.image,
                read_only: false,
            }),
        };
        let argv = match self.vmm {
            Vmm::Qemu => {
                let mut files = vec![(initrd_path.as_path(), jail::Access::ReadOnly)];
                if let Some(image) = &data {
                    files.push((image.image.as_path(), jail::Access::ReadWrite));
                }
                // Its directory, not the socket: PostgreSQL makes the socket anew at each start.
                if let Some(dir) = spec.database_socket.as_deref().and_then(Path::parent) {
                    files.push((dir, jail::Access::ReadWrite));
                }
                self.jailed(vmm::qemu(&guest, self.accel.accel), &files)
            }
            Vmm::CloudHypervisor => vmm::cloud_hypervisor(&guest),
            Vmm::Firecracker => {
                let config_path = handle.dir.join("firecracker.json");
                let (argv, config) = vmm::firecracker(&guest, &config_path);
                std::fs::write(&config_path, config.to_string())?;
                argv
            }
        };
        let launch = LaunchSpec {
            argv,
            env: vmm_env(),
            seccomp: Vec::new(),
            uid: Some(uid),
            console_exit: true,
            exit_key: Some(exit_key),
            stop: StopForward::Child,
            monitor: Some(self.units.monitor(&handle, spec)),
            network: Some(spec.network.clone()),
            ..LaunchSpec::default()
        };
        super::unit::write_launch_spec(&handle, &launch)?;
        Ok(handle)
    }

    #[tracing::instrument(skip_all, fields(unit = %handle.unit))]
    async fn start(&self, handle: &SandboxHandle, spec: &SandboxSpec) -> Result<(), BackendError> {
        self.units.start(handle, spec).await
    }

    async fn stop(&self, handle: &SandboxHandle, timeout: Duration) -> Result<(), BackendError> {
        self.units.stop(handle, timeout).await
    }

    async fn status(&self, handle: &SandboxHandle) -> Result<UnitState, BackendError> {
        self.units.status(handle).await
    }

    #[tracing::instrument(skip_all, fields(unit = %handle.unit))]
    async fn destroy(&self, handle: &SandboxHandle) -> Result<(), BackendError> {
        self.units.stop(handle, super::DEFAULT_STOP_TIMEOUT).await?;
        self.units.remove_dir(handle)
    }

    /// A guest with no network device at all: only its own loopback.
    #[tracing::instrument(skip_all, fields(task = %task.id))]
    async fn task_launch(&self, task: &TaskLaunch) -> Result<LaunchSpec, BackendError> {
        let program = static_binary(&task.program)?;
        let dir = self.task_dir(&task.id);
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
        let exit_key = guest_exit::new_key();
        let tmp = task.limits.tmp_mb.to_string();
        let initrd = self.write_initrd(
            &dir,
            program,
            &task.env,
            &task.args,
            &exit_key,
            task.uid,
            &[(TMP_MB, tmp.as_bytes())],
        )?;
        let mut spec = self.task_vmm(&initrd, task.limits.memory_max_mb, None, Some(exit_key));
        spec.argv = self.jailed(spec.argv, &[(&initrd, jail::Access::ReadOnly)]);
        Ok(LaunchSpec {
            uid: Some(task.uid),
            ..spec
        })
    }

    /// A guest of the shared initramfs with an empty task drive; its init waits for `NX-GO`.
    /// Restored from the snapshot of such a guest where there is one (see `snapshot`).
    #[tracing::instrument(skip_all, fields(task = %warm.id))]
    async fn boot_ahead(&self, warm: &WarmSandbox) -> Result<WarmLaunch, BackendError> {
        let dir = self.task_dir(&warm.id);
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
        let drive = dir.join("task.img");
        handover::create_drive(&drive, warm.uid)?;
        let memory_max_mb = warm.limits.memory_max_mb;
        let snapshot = match &self.snapshots {
            Some(snapshots) => {
                let template =
                    || self.template(snapshots.template_drive(memory_max_mb), memory_max_mb);
                snapshots.get(memory_max_mb, template).await
            }
            None => None,
        };
        let disk = Disk {
            path: &drive,
            read_only: true,
        };
        // The key reaches the guest with its task (`tasks::pool::Slot::go`).
        let exit_key = Some(guest_exit::new_key());
        let initrd = self.warm_initrd();
        let mut spec = LaunchSpec {
            uid: Some(warm.uid),
            ..self.task_vmm(&initrd, memory_max_mb, Some(disk), exit_key)
        };
        let mut files = vec![
            (initrd.as_path(), jail::Access::ReadOnly),
            (drive.as_path(), jail::Access::ReadOnly),
        ];
        if let Some(snapshot) = &snapshot {
            vmm::restore_from(&mut spec.argv, snapshot);
            files.push((snapshot.as_path(), jail::Access::ReadOnly));
        }
        spec.argv = self.jailed(std::mem::take(&mut spec.argv), &files);
        Ok(WarmLaunch {
            spec,
            restored: snapshot.is_some(),
        })
    }

    #[tracing::instrument(skip_all, fields(task = %warm.id))]
    async fn hand_over(&self, warm: &WarmSandbox, task: &TaskLaunch) -> Result<(), BackendError> {
        let program = static_binary(&task.program)?;
        let drive = self.task_dir(&warm.id).join("task.img");
        handover::write_task(&drive, program, &task.env, &task.args)
    }

    async fn forget_warm(&self, warm: &WarmSandbox) {
        let _ = std::fs::remove_dir_all(self.task_dir(&warm.id));
    }

    async fn task_cleanup(&self, task: &TaskLaunch) {
        let _ = std::fs::remove_dir_all(self.task_dir(&task.id));
    }
}
