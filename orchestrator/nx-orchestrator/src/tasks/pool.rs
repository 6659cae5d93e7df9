//! Task units: each is a transient systemd service running `nxd launch -`, which waits on its
//! stdin for the task's launch spec. That stdin is a socket (a pair nxd made): a task's
//! sandbox reports its end back on it (see `LaunchSpec::exit_report`). The warm pool keeps some of them started ahead, so that a
//! task pays neither for the unit nor for the launcher; it refills in the background, several
//! units at once.
//!
//! The pool sizes itself to demand between its bounds ([`PoolBounds`], `tasks.pool_size` and
//! `tasks.pool_max`): each task that finds it empty (and so starts its unit cold) makes it keep
//! one more unit ready, up to the most; after [`SHRINK_AFTER`] with no such task it keeps one
//! fewer again (the surplus units are stopped), down to the fewest.
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
use crate::metrics::StepDurations;
use crate::supervisor::{
    Restart, SliceKind, Supervisor, SupervisorError, TaskPipes, UnitOutput, UnitSpec,
};
use rand::RngCore;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::net::UnixStream;

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
/// How long a pool grown by demand keeps its size with no task finding it empty, before it
/// keeps one unit fewer.
pub const SHRINK_AFTER: Duration = Duration::from_secs(30);
/// Units a pool starts at once, at most (each is a `StartTransientUnit` and a launcher that
/// starts; the manager handles them one at a time, but their round trips and the launchers'
/// starts overlap). A pool that boots ahead boots one guest at a time (each boot takes a core
/// for up to seconds).
const STARTS_AT_ONCE: usize = 4;
/// Tasks one unit serves, one after another, before it is retired (its launcher ends, and a
/// fresh unit takes its place).
const MAX_SERVED: u32 = 256;

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
    /// nxd's end of the unit's standard input: a socket, written to, and read for a task's
    /// exit report.
    stdin: UnixStream,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
    /// Tasks this unit has served before the one it serves now.
    pub served: u32,
    /// The key of the guest's exit line, from the spec it was booted with (see
    /// `backend::guest_exit`): it goes to the guest with its task.
    exit_key: Option<String>,
}

/// What nxd reads of a running task: its unit's stdout and stderr, and the socket its sandbox
/// may report its end on (see `LaunchSpec::exit_report`).
pub struct TaskOutput {
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
    pub report: UnixStream,
}

impl Slot {
    /// The unit and what to read of its task.
    pub fn into_output(self) -> (TaskUnit, TaskOutput, u32) {
        let output = TaskOutput {
            stdout: self.stdout,
            stderr: self.stderr,
            report: self.stdin,
        };
        (self.unit, output, self.served)
    }

    /// The slot again, once the task of `output` has reported its end and its output is read:
    /// its launcher waits for the next spec.
    pub fn after(unit: TaskUnit, output: TaskOutput, served: u32) -> Self {
        Self {
            unit,
            warm: None,
            stdin: output.report,
            stdout: output.stdout,
            stderr: output.stderr,
            served: served + 1,
            exit_key: None,
        }
    }

    /// Hands the launch spec to the waiting launcher; it runs the task at once. A launcher that
    /// reports its task's end (`exit_report`) then waits for the next spec on the same socket;
    /// any other gets the socket's end, as it runs only this one.
    pub async fn send(&mut self, spec: &LaunchSpec) -> std::io::Result<()> {
        self.write_spec(spec).await?;
        if spec.exit_report {
            return Ok(());
        }
        self.stdin.shutdown().await
    }

    /// The spec as the launcher reads it: one line of JSON.
    async fn write_spec(&mut self, spec: &LaunchSpec) -> std::io::Result<()> {
        self.exit_key.clone_from(&spec.exit_key);
        let mut json = serde_json::to_vec(spec)?;
        json.push(b'\n');
        self.stdin.write_all(&json).await
    }

