//! nxd's JSON HTTP API. Every route needs `Authorization: Bearer <token>`: the root token or a
//! deploy token whose scope covers the route (`scopes`); 401 without one, 403 outside its scope.

use crate::auth::Token;
use crate::error::ApiError;
use crate::json_body::{JsonBody, ManifestBody};
use crate::route_table::{self, delete, get, post, put, Route};
use crate::scopes::Caller;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use futures_util::StreamExt;
use nx_orchestrator::api::{
    ArtifactInfo, BackupRemoved, BlobDigests, BundleInfo, CreateSandbox, DatabaseInfo,
    DeploymentRemoved, DeploymentView, Health, PromoteRequest, PushRequest, SandboxRemoved,
    SandboxView, TaskRequest,
};
use nx_orchestrator::artifact::bundle::BundleManifest;
use nx_orchestrator::artifact::owners::Content;
use nx_orchestrator::databases::{BackupInfo, RestoreInfo};
use nx_orchestrator::names::{DeploymentId, SandboxName};
use nx_orchestrator::upload_room::Refused;
use nx_orchestrator::Orchestrator;
use serde::Deserialize;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

type Shared = State<Arc<Orchestrator>>;
type ApiResult<T> = Result<Json<T>, ApiError>;
/// W3C Server Timing's response header.
const SERVER_TIMING: header::HeaderName = header::HeaderName::from_static("server-timing");

/// Every route of the API (`route_table`; `openapi.yaml` documents each).
pub fn table() -> Vec<Route> {
    let mut routes = vec![
        get("/v1/health", health),
        get("/metrics", crate::metrics_api::metrics),
        get("/v1/artifacts/{sha256}", artifact),
        put("/v1/artifacts/{sha256}", upload).unlimited_body(),
        get("/v1/blobs/{sha256}", blob),
        put("/v1/blobs/{sha256}", upload_blob).unlimited_body(),
        post("/v1/blobs/missing", missing_blobs).unlimited_body(),
        post("/v1/bundles", create_bundle).unlimited_body(),
        post("/v1/deployments", push),
        delete("/v1/deployments/{id}", remove),
        post("/v1/deployments/{id}/stop", stop),
        post("/v1/deployments/{id}/start", start),
        post("/v1/deployments/{id}/pin", pin),
        delete("/v1/deployments/{id}/pin", unpin),
        get("/v1/deployments/{id}/logs", logs),
        get("/v1/sandboxes", sandboxes),
        post("/v1/sandboxes", create_sandbox),
        get("/v1/sandboxes/{name}", sandbox),
        delete("/v1/sandboxes/{name}", remove_sandbox),
        get("/v1/sandboxes/{name}/db", database),
        get("/v1/sandboxes/{name}/db/backups", backups),
        post("/v1/sandboxes/{name}/db/backups", backup),
        get("/v1/sandboxes/{name}/db/backups/{id}", download_backup),
        delete("/v1/sandboxes/{name}/db/backups/{id}", remove_backup),
        post("/v1/sandboxes/{name}/db/restore", restore).unlimited_body(),
        post("/v1/tasks", run_task),
        post("/v1/sandboxes/{name}/promote", promote),
        post("/v1/sandboxes/{name}/rollback", rollback),
    ];
    routes.extend(crate::access_api::table());
    routes.extend(crate::domains_api::table());
    routes.extend(crate::volumes_api::table());
    routes.extend(crate::usage_api::table());
    routes
}

/// The API's router: every route of [`table`] behind `scopes::authorize`, each request's body
/// under `api_body_timeout_secs` (`request_body`), each handler run to its end.
pub fn routes(app: Arc<Orchestrator>, token: Token) -> Router {
    let body_timeout = std::time::Duration::from_secs(app.config.api_body_timeout_secs);
    route_table::router(table())
        .route_layer(middleware::from_fn_with_state(
            (Arc::clone(&app), token),
            crate::scopes::authorize,
        ))
        .layer(middleware::from_fn_with_state(
            body_timeout,
            crate::request_body::bounded,
        ))
        .layer(middleware::from_fn(run_to_its_end))
        .with_state(app)
}

