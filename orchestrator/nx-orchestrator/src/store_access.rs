//! The content store as a caller sees it ([`StoreView`], `artifact::owners`): every way in
//! that names a digest (existence checks, uploads, bundle manifests, a push's or a task's
//! artifact) goes through here. For a sandbox's view a digest it does not own answers exactly
//! as one that is not stored at all: 404 `Missing`, listed by `blobs/missing`, `MissingFiles`
//! for a bundle, "no artifact is stored" for a push or a task.

use crate::api::{ArtifactInfo, BundleInfo};
use crate::artifact::bundle::BundleManifest;
use crate::artifact::owners::{self, Content, Owner, StoreView};
use crate::artifact::{BundleStoreError, StoreError, Upload};
use crate::error::Error;
use crate::names::SandboxName;
use crate::state::StateError;
use crate::Orchestrator;
use bytes::Bytes;
use futures_util::Stream;

/// What a push or a task answers for an artifact that is not stored (or, for a sandbox's
/// view, not owned): `NotFound`, saying how to upload it.
pub(crate) fn artifact_not_stored(sha256: &str) -> Error {
    Error::NotFound(format!("no artifact {sha256} is stored: upload it first (PUT /v1/artifacts/{sha256}; nx push and nx run-task do)"))
}

impl Orchestrator {
    /// Whether `view` holds `sha256` of `kind` (the host's view holds everything).
    async fn holds(&self, view: &StoreView, kind: Content, sha256: &str) -> Result<bool, Error> {
        let Some(owner) = view.owner() else {
            return Ok(true);
        };
        let digest = [sha256.to_owned()];
        let owned = owners::owned(self.state.pool(), owner, kind, &digest)
            .await
            .map_err(StateError::from)?;
        Ok(!owned.is_empty())
    }

