//! `nxd launch <launch.json>`: what a deployment's unit runs. As root, it reads the spec (0400,
//! root's) and opens the seccomp programs onto fixed fds; then it drops to the deployment's uid
//! and gid with no supplementary groups (numeric ids need no passwd entry, which systemd's
//! `User=` would), replaces its environment with the program's, and execs bubblewrap (or Podman).
//!
//! A deployment's launcher stays the parent of its sandbox instead, to pass a stop's SIGTERM to
//! the program ([`StopForward`]); it ends as the sandbox did, and says how in the log.
//! A deployment's spec names its network: the launcher first moves into a new network namespace
//! and sets it up (`network::attach`).
//!
//! `nxd launch -` does the same with a spec read from standard input (one line of JSON): a
//! task's unit is started ahead (the warm pool) and waits there until nxd writes the task's
//! spec. A microVM guest booted ahead gets its VMM's spec at once, and later, on the same pipe,
//! the line that hands the guest its task (see `microvm::handover`).

use super::data_disk::DataImage;
use crate::logs::LogFiles;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// bwrap reads seccomp programs from fds SECCOMP_FIRST_FD, SECCOMP_FIRST_FD + 1, ...
pub const SECCOMP_FIRST_FD: i32 = 10;
/// An argument replaced by the cgroup the launcher runs in (the unit's), for Podman's
/// `--cgroup-parent`: the container's cgroups then sit under the unit's and its limits hold.
pub const OWN_CGROUP: &str = "@nx-own-cgroup@";
/// The fd on which the launcher hands the program's environment to the tool it runs (see
/// `SandboxEnvForm`): bubblewrap reads it with `--args`, Podman opens `SANDBOX_ENV_FILE`.
pub const SANDBOX_ENV_FD: i32 = 9;
/// `SANDBOX_ENV_FD` as a path Podman's `--env-file` opens (a new open file of the same memfd,
/// read from its start).
pub const SANDBOX_ENV_FILE: &str = "/proc/self/fd/9";

/// How the launcher hands the program's environment (`LaunchSpec::sandbox_env`) to the tool
/// that starts it. The tool itself (bubblewrap, Podman: host processes, outside the sandbox)
/// runs with `LaunchSpec::env` only, so nothing a tenant sets (`PATH`, `LD_PRELOAD`,
/// `LD_AUDIT`, ...) is ever read by the dynamic loader or the exec of a host process.
/// The environment travels on a memfd at `SANDBOX_ENV_FD`, never in argv (which every user of
/// the host can read in /proc/<pid>/cmdline).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxEnvForm {
    /// No program environment to hand over (a VMM's guest gets its own through its spec).
    #[default]
    None,
    /// bubblewrap's NUL-separated arguments for `--args SANDBOX_ENV_FD`: `--clearenv`, then
    /// `--setenv NAME VALUE` for each variable (bwrap(1)).
    BwrapArgs,
    /// Podman's `--env-file` lines, `NAME=VALUE` (podman-run(1)).
    EnvFile,
}

