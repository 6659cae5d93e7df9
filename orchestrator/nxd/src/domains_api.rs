//! Routes for custom domains (`nx domain`). Who may call them: `scopes::POLICY` (the root
//! token: a domain decides where a name's traffic goes).

use crate::error::ApiError;
use crate::json_body::JsonBody;
use crate::route_table::{delete, get, post, Route};
use axum::extract::{Path, State};
use axum::Json;
use nx_orchestrator::api::domains::{AddDomain, DomainRemoved, DomainView};
use nx_orchestrator::names::SandboxName;
use nx_orchestrator::Orchestrator;
use std::sync::Arc;

type Shared = State<Arc<Orchestrator>>;
type ApiResult<T> = Result<Json<T>, ApiError>;

/// These routes, for `http_api::table`.
pub fn table() -> Vec<Route> {
    vec![
        get("/v1/domains", all),
        delete("/v1/domains/{domain}", remove),
        get("/v1/sandboxes/{name}/domains", of_sandbox),
        post("/v1/sandboxes/{name}/domains", add),
    ]
}

async fn all(State(app): Shared) -> ApiResult<Vec<DomainView>> {
    Ok(Json(app.domains(None).await?))
}

async fn of_sandbox(State(app): Shared, Path(name): Path<String>) -> ApiResult<Vec<DomainView>> {
    let name = SandboxName::parse(&name)?;
    Ok(Json(app.domains(Some(&name)).await?))
}

async fn add(
    State(app): Shared,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<AddDomain>,
) -> ApiResult<DomainView> {
    let name = SandboxName::parse(&name)?;
    Ok(Json(app.add_domain(&name, &req.domain).await?))
}

async fn remove(State(app): Shared, Path(domain): Path<String>) -> ApiResult<DomainRemoved> {
    app.remove_domain(&domain).await?;
    Ok(Json(DomainRemoved { removed: domain }))
}
