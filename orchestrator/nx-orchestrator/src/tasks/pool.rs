//! Task units: each is a transient systemd service running `nxd launch -`, which waits on its
//! stdin for the task's launch spec. The warm pool keeps `size` of them started ahead, so that a
//! task pays neither for the unit nor for the launcher; it refills in the background.
//!
//! A pool that boots ahead (`[microvm] pool_size`) goes further: each unit gets its VMM's spec
//! at once and boots a guest whose init waits for its task (`NX-READY` on the unit's output); a
//! task then only writes itself on the guest's task drive and says `NX-GO`. Such a guest serves
//! one task and ends with it (it is never reused).

use super::TaskUids;
use crate::backend::launch::LaunchSpec;
use crate::backend::{BackendError, SandboxBackend, WarmSandbox};
use crate::config::Limits;
use crate::domain::BackendKind;
use crate::supervisor::{SliceKind, Supervisor, SupervisorError, TaskPipes, UnitOutput, UnitSpec};
use rand::RngCore;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

/// What a guest booted ahead prints once its init waits (nx-vm-init's `console::READY`).
const READY: &str = "NX-READY";
/// What hands it its task (nx-vm-init's `console::GO`), followed on its line by the host's
/// clock and entropy (see [`Slot::go`]).
const GO: &str = "NX-GO";
/// What asks a restored guest to say `NX-READY` (nx-vm-init's `console::PING`): it said so
/// before its snapshot was taken, and its console input may lose bytes while QEMU loads it,
/// so the pool asks every [`PING_EVERY`] until it answers (it answers once).
const PING: &[u8] = b"NX-PING\n";
const PING_EVERY: Duration = Duration::from_millis(50);
/// How long a guest may take to boot to `NX-READY` (TCG on a busy host: seconds).
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// A task's unit: `nxt-<id>.service`.
pub struct TaskUnit {
    pub id: String,
    pub name: String,
}

/// A started task unit, waiting for its spec (or, booted ahead, for its task).
pub struct Slot {
    pub unit: TaskUnit,
    /// The sandbox booted ahead in it, if it was.
    pub warm: Option<WarmSandbox>,
    stdin: pipe::Sender,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
}

impl Slot {
    /// The unit and the read ends of its stdout and stderr.
    pub fn into_output(self) -> (TaskUnit, pipe::Receiver, pipe::Receiver) {
        (self.unit, self.stdout, self.stderr)
    }

    /// Hands the launch spec to the waiting launcher; it runs the task at once.
    pub async fn send(&mut self, spec: &LaunchSpec) -> std::io::Result<()> {
        self.write_spec(spec).await?;
        self.stdin.shutdown().await
    }

    /// The spec as the launcher reads it: one line of JSON.
    async fn write_spec(&mut self, spec: &LaunchSpec) -> std::io::Result<()> {
        let mut json = serde_json::to_vec(spec)?;
        json.push(b'\n');
        self.stdin.write_all(&json).await
    }

    /// Tells the guest booted ahead that its task is on its drive; it starts at once. The line
    /// carries the host's clock (Unix seconds and nanoseconds) and 32 bytes of fresh entropy
    /// (hex), since a guest restored from a snapshot has the template's clock and random state:
    /// `NX-GO <secs>.<nanos> <hex>`.
    pub async fn go(&mut self) -> std::io::Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let line = format!(
            "{GO} {}.{:09} {}\n",
            now.as_secs(),
            now.subsec_nanos(),
            hex::encode(seed)
        );
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.shutdown().await
    }

    /// Reads the unit's output until the guest says it waits (asking a restored one every
    /// [`PING_EVERY`]); an error with what it said if it ended first.
    async fn wait_ready(&mut self, restored: bool) -> Result<(), String> {
        let mut said = Vec::new();
        let mut buf = [0u8; 4096];
        let (stdin, stdout) = (&mut self.stdin, &mut self.stdout);
        let read = async {
            let mut ping = tokio::time::interval(PING_EVERY);
            loop {
                let read = tokio::select! {
                    read = stdout.read(&mut buf) => read,
                    _ = ping.tick(), if restored => {
                        if stdin.write_all(PING).await.is_err() {
                            return false;
                        }
                        continue;
                    }
                };
                match read {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => said.extend_from_slice(&buf[..n]),
                }
                if String::from_utf8_lossy(&said)
                    .lines()
                    .any(|l| l.trim() == READY)
                {
                    return true;
                }
            }
        };
        match tokio::time::timeout(BOOT_TIMEOUT, read).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "the guest ended before it waited for a task: {}",
                String::from_utf8_lossy(&said).trim()
            )),
            Err(_) => Err(format!(
                "the guest did not boot within {} s",
                BOOT_TIMEOUT.as_secs()
            )),
        }
    }
}

/// What a pool that boots ahead boots with: the backend, which backend kind, and the uids.
pub struct BootAhead {
    pub backend: Arc<dyn SandboxBackend>,
    pub kind: BackendKind,
    pub uids: Arc<TaskUids>,
}

fn pipe_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

pub struct Pool {
    supervisor: Arc<Supervisor>,
    launcher: PathBuf,
    limits: Limits,
    size: usize,
    slots: Mutex<Vec<Slot>>,
    refilling: AtomicBool,
    boot: Option<BootAhead>,
}

