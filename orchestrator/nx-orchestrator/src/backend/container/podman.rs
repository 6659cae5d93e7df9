//! Images run by Podman (Debian's podman with runc; crun fails on hybrid cgroups), from the
//! archive that was pushed: no registry is contacted. Podman's storage and config live in
//! `<state_dir>/podman` (the embedded manager's `/` is read-only). The container's cgroups sit
//! under the unit's (`--cgroup-parent`; runc cannot run without cgroups), so systemd's limits
//! hold for it, and it gets what a
//! bubblewrap deployment gets: the host network's loopback port, its data dir, the database
//! socket, no capabilities, a read-only root, its environment from a 0600 file.

use super::launch::OWN_CGROUP;
use super::BackendError;
use crate::backend::SandboxSpec;
use crate::databases::SANDBOX_SOCKET_DIR;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct Podman {
    dir: PathBuf,
}

impl Podman {
    pub fn new(state_dir: &Path) -> Result<Self, BackendError> {
        let dir = state_dir.join("podman");
        for sub in ["storage", "run", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let podman = Self { dir };
        std::fs::write(
            podman.dir.join("containers.conf"),
            format!(
                "# Written by nxd.\n[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nevents_logfile_path = \"{}\"\ntmp_dir = \"{}\"\n",
                podman.dir.join("events.log").display(),
                podman.dir.join("tmp").display()
            ),
        )?;
        std::fs::write(
            podman.dir.join("storage.conf"),
            format!(
                "# Written by nxd.\n[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                podman.dir.join("storage").display(),
                podman.dir.join("run").display()
            ),
        )?;
        Ok(podman)
    }

    /// The environment every podman command of NX runs with.
    pub fn env(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "CONTAINERS_CONF".into(),
                self.dir.join("containers.conf").display().to_string(),
            ),
            (
                "CONTAINERS_STORAGE_CONF".into(),
                self.dir.join("storage.conf").display().to_string(),
            ),
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
            ("TMPDIR".into(), self.dir.join("tmp").display().to_string()),
        ])
    }

    /// Loads an archive into Podman's storage (a no-op when it is there already).
    pub async fn load(&self, archive: &Path) -> Result<(), BackendError> {
        let out = tokio::process::Command::new("podman")
            .args(["load", "--quiet", "--input"])
            .arg(archive)
            .env_clear()
            .envs(self.env())
            .output()
            .await
            .map_err(|e| {
                BackendError::Prepare(format!("cannot run podman ({e}); install podman and runc"))
            })?;
        if !out.status.success() {
            return Err(BackendError::Prepare(format!(
                "podman load: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    pub fn container_name(spec: &SandboxSpec) -> String {
        format!("nx-{}", spec.deployment.id)
    }

    /// `podman run` for a deployment; its environment comes from `env_file`.
    pub fn command(
        &self,
        spec: &SandboxSpec,
        image_id: &str,
        data_dir: &Path,
        env_file: &Path,
    ) -> Vec<String> {
        let uid = spec.deployment.uid;
        let mut argv: Vec<String> = [
            "podman",
            "run",
            "--rm",
            "--replace",
            "--init",
            "--pull",
            "never",
            "--network",
            "host",
            "--cgroup-parent",
            OWN_CGROUP,
            "--read-only",
            "--cap-drop",
            "all",
            "--security-opt",
            "no-new-privileges",
            "--hostname",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        argv.push(spec.deployment.sandbox.to_string());
        argv.extend([
            "--name".into(),
            Self::container_name(spec),
            "--user".into(),
            format!("{uid}:{uid}"),
            "--env-file".into(),
            env_file.display().to_string(),
            "--volume".into(),
            format!("{}:/data", data_dir.display()),
        ]);
        if let Some(socket) = &spec.database_socket {
            let name = socket.file_name().unwrap_or_default().to_string_lossy();
            argv.push("--volume".into());
            argv.push(format!("{}:{SANDBOX_SOCKET_DIR}/{name}", socket.display()));
        }
        argv.push(image_id.into());
        argv.extend(spec.deployment.args.iter().cloned());
        argv
    }

    /// Removes a container a killed podman left behind.
    pub async fn remove(&self, name: &str) {
        let _ = tokio::process::Command::new("podman")
            .args(["rm", "--force", "--ignore", name])
            .env_clear()
            .envs(self.env())
            .output()
            .await;
    }
}
