//! The small vocabulary the API's shapes are made of: what a deployment should be, where it
//! runs, under which OCI runtime, with which limits, and which environment names a user may set.

use crate::systemd::{ActiveState, SubState};
use crate::UnitState;
use serde::{Deserialize, Serialize};

/// What the user asked a deployment to be. The live state comes from systemd.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(
    Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, strum::AsRefStr, strum::EnumString,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Desired {
    Running,
    Stopped,
    /// Stopped by nxd after its idle timeout passed with no request; the router starts it
    /// again on the next one.
    Idle,
}

/// Where a deployment is in its life, from what the user asked (`Desired`) and what systemd
/// reports. `nx status` shows it; `nx_orchestrator::state_machine` says which verb moves it where.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, strum::Display)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Phase {
    /// Recorded, not started yet.
    Created,
    /// Should run; its unit is starting, or waits to be restarted after its program ended, or
    /// runs while a start (its push's, `nx start`'s, a wake's) still waits for it to be ready.
    Starting,
    /// Should run, and its unit is active.
    Running,
    /// Should not run; its unit is still active or deactivating.
    Stopping,
    /// Should not run, and nothing of it runs.
    Stopped,
    /// Should run, but nothing of it runs (its program ended and systemd gave up).
    Failed,
    /// Gone: its unit, files and record are removed.
    Removed,
    /// Stopped after its idle timeout with no request; the next request starts it (scale to
    /// zero).
    Idle,
}

impl Phase {
    /// The phase of a deployment that should be `desired` and whose unit is in `unit`.
    pub fn observe(desired: Desired, unit: &UnitState) -> Phase {
        let restarting =
            unit.sub == SubState::AutoRestart || unit.sub == SubState::AutoRestartQueued;
        match (desired, &unit.active) {
            (Desired::Running, ActiveState::Active | ActiveState::Reloading) => Phase::Running,
            (Desired::Running, _) if restarting => Phase::Starting,
            (Desired::Running, ActiveState::Activating) => Phase::Starting,
            (Desired::Running, _) => Phase::Failed,
            (Desired::Stopped, ActiveState::Inactive | ActiveState::Failed) => Phase::Stopped,
            (Desired::Stopped, _) if restarting => Phase::Stopped,
            (Desired::Stopped, _) => Phase::Stopping,
            (Desired::Idle, ActiveState::Inactive | ActiveState::Failed) => Phase::Idle,
            (Desired::Idle, _) if restarting => Phase::Idle,
            (Desired::Idle, _) => Phase::Stopping,
        }
    }
}

/// The backend a deployment runs on.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    Serialize,
    Deserialize,
    PartialEq,
    Eq,
    Hash,
    strum::AsRefStr,
    strum::EnumString,
    strum::Display,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum BackendKind {
    /// Namespaces: bubblewrap for a binary, Podman for an image.
    #[default]
    Container,
    /// A KVM (or TCG) microVM whose only program is the binary.
    Microvm,
}

/// The OCI runtime an image runs under (a binary runs under bubblewrap either way).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    Serialize,
    Deserialize,
    PartialEq,
    Eq,
    strum::AsRefStr,
    strum::EnumString,
    strum::Display,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Runtime {
    /// runc: namespaces and cgroups, like bubblewrap.
    #[default]
    Runc,
    /// gVisor: the program's system calls go to a user-space kernel (Debian's `runsc`).
    Runsc,
}

/// Whether a deployment may open connections out of its network namespace.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    Serialize,
    Deserialize,
    PartialEq,
    Eq,
    Hash,
    strum::AsRefStr,
    strum::EnumString,
    strum::Display,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Egress {
    /// No way out at all: only the router reaches in.
    #[default]
    None,
    /// The public internet through NAT (and the host's `network.allow`); never the host,
    /// link-local (cloud metadata), private ranges or another deployment.
    Public,
}

/// How a deployment holds the host's CPUs: cattle (`ephemeral`, the default: its unit runs on
/// any CPU, beside every other tenant) or a pet (`persistent`, `nx push --persistent`, microVMs
/// only: a long-lived guest whose VMM is pinned to the same CPUs across its restarts, systemd's
/// `CPUAffinity=`, and that has no memory balloon).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    Serialize,
    Deserialize,
    PartialEq,
    Eq,
    Hash,
    strum::AsRefStr,
    strum::EnumString,
    strum::Display,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Tier {
    /// Runs on any of the host's CPUs.
    #[default]
    Ephemeral,
    /// A microVM pinned to CPUs (`DeploymentView.cpu_affinity`), no balloon.
    Persistent,
}

