//! The `tcp_ports` table (migration `0012_tcp_ports.sql`): which host port of
//! `network.tcp_ports` belongs to which sandbox's production or to which TCP deployment.

use crate::config::PortRange;
use sqlx::PgPool;

/// One host port and whom it reaches.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TcpPort {
    pub port: i32,
    pub sandbox: String,
    /// None: the sandbox's production port.
    pub deployment: Option<String>,
}

impl TcpPort {
    /// The port as a port number (the table's CHECK keeps it in 1-65535).
    pub fn host_port(&self) -> u16 {
        u16::try_from(self.port).unwrap_or_default()
    }
}

/// Why a push's TCP port could not be had.
#[derive(Debug, thiserror::Error)]
pub enum AllocateError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// Every port of the range is held.
    #[error("no free TCP port left in network.tcp_ports ({start}-{end}): remove TCP deployments (`nx rm`) or sandboxes, or widen network.tcp_ports")]
    Exhausted { start: u16, end: u16 },
    /// The asked-for port belongs to another sandbox or to a deployment.
    #[error("TCP port {port} is taken (by {holder}): push with another port of network.tcp_ports, or with --tcp alone and nxd picks a free one")]
    Taken { port: u16, holder: String },
    /// The sandbox's production has another port already.
    #[error("sandbox {sandbox}'s production is at TCP port {held} already: push with --tcp={held} or with --tcp alone")]
    Moved { sandbox: String, held: u16 },
}

/// Every row.
pub async fn all(pool: &PgPool) -> Result<Vec<TcpPort>, sqlx::Error> {
    sqlx::query_as("SELECT port, sandbox, deployment FROM tcp_ports ORDER BY port")
        .fetch_all(pool)
        .await
}

/// The rows of one sandbox.
pub async fn of_sandbox(pool: &PgPool, sandbox: &str) -> Result<Vec<TcpPort>, sqlx::Error> {
    sqlx::query_as("SELECT port, sandbox, deployment FROM tcp_ports WHERE sandbox = $1")
        .bind(sandbox)
        .fetch_all(pool)
        .await
}

/// Checks, without changing anything, that `sandbox`'s production may have `asked` (its own
/// already, or free). Errors: `Taken`, `Moved`.
pub async fn check(pool: &PgPool, sandbox: &str, asked: u16) -> Result<(), AllocateError> {
    let rows: Vec<TcpPort> = sqlx::query_as(
        "SELECT port, sandbox, deployment FROM tcp_ports WHERE port = $1 OR (sandbox = $2 AND deployment IS NULL)",
    )
    .bind(i32::from(asked))
    .bind(sandbox)
    .fetch_all(pool)
    .await?;
    refuse(&rows, sandbox, asked)
}

fn refuse(rows: &[TcpPort], sandbox: &str, asked: u16) -> Result<(), AllocateError> {
    for row in rows {
        let production = row.sandbox == sandbox && row.deployment.is_none();
        if production && row.host_port() != asked {
            return Err(AllocateError::Moved {
                sandbox: sandbox.to_owned(),
                held: row.host_port(),
            });
        }
        if row.host_port() == asked && !production {
            let holder = match &row.deployment {
                Some(id) => format!("deployment {id} of sandbox {}", row.sandbox),
                None => format!("sandbox {}'s production", row.sandbox),
            };
            return Err(AllocateError::Taken {
                port: asked,
                holder,
            });
        }
    }
    Ok(())
}

/// Gives `deployment` a port of its own and `sandbox`'s production one if it has none yet
/// (`asked`, else the lowest free one), in one transaction with the table locked; returns
/// (production's, the deployment's). `free` says whether nothing else on the host listens on
/// a port. Errors: `Exhausted`, `Taken`, `Moved`.
pub async fn allocate(
    pool: &PgPool,
    sandbox: &str,
    deployment: &str,
    asked: Option<u16>,
    range: PortRange,
    free: impl Fn(u16) -> bool,
) -> Result<(u16, u16), AllocateError> {
    let mut tx = pool.begin().await?;
    sqlx::query("LOCK TABLE tcp_ports IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let rows: Vec<TcpPort> = sqlx::query_as("SELECT port, sandbox, deployment FROM tcp_ports")
        .fetch_all(&mut *tx)
        .await?;
    if let Some(asked) = asked {
        refuse(&rows, sandbox, asked)?;
    }
    let mut used: Vec<u16> = rows.iter().map(TcpPort::host_port).collect();
    let next = |used: &mut Vec<u16>| {
        let port = (range.start..=range.end)
            .find(|p| !used.contains(p) && free(*p))
            .ok_or(AllocateError::Exhausted {
                start: range.start,
                end: range.end,
            })?;
        used.push(port);
        Ok::<u16, AllocateError>(port)
    };
    let held = rows
        .iter()
        .find(|r| r.sandbox == sandbox && r.deployment.is_none())
        .map(TcpPort::host_port);
    let production = match (held, asked) {
        (Some(port), _) => port,
        (None, Some(port)) => {
            used.push(port);
            port
        }
        (None, None) => next(&mut used)?,
    };
    let own = next(&mut used)?;
    if held.is_none() {
        sqlx::query("INSERT INTO tcp_ports (port, sandbox) VALUES ($1, $2)")
            .bind(i32::from(production))
            .bind(sandbox)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("INSERT INTO tcp_ports (port, sandbox, deployment) VALUES ($1, $2, $3)")
        .bind(i32::from(own))
        .bind(sandbox)
        .bind(deployment)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((production, own))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(port: i32, sandbox: &str, deployment: Option<&str>) -> TcpPort {
        TcpPort {
            port,
            sandbox: sandbox.into(),
            deployment: deployment.map(Into::into),
        }
    }

    #[test]
    fn a_port_held_by_another_or_a_moved_production_is_refused() {
        let rows = [row(30000, "web", None), row(30001, "web", Some("d1"))];
        assert!(refuse(&rows, "web", 30000).is_ok());
        assert!(refuse(&rows, "other", 30002).is_ok());
        let e = refuse(&rows, "other", 30000).unwrap_err().to_string();
        assert!(e.contains("sandbox web's production"), "{e}");
        let e = refuse(&rows, "web", 30001).unwrap_err().to_string();
        assert!(e.contains("already: push with --tcp=30000"), "{e}");
        let e = refuse(&rows[1..], "other", 30001).unwrap_err().to_string();
        assert!(e.contains("deployment d1 of sandbox web"), "{e}");
    }
}
