//! Bundles on nxd (see `nx_artifact::bundle`): their files are blobs in a store of their own
//! (`<state_dir>/blobs/<sha256>`, any bytes, 0444), uploaded only when missing; a bundle is
//! made from its manifest once every blob is there: checked, laid out as a read-only tree
//! `<state_dir>/bundles/<id>/` (hard links to the blobs; an executable file a hard link to the
//! one 0555 copy of its blob in `<state_dir>/executables/<sha256>`), its entry verified with
//! its library closure (the bundle's library directories first), and only then renamed into
//! place next to its manifest `<id>.json`. A refused bundle leaves no tree. A script as the
//! entry is refused saying how to run it; so is a dynamically linked program of the bundle
//! whose loader the sandbox would not have.
//!
//! A tree costs directories and links, not its files' bytes again: a file is stored once per
//! digest as a blob, and once more at most as an executable copy (attacker s10 F2: each
//! bundle copied its executables, so one 100 MiB upload and 1 KB manifests naming it took
//! 500 MiB of disk per request).

use super::holds::Holds;
use super::store::{collect_dir, remove_collected, ArtifactStore, Collected, StoreError};
use super::verify::{self, Linkage, VerifyError};
use crate::api::BundleInfo;
use nx_artifact::bundle::{self, BundleError, BundleLimits, BundleManifest};
use nx_artifact::closure::{system_file, Search};
use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

