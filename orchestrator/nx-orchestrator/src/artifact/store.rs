//! The content-addressed store: `<dir>/<sha256>`, read-only files. An upload is written to a
//! temp file in `<dir>/.incoming` and renamed into place only when its hash matches and the
//! binary verifies; an interrupted upload leaves nothing (the temp file is removed on drop, and
//! whatever a crash left in `.incoming` is cleared when the store opens).
//!
//! No upload is held in memory: it is hashed on its way to the temp file (as long as it comes
//! in order; SFTP writes that do not are hashed from the file after), so a wrong digest is
//! refused without reading it again, and a program is verified from a read-only memory map of
//! the file (page cache, not nxd's heap). What verification found is kept per digest for the
//! store's life (stored files never change), so `info` (every `nx push` asks) reads nothing.

use super::holds::Holds;
use super::image::ImageError;
use super::verify::VerifyError;
use super::{Artifact, InspectError};
use crate::api::ArtifactInfo;
use crate::names::{check_sha256, NameError};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("artifact {0} is not stored; push it first")]
    Missing(String),
    #[error("upload was cut off: {0}; nothing was stored, push again")]
    Interrupted(String),
    #[error("upload is larger than the {limit_mb} MiB limit")]
    TooLarge { limit_mb: u64 },
    /// The upload would take its owner past `store.max_owner_mb` (attacker s10 F2): HTTP 507
    /// Insufficient Storage, with what to do.
    #[error("{owner} holds {held_mb} MiB of stored content and may hold {max_mb} MiB (store.max_owner_mb): this upload (or bundle) does not fit, and nothing was stored. Remove the deployments it no longer needs (`nx rm`; what no deployment runs is deleted {grace_secs} s after its last use, store.unused_grace_secs), or ask the host's operator to raise store.max_owner_mb")]
    OverQuota {
        /// Who holds the content: "sandbox NAME" or "token ID".
        owner: String,
        held_mb: u64,
        max_mb: u64,
        grace_secs: u64,
    },
    #[error("upload hash mismatch: the client announced {announced} but the bytes hash to {actual}; nothing was stored")]
    HashMismatch { announced: String, actual: String },
    #[error("refused: {0}")]
    Verify(#[from] VerifyError),
    #[error("refused: {0}")]
    Image(#[from] ImageError),
    /// No room left (ENOSPC, or EDQUOT: a quota) on the disk that holds the store: the
    /// operator's to fix, not the client's (HTTP 507 Insufficient Storage).
    #[error("the host's disk is full: ask its operator (nxd could not store the upload in {}: {source}); nothing was stored", .dir.display())]
    DiskFull {
        /// The store's directory (on the state directory's disk).
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("artifact store I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// An I/O error while writing into the store at `dir`: `DiskFull` when the disk (or a
    /// quota) has no room left (errno ENOSPC, EDQUOT; write(2)), else `Io`.
    fn writing(dir: &Path) -> impl Fn(std::io::Error) -> Self + '_ {
        move |e| match e.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => Self::DiskFull {
                dir: dir.to_owned(),
                source: e,
            },
            _ => Self::Io(e),
        }
    }
}

impl From<InspectError> for StoreError {
    fn from(e: InspectError) -> Self {
        match e {
            InspectError::Verify(e) => Self::Verify(e),
            InspectError::Image(e) => Self::Image(e),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ArtifactStore {
    dir: PathBuf,
    max_bytes: u64,
    /// The most bytes an image's layers may hold unpacked (`store.max_image_unpacked_mb`).
    max_image_unpacked: u64,
    contents: Contents,
    /// What is known of stored digests (shared by the store's clones).
    known: Arc<Mutex<HashMap<String, ArtifactInfo>>>,
    /// The stored files in use (shared by the store's clones; see [`Holds`]).
    holds: Arc<Holds>,
}

/// What a store accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contents {
    /// Programs: each upload verifies as a binary for this host or an image archive.
    Programs,
    /// Any bytes (a bundle's files, `blobs`): only the digest is checked.
    Files,
}

const INCOMING: &str = ".incoming";

impl ArtifactStore {
    /// The store of programs (binaries and images), each verified when it is stored: an
    /// upload of at most `max_bytes`, an image whose layers hold at most `max_image_unpacked`
    /// bytes unpacked (what `podman load` writes).
    pub fn open(dir: &Path, max_bytes: u64, max_image_unpacked: u64) -> Result<Self, StoreError> {
        let mut store = Self::open_as(dir, max_bytes, Contents::Programs, Arc::default())?;
        store.max_image_unpacked = max_image_unpacked;
        Ok(store)
    }

    /// A store of bundles' files: any bytes, stored by their digest (see `bundles`), held
    /// through `holds` (the programs' store's).
    pub fn open_files(dir: &Path, max_bytes: u64, holds: Arc<Holds>) -> Result<Self, StoreError> {
        Self::open_as(dir, max_bytes, Contents::Files, holds)
    }

    fn open_as(
        dir: &Path,
        max_bytes: u64,
        contents: Contents,
        holds: Arc<Holds>,
    ) -> Result<Self, StoreError> {
        let incoming = dir.join(INCOMING);
        if incoming.exists() {
            std::fs::remove_dir_all(&incoming)?;
        }
        std::fs::create_dir_all(&incoming)?;
        // Deployments' uids must reach their binary, and nothing else is kept here.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
        std::fs::set_permissions(&incoming, std::fs::Permissions::from_mode(0o700))?;
        Ok(Self {
            dir: dir.to_owned(),
            max_bytes,
            max_image_unpacked: u64::MAX,
            contents,
            known: Arc::default(),
            holds,
        })
    }

    /// What keeps the store's collection from files in use (shared by the store's clones).
    pub fn holds(&self) -> &Arc<Holds> {
        &self.holds
    }

    /// Deletes the stored files whose digest is not in `keep`, that no hold holds and that
    /// were last used before `cutoff` (see [`collect_dir`]). Returns what went (digest and
    /// bytes) and the digests still stored.
    pub fn collect(
        &self,
        keep: &std::collections::HashSet<String>,
        cutoff: std::time::SystemTime,
    ) -> std::io::Result<Collected> {
        collect_dir(&self.dir, keep, cutoff, &self.holds, |sha256| {
            self.known.lock().expect("lock").remove(sha256);
        })
    }

    /// The digests stored now (the files named by one).
    pub fn digests(&self) -> std::io::Result<std::collections::HashSet<String>> {
        let mut digests = std::collections::HashSet::new();
        for entry in std::fs::read_dir(&self.dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                if check_sha256(name).is_ok() {
                    digests.insert(name.to_owned());
                }
            }
        }
        Ok(digests)
    }

    pub fn path(&self, sha256: &str) -> Result<PathBuf, StoreError> {
        check_sha256(sha256)?;
        Ok(self.dir.join(sha256))
    }

    pub fn incoming_dir(&self) -> PathBuf {
        self.dir.join(INCOMING)
    }

    /// What is stored under `sha256`, if anything: remembered from when it was stored or
    /// first asked about.
    pub async fn info(&self, sha256: &str) -> Result<ArtifactInfo, StoreError> {
        let path = self.path(sha256)?;
        if let Some(info) = self.known.lock().expect("lock").get(sha256) {
            return Ok(info.clone());
        }
        let size = match tokio::fs::metadata(&path).await {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Missing(sha256.into()))
            }
            Err(e) => return Err(e.into()),
        };
        let info = match self.contents {
            Contents::Files => describe_file(sha256, size),
            Contents::Programs => describe(sha256, size, &self.inspect(&path).await?),
        };
        self.remember(&info);
        Ok(info)
    }

    fn remember(&self, info: &ArtifactInfo) {
        self.known
            .lock()
            .expect("lock")
            .insert(info.sha256.clone(), info.clone());
    }

    /// Starts an upload: a temp file in `.incoming` that takes at most `limit_bytes` (and at
    /// most the store's own limit).
    pub fn begin_upload(&self, limit_bytes: u64) -> Result<Upload, StoreError> {
        let temp = tempfile::Builder::new()
            .prefix("upload-")
            .tempfile_in(self.incoming_dir())
            .map_err(StoreError::writing(&self.dir))?;
        Ok(Upload {
            temp,
            dir: self.dir.clone(),
            size: 0,
            limit_bytes: limit_bytes.min(self.max_bytes),
            hashing: Some(Box::new(Sha256::new())),
        })
    }

    /// Streams an upload of at most `limit_bytes` (and the store's own limit; more is
    /// `TooLarge`) and verifies it under the digest the client announced; [`Self::keep`] puts
    /// it in the store.
    #[tracing::instrument(skip(self, body), fields(sha256 = %announced))]
    pub async fn ingest<S, E>(
        &self,
        announced: &str,
        mut body: S,
        limit_bytes: u64,
    ) -> Result<Verified, StoreError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        self.path(announced)?;
        // The temp file comes with the body's first bytes, not with the request's head: a body
        // that never comes leaves none (attacker s12 H6).
        let mut upload = None;
        let mut head = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StoreError::Interrupted(e.to_string()))?;
            if self.contents == Contents::Programs && head.len() < Artifact::HEAD_BYTES {
                let wanted = Artifact::HEAD_BYTES - head.len();
                head.extend_from_slice(&chunk[..chunk.len().min(wanted)]);
                if head.len() == Artifact::HEAD_BYTES {
                    // Refused on its first bytes, not after the whole body (attacker s7 F3).
                    Artifact::check_head(&head)?;
                }
            }
            if upload.is_none() {
                upload = Some(self.begin_upload(limit_bytes)?);
            }
            let upload = upload.as_mut().expect("made above");
            upload.write_at(upload.size, &chunk)?;
        }
        let upload = match upload {
            Some(upload) => upload,
            None => self.begin_upload(limit_bytes)?,
        };
        self.verify(upload, Some(announced)).await
    }

    /// Verifies a complete upload (and checks it against the digest the client announced, if
    /// it announced one); it is not in the store yet: [`Self::keep`] puts it there, and a
    /// [`Verified`] dropped instead goes with its temp file (attacker s13 H3b: an image
    /// refused for its unpacked size, known only once verified, stayed in the store).
    #[tracing::instrument(skip_all, fields(size = upload.size))]
    pub async fn verify(
        &self,
        upload: Upload,
        announced: Option<&str>,
    ) -> Result<Verified, StoreError> {
        let Upload {
            temp,
            size,
            hashing,
            ..
        } = upload;
        let writing = StoreError::writing(&self.dir);
        temp.as_file().sync_all().map_err(&writing)?;
        let actual = match hashing {
            Some(hasher) => hex::encode(hasher.finalize()),
            None => {
                let path = temp.path().to_owned();
                tokio::task::spawn_blocking(move || nx_artifact::bundle::sha256_file(&path))
                    .await
                    .map_err(std::io::Error::other)?
                    .map_err(|e| std::io::Error::other(e.to_string()))?
            }
        };
        if let Some(announced) = announced.filter(|a| *a != actual) {
            return Err(StoreError::HashMismatch {
                announced: announced.into(),
                actual,
            });
        }
        let (info, mode) = match self.contents {
            Contents::Programs => {
                let artifact = self.inspect(temp.path()).await?;
                (describe(&actual, size, &artifact), 0o555)
            }
            Contents::Files => (describe_file(&actual, size), 0o444),
        };
        std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(mode))?;
        Ok(Verified { temp, info })
    }

    /// Puts a verified upload in the store under its digest and returns what it is.
    pub fn keep(&self, verified: Verified) -> Result<ArtifactInfo, StoreError> {
        let Verified { temp, info } = verified;
        let writing = StoreError::writing(&self.dir);
        let actual = &info.sha256;
        // A file already stored under this digest holds these very bytes: it stays (its
        // hard links in bundles, running programs), and the upload goes with its temp file.
        let path = self.path(actual)?;
        match temp.persist_noclobber(&path) {
            Ok(_) => {
                tracing::info!(sha256 = %actual, kind = %info.kind, details = %info.details, "stored")
            }
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
                // Used now: the collection leaves it for its grace period.
                self.holds.touch(&[path]);
                tracing::info!(sha256 = %actual, "already stored: the upload matched it")
            }
            Err(e) => return Err(writing(e.error)),
        }
        self.remember(&info);
        Ok(info)
    }
}

