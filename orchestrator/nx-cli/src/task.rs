//! `nx run-task`: upload a binary, an image or a bundle (only what nxd lacks), run it once in a fresh
//! sandbox, stream its stdout and stderr here as they come, and exit with its exit code.

use crate::client::Client;
use crate::push::{parse_env, uploading_on_404, Shown};
use anyhow::Context;
use nx_api::signals::signal_name;
use nx_api::systemd::ServiceResult;
use nx_api::{TaskEvent, TaskOutcome, TaskRequest};
use nx_artifact::Artifact;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// The CLI's exit code when the task was killed at its timeout (as timeout(1) does).
pub const TIMED_OUT: i32 = 124;

#[derive(clap::Args)]
pub struct RunTaskArgs {
    /// The program: a Linux binary for the host's architecture, an image archive (run by
    /// Podman), or a bundle: a directory or a .tar / .tar.gz / .tgz archive of the program
    /// and its files, run read-only at /app (only the files nxd lacks are uploaded).
    program: PathBuf,
    /// For a bundle: the program to run, relative to its top. Default: `entry` in its
    /// nx-bundle.toml, else its only executable at the top.
    #[arg(long, value_name = "PATH")]
    entry: Option<String>,
    /// For a bundle: argv[0] of the program (a multi-call binary picks its applet by it).
    /// Default: the entry's file name.
    #[arg(long, value_name = "NAME")]
    argv0: Option<String>,
    /// Kill it after this long, e.g. 30s, 500ms, 2m (default: nxd's tasks.default_timeout_secs).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Memory limit, e.g. 256M, 1G, or MiB as a bare number (default: nxd's tasks.limits).
    #[arg(long, value_parser = parse_memory_mb)]
    memory: Option<u64>,
    /// Where it runs: container (bubblewrap for a binary, Podman for an image) or microvm.
    #[arg(long, value_parser = ["container", "microvm"])]
    backend: Option<String>,
    /// Environment variable for the program, K=V; repeatable.
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    env: Vec<String>,
    /// Arguments for the program.
    #[arg(last = true)]
    args: Vec<String>,
}

/// `256M`, `1G`, `512` (MiB) -> MiB.
fn parse_memory_mb(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, scale) = match text.char_indices().last() {
        Some((i, 'M' | 'm')) => (&text[..i], 1),
        Some((i, 'G' | 'g')) => (&text[..i], 1024),
        _ => (text, 1),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} is not a memory size: give e.g. 256M, 1G or 512 (MiB)"))
}

/// The CLI's exit code for a task's end.
pub fn exit_code(outcome: &TaskOutcome) -> i32 {
    match (outcome.timed_out, outcome.exit_code, outcome.signal) {
        (true, _, _) => TIMED_OUT,
        (false, Some(code), _) => code,
        (false, None, Some(signal)) => 128 + signal,
        (false, None, None) => 1,
    }
}

/// What ended a task that did not end on its own, for the line text mode prints after its
/// output (after "was killed"): its timeout (`timeout_secs`, as asked), the OOM killer at its
/// memory limit, or a signal. `None` for a program that exited.
fn killed(outcome: &TaskOutcome, timeout_secs: Option<f64>) -> Option<String> {
    if outcome.timed_out {
        let secs = timeout_secs.unwrap_or(outcome.duration_ms as f64 / 1000.0);
        return Some(format!(": it ran past its timeout ({secs:.1} s)"));
    }
    if outcome.result == ServiceResult::OomKill {
        return Some(": out of memory at its limit (give it more with --memory)".to_owned());
    }
    let signal = outcome.signal?;
    Some(format!(" by {}", signal_name(signal)))
}

/// Whether `path` is an image archive (a file [`Artifact::inspect`] reads as an image), which
/// runs as an image: an image archive's name (`.tar`) is also a bundle's.
fn is_image_archive(path: &std::path::Path) -> bool {
    path.is_file()
        && std::fs::read(path)
            .is_ok_and(|bytes| matches!(Artifact::inspect(&bytes), Ok(Artifact::Image(_))))
}

