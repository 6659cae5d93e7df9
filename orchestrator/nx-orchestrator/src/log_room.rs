//! What the deployments' logs on this host may still write (the logs' promise: each one's
//! `limits.log_max_mb` less what its files hold, attacker s9 F2b), kept between pushes. A full
//! look reads every deployment's row and stats its log files (O(deployments), ~0.5 ms with a
//! few); a push checks its `/data` and log cap against the last look made within [`FRESH`],
//! plus the caps of the deployments recorded since that look began, less the room of those
//! removed since, and looks again itself only when there is none. Each push has a look made
//! after it, off its time (`Orchestrator::push`); a sandbox's removal drops the kept one.
//!
//! What a kept look can miss, bounded by [`FRESH`]: log files rotated away since (each frees
//! its bytes on disk and gives them back to its log's room at once, so the free disk a push
//! reads grew and the kept promise did not). What it counts too much until the next look:
//! what logs wrote since.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a look serves pushes.
pub const FRESH: Duration = Duration::from_secs(1);

/// The last look at the logs' promise and the caps recorded since.
#[derive(Default)]
pub struct LogRoom {
    /// Bytes of the log caps of every deployment recorded by this nxd ([`Self::recorded`]).
    recorded: AtomicU64,
    /// Bytes of log room of every deployment removed by this nxd ([`Self::removed`]).
    removed: AtomicU64,
    last: Mutex<Option<Look>>,
}

/// One full look.
struct Look {
    /// When it began.
    at: Instant,
    /// What the logs it saw may still write, in bytes.
    promised: u64,
    /// [`LogRoom::recorded`] as it began: caps recorded after that are added to `promised`
    /// (a deployment recorded while it read is counted twice, which refuses sooner).
    recorded_before: u64,
    /// [`LogRoom::removed`] as it began: rooms removed after that are taken off `promised`
    /// (one removed while it read and not seen by it is taken off too, which a push's own
    /// look, at most [`FRESH`] later, sets right).
    removed_before: u64,
}

/// A look under way, from [`LogRoom::begin`]; [`LogRoom::looked`] keeps what it found.
pub struct Looking {
    at: Instant,
    recorded_before: u64,
    removed_before: u64,
}

impl LogRoom {
    /// The promise in bytes from a look that began within [`FRESH`], with the caps recorded
    /// since it began; `None` without one.
    pub fn kept(&self) -> Option<u64> {
        let last = self.last.lock().expect("log room");
        let look = last.as_ref().filter(|l| l.at.elapsed() < FRESH)?;
        let recorded = self.recorded.load(Ordering::SeqCst) - look.recorded_before;
        let removed = self.removed.load(Ordering::SeqCst) - look.removed_before;
        Some(
            look.promised
                .saturating_add(recorded)
                .saturating_sub(removed),
        )
    }

    /// Begins a full look.
    pub fn begin(&self) -> Looking {
        Looking {
            at: Instant::now(),
            recorded_before: self.recorded.load(Ordering::SeqCst),
            removed_before: self.removed.load(Ordering::SeqCst),
        }
    }

    /// Keeps what the look `looking` found (`promised` bytes), unless a later one is kept.
    pub fn looked(&self, looking: Looking, promised: u64) {
        let mut last = self.last.lock().expect("log room");
        if last.as_ref().is_some_and(|l| l.at > looking.at) {
            return;
        }
        *last = Some(Look {
            at: looking.at,
            promised,
            recorded_before: looking.recorded_before,
            removed_before: looking.removed_before,
        });
    }

    /// A deployment whose log may write `cap` bytes was recorded.
    pub fn recorded(&self, cap: u64) {
        self.recorded.fetch_add(cap, Ordering::SeqCst);
    }

    /// A deployment whose log could still write `room` bytes was removed.
    pub fn removed(&self, room: u64) {
        self.removed.fetch_add(room, Ordering::SeqCst);
    }

    /// A sandbox was removed (its deployments' logs with it): the next push looks again.
    pub fn forget(&self) {
        *self.last.lock().expect("log room") = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_look_adds_what_was_recorded_since_it_began_less_what_was_removed() {
        let room = LogRoom::default();
        assert_eq!(room.kept(), None, "no look yet");
        room.recorded(10);
        let looking = room.begin();
        // Recorded while the look reads: counted by the look (maybe) and after it.
        room.recorded(5);
        room.looked(looking, 100);
        assert_eq!(room.kept(), Some(105));
        room.recorded(7);
        assert_eq!(room.kept(), Some(112));
        room.removed(12);
        assert_eq!(room.kept(), Some(100));
        room.forget();
        assert_eq!(room.kept(), None);
    }

    #[test]
    fn an_older_look_does_not_replace_a_later_one_and_a_stale_one_is_not_kept() {
        let room = LogRoom::default();
        let older = room.begin();
        let later = room.begin();
        room.looked(later, 50);
        room.looked(older, 80);
        assert_eq!(room.kept(), Some(50));
        *room.last.lock().unwrap() = Some(Look {
            at: Instant::now() - FRESH,
            promised: 50,
            recorded_before: 0,
            removed_before: 0,
        });
        assert_eq!(room.kept(), None);
    }
}
