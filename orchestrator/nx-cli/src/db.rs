//! `nx sandbox create|rm` (`set`: `access`) and `nx db url|psql|backup|backups|restore|rm-backup`.

use crate::client::Client;
use crate::output::{print_json, progress_bar};
use futures_util::StreamExt;
use nx_api::names::SandboxName;
use nx_api::CreateSandbox;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;

#[derive(clap::Subcommand)]
#[command(defer = true)]
pub enum SandboxCommand {
    /// Create a sandbox and its database (a first push does this too).
    Create {
        name: String,
        /// Where its pushes run when they name no --backend: container or microvm.
        #[arg(long, value_parser = ["container", "microvm"], default_value = "container")]
        backend: String,
    },
    /// Remove a sandbox: its deployments, then (after a final backup of each, kept on the
    /// host) its volumes, its role and every database it owns, including those kept by
    /// restores and swaps. Volume backups: <state_dir>/backups/<sandbox>/volumes/<name>/.
    Rm {
        name: String,
        /// Skip the final backups (database and volumes): their data is gone.
        #[arg(long)]
        no_backup: bool,
    },
    /// Set the environment, arguments and limits every deployment of the sandbox starts with
    /// (SFTP uploads use exactly these; `nx push` flags override them); without flags, print them.
    Set(Box<crate::access::SetArgs>),
}

#[derive(clap::Subcommand)]
#[command(defer = true)]
pub enum DbCommand {
    /// Print the sandbox's database URL (its unix socket, on the nxd host).
    Url {
        sandbox: String,
        /// Print the URL a deployment uses (its $DATABASE_URL) instead of the host's.
        #[arg(long)]
        inside: bool,
    },
    /// Open psql on the sandbox's database (run this on the nxd host). Arguments after `--`
    /// go to psql: `nx db psql web -- -c 'select 1'`; SQL on standard input works too. The
    /// connection comes in psql's environment (PGHOST, PGPORT, PGUSER, PGDATABASE,
    /// PGPASSWORD), so psql's own -d/-U/-h/-p, or a database name, override its parts.
    Psql {
        sandbox: String,
        /// psql's own arguments (psql(1)), after `--`.
        #[arg(last = true)]
        psql_args: Vec<String>,
    },
    /// Back up the database (pg_dump custom format): kept on the host and saved here.
    Backup {
        sandbox: String,
        /// Where to save it (default: <sandbox>-<id>.dump in the current directory).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// List the backups kept on the host.
    Backups { sandbox: String },
    /// Restore from a backup id (see `nx db backups`) or a local dump file, into a fresh
    /// database that replaces the current one only if the restore succeeds.
    ///
    /// The restore may run for nxd's `databases.restore_timeout_secs` (600 s unless the host's
    /// operator set it; 0: no bound): past it nxd ends the restore's session and it fails,
    /// nothing swapped (a dump's SQL may sleep). A dump that needs longer: ask the operator to
    /// raise it.
    Restore { sandbox: String, from: String },
    /// Delete a backup kept on the host.
    RmBackup { sandbox: String, id: String },
}

fn name(s: &str) -> anyhow::Result<SandboxName> {
    Ok(SandboxName::parse(s)?)
}

pub async fn sandbox(client: &Client, cmd: SandboxCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        SandboxCommand::Set(args) => crate::access::set(client, *args, json).await?,
        SandboxCommand::Create { name: n, backend } => {
            let req = CreateSandbox {
                name: name(&n)?,
                backend: backend.parse().unwrap_or_default(),
            };
            let view = client.create_sandbox(&req).await?;
            if json {
                return print_json(&view);
            }
            println!(
                "created sandbox {} (production URL {})",
                view.name, view.production_url
            );
        }
        SandboxCommand::Rm { name: n, no_backup } => {
            let n = name(&n)?;
            let done = client.remove_sandbox(&n, !no_backup).await?;
            if json {
                return print_json(&done);
            }
            match done.final_backup {
                Some(b) => println!(
                    "removed sandbox {n}; final backup {} kept on the host",
                    b.id
                ),
                None => println!("removed sandbox {n} (no final backup)"),
            }
            for b in &done.final_volume_backups {
                println!(
                    "final backup {} of volume {} kept on the host at {}",
                    b.id, b.volume, b.path
                );
            }
            if let Some(dir) = &done.backups_kept_at {
                println!(
                    "all of {n}'s backups are set aside at {dir} on the nxd host, for its operator: a sandbox made again as {n} does not get them (restore from a copy with `nx db restore SANDBOX FILE` or `nx volume restore SANDBOX VOLUME FILE`)"
                );
            }
        }
    }
    Ok(())
}

