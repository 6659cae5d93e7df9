//! Request bodies as JSON, refused with an [`ApiError`] (JSON, like every other error) that
//! names the field at fault: axum's rejection text carries serde's path, e.g. "limits: unknown
//! field `memory`, expected one of `memory_max_mb`, ...". Request types deny unknown fields.

use crate::error::ApiError;
use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use nx_orchestrator::Orchestrator;
use std::sync::Arc;

/// `axum::Json`, with nxd's errors.
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    axum::Json<T>: FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::new(rejection.status(), rejection.body_text())),
        }
    }
}

/// The bytes a request that lists a bundle's files may hold per file allowed
/// (`bundles.max_files`): a path of about 400 bytes with its digest, size and flags.
pub const MANIFEST_BYTES_PER_FILE: u64 = 512;

/// The most bytes nxd reads of a request that lists a bundle's files (`POST /v1/bundles`,
/// `POST /v1/blobs/missing`) for `max_files` (`bundles.max_files`): [`MANIFEST_BYTES_PER_FILE`]
/// a file, and at least axum's default of 2 MiB (which alone held about 15,000 of the 100,000
/// files `bundles.max_files` allows: attacker s12 M5).
pub fn manifest_limit(max_files: u64) -> usize {
    let limit = max_files
        .saturating_mul(MANIFEST_BYTES_PER_FILE)
        .max(2 << 20);
    usize::try_from(limit).unwrap_or(usize::MAX)
}

/// A JSON body that lists a bundle's files, read up to [`manifest_limit`] for the host's
/// `bundles.max_files` (the route has no default limit: `unlimited_body`); past it 413 naming
/// the limit and what to do, else as [`JsonBody`] answers.
pub struct ManifestBody<T>(pub T);

impl<T> FromRequest<Arc<Orchestrator>> for ManifestBody<T>
where
    axum::Json<T>: FromRequest<(), Rejection = axum::extract::rejection::JsonRejection>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &Arc<Orchestrator>) -> Result<Self, ApiError> {
        let max_files = app.config.bundles.max_files;
        let limit = manifest_limit(max_files);
        let req = req.map(|body| Body::new(http_body_util::Limited::new(body, limit)));
        match axum::Json::<T>::from_request(req, &()).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the request is larger than {} MiB, the most nxd reads of a list of a bundle's files: {MANIFEST_BYTES_PER_FILE} bytes for each of the bundles.max_files ({max_files}) files a bundle may hold. Push fewer files, or shorter paths, or ask the host's operator to raise bundles.max_files",
                        limit >> 20
                    ),
                ))
            }
            Err(rejection) => Err(ApiError::new(rejection.status(), rejection.body_text())),
        }
    }
}
