//! Who may call which route. The root token (the token file) may call every route; a deploy
//! token (`nx token create`) may call a route when the route's verb is among its `--can` and
//! the sandbox the route acts on is its sandbox (or it has none: every sandbox). Managing
//! tokens and keys and removing sandboxes is the root token's only. Unknown tokens, removed
//! tokens and expired tokens get 401; a deploy token outside its scope gets 403 with what it
//! may do. The whole policy is the table `POLICY`; a route missing from it is root-only.

use crate::auth::Token;
use crate::error::ApiError;
use crate::listener::ReservedConnection;
use crate::token_requests;
use axum::body::Body;
use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use nx_orchestrator::api::access::{TokenView, Verb};
use nx_orchestrator::artifact::owners::StoreView;
use nx_orchestrator::logs::StillFollowed;
use nx_orchestrator::names::{DeploymentId, SandboxName};
use nx_orchestrator::state::StateError;
use nx_orchestrator::Orchestrator;
use std::sync::Arc;

/// The sandbox a route acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// None (health, the host key, artifacts, tasks).
    Nothing,
    /// The `{name}` in the path.
    PathSandbox,
    /// The sandbox of the deployment `{id}` in the path.
    PathDeployment,
    /// The JSON body's `sandbox` (push) or `name` (sandbox create).
    BodySandbox(&'static str),
    /// Every sandbox (the list): only tokens scoped to every sandbox.
    Every,
}

/// What a deploy token needs for a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Any valid token.
    AnyToken,
    /// One of these verbs, on the target.
    OneOf(&'static [Verb], Target),
    /// The root token.
    Root,
}

const PUSH: &[Verb] = &[Verb::Push];
const ANY_VERB: &[Verb] = &Verb::ALL;