/// Runs the task; returns the exit code the CLI should exit with.
pub async fn run(client: &Client, args: RunTaskArgs, json: bool) -> anyhow::Result<i32> {
    let env = parse_env(&args.env)?;
    let bundle =
        nx_artifact::bundle::is_bundle_path(&args.program) && !is_image_archive(&args.program);
    if !bundle && (args.entry.is_some() || args.argv0.is_some()) {
        anyhow::bail!("--entry and --argv0 are for bundles: run a directory or a .tar.gz");
    }
    // A bundle is stored first (as `nx push` stores it); a file is uploaded when nxd lacks it.
    let sha = if bundle {
        let choices = nx_artifact::bundle::BundleChoices {
            entry: args.entry,
            argv0: args.argv0,
        };
        crate::bundle::store(client, &args.program, &choices, json)
            .await?
            .0
    } else {
        crate::digests::checked_sha256(&args.program, |bytes, _| {
            // Its message names the fix already; anyhow's chain would repeat the cause.
            Artifact::inspect(bytes)
                .map(drop)
                .map_err(|e| anyhow::anyhow!("{}: {e}", args.program.display()))
        })?
    };
    let req = TaskRequest {
        artifact: sha.clone(),
        args: args.args,
        env,
        timeout_secs: args.timeout.map(|t| t.as_secs_f64()),
        memory_max_mb: args.memory,
        backend: args.backend,
    };
    let shown = if json { Shown::Nothing } else { Shown::Bar };
    let mut events = if bundle {
        client.run_task(&req).await?
    } else {
        uploading_on_404(client, &args.program, &sha, shown, || async {
            Ok(client.run_task(&req).await?)
        })
        .await?
        .0
    };
    let mut task = String::new();
    while let Some(event) = events.next().await.context("the task's stream broke off")? {
        if json {
            let mut out = std::io::stdout().lock();
            serde_json::to_writer(&mut out, &event)?;
            out.write_all(b"\n")?;
            out.flush()?;
        }
        match event {
            TaskEvent::Started { task: id, .. } => task = id,
            TaskEvent::Stdout { data } if !json => {
                let mut out = std::io::stdout().lock();
                out.write_all(data.as_bytes())?;
                out.flush()?;
            }
            TaskEvent::Stderr { data } if !json => eprint!("{data}"),
            TaskEvent::Exited(outcome) => {
                if !json {
                    if let Some(why) = killed(&outcome, req.timeout_secs) {
                        eprintln!("nx: task {task} was killed{why}");
                    }
                }
                return Ok(exit_code(&outcome));
            }
            _ => {}
        }
    }
    anyhow::bail!("nxd ended task {task}'s stream before it reported an exit")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_task_says_what_killed_it() {
        let end = |signal: Option<i32>, result: ServiceResult, timed_out: bool| TaskOutcome {
            exit_code: signal.map(|n| 128 + n),
            signal,
            timed_out,
            result,
            duration_ms: 2100,
        };
        assert_eq!(
            killed(&end(Some(6), ServiceResult::Signal, false), None).as_deref(),
            Some(" by SIGABRT")
        );
        assert_eq!(
            killed(&end(Some(9), ServiceResult::OomKill, false), None).as_deref(),
            Some(": out of memory at its limit (give it more with --memory)")
        );
        assert_eq!(
            killed(&end(Some(9), ServiceResult::Signal, true), Some(2.0)).as_deref(),
            Some(": it ran past its timeout (2.0 s)")
        );
        assert_eq!(
            killed(&end(None, ServiceResult::ExitCode, false), None),
            None
        );
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_mb("256M"), Ok(256));
        assert_eq!(parse_memory_mb("2G"), Ok(2048));
        assert_eq!(parse_memory_mb("64"), Ok(64));
        for bad in ["", "0", "12K", "M", "-1G", "1.5G"] {
            assert!(parse_memory_mb(bad).is_err(), "{bad}");
        }
    }
}
