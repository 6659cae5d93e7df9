//! Tasks: a program run once, in a fresh sandbox of the same backends as deployments, with no
//! network but its own loopback, its output streamed back live, killed at its timeout, and gone
//! without a trace when it ends (its unit, its cgroup, its container if any).
//!
//! A task's unit runs `nxd launch -`, which waits for the launch spec on its stdin. A cold task
//! starts that unit first; a warm one takes a unit the pool started ahead (see `pool`). A
//! microVM task of the pool's memory takes a guest booted ahead, when one waits (`[microvm]
//! pool_size`); any other starts its guest cold, sized as it asks.

mod pool;
mod request;
mod text;

use crate::api::systemd::{ActiveState, ServiceResult, SubState};
use crate::api::{TaskEvent, TaskOutcome, UnitState};
use crate::backend::{BackendError, Program, SandboxBackend, TaskLaunch};
use crate::config::TasksConfig;
use crate::domain::BackendKind;
use crate::supervisor::{Supervisor, SupervisorError};
use pool::{BootAhead, Pool, Slot, TaskUnit};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error("handing the task to its unit: {0}")]
    Handover(std::io::Error),
}

/// One task to run.
#[derive(Debug, Clone)]
pub struct TaskRun {
    pub program: Program,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
    pub memory_max_mb: u64,
    pub backend: BackendKind,
}

/// How many uids tasks take in turn, from `tasks.uid_base`.
const TASK_UIDS: u32 = 65_536;
/// Events buffered for a slow reader before the task's output waits for it.
const EVENT_BUFFER: usize = 256;
/// How long a task's unit may take to report its end once its output has closed.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// The uids tasks run as: `tasks.uid_base` onwards, a different one for each task in turn.
pub struct TaskUids {
    base: u32,
    next: AtomicU32,
}

impl TaskUids {
    pub fn next(&self) -> u32 {
        self.base + self.next.fetch_add(1, Ordering::Relaxed) % TASK_UIDS
    }
}

pub struct Tasks {
    supervisor: Arc<Supervisor>,
    backend: Arc<dyn SandboxBackend>,
    pool: Arc<Pool>,
    /// microVM guests booted ahead, of the pool's limits (`[microvm] pool_size`; 0 without a
    /// microvm backend).
    guests: Arc<Pool>,
    uids: Arc<TaskUids>,
    /// Tasks started on a warm unit, and on one started for them (cold), since nxd started.
    started_warm: AtomicU64,
    started_cold: AtomicU64,
}

/// What the task pool did and holds, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskStats {
    pub started_warm: u64,
    pub started_cold: u64,
    /// Warm units ready now.
    pub pool_ready: usize,
    /// Warm units the pool keeps (`tasks.pool_size`).
    pub pool_size: usize,
    /// microVM guests booted ahead and waiting now.
    pub guests_ready: usize,
    /// microVM guests the pool keeps booted ahead (`microvm.pool_size`, 0 without the backend).
    pub guests_size: usize,
}

impl Tasks {
    /// Removes task units an earlier nxd left behind and starts filling the warm pools (of
    /// units, and of `guest_pool_size` microVM guests: 0 without a microvm backend).
    #[tracing::instrument(skip_all)]
    pub async fn start(
        supervisor: Arc<Supervisor>,
        backend: Arc<dyn SandboxBackend>,
        launcher: PathBuf,
        config: &TasksConfig,
        guest_pool_size: usize,
    ) -> Result<Self, TaskError> {
        for unit in supervisor.list("nxt-*.service").await? {
            tracing::info!(%unit, "removing a task unit left from before");
            supervisor.stop(&unit).await?;
        }
        let uids = Arc::new(TaskUids {
            base: config.uid_base,
            next: AtomicU32::new(0),
        });
        let pool = Arc::new(Pool::new(
            Arc::clone(&supervisor),
            launcher.clone(),
            config.limits,
            config.pool_size,
            None,
        ));
        pool.refill();
        let guests = Arc::new(Pool::new(
            Arc::clone(&supervisor),
            launcher,
            config.limits,
            guest_pool_size,
            Some(BootAhead {
                backend: Arc::clone(&backend),
                kind: BackendKind::Microvm,
                uids: Arc::clone(&uids),
            }),
        ));
        guests.refill();
        Ok(Self {
            supervisor,
            backend,
            pool,
            guests,
            uids,
            started_warm: AtomicU64::new(0),
            started_cold: AtomicU64::new(0),
        })
    }

    /// Tasks started so far, warm and cold, and the pool's fill.
    pub fn stats(&self) -> TaskStats {
        TaskStats {
            started_warm: self.started_warm.load(Ordering::Relaxed),
            started_cold: self.started_cold.load(Ordering::Relaxed),
            pool_ready: self.pool.ready(),
            pool_size: self.pool.size(),
            guests_ready: self.guests.ready(),
            guests_size: self.guests.size(),
        }
    }

    /// Refills the warm pools from scratch, after the manager that ran their units died.
    pub fn refill_pool(&self) {
        self.pool.restart();
        self.guests.restart();
    }

    /// A microVM guest booted ahead for this task, if one waits and has the task's memory.
    fn warm_guest(&self, task: &TaskRun) -> Option<Slot> {
        (task.backend == BackendKind::Microvm
            && task.memory_max_mb == self.guests.limits().memory_max_mb)
            .then(|| self.guests.take())
            .flatten()
    }

