//! `nx volume`: a sandbox's named, persistent filesystems (mounted with `nx push --volume`).

use crate::client::Client;
use crate::output::print_json;
use nx_api::names::{SandboxName, VolumeName};
use nx_api::volumes::CreateVolume;

#[derive(clap::Subcommand)]
pub enum VolumeCommand {
    /// Create a volume: an empty filesystem of SIZE MiB (its quota) that outlives every
    /// deployment; mount it with `nx push --volume NAME:/PATH`.
    Create {
        sandbox: String,
        name: String,
        /// Its size in MiB (16 to 16777216): writes past it get ENOSPC.
        #[arg(long, value_name = "MIB")]
        size: u64,
    },
    /// List a sandbox's volumes and the deployments that mount them.
    Ls { sandbox: String },
    /// Remove a volume and its files (refused while a deployment mounts it).
    Rm { sandbox: String, name: String },
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
    }
    Ok(())
}