impl SandboxEnvForm {
    /// `env` in this form: the bytes the tool reads on `SANDBOX_ENV_FD` (none for `None`).
    pub fn encode(self, env: &BTreeMap<String, String>) -> Vec<u8> {
        let mut text = Vec::new();
        match self {
            SandboxEnvForm::None => {}
            SandboxEnvForm::BwrapArgs => {
                text.extend_from_slice(b"--clearenv\0");
                for (name, value) in env {
                    for part in ["--setenv", name, value] {
                        text.extend_from_slice(part.as_bytes());
                        text.push(0);
                    }
                }
            }
            SandboxEnvForm::EnvFile => {
                for (name, value) in env {
                    text.extend_from_slice(format!("{name}={value}\n").as_bytes());
                }
            }
        }
        text
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LaunchSpec {
    pub argv: Vec<String>,
    /// The environment of the process `argv` names (bubblewrap, Podman, a VMM): NX's own, never
    /// a tenant's (see `sandbox_env`).
    pub env: BTreeMap<String, String>,
    pub seccomp: Vec<PathBuf>,
    /// Drop to this uid before exec (None: stay root, for Podman, which drops in the container).
    pub uid: Option<u32>,
    /// The gid dropped to with `uid`; `None`: the same number as `uid` (deployments' and
    /// tasks' uids have no passwd entry). A system user's own group (the embedded
    /// PostgreSQL's `postgres`), whose number is not its uid's.
    #[serde(default)]
    pub gid: Option<u32>,
    /// A VMM: run it as a child, pass its console through, and exit with the code the guest
    /// printed after `NX-EXIT` (the VMM itself exits 0 when the guest reboots).
    #[serde(default)]
    pub console_exit: bool,
    /// The key on the guest's `NX-EXIT` line (see `guest_exit`): a line without it is the
    /// program's output. `None`: a spec written before exit lines had keys.
    #[serde(default)]
    pub exit_key: Option<String>,
    /// A deployment's: fork the program and monitor it (its log, its end, its disk usage).
    /// `None` (a task's): exec it, its output on the unit's own streams.
    #[serde(default)]
    pub monitor: Option<MonitorSpec>,
    /// Mount this image on the data dir first, in a mount namespace of the unit's own.
    #[serde(default)]
    pub data_image: Option<DataImage>,
    /// Mount this tmpfs (an image's /tmp, which Podman binds) first, in the same namespace.
    #[serde(default)]
    pub tmp: Option<super::tmp_mount::TmpMount>,
    /// Mount this devpts instance (the sandbox's pseudo-terminals, which bubblewrap or Podman
    /// binds at `/dev/pts`) first, in the same namespace; a task's launcher unmounts it after
    /// the task (see `pts_mount`).
    #[serde(default)]
    pub ptys: Option<super::pts_mount::PtsMount>,
    /// Mount these volumes first, in the same namespace; the program gets their groups as
    /// supplementary groups and umask 002 (`data_disk::VolumeDisk`).
    #[serde(default)]
    pub volumes: Vec<super::data_disk::VolumeDisk>,
    /// `RLIMIT_NOFILE` (soft and hard) of the program; `None` keeps the unit's.
    #[serde(default)]
    pub nofile: Option<u64>,
    /// A deployment's network namespace: the launcher creates and sets it up as root (see
    /// `network::attach`) before it drops privileges; what it execs stays in it. None: the
    /// launcher's own namespace (a task's sandbox makes its own, loopback only).
    #[serde(default)]
    pub network: Option<crate::network::Attachment>,
    /// Where a stop's signal goes (the unit sends it to the launcher alone).
    #[serde(default)]
    pub stop: StopForward,
    /// A task's: the launcher runs `argv` (bubblewrap) as its child, with /dev/null as its
    /// standard input, waits until every process of the sandbox has ended, and then reports
    /// how the program ended on the unit's standard input, a socket nxd reads (see
    /// `task_end`). nxd then answers at once, without waiting for systemd to notice the end
    /// (see `tasks::exit_report`).
    #[serde(default)]
    pub exit_report: bool,
    /// The program's environment inside the sandbox, handed over as `sandbox_env_form` says;
    /// `env` is the environment of the host tool `argv` runs.
    #[serde(default)]
    pub sandbox_env: BTreeMap<String, String>,
    #[serde(default)]
    pub sandbox_env_form: SandboxEnvForm,
    /// A standby's (see `crate::standby`): the FIFO the launcher opens (read and write, so
    /// that its reader never sees an end) as the standard input of what it runs, on which the
    /// waiter in the sandbox reads the program nxd gives it.
    #[serde(default)]
    pub standby_input: Option<PathBuf>,
}

/// What nxd sends a deployment's launcher (its monitor, alone) when a stop's timeout has
/// passed: kill the program now, and say so in the log (see `monitor`).
pub const STOP_TIMEOUT_SIGNAL: i32 = nix::libc::SIGALRM;

/// How the launcher passes on the SIGTERM (SIGINT, SIGHUP) of a stop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StopForward {
    /// The launcher execs the command, which gets the signal itself (a task's unit, which is
    /// killed as a whole).
    #[default]
    Exec,
    /// The launcher runs the command as its child and signals it (`podman run`, which passes
    /// the signal on to the container).
    Child,
    /// The launcher runs bubblewrap as its child and signals every process bubblewrap runs
    /// but bubblewrap itself, which would die of SIGTERM and SIGKILL the program
    /// (`--die-with-parent`) before it could shut down.
    Sandboxed,
}

/// What the monitor of a deployment's unit does (see `monitor`; a task's launcher has none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorSpec {
    pub log: LogFiles,
    /// The deployment's directory: `last-exit.json` and `disk-usage.json` go there.
    pub dir: PathBuf,
    /// Whose the program is, and so its `oom_score_adj` where the monitor cannot exempt itself
    /// (see [`OomScore`]).
    #[serde(default)]
    pub oom_score: OomScore,
}

/// The `oom_score_adj` of a monitored program where its monitor cannot take -1000 (no
/// `CAP_SYS_RESOURCE`: proc(5)), so that the kernel, at the unit's `MemoryMax`, kills the
/// program and not the monitor, which then names the end (attacker s15 O1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OomScore {
    /// A tenant's program: 1000.
    #[default]
    Tenant,
    /// A tenant's `podman run`, which gives its container 1000 itself (`--oom-score-adj`):
    /// Podman's CLI gets less, so that the kernel kills the container's program first, not
    /// Podman's CLI, whose RSS is far larger (review15 #7), but enough to outrank the monitor
    /// (`monitor::podman_cli_oom_score`).
    Container,
    /// nxd's own service (the embedded PostgreSQL, the router, the database gate): the
    /// monitor's score, 0: with 1000 it was the host's first victim of the kernel's OOM
    /// killer, before any tenant (attacker s16 O2).
    Service,
}
