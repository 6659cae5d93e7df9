//! Usage and cost attribution (`nx usage`): every `usage.sample_interval_secs` the upkeep
//! loop samples what each deployment used since the previous sample (CPU time of its cgroup,
//! memory held, bytes on `/data`, requests and response bytes through the router) into
//! `usage_samples` ([`store`]), and deletes samples older than `usage.retention_days`;
//! [`Orchestrator::usage`] sums a window per deployment and per sandbox and prices it
//! ([`UsageConfig::cost`]).
//!
//! CPU time and the router's counts are counters that start again from 0 when the unit or the
//! router restarts: a sample is what a counter grew by, or all of it when it went back. The
//! first round after nxd starts only reads the counters (what was used while nxd was down, up
//! to one interval, is not attributed).

mod config;
pub mod store;

pub use config::UsageConfig;

use crate::error::Error;
use crate::metrics::readings::Reading;
use crate::names::SandboxName;
use crate::router::Traffic;
use crate::state::StateError;
use crate::Orchestrator;
use chrono::{DateTime, Utc};
use config::GIB;
use nx_api::usage::{DeploymentUsage, SandboxUsage, Usage, UsageReport};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use store::Sample;

/// The window `nx usage` shows without `--since`.
pub const DEFAULT_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// One deployment as read for a sample.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Observed {
    pub deployment: String,
    pub sandbox: String,
    /// CPU time since its unit started, nanoseconds (none while it is down).
    pub cpu_nsec: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub disk_bytes: Option<u64>,
    /// The router's counts since it started (none when the router did not answer).
    pub requests: Option<u64>,
    pub bytes_sent: Option<u64>,
}

impl Observed {
    /// `reading` with the router's `traffic` (none: the router did not answer).
    fn of(reading: &Reading, traffic: Option<&Traffic>) -> Self {
        let id = reading.deployment.id.to_string();
        let routed = traffic.map(|t| t.deployments.get(&id).cloned().unwrap_or_default());
        Self {
            sandbox: reading.deployment.sandbox.to_string(),
            deployment: id,
            cpu_nsec: reading.cpu_nsec,
            memory_bytes: reading.memory_bytes(),
            disk_bytes: reading.disk.as_ref().map(|d| d.used_bytes),
            requests: routed.as_ref().map(|t| t.requests),
            bytes_sent: routed.as_ref().map(|t| t.bytes_sent),
        }
    }
}

/// The counters of one deployment as last read.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    cpu_nsec: Option<u64>,
    requests: Option<u64>,
    bytes_sent: Option<u64>,
}

/// The previous round: when, and every deployment's counters then.
struct Round {
    at: Instant,
    counters: HashMap<String, Counters>,
}

/// What a counter grew by since `before`: all of `now` when it went back (its unit or the
/// router started again) or was not there before (started since).
fn growth(before: Option<u64>, now: Option<u64>) -> u64 {
    match (before, now) {
        (_, None) => 0,
        (Some(b), Some(n)) if n >= b => n - b,
        (_, Some(n)) => n,
    }
}

/// nxd's memory of the last sample, for as long as it runs.
#[derive(Default)]
pub struct Sampler {
    last: Mutex<Option<Round>>,
}

impl Sampler {
    /// Whether `interval` has passed since the last round (or there was none).
    fn due(&self, interval: Duration) -> bool {
        self.last
            .lock()
            .expect("usage lock")
            .as_ref()
            .is_none_or(|r| r.at.elapsed() >= interval)
    }

    /// One round at `at`: what each deployment used since the previous round (none in the
    /// first round, which only reads the counters). A router count that is missing (the
    /// router did not answer) keeps its last value for the next round.
    fn take(&self, observed: &[Observed], at: Instant) -> Option<Vec<Sample>> {
        let mut last = self.last.lock().expect("usage lock");
        let previous = last.take();
        let mut counters = HashMap::with_capacity(observed.len());
        let mut samples = Vec::with_capacity(observed.len());
        let hours = previous
            .as_ref()
            .map(|p| at.saturating_duration_since(p.at).as_secs_f64() / 3600.0);
        for o in observed {
            let before = previous
                .as_ref()
                .and_then(|p| p.counters.get(&o.deployment).copied())
                .unwrap_or_default();
            counters.insert(
                o.deployment.clone(),
                Counters {
                    cpu_nsec: o.cpu_nsec,
                    requests: o.requests.or(before.requests),
                    bytes_sent: o.bytes_sent.or(before.bytes_sent),
                },
            );
            let Some(hours) = hours else { continue };
            let gib_hours = |bytes: Option<u64>| bytes.unwrap_or(0) as f64 / GIB * hours;
            samples.push(Sample {
                deployment: o.deployment.clone(),
                sandbox: o.sandbox.clone(),
                cpu_seconds: growth(before.cpu_nsec, o.cpu_nsec) as f64 / 1e9,
                memory_gib_hours: gib_hours(o.memory_bytes),
                disk_bytes: o.disk_bytes.unwrap_or(0),
                disk_gib_hours: gib_hours(o.disk_bytes),
                requests: growth(before.requests, o.requests),
                bytes_out: growth(before.bytes_sent, o.bytes_sent),
            });
        }
        *last = Some(Round { at, counters });
        hours.map(|_| samples)
    }
}

