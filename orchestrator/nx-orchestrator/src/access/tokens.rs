//! Deploy tokens: `nxdt_<id>_<secret>`, 32 random bytes of secret, printed once. The store
//! keeps only the sha256 of the whole token, so a copy of the database grants nothing; a token
//! is found by that hash (the secret has 256 bits, so a fast hash is enough: no password
//! stretching is needed for a value nobody can guess).

use super::{no_sandbox, AccessError};
use crate::api::access::{CreateToken, CreatedToken, TokenView, Verb, VerbSet};
use crate::names::SandboxName;
use rand::Rng;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

const PREFIX: &str = "nxdt_";

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: String,
    sandbox: Option<String>,
    verbs: Vec<String>,
    created_at: chrono::DateTime<chrono::Utc>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl TryFrom<TokenRow> for TokenView {
    type Error = AccessError;
    fn try_from(row: TokenRow) -> Result<Self, AccessError> {
        let corrupt = || AccessError::Corrupt(format!("token {}", row.id));
        let verbs = row
            .verbs
            .iter()
            .map(|v| v.parse::<Verb>().map_err(|_| corrupt()))
            .collect::<Result<Vec<_>, _>>()?;
        let sandbox = match &row.sandbox {
            Some(s) => Some(SandboxName::parse(s).map_err(|_| corrupt())?),
            None => None,
        };
        Ok(TokenView {
            id: row.id,
            sandbox,
            can: VerbSet::from(verbs),
            created_at: row.created_at,
            expires_at: row.expires_at,
        })
    }
}

/// Length of a token's id, in characters of [`ID_ALPHABET`].
const ID_LEN: usize = 8;
/// The characters of a token's id.
const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

const SELECT: &str = "SELECT id, sandbox, verbs, created_at, expires_at FROM deploy_tokens";

/// Deploy tokens in nxd's state database (table `deploy_tokens`).
#[derive(Clone)]
pub struct TokenStore {
    pool: PgPool,
}

impl TokenStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Creates a token; the answer holds it in clear, which nothing else ever does again.
    /// Errors: `NoSandbox` when the scope names a sandbox that does not exist.
    #[tracing::instrument(skip_all, fields(sandbox = ?req.sandbox, can = %req.can))]
    pub async fn create(&self, req: &CreateToken) -> Result<CreatedToken, AccessError> {
        let (id, token) = {
            let mut rng = rand::thread_rng();
            let id: String = (0..ID_LEN)
                .map(|_| char::from(ID_ALPHABET[rng.gen_range(0..ID_ALPHABET.len())]))
                .collect();
            let secret: [u8; 32] = rng.gen();
            let token = format!("{PREFIX}{id}_{}", hex::encode(secret));
            (id, token)
        };
        let created_at = chrono::Utc::now();
        let expires_at = match req.expires_in_secs {
            Some(secs) => Some(
                created_at
                    + chrono::Duration::try_seconds(i64::try_from(secs).unwrap_or(i64::MAX))
                        .ok_or_else(|| AccessError::Invalid("expiry too far away".into()))?,
            ),
            None => None,
        };
        let verbs: Vec<&str> = req.can.iter().map(<&str>::from).collect();
        let sandbox = req.sandbox.as_ref().map(SandboxName::as_str);
        sqlx::query(
            "INSERT INTO deploy_tokens (id, sha256, sandbox, verbs, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(hash(&token))
        .bind(sandbox)
        .bind(&verbs)
        .bind(created_at)
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .map_err(|e| no_sandbox(e, sandbox.unwrap_or_default()))?;
        tracing::info!(%id, "deploy token created");
        Ok(CreatedToken {
            token,
            view: TokenView {
                id,
                sandbox: req.sandbox.clone(),
                can: req.can.clone(),
                created_at,
                expires_at,
            },
        })
    }

    /// The token a caller presented, if it is one (expired or not: the caller says which).
    pub async fn find(&self, presented: &str) -> Result<Option<TokenView>, AccessError> {
        if !presented.starts_with(PREFIX) {
            return Ok(None);
        }
        let row: Option<TokenRow> = sqlx::query_as(&format!("{SELECT} WHERE sha256 = $1"))
            .bind(hash(presented))
            .fetch_optional(&self.pool)
            .await?;
        row.map(TokenView::try_from).transpose()
    }

    pub async fn list(&self) -> Result<Vec<TokenView>, AccessError> {
        let rows: Vec<TokenRow> = sqlx::query_as(&format!("{SELECT} ORDER BY created_at"))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(TokenView::try_from).collect()
    }

    /// Removes a token by its id; it is refused (401) from then on.
    pub async fn remove(&self, id: &str) -> Result<(), AccessError> {
        if id.len() != ID_LEN || !id.bytes().all(|b| ID_ALPHABET.contains(&b)) {
            // Not an id NX gives (PostgreSQL would refuse a NUL byte with an error of its own).
            return Err(AccessError::NoToken(id.escape_debug().to_string()));
        }
        let done = sqlx::query("DELETE FROM deploy_tokens WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(AccessError::NoToken(id.to_owned()));
        }
        tracing::info!(%id, "deploy token removed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_not_the_token() {
        let t = "nxdt_abcdefgh_00";
        assert_eq!(hash(t).len(), 64);
        assert!(!hash(t).contains(t));
    }
}