/// Runs each request's handler in a task of its own, so that a lifecycle step (a promotion, a
/// restore, a push) is never cut half-way because its client went away: hyper drops a
/// request's future when its connection closes, a spawned task runs on, and only its answer is
/// lost. A handler that panics answers 500. (A streamed body, e.g. `nx logs -f`, still ends
/// with its connection: it is the response, not the handler.)
async fn run_to_its_end(request: axum::extract::Request, next: middleware::Next) -> Response {
    let path = request.uri().path().to_owned();
    match tokio::spawn(next.run(request)).await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(%path, error = %e, "a request's handler panicked");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "nxd failed on this request; its log (`nxd` output) says why",
            )
                .into_response()
        }
    }
}

/// 200 when nxd can serve; 503 with the problem while it cannot (e.g. its manager died).
async fn health(State(app): Shared) -> (StatusCode, Json<Health>) {
    let problem = app.problem().await;
    let status = match problem {
        None => StatusCode::OK,
        Some(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let health = Health {
        ok: problem.is_none(),
        backend: app.backend_kind().to_owned(),
        problem,
    };
    (status, Json(health))
}

/// Runs a task; the body streams its events, one JSON object per line, as they happen.
async fn run_task(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<TaskRequest>,
) -> Result<Response, ApiError> {
    let held = app
        .admit_program(&caller.store_view(), &req.artifact)
        .await?;
    let events = app.run_task(req, &caller.name(), held).await?;
    let lines = futures_util::stream::unfold(events, |mut events| async move {
        let event = events.recv().await?;
        let mut line = serde_json::to_vec(&event).expect("events serialise");
        line.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(line), events))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(lines))
        .map_err(ApiError::internal)
}

/// The routes of the content store answer from the caller's view of it
/// ([`Caller::store_view`]): a scoped token's sandbox sees only what it owns.
async fn artifact(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    Path(sha): Path<String>,
) -> ApiResult<ArtifactInfo> {
    Ok(Json(app.artifact_info(&caller.store_view(), &sha).await?))
}

async fn upload(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    Path(sha): Path<String>,
    body: Body,
) -> ApiResult<ArtifactInfo> {
    let view = caller.store_view();
    // Its Content-Length, reserved under its owner before the body comes.
    let declared = axum::body::HttpBody::size_hint(&body).exact();
    Ok(Json(
        app.upload(
            &view,
            Content::Artifact,
            &sha,
            body.into_data_stream(),
            declared,
        )
        .await?,
    ))
}

async fn blob(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    Path(sha): Path<String>,
) -> ApiResult<ArtifactInfo> {
    Ok(Json(app.blob_info(&caller.store_view(), &sha).await?))
}

async fn upload_blob(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    Path(sha): Path<String>,
    body: Body,
) -> ApiResult<ArtifactInfo> {
    let view = caller.store_view();
    // Its Content-Length, reserved under its owner before the body comes.
    let declared = axum::body::HttpBody::size_hint(&body).exact();
    Ok(Json(
        app.upload(
            &view,
            Content::Blob,
            &sha,
            body.into_data_stream(),
            declared,
        )
        .await?,
    ))
}

async fn missing_blobs(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    ManifestBody(req): ManifestBody<BlobDigests>,
) -> ApiResult<BlobDigests> {
    Ok(Json(BlobDigests {
        sha256: app.missing_blobs(&caller.store_view(), &req.sha256).await?,
    }))
}

async fn create_bundle(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    ManifestBody(manifest): ManifestBody<BundleManifest>,
) -> ApiResult<BundleInfo> {
    Ok(Json(
        app.create_bundle(&caller.store_view(), manifest).await?,
    ))
}

/// Answers the deployment with a `Server-Timing` header: the push's steps and their durations
/// (see `nx_orchestrator::timing`).
async fn push(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<PushRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let store_view = caller.store_view();
    // Held from the store's collection until the deployment is recorded (and granted).
    let _held = app.admit_program(&store_view, &req.artifact).await?;
    let (view, steps) = nx_orchestrator::timing::collect(app.push(req, &store_view)).await;
    let view = view?;
    let timing = [(SERVER_TIMING, steps.server_timing())];
    Ok((timing, Json::<DeploymentView>(view)))
}

fn deployment_id(id: &str) -> Result<DeploymentId, ApiError> {
    Ok(DeploymentId::parse(id)?)
}

fn sandbox_name(name: &str) -> Result<SandboxName, ApiError> {
    Ok(SandboxName::parse(name)?)
}

async fn remove(State(app): Shared, Path(id): Path<String>) -> ApiResult<DeploymentRemoved> {
    let id = deployment_id(&id)?;
    app.remove(&id).await?;
    Ok(Json(DeploymentRemoved { removed: id }))
}

#[derive(Deserialize)]
struct StopQuery {
    /// Seconds between SIGTERM and SIGKILL (default 10).
    timeout_secs: Option<u64>,
}

async fn stop(
    State(app): Shared,
    Path(id): Path<String>,
    Query(q): Query<StopQuery>,
) -> ApiResult<DeploymentView> {
    let timeout = q.timeout_secs.map(std::time::Duration::from_secs);
    Ok(Json(app.stop(&deployment_id(&id)?, timeout).await?))
}

async fn start(State(app): Shared, Path(id): Path<String>) -> ApiResult<DeploymentView> {
    Ok(Json(app.start_deployment(&deployment_id(&id)?).await?))
}

/// `nx pin`: the preview stays past its sandbox's time to live.
async fn pin(State(app): Shared, Path(id): Path<String>) -> ApiResult<DeploymentView> {
    Ok(Json(app.pin(&deployment_id(&id)?, true).await?))
}

/// `nx unpin`: the preview expires again with no request for its time to live.
async fn unpin(State(app): Shared, Path(id): Path<String>) -> ApiResult<DeploymentView> {
    Ok(Json(app.pin(&deployment_id(&id)?, false).await?))
}

/// The `since` query parameter of `logs` and `usage`: an RFC 3339 time; 400 otherwise.
pub(crate) fn since_param(
    since: Option<&str>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    match since.map(chrono::DateTime::parse_from_rfc3339) {
        Some(Ok(t)) => Ok(Some(t.with_timezone(&chrono::Utc))),
        Some(Err(e)) => Err(ApiError::bad_request(format!(
            "since must be an RFC 3339 time such as 2026-11-30T03:00:00Z: {e}"
        ))),
        None => Ok(None),
    }
}

async fn logs(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<nx_orchestrator::api::LogsQuery>,
) -> Result<Response, ApiError> {
    let id = deployment_id(&id)?;
    let path = app.log_file(&id).await?;
    let since = since_param(q.since.as_deref())?;
    let query = nx_orchestrator::logs::reader::Query {
        lines: q.lines.or(if since.is_some() { None } else { Some(100) }),
        since,
        follow: q.follow,
    };
    let json = q.format.as_deref() == Some("json");
    let still = crate::scopes::still_followed(app, caller, &headers, id);
    let body = Body::from_stream(nx_orchestrator::logs::stream(path, query, json, still));
    let content_type = if json {
        "application/x-ndjson"
    } else {
        "text/plain; charset=utf-8"
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// `nx ls`: a JSON array of `SandboxView`s, about 1 KB per deployment on the host, kept
/// serialized between requests while nothing it shows changed (`Orchestrator::sandboxes_json`).
async fn sandboxes(State(app): Shared) -> Result<Response, ApiError> {
    let json = header::HeaderValue::from_static("application/json");
    Ok(([(header::CONTENT_TYPE, json)], app.sandboxes_json().await?).into_response())
}

async fn sandbox(State(app): Shared, Path(name): Path<String>) -> ApiResult<SandboxView> {
    Ok(Json(app.sandbox(&sandbox_name(&name)?).await?))
}

async fn promote(
    State(app): Shared,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<PromoteRequest>,
) -> ApiResult<SandboxView> {
    Ok(Json(
        app.promote(&sandbox_name(&name)?, &req.deployment, req.swap_db)
            .await?,
    ))
}

async fn rollback(State(app): Shared, Path(name): Path<String>) -> ApiResult<SandboxView> {
    Ok(Json(app.rollback(&sandbox_name(&name)?).await?))
}

async fn create_sandbox(
    State(app): Shared,
    JsonBody(req): JsonBody<CreateSandbox>,
) -> ApiResult<SandboxView> {
    Ok(Json(app.create_sandbox(&req.name, req.backend).await?))
}

#[derive(Deserialize)]
struct RemoveQuery {
    #[serde(default = "yes")]
    backup: bool,
}

fn yes() -> bool {
    true
}

async fn remove_sandbox(
    State(app): Shared,
    Path(name): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> ApiResult<SandboxRemoved> {
    let name = sandbox_name(&name)?;
    let removed = app.remove_sandbox(&name, q.backup).await?;
    if let Err(e) = crate::sftp::area::remove(&app.config.state_dir, &name) {
        tracing::warn!(sandbox = %name, error = %e, "the sandbox's SFTP result files stay");
    }
    Ok(Json(removed))
}

async fn database(State(app): Shared, Path(name): Path<String>) -> ApiResult<DatabaseInfo> {
    let name = sandbox_name(&name)?;
    app.existing(&name).await?;
    let creds = app.databases.ensure_sandbox(&name).await?;
    Ok(Json(DatabaseInfo {
        size_bytes: app.databases.size(&name).await?,
        max_size_bytes: app.databases.max_size(&name).await?,
        connection_limit: app.databases.policy().connection_limit,
        url: app.databases.host_url(&creds),
        sandbox_url: app.databases.sandbox_url(&creds),
        database: creds.database,
        role: creds.role,
        sandbox: name,
    }))
}

async fn backups(State(app): Shared, Path(name): Path<String>) -> ApiResult<Vec<BackupInfo>> {
    let name = sandbox_name(&name)?;
    app.existing(&name).await?;
    Ok(Json(app.databases.backups(&name)?))
}

async fn backup(State(app): Shared, Path(name): Path<String>) -> ApiResult<BackupInfo> {
    let name = sandbox_name(&name)?;
    app.existing(&name).await?;
    Ok(Json(app.databases.backup(&name).await?))
}

async fn download_backup(
    State(app): Shared,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let path = app.databases.backup_path(&sandbox_name(&name)?, &id)?;
    file_response(&path).await
}

/// A file on the host as a streamed answer (application/octet-stream, its Content-Length).
pub(crate) async fn file_response(path: &std::path::Path) -> Result<Response, ApiError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(ApiError::internal)?;
    let size = file.metadata().await.map_err(ApiError::internal)?.len();
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        body,
    )
        .into_response())
}

async fn remove_backup(
    State(app): Shared,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult<BackupRemoved> {
    app.databases.rm_backup(&sandbox_name(&name)?, &id)?;
    Ok(Json(BackupRemoved { removed: id }))
}

#[derive(Deserialize)]
struct RestoreQuery {
    backup: Option<String>,
}

/// 409 for a restore upload of `sandbox` while it has one under way (`upload_room::claim`).
pub(crate) fn upload_under_way(sandbox: &SandboxName) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        format!(
            "sandbox {sandbox} has a restore upload under way (a database dump or a volume archive): a sandbox sends one at a time, so that its uploads cannot claim the room every other sandbox's restore needs; try again when it is done, or restore a backup kept on the host by its ID"
        ),
    )
}

