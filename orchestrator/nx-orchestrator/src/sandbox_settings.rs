//! A sandbox's deployment settings (`nx sandbox set`, [`SandboxSettings`]), kept in
//! `sandboxes.settings` (JSONB).

use crate::api::access::SandboxSettings;
use crate::domain::BackendKind;
use crate::names::SandboxName;
use sqlx::PgPool;

/// The settings of a sandbox; `None` when there is no such sandbox.
pub async fn get(
    pool: &PgPool,
    sandbox: &SandboxName,
) -> Result<Option<SandboxSettings>, sqlx::Error> {
    Ok(row(pool, sandbox).await?.map(|row| row.settings))
}

/// A sandbox's row as a push reads it, in one query.
pub struct SandboxRow {
    /// What its deployments start with (`nx sandbox set`).
    pub settings: SandboxSettings,
    /// The backend its pushes run on when they name none (`nx sandbox create --backend`).
    pub backend: BackendKind,
    /// Whether its removal has begun (`sandboxes.removing`: `nx sandbox rm`).
    pub removing: bool,
}

/// The row of a sandbox; `None` when there is no such sandbox. Errors: the query's, or a
/// backend nxd does not know (`sqlx::Error::Decode`).
pub async fn row(pool: &PgPool, sandbox: &SandboxName) -> Result<Option<SandboxRow>, sqlx::Error> {
    let row: Option<(sqlx::types::Json<SandboxSettings>, String, bool)> =
        sqlx::query_as("SELECT settings, backend, removing FROM sandboxes WHERE name = $1")
            .bind(sandbox.as_str())
            .fetch_optional(pool)
            .await?;
    row.map(|(settings, backend, removing)| {
        let backend = backend
            .parse()
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        Ok::<_, sqlx::Error>(SandboxRow {
            settings: settings.0,
            backend,
            removing,
        })
    })
    .transpose()
}

/// Replaces the settings of a sandbox; false when there is no such sandbox.
pub async fn set(
    pool: &PgPool,
    sandbox: &SandboxName,
    settings: &SandboxSettings,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE sandboxes SET settings = $2 WHERE name = $1")
        .bind(sandbox.as_str())
        .bind(sqlx::types::Json(settings))
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}
