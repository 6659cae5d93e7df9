//! Volume backups: portable tar archives (GNU tar, POSIX pax format, owners written as 0 so
//! that no host uid travels with them, `lost+found` left out, sparse files' holes left out
//! with `--sparse`), kept on the host at
//! `<state_dir>/backups/<sandbox>/volumes/<volume>/<id>.tar` (`id` a UTC time stamp, as a
//! database backup's), the newest `volumes.backup_retention` of each volume. `nx volume
//! backup` makes one of the live volume (files that change while it is read are archived as
//! tar found them); `nx volume restore` unpacks one into a new filesystem and puts it in place
//! of the volume only when that worked; `nx sandbox rm` makes a final one of each volume after
//! its deployments stopped, unless told not to.

use super::{gid, remove_path, VolumeRow};
use crate::api::volumes::{VolumeBackup, VolumeRestored, VolumeSource};
use crate::backend::data_disk::VolumeDisk;
use crate::backend::volume_job::{Step, VolumeJob};
use crate::backend::{SandboxBackend, DEFAULT_STOP_TIMEOUT};
use crate::databases::backup::{check_id, now_id, prune_backups};
use crate::domain::{Deployment, Desired};
use crate::error::Error;
use crate::names::{DeploymentId, SandboxName, VolumeName};
use crate::sandbox_locks::SandboxWork;
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
        let _lock = self
            .sandbox_locks
            .lock(sandbox, SandboxWork::Backup(name.clone()))
            .await;
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
            "--sparse",
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
        .run(&self.supervisor, &self.launcher(), "backup", job.path())
        .await;
        if let Err(e) = made {
            remove_path(&partial)?;
            return Err(Error::Conflict(format!(
                "backing up volume {volume} failed: {e}"
            )));
        }
        std::fs::rename(&partial, &path)
            .map_err(Error::io(format!("renaming {}", partial.display())))?;
        prune_backups(&dir, "tar", self.config.volumes.backup_retention).map_err(Error::io(
            format!("deleting old backups in {}", dir.display()),
        ))?;
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

    /// Before `nx volume restore`'s upload is read: a 404 for a sandbox or volume that does
    /// not exist, a 409 while another restore of the volume is under way or waiting; else the
    /// largest archive the volume takes, in bytes ([`super::restore_max_bytes`]).
    pub async fn check_restore(
        &self,
        sandbox: &SandboxName,
        name: &VolumeName,
    ) -> Result<u64, Error> {
        let row = self.volume_row(sandbox, name).await?;
        self.sandbox_locks
            .check(sandbox, restore_of(name), restoring(sandbox, name))?;
        Ok(super::restore_max_bytes(
            u64::try_from(row.size_mb).unwrap_or(0),
        ))
    }

    /// Claims room on nxd's disk for `sandbox`'s restore upload of `wanted` bytes (its
    /// Content-Length; `None`: unknown), at most `max_bytes` (`check_restore`'s): the claim,
    /// whose bytes are the upload's cap, or why not (the room left, or the sandbox's upload
    /// under way) ([`crate::upload_room::claim`]; attacker s13 H9: the cap was twice the
    /// volume whatever the disk had free). Errors: statvfs(3)'s.
    pub fn claim_volume_upload_room(
        &self,
        sandbox: &SandboxName,
        wanted: Option<u64>,
        max_bytes: u64,
    ) -> Result<Result<crate::upload_room::Claim, crate::upload_room::Refused>, Error> {
        crate::upload_room::claim(&self.config.state_dir, sandbox.as_str(), wanted, max_bytes)
            .map_err(Error::io("reading the free space of nxd's disk"))
    }

    /// `nx volume restore`, under the sandbox's lock (`sandbox_locks`; a second restore of the
    /// volume meanwhile is refused): the archive's files unpacked into a new filesystem of the
    /// volume's size (owned by root and the volume's group, group-writable, as deployments
    /// write them); a bad archive leaves the volume as it was. Then the running deployments
    /// that mount the volume itself (production) are stopped, the new filesystem takes the
    /// volume's place and they are started on it, while the previous image is kept
    /// (`<volume>.img.previous` beside it, a hard link: no copy); if one of them does not
    /// start, the previous image is put back, they are started on it again and the error
    /// says so. Previews' copies are untouched.
    #[tracing::instrument(skip_all, fields(sandbox = %sandbox, volume = %name))]
    pub async fn restore_volume(
        &self,
        sandbox: &SandboxName,
        name: &VolumeName,
        archive: &Path,
    ) -> Result<VolumeRestored, Error> {
        let _lock = self
            .sandbox_locks
            .lock_unless(
                sandbox,
                SandboxWork::Restore(name.clone()),
                restore_of(name),
                restoring(sandbox, name),
            )
            .await?;
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
        .run(&self.supervisor, &self.launcher(), "restore", job.path())
        .await;
        if let Err(e) = unpacked {
            remove_path(&fresh)?;
            tracing::warn!(error = %e, "the archive did not unpack");
            let e = e.to_string();
            let full = if e.contains("No space left on device") {
                format!(
                    " Its files need more than the volume's {} MiB (a file takes at least one 4 KiB block, and one of the volume's inodes).",
                    row.size_mb
                )
            } else {
                String::new()
            };
            return Err(Error::Invalid(format!(
                "the archive could not be restored into volume {name} ({}); the volume is as it was.{full} Give a tar archive (e.g. from `nx volume backup`) that fits in its {} MiB",
                e,
                row.size_mb
            )));
        }
        // Under the lock, the records are current: no promotion or rollback is halfway.
        let users: Vec<DeploymentId> = self
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
            .map(|d| d.id)
            .collect();
        self.swap_image(&image, &fresh, &users)
            .await
            .map_err(|e| {
                e.with_outcome(&format!(
                    "volume {name} is as it was: its previous files were put back (the restored ones are discarded). Give an archive production starts on"
                ))
            })?;
        let archive_bytes = std::fs::metadata(archive)
            .map_err(Error::io(format!("reading {}", archive.display())))?
            .len();
        tracing::info!(archive_bytes, "volume restored");
        Ok(VolumeRestored {
            restored: name.clone(),
            archive_bytes,
        })
    }

    /// Stops `users`, puts `fresh` in the place of `image` while keeping the previous image
    /// (a hard link at `<image>.previous`) and starts them on it. If one does not start
    /// (each is tried), it stops them, puts the previous image back and starts them on it:
    /// the error is the first one, with whether they run again. Removes `fresh` either way.
    async fn swap_image(
        &self,
        image: &Path,
        fresh: &Path,
        users: &[DeploymentId],
    ) -> Result<(), Error> {
        let previous = image.with_extension("img.previous");
        let swapped = async {
            self.stop_all(users).await?;
            remove_path(&previous)?;
            std::fs::hard_link(image, &previous)
                .map_err(Error::io(format!("keeping {}", image.display())))?;
            std::fs::rename(fresh, image)
                .map_err(Error::io(format!("renaming {}", fresh.display())))?;
            fail::fail_point!("volumes::swapped");
            tracing::info!(previous = %previous.display(), "restored image in place; the previous one kept");
            self.start_all(users).await
        }
        .await;
        let Err(e) = swapped else {
            return remove_path(&previous);
        };
        // Production is to come back before anything else: a cleanup error is only logged.
        if let Err(cleanup) = remove_path(fresh) {
            tracing::warn!(error = %cleanup, "the restored image is left behind");
        }
        tracing::warn!(error = %e, "the restored volume did not work: the previous one goes back");
        let put_back = async {
            self.stop_all(users).await?;
            if previous.exists() {
                std::fs::rename(&previous, image)
                    .map_err(Error::io(format!("renaming {}", previous.display())))?;
            }
            self.start_all(users).await
        }
        .await;
        Err(match put_back {
            Ok(()) => e.with_outcome("production runs on the previous files again"),
            Err(again) => e.with_outcome(&format!(
                "putting the previous files back worked, but production did not start on them either ({again}): `nx status` and `nx logs` show why, `nx start ID` starts it"
            )),
        })
    }

    /// At nxd's start: a restore that a crash cut short (`<volume>.img.previous` is still
    /// there, so it never answered) did not happen. The previous image goes back in place, and
    /// the deployments that mount the volume itself are stopped if they run (on the restored
    /// image): adoption starts them again on the previous one.
    pub(super) async fn undo_unfinished_restores(
        &self,
        root: &Path,
        deployments: &[Deployment],
    ) -> Result<(), Error> {
        let Ok(sandboxes) = std::fs::read_dir(root) else {
            return Ok(());
        };
        for dir in sandboxes.flatten() {
            let Ok(files) = std::fs::read_dir(dir.path()) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                let Some(volume) = name.strip_suffix(".img.previous") else {
                    continue;
                };
                let image = dir.path().join(format!("{volume}.img"));
                tracing::warn!(image = %image.display(), "a restore cut short: the previous image is put back");
                std::fs::rename(file.path(), &image)
                    .map_err(Error::io(format!("renaming {}", file.path().display())))?;
                let sandbox = dir.file_name().to_string_lossy().into_owned();
                for d in deployments.iter().filter(|d| {
                    d.sandbox.as_str() == sandbox
                        && d.volumes
                            .iter()
                            .any(|m| m.volume.as_str() == volume && m.source == VolumeSource::Live)
                }) {
                    self.backend
                        .stop(&self.backend.handle(d), DEFAULT_STOP_TIMEOUT)
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn stop_all(&self, users: &[DeploymentId]) -> Result<(), Error> {
        for id in users {
            let d = self.state.deployment(id).await?;
            self.backend
                .stop(&self.backend.handle(&d), DEFAULT_STOP_TIMEOUT)
                .await?;
        }
        Ok(())
    }

    /// Starts each of `users` from its record as it is now, every one even when one fails;
    /// the first error.
    async fn start_all(&self, users: &[DeploymentId]) -> Result<(), Error> {
        let mut first = Ok(());
        for id in users {
            let started = match self.state.deployment(id).await {
                Ok(d) => {
                    self.start_and_wait(&d, crate::orchestrator::StartRoutes::After)
                        .await
                }
                Err(e) => Err(e.into()),
            };
            if let Err(e) = started {
                tracing::warn!(deployment = %id, error = %e, "not started");
                first = first.and(Err(e));
            }
        }
        first
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

fn restore_of(name: &VolumeName) -> impl Fn(&SandboxWork) -> bool + '_ {
    move |work| matches!(work, SandboxWork::Restore(v) if v == name)
}

/// The refusal of a second restore of a volume.
fn restoring<'a>(
    sandbox: &'a SandboxName,
    name: &'a VolumeName,
) -> impl Fn(&SandboxWork, chrono::DateTime<chrono::Utc>) -> String + 'a {
    move |_, since| {
        format!(
            "a restore of volume {name} of sandbox {sandbox} is under way already (asked at {}): this one changed nothing. Wait until it ends (`nx volume restore` answers; `nx status {sandbox}`), then restore again if you still want this archive",
            since.format("%H:%M:%S UTC")
        )
    }
}
