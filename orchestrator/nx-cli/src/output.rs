//! What nx prints: short text for people, or JSON with --json.

use crate::client::ClientError;
use indicatif::{ProgressBar, ProgressStyle};
use nx_api::systemd::ActiveState;
use nx_api::{DeploymentRemoved, DeploymentView, SandboxView};
use nx_artifact::verify::ElfInfo;
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::path::Path;

pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// An error a `--json` command printed already, as the `error` field of its one document
/// (`nx push` whose deployment ended after it was ready): [`fail`] prints no second document.
#[derive(Debug)]
pub struct InDocument(anyhow::Error);

impl std::fmt::Display for InDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for InDocument {}

/// How a command that failed ends: with `--json`, one JSON document on stdout (nxd's error
/// body, or `{"error": ...}`), none when the command's own document carried the error
/// ([`InDocument`]); else `error: ...` on stderr, with the program's last log lines nxd sent.
pub fn fail(error: &anyhow::Error, json: bool) {
    if json && error.downcast_ref::<InDocument>().is_some() {
        return;
    }
    let server = match error.downcast_ref::<ClientError>() {
        Some(ClientError::Server { body, .. }) => Some(body),
        _ => None,
    };
    if json {
        let body = match server {
            Some(body) => serde_json::to_value(body).unwrap_or_default(),
            None => serde_json::json!({ "error": format!("{error:#}") }),
        };
        println!("{body}");
        return;
    }
    eprintln!("error: {error:#}");
    if let Some(body) = server {
        for line in &body.log_tail {
            // The program's own words: escaped as `nx logs` shows them.
            eprintln!("  | {}", crate::logs::escaped(line.as_bytes()));
        }
    }
}

/// What `nx verify-binary` found: `path` is ok, with its machine and linkage (of the bundle's
/// `entry`, for a bundle).
pub fn verified(path: &Path, entry: Option<&str>, info: &ElfInfo, json: bool) {
    if json {
        let _ = print_json(&serde_json::json!({
            "file": path, "entry": entry, "ok": true, "machine": info.machine,
            "linkage": info.linkage.describe(),
        }));
    } else {
        let entry = entry
            .map(|e| format!("bundle, entry {e}: "))
            .unwrap_or_default();
        println!(
            "{}: ok ({entry}{}, {})",
            path.display(),
            info.machine,
            info.linkage.describe()
        );
    }
}

/// `running`, or `starting` while a start still waits for it to be ready, or `stopping` while
/// it is being stopped or removed and still runs; `stopped`, or
/// `stopped (timeout)` when the stop had to kill it; `failed (oom-kill)` when its program's
/// last end was a failure and it does not run now (restarting, or not started again); else
/// systemd's `active/sub`.
fn state(d: &DeploymentView) -> String {
    let failed = d.last_exit.as_ref().filter(|e| e.failed());
    let stopped = d.desired == nx_api::Desired::Stopped;
    match (&d.state.active, failed) {
        (ActiveState::Active, _) if d.phase == nx_api::Phase::Starting => "starting".into(),
        // Being stopped or removed: `running` would hide that (tester s22 F2).
        (ActiveState::Active, _) if d.phase == nx_api::Phase::Stopping => "stopping".into(),
        (ActiveState::Active, _) => d.state.sub.to_string(),
        (ActiveState::Inactive | ActiveState::Failed, _) if d.phase == nx_api::Phase::Idle => {
            "idle".into()
        }
        (ActiveState::Inactive | ActiveState::Failed, Some(exit))
            if stopped && exit.result == "timeout" =>
        {
            "stopped (timeout)".into()
        }
        (_, Some(exit)) => format!("failed ({})", exit.result),
        (ActiveState::Inactive, None) if d.desired == nx_api::Desired::Stopped => "stopped".into(),
        _ => format!("{}/{}", d.state.active, d.state.sub),
    }
}

/// Where a deployment is reached by itself: its TCP address, else its preview URL.
fn address(d: &DeploymentView) -> &str {
    d.tcp_url.as_deref().unwrap_or(&d.preview_url)
}

/// Where production is reached: its TCP address when the promoted deployment is a TCP one,
/// else its URL.
fn production(s: &SandboxView) -> &str {
    let tcp = s
        .deployments
        .iter()
        .any(|d| Some(&d.id) == s.promoted.as_ref() && d.tcp_url.is_some());
    match &s.tcp_url {
        Some(url) if tcp => url,
        _ => &s.production_url,
    }
}

