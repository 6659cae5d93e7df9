//! `nx push ./dir`, `nx push app.tar.gz` and `nx run-task ./dir`: a bundle is read (a tar is unpacked into a
//! temporary directory first, refusing what may not be in a bundle), checked and its entry
//! verified with its library closure (and its other programs' loaders), here; then nxd is asked which files it lacks, only those
//! are uploaded (one progress bar over their bytes), and nxd makes the bundle.

use crate::client::Client;
use anyhow::Context;
use nx_api::BlobDigests;
use nx_artifact::bundle::{self, BundleChoices, BundleLimits};
use nx_artifact::closure::Search;
use nx_artifact::verify;
use std::path::Path;

/// What a bundle push sent.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Sent {
    /// Files uploaded, of `of_files`.
    pub files: u64,
    pub of_files: u64,
    /// Bytes uploaded, of `of_bytes`.
    pub bytes: u64,
    pub of_bytes: u64,
}

/// The CLI checks shapes only; nxd holds bundles to its own `[bundles]` limits.
const NO_LIMITS: BundleLimits = BundleLimits {
    max_mb: u64::MAX >> 20,
    max_files: u64::MAX,
};

/// A bundle read and checked here ([`read`]).
pub struct Checked {
    /// The unpacked archive's directory, removed when dropped (none for a directory).
    _unpacked: Option<tempfile::TempDir>,
    pub scanned: bundle::ScannedBundle,
    /// What its entry is (`nx verify-binary`).
    pub entry: verify::ElfInfo,
}

/// Reads the bundle at `path` (a directory, or a tar unpacked into a temporary directory),
/// and checks it as nxd would: its shape, its entry's head and library closure (as the
/// sandbox sees it: the bundle at `/app`, the host's library directories), its other
/// programs' loaders. Errors: what is wrong, naming the file.
pub fn read(path: &Path, choices: &BundleChoices) -> anyhow::Result<Checked> {
    let mut unpacked = None;
    let root = if path.is_dir() {
        path
    } else {
        let dir = unpacked
            .insert(tempfile::tempdir().context("a temporary directory to unpack the archive")?);
        bundle::unpack_tar(path, dir.path())
            .with_context(|| format!("{} is not a bundle NX takes", path.display()))?;
        dir.path()
    };
    let scanned = bundle::scan_dir(root, choices, &NO_LIMITS)?;
    let manifest = &scanned.manifest;
    let entry = &scanned.local[&manifest.entry];
    let bytes = std::fs::read(entry).with_context(|| format!("reading {}", entry.display()))?;
    manifest.check_entry_head(&bytes)?;
    let entry = verify::verify_with(&bytes, || Search::host().with_bundle(root, manifest))
        .with_context(|| format!("the bundle's entry {}", manifest.entry))?;
    manifest.check_programs(|p| scanned.local[p].clone())?;
    Ok(Checked {
        _unpacked: unpacked,
        scanned,
        entry,
    })
}

/// Makes sure nxd has the bundle at `path` ([`read`] first); returns its id and what was
/// sent.
pub async fn store(
    client: &Client,
    path: &Path,
    choices: &BundleChoices,
    quiet: bool,
) -> anyhow::Result<(String, Sent)> {
    let checked = read(path, choices)?;
    let scanned = &checked.scanned;
    let manifest = &scanned.manifest;
    let digests = BlobDigests {
        sha256: manifest.files.iter().map(|f| f.sha256.clone()).collect(),
    };
    let missing = client.missing_blobs(&digests).await?.sha256;
    let mut sent = Sent {
        of_files: manifest.files.len() as u64,
        of_bytes: manifest.total_bytes(),
        ..Sent::default()
    };
    let to_send: Vec<&bundle::BundleFile> = {
        let mut seen = std::collections::BTreeSet::new();
        manifest
            .files
            .iter()
            .filter(|f| missing.contains(&f.sha256) && seen.insert(f.sha256.clone()))
            .collect()
    };
    let bar = crate::output::progress_bar(to_send.iter().map(|f| f.size).sum(), quiet);
    for file in to_send {
        let body = crate::client::counted_body(&scanned.local[&file.path], &bar).await?;
        client.upload_blob(&file.sha256, body, file.size).await?;
        sent.files += 1;
        sent.bytes += file.size;
    }
    bar.finish_and_clear();
    let info = client.create_bundle(manifest).await?;
    Ok((info.id, sent))
}
