//! nxd's Prometheus metrics (prometheus-client, the Prometheus project's Rust client), served
//! as the Prometheus text format (version 0.0.4) at `GET /metrics`.
//!
//! Two kinds of series: events nxd counts as they happen ([`Metrics`]: operations and their
//! durations, health-check failures and restarts, idle stops and wakes), and state sampled at
//! each scrape (`scrape`: every deployment's unit from systemd, its `/data`, every sandbox's
//! database, the warm task pool, and the router's own series from its control socket).

pub(crate) mod readings;
mod scrape;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Instant;

/// The `Content-Type` of `GET /metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A lifecycle verb whose count and duration nxd records.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Operation {
    Push,
    Promote,
    Rollback,
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
}

impl EncodeLabelValue for Operation {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        let name = match self {
            Self::Push => "push",
            Self::Promote => "promote",
            Self::Rollback => "rollback",
        };
        EncodeLabelValue::encode(&name, encoder)
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        let name = match self {
            Self::Ok => "ok",
            Self::Error => "error",
        };
        EncodeLabelValue::encode(&name, encoder)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: Operation,
    outcome: Outcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationKind {
    operation: Operation,
}

/// The labels of a deployment's series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeploymentLabels {
    pub sandbox: String,
    pub deployment: String,
    pub backend: String,
}

impl DeploymentLabels {
    /// The labels of `deployment`.
    pub fn of(deployment: &crate::domain::Deployment) -> Self {
        Self {
            sandbox: deployment.sandbox.to_string(),
            deployment: deployment.id.to_string(),
            backend: deployment.backend.to_string(),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SandboxLabel {
    sandbox: String,
}

/// The events nxd counts, registered once; clones share the same series.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    operations: Family<OperationLabels, Counter>,
    durations: Family<OperationKind, Histogram>,
    health_failures: Family<DeploymentLabels, Counter>,
    health_restarts: Family<DeploymentLabels, Counter>,
    idle_stops: Family<DeploymentLabels, Counter>,
    wakes: Family<DeploymentLabels, Counter>,
    wake_durations: Histogram,
    wake_steps: StepDurations,
    task_steps: StepDurations,
    expired: Family<SandboxLabel, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    step: String,
}

/// 1 ms to about 16 s: most wakes take tens of milliseconds.
fn wake_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// 0.1 ms to about 26 s: a task's steps take from microseconds (a warm unit taken from the
/// pool) to its whole run.
fn task_step_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

/// How long each step of one kind of work took: a histogram per step (label `step`), in
/// seconds. Clones share the same series.
#[derive(Debug, Clone)]
pub struct StepDurations(Family<StepLabel, Histogram>);

impl StepDurations {
    fn new(buckets: fn() -> Histogram) -> Self {
        Self(Family::new_with_constructor(buckets))
    }

    /// One step `step` that took `took`.
    pub fn observe(&self, step: &str, took: std::time::Duration) {
        self.0
            .get_or_create(&StepLabel {
                step: step.to_owned(),
            })
            .observe(took.as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let operations = Family::<OperationLabels, Counter>::default();
        registry.register(
            "nx_operations",
            "Lifecycle operations (push, promote, rollback) by outcome",
            operations.clone(),
        );
        // 10 ms to about 164 s: a rollback is a route swap, a push waits for readiness.
        let durations = Family::<OperationKind, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.01, 2.0, 15))) as fn() -> Histogram,
        );
        registry.register(
            "nx_operation_duration_seconds",
            "How long lifecycle operations took, seconds",
            durations.clone(),
        );
        let health_failures = Family::<DeploymentLabels, Counter>::default();
        registry.register(
            "nx_health_check_failures",
            "Health checks of a deployment that failed (no answer in time, or a status of 400 and up)",
            health_failures.clone(),
        );
        let health_restarts = Family::<DeploymentLabels, Counter>::default();
        registry.register(
            "nx_health_check_restarts",
            "Restarts of a deployment after its health check failed the threshold's number of times in a row",
            health_restarts.clone(),
        );
        let idle_stops = Family::<DeploymentLabels, Counter>::default();
        registry.register(
            "nx_idle_stops",
            "Deployments stopped after their idle timeout passed with no request (scale to zero)",
            idle_stops.clone(),
        );
        let wakes = Family::<DeploymentLabels, Counter>::default();
        registry.register(
            "nx_wakes",
            "Idle deployments started again by a request",
            wakes.clone(),
        );
        let wake_durations = wake_buckets();
        registry.register(
            "nx_wake_duration_seconds",
            "How long nxd took to wake an idle deployment, from the router's ask to the deployment ready, seconds",
            wake_durations.clone(),
        );
        let wake_steps = StepDurations::new(wake_buckets);
        registry.register(
            "nx_wake_step_duration_seconds",
            "How long each step of a wake took (record, phase, desired, spec, prepare, start, ready), seconds",
            wake_steps.0.clone(),
        );
        let task_steps = StepDurations::new(task_step_buckets);
        registry.register(
            "nx_task_step_duration_seconds",
            "How long each step of a task took, seconds: take (a warm unit from the pool) or start (a cold one), spec, handover, first_output (launcher, bubblewrap's setup, the program until its first byte), output_end (until systemd closed the unit's streams), exit (the unit's end state), cleanup, task (all of them); and refill (a unit started for the pool, in the background)",
            task_steps.0.clone(),
        );
        let expired = Family::<SandboxLabel, Counter>::default();
        registry.register(
            "nx_previews_expired",
            "Previews removed after no request for their sandbox's time to live",
            expired.clone(),
        );
        Self {
            registry,
            operations,
            durations,
            health_failures,
            health_restarts,
            idle_stops,
            wakes,
            wake_durations,
            wake_steps,
            task_steps,
            expired,
        }
    }
}