/// The lines under a deployment in `nx ls`/`nx status`: how it last ended, its `/data` use,
/// the CPUs it is pinned to.
fn details(d: &DeploymentView) -> Vec<String> {
    let mut lines = Vec::new();
    if !d.cpu_affinity.is_empty() {
        let cpus: Vec<String> = d.cpu_affinity.iter().map(u32::to_string).collect();
        lines.push(format!(
            "pinned to CPUs {}, no memory balloon",
            cpus.join(",")
        ));
    }
    if let Some(exit) = d.last_exit.as_ref().filter(|e| e.failed()) {
        lines.push(format!(
            "last exit {}: {}",
            exit.at.format("%Y-%m-%d %H:%M:%S UTC"),
            exit.message
        ));
    }
    if let Some(disk) = &d.disk {
        lines.push(format!(
            "/data: {:.1} of {} MiB used",
            disk.used_bytes as f64 / f64::from(1 << 20),
            disk.size_bytes >> 20
        ));
    }
    lines
}

/// A pushed deployment; `sent` is what a bundle push uploaded. With `--json`, one document:
/// `{"uploaded", "sent", "deployment"}`, and `"error"` when it ended after it was ready (the
/// error returned then is [`InDocument`]).
pub fn pushed(
    d: &DeploymentView,
    uploaded: bool,
    sent: Option<&crate::bundle::Sent>,
    json: bool,
) -> anyhow::Result<()> {
    let ended = ended_after_ready(d);
    if json {
        let mut document =
            serde_json::json!({ "uploaded": uploaded, "sent": sent, "deployment": d });
        if let Err(e) = &ended {
            document["error"] = format!("{e:#}").into();
        }
        print_json(&document)?;
        return ended.map_err(|e| InDocument(e).into());
    }
    println!("deployment {} of {} is {}", d.id, d.sandbox, state(d));
    ended?;
    match &d.tcp_url {
        Some(tcp) => println!("tcp: {tcp}"),
        None => println!("preview: {}", d.preview_url),
    }
    if let Some(name) = &d.service {
        println!(
            "service: the sandbox's deployments reach {} as {name} from now on, before any promotion, unless production declares {name}: then from its promotion on (the newest running push of a service holds its name unless production declares it; `nx rm {}` gives it back)",
            d.id, d.id
        );
    }
    println!("promote: nx promote {} {}", d.sandbox, d.id);
    Ok(())
}

/// An error when a pushed deployment, ready at its push's end, does not run now (newcomer18
/// L1: a program that accepted readiness's connection and then ended was pushed with rc 0
/// and a `promote` line), worded by what it is meant to be: stopped by someone (`nx stop`)
/// since, idle (its idle timeout passed with no request: the router starts it on the next
/// one), or running, and its program ended (review19 #6, review21 #6).
fn ended_after_ready(d: &DeploymentView) -> anyhow::Result<()> {
    if d.phase == nx_api::Phase::Running {
        return Ok(());
    }
    anyhow::bail!(ended_text(&d.id, d.desired, &state(d)))
}

/// [`ended_after_ready`]'s words for deployment `id`, meant to be `desired`, now in `state`
/// (as `nx status` shows it).
fn ended_text(id: &nx_api::names::DeploymentId, desired: nx_api::Desired, state: &str) -> String {
    match desired {
        nx_api::Desired::Stopped => format!(
            "deployment {id} was ready, then it was stopped (`nx stop`) before its push answered; it is {state} now: `nx start {id}` runs it again"
        ),
        nx_api::Desired::Idle => format!(
            "deployment {id} was ready, then it went idle (its idle timeout passed with no request) before its push answered; it is {state} now: the next request to its URL starts it again"
        ),
        nx_api::Desired::Running => format!(
            "deployment {id} was ready (it accepted a connection on $PORT) but it is {state} now, not running: its program ended. `nx logs {id}` shows why; a server must keep listening (not exit after its first connection, nor go to the background)"
        ),
    }
}

pub fn deployment(d: &DeploymentView, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(d);
    }
    println!("{} {} {} {}", d.id, d.sandbox, state(d), address(d));
    Ok(())
}

pub fn switched(s: &SandboxView, verb: &str, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(s);
    }
    match &s.promoted {
        Some(id) => println!("{} {verb} {id}: {}", s.name, production(s)),
        None => println!("{} has no promoted deployment", s.name),
    }
    Ok(())
}

