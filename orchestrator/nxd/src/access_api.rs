//! Routes for deploy tokens (`nx token`), SFTP keys (`nx keys`), the SFTP host key and a
//! sandbox's deployment settings (`nx sandbox set`). Who may call them: `scopes::POLICY`.

use crate::error::ApiError;
use crate::json_body::JsonBody;
use crate::route_table::{delete, get, post, put, Route};
use crate::scopes::Caller;
use crate::sftp::host_key;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Extension;
use axum::Json;
use nx_orchestrator::api::access::{
    AddKey, CreateToken, CreatedToken, HostKeyView, KeyRemoved, KeyView, SandboxSettings,
    TokenRemoved, TokenView, Verb, HIDDEN_ENV_VALUE,
};
use nx_orchestrator::names::SandboxName;
use nx_orchestrator::Orchestrator;
use russh::keys::{HashAlg, PrivateKey, PublicKey};
use serde::Deserialize;
use std::sync::Arc;

type Shared = State<Arc<Orchestrator>>;
type ApiResult<T> = Result<Json<T>, ApiError>;

/// These routes, for `http_api::table`.
pub fn table() -> Vec<Route> {
    vec![
        get("/v1/tokens", tokens),
        post("/v1/tokens", create_token),
        delete("/v1/tokens/{id}", remove_token),
        get("/v1/sandboxes/{name}/keys", keys),
        post("/v1/sandboxes/{name}/keys", add_key),
        delete("/v1/sandboxes/{name}/keys", remove_key),
        get("/v1/sandboxes/{name}/settings", settings),
        put("/v1/sandboxes/{name}/settings", set_settings),
        get("/v1/sftp/host-key", host_key),
    ]
}

async fn tokens(State(app): Shared) -> ApiResult<Vec<TokenView>> {
    Ok(Json(app.tokens.list().await?))
}

async fn create_token(
    State(app): Shared,
    JsonBody(req): JsonBody<CreateToken>,
) -> ApiResult<CreatedToken> {
    Ok(Json(app.tokens.create(&req).await?))
}

async fn remove_token(State(app): Shared, Path(id): Path<String>) -> ApiResult<TokenRemoved> {
    app.tokens.remove(&id).await?;
    Ok(Json(TokenRemoved { removed: id }))
}

fn sandbox(name: &str) -> Result<SandboxName, ApiError> {
    Ok(SandboxName::parse(name)?)
}

/// Parses an OpenSSH public key line; the error says what a valid one looks like.
fn parse_public_key(line: &str) -> Result<PublicKey, ApiError> {
    PublicKey::from_openssh(line.trim()).map_err(|e| {
        ApiError::bad_request(format!(
            "not an OpenSSH public key ({e}): pass the .pub file, a line like `ssh-ed25519 AAAA... you@host` (`ssh-keygen -t ed25519` makes one)"
        ))
    })
}

async fn keys(State(app): Shared, Path(name): Path<String>) -> ApiResult<Vec<KeyView>> {
    let name = sandbox(&name)?;
    app.existing(&name).await?;
    Ok(Json(app.ssh_keys.list(&name).await?))
}

async fn add_key(
    State(app): Shared,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<AddKey>,
) -> ApiResult<KeyView> {
    let name = sandbox(&name)?;
    let key = parse_public_key(&req.public_key)?;
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    let comment = key.comment().to_string();
    let mut bare = key.clone();
    bare.set_comment("");
    let line = bare.to_openssh().map_err(ApiError::internal)?;
    Ok(Json(
        app.ssh_keys
            .add(&name, &fingerprint, line.trim(), &comment)
            .await?,
    ))
}

#[derive(Deserialize)]
struct RemoveKey {
    /// `SHA256:...`, or the public key line itself.
    key: String,
}

async fn remove_key(
    State(app): Shared,
    Path(name): Path<String>,
    Query(q): Query<RemoveKey>,
) -> ApiResult<KeyRemoved> {
    let name = sandbox(&name)?;
    let fingerprint = if q.key.starts_with("SHA256:") {
        q.key.clone()
    } else {
        parse_public_key(&q.key)?
            .fingerprint(HashAlg::Sha256)
            .to_string()
    };
    app.ssh_keys.remove(&name, &fingerprint).await?;
    Ok(Json(KeyRemoved {
        removed: fingerprint,
    }))
}

/// The sandbox's settings; for a deploy token without `push`, each `env` value is
/// [`HIDDEN_ENV_VALUE`]: settings' env is where the operator puts what every deployment gets,
/// API keys included, and a `logs` (or `promote`, `rollback`, `db`, `tasks`) token read them
/// all (attacker s11 G7).
async fn settings(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<SandboxSettings> {
    let mut settings = app.settings(&sandbox(&name)?).await?;
    if matches!(&caller, Caller::Deploy(token) if !token.can.contains(Verb::Push)) {
        for value in settings.env.values_mut() {
            *value = HIDDEN_ENV_VALUE.to_owned();
        }
    }
    Ok(Json(settings))
}

async fn set_settings(
    State(app): Shared,
    Path(name): Path<String>,
    JsonBody(settings): JsonBody<SandboxSettings>,
) -> ApiResult<SandboxSettings> {
    let name = sandbox(&name)?;
    app.set_settings(&name, &settings).await?;
    Ok(Json(settings))
}

async fn host_key(State(app): Shared) -> ApiResult<HostKeyView> {
    let Some(listen) = app.config.sftp.listen else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "this nxd serves no SFTP: set [sftp] listen in its config (services.nx.sftp.listen)",
        ));
    };
    let key = PrivateKey::read_openssh_file(host_key::path(&app.config.state_dir))
        .map_err(ApiError::internal)?;
    Ok(Json(HostKeyView {
        listen,
        public_key: key.public_key().to_openssh().map_err(ApiError::internal)?,
        fingerprint: host_key::fingerprint(&key),
    }))
}
