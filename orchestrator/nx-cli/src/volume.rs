//! `nx volume`: a sandbox's named, persistent filesystems (mounted with `nx push --volume`).

use crate::client::Client;
use crate::output::print_json;
use nx_api::client::VolumeArchive;
use nx_api::names::{SandboxName, VolumeName};
use nx_api::volumes::{restore_max_bytes, restore_too_large, CreateVolume};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
#[command(defer = true)]
pub enum VolumeCommand {
    /// Create a volume: an empty filesystem of SIZE MiB (its quota) that outlives every
    /// deployment; mount it with `nx push --volume NAME:/PATH`.
    Create {
        sandbox: String,
        name: String,
        /// Its size in MiB, 16 up to the host's volumes.max_size_mb (100 GiB by default): writes
        /// past it get ENOSPC.
        #[arg(long, value_name = "MIB")]
        size: u64,
    },
    /// List a sandbox's volumes and the deployments that mount them.
    Ls { sandbox: String },
    /// Remove a volume and its files (refused while a deployment mounts it).
    Rm { sandbox: String, name: String },
    /// Back up a volume: a tar archive of its files as they are now (pax format, owners 0),
    /// kept on the host and saved here, with a progress bar.
    Backup {
        sandbox: String,
        name: String,
        /// Where to save it (default: <sandbox>-<volume>-<id>.tar in the current directory).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Replace a volume's files with those of a tar archive: a local file, or the id of a
    /// backup kept on the host (`nx volume backup`, or the final ones of `nx sandbox rm`).
    /// The volume changes only if the whole archive unpacks (at most twice the volume's size
    /// plus 1 MiB) and production starts on it: production (what mounts the volume itself) is
    /// stopped for the swap and started on the restored files; if it does not start, the
    /// previous files are put back and it is started on them again. Refused while another
    /// restore of the volume runs.
    Restore {
        sandbox: String,
        name: String,
        from: String,
    },
}

pub async fn run(client: &Client, cmd: VolumeCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        VolumeCommand::Create {
            sandbox,
            name,
            size,
        } => {
            let req = CreateVolume {
                name: VolumeName::parse(&name)?,
                size_mb: size,
            };
            let view = client
                .create_volume(&SandboxName::parse(&sandbox)?, &req)
                .await?;
            if json {
                return print_json(&view);
            }
            println!(
                "volume {} of {sandbox}: {} MiB; mount it with nx push --volume {}:/PATH",
                view.name, view.size_mb, view.name
            );
        }
        VolumeCommand::Ls { sandbox } => {
            let views = client.volumes(&SandboxName::parse(&sandbox)?).await?;
            if json {
                return print_json(&views);
            }
            for v in views {
                let used: Vec<String> = v.used_by.iter().map(ToString::to_string).collect();
                println!(
                    "{:<24} {:>8} MiB  mounted by: {}",
                    v.name,
                    v.size_mb,
                    if used.is_empty() {
                        "-".to_owned()
                    } else {
                        used.join(", ")
                    }
                );
            }
        }
        VolumeCommand::Rm { sandbox, name } => {
            let done = client
                .remove_volume(&SandboxName::parse(&sandbox)?, &VolumeName::parse(&name)?)
                .await?;
            if json {
                return print_json(&done);
            }
            println!("volume {} removed", done.removed);
        }
        VolumeCommand::Backup {
            sandbox,
            name,
            output,
        } => {
            let (sandbox, name) = (SandboxName::parse(&sandbox)?, VolumeName::parse(&name)?);
            let made = client.backup_volume(&sandbox, &name).await?;
            let path = output
                .unwrap_or_else(|| PathBuf::from(format!("{sandbox}-{name}-{}.tar", made.id)));
            let resp = client
                .download_volume_backup(&sandbox, &name, &made.id)
                .await?;
            crate::db::download(resp, &path, made.size, json).await?;
            if json {
                return print_json(&serde_json::json!({ "backup": made, "saved": path }));
            }
            println!(
                "backup {} of volume {name} ({} bytes) kept on the host at {} and saved to {}",
                made.id,
                made.size,
                made.path,
                path.display()
            );
        }
        VolumeCommand::Restore {
            sandbox,
            name,
            from,
        } => {
            let (sandbox, name) = (SandboxName::parse(&sandbox)?, VolumeName::parse(&name)?);
            let file = PathBuf::from(&from);
            let restored = if file.is_file() {
                refuse_too_large(client, &sandbox, &name, &file).await?;
                let (body, size, bar) = crate::client::upload_body(&file, json).await?;
                let restored = client
                    .restore_volume(&sandbox, &name, VolumeArchive::Upload { body, size })
                    .await;
                bar.finish_and_clear();
                restored?
            } else if from.contains(['/', '.']) {
                anyhow::bail!(
                    "no file {from}: give a tar archive, or the id of a backup kept on the host (such as 20261129T052012123Z, from `nx volume backup`)"
                );
            } else {
                client
                    .restore_volume(&sandbox, &name, VolumeArchive::Kept(from))
                    .await?
            };
            if json {
                return print_json(&restored);
            }
            println!(
                "restored volume {name} of {sandbox} from a {} byte archive",
                restored.archive_bytes
            );
        }
    }
    Ok(())
}

/// Refuses, before any upload, an archive larger than nxd takes for the volume
/// (`restore_max_bytes`): nxd answers 413 at once and closes the connection, which can reach
/// nx as a reset before the answer. An unknown sandbox or volume is left to nxd's 404, and so is
/// the check when the volumes cannot be listed.
async fn refuse_too_large(
    client: &Client,
    sandbox: &SandboxName,
    name: &VolumeName,
    file: &std::path::Path,
) -> anyhow::Result<()> {
    let size = std::fs::metadata(file)?.len();
    let volumes = client.volumes(sandbox).await.unwrap_or_default();
    if let Some(volume) = volumes.iter().find(|v| &v.name == name) {
        let max_bytes = restore_max_bytes(volume.size_mb);
        if size > max_bytes {
            anyhow::bail!(restore_too_large(name, max_bytes));
        }
    }
    Ok(())
}
