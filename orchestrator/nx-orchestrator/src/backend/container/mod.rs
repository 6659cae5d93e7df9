//! The `container` backend: each deployment runs a bare binary under bubblewrap (or an image
//! under Podman), as its own unprivileged uid, inside a transient systemd service.
//!
//! The unit runs `nxd launch <dir>/launch.json`: the launcher opens the seccomp programs (each
//! bwrap needs freshly opened fds, so this happens at every start and restart), drops to the
//! deployment's uid, sets the program's environment (kept out of argv, so not visible in
//! /proc/*/cmdline) and execs bwrap.

mod bwrap;
pub mod podman;

pub(crate) use bwrap::{program as bwrap_program, ISOLATION as BWRAP_ISOLATION};
pub mod seccomp;

use super::data_disk::{DataTemplates, VolumeDisk};
use super::host_files::EtcTree;
use super::pts_mount::PtsMount;
use super::tmp_mount::TmpMount;
use super::unit::{DeploymentUnits, UnitSettings};
use super::{BackendError, Program, SandboxBackend, SandboxHandle, SandboxSpec, TaskLaunch};
use crate::api::UnitState;
use crate::artifact::verify::Linkage;
use crate::backend::launch::{LaunchSpec, SandboxEnvForm, StopForward, SANDBOX_ENV_FILE};
use crate::domain::{BackendKind, Deployment, Runtime};
use crate::supervisor::Supervisor;
use bwrap::{Sandbox, VolumeBind};
use podman::Podman;
use podman::{Container, Tmp};
use std::collections::HashSet;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The network of a container sandbox.
#[derive(Debug, Clone, Copy)]
pub enum SandboxNetwork<'a> {
    /// A network namespace of its own that holds only its loopback (a task's).
    Loopback,
    /// The namespace its launcher set up (a deployment's), with `resolv_conf` as its
    /// /etc/resolv.conf (the gateway as resolver) and its sandbox's hosts file's directory
    /// (`crate::services`).
    Launcher {
        resolv_conf: &'a Path,
        hosts_dir: &'a Path,
    },
}

/// A deployment's `/data` as its sandbox mounts it.
#[derive(Debug, Clone, Copy)]
pub struct DataDir<'a> {
    /// The host's directory: the mount point of its image, or a plain directory.
    pub path: &'a Path,
    /// Mounted read-only: the deployment has no `/data` to write (`limits.disk_mb` 0), so that
    /// nothing it writes lands on the host's disk unbounded (attacker s8 F2).
    pub read_only: bool,
}

pub struct ContainerBackend {
    units: DeploymentUnits,
    /// `<state_dir>/deployments`
    root: PathBuf,
    /// The seccomp programs, compiled once.
    seccomp: Vec<PathBuf>,
    podman: Podman,
    /// The deployments' resolv.conf (see `network::dns`).
    resolv_conf: PathBuf,
    /// nxd's state dir (sandboxes' hosts files: `crate::services::hosts_dir`).
    state_dir: PathBuf,
    /// Where each task's launcher mounts the task's devpts instance, in its own mount
    /// namespace (`<state_dir>/task-pts`; on the host an empty directory).
    task_ptys: PtsMount,
}

