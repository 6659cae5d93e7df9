//! The move from readable tenant names (`nx_<sandbox>`) to opaque ones (`ident`): each
//! sandbox's role and database are renamed, its password file follows, and the comments NX
//! put on kept databases lose the sandbox's name. Idempotent: run at every start, it renames
//! only what still has an old name, and never a name of the opaque form: a sandbox may be
//! named like an ident (24 hex digits), and its readable name is then another sandbox's
//! database and role, current or left by a removed sandbox (attacker s11 G11: a restart gave
//! that sandbox the other's database once its own was gone). A sandbox from before opaque
//! names that was itself named with 24 hex digits is left as it is, with a warning.

use super::ident::{self, literal, quote};
use super::{Databases, DbError};
use crate::names::SandboxName;

/// How often a rename is tried when a client reconnects in between (55006).
const RENAME_ATTEMPTS: u32 = 5;

impl Databases {
    /// Renames the role and database of each of `sandboxes` that still has its readable name;
    /// returns those renamed (their deployments must reconnect under the new names).
    #[tracing::instrument(skip_all)]
    pub async fn rename_legacy(
        &self,
        sandboxes: &[SandboxName],
    ) -> Result<Vec<SandboxName>, DbError> {
        let mut renamed = Vec::new();
        for sandbox in sandboxes {
            let old = ident::legacy_sandbox(sandbox);
            if ident::has_opaque_form(&old) {
                tracing::warn!(%sandbox, name = %old, "the sandbox's readable database name has the form of an opaque one (maybe another sandbox's): not renamed");
                continue;
            }
            let new = self.idents.sandbox(sandbox);
            let role_is_old = self.role_exists(&old).await? && !self.role_exists(&new).await?;
            let db_is_old =
                self.database_exists(&old).await? && !self.database_exists(&new).await?;
            if !role_is_old && !db_is_old {
                continue;
            }
            let mut attempt = 1;
            while let Err(e) = self.rename_once(&old, &new, db_is_old, role_is_old).await {
                match e {
                    DbError::Sql(sqlx::Error::Database(e))
                        if e.code().as_deref() == Some("55006") && attempt < RENAME_ATTEMPTS =>
                    {
                        attempt += 1;
                    }
                    e => return Err(e),
                }
            }
            let secret = |role: &str| self.secrets.join(format!("{role}.password"));
            if secret(&old).exists() {
                std::fs::rename(secret(&old), secret(&new))?;
            }
            self.forget_name_in_comments(sandbox, &new).await?;
            tracing::info!(%sandbox, database = %new, "tenant database and role renamed to an opaque name");
            renamed.push(sandbox.clone());
        }
        Ok(renamed)
    }

    /// Whether PostgreSQL has the role `role` (`pg_roles`).
    pub(super) async fn role_exists(&self, role: &str) -> Result<bool, DbError> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(role)
                .fetch_one(&self.admin)
                .await?,
        )
    }

    /// One transaction: the old database's sessions ended, then the renames.
    async fn rename_once(
        &self,
        old: &str,
        new: &str,
        database: bool,
        role: bool,
    ) -> Result<(), DbError> {
        let mut tx = self.admin.begin().await?;
        sqlx::query(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = $1 OR usename = $1",
        )
        .bind(old)
        .execute(&mut *tx)
        .await?;
        let mut statements = Vec::new();
        if database {
            statements.push(format!(
                "ALTER DATABASE {} RENAME TO {}",
                quote(old),
                quote(new)
            ));
        }
        if role {
            statements.push(format!(
                "ALTER ROLE {} RENAME TO {}",
                quote(old),
                quote(new)
            ));
        }
        for sql in statements {
            sqlx::query(&sql).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Kept databases were commented "NX: <sandbox> before ..."; every role reads comments.
    async fn forget_name_in_comments(
        &self,
        sandbox: &SandboxName,
        role: &str,
    ) -> Result<(), DbError> {
        let prefix = format!("NX: {sandbox} before ");
        let commented: Vec<(String, String)> = sqlx::query_as(
            "SELECT d.datname::text, shobj_description(d.oid, 'pg_database') FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE r.rolname = $1 AND shobj_description(d.oid, 'pg_database') IS NOT NULL",
        )
        .bind(role)
        .fetch_all(&self.admin)
        .await?;
        for (database, comment) in commented {
            if let Some(rest) = comment.strip_prefix(&prefix) {
                sqlx::query(&format!(
                    "COMMENT ON DATABASE {} IS {}",
                    quote(&database),
                    literal(&format!("NX: kept before {rest}"))
                ))
                .execute(&self.admin)
                .await?;
            }
        }
        Ok(())
    }
}
