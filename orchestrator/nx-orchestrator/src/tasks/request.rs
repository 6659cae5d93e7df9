//! A task request (`POST /v1/tasks`) checked against the config and handed to the task runner;
//! its events come back on a channel as they happen.

use super::TaskRun;
use crate::api::{checks, TaskEvent, TaskRequest};
use crate::domain::BackendKind;
use crate::error::Error;
use crate::host_limits;
use crate::Orchestrator;
use std::time::Duration;
use tokio::sync::mpsc;

fn timeout(app: &Orchestrator, asked: Option<f64>) -> Result<Duration, Error> {
    let max = app.config.tasks.max_timeout_secs;
    let secs = asked.unwrap_or(app.config.tasks.default_timeout_secs as f64);
    if !(secs > 0.0 && secs <= max as f64) {
        return Err(Error::Invalid(format!(
            "timeout {secs} s is out of range: give more than 0 and at most {max} s (tasks.max_timeout_secs)"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn backend(app: &Orchestrator, asked: Option<&str>) -> Result<BackendKind, Error> {
    let kind = match asked {
        None => BackendKind::Container,
        Some(name) => name.parse().map_err(|_| {
            Error::Invalid(format!(
                "backend {name:?} is not one of: container, microvm"
            ))
        })?,
    };
    app.backend(kind)?;
    Ok(kind)
}

impl Orchestrator {
    /// Runs a task once for `caller` (how the API names who asked: `token <id>` or `the root
    /// token`); the receiver gets `started`, its output, then `exited`. Errors: `Invalid` for a
    /// bad request, `Task(CallerAtCap)` when the caller runs `tasks.max_concurrent_per_token`
    /// tasks already. `held` (from [`Orchestrator::admit_program`]) keeps its program from the
    /// store's collection until the task has ended.
    #[tracing::instrument(skip_all, fields(artifact = %req.artifact, %caller))]
    pub async fn run_task(
        &self,
        req: TaskRequest,
        caller: &str,
        held: crate::artifact::holds::Hold,
    ) -> Result<mpsc::Receiver<TaskEvent>, Error> {
        let app = self;
        let backend = backend(app, req.backend.as_deref())?;
        let timeout = timeout(app, req.timeout_secs)?;
        let bounds = host_limits::request_bounds(&app.config);
        checks::check_program_input(&req.args, &req.env, &bounds)?;
        let memory_max_mb = req
            .memory_max_mb
            .unwrap_or(app.config.tasks.limits.memory_max_mb);
        checks::check_memory("memory_max_mb", memory_max_mb, backend, &bounds)?;
        let program = app.program(&req.artifact).await?;
        let mut env = std::collections::BTreeMap::from([
            ("PATH".to_string(), "/usr/bin:/bin".to_string()),
            ("HOME".to_string(), "/tmp".to_string()),
        ]);
        if let crate::backend::Program::Bundle { manifest, .. } = &program {
            env.extend(crate::backend::bundle_env(manifest));
        }
        env.extend(req.env);
        Ok(app
            .tasks
            .run(TaskRun {
                program,
                held,
                args: req.args,
                env,
                timeout,
                memory_max_mb,
                backend,
                caller: caller.to_owned(),
            })
            .await?)
    }
}