impl ArtifactStore {
    /// Verifies the file at `path` as an artifact ([`Artifact::inspect_within`] the store's
    /// bound of an image's unpacked layers) from a read-only memory map of it, on the
    /// blocking pool. The file must not change meanwhile (stored artifacts and finished
    /// uploads do not).
    pub async fn inspect(&self, path: &Path) -> Result<Artifact, StoreError> {
        let path = path.to_owned();
        let max_image_unpacked = self.max_image_unpacked;
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path)?;
            if file.metadata()?.len() == 0 {
                return Ok(Artifact::inspect_within(&[], max_image_unpacked)?);
            }
            // SAFETY: the file is not written while it is mapped (see above); a file truncated
            // meanwhile would fault, not read stale memory.
            let map = unsafe { memmap2::Mmap::map(&file)? };
            Ok(Artifact::inspect_within(&map, max_image_unpacked)?)
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

/// A complete upload, verified ([`ArtifactStore::verify`]), not in the store yet: a temp file
/// in `.incoming`, deleted when this is dropped before [`ArtifactStore::keep`] took it.
#[derive(Debug)]
pub struct Verified {
    temp: tempfile::NamedTempFile,
    info: ArtifactInfo,
}

impl Verified {
    /// What the upload is (its digest, size, kind and unpacked size).
    pub fn info(&self) -> &ArtifactInfo {
        &self.info
    }
}

/// An upload on its way into the store: a temp file in `.incoming`, deleted when this is
/// dropped before `ArtifactStore::verify` took it.
#[derive(Debug)]
pub struct Upload {
    temp: tempfile::NamedTempFile,
    /// The store's directory (what a full disk is reported as).
    dir: PathBuf,
    size: u64,
    limit_bytes: u64,
    /// The hash of the bytes so far, while every write came right after the one before
    /// (boxed: an upload lives in every open SFTP file's state).
    hashing: Option<Box<Sha256>>,
}

impl Upload {
    /// Writes `data` at `offset` (SFTP writes carry offsets; HTTP appends). A write that
    /// would make the file larger than the limit is refused with `TooLarge`.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt;
        let end = offset.saturating_add(data.len() as u64);
        if end > self.limit_bytes {
            return Err(StoreError::TooLarge {
                limit_mb: self.limit_bytes >> 20,
            });
        }
        // Page-cache writes of at most a chunk: short enough to do on the async thread.
        self.temp
            .as_file()
            .write_all_at(data, offset)
            .map_err(StoreError::writing(&self.dir))?;
        if offset != self.size {
            // Out of order: hashed from the file when it is stored.
            self.hashing = None;
        }
        if let Some(hasher) = &mut self.hashing {
            hasher.update(data);
        }
        self.size = self.size.max(end);
        Ok(())
    }

