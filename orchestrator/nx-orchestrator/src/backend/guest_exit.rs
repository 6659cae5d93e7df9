//! How a microVM guest's end reaches the host: its init (nx-vm-init) prints
//! `NX-EXIT <key> <code>[ oom-kill]` on the serial console when the program has ended, and the
//! launcher exits with `<code>` (see `launcher`). The program's own output goes to the same
//! console, so the line carries a key the program cannot know: 32 random hex digits made by nxd
//! for each guest, in the guest's initramfs as [`KEY_FILE`] (0600, root's; the program runs as
//! uid 1000) or, for a guest booted ahead, on its `NX-GO` line (which init reads before the
//! program starts). A line without the key is the program's output like any other line.

use rand::RngCore;

/// What the guest's init prints before it powers the VM off.
pub const EXIT_MARKER: &str = "NX-EXIT ";
/// What follows the exit code on the line when the guest's OOM killer ended the program.
pub const GUEST_OOM: &str = "oom-kill";
/// Where a guest booted with its program finds its key (nx-vm-init reads and removes it).
pub const KEY_FILE: &str = "nx/exit-key";

/// A fresh key: 16 bytes of the OS's randomness as 32 hex digits.
pub fn new_key() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The program's end as the guest's init reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestExit {
    /// The program's exit code (128 + N when signal N killed it).
    pub code: i32,
    /// The guest's own OOM killer ended it.
    pub oom: bool,
}

impl GuestExit {
    /// The line as it goes on into the log, without the key: `NX-EXIT <code>[ oom-kill]`.
    pub fn line(&self) -> String {
        match self.oom {
            true => format!("{EXIT_MARKER}{} {GUEST_OOM}", self.code),
            false => format!("{EXIT_MARKER}{}", self.code),
        }
    }
}

/// The end `line` reports, if it holds init's exit line with `key`, and the program's output
/// before it on the line (a last line the program left without its newline: init's line
/// follows it on the console); `None` for any other line (the program's output, a line with
/// another or no key). `key` `None`: a guest whose spec was written before exit lines had keys
/// (a deployment restarted by systemd after an upgrade of nxd, its initramfs the old one); its
/// line is `NX-EXIT <code>[ oom-kill]`, at the line's start.
pub fn parse<'a>(line: &'a str, key: Option<&str>) -> Option<(&'a str, GuestExit)> {
    let (before, mut words) = match key {
        Some(key) => {
            let at = line.find(&format!("{EXIT_MARKER}{key} "))?;
            let mut words = line[at + EXIT_MARKER.len()..].split_whitespace();
            words.next();
            (&line[..at], words)
        }
        None => (
            "",
            line.trim().strip_prefix(EXIT_MARKER)?.split_whitespace(),
        ),
    };
    let code = words.next()?.parse().ok()?;
    let oom = match words.next() {
        None => false,
        Some(GUEST_OOM) => true,
        Some(_) => return None,
    };
    words
        .next()
        .is_none()
        .then_some((before, GuestExit { code, oom }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_line_with_the_key_is_the_end() {
        let key = new_key();
        assert_eq!(key.len(), 32);
        assert_ne!(key, new_key());
        let exit = |code, oom| Some(("", GuestExit { code, oom }));
        assert_eq!(
            parse(&format!("NX-EXIT {key} 3"), Some(&key)),
            exit(3, false)
        );
        assert_eq!(
            parse(&format!(" NX-EXIT {key} 137 oom-kill\r"), Some(&key)),
            Some((
                " ",
                GuestExit {
                    code: 137,
                    oom: true
                }
            ))
        );
        // After a last line the program left without its newline.
        assert_eq!(
            parse(
                &format!("no newline: NX-EXIT 0 NX-EXIT {key} 4"),
                Some(&key)
            ),
            Some((
                "no newline: NX-EXIT 0 ",
                GuestExit {
                    code: 4,
                    oom: false
                }
            ))
        );
        // What a program may print: no key, a wrong key, the key's place taken by the code.
        for forged in [
            "NX-EXIT 0".to_owned(),
            format!("NX-EXIT {} 0", new_key()),
            "NX-EXIT 0 0".to_owned(),
            format!("NX-EXIT {key}"),
            format!("NX-EXIT {key} 0 oom-kill more"),
            format!("NX-EXIT {key} 0 x"),
        ] {
            assert_eq!(parse(&forged, Some(&key)), None, "{forged}");
        }
        // A spec without a key (written by an nxd before keys).
        assert_eq!(parse("NX-EXIT 7", None), exit(7, false));
        assert_eq!(exit(137, true).unwrap().1.line(), "NX-EXIT 137 oom-kill");
        assert_eq!(exit(7, false).unwrap().1.line(), "NX-EXIT 7");
    }
}
