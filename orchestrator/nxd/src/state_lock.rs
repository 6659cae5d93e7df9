//! One nxd per state dir: an exclusive `flock(2)` on `<state_dir>/nxd.lock`, taken before nxd
//! touches anything else there and held until it exits (the kernel drops it when the process
//! ends, a kill -9 too). A second nxd on the same state dir would otherwise run the start-up
//! recovery against the first one's work: remove its warm task units, stop its restore and
//! volume jobs, take over its `router/api.sock` (attacker s11 G5). `nxd manager-stop` takes it
//! too, so that it never stops the manager under a running nxd.

use anyhow::Context;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock's file in `state_dir`: `nxd.lock`, holding the holder's pid (decimal, a newline).
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("nxd.lock")
}

/// The held lock; dropping it (or the process ending) releases it.
pub struct StateLock {
    _file: Flock<File>,
}

/// Takes the lock of `state_dir` (created if missing) for this process, without waiting, and
/// writes this process's pid into its file.
///
/// # Errors
/// Another process holds it: the message names that process's pid (as it wrote it) and what
/// to do. Or the state dir or the file cannot be created or written.
pub fn acquire(state_dir: &Path) -> anyhow::Result<StateLock> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create state_dir {}", state_dir.display()))?;
    let path = path(state_dir);
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let holder = match file.read_to_string(&mut holder) {
                Ok(_) if !holder.trim().is_empty() => format!("pid {}", holder.trim()),
                _ => "its pid not written yet".to_owned(),
            };
            anyhow::bail!(
                "another nxd ({holder}) runs on the state dir {dir}: it holds {lock}. Stop it \
                 first (`systemctl stop nxd`, or `kill` that pid), or give this nxd another \
                 state_dir; a second nxd on one state dir would stop the first one's work",
                dir = state_dir.display(),
                lock = path.display(),
            );
        }
        Err((_, errno)) => {
            return Err(errno).with_context(|| format!("cannot lock {}", path.display()))
        }
    };
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    written.with_context(|| format!("cannot write this nxd's pid into {}", path.display()))?;
    Ok(StateLock { _file: file })
}
