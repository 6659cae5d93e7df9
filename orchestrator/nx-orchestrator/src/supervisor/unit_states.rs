//! Units' states in as few D-Bus calls as systemd allows, and a cache of them that systemd's
//! own signals keep true.
//!
//! - One unit's state is one `org.freedesktop.DBus.Properties.GetAll` with the empty interface
//!   name (every interface of the unit's object at once, as `systemctl show` asks), on the
//!   object path systemd derives from the unit's name: no `LoadUnit` first.
//! - Many units' states: the ones the cache holds cost nothing; of the rest, one
//!   `ListUnitsByPatterns` tells which systemd has loaded at all (a deployment that is stopped
//!   has no unit: its state is known without asking further), and only the loaded ones cost a
//!   `GetAll` each, asked concurrently.
//! - The cache holds a state until systemd says it changed: `PropertiesChanged` on the unit's
//!   object, `UnitNew`/`UnitRemoved` from the manager (org.freedesktop.systemd1(5); they are
//!   sent to clients that called `Subscribe`), everything on `Reloading` or when the connection
//!   ends. `MemoryCurrent` and `TasksCurrent` change without a signal (systemd does not mark
//!   them as emitting one), so the counters of a unit with processes are served for at most
//!   [`COUNTERS_MAX_AGE`]; then those two alone are asked again (two `Get`s of one value
//!   each, where a `GetAll` answers some 300 properties: with 200 units running, the `GetAll`s
//!   were most of nxd's work for `nx ls`), the rest of the state kept as the signals left it.
//! - A signal and a reply can cross: each reply is stored only if no change signal for its unit
//!   was received after it (zbus numbers every received message: `Message::recv_position`).

use crate::api::systemd::{ActiveState, ServiceResult, SubState};
use crate::api::UnitState;
use futures_util::{stream, StreamExt};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use zbus::message::Sequence;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, OwnedValue};
use zbus::{MatchRule, MessageStream};

const SYSTEMD: &str = "org.freedesktop.systemd1";
const SERVICE_INTERFACE: &str = "org.freedesktop.systemd1.Service";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER_INTERFACE: &str = "org.freedesktop.systemd1.Manager";
const UNIT_PATH_PREFIX: &str = "/org/freedesktop/systemd1/unit";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";

/// How long the state of a unit that has processes is served from the cache: its memory and
/// task counts change without a signal.
pub const COUNTERS_MAX_AGE: Duration = Duration::from_secs(1);
/// From this many units not in the cache, one `ListUnitsByPatterns` first tells which of them
/// are loaded.
const LIST_FROM: usize = 4;
/// Up to this many names, `ListUnitsByPatterns` gets them as patterns; beyond, every loaded
/// unit is listed and the names are picked here (systemd matches each unit against each
/// pattern).
const MAX_PATTERNS: usize = 64;
/// Change positions kept per unit before they are folded into one floor.
const MAX_CHANGES: usize = 4096;

/// The object path systemd gives a unit: `/org/freedesktop/systemd1/unit/` and the name with
/// every byte but ASCII letters and digits written as `_` and two hex digits (sd-bus's
/// `bus_label_escape`), e.g. `nx-a1.service` → `.../unit/nx_2da1_2eservice`.
pub fn unit_path(unit: &str) -> OwnedObjectPath {
    let mut path = String::with_capacity(UNIT_PATH_PREFIX.len() + 1 + unit.len() * 3);
    path.push_str(UNIT_PATH_PREFIX);
    path.push('/');
    if unit.is_empty() {
        path.push('_');
    }
    for byte in unit.bytes() {
        if byte.is_ascii_alphanumeric() {
            path.push(byte as char);
        } else {
            path.push_str(&format!("_{byte:02x}"));
        }
    }
    OwnedObjectPath::try_from(path).expect("an escaped label is a valid object path")
}

/// The state systemd reports for a unit it has not loaded (what `GetAll` on such a unit's
/// path answers: inactive, dead, no process, no counters, `Result` success).
pub fn unloaded() -> UnitState {
    UnitState {
        active: ActiveState::Inactive,
        sub: SubState::Dead,
        main_pid: 0,
        restarts: 0,
        memory_bytes: None,
        tasks: None,
        result: ServiceResult::Success,
        exit_status: 0,
        exit_code: 0,
    }
}

