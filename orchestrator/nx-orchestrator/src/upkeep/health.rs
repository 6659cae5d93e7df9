//! Health checks: `GET <path>` of each running deployment that has one, every interval; a
//! failure (no answer within the timeout, or a status of 400 and up) is counted
//! (`nx_health_check_failures_total`), and the threshold's number in a row restarts the
//! deployment (systemd's RestartUnit: SIGTERM, then the same unit starts again), noted in its
//! log (`nx logs`, stream `nx`) and counted (`nx_health_check_restarts_total`). After a start
//! or a restart, failures count only once a check has passed or its readiness timeout is over.

use crate::api::systemd::ActiveState;
use crate::api::HealthCheck;
use crate::backend::SandboxBackend;
use crate::config::SandboxDefaults;
use crate::domain::Deployment;
use crate::metrics::DeploymentLabels;
use crate::names::DeploymentId;
use crate::{readiness, Orchestrator};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A deployment's health check with every field resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
}

impl Resolved {
    /// As the API shows it.
    pub fn to_wire(&self) -> HealthCheck {
        HealthCheck {
            path: Some(self.path.clone()),
            interval_secs: Some(self.interval.as_secs()),
            timeout_secs: Some(self.timeout.as_secs()),
            failure_threshold: Some(self.failure_threshold),
        }
    }
}

/// A deployment's own check (its push's fields over its sandbox's) completed from the host's
/// `[sandbox]`; none without a path.
pub fn resolve(own: &HealthCheck, host: &SandboxDefaults) -> Option<Resolved> {
    let interval = own.interval_secs.unwrap_or(host.health_interval_secs);
    Some(Resolved {
        path: own.path.clone().or_else(|| host.health_path.clone())?,
        interval: Duration::from_secs(interval),
        // A host timeout above the deployment's own interval is cut to it.
        timeout: Duration::from_secs(
            own.timeout_secs
                .unwrap_or(host.health_timeout_secs)
                .min(interval),
        ),
        failure_threshold: own
            .failure_threshold
            .unwrap_or(host.health_failure_threshold),
    })
}

/// One deployment's checks so far.
#[derive(Debug)]
struct Record {
    next_at: Instant,
    /// A check is under way.
    asking: bool,
    /// Failures in a row.
    failures: u32,
    /// Since its last (re)start no check has passed: failures do not count until this time.
    grace_until: Option<Instant>,
}

/// Every deployment's record.
#[derive(Debug, Default)]
pub struct Checks {
    records: Mutex<HashMap<DeploymentId, Record>>,
}

/// What a check's outcome leads to.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Healthy,
    /// Failed; not (yet) the threshold's number in a row, or within the grace after a start.
    Failed,
    /// Failed the threshold's number of times in a row: restart it.
    Restart(u32),
}

impl Checks {
    /// Whether a check of `id` is due now (then it is marked under way until [`Checks::done`]).
    pub fn due(&self, id: &DeploymentId, interval: Duration) -> bool {
        let now = Instant::now();
        let mut records = self.records.lock().expect("health lock");
        let record = records.entry(id.clone()).or_insert(Record {
            next_at: now,
            asking: false,
            failures: 0,
            grace_until: None,
        });
        if record.asking || record.next_at > now {
            return false;
        }
        record.asking = true;
        record.next_at = now + interval;
        true
    }

    /// How many deployments have a record.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.records.lock().expect("health lock").len()
    }

    /// `id` was removed: its record goes.
    pub fn forget(&self, id: &DeploymentId) {
        self.records.lock().expect("health lock").remove(id);
    }

    /// A (re)start of `id`: its failures are forgotten.
    pub fn started(&self, id: &DeploymentId) {
        if let Some(record) = self.records.lock().expect("health lock").get_mut(id) {
            record.failures = 0;
        }
    }

    /// Records a check's outcome (`healthy`) against the `threshold` of failures in a row.
    fn done(&self, id: &DeploymentId, healthy: bool, threshold: u32) -> Verdict {
        let mut records = self.records.lock().expect("health lock");
        let Some(record) = records.get_mut(id) else {
            return Verdict::Healthy;
        };
        record.asking = false;
        if healthy {
            record.failures = 0;
            record.grace_until = None;
            return Verdict::Healthy;
        }
        if record
            .grace_until
            .is_some_and(|until| Instant::now() < until)
        {
            return Verdict::Failed;
        }
        record.failures += 1;
        if record.failures < threshold {
            return Verdict::Failed;
        }
        let failures = record.failures;
        record.failures = 0;
        Verdict::Restart(failures)
    }

    /// `id` was restarted: failures do not count for `grace` unless a check passes first.
    fn restarted(&self, id: &DeploymentId, grace: Duration) {
        if let Some(record) = self.records.lock().expect("health lock").get_mut(id) {
            record.grace_until = Some(Instant::now() + grace);
            record.failures = 0;
        }
    }

    /// A check that could not be made (its unit is not active): not a failure.
    fn skipped(&self, id: &DeploymentId) {
        if let Some(record) = self.records.lock().expect("health lock").get_mut(id) {
            record.asking = false;
        }
    }
}