    /// Makes `owner` an owner of `digests` of `kind`.
    async fn grant(
        &self,
        owner: Owner<'_>,
        kind: Content,
        digests: &[String],
    ) -> Result<(), Error> {
        owners::grant(self.state.pool(), owner, kind, digests)
            .await
            .map_err(|e| match &e {
                // Its sandbox (or token) was removed meanwhile (the owners' tables refer to
                // `sandboxes` and `deploy_tokens`).
                sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
                    Error::NotFound(format!("no {owner}: it was removed"))
                }
                _ => StateError::from(e).into(),
            })?;
        tracing::debug!(%owner, kind = kind.as_str(), count = digests.len(), "owned");
        Ok(())
    }

    /// After `view` stored `sha256`: its sandbox (or token) owns it (the host's view grants
    /// nothing yet: a push through it does, [`Orchestrator::grant_pushed`]).
    async fn grant_to_view(
        &self,
        view: &StoreView,
        kind: Content,
        sha256: &str,
    ) -> Result<(), Error> {
        match view.owner() {
            None => Ok(()),
            Some(owner) => self.grant(owner, kind, &[sha256.to_owned()]).await,
        }
    }

    /// `GET /v1/artifacts/{sha256}`: the stored program, or `Missing` (404) when it is not
    /// stored or `view` does not own it.
    #[tracing::instrument(skip(self))]
    pub async fn artifact_info(
        &self,
        view: &StoreView,
        sha256: &str,
    ) -> Result<ArtifactInfo, Error> {
        self.artifacts.path(sha256)?;
        if !self.holds(view, Content::Artifact, sha256).await? {
            return Err(StoreError::Missing(sha256.into()).into());
        }
        Ok(self.artifacts.info(sha256).await?)
    }

    /// `GET /v1/blobs/{sha256}`: the stored file, or `Missing` (404) when it is not stored
    /// or `view` does not own it.
    #[tracing::instrument(skip(self))]
    pub async fn blob_info(&self, view: &StoreView, sha256: &str) -> Result<ArtifactInfo, Error> {
        self.bundles.blobs.path(sha256)?;
        if !self.holds(view, Content::Blob, sha256).await? {
            return Err(StoreError::Missing(sha256.into()).into());
        }
        Ok(self.bundles.blobs.info(sha256).await?)
    }

    /// `PUT /v1/artifacts/{sha256}` (`kind` `Artifact`) and `PUT /v1/blobs/{sha256}` (`Blob`):
    /// streams the upload into its store (verified, checked against the digest; a file
    /// already on disk is kept, not written twice) and makes `view`'s sandbox its owner. A
    /// bundle is made from its manifest, never uploaded: `Bundle` is `Invalid`.
    pub async fn upload<S, E>(
        &self,
        view: &StoreView,
        kind: Content,
        sha256: &str,
        body: S,
    ) -> Result<ArtifactInfo, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let store = match kind {
            Content::Artifact => &self.artifacts,
            Content::Blob => &self.bundles.blobs,
            Content::Bundle => {
                return Err(Error::Invalid(
                    "a bundle is made from its manifest (POST /v1/bundles), not uploaded".into(),
                ))
            }
        };
        let info = store.ingest(sha256, body).await?;
        self.grant_to_view(view, kind, &info.sha256).await?;
        Ok(info)
    }

    /// An SFTP upload to `sandbox`'s area, complete: stored as a program that `sandbox` owns.
    pub async fn store_upload_of(
        &self,
        sandbox: &SandboxName,
        upload: Upload,
    ) -> Result<ArtifactInfo, Error> {
        let info = self.artifacts.store(upload, None).await?;
        self.grant(
            Owner::Sandbox(sandbox),
            Content::Artifact,
            std::slice::from_ref(&info.sha256),
        )
        .await?;
        Ok(info)
    }

    /// `POST /v1/blobs/missing`: which of `digests` are not stored or, for a sandbox's (or a
    /// token's) view, not owned by it (sorted, each once).
    #[tracing::instrument(skip_all, fields(digests = digests.len()))]
    pub async fn missing_blobs(
        &self,
        view: &StoreView,
        digests: &[String],
    ) -> Result<Vec<String>, Error> {
        let mut missing = self.bundles.missing(digests)?;
        if let Some(owner) = view.owner() {
            let owned = owners::owned(self.state.pool(), owner, Content::Blob, digests)
                .await
                .map_err(StateError::from)?;
            missing.extend(digests.iter().filter(|d| !owned.contains(*d)).cloned());
            missing.sort();
            missing.dedup();
        }
        Ok(missing)
    }

    /// `POST /v1/bundles`: makes the bundle of `manifest` from files `view` holds (others
    /// are `MissingFiles`, as if not uploaded) and makes `view`'s sandbox (or token) its owner.
    #[tracing::instrument(skip_all, fields(entry = %manifest.entry))]
    pub async fn create_bundle(
        &self,
        view: &StoreView,
        manifest: BundleManifest,
    ) -> Result<BundleInfo, Error> {
        if view.owner().is_some() {
            // What is wrong with the manifest itself is said first, as for the host's view.
            manifest
                .check(&self.bundles.limits())
                .map_err(BundleStoreError::from)?;
            let digests: Vec<String> = manifest.files.iter().map(|f| f.sha256.clone()).collect();
            let missing = self.missing_blobs(view, &digests).await?;
            if !missing.is_empty() {
                return Err(BundleStoreError::MissingFiles(missing).into());
            }
        }
        let info = self.bundles.create(manifest).await?;
        self.grant_to_view(view, Content::Bundle, &info.id).await?;
        Ok(info)
    }

    /// Before a push or a task runs the program `sha256` (a stored artifact or a bundle's
    /// id): a sandbox's (or a token's) view must own it, else it is not stored (`NotFound`);
    /// the host's view holds everything stored, and is told here when it is not, so that a
    /// push of a program nxd lacks (the CLI's first request for a new binary, answered 404
    /// to have it uploaded) is no push operation in the metrics.
    #[tracing::instrument(skip(self))]
    pub async fn admit_program(&self, view: &StoreView, sha256: &str) -> Result<(), Error> {
        let path = self.artifacts.path(sha256)?;
        let admitted = match view.owner() {
            None => path.exists() || self.bundles.find(sha256)?.is_some(),
            Some(_) => {
                self.holds(view, Content::Artifact, sha256).await?
                    || self.holds(view, Content::Bundle, sha256).await?
            }
        };
        if admitted {
            Ok(())
        } else {
            Err(artifact_not_stored(sha256))
        }
    }

    /// After a push through the host's view made `target` (a sandbox that exists now: the
    /// push made it) run the program `sha256`: `target` becomes an owner of it (of a bundle:
    /// of its files too), so that the sandbox's own tokens may push it again. Nothing for a
    /// sandbox's view (it owns what it ran). Granted only once the push made the sandbox:
    /// a grant to a name no sandbox has would pass to a later sandbox of that name (review
    /// s8 #7).
    #[tracing::instrument(skip(self))]
    pub async fn grant_pushed(
        &self,
        view: &StoreView,
        target: &SandboxName,
        sha256: &str,
    ) -> Result<(), Error> {
        if view.owner().is_some() {
            // A sandbox owns what it ran; a token's view cannot push.
            return Ok(());
        }
        // Only what is stored: a grant of a digest nobody uploaded yet would show the
        // sandbox another tenant's later upload of it.
        if let Some(manifest) = self.bundles.manifest(sha256)? {
            let files: Vec<String> = manifest.files.iter().map(|f| f.sha256.clone()).collect();
            let target = Owner::Sandbox(target);
            self.grant(target, Content::Blob, &files).await?;
            self.grant(target, Content::Bundle, &[sha256.to_owned()])
                .await
        } else if self.artifacts.path(sha256)?.is_file() {
            self.grant(
                Owner::Sandbox(target),
                Content::Artifact,
                &[sha256.to_owned()],
            )
            .await
        } else {
            Ok(())
        }
    }
}
