//! Routes for usage and cost attribution (`nx usage`): every sandbox's, or one sandbox's.
//! Who may call them: `scopes::POLICY`.

use crate::error::ApiError;
use crate::http_api::since_param;
use crate::route_table::{get, Route};
use axum::extract::{Path, Query, State};
use axum::Json;
use nx_orchestrator::api::usage::UsageReport;
use nx_orchestrator::names::SandboxName;
use nx_orchestrator::Orchestrator;
use serde::Deserialize;
use std::sync::Arc;

type Shared = State<Arc<Orchestrator>>;
type ApiResult<T> = Result<Json<T>, ApiError>;

/// These routes, for `http_api::table`.
pub fn table() -> Vec<Route> {
    vec![
        get("/v1/usage", all),
        get("/v1/sandboxes/{name}/usage", of_sandbox),
    ]
}

/// `?since=<RFC 3339 time>`, checked by `since_param` (so that a bad one gets nxd's error).
#[derive(Deserialize)]
struct UsageParams {
    since: Option<String>,
}

async fn all(State(app): Shared, Query(q): Query<UsageParams>) -> ApiResult<UsageReport> {
    let since = since_param(q.since.as_deref())?;
    Ok(Json(app.usage(None, since).await?))
}

async fn of_sandbox(
    State(app): Shared,
    Path(name): Path<String>,
    Query(q): Query<UsageParams>,
) -> ApiResult<UsageReport> {
    let name = SandboxName::parse(&name)?;
    let since = since_param(q.since.as_deref())?;
    Ok(Json(app.usage(Some(&name), since).await?))
}
