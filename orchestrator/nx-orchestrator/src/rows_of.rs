//! Whose rows a view reads from the tables that add to a deployment's own row
//! (`deployment_upkeep`, `deployment_services`, `tcp_ports`): the host's, one sandbox's or one
//! deployment's, so that `nx status <sandbox>` and a push's view read their own rows by index
//! whatever the host holds (but for a sandbox's `tcp_ports` rows: see `Orchestrator::tcp_rows`).

use sqlx::postgres::{PgPool, PgRow};

/// Whose rows are read.
#[derive(Debug, Clone, Copy)]
pub enum Of<'a> {
    /// Every deployment's on the host (`nx ls`, the upkeep loop).
    Host,
    /// The deployments of one sandbox (`nx status <sandbox>`).
    Sandbox(&'a str),
    /// One deployment.
    Deployment(&'a str),
}

impl Of<'_> {
    /// The rows of `columns` (comma-separated, `deployment` among them) of `table` (one with a
    /// `deployment` column holding a deployment's id, and an index on it) for the deployments
    /// this names.
    ///
    /// A sandbox's rows are looked up one index probe per deployment of the sandbox, whatever
    /// the host holds. nxd's statements are planned once for any parameters (`plan_cache_mode
    /// = force_generic_plan`, see `StateStore::connect`), and the generic plan of `deployment
    /// IN (SELECT id FROM deployments WHERE sandbox = $1)` expects each sandbox to hold its
    /// share of the host: it hashed the whole table (`deployment_upkeep`: 0.23 ms with 1,000
    /// deployments on the host, against 0.03 for the probes; EXPLAIN ANALYZE, PostgreSQL 15).
    /// `OFFSET 0` keeps the lateral subquery from being pulled up into that same join:
    /// PostgreSQL does not flatten a subquery with OFFSET (`is_simple_subquery` in its
    /// `prepjointree.c`).
    pub(crate) async fn fetch<R>(
        self,
        pool: &PgPool,
        columns: &'static str,
        table: &'static str,
    ) -> Result<Vec<R>, sqlx::Error>
    where
        R: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin,
    {
        match self {
            Of::Host => {
                sqlx::query_as(&format!("SELECT {columns} FROM {table}"))
                    .fetch_all(pool)
                    .await
            }
            Of::Sandbox(sandbox) => {
                sqlx::query_as(&format!(
                    "SELECT t.* FROM deployments d CROSS JOIN LATERAL \
                     (SELECT {columns} FROM {table} WHERE deployment = d.id OFFSET 0) t \
                     WHERE d.sandbox = $1"
                ))
                .bind(sandbox)
                .fetch_all(pool)
                .await
            }
            Of::Deployment(id) => {
                sqlx::query_as(&format!(
                    "SELECT {columns} FROM {table} WHERE deployment = $1"
                ))
                .bind(id)
                .fetch_all(pool)
                .await
            }
        }
    }
}