pub fn removed(removed: &DeploymentRemoved, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(removed);
    }
    println!("removed {}", removed.removed);
    Ok(())
}

pub fn sandboxes(list: &[SandboxView], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&list);
    }
    if list.is_empty() {
        println!("no sandboxes yet; `nx push ./app --sandbox NAME` makes one");
        return Ok(());
    }
    // One write per 64 KiB, not one per line (stdout is line-buffered): a host with a
    // thousand deployments prints a thousand lines and more.
    let mut out = std::io::BufWriter::with_capacity(64 << 10, std::io::stdout().lock());
    writeln!(
        out,
        "{:<20} {:<10} {:<16} {:<6} {:<9} {:<9} {:<10} URL",
        "SANDBOX", "DEPLOYMENT", "STATE", "PORT", "RESTARTS", "BACKEND", "TIER"
    )?;
    for s in list {
        if s.deployments.is_empty() {
            // Made by `nx sandbox create`, or by a push cut off before its deployment was
            // recorded (attacker s15 L1): it still holds a database.
            writeln!(out, "{:<20} {:<10} {:<16}", s.name, "-", "no deployments")?;
            writeln!(
                out,
                "{:<20} its database is kept: push with `nx push ./app --sandbox {}`, or remove the sandbox and its database with `nx sandbox rm {}`",
                "", s.name, s.name
            )?;
        }
        for d in &s.deployments {
            let url = if d.promoted {
                production(s)
            } else {
                address(d)
            };
            writeln!(
                out,
                "{:<20} {:<10} {:<16} {:<6} {:<9} {:<9} {:<10} {}{}",
                s.name,
                d.id,
                state(d),
                d.port,
                d.state.restarts,
                d.backend.as_ref(),
                d.tier.as_ref(),
                url,
                if d.promoted { "  (production)" } else { "" }
            )?;
            for line in details(d) {
                writeln!(out, "{:<20} {line}", "")?;
            }
        }
    }
    let mut runs_on: Vec<&str> = list
        .iter()
        .flat_map(|s| s.deployments.iter().map(|d| d.runs_on.as_str()))
        .collect();
    runs_on.sort();
    runs_on.dedup();
    for line in runs_on {
        writeln!(out, "runs on: {line}")?;
    }
    out.flush()?;
    Ok(())
}

/// A progress bar on stderr, hidden for --json and when stderr is not a terminal.
pub fn progress_bar(size: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template(
            "uploading {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("static template"),
    );
    bar
}

/// `--since`: an RFC 3339 time, or an age such as `10m` (that long before now), as RFC 3339.
///
/// Errors: neither a time nor an age, or an age that reaches before 1970-01-01 (the earliest
/// time RFC 3339 stamps here can name; `100y` is refused rather than read as "everything").
pub fn since_time(since: &str) -> anyhow::Result<String> {
    let time = match humantime::parse_duration(since) {
        Ok(age) => std::time::SystemTime::now()
            .checked_sub(age)
            .filter(|time| *time >= std::time::UNIX_EPOCH)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--since {since:?}: that age reaches before 1970; give a shorter one (30d) or a time (2026-11-30T03:00:00Z)"
                )
            })?,
        Err(_) => humantime::parse_rfc3339_weak(since).map_err(|_| {
            anyhow::anyhow!(
                "--since {since:?}: give a time (2026-11-30T03:00:00Z) or an age (10m, 2h)"
            )
        })?,
    };
    Ok(humantime::format_rfc3339_micros(time).to_string())
}

#[cfg(test)]
mod tests {
    use super::ended_text;
    use nx_api::Desired;

    /// review21 #6: a deployment that went idle before its push answered was said to be
    /// stopped by `nx stop`; each desired state gets its own words and its own way back.
    #[test]
    fn a_push_that_ended_after_ready_says_why_by_what_it_is_meant_to_be() {
        let id = nx_api::names::DeploymentId::parse("d1").unwrap();
        let idle = ended_text(&id, Desired::Idle, "idle");
        assert!(
            idle.contains("went idle") && idle.contains("next request"),
            "{idle}"
        );
        assert!(!idle.contains("nx stop"), "{idle}");
        let stopped = ended_text(&id, Desired::Stopped, "stopped");
        assert!(
            stopped.contains("`nx stop`") && stopped.contains("nx start d1"),
            "{stopped}"
        );
        let ended = ended_text(&id, Desired::Running, "failed");
        assert!(
            ended.contains("its program ended") && ended.contains("nx logs d1"),
            "{ended}"
        );
    }
}