    /// Starts a task; its events follow on the receiver, ending with `Exited`. Dropping the
    /// receiver kills the task.
    #[tracing::instrument(skip_all)]
    pub async fn run(&self, task: TaskRun) -> Result<mpsc::Receiver<TaskEvent>, TaskError> {
        let (mut slot, warm) = match self.warm_guest(&task).or_else(|| self.pool.take()) {
            Some(slot) => (slot, true),
            None => (self.pool.start_slot().await?, false),
        };
        let uid = match &slot.warm {
            Some(guest) => guest.uid,
            None => self.uids.next(),
        };
        let launch = TaskLaunch {
            id: slot.unit.id.clone(),
            program: task.program,
            args: task.args,
            env: task.env,
            uid,
            backend: task.backend,
            limits: crate::config::Limits {
                memory_max_mb: task.memory_max_mb,
                ..self.pool.limits()
            },
        };
        let handover = async {
            if let Some(guest) = slot.warm.clone() {
                self.backend.hand_over(&guest, &launch).await?;
                return slot.go().await.map_err(TaskError::Handover);
            }
            let spec = self.backend.task_launch(&launch).await?;
            if task.memory_max_mb != self.pool.limits().memory_max_mb {
                self.supervisor
                    .set_memory_max(&slot.unit.name, task.memory_max_mb << 20)
                    .await?;
            }
            slot.send(&spec).await.map_err(TaskError::Handover)
        };
        if let Err(e) = handover.await {
            self.watcher().finish(&slot.unit, &launch).await;
            return Err(e);
        }
        let started = Instant::now();
        match warm {
            true => &self.started_warm,
            false => &self.started_cold,
        }
        .fetch_add(1, Ordering::Relaxed);
        tracing::info!(task = %slot.unit.id, warm, uid, "task started");
        let (events, receiver) = mpsc::channel(EVENT_BUFFER);
        let _ = events
            .send(TaskEvent::Started {
                task: slot.unit.id.clone(),
                warm,
                backend: launch.backend.to_string(),
            })
            .await;
        tokio::spawn(
            self.watcher()
                .watch(slot, launch, task.timeout, started, events),
        );
        Ok(receiver)
    }

    fn watcher(&self) -> Watcher {
        Watcher {
            supervisor: Arc::clone(&self.supervisor),
            backend: Arc::clone(&self.backend),
        }
    }
}

/// Follows one running task to its end.
struct Watcher {
    supervisor: Arc<Supervisor>,
    backend: Arc<dyn SandboxBackend>,
}

/// Forwards one of the task's streams; false when nobody listens any more.
async fn forward(
    mut stream: pipe::Receiver,
    events: &mpsc::Sender<TaskEvent>,
    wrap: fn(String) -> TaskEvent,
) -> bool {
    let mut text = text::Utf8Chunks::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (chunk, ended) = match stream.read(&mut buf).await {
            Ok(n) if n > 0 => (text.push(&buf[..n]), false),
            _ => (text.finish(), true),
        };
        if !chunk.is_empty() && events.send(wrap(chunk)).await.is_err() {
            return false;
        }
        if ended {
            return true;
        }
    }
}

impl Watcher {
    #[tracing::instrument(skip_all, fields(task = %slot.unit.id))]
    async fn watch(
        self,
        slot: Slot,
        launch: TaskLaunch,
        timeout: Duration,
        started: Instant,
        events: mpsc::Sender<TaskEvent>,
    ) {
        let (unit, stdout, stderr) = slot.into_output();
        let output = async {
            let (out, err) = tokio::join!(
                forward(stdout, &events, |data| TaskEvent::Stdout { data }),
                forward(stderr, &events, |data| TaskEvent::Stderr { data }),
            );
            out && err
        };
        let (timed_out, abandoned) = match tokio::time::timeout(timeout, output).await {
            Ok(listened) => (false, !listened),
            Err(_) => (true, false),
        };
        if timed_out || abandoned {
            tracing::info!(timed_out, abandoned, "killing the task");
            if let Err(e) = self.supervisor.kill(&unit.name, nix::libc::SIGKILL).await {
                tracing::warn!(error = %e, "kill");
            }
        }
        let state = self
            .supervisor
            .wait_for(&unit.name, "exited", EXIT_WAIT, |s| {
                s.sub == SubState::Exited || s.active.is_down()
            })
            .await;
        let outcome = outcome(state, timed_out, started.elapsed());
        self.finish(&unit, &launch).await;
        tracing::info!(?outcome, "task ended");
        let _ = events.send(TaskEvent::Exited(outcome)).await;
    }

    async fn finish(&self, unit: &TaskUnit, launch: &TaskLaunch) {
        if let Err(e) = self.supervisor.stop(&unit.name).await {
            tracing::warn!(unit = %unit.name, error = %e, "stopping a task unit");
        }
        self.backend.task_cleanup(launch).await;
    }
}

/// The task's end, from its unit's state (waitid codes: 1 exited, 2 killed, 3 dumped). A unit
/// that ended well is unloaded at once; systemd then reports it inactive with Result success.
fn outcome(
    state: Result<UnitState, SupervisorError>,
    timed_out: bool,
    elapsed: Duration,
) -> TaskOutcome {
    let duration_ms = elapsed.as_millis() as u64;
    match state {
        Ok(s) => {
            let exited = s.exit_code == 1;
            let unloaded_after_success =
                s.active == ActiveState::Inactive && s.result == ServiceResult::Success;
            TaskOutcome {
                exit_code: if unloaded_after_success {
                    Some(0)
                } else {
                    exited.then_some(s.exit_status)
                },
                signal: (!exited && s.exit_code != 0).then_some(s.exit_status),
                timed_out,
                result: s.result,
                duration_ms,
            }
        }
        Err(e) => TaskOutcome {
            exit_code: None,
            signal: None,
            timed_out,
            result: format!("unknown ({e})").into(),
            duration_ms,
        },
    }
}
