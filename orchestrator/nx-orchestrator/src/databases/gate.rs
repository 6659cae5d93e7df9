//! Each sandbox's own socket in front of the cluster (its "gate"): the socket deployments
//! reach PostgreSQL by, counting the sandbox's open connections before any byte is read.
//!
//! PostgreSQL checks a role's `CONNECTION LIMIT` and `superuser_reserved_connections` only
//! after authentication, while a connection waiting to authenticate already holds a backend
//! slot (its PGPROC) until `authentication_timeout`: on the cluster's own socket, one tenant
//! opening ~100 connections and never answering the password request gave every other tenant
//! and nxd "sorry, too many clients already". A gate admits at most the sandbox's share
//! ([`RolePolicy::connection_limit`](super::RolePolicy)) at once, and all gates together at
//! most the slots not reserved for superusers, so nxd's reserved slots stay free whatever
//! tenants hold. A connection over the limit gets a PostgreSQL `ErrorResponse` (SQLSTATE
//! 53300, `too_many_connections`) that drivers show as they show PostgreSQL's own.
//!
//! A gate reads the client's `StartupMessage` itself and passes on only one asking for the
//! sandbox's own role or one of its preview branches' roles, and that role's own database
//! (then PostgreSQL asks for that role's password); any other user, `postgres` included, is
//! refused with SQLSTATE 28000, any other database as PostgreSQL refuses it (42501), before a
//! byte reaches the cluster ([`super::startup`]). Whatever uid the gate connects to the cluster as, no tenant can ask
//! for another role through it. After that message bytes pass through unchanged
//! (PostgreSQL's protocol, TLS-less over a unix socket).
//!
//! Why not PgBouncer: its limits (`max_user_connections`, `max_db_connections`) apply after
//! authentication as PostgreSQL's do, and clients waiting to authenticate share one
//! `max_client_conn`, so one tenant could still fill it; the only thing that tells tenants
//! apart before authentication is which socket they came in on, and one PgBouncer per sandbox
//! is a process (and a configuration with every role's password) per sandbox.
//!
//! The gates live in a process of their own, `<launcher> db-gate <settings.json>` ([`main`]),
//! the transient unit [`UNIT`] of the deployments' manager, so that deployments' open sessions
//! and new connections go on while nxd is stopped, restarting or crashed, as the deployments
//! themselves do. nxd writes the table of gates ([`GateSettings::table`]) whole and connects
//! to the gate's control socket; the gate re-reads the table at its start and at each such
//! connection, opens and closes sockets as it says, and answers `ok` or what failed. nxd's
//! side, the unit adopted (same settings and build) or (re)started and the table ([`Gates`]),
//! is in `unit`.

mod unit;

pub(super) use unit::Gates;

use crate::supervisor::service::ServiceError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

/// The gate's unit.
pub const UNIT: &str = "nx-db-gate.service";

/// Why a gate is not open, or the gate process not running.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("database gate: {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(
        "database gate: {path} is not what nxd writes ({source}); restart nxd to write it again"
    )]
    BadFile {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("database gate unit: {0}")]
    Unit(#[from] ServiceError),
    #[error("database gate: which build is nxd's launcher? {0}")]
    Build(String),
    #[error(
        "the database gate ({UNIT}) does not answer on {control} ({source}); see its log {log}"
    )]
    Unreachable {
        control: PathBuf,
        log: PathBuf,
        source: std::io::Error,
    },
    #[error("the database gate could not open every sandbox's socket: {0}")]
    NotOpened(String),
    #[error("{0}; see the database gate's log")]
    Answered(String),
}

impl GateError {
    fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// What the gate process runs with, `<state_dir>/db-gate/settings.json` (written by nxd; a
/// change restarts the gate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateSettings {
    /// `<state_dir>/db-gates`: a directory per sandbox's role, bind-mounted at
    /// `/run/postgresql` in its deployments, holding its gate's socket.
    pub sockets_dir: PathBuf,
    /// The cluster's own socket, where admitted connections are forwarded.
    pub upstream: PathBuf,
    /// The sockets' file name, `.s.PGSQL.<port>` (libpq finds it by `PGPORT`).
    pub file_name: String,
    /// Connections one sandbox may hold at once (its role's `CONNECTION LIMIT`).
    pub per_sandbox: u32,
    /// Connections all sandboxes together may hold: the slots not reserved for superusers.
    pub open_slots: u32,
    /// The table of gates, `<state_dir>/db-gate/gates.json`: a JSON object of [`GateEntry`]s
    /// by their sandboxes' roles' names, replaced whole by nxd.
    pub table: PathBuf,
    /// The control socket, `<state_dir>/db-gate/control.sock` (0600): a connection to it has
    /// the gate apply the table and answer `ok` or what failed, one line.
    pub control: PathBuf,
}

