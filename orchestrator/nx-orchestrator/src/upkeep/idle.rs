//! Scale to zero, nxd's half: a deployment with an idle timeout and no request for that long
//! goes through the state machine's `Idle` verb: its routes are marked idle (the router then
//! holds the next request and asks nxd to start it, see `wake`), and its unit is stopped. A
//! request that reached it while the routes changed wins: it keeps running.

use crate::backend::{SandboxBackend, DEFAULT_STOP_TIMEOUT};
use crate::domain::{Deployment, Desired};
use crate::error::Error;
use crate::metrics::DeploymentLabels;
use crate::names::DeploymentId;
use crate::state_machine::Verb;
use crate::Orchestrator;
use chrono::{DateTime, Utc};
use std::sync::Arc;

impl Orchestrator {
    /// Stops a deployment whose idle timeout passed counting from `ready_at` (when it was last
    /// ready), unless its wake or another idle stop holds it, a start of it is under way, or
    /// it was started again since `ready_at`.
    #[tracing::instrument(skip(self))]
    pub(crate) async fn stop_idle(self: &Arc<Self>, id: &DeploymentId, ready_at: DateTime<Utc>) {
        let lock = self.upkeep.lock(id);
        let Ok(_held) = lock.try_lock() else { return };
        // Starts wait until this idle stop is over.
        let Ok(_no_start) = self.upkeep.gate(id).try_write_owned() else {
            return;
        };
        let stopped = async {
            let deployment = self.state.deployment(id).await?;
            if deployment.desired != Desired::Running
                || self.upkeep.ready_at(&deployment) != Some(ready_at)
            {
                return Ok(());
            }
            let phase = self.phase(&deployment).await?;
            self.apply_verb(&deployment, phase, Verb::Idle).await?;
            Ok::<_, Error>(())
        };
        if let Err(e) = stopped.await {
            tracing::warn!(error = %e, "could not stop the idle deployment");
        }
    }

    /// The `Idle` step: routes marked idle, then the unit stopped (see the module's doc).
    pub(crate) async fn go_idle(&self, deployment: &Deployment) -> Result<(), Error> {
        let id = &deployment.id;
        let before = self.upkeep.seen(id.as_str()).map_or(0, |s| s.requests);
        {
            let _guard = self.changes.lock().await;
            self.state.set_desired(id, Desired::Idle).await?;
            self.rebuild_routes().await?;
        }
        let traffic = self.router.traffic().await?;
        let now = traffic.deployments.get(id.as_str());
        if now.is_some_and(|t| t.requests != before || t.in_flight > 0) {
            let _guard = self.changes.lock().await;
            self.state.set_desired(id, Desired::Running).await?;
            self.rebuild_routes().await?;
            tracing::info!("a request came as it went idle: it keeps running");
            return Ok(());
        }
        self.backend
            .stop(&self.backend.handle(deployment), DEFAULT_STOP_TIMEOUT)
            .await?;
        self.metrics.idle_stopped(&DeploymentLabels::of(deployment));
        tracing::info!("idle: stopped until its next request");
        Ok(())
    }
}
