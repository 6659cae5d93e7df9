//! What every backend's deployments share: the unit that runs the launcher, the launch spec it
//! reads, and the unit's life (start, stop, state, removal of the deployment's directory).

use super::data_disk::{DataImage, DataTemplates};
use super::launch::{LaunchSpec, MonitorSpec, OomScore};
use super::{BackendError, SandboxHandle, SandboxSpec};
use crate::api::UnitState;
use crate::supervisor::{Restart, SliceKind, StopTimeout, Supervisor, UnitOutput, UnitSpec};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The units of one backend's deployments.
pub struct DeploymentUnits {
    supervisor: Arc<Supervisor>,
    /// The nxd binary, which doubles as the launcher.
    launcher: PathBuf,
    settings: UnitSettings,
    /// The formatted filesystems sized `/data` images are copied from.
    data_templates: Arc<DataTemplates>,
}

/// What every deployment unit of a backend shares.
#[derive(Debug, Clone, Copy)]
pub struct UnitSettings {
    /// `RestartUSec`: the pause before a failed deployment is started again.
    pub restart_delay: Duration,
    /// Rotated log files kept beside `output.log` (`[logs] keep`).
    pub log_keep: u32,
}

impl DeploymentUnits {
    pub fn new(
        supervisor: Arc<Supervisor>,
        launcher: PathBuf,
        settings: UnitSettings,
        data_templates: Arc<DataTemplates>,
    ) -> Self {
        Self {
            supervisor,
            launcher,
            settings,
            data_templates,
        }
    }

    pub async fn start(
        &self,
        handle: &SandboxHandle,
        spec: &SandboxSpec,
    ) -> Result<(), BackendError> {
        let unit = deployment_unit(handle, spec, &self.launcher, self.settings.restart_delay);
        Ok(self.supervisor.start(&unit).await?)
    }

    pub async fn stop(
        &self,
        handle: &SandboxHandle,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        Ok(self
            .supervisor
            .stop_within(
                &handle.unit,
                Some(StopTimeout {
                    after: timeout,
                    tell_main: Some(super::launch::STOP_TIMEOUT_SIGNAL),
                }),
            )
            .await?)
    }

    /// systemd's state of the unit, its `Result` named as the monitor saw the end.
    pub async fn status(&self, handle: &SandboxHandle) -> Result<UnitState, BackendError> {
        let mut state = self.supervisor.state(&handle.unit).await?;
        super::exit::name_result(
            &mut state,
            super::exit::read_last_exit(&handle.dir).as_ref(),
        );
        Ok(state)
    }

    /// What the launcher's monitor does for a deployment: its log, capped at the deployment's
    /// `log_max_mb` with `[logs] keep` rotated files, and its directory.
    pub fn monitor(&self, handle: &SandboxHandle, spec: &SandboxSpec) -> MonitorSpec {
        MonitorSpec {
            log: handle.log_files(&spec.deployment.limits, self.settings.log_keep),
            dir: handle.dir.clone(),
            oom_score: match spec.program {
                super::Program::Image { .. } => OomScore::Container,
                _ => OomScore::Tenant,
            },
        }
    }

    /// The image of the deployment's `/data` (created from the backend's templates if
    /// missing), when it has a size: `None`
    /// for `disk_mb` 0, and for a deployment whose plain data dir already holds files (made
    /// before sizes existed; an image mounted over it would hide them). `root_owner` owns the
    /// filesystem's root directory: the deployment's uid in a container, the guest's program uid
    /// in a microVM.
    pub fn data_image(
        &self,
        handle: &SandboxHandle,
        spec: &SandboxSpec,
        root_owner: u32,
    ) -> Result<Option<DataImage>, BackendError> {
        let image = DataImage {
            image: handle.dir.join("data.img"),
            mountpoint: handle.data_dir(),
            size_mb: spec.deployment.limits.disk_mb,
            uid: root_owner,
        };
        let plain_with_files = !image.image.exists()
            && std::fs::read_dir(&image.mountpoint).is_ok_and(|mut d| d.next().is_some());
        if image.size_mb == 0 || plain_with_files {
            return Ok(None);
        }
        image
            .create(&self.data_templates)
            .map_err(BackendError::Prepare)?;
        Ok(Some(image))
    }

    /// Removes the deployment's directory (its unit stopped first).
    pub fn remove_dir(&self, handle: &SandboxHandle) -> Result<(), BackendError> {
        match std::fs::remove_dir_all(&handle.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

/// The unit of a deployment: `<launcher> launch <dir>/launch.json` (the launcher drops to the
/// deployment's uid itself), under the deployment's limits, its output appended to its log,
/// restarted on failure; a stop's SIGTERM goes to the launcher, which passes it to the program.
fn deployment_unit(
    handle: &SandboxHandle,
    spec: &SandboxSpec,
    launcher: &Path,
    restart_delay: Duration,
) -> UnitSpec {
    UnitSpec {
        name: handle.unit.clone(),
        description: format!(
            "NX deployment {} of sandbox {}",
            spec.deployment.id, spec.deployment.sandbox
        ),
        argv: vec![
            launcher.display().to_string(),
            "launch".into(),
            handle.dir.join("launch.json").display().to_string(),
        ],
        user: None,
        limits: Some(spec.deployment.limits),
        output: UnitOutput::File(handle.log_file()),
        restart: Restart::OnFailure(restart_delay),
        slice: SliceKind::Sandbox(spec.deployment.sandbox.to_string()),
        remain_after_exit: false,
        ambient_capabilities: 0,
        cpu_affinity: super::cpu_affinity::pinned(
            &spec.deployment,
            &super::cpu_affinity::available(),
        ),
        graceful_stop: Some(super::MAX_STOP_TIMEOUT),
    }
}

/// Writes a deployment's launch spec (0400, root's) where its unit's launcher reads it.
pub fn write_launch_spec(handle: &SandboxHandle, launch: &LaunchSpec) -> Result<(), BackendError> {
    use std::os::unix::fs::PermissionsExt;
    let path = handle.dir.join("launch.json");
    let json =
        serde_json::to_vec_pretty(launch).map_err(|e| BackendError::Prepare(e.to_string()))?;
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, json)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400))?;
    Ok(())
}
