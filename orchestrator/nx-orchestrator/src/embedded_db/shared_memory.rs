//! The System V shared-memory segment a killed embedded PostgreSQL leaves behind.
//!
//! PostgreSQL keeps one small System V segment per running cluster as an interlock, and writes
//! its key and id on line 7 of the data directory's `postmaster.pid` (PostgreSQL's
//! `miscadmin.h`, `LOCK_FILE_LINE_SHMEM_KEY`). A postmaster that exits cleanly removes it; one
//! killed with SIGKILL (as `nxd manager-stop` ends the embedded manager and all it runs) cannot,
//! and the kernel keeps the segment until someone removes it (shmctl(2), `IPC_RMID`). PostgreSQL
//! reclaims it when it starts again on the same data directory, but a state directory that is
//! never started again leaks it, and each one counts against `kernel.shmmni` (4,096 by default):
//! past that, no PostgreSQL on the host can start ("could not create shared memory segment").

use std::path::Path;

/// The line of `postmaster.pid` holding "<key> <id>" of the segment (1-based; miscadmin.h).
const SHMEM_KEY_LINE: usize = 7;

/// Removes the segment recorded in `data`/postmaster.pid if it still has the recorded key and
/// nothing is attached to it (the check PostgreSQL itself makes before reusing one). Returns
/// whether a segment was removed; a missing or unreadable pid file, a line without a segment, or
/// a segment that is gone, reused or attached is `Ok(false)`.
///
/// # Errors
/// shmctl(2)'s error when the segment matches but removing it fails (e.g. `EPERM`).
pub(super) fn remove_orphaned(data: &Path) -> std::io::Result<bool> {
    let Ok(pid_file) = std::fs::read_to_string(data.join("postmaster.pid")) else {
        return Ok(false);
    };
    let Some((key, id)) = recorded_segment(&pid_file) else {
        return Ok(false);
    };
    // SAFETY: shmid_ds is plain data; IPC_STAT only writes into it.
    let mut stat: nix::libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a shmid_ds for IPC_STAT, as shmctl(2) requires.
    if unsafe { nix::libc::shmctl(id, nix::libc::IPC_STAT, &mut stat) } != 0 {
        return Ok(false);
    }
    if stat.shm_perm.__key != key || stat.shm_nattch != 0 {
        return Ok(false);
    }
    // SAFETY: IPC_RMID takes no buffer.
    if unsafe { nix::libc::shmctl(id, nix::libc::IPC_RMID, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(true)
}

/// (key, id) from the text of a `postmaster.pid`, as PostgreSQL writes line 7:
/// "%9lu %9lu" (key, then id; both 0 or the line absent when there is no segment).
fn recorded_segment(pid_file: &str) -> Option<(nix::libc::key_t, i32)> {
    let mut fields = pid_file.lines().nth(SHMEM_KEY_LINE - 1)?.split_whitespace();
    let key: u64 = fields.next()?.parse().ok()?;
    let id: i32 = fields.next()?.parse().ok()?;
    // A key_t is an int; PostgreSQL prints it unsigned.
    (key != 0 || id != 0).then_some((key as u32 as nix::libc::key_t, id))
}

#[cfg(test)]
mod tests {
    use super::recorded_segment;

    #[test]
    fn the_segment_is_read_from_line_seven() {
        let pid_file = "4242\n/var/lib/nx/postgres/data\n1764550000\n5432\n/var/lib/nx/postgres/socket\n\n  5432001     98310\nready   \n";
        assert_eq!(recorded_segment(pid_file), Some((5432001, 98310)));
    }

    #[test]
    fn a_pid_file_without_a_segment_names_none() {
        assert_eq!(recorded_segment("4242\n/d\n1\n5432\n/s\n\n"), None);
        assert_eq!(
            recorded_segment("4242\n/d\n1\n5432\n/s\n\n        0         0\n"),
            None
        );
    }
}
