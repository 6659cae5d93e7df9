//! `nx token create|ls|rm`, `nx keys add|ls|rm|host` and `nx sandbox set`.

use crate::client::Client;
use crate::output::print_json;
use crate::push::{parse_env, LimitArgs};
use anyhow::Context;
use nx_api::access::{AddKey, CreateToken, TokenView, VerbSet};
use nx_api::names::SandboxName;
use std::io::Read;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
#[command(defer = true)]
pub enum TokenCommand {
    /// Create a deploy token and print it (this once: nxd keeps only its hash). Needs the
    /// root token.
    Create {
        /// The one sandbox it may act on (it must exist); without it, every sandbox.
        #[arg(long, short)]
        sandbox: Option<String>,
        /// What it may do, comma-separated: push, promote, rollback, logs, db, tasks.
        #[arg(long, default_value = "push,promote,rollback")]
        can: String,
        /// It stops working after this long, e.g. 90d, 12h; default: never.
        #[arg(long, value_name = "DURATION")]
        expires: Option<humantime::Duration>,
    },
    /// List deploy tokens (ids, scopes, expiry; never the tokens).
    Ls,
    /// Remove a deploy token: it gets 401 from then on.
    Rm { id: String },
}

#[derive(clap::Subcommand)]
#[command(defer = true)]
pub enum KeysCommand {
    /// Let a public key upload to a sandbox over SFTP (`sftp <sandbox>@host`).
    Add {
        sandbox: String,
        /// The public key file (e.g. ~/.ssh/id_ed25519.pub); default: standard input.
        file: Option<PathBuf>,
    },
    /// List the keys that may upload to a sandbox.
    Ls { sandbox: String },
    /// Remove a key, by its file or its fingerprint (SHA256:...).
    Rm { sandbox: String, key: String },
    /// Print the SFTP server's host key, to pin it (a known_hosts line and its fingerprint).
    Host,
}

#[derive(clap::Args)]
pub struct SetArgs {
    name: String,
    /// Set an environment variable, K=V; repeatable; `$NAME` in V as for `nx push -e`.
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    env: Vec<String>,
    /// Remove an environment variable; repeatable.
    #[arg(long, value_name = "K")]
    unset: Vec<String>,
    #[command(flatten)]
    limits: LimitArgs,
    /// How long a deployment may take to become ready, e.g. 60s (`nx push --ready-timeout`
    /// overrides it); at most nxd's sandbox.max_ready_timeout_secs.
    #[arg(long, value_name = "DURATION", value_parser = crate::push::whole_seconds)]
    ready_timeout: Option<u64>,
    /// Connections out of a deployment's network namespace, none or public (`nx push
    /// --egress` overrides it; see there).
    #[arg(long, value_parser = crate::push::EGRESS)]
    egress: Option<String>,
    #[command(flatten)]
    upkeep: crate::upkeep::UpkeepArgs,
    /// Stop production too after the idle timeout (by default only previews are).
    #[arg(long, value_name = "true|false")]
    idle_production: Option<bool>,
    /// Remove a preview (not production, not pinned) after this long with no request, e.g.
    /// 7d or 12h (default: nxd's sandbox.preview_ttl_secs, 7 days unless configured).
    #[arg(long, value_name = "DURATION", value_parser = crate::push::whole_seconds)]
    preview_ttl: Option<u64>,
    /// Drop the stored arguments.
    #[arg(long, conflicts_with = "args")]
    clear_args: bool,
    /// Arguments for the program (replace the stored ones).
    #[arg(last = true)]
    args: Vec<String>,
}

fn sandbox(s: &str) -> anyhow::Result<SandboxName> {
    Ok(SandboxName::parse(s)?)
}

fn expiry(view: &TokenView) -> String {
    view.expires_at.map_or("never".to_owned(), |t| {
        t.format("%Y-%m-%d %H:%M UTC").to_string()
    })
}

pub async fn token(client: &Client, cmd: TokenCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            sandbox: s,
            can,
            expires,
        } => {
            let req = CreateToken {
                sandbox: s.as_deref().map(sandbox).transpose()?,
                can: VerbSet::parse(&can).map_err(anyhow::Error::msg)?,
                expires_in_secs: expires.map(|d| d.as_secs()),
            };
            let created = client.create_token(&req).await?;
            if json {
                return print_json(&created);
            }
            eprintln!(
                "token {} may {} on {}, expires {}; it is shown this once:",
                created.view.id,
                created.view.can,
                created
                    .view
                    .sandbox
                    .as_ref()
                    .map_or("every sandbox".into(), |s| format!("sandbox {s}")),
                expiry(&created.view)
            );
            println!("{}", created.token);
        }
        TokenCommand::Ls => {
            let tokens = client.tokens().await?;
            if json {
                return print_json(&tokens);
            }
            println!("{:<10} {:<20} {:<40} EXPIRES", "ID", "SANDBOX", "CAN");
            for t in &tokens {
                let scope = t.sandbox.as_ref().map_or("*".into(), |s| s.to_string());
                println!(
                    "{:<10} {:<20} {:<40} {}",
                    t.id,
                    scope,
                    t.can.to_string(),
                    expiry(t)
                );
            }
        }
        TokenCommand::Rm { id } => {
            let done = client.remove_token(&id).await?;
            if json {
                return print_json(&done);
            }
            println!("removed token {id}");
        }
    }
    Ok(())
}

