//! Volumes (`nx volume`): table `volumes`, one ext4 image per volume at
//! `<state_dir>/volumes/<sandbox>/<name>.img` of the volume's size (its quota: a write past it
//! is ENOSPC), made at `nx volume create` and kept across every push, promote, rollback and
//! `nx rm` of the deployments that mount it (`nx push --volume NAME:/PATH`, see
//! `backend::data_disk::VolumeDisk` for how several mount it at once). `nx volume rm` refuses
//! while a deployment still mounts it; `nx sandbox rm` backs each up and removes them
//! (`archive`). Production mounts the volume itself; a preview its own copy or an empty
//! filesystem unless asked (`own`). How many and how large: `[volumes]` in nxd's config
//! (`config`).
//!
//! Nothing is half made: `nx volume create` makes the image first and records the volume in
//! the same transaction that checked its name and the sandbox's count, so a crash leaves at
//! most an image without a row, which nxd's start removes ([`Orchestrator::reconcile_volumes`]);
//! `nx volume rm` and a push's record take the same table lock, so a push never records a
//! deployment on a volume being removed.

mod archive;
pub use crate::api::volumes::restore_max_bytes;
mod config;
mod own;

pub use config::VolumesConfig;

use crate::api::volumes::{
    CreateVolume, MountedVolume, VolumeMount, VolumeSource, VolumeView, MIN_SIZE_MB,
};
use crate::backend::AttachedVolume;
use crate::domain::{BackendKind, Deployment};
use crate::error::Error;
use crate::names::{SandboxName, VolumeName};
use crate::sandbox_locks::SandboxWork;
use crate::state::StateError;
use crate::Orchestrator;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Volume `id`'s group is `GID_BASE + id`: above the deployments' (`sandbox.uid_base`,
/// 200,000 + slot) and the tasks' (`tasks.uid_base`, 300,000 + 65,536) by default.
pub const GID_BASE: u32 = 400_000;

#[derive(sqlx::FromRow)]
struct VolumeRow {
    id: i64,
    name: String,
    size_mb: i64,
    created_at: chrono::DateTime<chrono::Utc>,
}

fn gid(id: i64) -> u32 {
    GID_BASE.saturating_add(u32::try_from(id).unwrap_or(u32::MAX - GID_BASE))
}

impl Orchestrator {
    /// `<state_dir>/volumes/<sandbox>`: the sandbox's volume images, and a directory per
    /// deployment that has copies of its own (`own`).
    fn volumes_dir(&self, sandbox: &SandboxName) -> PathBuf {
        self.config.state_dir.join("volumes").join(sandbox.as_str())
    }

    fn volume_image(&self, sandbox: &SandboxName, name: &str) -> PathBuf {
        self.volumes_dir(sandbox).join(format!("{name}.img"))
    }

    /// Where volume jobs (`backend::volume_job`) keep their specs and mount points.
    fn volume_jobs_dir(&self) -> PathBuf {
        self.config.state_dir.join("volumes").join(".jobs")
    }

    /// The copy of nxd that volume jobs run (`<state_dir>/bin/nxd-launcher`).
    fn launcher(&self) -> PathBuf {
        crate::launcher_install::launcher_path(&self.config.state_dir)
    }

    /// A job's directory (its spec, output and mount points), removed when dropped.
    fn volume_job_dir(&self) -> Result<tempfile::TempDir, Error> {
        let dir = self.volume_jobs_dir();
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        tempfile::Builder::new()
            .prefix("job-")
            .tempdir_in(&dir)
            .map_err(Error::io("creating a volume job's directory"))
    }

    async fn volume_rows(&self, sandbox: &SandboxName) -> Result<Vec<VolumeRow>, Error> {
        Ok(sqlx::query_as(
            "SELECT id, name, size_mb, created_at FROM volumes WHERE sandbox = $1 ORDER BY name",
        )
        .bind(sandbox.as_str())
        .fetch_all(self.state.pool())
        .await
        .map_err(StateError::from)?)
    }

    /// `nx volume create`: within `[volumes]`' limits and the state directory's free space,
    /// the image (sparse, ext4, root's), then its row, committed with the sandbox's row (a
    /// sandbox that does not exist yet is created, as a push would, only when its volume is).
    /// Errors: `Invalid` for a size outside the limits, `Conflict` for a name taken, a sandbox
    /// at `volumes.max_per_sandbox` or a disk without room; on any error nothing is left.
    #[tracing::instrument(skip_all, fields(sandbox = %sandbox, volume = %req.name))]
    pub async fn create_volume(
        &self,
        sandbox: &SandboxName,
        req: &CreateVolume,
    ) -> Result<VolumeView, Error> {
        let limits = self.config.volumes;
        if !(MIN_SIZE_MB..=limits.max_size_mb).contains(&req.size_mb) {
            return Err(Error::Invalid(format!(
                "size_mb: {} MiB is not a volume size on this host: give {MIN_SIZE_MB} to {} MiB (the largest is nxd's volumes.max_size_mb)",
                req.size_mb, limits.max_size_mb
            )));
        }
        self.check_room(req.size_mb)?;
        crate::tls::check_new_sandbox(&self.state, sandbox, &self.config.base_domain).await?;
        // The volume's sandbox may be new: `nx ls` lists it.
        let (_write, _rows) = (self.state.views_write(), self.state.sandbox_rows().write());
        let mut tx = self.state.pool().begin().await.map_err(StateError::from)?;
        sqlx::query("INSERT INTO sandboxes (name, backend) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(sandbox.as_str())
            .bind(BackendKind::default().as_ref())
            .execute(&mut *tx)
            .await
            .map_err(StateError::from)?;
        // Creations in one sandbox wait for each other here: the count and the name hold.
        sqlx::query("SELECT name FROM sandboxes WHERE name = $1 FOR UPDATE")
            .bind(sandbox.as_str())
            .execute(&mut *tx)
            .await
            .map_err(StateError::from)?;
        let names: Vec<String> = sqlx::query_scalar("SELECT name FROM volumes WHERE sandbox = $1")
            .bind(sandbox.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(StateError::from)?;
        if names.iter().any(|n| n == req.name.as_str()) {
            return Err(Error::Conflict(format!(
                "sandbox {sandbox} has a volume {} already (`nx volume ls {sandbox}`)",
                req.name
            )));
        }
        if names.len() >= usize::try_from(limits.max_per_sandbox).unwrap_or(usize::MAX) {
            return Err(Error::Conflict(format!(
                "sandbox {sandbox} has {} volume(s), the most this host allows (nxd's volumes.max_per_sandbox = {}): `nx volume rm {sandbox} NAME` one it no longer needs",
                names.len(),
                limits.max_per_sandbox
            )));
        }
        let image = self.volume_image(sandbox, req.name.as_str());
        self.make_image(&image, req.size_mb).await.map_err(|e| {
            Error::io(format!("creating volume {}", req.name))(std::io::Error::other(e))
        })?;
        let recorded = async {
            sqlx::query("INSERT INTO volumes (sandbox, name, size_mb) VALUES ($1, $2, $3)")
                .bind(sandbox.as_str())
                .bind(req.name.as_str())
                .bind(i64::try_from(req.size_mb).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await?;
            fail::fail_point!("volumes::record");
            tx.commit().await
        };
        if let Err(e) = recorded.await {
            remove_path(&image)?;
            return Err(StateError::from(e).into());
        }
        tracing::info!(size_mb = req.size_mb, "volume created");
        self.volume(sandbox, &req.name).await
    }

    /// Refuses a volume larger than the space left on the state directory's filesystem
    /// (statvfs(3) `f_bavail`) less nxd's reserve (`host_limits::DISK_RESERVE_MB`): its quota
    /// could never be reached. (Images are sparse: volumes made earlier may still take that
    /// space.)
    fn check_room(&self, size_mb: u64) -> Result<(), Error> {
        let dir = &self.config.state_dir;
        let free_mb = crate::host_limits::disk_free_mb(dir).map_err(Error::io(format!(
            "reading the free space of {}",
            dir.display()
        )))?;
        let reserve_mb = crate::host_limits::DISK_RESERVE_MB;
        let room_mb = free_mb.saturating_sub(reserve_mb);
        if size_mb > room_mb {
            return Err(Error::Conflict(format!(
                "a volume of {size_mb} MiB does not fit: the filesystem of nxd's state directory has {free_mb} MiB free, of which nxd keeps {reserve_mb} MiB in reserve. Give a --size of at most {room_mb} MiB, or free space on the host"
            )));
        }
        Ok(())
    }

    /// At nxd's start, before anything mounts a volume: volume jobs a crash left running are
    /// stopped (their units, with every process in them: `cp`, `tar`), a restore cut short is
    /// undone (`archive`), then what a crash left half made goes. An image with no row (a `nx
    /// volume create` or `rm` cut short), a `.partial` or `.restoring` image, the directory of
    /// copies of a deployment that is not recorded (a push cut short) and copies still marked as being made (`own::COPYING`:
    /// the deployment's next start makes them again), volume jobs' leftovers (uploads, specs,
    /// mount points), a backup's `.partial` archive; a row whose image is missing and that no
    /// deployment mounts (made before creation made the image first).
    #[tracing::instrument(skip_all)]
    pub(crate) async fn reconcile_volumes(&self) -> Result<(), Error> {
        for unit in self
            .supervisor
            .list(crate::backend::volume_job::UNITS)
            .await?
        {
            tracing::warn!(%unit, "stopping a volume job left from before");
            self.supervisor.stop(&unit).await?;
        }
        let root = self.config.state_dir.join("volumes");
        let rows: Vec<(String, String)> = sqlx::query_as("SELECT sandbox, name FROM volumes")
            .fetch_all(self.state.pool())
            .await
            .map_err(StateError::from)?;
        let deployments = self.state.deployments().await?;
        remove_path(&self.volume_jobs_dir())?;
        self.remove_partial_backups()?;
        self.undo_unfinished_restores(&root, &deployments).await?;
        for (sandbox, name) in &rows {
            let image = root.join(sandbox).join(format!("{name}.img"));
            let mounted = deployments.iter().any(|d| {
                d.sandbox.as_str() == sandbox && d.volumes.iter().any(|m| m.volume.as_str() == name)
            });
            if !image.exists() && !mounted {
                tracing::warn!(%sandbox, volume = %name, "a volume without its image is removed");
                sqlx::query("DELETE FROM volumes WHERE sandbox = $1 AND name = $2")
                    .bind(sandbox)
                    .bind(name)
                    .execute(self.state.pool())
                    .await
                    .map_err(StateError::from)?;
            }
        }
        let Ok(sandboxes) = std::fs::read_dir(&root) else {
            return Ok(());
        };
        for dir in sandboxes.flatten() {
            let sandbox = dir.file_name().to_string_lossy().into_owned();
            let Ok(entries) = std::fs::read_dir(dir.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                let kept = if entry.path().is_dir() {
                    deployments
                        .iter()
                        .any(|d| d.id.as_str() == file && d.sandbox.as_str() == sandbox)
                        && !entry.path().join(own::COPYING).exists()
                } else {
                    file.strip_suffix(".img")
                        .is_some_and(|name| rows.iter().any(|(s, n)| *s == sandbox && n == name))
                };
                if !kept {
                    tracing::warn!(path = %entry.path().display(), "left by a crash: removed");
                    remove_path(&entry.path())?;
                }
            }
        }
        Ok(())
    }

    /// `nx volume ls`: the sandbox's volumes and who mounts them.
    pub async fn volumes(&self, sandbox: &SandboxName) -> Result<Vec<VolumeView>, Error> {
        self.existing(sandbox).await?;
        let deployments = self.state.deployments_in(sandbox).await?;
        Ok(self
            .volume_rows(sandbox)
            .await?
            .into_iter()
            .map(|row| VolumeView {
                sandbox: sandbox.clone(),
                used_by: deployments
                    .iter()
                    .filter(|d| d.volumes.iter().any(|m| m.volume.as_str() == row.name))
                    .map(|d| d.id.clone())
                    .collect(),
                size_mb: u64::try_from(row.size_mb).unwrap_or(0),
                created_at: row.created_at,
                name: VolumeName::parse(&row.name)
                    .unwrap_or_else(|_| VolumeName::parse("invalid").expect("a valid name")),
            })
            .collect())
    }

    /// A volume's row, or a 404 that says how to create it.
    async fn volume_row(
        &self,
        sandbox: &SandboxName,
        name: &VolumeName,
    ) -> Result<VolumeRow, Error> {
        self.existing(sandbox).await?;
        self.volume_rows(sandbox)
            .await?
            .into_iter()
            .find(|r| r.name == name.as_str())
            .ok_or_else(|| no_volume(sandbox, name))
    }

    async fn volume(&self, sandbox: &SandboxName, name: &VolumeName) -> Result<VolumeView, Error> {
        self.volumes(sandbox)
            .await?
            .into_iter()
            .find(|v| &v.name == name)
            .ok_or_else(|| no_volume(sandbox, name))
    }

    /// `nx volume rm`: refused while a deployment (running or not) mounts it; then the row and
    /// the image. The check and the delete hold a lock on `deployments` that a push's record
    /// also takes (`StateStore::create_deployment`): a push either is recorded first and this
    /// is refused, or finds the volume gone and records nothing.
    #[tracing::instrument(skip_all, fields(sandbox = %sandbox, volume = %name))]
    pub async fn remove_volume(
        &self,
        sandbox: &SandboxName,
        name: &VolumeName,
    ) -> Result<(), Error> {
        let _lock = self
            .sandbox_locks
            .lock(sandbox, SandboxWork::RemoveVolume(name.clone()))
            .await;
        self.volume_row(sandbox, name).await?;
        let mut tx = self.state.pool().begin().await.map_err(StateError::from)?;
        sqlx::query("LOCK TABLE deployments IN SHARE MODE")
            .execute(&mut *tx)
            .await
            .map_err(StateError::from)?;
        let users: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM deployments WHERE sandbox = $1 AND volumes @> $2 ORDER BY created_at",
        )
        .bind(sandbox.as_str())
        .bind(sqlx::types::Json(
            serde_json::json!([{ "volume": name.as_str() }]),
        ))
        .fetch_all(&mut *tx)
        .await
        .map_err(StateError::from)?;
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "volume {name} is mounted by deployment(s) {}: `nx rm` them first (its files stay until then)",
                users.join(", ")
            )));
        }
        let deleted = sqlx::query("DELETE FROM volumes WHERE sandbox = $1 AND name = $2")
            .bind(sandbox.as_str())
            .bind(name.as_str())
            .execute(&mut *tx)
            .await
            .map_err(StateError::from)?;
        if deleted.rows_affected() == 0 {
            return Err(no_volume(sandbox, name));
        }
        tx.commit().await.map_err(StateError::from)?;
        remove_path(&self.volume_image(sandbox, name.as_str()))
    }

    /// A push's `--volume`s: each the sandbox's, each once, at paths not under one another,
    /// on the container backend.
    pub(crate) async fn check_volumes(
        &self,
        sandbox: &SandboxName,
        mounts: &[VolumeMount],
        backend: BackendKind,
    ) -> Result<(), Error> {
        if mounts.is_empty() {
            return Ok(());
        }
        if backend == BackendKind::Microvm {
            return Err(Error::Invalid(
                "volumes: a microVM has no volumes (only the container backend mounts them); push without --volume or with --backend container".into(),
            ));
        }
        let rows = self.volume_rows(sandbox).await?;
        for (i, mount) in mounts.iter().enumerate() {
            mount.check()?;
            if !rows.iter().any(|r| r.name == mount.volume.as_str()) {
                return Err(Error::Invalid(format!(
                    "volumes: sandbox {sandbox} has no volume {}: `nx volume create {sandbox} {} --size MIB` first",
                    mount.volume, mount.volume
                )));
            }
            if mounts[..i]
                .iter()
                .any(|m| m.path == mount.path || m.volume == mount.volume)
            {
                return Err(Error::Invalid(format!(
                    "volumes: {} or {} is given twice: mount each volume once, each at a path of its own",
                    mount.volume, mount.path
                )));
            }
            let under = |inner: &str, outer: &str| inner.starts_with(&format!("{outer}/"));
            if let Some(other) = mounts[..i]
                .iter()
                .find(|m| under(&m.path, &mount.path) || under(&mount.path, &m.path))
            {
                return Err(Error::Invalid(format!(
                    "volumes: {} at {} and {} at {} are nested (one would hide the other or be made inside it): mount volumes at paths side by side, e.g. /srv/{} and /srv/{}",
                    other.volume, other.path, mount.volume, mount.path, other.volume, mount.volume
                )));
            }
        }
        Ok(())
    }

    /// What a deployment's backend needs of its volumes: the volume's image, or the
    /// deployment's own copy (`own`).
    pub(crate) async fn attached_volumes(
        &self,
        deployment: &Deployment,
    ) -> Result<Vec<AttachedVolume>, Error> {
        if deployment.volumes.is_empty() {
            return Ok(Vec::new());
        }
        let sandbox = &deployment.sandbox;
        let rows = self.volume_rows(sandbox).await?;
        deployment
            .volumes
            .iter()
            .map(|m| {
                let row = rows
                    .iter()
                    .find(|r| r.name == m.volume.as_str())
                    .ok_or_else(|| {
                        Error::NotFound(format!(
                            "volume {} of sandbox {sandbox} is gone; push again without it",
                            m.volume
                        ))
                    })?;
                let image = match m.source {
                    VolumeSource::Live => self.volume_image(sandbox, &row.name),
                    VolumeSource::Branch | VolumeSource::Empty => {
                        self.own_image(deployment, &m.volume)
                    }
                };
                Ok(AttachedVolume {
                    name: m.volume.clone(),
                    image,
                    gid: gid(row.id),
                    path: m.path.clone(),
                })
            })
            .collect()
    }
}

