//! Backups with the stock tools: `pg_dump --format=custom`, restored by `pg_restore`, so a dump
//! made by NX restores into any PostgreSQL.

use super::{ident, quote, Databases, DbError};
use crate::embedded_db::find_binary;
use crate::names::SandboxName;
pub use nx_api::{BackupInfo, RestoreInfo};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::Command;

fn check_id(id: &str) -> Result<(), DbError> {
    let ok = id.len() == 19
        && id.ends_with('Z')
        && id.as_bytes()[8] == b'T'
        && id
            .chars()
            .enumerate()
            .all(|(i, c)| i == 8 || i == 18 || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(DbError::BadBackupId(id.chars().take(80).collect()))
    }
}

fn now_id() -> String {
    chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ").to_string()
}

/// Runs a PostgreSQL tool; its stderr becomes the error.
async fn run(tool: &'static str, cmd: &mut Command) -> Result<(), DbError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| DbError::Tool {
            tool,
            message: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(DbError::Tool {
        tool,
        message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

/// Copies one database into another through pg_dump | pg_restore, objects owned by `role`.
pub(super) async fn copy(dbs: &Databases, from: &str, to: &str, role: &str) -> Result<(), DbError> {
    let dir = tempfile::tempdir_in(&dbs.backups)?;
    let dump = dir.path().join("copy.dump");
    dump_to(dbs, from, &dump).await?;
    restore_into(dbs, &dump, to, role).await
}

async fn dump_to(dbs: &Databases, database: &str, file: &Path) -> Result<(), DbError> {
    run(
        "pg_dump",
        Command::new(find_binary("pg_dump")?)
            .arg("--format=custom")
            .arg("--file")
            .arg(file)
            .arg("--dbname")
            .arg(dbs.database_url(database)),
    )
    .await
}

async fn restore_into(
    dbs: &Databases,
    file: &Path,
    database: &str,
    role: &str,
) -> Result<(), DbError> {
    run(
        "pg_restore",
        Command::new(find_binary("pg_restore")?)
            .args([
                "--no-owner",
                "--no-acl",
                "--exit-on-error",
                "--single-transaction",
            ])
            .arg(format!("--role={role}"))
            .arg("--dbname")
            .arg(dbs.database_url(database))
            .arg(file),
    )
    .await
}

impl Databases {
    /// Puts `replacement` in the place of the sandbox's database. The old one is kept, renamed
    /// `nxo_<time>` and closed to connections, until the user drops it; open connections to
    /// both are ended (a rename needs none). Returns the old one's new name.
    pub(super) async fn swap_in(
        &self,
        sandbox: &SandboxName,
        replacement: &str,
        why: &str,
    ) -> Result<String, DbError> {
        let production = ident::sandbox(sandbox);
        let previous = format!("nxo_{}", now_id().to_lowercase());
        let mut tx = self.admin.begin().await?;
        sqlx::query(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS false",
            quote(&production)
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 OR datname = $2",
        )
        .bind(&production)
        .bind(replacement)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        for sql in [
            format!(
                "ALTER DATABASE {} RENAME TO {}",
                quote(&production),
                quote(&previous)
            ),
            format!(
                "ALTER DATABASE {} RENAME TO {}",
                quote(replacement),
                quote(&production)
            ),
            format!(
                "COMMENT ON DATABASE {} IS {}",
                quote(&previous),
                ident::literal(&format!("NX: {sandbox} before {why}"))
            ),
        ] {
            sqlx::query(&sql).execute(&self.admin).await?;
        }
        self.restrict(&production, &production).await?;
        Ok(previous)
    }

    fn backup_dir(&self, sandbox: &SandboxName) -> PathBuf {
        self.backups.join(sandbox.as_str())
    }

    pub fn backup_path(&self, sandbox: &SandboxName, id: &str) -> Result<PathBuf, DbError> {
        check_id(id)?;
        let path = self.backup_dir(sandbox).join(format!("{id}.dump"));
        if !path.is_file() {
            return Err(DbError::NoBackup {
                sandbox: sandbox.to_string(),
                id: id.into(),
            });
        }
        Ok(path)
    }

    /// Backups kept on the host, oldest first.
    pub fn backups(&self, sandbox: &SandboxName) -> Result<Vec<BackupInfo>, DbError> {
        let mut list: Vec<BackupInfo> = match std::fs::read_dir(self.backup_dir(sandbox)) {
            Ok(entries) => entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let id = name.strip_suffix(".dump")?.to_owned();
                    check_id(&id).ok()?;
                    Some(BackupInfo {
                        id,
                        size: e.metadata().ok()?.len(),
                    })
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        list.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(list)
    }

    /// Dumps the sandbox's database into its backup dir, then deletes the oldest backups
    /// beyond the retention count.
    #[tracing::instrument(skip(self))]
    pub async fn backup(&self, sandbox: &SandboxName) -> Result<BackupInfo, DbError> {
        let database = self.ensure_sandbox(sandbox).await?.database;
        let dir = self.backup_dir(sandbox);
        std::fs::create_dir_all(&dir)?;
        let id = now_id();
        let temp = tempfile::Builder::new()
            .suffix(".partial")
            .tempfile_in(&dir)?;
        dump_to(self, &database, temp.path()).await?;
        let path = dir.join(format!("{id}.dump"));
        temp.persist(&path).map_err(|e| DbError::Io(e.error))?;
        let all = self.backups(sandbox)?;
        for old in &all[..all.len().saturating_sub(self.retention)] {
            std::fs::remove_file(dir.join(format!("{}.dump", old.id)))?;
        }
        let size = std::fs::metadata(&path)?.len();
        tracing::info!(%id, size, "backup made");
        Ok(BackupInfo { id, size })
    }

    /// A temp file for an uploaded dump, removed when dropped.
    pub fn upload_file(&self) -> Result<tempfile::NamedTempFile, DbError> {
        Ok(tempfile::Builder::new()
            .prefix("upload-")
            .suffix(".dump")
            .tempfile_in(&self.backups)?)
    }

    pub fn rm_backup(&self, sandbox: &SandboxName, id: &str) -> Result<(), DbError> {
        Ok(std::fs::remove_file(self.backup_path(sandbox, id)?)?)
    }

    /// Restores a dump into a fresh database and, only when that succeeded, swaps it in for
    /// the sandbox's database; the previous one is kept, renamed, until the user drops it.
    /// Deployments' open connections to the old database are ended by the swap.
    #[tracing::instrument(skip(self, dump))]
    pub async fn restore(
        &self,
        sandbox: &SandboxName,
        dump: &Path,
    ) -> Result<RestoreInfo, DbError> {
        run(
            "pg_restore --list",
            Command::new(find_binary("pg_restore")?)
                .arg("--list")
                .arg(dump),
        )
        .await
        .map_err(|e| DbError::BadDump(e.to_string()))?;
        let creds = self.ensure_sandbox(sandbox).await?;
        let stamp = now_id().to_lowercase();
        let fresh = format!("nxr_{stamp}");
        self.create_database(&fresh, &creds.role).await?;
        if let Err(e) = restore_into(self, dump, &fresh, &creds.role).await {
            sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote(&fresh)
            ))
            .execute(&self.admin)
            .await?;
            return Err(match e {
                DbError::Tool { message, .. } => DbError::BadDump(message),
                other => other,
            });
        }
        let previous = self
            .swap_in(sandbox, &fresh, &format!("the restore of {stamp}"))
            .await?;
        tracing::info!(%previous, "restored");
        Ok(RestoreInfo {
            previous_database: previous,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::check_id;

    #[test]
    fn backup_ids_are_timestamps_only() {
        assert!(check_id("20261129T052012123Z").is_ok());
        for bad in [
            "../../etc/passwd",
            "20261129T052012123Z; DROP",
            "",
            "x".repeat(200).as_str(),
        ] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }
}
