//! The router's systemd unit, `nx-router.service`: started over D-Bus like a deployment's, so
//! it outlives nxd. nxd adopts a running router whose settings and build are unchanged (no
//! dropped connection across an nxd restart) and restarts one whose settings or build changed.
//! systemd starts a router that ended again (`Restart=always`); nxd's watchdog starts one that
//! systemd gave up on, and `/v1/health` says while it is down.
//!
//! Like a deployment's unit, it runs the launcher (`nxd-launcher launch <dir>/launch.json`),
//! whose monitor forks `nx-router` with its stdout and stderr on pipes and writes them through
//! the deployments' log writer (`logs::writer`): stamped records in `<dir>/router.log`, rotated
//! at `router.log_max_mb / ([logs] keep + 1)` into `router.log.1` .. `router.log.<keep>`, lines
//! dropped and counted rather than the router held up when the disk cannot keep up, and how
//! the router ended written last (also to `<dir>/last-exit.json`).
//!
//! Before a running router is stopped for new settings or a new build, the new router checks
//! them (`nx-router --check`) in a run-to-end unit of the same manager, as the router's user:
//! it reads the files it names where the router's unit would (an embedded manager's units have
//! a private `/tmp`, `/run` and `/var/log`). When the check fails, the running router is left
//! serving with its old settings and nxd stops with the router's error (attacker s11 G12).

use super::{RouterClient, RouterSettings};
use crate::api::systemd::ActiveState;
use crate::backend::launch::{LaunchSpec, MonitorSpec, StopForward};
use crate::launcher_install::Installed;
use crate::logs::{LogFiles, Stream};
use crate::supervisor::service::{self, Outcome, ServiceError};
use crate::supervisor::{Restart, SliceKind, Supervisor, UnitOutput, UnitSpec};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const UNIT: &str = "nx-router.service";
/// The run-to-end unit of `nx-router --check` (see the module's doc).
const CHECK_UNIT: &str = "nx-router-check.service";
/// How long a new router may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a stop waits for the router to end after its SIGTERM: Pingora's grace period for
/// open requests (5 s) and its shutdown (1 s, see nx-router's `main`), and some slack; then
/// systemd kills what is left.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The router's log, `<dir>/router.log` (rotated ones beside it: `router.log.1`, ...).
pub fn log_file(settings: &RouterSettings) -> PathBuf {
    settings.dir.join("router.log")
}

