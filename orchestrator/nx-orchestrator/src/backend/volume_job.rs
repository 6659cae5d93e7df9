//! `volume-job <spec>`: how nxd reaches a volume's files outside any deployment (a preview's
//! copy at push, `nx volume backup|restore`, the final backup of `nx sandbox rm`). nxd runs its
//! own binary again (`reexec`) in a transient unit `nxvol-<what>-<id>.service` of the control
//! plane's slice ([`UNITS`]), so that a job does not outlive the nxd that wanted it: nxd's
//! start stops every such unit left by a crash, and systemd kills all its processes
//! ([`crate::Orchestrator::recover_volume_jobs`]). The job makes a mount namespace of its own
//! (`data_disk::own_mount_namespace`), mounts the images like a deployment's launcher does
//! (`data_disk::VolumeDisk::mount`: the loop device a running deployment has attached is
//! shared, never a second one), then runs the steps, well-known tools (`cp -a`, GNU `tar`,
//! `chown`, `chmod`), one after the other. Its mounts end with it, whatever happens.

use super::data_disk::VolumeDisk;
use crate::api::systemd::ActiveState;
use crate::supervisor::{Supervisor, UnitSpec};
use serde::{Deserialize, Serialize};
use std::io::Read;
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

/// The units volume jobs run in (a glob for systemd's `ListUnitsByPatterns`).
pub const UNITS: &str = "nxvol-*.service";

impl VolumeJob {
    /// Runs the job to its end in the transient unit `nxvol-<what>-<id>.service` (`id`: the
    /// name of `work_dir`, a directory of its own that holds its spec and its output):
    /// `<launcher> volume-job <spec>` as root, `launcher` being the copy of nxd in the state
    /// dir (`launcher_install::launcher_path`; the running binary may sit under a /tmp the
    /// unit does not see). Errors: the job's output (the step that failed and why: its first
    /// [`ERROR_LINES`] lines, nxd's log has more), or why it could not be run or did not end
    /// (its unit vanished: `Supervisor::wait_ended`).
    #[tracing::instrument(skip_all, fields(what, disks = self.disks.len(), steps = self.steps.len()))]
    pub async fn run(
        &self,
        supervisor: &Supervisor,
        launcher: &Path,
        what: &str,
        work_dir: &Path,
    ) -> Result<(), JobError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| JobError(format!("{what}: {e}"));
        let spec = work_dir.join("job.json");
        let log = work_dir.join("job.log");
        std::fs::write(
            &spec,
            serde_json::to_vec(self).map_err(|e| fail("writing the job's spec", &e))?,
        )
        .map_err(|e| fail("writing the job's spec", &e))?;
        let id = work_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| JobError(format!("{} names no directory", work_dir.display())))?;
        let unit = UnitSpec::run_to_end(
            format!("nxvol-{what}-{id}.service"),
            format!("NX volume job ({what})"),
            vec![
                launcher.display().to_string(),
                "volume-job".to_owned(),
                spec.display().to_string(),
            ],
            log.clone(),
        );
        supervisor
            .start(&unit)
            .await
            .map_err(|e| fail("starting the volume job", &e))?;
        fail::fail_point!("volumes::job");
        let state = supervisor
            .wait_ended_then_stop(&unit.name)
            .await
            .map_err(|e| fail("waiting for the volume job", &e))?;
        if state.active == ActiveState::Failed {
            let output = read_head(&log, LOG_BYTES);
            tracing::warn!(%output, exit_status = state.exit_status, "the volume job failed");
            return Err(JobError(format!(
                "{} (exit status {})",
                first_lines(output.trim(), ERROR_LINES),
                state.exit_status
            )));
        }
        Ok(())
    }
}

/// How much of a failed job's output nxd reads (and logs): tools print a line per failing
/// file, and a volume holds many.
const LOG_BYTES: u64 = 64 * 1024;
/// How many lines of a failed job's output its error quotes; nxd's log has more.
pub const ERROR_LINES: usize = 5;

/// The first `limit` bytes of the file at `path`, as text (empty when it cannot be read).
fn read_head(path: &Path, limit: u64) -> String {
    let mut head = Vec::new();
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.take(limit).read_to_end(&mut head);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// The first `n` lines of `text`, and how many more there were.
fn first_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= n {
        return text.to_owned();
    }
    format!(
        "{} ... and {} more lines, in nxd's log",
        lines[..n].join("\n"),
        lines.len() - n
    )
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