    /// Bytes so far (the end of the furthest write).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The sha256 (hex) of the bytes so far, where every write came right after the one
    /// before; `None` otherwise (the store hashes the file then).
    pub fn sha256_so_far(&self) -> Option<String> {
        self.hashing
            .as_ref()
            .map(|hasher| hex::encode(hasher.as_ref().clone().finalize()))
    }
}

/// What one store's collection did ([`ArtifactStore::collect`]).
#[derive(Debug, Default)]
pub struct Collected {
    /// Deleted: digest and bytes.
    pub removed: Vec<(String, u64)>,
    /// Still stored.
    pub stored: Vec<String>,
}

/// Deletes the files of `dir` named by a digest not in `keep`, that no hold of `holds` holds
/// and that were last used before `cutoff`: each is renamed into `dir/.incoming` under the
/// holds' lock (and `forget` told its digest), then all are deleted (a crash in between
/// leaves them there, and `.incoming` is emptied when its store opens).
pub(super) fn collect_dir(
    dir: &Path,
    keep: &std::collections::HashSet<String>,
    cutoff: std::time::SystemTime,
    holds: &Holds,
    forget: impl Fn(&str),
) -> std::io::Result<Collected> {
    let mut collected = Collected::default();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(sha256) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if check_sha256(&sha256).is_err() {
            continue;
        }
        let size = entry.metadata()?.len();
        let removed = !keep.contains(&sha256)
            && holds.remove_unused(&entry.path(), None, cutoff, |path| {
                forget(&sha256);
                std::fs::rename(path, dir.join(INCOMING).join(format!("gc-{sha256}")))
            })?;
        if removed {
            collected.removed.push((sha256, size));
        } else {
            collected.stored.push(sha256);
        }
    }
    remove_collected(&dir.join(INCOMING))?;
    Ok(collected)
}