impl ContainerBackend {
    pub fn new(
        supervisor: Arc<Supervisor>,
        state_dir: &Path,
        launcher: PathBuf,
        settings: UnitSettings,
        data_templates: Arc<DataTemplates>,
    ) -> Result<Self, BackendError> {
        let root = state_dir.join("deployments");
        std::fs::create_dir_all(&root)?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711))?;
        let seccomp = seccomp::write_programs(&state_dir.join("seccomp"))?;
        let task_ptys = PtsMount {
            dir: state_dir.join("task-pts"),
        };
        std::fs::create_dir_all(&task_ptys.dir)?;
        Ok(Self {
            units: DeploymentUnits::new(supervisor, launcher, settings, data_templates),
            root,
            seccomp,
            podman: Podman::new(state_dir)?,
            resolv_conf: crate::network::resolv_conf_path(state_dir),
            state_dir: state_dir.to_owned(),
            task_ptys,
        })
    }
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[async_trait::async_trait]
impl SandboxBackend for ContainerBackend {
    fn kind(&self) -> &'static str {
        "container (bubblewrap)"
    }

    fn handle(&self, deployment: &Deployment) -> SandboxHandle {
        SandboxHandle {
            backend: BackendKind::Container,
            unit: deployment.unit_name(),
            dir: self.root.join(deployment.id.as_str()),
        }
    }

    #[tracing::instrument(skip_all, fields(deployment = %spec.deployment.id))]
    async fn prepare(&self, spec: &SandboxSpec) -> Result<SandboxHandle, BackendError> {
        self.prepare_as(spec, Preparing::Cold).await
    }

    #[tracing::instrument(skip_all, fields(deployment = %spec.deployment.id))]
    async fn prepare_standby(&self, spec: &SandboxSpec) -> Result<SandboxHandle, BackendError> {
        self.prepare_as(spec, Preparing::Standby).await
    }

    #[tracing::instrument(skip_all, fields(unit = %handle.unit))]
    async fn claim(&self, handle: &SandboxHandle, spec: &SandboxSpec) -> Result<(), BackendError> {
        let Program::Binary { path, .. } = &spec.program else {
            return Err(BackendError::Unavailable(
                "a standby runs a single binary, not a bundle or an image".into(),
            ));
        };
        let (path, main) = (path.clone(), standby_slot(handle).join("main"));
        // A link where the store's file system holds the deployments' (and the file has
        // links left): one call, made here (a hop to a blocking thread cost more than it, on
        // a push's critical path); else a copy (of up to the artifact cap: off the runtime's
        // threads, review18 #8).
        if std::fs::hard_link(&path, &main).is_err() {
            tokio::task::spawn_blocking(move || std::fs::copy(&path, &main).map(drop))
                .await
                .map_err(std::io::Error::other)??;
        }
        let mut argv = vec![bwrap::APP_PATH.to_owned()];
        argv.extend(spec.args.iter().cloned());
        let message = crate::standby::message(&argv, &spec.env);
        crate::standby::send(&handle.dir.join(STANDBY_INPUT), &message)
            .await
            .map_err(|e| BackendError::Unavailable(format!("the standby is not waiting: {e}")))?;
        // Its restarts run the program as a cold start's does: their launch spec is written
        // while the waiter execs it, none of the push's time before its program runs (a
        // restart comes `sandbox.restart_delay_secs` after an end, 1 s unless configured; the
        // readiness wait counts one that came sooner, of a program that ended at once, as its
        // end: `readiness::exited`).
        self.prepare_as(spec, Preparing::Claimed).await?;
        // A deployment's directory from here on (nxd's start sweeps marked ones).
        std::fs::remove_file(handle.dir.join(crate::standby::MARK))?;
        Ok(())
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
        self.podman.remove(&container_name(&handle.unit)).await;
        self.units.remove_dir(handle)
    }

    #[tracing::instrument(skip_all, fields(task = %task.id))]
    async fn task_launch(&self, task: &TaskLaunch) -> Result<LaunchSpec, BackendError> {
        Ok(match &task.program {
            Program::Binary { .. } | Program::Bundle { .. } => LaunchSpec {
                argv: task_command(
                    &task.program,
                    &task.args,
                    task.limits.tmp_mb << 20,
                    Some(&self.task_ptys.dir),
                ),
                sandbox_env: task.env.clone(),
                sandbox_env_form: SandboxEnvForm::BwrapArgs,
                seccomp: self.seccomp.clone(),
                uid: Some(task.uid),
                nofile: Some(task.limits.nofile),
                exit_report: true,
                ptys: Some(self.task_ptys.clone()),
                ..LaunchSpec::default()
            },
            Program::Image {
                archive,
                image_id,
                unpacked_bytes,
            } => {
                self.podman.load(archive, image_id, *unpacked_bytes).await?;
                let argv = self.podman.command(&Container {
                    name: &task_container(&task.id),
                    hostname: TASK_HOSTNAME,
                    image_id,
                    uid: task.uid,
                    args: &task.args,
                    env_file: Path::new(SANDBOX_ENV_FILE),
                    data_dir: None,
                    database_socket: None,
                    network: SandboxNetwork::Loopback,
                    runtime: Runtime::Runc,
                    tmp: Tmp::Tmpfs,
                    ptys: Some(&self.task_ptys.dir),
                    tmp_mb: task.limits.tmp_mb,
                    volumes: &[],
                    gids: &[],
                });
                LaunchSpec {
                    argv,
                    env: self.podman.env(),
                    sandbox_env: task.env.clone(),
                    sandbox_env_form: SandboxEnvForm::EnvFile,
                    nofile: Some(task.limits.nofile),
                    ptys: Some(self.task_ptys.clone()),
                    ..LaunchSpec::default()
                }
            }
        })
    }

    async fn task_cleanup(&self, task: &TaskLaunch) {
        if matches!(task.program, Program::Image { .. }) {
            self.podman.remove(&task_container(&task.id)).await;
        }
    }

    async fn remove_images(
        &self,
        keep: &HashSet<String>,
        unchanged: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<Vec<String>, BackendError> {
        self.podman.remove_images(keep, unchanged).await
    }
}

