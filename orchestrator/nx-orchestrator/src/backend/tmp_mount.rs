//! An image's `/tmp`: a tmpfs of the deployment's size (`--tmp`) and mode 1777, mounted by the
//! unit's launcher on `<deployment dir>/tmp` in the unit's own mount namespace (beside /data's
//! image, `data_disk`) and bound by Podman at `/tmp`. Podman's own `--tmpfs /tmp:mode=1777`
//! does not hold: runc sets a tmpfs mount's mode to that of the directory it covers in the
//! image (libcontainer's `mountToRootfs`), so an image whose `/tmp` is 0755 gave its non-root
//! user a `/tmp` it could not write. A bind mount keeps its source's mode.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The `/tmp` of one deployment's container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpMount {
    /// Where the tmpfs is mounted (created if missing): the directory Podman binds to /tmp.
    pub dir: PathBuf,
    /// Its size in MiB (tmpfs pages are charged to the writer's memory cgroup).
    pub size_mb: u64,
}

impl TmpMount {
    /// In the launcher, as root, in the unit's own mount namespace: a tmpfs on `dir`
    /// (nosuid, nodev, mode 1777, `size_mb`).
    #[cfg(target_os = "linux")]
    pub fn mount(&self) -> Result<(), String> {
        use nix::mount::{mount, MsFlags};
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("creating {}: {e}", self.dir.display()))?;
        mount(
            Some("tmpfs"),
            &self.dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("mode=1777,size={}m", self.size_mb).as_str()),
        )
        .map_err(|e| format!("mounting a tmpfs on {}: {e}", self.dir.display()))
    }
}
