//! A deployment's `/data` with a size limit: an ext4 filesystem image of its own (a sparse
//! file, `<deployment dir>/data.img`), copied when the deployment is prepared from an empty
//! filesystem of its size formatted once per host ([`DataTemplates`]), and loop-mounted on
//! `<deployment dir>/data` by the unit's launcher, in a mount namespace of the unit's own, its
//! root directory then given to the deployment's uid: the mount exists only while the unit
//! runs, and nothing is left mounted when it stops, crashes or nxd goes away; its loop device
//! (attached with `LO_FLAGS_AUTOCLEAR`) detaches when the mount goes with the namespace. A
//! write past the size gets `ENOSPC` (the program, nxd and the host go on).
//!
//! The launcher attaches /data's image and mounts it itself (`loop_device`, then mount(2)):
//! `mount -o loop` (util-linux: a fork and exec, then its search of the loop devices for one
//! already attached to the image) took 3.6 ms of a push's p50 and 16 ms of its p99 on a quiet
//! host. Volumes stay on mount(8), whose reuse of the device already attached to an image is
//! what lets deployments share one (see [`VolumeDisk`]).
//!
//! The template is formatted on a new sparse file, which reads as zeros: `mkfs.ext4 -E
//! assume_storage_prezeroed=1` (e2fsprogs 1.47, mke2fs(8)) writes no zeros for the journal and
//! inode tables and marks the tables zeroed (no lazy initialisation writes at mount). A copy
//! (data extents only, as `cp --sparse=always` copies; done in nxd: [`DataTemplates::copy_to`])
//! writes only the metadata blocks, about 0.6 MiB for 1 GiB,
//! where formatting each image took a `mkfs.ext4` run per push. Every copy has the template's
//! filesystem UUID; ext4 does not need UUIDs to differ (nothing mounts them by UUID).
//!
//! Project quotas (ext4/XFS `prjquota`) would need the state dir's filesystem mounted with
//! them; the hosts NX was measured on have none, and an image works on any filesystem.
//! ext4's own metadata (journal, inode tables) takes a few percent of the size.

use chrono::Utc;
use nx_api::DiskUsage;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

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
        super::spawn_failure::cannot_run(what, Some("e2fsprogs and mount (util-linux)"), &e)
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

/// Empty formatted ext4 images, one per size, that deployments' images are copied from:
/// `<dir>/ext4-<size_mb>m.img` (0600), each formatted on first use and kept.
pub struct DataTemplates {
    dir: PathBuf,
    /// Held while a template is formatted: concurrent pushes format it once.
    formatting: Mutex<()>,
}

impl DataTemplates {
    /// Templates in `dir` (created, 0700, if missing).
    pub fn new(dir: PathBuf) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(Self {
            dir,
            formatting: Mutex::new(()),
        })
    }

    /// The template of `size_mb` MiB, formatted now if it does not exist yet. Errors: as
    /// [`format`]'s, or the file's creation.
    pub fn template(&self, size_mb: u64) -> Result<PathBuf, String> {
        let path = self.dir.join(format!("ext4-{size_mb}m.img"));
        if path.exists() {
            return Ok(path);
        }
        let _formatting = self.formatting.lock().expect("data templates lock");
        if !path.exists() {
            create_formatted(&path, size_mb)?;
        }
        Ok(path)
    }

    /// A new empty ext4 filesystem of `size_mb` MiB at `path` (sparse, 0600, its root
    /// directory root's): a copy of the template of its size (its data extents only), written
    /// beside it (`<path>.partial`, removed if the copy fails) and renamed into place, so
    /// `path` never holds half a filesystem. Errors: the template's, or the copy's.
    pub fn copy_to(&self, size_mb: u64, path: &Path) -> Result<(), String> {
        let template = self.template(size_mb)?;
        let partial = new_sparse_file(&path.with_extension("img.partial"), 0)?;
        let copied = copy_sparse(&template, &partial).and_then(|()| {
            fail::fail_point!("data_disk::copied");
            std::fs::rename(&partial, path)
                .map_err(|e| format!("renaming {}: {e}", partial.display()))
        });
        if copied.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        copied
    }
}