/// A [`UnitState`] from the properties `GetAll` answered. Missing ones (a unit that is not a
/// service) read as systemd's defaults; `u64::MAX` counters mean "not known".
fn from_properties(props: &HashMap<String, OwnedValue>) -> UnitState {
    fn get<T: TryFrom<OwnedValue>>(props: &HashMap<String, OwnedValue>, name: &str) -> Option<T> {
        props
            .get(name)
            .and_then(|v| v.try_clone().ok())
            .and_then(|v| T::try_from(v).ok())
    }
    let base = unloaded();
    let counter = |name: &str| get::<u64>(props, name).filter(|&v| v != u64::MAX);
    UnitState {
        active: get::<String>(props, "ActiveState").map_or(base.active, Into::into),
        sub: get::<String>(props, "SubState").map_or(base.sub, Into::into),
        main_pid: get(props, "MainPID").unwrap_or(0),
        restarts: get(props, "NRestarts").unwrap_or(0),
        memory_bytes: counter("MemoryCurrent"),
        tasks: counter("TasksCurrent"),
        result: get::<String>(props, "Result").map_or(base.result, Into::into),
        exit_status: get(props, "ExecMainStatus").unwrap_or(0),
        exit_code: get(props, "ExecMainCode").unwrap_or(0),
    }
}

/// Whether a unit has processes whose counters move (anything but inactive or failed).
pub fn has_processes(state: &UnitState) -> bool {
    !state.active.is_down()
}

struct Entry {
    state: UnitState,
    fetched: Instant,
}

/// See [`UnitCache::lookup`].
#[derive(Debug, PartialEq)]
enum Lookup {
    Fresh(UnitState),
    /// True but for `memory_bytes` and `tasks`.
    OldCounters(UnitState),
    Missing,
}

struct Inner<P> {
    /// Whether a watcher receives systemd's signals on the current connection; nothing is
    /// served or stored otherwise.
    watching: bool,
    /// Bumped with every new connection: replies from an older one are not stored.
    generation: u64,
    entries: HashMap<OwnedObjectPath, Entry>,
    /// Where the last change signal of each unit was received.
    changed: HashMap<OwnedObjectPath, P>,
    /// Replies received before this are not stored (changes folded when `changed` grew).
    floor: P,
    /// Counts what may have changed a state served before: change signals, reloads and
    /// connections begun or ended (see [`UnitCache::changes`]).
    changes: u64,
}

impl<P: Default> Default for Inner<P> {
    fn default() -> Self {
        Self {
            watching: false,
            generation: 0,
            entries: HashMap::new(),
            changed: HashMap::new(),
            floor: P::default(),
            changes: 0,
        }
    }
}

/// The cache of units' states of one [`super::Supervisor`], and the turns of its calls; `P`
/// orders received messages (zbus's [`Sequence`]).
pub struct UnitCache<P = Sequence> {
    inner: Mutex<Inner<P>>,
    /// [`super::UNITS_IN_FLIGHT`] permits, one held by each `GetAll` in progress.
    turns: tokio::sync::Semaphore,
}

impl<P: Default> Default for UnitCache<P> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            turns: tokio::sync::Semaphore::new(super::UNITS_IN_FLIGHT),
        }
    }
}

