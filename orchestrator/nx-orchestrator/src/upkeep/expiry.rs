//! Preview expiry: a deployment that is neither its sandbox's production nor the one `nx
//! rollback` returns to, and not pinned (`nx pin`), with no request for its sandbox's
//! `preview_ttl_secs` (else nxd's `sandbox.preview_ttl_secs`; counted from its last request,
//! or its creation when it never had one: both kept in the state database, so an nxd restart
//! does not restart the clock) is removed like `nx rm` removes it; never while a start of it
//! is under way (it takes the start gate, as an idle stop does: `UpkeepState::starting`). A
//! removal that failed is tried again after [`FIRST_RETRY`], then twice as long each time up
//! to [`LAST_RETRY`] ([`Retries`]), not every tick.

use crate::domain::Deployment;
use crate::names::DeploymentId;
use crate::Orchestrator;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The wait after an expired preview's first failed removal.
pub const FIRST_RETRY: Duration = Duration::from_secs(2);
/// The longest wait between two tries of an expired preview's removal.
pub const LAST_RETRY: Duration = Duration::from_secs(300);

/// Per expired preview whose removal failed: how many times in a row, and when to try again.
#[derive(Debug, Default)]
pub(super) struct Retries {
    after: Mutex<HashMap<DeploymentId, (u32, Instant)>>,
}

impl Retries {
    /// Whether the removal of `id` may be tried now (it never failed, or its wait is over).
    pub(super) fn due(&self, id: &DeploymentId) -> bool {
        let after = self.after.lock().expect("expiry retries");
        after.get(id).is_none_or(|(_, at)| Instant::now() >= *at)
    }

    /// The removal of `id` failed again: how long until the next try.
    fn failed(&self, id: &DeploymentId) -> Duration {
        let mut after = self.after.lock().expect("expiry retries");
        let failures = after.get(id).map_or(0, |(n, _)| *n);
        let wait = FIRST_RETRY
            .saturating_mul(1 << failures.min(16))
            .min(LAST_RETRY);
        after.insert(id.clone(), (failures + 1, Instant::now() + wait));
        wait
    }

    /// Forgets `id` (removed, or no longer expired).
    pub(super) fn forget(&self, id: &DeploymentId) {
        self.after.lock().expect("expiry retries").remove(id);
    }
}

impl Orchestrator {
    /// Removes an expired preview, `idle_for` after its last request.
    #[tracing::instrument(skip_all, fields(deployment = %deployment.id, sandbox = %deployment.sandbox))]
    pub(crate) async fn expire(&self, deployment: &Deployment, idle_for: chrono::Duration) {
        let kept = match super::store::production_and_rollback(self.state.pool()).await {
            Ok(kept) => kept,
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell production: nothing expires this round");
                return;
            }
        };
        if kept.contains(deployment.id.as_str()) {
            return;
        }
        tracing::info!(
            idle_secs = idle_for.num_seconds(),
            "preview expired (no request for its time to live): removing it"
        );
        crate::failpoint::wait("upkeep::expire").await;
        // As an idle stop: not while a start of it is under way, and starts wait for this.
        let Ok(_no_start) = self.upkeep.gate(&deployment.id).try_write_owned() else {
            tracing::info!("a start of it is under way: it stays");
            return;
        };
        let retries = &self.upkeep.expiry_retries;
        match self.remove(&deployment.id).await {
            Ok(()) => {
                retries.forget(&deployment.id);
                self.metrics.preview_expired(deployment.sandbox.as_str());
            }
            Err(e) => {
                let wait = retries.failed(&deployment.id);
                tracing::warn!(
                    error = %e,
                    retry_in_secs = wait.as_secs(),
                    "could not remove the expired preview"
                );
            }
        }
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
        retries.forget(&id);
        assert!(retries.due(&id));
    }
}