impl Metrics {
    /// Starts timing `operation`; it counts as an error unless [`OperationTimer::succeeded`]
    /// is called before the timer is dropped.
    pub fn time(&self, operation: Operation) -> OperationTimer<'_> {
        OperationTimer {
            metrics: self,
            operation,
            started: Instant::now(),
            outcome: Outcome::Error,
        }
    }

    /// One failed health check of a deployment.
    pub fn health_check_failed(&self, labels: &DeploymentLabels) {
        self.health_failures.get_or_create(labels).inc();
    }

    /// One restart after the failure threshold.
    pub fn health_check_restarted(&self, labels: &DeploymentLabels) {
        self.health_restarts.get_or_create(labels).inc();
    }

    /// A deployment stopped for being idle.
    pub fn idle_stopped(&self, labels: &DeploymentLabels) {
        self.idle_stops.get_or_create(labels).inc();
    }

    /// An idle deployment started again by a request.
    pub fn woken(&self, labels: &DeploymentLabels) {
        self.wakes.get_or_create(labels).inc();
    }

    /// A wake that took `took` in all, in `steps` (see [`crate::timing`]).
    pub fn wake_took(&self, took: std::time::Duration, steps: &crate::timing::Steps) {
        self.wake_durations.observe(took.as_secs_f64());
        for (step, took) in &steps.0 {
            self.wake_steps.observe(step, *took);
        }
    }

    /// Where tasks' steps are recorded (`nx_task_step_duration_seconds`).
    pub fn task_steps(&self) -> StepDurations {
        self.task_steps.clone()
    }

    /// A preview of `sandbox` removed after its time to live.
    pub fn preview_expired(&self, sandbox: &str) {
        self.expired
            .get_or_create(&SandboxLabel {
                sandbox: sandbox.to_owned(),
            })
            .inc();
    }

    /// Forgets a removed deployment's event series.
    pub fn forget(&self, labels: &DeploymentLabels) {
        self.health_failures.remove(labels);
        self.health_restarts.remove(labels);
        self.idle_stops.remove(labels);
        self.wakes.remove(labels);
    }

    /// The event series, Prometheus text format.
    fn encode(&self, out: &mut String) {
        prometheus_client::encoding::prometheus_text::encode(out, &self.registry)
            .expect("writing to a String does not fail");
    }
}

/// Records an operation's duration and outcome when dropped.
pub struct OperationTimer<'a> {
    metrics: &'a Metrics,
    operation: Operation,
    started: Instant,
    outcome: Outcome,
}

impl OperationTimer<'_> {
    /// The operation succeeded.
    pub fn succeeded(&mut self) {
        self.outcome = Outcome::Ok;
    }
}

impl Drop for OperationTimer<'_> {
    fn drop(&mut self) {
        let operation = self.operation;
        self.metrics
            .operations
            .get_or_create(&OperationLabels {
                operation,
                outcome: self.outcome,
            })
            .inc();
        self.metrics
            .durations
            .get_or_create(&OperationKind { operation })
            .observe(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_counted_by_outcome_and_timed() {
        let metrics = Metrics::default();
        metrics.time(Operation::Push).succeeded();
        drop(metrics.time(Operation::Push));
        let mut text = String::new();
        metrics.encode(&mut text);
        assert!(
            text.contains("nx_operations_total{operation=\"push\",outcome=\"ok\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("nx_operations_total{operation=\"push\",outcome=\"error\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("nx_operation_duration_seconds_count{operation=\"push\"} 2\n"),
            "{text}"
        );
    }
}
