//! Volume backups: portable tar archives (GNU tar, POSIX pax format, owners written as 0 so
//! that no host uid travels with them, `lost+found` left out), kept on the host at
//! `<state_dir>/backups/<sandbox>/volumes/<volume>/<id>.tar` (`id` a UTC time stamp, as a
//! database backup's). `nx volume backup` makes one of the live volume (files that change
//! while it is read are archived as tar found them); `nx volume restore` unpacks one into a new
//! filesystem and puts it in place of the volume only when that worked; `nx sandbox rm` makes a
//! final one of each volume after its deployments stopped, unless told not to.

use super::{gid, remove_path, VolumeRow};
use crate::api::volumes::{VolumeBackup, VolumeRestored, VolumeSource};
use crate::backend::data_disk::VolumeDisk;
use crate::backend::volume_job::{Step, VolumeJob};
use crate::backend::{SandboxBackend, DEFAULT_STOP_TIMEOUT};
use crate::databases::backup::{check_id, now_id};
use crate::domain::{Deployment, Desired};
use crate::error::Error;
use crate::names::{SandboxName, VolumeName};
use crate::state::StateError;
use crate::Orchestrator;
use std::path::{Path, PathBuf};

/// Exit code of GNU tar when a file changed while it was read (the archive is still made).
const TAR_FILES_DIFFER: i32 = 1;

impl Orchestrator {
    fn volume_backup_dir(&self, sandbox: &SandboxName, volume: &str) -> PathBuf {
        self.config
            .state_dir
            .join("backups")
            .join(sandbox.as_str())
            .join("volumes")
            .join(volume)
    }

    /// A backup's `.partial` archives (`<state_dir>/backups/*/volumes/*/`), left by a crash
    /// while it was written: removed at nxd's start.
    pub(super) fn remove_partial_backups(&self) -> Result<(), Error> {
        let backups = self.config.state_dir.join("backups");
        let volumes = std::fs::read_dir(&backups)
            .into_iter()
            .flatten()
            .flatten()
            .map(|sandbox| sandbox.path().join("volumes"));
        let archives = volumes
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flatten()
            .flatten()
            .filter_map(|volume| std::fs::read_dir(volume.path()).ok())
            .flatten()
            .flatten()
            .map(|archive| archive.path())
            .filter(|path| path.extension().is_some_and(|e| e == "partial"));
        for path in archives {
            tracing::warn!(path = %path.display(), "left by a crash: removed");
            remove_path(&path)?;
        }
        Ok(())
    }

    /// A backup kept on the host, by id. Errors: `Invalid` for an id that is not one,
    /// `NotFound` when there is none.
    pub fn volume_backup_path(
        &self,
        sandbox: &SandboxName,
        volume: &VolumeName,
        id: &str,
    ) -> Result<PathBuf, Error> {
        check_id(id)?;
        let path = self
            .volume_backup_dir(sandbox, volume.as_str())
            .join(format!("{id}.tar"));
        if path.is_file() {
            Ok(path)
        } else {
            Err(Error::NotFound(format!(
                "volume {volume} of sandbox {sandbox} has no backup {id}: `nx volume backup {sandbox} {volume}` makes one"
            )))
        }
    }

    /// A temp file for an uploaded archive (`nx volume restore FILE`), removed when dropped.
    pub fn volume_upload_file(&self) -> Result<tempfile::NamedTempFile, Error> {
        let dir = self.volume_jobs_dir();
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        tempfile::Builder::new()
            .prefix("upload-")
            .suffix(".tar")
            .tempfile_in(&dir)
            .map_err(Error::io("creating a file for the upload"))
    }

    /// `nx volume backup`: an archive of the volume's files as they are now.
    #[tracing::instrument(skip_all, fields(sandbox = %sandbox, volume = %name))]
    pub async fn backup_volume(
        &self,
        sandbox: &SandboxName,
        name: &VolumeName,
    ) -> Result<VolumeBackup, Error> {
        let row = self.volume_row(sandbox, name).await?;
        self.archive(sandbox, &row).await
    }

    async fn archive(&self, sandbox: &SandboxName, row: &VolumeRow) -> Result<VolumeBackup, Error> {
        let volume = VolumeName::parse(&row.name)?;
        let dir = self.volume_backup_dir(sandbox, &row.name);
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        let id = now_id();
        let path = dir.join(format!("{id}.tar"));
        let partial = dir.join(format!("{id}.tar.partial"));
        let job = self.volume_job_dir()?;
        let mountpoint = job.path().join("volume");
        let mut tar = Step::new([
            "tar",
            "--create",
            "--format=pax",
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "--exclude=./lost+found",
        ]);
        tar.argv.extend([
            format!("--file={}", partial.display()),
            format!("--directory={}", mountpoint.display()),
            ".".to_owned(),
        ]);
        tar.also_ok.push(TAR_FILES_DIFFER);
        let made = VolumeJob {
            disks: vec![VolumeDisk {
                image: self.volume_image(sandbox, &row.name),
                mountpoint,
                gid: gid(row.id),
            }],
            steps: vec![tar],
        }
        .run(&self.supervisor, "backup", job.path())
        .await;
        if let Err(e) = made {
            remove_path(&partial)?;
            return Err(Error::Conflict(format!(
                "backing up volume {volume} failed: {e}"
            )));
        }
        std::fs::rename(&partial, &path)
            .map_err(Error::io(format!("renaming {}", partial.display())))?;
        let size = std::fs::metadata(&path)
            .map_err(Error::io(format!("reading {}", path.display())))?
            .len();
        tracing::info!(%id, size, "volume backed up");
        Ok(VolumeBackup {
            volume,
            id,
            size,
            path: path.display().to_string(),
        })
    }

