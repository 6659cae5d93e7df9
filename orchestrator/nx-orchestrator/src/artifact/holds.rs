//! Which stored files are in use now, and when each was last used: what keeps the store's
//! garbage collection (`artifact::gc`) from deleting a file a request still needs.
//!
//! A file's last use is its mtime. Every use touches it (sets it to now) while holding the
//! lock the collection takes to delete a file, so the two never interleave: the collection
//! deletes a file only when, under that lock, no [`Hold`] holds it and its mtime is older than
//! the cutoff it was given. A use that lasts (a push until its deployment is recorded, a task
//! until it ends, a bundle while its tree is laid out) holds the file, and touches it again when
//! it lets go: the deployment it recorded meanwhile is then in the database for the next
//! collection's look at what deployments run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The files held by uses in flight (each with its count of holds), shared by the stores.
#[derive(Debug, Default)]
pub struct Holds {
    held: Mutex<HashMap<PathBuf, usize>>,
}

impl Holds {
    /// Touches each of `paths` (one that does not exist is skipped) and holds them until the
    /// returned guard is dropped, which touches them again.
    pub fn hold(self: &Arc<Self>, paths: Vec<PathBuf>) -> Hold {
        let mut held = self.held.lock().expect("holds lock");
        for path in &paths {
            *held.entry(path.clone()).or_default() += 1;
            touch(path);
        }
        Hold {
            holds: Arc::clone(self),
            paths,
        }
    }

    /// Touches `paths` without holding them (a use that is over at once: an upload that
    /// matched a stored file, a check of which files are stored).
    pub fn touch(&self, paths: &[PathBuf]) {
        let _held = self.held.lock().expect("holds lock");
        for path in paths {
            touch(path);
        }
    }

    /// Runs `remove` on `path` if no hold holds it and it was last used before `cutoff` (the
    /// newest mtime of `path` and the `also` that exist: a bundle's manifest and its tree), all
    /// under the lock uses take; `Ok(true)` when it ran. `remove` should be quick (a rename
    /// out of the store, not a deletion of a large tree): every use waits for it.
    pub fn remove_unused(
        &self,
        path: &Path,
        also: Option<&Path>,
        cutoff: SystemTime,
        remove: impl FnOnce(&Path) -> std::io::Result<()>,
    ) -> std::io::Result<bool> {
        let held = self.held.lock().expect("holds lock");
        if held.contains_key(path) {
            return Ok(false);
        }
        let mut used = None;
        for candidate in std::iter::once(path).chain(also) {
            match std::fs::symlink_metadata(candidate) {
                Ok(meta) => used = used.max(Some(meta.modified()?)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if used.is_none_or(|used| used >= cutoff) {
            return Ok(false);
        }
        remove(path)?;
        Ok(true)
    }
}

/// Sets the mtime of `path` to now (as root: the stored files are read-only to everyone).
/// One that is gone is no use to touch; any other failure is logged, and the file then looks
/// as old as it is.
fn touch(path: &Path) {
    let touched = std::fs::File::open(path).and_then(|f| f.set_modified(SystemTime::now()));
    match touched {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), error = %e, "stored file not touched: the store's collection may take it for unused")
        }
        _ => {}
    }
}

/// Stored files held by a use in flight (see [`Holds::hold`]); let go, and touched, on drop.
#[derive(Debug)]
pub struct Hold {
    holds: Arc<Holds>,
    paths: Vec<PathBuf>,
}

impl Clone for Hold {
    /// Holds the same files once more (each hold lets go on its own).
    fn clone(&self) -> Self {
        self.holds.hold(self.paths.clone())
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut held = self.holds.held.lock().expect("holds lock");
        for path in &self.paths {
            touch(path);
            if let Some(count) = held.get_mut(path) {
                *count -= 1;
                if *count == 0 {
                    held.remove(path);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_held_or_recently_used_file_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::open(&file)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let holds = Arc::new(Holds::default());
        let cutoff = SystemTime::now() - Duration::from_secs(60);
        let remove = |p: &Path| std::fs::remove_file(p);
        let hold = holds.hold(vec![file.clone()]);
        assert!(!holds
            .remove_unused(&file, None, SystemTime::now(), remove)
            .unwrap());
        drop(hold);
        // Let go: touched, so recent.
        assert!(!holds.remove_unused(&file, None, cutoff, remove).unwrap());
        std::fs::File::open(&file)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(holds.remove_unused(&file, None, cutoff, remove).unwrap());
        assert!(!file.exists());
        assert!(holds.held.lock().unwrap().is_empty());
    }
}
