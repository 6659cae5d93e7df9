//! systemd's words for a unit's state, as typed enums: `ActiveState`, a service's `SubState` and
//! `Result` (systemd.unit(5), systemd.service(5); org.freedesktop.systemd1(5) names the D-Bus
//! properties). A value this version does not know is kept as `Other`, spelled as systemd did.
//! On the wire each is systemd's own string, e.g. `"active"`, `"auto-restart"`, `"exit-code"`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Serialises as systemd's string and reads any string (unknown ones as `Other`).
macro_rules! systemd_string {
    ($t:ty, $example:literal) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Ok(s.parse().unwrap_or(Self::Other(s)))
            }
        }
        impl From<String> for $t {
            fn from(s: String) -> Self {
                s.parse().unwrap_or(Self::Other(s))
            }
        }
        /// A string: systemd's word (any, since systemd may add words).
        #[cfg(feature = "schema")]
        impl schemars::JsonSchema for $t {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($t).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "description": concat!("systemd's ", stringify!($t), ", e.g. ", $example),
                })
            }
        }
    };
}

/// A unit's `ActiveState` (systemd.unit(5)).
#[derive(Debug, Clone, PartialEq, Eq, Hash, strum::Display, strum::EnumString)]
#[strum(serialize_all = "kebab-case")]
pub enum ActiveState {
    Active,
    Reloading,
    /// Not running; also what systemd says of a unit it does not know.
    Inactive,
    /// Not running, and its last run failed (see `Result`).
    Failed,
    Activating,
    Deactivating,
    Maintenance,
    Refreshing,
    #[strum(default)]
    Other(String),
}
systemd_string!(ActiveState, "\"active\"");

/// A service's `SubState` (systemd.service(5); the states of `systemctl --state=help`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, strum::Display, strum::EnumString)]
#[strum(serialize_all = "kebab-case")]
pub enum SubState {
    Dead,
    Condition,
    StartPre,
    Start,
    StartPost,
    Running,
    Exited,
    Reload,
    Stop,
    StopWatchdog,
    StopSigterm,
    StopSigkill,
    StopPost,
    FinalWatchdog,
    FinalSigterm,
    FinalSigkill,
    Failed,
    /// Its process ended; systemd restarts it after `RestartSec`.
    AutoRestart,
    AutoRestartQueued,
    DeadBeforeAutoRestart,
    FailedBeforeAutoRestart,
    DeadResourcesPinned,
    Cleaning,
    #[strum(default)]
    Other(String),
}
systemd_string!(SubState, "\"auto-restart\"");

/// A service's `Result`: how its last run ended (systemd.service(5), `$SERVICE_RESULT`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, strum::Display, strum::EnumString)]
#[strum(serialize_all = "kebab-case")]
pub enum ServiceResult {
    Success,
    Protocol,
    Timeout,
    ExitCode,
    Signal,
    CoreDump,
    Watchdog,
    StartLimitHit,
    Resources,
    OomKill,
    #[strum(default)]
    Other(String),
}
systemd_string!(ServiceResult, "\"exit-code\"");

impl ActiveState {
    /// No process of the unit runs (`inactive` or `failed`).
    pub fn is_down(&self) -> bool {
        matches!(self, ActiveState::Inactive | ActiveState::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemds_strings_round_trip_and_unknown_ones_are_kept() {
        assert_eq!("auto-restart".parse(), Ok(SubState::AutoRestart));
        assert_eq!(SubState::AutoRestart.to_string(), "auto-restart");
        assert_eq!(ServiceResult::OomKill.to_string(), "oom-kill");
        let json = serde_json::to_string(&ActiveState::Deactivating).unwrap();
        assert_eq!(json, "\"deactivating\"");
        let odd: ActiveState = serde_json::from_str("\"someday\"").unwrap();
        assert_eq!(odd, ActiveState::Other("someday".into()));
        assert_eq!(odd.to_string(), "someday");
    }
}
