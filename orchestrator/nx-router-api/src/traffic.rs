//! What the router saw of each deployment since it started (`GET /v1/traffic` on its control
//! socket): nxd reads it to know when a deployment last had a request (idle timeouts, preview
//! expiry) and whether one is being answered now.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Every deployment the router passed a request to, by deployment id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub deployments: BTreeMap<String, DeploymentTraffic>,
}

/// One deployment's requests since the router started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentTraffic {
    /// Requests routed to it (answered or not).
    pub requests: u64,
    /// Requests routed to it and not finished yet (a WebSocket counts while it is open).
    pub in_flight: u64,
    /// When the last request came or finished, in milliseconds since the Unix epoch.
    pub last_request_unix_ms: u64,
    /// Response body bytes sent to clients.
    pub bytes_sent: u64,
}
