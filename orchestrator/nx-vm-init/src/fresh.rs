//! What a guest restored from a snapshot must not share with the template it was saved from
//! (see nx-orchestrator's `backend::microvm::snapshot`): its clock, which runs on from the
//! moment of the snapshot, and its random state, which every clone would otherwise continue
//! identically (Firecracker's snapshot documentation gives the same advice: reseed the guest's
//! CRNG after a restore). Applied to every pooled guest at `NX-GO` with what the host sent.

use crate::console::Go;

/// `struct rand_pool_info` of <linux/random.h> with room for the seed.
#[repr(C)]
struct RandPoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; 64],
}

// RNDADDENTROPY = _IOW('R', 0x03, int[2]) and RNDRESEEDCRNG = _IO('R', 0x07), <linux/random.h>
// (random(4)): both need CAP_SYS_ADMIN, which init has.
nix::ioctl_write_ptr_bad!(
    add_entropy,
    nix::request_code_write!(b'R', 0x03, std::mem::size_of::<[libc::c_int; 2]>()),
    RandPoolInfo
);
nix::ioctl_none!(reseed_crng, b'R', 0x07);

/// Sets the clock to the host's and credits the host's entropy to the kernel's pool, then has
/// the CRNG reseed from it at once.
pub fn apply(go: &Go) -> Result<(), String> {
    if let Some((secs, nanos)) = go.clock {
        let now = nix::sys::time::TimeSpec::new(secs, nanos);
        nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, now)
            .map_err(|e| format!("clock_settime: {e}"))?;
    }
    if go.seed.is_empty() {
        return Ok(());
    }
    let mut info = RandPoolInfo {
        entropy_count: 0,
        buf_size: 0,
        buf: [0; 64],
    };
    let n = go.seed.len().min(info.buf.len());
    info.buf[..n].copy_from_slice(&go.seed[..n]);
    info.buf_size = n as libc::c_int;
    info.entropy_count = (n * 8) as libc::c_int;
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&random);
    // SAFETY: `info` is a rand_pool_info whose buf_size bytes follow its two ints; the fd is
    // /dev/urandom's.
    unsafe { add_entropy(fd, &info) }.map_err(|e| format!("RNDADDENTROPY: {e}"))?;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    unsafe { reseed_crng(fd) }.map_err(|e| format!("RNDRESEEDCRNG: {e}"))?;
    Ok(())
}
