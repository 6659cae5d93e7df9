//! Routes for volumes (`nx volume`). Who may call them: `scopes::POLICY` (a token with the
//! push verb on the sandbox: a volume is part of what a push deploys).

use crate::error::ApiError;
use crate::http_api::{save_body, UploadCap};
use crate::json_body::JsonBody;
use crate::route_table::{delete, get, post, Route};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use nx_orchestrator::api::volumes::{
    CreateVolume, VolumeBackup, VolumeRemoved, VolumeRestored, VolumeView,
};
use nx_orchestrator::names::{SandboxName, VolumeName};
use nx_orchestrator::upload_room::Refused;
use nx_orchestrator::Orchestrator;
use serde::Deserialize;
use std::sync::Arc;

type Shared = State<Arc<Orchestrator>>;
type ApiResult<T> = Result<Json<T>, ApiError>;

/// These routes, for `http_api::table`.
pub fn table() -> Vec<Route> {
    vec![
        get("/v1/sandboxes/{name}/volumes", list),
        post("/v1/sandboxes/{name}/volumes", create),
        delete("/v1/sandboxes/{name}/volumes/{volume}", remove),
        post("/v1/sandboxes/{name}/volumes/{volume}/backups", backup),
        get(
            "/v1/sandboxes/{name}/volumes/{volume}/backups/{id}",
            download,
        ),
        post("/v1/sandboxes/{name}/volumes/{volume}/restore", restore).unlimited_body(),
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

fn names(name: &str, volume: &str) -> Result<(SandboxName, VolumeName), ApiError> {
    Ok((SandboxName::parse(name)?, VolumeName::parse(volume)?))
}

/// Makes a tar archive of the volume, kept on the host.
async fn backup(
    State(app): Shared,
    Path((name, volume)): Path<(String, String)>,
) -> ApiResult<VolumeBackup> {
    let (name, volume) = names(&name, &volume)?;
    Ok(Json(app.backup_volume(&name, &volume).await?))
}

/// A backup kept on the host, streamed (also after `nx sandbox rm`, for its final backups).
async fn download(
    State(app): Shared,
    Path((name, volume, id)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let (name, volume) = names(&name, &volume)?;
    crate::http_api::file_response(&app.volume_backup_path(&name, &volume, &id)?).await
}

#[derive(Deserialize)]
struct RestoreQuery {
    backup: Option<String>,
}

/// Restores from a backup kept on the host (`?backup=ID`) or from a tar archive in the body.
/// Before the body is read: 404 for a sandbox or volume that does not exist, 409 while another
/// restore of the volume, or another restore upload of the sandbox, is under way; the body is cut off with 413 past
/// `restore_max_bytes` of the volume's size.
async fn restore(
    State(app): Shared,
    Path((name, volume)): Path<(String, String)>,
    Query(q): Query<RestoreQuery>,
    body: Body,
) -> ApiResult<VolumeRestored> {
    let (name, volume) = names(&name, &volume)?;
    let max_bytes = app.check_restore(&name, &volume).await?;
    if let Some(id) = q.backup {
        let path = app.volume_backup_path(&name, &volume, &id)?;
        return Ok(Json(app.restore_volume(&name, &volume, &path).await?));
    }
    let wanted = axum::body::HttpBody::size_hint(&body).exact();
    let claim = match app.claim_volume_upload_room(&name, wanted, max_bytes)? {
        Ok(claim) => claim,
        Err(Refused::Busy) => return Err(crate::http_api::upload_under_way(&name)),
        Err(Refused::Room(room)) => return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the archive is larger than the {} MiB nxd's disk has room for now (free space less nxd's {} MiB reserve and other uploads under way): free space on the nxd host, or try again when other uploads are done",
                room >> 20,
                nx_orchestrator::host_limits::DISK_RESERVE_MB
            ),
        )),
    };
    let cap = UploadCap {
        bytes: claim.bytes(),
        refusal: if claim.bytes() == max_bytes {
            nx_orchestrator::api::volumes::restore_too_large(&volume, max_bytes)
        } else {
            format!(
                "the archive is larger than the {} MiB nxd's disk had room for when it began (free space less nxd's reserve and other uploads under way): send its length (Content-Length), or free space on the nxd host",
                claim.bytes() >> 20
            )
        },
    };
    let upload = app.volume_upload_file()?;
    save_body(body, &upload, Some(&cap)).await?;
    Ok(Json(
        app.restore_volume(&name, &volume, upload.path()).await?,
    ))
}
