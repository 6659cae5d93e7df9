//! Images run by Podman (Debian's podman with runc; crun fails on hybrid cgroups), from the
//! archive that was pushed: no registry is contacted. Podman's storage and config live in
//! `<state_dir>/podman` (the embedded manager's `/` is read-only). The container's cgroups sit
//! under the unit's (`--cgroup-parent`; runc cannot run without cgroups), so systemd's limits
//! hold for it, and it gets what a
//! bubblewrap deployment gets: the network namespace its launcher set up (`--network host`
//! there means that namespace), its data dir, the database socket, no capabilities, a
//! read-only root, its environment from a 0600 file.

use super::{BackendError, DataDir, SandboxNetwork};
use crate::backend::launch::OWN_CGROUP;
use crate::databases::SANDBOX_SOCKET_DIR;
use crate::domain::Runtime;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

pub struct Podman {
    dir: PathBuf,
    /// Read while an image is looked for and loaded, written while unused images are removed
    /// ([`Podman::remove_images`]): a removal never falls between a load and what it found.
    images: tokio::sync::RwLock<()>,
}

/// A container's `/tmp`.
pub enum Tmp<'a> {
    /// Podman's tmpfs of [`Container::tmp_mb`]; runc gives it the mode of the image's /tmp.
    Tmpfs,
    /// A directory the launcher mounted a 1777 tmpfs of [`Container::tmp_mb`] on
    /// (`tmp_mount::TmpMount`), bound.
    Mounted(&'a Path),
}

/// One Podman container: a deployment's or a task's.
pub struct Container<'a> {
    pub name: &'a str,
    pub hostname: &'a str,
    pub image_id: &'a str,
    pub uid: u32,
    pub args: &'a [String],
    /// The program's environment: a 0600 env file (a deployment's, written at prepare) or the
    /// launcher's memfd (a task's, `launch::SANDBOX_ENV_FILE`); never Podman's own environment.
    pub env_file: &'a Path,
    /// /data (a deployment's).
    pub data_dir: Option<DataDir<'a>>,
    pub database_socket: Option<&'a Path>,
    pub network: SandboxNetwork<'a>,
    pub runtime: Runtime,
    pub tmp: Tmp<'a>,
    /// The size of `/tmp` and of `/dev/shm` (Podman's `--shm-size`, 64 MiB unless given), in
    /// MiB: the deployment's or task's `limits.tmp_mb`.
    pub tmp_mb: u64,
    /// The sandbox's devpts instance of at most `pts_mount::MAX_PTYS` (the launcher mounts
    /// it), bound at `/dev/pts` over Podman's own; `None`: Podman's, unbounded.
    pub ptys: Option<&'a Path>,
    /// Volumes, bound at their paths; the container gets their groups (`gids`).
    pub volumes: &'a [super::bwrap::VolumeBind],
    pub gids: &'a [u32],
}