    /// Tells the guest booted ahead that its task is on its drive; it starts at once. The line
    /// carries the host's clock (Unix seconds and nanoseconds) and 32 bytes of fresh entropy
    /// (hex), since a guest restored from a snapshot has the template's clock and random state,
    /// and the key of its exit line (`backend::guest_exit`):
    /// `NX-GO <secs>.<nanos> <hex> <key>`.
    pub async fn go(&mut self) -> std::io::Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let line = format!(
            "{GO} {}.{:09} {} {}\n",
            now.as_secs(),
            now.subsec_nanos(),
            hex::encode(seed),
            self.exit_key.as_deref().unwrap_or_default()
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

/// A warm slot taken with [`Pool::borrow`]: [`Loan::give_back`] returns it once its task has
/// ended well; dropped instead, it lets the pool start a unit in its place.
pub struct Loan {
    pool: Arc<Pool>,
    generation: u64,
    open: bool,
}

impl Loan {
    /// Returns the slot (see [`Slot::after`]) to the pool.
    pub fn give_back(mut self, slot: Slot) {
        self.open = false;
        self.pool.give_back(slot, self.generation);
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        if self.open {
            self.pool.forfeit();
        }
    }
}

fn pipe_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// How many started units a pool keeps ready: `min` when tasks come seldom, up to `max` when
/// they come faster than it refills (`max` is at least `min`; both 0: no pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolBounds {
    /// Units kept ready when tasks come seldom (`tasks.pool_size`).
    pub min: usize,
    /// Units kept ready at most while tasks find the pool empty (`tasks.pool_max`).
    pub max: usize,
}

/// How many units a pool keeps ready now, as demand moves it between its bounds.
#[derive(Debug, Clone, Copy)]
struct Demand {
    bounds: PoolBounds,
    target: usize,
    /// When a take last found the pool empty.
    last_miss: Option<Instant>,
}

impl Demand {
    fn new(bounds: PoolBounds) -> Self {
        Self {
            bounds,
            target: bounds.min,
            last_miss: None,
        }
    }

    /// A take found the pool empty at `now`: keep one more, up to the most.
    fn missed(&mut self, now: Instant) {
        self.target = (self.target + 1).min(self.bounds.max);
        self.last_miss = Some(now);
    }

    /// Whether the pool keeps more than its fewest (a shrink is due later).
    fn grown(&self) -> bool {
        self.target > self.bounds.min
    }

    /// The shrink check at `now`: one fewer if no take found the pool empty in the last
    /// [`SHRINK_AFTER`], down to the fewest.
    fn shrink(&mut self, now: Instant) {
        if self
            .last_miss
            .is_none_or(|t| now.saturating_duration_since(t) >= SHRINK_AFTER)
        {
            self.target = self.target.saturating_sub(1).max(self.bounds.min);
        }
    }
}

/// What a pool holds and is doing, under its lock.
struct Fill {
    slots: Vec<Slot>,
    demand: Demand,
    /// Units being started for the pool now.
    starting: usize,
    /// Units taken that may come back after their task ([`Loan`]).
    lent: usize,
    /// Whether a shrink is scheduled.
    shrinking: bool,
    /// A start failed: no more until the next take (no loop against a manager that refuses).
    failed: bool,
    /// Bumped when the manager died: units started before are not kept.
    generation: u64,
}

pub struct Pool {
    supervisor: Arc<Supervisor>,
    launcher: PathBuf,
    limits: Limits,
    fill: Mutex<Fill>,
    boot: Option<BootAhead>,
    /// Where each unit started for the pool is timed (step `refill`), if anywhere.
    steps: Option<StepDurations>,
}

impl Pool {
    pub fn new(
        supervisor: Arc<Supervisor>,
        launcher: PathBuf,
        limits: Limits,
        bounds: PoolBounds,
        boot: Option<BootAhead>,
        steps: Option<StepDurations>,
    ) -> Self {
        let bounds = PoolBounds {
            min: bounds.min,
            max: bounds.max.max(bounds.min),
        };
        Self {
            supervisor,
            launcher,
            limits,
            fill: Mutex::new(Fill {
                slots: Vec::new(),
                demand: Demand::new(bounds),
                starting: 0,
                lent: 0,
                shrinking: false,
                failed: false,
                generation: 0,
            }),
            boot,
            steps,
        }
    }

    fn fill(&self) -> MutexGuard<'_, Fill> {
        self.fill.lock().expect("pool lock")
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Warm units ready now.
    pub fn ready(&self) -> usize {
        self.fill().slots.len()
    }

