//! What nxd does on its own to a deployment while it lives: its health check (`nx push
//! --health-path`), the idle timeout that stops it when no request came (`--idle-timeout`,
//! scale to zero) and the time to live of a preview nobody asks for (`nx sandbox set
//! --preview-ttl`, `nx pin`).

use crate::checks::FieldError;
use serde::{Deserialize, Serialize};

/// The longest health-check path, in bytes.
pub const MAX_HEALTH_PATH_BYTES: usize = 1024;
/// The longest health-check interval, in seconds.
pub const MAX_HEALTH_INTERVAL_SECS: u64 = 3600;
/// The most failures in a row a threshold may ask for.
pub const MAX_FAILURE_THRESHOLD: u32 = 100;

/// A deployment's health check, like a Kubernetes liveness probe: `GET <path>` every
/// `interval_secs`; no answer within `timeout_secs`, or a status of 400 and up, is a failure,
/// and `failure_threshold` failures in a row restart the deployment. Each unset field comes
/// from the sandbox's settings (`nx sandbox set`), else from nxd's `[sandbox]` (`health_path`,
/// `health_interval_secs`, `health_timeout_secs`, `health_failure_threshold`). Without a path
/// there is no health check.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    /// The path asked, e.g. `/healthz` (it also decides readiness).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Seconds between checks, 1 to 3600.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_secs: Option<u64>,
    /// Seconds an answer may take, 1 to the interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Failures in a row that restart the deployment, 1 to 100.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
}

impl HealthCheck {
    /// These fields, each unset one taken from `base`.
    pub fn over(&self, base: &HealthCheck) -> HealthCheck {
        HealthCheck {
            path: self.path.clone().or_else(|| base.path.clone()),
            interval_secs: self.interval_secs.or(base.interval_secs),
            timeout_secs: self.timeout_secs.or(base.timeout_secs),
            failure_threshold: self.failure_threshold.or(base.failure_threshold),
        }
    }

    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        self == &HealthCheck::default()
    }

    /// The fields that are set, each within its range (`field` names the JSON object, e.g.
    /// `health_check`): a path that starts with `/` and holds no space or control character.
    pub fn check(&self, field: &str) -> Result<(), FieldError> {
        let fail = |name: &str, problem: String| {
            Err(FieldError {
                field: format!("{field}.{name}"),
                problem,
            })
        };
        if let Some(path) = &self.path {
            if !path.starts_with('/')
                || path.len() > MAX_HEALTH_PATH_BYTES
                || path.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return fail(
                    "path",
                    format!("{path:?} is not a request path: give one that starts with / (e.g. /healthz), at most {MAX_HEALTH_PATH_BYTES} bytes, without spaces"),
                );
            }
        }
        if let Some(secs) = self.interval_secs {
            if !(1..=MAX_HEALTH_INTERVAL_SECS).contains(&secs) {
                return fail(
                    "interval_secs",
                    format!("{secs} is out of range: give 1 to {MAX_HEALTH_INTERVAL_SECS} s"),
                );
            }
        }
        if let Some(secs) = self.timeout_secs {
            let most = self.interval_secs.unwrap_or(MAX_HEALTH_INTERVAL_SECS);
            if !(1..=most).contains(&secs) {
                return fail(
                    "timeout_secs",
                    format!("{secs} is out of range: give 1 s to the interval ({most} s)"),
                );
            }
        }
        if let Some(n) = self.failure_threshold {
            if !(1..=MAX_FAILURE_THRESHOLD).contains(&n) {
                return fail(
                    "failure_threshold",
                    format!("{n} is out of range: give 1 to {MAX_FAILURE_THRESHOLD} failures"),
                );
            }
        }
        Ok(())
    }
}

/// The longest idle timeout or time to live, in seconds: 100 years of 365 days. Longer ones
/// are refused rather than overflowing the clocks they are added to (chrono's `TimeDelta`
/// ends near 292 million years, an `i64` of milliseconds).
pub const MAX_SECONDS: u64 = 100 * 365 * 86_400;

/// An idle timeout or a time to live (`field` names it), in seconds: 1 to [`MAX_SECONDS`].
pub fn check_seconds(field: &str, secs: Option<u64>) -> Result<(), FieldError> {
    let problem = match secs {
        Some(0) => "0 s is no time: give at least 1 s, or leave it unset".to_owned(),
        Some(s) if s > MAX_SECONDS => format!(
            "{s} s is more than 100 years: give at most {MAX_SECONDS} s (100y), or leave it unset"
        ),
        _ => return Ok(()),
    };
    Err(FieldError {
        field: field.to_owned(),
        problem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_refused_at_zero_and_past_a_hundred_years() {
        assert!(check_seconds("idle_timeout_secs", None).is_ok());
        assert!(check_seconds("idle_timeout_secs", Some(1)).is_ok());
        assert!(check_seconds("preview_ttl_secs", Some(MAX_SECONDS)).is_ok());
        let zero = check_seconds("idle_timeout_secs", Some(0)).unwrap_err();
        assert!(zero.problem.contains("0 s is no time"), "{}", zero.problem);
        let far = check_seconds("preview_ttl_secs", Some(u64::MAX)).unwrap_err();
        assert_eq!(far.field, "preview_ttl_secs");
        assert!(
            far.problem.contains("more than 100 years"),
            "{}",
            far.problem
        );
    }

    #[test]
    fn a_deployments_own_fields_win_over_its_sandboxes() {
        let sandbox = HealthCheck {
            path: Some("/health".into()),
            interval_secs: Some(10),
            timeout_secs: None,
            failure_threshold: Some(3),
        };
        let own = HealthCheck {
            interval_secs: Some(1),
            ..Default::default()
        };
        let merged = own.over(&sandbox);
        assert_eq!(merged.path.as_deref(), Some("/health"));
        assert_eq!(merged.interval_secs, Some(1));
        assert_eq!(merged.failure_threshold, Some(3));
        assert!(HealthCheck::default().is_empty() && !merged.is_empty());
    }

    #[test]
    fn bad_fields_are_named() {
        let bad = |h: HealthCheck| h.check("health_check").unwrap_err().field;
        let path = |p: &str| HealthCheck {
            path: Some(p.into()),
            ..Default::default()
        };
        assert_eq!(bad(path("healthz")), "health_check.path");
        assert_eq!(bad(path("/a b")), "health_check.path");
        assert!(path("/healthz?deep=1").check("health_check").is_ok());
        let slow = HealthCheck {
            interval_secs: Some(2),
            timeout_secs: Some(5),
            ..Default::default()
        };
        assert_eq!(bad(slow), "health_check.timeout_secs");
        let never = HealthCheck {
            failure_threshold: Some(0),
            ..Default::default()
        };
        assert_eq!(bad(never), "health_check.failure_threshold");
        assert!(check_seconds("idle_timeout_secs", Some(0)).is_err());
        assert!(check_seconds("idle_timeout_secs", Some(300)).is_ok());
    }
}
