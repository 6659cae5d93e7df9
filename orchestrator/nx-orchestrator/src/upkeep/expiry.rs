//! Preview expiry: a deployment that is neither its sandbox's production nor the one `nx
//! rollback` returns to, and not pinned (`nx pin`), with no request for its sandbox's
//! `preview_ttl_secs` (else nxd's `sandbox.preview_ttl_secs`; counted from its last request,
//! or its creation when it never had one: both kept in the state database, so an nxd restart
//! does not restart the clock) is removed like `nx rm` removes it; not while the router has
//! requests to it under way (an open WebSocket, a long download) unless they outlast its time
//! to live by [`HELD_OPEN_SECS`]; never while a start of it
//! is under way (it takes the start gate, as an idle stop does: `UpkeepState::starting`), and
//! a start that waited for its removal finds the deployment gone and runs nothing. A
//! removal that failed is tried again after a back-off ([`super::retries`]: 2 s, then twice
//! as long each time up to 5 min), not every tick.

use crate::domain::Deployment;
use crate::Orchestrator;

/// How long past its time to live requests under way keep an expired preview: a day. A
/// connection held open for ever does not keep a preview for ever.
pub(super) const HELD_OPEN_SECS: u64 = 24 * 3600;

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
        // Its push removes it if asked to; the removal would wait for the push's start,
        // which waits for the start gate this takes.
        if kept.contains(deployment.id.as_str()) || self.pushes.under_way(&deployment.id) {
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
        crate::failpoint::wait("upkeep::removing").await;
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
