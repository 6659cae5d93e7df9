//! The content store as a caller sees it ([`StoreView`], `artifact::owners`): every way in
//! that names a digest (existence checks, uploads, bundle manifests, a push's or a task's
//! artifact) goes through here. For a sandbox's view a digest it does not own answers exactly
//! as one that is not stored at all: 404 `Missing`, listed by `blobs/missing`, `MissingFiles`
//! for a bundle, "no artifact is stored" for a push or a task. An owner (a sandbox's or a
//! token's view) holds at most `store.max_owner_mb` of it: an upload past that is
//! `OverQuota` (507).

use crate::api::{ArtifactInfo, BundleInfo};
use crate::artifact::bundle::BundleManifest;
use crate::artifact::holds::Hold;
use crate::artifact::owners::{self, Content, Owner, Reservation, StoreView};
use crate::artifact::{BundleStoreError, StoreError, Upload};
use crate::error::Error;
use crate::names::SandboxName;
use crate::state::StateError;
use crate::Orchestrator;
use bytes::Bytes;
use futures_util::Stream;

/// The bytes stored content counts toward its owner's `store.max_owner_mb`: its size and,
/// for an image, its layers unpacked (what Podman's storage takes once it is loaded;
/// attacker s11 G6).
fn held_size(info: &ArtifactInfo) -> u64 {
    info.size.saturating_add(info.unpacked_size)
}

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

    /// Makes `owner` an owner of `digests` of `kind` (each with its size in bytes).
    async fn grant(
        &self,
        owner: Owner<'_>,
        kind: Content,
        digests: &[(String, u64)],
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

    /// After `view` stored `sha256` (of `size` bytes): its sandbox (or token) owns it (the
    /// host's view grants nothing yet: a push through it does, [`Orchestrator::grant_pushed`]).
    async fn grant_to_view(
        &self,
        view: &StoreView,
        kind: Content,
        sha256: &str,
        size: u64,
    ) -> Result<(), Error> {
        match view.owner() {
            None => Ok(()),
            Some(owner) => self.grant(owner, kind, &[(sha256.to_owned(), size)]).await,
        }
    }

    /// Reserves `wanted` bytes (`None`: all the room left) of `owner`'s room under
    /// `store.max_owner_mb` (attacker s10 F2: one push token stored blobs without end) for an
    /// upload, until the reservation is dropped; `OverQuota` when they do not fit beside what
    /// the owner holds and its other uploads under way reserved (attacker s12 M4: uploads at
    /// once each saw the room as it was when they began).
    async fn reserve(&self, owner: Owner<'_>, wanted: Option<u64>) -> Result<Reservation, Error> {
        let reservations = &self.store_reservations;
        let _one_at_a_time = reservations.admitting.lock().await;
        // Reservations read before the held bytes: an upload ending in between is counted
        // twice at worst, never missed.
        let reserved = reservations.reserved(owner);
        let held = owners::held_bytes(self.state.pool(), owner)
            .await
            .map_err(StateError::from)?;
        let taken = held.saturating_add(reserved);
        let max = self.config.store.max_owner_mb.saturating_mul(1 << 20);
        let room = max.saturating_sub(taken);
        match wanted {
            _ if room == 0 => Err(self.over_quota(owner, taken).into()),
            Some(wanted) if wanted > room => Err(self.over_quota(owner, taken).into()),
            wanted => Ok(reservations.take(owner, wanted.unwrap_or(room))),
        }
    }

    /// The refusal of an upload that does not fit in the `room` it reserved.
    fn past_room(&self, owner: Owner<'_>, room: u64) -> StoreError {
        let max = self.config.store.max_owner_mb.saturating_mul(1 << 20);
        self.over_quota(owner, max.saturating_sub(room))
    }

    /// Reserves what a stored `info` holds beyond the `reserved` bytes its upload reserved (an
    /// image's layers unpacked, known once it is verified), or `OverQuota`.
    async fn reserve_rest(
        &self,
        owner: Owner<'_>,
        info: &ArtifactInfo,
        reserved: u64,
    ) -> Result<Option<Reservation>, Error> {
        match held_size(info).checked_sub(reserved) {
            Some(rest) if rest > 0 => Ok(Some(self.reserve(owner, Some(rest)).await?)),
            _ => Ok(None),
        }
    }

    /// The refusal of an upload that would take `owner`, holding `held` bytes, past its cap.
    fn over_quota(&self, owner: Owner<'_>, held: u64) -> StoreError {
        StoreError::OverQuota {
            owner: owner.to_string(),
            held_mb: held.div_ceil(1 << 20),
            max_mb: self.config.store.max_owner_mb,
            grace_secs: self.config.store.unused_grace_secs,
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
    /// already on disk is kept, not written twice) and makes `view`'s sandbox its owner. An
    /// upload of what the owner does not own yet must fit in its room under
    /// `store.max_owner_mb`, which it reserves before its body ([`Self::reserve`]: `declared`,
    /// its `Content-Length`, or all the room left without one; else `OverQuota` at once, and
    /// nothing is stored; an image counts its layers unpacked too, checked once it is
    /// verified: past the room it is refused before it is kept, and nothing is stored). A bundle
    /// is made from its manifest, never uploaded: `Bundle` is `Invalid`.
    pub async fn upload<S, E>(
        &self,
        view: &StoreView,
        kind: Content,
        sha256: &str,
        body: S,
        declared: Option<u64>,
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
        let reserved = match view.owner() {
            Some(owner) if !self.holds(view, kind, sha256).await? => {
                Some((owner, self.reserve(owner, declared).await?))
            }
            _ => None,
        };
        let room = reserved.as_ref().map(|(owner, r)| (*owner, r.bytes()));
        let verified = match store
            .ingest(sha256, body, room.map_or(u64::MAX, |(_, room)| room))
            .await
        {
            Err(StoreError::TooLarge { .. }) if room.is_some() => {
                let (owner, room) = room.expect("checked");
                return Err(self.past_room(owner, room).into());
            }
            verified => verified?,
        };
        // Before it is kept: refused, it goes (attacker s13 H3b).
        let _rest = match room {
            Some((owner, room)) => self.reserve_rest(owner, verified.info(), room).await?,
            None => None,
        };
        let info = store.keep(verified)?;
        self.grant_to_view(view, kind, &info.sha256, held_size(&info))
            .await?;
        Ok(info)
    }

    /// An SFTP upload to `sandbox`'s area, complete: stored as a program that `sandbox` owns,
    /// if it fits in the sandbox's room under `store.max_owner_mb`, else `OverQuota`. An
    /// upload whose bytes alone pass the room is refused before it is stored, unless the
    /// sandbox holds those bytes already (attacker s12 H3: refused uploads stayed in the
    /// store, four 152 MiB files for a sandbox capped at 200 MiB); an image that passes the
    /// room only unpacked is refused once verified, before it is kept (attacker s13 H3b).
    pub async fn store_upload_of(
        &self,
        sandbox: &SandboxName,
        upload: Upload,
    ) -> Result<ArtifactInfo, Error> {
        let owner = Owner::Sandbox(sandbox);
        let view = StoreView::Sandbox(sandbox.clone());
        let held = match upload.sha256_so_far() {
            Some(sha256) => self.holds(&view, Content::Artifact, &sha256).await?,
            None => false,
        };
        let size = upload.size();
        let _reserved = match held {
            true => None,
            false => Some(self.reserve(owner, Some(size)).await?),
        };
        let verified = self.artifacts.verify(upload, None).await?;
        let sha256 = &verified.info().sha256;
        // Before it is kept: refused, it goes (attacker s13 H3b).
        let _rest = match held || self.holds(&view, Content::Artifact, sha256).await? {
            true => None,
            false => self.reserve_rest(owner, verified.info(), size).await?,
        };
        let info = self.artifacts.keep(verified)?;
        self.grant(
            owner,
            Content::Artifact,
            &[(info.sha256.clone(), held_size(&info))],
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
        let mut missing = self.bundles.missing(digests).await?;
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
    /// Its tree counts toward the owner's `store.max_owner_mb` (`BundleManifest::tree_bytes`;
    /// its files are counted in their own rows), reserved before it is laid out: a bundle the
    /// owner has no room for is `OverQuota`, and nothing is laid out (newcomer17 N11).
    #[tracing::instrument(skip_all, fields(entry = %manifest.entry))]
    pub async fn create_bundle(
        &self,
        view: &StoreView,
        manifest: BundleManifest,
    ) -> Result<BundleInfo, Error> {
        let tree_bytes = self.bundles.tree_bytes(&manifest);
        let mut _reserved = None;
        if let Some(owner) = view.owner() {
            // What is wrong with the manifest itself is said first, as for the host's view.
            manifest
                .check(&self.bundles.limits())
                .map_err(BundleStoreError::from)?;
            let digests: Vec<String> = manifest.files.iter().map(|f| f.sha256.clone()).collect();
            let missing = self.missing_blobs(view, &digests).await?;
            if !missing.is_empty() {
                return Err(BundleStoreError::MissingFiles(missing).into());
            }
            if !self.holds(view, Content::Bundle, &manifest.id()).await? {
                _reserved = Some(self.reserve(owner, Some(tree_bytes)).await?);
            }
        }
        let info = self.bundles.create(manifest).await?;
        self.grant_to_view(view, Content::Bundle, &info.id, tree_bytes)
            .await?;
        Ok(info)
    }

    /// Before a push or a task runs the program `sha256` (a stored artifact or a bundle's
    /// id): a sandbox's (or a token's) view must own it, else it is not stored (`NotFound`);
    /// the host's view holds everything stored, and is told here when it is not, so that a
    /// push of a program nxd lacks (the CLI's first request for a new binary, answered 404
    /// to have it uploaded) is no push operation in the metrics. The program is held (the
    /// store's collection leaves it) until the returned guard is dropped: keep it until the
    /// push has recorded its deployment, or the task has ended.
    #[tracing::instrument(skip(self))]
    pub async fn admit_program(&self, view: &StoreView, sha256: &str) -> Result<Hold, Error> {
        let path = self.artifacts.path(sha256)?;
        let owned = match view.owner() {
            None => true,
            Some(_) => {
                self.holds(view, Content::Artifact, sha256).await?
                    || self.holds(view, Content::Bundle, sha256).await?
            }
        };
        if !owned {
            return Err(artifact_not_stored(sha256));
        }
        // Held before it is looked for: the collection takes it before, or not at all.
        let manifest = self.bundles.manifest_path(sha256);
        let held = (self.artifacts.holds()).hold(vec![path.clone(), manifest.clone()]);
        if path.is_file() || manifest.is_file() {
            Ok(held)
        } else {
            Err(artifact_not_stored(sha256))
        }
    }

    /// After a push through the host's view recorded a deployment of the program `sha256` in
    /// `target` (a sandbox that exists now: the push made it): `target` becomes an owner of
    /// it (of a bundle: of its files too), so that the sandbox's own tokens may push it
    /// again. Nothing for a sandbox's view (it owns what it ran). Granted only once the push
    /// made the sandbox: a grant to a name no sandbox has would pass to a later sandbox of
    /// that name (review s8 #7).
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
            let files: Vec<(String, u64)> = manifest
                .files
                .iter()
                .map(|f| (f.sha256.clone(), f.size))
                .collect();
            let target = Owner::Sandbox(target);
            self.grant(target, Content::Blob, &files).await?;
            let tree = [(sha256.to_owned(), self.bundles.tree_bytes(&manifest))];
            self.grant(target, Content::Bundle, &tree).await
        } else {
            match self.artifacts.info(sha256).await {
                Ok(info) => {
                    let digest = [(sha256.to_owned(), held_size(&info))];
                    self.grant(Owner::Sandbox(target), Content::Artifact, &digest)
                        .await
                }
                Err(StoreError::Missing(_)) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
    }
}
