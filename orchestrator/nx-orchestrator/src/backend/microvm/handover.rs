//! A task handed to a guest booted ahead (the task pool): the guest's init waits with a raw
//! virtio-blk disk attached (the task drive, a sparse file of [`DRIVE_BYTES`] that the VMM's
//! uid owns); nxd writes the task on it, then the unit passes `NX-GO` to the guest's console and
//! the guest's init lays the task out where a cold guest's initramfs has it.
//!
//! The drive's layout (read by nx-vm-init's `handover`): [`MAGIC`], three little-endian u64
//! lengths (program, environment, arguments), then those three byte strings (environment and
//! arguments NUL-separated, as in a cold guest's `/nx/env` and `/nx/args`).

use super::initramfs::nul_separated;
use crate::backend::BackendError;
use std::collections::BTreeMap;
use std::io::{Seek, Write};
use std::os::unix::fs::{chown, OpenOptionsExt};
use std::path::Path;

const MAGIC: &[u8; 8] = b"NXTASK1\n";
/// The task drive's size (sparse: only the task's bytes take room), the most a task's
/// program, environment and arguments may take together.
pub const DRIVE_BYTES: u64 = 2 << 30;

/// Makes the empty task drive at `path` (0600, `uid`'s: the VMM opens it).
pub fn create_drive(path: &Path, uid: u32) -> Result<(), BackendError> {
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    file.set_len(DRIVE_BYTES)?;
    chown(path, Some(uid), Some(uid))?;
    Ok(())
}

/// Writes the task on the drive at `path` (in place: the VMM has it open, at its size).
pub fn write_task(
    path: &Path,
    program: &Path,
    env: &BTreeMap<String, String>,
    args: &[String],
) -> Result<(), BackendError> {
    let pairs: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let env = nul_separated(pairs.iter().map(String::as_str));
    let args = nul_separated(args.iter().map(String::as_str));
    let mut binary = std::fs::File::open(program)?;
    let program_len = binary.metadata()?.len();
    let total = 32 + program_len + env.len() as u64 + args.len() as u64;
    if total > DRIVE_BYTES {
        return Err(BackendError::Prepare(format!(
            "the task takes {total} bytes; a pooled guest's task drive holds {DRIVE_BYTES}"
        )));
    }
    let mut drive = std::fs::OpenOptions::new().write(true).open(path)?;
    drive.rewind()?;
    let mut out = std::io::BufWriter::new(&mut drive);
    out.write_all(MAGIC)?;
    for len in [program_len, env.len() as u64, args.len() as u64] {
        out.write_all(&len.to_le_bytes())?;
    }
    std::io::copy(&mut binary, &mut out)?;
    out.write_all(&env)?;
    out.write_all(&args)?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drive_holds_the_lengths_then_the_program_environment_and_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("main");
        std::fs::write(&program, b"ELF...").unwrap();
        let drive = dir.path().join("task.img");
        let uid = nix::unistd::getuid().as_raw();
        create_drive(&drive, uid).unwrap();
        assert_eq!(std::fs::metadata(&drive).unwrap().len(), DRIVE_BYTES);
        let env = BTreeMap::from([("A".to_string(), "1".to_string())]);
        write_task(&drive, &program, &env, &["x".into(), "y z".into()]).unwrap();
        let mut head = vec![0u8; 32 + 6 + 4 + 6];
        std::io::Read::read_exact(&mut std::fs::File::open(&drive).unwrap(), &mut head).unwrap();
        assert_eq!(&head[..8], MAGIC);
        assert_eq!(u64::from_le_bytes(head[8..16].try_into().unwrap()), 6);
        assert_eq!(u64::from_le_bytes(head[16..24].try_into().unwrap()), 4);
        assert_eq!(u64::from_le_bytes(head[24..32].try_into().unwrap()), 6);
        assert_eq!(&head[32..], b"ELF...A=1\0x\0y z\0");
        // Its size stays what the VMM saw when it opened it.
        assert_eq!(std::fs::metadata(&drive).unwrap().len(), DRIVE_BYTES);
    }
}
