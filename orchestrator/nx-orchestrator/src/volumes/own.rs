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
//!
//! Crashes: while copies are made, the mark [`COPYING`] lies beside them; nxd's start deletes
//! copies that still have it (a copy cut short) and a deployment's next start makes the
//! missing ones again, so no deployment runs on a half-made copy. A promotion that switches
//! mounts or swaps a database branch in (`--swap-db`, with volumes or without) writes its
//! intent, [`PROMOTING`] (the mounts to put back), before either; nxd's start
//! ([`Orchestrator::recover_promotions`]) finishes a promotion that was recorded (or whose
//! database branch was swapped in) and undoes one that was not, so a crash never leaves a
//! preview on production's volumes, nor production's deployment on the branch's database.

use super::remove_path;
use crate::api::volumes::{MountedVolume, VolumeSource};
use crate::backend::data_disk::VolumeDisk;
use crate::backend::volume_job::{Step, VolumeJob};
use crate::backend::{SandboxBackend, DEFAULT_STOP_TIMEOUT};
use crate::domain::{Deployment, Desired};
use crate::error::Error;
use crate::names::{DeploymentId, SandboxName, VolumeName};
use crate::state::StateError;
use crate::Orchestrator;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The mark in a deployment's directory of copies while they are made (its absence: all of
/// them are whole).
pub(super) const COPYING: &str = ".copying";
/// A promotion's intent in the deployment's directory of copies (made for it when it has no
/// copies): [`Intent`] as JSON.
const PROMOTING: &str = ".promoting";

/// What a promotion that switches mounts or swaps a database branch in records before it does.
#[derive(serde::Serialize, serde::Deserialize)]
struct Intent {
    /// The deployment's mounts before the promotion (to put back if it is undone).
    mounts: Vec<MountedVolume>,
    /// Its database branch is swapped in (`--swap-db`): once it was (its branch database is
    /// gone: `Databases::finish_branch_swap_if_swapped`) the promotion is finished, not undone
    /// (unless `swap_back` says it failed). nxd before session 17 wrote it after the swap.
    #[serde(alias = "swapped_db")]
    swap_db: bool,
    /// The promotion failed after its branch was swapped in, and is being undone: production's
    /// database from before the swap (the name `swap_in_branch` kept it under), which goes
    /// back in place (`Databases::swap_back_unless_done`) before the mounts do.
    #[serde(default)]
    swap_back: Option<String>,
}

impl Orchestrator {
    /// `<state_dir>/volumes/<sandbox>/<deployment>`: its own copies.
    fn own_dir(&self, deployment: &Deployment) -> PathBuf {
        self.volumes_dir(&deployment.sandbox)
            .join(deployment.id.as_str())
    }

    pub(super) fn own_image(&self, deployment: &Deployment, volume: &VolumeName) -> PathBuf {
        self.own_dir(deployment).join(format!("{volume}.img"))
    }

