//! Disk room for uploads kept while they arrive (database dumps and volume archives to
//! restore): what nxd's disk has free above its reserve ([`DISK_RESERVE_MB`]), less what the
//! uploads under way have claimed, so that uploads at once share the room instead of each being
//! told all of it (attacker s13 H9: a `--can db` token's dump could take every free byte of
//! nxd's disk, its database's WAL and every deployment's `/data` with it, and each upload at
//! once the same). A sandbox has one such upload under way at most (newcomer17 N12: one `--can
//! db` token's 17 restore uploads sending a byte every 20 s claimed all the room, and every
//! other tenant's restore got 413 "0 MiB room").

use crate::host_limits::DISK_RESERVE_MB;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;

/// What the uploads under way claimed: bytes, and their owners (sandboxes).
struct Claimed {
    bytes: u64,
    owners: BTreeSet<String>,
}

static CLAIMED: Mutex<Claimed> = Mutex::new(Claimed {
    bytes: 0,
    owners: BTreeSet::new(),
});

fn claimed() -> std::sync::MutexGuard<'static, Claimed> {
    CLAIMED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Room claimed by one upload, given back when dropped (the upload was refused, or used and
/// its temp file removed).
#[derive(Debug)]
pub struct Claim {
    bytes: u64,
    owner: String,
}

/// Why [`claim`] claimed nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The upload does not fit the room left (bytes).
    Room(u64),
    /// The owner has an upload under way.
    Busy,
}

impl Claim {
    /// The most bytes the upload may write: its cap.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut claimed = claimed();
        claimed.bytes = claimed.bytes.saturating_sub(self.bytes);
        claimed.owners.remove(&self.owner);
    }
}

/// Claims room on `dir`'s filesystem for `owner`'s (a sandbox's) upload of `wanted` bytes (its
/// Content-Length) or, when that is unknown, of as much as `bound` and the room allow; `wanted`
/// past `bound` claims `bound` (the caller's cap refuses the body). The room is statvfs(3)
/// `f_bavail` less [`DISK_RESERVE_MB`] less what other uploads claimed. Refused: the upload
/// does not fit the room, or `owner` has an upload under way. Errors: statvfs(3)'s.
pub fn claim(
    dir: &Path,
    owner: &str,
    wanted: Option<u64>,
    bound: u64,
) -> std::io::Result<Result<Claim, Refused>> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    let free = stat.blocks_available().saturating_mul(stat.fragment_size());
    let mut claimed = claimed();
    if claimed.owners.contains(owner) {
        return Ok(Err(Refused::Busy));
    }
    let room = free
        .saturating_sub(DISK_RESERVE_MB << 20)
        .saturating_sub(claimed.bytes);
    let bytes = match wanted {
        Some(n) => n.min(bound),
        None => bound.min(room),
    };
    if bytes > room || room == 0 {
        return Ok(Err(Refused::Room(room)));
    }
    claimed.bytes += bytes;
    claimed.owners.insert(owner.to_owned());
    Ok(Ok(Claim {
        bytes,
        owner: owner.to_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_at_once_share_the_room_and_give_it_back() {
        let dir = std::env::temp_dir();
        let Err(Refused::Room(room)) = claim(&dir, "a", Some(u64::MAX >> 1), u64::MAX).unwrap()
        else {
            panic!("more than the disk")
        };
        assert!(
            room > 0,
            "this test needs more than {DISK_RESERVE_MB} MiB free"
        );
        // Two uploads of most of the room: the second does not fit beside the first.
        let first = claim(&dir, "a", Some(room / 4 * 3), u64::MAX)
            .unwrap()
            .unwrap();
        claim(&dir, "b", Some(room / 4 * 3), u64::MAX)
            .unwrap()
            .expect_err("a second beside the first");
        // One upload a sandbox (newcomer17 N12), however small.
        assert_eq!(
            claim(&dir, "a", Some(1), u64::MAX).unwrap().unwrap_err(),
            Refused::Busy
        );
        // Unknown length: as much as is left, at most the bound.
        let unknown = claim(&dir, "b", None, 1 << 20).unwrap().unwrap();
        assert_eq!(unknown.bytes(), 1 << 20);
        drop((first, unknown));
        let again = claim(&dir, "a", Some(room / 4 * 3), u64::MAX).unwrap();
        assert!(again.is_ok(), "the room given back");
    }
}
