//! A deployment's `/data` with a size limit: an ext4 filesystem image of its own (a sparse
//! file, `<deployment dir>/data.img`), made by `mkfs.ext4` when the deployment is prepared and
//! loop-mounted (`mount -o loop`, util-linux) on `<deployment dir>/data` by the unit's launcher,
//! in a mount namespace of the unit's own: the mount exists only while the unit runs, and
//! nothing is left mounted when it stops, crashes or nxd goes away. A write past the size gets
//! `ENOSPC` (the program, nxd and the host go on).
//!
//! Project quotas (ext4/XFS `prjquota`) would need the state dir's filesystem mounted with
//! them; the hosts NX was measured on have none, and an image works on any filesystem.
//! ext4's own metadata (journal, inode tables) takes a few percent of the size.

use chrono::Utc;
use nx_api::DiskUsage;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the launcher reports the filesystem's usage, in the deployment's directory.
pub const USAGE_FILE: &str = "disk-usage.json";

/// The image of one deployment's `/data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataImage {
    /// The image file (0600, root's).
    pub image: PathBuf,
    /// Where it is mounted: the directory bubblewrap or Podman binds to `/data`.
    pub mountpoint: PathBuf,
    pub size_mb: u64,
    /// Owner of the filesystem's root directory (the deployment's uid and gid).
    pub uid: u32,
}

/// The last usage the launcher reported in a deployment's directory.
pub fn read_usage(dir: &Path) -> Option<DiskUsage> {
    serde_json::from_slice(&std::fs::read(dir.join(USAGE_FILE)).ok()?).ok()
}

fn run(command: &mut Command, what: &str) -> Result<(), String> {
    let out = command.output().map_err(|e| {
        format!("cannot run {what} ({e}); install e2fsprogs and mount (util-linux)")
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl DataImage {
    /// Makes the image unless it exists (it keeps the data across restarts): a sparse file of
    /// `size_mb` MiB, ext4 without reserved blocks, its root directory the deployment's.
    pub fn create(&self) -> Result<(), String> {
        use std::os::unix::fs::OpenOptionsExt;
        if self.image.exists() {
            return Ok(());
        }
        let partial = self.image.with_extension("img.partial");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&partial)
            .map_err(|e| format!("creating {}: {e}", partial.display()))?;
        file.set_len(self.size_mb << 20)
            .map_err(|e| format!("sizing {}: {e}", partial.display()))?;
        drop(file);
        run(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0", "-E"])
                .arg(format!(
                    "root_owner={uid}:{uid},lazy_itable_init=1,nodiscard",
                    uid = self.uid
                ))
                .arg(&partial),
            "mkfs.ext4",
        )?;
        std::fs::rename(&partial, &self.image)
            .map_err(|e| format!("renaming {}: {e}", partial.display()))
    }

    /// In the launcher, as root, in the unit's own mount namespace (`own_mount_namespace`):
    /// the image mounted on `mountpoint` (nosuid, nodev), its root 0700.
    #[cfg(target_os = "linux")]
    pub fn mount(&self) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&self.mountpoint)
            .map_err(|e| format!("creating {}: {e}", self.mountpoint.display()))?;
        run(
            Command::new("mount")
                .args(["-t", "ext4", "-o", "loop,nosuid,nodev"])
                .arg(&self.image)
                .arg(&self.mountpoint),
            "mount",
        )?;
        std::fs::set_permissions(&self.mountpoint, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("chmod {}: {e}", self.mountpoint.display()))
    }

    /// The mounted filesystem's usage now (statvfs(3)).
    pub fn usage(&self) -> Option<DiskUsage> {
        let stat = nix::sys::statvfs::statvfs(&self.mountpoint).ok()?;
        let block = stat.fragment_size();
        Some(DiskUsage {
            used_bytes: (stat.blocks() - stat.blocks_free()) * block,
            size_bytes: stat.blocks() * block,
            at: Utc::now(),
        })
    }
}

/// In the launcher, as root: a mount namespace of this process's own, receiving but never
/// sending mount events (`/` made a slave), so that what it mounts (/data's image, an image's
/// /tmp) exists only while the unit runs and nothing is left mounted after it.
#[cfg(target_os = "linux")]
pub fn own_mount_namespace() -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("unshare(CLONE_NEWNS): {e}"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| format!("making / a mount slave: {e}"))
}

/// One of its sandbox's volumes as a deployment mounts it: the volume's ext4 image (made by
/// `nx volume create`), loop-mounted by the launcher on `mountpoint` in the unit's mount
/// namespace like /data's, and bound by the sandbox at the push's path. Deployments of the
/// sandbox mount it at once (a preview beside production): util-linux's `mount -o loop`
/// reuses the loop device already attached to the image, so they share one filesystem
/// instance (never two kernels' views of one image); the launcher holds an exclusive `flock`
/// on the image while it sets up, so two starting together do not attach two devices. The
/// filesystem's root is root's, group `gid`, mode 2770; every deployment that mounts it has
/// `gid` as a supplementary group and umask 002, so one deployment's files are the next one's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeDisk {
    pub image: PathBuf,
    pub mountpoint: PathBuf,
    pub gid: u32,
}

impl VolumeDisk {
    /// In the launcher, as root, in the unit's own mount namespace.
    #[cfg(target_os = "linux")]
    pub fn mount(&self) -> Result<(), String> {
        use nix::fcntl::{Flock, FlockArg};
        use std::os::unix::fs::PermissionsExt;
        let file = std::fs::File::open(&self.image)
            .map_err(|e| format!("opening {}: {e}", self.image.display()))?;
        let _lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| format!("locking {}: {e}", self.image.display()))?;
        std::fs::create_dir_all(&self.mountpoint)
            .map_err(|e| format!("creating {}: {e}", self.mountpoint.display()))?;
        run(
            Command::new("mount")
                .args(["-t", "ext4", "-o", "loop,nosuid,nodev"])
                .arg(&self.image)
                .arg(&self.mountpoint),
            "mount",
        )?;
        nix::unistd::chown(
            &self.mountpoint,
            Some(nix::unistd::Uid::from_raw(0)),
            Some(nix::unistd::Gid::from_raw(self.gid)),
        )
        .map_err(|e| format!("chown {}: {e}", self.mountpoint.display()))?;
        std::fs::set_permissions(&self.mountpoint, std::fs::Permissions::from_mode(0o2770))
            .map_err(|e| format!("chmod {}: {e}", self.mountpoint.display()))
    }
}