/// (method, route as axum matched it, what a deploy token needs).
pub const POLICY: &[(&str, &str, Need)] = &[
    ("GET", "/v1/health", Need::AnyToken),
    ("GET", "/v1/sftp/host-key", Need::AnyToken),
    // Every sandbox's series: Prometheus scrapes with the root token, or on metrics_listen.
    ("GET", "/metrics", Need::Root),
    (
        "GET",
        "/v1/artifacts/{sha256}",
        Need::OneOf(&[Verb::Push, Verb::Tasks], Target::Nothing),
    ),
    (
        "PUT",
        "/v1/artifacts/{sha256}",
        Need::OneOf(&[Verb::Push, Verb::Tasks], Target::Nothing),
    ),
    (
        "GET",
        "/v1/blobs/{sha256}",
        Need::OneOf(PUSH, Target::Nothing),
    ),
    (
        "PUT",
        "/v1/blobs/{sha256}",
        Need::OneOf(PUSH, Target::Nothing),
    ),
    (
        "POST",
        "/v1/blobs/missing",
        Need::OneOf(PUSH, Target::Nothing),
    ),
    ("POST", "/v1/bundles", Need::OneOf(PUSH, Target::Nothing)),
    (
        "POST",
        "/v1/deployments",
        Need::OneOf(PUSH, Target::BodySandbox("sandbox")),
    ),
    (
        "DELETE",
        "/v1/deployments/{id}",
        Need::OneOf(PUSH, Target::PathDeployment),
    ),
    (
        "POST",
        "/v1/deployments/{id}/stop",
        Need::OneOf(PUSH, Target::PathDeployment),
    ),
    (
        "POST",
        "/v1/deployments/{id}/start",
        Need::OneOf(PUSH, Target::PathDeployment),
    ),
    (
        "POST",
        "/v1/deployments/{id}/pin",
        Need::OneOf(PUSH, Target::PathDeployment),
    ),
    (
        "DELETE",
        "/v1/deployments/{id}/pin",
        Need::OneOf(PUSH, Target::PathDeployment),
    ),
    (
        "GET",
        "/v1/deployments/{id}/logs",
        Need::OneOf(&[Verb::Logs], Target::PathDeployment),
    ),
    ("GET", "/v1/sandboxes", Need::OneOf(ANY_VERB, Target::Every)),
    (
        "POST",
        "/v1/sandboxes",
        Need::OneOf(PUSH, Target::BodySandbox("name")),
    ),
    (
        "GET",
        "/v1/sandboxes/{name}",
        Need::OneOf(ANY_VERB, Target::PathSandbox),
    ),
    ("DELETE", "/v1/sandboxes/{name}", Need::Root),
    (
        "GET",
        "/v1/sandboxes/{name}/settings",
        Need::OneOf(ANY_VERB, Target::PathSandbox),
    ),
    (
        "PUT",
        "/v1/sandboxes/{name}/settings",
        Need::OneOf(PUSH, Target::PathSandbox),
    ),
    (
        "POST",
        "/v1/sandboxes/{name}/promote",
        Need::OneOf(&[Verb::Promote], Target::PathSandbox),
    ),
    (
        "POST",
        "/v1/sandboxes/{name}/rollback",
        Need::OneOf(&[Verb::Rollback], Target::PathSandbox),
    ),
    (
        "GET",
        "/v1/sandboxes/{name}/db",
        Need::OneOf(&[Verb::Db], Target::PathSandbox),
    ),
    (
        "GET",
        "/v1/sandboxes/{name}/db/backups",
        Need::OneOf(&[Verb::Db], Target::PathSandbox),
    ),
    (
        "POST",
        "/v1/sandboxes/{name}/db/backups",
        Need::OneOf(&[Verb::Db], Target::PathSandbox),
    ),
    (
        "GET",
        "/v1/sandboxes/{name}/db/backups/{id}",
        Need::OneOf(&[Verb::Db], Target::PathSandbox),
    ),
    (
        "DELETE",
        "/v1/sandboxes/{name}/db/backups/{id}",
        Need::OneOf(&[Verb::Db], Target::PathSandbox),
    ),
    (
        "POST",
        "/v1/sandboxes/{name}/db/restore",
        Need::OneOf(&[Verb::Db], Target::PathSandbox),
    ),
    // Usage of every sandbox: tokens scoped to every sandbox; of one: tokens of that sandbox.
    ("GET", "/v1/usage", Need::OneOf(ANY_VERB, Target::Every)),
    (
        "GET",
        "/v1/sandboxes/{name}/usage",
        Need::OneOf(ANY_VERB, Target::PathSandbox),
    ),
    ("GET", "/v1/domains", Need::Root),
    ("DELETE", "/v1/domains/{domain}", Need::Root),
    ("GET", "/v1/sandboxes/{name}/domains", Need::Root),
    ("POST", "/v1/sandboxes/{name}/domains", Need::Root),
    (
        "GET",
        "/v1/sandboxes/{name}/volumes",
        Need::OneOf(&[Verb::Push], Target::PathSandbox),
    ),
    (
        "POST",
        "/v1/sandboxes/{name}/volumes",
        Need::OneOf(&[Verb::Push], Target::PathSandbox),
    ),
    (
        "DELETE",
        "/v1/sandboxes/{name}/volumes/{volume}",
        Need::OneOf(&[Verb::Push], Target::PathSandbox),
    ),
    (
        "POST",
        "/v1/sandboxes/{name}/volumes/{volume}/backups",
        Need::OneOf(&[Verb::Push], Target::PathSandbox),
    ),
    (
        "GET",
        "/v1/sandboxes/{name}/volumes/{volume}/backups/{id}",
        Need::OneOf(&[Verb::Push], Target::PathSandbox),
    ),
    (
        "POST",
        "/v1/sandboxes/{name}/volumes/{volume}/restore",
        Need::OneOf(&[Verb::Push], Target::PathSandbox),
    ),
    ("GET", "/v1/sandboxes/{name}/keys", Need::Root),
    ("POST", "/v1/sandboxes/{name}/keys", Need::Root),
    ("DELETE", "/v1/sandboxes/{name}/keys", Need::Root),
    (
        "POST",
        "/v1/tasks",
        Need::OneOf(&[Verb::Tasks], Target::Nothing),
    ),
    ("GET", "/v1/tokens", Need::Root),
    ("POST", "/v1/tokens", Need::Root),
    ("DELETE", "/v1/tokens/{id}", Need::Root),
];