/// Restores from a backup kept on the host (`?backup=ID`) or from a dump in the body. Before
/// the body is read: 404 for a sandbox that does not exist, 409 while the sandbox has another
/// restore upload under way; the body is cut off with 413 past
/// twice the sandbox's database disk, or past the room where uploads are kept less nxd's
/// reserve and what other uploads under way claimed (`Databases::claim_upload_room`).
async fn restore(
    State(app): Shared,
    Path(name): Path<String>,
    Query(q): Query<RestoreQuery>,
    body: Body,
) -> ApiResult<RestoreInfo> {
    let name = sandbox_name(&name)?;
    app.existing(&name).await?;
    if let Some(id) = q.backup {
        let path = app.databases.backup_path(&name, &id)?;
        return Ok(Json(app.restore(&name, &path).await?));
    }
    let wanted = axum::body::HttpBody::size_hint(&body).exact();
    let claim = match app.databases.claim_upload_room(&name, wanted)? {
        Ok(claim) => claim,
        Err(Refused::Busy) => return Err(upload_under_way(&name)),
        Err(Refused::Room(room)) => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the dump is larger than the {} MiB nxd's disk has room for now (free space less nxd's {} MiB reserve and other uploads under way): free space on the nxd host, try again when other uploads are done, or restore a backup kept there (`nx db backups {name}`, `nx db restore {name} ID`)",
                    room >> 20,
                    nx_orchestrator::host_limits::DISK_RESERVE_MB
                ),
            ))
        }
    };
    let bound = app.databases.restore_upload_bound();
    let cap = UploadCap {
        bytes: claim.bytes(),
        refusal: if claim.bytes() == bound {
            format!(
                "the dump is larger than {} MiB, twice the sandbox's database disk (databases.max_size_mb) and 1 MiB: it cannot be one of a database that fits there",
                bound >> 20
            )
        } else {
            format!(
                "the dump is larger than the {} MiB nxd's disk had room for when it began (free space less nxd's reserve and other uploads under way): send its length (Content-Length), free space on the nxd host, or restore a backup kept there (`nx db backups {name}`, `nx db restore {name} ID`)",
                claim.bytes() >> 20
            )
        },
    };
    let upload = app.databases.upload_file()?;
    save_body(body, &upload, Some(&cap)).await?;
    Ok(Json(app.restore(&name, upload.path()).await?))
}