impl Orchestrator {
    /// One check of a running deployment, and the restart it may lead to.
    #[tracing::instrument(skip_all, fields(deployment = %deployment.id, path = %check.path))]
    pub(crate) async fn check_health(&self, deployment: &Deployment, check: &Resolved) {
        let checks = &self.upkeep.health;
        let handle = self.backend.handle(deployment);
        let active = matches!(self.backend.status(&handle).await, Ok(unit) if unit.active == ActiveState::Active);
        if !active {
            checks.skipped(&deployment.id);
            return;
        }
        let failure = match self.upstream(deployment) {
            Ok(addr) => match readiness::get_status(addr, &check.path, check.timeout).await {
                Ok(code) if code < 400 => None,
                Ok(code) => Some(format!("status {code}")),
                Err(e) => Some(e.to_string()),
            },
            Err(e) => Some(e.to_string()),
        };
        let labels = DeploymentLabels::of(deployment);
        let verdict = checks.done(&deployment.id, failure.is_none(), check.failure_threshold);
        let Some(why) = failure else { return };
        self.metrics.health_check_failed(&labels);
        tracing::info!(%why, "health check failed");
        let Verdict::Restart(failures) = verdict else {
            return;
        };
        let message = format!(
            "health check GET {} failed {failures} times in a row (last: {why}): restarting",
            check.path
        );
        tracing::warn!(%message, "restarting an unhealthy deployment");
        crate::logs::append_note(&handle.log_file(), &message);
        self.metrics.health_check_restarted(&labels);
        if let Err(e) = self.supervisor.restart(&handle.unit).await {
            tracing::error!(error = %e, "the restart failed");
        }
        let grace = readiness::timeout(deployment.ready_timeout_secs, &self.config.sandbox);
        checks.restarted(&deployment.id, grace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_in_a_row_restarts_and_a_pass_resets() {
        let checks = Checks::default();
        let id = DeploymentId::parse("d1").unwrap();
        let ask = |healthy| {
            assert!(checks.due(&id, Duration::ZERO));
            checks.done(&id, healthy, 3)
        };
        assert_eq!(ask(false), Verdict::Failed);
        assert_eq!(ask(false), Verdict::Failed);
        assert_eq!(ask(true), Verdict::Healthy);
        assert_eq!(ask(false), Verdict::Failed);
        assert_eq!(ask(false), Verdict::Failed);
        assert_eq!(ask(false), Verdict::Restart(3));
        // Within the grace after the restart, failures do not count; a pass ends the grace.
        checks.restarted(&id, Duration::from_secs(60));
        for _ in 0..5 {
            assert_eq!(ask(false), Verdict::Failed);
        }
        assert_eq!(ask(true), Verdict::Healthy);
        assert_eq!(ask(false), Verdict::Failed);
    }

    #[test]
    fn a_check_is_not_due_while_one_is_under_way_or_before_its_interval() {
        let checks = Checks::default();
        let id = DeploymentId::parse("d1").unwrap();
        assert!(checks.due(&id, Duration::from_secs(60)));
        assert!(!checks.due(&id, Duration::ZERO));
        checks.done(&id, true, 3);
        assert!(
            !checks.due(&id, Duration::ZERO),
            "the interval has not passed"
        );
    }

    #[test]
    fn fields_come_from_the_host_where_the_deployment_names_none() {
        let host = SandboxDefaults {
            health_path: None,
            health_interval_secs: 10,
            health_timeout_secs: 30,
            health_failure_threshold: 3,
            ..Default::default()
        };
        assert_eq!(resolve(&HealthCheck::default(), &host), None);
        let own = HealthCheck {
            path: Some("/healthz".into()),
            interval_secs: Some(2),
            ..Default::default()
        };
        let resolved = resolve(&own, &host).unwrap();
        assert_eq!(resolved.interval, Duration::from_secs(2));
        assert_eq!(
            resolved.timeout,
            Duration::from_secs(2),
            "cut to the interval"
        );
        assert_eq!(resolved.failure_threshold, 3);
    }
}
