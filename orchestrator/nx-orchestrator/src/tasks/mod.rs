//! Tasks: a program run once, in a fresh sandbox of the same backends as deployments, with no
//! network but its own loopback, its output streamed back live, killed at its timeout, and gone
//! without a trace when it ends (its processes, mounts and files; its container if any). A
//! bubblewrap task's unit then serves the next task (see `pool`'s loans), as another uid.
//!
//! A task's unit runs `nxd launch -`, which waits for the launch spec on its stdin. A cold task
//! starts that unit first; a warm one takes a unit the pool started ahead (see `pool`). A
//! bubblewrap task ends when every process in its sandbox has ended, not only its program
//! (so that its output is whole); its launcher reports that end (see `exit_report`): its
//! `exited` event follows at once, and its unit is tidied away after it. A
//! microVM task of the pool's memory takes a guest booted ahead, when one waits (`[microvm]
//! pool_size`); any other starts its guest cold, sized as it asks.

mod caller_cap;
mod exit_report;
mod pool;
mod request;
mod text;

use crate::api::systemd::{ActiveState, ServiceResult, SubState};
use crate::api::{LastExit, TaskEvent, TaskOutcome, UnitState};
use crate::backend::{BackendError, Program, SandboxBackend, TaskLaunch};
use crate::config::TasksConfig;
use crate::domain::BackendKind;
use crate::metrics::StepDurations;
use crate::supervisor::{Supervisor, SupervisorError};
use nx_api::signals::signal_of_exit_code;
use pool::{BootAhead, Loan, Pool, PoolBounds, Slot, TaskOutput, TaskUnit};
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error("handing the task to its unit: {0}")]
    Handover(std::io::Error),
    /// The caller runs `cap` tasks already (`tasks.max_concurrent_per_token`).
    #[error("{caller} already runs {cap} tasks at once, the most tasks.max_concurrent_per_token allows one caller: wait for one of them to end and try again, or ask the operator to raise that limit")]
    CallerAtCap { caller: String, cap: usize },
}

/// One task to run.
#[derive(Debug, Clone)]
pub struct TaskRun {
    pub program: Program,
    /// The program's files, held for the store's collection until the task has ended.
    pub held: crate::artifact::holds::Hold,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
    pub memory_max_mb: u64,
    pub backend: BackendKind,
    /// Who asked (`token <id>` or `the root token`): each caller runs at most
    /// `tasks.max_concurrent_per_token` tasks at once.
    pub caller: String,
}

/// How many uids tasks take in turn, from `tasks.uid_base`.
const TASK_UIDS: u32 = 65_536;
/// Events buffered for a slow reader before the task's output waits for it.
const EVENT_BUFFER: usize = 256;
/// How long a task's unit may take to report its end once its output has closed.
const EXIT_WAIT: Duration = Duration::from_secs(10);
/// How often the unit of a task that has answered is asked whether it is gone (see
/// [`Watcher::tidy`]).
const TIDY_EVERY: Duration = Duration::from_millis(50);

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
    /// Tasks running now per caller, up to `tasks.max_concurrent_per_token`.
    callers: Arc<caller_cap::CallerCaps>,
    /// Tasks started on a warm unit, and on one started for them (cold), since nxd started.
    started_warm: AtomicU64,
    started_cold: AtomicU64,
    /// Where each task's steps are timed (`nx_task_step_duration_seconds`).
    steps: StepDurations,
}

