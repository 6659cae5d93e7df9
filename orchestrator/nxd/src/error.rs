//! The API's errors: a status code and an `ErrorBody` that says what to do, and the one mapping
//! from the library's [`Error`] to a status code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use nx_orchestrator::access::AccessError;
use nx_orchestrator::api::ErrorBody;
use nx_orchestrator::artifact::{BundleStoreError, StoreError};
use nx_orchestrator::backend::BackendError;
use nx_orchestrator::databases::DbError;
use nx_orchestrator::names::NameError;
use nx_orchestrator::state::StateError;
use nx_orchestrator::tasks::TaskError;
use nx_orchestrator::Error;

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

/// The one mapping from the lifecycle's errors to HTTP status codes.
fn status_of(e: &Error) -> StatusCode {
    match e {
        // What was done about an error does not change whose fault it is.
        Error::Outcome { error, .. } => status_of(error),
        Error::Invalid(_) | Error::Name(_) => StatusCode::BAD_REQUEST,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        // The router is away (restarting): the change is in the database, try again.
        Error::Router(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Conflict(_) => StatusCode::CONFLICT,
        Error::NotReady { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        Error::Artifact(e) | Error::Bundle(BundleStoreError::Store(e)) if store_is_full(e) => {
            StatusCode::INSUFFICIENT_STORAGE
        }
        Error::Artifact(e) => match e {
            StoreError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            StoreError::Missing(_) => StatusCode::NOT_FOUND,
            StoreError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        },
        Error::Bundle(e) => match e {
            BundleStoreError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            BundleStoreError::Missing(_) => StatusCode::NOT_FOUND,
            BundleStoreError::MissingFiles(_) => StatusCode::CONFLICT,
            BundleStoreError::Store(StoreError::Io(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            BundleStoreError::Store(StoreError::Name(_)) => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        },
        Error::State(e) => match e {
            StateError::NoDeployment(_) => StatusCode::NOT_FOUND,
            StateError::NothingToRollBack(_)
            | StateError::ProductionMoved(_)
            | StateError::Removing(_)
            | StateError::VolumeGone { .. }
            | StateError::NoPort { .. }
            | StateError::SandboxFull { .. } => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        },
        Error::Backend(BackendError::Unavailable(_)) => StatusCode::BAD_REQUEST,
        // One caller's share of the tasks' slice is taken: it may try again once one ends.
        Error::Task(TaskError::CallerAtCap { .. }) => StatusCode::TOO_MANY_REQUESTS,
        Error::Access(e) => match e {
            AccessError::NoSandbox(_) | AccessError::NoToken(_) | AccessError::NoKey { .. } => {
                StatusCode::NOT_FOUND
            }
            AccessError::Invalid(_) => StatusCode::BAD_REQUEST,
            AccessError::Db(_) | AccessError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
        },
        Error::Database(e) => match e {
            DbError::NoBackup { .. } => StatusCode::NOT_FOUND,
            DbError::BadBackupId(_) => StatusCode::BAD_REQUEST,
            DbError::BadDump(_)
            | DbError::RestoreTimeout { .. }
            | DbError::ToolSessionEnded { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            DbError::DiskFull { .. } => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        },
        Error::Backend(_)
        | Error::Supervisor(_)
        | Error::EmbeddedDb(_)
        | Error::Task(_)
        | Error::RouterUnit(_)
        | Error::Network(_)
        | Error::Setup(_)
        | Error::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A full disk under the store: 507 Insufficient Storage (RFC 4918 section 11.5), "the server
/// is unable to store the representation", the operator's to fix.
/// An owner past `store.max_owner_mb` gets the same: the store cannot take it.
fn store_is_full(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::DiskFull { .. } | StoreError::OverQuota { .. }
    )
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = status_of(&e);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            return Self::internal(e);
        }
        let mut err = Self::new(status, &e);
        if let Error::NotReady { log_tail, .. } = e {
            err.body.log_tail = log_tail;
        }
        err
    }
}

/// Errors of the library's parts that nxd's routes call directly.
macro_rules! through_library_error {
    ($($t:ty),*) => {$(
        impl From<$t> for ApiError {
            fn from(e: $t) -> Self {
                Error::from(e).into()
            }
        }
    )*};
}
through_library_error!(
    NameError,
    StoreError,
    BundleStoreError,
    DbError,
    AccessError
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_done_about_an_error_keeps_its_status() {
        let disk = || Error::io("renaming the restored image")(std::io::Error::other("EIO"));
        for (error, status) in [
            (disk(), StatusCode::INTERNAL_SERVER_ERROR),
            (
                Error::Conflict("production moved".into()),
                StatusCode::CONFLICT,
            ),
            (
                Error::NotReady {
                    message: "it exited".into(),
                    log_tail: vec!["boom".into()],
                },
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
        ] {
            let answer = ApiError::from(error.with_outcome("put back").with_outcome("as it was"));
            assert_eq!(answer.status, status, "{answer}");
            assert!(
                answer.body.error.ends_with("put back; as it was")
                    || answer.body.error.ends_with("put back. as it was"),
                "{answer}"
            );
        }
        let answer = ApiError::from(disk().with_outcome("put back"));
        assert_eq!(
            answer.body.error,
            "renaming the restored image: EIO; put back"
        );
    }
}