/// The standby's FIFO in its deployment's directory (`LaunchSpec::standby_input`).
const STANDBY_INPUT: &str = "standby-input";

/// A standby's `/app`, where its push links the binary in as `main`.
fn standby_slot(handle: &SandboxHandle) -> PathBuf {
    handle.dir.join("app")
}

/// What [`ContainerBackend::prepare_as`] lays out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Preparing {
    /// A deployment's sandbox (`prepare`).
    Cold,
    /// A standby's: the sandbox runs `spec.program` (the waiter) with its flag and no
    /// environment, the slot bound at `/app` and the FIFO as its input.
    Standby,
    /// The launch spec of a deployment made from a standby, for its restarts: as `Cold`'s,
    /// with the standby's `/etc` tree kept as it is (its sandbox runs on it).
    Claimed,
}

impl ContainerBackend {
    /// Lays out what `how` says and writes the launch spec (see [`Preparing`]).
    async fn prepare_as(
        &self,
        spec: &SandboxSpec,
        how: Preparing,
    ) -> Result<SandboxHandle, BackendError> {
        let standby = how == Preparing::Standby;
        let handle = self.handle(&spec.deployment);
        let uid = spec.deployment.uid;
        let limits = spec.deployment.limits;
        let data = handle.data_dir();
        std::fs::create_dir_all(&data)?;
        set_mode(&handle.dir, 0o711)?;
        let data_image = self.units.data_image(&handle, spec, spec.deployment.uid)?;
        if data_image.is_none() {
            // Owned by the deployment's uid, reachable by nobody else; it survives restarts.
            chown(&data, Some(uid), Some(uid))?;
        }
        set_mode(&data, 0o700)?;
        // A plain directory is written only by a deployment made before sizes existed
        // (`DeploymentUnits::data_image`); with `disk_mb` 0 it is empty and read-only.
        let data_dir = DataDir {
            path: &data,
            read_only: limits.disk_mb == 0,
        };
        let disks: Vec<VolumeDisk> = spec
            .volumes
            .iter()
            .map(|v| VolumeDisk {
                image: v.image.clone(),
                mountpoint: handle.dir.join("volumes").join(v.name.as_str()),
                gid: v.gid,
            })
            .collect();
        let binds: Vec<VolumeBind> = disks
            .iter()
            .zip(&spec.volumes)
            .map(|(disk, v)| VolumeBind {
                mountpoint: disk.mountpoint.clone(),
                path: v.path.clone(),
            })
            .collect();
        let gids: Vec<u32> = disks.iter().map(|d| d.gid).collect();
        let hostname = spec.deployment.sandbox.as_str();
        let socket = spec.database_socket.as_deref();
        let hosts_dir = crate::services::hosts_dir(&self.state_dir, hostname);
        crate::services::ensure_hosts(&hosts_dir)?;
        let network = SandboxNetwork::Launcher {
            resolv_conf: &self.resolv_conf,
            hosts_dir: &hosts_dir,
        };
        let etc = match &spec.program {
            Program::Image { .. } => None,
            program => {
                let (dir, loader) = (
                    handle.dir.join("etc"),
                    matches!(bwrap_app(program).1, Linkage::Dynamic { .. }),
                );
                Some(match how {
                    Preparing::Claimed => EtcTree::as_laid_out(dir, loader),
                    _ => EtcTree::lay_out(dir, uid, &self.resolv_conf, loader)?,
                })
            }
        };
        let ptys = PtsMount {
            dir: handle.dir.join("pts"),
        };
        let standby_dir = match standby {
            true => Some(crate::standby::lay_out(
                &standby_slot(&handle),
                &handle.dir.join(STANDBY_INPUT),
            )?),
            false => None,
        };
        let standby_args = [crate::standby::WAITER_FLAG.to_owned()];
        let mut launch = match &spec.program {
            Program::Binary { .. } | Program::Bundle { .. } => LaunchSpec {
                argv: bwrap::command(&Sandbox {
                    hostname,
                    app: match (&spec.program, &standby_dir) {
                        (Program::Binary { path, .. }, Some(slot)) => {
                            bwrap::App::Standby { slot, waiter: path }
                        }
                        (program, _) => bwrap_app(program).0,
                    },
                    linkage: bwrap_app(&spec.program).1,
                    etc: etc.as_ref(),
                    args: if standby { &standby_args } else { &spec.args },
                    data_dir: Some(data_dir),
                    database_socket: socket,
                    network,
                    tmp_bytes: limits.tmp_mb << 20,
                    volumes: &binds,
                    ptys: Some(&ptys.dir),
                }),
                sandbox_env: if standby {
                    Default::default()
                } else {
                    spec.env.clone()
                },
                sandbox_env_form: SandboxEnvForm::BwrapArgs,
                seccomp: self.seccomp.clone(),
                uid: Some(uid),
                stop: StopForward::Sandboxed,
                standby_input: standby.then(|| handle.dir.join(STANDBY_INPUT)),
                network: Some(spec.network.clone()),
                ptys: Some(ptys),
                ..LaunchSpec::default()
            },
            // Podman runs as root and starts the container as the deployment's uid.
            Program::Image {
                archive,
                image_id,
                unpacked_bytes,
            } => {
                self.podman.load(archive, image_id, *unpacked_bytes).await?;
                let env_file = handle.dir.join("env");
                let tmp = TmpMount {
                    dir: handle.dir.join("tmp"),
                    size_mb: limits.tmp_mb,
                };
                let lines: String = spec.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
                std::fs::write(&env_file, lines)?;
                set_mode(&env_file, 0o600)?;
                LaunchSpec {
                    argv: self.podman.command(&Container {
                        name: &container_name(&handle.unit),
                        hostname,
                        image_id,
                        uid,
                        args: &spec.args,
                        env_file: &env_file,
                        data_dir: Some(data_dir),
                        database_socket: socket,
                        network,
                        runtime: spec.deployment.runtime,
                        tmp: Tmp::Mounted(&tmp.dir),
                        ptys: Some(&ptys.dir),
                        tmp_mb: limits.tmp_mb,
                        volumes: &binds,
                        gids: &gids,
                    }),
                    env: self.podman.env(),
                    stop: StopForward::Child,
                    network: Some(spec.network.clone()),
                    tmp: Some(tmp.clone()),
                    ptys: Some(ptys.clone()),
                    ..LaunchSpec::default()
                }
            }
        };
        launch.monitor = Some(self.units.monitor(&handle, spec));
        launch.data_image = data_image;
        launch.volumes = disks;
        launch.nofile = Some(limits.nofile);
        super::unit::write_launch_spec(&handle, &launch)?;
        Ok(handle)
    }
}

