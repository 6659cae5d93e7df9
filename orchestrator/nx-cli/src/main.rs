//! nx, the NX command line: push binaries, list and inspect deployments, promote, roll back.

mod access;
mod bundle;
mod client;
mod db;
mod digests;
mod domain;
mod logs;
mod output;
mod push;
mod settings;
mod task;
mod upkeep;
mod usage;
mod volume;

use anyhow::Context;
use clap::{Parser, Subcommand};
use client::Client;
use nx_api::names::{DeploymentId, SandboxName};
use nx_api::PromoteRequest;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "nx", version, about = "Push a binary, get a sandbox and a URL")]
struct Cli {
    /// nxd's API, e.g. http://127.0.0.1:7700 (else NX_HOST, else the config file).
    #[arg(long, global = true, env = "NX_HOST", hide_env_values = true)]
    host: Option<String>,
    /// The API token (else NX_TOKEN, else the config file's token or token_file).
    #[arg(long, global = true, env = "NX_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The config file (default: $XDG_CONFIG_HOME/nx/config.toml or ~/.config/nx/config.toml).
    #[arg(long, global = true, env = "NX_CONFIG")]
    config: Option<PathBuf>,
    /// An extra CA certificate (PEM) to trust for nxd's HTTPS (else NX_CA_CERT, else the config
    /// file's ca_cert); the system's roots are always trusted.
    #[arg(long, global = true, env = "NX_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Allow plain http:// to a host that is not loopback (the token travels in clear text).
    #[arg(long, global = true)]
    insecure: bool,
    /// Print JSON instead of text (errors too, as {"error": ...}).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// Each subcommand's arguments are built only when it is the one run (`defer`: building every
/// command's took ~0.3 ms of each run, `perf stat` of a push refused at connect: 2.91 ->
/// 2.61 ms). Then clap takes an args struct's doc comment as the `about` of the subcommand it
/// is part of, over the subcommand's own: such structs have plain comments instead.
#[derive(Subcommand)]
#[command(defer = true)]
enum Command {
    /// Upload a Linux binary and run it as a new deployment of a sandbox.
    Push(Box<push::PushArgs>),
    /// List sandboxes and their deployments.
    Ls,
    /// Show one sandbox: production URL, promoted deployment, every deployment's state.
    Status { sandbox: String },
    /// Point the sandbox's production URL at a deployment. For a deployment pushed with
    /// --db-branch, asks (on a terminal) whether to swap its branch in as production's database;
    /// the default keeps production's database.
    Promote {
        sandbox: String,
        deployment: String,
        /// Swap the deployment's branch in as production's database without asking (the old
        /// database is kept, renamed, until you drop it).
        #[arg(long, conflicts_with = "keep_db")]
        swap_db: bool,
        /// Keep production's database without asking.
        #[arg(long)]
        keep_db: bool,
    },
    /// Point the sandbox's production URL back at the previously promoted deployment.
    Rollback { sandbox: String },
    /// Stop a deployment (its data dir is kept): SIGTERM to the program, SIGKILL if it has not
    /// ended after the stop timeout.
    Stop {
        deployment: String,
        /// How long the program may take to shut down after SIGTERM, e.g. 30s (default 10s,
        /// at most 1h).
        #[arg(long, value_parser = humantime::parse_duration)]
        stop_timeout: Option<std::time::Duration>,
    },
    /// Start a stopped deployment again.
    Start { deployment: String },
    /// Remove a deployment: its unit, its data dir, its preview URL.
    Rm { deployment: String },
    /// Keep a preview however long no request comes (previews are removed after their
    /// sandbox's time to live with no request: `nx sandbox set --preview-ttl`, 7 days unless
    /// configured). Production is never removed.
    Pin { deployment: String },
    /// Let a pinned preview expire again.
    Unpin { deployment: String },
    /// Print a deployment's output.
    Logs {
        deployment: String,
        /// Keep printing what it writes.
        #[arg(short, long)]
        follow: bool,
        /// How many of the last lines to print first (default 100; all with --since).
        #[arg(short = 'n', long)]
        lines: Option<usize>,
        /// Only lines written since then: a time (2026-11-30T03:00:00Z) or an age (10m, 2h).
        #[arg(long)]
        since: Option<String>,
        /// Print control characters (ESC, CR, NUL...) as the program wrote them; without it
        /// they are shown escaped (`\x1b`, `\r`), tab excepted.
        #[arg(long)]
        raw: bool,
    },
    /// Create or remove sandboxes, or set what their deployments start with.
    #[command(subcommand)]
    Sandbox(db::SandboxCommand),
    /// Deploy tokens: scoped to one sandbox and to verbs, for CI (needs the root token).
    #[command(subcommand)]
    Token(access::TokenCommand),
    /// The public keys that may upload to a sandbox over SFTP, and the server's host key.
    #[command(subcommand)]
    Keys(access::KeysCommand),
    /// Custom domains: a name of your own for a sandbox's production deployment, with HTTPS.
    #[command(subcommand)]
    Domain(domain::DomainCommand),
    /// Volumes: a sandbox's persistent filesystems, mounted with `nx push --volume`.
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// What deployments used (CPU-seconds, memory and disk GiB-hours, requests, bytes out) per
    /// deployment and sandbox, and what it costs at nxd's prices ([usage] in its config).
    Usage(usage::UsageArgs),
    /// The sandbox's PostgreSQL database: URL, psql, backups, restore.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Run a binary or an image once in a fresh sandbox with no network; its output streams
    /// here and nx exits with its exit code (124 when killed at the timeout).
    RunTask(task::RunTaskArgs),
    /// Check that a file is a Linux executable this host can run, or that a bundle (a
    /// directory, or a .tar.gz) is one `nx push` takes: its shape, its entry and the libraries
    /// it needs as the sandbox sees them (no daemon needed).
    VerifyBinary {
        file: PathBuf,
        /// For a bundle: its program, relative to its top, as `nx push --entry`.
        #[arg(long, value_name = "PATH")]
        entry: Option<String>,
    },
}

fn main() {
    // SAFETY: setting a signal's action, before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, on_sigpipe as *const () as libc::sighandler_t) };
    let cli = Cli::try_parse().unwrap_or_else(|e| usage_error(e));
    let json = cli.json;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(cli)) {
        output::fail(&e, json);
        std::process::exit(1);
    }
}

