//! A task handed to a guest booted ahead: nxd writes it on the guest's task drive (a raw
//! virtio-blk disk, `/dev/vda`) before it says [`crate::console::GO`]; the guest lays it out
//! where a cold guest's initramfs has it (`/app/main`, `/nx/env`, `/nx/args`).
//!
//! The drive's layout (written by nx-orchestrator's `backend::microvm::handover`): the magic
//! [`MAGIC`], then three little-endian u64 lengths (program, environment, arguments), then
//! those three byte strings one after the other (environment and arguments NUL-separated).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

pub const MAGIC: &[u8; 8] = b"NXTASK1\n";
pub const DRIVE: &str = "/dev/vda";
/// How long the drive may take to appear once virtio_blk is loaded.
const DEVICE_WAIT: Duration = Duration::from_secs(5);

// BLKFLSBUF, <linux/fs.h>: _IO(0x12, 97).
nix::ioctl_none!(flush_buffers, 0x12, 97);

/// Waits for a block device node (devtmpfs makes it once the driver probed the disk).
pub fn wait_for_device(path: &str) -> Result<(), String> {
    let deadline = Instant::now() + DEVICE_WAIT;
    while !std::path::Path::new(path).exists() {
        if Instant::now() > deadline {
            return Err(format!(
                "no {path}: is virtio_blk loaded and the drive attached?"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn length(bytes: &[u8]) -> usize {
    u64::from_le_bytes(bytes.try_into().expect("8 bytes")) as usize
}

/// Reads the task from the drive and writes `/app/main` (0755), `/nx/env` and `/nx/args`
/// (0600, root's).
pub fn unpack() -> Result<(), String> {
    wait_for_device(DRIVE)?;
    let mut drive = std::fs::File::open(DRIVE).map_err(|e| format!("{DRIVE}: {e}"))?;
    // The kernel read the drive's first blocks when it probed for partitions, before nxd
    // wrote the task: drop them from the page cache.
    // SAFETY: BLKFLSBUF takes no argument; the fd is the open block device.
    unsafe { flush_buffers(std::os::fd::AsRawFd::as_raw_fd(&drive)) }
        .map_err(|e| format!("BLKFLSBUF {DRIVE}: {e}"))?;
    let mut head = [0u8; 32];
    drive
        .read_exact(&mut head)
        .map_err(|e| format!("reading {DRIVE}: {e}"))?;
    if &head[..8] != MAGIC {
        return Err(format!("{DRIVE} holds no task"));
    }
    let lengths = [
        length(&head[8..16]),
        length(&head[16..24]),
        length(&head[24..32]),
    ];
    for ((path, mode), len) in [
        ("/app/main", 0o755),
        ("/nx/env", 0o600),
        ("/nx/args", 0o600),
    ]
    .into_iter()
    .zip(lengths)
    {
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(mode)
            .open(path)
            .map_err(|e| format!("{path}: {e}"))?;
        let copied = std::io::copy(&mut (&mut drive).take(len as u64), &mut out)
            .map_err(|e| format!("{path}: {e}"))?;
        if copied != len as u64 {
            return Err(format!("{DRIVE} ends inside {path}"));
        }
    }
    Ok(())
}
