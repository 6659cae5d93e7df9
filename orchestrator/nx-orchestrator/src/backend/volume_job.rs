//! `volume-job <spec>`: how nxd reaches a volume's files outside any deployment (a preview's
//! copy at push, `nx volume backup|restore`, the final backup of `nx sandbox rm`). nxd runs its
//! own binary again (`reexec`) as a child; the child makes a mount namespace of its own
//! (`data_disk::own_mount_namespace`), mounts the images like a deployment's launcher does
//! (`data_disk::VolumeDisk::mount`: the loop device a running deployment has attached is
//! shared, never a second one), then runs the steps, well-known tools (`cp -a`, GNU `tar`,
//! `chown`, `chmod`), one after the other. Its mounts end with it, whatever happens.

use super::data_disk::VolumeDisk;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What a job mounts and runs; written as JSON to a file that the child reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeJob {
    /// Mounted first, in order.
    pub disks: Vec<VolumeDisk>,
    /// Run in order; the job stops at the first that fails.
    pub steps: Vec<Step>,
}

/// One program of a job: `argv`, successful when it exits 0 or with one of `also_ok` (GNU
/// tar's 1: "some files differ", a file changed while it was read).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub argv: Vec<String>,
    #[serde(default)]
    pub also_ok: Vec<i32>,
}

impl Step {
    /// A step that must exit 0.
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            also_ok: Vec::new(),
        }
    }
}

/// The failure of a job, as its child reported it (its stderr) or as it could not be run.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JobError(pub String);

impl VolumeJob {
    /// Runs the job in a child (this very binary, `volume-job <spec>`), its spec a temp file in
    /// `work_dir`; waits for it. Errors: the child's stderr (the step that failed and why).
    #[tracing::instrument(skip_all, fields(disks = self.disks.len(), steps = self.steps.len()))]
    pub async fn run(&self, work_dir: &Path) -> Result<(), JobError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| JobError(format!("{what}: {e}"));
        std::fs::create_dir_all(work_dir).map_err(|e| fail("creating the job's dir", &e))?;
        let spec = tempfile::Builder::new()
            .prefix("volume-job-")
            .suffix(".json")
            .tempfile_in(work_dir)
            .map_err(|e| fail("writing the job's spec", &e))?;
        serde_json::to_writer(spec.as_file(), self)
            .map_err(|e| fail("writing the job's spec", &e))?;
        let exe = std::env::current_exe().map_err(|e| fail("locating nxd's binary", &e))?;
        let out = tokio::process::Command::new(exe)
            .arg("volume-job")
            .arg(spec.path())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| fail("starting the volume job", &e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(JobError(
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ))
        }
    }
}

/// The child's side (`reexec`): mounts, runs the steps; `Err` says what failed.
#[cfg(target_os = "linux")]
pub fn main(spec: &Path) -> Result<(), String> {
    let job: VolumeJob = serde_json::from_slice(
        &std::fs::read(spec).map_err(|e| format!("reading {}: {e}", spec.display()))?,
    )
    .map_err(|e| format!("reading {}: {e}", spec.display()))?;
    super::data_disk::own_mount_namespace()?;
    for disk in &job.disks {
        disk.mount()?;
    }
    for step in &job.steps {
        let (program, args) = step
            .argv
            .split_first()
            .ok_or_else(|| "a step with no program".to_owned())?;
        let out = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        let code = out.status.code().unwrap_or(-1);
        if !out.status.success() && !step.also_ok.contains(&code) {
            return Err(format!(
                "{program} failed (exit {code}): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}
