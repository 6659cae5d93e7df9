//! nxd, the NX daemon: the JSON API, the router, and the lifecycle of deployments.

mod access_api;
mod auth;
mod domains_api;
mod error;
mod http_api;
mod json_body;
mod listener;
mod metrics_api;
#[cfg(test)]
mod openapi;
mod request_body;
mod route_table;
mod scopes;
mod sftp;
mod state_lock;
mod token_requests;
mod usage_api;
mod volumes_api;

use anyhow::Context;
use clap::{Parser, Subcommand};
use nx_orchestrator::config::Config;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "nxd",
    version,
    about = "The NX daemon: runs pushed binaries in sandboxes behind preview and production URLs"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The config file (TOML; see nxd.example.toml). Without it, the defaults.
    #[arg(long, env = "NXD_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `state_dir`.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Overrides `api_listen`.
    #[arg(long)]
    api_listen: Option<SocketAddr>,
    /// Overrides `router_listen`.
    #[arg(long)]
    router_listen: Option<SocketAddr>,
    /// Overrides `database_url`: PostgreSQL for nxd's state instead of the embedded cluster.
    #[arg(long, env = "NXD_DATABASE_URL")]
    database_url: Option<String>,
    /// Overrides `base_domain`.
    #[arg(long)]
    base_domain: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Stops the embedded systemd manager of a state dir and every deployment it runs, then
    /// removes the host network that state dir's nxd set up (the nftables table `inet nx`,
    /// `nx0`, the subnet's route; left, saying so, when it is another nxd's: `nx0` names
    /// another state dir, or another nxd runs) and the System V shared-memory segment the
    /// killed embedded PostgreSQL leaves. Stop nxd first: it refuses while an nxd holds the
    /// state dir's lock.
    ManagerStop {
        #[arg(long)]
        state_dir: PathBuf,
    },
}

impl RunArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(v) = &self.state_dir {
            config.state_dir = v.clone();
        }
        if let Some(v) = self.api_listen {
            config.api_listen = v;
        }
        if let Some(v) = self.router_listen {
            config.router_listen = v;
        }
        if let Some(v) = &self.database_url {
            config.database_url = Some(v.clone());
        }
        if let Some(v) = &self.base_domain {
            config.base_domain = v.clone();
        }
        config.validate()?;
        Ok(config)
    }
}

fn main() -> anyhow::Result<()> {
    // `launch` and `manager-init`: what units run, re-executing this binary.
    nx_orchestrator::reexec::dispatch();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::ManagerStop { state_dir }) => {
            let _lock = state_lock::acquire(&state_dir)?;
            nx_orchestrator::supervisor::embedded::stop(&state_dir);
            let segment = nx_orchestrator::embedded_db::forget_killed_cluster(&state_dir);
            let network = nx_orchestrator::network::teardown::remove(&state_dir)
                .context("removing the host network (nftables table inet nx, nx0)")?;
            if let Some(why) = network.left {
                eprintln!(
                    "nxd manager-stop: left the network of this network namespace (nx0, the nftables table inet nx) as it is: {why}. This state dir's network, if it has one, is in the network namespace its nxd ran in: run manager-stop there (`nsenter --net=/run/netns/NAME`)"
                );
            }
            segment.context("removing the killed embedded PostgreSQL's shared memory segment")?;
            Ok(())
        }
        None => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            nx_orchestrator::failpoint::arm_from_env();
            let config = cli.run.config()?;
            // systemd's default soft limit (1024) would cap the API at about a thousand
            // connections; the hard limit is what the operator allows.
            match rlimit::increase_nofile_limit(u64::MAX) {
                Ok(n) => tracing::info!(open_files = n, "open-file limit raised"),
                Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
            }
            tokio::runtime::Runtime::new()
                .context("starting the tokio runtime")?
                .block_on(serve(config))
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // Before anything touches the state dir (the router's API socket below is re-bound, the
    // start-up recovery removes what it finds left), and held until nxd exits.
    let _lock = state_lock::acquire(&config.state_dir)?;
    let api_listener = tokio::net::TcpListener::bind(config.api_listen)
        .await
        .with_context(|| format!("cannot listen on api_listen {}", config.api_listen))?;
    let router_api_listener = match config.tls.https_listen {
        Some(_) => Some(listener::bind_router_socket(
            &nx_orchestrator::tls::api_socket(&config.state_dir),
        )?),
        None => None,
    };
    let token = auth::load_or_create(&config.token_file())?;
    let sftp_listener = match config.sftp.listen {
        Some(addr) => Some((
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on sftp.listen {addr}"))?,
            sftp::host_key::load_or_create(&config.state_dir)?,
        )),
        None => None,
    };
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on metrics_listen {addr}"))?,
        ),
        None => None,
    };
    let app = nx_orchestrator::Orchestrator::start(config).await?;
    tracing::info!(
        api = %api_listener.local_addr()?,
        router = %app.config.router_listen,
        "nxd ready"
    );
    let api_listener = listener::CappedListener::new(
        api_listener,
        router_api_listener,
        (
            app.config.api_max_connections,
            app.config.api_reserved_connections,
        ),
        app.config.api_max_connections_per_address,
        Duration::from_secs(app.config.api_send_timeout_secs),
    );
    let sftp = {
        let app = Arc::clone(&app);
        async move {
            match sftp_listener {
                Some((listener, key)) => {
                    tracing::info!(sftp = %listener.local_addr()?, "SFTP uploads on");
                    sftp::serve(app, listener, key).await
                }
                None => std::future::pending().await,
            }
        }
    };
    let metrics = {
        let app = Arc::clone(&app);
        async move {
            match metrics_listener {
                Some(listener) => {
                    tracing::info!(metrics = %listener.local_addr()?, "GET /metrics without a token");
                    metrics_api::serve(app, listener).await
                }
                None => std::future::pending().await,
            }
        }
    };
    let head_timeout = Duration::from_secs(app.config.api_head_timeout_secs);
    let api = listener::serve(api_listener, http_api::routes(app, token), head_timeout);
    tokio::select! {
        r = sftp => r?,
        r = metrics => r.context("metrics_listen")?,
        never = api => match never {},
        _ = shutdown_signal() => tracing::info!("nxd stopping; deployments keep running"),
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
