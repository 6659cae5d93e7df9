//! `nx-router`: NX's reverse proxy, on Pingora, in a process of its own (`nx-router.service`,
//! started by nxd over D-Bus). It serves the last route table nxd gave it, also while nxd is
//! away, and takes new tables on its control socket.
//!
//! `nx-router --settings <dir>/settings.json` (written by nxd). `--upgrade` takes the listening
//! socket from a running router over `<dir>/upgrade.sock` (send the old one SIGQUIT), Pingora's
//! graceful upgrade: no connection is refused while the binary is replaced. `--check` reads
//! what a start reads (the settings, the route table, the fixed certificate and key), binds
//! the listeners a start would and exits: 0 when a router could start with them, 1 with the
//! error a start would end with.

mod access_log;
mod connections;
mod control;
mod headers;
mod log_budget;
mod metrics;
mod proxy;
mod table;
mod tls;
mod traffic;
mod wake;

use anyhow::Context;
use clap::Parser;
use nx_router_api::RouterSettings;
use pingora::apps::HttpServerOptions;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::listening::Service;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// mimalloc instead of glibc's malloc: Pingora allocates per request (headers, buffers), and
/// glibc's malloc/free took about a tenth of the router's CPU time under load (perf, nx-bench).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "nx-router", version, about = "The NX router (started by nxd)")]
struct Args {
    /// The settings file nxd wrote (JSON).
    #[arg(long)]
    settings: PathBuf,
    /// Take the listening socket from the running router (Pingora's graceful upgrade).
    #[arg(long)]
    upgrade: bool,
    /// Only read the settings and what they name, as a start would, then exit (0: usable).
    #[arg(long, conflicts_with = "upgrade")]
    check: bool,
}

fn main() -> anyhow::Result<()> {
    let log = init_logging();
    let args = Args::parse();
    let text = std::fs::read(&args.settings)
        .with_context(|| format!("reading {}", args.settings.display()))?;
    let mut settings: RouterSettings = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not router settings", args.settings.display()))?;
    settings.config.validate().map_err(anyhow::Error::msg)?;
    if let Some(open_files) = raise_open_files_limit() {
        settings.config.max_connections =
            connections_the_files_hold(settings.config.max_connections, open_files);
    }
    log_budget::report_suppressed().context("starting the log budget's thread")?;

    let table = Arc::new(table::Table::load(&settings.table_file())?);
    let certs = match &settings.tls {
        Some(tls) => Some(Arc::new(tls::Certificates::load(tls)?)),
        None => None,
    };
    if args.check {
        check_listeners(&settings)?;
        println!("{}: a router can start with these", args.settings.display());
        return Ok(());
    }
    let metrics = Arc::new(metrics::RouterMetrics::default());
    let shared = proxy::Shared {
        table: table.clone(),
        metrics: metrics.clone(),
        deployments: proxy::Deployments {
            traffic: Arc::new(traffic::TrafficLog::default()),
            waker: Arc::new(wake::Waker::new(settings.wake_socket.as_deref())),
        },
        access_log: Arc::new(access_log::AccessLog::new(
            log,
            settings.config.access_log_sample,
        )),
        requests_by_client: Arc::default(),
        connections_by_client: Arc::default(),
        upstream_requests: proxy::UpstreamRequests::default(),
    };
    control::spawn(
        &settings.control_socket(),
        table,
        certs.clone(),
        metrics,
        shared.deployments.traffic.clone(),
    )?;

    let dir = |name: &str| settings.dir.join(name).display().to_string();
    let conf = ServerConf {
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        pid_file: dir("router.pid"),
        upgrade_sock: dir("upgrade.sock"),
        // On SIGTERM (and after SIGQUIT has handed the listener over), stop accepting, close
        // idle keep-alive connections, and give open requests 5 s (the grace period) before
        // the runtimes stop; tokio drops whatever is left at once then.
        grace_period_seconds: Some(5),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: args.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let http_side = settings
        .tls
        .clone()
        .zip(certs.clone())
        .map(|(settings, certs)| Arc::new(tls::HttpSide { certs, settings }));
    let mut plain = proxy_service(
        &server,
        &settings,
        &shared,
        proxy::Listener::Http(http_side),
        None,
    );
    plain.add_tcp(&settings.listen.to_string());
    server.add_service(plain);
    if let (Some(tls), Some(certs)) = (&settings.tls, certs) {
        // A TCP listener to Pingora: the handshake is ours (connections.rs), under a deadline
        // and with ALPN acme-tls/1 beside h2 and http/1.1 (tls::acceptor).
        let mut https = proxy_service(
            &server,
            &settings,
            &shared,
            proxy::Listener::Https { hsts: tls.hsts },
            Some(tls::acceptor(certs)),
        );
        https.add_tcp(&tls.listen.to_string());
        server.add_service(https);
        tracing::info!(https_listen = %tls.listen, "HTTPS on");
    }
    tracing::info!(listen = %settings.listen, "nx-router ready");
    server.run_forever()
}

/// `--check`'s part for the listeners: each address `settings` name binds (and is let go at
/// once), except one in use on a port the running router's settings (`<dir>/settings.json`)
/// listen on too: that router holds it (or its address's wildcard), as far as a check can
/// tell, and lets it go when it is stopped for the new one.
fn check_listeners(settings: &RouterSettings) -> anyhow::Result<()> {
    let addresses = |s: &RouterSettings| {
        std::iter::once(s.listen)
            .chain(s.tls.as_ref().map(|t| t.listen))
            .collect::<Vec<_>>()
    };
    let running = std::fs::read(RouterSettings::file(&settings.dir))
        .ok()
        .and_then(|text| serde_json::from_slice::<RouterSettings>(&text).ok())
        .map(|s| addresses(&s))
        .unwrap_or_default();
    for address in addresses(settings) {
        match std::net::TcpListener::bind(address) {
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && running.iter().any(|r| r.port() == address.port()) => {}
            Err(e) => anyhow::bail!("cannot listen on {address}: {e}"),
        }
    }
    Ok(())
}

/// The proxy for one listener, wrapped in the connection caps and head deadline; `tls` makes
/// it the HTTPS listener.
fn proxy_service(
    server: &Server,
    settings: &RouterSettings,
    shared: &proxy::Shared,
    listener: proxy::Listener,
    tls: Option<pingora::listeners::tls::Acceptor>,
) -> Service<connections::Connections<HttpProxy<proxy::NxProxy>>> {
    let config = settings.config.clone();
    let mut proxy = pingora::proxy::http_proxy(
        &server.configuration,
        proxy::NxProxy::new(
            shared.clone(),
            config.clone(),
            settings.base_domain.clone(),
            listener,
        ),
    );
    let idle = Duration::from_secs(config.idle_timeout_secs);
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    options.h2_idle_timeout = Some(idle);
    proxy.server_options = Some(options);
    let app = connections::Connections::new(
        proxy,
        connections::Caps {
            open: shared.metrics.connections(),
            max: config.max_connections,
            by_client: shared.connections_by_client.clone(),
            max_per_address: config.max_connections_per_address,
        },
        idle,
        Duration::from_secs(config.head_timeout_secs),
    );
    let app = match tls {
        Some(acceptor) => app.with_tls(acceptor),
        None => app,
    };
    Service::new("nx-router".into(), app)
}

/// tracing's events go to stdout through the [`access_log::LogBuffer`] the access log shares
/// (so lines stay whole and in order); returns that buffer.
fn init_logging() -> access_log::LogBuffer {
    use std::io::IsTerminal;
    let buffer = access_log::LogBuffer::stdout().expect("stdout and the log thread");
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,pingora_core=warn,pingora_proxy=warn".into()),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer({
            let buffer = buffer.clone();
            move || access_log::EventWriter(buffer.clone())
        })
        .init();
    buffer
}