    /// `nx volume restore`: the archive's files unpacked into a new filesystem of the volume's
    /// size (owned by root and the volume's group, group-writable, as deployments write them),
    /// which replaces the volume only when unpacking worked: a bad archive leaves the volume as
    /// it was. The running deployments that mount the volume itself (production) are stopped
    /// for the swap and started again on the restored files; previews' copies are untouched.
    #[tracing::instrument(skip_all, fields(sandbox = %sandbox, volume = %name))]
    pub async fn restore_volume(
        &self,
        sandbox: &SandboxName,
        name: &VolumeName,
        archive: &Path,
    ) -> Result<VolumeRestored, Error> {
        let row = self.volume_row(sandbox, name).await?;
        let image = self.volume_image(sandbox, &row.name);
        let fresh = image.with_extension("img.restoring");
        remove_path(&fresh)?;
        self.make_image(&fresh, u64::try_from(row.size_mb).unwrap_or(0))
            .await
            .map_err(|e| Error::io("making the restored volume")(std::io::Error::other(e)))?;
        let job = self.volume_job_dir()?;
        let mountpoint = job.path().join("volume");
        let target = mountpoint.display().to_string();
        let group = format!("0:{}", gid(row.id));
        let unpacked = VolumeJob {
            disks: vec![VolumeDisk {
                image: fresh.clone(),
                mountpoint: mountpoint.clone(),
                gid: gid(row.id),
            }],
            steps: vec![
                Step::new([
                    "tar".to_owned(),
                    "--extract".to_owned(),
                    "--no-same-owner".to_owned(),
                    format!("--file={}", archive.display()),
                    format!("--directory={target}"),
                ]),
                Step::new(["chown", "-R", &group, &target]),
                Step::new(["chmod", "-R", "g+rwX", &target]),
            ],
        }
        .run(&self.supervisor, "restore", job.path())
        .await;
        if let Err(e) = unpacked {
            remove_path(&fresh)?;
            return Err(Error::Invalid(format!(
                "the archive could not be restored into volume {name} ({e}); the volume is as it was. Give a tar archive (e.g. from `nx volume backup`) that fits in its {} MiB",
                row.size_mb
            )));
        }
        let users: Vec<Deployment> = self
            .state
            .deployments_in(sandbox)
            .await?
            .into_iter()
            .filter(|d| {
                d.desired == Desired::Running
                    && d.volumes
                        .iter()
                        .any(|m| &m.volume == name && m.source == VolumeSource::Live)
            })
            .collect();
        for d in &users {
            self.backend
                .stop(&self.backend.handle(d), DEFAULT_STOP_TIMEOUT)
                .await?;
        }
        let swapped = std::fs::rename(&fresh, &image)
            .map_err(Error::io(format!("renaming {}", fresh.display())));
        for d in &users {
            self.start_and_wait(d, false).await?;
        }
        swapped?;
        let archive_bytes = std::fs::metadata(archive)
            .map_err(Error::io(format!("reading {}", archive.display())))?
            .len();
        tracing::info!(archive_bytes, "volume restored");
        Ok(VolumeRestored {
            restored: name.clone(),
            archive_bytes,
        })
    }

    /// For `nx sandbox rm`, once its deployments are destroyed: a final backup of each volume
    /// (unless `backup` is false), then the volumes, their images and every copy go.
    pub(crate) async fn remove_sandbox_volumes(
        &self,
        sandbox: &SandboxName,
        backup: bool,
    ) -> Result<Vec<VolumeBackup>, Error> {
        let rows = self.volume_rows(sandbox).await?;
        let mut kept = Vec::new();
        if backup {
            for row in &rows {
                kept.push(self.archive(sandbox, row).await.map_err(|e| {
                    Error::Conflict(format!(
                        "sandbox {sandbox} is not removed: {e}. Run `nx sandbox rm {sandbox}` again, or with --no-backup to lose the volume's files"
                    ))
                })?);
            }
        }
        sqlx::query("DELETE FROM volumes WHERE sandbox = $1")
            .bind(sandbox.as_str())
            .execute(self.state.pool())
            .await
            .map_err(StateError::from)?;
        remove_path(&self.volumes_dir(sandbox))?;
        Ok(kept)
    }
}