fn no_volume(sandbox: &SandboxName, name: &VolumeName) -> Error {
    Error::NotFound(format!(
        "sandbox {sandbox} has no volume {name}: `nx volume create {sandbox} {name} --size MIB` first"
    ))
}

/// A push's `--volume`s as its deployment records them, all with the push's source.
pub(crate) fn mounted(mounts: Vec<VolumeMount>, source: VolumeSource) -> Vec<MountedVolume> {
    mounts
        .into_iter()
        .map(|m| MountedVolume {
            volume: m.volume,
            path: m.path,
            source,
        })
        .collect()
}

impl Orchestrator {
    /// A new, empty volume filesystem of `size_mb` MiB at `image` (its directory made if
    /// missing): a sparse copy of the empty filesystem of that size that /data's images are
    /// copied from (`data_disk::DataTemplates`, formatted once per size), root's; its group is
    /// set when it is mounted. On a blocking thread. Errors: mkfs.ext4's or the copy's.
    async fn make_image(&self, image: &Path, size_mb: u64) -> Result<(), String> {
        let (templates, image) = (Arc::clone(&self.data_templates), image.to_owned());
        tokio::task::spawn_blocking(move || {
            let dir = image.parent().expect("a volume image has a dir");
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            templates.copy_to(size_mb, &image)
        })
        .await
        .map_err(|e| format!("making the image: {e}"))?
    }
}

/// Removes a file or a directory tree; one that is not there is no error.
fn remove_path(path: &Path) -> Result<(), Error> {
    let removed = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io(format!("removing {}", path.display()))(e))
        }
        _ => Ok(()),
    }
}
