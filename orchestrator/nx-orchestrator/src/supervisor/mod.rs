//! Every deployment is a transient systemd service, started and watched over D-Bus (zbus).
//! The manager is the host's systemd on the system bus, or, where none answers (a dev box, CI),
//! a private one that nxd starts and owns (see `embedded`).

mod cpu_time;
mod dbus_api;
#[cfg(target_os = "linux")]
pub mod embedded;
#[cfg(target_os = "linux")]
mod favordynmods;
pub mod service;
pub mod unit_states;

use crate::api::systemd::{ActiveState, SubState};
use crate::api::UnitState;
use crate::config::{Limits, SystemdMode};
use dbus_api::{ManagerProxy, ServiceProxy, UnitProxy};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zbus::proxy::CacheProperties;
use zbus::zvariant::{Fd, Value};

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("systemd over D-Bus: {0}")]
    Bus(#[from] zbus::Error),
    #[error("no systemd manager answers on the system bus ({0}); set systemd.mode = \"embedded\" or run nxd where systemd is PID 1")]
    NoSystemBus(String),
    #[error("embedded systemd manager: {0}")]
    Embedded(String),
    #[error("unit log file {path}: {source}")]
    LogFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A unit waited for by [`Supervisor::wait_ended`] reads `inactive`/`dead` without having
    /// run to its end: something stopped it, or systemd lost it (a manager started again
    /// forgets the transient units of the one before and loads the name afresh, inactive).
    #[error("unit {unit} is gone before it ran to its end ({how}): the systemd manager was started again (which forgets transient units) or something stopped the unit")]
    Vanished { unit: String, how: &'static str },
    /// The manager did not answer a question within the time the asker waits.
    #[error("the systemd manager did not say within {within:?} {what}")]
    NoAnswer {
        what: String,
        within: std::time::Duration,
    },
    #[error("unit {unit} did not reach {wanted} within {secs} s (it is {state})")]
    Timeout {
        unit: String,
        wanted: &'static str,
        secs: u64,
        state: String,
    },
}

const STOP_TIMEOUT_USEC: u64 = 5_000_000;
/// How long a stop waits after telling a unit's main process that its timeout passed (see
/// [`StopTimeout`]), before every process of the unit gets SIGKILL.
pub const TOLD_MAIN_WAIT: Duration = Duration::from_secs(5);

/// What [`Supervisor::stop_within`] does when a unit outlives its stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopTimeout {
    /// How long the unit's processes may take to end after the stop's signal.
    pub after: Duration,
    /// A signal for the unit's main process alone when `after` has passed (a monitor that
    /// kills the other processes and says why); `None`: every process gets SIGKILL at once.
    pub tell_main: Option<i32>,
}

/// What a unit runs and under which limits.
#[derive(Debug, Clone)]
pub struct UnitSpec {
    pub name: String,
    pub description: String,
    pub argv: Vec<String>,
    /// Run as this user (and its primary group); `None` runs as root.
    pub user: Option<String>,
    pub limits: Option<Limits>,
    pub output: UnitOutput,
    /// Whether and when systemd starts its process again.
    pub restart: Restart,
    /// `Some(t)`: a stop sends SIGTERM to the main process alone (`KillMode=mixed`), which
    /// passes it on, and systemd kills what still runs after `t` (`TimeoutStopSec`; a shorter
    /// timeout is `stop_within`'s). `None`: every process gets SIGTERM, and SIGKILL after 5 s.
    /// (systemd.kill(5))
    pub graceful_stop: Option<Duration>,
    /// Whose work it is: the tenants' (`nx.slice`) or the control plane's ([`CONTROL_SLICE`]).
    pub slice: SliceKind,
    /// `RemainAfterExit=yes`: after its process exited successfully the unit stays active
    /// (sub-state `exited`) until it is stopped, so that a caller waiting for a run to end
    /// tells "ended" from "not started yet" (a unit whose start job still waits is inactive
    /// too). systemd.service(5)
    pub remain_after_exit: bool,
    /// `AmbientCapabilities=`: capabilities (a capabilities(7) bit mask, bit n for capability
    /// n, e.g. `1 << 10` for `CAP_NET_BIND_SERVICE`) the unit's process keeps when it runs as
    /// a user other than root; 0 for none. systemd.exec(5)
    pub ambient_capabilities: u64,
    /// `CPUAffinity=`: the CPUs its processes may run on (a persistent deployment's, see
    /// `backend::cpu_affinity`); empty: every CPU. systemd.exec(5)
    pub cpu_affinity: Vec<u32>,
}

