//! Task units: each is a transient systemd service running `nxd launch -`, which waits on its
//! stdin for the task's launch spec. The warm pool keeps `size` of them started ahead, so that a
//! task pays neither for the unit nor for the launcher; it refills in the background.

use crate::backend::launch::LaunchSpec;
use crate::config::Limits;
use crate::supervisor::{SliceKind, Supervisor, SupervisorError, TaskPipes, UnitOutput, UnitSpec};
use rand::RngCore;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;

/// A task's unit: `nxt-<id>.service`.
pub struct TaskUnit {
    pub id: String,
    pub name: String,
}

/// A started task unit, waiting for its spec.
pub struct Slot {
    pub unit: TaskUnit,
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
        let json = serde_json::to_vec(spec)?;
        self.stdin.write_all(&json).await?;
        self.stdin.shutdown().await
    }
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
}

impl Pool {
    pub fn new(
        supervisor: Arc<Supervisor>,
        launcher: PathBuf,
        limits: Limits,
        size: usize,
    ) -> Self {
        Self {
            supervisor,
            launcher,
            limits,
            size,
            slots: Mutex::new(Vec::new()),
            refilling: AtomicBool::new(false),
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
            graceful_stop: None,
        };
        self.supervisor.start(&spec).await?;
        // systemd holds its own copies now; ours must go, or the task's end never shows as EOF.
        drop(spec);
        Ok(Slot {
            unit: TaskUnit { id, name: unit },
            stdin: pipe::Sender::from_owned_fd(stdin).map_err(io)?,
            stdout: pipe::Receiver::from_owned_fd(stdout).map_err(io)?,
            stderr: pipe::Receiver::from_owned_fd(stderr).map_err(io)?,
        })
    }

    /// A warm slot, if one is ready; the pool refills in the background.
    pub fn take(self: &Arc<Self>) -> Option<Slot> {
        let slot = self.slots.lock().expect("pool lock").pop();
        self.refill();
        slot
    }

    /// Forgets every warm slot (their units died with the manager) and refills.
    pub fn restart(self: &Arc<Self>) {
        self.slots.lock().expect("pool lock").clear();
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
                match pool.start_slot().await {
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
