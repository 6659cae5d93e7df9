//! Request bodies as JSON, refused with an [`ApiError`] (JSON, like every other error) that
//! names the field at fault: axum's rejection text carries serde's path, e.g. "limits: unknown
//! field `memory`, expected one of `memory_max_mb`, ...". Request types deny unknown fields.

use crate::error::ApiError;
use axum::extract::{FromRequest, Request};

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
