//! Usage and cost attribution (`nx usage`, `GET /v1/usage`, `GET /v1/sandboxes/{name}/usage`):
//! what each deployment used over a window, summed from the samples nxd takes every
//! `usage.sample_interval_secs`, and what that costs at the prices nxd's `[usage]` names.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The query of both usage routes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// The window's start, an RFC 3339 time (default: 24 hours before now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// What was used over a window: one row per deployment, one per sandbox, and the whole.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsageReport {
    /// The window: samples taken at or after `since` and up to `until` (now).
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// Seconds between samples (nxd's `usage.sample_interval_secs`).
    pub sample_interval_secs: u64,
    /// The currency of every `cost`, when nxd has prices (`usage.currency`).
    pub currency: Option<String>,
    /// Per deployment (removed ones included while their samples are kept), by sandbox then
    /// deployment id.
    pub deployments: Vec<DeploymentUsage>,
    /// Per sandbox: the sum of its deployments, by name.
    pub sandboxes: Vec<SandboxUsage>,
    /// Everything in the report.
    pub total: Usage,
}

/// One deployment's usage over the window.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentUsage {
    pub sandbox: String,
    pub deployment: String,
    #[serde(flatten)]
    pub usage: Usage,
}

/// One sandbox's usage over the window.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxUsage {
    pub sandbox: String,
    #[serde(flatten)]
    pub usage: Usage,
}

/// Amounts used; each sums the samples of the window.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time of the unit's cgroup (user and system), seconds.
    pub cpu_seconds: f64,
    /// Memory of the unit's cgroup (page cache included) times how long it was held, GiB-hours.
    pub memory_gib_hours: f64,
    /// Bytes used on `/data` times how long, GiB-hours.
    pub disk_gib_hours: f64,
    /// Bytes used on `/data` at the window's last sample.
    pub disk_bytes: u64,
    /// Requests the router passed to it.
    pub requests: u64,
    /// Response body bytes the router sent to clients for it.
    pub bytes_out: u64,
    /// What the amounts cost at nxd's prices (`usage.price_*`), in `currency`; none without
    /// prices.
    pub cost: Option<f64>,
}

impl Usage {
    /// Adds `other`'s amounts (and costs, when both have one) to these.
    pub fn add(&mut self, other: &Usage) {
        self.cpu_seconds += other.cpu_seconds;
        self.memory_gib_hours += other.memory_gib_hours;
        self.disk_gib_hours += other.disk_gib_hours;
        self.disk_bytes += other.disk_bytes;
        self.requests += other.requests;
        self.bytes_out += other.bytes_out;
        self.cost = match (self.cost, other.cost) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }
}