    /// Its empty filesystems and its copies that are missing: at push, once it is recorded
    /// (all), and before each start (those a crash cut short, deleted at nxd's start). While
    /// it works the mark [`COPYING`] lies in its directory; when the mark is there already (an
    /// earlier making failed, e.g. its copy job), every own image is deleted and made again,
    /// none being known whole. On an error at push the caller removes the deployment (and
    /// `drop_own_volumes` what was made).
    #[tracing::instrument(skip_all, fields(deployment = %deployment.id))]
    pub(crate) async fn make_own_volumes(&self, deployment: &Deployment) -> Result<(), Error> {
        let dir = self.own_dir(deployment);
        let mark = dir.join(COPYING);
        let half_made = mark.exists();
        let own: Vec<&MountedVolume> = deployment
            .volumes
            .iter()
            .filter(|m| m.source != VolumeSource::Live)
            .filter(|m| half_made || !self.own_image(deployment, &m.volume).exists())
            .collect();
        if own.is_empty() {
            return Ok(());
        }
        if half_made {
            tracing::warn!("an earlier making of its volume copies failed: all are made again");
            for m in &own {
                remove_path(&self.own_image(deployment, &m.volume))?;
            }
        }
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&mark, b""))
            .map_err(Error::io(format!("marking {}", mark.display())))?;
        let rows = self.volume_rows(&deployment.sandbox).await?;
        let jobs = self.volume_job_dir()?;
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
            copy.run(&self.supervisor, &self.launcher(), "copy", jobs.path())
                .await
                .map_err(|e| {
                    Error::Conflict(format!(
                        "copying production's volume files for --volume-branch failed: {e}"
                    ))
                })?;
        }
        remove_path(&mark)
    }

    /// Deletes a deployment's own copies (at `nx rm`, on a failed push, after its promotion).
    pub(crate) fn drop_own_volumes(&self, deployment: &Deployment) -> Result<(), Error> {
        remove_path(&self.own_dir(deployment))
    }

    /// Before a promotion that swaps its database branch in (`swap_db`) or switches mounts (a
    /// mount of the deployment is not the volume itself): writes its intent ([`PROMOTING`]:
    /// its mounts as they are) beside its copies, and says whether it did. Once it is
    /// promoted `drop_own_volumes` deletes the intent (with the copies); a promotion that
    /// failed puts its mounts back (`put_back_mounts`) or `forget_promotion`.
    pub(crate) fn record_promotion(
        &self,
        deployment: &Deployment,
        swap_db: bool,
    ) -> Result<bool, Error> {
        if !swap_db && !switches_mounts(deployment) {
            return Ok(false);
        }
        self.write_intent(
            deployment,
            &Intent {
                mounts: deployment.volumes.clone(),
                swap_db,
                swap_back: None,
            },
        )?;
        Ok(true)
    }

    /// A recorded promotion (`record_promotion`) that failed before its mounts switched:
    /// its intent goes.
    pub(crate) fn forget_promotion(&self, deployment: &Deployment) -> Result<(), Error> {
        remove_path(&self.own_dir(deployment).join(PROMOTING))
    }

    /// For a promotion, once `record_promotion` wrote its intent: every mount of the
    /// deployment becomes the volume itself. Returns its mounts as they were when one changed
    /// (`put_back_mounts` if the promotion fails), else none.
    pub(crate) async fn mount_live_volumes(
        &self,
        deployment: &Deployment,
    ) -> Result<Option<Vec<MountedVolume>>, Error> {
        if !switches_mounts(deployment) {
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

    /// Writes a promotion's intent ([`PROMOTING`]) beside the deployment's copies, whole or
    /// not at all.
    fn write_intent(&self, deployment: &Deployment, intent: &Intent) -> Result<(), Error> {
        let path = self.own_dir(deployment).join(PROMOTING);
        std::fs::create_dir_all(self.own_dir(deployment))
            .map_err(Error::io(format!("creating {}", path.display())))?;
        write_synced(&path, &serde_json::to_vec(intent).expect("JSON"))
            .map_err(Error::io(format!("writing {}", path.display())))
    }

    /// A `--swap-db` promotion that failed, before production's database (`previous`, as
    /// `swap_in_branch` kept it) is put back: from now on its intent says it is undone, so
    /// that nxd's start after a crash puts the database back if that was not done yet, then
    /// the mounts (the deployment's before the promotion, `before`'s), and never promotes it.
    pub(crate) fn record_swap_back(
        &self,
        before: &Deployment,
        previous: &str,
    ) -> Result<(), Error> {
        self.write_intent(
            before,
            &Intent {
                mounts: before.volumes.clone(),
                swap_db: true,
                swap_back: Some(previous.to_owned()),
            },
        )
    }

    /// A promotion that failed: the deployment mounts `mounts` (its own copies) again, and
    /// its intent goes.
    pub(crate) async fn put_back_mounts(
        &self,
        deployment: &Deployment,
        mounts: &[MountedVolume],
    ) -> Result<(), Error> {
        self.set_mounts(&deployment.id, mounts).await?;
        remove_path(&self.own_dir(deployment).join(PROMOTING))
    }

    /// After a promotion that failed and `put_back_mounts`: a deployment that ran before it
    /// (`before`'s record) is started again on its own copies, unless its database branch
    /// was swapped (it has none now, and would reach production's database). Says, for the
    /// promotion's error, what became of its volumes.
    pub(crate) async fn restart_on_own_volumes(
        &self,
        before: &Deployment,
        swap_db: bool,
    ) -> String {
        let ran_live = "it may have written to production's volumes while it started on them: what it wrote there stays (take `nx volume backup` before such a promote to keep a way back)";
        if swap_db || before.desired != Desired::Running {
            return format!("{ran_live}; it mounts its own volume copies again");
        }
        let again = async {
            let now = self.state.deployment(&before.id).await?;
            self.start_and_wait(&now, crate::orchestrator::StartRoutes::After)
                .await
        };
        match again.await {
            Ok(()) => format!("{ran_live}; it runs on its own volume copies again"),
            Err(e) => {
                tracing::warn!(error = %e, "the preview did not start again on its own copies");
                format!(
                    "{ran_live}; it mounts its own volume copies again but did not start on them (`nx logs {}`)",
                    before.id
                )
            }
        }
    }

    /// At nxd's start, before deployments are adopted: each promotion a crash interrupted
    /// (its [`PROMOTING`] intent still there) is finished when production's record names the
    /// deployment (its copies go) or when its database branch was swapped in already (that
    /// cannot be undone here: the swap is finished, the deployment promoted, its unit stopped
    /// and marked to run, so that its adoption starts it on production's volumes and database
    /// with production's role; production's routes follow it), unless the promotion had
    /// failed and was being undone (`record_swap_back`): then production's database is put
    /// back if it was not yet, and the deployment stays stopped on its own copies; else
    /// undone: it mounts its own copies again and its unit is stopped, so that its adoption
    /// starts it on them, never on production's volumes. A promotion that can be neither
    /// (e.g. finishing its swap fails) is logged and its deployment stays stopped, its intent
    /// kept for the next start: one deployment's leftover never ends nxd's start.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn recover_promotions(&self) -> Result<(), Error> {
        let promoted = self.state.promoted().await?;
        for deployment in self.state.deployments().await? {
            let Err(e) = self.recover_promotion(&deployment, &promoted).await else {
                continue;
            };
            tracing::error!(deployment = %deployment.id, error = %e, "could not finish nor undo a promotion a crash interrupted: the deployment stays stopped and nxd's next start tries again (see the error)");
            if promoted.get(&deployment.sandbox) != Some(&deployment.id) {
                if let Err(e) = self
                    .state
                    .set_desired(&deployment.id, Desired::Stopped)
                    .await
                {
                    tracing::warn!(deployment = %deployment.id, error = %e, "marking it stopped");
                }
            }
        }
        Ok(())
    }

    /// [`Self::recover_promotions`] for one deployment (`promoted`: production's deployment of
    /// each sandbox).
    async fn recover_promotion(
        &self,
        deployment: &Deployment,
        promoted: &HashMap<SandboxName, DeploymentId>,
    ) -> Result<(), Error> {
        let intent = self.own_dir(deployment).join(PROMOTING);
        remove_path(&intent.with_extension("partial"))?;
        let Ok(before) = std::fs::read(&intent) else {
            return Ok(());
        };
        let Intent {
            mounts,
            swap_db,
            swap_back,
        } = serde_json::from_slice(&before).map_err(|e| {
            Error::io(format!("reading {}", intent.display()))(std::io::Error::other(e))
        })?;
        let (sandbox, id) = (&deployment.sandbox, &deployment.id);
        if promoted.get(sandbox) == Some(id) {
            tracing::warn!(deployment = %id, "finishing a promotion a crash interrupted: its volume copies go");
            self.drop_own_volumes(deployment)?;
            return Ok(());
        }
        self.backend
            .stop(&self.backend.handle(deployment), DEFAULT_STOP_TIMEOUT)
            .await?;
        if let Some(previous) = swap_back {
            // It did not start on production's database and volumes: it has no branch of
            // its own any more, so it stays stopped (as a failed start leaves it).
            if let Some(kept) = self
                .databases
                .swap_back_unless_done(sandbox, &previous)
                .await?
            {
                tracing::warn!(deployment = %id, %kept, "production's database put back: a failed promotion's undoing was cut short by a crash");
            }
            tracing::warn!(deployment = %id, "undoing a failed promotion a crash interrupted: it mounts its own volume copies again, stopped");
            self.state.set_desired(id, Desired::Stopped).await?;
            self.put_back_mounts(deployment, &mounts).await?;
            return Ok(());
        }
        if swap_db
            && self
                .databases
                .finish_branch_swap_if_swapped(sandbox, id)
                .await?
        {
            tracing::warn!(deployment = %id, "finishing a promotion a crash interrupted after its database branch was swapped in: it is promoted");
            self.state.clear_db_branch(id).await?;
            self.state.set_desired(id, Desired::Running).await?;
            self.state.promote(sandbox, id).await?;
            self.drop_own_volumes(deployment)?;
            return Ok(());
        }
        tracing::warn!(deployment = %id, "undoing a promotion a crash interrupted: it mounts its own volume copies again and keeps its database branch, if it has one");
        self.put_back_mounts(deployment, &mounts).await
    }

    /// Records which filesystems a deployment mounts (its next start uses them).
    pub(crate) async fn set_mounts(
        &self,
        id: &DeploymentId,
        mounts: &[MountedVolume],
    ) -> Result<(), Error> {
        let _write = self.state.views_write();
        sqlx::query("UPDATE deployments SET volumes = $2 WHERE id = $1")
            .bind(id.as_str())
            .bind(sqlx::types::Json(mounts))
            .execute(self.state.pool())
            .await
            .map_err(StateError::from)?;
        Ok(())
    }
}

/// Whether a promotion switches a mount of the deployment: one is not the volume itself.
fn switches_mounts(deployment: &Deployment) -> bool {
    deployment
        .volumes
        .iter()
        .any(|m| m.source != VolumeSource::Live)
}

/// Writes `path` through a `.partial` file renamed into place, each synced, so that a crash
/// (or a power cut) leaves the whole file or none.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let partial = path.with_extension("partial");
    let mut file = std::fs::File::create(&partial)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&partial, path)?;
    std::fs::File::open(path.parent().expect("a file in a directory"))?.sync_all()
}