/// What a route needs; root-only when the table does not name it. HEAD needs what GET does
/// (it is GET without the body, RFC 9110 section 9.3.2, and axum answers it from GET's handler).
pub fn need(method: &Method, route: &str) -> Need {
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    POLICY
        .iter()
        .find(|(m, r, _)| *m == method.as_str() && *r == route)
        .map_or(Need::Root, |(_, _, need)| *need)
}

/// Whether a deploy token may do what a route needs on `sandbox` (the target, once
/// resolved); the error says what the token may do instead.
pub fn permits(token: &TokenView, need: Need, sandbox: Option<&SandboxName>) -> Result<(), String> {
    let scope = match &token.sandbox {
        Some(s) => format!("sandbox {s}"),
        None => "every sandbox".to_owned(),
    };
    let may = format!("this token (id {}) may {} on {scope}", token.id, token.can);
    let (verbs, target) = match need {
        Need::AnyToken => return Ok(()),
        Need::Root => {
            return Err(format!(
                "{may}; this needs the operator's root token (managing tokens and keys, removing sandboxes)"
            ))
        }
        Need::OneOf(verbs, target) => (verbs, target),
    };
    let verb_ok = verbs.iter().any(|v| token.can.contains(*v));
    let sandbox_ok = match (target, &token.sandbox) {
        (_, None) => true,
        (Target::Every, Some(_)) => false,
        (Target::Nothing, Some(_)) => true,
        (_, Some(own)) => sandbox == Some(own),
    };
    if verb_ok && sandbox_ok {
        return Ok(());
    }
    let wanted: Vec<&str> = verbs.iter().map(|v| v.as_ref()).collect();
    let on = match (target, sandbox) {
        (Target::Every, _) => " on every sandbox (use `nx status <sandbox>`)".to_owned(),
        (_, Some(s)) => format!(" on sandbox {s}"),
        _ => String::new(),
    };
    Err(format!("{may}; this needs `{}`{on}", wanted.join("` or `")))
}

/// The authenticated caller; `authorize` puts it in the request's extensions for the routes.
#[derive(Debug, Clone)]
pub enum Caller {
    Root,
    Deploy(TokenView),
}

impl Caller {
    /// How the caller is named in answers and counted per caller (its concurrent tasks,
    /// `tasks.max_concurrent_per_token`): `token <id>` for a deploy token, `the root token`.
    pub fn name(&self) -> String {
        match self {
            Caller::Root => "the root token".to_owned(),
            Caller::Deploy(token) => format!("token {}", token.id),
        }
    }

    /// What it sees of the content store: the root token and deploy tokens for every sandbox
    /// that may push (and so put any program in any sandbox) the whole host's; a token scoped
    /// to a sandbox only what that sandbox owns; a token for every sandbox that may not push
    /// (e.g. only `tasks`) only what it uploaded itself.
    pub fn store_view(&self) -> StoreView {
        match self {
            Caller::Root => StoreView::Host,
            Caller::Deploy(TokenView {
                sandbox: Some(sandbox),
                ..
            }) => StoreView::Sandbox(sandbox.clone()),
            Caller::Deploy(token) if token.can.contains(Verb::Push) => StoreView::Host,
            Caller::Deploy(token) => StoreView::Token(token.id.clone()),
        }
    }
}

fn unauthorized(why: &str) -> Response {
    ApiError::new(StatusCode::UNAUTHORIZED, why).into_response()
}

fn forbidden(why: String) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, why).into_response()
}