    /// Warm units the pool keeps now (within its bounds).
    pub fn size(&self) -> usize {
        self.fill().demand.target
    }

    /// Starts one task unit (a cold start when the pool is empty).
    #[tracing::instrument(skip_all)]
    pub async fn start_slot(&self) -> Result<Slot, SupervisorError> {
        let mut bytes = [0u8; 6];
        rand::thread_rng().fill_bytes(&mut bytes);
        let id = hex::encode(bytes);
        let unit = format!("nxt-{id}.service");
        let io = |e: std::io::Error| SupervisorError::Embedded(format!("task pipes: {e}"));
        // A socket, not a pipe: the task's sandbox reports its end back on it.
        let (stdin, stdin_unit) = std::os::unix::net::UnixStream::pair().map_err(io)?;
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
                stdin: stdin_unit.into(),
                stdout: stdout_unit,
                stderr: stderr_unit,
            })),
            restart: Restart::No,
            slice: SliceKind::Tasks,
            remain_after_exit: false,
            ambient_capabilities: 0,
            cpu_affinity: Vec::new(),
            graceful_stop: None,
        };
        // The name is new (random): no failed unit of it to clear first.
        self.supervisor.start(&spec).await?;
        // systemd holds its own copies now; ours must go, or the task's end never shows as EOF.
        drop(spec);
        Ok(Slot {
            unit: TaskUnit { id, name: unit },
            warm: None,
            stdin: {
                stdin.set_nonblocking(true).map_err(io)?;
                UnixStream::from_std(stdin).map_err(io)?
            },
            stdout: pipe::Receiver::from_owned_fd(stdout).map_err(io)?,
            stderr: pipe::Receiver::from_owned_fd(stderr).map_err(io)?,
            served: 0,
            exit_key: None,
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

    /// A warm slot, if one is ready; the pool refills in the background. A take that finds
    /// the pool empty makes it keep one more (up to its most).
    pub fn take(self: &Arc<Self>) -> Option<Slot> {
        self.take_one(false).map(|(slot, _)| slot)
    }

    /// As [`Pool::take`], but the slot may come back once its task has ended
    /// ([`Loan::give_back`]): until then, or until the loan is dropped, the pool does not start
    /// a unit in its place.
    pub fn borrow(self: &Arc<Self>) -> Option<(Slot, Loan)> {
        self.take_one(true)
            .map(|(slot, loan)| (slot, loan.expect("a lent slot")))
    }

    fn take_one(self: &Arc<Self>, lend: bool) -> Option<(Slot, Option<Loan>)> {
        let taken = {
            let mut fill = self.fill();
            let slot = fill.slots.pop();
            if slot.is_none() {
                fill.demand.missed(Instant::now());
                tracing::debug!(target = fill.demand.target, "a task found the pool empty");
            }
            fill.failed = false;
            let generation = fill.generation;
            slot.map(|slot| {
                let loan = lend.then(|| {
                    fill.lent += 1;
                    Loan {
                        pool: Arc::clone(self),
                        generation,
                        open: true,
                    }
                });
                (slot, loan)
            })
        };
        self.refill();
        taken
    }

    /// A lent slot back: kept ready if the pool has room for it, is of the same manager and
    /// has served fewer than [`MAX_SERVED`] tasks; else dropped, which closes its launcher's
    /// standard input, and the launcher and its unit end.
    fn give_back(self: &Arc<Self>, slot: Slot, generation: u64) {
        let surplus = {
            let mut fill = self.fill();
            fill.lent -= 1;
            let room = fill.slots.len() + fill.starting + fill.lent < fill.demand.target;
            if room && generation == fill.generation && slot.served < MAX_SERVED {
                fill.slots.push(slot);
                None
            } else {
                Some(slot)
            }
        };
        if let Some(slot) = surplus {
            tracing::debug!(unit = %slot.unit.name, served = slot.served, "a task unit retires");
            drop(slot);
            self.refill();
        }
    }

    /// A lent slot that does not come back: the pool may start a unit in its place.
    fn forfeit(self: &Arc<Self>) {
        self.fill().lent -= 1;
        self.refill();
    }

    /// Forgets every warm slot (their units died with the manager) and refills.
    pub fn restart(self: &Arc<Self>) {
        let gone = {
            let mut fill = self.fill();
            fill.generation += 1;
            fill.failed = false;
            std::mem::take(&mut fill.slots)
        };
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

    /// Starts units until the pool holds what it keeps (up to [`STARTS_AT_ONCE`] at a time, a
    /// pool that boots ahead one), and schedules its shrink when it keeps more than its fewest.
    pub fn refill(self: &Arc<Self>) {
        let at_once = match self.boot {
            Some(_) => 1,
            None => STARTS_AT_ONCE,
        };
        let mut fill = self.fill();
        while !fill.failed
            && fill.slots.len() + fill.starting + fill.lent < fill.demand.target
            && fill.starting < at_once
        {
            fill.starting += 1;
            let (pool, generation) = (Arc::clone(self), fill.generation);
            tokio::spawn(async move {
                let started = Instant::now();
                let slot = pool.fill_one().await;
                if let (Some(steps), Ok(_)) = (&pool.steps, &slot) {
                    steps.observe("refill", started.elapsed());
                }
                let stale = {
                    let mut fill = pool.fill();
                    fill.starting -= 1;
                    match slot {
                        Ok(slot) if fill.generation == generation => {
                            fill.slots.push(slot);
                            None
                        }
                        Ok(slot) => Some(slot),
                        Err(e) => {
                            tracing::error!(error = %e, "cannot start a warm task unit");
                            fill.failed = true;
                            None
                        }
                    }
                };
                if let Some(slot) = stale {
                    pool.discard(vec![slot]).await;
                }
                pool.refill();
            });
        }
        if fill.demand.grown() && !fill.shrinking {
            fill.shrinking = true;
            tokio::spawn(Arc::clone(self).shrink());
        }
    }

    /// Every [`SHRINK_AFTER`] with no take that found the pool empty, keeps one unit fewer
    /// (stopping what it holds beyond that), until it keeps its fewest.
    async fn shrink(self: Arc<Self>) {
        loop {
            tokio::time::sleep(SHRINK_AFTER).await;
            let (surplus, done) = {
                let mut fill = self.fill();
                fill.demand.shrink(Instant::now());
                let keep = fill.demand.target.min(fill.slots.len());
                let surplus = fill.slots.split_off(keep);
                let done = !fill.demand.grown();
                fill.shrinking = !done;
                (surplus, done)
            };
            self.discard(surplus).await;
            if done {
                return;
            }
        }
    }

    /// Stops the units of slots the pool no longer keeps.
    async fn discard(&self, slots: Vec<Slot>) {
        for slot in slots {
            if let Err(e) = self.supervisor.stop(&slot.unit.name).await {
                tracing::warn!(unit = %slot.unit.name, error = %e, "stopping a warm task unit");
            }
            if let (Some(boot), Some(warm)) = (&self.boot, &slot.warm) {
                boot.backend.forget_warm(warm).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demand_grows_the_pool_to_its_most_and_idleness_shrinks_it_to_its_fewest() {
        let mut demand = Demand::new(PoolBounds { min: 2, max: 4 });
        assert_eq!(demand.target, 2);
        assert!(!demand.grown());
        let t0 = Instant::now();
        for _ in 0..3 {
            demand.missed(t0);
        }
        assert_eq!(demand.target, 4, "no more than the most");
        assert!(demand.grown());
        // A take found it empty lately: it keeps its size.
        demand.shrink(t0 + SHRINK_AFTER / 2);
        assert_eq!(demand.target, 4);
        // Then one fewer per quiet period, down to the fewest.
        demand.shrink(t0 + SHRINK_AFTER);
        assert_eq!(demand.target, 3);
        demand.shrink(t0 + SHRINK_AFTER * 2);
        demand.shrink(t0 + SHRINK_AFTER * 3);
        assert_eq!(demand.target, 2, "no fewer than the fewest");
        assert!(!demand.grown());
    }

    #[test]
    fn a_pool_without_room_to_grow_keeps_its_size() {
        let mut demand = Demand::new(PoolBounds { min: 0, max: 0 });
        demand.missed(Instant::now());
        assert_eq!(demand.target, 0);
        assert!(!demand.grown());
    }
}
