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
//! tenants hold. Bytes pass through unchanged (PostgreSQL's protocol, TLS-less over a unix
//! socket); a connection over the limit gets a PostgreSQL `ErrorResponse` (SQLSTATE 53300,
//! `too_many_connections`) that drivers show as they show PostgreSQL's own.
//!
//! Why not PgBouncer: its limits (`max_user_connections`, `max_db_connections`) apply after
//! authentication as PostgreSQL's do, and clients waiting to authenticate share one
//! `max_client_conn`, so one tenant could still fill it; the only thing that tells tenants
//! apart before authentication is which socket they came in on, and one PgBouncer per sandbox
//! is a process (and a configuration with every role's password) per sandbox.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

/// How long a refused connection is kept open to read what the client sends (its startup
/// packet) before it is closed, so that the client reads the refusal instead of a reset.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// The gates of one cluster, one per sandbox, opened on first use.
pub(super) struct Gates {
    /// `<state_dir>/db-gates`: a directory per sandbox, bind-mounted at `/run/postgresql`.
    dir: PathBuf,
    /// The cluster's own socket.
    upstream: PathBuf,
    /// The socket's file name, `.s.PGSQL.<port>` (libpq finds it by `PGPORT`).
    file_name: String,
    /// Connections one sandbox may hold at once.
    per_sandbox: usize,
    /// Connections all sandboxes together may hold: the slots not reserved for superusers.
    all: Arc<Semaphore>,
    /// Open gates by the sandbox's role name.
    open: Mutex<HashMap<String, Gate>>,
}

/// One sandbox's gate: its socket and the task that accepts on it.
struct Gate {
    socket: PathBuf,
    accepting: tokio::task::AbortHandle,
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// A sandbox's share of the slots, held for as long as one of its connections is open.
struct Admitted {
    _sandbox: tokio::sync::OwnedSemaphorePermit,
    _all: tokio::sync::OwnedSemaphorePermit,
}

impl Gates {
    /// Gates in `<state_dir>/db-gates` in front of the socket `upstream`, named for `port`:
    /// `per_sandbox` connections per sandbox, `open_slots` in all.
    pub(super) fn new(
        state_dir: &Path,
        upstream: PathBuf,
        port: u16,
        per_sandbox: u32,
        open_slots: u32,
    ) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let dir = state_dir.join("db-gates");
        std::fs::create_dir_all(&dir)?;
        // Deployments' uids pass through to the sockets inside (bound into their sandboxes).
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
        Ok(Self {
            dir,
            upstream,
            file_name: format!(".s.PGSQL.{port}"),
            per_sandbox: per_sandbox as usize,
            all: Arc::new(Semaphore::new(open_slots as usize)),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// The socket of `role`'s sandbox, its gate opened if it is not (its directory is what a
    /// deployment gets at `/run/postgresql`). `sandbox` names it in logs and refusals.
    ///
    /// # Errors
    /// Making the directory or binding the socket.
    pub(super) fn socket(&self, role: &str, sandbox: &str) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let mut open = self.open.lock().expect("gates lock");
        if let Some(gate) = open.get(role) {
            return Ok(gate.socket.clone());
        }
        let dir = self.dir.join(role);
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let socket = dir.join(&self.file_name);
        // A previous nxd's socket: running deployments see the new one in its place.
        match std::fs::remove_file(&socket) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&socket)?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))?;
        let accepting = tokio::spawn(accept(
            listener,
            self.upstream.clone(),
            Arc::new(Semaphore::new(self.per_sandbox)),
            Arc::clone(&self.all),
            sandbox.to_owned(),
        ))
        .abort_handle();
        tracing::info!(sandbox, socket = %socket.display(), limit = self.per_sandbox, "database gate open");
        open.insert(
            role.to_owned(),
            Gate {
                socket: socket.clone(),
                accepting,
            },
        );
        Ok(socket)
    }

    /// Closes `role`'s gate and removes its directory (connections open through it stay
    /// until they end).
    pub(super) fn close(&self, role: &str) {
        self.open.lock().expect("gates lock").remove(role);
        let _ = std::fs::remove_dir_all(self.dir.join(role));
    }
}

/// Accepts on one sandbox's gate until aborted.
#[tracing::instrument(skip_all, fields(sandbox = %sandbox))]
async fn accept(
    listener: UnixListener,
    upstream: PathBuf,
    sandbox_slots: Arc<Semaphore>,
    all: Arc<Semaphore>,
    sandbox: String,
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
                tokio::spawn(forward(client, upstream.clone(), admitted));
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

/// Passes bytes both ways until either side closes, holding the sandbox's slot meanwhile.
/// PostgreSQL's protocol has no half-close: when the server ends a connection (e.g. at
/// `authentication_timeout`), the client's is ended too, and the slot freed.
async fn forward(mut client: UnixStream, upstream: PathBuf, _admitted: Admitted) {
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
    let _ = client.write_all(&error_response(message)).await;
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// A PostgreSQL `ErrorResponse` message: `E`, its length (Int32, itself included), then
/// fields (a type byte and a NUL-terminated string each) and a final NUL. Fields: severity
/// (`S`, and `V` non-localized) FATAL, code (`C`) 53300 `too_many_connections`, message
/// (`M`). PostgreSQL's "Message Formats" and "Error and Notice Message Fields".
fn error_response(message: &str) -> Vec<u8> {
    let mut fields = Vec::new();
    for (kind, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "53300"),
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
    use super::error_response;

    #[test]
    fn an_error_response_is_framed_as_postgresql_frames_it() {
        let bytes = error_response("no");
        assert_eq!(bytes[0], b'E');
        let length = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(length, bytes.len() - 1);
        assert_eq!(&bytes[5..], b"SFATAL\0VFATAL\0C53300\0Mno\0\0");
    }
}