/// The token a request presents (`Authorization: Bearer <token>`).
fn presented(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// For a followed log (`nx logs -f`, which may run for days): whether deployment `id` still
/// exists and the caller's deploy token (presented in `headers`) is still neither removed nor
/// expired (attacker s8 F15, s7 F8); the stream ends when either stops holding.
pub fn still_followed(
    app: Arc<Orchestrator>,
    caller: Caller,
    headers: &axum::http::HeaderMap,
    id: DeploymentId,
) -> StillFollowed {
    let presented = presented(headers).unwrap_or_default().to_owned();
    Box::new(move || {
        let (app, caller, presented, id) =
            (app.clone(), caller.clone(), presented.clone(), id.clone());
        Box::pin(async move {
            let removed = matches!(
                app.deployment_sandbox(&id).await,
                Err(nx_orchestrator::Error::State(StateError::NoDeployment(_)))
            );
            let token_holds = match caller {
                Caller::Root => true,
                Caller::Deploy(_) => matches!(
                    app.tokens.find(&presented).await,
                    Ok(Some(token)) if !token.expired(chrono::Utc::now())
                ),
            };
            !removed && token_holds
        })
    })
}

/// Who presented which token: the root token, a deploy token that has not expired, or 401.
async fn authenticate(
    app: &Orchestrator,
    root: &Token,
    headers: &axum::http::HeaderMap,
) -> Result<Caller, Response> {
    let Some(presented) = presented(headers) else {
        return Err(unauthorized("no API token: pass --token, set NX_TOKEN, or put token_file in ~/.config/nx/config.toml"));
    };
    if root.matches(presented) {
        return Ok(Caller::Root);
    }
    match app.tokens.find(presented).await {
        Ok(Some(token)) if token.expired(chrono::Utc::now()) => Err(unauthorized(&format!(
            "deploy token {} expired at {}; ask the operator for a new one (`nx token create`)",
            token.id,
            token.expires_at.map(|t| t.to_rfc3339()).unwrap_or_default()
        ))),
        Ok(Some(token)) => Ok(Caller::Deploy(token)),
        Ok(None) => Err(unauthorized("wrong or removed API token: pass --token, set NX_TOKEN, or put token_file in ~/.config/nx/config.toml")),
        Err(e) => Err(ApiError::internal(e).into_response()),
    }
}

/// Largest JSON body read here to find the sandbox it names.
const MAX_JSON_BODY: usize = 1 << 20;

/// The sandbox a route acts on, and the request to pass on (its body read, when it names it).
async fn target(
    app: &Orchestrator,
    target: Target,
    params: &RawPathParams,
    req: Request,
) -> Result<(Option<SandboxName>, Request), Response> {
    let param = |key: &str| {
        params
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_owned())
    };
    let bad = |e: ApiError| e.into_response();
    match target {
        Target::Nothing | Target::Every => Ok((None, req)),
        Target::PathSandbox => {
            let name = param("name").unwrap_or_default();
            let name = SandboxName::parse(&name).map_err(|e| bad(e.into()))?;
            Ok((Some(name), req))
        }
        Target::PathDeployment => {
            let id = param("id").unwrap_or_default();
            let id = DeploymentId::parse(&id).map_err(|e| bad(e.into()))?;
            let sandbox = app
                .deployment_sandbox(&id)
                .await
                .map_err(|e| bad(e.into()))?;
            Ok((Some(sandbox), req))
        }
        Target::BodySandbox(field) => {
            let (parts, body) = req.into_parts();
            let bytes = axum::body::to_bytes(body, MAX_JSON_BODY)
                .await
                .map_err(|e| bad(ApiError::bad_request(format!("cannot read the body: {e}"))))?;
            let named = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get(field)?.as_str().map(str::to_owned))
                .and_then(|s| SandboxName::parse(&s).ok());
            Ok((named, Request::from_parts(parts, Body::from(bytes))))
        }
    }
}

