//! What a deployment's monitor wrote for views, its last exit ([`super::exit`]) and its
//! `/data` usage ([`super::data_disk`]), read once per change of its unit: `nx ls` of a host
//! with a thousand deployments would otherwise open two files of each per request.
//!
//! The monitor writes the last exit before it ends, so before its unit's state changes; it
//! writes the usage only while it runs, every few seconds (when it changed). So what was read
//! for a unit that has no processes stays true until systemd reports the unit's next change
//! (its [`UnitVersion`]); what was read for a unit with processes is true but for the usage,
//! and is served for at most [`RUNNING_MAX_AGE`] (with 200 deployments running, reading their
//! files was a fifth of nxd's work for each `nx ls`).

use crate::api::{DiskUsage, LastExit, UnitState};
use crate::supervisor::unit_states::UnitVersion;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Deployments whose files are kept at most; beyond, all are read again.
const MAX_KEPT: usize = 16_384;
/// How long the files read for a unit with processes are served: its monitor may write a new
/// `/data` usage at any time (every 2 s at most, `monitor::WATCH_EVERY`), as systemd serves
/// its memory and task counts for a second (`unit_states::COUNTERS_MAX_AGE`).
pub const RUNNING_MAX_AGE: Duration = Duration::from_secs(1);

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
}

/// The files read for deployments, by directory and the unit's version (`V`: a
/// [`UnitVersion`], or anything that changes whenever the unit does).
pub struct MonitorFilesCache<V = UnitVersion> {
    kept: Mutex<HashMap<PathBuf, Kept<V>>>,
}

/// One deployment's files as read, and when, for a unit at `version`.
struct Kept<V> {
    version: V,
    files: MonitorFiles,
    read_at: Instant,
    /// Whether the unit had processes then (its monitor may write the usage again).
    running: bool,
}

impl<V> Default for MonitorFilesCache<V> {
    fn default() -> Self {
        Self {
            kept: Mutex::new(HashMap::new()),
        }
    }
}

impl<V: PartialEq + Copy> MonitorFilesCache<V> {
    /// The files in `dir`, from memory when its unit (in `state`, at `version`, taken before
    /// `state` was) has not changed since they were read and, if it has processes, they were
    /// read less than [`RUNNING_MAX_AGE`] ago; read from disk otherwise (always with no
    /// version: no signals arrive).
    pub fn get(&self, dir: &Path, state: &UnitState, version: Option<V>) -> MonitorFiles {
        if let Some(version) = version {
            let kept = self.kept.lock().expect("monitor files lock");
            let fresh = |k: &&Kept<V>| {
                k.version == version && (!k.running || k.read_at.elapsed() < RUNNING_MAX_AGE)
            };
            if let Some(k) = kept.get(dir).filter(fresh) {
                return k.files.clone();
            }
        }
        let read_at = Instant::now();
        let files = MonitorFiles::read(dir);
        let mut kept = self.kept.lock().expect("monitor files lock");
        match version {
            Some(version) => {
                if kept.len() >= MAX_KEPT {
                    kept.clear();
                }
                let k = Kept {
                    version,
                    files: files.clone(),
                    read_at,
                    running: !state.active.is_down(),
                };
                kept.insert(dir.to_owned(), k);
            }
            None => {
                kept.remove(dir);
            }
        }
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::systemd::ActiveState;
    use crate::supervisor::unit_states::unloaded;

    fn write_exit(dir: &Path, code: i32) {
        let exit = serde_json::json!({
            "at": "2026-11-30T09:00:00Z",
            "result": "exit-code",
            "exit_code": code,
            "message": format!("exited with {code}"),
        });
        std::fs::write(
            dir.join(super::super::exit::LAST_EXIT_FILE),
            exit.to_string(),
        )
        .unwrap();
    }

    fn code(files: &MonitorFiles) -> Option<i32> {
        files.last_exit.as_ref().and_then(|e| e.exit_code)
    }

    #[test]
    fn a_stopped_units_files_are_read_again_only_after_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = MonitorFilesCache::<u32>::default();
        let stopped = unloaded();
        assert_eq!(
            cache.get(dir.path(), &stopped, Some(1)),
            MonitorFiles::default()
        );
        write_exit(dir.path(), 3);
        // Written while the unit did not change: not a state the unit can be in, so the
        // cached reading proves no file was opened.
        assert_eq!(code(&cache.get(dir.path(), &stopped, Some(1))), None);
        assert_eq!(code(&cache.get(dir.path(), &stopped, Some(2))), Some(3));
        write_exit(dir.path(), 4);
        assert_eq!(code(&cache.get(dir.path(), &stopped, Some(2))), Some(3));
        assert_eq!(
            code(&cache.get(dir.path(), &stopped, None)),
            Some(4),
            "no signals"
        );
        write_exit(dir.path(), 5);
        assert_eq!(
            code(&cache.get(dir.path(), &stopped, Some(2))),
            Some(5),
            "forgotten"
        );
    }

    #[test]
    fn a_running_units_files_are_served_for_a_second_at_most() {
        let dir = tempfile::tempdir().unwrap();
        let cache = MonitorFilesCache::<u32>::default();
        let running = UnitState {
            active: ActiveState::Active,
            ..unloaded()
        };
        write_exit(dir.path(), 1);
        assert_eq!(code(&cache.get(dir.path(), &running, Some(1))), Some(1));
        write_exit(dir.path(), 2);
        // As with a stopped unit, a file written while the unit did not change proves that
        // none was opened.
        assert_eq!(code(&cache.get(dir.path(), &running, Some(1))), Some(1));
        assert_eq!(code(&cache.get(dir.path(), &running, Some(2))), Some(2));
        write_exit(dir.path(), 3);
        for k in cache.kept.lock().unwrap().values_mut() {
            k.read_at -= RUNNING_MAX_AGE;
        }
        assert_eq!(
            code(&cache.get(dir.path(), &running, Some(2))),
            Some(3),
            "read again once a second old"
        );
        assert_eq!(
            code(&cache.get(dir.path(), &running, None)),
            Some(3),
            "no signals"
        );
    }
}
