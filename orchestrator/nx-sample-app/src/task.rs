//! `nx-sample-app task <command> [args]`: the sample as a one-shot program, for NX's tasks.
//!
//! - `print WORDS...`  prints the words on stdout and `done` on stderr, exits 0
//! - `exit N`          prints `exiting with N`, exits N
//! - `sleep SECS`      prints `sleeping`, sleeps
//! - `fork`            forks until the kernel refuses for a second in a row, prints how many
//! - `hog`             allocates and touches memory until the limit ends it
//! - `abort`           prints `aborting` and aborts (SIGABRT)
//! - `leave SECS TEXT` leaves a child that prints TEXT after SECS, and exits 0 at once
//! - `connect ADDR`    tries a TCP connection to ADDR, prints the outcome
//! - `ls PATH`         prints the entries of a directory
//! - `cat PATH`        prints a file
//! - `write PATH TEXT` writes TEXT to a file (prints `wrote PATH`)
//! - `now`             prints the clock: Unix seconds
//! - `unsettle`        sets `O_NONBLOCK` and `O_APPEND` on its stdout and stderr and shrinks
//!   the stdout pipe to a page (fcntl(2)), prints `unsettled`
//! - `outputs`         prints its stdout's and stderr's `O_NONBLOCK`, `O_APPEND` and pipe size
//! - `burst KIB`       writes KIB lines of 1 KiB to stdout; a failed write ends it with exit
//!   code 1 and how many bytes went out
//! - `ptys N SECS`     opens /dev/ptmx N times (each a pseudo-terminal), prints what `GET /ptys`
//!   answers (`{"held": H, "error": E}`), holds them SECS (0 by default), exits 0

use std::io::Write;

pub fn run(args: &[String]) -> i32 {
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let mut out = std::io::stdout();
    match arg(0) {
        "now" => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let _ = writeln!(out, "{now}");
            0
        }
        "print" => {
            let _ = writeln!(out, "{}", args[1..].join(" "));
            eprintln!("done");
            0
        }
        "exit" => {
            let code = arg(1).parse().unwrap_or(1);
            let _ = writeln!(out, "exiting with {code}");
            code
        }
        "sleep" => {
            let _ = writeln!(out, "sleeping");
            let _ = out.flush();
            std::thread::sleep(std::time::Duration::from_secs_f64(
                arg(1).parse().unwrap_or(3600.0),
            ));
            0
        }
        "fork" => {
            let hold_secs = arg(1).parse().unwrap_or(0);
            let _ = writeln!(out, "{}", crate::fork_until_refused(hold_secs));
            0
        }
        "hog" => {
            crate::hog();
            let _ = writeln!(out, "still alive");
            0
        }
        "abort" => {
            let _ = writeln!(out, "aborting");
            let _ = out.flush();
            std::process::abort()
        }
        "leave" => {
            let secs: f64 = arg(1).parse().unwrap_or(0.0);
            // SAFETY: single-threaded; the child sleeps, writes and exits.
            match unsafe { nix::unistd::fork() } {
                Ok(nix::unistd::ForkResult::Child) => {
                    std::thread::sleep(std::time::Duration::from_secs_f64(secs));
                    let _ = writeln!(out, "{}", arg(2));
                    let _ = out.flush();
                    std::process::exit(0)
                }
                Ok(nix::unistd::ForkResult::Parent { .. }) => {
                    let _ = writeln!(out, "left a writer");
                    0
                }
                Err(e) => {
                    eprintln!("fork: {e}");
                    1
                }
            }
        }
        "connect" => {
            let _ = writeln!(out, "{}", connect(arg(1)));
            0
        }
        "ls" => match std::fs::read_dir(arg(1)) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let _ = writeln!(out, "{}", entry.file_name().to_string_lossy());
                }
                0
            }
            Err(e) => {
                eprintln!("cannot list {}: {e}", arg(1));
                2
            }
        },
        "cat" => match std::fs::read(arg(1)) {
            Ok(bytes) => {
                let _ = out.write_all(&bytes);
                0
            }
            Err(e) => {
                eprintln!("cannot read {}: {e}", arg(1));
                2
            }
        },
        "write" => match std::fs::write(arg(1), arg(2)) {
            Ok(()) => {
                let _ = writeln!(out, "wrote {}", arg(1));
                0
            }
            Err(e) => {
                eprintln!("cannot write {}: {e}", arg(1));
                2
            }
        },
        "unsettle" => {
            use nix::fcntl::{fcntl, FcntlArg, OFlag};
            for fd in [1, 2] {
                let flags = fcntl(fd, FcntlArg::F_GETFL).unwrap_or(0);
                let unsettled =
                    OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK | OFlag::O_APPEND;
                let _ = fcntl(fd, FcntlArg::F_SETFL(unsettled));
            }
            let _ = fcntl(1, FcntlArg::F_SETPIPE_SZ(4096));
            let _ = writeln!(out, "unsettled");
            0
        }
        "outputs" => {
            use nix::fcntl::{fcntl, FcntlArg, OFlag};
            for fd in [1, 2] {
                let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).unwrap_or(0));
                let size = fcntl(fd, FcntlArg::F_GETPIPE_SZ).unwrap_or(-1);
                let _ = writeln!(
                    out,
                    "fd {fd}: nonblock {} append {} pipe size {size}",
                    flags.contains(OFlag::O_NONBLOCK),
                    flags.contains(OFlag::O_APPEND)
                );
            }
            0
        }
        "burst" => {
            let line = [b"x".repeat(1023), b"\n".to_vec()].concat();
            let mut sent = 0usize;
            for _ in 0..arg(1).parse::<usize>().unwrap_or(1) {
                if let Err(e) = out.write_all(&line).and_then(|()| out.flush()) {
                    eprintln!("write failed after {sent} bytes: {e}");
                    return 1;
                }
                sent += line.len();
            }
            0
        }
        "ptys" => {
            let _ = writeln!(out, "{}", crate::ptys(arg(1).parse().unwrap_or(1)));
            let _ = out.flush();
            std::thread::sleep(std::time::Duration::from_secs_f64(
                arg(2).parse().unwrap_or(0.0),
            ));
            0
        }
        other => {
            eprintln!("unknown task command {other:?}: print, exit, sleep, fork, hog, abort, leave, connect, ls, cat, write, now, unsettle, outputs, burst, ptys");
            64
        }
    }
}

/// Tries a TCP connection (2 s at most) to `host:port`, a name resolved through
/// /etc/resolv.conf first: `connected to A` or `cannot connect to A: why`.
pub fn connect(addr: &str) -> String {
    use std::net::ToSocketAddrs;
    let outcome = addr
        .to_socket_addrs()
        .map_err(|e| e.to_string())
        .and_then(|mut all| all.next().ok_or_else(|| "no address".to_owned()))
        .and_then(|a| {
            std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2))
                .map_err(|e| e.to_string())
        });
    match outcome {
        Ok(_) => format!("connected to {addr}"),
        Err(e) => format!("cannot connect to {addr}: {e}"),
    }
}
