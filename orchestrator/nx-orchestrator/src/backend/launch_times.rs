//! Where a deployment's start goes between its unit's start and its readiness: the launcher
//! stamps each of its phases (CLOCK_MONOTONIC, one clock for every process of the host,
//! clock_gettime(2)) and writes them to `<deployment dir>/launch-times.json` just before it
//! runs the sandbox; once the deployment is ready, nxd reads them and adds one step per phase
//! to the push's timings (`Server-Timing`, nx-bench's table of a push's steps):
//! - `launcher`: from nxd's call to start the unit until the launcher runs (systemd's job, its
//!   fork and exec of the launcher, the dynamic loader);
//! - `netns`: the deployment's network namespace set up (`network::attach`);
//! - `mounts`: what the launcher did after that until it runs the sandbox: wait for `/data`'s
//!   loop device and mount (begun on a thread before the network), mount `/tmp` and volumes,
//!   set up its monitor;
//! - `exec_to_ready`: from the launcher's run of the sandbox (bubblewrap, Podman) until
//!   readiness's probe succeeded: the sandbox's own setup, the program's start until it
//!   listens, and the probe's cadence (readiness asks every 1 ms at first).
//!
//! Together they make the push's `start` and `ready` steps.

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// The file in a deployment's directory that holds its last [`LaunchTimes`], as JSON.
pub const LAUNCH_TIMES_FILE: &str = "launch-times.json";

/// CLOCK_MONOTONIC now, in nanoseconds (the same clock in every process of the host, as long
/// as none runs in a time namespace of its own: neither nxd nor the launcher does).
pub fn now_ns() -> u64 {
    let mut ts = nix::libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes the timespec it is given and nothing else.
    unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// When the launcher of one start reached each phase's end, in [`now_ns`]'s nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchTimes {
    /// The launcher runs (its first step, before it reads its spec).
    pub started_ns: u64,
    /// Its network namespace is set up (`started_ns` without one).
    pub network_ns: u64,
    /// It runs the sandbox (forks it, under a monitor, or execs it).
    pub exec_ns: u64,
}

impl LaunchTimes {
    /// Writes them to `dir`'s [`LAUNCH_TIMES_FILE`] (best effort: only timings are lost).
    pub fn write(&self, dir: &Path) {
        if let Ok(json) = serde_json::to_vec(self) {
            let _ = std::fs::write(dir.join(LAUNCH_TIMES_FILE), json);
        }
    }

    /// Those of the start that nxd began at `start_ns` from `dir`; None when the file is
    /// missing, unreadable or older (an earlier start's).
    pub fn read(dir: &Path, start_ns: u64) -> Option<Self> {
        let bytes = std::fs::read(dir.join(LAUNCH_TIMES_FILE)).ok()?;
        let times: Self = serde_json::from_slice(&bytes).ok()?;
        (times.started_ns >= start_ns).then_some(times)
    }

    /// The phases (see the module's docs) of a start that nxd began at `start_ns` and found
    /// ready at `ready_ns`, as (step name, duration), in order.
    pub fn phases(&self, start_ns: u64, ready_ns: u64) -> [(&'static str, Duration); 4] {
        let between = |from: u64, to: u64| Duration::from_nanos(to.saturating_sub(from));
        [
            ("launcher", between(start_ns, self.started_ns)),
            ("netns", between(self.started_ns, self.network_ns)),
            ("mounts", between(self.network_ns, self.exec_ns)),
            ("exec_to_ready", between(self.exec_ns, ready_ns)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_earlier_starts_times_are_not_read_and_phases_follow_the_stamps() {
        let dir = tempfile::tempdir().unwrap();
        let times = LaunchTimes {
            started_ns: 1_000_000,
            network_ns: 3_000_000,
            exec_ns: 3_600_000,
        };
        times.write(dir.path());
        assert_eq!(LaunchTimes::read(dir.path(), 400_000), Some(times));
        // A start nxd began after the file was written: the file is a previous start's.
        assert_eq!(LaunchTimes::read(dir.path(), 1_000_001), None);
        let ms = |n: u64| Duration::from_micros(n);
        assert_eq!(
            times.phases(400_000, 10_600_000),
            [
                ("launcher", ms(600)),
                ("netns", ms(2_000)),
                ("mounts", ms(600)),
                ("exec_to_ready", ms(7_000)),
            ]
        );
    }
}
