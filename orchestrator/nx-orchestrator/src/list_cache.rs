//! `nx ls` (`GET /v1/sandboxes`: every sandbox with its deployments) kept serialized between
//! requests, so that a repeated `nx ls` with nothing changed costs a comparison of counts and a
//! copy of a reference to the bytes (issue 20: about 1 KB per deployment, ~1 MB with a thousand).
//!
//! The list is made of the state database's rows, units' states and the monitors' files; each
//! source counts the changes it sees, and the kept list is served only while every count is
//! the one taken before the list was read:
//! - the state database: every write of the tables the list shows ends by counting itself
//!   ([`crate::state::StateStore::views_changes`]), after its commit;
//! - units' states: systemd's `PropertiesChanged`, `UnitNew`/`UnitRemoved` and `Reloading`
//!   signals, and a connection begun or lost ([`crate::supervisor::Supervisor::states_changes`];
//!   without a watcher of the signals nothing is kept);
//! - the monitors' files (last exit, `/data` usage): inotify's events, a read without a watch
//!   counting as a change ([`crate::backend::monitor_files::MonitorFilesCache::changes`]);
//! - the CPUs nxd may use (each deployment's pinned CPUs come from them), compared as they are.
//!
//! A count is taken before the list's reads begin and a change is counted after it happened,
//! so a list that may miss a change is kept under a count that is already old: the next request
//! reads again. Running units' memory and task counters change without a signal: a list showing
//! a unit with processes is served for [`crate::supervisor::unit_states::COUNTERS_MAX_AGE`] at
//! most. The list route is for tokens of every sandbox only (`nxd`'s `scopes`): a token scoped
//! to a sandbox is refused before the list is looked at, kept or not.

use bytes::Bytes;
use std::sync::Mutex;
use std::time::Instant;

/// The counts of the list's sources when it was read (see the module's docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// Writes of the state database's view tables ended.
    pub state: u64,
    /// Changes of units' states systemd signalled; `None`: no watcher of the signals (states
    /// are asked of systemd for every view: nothing is kept).
    pub units: Option<u64>,
    /// Changes of the monitors' files inotify reported.
    pub files: u64,
    /// The CPUs nxd may use (`backend::cpu_affinity::available`).
    pub cpus: Vec<u32>,
}

/// The list as last serialized.
struct Kept {
    sources: Sources,
    body: Bytes,
    /// When a list that shows a running unit's counters is too old to serve.
    until: Option<Instant>,
}

/// The serialized list, kept while its sources have not changed.
#[derive(Default)]
pub struct ListCache {
    kept: Mutex<Option<Kept>>,
}

impl ListCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Kept>> {
        self.kept.lock().expect("list cache lock")
    }

    /// The kept list if it was read under the same counts `now` and is not too old.
    pub fn get(&self, now: &Sources) -> Option<Bytes> {
        let kept = self.lock();
        let kept = kept.as_ref()?;
        let fresh = now.units.is_some()
            && kept.sources == *now
            && kept.until.is_none_or(|until| Instant::now() < until);
        fresh.then(|| kept.body.clone())
    }

    /// A buffer for the next list: the last one's size and a sixteenth more (it may have grown
    /// by a deployment or two), so that a list of a megabyte is not grown by doubling.
    pub fn buffer(&self) -> Vec<u8> {
        let last = self.lock().as_ref().map_or(0, |k| k.body.len());
        Vec::with_capacity(last + last / 16)
    }

    /// Keeps `body`, read under the counts `sources`, until they change or `until`.
    pub fn put(&self, sources: Sources, body: Bytes, until: Option<Instant>) {
        *self.lock() = Some(Kept {
            sources,
            body,
            until,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sources(state: u64, units: Option<u64>) -> Sources {
        Sources {
            state,
            units,
            files: 7,
            cpus: vec![0, 1],
        }
    }

    #[test]
    fn served_only_under_the_same_counts_with_signals_and_while_young() {
        let cache = ListCache::default();
        assert_eq!(cache.get(&sources(1, Some(1))), None, "nothing kept yet");
        cache.put(sources(1, Some(1)), Bytes::from_static(b"[1]"), None);
        assert_eq!(cache.buffer().capacity(), 3);
        assert_eq!(
            cache.get(&sources(1, Some(1))).as_deref(),
            Some(&b"[1]"[..])
        );
        assert_eq!(cache.get(&sources(2, Some(1))), None, "a write");
        assert_eq!(cache.get(&sources(1, Some(2))), None, "a unit's change");
        let mut cpus = sources(1, Some(1));
        cpus.cpus = vec![0];
        assert_eq!(cache.get(&cpus), None, "other CPUs");
        let mut files = sources(1, Some(1));
        files.files = 8;
        assert_eq!(cache.get(&files), None, "a monitor's file");
        // Without systemd's signals nothing is served, even under equal counts.
        cache.put(sources(1, None), Bytes::from_static(b"[2]"), None);
        assert_eq!(cache.get(&sources(1, None)), None);
        // A list with running units' counters grows old.
        let soon = Instant::now() + Duration::from_millis(50);
        cache.put(sources(3, Some(3)), Bytes::from_static(b"[3]"), Some(soon));
        assert!(cache.get(&sources(3, Some(3))).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.get(&sources(3, Some(3))), None, "too old");
    }
}
