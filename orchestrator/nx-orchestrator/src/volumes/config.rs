//! `[volumes]` in nxd's config: the most volumes a sandbox may have and the largest one, so
//! that a deploy token scoped to its sandbox (`nx token create --can push`, which may create
//! volumes) cannot fill the host's disk with them, and how many backups of each are kept.

use crate::api::volumes::{MAX_SIZE_MB, MIN_SIZE_MB};
use serde::{Deserialize, Serialize};

/// Limits of `nx volume create`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct VolumesConfig {
    /// Volumes one sandbox may have; 0: none (`nx volume create` is refused).
    pub max_per_sandbox: u32,
    /// The largest volume, in MiB (16 to 16,777,216). A volume is also refused when it is
    /// larger than the space left on the state directory's filesystem.
    pub max_size_mb: u64,
    /// Backups kept per volume on the host (`nx volume backup`, the final one of `nx sandbox
    /// rm`); after each backup the oldest beyond this are deleted. At least 1.
    pub backup_retention: usize,
}

impl Default for VolumesConfig {
    fn default() -> Self {
        Self {
            max_per_sandbox: 10,
            max_size_mb: 100 * 1024,
            backup_retention: 7,
        }
    }
}

impl VolumesConfig {
    /// Errors name the key: a `max_size_mb` outside what a volume can be, a
    /// `backup_retention` of 0.
    pub fn validate(&self) -> Result<(), String> {
        if self.backup_retention == 0 {
            return Err("volumes.backup_retention must be at least 1".into());
        }
        if !(MIN_SIZE_MB..=MAX_SIZE_MB).contains(&self.max_size_mb) {
            return Err(format!(
                "volumes.max_size_mb ({}) must be {MIN_SIZE_MB} to {MAX_SIZE_MB}",
                self.max_size_mb
            ));
        }
        Ok(())
    }
}
