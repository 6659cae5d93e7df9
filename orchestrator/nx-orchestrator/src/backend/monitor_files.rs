//! What a deployment's monitor wrote for views, its last exit ([`super::exit`]) and its
//! `/data` usage ([`super::data_disk`]), read once per write: `nx ls` of a host with a
//! thousand deployments would otherwise open two files of each per request.
//!
//! The monitor replaces each file by renaming a new one over it (`monitor::write_atomically`):
//! the last exit as the program ends (the unit may restart at once, so the unit's state says
//! nothing of it), the usage every few seconds while it runs. nxd watches each deployment's
//! directory with inotify(7) before it reads the files there, and each view first takes the
//! events queued since the last one: a file renamed, created, closed after writing or deleted
//! in a directory is read again. The kernel queues the event before the writer's rename(2)
//! returns, so a view that begins after a write sees it. Without inotify (no instance, no
//! watch left: `fs.inotify.max_user_watches`), or when the kernel's queue overflowed, the
//! files are read again.

use crate::api::{DiskUsage, LastExit};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Directories watched at most; beyond, the others' files are read at each view.
const MAX_WATCHED: usize = 16_384;

/// What is watched in a deployment's directory: the changes of its entries a writer makes
/// (not `IN_MODIFY`: the program's log beside them is written all the time; a file written in
/// place is seen when it is closed), and the directory itself going away.
const WATCHED_CHANGES: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_CLOSE_WRITE)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_ONLYDIR);

/// The files of one deployment, as views show them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MonitorFiles {
    /// `last-exit.json`: how the program last ended (none if it never did).
    pub last_exit: Option<LastExit>,
    /// `disk-usage.json`: `/data`'s usage as the monitor last measured it.
    pub disk: Option<DiskUsage>,
}

impl MonitorFiles {
    /// Reads them from a deployment's directory (a missing or unreadable file reads as none).
    pub fn read(dir: &Path) -> Self {
        Self {
            last_exit: super::exit::read_last_exit(dir),
            disk: super::data_disk::read_usage(dir),
        }
    }

    /// Whether a change of the entry `name` of a deployment's directory may change them.
    fn named(name: &OsStr) -> bool {
        name == super::exit::LAST_EXIT_FILE || name == super::data_disk::USAGE_FILE
    }
}

/// The files read for deployments, kept until inotify reports a change in their directory.
pub struct MonitorFilesCache {
    kept: Mutex<Kept>,
}

/// The watches and what was read under them.
struct Kept {
    /// `None`: inotify could not be set up (every view reads the files).
    inotify: Option<Inotify>,
    /// Watched directories, with their files if they were read since their last change.
    dirs: HashMap<PathBuf, Option<MonitorFiles>>,
    by_watch: HashMap<WatchDescriptor, PathBuf>,
    /// Counts what may have changed files served before: events that forget files, and reads
    /// of a directory that is not watched (see [`MonitorFilesCache::changes`]).
    changes: u64,
}

impl Default for MonitorFilesCache {
    fn default() -> Self {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| tracing::warn!("no inotify ({e}): views read monitor files each time"))
            .ok();
        Self {
            kept: Mutex::new(Kept {
                inotify,
                dirs: HashMap::new(),
                by_watch: HashMap::new(),
                changes: 0,
            }),
        }
    }
}

impl MonitorFilesCache {
    /// The files in each of `dirs`, in their order: from memory where nothing changed in the
    /// directory since they were read (the events queued until now are taken first), read
    /// from disk otherwise.
    pub fn get_many<'a>(&self, dirs: impl IntoIterator<Item = &'a Path>) -> Vec<MonitorFiles> {
        let mut kept = self.kept.lock().expect("monitor files lock");
        kept.take_events();
        dirs.into_iter().map(|dir| kept.get(dir)).collect()
    }

    /// How many times files served so far may have changed, the events queued until now
    /// taken first: a view made of files served after a count was taken is still true while
    /// the count is the same. A directory read without a watch counts as a change each time
    /// (nothing would say when its files change).
    pub fn changes(&self) -> u64 {
        let mut kept = self.kept.lock().expect("monitor files lock");
        kept.take_events();
        kept.changes
    }
}

impl Kept {
    /// Forgets what the queued events say changed; stops watching directories gone.
    fn take_events(&mut self) {
        loop {
            let events = match self.inotify.as_ref().map(Inotify::read_events) {
                None | Some(Err(nix::errno::Errno::EAGAIN)) => return,
                Some(Ok(events)) => events,
                Some(Err(e)) => {
                    tracing::warn!("reading inotify events: {e}; reading monitor files again");
                    self.forget_all();
                    return;
                }
            };
            for event in events {
                self.apply(event);
            }
        }
    }