pub async fn keys(client: &Client, cmd: KeysCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Add { sandbox: s, file } => {
            let s = sandbox(&s)?;
            let public_key = match &file {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                None => {
                    let mut line = String::new();
                    std::io::stdin().read_to_string(&mut line)?;
                    line
                }
            };
            let key = client.add_key(&s, &AddKey { public_key }).await?;
            if json {
                return print_json(&key);
            }
            println!("{} may upload to {s}: sftp {s}@<host>", key.fingerprint);
        }
        KeysCommand::Ls { sandbox: s } => {
            let s = sandbox(&s)?;
            let keys = client.keys(&s).await?;
            if json {
                return print_json(&keys);
            }
            for k in &keys {
                println!(
                    "{} {} {}",
                    k.fingerprint,
                    k.public_key.split(' ').next().unwrap_or(""),
                    k.comment
                );
            }
        }
        KeysCommand::Rm { sandbox: s, key } => {
            let s = sandbox(&s)?;
            let key = match std::fs::read_to_string(&key) {
                Ok(line) => line.trim().to_owned(),
                Err(_) => key,
            };
            let done = client.remove_key(&s, &key).await?;
            if json {
                return print_json(&done);
            }
            println!("removed {} from {s}", done.removed);
        }
        KeysCommand::Host => {
            let host = client.host_key().await?;
            if json {
                return print_json(&host);
            }
            println!("{}", host.fingerprint);
            let port = host.listen.port();
            println!("[<host>]:{port} {}", host.public_key);
        }
    }
    Ok(())
}

pub async fn set(client: &Client, args: SetArgs, json: bool) -> anyhow::Result<()> {
    let s = sandbox(&args.name)?;
    let mut settings = client.settings(&s).await?;
    let limits = args.limits.overrides();
    let changed = !(args.env.is_empty()
        && args.unset.is_empty()
        && limits == Default::default()
        && !args.clear_args
        && args.args.is_empty()
        && args.ready_timeout.is_none()
        && args.egress.is_none()
        && args.upkeep.health_check().is_empty()
        && args.upkeep.idle_timeout_secs().is_none()
        && args.idle_production.is_none()
        && args.preview_ttl.is_none());
    if changed {
        settings.env.extend(parse_env(&args.env)?);
        for key in &args.unset {
            settings.env.remove(key);
        }
        settings.limits = limits.over(&settings.limits);
        if args.clear_args || !args.args.is_empty() {
            settings.args = args.args;
        }
        if args.ready_timeout.is_some() {
            settings.ready_timeout_secs = args.ready_timeout;
        }
        if let Some(egress) = args.egress.as_deref() {
            settings.egress = egress.parse().ok();
        }
        settings.health_check = args.upkeep.health_check().over(&settings.health_check);
        settings.idle_timeout_secs = args
            .upkeep
            .idle_timeout_secs()
            .or(settings.idle_timeout_secs);
        settings.idle_production = args.idle_production.unwrap_or(settings.idle_production);
        settings.preview_ttl_secs = args.preview_ttl.or(settings.preview_ttl_secs);
        settings = client.set_settings(&s, &settings).await?;
    }
    if json {
        return print_json(&settings);
    }
    println!("{s}: deployments start with");
    for (k, v) in &settings.env {
        println!("  env {k}={v}");
    }
    println!("  args {:?}", settings.args);
    let l = &settings.limits;
    println!(
        "  memory {}, cpu {}, tasks {}",
        or_default(l.memory_max_mb, " MiB"),
        or_default(l.cpu_quota_percent, " %"),
        or_default(l.tasks_max, "")
    );
    println!(
        "  ready within {}",
        or_default(settings.ready_timeout_secs, " s")
    );
    println!("  egress {}", settings.egress.unwrap_or_default().as_ref());
    let h = &settings.health_check;
    println!(
        "  health check {} every {}, timeout {}, restart after {} failures",
        or_default(h.path.as_deref(), ""),
        or_default(h.interval_secs, " s"),
        or_default(h.timeout_secs, " s"),
        or_default(h.failure_threshold, "")
    );
    println!(
        "  idle timeout {}{}; previews expire after {}",
        settings
            .idle_timeout_secs
            .map_or("none".into(), |v| format!("{v} s")),
        if settings.idle_production {
            " (production too)"
        } else {
            " (previews only)"
        },
        or_default(settings.preview_ttl_secs, " s")
    );
    Ok(())
}

/// A sandbox setting as `nx sandbox set` prints it: the value with its unit (`"128 MiB"`), or
/// "nxd's default" when the sandbox leaves it to nxd's configuration.
fn or_default(value: Option<impl std::fmt::Display>, unit: &str) -> String {
    value.map_or_else(|| "nxd's default".into(), |v| format!("{v}{unit}"))
}