/// Copies `from` onto the empty file `to` as `cp --sparse=always` does for a file made of
/// data and holes: only the data extents (found with `lseek(2)` `SEEK_DATA`/`SEEK_HOLE`) are
/// copied (std's file-to-file copy, `copy_file_range(2)`), the rest stays a hole, and `to` gets `from`'s length. In
/// process, because running `cp` for the template's 0.6 MiB took 8 to 25 ms of each push on a
/// loaded host. Errors: the calls' (naming the files).
fn copy_sparse(from: &Path, to: &Path) -> Result<(), String> {
    use nix::errno::Errno;
    use nix::unistd::{lseek, Whence};
    use std::io::{Read, Seek, SeekFrom};
    use std::os::fd::AsRawFd;
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        format!(
            "copying {} to {}: {what}: {e}",
            from.display(),
            to.display()
        )
    };
    let source = std::fs::File::open(from).map_err(|e| failed("open", &e))?;
    let target = std::fs::OpenOptions::new()
        .write(true)
        .open(to)
        .map_err(|e| failed("open", &e))?;
    let len = source.metadata().map_err(|e| failed("stat", &e))?.len();
    let len = i64::try_from(len).map_err(|e| failed("length", &e))?;
    let mut at = 0i64;
    while at < len {
        let data = match lseek(source.as_raw_fd(), at, Whence::SeekData) {
            Ok(data) => data,
            // No data after `at`: the rest is a hole.
            Err(Errno::ENXIO) => break,
            Err(e) => return Err(failed("SEEK_DATA", &e)),
        };
        let hole = lseek(source.as_raw_fd(), data, Whence::SeekHole)
            .map_err(|e| failed("SEEK_HOLE", &e))?;
        let extent = (hole - data).unsigned_abs();
        // Both files at the extent's offset; std's copy between files is copy_file_range(2).
        let mut reader = &source;
        let mut writer = &target;
        reader
            .seek(SeekFrom::Start(data.unsigned_abs()))
            .and_then(|_| writer.seek(SeekFrom::Start(data.unsigned_abs())))
            .map_err(|e| failed("seek", &e))?;
        let copied =
            std::io::copy(&mut reader.take(extent), &mut writer).map_err(|e| failed("copy", &e))?;
        if copied != extent {
            return Err(failed("copy", &"the source ended early"));
        }
        at = hole;
    }
    target
        .set_len(len.unsigned_abs())
        .map_err(|e| failed("set length", &e))
}

/// A new empty ext4 filesystem image of `size_mb` MiB at `path` (sparse, 0600, its root
/// directory root's), written beside it (`<path>.partial`, removed if formatting fails) and
/// renamed into place, so `path` never holds half a filesystem. Errors: as [`format`]'s, or
/// the file's creation (a size the filesystem cannot hold: EFBIG, "File too large").
pub fn create_formatted(path: &Path, size_mb: u64) -> Result<(), String> {
    let partial = path.with_extension("img.partial");
    let made = new_sparse_file(&partial, size_mb)
        .and_then(|partial| format(&partial))
        .and_then(|()| {
            std::fs::rename(&partial, path)
                .map_err(|e| format!("renaming {}: {e}", partial.display()))
        });
    if made.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    made
}

/// A new sparse file of `size_mb` MiB at `path` (0600, replacing one there); returns `path`.
fn new_sparse_file(path: &Path, size_mb: u64) -> Result<PathBuf, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    file.set_len(size_mb << 20)
        .map_err(|e| format!("sizing {}: {e}", path.display()))?;
    Ok(path.to_owned())
}

/// Formats the new sparse file `image` as ext4 without reserved blocks (`mkfs.ext4 -m 0`),
/// writing no zeros (see the module's docs). Errors: mkfs.ext4 missing or failing (its
/// stderr).
pub fn format(image: &Path) -> Result<(), String> {
    run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-E"])
            .arg("assume_storage_prezeroed=1,nodiscard")
            .arg(image),
        "mkfs.ext4",
    )
}

impl DataImage {
    /// Makes the image unless it exists (it keeps the data across restarts): a sparse copy of
    /// the template of its size, an empty ext4 filesystem of `size_mb` MiB. Errors: the
    /// template's, or the copy's.
    pub fn create(&self, templates: &DataTemplates) -> Result<(), String> {
        if self.image.exists() {
            return Ok(());
        }
        templates.copy_to(self.size_mb, &self.image)
    }

    /// In the launcher, as root, once it is in the unit's own mount namespace
    /// (`own_mount_namespace`): [`DataImage::mount`] begun on a thread of its own, which
    /// shares that namespace (it is made after it), so that the kernel's part (attaching the
    /// loop device, ext4 reading its metadata through it: 2 to 13 ms on a loaded host, measured
    /// with `strace -T` of `mount -o loop`) goes on while the launcher sets up the network.
    /// Errors: the thread's creation (a task limit reached, as a fork's).
    #[cfg(target_os = "linux")]
    pub fn start_mount(&self) -> Result<DataMount, String> {
        let image = self.clone();
        std::thread::Builder::new()
            .name("mount-data".into())
            .spawn(move || image.mount())
            .map(DataMount)
            .map_err(|e| super::spawn_failure::cannot_run("a thread to mount /data", None, &e))
    }