/// 503 for anyone but the root token on a reserved connection, and the connection closed.
fn reserved_for_root(reserved: &ReservedConnection) -> Response {
    let why = format!(
        "nxd's API has all but {} of its {} connections in use (api_reserved_connections of api_max_connections), and those are kept for the root token: try again once other requests (e.g. `nx logs -f`) end",
        reserved.reserved, reserved.max
    );
    let mut response = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// The middleware on every route: authenticate, count the request against its deploy token's
/// `api_max_requests_per_token` (`token_requests`), then check the route's need; on a
/// reserved connection (see `listener`) only the root token is served.
pub async fn authorize(
    State((app, root)): State<(Arc<Orchestrator>, Token)>,
    route: MatchedPath,
    params: RawPathParams,
    mut req: Request,
    next: Next,
) -> Response {
    let caller = authenticate(&app, &root, req.headers()).await;
    let root_only = req.extensions().get::<ReservedConnection>();
    if let Some(reserved) = root_only.filter(|_| !matches!(caller, Ok(Caller::Root))) {
        return reserved_for_root(reserved);
    }
    let caller = match caller {
        Ok(c) => c,
        Err(response) => return response,
    };
    req.extensions_mut().insert(caller.clone());
    let slot = match token_requests::take(&caller, app.config.api_max_requests_per_token) {
        Ok(slot) => slot,
        Err(e) => return e.into_response(),
    };
    let Caller::Deploy(token) = caller else {
        return next.run(req).await;
    };
    let need = need(req.method(), route.as_str());
    let (sandbox, req) = match need {
        Need::OneOf(_, t) => match target(&app, t, &params, req).await {
            Ok(found) => found,
            Err(response) => return response,
        },
        _ => (None, req),
    };
    match permits(&token, need, sandbox.as_ref()) {
        Ok(()) => token_requests::held_until_sent(next.run(req).await, slot),
        Err(why) => {
            tracing::info!(token = %token.id, method = %req.method(), path = %req.uri().path(), "forbidden");
            forbidden(why)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nx_orchestrator::api::access::VerbSet;

    fn token(sandbox: Option<&str>, can: &[Verb]) -> TokenView {
        TokenView {
            id: "t".into(),
            sandbox: sandbox.map(|s| SandboxName::parse(s).unwrap()),
            can: VerbSet::from(can.to_vec()),
            created_at: chrono::Utc::now(),
            expires_at: None,
        }
    }

    /// Every route of the table with every single-verb token on `web`, on `web` and on
    /// `other`; a token for every sandbox; root-only routes refuse every deploy token.
    #[test]
    fn every_route_against_every_scope() {
        let web = SandboxName::parse("web").unwrap();
        let other = SandboxName::parse("other").unwrap();
        for (method, route, need) in POLICY {
            for verb in Verb::ALL {
                let scoped = token(Some("web"), &[verb]);
                let everywhere = token(None, &[verb]);
                let on_web = permits(&scoped, *need, Some(&web));
                let on_other = permits(&scoped, *need, Some(&other));
                match need {
                    Need::AnyToken => assert!(on_web.is_ok() && on_other.is_ok()),
                    Need::Root => {
                        assert!(
                            on_web.is_err() && permits(&everywhere, *need, None).is_err(),
                            "{method} {route}"
                        );
                        assert!(on_web.unwrap_err().contains("root token"));
                    }
                    Need::OneOf(verbs, target) => {
                        let has = verbs.contains(&verb);
                        let on_none = permits(&scoped, *need, None);
                        match target {
                            Target::Nothing => {
                                assert_eq!(on_none.is_ok(), has, "{method} {route} {verb}")
                            }
                            Target::Every => {
                                assert!(
                                    on_none.is_err(),
                                    "{method} {route}: a scoped token lists every sandbox"
                                );
                                assert_eq!(permits(&everywhere, *need, None).is_ok(), has);
                            }
                            _ => {
                                assert_eq!(on_web.is_ok(), has, "{method} {route} {verb} on web");
                                assert!(on_other.is_err(), "{method} {route} {verb} on other");
                                assert_eq!(permits(&everywhere, *need, Some(&other)).is_ok(), has);
                            }
                        }
                        if !has {
                            let why = on_web.unwrap_err();
                            assert!(why.contains(&format!("may {verb} on sandbox web")), "{why}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn routes_missing_from_the_table_are_root_only() {
        assert_eq!(need(&Method::GET, "/v1/something-new"), Need::Root);
        assert_eq!(
            need(&Method::HEAD, "/v1/blobs/{sha256}"),
            need(&Method::GET, "/v1/blobs/{sha256}")
        );
        assert_eq!(need(&Method::DELETE, "/v1/sandboxes/{name}"), Need::Root);
        assert_eq!(
            need(&Method::POST, "/v1/sandboxes/{name}/promote"),
            Need::OneOf(&[Verb::Promote], Target::PathSandbox)
        );
    }
}
