//! `nx-vm-init --exec-on-input`: a deployment's standby (nx-orchestrator's `standby`) waits
//! in its sandbox, already set up, for the program it is to run. nxd sends it one message on
//! standard input, and this execs it with standard input on `/dev/null`; it never returns.
//!
//! The message (nx-orchestrator's `standby::message`) is a decimal byte length and `\n`,
//! then NUL-terminated fields:
//! the number of arguments, the arguments (`argv[0]` is the program's path), and then the
//! environment's `KEY=value` entries. It is read to its length (the sender may hold the
//! input open), and is at most [`MAX_MESSAGE`] bytes. The program gets `PWD`, the working
//! directory bubblewrap gave the waiter, as a cold start's program gets it from bubblewrap
//! (newcomer19 L1: a program from a standby had none), unless the message sets one.

use std::ffi::CString;
use std::io::Read;

/// The flag that runs this mode.
pub const FLAG: &str = "--exec-on-input";

/// The largest message read: nxd's bounds on a program's arguments and environment are
/// smaller.
pub const MAX_MESSAGE: usize = 4 << 20;

/// The arguments and environment of a message's body (its fields, after the length line).
/// Errors: a field that is not NUL-terminated, holds a NUL, or a count that does not parse.
pub fn decode(body: &[u8]) -> Result<(Vec<CString>, Vec<CString>), String> {
    let body = body
        .strip_suffix(&[0])
        .ok_or("the message's last field is not NUL-terminated")?;
    let mut fields = body.split(|b| *b == 0);
    let count: usize = fields
        .next()
        .and_then(|c| std::str::from_utf8(c).ok()?.parse().ok())
        .ok_or("the message does not start with its number of arguments")?;
    let cstring = |f: &[u8]| CString::new(f).map_err(|e| e.to_string());
    let argv = fields
        .by_ref()
        .take(count)
        .map(cstring)
        .collect::<Result<Vec<_>, _>>()?;
    if argv.len() != count || argv.is_empty() {
        return Err(format!(
            "the message has {} of its {count} arguments",
            argv.len()
        ));
    }
    let env = fields.map(cstring).collect::<Result<Vec<_>, _>>()?;
    Ok((argv, env))
}

/// Reads one message from standard input and execs it. Returns only on failure, with why.
pub fn run() -> String {
    let mut input = std::io::stdin().lock();
    let mut line = Vec::new();
    let mut byte = [0u8];
    loop {
        match input.read(&mut byte) {
            Ok(0) => return "standard input ended before a message".into(),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() < 20 => line.push(byte[0]),
            Ok(_) => return "the message's length line is too long".into(),
            Err(e) => return format!("reading standard input: {e}"),
        }
    }
    let Some(len) = std::str::from_utf8(&line)
        .ok()
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l <= MAX_MESSAGE)
    else {
        return format!("the message's length {line:?} is not a number up to {MAX_MESSAGE}");
    };
    let mut body = vec![0u8; len];
    if let Err(e) = input.read_exact(&mut body) {
        return format!("reading the message's {len} bytes: {e}");
    }
    drop(input);
    let (argv, mut env) = match decode(&body) {
        Ok(parsed) => parsed,
        Err(e) => return e,
    };
    match std::env::current_dir() {
        Ok(dir) => add_pwd(&mut env, &dir),
        Err(e) => return format!("reading the working directory: {e}"),
    }
    if let Err(e) = null_stdin() {
        return format!("opening /dev/null as standard input: {e}");
    }
    let err = nix::unistd::execve(&argv[0], &argv, &env).unwrap_err();
    format!("cannot exec {}: {err}", argv[0].to_string_lossy())
}

/// Adds `PWD=dir` to `env` (`KEY=value` entries) unless it holds a `PWD` already.
fn add_pwd(env: &mut Vec<CString>, dir: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    if env.iter().any(|e| e.as_bytes().starts_with(b"PWD=")) {
        return;
    }
    let mut entry = b"PWD=".to_vec();
    entry.extend_from_slice(dir.as_os_str().as_bytes());
    // A path from the kernel holds no NUL.
    env.extend(CString::new(entry).ok());
}

/// Standard input on `/dev/null`, as a deployment's program has it.
fn null_stdin() -> nix::Result<()> {
    use nix::fcntl::{open, OFlag};
    use nix::sys::stat::Mode;
    let null = open("/dev/null", OFlag::O_RDONLY, Mode::empty())?;
    nix::unistd::dup2(null, 0)?;
    nix::unistd::close(null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_decodes_to_its_arguments_and_environment() {
        let (a, e) = decode(b"3\0/app/main\0--port\0\0PORT=8080\0A=b=c\0").unwrap();
        let shown = |v: Vec<CString>| {
            v.into_iter()
                .map(|c| c.into_string().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(shown(a), ["/app/main", "--port", ""]);
        assert_eq!(shown(e), ["PORT=8080", "A=b=c"]);
    }

    #[test]
    fn the_program_gets_the_working_directory_as_pwd_unless_the_message_sets_it() {
        let mut env = vec![CString::new("PORT=8080").unwrap()];
        add_pwd(&mut env, std::path::Path::new("/data"));
        assert_eq!(env[1].to_str().unwrap(), "PWD=/data");
        add_pwd(&mut env, std::path::Path::new("/tmp"));
        assert_eq!(env.len(), 2);
    }

    #[test]
    fn a_cut_or_miscounted_body_is_refused() {
        assert!(decode(b"1\0/app/main").is_err());
        assert!(decode(b"3\0/app/main\0").is_err());
        assert!(decode(b"0\0").is_err());
        assert!(decode(b"x\0/app/main\0").is_err());
    }
}
