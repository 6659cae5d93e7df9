//! The `usage_samples` table (migration `0013_usage.sql`): one row per deployment and sample
//! in which it used anything.

use chrono::{DateTime, Utc};
use nx_api::usage::Usage;
use sqlx::PgPool;

/// What one deployment used since the previous sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub deployment: String,
    pub sandbox: String,
    pub cpu_seconds: f64,
    pub memory_gib_hours: f64,
    /// Bytes on `/data` now.
    pub disk_bytes: u64,
    pub disk_gib_hours: f64,
    pub requests: u64,
    pub bytes_out: u64,
}

impl Sample {
    /// Whether it used nothing at all (such samples are not stored).
    pub fn is_empty(&self) -> bool {
        self.cpu_seconds == 0.0
            && self.memory_gib_hours == 0.0
            && self.disk_bytes == 0
            && self.requests == 0
            && self.bytes_out == 0
    }
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Stores `samples` as taken at `at`, and deletes the samples older than `retention_days`.
pub async fn insert(
    pool: &PgPool,
    at: DateTime<Utc>,
    samples: &[Sample],
    retention_days: u32,
) -> Result<(), sqlx::Error> {
    let column = |f: fn(&Sample) -> i64| samples.iter().map(f).collect::<Vec<i64>>();
    let real = |f: fn(&Sample) -> f64| samples.iter().map(f).collect::<Vec<f64>>();
    let text = |f: fn(&Sample) -> &str| samples.iter().map(f).collect::<Vec<&str>>();
    let mut tx = pool.begin().await?;
    if !samples.is_empty() {
        sqlx::query(
            "INSERT INTO usage_samples (at, deployment, sandbox, cpu_seconds, memory_gib_hours, \
             disk_bytes, disk_gib_hours, requests, bytes_out) \
             SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::float8[], $5::float8[], \
             $6::int8[], $7::float8[], $8::int8[], $9::int8[])",
        )
        .bind(at)
        .bind(text(|s| &s.deployment))
        .bind(text(|s| &s.sandbox))
        .bind(real(|s| s.cpu_seconds))
        .bind(real(|s| s.memory_gib_hours))
        .bind(column(|s| signed(s.disk_bytes)))
        .bind(real(|s| s.disk_gib_hours))
        .bind(column(|s| signed(s.requests)))
        .bind(column(|s| signed(s.bytes_out)))
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("DELETE FROM usage_samples WHERE at < $1 - make_interval(days => $2)")
        .bind(at)
        .bind(i32::try_from(retention_days).unwrap_or(i32::MAX))
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

#[derive(sqlx::FromRow)]
struct Row {
    sandbox: String,
    deployment: String,
    cpu_seconds: f64,
    memory_gib_hours: f64,
    disk_gib_hours: f64,
    disk_bytes: i64,
    requests: i64,
    bytes_out: i64,
}

/// Per (sandbox, deployment), by sandbox then deployment: the sums of the samples taken at or
/// after `since` (of `sandbox` alone when given); `disk_bytes` is the latest sample's. Samples
/// are kept by sandbox name: those taken before the sandbox of that name was made are a removed
/// predecessor's and are left out (attacker s8 F4); a removed sandbox's count until retention.
pub async fn sums(
    pool: &PgPool,
    since: DateTime<Utc>,
    sandbox: Option<&str>,
) -> Result<Vec<(String, String, Usage)>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT sandbox, deployment, sum(cpu_seconds) AS cpu_seconds, \
         sum(memory_gib_hours) AS memory_gib_hours, sum(disk_gib_hours) AS disk_gib_hours, \
         (array_agg(disk_bytes ORDER BY at DESC))[1] AS disk_bytes, \
         sum(requests)::int8 AS requests, sum(bytes_out)::int8 AS bytes_out \
         FROM usage_samples u WHERE at >= $1 AND ($2::text IS NULL OR sandbox = $2) \
         AND NOT EXISTS (SELECT 1 FROM sandboxes s WHERE s.name = u.sandbox AND s.created_at > u.at) \
         GROUP BY sandbox, deployment ORDER BY sandbox, deployment",
    )
    .bind(since)
    .bind(sandbox)
    .fetch_all(pool)
    .await?;
    let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(rows
        .into_iter()
        .map(|r| {
            let usage = Usage {
                cpu_seconds: r.cpu_seconds,
                memory_gib_hours: r.memory_gib_hours,
                disk_gib_hours: r.disk_gib_hours,
                disk_bytes: unsigned(r.disk_bytes),
                requests: unsigned(r.requests),
                bytes_out: unsigned(r.bytes_out),
                cost: None,
            };
            (r.sandbox, r.deployment, usage)
        })
        .collect())
}
