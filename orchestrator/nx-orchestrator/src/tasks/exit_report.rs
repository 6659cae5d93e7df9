//! A task's exit report: what its launcher writes on the socket that is its unit's standard
//! input (see `LaunchSpec::exit_report` and the launcher's `task_end`), one line of JSON, a
//! [`LastExit`], once every process of the sandbox has ended: the program's exit code (128 + N
//! when signal N killed it inside the sandbox), the signal, and the result named as systemd
//! names a service's (`oom-kill` from the cgroup's OOM-kill count). By then nothing can write
//! to the task's output any more.
//!
//! That comes before systemd has noticed the end and closed its copies of the unit's standard
//! streams (tens of milliseconds on a busy host): nxd reads what is left of the output and
//! answers at once, and tidies the unit away afterwards.

use nx_api::LastExit;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixStream;

/// The longest line of the report read (a launcher's are under 300 bytes).
const MAX_LINE: usize = 4096;

/// How the task ended, as its launcher reported it, or `None` when the socket ended (or broke)
/// without a report: a launch that reports nothing (a Podman or microVM task), or a launcher
/// that failed or was killed before its sandbox ended.
pub async fn read(report: &mut UnixStream) -> Option<LastExit> {
    let mut lines = BufReader::new(report);
    let mut line = String::new();
    loop {
        line.clear();
        let n = lines.read_line(&mut line).await.ok()?;
        if n == 0 || line.len() > MAX_LINE {
            return None;
        }
        if let Ok(end) = serde_json::from_str(line.trim()) {
            return Some(end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn the_report_is_the_line_that_reads_as_an_end() {
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        let end = r#"{"at":"2026-12-01T01:30:00Z","result":"signal","exit_code":134,"signal":6,"message":"killed by SIGABRT (exit code 134 from the sandbox)"}"#;
        theirs
            .write_all(format!("not json\n{end}\n").as_bytes())
            .await
            .unwrap();
        let end_read = read(&mut ours).await.expect("a report");
        assert_eq!((end_read.exit_code, end_read.signal), (Some(134), Some(6)));
        assert_eq!(end_read.result, "signal");

        // A socket that ends without a report reports nothing.
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(b"{ \"child-pid\": 3 }\n").await.unwrap();
        drop(theirs);
        assert_eq!(read(&mut ours).await, None);
    }
}