/// What the task pool did and holds, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskStats {
    pub started_warm: u64,
    pub started_cold: u64,
    /// Warm units ready now.
    pub pool_ready: usize,
    /// Warm units the pool keeps now: from `tasks.pool_size` up to `tasks.pool_max`, as
    /// demand grew it.
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
        steps: StepDurations,
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
            PoolBounds {
                min: config.pool_size,
                max: config.pool_max(),
            },
            None,
            Some(steps.clone()),
        ));
        pool.refill();
        let guests = Arc::new(Pool::new(
            Arc::clone(&supervisor),
            launcher,
            config.limits,
            PoolBounds {
                min: guest_pool_size,
                max: guest_pool_size,
            },
            Some(BootAhead {
                backend: Arc::clone(&backend),
                kind: BackendKind::Microvm,
                uids: Arc::clone(&uids),
            }),
            None,
        ));
        guests.refill();
        Ok(Self {
            supervisor,
            backend,
            pool,
            guests,
            uids,
            callers: caller_cap::CallerCaps::new(config.max_concurrent_per_token),
            started_warm: AtomicU64::new(0),
            started_cold: AtomicU64::new(0),
            steps,
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
    /// receiver kills the task. Errors: `CallerAtCap` when its caller runs
    /// `tasks.max_concurrent_per_token` tasks already (before anything starts).
    #[tracing::instrument(skip_all)]
    pub async fn run(&self, task: TaskRun) -> Result<mpsc::Receiver<TaskEvent>, TaskError> {
        let caller = self.callers.admit(&task.caller)?;
        let steps = StepClock::new(&self.steps);
        let (mut slot, warm, mut loan) = match self.warm_guest(&task) {
            Some(slot) => (slot, true, None),
            None => match self.pool.borrow() {
                Some((slot, loan)) => (slot, true, Some(loan)),
                None => (self.pool.start_slot().await?, false, None),
            },
        };
        steps.lap(if warm { "take" } else { "start" });
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
            // A task asks only for its memory: its /tmp is the host's, or the most its backend
            // holds in that memory.
            limits: crate::config::Limits {
                memory_max_mb: task.memory_max_mb,
                ..self.pool.limits()
            }
            .with_tmp_within_memory(task.backend),
        };
        let mut reports = false;
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
            steps.lap("spec");
            reports = spec.exit_report;
            if !reports || task.memory_max_mb != self.pool.limits().memory_max_mb {
                // Its unit serves no other task after it: the pool may start one in its place.
                loan = None;
            }
            slot.send(&spec).await.map_err(TaskError::Handover)
        };
        if let Err(e) = handover.await {
            drop(loan);
            self.watcher().finish(&slot.unit, &launch, None).await;
            return Err(e);
        }
        steps.lap("handover");
        let started = Instant::now();
        match warm {
            true => &self.started_warm,
            false => &self.started_cold,
        }
        .fetch_add(1, Ordering::Relaxed);
        // A unit serves tasks one after another: the first has the unit's id (as a task that
        // has its unit alone: an image's container and a guest's files are named by it), the
        // n-th after it `<unit id>-<n>`.
        let task_id = match slot.served {
            0 => slot.unit.id.clone(),
            n => format!("{}-{n}", slot.unit.id),
        };
        tracing::info!(task = %task_id, warm, uid, "task started");
        let (events, receiver) = mpsc::channel(EVENT_BUFFER);
        let _ = events
            .send(TaskEvent::Started {
                task: task_id,
                warm,
                backend: launch.backend.to_string(),
            })
            .await;
        tokio::spawn(self.watcher().watch(
            slot,
            launch,
            task.timeout,
            Started {
                at: started,
                steps,
                reports,
                caller,
                _held: task.held,
                loan,
            },
            events,
        ));
        Ok(receiver)
    }

    fn watcher(&self) -> Watcher {
        Watcher {
            supervisor: Arc::clone(&self.supervisor),
            backend: Arc::clone(&self.backend),
        }
    }
}

/// Times one task's steps, one after the other: each lap is the time since the previous one
/// (or the task's start), recorded as that step, and the whole as the step `task`. Each step
/// is also logged at debug level (`RUST_LOG=nx_orchestrator::tasks=debug`).
struct StepClock {
    steps: StepDurations,
    started: Instant,
    last: std::sync::Mutex<Instant>,
}

impl StepClock {
    fn new(steps: &StepDurations) -> Self {
        let now = Instant::now();
        Self {
            steps: steps.clone(),
            started: now,
            last: std::sync::Mutex::new(now),
        }
    }

    /// Ends the step `name` now.
    fn lap(&self, name: &'static str) {
        self.lap_at(name, Instant::now());
    }

    /// Ends the step `name` at `at` (not before the previous one ended).
    fn lap_at(&self, name: &'static str, at: Instant) {
        let mut last = self.last.lock().expect("step clock");
        let took = at.saturating_duration_since(*last);
        *last = at.max(*last);
        tracing::debug!(
            step = name,
            ms = took.as_secs_f64() * 1000.0,
            "task step done"
        );
        self.steps.observe(name, took);
    }

