//! Where nx finds nxd and its token: flags, then NX_HOST / NX_TOKEN / NX_CA_CERT, then the
//! config file (`host`, `token` or `token_file`, `ca_cert`).
//!
//! The token is a bearer token: nx refuses to send it over plain `http://` to anything but a
//! loopback address unless `--insecure` is given; `https://` is verified against the system's
//! roots plus `ca_cert`.

use anyhow::{bail, Context};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    host: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    ca_cert: Option<PathBuf>,
}

pub struct Settings {
    pub host: String,
    pub token: String,
    /// An extra root (PEM) to trust for nxd's certificate.
    pub ca_cert: Option<PathBuf>,
}

/// What the flags and environment give (the config file fills the rest).
pub struct Given {
    pub host: Option<String>,
    pub token: Option<String>,
    pub config: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
    pub insecure: bool,
}

/// Refuses a host URL that is neither `https://` nor `http://` to a loopback address (unless
/// `insecure`): the token would cross the network in clear text.
fn check_host(host: &str, insecure: bool) -> anyhow::Result<()> {
    let url = reqwest::Url::parse(host)
        .with_context(|| format!("--host {host:?} is not a URL (e.g. https://api.example.com)"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback || insecure => Ok(()),
        "http" => bail!(
            "refusing to send the API token in clear text to {host}: use https://api.<base_domain> \
             (nxd's API on the router's HTTPS listener; --ca-cert for a private CA), or pass \
             --insecure if this network is trusted"
        ),
        other => bail!("--host {host:?}: scheme {other:?} is not http or https"),
    }
}

fn default_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("nx").join("config.toml"))
}

impl Settings {
    pub fn resolve(given: Given) -> anyhow::Result<Self> {
        let Given {
            host,
            token,
            config,
            ca_cert,
            insecure,
        } = given;
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
        check_host(&host, insecure)?;
        Ok(Self {
            host: host.trim_end_matches('/').to_owned(),
            token,
            ca_cert: ca_cert.or(file.ca_cert),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::check_host;

    #[test]
    fn plain_http_is_for_loopback_only() {
        for ok in [
            "http://127.0.0.1:7700",
            "http://127.1.2.3",
            "http://[::1]:7700",
            "http://localhost:7700",
            "https://api.example.com",
            "https://203.0.113.5:7443",
        ] {
            check_host(ok, false).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for refused in [
            "http://203.0.113.5:7700",
            "http://api.example.com",
            "http://[2001:db8::1]:7700",
        ] {
            let e = check_host(refused, false).unwrap_err().to_string();
            assert!(e.contains("--insecure"), "{refused}: {e}");
            check_host(refused, true).unwrap();
        }
        assert!(check_host("ftp://x", true).is_err());
        assert!(check_host("api.example.com", false).is_err());
    }
}
