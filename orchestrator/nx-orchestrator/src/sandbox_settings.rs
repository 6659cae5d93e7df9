//! A sandbox's deployment settings (`nx sandbox set`, [`SandboxSettings`]), kept in
//! `sandboxes.settings` (JSONB).

use crate::api::access::SandboxSettings;
use crate::domain::BackendKind;
use crate::names::SandboxName;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The settings of a sandbox; `None` when there is no such sandbox.
pub async fn get(
    pool: &PgPool,
    sandbox: &SandboxName,
) -> Result<Option<SandboxSettings>, sqlx::Error> {
    Ok(row(pool, sandbox).await?.map(|row| row.settings))
}

/// A sandbox's row as a push reads it, in one query.
#[derive(Clone)]
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

/// Sandboxes' rows as pushes read them ([`row`]), kept between pushes: one is used again
/// while no write of the `sandboxes` table has ended since it was read, so a push into a
/// sandbox whose row did not change reads no row (its query was on every push's critical
/// path). Every write of the table takes [`RowCache::write`] (its writers: the `StateStore`'s
/// sandbox methods and the record's remake of a vanished row, [`set`] through
/// `Orchestrator::set_settings`, and a volume's creation); the record checks `removing`
/// again in its own statement.
#[derive(Default)]
pub struct RowCache {
    /// Writes of the `sandboxes` table ended so far.
    changes: AtomicU64,
    /// By sandbox name: the row and [`Self::changes`] before it was read (none kept for a
    /// sandbox that does not exist, nor from before the last write: as many as sandboxes).
    rows: Mutex<HashMap<String, (u64, SandboxRow)>>,
}

impl RowCache {
    /// Taken before a write of the `sandboxes` table and held to its end (its commit).
    pub fn write(&self) -> crate::state::CountedWrite<'_> {
        crate::state::CountedWrite::of(&self.changes)
    }

    /// The row of `sandbox` ([`row`]), from this cache while no write ended since it was
    /// read. Errors: [`row`]'s.
    pub async fn row(
        &self,
        pool: &PgPool,
        sandbox: &SandboxName,
    ) -> Result<Option<SandboxRow>, sqlx::Error> {
        let seen = self.changes.load(Ordering::SeqCst);
        {
            let rows = self.rows.lock().expect("sandbox rows");
            match rows.get(sandbox.as_str()) {
                Some((read_at, row)) if *read_at == seen => return Ok(Some(row.clone())),
                _ => {}
            }
        }
        let read = row(pool, sandbox).await?;
        let mut rows = self.rows.lock().expect("sandbox rows");
        // Kept only if no write ended meanwhile: it may have been read before that write.
        if let Some(read) = read
            .as_ref()
            .filter(|_| self.changes.load(Ordering::SeqCst) == seen)
        {
            rows.retain(|_, (read_at, _)| *read_at == seen);
            rows.insert(sandbox.as_str().to_owned(), (seen, read.clone()));
        }
        Ok(read)
    }
}
