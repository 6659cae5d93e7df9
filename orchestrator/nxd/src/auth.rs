//! The API's bearer token: read from a 0600 file, created with a random token when missing.

use anyhow::{bail, Context};
use rand::RngCore;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// Compares in time independent of where the first difference is.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

pub fn load_or_create(path: &Path) -> anyhow::Result<Token> {
    if !path.exists() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create token file {}", path.display()))?;
        writeln!(file, "{}", hex::encode(bytes))?;
        tracing::info!(path = %path.display(), "created API token");
    }
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "token file {} has mode {:o}: others can read it; run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read token file {}", path.display()))?
        .trim()
        .to_owned();
    if token.len() < 16 {
        bail!("token in {} is shorter than 16 characters", path.display());
    }
    Ok(Token(token))
}