/// Resource limits of one deployment; the config gives the defaults, a push may lower or raise them.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// systemd `MemoryMax`, in MiB.
    pub memory_max_mb: u64,
    /// systemd `CPUQuota`, in percent of one CPU.
    pub cpu_quota_percent: u32,
    /// systemd `TasksMax`: processes and threads.
    pub tasks_max: u64,
    /// The size of `/data` in MiB (a filesystem image of its own: writes past it get ENOSPC),
    /// at most what the host's disk has free less nxd's reserve; 0: no `/data` to write (an
    /// empty read-only directory: writes get EROFS).
    pub disk_mb: u64,
    /// The size of `/tmp` and of `/dev/shm` in MiB (each a tmpfs: RAM counted in
    /// `memory_max_mb`, so at most half of it, and in a microVM at most half of its guest's RAM
    /// less 80 MiB for the guest's kernel and program; one not asked for is lowered to that;
    /// writes past it get ENOSPC). At least 1.
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub tmp_mb: u64,
    /// `RLIMIT_NOFILE` of the program (soft and hard), at most `sandbox.max_nofile`.
    pub nofile: u64,
    /// The most its log takes on disk, in MiB, rotated files included.
    pub log_max_mb: u64,
}

/// Memory a microVM's VMM needs beside its guest's RAM, inside the unit's `MemoryMax`, in MiB.
pub const VMM_OVERHEAD_MB: u64 = 64;
/// The least RAM a microVM guest gets, in MiB: Debian 12's cloud kernel with NX's initramfs
/// does not boot in less (a 64 MiB guest panicked at boot, out of memory in the kernel's own
/// start-up; a 128 MiB guest had `MemTotal` 93 MiB, the kernel's reserve taken).
pub const MIN_GUEST_MB: u64 = 128;
/// What a microVM guest's kernel, init and program keep of its RAM beside full `/tmp` and
/// `/dev/shm`, in MiB (review15 #5: a guest's two tmpfs were as large as all its RAM, and
/// filling them was the guest's OOM kill, not ENOSPC). Measured with Debian 12's cloud kernel
/// and the sample app: a 128 MiB guest's `MemAvailable` at the program's start is 64 MiB (the
/// kernel's reserve 35 MiB, the initramfs in RAM 7 MiB, the kernel's slabs and caches), and
/// 16 MiB of it is left to the program.
pub const GUEST_ROOM_MB: u64 = 80;

/// The RAM of a microVM guest whose unit has `memory_max_mb`, in MiB: that less the VMM's
/// [`VMM_OVERHEAD_MB`], at least [`MIN_GUEST_MB`].
pub fn guest_memory_mb(memory_max_mb: u64) -> u64 {
    memory_max_mb
        .saturating_sub(VMM_OVERHEAD_MB)
        .max(MIN_GUEST_MB)
}

impl Limits {
    /// The largest `tmp_mb` on `backend`, in MiB: `/tmp` and `/dev/shm` both full must leave
    /// the program room. Half of `memory_max_mb` (both tmpfs are RAM counted in it); in a
    /// microVM at most half of the guest's RAM less [`GUEST_ROOM_MB`] too (both tmpfs are the
    /// guest's RAM, which is 64 MiB less than `memory_max_mb`).
    pub fn tmp_max_mb(&self, backend: BackendKind) -> u64 {
        let half = self.memory_max_mb / 2;
        match backend {
            BackendKind::Container => half,
            BackendKind::Microvm => {
                half.min(guest_memory_mb(self.memory_max_mb).saturating_sub(GUEST_ROOM_MB) / 2)
            }
        }
    }

    /// These limits with `tmp_mb` lowered to [`Self::tmp_max_mb`] on `backend` where it is more:
    /// the size `/tmp` (and `/dev/shm`) gets when nobody asked for one, so that a `--memory 64`
    /// push over the default 64 MiB gets 32 MiB instead of a refusal (`checks::check_limits`
    /// refuses only a `tmp_mb` asked for past it).
    pub fn with_tmp_within_memory(self, backend: BackendKind) -> Self {
        Self {
            tmp_mb: self.tmp_mb.min(self.tmp_max_mb(backend)),
            ..self
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_max_mb: 512,
            cpu_quota_percent: 100,
            tasks_max: 256,
            disk_mb: 1024,
            tmp_mb: 64,
            nofile: 65_536,
            log_max_mb: 100,
        }
    }
}

/// Environment variable names a user may set: the shell's rules, and not NX's own.
pub fn check_env_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "invalid environment variable name {name:?}: use letters, digits and '_', not starting with a digit"
        ));
    }
    if name == "PORT" || name.starts_with("NX_") {
        return Err(format!("{name} is set by NX itself; choose another name"));
    }
    Ok(())
}
