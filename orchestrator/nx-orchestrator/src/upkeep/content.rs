//! The store's collection (attacker s10 F2): content no deployment runs is deleted once it has
//! not been used for `store.unused_grace_secs`, every [`StoreConfig::collect_every`]. What a
//! deployment runs (a program, or a bundle and its files) stays as long as the deployment
//! exists, stopped or not (its rollback target is a deployment too); what a push or a task in
//! flight holds stays (`artifact::holds`); what was used within the grace period stays (an
//! upload whose push follows, a bundle's files between the CLI's upload and its manifest).
//! The owners' rows of what went are deleted after the files: the content no longer counts
//! toward its owners' `store.max_owner_mb`.
//!
//! [`StoreConfig::collect_every`]: crate::config::StoreConfig::collect_every

use crate::artifact::owners::{self, Content};
use crate::artifact::Collected;
use crate::backend::{Program, SandboxBackend};
use crate::error::Error;
use crate::state::StateError;
use crate::Orchestrator;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

impl Orchestrator {
    /// Runs the store's collection every `store.collect_every()`, for as long as the
    /// orchestrator lives.
    pub(crate) fn collect_unused_content(self: &Arc<Self>) {
        let every = self.config.store.collect_every();
        let app = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(app) = app.upgrade() else { return };
                if let Err(e) = app.collect_unused_content_once().await {
                    tracing::warn!(error = %e, "store collection: trying again at the next one");
                }
            }
        });
    }

    /// One collection: what no deployment runs, nothing holds and nobody used since the
    /// grace period before its start goes (files, then owners' rows). The cutoff is taken
    /// before the deployments are read, so a deployment recorded meanwhile was pushed by a
    /// use after the cutoff, which kept its program.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn collect_unused_content_once(&self) -> Result<(), Error> {
        let grace = Duration::from_secs(self.config.store.unused_grace_secs);
        let Some(cutoff) = SystemTime::now().checked_sub(grace) else {
            return Ok(());
        };
        let referenced: HashSet<String> =
            sqlx::query_scalar("SELECT DISTINCT artifact FROM deployments")
                .fetch_all(self.state.pool())
                .await
                .map_err(StateError::from)?
                .into_iter()
                .collect();
        crate::failpoint::wait("store::referenced").await;
        let (artifacts, bundles) = (self.artifacts.clone(), self.bundles.clone());
        let (programs, stored) = tokio::task::spawn_blocking(move || {
            Ok::<_, std::io::Error>((
                artifacts.collect(&referenced, cutoff)?,
                bundles.collect(&referenced, cutoff)?,
            ))
        })
        .await
        .map_err(|e| Error::io("collecting the store")(std::io::Error::other(e)))?
        .map_err(Error::io("collecting the store"))?;
        let removed: Vec<&(String, u64)> = [
            &programs,
            &stored.bundles,
            &stored.blobs,
            &stored.executables,
        ]
        .iter()
        .flat_map(|c| &c.removed)
        .collect();
        {
            let mut cached = self.programs.lock().expect("lock");
            for (sha256, _) in &removed {
                cached.remove(sha256);
            }
        }
        let since = chrono::DateTime::<chrono::Utc>::from(cutoff);
        let pool = self.state.pool();
        let kinds: [(Content, &Collected); 3] = [
            (Content::Artifact, &programs),
            (Content::Bundle, &stored.bundles),
            (Content::Blob, &stored.blobs),
        ];
        let mut rows = 0;
        for (kind, collected) in kinds {
            rows += owners::forget_unstored(pool, kind, &collected.stored, since)
                .await
                .map_err(StateError::from)?;
        }
        if !removed.is_empty() || rows > 0 {
            let bytes: u64 = removed.iter().map(|(_, size)| size).sum();
            tracing::info!(
                files = removed.len(),
                mib = bytes >> 20,
                owners_rows = rows,
                "store: deleted content no deployment runs, unused for store.unused_grace_secs"
            );
        }
        self.remove_unused_images().await
    }

    /// Removes from Podman's storage the images no stored archive holds (attacker s11 G6: an
    /// image stayed there after its last deployment and its archive were gone): an image goes
    /// with its archive, which the collection deletes once no deployment runs it and it was
    /// not used for the grace period. A push or a task of an archive stored after the listing
    /// here makes this collection keep every image (`Podman::remove_images`); one running
    /// keeps its own (Podman refuses to remove an image a container uses).
    #[tracing::instrument(skip_all)]
    async fn remove_unused_images(&self) -> Result<(), Error> {
        let listed = (self.artifacts.digests()).map_err(Error::io("listing the artifact store"))?;
        let mut keep = HashSet::new();
        for sha256 in &listed {
            if self.artifacts.info(sha256).await?.kind != "image" {
                continue;
            }
            if let Program::Image { image_id, .. } = self.program(sha256).await? {
                keep.insert(image_id);
            }
        }
        let artifacts = self.artifacts.clone();
        let unchanged = move || artifacts.digests().is_ok_and(|now| now.is_subset(&listed));
        self.backend.remove_images(&keep, &unchanged).await?;
        Ok(())
    }
}
