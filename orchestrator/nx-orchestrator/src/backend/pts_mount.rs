//! A deployment's pseudo-terminals: a devpts instance of its own with at most [`MAX_PTYS`],
//! mounted by the unit's launcher on `<deployment dir>/pts` in the unit's own mount namespace
//! and bound at `/dev/pts` by bubblewrap (over the unbounded instance its `--dev` makes) or by
//! Podman (over its own), so
//! that one sandbox cannot take the host's pseudo-terminals from every other (attacker s15
//! P1: every devpts instance but the host's own shares `kernel.pty.max` less
//! `kernel.pty.reserve`, 3,071 here; one program opened them all and other sandboxes' programs
//! got ENOSPC from `/dev/ptmx`). Podman's own `--mount type=devpts,max=N` does not do: it
//! takes no `ptmxmode`, so that instance's `ptmx` is 0000 and the container's non-root user
//! gets EACCES from `/dev/ptmx`. Tasks are not bounded yet (their launcher has no mount
//! namespace of its own).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The most pseudo-terminals one deployment may hold at once (devpts' `max=`, see
/// `Documentation/filesystems/devpts.rst`): a shell server or a few terminals' worth, and
/// 48 sandboxes' worth before the host's shared 3,071 run out.
pub const MAX_PTYS: u32 = 64;

/// The devpts instance of one deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtsMount {
    /// Where it is mounted (created if missing): the directory bound at /dev/pts.
    pub dir: PathBuf,
}

impl PtsMount {
    /// In the launcher, as root, in the unit's own mount namespace: a new devpts instance on
    /// `dir` (nosuid, noexec; `ptmx` 0666 and terminals 0620, as bubblewrap's own; at most
    /// [`MAX_PTYS`]).
    #[cfg(target_os = "linux")]
    pub fn mount(&self) -> Result<(), String> {
        use nix::mount::{mount, MsFlags};
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("creating {}: {e}", self.dir.display()))?;
        mount(
            Some("devpts"),
            &self.dir,
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some(format!("newinstance,ptmxmode=0666,mode=620,max={MAX_PTYS}").as_str()),
        )
        .map_err(|e| format!("mounting a devpts instance on {}: {e}", self.dir.display()))
    }
}
