//! The `deployment_upkeep` table (migration `0010_upkeep.sql`): per deployment, its health
//! check, idle timeout, pin and the time of its last request. A deployment without a row has
//! the defaults ([`Upkeep::default`]). A push's row is written by the statement that records
//! its deployment (`StateStore::create_deployment`): no deployment without its row after a
//! crash.

use crate::api::HealthCheck;
use crate::rows_of::Of;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};

/// One deployment's row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Upkeep {
    /// Its own health check (push over sandbox); nxd's `[sandbox]` fills the rest.
    pub health_check: HealthCheck,
    pub idle_timeout_secs: Option<u64>,
    pub pinned: bool,
    pub last_request_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct Row {
    deployment: String,
    health_check: sqlx::types::Json<HealthCheck>,
    idle_timeout_secs: Option<i64>,
    pinned: bool,
    last_request_at: Option<DateTime<Utc>>,
}

impl From<Row> for (String, Upkeep) {
    fn from(row: Row) -> Self {
        let upkeep = Upkeep {
            health_check: row.health_check.0,
            idle_timeout_secs: row.idle_timeout_secs.and_then(|s| u64::try_from(s).ok()),
            pinned: row.pinned,
            last_request_at: row.last_request_at,
        };
        (row.deployment, upkeep)
    }
}

/// The rows of the deployments `of` names, by deployment id; those without a row are missing
/// from the map. The host's and a sandbox's are selected without binding each id (a thousand
/// ids in `= ANY($1)` is a comparison of each row with each id).
pub async fn rows(pool: &PgPool, of: Of<'_>) -> Result<HashMap<String, Upkeep>, sqlx::Error> {
    let rows: Vec<Row> = of
        .fetch(
            pool,
            "deployment, health_check, idle_timeout_secs, pinned, last_request_at",
            "deployment_upkeep",
        )
        .await?;
    Ok(rows.into_iter().map(<(String, Upkeep)>::from).collect())
}

/// Pins or unpins a deployment (`nx pin`, `nx unpin`).
pub async fn set_pinned(pool: &PgPool, deployment: &str, pinned: bool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO deployment_upkeep (deployment, pinned) VALUES ($1, $2) ON CONFLICT (deployment) DO UPDATE SET pinned = EXCLUDED.pinned",
    )
    .bind(deployment)
    .bind(pinned)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records the times of deployments' last requests (a time never moves back; a deployment
/// removed meanwhile is skipped).
pub async fn record_requests(
    pool: &PgPool,
    seen: &[(String, DateTime<Utc>)],
) -> Result<(), sqlx::Error> {
    if seen.is_empty() {
        return Ok(());
    }
    let (ids, times): (Vec<String>, Vec<DateTime<Utc>>) = seen.iter().cloned().unzip();
    sqlx::query(
        "INSERT INTO deployment_upkeep (deployment, last_request_at) \
         SELECT u.id, u.at FROM UNNEST($1::text[], $2::timestamptz[]) AS u(id, at) \
         JOIN deployments d ON d.id = u.id \
         ON CONFLICT (deployment) DO UPDATE SET last_request_at = \
         GREATEST(deployment_upkeep.last_request_at, EXCLUDED.last_request_at)",
    )
    .bind(&ids)
    .bind(&times)
    .execute(pool)
    .await?;
    Ok(())
}

/// The deployments no expiry removes: each sandbox's production and the one `nx rollback`
/// returns to (the two newest promotions).
pub async fn production_and_rollback(pool: &PgPool) -> Result<HashSet<String>, sqlx::Error> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT deployment FROM (SELECT deployment, row_number() OVER (PARTITION BY sandbox ORDER BY seq DESC) AS n FROM promotions) p WHERE n <= 2",
    )
    .fetch_all(pool)
    .await?;
    Ok(ids.into_iter().collect())
}

/// Every sandbox's settings, by name (for idle timeouts and time to live).
pub async fn sandbox_settings(
    pool: &PgPool,
) -> Result<HashMap<String, crate::api::access::SandboxSettings>, sqlx::Error> {
    let rows: Vec<(
        String,
        sqlx::types::Json<crate::api::access::SandboxSettings>,
    )> = sqlx::query_as("SELECT name, settings FROM sandboxes")
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(|(name, s)| (name, s.0)).collect())
}