impl Orchestrator {
    /// Samples every deployment's usage when `usage.sample_interval_secs` has passed since
    /// the last sample; `traffic` is the router's answer of this round (none: it gave none).
    #[tracing::instrument(skip_all)]
    pub(crate) async fn sample_usage(&self, traffic: Option<&Traffic>) -> Result<(), Error> {
        let config = &self.config.usage;
        let sampler = &self.upkeep.usage;
        if !sampler.due(Duration::from_secs(config.sample_interval_secs)) {
            return Ok(());
        }
        let observed: Vec<Observed> = self
            .readings()
            .await?
            .iter()
            .map(|r| Observed::of(r, traffic))
            .collect();
        let (at, now) = (Utc::now(), Instant::now());
        let Some(mut samples) = sampler.take(&observed, now) else {
            return Ok(());
        };
        samples.retain(|s| !s.is_empty());
        store::insert(self.state.pool(), at, &samples, config.retention_days)
            .await
            .map_err(StateError::from)?;
        tracing::debug!(deployments = samples.len(), "usage sampled");
        Ok(())
    }

    /// What was used since `since` (default: 24 hours ago), per deployment, per sandbox and
    /// in all, of `sandbox` alone when given, priced at `[usage]`'s prices. Errors:
    /// `Invalid` for a `since` after now, `NotFound` for a sandbox that neither exists nor
    /// has samples in the window.
    #[tracing::instrument(skip(self))]
    pub async fn usage(
        &self,
        sandbox: Option<&SandboxName>,
        since: Option<DateTime<Utc>>,
    ) -> Result<UsageReport, Error> {
        let until = Utc::now();
        let since = since.unwrap_or(until - DEFAULT_WINDOW);
        if since > until {
            return Err(Error::Invalid(format!(
                "since ({}) is after now ({}): give a time in the past",
                since.to_rfc3339(),
                until.to_rfc3339()
            )));
        }
        let rows = store::sums(self.state.pool(), since, sandbox.map(|s| s.as_str()))
            .await
            .map_err(StateError::from)?;
        if let Some(name) = sandbox.filter(|_| rows.is_empty()) {
            if !self.state.sandbox_exists(name).await? {
                return Err(Error::NotFound(format!(
                    "no sandbox {name} (and no usage of one so named since {})",
                    since.to_rfc3339()
                )));
            }
        }
        let config = &self.config.usage;
        let priced = |mut usage: Usage| {
            usage.cost = config.cost(&usage);
            usage
        };
        let mut sandboxes: BTreeMap<String, Usage> = BTreeMap::new();
        let mut total = Usage::default();
        let mut deployments = Vec::with_capacity(rows.len());
        for (sandbox, deployment, usage) in rows {
            let usage = priced(usage);
            sandboxes.entry(sandbox.clone()).or_default().add(&usage);
            total.add(&usage);
            deployments.push(DeploymentUsage {
                sandbox,
                deployment,
                usage,
            });
        }
        Ok(UsageReport {
            since,
            until,
            sample_interval_secs: config.sample_interval_secs,
            currency: config.priced().then(|| config.currency.clone()),
            deployments,
            sandboxes: sandboxes
                .into_iter()
                .map(|(sandbox, usage)| SandboxUsage { sandbox, usage })
                .collect(),
            total: priced(total),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(cpu_nsec: Option<u64>, requests: Option<u64>) -> Observed {
        Observed {
            deployment: "d1".into(),
            sandbox: "web".into(),
            cpu_nsec,
            memory_bytes: cpu_nsec.map(|_| 1 << 30),
            disk_bytes: Some(1 << 20),
            requests,
            bytes_sent: requests.map(|r| r * 100),
        }
    }

    #[test]
    fn samples_are_what_counters_grew_by_and_survive_restarts() {
        let sampler = Sampler::default();
        let t0 = Instant::now();
        // The first round only reads the counters.
        assert_eq!(
            sampler.take(&[observed(Some(5_000_000_000), Some(10))], t0),
            None
        );
        // An hour later: 2 s more CPU, 4 more requests, 1 GiB held for an hour.
        let s = sampler
            .take(
                &[observed(Some(7_000_000_000), Some(14))],
                t0 + Duration::from_secs(3600),
            )
            .unwrap();
        assert_eq!(s.len(), 1);
        assert!((s[0].cpu_seconds - 2.0).abs() < 1e-9, "{s:?}");
        assert!((s[0].memory_gib_hours - 1.0).abs() < 1e-9, "{s:?}");
        assert_eq!((s[0].requests, s[0].bytes_out), (4, 400));
        // The unit and the router started again: counters back near 0 count whole.
        let s = sampler
            .take(
                &[observed(Some(1_000_000_000), Some(3))],
                t0 + Duration::from_secs(7200),
            )
            .unwrap();
        assert!((s[0].cpu_seconds - 1.0).abs() < 1e-9, "{s:?}");
        assert_eq!(s[0].requests, 3);
        // Stopped (idle) and the router silent: no CPU, no memory, no requests; the disk stays.
        let s = sampler
            .take(&[observed(None, None)], t0 + Duration::from_secs(10800))
            .unwrap();
        assert_eq!((s[0].cpu_seconds, s[0].memory_gib_hours), (0.0, 0.0));
        assert_eq!(s[0].requests, 0);
        assert!(s[0].disk_gib_hours > 0.0 && !s[0].is_empty());
        // The router answers again with the count it had: nothing new, not counted twice.
        let s = sampler
            .take(&[observed(None, Some(3))], t0 + Duration::from_secs(14400))
            .unwrap();
        assert_eq!(s[0].requests, 0);
    }
}
