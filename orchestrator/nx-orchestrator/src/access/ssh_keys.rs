//! The public keys that may upload to a sandbox over SFTP (table `sandbox_keys`). Keys arrive
//! parsed (nxd reads the OpenSSH line with the SSH implementation it serves with); the store
//! keeps the line and its SHA256 fingerprint, as `ssh-keygen -l` prints it.

use super::{no_sandbox, AccessError};
use crate::api::access::KeyView;
use crate::names::SandboxName;
use sqlx::PgPool;

/// fingerprint, public key, comment, added at.
type KeyRow = (String, String, String, chrono::DateTime<chrono::Utc>);

const SELECT: &str = "SELECT fingerprint, public_key, comment, added_at FROM sandbox_keys";

fn view((fingerprint, public_key, comment, added_at): KeyRow) -> KeyView {
    KeyView {
        fingerprint,
        public_key,
        comment,
        added_at,
    }
}

#[derive(Clone)]
pub struct SshKeyStore {
    pool: PgPool,
}

impl SshKeyStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Adds a key to a sandbox (again: nothing changes). Errors: `NoSandbox`.
    #[tracing::instrument(skip(self, public_key, comment))]
    pub async fn add(
        &self,
        sandbox: &SandboxName,
        fingerprint: &str,
        public_key: &str,
        comment: &str,
    ) -> Result<KeyView, AccessError> {
        sqlx::query(
            "INSERT INTO sandbox_keys (sandbox, fingerprint, public_key, comment) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(sandbox.as_str())
        .bind(fingerprint)
        .bind(public_key)
        .bind(comment)
        .execute(&self.pool)
        .await
        .map_err(|e| no_sandbox(e, sandbox.as_str()))?;
        tracing::info!("SSH key added");
        let row: KeyRow =
            sqlx::query_as(&format!("{SELECT} WHERE sandbox = $1 AND fingerprint = $2"))
                .bind(sandbox.as_str())
                .bind(fingerprint)
                .fetch_one(&self.pool)
                .await?;
        Ok(view(row))
    }

    pub async fn list(&self, sandbox: &SandboxName) -> Result<Vec<KeyView>, AccessError> {
        let rows: Vec<KeyRow> =
            sqlx::query_as(&format!("{SELECT} WHERE sandbox = $1 ORDER BY added_at"))
                .bind(sandbox.as_str())
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(view).collect())
    }

    /// Removes a key by its fingerprint. Errors: `NoKey`.
    #[tracing::instrument(skip(self))]
    pub async fn remove(
        &self,
        sandbox: &SandboxName,
        fingerprint: &str,
    ) -> Result<(), AccessError> {
        let done = sqlx::query("DELETE FROM sandbox_keys WHERE sandbox = $1 AND fingerprint = $2")
            .bind(sandbox.as_str())
            .bind(fingerprint)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(AccessError::NoKey {
                sandbox: sandbox.to_string(),
                fingerprint: fingerprint.to_owned(),
            });
        }
        tracing::info!("SSH key removed");
        Ok(())
    }

    /// Whether the key with this fingerprint may upload to the sandbox.
    pub async fn authorizes(
        &self,
        sandbox: &SandboxName,
        fingerprint: &str,
    ) -> Result<bool, AccessError> {
        let found: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM sandbox_keys WHERE sandbox = $1 AND fingerprint = $2",
        )
        .bind(sandbox.as_str())
        .bind(fingerprint)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }
}