#[derive(Debug, thiserror::Error)]
pub enum BundleStoreError {
    #[error("refused: {0}; nothing was stored")]
    Bundle(#[from] BundleError),
    #[error("{} of the bundle's files are not uploaded yet (first: {}); upload them (PUT /v1/blobs/{{sha256}}; nx push does) and create the bundle again", .0.len(), .0[0])]
    MissingFiles(Vec<String>),
    #[error("refused: the entry {entry}: {source}; nothing was stored")]
    Entry {
        entry: String,
        #[source]
        source: VerifyError,
    },
    #[error("no bundle {0} is stored")]
    Missing(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("bundle store I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A stored bundle as a program runs it.
#[derive(Debug, Clone)]
pub struct StoredBundle {
    /// The tree, bound read-only at `/app`.
    pub root: PathBuf,
    pub manifest: BundleManifest,
    /// What its sandbox needs: the entry's linkage, or, for a static entry, `Dynamic` with
    /// the interpreter of the first of its dynamically linked programs the sandbox has
    /// ([`BundleManifest::dynamic_programs`]): the loader and library directories are bound
    /// for the bundle, not only for a dynamic entry.
    pub linkage: Linkage,
}

#[derive(Clone)]
pub struct BundleStore {
    /// The bundles' files, by sha256.
    pub blobs: ArtifactStore,
    trees: PathBuf,
    /// `<state_dir>/executables`: the executable copies of blobs, by sha256.
    executables: PathBuf,
    limits: BundleLimits,
    /// Permits for [`Self::missing`]'s lookups on blocking threads, [`LOOKUPS_AT_ONCE`].
    lookups: Arc<tokio::sync::Semaphore>,
    /// What the trees' filesystem provisions per inode, in bytes ([`bytes_per_inode`]).
    inode_bytes: u64,
}

const INCOMING: &str = ".incoming";
/// How many `POST /v1/blobs/missing` lookups (up to `bundles.max_files` stat(2) and utimes
/// each) run at once; the others wait without a thread (review17 #8: each took one of tokio's
/// blocking threads, which `tokio::fs` and nxd's other blocking work share, bounded only by
/// tokens x `api_max_requests_per_token`).
const LOOKUPS_AT_ONCE: usize = 2;

impl BundleStore {
    /// Opens `<state_dir>/blobs`, `<state_dir>/bundles` and `<state_dir>/executables`
    /// (clearing what a crash left half made).
    /// Their files are held through `holds`, the programs' store's (one lock for the whole
    /// store's collection).
    pub fn open(
        state_dir: &Path,
        limits: BundleLimits,
        holds: &Arc<Holds>,
    ) -> Result<Self, BundleStoreError> {
        let blobs = ArtifactStore::open_files(
            &state_dir.join("blobs"),
            limits.max_mb << 20,
            Arc::clone(holds),
        )?;
        let trees = state_dir.join("bundles");
        // Deployments' uids reach their trees; the executable copies only through them.
        open_dir(&trees, 0o711)?;
        let executables = state_dir.join("executables");
        open_dir(&executables, 0o700)?;
        let inode_bytes = bytes_per_inode(&trees)?;
        Ok(Self {
            blobs,
            trees,
            executables,
            limits,
            lookups: Arc::new(tokio::sync::Semaphore::new(LOOKUPS_AT_ONCE)),
            inode_bytes,
        })
    }

    /// What the tree of `manifest` counts toward its owner's `store.max_owner_mb`, in bytes
    /// ([`BundleManifest::tree_bytes`] on the trees' filesystem).
    pub fn tree_bytes(&self, manifest: &BundleManifest) -> u64 {
        manifest.tree_bytes(self.inode_bytes)
    }

    /// The limits bundles are held to.
    pub fn limits(&self) -> BundleLimits {
        self.limits
    }

    /// Which of `digests` no blob holds yet. Those stored are touched (used now: the CLI's
    /// bundle naming them follows, and the collection leaves them for its grace period).
    /// At most `bundles.max_files` digests, a bundle's files (more are refused before any is
    /// looked up: [`BundleError::TooLarge`]), looked up (a stat(2) each) on a blocking thread:
    /// newcomer17 N7, four requests of 700,000 digests held both of nxd's async workers, and
    /// `/v1/health` answered after 37 s.
    pub async fn missing(&self, digests: &[String]) -> Result<Vec<String>, BundleStoreError> {
        let count = digests.len() as u64;
        if count > self.limits.max_files {
            return Err(BundleError::TooLarge {
                found: format!("{count} files to look up"),
                limit: self.limits.max_files.to_string(),
                key: "max_files",
            }
            .into());
        }
        let _permit = self.lookups.acquire().await.expect("never closed");
        let (this, digests) = (self.clone(), digests.to_vec());
        tokio::task::spawn_blocking(move || this.look_up(&digests))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }

    /// [`Self::missing`]'s lookups. Fail point `bundles::look_up` (e.g. `sleep(2000)`): a
    /// lookup that holds its thread.
    fn look_up(&self, digests: &[String]) -> Result<Vec<String>, BundleStoreError> {
        fail::fail_point!("bundles::look_up");
        let mut missing = Vec::new();
        let mut stored = Vec::new();
        for sha in digests {
            let path = self.blobs.path(sha)?;
            if path.is_file() {
                stored.push(path);
            } else {
                missing.push(sha.clone());
            }
        }
        self.blobs.holds().touch(&stored);
        missing.sort();
        missing.dedup();
        Ok(missing)
    }

    /// Refuses a manifest whose declared sizes are not its blobs' (`bundles.max_mb` is checked
    /// on the declared sizes: with them true, it holds for the bytes received).
    fn check_sizes(&self, manifest: &BundleManifest) -> Result<(), BundleStoreError> {
        for file in &manifest.files {
            let stored = std::fs::metadata(self.blobs.path(&file.sha256)?)?.len();
            if stored != file.size {
                return Err(BundleError::WrongSize {
                    path: file.path.clone(),
                    declared: file.size,
                    stored,
                }
                .into());
            }
        }
        Ok(())
    }

    /// Where the manifest of bundle `id` is (whose mtime is the bundle's last use), stored or
    /// not.
    pub fn manifest_path(&self, id: &str) -> PathBuf {
        self.trees.join(format!("{id}.json"))
    }

    /// Makes the bundle of `manifest` (or finds it made already) and describes it.
    #[tracing::instrument(skip_all, fields(entry = %manifest.entry, files = manifest.files.len()))]
    pub async fn create(&self, manifest: BundleManifest) -> Result<BundleInfo, BundleStoreError> {
        manifest.check(&self.limits)?;
        let id = manifest.id();
        let root = self.trees.join(&id);
        // The bundle, and while it is laid out its files, stay until it is made.
        let _bundle = self.blobs.holds().hold(vec![self.manifest_path(&id)]);
        if !(root.is_dir() && self.manifest_path(&id).is_file()) {
            let mut files = Vec::new();
            for file in &manifest.files {
                files.push(self.blobs.path(&file.sha256)?);
                if file.executable {
                    files.push(self.executables.join(&file.sha256));
                }
            }
            let _files = self.blobs.holds().hold(files);
            let digests: Vec<String> = manifest.files.iter().map(|f| f.sha256.clone()).collect();
            let missing = self.missing(&digests).await?;
            if !missing.is_empty() {
                return Err(BundleStoreError::MissingFiles(missing));
            }
            self.check_sizes(&manifest)?;
            let (this, manifest) = (self.clone(), manifest.clone());
            tokio::task::spawn_blocking(move || this.lay_out(&manifest))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))??;
            tracing::info!(bundle = %id, "bundle stored");
        }
        let stored = self.load(&id)?;
        Ok(info(&id, &stored))
    }

    /// A stored bundle, or `Ok(None)` when `id` names none.
    pub fn find(&self, id: &str) -> Result<Option<StoredBundle>, BundleStoreError> {
        match self.load(id) {
            Ok(stored) => Ok(Some(stored)),
            Err(BundleStoreError::Missing(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The manifest of a stored bundle (read alone: the tree is not looked at), or `Ok(None)`
    /// when `id` names none.
    pub fn manifest(&self, id: &str) -> Result<Option<BundleManifest>, BundleStoreError> {
        self.blobs.path(id)?;
        match std::fs::read(self.manifest_path(id)) {
            Ok(bytes) => {
                Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
                })?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn load(&self, id: &str) -> Result<StoredBundle, BundleStoreError> {
        let root = self.trees.join(id);
        let manifest = self
            .manifest(id)?
            .ok_or_else(|| BundleStoreError::Missing(id.into()))?;
        let entry = std::fs::read(bundle::host_path(&root, &manifest.entry))?;
        let linkage = match verify::verify_bytes(&entry, |p| Path::new(p).is_file())
            .map_err(|source| BundleStoreError::Entry {
                entry: manifest.entry.clone(),
                source,
            })?
            .linkage
        {
            // A static entry may run the bundle's dynamic programs (newcomer17 N1: a busybox
            // shell's script ran one, which found no loader: "not found", exit 127).
            Linkage::Static => manifest
                .dynamic_programs(|p| bundle::host_path(&root, p))
                .find(|(_, interpreter)| system_file(Path::new(interpreter)).is_some())
                .map_or(Linkage::Static, |(_, interpreter)| Linkage::Dynamic {
                    interpreter,
                }),
            dynamic => dynamic,
        };
        Ok(StoredBundle {
            root,
            manifest,
            linkage,
        })
    }
    /// The collection of the bundles' stores (see [`ArtifactStore::collect`]): deletes the
    /// bundles not in `referenced` (a deployment's program), not held and last used before
    /// `cutoff`, then the blobs and executable copies no bundle left names, on the same terms.
    /// A bundle goes manifest first, then its tree (renamed into `.incoming`): a crash in
    /// between leaves a tree without a manifest, which reads as no bundle, is used as it is by
    /// the next push of that bundle, and is deleted by the next collection.
    pub fn collect(
        &self,
        referenced: &HashSet<String>,
        cutoff: SystemTime,
    ) -> std::io::Result<BundlesCollected> {
        let mut ids = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(&self.trees)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            let id = name.strip_suffix(".json").unwrap_or(&name);
            if crate::names::check_sha256(id).is_ok() {
                ids.insert(id.to_owned());
            }
        }
        let (mut bundles, mut files) = (Collected::default(), HashSet::new());
        for id in ids {
            let (manifest, tree) = (self.manifest_path(&id), self.trees.join(&id));
            // Held as its manifest; last used when the manifest or the tree last was.
            let removed = !referenced.contains(&id)
                && self
                    .blobs
                    .holds()
                    .remove_unused(&manifest, Some(&tree), cutoff, |_| {
                        match std::fs::remove_file(&manifest) {
                            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                            _ => {}
                        }
                        match std::fs::rename(
                            &tree,
                            self.trees.join(INCOMING).join(format!("gc-{id}")),
                        ) {
                            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                            _ => Ok(()),
                        }
                    })?;
            if removed {
                bundles.removed.push((id, 0));
                continue;
            }
            match self.manifest(&id) {
                Ok(Some(kept)) => files.extend(kept.files.into_iter().map(|f| f.sha256)),
                Ok(None) => {}
                Err(e) => {
                    // Its files cannot be told: none of the blobs goes this time.
                    tracing::warn!(bundle = %id, error = %e, "unreadable manifest: no blob collected");
                    return Ok(BundlesCollected {
                        bundles,
                        ..BundlesCollected::default()
                    });
                }
            }
            bundles.stored.push(id);
        }
        remove_collected(&self.trees.join(INCOMING))?;
        let blobs = self.blobs.collect(&files, cutoff)?;
        let executables = collect_dir(
            &self.executables,
            &files,
            cutoff,
            self.blobs.holds(),
            |_| {},
        )?;
        Ok(BundlesCollected {
            bundles,
            blobs,
            executables,
        })
    }

    /// Lays the tree out in `.incoming`, verifies the entry there, then renames it into place and
    /// writes its manifest. Anything refused is removed with the temporary directory.
    fn lay_out(&self, manifest: &BundleManifest) -> Result<(), BundleStoreError> {
        let trees = &self.trees;
        let id = manifest.id();
        let temp = tempfile::Builder::new()
            .prefix("bundle-")
            .tempdir_in(trees.join(INCOMING))?;
        let root = temp.path().join("tree");
        std::fs::create_dir(&root)?;
        for file in &manifest.files {
            let path = bundle::host_path(&root, &file.path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let source = if file.executable {
                self.executable(&file.sha256)?
            } else {
                self.blobs.path(&file.sha256)?
            };
            link_or_renew(&source, &path)?;
        }
        for link in &manifest.links {
            let path = bundle::host_path(&root, &link.path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::os::unix::fs::symlink(&link.target, &path)?;
        }
        let entry = bundle::host_path(&root, &manifest.entry);
        let bytes = std::fs::read(&entry)?;
        manifest.check_entry_head(&bytes)?;
        verify::verify_with(&bytes, || Search::host().with_bundle(&root, manifest)).map_err(
            |source| BundleStoreError::Entry {
                entry: manifest.entry.clone(),
                source,
            },
        )?;
        manifest.check_programs(|p| bundle::host_path(&root, p))?;
        // Directories: readable by every deployment's uid, writable by nobody.
        for dir in walk_dirs(&root)? {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555))?;
        }
        std::fs::write(
            trees.join(format!("{id}.json")),
            serde_json::to_vec(manifest).map_err(std::io::Error::other)?,
        )?;
        match std::fs::rename(&root, trees.join(&id)) {
            Ok(()) => Ok(()),
            // Made meanwhile by another push of the same bundle.
            Err(_) if trees.join(&id).is_dir() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The executable copy of blob `sha256` (mode 0555, which a hard link to the 0444 blob
    /// cannot have): made once per digest (a temp file in `executables/.incoming`, renamed
    /// into place; one made meanwhile by another bundle is kept) and shared by every tree
    /// that holds the file as executable.
    fn executable(&self, sha256: &str) -> Result<PathBuf, BundleStoreError> {
        let blob = self.blobs.path(sha256)?;
        let path = self.executables.join(sha256);
        if path.is_file() {
            return Ok(path);
        }
        let temp = tempfile::Builder::new()
            .prefix("executable-")
            .tempfile_in(self.executables.join(INCOMING))?;
        std::fs::copy(&blob, temp.path())?;
        std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o555))?;
        match temp.persist_noclobber(&path) {
            Ok(_) => Ok(path),
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(path),
            Err(e) => Err(e.error.into()),
        }
    }
}

/// What the bundles' collection did ([`BundleStore::collect`]).
#[derive(Debug, Default)]
pub struct BundlesCollected {
    pub bundles: Collected,
    pub blobs: Collected,
    pub executables: Collected,
}

fn info(id: &str, stored: &StoredBundle) -> BundleInfo {
    let m = &stored.manifest;
    BundleInfo {
        id: id.to_owned(),
        files: m.files.len() as u64,
        size: m.total_bytes(),
        entry: m.entry.clone(),
        argv0: m.argv0().to_owned(),
        details: stored.linkage.describe(),
    }
}

/// Makes `dir` (mode `mode`) with an empty `.incoming` (0700) for work in progress: whatever
/// a crash left there goes.
fn open_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    let incoming = dir.join(INCOMING);
    if incoming.exists() {
        std::fs::remove_dir_all(&incoming)?;
    }
    std::fs::create_dir_all(&incoming)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    std::fs::set_permissions(&incoming, std::fs::Permissions::from_mode(0o700))
}

/// Hard-links `source` (a stored file, `<store>/<sha256>`) at `path`. Where `source` is at
/// the filesystem's limit of links to one file (ext4: 65,000), `source` is first replaced by
/// a copy of itself (the same bytes and mode, made in its store's `.incoming` and renamed
/// over it): trees made before keep the old file, the next 65,000 link the new one. So a
/// file is copied once per 65,000 trees that hold it, not once per tree (attacker s11: 7,001
/// copies, one per tree, past the limit), and one tenant taking a common file to the limit
/// leaves every other tenant's bundles pushable (attacker s10 F10).
fn link_or_renew(source: &Path, path: &Path) -> std::io::Result<()> {
    match std::fs::hard_link(source, path) {
        Err(e) if e.kind() == std::io::ErrorKind::TooManyLinks => {
            let store = source.parent().expect("a stored file is in its store");
            let fresh = tempfile::Builder::new()
                .prefix("renewed-")
                .tempfile_in(store.join(INCOMING))?;
            std::fs::copy(source, fresh.path())?;
            fresh.persist(source).map_err(|e| e.error)?;
            tracing::info!(file = %source.display(), "at the filesystem's link limit: renewed");
            std::fs::hard_link(source, path)
        }
        linked => linked,
    }
}

/// The bytes of its size that the filesystem holding `dir` provides per inode (statvfs(3):
/// `f_blocks` × `f_frsize` / `f_files`; about 16 KiB on a default ext4), or 0 for one that
/// counts no inodes (`f_files` 0, as btrfs): [`BundleManifest::tree_bytes`] takes at least a
/// 4 KiB block per inode. Errors: statvfs(3)'s.
fn bytes_per_inode(dir: &Path) -> std::io::Result<u64> {
    let fs = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    let size = fs.blocks().saturating_mul(fs.fragment_size());
    Ok(size.checked_div(fs.files()).unwrap_or(0))
}

/// Every directory under `root`, `root` included (links not followed).
fn walk_dirs(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs = vec![root.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        for entry in std::fs::read_dir(&dirs[i])? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            }
        }
        i += 1;
    }
    Ok(dirs)
}
