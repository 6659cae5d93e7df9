//! A file attached to a free loop device with the kernel's own interface, loop(4), as
//! util-linux's `mount -o loop` does, without running mount(8): `LOOP_CTL_GET_FREE` on
//! `/dev/loop-control` names a free device, `LOOP_CONFIGURE` (Linux 5.8) attaches the file to
//! it with `LO_FLAGS_AUTOCLEAR`, so the kernel detaches it once nothing holds it any more (no
//! open descriptor, no mounted filesystem). Two processes may be given the same free device;
//! the one that configures it second gets `EBUSY` and asks again.
//!
//! Written by hand (two ioctls and the structs of `linux/loop.h`): the crates for loop devices
//! (`loopdev`, `loopdev-3`) generate their bindings with bindgen, so libclang, at build time,
//! and have no `LOOP_CONFIGURE`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// `LO_FLAGS_AUTOCLEAR` (`linux/loop.h`, loop(4)): the device detaches its file on its last
/// close, a mounted filesystem's included.
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// `LO_NAME_SIZE` (`linux/loop.h`): bytes of `lo_file_name`, its NUL included.
const LO_NAME_SIZE: usize = 64;

/// `struct loop_info64` (`linux/loop.h`, loop(4)): a loop device's status; here only
/// `lo_flags` and `lo_file_name` (the backing file's name as losetup shows it without sysfs;
/// truncated) are set, the rest zero (no offset, no size limit, no encryption).
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` (`linux/loop.h`, loop(4)): `LOOP_CONFIGURE`'s argument, the backing
/// file's descriptor, the block size (0: the kernel's choice, 512 bytes) and the status.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

// The sizes linux/loop.h gives them on every architecture (no padding: all fields aligned).
const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

// loop(4): `LOOP_CTL_GET_FREE` (0x4C82) on /dev/loop-control returns a free device's number,
// adding a device when none is free; `LOOP_CONFIGURE` (0x4C0A) on /dev/loopN takes a
// `struct loop_config`. Both numbers are of the old form (not _IOW-encoded): nix's `_bad`
// macros.
nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, LoopConfig);

/// How many free devices to try before giving up, each taken by another process between
/// `LOOP_CTL_GET_FREE` and `LOOP_CONFIGURE` (EBUSY).
const ATTEMPTS: usize = 64;

/// A file attached to a loop device (`LO_FLAGS_AUTOCLEAR`), held open. Dropping it closes
/// the device: the kernel then detaches the file unless a mounted filesystem still holds the
/// device, and detaches it when that one is unmounted.
#[derive(Debug)]
pub struct LoopDevice {
    /// The device, open read-write: the file stays attached at least while it is.
    _device: File,
    /// Its path, `/dev/loopN`.
    path: PathBuf,
}

impl LoopDevice {
    /// Attaches `backing` (opened read-write) to a free loop device. Errors name the step
    /// and what to do: no free device (`LOOP_CTL_GET_FREE` failed, or every device it gave
    /// was taken first `ATTEMPTS` times), `/dev/loop-control` or the device missing (the
    /// `loop` module), a kernel older than 5.8 (no `LOOP_CONFIGURE`), the file unopenable.
    pub fn attach(backing: &Path) -> Result<Self, String> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(backing)
            .map_err(|e| format!("opening {}: {e}", backing.display()))?;
        let control = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/loop-control")
            .map_err(|e| {
                format!(
                    "opening /dev/loop-control: {e} (load the kernel's loop module: modprobe loop)"
                )
            })?;
        let config = LoopConfig {
            fd: file.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                lo_flags: LO_FLAGS_AUTOCLEAR,
                lo_file_name: file_name(backing),
                ..LoopInfo64::zeroed()
            },
            reserved: [0; 8],
        };
        for _ in 0..ATTEMPTS {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument; `control` is open.
            let number = unsafe { loop_ctl_get_free(control.as_raw_fd()) }.map_err(|e| {
                format!("no free loop device: LOOP_CTL_GET_FREE on /dev/loop-control: {e} (all of the loop module's devices are in use, see `losetup --list`; detach those no longer needed or raise the module's max_loop)")
            })?;
            let path = PathBuf::from(format!("/dev/loop{number}"));
            let device = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| format!("opening {}: {e}", path.display()))?;
            // SAFETY: `config` is a `struct loop_config` that outlives the call, its `fd` open.
            match unsafe { loop_configure(device.as_raw_fd(), &config) } {
                Ok(_) => {
                    return Ok(Self {
                        _device: device,
                        path,
                    })
                }
                // Another process configured this device since LOOP_CTL_GET_FREE named it.
                Err(nix::errno::Errno::EBUSY) => continue,
                Err(e @ (nix::errno::Errno::EINVAL | nix::errno::Errno::ENOTTY)) => {
                    return Err(format!(
                        "attaching {} to {}: LOOP_CONFIGURE: {e} (needs Linux 5.8 or later)",
                        backing.display(),
                        path.display()
                    ))
                }
                Err(e) => {
                    return Err(format!(
                        "attaching {} to {}: LOOP_CONFIGURE: {e}",
                        backing.display(),
                        path.display()
                    ))
                }
            }
        }
        Err(format!(
            "no free loop device for {}: each of the {ATTEMPTS} free ones LOOP_CTL_GET_FREE named was taken by another process first (EBUSY); try again",
            backing.display()
        ))
    }

    /// The device's path, `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl LoopInfo64 {
    fn zeroed() -> Self {
        Self {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: 0,
            lo_file_name: [0; LO_NAME_SIZE],
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        }
    }
}