pub async fn db(client: &Client, cmd: DbCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        DbCommand::Url { sandbox, inside } => {
            let info = client.database(&name(&sandbox)?).await?;
            if json {
                return print_json(&info);
            }
            if inside {
                println!("{}", info.sandbox_url);
            } else {
                println!("{}", info.url);
                eprintln!(
                    "(this URL works on the nxd host; a deployment's is its $DATABASE_URL, \
                     `nx db url --inside {sandbox}`: pass it on with -e NAME='$DATABASE_URL')"
                );
            }
        }
        DbCommand::Psql { sandbox, psql_args } => {
            let info = client.database(&name(&sandbox)?).await?;
            let err = std::process::Command::new("psql")
                .envs(connection_env(&info.url)?)
                .args(&psql_args)
                .exec();
            anyhow::bail!("cannot run psql: {err}; install postgresql-client, or use `nx db url`");
        }
        DbCommand::Backup { sandbox, output } => {
            let n = name(&sandbox)?;
            let made = client.backup(&n).await?;
            let path = output.unwrap_or_else(|| PathBuf::from(format!("{n}-{}.dump", made.id)));
            let resp = client.download_backup(&n, &made.id).await?;
            download(resp, &path, made.size, json).await?;
            if json {
                return print_json(&serde_json::json!({ "backup": made, "saved": path }));
            }
            println!(
                "backup {} ({} bytes) kept on the host and saved to {}",
                made.id,
                made.size,
                path.display()
            );
        }
        DbCommand::Backups { sandbox } => {
            let list = client.backups(&name(&sandbox)?).await?;
            if json {
                return print_json(&list);
            }
            if list.is_empty() {
                println!("no backups; `nx db backup {sandbox}` makes one");
            }
            for b in list {
                println!("{}  {:>12} bytes", b.id, b.size);
            }
        }
        DbCommand::Restore { sandbox, from } => {
            let n = name(&sandbox)?;
            let file = PathBuf::from(&from);
            let restored = if file.is_file() {
                let (body, size, bar) = crate::client::upload_body(&file, json).await?;
                let restored = client.restore_dump(&n, body, size).await;
                bar.finish_and_clear();
                restored?
            } else {
                client.restore_backup(&n, &from).await?
            };
            if json {
                return print_json(&restored);
            }
            println!(
                "restored {n}; the previous database is kept as {} until you drop it",
                restored.previous_database
            );
        }
        DbCommand::RmBackup { sandbox, id } => {
            let n = name(&sandbox)?;
            let done = client.remove_backup(&n, &id).await?;
            if json {
                return print_json(&done);
            }
            println!("removed backup {id} of {n}");
        }
    }
    Ok(())
}

/// Saves a streamed answer of `size` bytes to `to` (via `to.partial`), with a progress bar.
pub(crate) async fn download(
    resp: reqwest::Response,
    to: &std::path::Path,
    size: u64,
    json: bool,
) -> anyhow::Result<()> {
    let bar = progress_bar(size, json);
    let partial = to.with_extension("partial");
    let mut file = tokio::fs::File::create(&partial).await?;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        bar.inc(chunk.len() as u64);
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    tokio::fs::rename(&partial, to).await?;
    bar.finish_and_clear();
    Ok(())
}

