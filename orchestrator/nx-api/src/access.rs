//! Access: deploy tokens (`nx token`), the public keys that may upload to a sandbox over SFTP
//! (`nx keys`), the SFTP server's host key, and a sandbox's deployment settings (`nx sandbox
//! set`).

use crate::names::SandboxName;
use crate::{Egress, LimitsOverride};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// What a deploy token may do, each on the sandboxes of its scope.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    strum::AsRefStr,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::Display,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Verb {
    /// Upload artifacts; create, start, stop and remove deployments; create the sandbox and
    /// change its deployment settings.
    Push,
    /// Point production at a deployment.
    Promote,
    /// Point production back at the previous deployment.
    Rollback,
    /// Read deployments' logs.
    Logs,
    /// The sandbox's database: its URL, backups, restores.
    Db,
    /// Run tasks (`POST /v1/tasks`; tasks belong to no sandbox).
    Tasks,
}

impl Verb {
    pub const ALL: [Verb; 6] = [
        Verb::Push,
        Verb::Promote,
        Verb::Rollback,
        Verb::Logs,
        Verb::Db,
        Verb::Tasks,
    ];
}

/// A set of verbs, e.g. parsed from `push,promote`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VerbSet(Vec<Verb>);

impl VerbSet {
    /// What a token gets when `--can` is not given: what a CI deploy needs.
    pub fn ci_default() -> Self {
        Self(vec![Verb::Push, Verb::Promote, Verb::Rollback])
    }

    /// Parses a comma-separated list (`push,promote,logs`); an unknown verb is an error that
    /// lists the known ones.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut verbs = Vec::new();
        for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let verb: Verb = word.parse().map_err(|_| {
                format!(
                    "unknown verb {word:?}; a token can: {}",
                    VerbSet(Verb::ALL.to_vec())
                )
            })?;
            verbs.push(verb);
        }
        if verbs.is_empty() {
            return Err(format!(
                "a token needs at least one verb: {}",
                VerbSet(Verb::ALL.to_vec())
            ));
        }
        Ok(Self::from(verbs))
    }

    pub fn contains(&self, verb: Verb) -> bool {
        self.0.contains(&verb)
    }

    pub fn iter(&self) -> impl Iterator<Item = Verb> + '_ {
        self.0.iter().copied()
    }
}

impl From<Vec<Verb>> for VerbSet {
    fn from(mut verbs: Vec<Verb>) -> Self {
        verbs.sort();
        verbs.dedup();
        Self(verbs)
    }
}

impl fmt::Display for VerbSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<&str> = self.0.iter().map(|v| v.as_ref()).collect();
        f.write_str(&words.join(","))
    }
}

/// `POST /v1/tokens`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// The one sandbox it may act on; none: every sandbox.
    pub sandbox: Option<SandboxName>,
    /// What it may do; default `push,promote,rollback`.
    #[serde(default = "VerbSet::ci_default")]
    pub can: VerbSet,
    /// It stops working this many seconds after it was created; none: never.
    pub expires_in_secs: Option<u64>,
}

/// A token as `nx token ls` shows it: never the token itself.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenView {
    pub id: String,
    pub sandbox: Option<SandboxName>,
    pub can: VerbSet,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl TokenView {
    pub fn expired(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// The answer to `POST /v1/tokens`: the token, shown this once.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    pub token: String,
    #[serde(flatten)]
    pub view: TokenView,
}

/// A sandbox's key as `nx keys ls` shows it.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyView {
    /// `SHA256:<base64>` of the key, as `ssh-keygen -lf key.pub` prints it.
    pub fingerprint: String,
    /// The OpenSSH public key: `<algorithm> <base64>`.
    pub public_key: String,
    pub comment: String,
    pub added_at: chrono::DateTime<chrono::Utc>,
}

/// `POST /v1/sandboxes/{name}/keys`: an OpenSSH public key line (`ssh-ed25519 AAAA... comment`).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddKey {
    pub public_key: String,
}

/// `DELETE /v1/tokens/{id}`: the id of the token removed.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRemoved {
    pub removed: String,
}

/// `DELETE /v1/sandboxes/{name}/keys?key=`: the fingerprint of the key removed.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyRemoved {
    pub removed: String,
}

