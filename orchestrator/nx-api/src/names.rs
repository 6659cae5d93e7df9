//! Names a user types: sandbox names and deployment ids. Both end up in DNS labels
//! (`<deployment>.<sandbox>.<base-domain>`), systemd unit names and paths, so both are checked
//! here once, with messages that say what a valid name looks like.

use rand::Rng;
use std::fmt;

/// The longest DNS label.
const MAX_LABEL: usize = 63;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {what} {shown:?}: {why}")]
pub struct NameError {
    what: &'static str,
    shown: String,
    why: String,
}

fn check_label(what: &'static str, name: &str) -> Result<(), NameError> {
    let fail = |why: String| NameError {
        what,
        shown: name.chars().take(80).collect(),
        why,
    };
    if name.is_empty() {
        return Err(fail(
            "it is empty; use 1 to 63 characters: a-z, 0-9 and '-'".into(),
        ));
    }
    if name.len() > MAX_LABEL {
        return Err(fail(format!(
            "it has {} characters; use at most {MAX_LABEL} (it becomes a DNS label)",
            name.len()
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        let hint = if bad.is_ascii_uppercase() {
            " (use lowercase)"
        } else {
            ""
        };
        return Err(fail(format!(
            "{bad:?} is not allowed{hint}; use only a-z, 0-9 and '-'"
        )));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(fail("it may not start or end with '-'".into()));
    }
    Ok(())
}

/// A sandbox name: a DNS label, lowercase.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct SandboxName(String);

impl SandboxName {
    pub fn parse(name: &str) -> Result<Self, NameError> {
        check_label("sandbox name", name)?;
        Ok(Self(name.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A deployment id: `d` and seven base-36 characters, unique on a host.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct DeploymentId(String);

impl DeploymentId {
    pub fn parse(id: &str) -> Result<Self, NameError> {
        check_label("deployment id", id)?;
        Ok(Self(id.to_owned()))
    }
    pub fn generate() -> Self {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::thread_rng();
        let tail: String = (0..7)
            .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
            .collect();
        Self(format!("d{tail}"))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A volume's name within its sandbox (`nx volume create`): like a sandbox name, a-z, 0-9 and
/// '-', at most 63 (so no '/', '..' or uppercase).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct VolumeName(String);

impl VolumeName {
    pub fn parse(name: &str) -> Result<Self, NameError> {
        check_label("volume name", name)?;
        Ok(Self(name.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! display_and_deserialize {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                <$t>::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}
display_and_deserialize!(SandboxName);
display_and_deserialize!(DeploymentId);
display_and_deserialize!(VolumeName);

/// A sha256 digest in lowercase hex, as the artifact store names files.
pub fn check_sha256(hex: &str) -> Result<(), NameError> {
    if hex.len() == 64 && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
        Ok(())
    } else {
        Err(NameError {
            what: "artifact digest",
            shown: hex.chars().take(80).collect(),
            why: "expected 64 lowercase hex characters (a sha256)".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["web", "my-app-2", "a", &"x".repeat(63)] {
            assert!(SandboxName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_traversal_uppercase_and_long_names_with_a_reason() {
        let e = SandboxName::parse("../etc").unwrap_err().to_string();
        assert!(e.contains("'.' is not allowed"), "{e}");
        let e = SandboxName::parse("MyApp").unwrap_err().to_string();
        assert!(e.contains("use lowercase"), "{e}");
        let e = SandboxName::parse(&"a".repeat(200))
            .unwrap_err()
            .to_string();
        assert!(e.contains("200 characters"), "{e}");
        assert!(SandboxName::parse("").is_err());
        assert!(SandboxName::parse("-a").is_err());
        assert!(SandboxName::parse("a;b").is_err());
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = DeploymentId::generate();
        let b = DeploymentId::generate();
        assert!(DeploymentId::parse(a.as_str()).is_ok());
        assert_ne!(a, b);
    }

    #[test]
    fn digests_must_be_sha256_hex() {
        assert!(check_sha256(&"a".repeat(64)).is_ok());
        assert!(check_sha256("../../etc/passwd").is_err());
        assert!(check_sha256(&"A".repeat(64)).is_err());
    }
}