/// What bubblewrap runs of a binary or a bundle, and its linkage. Images go to Podman: the
/// callers match them first.
fn bwrap_app(program: &Program) -> (bwrap::App<'_>, &Linkage) {
    match program {
        Program::Bundle {
            root,
            manifest,
            linkage,
        } => (
            bwrap::App::Bundle {
                root,
                entry: &manifest.entry,
                argv0: manifest.argv0(),
            },
            linkage,
        ),
        Program::Binary { path, linkage } => (bwrap::App::Binary(path), linkage),
        Program::Image { .. } => unreachable!("images run under Podman"),
    }
}

/// A task's hostname.
const TASK_HOSTNAME: &str = "task";

/// The bubblewrap command line (`bwrap` and its arguments) of a task that runs `program` (a
/// binary or a bundle; an image panics: it runs under Podman) with `args`, a `/tmp` of
/// `tmp_bytes` and `ptys` (the directory the launcher mounts the task's devpts instance on,
/// see `pts_mount`; `None`: bubblewrap's own, unbounded): what a task's launcher runs (see
/// `task_end`), with the seccomp programs on fds 10 and up (`seccomp::write_programs`); the
/// sandbox ends with the program. nx-bench runs the same command bare, as the floor of tasks.
pub fn task_command(
    program: &Program,
    args: &[String],
    tmp_bytes: u64,
    ptys: Option<&Path>,
) -> Vec<String> {
    let (app, linkage) = bwrap_app(program);
    bwrap::command(&Sandbox {
        hostname: TASK_HOSTNAME,
        app,
        linkage,
        args,
        data_dir: None,
        database_socket: None,
        network: SandboxNetwork::Loopback,
        tmp_bytes,
        etc: None,
        volumes: &[],
        ptys,
    })
}

/// The container of a deployment's unit `nx-<id>.service` is `nx-<id>`.
fn container_name(unit: &str) -> String {
    unit.trim_end_matches(".service").to_owned()
}

fn task_container(id: &str) -> String {
    format!("nxt-{id}")
}
