//! The serial console as the host's channel into the guest. The host writes whole lines on the
//! VMM's standard input, which is the guest's `ttyS0` (QEMU's `-serial stdio`):
//! - [`GO`]: a guest booted ahead may take its task now (from the task drive, see `handover`);
//! - [`STOP`]: a stop (`nx stop`): the program gets SIGTERM, and the guest powers off when it
//!   has ended.
//!
//! The console stays in canonical mode (whole lines) but without echo, so that what the host
//! writes never shows up in the program's output.

use nix::sys::signal::{kill, Signal};
use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
use nix::unistd::Pid;
use std::io::BufRead;

/// The line a guest booted ahead prints once it waits for its task.
pub const READY: &str = "NX-READY";
/// The line that hands a guest booted ahead its task.
pub const GO: &str = "NX-GO";
/// The line that asks the program to stop.
pub const STOP: &str = "NX-STOP";

/// Turns the console's echo (and its signal characters) off.
pub fn quiet() -> Result<(), String> {
    let stdin = std::io::stdin();
    let mut mode = tcgetattr(&stdin).map_err(|e| format!("tcgetattr: {e}"))?;
    mode.local_flags &= !(LocalFlags::ECHO
        | LocalFlags::ECHOE
        | LocalFlags::ECHOK
        | LocalFlags::ECHONL
        | LocalFlags::ISIG);
    tcsetattr(&stdin, SetArg::TCSANOW, &mode).map_err(|e| format!("tcsetattr: {e}"))
}

/// The next of the `wanted` lines; `None` when the console ends first.
fn next_of(wanted: &[&'static str]) -> Option<&'static str> {
    std::io::stdin()
        .lock()
        .lines()
        .map_while(Result::ok)
        .find_map(|line| wanted.iter().find(|w| line.trim() == **w).copied())
}

/// Waits for [`GO`]; false when a [`STOP`] (an unused guest of the pool being stopped) or the
/// console's end comes first.
pub fn wait_for_go() -> bool {
    next_of(&[GO, STOP]) == Some(GO)
}

/// Passes each [`STOP`] line on to `app` as SIGTERM, in a thread of its own.
pub fn pass_stops_to(app: Pid) {
    std::thread::spawn(move || {
        while next_of(&[STOP]).is_some() {
            let _ = kill(app, Signal::SIGTERM);
        }
    });
}