impl Podman {
    pub fn new(state_dir: &Path) -> Result<Self, BackendError> {
        let dir = state_dir.join("podman");
        for sub in ["storage", "run", "tmp", "networks"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let podman = Self {
            dir,
            images: tokio::sync::RwLock::new(()),
        };
        std::fs::write(
            podman.dir.join("containers.conf"),
            format!(
                "# Written by nxd.\n[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nevents_logfile_path = \"{}\"\ntmp_dir = \"{}\"\n\n[engine.runtimes]\nrunsc = [\"/usr/bin/runsc\", \"/usr/local/bin/runsc\", \"/run/current-system/sw/bin/runsc\"]\n\n# The embedded manager's / is read-only: netavark's lock and config live here too.\n[network]\nnetwork_config_dir = \"{}\"\n",
                podman.dir.join("events.log").display(),
                podman.dir.join("tmp").display(),
                podman.dir.join("networks").display()
            ),
        )?;
        std::fs::write(
            podman.seccomp_profile(),
            serde_json::to_vec_pretty(&super::seccomp::oci_profile())
                .map_err(std::io::Error::other)?,
        )?;
        std::fs::write(
            podman.dir.join("storage.conf"),
            format!(
                "# Written by nxd.\n[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n\n# No private bind mount of the storage onto itself: it would outlive nxd.\n[storage.options.overlay]\nskip_mount_home = \"true\"\n",
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

    /// `podman ARGS` with NX's environment: its output, or why podman could not run.
    async fn run(&self, args: &[&str]) -> Result<std::process::Output, BackendError> {
        tokio::process::Command::new("podman")
            .args(args)
            .env_clear()
            .envs(self.env())
            .output()
            .await
            .map_err(|e| {
                BackendError::Prepare(format!("cannot run podman ({e}); install podman and runc"))
            })
    }

    /// Loads an archive into Podman's storage unless the image is there (asked of Podman each
    /// time: an operator's `podman rmi`, or [`Podman::remove_images`], may have removed it).
    /// Its layers take `unpacked_bytes` there: the state directory's disk must have that much
    /// free beyond nxd's reserve (`host_limits::DISK_RESERVE_MB`), else nothing is loaded.
    #[tracing::instrument(skip(self, archive))]
    pub async fn load(
        &self,
        archive: &Path,
        image_id: &str,
        unpacked_bytes: u64,
    ) -> Result<(), BackendError> {
        let _loading = self.images.read().await;
        if self
            .run(&["image", "exists", image_id])
            .await?
            .status
            .success()
        {
            return Ok(());
        }
        let free_mb = crate::host_limits::disk_free_mb(&self.dir)?;
        let reserve_mb = crate::host_limits::DISK_RESERVE_MB;
        let needed_mb = unpacked_bytes.div_ceil(1 << 20);
        if free_mb < needed_mb.saturating_add(reserve_mb) {
            return Err(BackendError::Prepare(format!(
                "the image unpacks to {needed_mb} MiB, and the disk of nxd's state directory has {free_mb} MiB free, of which nxd keeps {reserve_mb} MiB in reserve: nothing was loaded. Ask the host's operator to free space (images no deployment runs leave Podman's storage with their archives, store.unused_grace_secs after their last use)"
            )));
        }
        let out = self
            .run(&["load", "--quiet", "--input", &archive.display().to_string()])
            .await?;
        if !out.status.success() {
            return Err(BackendError::Prepare(format!(
                "podman load: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        tracing::info!(
            unpacked_mib = needed_mb,
            "image loaded into Podman's storage"
        );
        Ok(())
    }

    /// Removes from Podman's storage every image whose id (the sha256 of its config, as
    /// `nx_artifact::image::ImageInfo::id`) is not in `keep` and that no container uses
    /// (Podman refuses those: a running deployment or task keeps its image), unless
    /// `unchanged()`, asked once loads are held off, says `keep` is out of date (an image
    /// stored since may have been loaded: the next collection sees it). Returns the ids
    /// removed. Nothing when no image was ever loaded here, or podman cannot run.
    #[tracing::instrument(skip_all)]
    pub async fn remove_images(
        &self,
        keep: &HashSet<String>,
        unchanged: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<Vec<String>, BackendError> {
        // containers/storage's overlay driver keeps its images' records here.
        if !self.dir.join("storage/overlay-images").exists() {
            return Ok(Vec::new());
        }
        let _removing = self.images.write().await;
        if !unchanged() {
            return Ok(Vec::new());
        }
        let out = self.run(&["images", "--quiet", "--no-trunc"]).await?;
        if !out.status.success() {
            return Err(BackendError::Prepare(format!(
                "podman images: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let mut removed = Vec::new();
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let id = id.trim().trim_start_matches("sha256:");
            if id.is_empty() || keep.contains(id) {
                continue;
            }
            let out = self.run(&["rmi", id]).await?;
            if out.status.success() {
                removed.push(id.to_owned());
            } else {
                tracing::debug!(image = id, error = %String::from_utf8_lossy(&out.stderr).trim(), "kept: in use");
            }
        }
        if !removed.is_empty() {
            tracing::info!(images = ?removed, "removed images no stored archive holds from Podman's storage");
        }
        Ok(removed)
    }

    /// NX's seccomp filter as the profile Podman's containers run under (`seccomp::oci_profile`).
    fn seccomp_profile(&self) -> PathBuf {
        self.dir.join("seccomp.json")
    }

    /// `podman run` of one container (a deployment's or a task's); `--rm`, so that a container
    /// that ends leaves nothing in Podman's storage.
    pub fn command(&self, c: &Container<'_>) -> Vec<String> {
        // "host": the namespace podman runs in, which is the one the deployment's launcher
        // made; "none": a namespace of its own with only loopback (a task's).
        let network = match c.network {
            SandboxNetwork::Launcher { .. } => "host",
            SandboxNetwork::Loopback => "none",
        };
        let mut argv: Vec<String> = vec!["podman".into()];
        if c.runtime == Runtime::Runsc {
            // gVisor's own network stack needs a namespace of its own; "host" passes the
            // program's sockets to the host's stack (through the Sentry), "none" gives none.
            // fsgofer-host-uds lets the database socket be bind-mounted and connected to.
            argv.extend([
                "--runtime".into(),
                "runsc".into(),
                "--runtime-flag".into(),
                format!("network={network}"),
                "--runtime-flag".into(),
                "fsgofer-host-uds".into(),
            ]);
        }
        argv.extend(
            [
                "run",
                "--rm",
                "--replace",
                "--init",
                "--pull",
                "never",
                "--cgroup-parent",
                OWN_CGROUP,
                "--read-only",
                // An image's VOLUMEs as tmpfs (charged to the container's memory cgroup), not
                // anonymous volumes on the host's disk outside every limit (podman-run(1)).
                "--image-volume",
                "tmpfs",
                "--cap-drop",
                "all",
                "--security-opt",
                "no-new-privileges",
                "--network",
                network,
                "--hostname",
                c.hostname,
                "--name",
                c.name,
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        argv.extend([
            "--security-opt".into(),
            format!("seccomp={}", self.seccomp_profile().display()),
        ]);
        argv.extend(["--user".into(), format!("{}:{}", c.uid, c.uid)]);
        argv.extend(match c.tmp {
            Tmp::Tmpfs => [
                "--tmpfs".into(),
                format!("/tmp:rw,nosuid,nodev,mode=1777,size={}m", c.tmp_mb),
            ],
            Tmp::Mounted(dir) => [
                "--volume".into(),
                format!("{}:/tmp:rw,nosuid,nodev", dir.display()),
            ],
        });
        // The kernel's first victim in the unit's memory cgroup, before Podman's CLI and
        // conmon (review15 #7; see `monitor`). Raising a score needs no capability.
        argv.extend(["--oom-score-adj".into(), "1000".into()]);
        // POSIX shared memory (shm_overview(7)) as large as /tmp, as in a bubblewrap sandbox
        // (review14 #4: it was Podman's 64 MiB whatever --tmp said).
        argv.extend(["--shm-size".into(), format!("{}m", c.tmp_mb)]);
        if let Some(ptys) = c.ptys {
            argv.extend([
                "--mount".into(),
                format!("type=bind,source={},destination=/dev/pts", ptys.display()),
            ]);
        }
        // Podman's own limits, which the launcher set (RLIMIT_NOFILE).
        argv.extend(["--ulimit".into(), "host".into()]);
        argv.extend(["--env-file".into(), c.env_file.display().to_string()]);
        if let Some(data) = c.data_dir {
            let mode = if data.read_only { ":ro" } else { "" };
            argv.extend([
                "--volume".into(),
                format!("{}:/data{mode}", data.path.display()),
            ]);
        }
        for volume in c.volumes {
            let bind = format!("{}:{}", volume.mountpoint.display(), volume.path);
            argv.extend(["--volume".into(), bind]);
        }
        for gid in c.gids {
            argv.extend(["--group-add".into(), gid.to_string()]);
        }
        if let SandboxNetwork::Launcher { resolv_conf, .. } = c.network {
            argv.extend([
                "--volume".into(),
                format!("{}:/etc/resolv.conf:ro", resolv_conf.display()),
            ]);
        }
        // The socket's directory, so that a restarted server's new socket appears inside.
        if let Some(dir) = c.database_socket.and_then(Path::parent) {
            argv.push("--volume".into());
            argv.push(format!("{}:{SANDBOX_SOCKET_DIR}", dir.display()));
        }
        argv.push(c.image_id.into());
        argv.extend(c.args.iter().cloned());
        argv
    }

    /// Removes a container a killed podman left behind.
    pub async fn remove(&self, name: &str) {
        let _ = self.run(&["rm", "--force", "--ignore", name]).await;
    }
}