/// `path`'s bytes as `lo_file_name`: at most `LO_NAME_SIZE - 1` of them (its end kept, the
/// part that tells images apart), NUL-terminated.
fn file_name(path: &Path) -> [u8; LO_NAME_SIZE] {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    let tail = &bytes[bytes.len().saturating_sub(LO_NAME_SIZE - 1)..];
    let mut name = [0; LO_NAME_SIZE];
    name[..tail.len()].copy_from_slice(tail);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file a loop device is attached to, from sysfs (None: detached).
    fn backing_file(device: &Path) -> Option<PathBuf> {
        let name = device.file_name()?.to_str()?;
        let text = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
        Some(PathBuf::from(text.trim_end()))
    }

    /// Waits up to 5 s for the kernel to detach `file` from `device` (autoclear runs on its
    /// last close; another test may attach its own file to the device meanwhile).
    fn detached(device: &Path, file: &Path) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while backing_file(device).as_deref() == Some(file) {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        true
    }

    #[test]
    fn files_attached_at_once_each_get_their_own_device_and_leave_none_behind() {
        const AT_ONCE: usize = 8;
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        for round in 0..4 {
            let files: Vec<PathBuf> = (0..AT_ONCE)
                .map(|i| {
                    let path = dir.path().join(format!("image-{round}-{i}"));
                    std::fs::File::create(&path)
                        .unwrap()
                        .set_len(1 << 20)
                        .unwrap();
                    path
                })
                .collect();
            // All ask LOOP_CTL_GET_FREE together, so several are named the same device.
            let start = std::sync::Barrier::new(AT_ONCE);
            let devices: Vec<LoopDevice> = std::thread::scope(|s| {
                let attaching: Vec<_> = files
                    .iter()
                    .map(|file| {
                        let start = &start;
                        s.spawn(move || {
                            start.wait();
                            LoopDevice::attach(file)
                        })
                    })
                    .collect();
                attaching
                    .into_iter()
                    .map(|t| t.join().unwrap().unwrap())
                    .collect()
            });
            let mut paths: Vec<&Path> = devices.iter().map(LoopDevice::path).collect();
            paths.sort();
            paths.dedup();
            assert_eq!(paths.len(), AT_ONCE, "{devices:?}");
            for (device, file) in devices.iter().zip(&files) {
                assert_eq!(backing_file(device.path()).as_ref(), Some(file));
                let name = device.path().file_name().unwrap().to_str().unwrap();
                let autoclear =
                    std::fs::read_to_string(format!("/sys/block/{name}/loop/autoclear")).unwrap();
                assert_eq!(autoclear.trim(), "1", "{}", device.path().display());
            }
            let paths: Vec<PathBuf> = devices.iter().map(|d| d.path().to_owned()).collect();
            drop(devices);
            for (path, file) in paths.iter().zip(&files) {
                assert!(detached(path, file), "{} still attached", path.display());
            }
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let error = LoopDevice::attach(Path::new("/var/tmp/nx-no-such-image")).unwrap_err();
        assert!(
            error.starts_with("opening /var/tmp/nx-no-such-image: "),
            "{error}"
        );
    }

    #[test]
    fn a_long_name_keeps_its_end() {
        let long = format!("/var/lib/nx/{}/data.img", "d".repeat(80));
        let name = file_name(Path::new(&long));
        assert_eq!(name[LO_NAME_SIZE - 1], 0);
        assert!(name[..LO_NAME_SIZE - 1].ends_with(b"/data.img"));
    }
}
