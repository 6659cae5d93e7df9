//! A sandbox's deployment settings (`nx sandbox set`, [`SandboxSettings`]), kept in
//! `sandboxes.settings` (JSONB).

use crate::api::access::SandboxSettings;
use crate::names::SandboxName;
use sqlx::PgPool;

/// The settings of a sandbox; `None` when there is no such sandbox.
pub async fn get(
    pool: &PgPool,
    sandbox: &SandboxName,
) -> Result<Option<SandboxSettings>, sqlx::Error> {
    let row: Option<sqlx::types::Json<SandboxSettings>> =
        sqlx::query_scalar("SELECT settings FROM sandboxes WHERE name = $1")
            .bind(sandbox.as_str())
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|j| j.0))
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
