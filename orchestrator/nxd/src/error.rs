//! The API's errors: a status code and an `ErrorBody` that says what to do.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use nx_orchestrator::api::ErrorBody;
use nx_orchestrator::artifact::StoreError;
use nx_orchestrator::backend::BackendError;
use nx_orchestrator::names::NameError;
use nx_orchestrator::state::StateError;
use nx_orchestrator::supervisor::SupervisorError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.body.error, self.status)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub fn new(status: StatusCode, error: impl std::fmt::Display) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: error.to_string(),
                log_tail: Vec::new(),
            },
        }
    }
    pub fn bad_request(error: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error)
    }
    pub fn conflict(error: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::CONFLICT, error)
    }
    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> Self {
        Self::bad_request(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Io(_) => Self::internal(e),
            StoreError::Missing(_) => Self::new(StatusCode::NOT_FOUND, e),
            StoreError::TooLarge { .. } => Self::new(StatusCode::PAYLOAD_TOO_LARGE, e),
            _ => Self::new(StatusCode::UNPROCESSABLE_ENTITY, e),
        }
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::NoDeployment(_) => Self::new(StatusCode::NOT_FOUND, e),
            StateError::NothingToRollBack(_) | StateError::NoPort { .. } => Self::conflict(e),
            _ => Self::internal(e),
        }
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Unavailable(_) => Self::bad_request(e),
            _ => Self::internal(e),
        }
    }
}

impl From<SupervisorError> for ApiError {
    fn from(e: SupervisorError) -> Self {
        Self::internal(e)
    }
}

impl From<nx_orchestrator::databases::DbError> for ApiError {
    fn from(e: nx_orchestrator::databases::DbError) -> Self {
        use nx_orchestrator::databases::DbError;
        match e {
            DbError::NoBackup { .. } => Self::new(StatusCode::NOT_FOUND, e),
            DbError::BadBackupId(_) => Self::bad_request(e),
            DbError::BadDump(_) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, e),
            _ => Self::internal(e),
        }
    }
}