    fn apply(&mut self, event: InotifyEvent) {
        if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            self.forget_all();
            return;
        }
        let gone =
            AddWatchFlags::IN_IGNORED | AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF;
        if event.mask.intersects(gone) {
            self.changes += 1;
            if let Some(dir) = self.by_watch.remove(&event.wd) {
                self.dirs.remove(&dir);
            }
            if !event.mask.contains(AddWatchFlags::IN_IGNORED) {
                if let Some(inotify) = &self.inotify {
                    let _ = inotify.rm_watch(event.wd);
                }
            }
            return;
        }
        if event.name.as_deref().is_some_and(MonitorFiles::named) {
            self.changes += 1;
            if let Some(dir) = self.by_watch.get(&event.wd) {
                if let Some(files) = self.dirs.get_mut(dir) {
                    *files = None;
                }
            }
        }
    }

    fn forget_all(&mut self) {
        self.changes += 1;
        for files in self.dirs.values_mut() {
            *files = None;
        }
    }

    /// The files of `dir`, kept if it is watched (watched first, then read).
    fn get(&mut self, dir: &Path) -> MonitorFiles {
        if let Some(Some(files)) = self.dirs.get(dir) {
            return files.clone();
        }
        let watched = self.dirs.contains_key(dir) || self.watch(dir);
        let files = MonitorFiles::read(dir);
        if watched {
            self.dirs.insert(dir.to_owned(), Some(files.clone()));
        } else {
            self.changes += 1;
        }
        files
    }

    /// Starts watching `dir`; false if it cannot be (no inotify, no such directory, no
    /// watches left).
    fn watch(&mut self, dir: &Path) -> bool {
        let Some(inotify) = &self.inotify else {
            return false;
        };
        if self.dirs.len() >= MAX_WATCHED {
            return false;
        }
        let Ok(watch) = inotify.add_watch(dir, WATCHED_CHANGES) else {
            return false;
        };
        self.by_watch.insert(watch, dir.to_owned());
        self.dirs.insert(dir.to_owned(), None);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn exit_json(code: i32) -> String {
        serde_json::json!({
            "at": "2026-11-30T09:00:00Z",
            "result": "exit-code",
            "exit_code": code,
            "message": format!("exited with {code}"),
        })
        .to_string()
    }

    /// Replaces the file as the monitor does: a new file renamed over it.
    fn write_exit(dir: &Path, code: i32) {
        let partial = dir.join("last-exit.partial");
        std::fs::write(&partial, exit_json(code)).unwrap();
        std::fs::rename(partial, dir.join(super::super::exit::LAST_EXIT_FILE)).unwrap();
    }

    fn code(cache: &MonitorFilesCache, dir: &Path) -> Option<i32> {
        let files = cache.get_many([dir]).pop().unwrap();
        files.last_exit.and_then(|e| e.exit_code)
    }

    #[test]
    fn each_write_of_the_monitor_is_seen_by_the_next_view_and_files_are_read_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let cache = MonitorFilesCache::default();
        assert_eq!(code(&cache, dir.path()), None);
        // The program ends and the unit restarts at once, again and again: every view after
        // a write names that end (the 1 s cache of 0f70508 named the one before).
        for n in 1..=50 {
            write_exit(dir.path(), n);
            assert_eq!(code(&cache, dir.path()), Some(n));
        }
        // A file written in place but not closed yet is no change inotify reports: the view
        // that still names the old end proves the file was not opened again.
        let mut open = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(dir.path().join(super::super::exit::LAST_EXIT_FILE))
            .unwrap();
        open.write_all(exit_json(99).as_bytes()).unwrap();
        assert_eq!(code(&cache, dir.path()), Some(50), "read again unchanged");
        drop(open);
        assert_eq!(code(&cache, dir.path()), Some(99), "closed after writing");
        // The usage beside it, and a file deleted.
        let usage = serde_json::json!({
            "used_bytes": 7,
            "size_bytes": 100,
            "at": "2026-11-30T09:00:00Z",
        });
        std::fs::write(
            dir.path().join(super::super::data_disk::USAGE_FILE),
            usage.to_string(),
        )
        .unwrap();
        let files = cache.get_many([dir.path()]).pop().unwrap();
        assert_eq!(files.disk.map(|d| d.used_bytes), Some(7));
        std::fs::remove_file(dir.path().join(super::super::exit::LAST_EXIT_FILE)).unwrap();
        assert_eq!(code(&cache, dir.path()), None, "deleted");
    }

    #[test]
    fn changes_count_the_monitors_writes_and_reads_without_a_watch() {
        let dir = tempfile::tempdir().unwrap();
        let cache = MonitorFilesCache::default();
        assert_eq!(code(&cache, dir.path()), None);
        let before = cache.changes();
        std::fs::write(dir.path().join("program.log"), "a line").unwrap();
        assert_eq!(cache.changes(), before, "the program's log beside them");
        write_exit(dir.path(), 1);
        let written = cache.changes();
        assert!(written > before, "the last exit");
        let nosuch = dir.path().join("nosuch");
        cache.get_many([nosuch.as_path()]);
        assert!(cache.changes() > written, "a read without a watch");
    }

    #[test]
    fn a_removed_directory_is_no_longer_watched() {
        let cache = MonitorFilesCache::default();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        write_exit(&path, 1);
        assert_eq!(code(&cache, &path), Some(1));
        assert_eq!(cache.kept.lock().unwrap().by_watch.len(), 1);
        drop(dir);
        assert_eq!(code(&cache, &path), None);
        let kept = cache.kept.lock().unwrap();
        assert!(kept.by_watch.is_empty() && kept.dirs.is_empty());
    }
}