    /// In the launcher, as root, in the unit's own mount namespace (`own_mount_namespace`):
    /// the image attached to a free loop device of its own (`LO_FLAGS_AUTOCLEAR`, so it
    /// detaches when the namespace and its mount go) and mounted on `mountpoint` (created if
    /// missing) with mount(2), ext4, nosuid and nodev; its root then the deployment's (`uid`,
    /// as its group too), 0700. Errors: the loop device's (`LoopDevice::attach`), the mount's
    /// (naming the device and the image), the chown/chmod.
    #[cfg(target_os = "linux")]
    pub fn mount(&self) -> Result<(), String> {
        use nix::mount::{mount, MsFlags};
        create_mountpoint(&self.mountpoint)?;
        let device = super::loop_device::LoopDevice::attach(&self.image)?;
        mount(
            Some(device.path()),
            &self.mountpoint,
            Some("ext4"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(|e| {
            format!(
                "mounting {} ({}) on {}: {e} (check the image with e2fsck -fn {})",
                device.path().display(),
                self.image.display(),
                self.mountpoint.display(),
                self.image.display()
            )
        })?;
        // The mount holds the device from here; closing it leaves the detach to the unmount.
        drop(device);
        give_root(&self.mountpoint, self.uid, self.uid, 0o700)
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

/// /data's mount under way on a thread of the launcher ([`DataImage::start_mount`]).
#[cfg(target_os = "linux")]
pub struct DataMount(std::thread::JoinHandle<Result<(), String>>);

#[cfg(target_os = "linux")]
impl DataMount {
    /// Waits for the mount. Errors: [`DataImage::mount`]'s.
    pub fn finish(self) -> Result<(), String> {
        self.0
            .join()
            .unwrap_or_else(|_| Err("the thread mounting /data panicked".into()))
    }
}

/// In the launcher, as root, in the unit's own mount namespace: the ext4 `image` loop-mounted
/// by mount(8) (`mount -o loop`, util-linux; nosuid, nodev) on `mountpoint` (created if
/// missing), its root directory then owned by `uid`:`gid` with `mode`. Errors: mount(8)
/// missing or its stderr, or the chown/chmod.
#[cfg(target_os = "linux")]
fn loop_mount(
    image: &Path,
    mountpoint: &Path,
    uid: u32,
    gid: u32,
    mode: u32,
) -> Result<(), String> {
    create_mountpoint(mountpoint)?;
    run(
        Command::new("mount")
            .args(["-t", "ext4", "-o", "loop,nosuid,nodev"])
            .arg(image)
            .arg(mountpoint),
        "mount",
    )?;
    give_root(mountpoint, uid, gid, mode)
}

/// Creates `mountpoint` and its parents if missing. Errors: the creation's, naming it.
#[cfg(target_os = "linux")]
fn create_mountpoint(mountpoint: &Path) -> Result<(), String> {
    std::fs::create_dir_all(mountpoint)
        .map_err(|e| format!("creating {}: {e}", mountpoint.display()))
}

/// A just mounted filesystem's root directory at `mountpoint` owned by `uid`:`gid` with
/// `mode`. Errors: the chown's or the chmod's, naming it.
#[cfg(target_os = "linux")]
fn give_root(mountpoint: &Path, uid: u32, gid: u32, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(mountpoint, Some(uid), Some(gid))
        .map_err(|e| format!("chown {}: {e}", mountpoint.display()))?;
    std::fs::set_permissions(mountpoint, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", mountpoint.display()))
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
        let file = std::fs::File::open(&self.image)
            .map_err(|e| format!("opening {}: {e}", self.image.display()))?;
        let _lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| format!("locking {}: {e}", self.image.display()))?;
        loop_mount(&self.image, &self.mountpoint, 0, self.gid, 0o2770)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn images_are_sparse_clean_copies_of_one_template_per_size() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let templates = DataTemplates::new(dir.path().join("templates")).unwrap();
        for (i, size_mb) in [(0, 64), (1, 64), (2, 32)] {
            let image = DataImage {
                image: dir.path().join(format!("data-{i}.img")),
                mountpoint: dir.path().join(format!("data-{i}")),
                size_mb,
                uid: 200_000,
            };
            image.create(&templates).unwrap();
            let meta = std::fs::metadata(&image.image).unwrap();
            assert_eq!(meta.len(), size_mb << 20);
            assert_eq!(meta.mode() & 0o777, 0o600);
            let allocated = meta.blocks() * 512;
            assert!(allocated < 4 << 20, "{allocated} bytes allocated");
            // e2fsck(8): -f check even if clean, -n change nothing; exit 0: no errors.
            let check = Command::new("e2fsck")
                .arg("-fn")
                .arg(&image.image)
                .output()
                .unwrap();
            assert!(
                check.status.success(),
                "{}",
                String::from_utf8_lossy(&check.stdout)
            );
        }
        let mut kept: Vec<_> = std::fs::read_dir(dir.path().join("templates"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        kept.sort();
        assert_eq!(kept, ["ext4-32m.img", "ext4-64m.img"]);
    }

    #[test]
    fn a_sparse_copy_has_the_same_bytes_and_keeps_the_holes() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        let file = std::fs::File::create(&from).unwrap();
        // A hole, data, a hole, data, and a hole at the end.
        file.set_len(64 << 20).unwrap();
        file.write_all_at(&[7u8; 5000], 8 << 20).unwrap();
        file.write_all_at(b"last", 40 << 20).unwrap();
        drop(file);
        new_sparse_file(&to, 0).unwrap();
        copy_sparse(&from, &to).unwrap();
        assert_eq!(std::fs::read(&from).unwrap(), std::fs::read(&to).unwrap());
        let allocated = std::fs::metadata(&to).unwrap().blocks() * 512;
        assert!(allocated < 1 << 20, "{allocated} bytes allocated");
        let missing = copy_sparse(&dir.path().join("none"), &to).unwrap_err();
        assert!(missing.contains("none"), "{missing}");
    }
}
