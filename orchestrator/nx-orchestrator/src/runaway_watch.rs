//! Every [`WATCH_EVERY`], tenants' backends that overran their bounds are ended and logged
//! with their sandbox's name (see `databases::runaway` for the bounds and why).

use crate::databases::ident;
use crate::error::Error;
use crate::{embedded_db, Orchestrator};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How often tenants' backends are looked at. A hash growing at ~200 MiB/s passes its bound
/// by at most that much in between.
pub const WATCH_EVERY: Duration = Duration::from_millis(250);

impl Orchestrator {
    /// Watches tenants' backends in the background for as long as the orchestrator lives.
    pub(crate) fn watch_tenant_backends(self: &Arc<Self>) {
        let app = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WATCH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(app) = app.upgrade() else { return };
                if let Err(e) = app.end_runaway_backends().await {
                    tracing::debug!(error = %e, "tenants' backends: trying again");
                }
            }
        });
    }

    /// One look: ends every tenant backend past its bounds.
    async fn end_runaway_backends(&self) -> Result<(), Error> {
        let backends = self.databases.tenant_backends().await?;
        if backends.is_empty() {
            return Ok(());
        }
        let memory = if self.embedded_db {
            let pids = self.supervisor.unit_pids(embedded_db::UNIT).await?;
            embedded_db::anonymous_memory(&pids)
        } else {
            HashMap::new()
        };
        for (backend, overrun) in self.databases.overruns(&backends, &memory) {
            if self.databases.terminate(backend.pid).await? {
                let sandbox = self.sandbox_of_role(&backend.role).await;
                tracing::warn!(
                    sandbox = sandbox.as_deref().unwrap_or("(removed)"),
                    role = %backend.role,
                    pid = backend.pid,
                    "ended a tenant's database session: {overrun}, past its bound (databases.statement_timeout_secs, backend_memory_max_mb, sandbox_memory_max_mb, memory_max_mb)"
                );
            }
        }
        Ok(())
    }

    /// The sandbox whose role (production's or a preview branch's) `role` is.
    async fn sandbox_of_role(&self, role: &str) -> Option<String> {
        if let Some(deployment) = self
            .state
            .deployments()
            .await
            .ok()?
            .into_iter()
            .find(|d| d.db_branch && ident::branch(&d.id) == role)
        {
            return Some(deployment.sandbox.to_string());
        }
        self.state
            .sandbox_names()
            .await
            .ok()?
            .into_iter()
            .find(|name| self.databases.role(name) == role)
            .map(|name| name.to_string())
    }
}
