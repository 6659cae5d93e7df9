//! The sha256 of local files nx checked and hashed before, kept by what stat(2) says of them,
//! so that pushing an unchanged file again (another sandbox, new `--env`, a redeploy) neither
//! reads nor hashes it: hashing the 2.7 MB sample took 1.5 ms of a 12 ms push (SHA-NI, the
//! hardware's speed), its check and mapping 0.4 ms more.
//!
//! One entry per file, under `$XDG_CACHE_HOME/nx/digests/` (else `~/.cache/nx/digests/`), named
//! by the sha256 of the file's absolute path, holding one line: device, inode, size, mtime and
//! ctime (seconds and nanoseconds each), then the sha256. An entry counts only when all of them
//! match the file's now: writing a file changes its ctime, which no user can set (utimensat(2)
//! sets mtime alone), so a file changed in place, renamed over or restored to an old mtime is
//! hashed again. A file changed less than [`SETTLED`] before it was hashed is not remembered:
//! timestamps move in clock ticks, so a write in the same tick as the hash could leave them as
//! they were (git's "racily clean" entries, the same rule). The cache is best-effort: an entry
//! that cannot be read or written is as none.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How long a file must have been left alone before its digest is remembered.
pub const SETTLED: Duration = Duration::from_secs(2);

/// What identifies one state of a file: `dev ino size mtime_s mtime_ns ctime_s ctime_ns`.
fn identity(meta: &std::fs::Metadata) -> String {
    format!(
        "{} {} {} {} {} {} {}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    )
}

/// The entry's path for `file` (made absolute against the working directory), or None without
/// a cache directory (neither XDG_CACHE_HOME nor HOME set).
fn entry_path(file: &Path) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let absolute = std::path::absolute(file).ok()?;
    let name = nx_artifact::sha256_hex(absolute.as_os_str().as_encoded_bytes());
    Some(base.join("nx").join("digests").join(name))
}

/// The sha256 of local `file` once `check` passed on its bytes and metadata (mapped by
/// [`nx_artifact::verify::map_local`], which refuses first what is no regular file or is too
/// large), or the digest remembered from an earlier check of it in the same state, for which
/// the file is neither read nor checked again. Errors: the mapping's and `check`'s.
pub fn checked_sha256(
    file: &Path,
    check: impl FnOnce(&[u8], &std::fs::Metadata) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let known = std::fs::metadata(file)
        .ok()
        .filter(std::fs::Metadata::is_file)
        .and_then(|meta| recall(file, &meta));
    if let Some(sha) = known {
        return Ok(sha);
    }
    let (bytes, meta) = nx_artifact::verify::map_local(file)?;
    check(&bytes, &meta)?;
    let sha = nx_artifact::sha256_hex(&bytes);
    remember(file, &meta, &sha);
    Ok(sha)
}

/// The sha256 remembered for `file` in the state `meta` (stat(2) of it now), if any.
pub fn recall(file: &Path, meta: &std::fs::Metadata) -> Option<String> {
    let text = std::fs::read_to_string(entry_path(file)?).ok()?;
    let (state, sha) = text.trim_end().rsplit_once(' ')?;
    (state == identity(meta) && sha.len() == 64).then(|| sha.to_owned())
}

/// Remembers `sha`, the digest of `file` in the state `meta` (taken before it was read), when
/// the file had settled ([`SETTLED`]); errors are ignored (the next push hashes it again).
pub fn remember(file: &Path, meta: &std::fs::Metadata, sha: &str) {
    let now = SystemTime::now();
    let settled = |t: std::io::Result<SystemTime>| {
        t.ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age >= SETTLED)
    };
    let changed = SystemTime::UNIX_EPOCH
        .checked_add(Duration::new(
            u64::try_from(meta.ctime()).unwrap_or(u64::MAX),
            u32::try_from(meta.ctime_nsec()).unwrap_or(0),
        ))
        .ok_or_else(|| std::io::Error::other("ctime out of range"));
    if !settled(meta.modified()) || !settled(changed) {
        return;
    }
    let Some(path) = entry_path(file) else { return };
    let Some(dir) = path.parent() else { return };
    // Written whole, then renamed into place: a reader sees the old entry or the new one.
    let written = std::fs::create_dir_all(dir).and_then(|()| {
        let mut temp = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(&mut temp, format!("{} {sha}\n", identity(meta)).as_bytes())?;
        temp.persist(&path).map_err(|e| e.error)
    });
    if let Err(e) = written {
        note_unkept(&path, &e);
    }
}

/// A cache nx cannot write costs only the next push's hash: worth a line with NX_DEBUG set.
fn note_unkept(path: &Path, error: &std::io::Error) {
    if std::env::var_os("NX_DEBUG").is_some() {
        eprintln!("nx: cannot keep a digest in {}: {error}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points the cache at a directory of the test's own (tests in this module run one at a
    /// time: they share the process's environment).
    fn with_cache<T>(f: impl FnOnce(&Path) -> T) -> T {
        static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: the tests of this module hold ONE; nothing else here reads the environment.
        unsafe { std::env::set_var("XDG_CACHE_HOME", dir.path().join("cache")) };
        f(dir.path())
    }

    /// Sets a file's mtime `secs` seconds into the past (utimensat(2), as `touch -d`).
    fn age(file: &Path, secs: u64) {
        let past = SystemTime::now() - Duration::from_secs(secs);
        std::fs::File::options()
            .write(true)
            .open(file)
            .unwrap()
            .set_modified(past)
            .unwrap();
    }

    #[test]
    fn a_settled_file_is_recalled_until_it_changes_even_back_to_its_old_mtime() {
        with_cache(|dir| {
            let file = dir.join("app");
            std::fs::write(&file, b"one").unwrap();
            age(&file, 10);
            let meta = std::fs::metadata(&file).unwrap();
            // Its ctime is now (set by the utimensat above): not settled yet.
            remember(&file, &meta, &"a".repeat(64));
            assert_eq!(recall(&file, &meta), None);
            std::thread::sleep(SETTLED);
            remember(&file, &meta, &"a".repeat(64));
            assert_eq!(recall(&file, &meta), Some("a".repeat(64)));
            // Rewritten with as many bytes and its old mtime put back: only ctime tells.
            let mtime = meta.modified().unwrap();
            std::fs::write(&file, b"two").unwrap();
            std::fs::File::options()
                .write(true)
                .open(&file)
                .unwrap()
                .set_modified(mtime)
                .unwrap();
            let now = std::fs::metadata(&file).unwrap();
            assert_eq!((now.len(), now.modified().unwrap()), (3, mtime));
            assert_eq!(recall(&file, &now), None);
        });
    }

    #[test]
    fn a_file_changed_just_before_it_was_hashed_is_not_remembered() {
        with_cache(|dir| {
            let file = dir.join("fresh");
            std::fs::write(&file, b"built a moment ago").unwrap();
            let meta = std::fs::metadata(&file).unwrap();
            remember(&file, &meta, &"b".repeat(64));
            assert_eq!(recall(&file, &meta), None);
        });
    }
}
