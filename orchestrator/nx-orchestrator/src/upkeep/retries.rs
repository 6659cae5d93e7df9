//! Back-off per deployment for what upkeep tries again after a failure: the removal of an
//! expired preview (`expiry`), the start of an idle deployment a request woke (`wake`). The
//! first retry comes [`FIRST_RETRY`] after a failure, each next one twice as long after the
//! last, up to [`LAST_RETRY`]; a success forgets the count.

use crate::names::DeploymentId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The wait after a first failure.
pub const FIRST_RETRY: Duration = Duration::from_secs(2);
/// The longest wait between two tries.
pub const LAST_RETRY: Duration = Duration::from_secs(300);

/// Per deployment whose last try failed: how many times in a row, and when to try again.
#[derive(Debug, Default)]
pub(super) struct Retries {
    after: Mutex<HashMap<DeploymentId, (u32, Instant)>>,
}

impl Retries {
    /// Whether `id` may be tried now (its last try did not fail, or its wait is over).
    pub(super) fn due(&self, id: &DeploymentId) -> bool {
        self.wait_left(id).is_none()
    }

    /// How long until `id` may be tried again; `None`: now.
    pub(super) fn wait_left(&self, id: &DeploymentId) -> Option<Duration> {
        let after = self.after.lock().expect("upkeep retries");
        let (_, at) = after.get(id)?;
        at.checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
    }

    /// A try of `id` failed again: how long until the next one.
    pub(super) fn failed(&self, id: &DeploymentId) -> Duration {
        let mut after = self.after.lock().expect("upkeep retries");
        let failures = after.get(id).map_or(0, |(n, _)| *n);
        let wait = FIRST_RETRY
            .saturating_mul(1 << failures.min(16))
            .min(LAST_RETRY);
        after.insert(id.clone(), (failures + 1, Instant::now() + wait));
        wait
    }

    /// Forgets `id` (it succeeded, or is gone).
    pub(super) fn forget(&self, id: &DeploymentId) {
        self.after.lock().expect("upkeep retries").remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::{Retries, FIRST_RETRY, LAST_RETRY};

    #[test]
    fn each_failure_doubles_the_wait_up_to_the_last() {
        let retries = Retries::default();
        let id = crate::names::DeploymentId::generate();
        assert!(retries.due(&id));
        let waits: Vec<_> = (0..12).map(|_| retries.failed(&id)).collect();
        assert_eq!(waits[0], FIRST_RETRY);
        assert_eq!(waits[1], FIRST_RETRY * 2);
        assert_eq!(waits[2], FIRST_RETRY * 4);
        assert_eq!(waits[11], LAST_RETRY);
        assert!(!retries.due(&id));
        assert!(retries.wait_left(&id).is_some_and(|w| w <= LAST_RETRY));
        retries.forget(&id);
        assert!(retries.due(&id));
        assert_eq!(retries.wait_left(&id), None);
    }
}
