//! `GET /metrics`: every series of nxd and the router in the Prometheus text format. On the API
//! it needs the root token (`Authorization: Bearer`, Prometheus' `authorization` setting); on
//! `metrics_listen`, when set, it needs none, so keep that address on loopback or a private
//! network that only Prometheus reaches.

use crate::error::ApiError;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use nx_orchestrator::Orchestrator;
use std::sync::Arc;

/// The series, with the text format's `Content-Type`.
pub async fn metrics(State(app): State<Arc<Orchestrator>>) -> Result<impl IntoResponse, ApiError> {
    let text = app.metrics_text().await?;
    Ok((
        [(header::CONTENT_TYPE, nx_orchestrator::metrics::CONTENT_TYPE)],
        text,
    ))
}

/// Serves `GET /metrics` without a token on `listener` (`metrics_listen`).
pub async fn serve(
    app: Arc<Orchestrator>,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    let routes = Router::new()
        .route("/metrics", get(metrics))
        .with_state(app);
    axum::serve(listener, routes).await?;
    Ok(())
}
