//! Routes for volumes (`nx volume`). Who may call them: `scopes::POLICY` (a token with the
//! push verb on the sandbox: a volume is part of what a push deploys).

use crate::error::ApiError;
use crate::json_body::JsonBody;
use crate::route_table::{delete, get, post, Route};
use axum::extract::{Path, State};
use axum::Json;
use nx_orchestrator::api::volumes::{CreateVolume, VolumeRemoved, VolumeView};
use nx_orchestrator::names::{SandboxName, VolumeName};
use nx_orchestrator::Orchestrator;
use std::sync::Arc;

type Shared = State<Arc<Orchestrator>>;
type ApiResult<T> = Result<Json<T>, ApiError>;

/// These routes, for `http_api::table`.
pub fn table() -> Vec<Route> {
    vec![
        get("/v1/sandboxes/{name}/volumes", list),
        post("/v1/sandboxes/{name}/volumes", create),
        delete("/v1/sandboxes/{name}/volumes/{volume}", remove),
    ]
}

async fn list(State(app): Shared, Path(name): Path<String>) -> ApiResult<Vec<VolumeView>> {
    let name = SandboxName::parse(&name)?;
    Ok(Json(app.volumes(&name).await?))
}

async fn create(
    State(app): Shared,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<CreateVolume>,
) -> ApiResult<VolumeView> {
    let name = SandboxName::parse(&name)?;
    Ok(Json(app.create_volume(&name, &req).await?))
}

async fn remove(
    State(app): Shared,
    Path((name, volume)): Path<(String, String)>,
) -> ApiResult<VolumeRemoved> {
    let name = SandboxName::parse(&name)?;
    let volume = VolumeName::parse(&volume)?;
    app.remove_volume(&name, &volume).await?;
    Ok(Json(VolumeRemoved { removed: volume }))
}
