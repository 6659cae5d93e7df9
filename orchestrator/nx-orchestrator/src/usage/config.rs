//! `[usage]` in nxd's config: how often usage is sampled, how long samples are kept, and the
//! prices that turn amounts into money.

use nx_api::usage::Usage;
use serde::{Deserialize, Serialize};

/// Hours in a month as cloud storage prices count them (365 × 24 / 12).
pub const HOURS_PER_MONTH: f64 = 730.0;
/// Bytes in a GiB.
pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Usage sampling and prices. A price left out costs nothing; with none at all `nx usage`
/// shows amounts only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// Seconds between usage samples of every deployment.
    pub sample_interval_secs: u64,
    /// Days samples are kept; older ones are deleted.
    pub retention_days: u32,
    /// The currency the prices are in (a label, e.g. `USD`).
    pub currency: String,
    /// Price of one CPU-hour (3,600 CPU-seconds).
    pub price_cpu_hour: Option<f64>,
    /// Price of one GiB of memory held for an hour.
    pub price_memory_gib_hour: Option<f64>,
    /// Price of one GiB on `/data` for a month (730 hours).
    pub price_disk_gib_month: Option<f64>,
    /// Price of a million requests.
    pub price_million_requests: Option<f64>,
    /// Price of one GiB of response bodies sent to clients.
    pub price_egress_gib: Option<f64>,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            sample_interval_secs: 60,
            retention_days: 90,
            currency: "USD".into(),
            price_cpu_hour: None,
            price_memory_gib_hour: None,
            price_disk_gib_month: None,
            price_million_requests: None,
            price_egress_gib: None,
        }
    }
}

impl UsageConfig {
    /// Each price with its key.
    fn prices(&self) -> [(&'static str, Option<f64>); 5] {
        [
            ("price_cpu_hour", self.price_cpu_hour),
            ("price_memory_gib_hour", self.price_memory_gib_hour),
            ("price_disk_gib_month", self.price_disk_gib_month),
            ("price_million_requests", self.price_million_requests),
            ("price_egress_gib", self.price_egress_gib),
        ]
    }

    /// Whether any price is set (then every report has costs).
    pub fn priced(&self) -> bool {
        self.prices().iter().any(|(_, p)| p.is_some())
    }

    /// Errors name the key: an interval or retention of 0, a negative or non-finite price.
    pub fn validate(&self) -> Result<(), String> {
        if self.sample_interval_secs == 0 {
            return Err("usage.sample_interval_secs must be at least 1".into());
        }
        if self.retention_days == 0 {
            return Err("usage.retention_days must be at least 1".into());
        }
        for (key, price) in self.prices() {
            if let Some(p) = price.filter(|p| !p.is_finite() || *p < 0.0) {
                return Err(format!("usage.{key} ({p}) must be a number of 0 or more"));
            }
        }
        Ok(())
    }

    /// What `usage` costs at these prices; none without prices.
    pub fn cost(&self, usage: &Usage) -> Option<f64> {
        if !self.priced() {
            return None;
        }
        let price = |p: Option<f64>| p.unwrap_or(0.0);
        Some(
            usage.cpu_seconds / 3600.0 * price(self.price_cpu_hour)
                + usage.memory_gib_hours * price(self.price_memory_gib_hour)
                + usage.disk_gib_hours / HOURS_PER_MONTH * price(self.price_disk_gib_month)
                + usage.requests as f64 / 1e6 * price(self.price_million_requests)
                + usage.bytes_out as f64 / GIB * price(self.price_egress_gib),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_follow_the_prices_set_and_none_without_prices() {
        let usage = Usage {
            cpu_seconds: 7200.0,
            memory_gib_hours: 3.0,
            disk_gib_hours: 730.0,
            disk_bytes: 0,
            requests: 2_000_000,
            bytes_out: 4 * 1024 * 1024 * 1024,
            cost: None,
        };
        assert_eq!(UsageConfig::default().cost(&usage), None);
        let prices = UsageConfig {
            price_cpu_hour: Some(0.5),
            price_memory_gib_hour: Some(0.25),
            price_disk_gib_month: Some(0.1),
            price_million_requests: Some(1.0),
            price_egress_gib: Some(0.05),
            ..UsageConfig::default()
        };
        let cost = prices.cost(&usage).unwrap();
        // 2 CPU-h × 0.5 + 3 GiB-h × 0.25 + 1 GiB-month × 0.1 + 2 M × 1 + 4 GiB × 0.05
        assert!(
            (cost - (1.0 + 0.75 + 0.1 + 2.0 + 0.2)).abs() < 1e-9,
            "{cost}"
        );
        let cpu_only = UsageConfig {
            price_cpu_hour: Some(0.5),
            ..UsageConfig::default()
        };
        assert_eq!(cpu_only.cost(&usage), Some(1.0));
    }

    #[test]
    fn bad_settings_are_refused_by_key() {
        let bad = UsageConfig {
            price_egress_gib: Some(-1.0),
            ..UsageConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .contains("usage.price_egress_gib"));
        let bad = UsageConfig {
            sample_interval_secs: 0,
            ..UsageConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .contains("usage.sample_interval_secs"));
        assert!(UsageConfig::default().validate().is_ok());
    }
}
