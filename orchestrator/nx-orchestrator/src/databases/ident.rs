//! PostgreSQL identifiers for NX's roles and databases, always double-quoted in SQL.
//!
//! Every role may read `pg_database`, `pg_roles` and `pg_shdescription` (PostgreSQL's
//! defaults), so the names NX gives must tell one tenant nothing about another: a sandbox's
//! role and database are `nx_` and 24 hex of an HMAC-SHA256 (RFC 2104) of the sandbox's name
//! under a key of this host's ([`SandboxIdents`], 0600 in the secrets directory). Branches are
//! named after deployment ids, which are random.

use crate::names::{DeploymentId, SandboxName};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// PostgreSQL truncates identifiers longer than this.
const MAX_IDENT: usize = 63;
/// Hex digits of the HMAC in a sandbox's identifier (96 bits).
const OPAQUE_HEX: usize = 24;

/// The key that names sandboxes' roles and databases: the same name always gets the same
/// identifier on this host, and nobody without the key can tell which name it is.
#[derive(Clone)]
pub struct SandboxIdents {
    key: [u8; 32],
}

impl std::fmt::Debug for SandboxIdents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SandboxIdents(..)")
    }
}

impl SandboxIdents {
    /// The key in `path` (64 hex digits), made and written there (0600) on first use.
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        let invalid = |why: &str| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {why}; it names every sandbox's database, restore it from a backup of the state directory", path.display()),
            )
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = hex::decode(text.trim()).map_err(|_| invalid("not hex"))?;
                let key = bytes.try_into().map_err(|_| invalid("not 32 bytes"))?;
                Ok(Self { key })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::thread_rng().fill_bytes(&mut key);
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)?;
                writeln!(file, "{}", hex::encode(key))?;
                file.sync_all()?;
                Ok(Self { key })
            }
            Err(e) => Err(e),
        }
    }

    /// The role and database of a sandbox: `nx_<24 hex>`.
    pub fn sandbox(&self, name: &SandboxName) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(b"sandbox\0");
        mac.update(name.as_str().as_bytes());
        let tag = hex::encode(mac.finalize().into_bytes());
        format!("nx_{}", &tag[..OPAQUE_HEX])
    }
}

/// Whether `name` has the form of a sandbox's opaque identifier (`nx_` and 24 lowercase hex
/// digits, [`SandboxIdents::sandbox`]): a current sandbox's, or one left by a removed sandbox.
pub fn has_opaque_form(name: &str) -> bool {
    name.strip_prefix("nx_").is_some_and(|hex| {
        hex.len() == OPAQUE_HEX && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The names NX gave before they were opaque: `nx_<sandbox>` with '-' as '_' (a long name kept
/// its first 50 characters and 8 hex of its hash). Only to find and rename them.
pub fn legacy_sandbox(name: &SandboxName) -> String {
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
    fn sandbox_names_are_opaque_stable_and_keyed() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("ident.key");
        let idents = SandboxIdents::load_or_create(&key).unwrap();
        let name = SandboxName::parse("acme-payroll").unwrap();
        let ident = idents.sandbox(&name);
        assert!(
            ident.starts_with("nx_") && ident.len() == 3 + OPAQUE_HEX,
            "{ident}"
        );
        assert!(!ident.contains("acme") && !ident.contains("payroll"));
        // The same key (read back) gives the same name; another key another.
        let again = SandboxIdents::load_or_create(&key).unwrap();
        assert_eq!(again.sandbox(&name), ident);
        let other = SandboxIdents::load_or_create(&dir.path().join("other.key")).unwrap();
        assert_ne!(other.sandbox(&name), ident);
        let mode = std::fs::metadata(&key).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        std::fs::write(&key, "short\n").unwrap();
        assert!(SandboxIdents::load_or_create(&key).is_err());
    }

    #[test]
    fn opaque_names_are_told_from_readable_ones() {
        let idents = SandboxIdents { key: [7; 32] };
        let sandbox = SandboxName::parse("my-app").unwrap();
        assert!(has_opaque_form(&idents.sandbox(&sandbox)));
        assert!(!has_opaque_form(&legacy_sandbox(&sandbox)));
        let hex_named = SandboxName::parse("0123456789abcdef01234567").unwrap();
        assert!(has_opaque_form(&legacy_sandbox(&hex_named)));
        assert!(!has_opaque_form("nx_0123456789ABCDEF01234567"));
        assert!(!has_opaque_form("nx_0123456789abcdef0123456"));
    }

    #[test]
    fn legacy_names_fit_postgres_and_do_not_collide() {
        let short = SandboxName::parse("my-app").unwrap();
        assert_eq!(legacy_sandbox(&short), "nx_my_app");
        let a = SandboxName::parse(&format!("{}a", "x".repeat(62))).unwrap();
        let b = SandboxName::parse(&format!("{}b", "x".repeat(62))).unwrap();
        assert!(legacy_sandbox(&a).len() <= MAX_IDENT);
        assert_ne!(legacy_sandbox(&a), legacy_sandbox(&b));
        assert_eq!(quote("nx_a"), "\"nx_a\"");
        assert_eq!(literal("it's"), "'it''s'");
    }
}
