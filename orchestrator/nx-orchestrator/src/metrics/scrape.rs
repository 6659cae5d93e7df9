//! The series sampled when Prometheus scrapes: a registry built for this scrape alone, so that a
//! removed deployment's series end with it.

use super::DeploymentLabels;
use crate::api::systemd::ActiveState;
use crate::error::Error;
use crate::Orchestrator;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SandboxLabels {
    sandbox: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StartLabels {
    start: &'static str,
}

/// A family registered under `name` in `registry`.
fn family<L, M>(registry: &mut Registry, name: &str, help: &str) -> Family<L, M>
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
    M: prometheus_client::metrics::TypedMetric
        + prometheus_client::encoding::EncodeMetric
        + Default
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let family = Family::<L, M>::default();
    registry.register(name, help, family.clone());
    family
}

impl Orchestrator {
    /// Every series nxd exports, in the Prometheus text format (version 0.0.4): its counters,
    /// then each deployment's unit, `/data` and database, the task pool, then the router's
    /// (`nx_router_up` is 0 while the router does not answer).
    #[tracing::instrument(skip_all)]
    pub async fn metrics_text(&self) -> Result<String, Error> {
        let mut out = String::new();
        self.metrics.encode(&mut out);
        let mut registry = Registry::default();
        let up: Family<DeploymentLabels, Gauge> = family(
            &mut registry,
            "nx_deployment_up",
            "1 while the deployment's unit is active, else 0 (stopped, idle, failed)",
        );
        let cpu: Family<DeploymentLabels, Counter<f64, AtomicU64>> = family(
            &mut registry,
            "nx_deployment_cpu_seconds",
            "CPU time of the deployment's cgroup since its unit started, seconds",
        );
        let memory: Family<DeploymentLabels, Gauge> = family(
            &mut registry,
            "nx_deployment_memory_bytes",
            "Memory of the deployment's cgroup, bytes (page cache included)",
        );
        let tasks: Family<DeploymentLabels, Gauge> = family(
            &mut registry,
            "nx_deployment_tasks",
            "Processes and threads in the deployment's cgroup",
        );
        let restarts: Family<DeploymentLabels, Counter> = family(
            &mut registry,
            "nx_deployment_restarts",
            "Restarts systemd made after the deployment's program failed, since its unit was started",
        );
        let disk: Family<DeploymentLabels, Gauge> = family(
            &mut registry,
            "nx_deployment_disk_used_bytes",
            "Bytes used on the deployment's /data (deployments with a disk limit)",
        );
        let database: Family<SandboxLabels, Gauge> = family(
            &mut registry,
            "nx_sandbox_database_size_bytes",
            "Size of the sandbox's PostgreSQL database, bytes (pg_database_size)",
        );
        let started: Family<StartLabels, Counter> = family(
            &mut registry,
            "nx_tasks_started",
            "Tasks started since nxd started: on a warm unit of the pool, or a cold one",
        );
        let pool_ready = Gauge::<i64>::default();
        registry.register(
            "nx_task_pool_ready",
            "Warm task units ready now",
            pool_ready.clone(),
        );
        let pool_size = Gauge::<i64>::default();
        registry.register(
            "nx_task_pool_size",
            "Warm task units the pool keeps now (tasks.pool_size, grown by demand up to tasks.pool_max)",
            pool_size.clone(),
        );
        let guests_ready = Gauge::<i64>::default();
        registry.register(
            "nx_microvm_pool_ready",
            "microVM guests booted ahead and waiting for a task now",
            guests_ready.clone(),
        );
        let guests_size = Gauge::<i64>::default();
        registry.register(
            "nx_microvm_pool_size",
            "microVM guests the pool keeps booted ahead (microvm.pool_size)",
            guests_size.clone(),
        );
        let router_up = Gauge::<i64>::default();
        registry.register(
            "nx_router_up",
            "1 when the router answered this scrape on its control socket",
            router_up.clone(),
        );

        for reading in self.readings().await? {
            let labels = DeploymentLabels::of(&reading.deployment);
            let state = &reading.state;
            up.get_or_create(&labels)
                .set(i64::from(state.active == ActiveState::Active));
            restarts
                .get_or_create(&labels)
                .inc_by(u64::from(state.restarts));
            if let Some(nsec) = reading.cpu_nsec {
                cpu.get_or_create(&labels).inc_by(nsec as f64 / 1e9);
            }
            if let Some(bytes) = reading.memory_bytes() {
                memory.get_or_create(&labels).set(saturating(bytes));
            }
            if let Some(n) = state.tasks.filter(|_| reading.running()) {
                tasks.get_or_create(&labels).set(saturating(n));
            }
            if let Some(usage) = &reading.disk {
                disk.get_or_create(&labels)
                    .set(saturating(usage.used_bytes));
            }
        }
        for name in self.state.sandbox_names().await? {
            match self.databases.size(&name).await {
                Ok(bytes) => {
                    database
                        .get_or_create(&SandboxLabels {
                            sandbox: name.to_string(),
                        })
                        .set(saturating(bytes));
                }
                Err(e) => tracing::warn!(sandbox = %name, error = %e, "no database size"),
            }
        }
        let stats = self.tasks.stats();
        started
            .get_or_create(&StartLabels { start: "warm" })
            .inc_by(stats.started_warm);
        started
            .get_or_create(&StartLabels { start: "cold" })
            .inc_by(stats.started_cold);
        pool_ready.set(saturating(stats.pool_ready as u64));
        pool_size.set(saturating(stats.pool_size as u64));
        guests_ready.set(saturating(stats.guests_ready as u64));
        guests_size.set(saturating(stats.guests_size as u64));
        let router = self.router.metrics().await;
        router_up.set(i64::from(router.is_ok()));
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
            .expect("writing to a String does not fail");
        match router {
            Ok(text) => out.push_str(&text),
            Err(e) => tracing::warn!(error = %e, "no metrics from the router"),
        }
        Ok(out)
    }
}

fn saturating(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
