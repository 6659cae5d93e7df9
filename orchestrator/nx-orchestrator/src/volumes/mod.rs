//! Volumes (`nx volume`): table `volumes`, one ext4 image per volume at
//! `<state_dir>/volumes/<sandbox>/<name>.img` of the volume's size (its quota: a write past it
//! is ENOSPC), made at `nx volume create` and kept across every push, promote, rollback and
//! `nx rm` of the deployments that mount it (`nx push --volume NAME:/PATH`, see
//! `backend::data_disk::VolumeDisk` for how several mount it at once). `nx volume rm` refuses
//! while a deployment still mounts it; `nx sandbox rm` backs each up and removes them
//! (`archive`). Production mounts the volume itself; a preview its own copy or an empty
//! filesystem unless asked (`own`).

mod archive;
mod own;

use crate::api::volumes::{
    CreateVolume, MountedVolume, VolumeMount, VolumeSource, VolumeView, MAX_SIZE_MB, MIN_SIZE_MB,
};
use crate::backend::data_disk::create_formatted;
use crate::backend::AttachedVolume;
use crate::domain::{BackendKind, Deployment};
use crate::error::Error;
use crate::names::{SandboxName, VolumeName};
use crate::state::StateError;
use crate::Orchestrator;
use std::path::{Path, PathBuf};

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

    async fn volume_rows(&self, sandbox: &SandboxName) -> Result<Vec<VolumeRow>, Error> {
        Ok(sqlx::query_as(
            "SELECT id, name, size_mb, created_at FROM volumes WHERE sandbox = $1 ORDER BY name",
        )
        .bind(sandbox.as_str())
        .fetch_all(self.state.pool())
        .await
        .map_err(StateError::from)?)
    }

    /// `nx volume create`: the row, then the image (sparse, ext4, root's). A sandbox that does
    /// not exist yet is created, as a push would.
    #[tracing::instrument(skip_all, fields(sandbox = %sandbox, volume = %req.name))]
    pub async fn create_volume(
        &self,
        sandbox: &SandboxName,
        req: &CreateVolume,
    ) -> Result<VolumeView, Error> {
        if !(MIN_SIZE_MB..=MAX_SIZE_MB).contains(&req.size_mb) {
            return Err(Error::Invalid(format!(
                "size_mb: {} MiB is not a volume size: give {MIN_SIZE_MB} to {MAX_SIZE_MB} MiB",
                req.size_mb
            )));
        }
        self.state
            .create_sandbox(sandbox, BackendKind::default())
            .await?;
        let _guard = self.changes.lock().await;
        let inserted = sqlx::query("INSERT INTO volumes (sandbox, name, size_mb) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(sandbox.as_str())
            .bind(req.name.as_str())
            .bind(i64::try_from(req.size_mb).unwrap_or(i64::MAX))
            .execute(self.state.pool())
            .await
            .map_err(StateError::from)?;
        if inserted.rows_affected() == 0 {
            return Err(Error::Conflict(format!(
                "sandbox {sandbox} has a volume {} already (`nx volume ls {sandbox}`)",
                req.name
            )));
        }
        let image = self.volume_image(sandbox, req.name.as_str());
        if let Err(e) = make_image(&image, req.size_mb) {
            sqlx::query("DELETE FROM volumes WHERE sandbox = $1 AND name = $2")
                .bind(sandbox.as_str())
                .bind(req.name.as_str())
                .execute(self.state.pool())
                .await
                .map_err(StateError::from)?;
            return Err(Error::io(format!("creating volume {}", req.name))(
                std::io::Error::other(e),
            ));
        }
        tracing::info!(size_mb = req.size_mb, "volume created");
        self.volume(sandbox, &req.name).await
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
    /// the image.
    #[tracing::instrument(skip_all, fields(sandbox = %sandbox, volume = %name))]
    pub async fn remove_volume(
        &self,
        sandbox: &SandboxName,
        name: &VolumeName,
    ) -> Result<(), Error> {
        let view = self.volume(sandbox, name).await?;
        if !view.used_by.is_empty() {
            let ids: Vec<String> = view.used_by.iter().map(ToString::to_string).collect();
            return Err(Error::Conflict(format!(
                "volume {name} is mounted by deployment(s) {}: `nx rm` them first (its files stay until then)",
                ids.join(", ")
            )));
        }
        let _guard = self.changes.lock().await;
        sqlx::query("DELETE FROM volumes WHERE sandbox = $1 AND name = $2")
            .bind(sandbox.as_str())
            .bind(name.as_str())
            .execute(self.state.pool())
            .await
            .map_err(StateError::from)?;
        remove_path(&self.volume_image(sandbox, name.as_str()))
    }

    /// A push's `--volume`s: each the sandbox's, each path once, on the container backend.
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

/// A new, empty volume filesystem of `size_mb` MiB at `image` (its directory made if missing):
/// /data's kind of image (`data_disk::create_formatted`), root's; its group is set when it is
/// mounted.
fn make_image(image: &Path, size_mb: u64) -> Result<(), String> {
    let dir = image.parent().expect("a volume image has a dir");
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    create_formatted(image, size_mb)
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