#[derive(Debug, thiserror::Error)]
pub enum RouterUnitError {
    #[error("router: cannot write {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("router unit: {0}")]
    Unit(#[from] ServiceError),
    #[error("the router cannot start with the new settings, so the running router (if any) was left serving with its old ones. The router says: {message}. Fix the setting (a file it names must be where the router's unit sees it: an embedded manager's units have their own /tmp, /run and /var/log; the state dir is seen), then start nxd again")]
    Check {
        /// The error the router's check ended with.
        message: String,
    },
    #[error("the router does not accept connections on {listen} (router_listen) after {} s: {}. Its log: {}", LISTEN_TIMEOUT.as_secs(), why.as_deref().map_or("it wrote no error: is the address taken or not this host's?".to_owned(), |e| format!("it says: {e}")), log.display())]
    NotListening {
        listen: std::net::SocketAddr,
        log: std::path::PathBuf,
        /// The error the router last ended with, from its log.
        why: Option<String>,
    },
}

/// The variable of the router's environment that names its build (`Installed::router_build`):
/// it is in the launch spec, so a router of another build does not match and is restarted.
const BUILD_VARIABLE: &str = "NX_ROUTER_BUILD";

/// What the router's launcher runs: `nx-router --settings <file>` (`installed.router`, its
/// build in [`BUILD_VARIABLE`]) under the monitor, its output in [`log_file`], capped at
/// `settings.config.log_max_mb` MiB with `log_keep` rotated files; a stop's SIGTERM passed on
/// to the router.
fn launch_spec(installed: &Installed, settings: &RouterSettings, log_keep: u32) -> LaunchSpec {
    LaunchSpec {
        argv: vec![
            installed.router.display().to_string(),
            "--settings".into(),
            RouterSettings::file(&settings.dir).display().to_string(),
        ],
        env: [(BUILD_VARIABLE.to_owned(), installed.router_build.clone())].into(),
        monitor: Some(MonitorSpec {
            log: LogFiles {
                path: log_file(settings),
                max_bytes: settings.config.log_max_mb << 20,
                keep: log_keep,
            },
            dir: settings.dir.clone(),
            oom_score: crate::backend::launch::OomScore::Service,
        }),
        stop: StopForward::Child,
        ..LaunchSpec::default()
    }
}

/// Makes sure `nx-router.service` runs the installed `nx-router` with `settings`, its log kept
/// as [`launch_spec`] says; answers its control client. A running router is adopted when its
/// settings file and launch spec (which names the router's build) are those wanted, else
/// restarted: an upgraded nxd never keeps the old router. New settings or a new build are
/// checked first ([`check`]): a running router is stopped only for settings it can start with.
///
/// # Errors
/// [`RouterUnitError::Check`]: the new settings failed their check (a running router was left
/// as it was); [`RouterUnitError::NotListening`]: the router started, but did not listen within
/// 15 s; writing the files, or the manager's.
#[tracing::instrument(skip_all, fields(listen = %settings.listen))]
pub async fn ensure_running(
    supervisor: &Supervisor,
    installed: &Installed,
    settings: &RouterSettings,
    log_keep: u32,
) -> Result<RouterClient, RouterUnitError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| RouterUnitError::Io { path, source }
    };
    std::fs::create_dir_all(&settings.dir).map_err(io(&settings.dir))?;
    let launch = settings.dir.join("launch.json");
    let settings_text = serde_json::to_string_pretty(settings).expect("settings serialize");
    let files = [
        (RouterSettings::file(&settings.dir), settings_text.clone()),
        (
            launch.clone(),
            serde_json::to_string_pretty(&launch_spec(installed, settings, log_keep))
                .expect("launch spec serializes"),
        ),
    ];
    if !service::unchanged(&files) {
        check(supervisor, installed, settings, &settings_text).await?;
    }
    let outcome = service::adopt_or_start(
        supervisor,
        &files,
        &UnitSpec {
            name: UNIT.into(),
            description: "NX router (reverse proxy of preview and production URLs)".into(),
            argv: vec![
                installed.launcher.display().to_string(),
                "launch".into(),
                launch.display().to_string(),
            ],
            // As nxd's own user (root here, `nx` on NixOS): the control socket is that user's.
            user: service::nxd_user(),
            limits: None,
            // Only what the launcher says before its monitor starts; the router's own output
            // goes through the monitor's log writer into the same file.
            output: UnitOutput::File(log_file(settings)),
            // A router that ends for any reason, a clean exit too, is started again.
            restart: Restart::Always(Duration::from_secs(1)),
            slice: SliceKind::Control,
            remain_after_exit: false,
            graceful_stop: Some(STOP_TIMEOUT),
            ambient_capabilities: ambient_capabilities(settings),
            cpu_affinity: Vec::new(),
        },
    )
    .await?;
    // Set on an adopted unit too; UINT64_MAX is systemd's "infinity".
    let memory_max = match settings.config.memory_max_mb {
        0 => u64::MAX,
        mb => mb << 20,
    };
    supervisor
        .set_memory_max(UNIT, memory_max)
        .await
        .map_err(|e| RouterUnitError::Unit(ServiceError::Supervisor(e)))?;
    if outcome == Outcome::Started {
        wait_listening(settings).await?;
    }
    Ok(RouterClient::new(&settings.control_socket()))
}

