//! Which sandbox may use which stored content: rows of `content_owners` (migration 0016).
//!
//! The store keeps one file per digest for the whole host (deduplicated on disk). What a caller
//! sees of it depends on its [`StoreView`]: a token scoped to one sandbox sees only the digests
//! that sandbox owns (it uploaded them, or a host-wide caller pushed them to it); every other
//! digest reads as missing, so the store tells one tenant nothing about another's files
//! (attacker s7 F10, the cross-user deduplication side channel). The price is upload
//! bandwidth: a tenant uploads a file another tenant already stored, and its bytes are checked
//! against the digest before the tenant owns it.

use crate::names::SandboxName;
use sqlx::PgPool;
use std::collections::HashSet;

/// The three kinds of stored content, each a store of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// A program (binary or image archive): `<state_dir>/artifacts/<sha256>`, `/v1/artifacts`.
    Artifact,
    /// A bundle's file: `<state_dir>/blobs/<sha256>`, `/v1/blobs`.
    Blob,
    /// A bundle, by its id (the sha256 of its manifest): `<state_dir>/bundles/<id>`.
    Bundle,
}

impl Content {
    /// Its name in `content_owners.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Content::Artifact => "artifact",
            Content::Blob => "blob",
            Content::Bundle => "bundle",
        }
    }
}

/// Whose view of the store a caller has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreView {
    /// The whole store: the root token and deploy tokens scoped to every sandbox (which may
    /// already push to, and read the logs of, any sandbox). A push through this view makes the
    /// target sandbox an owner of what it runs.
    Host,
    /// Only what this sandbox owns: a deploy token scoped to it.
    Sandbox(SandboxName),
}

/// Makes `sandbox` an owner of each of `digests` of `kind` (owning twice is owning).
pub async fn grant(
    pool: &PgPool,
    sandbox: &SandboxName,
    kind: Content,
    digests: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO content_owners (sandbox, kind, sha256) SELECT $1, $2, unnest($3::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(sandbox.as_str())
    .bind(kind.as_str())
    .bind(digests)
    .execute(pool)
    .await?;
    Ok(())
}

/// Which of `digests` of `kind` `sandbox` owns.
pub async fn owned(
    pool: &PgPool,
    sandbox: &SandboxName,
    kind: Content,
    digests: &[String],
) -> Result<HashSet<String>, sqlx::Error> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT sha256 FROM content_owners WHERE sandbox = $1 AND kind = $2 AND sha256 = ANY($3)",
    )
    .bind(sandbox.as_str())
    .bind(kind.as_str())
    .bind(digests)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}