/// SIGPIPE's handler. Like coreutils, a reader of stdout that went away (`nx ls | head -c 1`)
/// ends nx quietly, by SIGPIPE, instead of a failed write (which `println!` turns into a
/// panic): the write end of a pipe whose reader closed polls POLLERR (pipe(7)). A SIGPIPE from
/// a socket whose peer closed (nxd refusing an upload before its end) returns, and the write's
/// EPIPE becomes an error nx reports. poll, signal and raise are async-signal-safe
/// (signal-safety(7)).
extern "C" fn on_sigpipe(_: libc::c_int) {
    let mut stdout = libc::pollfd {
        fd: 1,
        events: 0,
        revents: 0,
    };
    // SAFETY: a pollfd of ours; the signal's default action ends the process.
    unsafe {
        if libc::poll(&mut stdout, 1, 0) == 1 && stdout.revents & libc::POLLERR != 0 {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::raise(libc::SIGPIPE);
        }
    }
}

/// Ends nx on a command line it cannot parse: clap's text, or with `--json` (given before any
/// `--`, after which the words are the program's) `{"error": ...}` on stdout as for every
/// other failure; exit status 2 as clap's. `--help` and `--version` print as usual.
fn usage_error(error: clap::Error) -> ! {
    use clap::error::ErrorKind;
    let json = std::env::args()
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    if !json
        || matches!(
            error.kind(),
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
        )
    {
        error.exit()
    }
    let text = error.render().to_string();
    // clap's text: "error: <what>\n\n<usage>\n\nFor more information, try '--help'."
    let what = text.split("\n\n").next().unwrap_or(&text);
    let what = what.strip_prefix("error: ").unwrap_or(what).trim();
    println!("{}", serde_json::json!({ "error": what }));
    std::process::exit(2)
}