/// Raises the soft limit of open files to the hard limit (systemd's default soft limit, 1024,
/// would cap the router at about a thousand connections); the limit it has then, `None` when
/// it cannot tell.
fn raise_open_files_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => {
            tracing::info!(open_files = n, "open-file limit raised");
            Some(n)
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-file limit");
            None
        }
    }
}

/// Open files the router keeps for all but its clients' connections: its listeners, its
/// control socket and nxd's connections to it, its logs, its runtimes' event fds and the idle
/// upstream connections Pingora pools (128 by default).
const FILES_KEPT: u64 = 512;

/// The most connections the router admits with `open_files`: `max_connections`, or fewer where
/// the files would not hold them, a proxied connection taking two (the client's and the
/// upstream's) beside [`FILES_KEPT`] (newcomer17 N5: 11,000 held requests, under
/// `router.max_connections` 16,384, took all of a router's 20,000 files, and then every new
/// client waited in vain and nxd's control connections failed EMFILE, so a push was never
/// routed). Said in a warning when fewer. It bounds requests under way to deployments too
/// (`proxy::UpstreamRequests`: an HTTP/2 client's streams each hold an upstream connection).
fn connections_the_files_hold(max_connections: usize, open_files: u64) -> usize {
    let held = usize::try_from(open_files.saturating_sub(FILES_KEPT) / 2)
        .unwrap_or(usize::MAX)
        .max(1);
    if held >= max_connections {
        return max_connections;
    }
    tracing::warn!(
        max_connections,
        open_files,
        admitted = held,
        "router.max_connections ({max_connections}) is more than the router's {open_files} open files hold (two a proxied connection, {FILES_KEPT} kept for its listeners, control socket and logs): it admits {held} connections at once; raise the open-file limit it starts with (RLIMIT_NOFILE, its unit's LimitNOFILE) to {} or more, or lower router.max_connections",
        max_connections as u64 * 2 + FILES_KEPT
    );
    held
}
