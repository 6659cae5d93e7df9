//! Where nx finds nxd and its token: flags, then NX_HOST / NX_TOKEN, then the config file
//! (`host`, and `token` or `token_file`).

use anyhow::{bail, Context};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    host: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
}

pub struct Settings {
    pub host: String,
    pub token: String,
}

fn default_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("nx").join("config.toml"))
}

impl Settings {
    pub fn resolve(
        host: Option<String>,
        token: Option<String>,
        config: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let file = match config.clone().or_else(default_config_path) {
            Some(path) if path.exists() || config.is_some() => {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("config file {} is not valid", path.display()))?
            }
            _ => File::default(),
        };
        let host = host
            .or(file.host)
            .unwrap_or_else(|| "http://127.0.0.1:7700".into());
        let token = match (token, file.token, file.token_file) {
            (Some(t), _, _) | (None, Some(t), _) => t,
            (None, None, Some(path)) => std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read token_file {}", path.display()))?
                .trim()
                .to_owned(),
            (None, None, None) => bail!(
                "no API token: pass --token, set NX_TOKEN, or set token_file in ~/.config/nx/config.toml (nxd writes it to <state_dir>/token)"
            ),
        };
        Ok(Self {
            host: host.trim_end_matches('/').to_owned(),
            token,
        })
    }
}