/// Runs the installed router's `--check` on `text` (new settings, written to
/// `<dir>/settings.check.json`) in [`CHECK_UNIT`], as the router's user in the router's
/// manager, and waits for its end.
///
/// # Errors
/// [`RouterUnitError::Check`] with the router's error when the check failed; the manager's.
#[tracing::instrument(skip_all)]
async fn check(
    supervisor: &Supervisor,
    installed: &Installed,
    settings: &RouterSettings,
    text: &str,
) -> Result<(), RouterUnitError> {
    let file = settings.dir.join("settings.check.json");
    let log = settings.dir.join("check.log");
    std::fs::write(&file, text).map_err(|source| RouterUnitError::Io {
        path: file.clone(),
        source,
    })?;
    let mut spec = UnitSpec::run_to_end(
        CHECK_UNIT.into(),
        "NX router: checks new settings before the running router is replaced".into(),
        vec![
            installed.router.display().to_string(),
            "--settings".into(),
            file.display().to_string(),
            "--check".into(),
        ],
        log.clone(),
    );
    spec.user = service::nxd_user();
    spec.ambient_capabilities = ambient_capabilities(settings);
    let unit = |e| RouterUnitError::Unit(ServiceError::Supervisor(e));
    // One left loaded by an nxd that died during its check.
    supervisor.stop(CHECK_UNIT).await.map_err(unit)?;
    supervisor.start(&spec).await.map_err(unit)?;
    let ended = supervisor.wait_ended_then_stop(CHECK_UNIT).await;
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&file);
    let ended = ended.map_err(unit)?;
    if ended.active == ActiveState::Failed {
        let message = ended_with(output.lines())
            .unwrap_or_else(|| format!("{} (exit status {})", output.trim(), ended.exit_status));
        tracing::error!(%message, "the new router settings failed their check");
        return Err(RouterUnitError::Check { message });
    }
    Ok(())
}

/// The error a router's `main` ended with, from its output (oldest line first): the last line
/// that starts `Error: ` (without that) and the lines after it (anyhow's `Caused by:` list), on
/// one line; `None` without one.
fn ended_with<'a>(lines: impl Iterator<Item = &'a str>) -> Option<String> {
    let lines: Vec<&str> = lines.collect();
    let start = lines.iter().rposition(|l| l.starts_with("Error: "))?;
    let said: Vec<&str> = lines[start..]
        .iter()
        .map(|l| l.trim_start_matches("Error: ").trim())
        .filter(|l| !l.is_empty())
        .collect();
    Some(said.join(" "))
}

/// `CAP_NET_BIND_SERVICE` (capability.h): binding ports below 1024.
const CAP_NET_BIND_SERVICE: u32 = 10;

/// The router's ambient capabilities (a capabilities(7) mask, its check's too):
/// `CAP_NET_BIND_SERVICE` when it listens on a port below 1024 (HTTP or HTTPS), so that it
/// binds :80 and :443 also when nxd (and so the router) runs as an unprivileged user, without
/// lowering the host's `net.ipv4.ip_unprivileged_port_start`; else none.
fn ambient_capabilities(settings: &RouterSettings) -> u64 {
    let privileged = std::iter::once(settings.listen)
        .chain(settings.tls.as_ref().map(|t| t.listen))
        .any(|addr| addr.port() < 1024);
    if privileged {
        1 << CAP_NET_BIND_SERVICE
    } else {
        0
    }
}

/// Waits until the router accepts connections on its listener (so that nxd is ready only once
/// its URLs answer).
async fn wait_listening(settings: &RouterSettings) -> Result<(), RouterUnitError> {
    let mut addr = settings.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let deadline = tokio::time::Instant::now() + LISTEN_TIMEOUT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if tokio::time::Instant::now() >= deadline {
            let log = log_file(settings);
            let records = crate::logs::tail_records(&log, 50);
            let why = ended_with(
                records
                    .iter()
                    .filter(|r| r.stream == Stream::Stderr)
                    .map(|r| r.text.as_str()),
            );
            return Err(RouterUnitError::NotListening {
                listen: settings.listen,
                log,
                why,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ended_with;

    #[test]
    fn the_routers_error_is_its_last_error_line_with_its_causes() {
        let output = "2026-12-01T14:00:00Z  INFO nx_router::table: route table loaded\n\
                      Error: an old error\n\
                      Error: reading /var/lib/nx/router/settings.json\n\
                      \n\
                      Caused by:\n    No such file or directory (os error 2)\n";
        assert_eq!(
            ended_with(output.lines()).as_deref(),
            Some(
                "reading /var/lib/nx/router/settings.json Caused by: \
                 No such file or directory (os error 2)"
            )
        );
        assert_eq!(ended_with("INFO ready\nINFO stopping".lines()), None);
    }
}