impl<P: Ord + Copy + Default> UnitCache<P> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<P>> {
        self.inner.lock().expect("unit cache lock")
    }

    /// A state that is still true, if the cache holds one.
    pub fn get(&self, path: &OwnedObjectPath) -> Option<UnitState> {
        match self.lookup(path) {
            Lookup::Fresh(state) => Some(state),
            Lookup::OldCounters(_) | Lookup::Missing => None,
        }
    }

    /// What the cache holds of a unit: its state, or its state but for counters older than
    /// [`COUNTERS_MAX_AGE`], or nothing.
    fn lookup(&self, path: &OwnedObjectPath) -> Lookup {
        let inner = self.lock();
        let Some(entry) = inner.entries.get(path).filter(|_| inner.watching) else {
            return Lookup::Missing;
        };
        if !has_processes(&entry.state) || entry.fetched.elapsed() < COUNTERS_MAX_AGE {
            Lookup::Fresh(entry.state.clone())
        } else {
            Lookup::OldCounters(entry.state.clone())
        }
    }

    /// How many times what the cache serves may have changed, other than a running unit's
    /// counters (which age: [`COUNTERS_MAX_AGE`]); `None` while no watcher receives systemd's
    /// signals (every state is asked of systemd then). A view made of states served after a
    /// count was taken is still true while the count is the same.
    pub fn changes(&self) -> Option<u64> {
        let inner = self.lock();
        inner.watching.then_some(inner.changes)
    }

    /// The current generation, taken before a call whose reply may be stored.
    fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Keeps a reply unless a change of the unit was received after it.
    fn store(&self, generation: u64, path: &OwnedObjectPath, state: &UnitState, at: P) {
        let mut inner = self.lock();
        let changed_after = inner.changed.get(path).is_some_and(|&c| c > at);
        if !inner.watching || inner.generation != generation || at < inner.floor || changed_after {
            return;
        }
        inner.entries.insert(
            path.clone(),
            Entry {
                state: state.clone(),
                fetched: Instant::now(),
            },
        );
    }

    /// systemd said a unit changed (the signal was received at `at`).
    fn changed(&self, path: OwnedObjectPath, at: P) {
        let mut inner = self.lock();
        inner.changes += 1;
        inner.entries.remove(&path);
        if inner.changed.len() >= MAX_CHANGES {
            let newest = inner.changed.values().copied().max().unwrap_or_default();
            inner.floor = inner.floor.max(newest);
            inner.changed.clear();
        }
        inner.changed.insert(path, at);
    }

    /// Forgets everything received up to `at` (systemd reloads, or reloaded).
    fn forget_all(&self, at: P) {
        let mut inner = self.lock();
        inner.changes += 1;
        inner.entries.clear();
        inner.changed.clear();
        inner.floor = inner.floor.max(at);
    }

    /// A new connection: nothing of the old one counts; `watching` from now on.
    fn begin(&self, watching: bool) -> u64 {
        let mut inner = self.lock();
        inner.changes += 1;
        inner.generation += 1;
        inner.watching = watching;
        inner.entries.clear();
        inner.changed.clear();
        inner.floor = P::default();
        inner.generation
    }

    /// The watcher of `generation` stopped receiving signals: serve nothing more.
    fn end(&self, generation: u64) {
        let mut inner = self.lock();
        if inner.generation == generation {
            inner.changes += 1;
            inner.watching = false;
            inner.entries.clear();
        }
    }
}