/// `GET /v1/sftp/host-key`: what users pin (`nx keys host`).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostKeyView {
    /// Where the SFTP server listens.
    pub listen: std::net::SocketAddr,
    /// `ssh-ed25519 AAAA...`, for a known_hosts line.
    pub public_key: String,
    /// `SHA256:...`, as ssh prints it on first connection.
    pub fingerprint: String,
}

/// What each `env` value of [`SandboxSettings`] reads as for a deploy token without the
/// `push` verb: the root token and push tokens (which may set the values, and whose
/// deployments run with them) read the values.
pub const HIDDEN_ENV_VALUE: &str = "(hidden: only a token with the push verb reads it)";

/// A sandbox's deployment settings (`nx sandbox set`): the environment, arguments and limits
/// its deployments start with. An SFTP upload runs with exactly these; `nx push` starts from
/// them, and what it names itself wins (`-e K=V` over the same key, `-- args` over the
/// arguments, each limit over the same limit).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxSettings {
    /// Environment variables for the program. They often hold secrets: read with a deploy
    /// token without the `push` verb, the names show and each value is `(hidden: only a token
    /// with the push verb reads it)` ([`HIDDEN_ENV_VALUE`]).
    pub env: BTreeMap<String, String>,
    /// Arguments for the program; none: none.
    pub args: Vec<String>,
    /// MemoryMax, CPUQuota, TasksMax; unset ones come from nxd's `[limits]`.
    pub limits: LimitsOverride,
    /// Seconds a deployment has to become ready; none: nxd's `sandbox.ready_timeout_secs`.
    pub ready_timeout_secs: Option<u64>,
    /// Connections out of a deployment's network namespace (`nx push --egress` overrides
    /// it); none: no way out.
    pub egress: Option<Egress>,
    /// The health check its deployments start with (a push's own fields win).
    pub health_check: crate::HealthCheck,
    /// Seconds with no request after which a deployment is stopped until the next one (a
    /// push's `--idle-timeout` wins); none: never. It applies to production too only with
    /// `idle_production`.
    pub idle_timeout_secs: Option<u64>,
    /// Production is stopped when idle as well (by default only previews are).
    pub idle_production: bool,
    /// A preview (not production, not pinned) with no request for this many seconds is
    /// removed; none: nxd's `sandbox.preview_ttl_secs`.
    pub preview_ttl_secs: Option<u64>,
}

impl SandboxSettings {
    /// A push's own values over these: env key by key, args when it names any, each limit
    /// it names.
    pub fn under(
        &self,
        env: BTreeMap<String, String>,
        args: Vec<String>,
        limits: &LimitsOverride,
    ) -> (BTreeMap<String, String>, Vec<String>, LimitsOverride) {
        let mut merged = self.env.clone();
        merged.extend(env);
        let args = if args.is_empty() {
            self.args.clone()
        } else {
            args
        };
        let limits = limits.over(&self.limits);
        (merged, args, limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verb_lists_parse_sorted_and_unknown_verbs_are_named() {
        let set = VerbSet::parse("promote, push,push").unwrap();
        assert_eq!(set.to_string(), "push,promote");
        let e = VerbSet::parse("push,deploy").unwrap_err();
        assert!(
            e.contains("\"deploy\"") && e.contains("push,promote,rollback,logs,db,tasks"),
            "{e}"
        );
        assert!(VerbSet::parse("").is_err());
    }

    #[test]
    fn a_push_wins_over_the_settings_key_by_key() {
        let settings = SandboxSettings {
            env: BTreeMap::from([("A".into(), "1".into()), ("B".into(), "1".into())]),
            args: vec!["--serve".into()],
            limits: LimitsOverride {
                memory_max_mb: Some(128),
                cpu_quota_percent: Some(50),
                ..Default::default()
            },
            ..Default::default()
        };
        let (env, args, limits) = settings.under(
            BTreeMap::from([("B".into(), "2".into())]),
            vec![],
            &LimitsOverride {
                memory_max_mb: Some(256),
                ..Default::default()
            },
        );
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "2");
        assert_eq!(args, ["--serve"]);
        assert_eq!(limits.memory_max_mb, Some(256));
        assert_eq!(limits.cpu_quota_percent, Some(50));
        assert_eq!(limits.tasks_max, None);
        let (_, args, _) = settings.under(BTreeMap::new(), vec!["x".into()], &limits);
        assert_eq!(args, ["x"]);
    }
}