/// The most bytes an upload may hold, and what the refusal (413 Content Too Large) says.
pub(crate) struct UploadCap {
    /// The largest body taken, in bytes.
    pub bytes: u64,
    /// The 413's error text: what was too large and what to do.
    pub refusal: String,
}

/// Writes a request's body, as it streams in, to `upload` (a temp file); with a `cap`, a body
/// larger than it is refused before it is read when its Content-Length says so, else as soon
/// as it passes the cap (what was written goes with the temp file). Errors: 400 when the
/// upload is cut off, 413 past the cap, 500 when the file cannot be written.
pub(crate) async fn save_body(
    body: Body,
    upload: &tempfile::NamedTempFile,
    cap: Option<&UploadCap>,
) -> Result<(), ApiError> {
    let too_large = |cap: &UploadCap| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, &cap.refusal);
    if let Some(cap) = cap.filter(|c| axum::body::HttpBody::size_hint(&body).lower() > c.bytes) {
        return Err(too_large(cap));
    }
    let mut file = tokio::fs::File::from_std(upload.reopen().map_err(ApiError::internal)?);
    let mut stream = body.into_data_stream();
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("upload was cut off: {e}")))?;
        written = written.saturating_add(chunk.len() as u64);
        if let Some(cap) = cap.filter(|c| written > c.bytes) {
            return Err(too_large(cap));
        }
        file.write_all(&chunk).await.map_err(ApiError::internal)?;
    }
    file.flush().await.map_err(ApiError::internal)
}