/// libpq's environment variable for each connection parameter a URI may carry
/// (PostgreSQL's "Environment Variables", libpq-envars).
const PARAMETER_ENV: &[(&str, &str)] = &[
    ("host", "PGHOST"),
    ("port", "PGPORT"),
    ("user", "PGUSER"),
    ("password", "PGPASSWORD"),
    ("dbname", "PGDATABASE"),
    ("passfile", "PGPASSFILE"),
    ("options", "PGOPTIONS"),
    ("application_name", "PGAPPNAME"),
    ("sslmode", "PGSSLMODE"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
];

/// A connection URI (`postgres://role:password@/database?host=DIR&port=N`, as nxd gives it;
/// PostgreSQL's "Connection URIs") as psql's environment (`PGHOST`, `PGPORT`, `PGUSER`,
/// `PGDATABASE`, `PGPASSWORD`, ...), percent-decoded, for `nx db psql`. Not in psql's
/// arguments: every local user reads those in `/proc/<pid>/cmdline` (review15: the password),
/// and psql takes its first argument for a database name only when no -d came, else for a user
/// name (attacker16: `nx db psql web -- -d other` made psql look for a role named after the
/// URI); from the environment, psql's own -d/-U/-h/-p, or a database name, override its parts.
/// Errors: not a `postgres://` or `postgresql://` URI, or a parameter psql has no variable for.
fn connection_env(url: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "nxd gave {url:?}, not a postgres:// URI; use `nx db url` and run psql yourself"
            )
        })?;
    let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, database) = rest.split_once('/').unwrap_or((rest, ""));
    let (user, host) = authority.rsplit_once('@').unwrap_or(("", authority));
    let (user, password) = user.split_once(':').unwrap_or((user, ""));
    let (host, port) = match host.strip_prefix('[') {
        // An IPv6 address: `[::1]:5432`.
        Some(bracketed) => {
            let (host, after) = bracketed.split_once(']').unwrap_or((bracketed, ""));
            (host, after.strip_prefix(':').unwrap_or(""))
        }
        None => host.split_once(':').unwrap_or((host, "")),
    };
    let parts = [
        ("user", user),
        ("password", password),
        ("host", host),
        ("port", port),
        ("dbname", database),
    ];
    let params = query.split('&').filter_map(|p| p.split_once('='));
    let mut env = Vec::new();
    for (key, value) in parts.into_iter().chain(params) {
        if value.is_empty() {
            continue;
        }
        let var = PARAMETER_ENV
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, var)| *var)
            .ok_or_else(|| anyhow::anyhow!("nxd's database URI has the parameter {key:?}, which `nx db psql` cannot hand to psql; run psql \"$(nx db url SANDBOX)\" instead"))?;
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8_lossy()
            .into_owned();
        // A later one wins, as in libpq (`?host=` after an authority's host).
        env.retain(|(v, _)| *v != var);
        env.push((var, value));
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::connection_env;

    #[test]
    fn the_uri_goes_to_psqls_environment_whole() {
        assert_eq!(
            connection_env("postgres://nx_a:s3cr%40t@/nx_a?host=/run/pg&port=5432").unwrap(),
            [
                ("PGUSER", "nx_a"),
                ("PGPASSWORD", "s3cr@t"),
                ("PGDATABASE", "nx_a"),
                ("PGHOST", "/run/pg"),
                ("PGPORT", "5432"),
            ]
            .map(|(k, v)| (k, v.to_owned()))
        );
        assert_eq!(
            connection_env("postgresql://u@[::1]:6432/d").unwrap(),
            [
                ("PGUSER", "u"),
                ("PGHOST", "::1"),
                ("PGPORT", "6432"),
                ("PGDATABASE", "d")
            ]
            .map(|(k, v)| (k, v.to_owned()))
        );
        assert_eq!(
            connection_env("postgres://[::1]/d").unwrap()[0],
            ("PGHOST", "::1".to_owned())
        );
        assert!(connection_env("not a url").is_err());
        assert!(connection_env("postgres:///d?gssencmode=disable").is_err());
    }
}
