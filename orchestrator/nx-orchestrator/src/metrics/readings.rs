//! What every deployment's unit uses right now, read once for both consumers: the series of a
//! Prometheus scrape (`scrape`) and the usage samples nxd stores (`crate::usage`).

use crate::api::DiskUsage;
use crate::api::UnitState;
use crate::backend::data_disk::read_usage;
use crate::backend::{SandboxBackend, SandboxHandle};
use crate::domain::Deployment;
use crate::error::Error;
use crate::supervisor::UNITS_IN_FLIGHT;
use crate::Orchestrator;
use futures_util::{stream, StreamExt};

/// One deployment's unit as read now.
pub(crate) struct Reading {
    pub deployment: Deployment,
    /// systemd's view of the unit (memory, tasks, restarts).
    pub state: UnitState,
    /// CPU time of its cgroup since the unit started, nanoseconds; none while it is down.
    pub cpu_nsec: Option<u64>,
    /// What its `/data` holds, as the launcher last reported (deployments with a disk limit).
    pub disk: Option<DiskUsage>,
}

impl Reading {
    /// Whether its unit is up (active, activating, reloading, deactivating).
    pub fn running(&self) -> bool {
        !self.state.active.is_down()
    }

    /// Its cgroup's memory, while it runs.
    pub fn memory_bytes(&self) -> Option<u64> {
        self.state.memory_bytes.filter(|_| self.running())
    }
}

impl Orchestrator {
    /// CPU time of a running deployment's unit (none for one that is down).
    async fn cpu_nsec(&self, unit: &str, state: &UnitState) -> Option<u64> {
        if state.active.is_down() {
            return None;
        }
        match self.supervisor.cpu_nsec(unit).await {
            Ok(nsec) => nsec,
            Err(e) => {
                tracing::warn!(%unit, error = %e, "no CPU time");
                None
            }
        }
    }

    /// Every deployment's unit, read now (its state in one call to the manager, its CPU time
    /// [`UNITS_IN_FLIGHT`] at a time).
    pub(crate) async fn readings(&self) -> Result<Vec<Reading>, Error> {
        let deployments = self.state.deployments().await?;
        let handles: Vec<SandboxHandle> =
            deployments.iter().map(|d| self.backend.handle(d)).collect();
        let units: Vec<&str> = handles.iter().map(|h| h.unit.as_str()).collect();
        let states = self.supervisor.states(&units).await?;
        let asks: Vec<_> = units
            .iter()
            .zip(&states)
            .map(|(unit, state)| self.cpu_nsec(unit, state))
            .collect();
        let cpu: Vec<Option<u64>> = stream::iter(asks).buffered(UNITS_IN_FLIGHT).collect().await;
        Ok(deployments
            .into_iter()
            .zip(handles)
            .zip(states)
            .zip(cpu)
            .map(|(((deployment, handle), state), cpu_nsec)| Reading {
                disk: read_usage(&handle.dir),
                deployment,
                state,
                cpu_nsec,
            })
            .collect())
    }
}