impl UnitSpec {
    /// A control-plane job that runs once to its end as root (a database tool, a volume job):
    /// its output goes to the file `log`, and it stays active after a successful exit
    /// (`remain_after_exit`) so that [`Supervisor::wait_ended`] tells "ended" from "not started
    /// yet"; no limits, no restart, every process stopped together.
    pub fn run_to_end(name: String, description: String, argv: Vec<String>, log: PathBuf) -> Self {
        Self {
            name,
            description,
            argv,
            user: None,
            limits: None,
            output: UnitOutput::File(log),
            restart: Restart::No,
            slice: SliceKind::Control,
            graceful_stop: None,
            remain_after_exit: true,
            ambient_capabilities: 0,
            cpu_affinity: Vec::new(),
        }
    }
}

/// When systemd starts a unit's process again (`Restart=`), and after how long (`RestartSec=`);
/// systemd.service(5). A unit that was stopped is never started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Never (`Restart=no`).
    No,
    /// After an exit code other than 0, a signal or a timeout (`Restart=on-failure`).
    OnFailure(Duration),
    /// Whenever its process ends, a clean exit too (`Restart=always`).
    Always(Duration),
}

/// The slice a unit runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SliceKind {
    /// The configured slice itself (`systemd.slice`, default `nx.slice`), with
    /// [`TENANTS_CPU_WEIGHT`] and the overall caps of [`SliceCaps`] (nx-bench's bare units).
    Tenants,
    /// A task (`nx run-task`): [`TASKS_SLICE`] inside the tenants' slice, capped at
    /// [`SliceCaps::tasks_slice_tasks_max`] tasks for all tasks together.
    Tasks,
    /// A deployment of the sandbox of this name: the sandbox's own slice inside the tenants'
    /// ([`sandbox_slice`]), capped at [`SliceCaps::sandbox_tasks_max`] tasks.
    Sandbox(String),
    /// PostgreSQL, the router, pg_dump and pg_restore: [`CONTROL_SLICE`].
    Control,
}

/// The control plane's slice (not a child of `nx.slice`: a dash would make it one).
pub const CONTROL_SLICE: &str = "nxd.slice";
/// `CPUWeight` of the control plane's slice: under contention it gets 50 times the tenants'
/// CPU (systemd.resource-control(5); on cgroup v1 systemd writes it as `cpu.shares`).
pub const CONTROL_CPU_WEIGHT: u64 = 1000;
/// `CPUWeight` of the tenants' slice.
pub const TENANTS_CPU_WEIGHT: u64 = 20;

/// The slice of every task inside `nx.slice`, by its name's end: `nx-run_task.slice`. No
/// sandbox's slice has this name ([`sandbox_slice`]: no sandbox name holds a `_`).
pub const TASKS_SLICE: &str = "run_task";

/// The slice of one sandbox's deployments inside `tenants` (e.g. `nx.slice`): `nx-web.slice`
/// for sandbox `web`. A `-` in a slice's name means nesting (systemd.slice(5)), so the
/// sandbox name's dashes become `_`, which no sandbox name holds: `my-app` is `nx-my_app.slice`.
pub fn sandbox_slice(tenants: &str, sandbox: &str) -> String {
    format!(
        "{}-{}.slice",
        tenants.trim_end_matches(".slice"),
        sandbox.replace('-', "_")
    )
}

/// What all tenants together may take, so that no fork bomb or memory hog starves the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceCaps {
    /// `TasksMax` of the tenants' slice.
    pub tasks_max: u64,
    /// `TasksMax` of each sandbox's slice within it (below `tasks_max`: one sandbox at its
    /// limit leaves room for the others).
    pub sandbox_tasks_max: u64,
    /// `TasksMax` of the tasks' slice within it (below `tasks_max`: tasks at their limit leave
    /// room for deployments).
    pub tasks_slice_tasks_max: u64,
    /// `MemoryMax` of the tenants' slice, in bytes.
    pub memory_max_bytes: u64,
}

