//! The domain: sandboxes hold deployments; a deployment is one immutable artifact with its env,
//! args and limits, run on its own port; a sandbox's route points at its promoted deployment.

use crate::config::Limits;
use crate::names::{DeploymentId, SandboxName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the user asked a deployment to be. The live state comes from systemd.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    Running,
    Stopped,
}

impl Desired {
    pub fn as_str(self) -> &'static str {
        match self {
            Desired::Running => "running",
            Desired::Stopped => "stopped",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(Desired::Running),
            "stopped" => Some(Desired::Stopped),
            _ => None,
        }
    }
}

/// The backend a deployment runs on.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Namespaces: bubblewrap for a binary, Podman for an image.
    #[default]
    Container,
    /// A KVM (or TCG) microVM whose only program is the binary.
    Microvm,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Container => "container",
            BackendKind::Microvm => "microvm",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "container" => Some(BackendKind::Container),
            "microvm" => Some(BackendKind::Microvm),
            _ => None,
        }
    }
}

/// The OCI runtime an image runs under (a binary runs under bubblewrap either way).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// runc: namespaces and cgroups, like bubblewrap.
    #[default]
    Runc,
    /// gVisor: the program's system calls go to a user-space kernel (Debian's `runsc`).
    Runsc,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Runc => "runc",
            Runtime::Runsc => "runsc",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "runc" => Some(Runtime::Runc),
            "runsc" => Some(Runtime::Runsc),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Deployment {
    pub id: DeploymentId,
    pub sandbox: SandboxName,
    /// sha256 of the binary in the artifact store.
    pub artifact: String,
    pub port: u16,
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
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl Deployment {
    /// The systemd unit that runs this deployment.
    pub fn unit_name(&self) -> String {
        unit_name(&self.id)
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

/// Environment variable names a user may set: the shell's rules, and not NX's own.
pub fn check_env_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "invalid environment variable name {name:?}: use letters, digits and '_', not starting with a digit"
        ));
    }
    if name == "PORT" || name.starts_with("NX_") {
        return Err(format!("{name} is set by NX itself; choose another name"));
    }
    Ok(())
}
