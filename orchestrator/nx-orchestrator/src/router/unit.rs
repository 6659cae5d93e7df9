//! The router's systemd unit, `nx-router.service`: started over D-Bus like a deployment's, so
//! it outlives nxd. nxd adopts a running router whose settings are unchanged (no dropped
//! connection across an nxd restart) and restarts one whose settings changed.

use super::{RouterClient, RouterSettings};
use crate::supervisor::{SliceKind, Supervisor, SupervisorError, UnitOutput, UnitSpec};
use std::path::Path;
use std::time::Duration;

pub const UNIT: &str = "nx-router.service";
/// How long a new router may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum RouterUnitError {
    #[error("router: cannot write {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("router unit: {0}")]
    Supervisor(#[from] SupervisorError),
    #[error("the router does not accept connections on {listen} (router_listen) after {} s: is the address taken or not this host's? Its log: {}", LISTEN_TIMEOUT.as_secs(), log.display())]
    NotListening {
        listen: std::net::SocketAddr,
        log: std::path::PathBuf,
    },
}

/// Makes sure `nx-router.service` runs `program` with `settings`; answers its control client.
#[tracing::instrument(skip_all, fields(listen = %settings.listen))]
pub async fn ensure_running(
    supervisor: &Supervisor,
    program: &Path,
    settings: &RouterSettings,
) -> Result<RouterClient, RouterUnitError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| RouterUnitError::Io { path, source }
    };
    std::fs::create_dir_all(&settings.dir).map_err(io(&settings.dir))?;
    let file = RouterSettings::file(&settings.dir);
    let wanted = serde_json::to_string_pretty(settings).expect("settings serialize");
    let current = std::fs::read_to_string(&file).ok();
    let active = supervisor.state(UNIT).await?.active == crate::api::systemd::ActiveState::Active;
    if active && current.as_deref() == Some(wanted.as_str()) {
        tracing::info!("router adopted: it kept serving while nxd was away");
        return Ok(RouterClient::new(&settings.control_socket()));
    }
    if active {
        tracing::warn!("router settings changed: restarting the router");
        supervisor.stop(UNIT).await?;
    }
    let tmp = file.with_extension("json.tmp");
    std::fs::write(&tmp, &wanted).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &file).map_err(io(&file))?;
    supervisor
        .start(&UnitSpec {
            name: UNIT.into(),
            description: "NX router (reverse proxy of preview and production URLs)".into(),
            argv: vec![
                program.display().to_string(),
                "--settings".into(),
                file.display().to_string(),
            ],
            // As nxd's own user (root here, `nx` on NixOS): the control socket is that user's.
            user: (!nix::unistd::geteuid().is_root())
                .then(|| nix::unistd::geteuid().as_raw().to_string()),
            limits: None,
            output: UnitOutput::File(settings.dir.join("router.log")),
            restart_delay: Some(Duration::from_secs(1)),
            slice: SliceKind::Control,
            remain_after_exit: false,
            graceful_stop: None,
            ambient_capabilities: if binds_privileged_port(settings) {
                1 << CAP_NET_BIND_SERVICE
            } else {
                0
            },
            cpu_affinity: Vec::new(),
        })
        .await?;
    wait_listening(settings).await?;
    tracing::info!("router started");
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
                log: settings.dir.join("router.log"),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