/// Deletes what a collection renamed into `incoming` (`gc-*`): after the crash point
/// `store::collected` (renamed, not yet deleted).
pub(super) fn remove_collected(incoming: &Path) -> std::io::Result<()> {
    let mut collected = Vec::new();
    for entry in std::fs::read_dir(incoming)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with("gc-") {
            collected.push(entry);
        }
    }
    if !collected.is_empty() {
        fail::fail_point!("store::collected");
    }
    for entry in collected {
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

fn describe_file(sha256: &str, size: u64) -> ArtifactInfo {
    ArtifactInfo {
        sha256: sha256.into(),
        size,
        kind: "file".into(),
        details: String::new(),
        unpacked_size: 0,
    }
}

fn describe(sha256: &str, size: u64, artifact: &Artifact) -> ArtifactInfo {
    ArtifactInfo {
        sha256: sha256.into(),
        size,
        kind: artifact.kind().into(),
        details: artifact.details(),
        unpacked_size: match artifact {
            Artifact::Image(image) => image.unpacked_bytes,
            Artifact::Binary(_) => 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ArtifactStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path(), 1 << 30, 1 << 30).unwrap();
        (dir, store)
    }

    fn chunks(bytes: Vec<u8>) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        futures_util::stream::iter(
            bytes
                .chunks(4096)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        )
    }

    impl ArtifactStore {
        /// `ingest` with no limit but the store's.
        async fn ingest_all<S, E>(&self, sha: &str, body: S) -> Result<ArtifactInfo, StoreError>
        where
            S: Stream<Item = Result<Bytes, E>> + Unpin,
            E: std::fmt::Display,
        {
            let verified = self.ingest(sha, body, u64::MAX).await?;
            self.keep(verified)
        }

        /// A complete upload verified and kept.
        async fn store(
            &self,
            upload: Upload,
            announced: Option<&str>,
        ) -> Result<ArtifactInfo, StoreError> {
            let verified = self.verify(upload, announced).await?;
            self.keep(verified)
        }
    }

    fn incoming_is_empty(store: &ArtifactStore) -> bool {
        std::fs::read_dir(store.incoming_dir())
            .unwrap()
            .next()
            .is_none()
    }

    #[tokio::test]
    async fn stores_a_binary_under_its_hash() {
        let (_d, store) = store();
        let bin = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let sha = hex::encode(Sha256::digest(&bin));
        let info = store.ingest_all(&sha, chunks(bin.clone())).await.unwrap();
        assert_eq!(info.size, bin.len() as u64);
        assert_eq!(std::fs::read(store.path(&sha).unwrap()).unwrap(), bin);
        assert!(incoming_is_empty(&store));
    }

    #[tokio::test]
    async fn a_cut_off_upload_or_a_wrong_hash_leaves_nothing() {
        let (_d, store) = store();
        let bin = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let sha = hex::encode(Sha256::digest(&bin));
        let cut = futures_util::stream::iter(vec![
            Ok(Bytes::copy_from_slice(&bin[..1000])),
            Err("connection reset".to_string()),
        ]);
        assert!(matches!(
            store.ingest_all(&sha, cut).await,
            Err(StoreError::Interrupted(_))
        ));
        let wrong = "0".repeat(64);
        assert!(matches!(
            store.ingest_all(&wrong, chunks(bin)).await,
            Err(StoreError::HashMismatch { .. })
        ));
        assert!(!store.path(&sha).unwrap().exists());
        assert!(!store.path(&wrong).unwrap().exists());
        assert!(incoming_is_empty(&store));
    }

    #[tokio::test]
    async fn an_image_archive_is_stored_and_a_tampered_one_is_not() {
        let (_d, store) = store();
        let image = nx_artifact::image::tests::docker_archive(
            b"app",
            crate::artifact::image::host_architecture(),
        );
        let sha = hex::encode(Sha256::digest(&image));
        let info = store.ingest_all(&sha, chunks(image.clone())).await.unwrap();
        assert_eq!(info.kind, "image");
        let mut tampered = image;
        let at = tampered.windows(3).position(|w| w == b"app").unwrap();
        tampered[at] = b'A';
        let sha = hex::encode(Sha256::digest(&tampered));
        assert!(matches!(
            store.ingest_all(&sha, chunks(tampered)).await,
            Err(StoreError::Image(_))
        ));
        assert!(!store.path(&sha).unwrap().exists());
        assert!(incoming_is_empty(&store));
    }

    #[tokio::test]
    async fn an_upload_written_out_of_order_is_hashed_from_its_file() {
        let (_d, store) = store();
        let bin = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let sha = hex::encode(Sha256::digest(&bin));
        // As an SFTP client may write: the second half first.
        let mut upload = store.begin_upload(u64::MAX).unwrap();
        let half = bin.len() / 2;
        upload.write_at(half as u64, &bin[half..]).unwrap();
        upload.write_at(0, &bin[..half]).unwrap();
        let info = store.store(upload, Some(&sha)).await.unwrap();
        assert_eq!(
            (info.sha256.as_str(), info.size),
            (sha.as_str(), bin.len() as u64)
        );
        // In order, with a wrong digest announced: refused, from the hash taken on the way.
        let mut upload = store.begin_upload(u64::MAX).unwrap();
        upload.write_at(0, &bin[..half]).unwrap();
        upload.write_at(half as u64, &bin[half..]).unwrap();
        let e = store
            .store(upload, Some(&"1".repeat(64)))
            .await
            .unwrap_err();
        assert!(e.to_string().contains(&sha), "{e}");
        assert!(incoming_is_empty(&store));
    }

    #[tokio::test]
    async fn info_answers_from_what_verification_learned() {
        let (_d, store) = store();
        let bin = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let sha = hex::encode(Sha256::digest(&bin));
        let stored = store.ingest_all(&sha, chunks(bin)).await.unwrap();
        // Were the file read again, this would no longer verify as a program.
        let path = store.path(&sha).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&path, b"not a program").unwrap();
        let info = store.info(&sha).await.unwrap();
        assert_eq!(
            (info.size, info.kind, info.details),
            (stored.size, stored.kind, stored.details)
        );
        // A store opened afresh (nxd restarted) verifies it once.
        let again = ArtifactStore::open(&store.dir, 1 << 30, 1 << 30).unwrap();
        assert!(matches!(again.info(&sha).await, Err(StoreError::Verify(_))));
    }

    #[tokio::test]
    async fn a_text_file_is_refused_and_not_stored() {
        let (_d, store) = store();
        let text = b"hello\n".to_vec();
        let sha = hex::encode(Sha256::digest(&text));
        let e = store.ingest_all(&sha, chunks(text)).await.unwrap_err();
        assert!(e.to_string().contains("not an ELF"), "{e}");
        assert!(!store.path(&sha).unwrap().exists());
        assert!(incoming_is_empty(&store));
    }
}
