//! What the router saw of each deployment since it started: requests, those in flight, the
//! time of the last one and the bytes sent, served on the control socket as `GET /v1/traffic`
//! ([`nx_router_api::Traffic`]). nxd reads it for idle timeouts and preview expiry.

use nx_router_api::{DeploymentTraffic, Traffic};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The counts by deployment id, under one lock held for a map lookup and a few additions.
#[derive(Debug, Default)]
pub struct TrafficLog {
    deployments: Mutex<HashMap<String, DeploymentTraffic>>,
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl TrafficLog {
    /// A request for `deployment` was routed.
    pub fn begin(&self, deployment: &str) {
        let mut map = self.deployments.lock().expect("traffic lock");
        let seen = match map.get_mut(deployment) {
            Some(seen) => seen,
            None => map.entry(deployment.to_owned()).or_default(),
        };
        seen.requests += 1;
        seen.in_flight += 1;
        seen.last_request_unix_ms = now_unix_ms();
    }

    /// A request [`begin`](Self::begin) counted has finished, having sent `bytes_sent`.
    pub fn end(&self, deployment: &str, bytes_sent: u64) {
        let mut map = self.deployments.lock().expect("traffic lock");
        if let Some(seen) = map.get_mut(deployment) {
            seen.in_flight = seen.in_flight.saturating_sub(1);
            seen.bytes_sent += bytes_sent;
            seen.last_request_unix_ms = now_unix_ms();
        }
    }

    /// Everything so far.
    pub fn snapshot(&self) -> Traffic {
        let map = self.deployments.lock().expect("traffic lock");
        Traffic {
            deployments: map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_while_in_flight_and_after() {
        let log = TrafficLog::default();
        log.begin("d1");
        log.begin("d1");
        log.end("d1", 10);
        let seen = &log.snapshot().deployments["d1"];
        assert_eq!((seen.requests, seen.in_flight, seen.bytes_sent), (2, 1, 10));
        assert!(seen.last_request_unix_ms > 1_700_000_000_000);
        log.end("d1", 5);
        log.end("d1", 0);
        assert_eq!(log.snapshot().deployments["d1"].in_flight, 0);
    }
}
