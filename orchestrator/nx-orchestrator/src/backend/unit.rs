//! What every backend's deployments share: the unit that runs the launcher, and the launch spec
//! it reads.

use super::launch::LaunchSpec;
use super::{BackendError, SandboxHandle, SandboxSpec};
use crate::supervisor::{UnitOutput, UnitSpec};
use std::path::Path;
use std::time::Duration;

/// The unit of a deployment: `<launcher> launch <dir>/launch.json` (the launcher drops to the
/// deployment's uid itself), under the deployment's limits, its output appended to its log,
/// restarted on failure.
pub fn deployment_unit(
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
        restart_delay: Some(restart_delay),
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