/// Subscribes to systemd's unit signals on `conn` and keeps `cache` by them, in a task that
/// ends with the connection. Until it runs (and if it cannot) the cache serves nothing.
pub async fn watch(conn: &zbus::Connection, cache: &std::sync::Arc<UnitCache>) {
    cache.begin(false);
    let streams = async {
        let properties = MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(SYSTEMD)?
            .interface(PROPERTIES)?
            .member("PropertiesChanged")?
            .path_namespace(UNIT_PATH_PREFIX)?
            .build();
        let manager = MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(SYSTEMD)?
            .interface(MANAGER_INTERFACE)?
            .path(MANAGER_PATH)?
            .build();
        let properties = MessageStream::for_match_rule(properties, conn, None).await?;
        let manager = MessageStream::for_match_rule(manager, conn, None).await?;
        conn.call_method(
            Some(SYSTEMD),
            MANAGER_PATH,
            Some(MANAGER_INTERFACE),
            "Subscribe",
            &(),
        )
        .await?;
        Ok::<_, zbus::Error>(stream::select(properties, manager))
    };
    let mut signals = match streams.await {
        Ok(signals) => signals,
        Err(e) => {
            tracing::warn!(error = %e, "no unit signals from systemd: unit states are not cached");
            return;
        }
    };
    let generation = cache.begin(true);
    let cache = std::sync::Arc::clone(cache);
    tokio::spawn(async move {
        while let Some(Ok(message)) = signals.next().await {
            let at = message.recv_position();
            let header = message.header();
            match header.member().map(|m| m.as_str()) {
                Some("PropertiesChanged") => {
                    if let Some(path) = header.path() {
                        cache.changed(path.to_owned().into(), at);
                    }
                }
                Some("UnitNew" | "UnitRemoved") => {
                    if let Ok((_, path)) = message.body().deserialize::<(String, ObjectPath<'_>)>()
                    {
                        cache.changed(path.into(), at);
                    }
                }
                Some("Reloading") => cache.forget_all(at),
                _ => {}
            }
        }
        tracing::debug!("unit signals ended");
        cache.end(generation);
    });
}

/// One unit's state: one `GetAll` (see the module's docs); stored in `cache`.
pub async fn fetch(
    conn: &zbus::Connection,
    cache: &UnitCache,
    unit: &str,
) -> Result<UnitState, zbus::Error> {
    fetch_path(conn, cache, &unit_path(unit), cache.generation()).await
}

async fn fetch_path(
    conn: &zbus::Connection,
    cache: &UnitCache,
    path: &OwnedObjectPath,
    generation: u64,
) -> Result<UnitState, zbus::Error> {
    let _turn = cache.turns.acquire().await.expect("never closed");
    let reply = conn
        .call_method(Some(SYSTEMD), path, Some(PROPERTIES), "GetAll", &("",))
        .await?;
    let props: HashMap<String, OwnedValue> = reply.body().deserialize()?;
    let state = from_properties(&props);
    cache.store(generation, path, &state, reply.recv_position());
    Ok(state)
}

/// `state` (the cache's, true but for its counters) with `MemoryCurrent` and `TasksCurrent`
/// asked again, stored in `cache` unless a change of the unit was received after either
/// answer; `None` when systemd does not answer them (the unit is gone: ask it all).
async fn refresh_counters(
    conn: &zbus::Connection,
    cache: &UnitCache,
    path: &OwnedObjectPath,
    generation: u64,
    mut state: UnitState,
) -> Option<UnitState> {
    let _turn = cache.turns.acquire().await.expect("never closed");
    let get = |name: &'static str| async move {
        let reply = conn
            .call_method(
                Some(SYSTEMD),
                path,
                Some(PROPERTIES),
                "Get",
                &(SERVICE_INTERFACE, name),
            )
            .await
            .ok()?;
        let value: OwnedValue = reply.body().deserialize().ok()?;
        let counter = u64::try_from(value).ok().filter(|&v| v != u64::MAX);
        Some((counter, reply.recv_position()))
    };
    let (memory, tasks) = futures_util::join!(get("MemoryCurrent"), get("TasksCurrent"));
    let ((memory, memory_at), (tasks, tasks_at)) = (memory?, tasks?);
    state.memory_bytes = memory;
    state.tasks = tasks;
    cache.store(generation, path, &state, memory_at.min(tasks_at));
    Some(state)
}

/// The states of `units`, in their order: from the cache where it holds them, else asked of
/// systemd (see the module's docs).
pub async fn fetch_many(
    conn: &zbus::Connection,
    cache: &UnitCache,
    units: &[&str],
) -> Result<Vec<UnitState>, zbus::Error> {
    let generation = cache.generation();
    let paths: Vec<OwnedObjectPath> = units.iter().map(|u| unit_path(u)).collect();
    let mut states: Vec<Option<UnitState>> = Vec::with_capacity(paths.len());
    let mut old_counters: Vec<(usize, UnitState)> = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        states.push(match cache.lookup(path) {
            Lookup::Fresh(state) => Some(state),
            Lookup::OldCounters(state) => {
                old_counters.push((i, state));
                None
            }
            Lookup::Missing => None,
        });
    }
    let refreshed: Vec<(usize, Option<UnitState>)> = stream::iter(old_counters)
        .map(|(i, state)| {
            let path = &paths[i];
            async move {
                let state = refresh_counters(conn, cache, path, generation, state).await;
                (i, state)
            }
        })
        .buffer_unordered(super::UNITS_IN_FLIGHT)
        .collect()
        .await;
    for (i, state) in refreshed {
        states[i] = state;
    }
    let mut misses: Vec<usize> = (0..units.len()).filter(|&i| states[i].is_none()).collect();
    if misses.len() >= LIST_FROM {
        let loaded = list_loaded(conn, units, &misses).await?;
        misses.retain(|&i| {
            if loaded.names.contains_key(units[i]) {
                return true;
            }
            let state = unloaded();
            cache.store(generation, &paths[i], &state, loaded.at);
            states[i] = Some(state);
            false
        });
    }
    let fetched: Vec<(usize, UnitState)> =
        stream::iter(misses)
            .map(|i| {
                let path = &paths[i];
                async move {
                    Ok::<_, zbus::Error>((i, fetch_path(conn, cache, path, generation).await?))
                }
            })
            .buffer_unordered(super::UNITS_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
    for (i, state) in fetched {
        states[i] = Some(state);
    }
    Ok(states
        .into_iter()
        .map(|s| s.expect("every unit answered"))
        .collect())
}