impl GateSettings {
    /// `role`'s socket: `<sockets_dir>/<role>/<file_name>`.
    pub fn socket(&self, role: &str) -> PathBuf {
        self.sockets_dir.join(role).join(&self.file_name)
    }

    fn read(path: &Path) -> Result<Self, GateError> {
        let text = std::fs::read(path)
            .map_err(|e| GateError::io(format!("reading {}", path.display()), e))?;
        serde_json::from_slice(&text).map_err(|source| GateError::BadFile {
            path: path.to_owned(),
            source,
        })
    }
}

/// One gate in the table: the sandbox it is for, and the roles of the sandbox's preview
/// branches (`nxb_<deployment>`) it admits besides the sandbox's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "EntryForm")]
pub struct GateEntry {
    pub sandbox: String,
    pub branches: BTreeSet<String>,
}

/// What a [`GateEntry`] is read from: a table written before gates admitted branches (by an
/// older nxd, read by a newer one or its gate) has the sandbox's name alone.
#[derive(Deserialize)]
#[serde(untagged)]
enum EntryForm {
    Sandbox(String),
    Entry {
        sandbox: String,
        #[serde(default)]
        branches: BTreeSet<String>,
    },
}

impl From<EntryForm> for GateEntry {
    fn from(form: EntryForm) -> Self {
        match form {
            EntryForm::Sandbox(sandbox) => Self {
                sandbox,
                branches: BTreeSet::new(),
            },
            EntryForm::Entry { sandbox, branches } => Self { sandbox, branches },
        }
    }
}

