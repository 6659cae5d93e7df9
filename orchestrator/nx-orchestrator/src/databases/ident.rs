//! PostgreSQL identifiers for NX's roles and databases, derived from names NX has already
//! validated (a-z, 0-9, '-'), and always double-quoted in SQL.

use crate::names::{DeploymentId, SandboxName};
use sha2::{Digest, Sha256};

/// PostgreSQL truncates identifiers longer than this.
const MAX_IDENT: usize = 63;

/// `nx_<sandbox>` with '-' as '_'; a name that would be too long keeps its first 50 characters
/// and gets 8 hex of its hash, so that two long names never collide.
pub fn sandbox(name: &SandboxName) -> String {
    let plain = format!("nx_{}", name.as_str().replace('-', "_"));
    if plain.len() <= MAX_IDENT {
        return plain;
    }
    let hash = hex::encode(Sha256::digest(name.as_str().as_bytes()));
    format!("{}_{}", &plain[..50], &hash[..8])
}

/// The database and role of a deployment's preview branch.
pub fn branch(id: &DeploymentId) -> String {
    format!("nxb_{}", id.as_str().replace('-', "_"))
}

/// A quoted identifier. Every NX identifier is `[a-z0-9_]+`, so quoting is only a second guard.
pub fn quote(ident: &str) -> String {
    debug_assert!(ident
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A quoted string literal.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_postgres_and_do_not_collide() {
        let short = SandboxName::parse("my-app").unwrap();
        assert_eq!(sandbox(&short), "nx_my_app");
        let a = SandboxName::parse(&format!("{}a", "x".repeat(62))).unwrap();
        let b = SandboxName::parse(&format!("{}b", "x".repeat(62))).unwrap();
        assert!(sandbox(&a).len() <= MAX_IDENT);
        assert_ne!(sandbox(&a), sandbox(&b));
        assert_eq!(quote("nx_a"), "\"nx_a\"");
        assert_eq!(literal("it's"), "'it''s'");
    }
}
