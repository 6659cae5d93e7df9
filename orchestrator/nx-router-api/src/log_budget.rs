//! Rate limits on log lines that anyone on the network can cause: a flood of them would
//! otherwise fill a log and push the lines that matter out of its rotation. The router limits
//! its lines about requests no route answers and about single connections (`nx-router`'s
//! `log_budget`), nxd those about SFTP connections it closes.
//!
//! Each kind has a token bucket ([`LineBudget`]): [`PER_SECOND`] lines a second, bursts of up
//! to [`BURST`]; a line past it is not written but counted, and every [`SUMMARY_EVERY`] one
//! line per kind says how many were left out ([`report_suppressed`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines a second each kind may write on average.
pub const PER_SECOND: f64 = 10.0;
/// Lines each kind may write at once after a quiet spell.
pub const BURST: f64 = 100.0;
/// How often the count of lines left out is written.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// A token bucket of log lines of one kind.
pub struct LineBudget {
    /// What the lines are, for the summary.
    kind: &'static str,
    state: Mutex<State>,
}

struct State {
    /// Lines that may be written now (up to [`BURST`]).
    tokens: f64,
    /// When `tokens` was last topped up; `None` before the first line.
    at: Option<Instant>,
    /// Lines left out since the last summary.
    suppressed: u64,
}

impl LineBudget {
    /// A full bucket.
    pub const fn new(kind: &'static str) -> Self {
        Self {
            kind,
            state: Mutex::new(State {
                tokens: BURST,
                at: None,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be written now (it takes a token); `false` counts it as left out.
    pub fn allow(&self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let since = state
            .at
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        state.tokens = (state.tokens + since.as_secs_f64() * PER_SECOND).min(BURST);
        state.at = Some(now);
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            true
        } else {
            state.suppressed += 1;
            false
        }
    }

    /// The lines left out since the last call (and resets the count).
    fn take_suppressed(&self) -> u64 {
        std::mem::take(
            &mut self
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .suppressed,
        )
    }
}

/// Every [`SUMMARY_EVERY`], for each of `budgets` that left lines out since: one warning line
/// with their number. Runs on a thread of its own (named `thread`) for the process's life.
///
/// Errors: the thread could not be started (std::thread::Builder::spawn).
pub fn report_suppressed(
    thread: &str,
    budgets: &'static [&'static LineBudget],
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(thread.into())
        .spawn(move || loop {
            std::thread::sleep(SUMMARY_EVERY);
            for budget in budgets {
                let n = budget.take_suppressed();
                if n > 0 {
                    tracing::warn!(
                        suppressed = n,
                        secs = SUMMARY_EVERY.as_secs(),
                        "{} over {PER_SECOND} a second were left out of the log",
                        budget.kind
                    );
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds_and_the_rest_is_counted() {
        let budget = LineBudget::new("test lines");
        let start = Instant::now();
        let passed = (0..1000).filter(|_| budget.allow_at(start)).count();
        assert_eq!(passed, BURST as usize);
        assert_eq!(budget.take_suppressed(), 1000 - BURST as u64);
        assert_eq!(budget.take_suppressed(), 0);
        // Two seconds later: twenty more.
        let later = start + Duration::from_secs(2);
        let passed = (0..1000).filter(|_| budget.allow_at(later)).count();
        assert_eq!(passed, (2.0 * PER_SECOND) as usize);
        // After a long quiet spell no more than a burst.
        let quiet = later + Duration::from_secs(3600);
        let passed = (0..1000).filter(|_| budget.allow_at(quiet)).count();
        assert_eq!(passed, BURST as usize);
    }
}
