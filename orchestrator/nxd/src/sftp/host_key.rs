//! The SFTP server's host key: ed25519, generated once into `<state_dir>/sftp/` (OpenSSH's
//! private key format, mode 0600) and the same from then on, so users can pin it
//! (`nx keys host` prints it as a known_hosts line and its fingerprint).

use anyhow::{bail, Context};
use rand::RngCore;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where the host key lives in a state dir.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("sftp").join("ssh_host_ed25519_key")
}

/// Reads the host key, or generates and writes it when there is none yet. Refuses a key file
/// others can read, as sshd does.
pub fn load_or_create(state_dir: &Path) -> anyhow::Result<PrivateKey> {
    let path = path(state_dir);
    if !path.exists() {
        let dir = path.parent().expect("the key has a directory");
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
        key.set_comment("nxd");
        let text = key
            .to_openssh(LineEnding::LF)
            .context("encoding the SFTP host key")?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create the SFTP host key {}", path.display()))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        tracing::info!(path = %path.display(), fingerprint = %fingerprint(&key), "generated the SFTP host key");
    }
    let mode = std::fs::metadata(&path)?.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "SFTP host key {} has mode {:o}: others can read it; run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    PrivateKey::read_openssh_file(&path)
        .with_context(|| format!("cannot read the SFTP host key {}", path.display()))
}

/// `SHA256:<base64>`, as `ssh-keygen -l` and ssh's first-connection prompt print it.
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_generated_once_and_ssh_keygen_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let again = load_or_create(dir.path()).unwrap();
        assert_eq!(fingerprint(&first), fingerprint(&again));
        let out = std::process::Command::new("ssh-keygen")
            .arg("-lf")
            .arg(path(dir.path()))
            .output()
            .expect("ssh-keygen (openssh-client)");
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(printed.contains(&fingerprint(&first)), "{printed}");
        assert!(printed.contains("(ED25519)"), "{printed}");
        std::fs::set_permissions(path(dir.path()), std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }
}