/// The table at `path` (none there: no gate).
fn read_table(path: &Path) -> Result<BTreeMap<String, GateEntry>, GateError> {
    match std::fs::read(path) {
        Ok(text) => serde_json::from_slice(&text).map_err(|source| GateError::BadFile {
            path: path.to_owned(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(GateError::io(format!("reading {}", path.display()), e)),
    }
}

/// How long a refused connection is kept open to read what the client sends (its startup
/// packet) before it is closed, so that the client reads the refusal instead of a reset.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// How long a client has to send its whole startup message (PostgreSQL's own
/// `authentication_timeout` as NX sets it on the embedded cluster, which starts counting only
/// once the gate has passed the message on).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the control socket's answer may take to be taken by nxd.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// Runs the gate process with the settings in `settings_file` until it is killed; returns only
/// when it cannot start (its settings unreadable, its control socket not bound).
pub fn main(settings_file: &Path) -> GateError {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::stderr)
        .init();
    let settings = match GateSettings::read(settings_file) {
        Ok(settings) => settings,
        Err(e) => return e,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => match runtime.block_on(serve(settings)) {
            Err(e) => e,
            Ok(never) => match never {},
        },
        Err(e) => GateError::io("starting the gate's runtime", e),
    }
}

/// Opens the table's gates, then answers its control socket: each connection to it re-reads
/// the table and is answered `ok` or why a gate could not be opened.
async fn serve(settings: GateSettings) -> Result<Infallible, GateError> {
    use std::os::unix::fs::PermissionsExt;
    let mut gates = Open {
        all: Arc::new(Semaphore::new(settings.open_slots as usize)),
        open: HashMap::new(),
        settings,
    };
    if let Err(e) = gates.apply() {
        tracing::error!(error = %e, "database gate: not every sandbox's socket is open");
    }
    let control = &gates.settings.control;
    match std::fs::remove_file(control) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(GateError::io(format!("removing {}", control.display()), e))
        }
        _ => {}
    }
    let listener = UnixListener::bind(control)
        .map_err(|e| GateError::io(format!("binding {}", control.display()), e))?;
    std::fs::set_permissions(control, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| GateError::io(format!("setting the mode of {}", control.display()), e))?;
    tracing::info!(control = %control.display(), "database gate ready");
    loop {
        let mut nxd = match listener.accept().await {
            Ok((nxd, _)) => nxd,
            Err(e) => {
                tracing::warn!(error = %e, "database gate: control accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let answer = match gates.apply() {
            Ok(()) => "ok\n".to_owned(),
            Err(e) => format!("{e}\n"),
        };
        let _ = tokio::time::timeout(ANSWER_WITHIN, nxd.write_all(answer.as_bytes())).await;
    }
}

/// The open gates and what they share.
struct Open {
    settings: GateSettings,
    /// Connections all sandboxes together may hold: the slots not reserved for superusers.
    all: Arc<Semaphore>,
    /// Open gates by the sandbox's role name: the task accepting on each, and the branch
    /// roles it admits.
    open: HashMap<String, (tokio::task::AbortHandle, Branches)>,
}

/// The roles of a sandbox's preview branches its gate admits, shared with its task.
type Branches = Arc<RwLock<HashSet<String>>>;

impl Open {
    /// Opens the gates of the table's sandboxes not open yet and closes (and removes the
    /// directories of) those no longer in it; connections open through a closed gate stay
    /// until they end. Every gate is tried; the error names those that failed.
    #[tracing::instrument(skip_all)]
    fn apply(&mut self) -> Result<(), GateError> {
        let table = read_table(&self.settings.table)?;
        self.open.retain(|role, (accepting, branches)| {
            let Some(entry) = table.get(role) else {
                accepting.abort();
                let _ = std::fs::remove_dir_all(self.settings.sockets_dir.join(role));
                tracing::info!(role, "database gate closed");
                return false;
            };
            *branches.write().expect("branches lock") = entry.branches.iter().cloned().collect();
            true
        });
        let mut failed = Vec::new();
        for (role, entry) in &table {
            if self.open.contains_key(role) {
                continue;
            }
            let branches: Branches =
                Arc::new(RwLock::new(entry.branches.iter().cloned().collect()));
            match self.open_one(role, &entry.sandbox, Arc::clone(&branches)) {
                Ok(accepting) => {
                    self.open.insert(role.clone(), (accepting, branches));
                }
                Err(e) => failed.push(format!("sandbox {}: {e}", entry.sandbox)),
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(GateError::NotOpened(failed.join("; ")))
        }
    }

    /// Binds `role`'s socket (in place of a previous gate process's) and accepts on it,
    /// admitting `role` and `branches`.
    fn open_one(
        &self,
        role: &str,
        sandbox: &str,
        branches: Branches,
    ) -> std::io::Result<tokio::task::AbortHandle> {
        use std::os::unix::fs::PermissionsExt;
        let socket = self.settings.socket(role);
        let dir = socket
            .parent()
            .expect("a socket in its sandbox's directory");
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        // A previous gate's socket: running deployments see the new one in its place.
        match std::fs::remove_file(&socket) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&socket)?;
        // Deployments' uids connect to it.
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))?;
        let per_sandbox = self.settings.per_sandbox as usize;
        tracing::info!(sandbox, socket = %socket.display(), limit = per_sandbox, "database gate open");
        Ok(tokio::spawn(accept(
            listener,
            self.settings.upstream.clone(),
            Arc::new(Semaphore::new(per_sandbox)),
            Arc::clone(&self.all),
            sandbox.to_owned(),
            (role.into(), branches),
        ))
        .abort_handle())
    }
}

/// A sandbox's share of the slots, held for as long as one of its connections is open.
struct Admitted {
    _sandbox: tokio::sync::OwnedSemaphorePermit,
    _all: tokio::sync::OwnedSemaphorePermit,
}

/// Accepts on one sandbox's gate until aborted, for the sandbox's `role` and its `branches`'.
#[tracing::instrument(skip_all, fields(sandbox = %sandbox))]
async fn accept(
    listener: UnixListener,
    upstream: PathBuf,
    sandbox_slots: Arc<Semaphore>,
    all: Arc<Semaphore>,
    sandbox: String,
    (role, branches): (Arc<str>, Branches),
) {
    let limit = sandbox_slots.available_permits();
    // Refusals in flight (each lingers): beyond these, a connection is closed unanswered.
    let refusals = Arc::new(Semaphore::new(limit.max(1)));
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                // EMFILE and the like: the client is not lost, only delayed.
                tracing::warn!(%sandbox, error = %e, "database gate: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = match Arc::clone(&sandbox_slots).try_acquire_owned() {
            Err(_) => Err(format!(
                "too many connections for sandbox {sandbox}'s database: it may hold {limit} at once (the host's databases.connection_limit_percent); close idle ones or pool them"
            )),
            Ok(sandbox_permit) => match Arc::clone(&all).try_acquire_owned() {
                Ok(all_permit) => Ok(Admitted {
                    _sandbox: sandbox_permit,
                    _all: all_permit,
                }),
                Err(_) => Err(
                    "the host's PostgreSQL has no connection slot left for sandboxes; try again later, or ask the host's operator to raise max_connections".to_owned(),
                ),
            },
        };
        match admitted {
            Ok(admitted) => {
                let branches = branches.read().expect("branches lock").clone();
                tokio::spawn(forward(
                    client,
                    upstream.clone(),
                    (Arc::clone(&role), branches),
                    admitted,
                ));
            }
            Err(message) => {
                if let Ok(permit) = Arc::clone(&refusals).try_acquire_owned() {
                    tracing::debug!(%sandbox, "database gate: connection refused");
                    tokio::spawn(async move {
                        refuse(client, &message).await;
                        drop(permit);
                    });
                }
            }
        }
    }
}

