//! The domain: sandboxes hold deployments; a deployment is one immutable artifact with its env,
//! args and limits, run on its own port; a sandbox's route points at its promoted deployment.

use crate::config::Limits;
use crate::names::{DeploymentId, SandboxName};
pub use nx_api::{check_env_name, BackendKind, Desired, Egress, Runtime, Tier};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Deployment {
    pub id: DeploymentId,
    pub sandbox: SandboxName,
    /// sha256 of the binary in the artifact store.
    pub artifact: String,
    /// The slot nxd allocated (from `[ports]`): it gives the uid and the address, and is the
    /// program's `PORT` unless the push named one (`listen_port`).
    pub port: u16,
    /// The port the program listens on by itself (`nx push --port`).
    pub listen_port: Option<u16>,
    /// Connections out of its network namespace.
    pub egress: Egress,
    pub uid: u32,
    pub env: BTreeMap<String, String>,
    pub args: Vec<String>,
    pub limits: Limits,
    pub desired: Desired,
    /// Runs against its own copy of the sandbox's database.
    pub db_branch: bool,
    /// The OCI runtime, for an image.
    pub runtime: Runtime,
    pub backend: BackendKind,
    /// Seconds it has to become ready, from its push or its sandbox's settings; `None`: nxd's
    /// `sandbox.ready_timeout_secs` (see [`crate::readiness::timeout`]).
    pub ready_timeout_secs: Option<u64>,
    /// The sandbox's volumes it mounts (`nx push --volume`).
    #[serde(default)]
    pub volumes: Vec<nx_api::volumes::MountedVolume>,
    /// Cattle or pet (`nx push --persistent`): whether its unit is pinned to CPUs.
    #[serde(default)]
    pub tier: Tier,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl Deployment {
    /// The systemd unit that runs this deployment.
    pub fn unit_name(&self) -> String {
        unit_name(&self.id)
    }

    /// The port the program listens on: its `PORT`.
    pub fn program_port(&self) -> u16 {
        self.listen_port.unwrap_or(self.port)
    }
}

pub fn unit_name(id: &DeploymentId) -> String {
    format!("nx-{id}.service")
}

/// The two kinds of URL the router serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RouteKey {
    /// `<deployment>.<sandbox>.<base_domain>`
    Preview(SandboxName, DeploymentId),
    /// `<sandbox>.<base_domain>`: the promoted deployment.
    Production(SandboxName),
}