/// Starts `slice` as a transient unit with `props` (an idle slice that was merely loaded would
/// be unloaded again, and its properties with it); one that exists gets them as runtime
/// properties, as `systemctl set-property --runtime` does.
async fn start_slice(
    manager: &ManagerProxy<'_>,
    slice: &str,
    props: &[(&str, Value<'_>)],
) -> Result<(), SupervisorError> {
    match manager
        .start_transient_unit(slice, "fail", props, &[])
        .await
    {
        Ok(_) => Ok(()),
        Err(zbus::Error::MethodError(name, _, _))
            if name.as_str() == "org.freedesktop.systemd1.UnitExists" =>
        {
            Ok(manager.set_unit_properties(slice, true, props).await?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Where a unit's standard streams go.
#[derive(Debug, Clone)]
pub enum UnitOutput {
    /// stdout and stderr are appended to this file (a deployment's log).
    File(PathBuf),
    /// stdin, stdout and stderr are these ends of pipes (stdin: of a socket pair), passed to
    /// systemd over D-Bus (a task's live output). systemd holds its copies until the unit
    /// ends, so the reader sees EOF then.
    Pipes(Arc<TaskPipes>),
}

/// The unit's ends of a task's pipes.
#[derive(Debug)]
pub struct TaskPipes {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Creates a unit's log file for root alone (0600) before systemd appends to it (systemd
/// would create it 0644), and makes an existing one so: a program's output is its own.
/// A CPU list as the bit mask systemd's D-Bus `CPUAffinity` property takes (`ay`: byte `i`
/// holds CPUs `8i` to `8i + 7`, least significant bit first, as a `cpu_set_t`).
fn cpu_set_bytes(cpus: &[u32]) -> Vec<u8> {
    let len = cpus.iter().max().map_or(0, |&max| max as usize / 8 + 1);
    let mut bytes = vec![0u8; len];
    for &cpu in cpus {
        bytes[cpu as usize / 8] |= 1 << (cpu % 8);
    }
    bytes
}

#[cfg(test)]
#[test]
fn a_cpu_list_becomes_cpu_set_bytes() {
    assert_eq!(cpu_set_bytes(&[]), Vec::<u8>::new());
    assert_eq!(cpu_set_bytes(&[0]), [0b1]);
    assert_eq!(cpu_set_bytes(&[1, 3]), [0b1010]);
    assert_eq!(cpu_set_bytes(&[9]), [0, 0b10]);
}

fn private_log(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Units whose state nxd asks systemd for at once, on one connection and from every caller
/// together (`nx ls`, adoption, readiness and stop waits). Each is one `GetAll` (see
/// `unit_states`), and dbus-daemon answers a connection with more pending replies than its
/// `max_replies_per_connection` (128 on a system bus, dbus-daemon(1)) with `LimitsExceeded`. Callers that fan out over units use the same number, so that
/// none of them queues more work than can run.
pub const UNITS_IN_FLIGHT: usize = 8;

/// Between the asks of [`Supervisor::keep_state`].
pub const KEEP_STATE_PAUSE: Duration = Duration::from_millis(10);

pub struct Supervisor {
    /// Swapped for a new one when the embedded manager is started again ([`Self::revive`]).
    conn: arc_swap::ArcSwap<zbus::Connection>,
    /// The embedded manager's state dir; `None` for the host's systemd.
    embedded: Option<PathBuf>,
    slice: String,
    /// `TasksMax` of each sandbox's slice ([`SliceCaps::sandbox_tasks_max`], set by
    /// [`Self::configure_slices`]; `u64::MAX`, systemd's "infinity", until then).
    sandbox_tasks_max: std::sync::atomic::AtomicU64,
    /// Where the manager came from: "system" or the embedded manager's directory.
    origin: String,
    /// Units' states, kept by systemd's signals on the current connection; it also holds the
    /// [`UNITS_IN_FLIGHT`] permits, one taken by each unit's `GetAll` in progress.
    units: Arc<unit_states::UnitCache>,
    /// The cgroup directories each unit asked of [`Self::unit_pids`] was last found in, by
    /// unit name: its processes are read there without asking the manager while one of them
    /// is there (a unit's cgroup path is its slice's and its name: the same after a restart).
    pid_dirs: std::sync::Mutex<std::collections::HashMap<String, Vec<PathBuf>>>,
}

/// What connecting to the embedded manager found: one that answered (its units run on), or
/// none, so nxd started one (whatever the last one ran died with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagerFound {
    Running,
    Started,
}

impl Supervisor {
    /// The embedded manager (Linux only: it is namespaces and cgroups).
    async fn connect_embedded(
        state_dir: &Path,
    ) -> Result<(zbus::Connection, String, ManagerFound), SupervisorError> {
        #[cfg(target_os = "linux")]
        return embedded::connect(state_dir).await;
        #[cfg(not(target_os = "linux"))]
        return Err(SupervisorError::Embedded(format!(
            "the embedded manager runs on Linux only (state dir {})",
            state_dir.display()
        )));
    }

    /// Connects to the manager the config asks for.
    #[tracing::instrument(skip_all, fields(mode = ?mode))]
    pub async fn connect(
        mode: SystemdMode,
        state_dir: &Path,
        slice: &str,
    ) -> Result<Self, SupervisorError> {
        let system = || async {
            let conn = zbus::Connection::system().await?;
            ManagerProxy::new(&conn).await?.version().await?;
            Ok::<_, zbus::Error>(conn)
        };
        let (conn, origin) = match mode {
            SystemdMode::System => (
                system()
                    .await
                    .map_err(|e| SupervisorError::NoSystemBus(e.to_string()))?,
                "system".to_string(),
            ),
            SystemdMode::Embedded => {
                let (conn, origin, _) = Self::connect_embedded(state_dir).await?;
                (conn, origin)
            }
            SystemdMode::Auto => match tokio::time::timeout(Duration::from_secs(2), system()).await
            {
                Ok(Ok(conn)) => (conn, "system".to_string()),
                _ => {
                    let (conn, origin, _) = Self::connect_embedded(state_dir).await?;
                    (conn, origin)
                }
            },
        };
        tracing::info!(%origin, "connected to systemd");
        let units = Arc::new(unit_states::UnitCache::default());
        unit_states::watch(&conn, &units).await;
        Ok(Self {
            conn: arc_swap::ArcSwap::from_pointee(conn),
            embedded: (origin != "system").then(|| state_dir.to_owned()),
            slice: slice.to_owned(),
            sandbox_tasks_max: u64::MAX.into(),
            origin,
            units,
            pid_dirs: Default::default(),
        })
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Whether the manager answers (its version, over D-Bus) within `timeout`.
    pub async fn answers(&self, timeout: Duration) -> bool {
        let ask = async { Ok::<_, SupervisorError>(self.manager().await?.version().await?) };
        matches!(tokio::time::timeout(timeout, ask).await, Ok(Ok(_)))
    }

    /// Starts the embedded manager again after it died (everything it ran died with it) and
    /// talks to the new one from now on; or, when it answers again by then (it was slow, not
    /// dead: `ManagerFound::Running`), goes on with the connection it had, or a new one if
    /// that one does not answer. The host's systemd is not nxd's to start: an error.
    #[tracing::instrument(skip(self))]
    pub async fn revive(&self) -> Result<ManagerFound, SupervisorError> {
        let Some(state_dir) = &self.embedded else {
            return Err(SupervisorError::NoSystemBus(
                "the host's systemd stopped answering".into(),
            ));
        };
        let (conn, _, found) = Self::connect_embedded(state_dir).await?;
        if found == ManagerFound::Running && self.answers(Duration::from_secs(2)).await {
            // The old connection answers again: it stays, with its watch of units' states (a
            // second watch would feed the same cache from two connections); the new one goes.
            return Ok(found);
        }
        unit_states::watch(&conn, &self.units).await;
        self.conn.store(Arc::new(conn));
        if found == ManagerFound::Started {
            tracing::warn!("embedded systemd manager started again");
        }
        Ok(found)
    }

    async fn manager(&self) -> Result<ManagerProxy<'static>, SupervisorError> {
        Ok(ManagerProxy::new(&self.conn.load_full()).await?)
    }

    /// Starts `spec` as a transient service: one D-Bus call (with its sandbox's slice set up
    /// first), and a failed unit of the same name cleared only when systemd refuses the start
    /// for it (an upfront `ResetFailedUnit` cost every push a round trip: issue 20).
    #[tracing::instrument(skip_all, fields(unit = %spec.name))]
    pub async fn start(&self, spec: &UnitSpec) -> Result<(), SupervisorError> {
        let manager = self.manager().await?;
        let slice = match &spec.slice {
            SliceKind::Tenants => self.slice.clone(),
            SliceKind::Tasks => sandbox_slice(&self.slice, TASKS_SLICE),
            SliceKind::Sandbox(sandbox) => {
                let slice = sandbox_slice(&self.slice, sandbox);
                let tasks_max = self.sandbox_tasks_max.load(Ordering::Relaxed);
                let caps = vec![
                    ("TasksAccounting", true.into()),
                    ("TasksMax", tasks_max.into()),
                ];
                start_slice(&manager, &slice, &caps).await?;
                slice
            }
            SliceKind::Control => CONTROL_SLICE.to_owned(),
        };
        let exec = vec![(spec.argv[0].clone(), spec.argv.clone(), false)];
        let mut props: Vec<(&str, Value<'_>)> = vec![
            ("Description", spec.description.as_str().into()),
            ("ExecStart", Value::from(exec)),
            ("Slice", slice.as_str().into()),
            ("MemoryAccounting", true.into()),
            ("TasksAccounting", true.into()),
            ("CPUAccounting", true.into()),
        ];
        match spec.graceful_stop {
            Some(timeout) => {
                props.push(("KillMode", "mixed".into()));
                props.push(("TimeoutStopUSec", (timeout.as_micros() as u64).into()));
            }
            // A program that ignores SIGTERM is killed after this.
            None => props.push(("TimeoutStopUSec", STOP_TIMEOUT_USEC.into())),
        }
        let log;
        match &spec.output {
            UnitOutput::File(path) => {
                private_log(path).map_err(|source| SupervisorError::LogFile {
                    path: path.clone(),
                    source,
                })?;
                log = path.display().to_string();
                props.push(("StandardOutputFileToAppend", log.as_str().into()));
                props.push(("StandardErrorFileToAppend", log.as_str().into()));
            }
            UnitOutput::Pipes(pipes) => {
                props.push((
                    "StandardInputFileDescriptor",
                    Fd::from(pipes.stdin.as_fd()).into(),
                ));
                props.push((
                    "StandardOutputFileDescriptor",
                    Fd::from(pipes.stdout.as_fd()).into(),
                ));
                props.push((
                    "StandardErrorFileDescriptor",
                    Fd::from(pipes.stderr.as_fd()).into(),
                ));
            }
        }
        if let Some(user) = &spec.user {
            // The user's primary group comes with it.
            props.push(("User", user.as_str().into()));
        }
        if let Some(limits) = spec.limits {
            props.push(("MemoryMax", (limits.memory_max_mb << 20).into()));
            props.push(("TasksMax", limits.tasks_max.into()));
            props.push((
                "CPUQuotaPerSecUSec",
                (u64::from(limits.cpu_quota_percent) * 10_000).into(),
            ));
        }
        if spec.remain_after_exit {
            props.push(("RemainAfterExit", true.into()));
        }
        if spec.ambient_capabilities != 0 {
            props.push(("AmbientCapabilities", spec.ambient_capabilities.into()));
        }
        if !spec.cpu_affinity.is_empty() {
            props.push(("CPUAffinity", cpu_set_bytes(&spec.cpu_affinity).into()));
        }
        let (restart, delay) = match spec.restart {
            Restart::No => ("no", None),
            Restart::OnFailure(delay) => ("on-failure", Some(delay)),
            Restart::Always(delay) => ("always", Some(delay)),
        };
        props.push(("Restart", restart.into()));
        if let Some(delay) = delay {
            props.push(("RestartUSec", (delay.as_micros() as u64).into()));
        }
        // A unit of the same name that failed stays loaded until its failure is reset, and
        // one that just stopped is unloaded by systemd a moment later; until then a new
        // transient unit of that name is refused with UnitExists. The reset is asked only
        // then (a new unit's start is one round trip), and the first retry is at once.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut reset = false;
        loop {
            match manager
                .start_transient_unit(&spec.name, "replace", &props, &[])
                .await
            {
                Ok(_) => break,
                Err(zbus::Error::MethodError(name, _, _))
                    if name.as_str() == "org.freedesktop.systemd1.UnitExists"
                        && Instant::now() < deadline =>
                {
                    let _ = manager.reset_failed_unit(&spec.name).await;
                    if std::mem::replace(&mut reset, true) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        tracing::info!("unit started");
        Ok(())
    }

    /// Stops a unit and waits until it is gone or inactive.
    pub async fn stop(&self, unit: &str) -> Result<(), SupervisorError> {
        self.stop_within(unit, None).await
    }

    /// Stops a unit and waits until it is gone or inactive. `timeout` (when given, and when
    /// shorter than what the unit was started with): after `timeout.after`, the unit's main
    /// process alone gets `timeout.tell_main` if given (a monitor that kills the rest itself
    /// and says so), and every process of the unit still left [`TOLD_MAIN_WAIT`] later (at
    /// once without `tell_main`) gets SIGKILL (`TimeoutStopSec` cannot change on a running
    /// unit).
    #[tracing::instrument(skip(self))]
    pub async fn stop_within(
        &self,
        unit: &str,
        timeout: Option<StopTimeout>,
    ) -> Result<(), SupervisorError> {
        let manager = self.manager().await?;
        match manager.stop_unit(unit, "replace").await {
            Ok(_) => {}
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
            {
                return Ok(())
            }
            Err(e) => return Err(e.into()),
        }
        let down = |s: &UnitState| s.active.is_down();
        let wait = timeout.map_or(Duration::from_secs(20), |t| t.after);
        match (self.wait_for(unit, "inactive", wait, down).await, timeout) {
            (Ok(_), _) => {}
            (Err(SupervisorError::Timeout { .. }), Some(timeout)) => {
                if let Some(signal) = timeout.tell_main {
                    tracing::info!(signal, "stop timeout reached: telling the main process");
                    let told = manager.kill_unit(unit, "main", signal).await.is_ok()
                        && self
                            .wait_for(unit, "inactive", TOLD_MAIN_WAIT, down)
                            .await
                            .is_ok();
                    if told {
                        let _ = manager.reset_failed_unit(unit).await;
                        return Ok(());
                    }
                }
                tracing::info!("stop timeout reached: SIGKILL");
                let _ = self.kill(unit, nix::libc::SIGKILL).await;
                self.wait_for(unit, "inactive", Duration::from_secs(10), down)
                    .await?;
            }
            (Err(e), _) => return Err(e),
        }
        let _ = manager.reset_failed_unit(unit).await;
        Ok(())
    }

    /// Restarts a unit (stop, then start, as `systemctl restart`) and waits until it is active.
    #[tracing::instrument(skip(self))]
    pub async fn restart(&self, unit: &str) -> Result<(), SupervisorError> {
        self.manager().await?.restart_unit(unit, "replace").await?;
        self.wait_for(unit, "active", Duration::from_secs(30), |s| {
            s.active == ActiveState::Active
        })
        .await?;
        Ok(())
    }

    /// Sets the slices' weights, the tenants' overall caps and the tasks' slice's (see
    /// [`start_slice`]); each sandbox's slice gets `caps.sandbox_tasks_max` when a deployment of
    /// it starts next.
    #[tracing::instrument(skip(self))]
    pub async fn configure_slices(&self, caps: SliceCaps) -> Result<(), SupervisorError> {
        self.sandbox_tasks_max
            .store(caps.sandbox_tasks_max, Ordering::Relaxed);
        let tenants: Vec<(&str, Value<'_>)> = vec![
            ("CPUWeight", TENANTS_CPU_WEIGHT.into()),
            ("TasksAccounting", true.into()),
            ("TasksMax", caps.tasks_max.into()),
            ("MemoryAccounting", true.into()),
            ("MemoryMax", caps.memory_max_bytes.into()),
        ];
        let control: Vec<(&str, Value<'_>)> = vec![("CPUWeight", CONTROL_CPU_WEIGHT.into())];
        let tasks: Vec<(&str, Value<'_>)> = vec![
            ("TasksAccounting", true.into()),
            ("TasksMax", caps.tasks_slice_tasks_max.into()),
        ];
        let manager = self.manager().await?;
        // The tenants' slice first: the tasks' slice is inside it.
        let tasks_slice = sandbox_slice(&self.slice, TASKS_SLICE);
        for (slice, props) in [
            (self.slice.as_str(), tenants),
            (CONTROL_SLICE, control),
            (tasks_slice.as_str(), tasks),
        ] {
            start_slice(&manager, slice, &props).await?;
        }
        Ok(())
    }

    /// Unloads a unit that failed (systemd keeps a failed unit, its result and its cgroup's
    /// name, until this); a unit that did not fail is left as it is. `ResetFailedUnit`,
    /// org.freedesktop.systemd1(5).
    pub async fn reset_failed(&self, unit: &str) -> Result<(), SupervisorError> {
        Ok(self.manager().await?.reset_failed_unit(unit).await?)
    }

    /// Sends `signal` to every process of the unit.
    pub async fn kill(&self, unit: &str, signal: i32) -> Result<(), SupervisorError> {
        Ok(self.manager().await?.kill_unit(unit, "all", signal).await?)
    }

    /// Changes a running unit's memory limit.
    pub async fn set_memory_max(&self, unit: &str, bytes: u64) -> Result<(), SupervisorError> {
        let props: [(&str, Value<'_>); 1] = [("MemoryMax", bytes.into())];
        Ok(self
            .manager()
            .await?
            .set_unit_properties(unit, true, &props)
            .await?)
    }

    /// The live state of a unit, asked of systemd (one D-Bus call); a unit systemd does not
    /// know is `inactive`/`dead`. Waits its turn when [`UNITS_IN_FLIGHT`] units are being
    /// asked about already.
    pub async fn state(&self, unit: &str) -> Result<UnitState, SupervisorError> {
        Ok(unit_states::fetch(&self.conn.load_full(), &self.units, unit).await?)
    }

    /// The states of many units, in their order, for views: from the cache systemd's signals
    /// keep where it holds them (a running unit's memory and task counts at most
    /// [`unit_states::COUNTERS_MAX_AGE`] old), else in as few D-Bus calls as possible.
    #[tracing::instrument(skip_all, fields(units = units.len()))]
    pub async fn states(&self, units: &[&str]) -> Result<Vec<UnitState>, SupervisorError> {
        Ok(unit_states::fetch_many(&self.conn.load_full(), &self.units, units).await?)
    }

    /// Asks a unit's state until the cache keeps it (see [`Self::states`]), at most
    /// `tries` times, [`KEEP_STATE_PAUSE`] apart: a unit just started goes on changing for a
    /// few milliseconds after its start was answered (systemd sends its change signals once
    /// its job ran), and an answer received before a change signal of its unit is not kept.
    /// Returns whether the cache holds the unit's state. Errors: systemd's.
    pub async fn keep_state(&self, unit: &str, tries: u32) -> Result<bool, SupervisorError> {
        let path = unit_states::unit_path(unit);
        for _ in 0..tries {
            if self.units.get(&path).is_some() {
                return Ok(true);
            }
            self.states(&[unit]).await?;
            tokio::time::sleep(KEEP_STATE_PAUSE).await;
        }
        Ok(self.units.get(&path).is_some())
    }

    /// How many times what [`Self::states`] serves may have changed but for running units'
    /// counters (see [`unit_states::UnitCache::changes`]); `None` while every state is asked
    /// of systemd.
    pub fn states_changes(&self) -> Option<u64> {
        self.units.changes()
    }

    /// The cgroup path of a unit (relative to the hierarchy roots).
    pub async fn control_group(&self, unit: &str) -> Result<String, SupervisorError> {
        let path = self.manager().await?.load_unit(unit).await?;
        let service = ServiceProxy::builder(&self.conn.load_full())
            .path(path)?
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        Ok(service.control_group().await?)
    }

    /// The active state of a unit if systemd has it loaded, else `None` (one
    /// `ListUnitsByPatterns`: unlike a `GetAll` on its path, which makes systemd load a unit it
    /// has unloaded, searching every unit directory for its file, this loads nothing).
    pub async fn loaded_state(&self, unit: &str) -> Result<Option<ActiveState>, SupervisorError> {
        Ok(self
            .loaded(unit)
            .await?
            .into_iter()
            .find(|row| row.0 == unit)
            .map(|row| ActiveState::from(row.3)))
    }

    /// Names of loaded units matching a glob, e.g. `nx-*.service`.
    pub async fn list(&self, pattern: &str) -> Result<Vec<String>, SupervisorError> {
        Ok(self
            .loaded(pattern)
            .await?
            .into_iter()
            .map(|row| row.0)
            .collect())
    }

    /// systemd's rows of the loaded units matching a glob.
    async fn loaded(&self, pattern: &str) -> Result<Vec<dbus_api::UnitRow>, SupervisorError> {
        Ok(self
            .manager()
            .await?
            .list_units_by_patterns(&[], &[pattern])
            .await?)
    }

    /// Waits until a unit started with `remain_after_exit` has run to its end, polling every
    /// 50 ms, and returns its state: `failed`, or `active`/`exited` after a success. No time
    /// limit (a pg_dump or a volume copy takes as long as its data), but a unit that reads
    /// `inactive`/`dead` (it never does between its start and its end) has ended too, with
    /// [`SupervisorError::Vanished`]: when it was seen started before (something stopped it),
    /// or when no job of systemd's is queued to start it (the unit's `Job` property,
    /// org.freedesktop.systemd1(5): a start that was asked for is queued until it runs, so a
    /// unit inactive with none queued was lost, e.g. by a manager started again).
    pub async fn wait_ended(&self, unit: &str) -> Result<UnitState, SupervisorError> {
        let mut seen_started = false;
        loop {
            let state = self.state(unit).await?;
            if state.active == ActiveState::Failed || state.sub == SubState::Exited {
                return Ok(state);
            }
            if state.active != ActiveState::Inactive {
                seen_started = true;
            } else if seen_started {
                return Err(SupervisorError::Vanished {
                    unit: unit.into(),
                    how: "inactive after it ran",
                });
            } else if !self.job_queued(unit).await?
                && self.state(unit).await?.active == ActiveState::Inactive
            {
                // Asked again after the job: a start that ran in between left it active.
                return Err(SupervisorError::Vanished {
                    unit: unit.into(),
                    how: "inactive, and no start of it queued",
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// [`Self::wait_ended`], then the unit is stopped (unloaded: it stays `active`/`exited`
    /// until then); a failed stop is logged (the unit stays loaded until nxd's next start
    /// stops leftovers of its kind), the wait's outcome is returned.
    pub async fn wait_ended_then_stop(&self, unit: &str) -> Result<UnitState, SupervisorError> {
        let ended = self.wait_ended(unit).await;
        if let Err(e) = self.stop(unit).await {
            tracing::warn!(%unit, error = %e, "a unit that ran to its end could not be stopped: it stays loaded");
        }
        ended
    }

    /// Waits for a started [`UnitSpec::run_to_end`] job `unit` to end and stops it. Errors:
    /// when it failed, its output (the file `log` it wrote, removed here) and exit status; or
    /// the manager's error.
    pub async fn finish_job(&self, unit: &str, log: &Path) -> Result<(), String> {
        let ended = self.wait_ended_then_stop(unit).await;
        let output = std::fs::read_to_string(log).unwrap_or_default();
        let _ = std::fs::remove_file(log);
        let state = ended.map_err(|e| e.to_string())?;
        if state.active == ActiveState::Failed {
            return Err(format!(
                "{} (exit status {})",
                output.trim(),
                state.exit_status
            ));
        }
        Ok(())
    }

    /// Whether systemd has a job queued for the unit (its `Job` property is not `(0, "/")`).
    async fn job_queued(&self, unit: &str) -> Result<bool, SupervisorError> {
        let unit = UnitProxy::builder(&self.conn.load_full())
            .path(unit_states::unit_path(unit))?
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        Ok(unit.job().await?.0 != 0)
    }

    /// Polls a unit until `done` holds or `timeout` passes.
    pub async fn wait_for(
        &self,
        unit: &str,
        wanted: &'static str,
        timeout: Duration,
        done: impl Fn(&UnitState) -> bool,
    ) -> Result<UnitState, SupervisorError> {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.state(unit).await?;
            if done(&state) {
                return Ok(state);
            }
            if Instant::now() >= deadline {
                return Err(SupervisorError::Timeout {
                    unit: unit.into(),
                    wanted,
                    secs: timeout.as_secs(),
                    state: format!("{}/{}", state.active, state.sub),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
