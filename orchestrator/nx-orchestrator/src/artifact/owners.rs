//! Which sandbox (or token) may use which stored content: rows of `content_owners` (migration
//! 0016) and `token_content_owners` (0018).
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
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// The bytes each owner's uploads under way have reserved toward its `store.max_owner_mb`
/// (attacker s12 M4: each upload saw the owner's room as it was when it began, so six at once
/// stored 913 MiB under a 200 MiB cap). An upload reserves its declared size (all the room left
/// when it declares none) before its body, and gives it back when it ends, stored or not (its
/// [`Reservation`] dropped, after the owner's row is written): what an owner holds and reserves
/// together never passes the cap.
#[derive(Debug, Default)]
pub struct Reservations {
    /// One admission at a time: an owner's reservations and held bytes are read, and its new
    /// reservation made, with no other admission in between.
    pub admitting: tokio::sync::Mutex<()>,
    by_owner: Arc<Mutex<HashMap<String, u64>>>,
}

impl Reservations {
    /// The bytes `owner`'s uploads under way reserved.
    pub fn reserved(&self, owner: Owner<'_>) -> u64 {
        let by_owner = self.by_owner.lock().expect("lock");
        by_owner.get(&owner.to_string()).copied().unwrap_or(0)
    }

    /// Reserves `bytes` under `owner` until the returned [`Reservation`] is dropped (call it
    /// holding [`Self::admitting`], after checking the room).
    pub fn take(&self, owner: Owner<'_>, bytes: u64) -> Reservation {
        let owner = owner.to_string();
        let mut by_owner = self.by_owner.lock().expect("lock");
        *by_owner.entry(owner.clone()).or_default() += bytes;
        Reservation {
            by_owner: Arc::clone(&self.by_owner),
            owner,
            bytes,
        }
    }
}

/// Bytes an upload reserved under its owner ([`Reservations::take`]), given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    by_owner: Arc<Mutex<HashMap<String, u64>>>,
    owner: String,
    bytes: u64,
}

impl Reservation {
    /// The bytes reserved.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut by_owner = self.by_owner.lock().expect("lock");
        if let Some(left) = by_owner.get_mut(&self.owner) {
            *left = left.saturating_sub(self.bytes);
            if *left == 0 {
                by_owner.remove(&self.owner);
            }
        }
    }
}

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
    /// The whole store: the root token and deploy tokens for every sandbox that may push (which
    /// may already put any stored program in any sandbox). A push through this view makes the
    /// target sandbox an owner of what it runs.
    Host,
    /// Only what this sandbox owns: a deploy token scoped to it.
    Sandbox(SandboxName),
    /// Only what the deploy token of this id uploaded: a token for every sandbox that may not
    /// push (e.g. `--can tasks`, whose tasks belong to no sandbox). It cannot put a program in
    /// a sandbox, so the host's store is not its to see or run (attacker s8 F12).
    Token(String),
}

impl StoreView {
    /// The owner whose rows this view sees; `None` for the host's view, which sees all.
    pub fn owner(&self) -> Option<Owner<'_>> {
        match self {
            StoreView::Host => None,
            StoreView::Sandbox(sandbox) => Some(Owner::Sandbox(sandbox)),
            StoreView::Token(id) => Some(Owner::Token(id)),
        }
    }
}

/// Who owns stored content: a sandbox (rows of `content_owners`, gone with the sandbox) or a
/// deploy token for every sandbox that may not push (rows of `token_content_owners`, migration
/// 0018, gone with the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    /// A sandbox, by name.
    Sandbox(&'a SandboxName),
    /// A deploy token, by id (`deploy_tokens.id`).
    Token(&'a str),
}

impl Owner<'_> {
    /// Its table and the column naming it there, and its key in that column.
    fn row(&self) -> (&'static str, &'static str, &str) {
        match self {
            Owner::Sandbox(sandbox) => ("content_owners", "sandbox", sandbox.as_str()),
            Owner::Token(id) => ("token_content_owners", "token", id),
        }
    }
}

impl std::fmt::Display for Owner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Sandbox(sandbox) => write!(f, "sandbox {sandbox}"),
            Owner::Token(id) => write!(f, "token {id}"),
        }
    }
}

/// Makes `owner` an owner of each of `digests` of `kind`, each with its size in bytes (what
/// it counts toward the owner's `store.max_owner_mb`; a bundle's is its tree's,
/// `BundleManifest::tree_bytes`: its files are blobs, counted in rows of their own).
/// Owning twice is owning (the size is updated: rows from before migration 0019 had none; and
/// `created_at`, which the collection's [`forget_unstored`] goes by, is the last grant). An
/// owner that does not exist (a removed sandbox or token) is a foreign key violation.
pub async fn grant(
    pool: &PgPool,
    owner: Owner<'_>,
    kind: Content,
    digests: &[(String, u64)],
) -> Result<(), sqlx::Error> {
    let (table, column, key) = owner.row();
    let (shas, sizes): (Vec<&str>, Vec<i64>) = digests
        .iter()
        .map(|(sha, size)| (sha.as_str(), i64::try_from(*size).unwrap_or(i64::MAX)))
        .unzip();
    sqlx::query(&format!(
        "INSERT INTO {table} ({column}, kind, sha256, size) SELECT $1, $2, d.sha256, d.size \
         FROM unnest($3::text[], $4::bigint[]) AS d(sha256, size) \
         ON CONFLICT ({column}, kind, sha256) DO UPDATE SET size = EXCLUDED.size, created_at = now()"
    ))
    .bind(key)
    .bind(kind.as_str())
    .bind(&shas)
    .bind(&sizes)
    .execute(pool)
    .await?;
    Ok(())
}

/// The bytes of stored content `owner` holds (the sum of its rows' sizes; what
/// `store.max_owner_mb` bounds).
pub async fn held_bytes(pool: &PgPool, owner: Owner<'_>) -> Result<u64, sqlx::Error> {
    let (table, column, key) = owner.row();
    let held: i64 = sqlx::query_scalar(&format!(
        "SELECT COALESCE(SUM(size), 0)::bigint FROM {table} WHERE {column} = $1"
    ))
    .bind(key)
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(held).unwrap_or(0))
}

/// After the store's collection: the rows of `kind` naming a digest not in `stored` (deleted
/// unused, or by a collection a crash cut short) go, from both owners' tables, unless granted
/// at or after `cutoff` (an upload stored after the collection listed the store). Returns how
/// many went.
pub async fn forget_unstored(
    pool: &PgPool,
    kind: Content,
    stored: &[String],
    cutoff: chrono::DateTime<chrono::Utc>,
) -> Result<u64, sqlx::Error> {
    let mut gone = 0;
    for table in ["content_owners", "token_content_owners"] {
        gone += sqlx::query(&format!(
            "DELETE FROM {table} WHERE kind = $1 AND created_at < $2 AND NOT (sha256 = ANY($3))"
        ))
        .bind(kind.as_str())
        .bind(cutoff)
        .bind(stored)
        .execute(pool)
        .await?
        .rows_affected();
    }
    Ok(gone)
}

/// Which of `digests` of `kind` `owner` owns.
pub async fn owned(
    pool: &PgPool,
    owner: Owner<'_>,
    kind: Content,
    digests: &[String],
) -> Result<HashSet<String>, sqlx::Error> {
    let (table, column, key) = owner.row();
    let rows: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT sha256 FROM {table} WHERE {column} = $1 AND kind = $2 AND sha256 = ANY($3)"
    ))
    .bind(key)
    .bind(kind.as_str())
    .bind(digests)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}
