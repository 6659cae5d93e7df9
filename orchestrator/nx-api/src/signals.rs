//! Signal names, as signal(7) spells them (`SIGABRT`), for what NX reports of a program that a
//! signal ended. The numbers are Linux's (x86_64 and aarch64, the generic table of
//! signal(7)), where every sandbox runs, whatever the machine that reads them: `nx` on macOS
//! numbers its own signals otherwise (30 is SIGPWR here, SIGUSR1 there).

/// Linux's standard signals, 1 to 31, by number (signal(7), "Standard signals": the column
/// for x86, ARM and most others).
const LINUX: [&str; 31] = [
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

/// Linux's name of standard signal `number`; `None` past 31 (a real-time signal) or below 1.
fn linux_name(number: i32) -> Option<&'static str> {
    let index = usize::try_from(number).ok()?.checked_sub(1)?;
    LINUX.get(index).copied()
}

/// The name of Linux signal `number` (`SIGKILL` for 9), or `signal N` for a number Linux does
/// not name (a real-time signal, or no signal at all).
pub fn signal_name(number: i32) -> String {
    linux_name(number).map_or_else(|| format!("signal {number}"), str::to_owned)
}

/// The signal a sandbox's exit code says ended its program: bubblewrap (like a shell) exits
/// 128 + N when signal N killed the program it waited for. `None` for any other code. A
/// program that itself exits with 128 + N reads the same; bubblewrap cannot tell them apart.
pub fn signal_of_exit_code(code: i32) -> Option<i32> {
    let number = code.checked_sub(128)?;
    linux_name(number).map(|_| number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_past_128_name_their_signal() {
        assert_eq!(signal_name(6), "SIGABRT");
        assert_eq!(signal_name(30), "SIGPWR");
        assert_eq!(signal_name(99), "signal 99");
        assert_eq!(signal_name(0), "signal 0");
        assert_eq!(signal_name(-1), "signal -1");
        assert_eq!(signal_of_exit_code(134), Some(6));
        assert_eq!(signal_of_exit_code(137), Some(9));
        for code in [0, 1, 127, 128, 160, 255] {
            assert_eq!(signal_of_exit_code(code), None, "{code}");
        }
    }

    /// The table is the C library's on the Linux that runs the tests (nix's `Signal`).
    #[cfg(target_os = "linux")]
    #[test]
    fn the_table_is_linuxs() {
        for number in -1..=64 {
            let libc = nix::sys::signal::Signal::try_from(number).map(|s| s.as_str());
            assert_eq!(linux_name(number), libc.ok(), "signal {number}");
        }
    }
}
