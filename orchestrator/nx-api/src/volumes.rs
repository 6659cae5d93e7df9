//! Volumes (`nx volume`): named, persistent filesystems that belong to a sandbox and outlive
//! its deployments; a push mounts them with `--volume NAME:/PATH`. The wire types and the check
//! a mount path passes.

use crate::checks::FieldError;
use crate::names::{DeploymentId, SandboxName, VolumeName};
use serde::{Deserialize, Serialize};

/// The smallest and largest volume, in MiB (ext4 needs a few MiB for itself).
pub const MIN_SIZE_MB: u64 = 16;
pub const MAX_SIZE_MB: u64 = 16 << 20;

/// `POST /v1/sandboxes/{name}/volumes`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    pub name: VolumeName,
    /// Its size, the quota of everything written to it, in MiB (16 MiB to 16 TiB).
    pub size_mb: u64,
}

/// A volume as `nx volume ls` shows it.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeView {
    pub sandbox: SandboxName,
    pub name: VolumeName,
    pub size_mb: u64,
    /// The deployments (of any state) that mount it.
    pub used_by: Vec<DeploymentId>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// `DELETE /v1/sandboxes/{name}/volumes/{volume}`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeRemoved {
    pub removed: VolumeName,
}

/// One `--volume NAME:/PATH` of a push: the sandbox's volume NAME, mounted read-write at PATH.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    pub volume: VolumeName,
    pub path: String,
}

/// Which filesystem a deployment mounts for one of its `--volume`s. Production always mounts
/// `live`; a push is a preview until promoted, and a preview never writes production's files
/// unless asked (`--volume-live`).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeSource {
    /// A new, empty filesystem of the volume's size, the deployment's own (a preview's default).
    #[default]
    Empty,
    /// A copy of the volume's files made at push (`--volume-branch`), the deployment's own:
    /// its writes stay out of production.
    Branch,
    /// The volume itself: production's files (production, or a preview pushed with
    /// `--volume-live`).
    Live,
}

/// A volume as a deployment mounts it: the mount and which filesystem it is.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountedVolume {
    pub volume: VolumeName,
    pub path: String,
    /// Missing in records made before sources existed: those mounted the volume itself.
    #[serde(default = "live")]
    pub source: VolumeSource,
}

fn live() -> VolumeSource {
    VolumeSource::Live
}

/// A volume's backup: a tar archive (POSIX pax format, owners 0, the volume's tree from its
/// root) kept on the host, made by `nx volume backup` or by `nx sandbox rm`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeBackup {
    pub volume: VolumeName,
    /// Its id (a UTC time stamp, like a database backup's): `nx volume restore SANDBOX NAME ID`.
    pub id: String,
    /// The archive's size in bytes.
    pub size: u64,
    /// Where the archive is on the nxd host.
    pub path: String,
}

/// `POST /v1/sandboxes/{name}/volumes/{volume}/restore`: what was restored.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeRestored {
    pub restored: VolumeName,
    /// The archive's size in bytes.
    pub archive_bytes: u64,
}

/// Where a volume may not be mounted: what NX itself puts in a sandbox.
const RESERVED: &[&str] = &[
    "/app", "/data", "/tmp", "/proc", "/dev", "/sys", "/run", "/etc", "/usr", "/lib", "/lib64",
    "/bin", "/sbin",
];

impl VolumeMount {
    /// Parses `NAME:/PATH` (the CLI's form).
    pub fn parse(text: &str) -> Result<Self, FieldError> {
        let (name, path) = text.split_once(':').ok_or_else(|| FieldError {
            field: "volumes".into(),
            problem: format!("{text:?} is not NAME:/PATH (e.g. files:/srv/files)"),
        })?;
        let mount = Self {
            volume: VolumeName::parse(name).map_err(|e| FieldError {
                field: "volumes".into(),
                problem: e.to_string(),
            })?,
            path: path.to_owned(),
        };
        mount.check()?;
        Ok(mount)
    }

    /// The path: absolute, normal (no `.`, `..` or empty component), at most 255 bytes, and not
    /// `/` nor under a directory NX provides (/app, /data, /tmp, /proc, /dev, /etc, /usr, ...).
    pub fn check(&self) -> Result<(), FieldError> {
        let fail = |problem: String| FieldError {
            field: "volumes".into(),
            problem,
        };
        let path = &self.path;
        let rest = path.strip_prefix('/').ok_or_else(|| {
            fail(format!(
                "mount path {path:?} is not absolute: give one like /srv/files"
            ))
        })?;
        if path.len() > 255 || path.contains('\0') {
            return Err(fail(format!(
                "mount path {path:?} is too long or has a NUL"
            )));
        }
        if rest.is_empty()
            || rest
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(fail(format!(
                "mount path {path:?} is not a plain absolute path (no /, '.', '..' or '//'): give one like /srv/files"
            )));
        }
        if let Some(dir) = RESERVED
            .iter()
            .find(|dir| path == *dir || path.starts_with(&format!("{dir}/")))
        {
            return Err(fail(format!(
                "mount path {path:?} is inside {dir}, which NX provides: mount it elsewhere, e.g. /srv/{}",
                self.volume
            )));
        }
        Ok(())
    }
}

/// The largest archive `nx volume restore` takes for a volume of `size_mb` MiB, in bytes:
/// twice its size plus 1 MiB. A tar archive (POSIX.1-2001 pax, GNU tar's) stores a file's data
/// in 512-byte blocks, never more than ext4's 1 or 4 KiB blocks hold it in, plus a 512-byte
/// header and at most a 1 KiB pax header per file (longer only for paths past ~400 bytes); a
/// volume has one inode per 4 KiB at most (mkfs.ext4's `inode_ratio` for small filesystems,
/// mke2fs.conf(5)), so headers add at most 3/8 of its size; 1 MiB covers the end blocks and
/// a small volume's directories. Compressed archives (GNU tar reads gzip, xz, zstd, ...) are
/// smaller.
pub fn restore_max_bytes(size_mb: u64) -> u64 {
    size_mb.saturating_mul(2).saturating_add(1) << 20
}

/// The refusal of an archive larger than [`restore_max_bytes`] of volume `volume` (413 from
/// nxd; `nx volume restore` says it before uploading).
pub fn restore_too_large(volume: &VolumeName, max_bytes: u64) -> String {
    format!(
        "the archive is larger than volume {volume} can hold: it takes at most {max_bytes} bytes (twice its size plus 1 MiB, for tar's headers); nothing was changed. Restore a smaller archive, compress it (gzip, xz, zstd), or restore into a larger volume (`nx volume create`)"
    )
}

#[cfg(test)]
mod tests {
    use super::VolumeMount;

    #[test]
    fn mounts_parse_and_bad_names_and_paths_are_refused_with_what_to_do() {
        let ok = VolumeMount::parse("files:/srv/files").unwrap();
        assert_eq!(
            (ok.volume.as_str(), ok.path.as_str()),
            ("files", "/srv/files")
        );
        for (bad, says) in [
            ("files", "NAME:/PATH"),
            ("Files:/srv", "lowercase"),
            ("a/b:/srv", "not allowed"),
            ("..:/srv", "not allowed"),
            ("files:srv", "not absolute"),
            ("files:/", "plain absolute"),
            ("files:/srv/../etc", "plain absolute"),
            ("files:/data", "inside /data"),
            ("files:/app/x", "inside /app"),
            ("files:/tmp", "inside /tmp"),
        ] {
            let e = VolumeMount::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
