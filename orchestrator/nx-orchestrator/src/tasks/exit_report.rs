//! A task's exit report: bubblewrap's `--json-status-fd` (bwrap(1)) on the socket that is its
//! unit's standard input (see `LaunchSpec::exit_report`). bwrap writes one JSON object per
//! line: `{ "child-pid": N, ... }` once the sandbox runs, and `{ "exit-code": N }` once its
//! first process has exited (N is 128 + the signal when a signal killed it, as bwrap's own
//! exit status). The sandbox has its own pid namespace whose init is that process, so by then
//! every process of the sandbox is gone and nothing writes to the task's output any more.
//!
//! That comes before systemd has noticed the end and closed its copies of the unit's standard
//! streams (tens of milliseconds on a busy host): nxd reads what is left of the output and
//! answers at once, and tidies the unit away afterwards.

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixStream;

/// The longest line of the report read (bwrap's are under 200 bytes).
const MAX_LINE: usize = 4096;

/// The exit code the sandbox reported, or `None` when the socket ended (or broke) without one:
/// a launch that reports nothing (a Podman or microVM task), or a sandbox that failed before
/// it ran.
pub async fn exit_code(report: &mut UnixStream) -> Option<i32> {
    let mut lines = BufReader::new(report);
    let mut line = String::new();
    loop {
        line.clear();
        let n = lines.read_line(&mut line).await.ok()?;
        if n == 0 || line.len() > MAX_LINE {
            return None;
        }
        if let Some(code) = parse(&line) {
            return Some(code);
        }
    }
}

/// The exit code in one line of the report, if the line is the end's.
fn parse(line: &str) -> Option<i32> {
    let value: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    value.get("exit-code")?.as_i64()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn only_the_ends_line_carries_an_exit_code() {
        assert_eq!(
            parse(r#"{ "child-pid": 12, "mnt-namespace": 4026532177 }"#),
            None
        );
        assert_eq!(parse("{ \"exit-code\": 139 }\n"), Some(139));
        assert_eq!(parse("not json"), None);
    }

    #[tokio::test]
    async fn the_code_is_read_from_real_bubblewrap() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut bwrap = std::process::Command::new("bwrap");
        bwrap.args(["--ro-bind", "/", "/", "--unshare-pid", "--dev", "/dev"]);
        bwrap.args(["--json-status-fd", "0", "sh", "-c", "exit 7"]);
        let status = bwrap
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
                theirs,
            )))
            .status()
            .expect("bwrap runs (apt-get install bubblewrap)");
        assert_eq!(status.code(), Some(7));
        ours.set_nonblocking(true).unwrap();
        let mut ours = UnixStream::from_std(ours).unwrap();
        assert_eq!(exit_code(&mut ours).await, Some(7));

        // A socket that ends without the end's line reports nothing.
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(b"{ \"child-pid\": 3 }\n").await.unwrap();
        drop(theirs);
        assert_eq!(exit_code(&mut ours).await, None);
    }
}
