//! A deployment's own filesystems for its volumes. A push is a preview until it is promoted,
//! and a preview never writes production's files unless asked: for each `--volume` it mounts
//! a new, empty filesystem of the volume's size (`VolumeSource::Empty`, the default) or a copy
//! of the volume's files made at push (`Branch`, `--volume-branch`; copied with `cp -a` from
//! the live filesystem, which production keeps using meanwhile), each at
//! `<state_dir>/volumes/<sandbox>/<deployment>/<volume>.img`; `--volume-live` mounts the volume
//! itself. Promoting it switches its mounts to the volumes themselves (it restarts on them)
//! and its copies are deleted: what a preview wrote to them never reaches production. A
//! deployment once promoted keeps production's volumes (a rollback may return to it). `nx rm`
//! of a deployment deletes its copies.

use super::remove_path;
use crate::api::volumes::{MountedVolume, VolumeSource};
use crate::backend::data_disk::VolumeDisk;
use crate::backend::volume_job::{Step, VolumeJob};
use crate::domain::Deployment;
use crate::error::Error;
use crate::names::{DeploymentId, VolumeName};
use crate::state::StateError;
use crate::Orchestrator;
use std::path::PathBuf;

impl Orchestrator {
    /// `<state_dir>/volumes/<sandbox>/<deployment>`: its own copies.
    fn own_dir(&self, deployment: &Deployment) -> PathBuf {
        self.volumes_dir(&deployment.sandbox)
            .join(deployment.id.as_str())
    }

    pub(super) fn own_image(&self, deployment: &Deployment, volume: &VolumeName) -> PathBuf {
        self.own_dir(deployment).join(format!("{volume}.img"))
    }

    /// At push, once it is recorded: its empty filesystems and its copies. On an error the
    /// caller removes the deployment (and `drop_own_volumes` what was made).
    #[tracing::instrument(skip_all, fields(deployment = %deployment.id))]
    pub(crate) async fn make_own_volumes(&self, deployment: &Deployment) -> Result<(), Error> {
        let own: Vec<&MountedVolume> = deployment
            .volumes
            .iter()
            .filter(|m| m.source != VolumeSource::Live)
            .collect();
        if own.is_empty() {
            return Ok(());
        }
        let rows = self.volume_rows(&deployment.sandbox).await?;
        let jobs = tempfile::tempdir_in({
            let dir = self.volume_jobs_dir();
            std::fs::create_dir_all(&dir)
                .map_err(Error::io(format!("creating {}", dir.display())))?;
            dir
        })
        .map_err(Error::io("creating a volume job's directory"))?;
        let mut copy = VolumeJob {
            disks: Vec::new(),
            steps: Vec::new(),
        };
        for m in own {
            let row = rows
                .iter()
                .find(|r| r.name == m.volume.as_str())
                .ok_or_else(|| Error::NotFound(format!("volume {} is gone", m.volume)))?;
            let image = self.own_image(deployment, &m.volume);
            let size_mb = u64::try_from(row.size_mb).unwrap_or(0);
            self.make_image(&image, size_mb).await.map_err(|e| {
                Error::io(format!(
                    "making deployment {}'s volume {}",
                    deployment.id, m.volume
                ))(std::io::Error::other(e))
            })?;
            if m.source == VolumeSource::Branch {
                let (from, to) = (
                    jobs.path().join(format!("live-{}", m.volume)),
                    jobs.path().join(format!("own-{}", m.volume)),
                );
                copy.disks.push(VolumeDisk {
                    image: self.volume_image(&deployment.sandbox, &row.name),
                    mountpoint: from.clone(),
                    gid: super::gid(row.id),
                });
                copy.disks.push(VolumeDisk {
                    image,
                    mountpoint: to.clone(),
                    gid: super::gid(row.id),
                });
                copy.steps.push(Step::new([
                    "cp".to_owned(),
                    "-a".to_owned(),
                    "--sparse=always".to_owned(),
                    format!("{}/.", from.display()),
                    format!("{}/", to.display()),
                ]));
            }
        }
        if !copy.steps.is_empty() {
            copy.run(jobs.path()).await.map_err(|e| {
                Error::Conflict(format!(
                    "copying production's volume files for --volume-branch failed: {e}"
                ))
            })?;
        }
        Ok(())
    }

    /// Deletes a deployment's own copies (at `nx rm`, on a failed push, after its promotion).
    pub(crate) fn drop_own_volumes(&self, deployment: &Deployment) -> Result<(), Error> {
        remove_path(&self.own_dir(deployment))
    }

    /// For a promotion: every mount of the deployment becomes the volume itself. Returns its
    /// mounts as they were when one changed (to put back if the promotion fails), else none.
    pub(crate) async fn mount_live_volumes(
        &self,
        deployment: &Deployment,
    ) -> Result<Option<Vec<MountedVolume>>, Error> {
        if deployment
            .volumes
            .iter()
            .all(|m| m.source == VolumeSource::Live)
        {
            return Ok(None);
        }
        let live: Vec<MountedVolume> = deployment
            .volumes
            .iter()
            .map(|m| MountedVolume {
                source: VolumeSource::Live,
                ..m.clone()
            })
            .collect();
        self.set_mounts(&deployment.id, &live).await?;
        Ok(Some(deployment.volumes.clone()))
    }

    /// Records which filesystems a deployment mounts (its next start uses them).
    pub(crate) async fn set_mounts(
        &self,
        id: &DeploymentId,
        mounts: &[MountedVolume],
    ) -> Result<(), Error> {
        sqlx::query("UPDATE deployments SET volumes = $2 WHERE id = $1")
            .bind(id.as_str())
            .bind(sqlx::types::Json(mounts))
            .execute(self.state.pool())
            .await
            .map_err(StateError::from)?;
        Ok(())
    }
}