/// On a terminal, for a deployment with a preview branch: swap the branch in? (default no)
async fn ask_swap(
    client: &Client,
    sandbox: &SandboxName,
    id: &DeploymentId,
) -> anyhow::Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    let view = client.sandbox(sandbox).await?;
    if !view.deployments.iter().any(|d| &d.id == id && d.db_branch) {
        return Ok(false);
    }
    eprint!("{id} runs against its own copy of the database. Swap that copy in as production's database (the current one is kept)? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let json = cli.json;
    if let Command::VerifyBinary { file, entry } = &cli.command {
        if nx_artifact::bundle::is_bundle_path(file) {
            let choices = nx_artifact::bundle::BundleChoices {
                entry: entry.clone(),
                argv0: None,
            };
            let checked = bundle::read(file, &choices)?;
            let entry = &checked.scanned.manifest.entry;
            output::verified(file, Some(entry), &checked.entry, json);
            return Ok(());
        }
        if entry.is_some() {
            anyhow::bail!("--entry is for bundles: verify a directory or a .tar.gz");
        }
        let verified = nx_artifact::verify::verify_file(file)?;
        output::verified(file, None, &verified.info, json);
        return Ok(());
    }
    let settings = settings::Settings::resolve(settings::Given {
        host: cli.host,
        token: cli.token,
        config: cli.config,
        ca_cert: cli.ca_cert,
        insecure: cli.insecure,
    })?;
    let client = client::connect(&settings)?;
    match cli.command {
        Command::VerifyBinary { .. } => unreachable!("handled above"),
        Command::Push(args) => push::run(&client, *args, json).await,
        Command::RunTask(args) => {
            let code = task::run(&client, args, json).await?;
            std::process::exit(code)
        }
        Command::Sandbox(cmd) => db::sandbox(&client, cmd, json).await,
        Command::Db(cmd) => db::db(&client, cmd, json).await,
        Command::Token(cmd) => access::token(&client, cmd, json).await,
        Command::Keys(cmd) => access::keys(&client, cmd, json).await,
        Command::Domain(cmd) => domain::run(&client, cmd, json).await,
        Command::Volume(cmd) => volume::run(&client, cmd, json).await,
        Command::Usage(args) => usage::run(&client, args, json).await,
        Command::Ls => {
            let list = client.sandboxes().await?;
            output::sandboxes(&list, json)
        }
        Command::Status { sandbox } => {
            let name = SandboxName::parse(&sandbox)?;
            output::sandboxes(&[client.sandbox(&name).await?], json)
        }
        Command::Promote {
            sandbox,
            deployment,
            swap_db,
            keep_db,
        } => {
            let name = SandboxName::parse(&sandbox)?;
            let id = DeploymentId::parse(&deployment)?;
            let swap_db = swap_db || (!keep_db && !json && ask_swap(&client, &name, &id).await?);
            let req = PromoteRequest {
                deployment: id,
                swap_db,
            };
            let view = client.promote(&name, &req).await.map_err(|e| {
                client::cut_off(e, || format!("if nxd stopped answering during the promotion, its next start finishes it or undoes it (production is {} or as it was): look with `nx status {name}` once nxd answers", req.deployment))
            })?;
            output::switched(&view, "promoted", json)
        }
        Command::Rollback { sandbox } => {
            let name = SandboxName::parse(&sandbox)?;
            let view = client.rollback(&name).await?;
            output::switched(&view, "rolled back to", json)
        }
        Command::Stop {
            deployment,
            stop_timeout,
        } => {
            let id = DeploymentId::parse(&deployment)?;
            output::deployment(&client.stop(&id, stop_timeout).await?, json)
        }
        Command::Start { deployment } => {
            let id = DeploymentId::parse(&deployment)?;
            output::deployment(&client.start(&id).await?, json)
        }
        Command::Pin { deployment } => upkeep::pin(&client, &deployment, true, json).await,
        Command::Unpin { deployment } => upkeep::pin(&client, &deployment, false, json).await,
        Command::Rm { deployment } => {
            let id = DeploymentId::parse(&deployment)?;
            let removed = client.remove_deployment(&id).await.map_err(|e| {
                client::cut_off(e, || format!(
                    "nxd stopped answering while it removed deployment {id}; the removal may be under way, and nxd finishes it once it is back: look with `nx status SANDBOX` (its sandbox's; `nx ls` lists them) once nxd answers"
                ))
            })?;
            output::removed(&removed, json)
        }
        Command::Logs {
            deployment,
            follow,
            lines,
            since,
            raw,
        } => {
            let id = DeploymentId::parse(&deployment)?;
            let query = nx_api::LogsQuery {
                follow,
                lines,
                since: since.as_deref().map(output::since_time).transpose()?,
                format: json.then(|| "json".to_owned()),
            };
            let resp = client.logs(&id, &query).await?;
            logs::print(resp, raw || json).await.context("reading logs")
        }
    }
}