impl Pool {
    pub fn new(
        supervisor: Arc<Supervisor>,
        launcher: PathBuf,
        limits: Limits,
        size: usize,
        boot: Option<BootAhead>,
    ) -> Self {
        Self {
            supervisor,
            launcher,
            limits,
            size,
            slots: Mutex::new(Vec::new()),
            refilling: AtomicBool::new(false),
            boot,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Warm units ready now.
    pub fn ready(&self) -> usize {
        self.slots.lock().expect("pool lock").len()
    }

    /// Warm units the pool keeps.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Starts one task unit (a cold start when the pool is empty).
    #[tracing::instrument(skip_all)]
    pub async fn start_slot(&self) -> Result<Slot, SupervisorError> {
        let mut bytes = [0u8; 6];
        rand::thread_rng().fill_bytes(&mut bytes);
        let id = hex::encode(bytes);
        let unit = format!("nxt-{id}.service");
        let io = |e: std::io::Error| SupervisorError::Embedded(format!("task pipes: {e}"));
        let (stdin_unit, stdin) = pipe_pair().map_err(io)?;
        let (stdout, stdout_unit) = pipe_pair().map_err(io)?;
        let (stderr, stderr_unit) = pipe_pair().map_err(io)?;
        let spec = UnitSpec {
            name: unit.clone(),
            description: format!("NX task {id}"),
            argv: vec![
                self.launcher.display().to_string(),
                "launch".into(),
                "-".into(),
            ],
            user: None,
            limits: Some(self.limits),
            output: UnitOutput::Pipes(Arc::new(TaskPipes {
                stdin: stdin_unit,
                stdout: stdout_unit,
                stderr: stderr_unit,
            })),
            restart_delay: None,
            slice: SliceKind::Tenants,
            remain_after_exit: false,
            ambient_capabilities: 0,
            cpu_affinity: Vec::new(),
            graceful_stop: None,
        };
        self.supervisor.start(&spec).await?;
        // systemd holds its own copies now; ours must go, or the task's end never shows as EOF.
        drop(spec);
        Ok(Slot {
            unit: TaskUnit { id, name: unit },
            warm: None,
            stdin: pipe::Sender::from_owned_fd(stdin).map_err(io)?,
            stdout: pipe::Receiver::from_owned_fd(stdout).map_err(io)?,
            stderr: pipe::Receiver::from_owned_fd(stderr).map_err(io)?,
        })
    }

    /// A slot for the pool: a started unit, and for a pool that boots ahead, a sandbox booted in
    /// it and waiting for its task (the unit is stopped again if that fails).
    #[tracing::instrument(skip_all)]
    async fn fill_one(&self) -> Result<Slot, String> {
        let mut slot = self.start_slot().await.map_err(|e| e.to_string())?;
        let Some(boot) = &self.boot else {
            return Ok(slot);
        };
        let warm = WarmSandbox {
            id: slot.unit.id.clone(),
            uid: boot.uids.next(),
            backend: boot.kind,
            limits: self.limits,
        };
        let booted = async {
            let launch = boot
                .backend
                .boot_ahead(&warm)
                .await
                .map_err(|e: BackendError| e.to_string())?;
            let started = std::time::Instant::now();
            slot.write_spec(&launch.spec)
                .await
                .map_err(|e| e.to_string())?;
            slot.wait_ready(launch.restored).await?;
            tracing::info!(
                restored = launch.restored,
                ms = started.elapsed().as_millis() as u64,
                "a guest waits for its task"
            );
            Ok::<_, String>(())
        };
        match booted.await {
            Ok(()) => {
                slot.warm = Some(warm);
                Ok(slot)
            }
            Err(e) => {
                let _ = self.supervisor.stop(&slot.unit.name).await;
                boot.backend.forget_warm(&warm).await;
                Err(e)
            }
        }
    }

    /// A warm slot, if one is ready; the pool refills in the background.
    pub fn take(self: &Arc<Self>) -> Option<Slot> {
        let slot = self.slots.lock().expect("pool lock").pop();
        self.refill();
        slot
    }

    /// Forgets every warm slot (their units died with the manager) and refills.
    pub fn restart(self: &Arc<Self>) {
        let gone = std::mem::take(&mut *self.slots.lock().expect("pool lock"));
        if let Some(boot) = &self.boot {
            let backend = Arc::clone(&boot.backend);
            tokio::spawn(async move {
                for warm in gone.iter().filter_map(|slot| slot.warm.as_ref()) {
                    backend.forget_warm(warm).await;
                }
            });
        }
        self.refill();
    }

    /// Starts units until the pool is full (one refill at a time).
    pub fn refill(self: &Arc<Self>) {
        if self.size == 0 || self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            let mut failed = false;
            while !failed && pool.slots.lock().expect("pool lock").len() < pool.size {
                match pool.fill_one().await {
                    Ok(slot) => pool.slots.lock().expect("pool lock").push(slot),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a warm task unit");
                        failed = true;
                    }
                }
            }
            pool.refilling.store(false, Ordering::Release);
            // A slot taken after the last check would otherwise wait for the next take.
            if !failed && pool.slots.lock().expect("pool lock").len() < pool.size {
                pool.refill();
            }
        });
    }
}
