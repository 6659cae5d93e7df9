//! Signal names, as signal(7) spells them (`SIGABRT`), for what NX reports of a program that a
//! signal ended.

/// The name of signal `number` (`SIGKILL` for 9), or `signal N` for a number Linux does not
/// name (a real-time signal, or no signal at all).
pub fn signal_name(number: i32) -> String {
    nix::sys::signal::Signal::try_from(number)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| format!("signal {number}"))
}

/// The signal a sandbox's exit code says ended its program: bubblewrap (like a shell) exits
/// 128 + N when signal N killed the program it waited for. `None` for any other code. A
/// program that itself exits with 128 + N reads the same; bubblewrap cannot tell them apart.
pub fn signal_of_exit_code(code: i32) -> Option<i32> {
    let number = code.checked_sub(128)?;
    nix::sys::signal::Signal::try_from(number)
        .is_ok()
        .then_some(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_past_128_name_their_signal() {
        assert_eq!(signal_name(6), "SIGABRT");
        assert_eq!(signal_name(99), "signal 99");
        assert_eq!(signal_of_exit_code(134), Some(6));
        assert_eq!(signal_of_exit_code(137), Some(9));
        for code in [0, 1, 127, 128, 255] {
            assert_eq!(signal_of_exit_code(code), None, "{code}");
        }
    }
}
