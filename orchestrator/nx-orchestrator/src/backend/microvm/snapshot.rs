//! Snapshots of a guest booted ahead, so that the task pool restores guests instead of booting
//! them (`[microvm] snapshot`, QEMU only). Per guest memory size, nxd boots one *template*
//! guest exactly as the pool boots its guests (the shared initramfs, an empty task drive of the
//! same size), waits until its init waits for a task (`NX-READY`), and saves it with QEMU's
//! migration to a file (`migrate` to `exec:cat > FILE` over QMP; QEMU 7.2 has no `file:`
//! transport). A pool guest is then the same command line with its own task drive and
//! `-incoming exec:cat FILE`: QEMU loads the saved RAM and devices and runs on where the
//! template stopped, inside init's wait. The drive's contents are not part of the snapshot
//! (only the device's state), and init drops the drive's cached blocks before it reads its
//! task; the host's clock and fresh entropy come with `NX-GO` (every clone starts with the
//! template's clock and random state, see nx-vm-init's `console`).
//!
//! The template runs as nxd (like the accelerator probe: it runs no task); the file is nxd's,
//! 0644 (the idle guest's RAM holds nothing secret; the task uids read it, none may write it).
//! Snapshots live in `<state_dir>/microvm/snapshots` and go at every nxd start (the kernel, init
//! or QEMU may have changed).

use super::qmp::{Qmp, QmpError};
use super::vmm::sh_quote;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

/// What the template's init prints once it waits (nx-vm-init's `console::READY`).
const READY: &str = "NX-READY";
/// How long the template may take to boot, and then to be saved.
const TEMPLATE_TIMEOUT: Duration = Duration::from_secs(60);
/// The migration's bandwidth limit: none to speak of (QEMU 7.2's default is 32 MiB/s).
const MIGRATE_BYTES_PER_SEC: u64 = 8 << 30;

/// Why no snapshot was made (the pool then boots its guests).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("template guest: {0}")]
    Io(#[from] std::io::Error),
    #[error("template guest: {0}")]
    Backend(#[from] crate::backend::BackendError),
    #[error("template guest: {0}")]
    Qmp(#[from] QmpError),
    #[error("the template guest did not wait for a task within {} s: {said}", TEMPLATE_TIMEOUT.as_secs())]
    NotReady { said: String },
    #[error("saving the template guest: {0}")]
    Migration(String),
}

/// The snapshots of this nxd, one per guest memory size.
pub struct Snapshots {
    dir: PathBuf,
    /// Per guest memory (MiB): the snapshot, or `None` once making it failed (not tried again
    /// until nxd restarts).
    made: tokio::sync::Mutex<BTreeMap<u64, Option<PathBuf>>>,
}

/// How a template guest is run: its VMM's argv (without the QMP socket) and its task drive.
pub struct Template {
    pub argv: Vec<String>,
    pub drive: PathBuf,
}

impl Snapshots {
    /// Empties `dir` (snapshots of an earlier nxd) and makes it anew, 0755.
    pub fn new(dir: PathBuf) -> std::io::Result<Self> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self {
            dir,
            made: Default::default(),
        })
    }

    /// Where a template guest of `memory_mb` keeps its task drive.
    pub fn template_drive(&self, memory_mb: u64) -> PathBuf {
        self.dir.join(format!("template-{memory_mb}.img"))
    }

    /// The snapshot of a waiting guest of `memory_mb`, made from `template` the first time it
    /// is asked for; `None` when it cannot be made (logged once).
    #[tracing::instrument(skip_all, fields(memory_mb))]
    pub async fn get(
        &self,
        memory_mb: u64,
        template: impl FnOnce() -> Result<Template, crate::backend::BackendError>,
    ) -> Option<PathBuf> {
        let mut made = self.made.lock().await;
        if let Some(known) = made.get(&memory_mb) {
            return known.clone();
        }
        let file = self.dir.join(format!("guest-{memory_mb}.snap"));
        let started = Instant::now();
        let result = match template() {
            Ok(template) => self.make(&template, &file).await,
            Err(e) => Err(e.into()),
        };
        let _ = std::fs::remove_file(self.template_drive(memory_mb));
        let snapshot = match result {
            Ok(()) => {
                let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
                tracing::info!(
                    ms = started.elapsed().as_millis() as u64,
                    bytes,
                    "snapshot of a waiting guest made"
                );
                Some(file)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no snapshot: the task pool boots its guests");
                None
            }
        };
        made.insert(memory_mb, snapshot.clone());
        snapshot
    }

    /// Boots the template, waits for `NX-READY`, saves it to `file` (0644) and ends it.
    async fn make(&self, template: &Template, file: &Path) -> Result<(), SnapshotError> {
        let socket = template.drive.with_extension("qmp");
        let _ = std::fs::remove_file(&socket);
        let mut child = tokio::process::Command::new(&template.argv[0])
            .args(&template.argv[1..])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", socket.display()))
            .env_clear()
            .env(
                "PATH",
                "/run/current-system/sw/bin:/usr/local/bin:/usr/bin:/bin",
            )
            // The guest's console input stays open (and silent) while it runs.
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut said = Vec::new();
        let ready = tokio::time::timeout(TEMPLATE_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim() == READY {
                    return true;
                }
                said.push(line);
            }
            false
        })
        .await;
        if !matches!(ready, Ok(true)) {
            return Err(SnapshotError::NotReady {
                said: said.join("\n"),
            });
        }
        let temp = file.with_extension("tmp");
        let mut qmp = Qmp::connect(&socket, Duration::from_secs(5)).await?;
        qmp.execute(
            "migrate-set-parameters",
            serde_json::json!({ "max-bandwidth": MIGRATE_BYTES_PER_SEC }),
        )
        .await?;
        // The file appears (renamed) only once `cat` has written all of it.
        let uri = format!(
            "exec:cat > {temp} && mv {temp} {file}",
            temp = sh_quote(&temp),
            file = sh_quote(file)
        );
        qmp.execute("migrate", serde_json::json!({ "uri": uri }))
            .await?;
        let deadline = Instant::now() + TEMPLATE_TIMEOUT;
        loop {
            let state = qmp.execute("query-migrate", serde_json::json!({})).await?;
            match state["status"].as_str().unwrap_or("") {
                "completed" => break,
                "failed" | "cancelled" => {
                    return Err(SnapshotError::Migration(
                        state["error-desc"].as_str().unwrap_or("failed").to_owned(),
                    ))
                }
                _ if Instant::now() > deadline => {
                    return Err(SnapshotError::Migration(format!(
                        "not done within {} s",
                        TEMPLATE_TIMEOUT.as_secs()
                    )))
                }
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        // The template is done with: its end needs no answer.
        let _ = qmp.execute("quit", serde_json::json!({})).await;
        let _ = child.wait().await;
        let _ = std::fs::remove_file(&socket);
        while !file.exists() {
            if Instant::now() > deadline {
                return Err(SnapshotError::Migration(format!(
                    "{} was not written",
                    file.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644))?;
        Ok(())
    }
}
