//! Who may do what besides the operator's root token: deploy tokens scoped to a sandbox and to
//! verbs (`tokens`), and the public keys that may upload to a sandbox over SFTP (`ssh_keys`).
//! Both live in nxd's state database; nxd decides per route what a caller needs.

mod ssh_keys;
mod tokens;

pub use ssh_keys::SshKeyStore;
pub use tokens::TokenStore;

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("state database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("no sandbox {0}; create it first (`nx sandbox create {0}`)")]
    NoSandbox(String),
    #[error("no token {0}; `nx token ls` lists them")]
    NoToken(String),
    #[error("sandbox {sandbox} has no key {fingerprint}; `nx keys ls {sandbox}` lists them")]
    NoKey {
        sandbox: String,
        fingerprint: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("corrupt row in the state database: {0}")]
    Corrupt(String),
}

/// A foreign-key violation on `sandbox` means the sandbox does not exist.
fn no_sandbox(e: sqlx::Error, sandbox: &str) -> AccessError {
    match &e {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            AccessError::NoSandbox(sandbox.to_owned())
        }
        _ => AccessError::Db(e),
    }
}
