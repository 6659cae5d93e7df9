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

use super::{RouterClient, RouterSettings};
use crate::backend::launch::{LaunchSpec, MonitorSpec, StopForward};
use crate::launcher_install::Installed;
use crate::logs::LogFiles;
use crate::supervisor::service::{self, Outcome, ServiceError};
use crate::supervisor::{Restart, SliceKind, Supervisor, UnitOutput, UnitSpec};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const UNIT: &str = "nx-router.service";
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
    #[error("the router does not accept connections on {listen} (router_listen) after {} s: is the address taken or not this host's? Its log: {}", LISTEN_TIMEOUT.as_secs(), log.display())]
    NotListening {
        listen: std::net::SocketAddr,
        log: std::path::PathBuf,
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
        }),
        stop: StopForward::Child,
        ..LaunchSpec::default()
    }
}

/// Makes sure `nx-router.service` runs the installed `nx-router` with `settings`, its log kept
/// as [`launch_spec`] says; answers its control client. A running router is adopted when its
/// settings file and launch spec (which names the router's build) are those wanted, else
/// restarted: an upgraded nxd never keeps the old router.
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
    let files = [
        (
            RouterSettings::file(&settings.dir),
            serde_json::to_string_pretty(settings).expect("settings serialize"),
        ),
        (
            launch.clone(),
            serde_json::to_string_pretty(&launch_spec(installed, settings, log_keep))
                .expect("launch spec serializes"),
        ),
    ];
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
            ambient_capabilities: if binds_privileged_port(settings) {
                1 << CAP_NET_BIND_SERVICE
            } else {
                0
            },
            cpu_affinity: Vec::new(),
        },
    )
    .await?;
    if outcome == Outcome::Started {
        wait_listening(settings).await?;
    }
    Ok(RouterClient::new(&settings.control_socket()))
}

/// `CAP_NET_BIND_SERVICE` (capability.h): binding ports below 1024.
const CAP_NET_BIND_SERVICE: u32 = 10;

/// Whether the router listens on a port below 1024 (HTTP or HTTPS): then its unit gets
/// `CAP_NET_BIND_SERVICE` as an ambient capability, so that it binds :80 and :443 also when
/// nxd (and so the router) runs as an unprivileged user, without lowering the host's
/// `net.ipv4.ip_unprivileged_port_start`.
fn binds_privileged_port(settings: &RouterSettings) -> bool {
    std::iter::once(settings.listen)
        .chain(settings.tls.as_ref().map(|t| t.listen))
        .any(|addr| addr.port() < 1024)
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
            return Err(RouterUnitError::NotListening {
                listen: settings.listen,
                log: log_file(settings),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
