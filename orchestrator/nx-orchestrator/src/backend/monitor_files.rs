//! What a deployment's monitor wrote for views, its last exit ([`super::exit`]) and its
//! `/data` usage ([`super::data_disk`]), read once per change of its unit: `nx ls` of a host
//! with a thousand stopped deployments would otherwise open two thousand files per request.
//!
//! The monitor writes the last exit before it ends, so before its unit's state changes; it
//! writes the usage only while it runs. So what was read for a unit that has no processes
//! stays true until systemd reports the unit's next change (its [`UnitVersion`]).

use crate::api::{DiskUsage, LastExit, UnitState};
use crate::supervisor::unit_states::UnitVersion;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Deployments whose files are kept at most; beyond, all are read again.
const MAX_KEPT: usize = 16_384;

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

/// The files read for deployments whose units had no processes, by directory and the unit's
/// version (`V`: a [`UnitVersion`], or anything that changes whenever the unit does).
pub struct MonitorFilesCache<V = UnitVersion> {
    kept: Mutex<HashMap<PathBuf, (V, MonitorFiles)>>,
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
    /// `state` was) has not changed since they were read and has no processes; read from disk
    /// otherwise (always while the unit runs, or with no version: no signals arrive).
    pub fn get(&self, dir: &Path, state: &UnitState, version: Option<V>) -> MonitorFiles {
        let version = version.filter(|_| state.active.is_down());
        if let Some(version) = version {
            let kept = self.kept.lock().expect("monitor files lock");
            if let Some((_, files)) = kept.get(dir).filter(|(v, _)| *v == version) {
                return files.clone();
            }
        }
        let files = MonitorFiles::read(dir);
        let mut kept = self.kept.lock().expect("monitor files lock");
        match version {
            Some(version) => {
                if kept.len() >= MAX_KEPT {
                    kept.clear();
                }
                kept.insert(dir.to_owned(), (version, files.clone()));
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
    fn a_running_units_files_are_read_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let cache = MonitorFilesCache::<u32>::default();
        let running = UnitState {
            active: ActiveState::Active,
            ..unloaded()
        };
        write_exit(dir.path(), 1);
        assert_eq!(code(&cache.get(dir.path(), &running, Some(1))), Some(1));
        write_exit(dir.path(), 2);
        assert_eq!(code(&cache.get(dir.path(), &running, Some(1))), Some(2));
    }
}