/// The units among `units[misses]` that systemd has loaded, and where the answer was received.
struct Loaded {
    names: HashMap<String, ()>,
    at: Sequence,
}

async fn list_loaded(
    conn: &zbus::Connection,
    units: &[&str],
    misses: &[usize],
) -> Result<Loaded, zbus::Error> {
    let patterns: Vec<&str> = if misses.len() <= MAX_PATTERNS {
        misses.iter().map(|&i| units[i]).collect()
    } else {
        Vec::new()
    };
    let states: &[&str] = &[];
    let reply = conn
        .call_method(
            Some(SYSTEMD),
            MANAGER_PATH,
            Some(MANAGER_INTERFACE),
            "ListUnitsByPatterns",
            &(states, patterns),
        )
        .await?;
    let rows: Vec<super::dbus_api::UnitRow> = reply.body().deserialize()?;
    Ok(Loaded {
        names: rows.into_iter().map(|row| (row.0, ())).collect(),
        at: reply.recv_position(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_paths_are_escaped_as_sd_bus_does() {
        assert_eq!(
            unit_path("nx-a1.service").as_str(),
            "/org/freedesktop/systemd1/unit/nx_2da1_2eservice"
        );
        assert_eq!(
            unit_path("nx.slice").as_str(),
            "/org/freedesktop/systemd1/unit/nx_2eslice"
        );
        assert_eq!(unit_path("").as_str(), "/org/freedesktop/systemd1/unit/_");
    }

    fn running() -> UnitState {
        UnitState {
            active: ActiveState::Active,
            sub: SubState::Running,
            main_pid: 7,
            ..unloaded()
        }
    }

    fn path(unit: &str) -> OwnedObjectPath {
        unit_path(unit)
    }

    #[test]
    fn a_reply_received_before_a_change_of_its_unit_is_not_kept() {
        let cache = UnitCache::<u64>::default();
        let generation = cache.begin(true);
        let (a, b) = (path("a.service"), path("b.service"));
        // The signal was handled first, but the reply had been received before it.
        cache.changed(a.clone(), 5);
        cache.store(generation, &a, &unloaded(), 4);
        assert_eq!(cache.get(&a), None);
        // A reply received after the change is kept, until the next change.
        cache.store(generation, &a, &unloaded(), 6);
        assert_eq!(cache.get(&a), Some(unloaded()));
        cache.changed(a.clone(), 7);
        assert_eq!(cache.get(&a), None);
        // Other units are not touched by a's change.
        cache.store(generation, &b, &unloaded(), 3);
        assert_eq!(cache.get(&b), Some(unloaded()));
        // A reload forgets everything received up to it.
        cache.forget_all(8);
        assert_eq!(cache.get(&b), None);
        cache.store(generation, &b, &unloaded(), 7);
        assert_eq!(cache.get(&b), None);
    }

    #[test]
    fn a_running_units_counters_grow_old_and_the_rest_of_its_state_does_not() {
        let cache = UnitCache::<u64>::default();
        let generation = cache.begin(true);
        let (a, b) = (path("a.service"), path("b.service"));
        cache.store(generation, &a, &running(), 1);
        cache.store(generation, &b, &unloaded(), 1);
        assert_eq!(cache.lookup(&a), Lookup::Fresh(running()));
        let long_ago = Instant::now() - COUNTERS_MAX_AGE * 2;
        for entry in cache.lock().entries.values_mut() {
            entry.fetched = long_ago;
        }
        assert_eq!(cache.lookup(&a), Lookup::OldCounters(running()));
        // A unit without processes has no counters that move.
        assert_eq!(cache.lookup(&b), Lookup::Fresh(unloaded()));
        // Counters asked again are fresh again; a change of the unit still wins.
        cache.store(generation, &a, &running(), 2);
        assert_eq!(cache.lookup(&a), Lookup::Fresh(running()));
        cache.changed(a.clone(), 3);
        assert_eq!(cache.lookup(&a), Lookup::Missing);
    }

    #[test]
    fn nothing_is_served_without_signals_nor_from_an_older_connection() {
        let cache = UnitCache::<u64>::default();
        let a = path("a.service");
        let old = cache.begin(false);
        cache.store(old, &a, &unloaded(), 1);
        assert_eq!(cache.get(&a), None, "not watching");
        let old = cache.begin(true);
        let new = cache.begin(true);
        cache.store(old, &a, &unloaded(), 2);
        assert_eq!(cache.get(&a), None, "a reply of the older connection");
        cache.store(new, &a, &unloaded(), 2);
        assert_eq!(cache.get(&a), Some(unloaded()));
        // The old watcher ending does not stop the new one; the new one ending does.
        cache.end(old);
        assert_eq!(cache.get(&a), Some(unloaded()));
        cache.end(new);
        assert_eq!(cache.get(&a), None);
    }

    #[test]
    fn change_signals_reloads_and_connections_count_as_changes_and_replies_do_not() {
        let cache = UnitCache::<u64>::default();
        assert_eq!(cache.changes(), None, "no watcher yet");
        let generation = cache.begin(true);
        let at_start = cache.changes().expect("watching");
        let a = path("a.service");
        cache.store(generation, &a, &running(), 1);
        assert_eq!(cache.changes(), Some(at_start), "a reply changes nothing");
        cache.changed(a, 2);
        assert_eq!(cache.changes(), Some(at_start + 1));
        cache.forget_all(3);
        assert_eq!(cache.changes(), Some(at_start + 2));
        cache.end(generation);
        assert_eq!(cache.changes(), None, "no watcher: nothing may be kept");
    }

    #[test]
    fn a_running_units_counters_are_served_for_a_second_at_most() {
        let cache = UnitCache::<u64>::default();
        let generation = cache.begin(true);
        let a = path("a.service");
        cache.store(generation, &a, &running(), 1);
        assert_eq!(cache.get(&a), Some(running()));
        cache.lock().entries.get_mut(&a).unwrap().fetched -= COUNTERS_MAX_AGE;
        assert_eq!(cache.get(&a), None);
    }

    #[test]
    fn change_positions_stay_bounded_and_keep_refusing_older_replies() {
        let cache = UnitCache::<u64>::default();
        let generation = cache.begin(true);
        for i in 0..MAX_CHANGES as u64 + 10 {
            cache.changed(path(&format!("u{i}.service")), i + 1);
        }
        assert!(cache.lock().changed.len() <= MAX_CHANGES);
        let first = path("u0.service");
        cache.store(generation, &first, &unloaded(), 2);
        assert_eq!(cache.get(&first), None, "received before its change");
    }

    #[test]
    fn properties_missing_or_unknown_read_as_systemd_defaults() {
        let mut props = HashMap::new();
        props.insert(
            "ActiveState".to_owned(),
            OwnedValue::from(zbus::zvariant::Str::from("active")),
        );
        props.insert("MainPID".to_owned(), OwnedValue::from(42u32));
        props.insert("MemoryCurrent".to_owned(), OwnedValue::from(u64::MAX));
        props.insert("TasksCurrent".to_owned(), OwnedValue::from(3u64));
        let state = from_properties(&props);
        assert_eq!(state.active, ActiveState::Active);
        assert_eq!(state.sub, SubState::Dead);
        assert_eq!(state.main_pid, 42);
        assert_eq!(state.memory_bytes, None);
        assert_eq!(state.tasks, Some(3));
        assert_eq!(from_properties(&HashMap::new()), unloaded());
    }
}