/// Reads the client's opening ([`super::startup::read_opening`]: a startup message for the
/// sandbox's `role` or one of its `branches`', or a cancel request), then passes bytes both
/// ways until either side closes, holding the sandbox's slot meanwhile. PostgreSQL's protocol
/// has no half-close: when the server ends a connection (e.g. at `authentication_timeout`),
/// the client's is ended too, and the slot freed.
async fn forward(
    mut client: UnixStream,
    upstream: PathBuf,
    (role, branches): (Arc<str>, HashSet<String>),
    _admitted: Admitted,
) {
    let opening = match tokio::time::timeout(
        STARTUP_TIMEOUT,
        super::startup::read_opening(&mut client, &role, &branches),
    )
    .await
    {
        Ok(Ok(opening)) => opening,
        Ok(Err(super::startup::Refusal { code, message })) => {
            tracing::info!(role = %role, %message, "database gate: startup refused");
            let _ = client.write_all(&error_response(code, &message)).await;
            return;
        }
        Err(_) => return,
    };
    let mut server = match UnixStream::connect(&upstream).await {
        Ok(server) => server,
        Err(e) => {
            refuse(
                client,
                &format!("the host's PostgreSQL does not answer ({e}); try again shortly"),
            )
            .await;
            return;
        }
    };
    if server.write_all(&opening).await.is_err() {
        return;
    }
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    tokio::select! {
        _ = tokio::io::copy(&mut client_read, &mut server_write) => {}
        _ = tokio::io::copy(&mut server_read, &mut client_write) => {}
    }
}

/// Answers a connection with a PostgreSQL `ErrorResponse` (FATAL, SQLSTATE 53300) and closes
/// it after reading what the client sent meanwhile (at most [`REFUSAL_LINGER`]).
async fn refuse(mut client: UnixStream, message: &str) {
    let _ = client
        .write_all(&error_response(TOO_MANY_CONNECTIONS, message))
        .await;
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// SQLSTATE `too_many_connections` (PostgreSQL's "Errcodes" appendix).
const TOO_MANY_CONNECTIONS: &str = "53300";

/// A PostgreSQL `ErrorResponse` message: `E`, its length (Int32, itself included), then
/// fields (a type byte and a NUL-terminated string each) and a final NUL. Fields: severity
/// (`S`, and `V` non-localized) FATAL, the SQLSTATE `code` (`C`), message (`M`).
/// PostgreSQL's "Message Formats" and "Error and Notice Message Fields".
fn error_response(code: &str, message: &str) -> Vec<u8> {
    let mut fields = Vec::new();
    for (kind, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ] {
        fields.push(kind);
        fields.extend(value.bytes().filter(|b| *b != 0));
        fields.push(0);
    }
    fields.push(0);
    let length = u32::try_from(fields.len() + 4).expect("a short message");
    let mut out = vec![b'E'];
    out.extend(length.to_be_bytes());
    out.extend(fields);
    out
}

#[cfg(test)]
mod tests {
    use super::{error_response, read_table, GateEntry, TOO_MANY_CONNECTIONS};

    #[test]
    fn an_error_response_is_framed_as_postgresql_frames_it() {
        let bytes = error_response(TOO_MANY_CONNECTIONS, "no");
        assert_eq!(bytes[0], b'E');
        let length = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(length, bytes.len() - 1);
        assert_eq!(&bytes[5..], b"SFATAL\0VFATAL\0C53300\0Mno\0\0");
    }

    #[test]
    fn a_table_of_an_older_nxd_reads_as_gates_without_branches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gates.json");
        std::fs::write(
            &path,
            r#"{"nx_a": "alpha", "nx_b": {"sandbox": "beta", "branches": ["nxb_d1"]}}"#,
        )
        .unwrap();
        let table = read_table(&path).unwrap();
        assert_eq!(table["nx_a"].sandbox, "alpha");
        assert!(table["nx_a"].branches.is_empty());
        assert_eq!(
            table["nx_b"],
            GateEntry {
                sandbox: "beta".into(),
                branches: ["nxb_d1".to_owned()].into()
            }
        );
    }
}