    /// The whole task, from its request to now.
    fn finish(&self) {
        self.steps.observe("task", self.started.elapsed());
    }
}

/// When a task was handed over, the clock of its steps, whether its sandbox reports its end
/// (`LaunchSpec::exit_report`), and its place among its caller's running tasks (given back
/// when its end is known, before `exited` is sent).
struct Started {
    at: Instant,
    steps: StepClock,
    reports: bool,
    caller: caller_cap::CallerSlot,
    /// The program's files: held from the store's collection until the task's watch is over.
    _held: crate::artifact::holds::Hold,
    /// The pool's loan of the task's unit, when the unit may serve the next task after it.
    loan: Option<Loan>,
}

/// Follows one running task to its end.
struct Watcher {
    supervisor: Arc<Supervisor>,
    backend: Arc<dyn SandboxBackend>,
}

/// Forwards one of the task's streams until its EOF, or, once `exited` holds the task's end,
/// until it has nothing more to read (the sandbox is gone: nothing writes to it any more);
/// false when nobody listens any more. The first byte read from either stream sets `first`.
async fn forward(
    stream: &mut pipe::Receiver,
    events: &mpsc::Sender<TaskEvent>,
    first: &OnceLock<Instant>,
    wrap: fn(String) -> TaskEvent,
    mut exited: watch::Receiver<Option<LastExit>>,
) -> bool {
    let mut text = text::Utf8Chunks::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut draining = false;
    loop {
        let read = if draining {
            // read(2) itself: tokio's try_read answers WouldBlock, without reading, while its
            // poller has not yet said the pipe is readable.
            match nix::unistd::read(stream.as_raw_fd(), &mut buf) {
                Ok(n) => Ok(n),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => Err(std::io::Error::from(e)),
            }
        } else {
            tokio::select! {
                biased;
                read = stream.read(&mut buf) => read,
                _ = exited.wait_for(Option::is_some) => {
                    draining = true;
                    continue;
                }
            }
        };
        let (chunk, ended) = match read {
            Ok(n) if n > 0 => {
                let _ = first.set(Instant::now());
                (text.push(&buf[..n]), false)
            }
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
        started: Started,
        events: mpsc::Sender<TaskEvent>,
    ) {
        let (unit, mut output, served) = slot.into_output();
        let first = OnceLock::new();
        let (report, exited) = watch::channel(None);
        let TaskOutput {
            stdout,
            stderr,
            report: report_socket,
        } = &mut output;
        let streams = async {
            let read_report = async {
                if started.reports {
                    if let Some(end) = exit_report::read(report_socket).await {
                        report.send_replace(Some(end));
                    }
                }
            };
            let (_, out, err) = tokio::join!(
                read_report,
                forward(
                    stdout,
                    &events,
                    &first,
                    |data| TaskEvent::Stdout { data },
                    exited.clone()
                ),
                forward(
                    stderr,
                    &events,
                    &first,
                    |data| TaskEvent::Stderr { data },
                    exited.clone()
                ),
            );
            out && err
        };
        let (timed_out, abandoned) = match tokio::time::timeout(timeout, streams).await {
            Ok(listened) => (false, !listened),
            Err(_) => (true, false),
        };
        let steps = &started.steps;
        if let Some(at) = first.get() {
            steps.lap_at("first_output", *at);
        }
        steps.lap("output_end");
        let reported = exited.borrow().clone();
        if let (Some(end), false, false) = (reported, timed_out, abandoned) {
            steps.lap("exit");
            let outcome = reported_outcome(end, started.at.elapsed());
            steps.finish();
            tracing::info!(?outcome, "task ended");
            drop(started.caller);
            let _ = events.send(TaskEvent::Exited(outcome)).await;
            drop(events);
            match started.loan {
                // Its launcher waits for the next task: nothing of this one is left.
                Some(loan) => {
                    loan.give_back(Slot::after(unit, output, served));
                    self.backend.task_cleanup(&launch).await;
                }
                None => {
                    // Closing its standard input ends its launcher, and so its unit.
                    drop(output);
                    self.tidy(&unit, &launch).await;
                }
            }
            return;
        }
        drop(started.loan);
        drop(output);
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
        steps.lap("exit");
        let outcome = outcome(state.as_ref(), timed_out, started.at.elapsed());
        self.finish(&unit, &launch, state.ok().as_ref()).await;
        steps.lap("cleanup");
        steps.finish();
        tracing::info!(?outcome, "task ended");
        drop(started.caller);
        let _ = events.send(TaskEvent::Exited(outcome)).await;
    }

    /// After a task's answer: its unit ends with its sandbox, which reported its end. Waits
    /// (up to [`EXIT_WAIT`], asking every [`TIDY_EVERY`]) until systemd has unloaded the unit
    /// (it ended well) or marked it failed, asking with `ListUnitsByPatterns`, which loads
    /// nothing (see [`Supervisor::loaded_state`]); then removes what is left as
    /// [`Watcher::finish`]. Off the task's answer, so it asks seldom: the tasks still running
    /// need the CPU more.
    async fn tidy(&self, unit: &TaskUnit, launch: &TaskLaunch) {
        let deadline = Instant::now() + EXIT_WAIT;
        let ended = loop {
            tokio::time::sleep(TIDY_EVERY).await;
            match self.supervisor.loaded_state(&unit.name).await {
                Ok(None) => break Some(ActiveState::Inactive),
                Ok(Some(ActiveState::Failed)) => break Some(ActiveState::Failed),
                Ok(Some(_)) if Instant::now() < deadline => {}
                _ => break None,
            }
        };
        let state = ended.map(|active| UnitState {
            active,
            ..crate::supervisor::unit_states::unloaded()
        });
        self.finish(unit, launch, state.as_ref()).await;
    }

    /// Removes what is left of the task: its unit, and what the backend made for it. `ended`:
    /// the unit's state once the task's output closed, when it was asked. A unit that ended
    /// well is gone already (systemd unloads an inactive transient unit), one that failed
    /// only needs clearing; one that still runs, or whose state is not known, is stopped.
    async fn finish(&self, unit: &TaskUnit, launch: &TaskLaunch, ended: Option<&UnitState>) {
        let cleared = match ended.map(|s| &s.active) {
            Some(ActiveState::Inactive) => Ok(()),
            Some(ActiveState::Failed) => self.supervisor.reset_failed(&unit.name).await,
            _ => self.supervisor.stop(&unit.name).await,
        };
        if let Err(e) = cleared {
            tracing::warn!(unit = %unit.name, error = %e, "removing a task unit");
        }
        self.backend.task_cleanup(launch).await;
    }
}

/// The task's end from its launcher's report (see `exit_report`).
fn reported_outcome(end: LastExit, elapsed: Duration) -> TaskOutcome {
    TaskOutcome {
        exit_code: end.exit_code,
        signal: end.signal,
        timed_out: false,
        result: end.result.into(),
        duration_ms: elapsed.as_millis() as u64,
    }
}

/// The task's end, from its unit's state (waitid codes: 1 exited, 2 killed, 3 dumped). A unit
/// that ended well is unloaded at once; systemd then reports it inactive with Result success.
fn outcome(
    state: Result<&UnitState, &SupervisorError>,
    timed_out: bool,
    elapsed: Duration,
) -> TaskOutcome {
    let duration_ms = elapsed.as_millis() as u64;
    match state {
        Ok(s) => {
            let exited = s.exit_code == 1;
            let unloaded_after_success =
                s.active == ActiveState::Inactive && s.result == ServiceResult::Success;
            // A sandbox (bubblewrap, Podman, a guest's init) exits 128 + N when signal N
            // killed its program: systemd sees an exit code.
            let signal = match exited {
                true => signal_of_exit_code(s.exit_status),
                false => (s.exit_code != 0).then_some(s.exit_status),
            };
            TaskOutcome {
                exit_code: if unloaded_after_success {
                    Some(0)
                } else {
                    exited.then_some(s.exit_status)
                },
                signal,
                timed_out,
                result: match (&s.result, signal) {
                    (ServiceResult::ExitCode, Some(_)) => ServiceResult::Signal,
                    (result, _) => result.clone(),
                },
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
