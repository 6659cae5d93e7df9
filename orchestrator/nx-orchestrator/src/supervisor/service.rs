//! nxd's own services that outlive it (the router, the database gate): each a transient unit
//! of the deployments' manager whose whole configuration is in files nxd writes. A restarted
//! nxd adopts a running service whose files are those it wants (nothing it serves is cut), and
//! restarts one whose files changed.

use super::{Supervisor, SupervisorError, UnitSpec};
use std::path::PathBuf;

/// What [`adopt_or_start`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The unit ran with the wanted files already: left alone.
    Adopted,
    /// The unit was started (or stopped and started again, its files having changed).
    Started,
}

/// The user a service runs as: nxd's own (`None`, root, when nxd runs as root; its uid else,
/// `nx` on NixOS), so that the files and sockets it shares with nxd are that user's.
pub fn nxd_user() -> Option<String> {
    let uid = nix::unistd::geteuid();
    (!uid.is_root()).then(|| uid.as_raw().to_string())
}

/// Why a service could not be adopted or started.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
}

/// Whether every file of `files` (path, wanted content) holds its wanted content already: a
/// running service with them is adopted by [`adopt_or_start`], else it is (re)started.
pub fn unchanged(files: &[(PathBuf, String)]) -> bool {
    files
        .iter()
        .all(|(file, wanted)| std::fs::read_to_string(file).ok().as_ref() == Some(wanted))
}

/// Makes sure the unit `spec.name` runs with `files` (path, wanted content) in place: adopted
/// when it is active and every file has its wanted content, else stopped if active, the files
/// written (each atomically, by a rename) and the unit started. The files' directories must
/// exist.
///
/// # Errors
/// [`ServiceError::Io`] writing a file; [`ServiceError::Supervisor`] from the manager.
#[tracing::instrument(skip_all, fields(unit = %spec.name))]
pub async fn adopt_or_start(
    supervisor: &Supervisor,
    files: &[(PathBuf, String)],
    spec: &UnitSpec,
) -> Result<Outcome, ServiceError> {
    let unchanged = unchanged(files);
    let active =
        supervisor.state(&spec.name).await?.active == crate::api::systemd::ActiveState::Active;
    if active && unchanged {
        tracing::info!("adopted: it kept running while nxd was away");
        return Ok(Outcome::Adopted);
    }
    if active {
        tracing::warn!("its settings changed: restarting it");
        supervisor.stop(&spec.name).await?;
    }
    for (file, wanted) in files {
        let io = |path: &PathBuf| {
            let path = path.clone();
            move |source| ServiceError::Io { path, source }
        };
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, wanted).map_err(io(&tmp))?;
        std::fs::rename(&tmp, file).map_err(io(file))?;
    }
    supervisor.start(spec).await?;
    tracing::info!("started");
    Ok(Outcome::Started)
}
