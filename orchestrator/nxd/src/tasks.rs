//! `POST /v1/tasks`: checks a task request against the config and hands it to the orchestrator's
//! task runner; the answer streams the task's events as newline-delimited JSON.

use crate::app::App;
use crate::error::ApiError;
use nx_orchestrator::api::{TaskEvent, TaskRequest};
use nx_orchestrator::domain::{check_env_name, BackendKind};
use nx_orchestrator::tasks::{TaskError, TaskRun};
use std::time::Duration;
use tokio::sync::mpsc;

/// The smallest memory limit a task may ask for.
const MIN_MEMORY_MB: u64 = 8;

impl From<TaskError> for ApiError {
    fn from(e: TaskError) -> Self {
        Self::internal(e)
    }
}

fn timeout(app: &App, asked: Option<f64>) -> Result<Duration, ApiError> {
    let max = app.config.tasks.max_timeout_secs;
    let secs = asked.unwrap_or(app.config.tasks.default_timeout_secs as f64);
    if !(secs > 0.0 && secs <= max as f64) {
        return Err(ApiError::bad_request(format!(
            "timeout {secs} s is out of range: give more than 0 and at most {max} s (tasks.max_timeout_secs)"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn backend(app: &App, asked: Option<&str>) -> Result<BackendKind, ApiError> {
    let kind = match asked {
        None => BackendKind::Container,
        Some(name) => BackendKind::parse(name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "backend {name:?} is not one of: container, microvm"
            ))
        })?,
    };
    app.backend(kind)?;
    Ok(kind)
}

#[tracing::instrument(skip_all, fields(artifact = %req.artifact))]
pub async fn run(app: &App, req: TaskRequest) -> Result<mpsc::Receiver<TaskEvent>, ApiError> {
    let backend = backend(app, req.backend.as_deref())?;
    let timeout = timeout(app, req.timeout_secs)?;
    for name in req.env.keys() {
        check_env_name(name).map_err(ApiError::bad_request)?;
    }
    let memory_max_mb = req
        .memory_max_mb
        .unwrap_or(app.config.tasks.limits.memory_max_mb);
    if memory_max_mb < MIN_MEMORY_MB {
        return Err(ApiError::bad_request(format!(
            "memory {memory_max_mb} MiB is too little: give at least {MIN_MEMORY_MB} MiB"
        )));
    }
    let program = app.program(&req.artifact).await?;
    let mut env = std::collections::BTreeMap::from([
        ("PATH".to_string(), "/usr/bin:/bin".to_string()),
        ("HOME".to_string(), "/tmp".to_string()),
    ]);
    env.extend(req.env);
    Ok(app
        .tasks
        .run(TaskRun {
            program,
            args: req.args,
            env,
            timeout,
            memory_max_mb,
            backend,
        })
        .await?)
}
