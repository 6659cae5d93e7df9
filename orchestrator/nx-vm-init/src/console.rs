//! The serial console as the host's channel into the guest. The host writes whole lines on the
//! VMM's standard input, which is the guest's `ttyS0` (QEMU's `-serial stdio`):
//! - [`PING`]: a guest restored from a snapshot (which said [`READY`] before the snapshot was
//!   taken) says [`READY`] again, once;
//! - [`GO`]: a guest booted ahead may take its task now (from the task drive, see `handover`);
//!   the line goes on with the host's clock and fresh entropy (see [`Go`]);
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
/// The line that asks a waiting guest to say [`READY`].
pub const PING: &str = "NX-PING";
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

/// What came with [`GO`]: `NX-GO <secs>.<nanos> <hex> <key>`, the host's clock (Unix time),
/// 32 bytes of entropy and the key of the exit line (nx-orchestrator's `tasks::pool::Slot::go`
/// and `backend::guest_exit`).
#[derive(Debug, Default, PartialEq)]
pub struct Go {
    pub clock: Option<(i64, i64)>,
    pub seed: Vec<u8>,
    pub exit_key: Option<String>,
}

impl Go {
    /// Parses what follows [`GO`] on its line (missing or bad parts are left out).
    fn parse(rest: &str) -> Self {
        let mut words = rest.split_whitespace();
        let clock = words.next().and_then(|w| {
            let (secs, nanos) = w.split_once('.')?;
            Some((secs.parse().ok()?, nanos.parse().ok()?))
        });
        let seed = words
            .next()
            .filter(|h| h.len() % 2 == 0)
            .and_then(|h| {
                (0..h.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&h[i..i + 2], 16).ok())
                    .collect()
            })
            .unwrap_or_default();
        let exit_key = words.next().map(str::to_owned);
        Self {
            clock,
            seed,
            exit_key,
        }
    }
}

/// Waits for [`GO`], calling `ready` for the first [`PING`]; `None` when a [`STOP`] (an unused
/// guest of the pool being stopped) or the console's end comes first. ([`GO`] is looked for
/// anywhere in its line: a restored guest's console may hold a fragment of a ping that QEMU
/// took in while it loaded the snapshot.)
pub fn wait_for_go(ready: impl Fn()) -> Option<Go> {
    let mut answered = false;
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let line = line.trim();
        if let Some(at) = line.rfind(GO) {
            return Some(Go::parse(&line[at + GO.len()..]));
        }
        if line == STOP {
            return None;
        }
        if line.ends_with(PING) && !answered {
            answered = true;
            ready();
        }
    }
    None
}

/// Passes each [`STOP`] line on to `app` as SIGTERM, in a thread of its own.
pub fn pass_stops_to(app: Pid) {
    std::thread::spawn(move || {
        while next_of(&[STOP]).is_some() {
            let _ = kill(app, Signal::SIGTERM);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_brings_the_hosts_clock_and_entropy() {
        assert_eq!(
            Go::parse(" 1796000000.000000042 00ff10 5e"),
            Go {
                clock: Some((1_796_000_000, 42)),
                seed: vec![0, 255, 16],
                exit_key: Some("5e".into()),
            }
        );
        assert_eq!(Go::parse(""), Go::default());
        assert_eq!(Go::parse(" x.y zz").seed, Vec::<u8>::new());
    }
}
