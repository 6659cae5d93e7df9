//! The lifecycle's errors, in the domain's terms. Each message says what to do; an embedder
//! (nxd) maps the kind to its own answer (an HTTP status).

use crate::access::AccessError;
use crate::artifact::StoreError;
use crate::backend::BackendError;
use crate::databases::DbError;
use crate::embedded_db::EmbeddedDbError;
use crate::names::NameError;
use crate::network::NetworkError;
use crate::router::unit::RouterUnitError;
use crate::router::RouterClientError;
use crate::state::StateError;
use crate::supervisor::SupervisorError;
use crate::tasks::TaskError;

/// What went wrong in a lifecycle step of [`crate::Orchestrator`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request cannot be carried out as given (an invalid name, environment variable,
    /// timeout, or a runtime that does not fit the artifact).
    #[error("{0}")]
    Invalid(String),
    /// What the request names does not exist (a sandbox, a deployment, an artifact).
    #[error("{0}")]
    NotFound(String),
    /// The request does not fit the current state (stopping the deployment that serves
    /// production, promoting one that is not running, creating a sandbox that exists).
    #[error("{0}")]
    Conflict(String),
    /// A deployment did not become ready and was stopped; `log_tail` holds its last output
    /// lines, oldest first.
    #[error("{message}")]
    NotReady {
        message: String,
        log_tail: Vec<String>,
    },
    /// The host cannot be set up as configured (state dir, embedded services, backends).
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Artifact(#[from] StoreError),
    #[error(transparent)]
    Bundle(#[from] crate::artifact::BundleStoreError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error(transparent)]
    Database(#[from] DbError),
    #[error(transparent)]
    EmbeddedDb(#[from] EmbeddedDbError),
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The router did not take the route table (it is not running or refused it).
    #[error(transparent)]
    Router(#[from] RouterClientError),
    /// The router's unit could not be set up.
    #[error(transparent)]
    RouterUnit(#[from] RouterUnitError),
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The deployments' network (addresses, links, the firewall).
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// A step failed (`error`, which says how the request is answered) and `outcome` says
    /// what was done about it: the request was carried out as far as that says.
    #[error("{error}; {outcome}")]
    Outcome { error: Box<Error>, outcome: String },
    /// A file operation of the lifecycle itself failed; `what` names it.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl From<crate::api::checks::FieldError> for Error {
    fn from(e: crate::api::checks::FieldError) -> Self {
        Error::Invalid(e.to_string())
    }
}

impl Error {
    /// An I/O error with what was being done.
    pub fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.to_string();
        move |source| Self::Io { what, source }
    }

    /// The error with what was done about it (`outcome`) added to its message, of the same
    /// kind (a fault of the host's stays one): a `NotReady` keeps its log lines, any other is
    /// wrapped in an [`Error::Outcome`].
    pub fn with_outcome(self, outcome: &str) -> Self {
        match self {
            Self::NotReady { message, log_tail } => Self::NotReady {
                message: format!("{message}. {outcome}"),
                log_tail,
            },
            error => Self::Outcome {
                error: Box::new(error),
                outcome: outcome.to_owned(),
            },
        }
    }
}
