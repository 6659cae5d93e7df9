//! Task benchmarks: start-to-first-output (from the request to the first line of the program's
//! stdout, through nxd's HTTP API) cold and from the warm pool, for bubblewrap and Podman; and
//! tasks per second of concurrent clients through nxd, against the same sandbox under bare
//! bubblewrap run the same way (its floor), in turns, with where nxd's time per task goes.

use nx_api::client::Client;
use nx_api::{TaskEvent, TaskRequest};
use nx_testkit::Host;
use std::time::{Duration, Instant};

/// Stores a file on a host; returns its sha256.
pub fn upload(host: &Host, file: &std::path::Path) -> anyhow::Result<String> {
    let (status, body, sha) = host.put_artifact(std::fs::read(file)?);
    anyhow::ensure!(status == 200, "upload: {status} {body}");
    Ok(sha)
}

/// The longest a measured task may run, in seconds.
const TASK_TIMEOUT_SECS: f64 = 300.0;

/// What one task took, seen by its client.
struct Ran {
    /// From the request to the first stdout.
    first: Duration,
    /// From the request to the end of the response (the task's `exited` and after).
    total: Duration,
    /// Whether it ran on a warm unit.
    warm: bool,
}

/// One task (on `backend`, nxd's default when `None`).
async fn one(client: &Client, sha: &str, backend: Option<&str>) -> anyhow::Result<Ran> {
    let started = Instant::now();
    let req = TaskRequest {
        artifact: sha.to_owned(),
        args: vec!["task".into(), "print".into(), "hi".into()],
        env: Default::default(),
        // Beyond nxd's default 30 s: a cold TCG guest on a loaded host boots for as long.
        timeout_secs: Some(TASK_TIMEOUT_SECS),
        memory_max_mb: None,
        backend: backend.map(str::to_owned),
    };
    let mut events = client.run_task(&req).await?;
    let (mut first, mut warm, mut exit) = (None, false, None);
    while let Some(event) = events.next().await? {
        match event {
            TaskEvent::Started { warm: w, .. } => warm = w,
            TaskEvent::Stdout { .. } if first.is_none() => first = Some(started.elapsed()),
            TaskEvent::Exited(outcome) => exit = outcome.exit_code,
            _ => {}
        }
    }
    anyhow::ensure!(exit == Some(0), "a task ended with {exit:?}");
    Ok(Ran {
        first: first.ok_or_else(|| anyhow::anyhow!("no output"))?,
        total: started.elapsed(),
        warm,
    })
}

/// The typed API client of a test host.
fn client(host: &Host) -> Client {
    Client::new(format!("http://{}", host.api), host.token.clone())
}

/// What comes before each measured task: time for the pool to refill.
#[derive(Debug, Clone, Copy)]
pub enum Pause {
    For(Duration),
    /// Until a microVM guest booted ahead waits (nxd's `nx_microvm_pool_ready`).
    UntilGuestReady,
}

/// nxd's metrics now (`GET /metrics`).
async fn metrics(host: &Host) -> anyhow::Result<String> {
    Ok(reqwest::Client::new()
        .get(format!("http://{}/metrics", host.api))
        .bearer_auth(&host.token)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// nxd's `nx_microvm_pool_ready` now.
async fn guests_ready(host: &Host) -> anyhow::Result<u64> {
    Ok(metrics(host)
        .await?
        .lines()
        .find_map(|l| l.strip_prefix("nx_microvm_pool_ready "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

impl Pause {
    async fn wait(self, host: &Host) -> anyhow::Result<()> {
        match self {
            Pause::For(d) => tokio::time::sleep(d).await,
            Pause::UntilGuestReady => {
                let deadline = Instant::now() + Duration::from_secs(120);
                while guests_ready(host).await? == 0 {
                    anyhow::ensure!(Instant::now() < deadline, "no guest was booted ahead");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        Ok(())
    }
}

/// `n` tasks on `backend` one after the other, `pause` before each.
pub async fn start_to_output(
    host: &Host,
    sha: &str,
    backend: Option<&str>,
    n: usize,
    pause: Pause,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let run = measure(host, sha, backend, n, pause).await?;
    Ok((run.samples, run.warm))
}

/// What `measure` saw.
pub struct Run {
    /// Start to first output, per task.
    pub samples: Vec<Duration>,
    /// Tasks that ran warm.
    pub warm: usize,
    /// With [`Pause::UntilGuestReady`]: from a task's start (when it took the waiting guest)
    /// until the pool had a guest waiting again (booted or restored), per task but the last.
    pub refills: Vec<Duration>,
}

/// `n` tasks on `backend` one after the other, `pause` before each.
pub async fn measure(
    host: &Host,
    sha: &str,
    backend: Option<&str>,
    n: usize,
    pause: Pause,
) -> anyhow::Result<Run> {
    let http = client(host);
    one(&http, sha, backend).await?; // first use: loads the program (and the image)
    let mut run = Run {
        samples: Vec::with_capacity(n),
        warm: 0,
        refills: Vec::new(),
    };
    let mut last_start: Option<Instant> = None;
    for _ in 0..n {
        pause.wait(host).await?;
        if let (Pause::UntilGuestReady, Some(start)) = (pause, last_start) {
            run.refills.push(start.elapsed());
        }
        last_start = Some(Instant::now());
        let ran = one(&http, sha, backend).await?;
        run.samples.push(ran.first);
        run.warm += usize::from(ran.warm);
    }
    Ok(run)
}

/// Tasks run back to back by some clients at once for a while.
#[derive(Debug, Default, Clone)]
pub struct Side {
    /// Tasks that ended well.
    pub tasks: usize,
    /// Seconds the clients ran, in all turns.
    pub secs: f64,
    /// Each task, from its start to its end as its client saw it.
    pub latency: Vec<Duration>,
}

impl Side {
    pub fn per_sec(&self) -> f64 {
        self.tasks as f64 / self.secs
    }

    fn add(&mut self, turn: Side) {
        self.tasks += turn.tasks;
        self.secs += turn.secs;
        self.latency.extend(turn.latency);
    }
}

/// Tasks per second through nxd and under bare bubblewrap, in turns.
pub struct Throughput {
    pub nx: Side,
    pub bare: Side,
    /// Each round's NX over bare ratio.
    pub rounds: Vec<f64>,
    /// Each step of nxd's side of the NX tasks (`nx_task_step_duration_seconds{step}`): the
    /// mean over those tasks, in the order nxd first reported the steps.
    pub steps: Vec<(String, Duration)>,
    /// Of the NX tasks, how many took a warm unit.
    pub warm: usize,
}

/// `clients` clients running tasks back to back through nxd's API for `secs`.
async fn nx_turn(
    host: &Host,
    sha: &str,
    clients: usize,
    secs: f64,
) -> anyhow::Result<(Side, usize)> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let runs = (0..clients).map(|_| async {
        let http = client(host);
        let (mut latency, mut warm) = (Vec::new(), 0);
        while Instant::now() < deadline {
            let ran = one(&http, sha, None).await?;
            latency.push(ran.total);
            warm += usize::from(ran.warm);
        }
        Ok::<_, anyhow::Error>((latency, warm))
    });
    let (mut side, mut warm) = (Side::default(), 0);
    for done in futures_util::future::join_all(runs).await {
        let (latency, w) = done?;
        side.tasks += latency.len();
        side.latency.extend(latency);
        warm += w;
    }
    side.secs = started.elapsed().as_secs_f64();
    Ok((side, warm))
}

/// The bare floor: the task's own bubblewrap command line (`task_command`, the sandbox nxd
/// hands a task's unit), run directly by this process as an unprivileged uid (a different
/// one each time, as nxd's tasks), with the same seccomp programs on the same fds and the
/// same environment on the same fd (bubblewrap's own empty, as the launcher runs it); its
/// output read to the end, its exit waited for. It runs where nxd's
/// tasks run in the CPU controller's hierarchy (a cgroup of its own in the host's tenants'
/// slice, see [`CpuPlace`]), so that on a busy machine both get the same share of the CPU.
struct Bare {
    argv: Vec<String>,
    seccomp: Vec<std::path::PathBuf>,
    /// The program's environment as bubblewrap reads it on `SANDBOX_ENV_FD`.
    env: std::path::PathBuf,
    place: CpuPlace,
    /// Keeps the program's copy and the seccomp programs.
    _dir: tempfile::TempDir,
}

/// A cgroup of the bare runs beside nxd's task units: `nx-bench-bare` in the tenants' slice
/// (`nx.slice`) of the host's manager, in the cgroup v1 `cpu` hierarchy. A thread that moves
/// itself there (cgroup v1 places threads one by one: its `tasks` file) starts its bare runs
/// there. Removed when dropped (its threads have ended by then).
struct CpuPlace {
    dir: std::path::PathBuf,
}

impl CpuPlace {
    fn new(host: &Host) -> anyhow::Result<Self> {
        let cpu = host
            .manager_cgroups()
            .into_iter()
            .find(|root| {
                let hierarchy = root.parent().and_then(|p| p.file_name());
                hierarchy.is_some_and(|h| h.to_string_lossy().split(',').any(|c| c == "cpu"))
            })
            .ok_or_else(|| anyhow::anyhow!("the host's manager has no cgroup v1 cpu hierarchy"))?;
        let dir = cpu.join("nx.slice").join("nx-bench-bare");
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// Moves the calling thread into the cgroup.
    fn enter(&self) -> anyhow::Result<()> {
        let tid = nix::unistd::gettid();
        std::fs::write(self.dir.join("tasks"), tid.to_string())?;
        Ok(())
    }
}

impl Drop for CpuPlace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Where the bare runs' uids start (nxd's tasks use `tasks.uid_base`, 300000, onwards).
const BARE_UID_BASE: u32 = 390_000;

impl Bare {
    fn new(host: &Host, program: &std::path::Path, args: &[String]) -> anyhow::Result<Self> {
        use nx_orchestrator::backend::container::{seccomp, task_command};
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir_in("/var/tmp")?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let copy = dir.path().join("program");
        std::fs::copy(program, &copy)?;
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o555))?;
        let seccomp = seccomp::write_programs(&dir.path().join("seccomp"))?;
        // What nxd gives a task (`tasks::request`): PATH and HOME.
        let env = dir.path().join("env");
        std::fs::write(
            &env,
            SandboxEnvForm::BwrapArgs.encode(&std::collections::BTreeMap::from([
                ("PATH".to_owned(), "/usr/bin:/bin".to_owned()),
                ("HOME".to_owned(), "/tmp".to_owned()),
            ])),
        )?;
        let tmp_bytes = nx_orchestrator::config::TasksConfig::default()
            .limits
            .tmp_mb
            << 20;
        let program = nx_orchestrator::backend::Program::Binary {
            path: copy,
            linkage: nx_orchestrator::artifact::verify::Linkage::Static,
        };
        Ok(Self {
            // Bubblewrap's own /dev/pts: the bounded instance is the launcher's mount.
            argv: task_command(&program, args, tmp_bytes, None),
            seccomp,
            env,
            place: CpuPlace::new(host)?,
            _dir: dir,
        })
    }

    /// One run as `uid`; its time to the end.
    fn once(&self, uid: u32) -> anyhow::Result<Duration> {
        use std::os::fd::{AsRawFd, OwnedFd};
        use std::os::unix::process::CommandExt;
        let started = Instant::now();
        let fds: Vec<OwnedFd> = self
            .seccomp
            .iter()
            .map(|p| std::fs::File::open(p).map(OwnedFd::from))
            .collect::<Result<_, _>>()?;
        let raw: Vec<i32> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        // Opened for each run: bubblewrap reads it from the file's offset.
        let env = OwnedFd::from(std::fs::File::open(&self.env)?);
        let env_fd = env.as_raw_fd();
        let mut command = std::process::Command::new(&self.argv[0]);
        command
            .args(&self.argv[1..])
            .env_clear()
            .uid(uid)
            .gid(uid)
            .stdin(std::process::Stdio::null());
        // SAFETY: dup2(2) is async-signal-safe; the fds stay open in the parent until spawn
        // returns. dup2 clears FD_CLOEXEC on the new fd, so bwrap inherits it.
        unsafe {
            command.pre_exec(move || {
                let targets = raw.iter().zip(SECCOMP_FIRST_FD..);
                for (fd, target) in targets.chain([(&env_fd, SANDBOX_ENV_FD)]) {
                    if nix::libc::dup2(*fd, target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let out = command.output()?;
        drop((fds, env));
        anyhow::ensure!(
            out.status.success(),
            "bare bwrap: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(started.elapsed())
    }
}

use nx_orchestrator::backend::launch::{SandboxEnvForm, SANDBOX_ENV_FD, SECCOMP_FIRST_FD};

/// `clients` threads of their own (in the bare runs' cgroup, see [`CpuPlace`]) running the
/// bare floor back to back for `secs`.
async fn bare_turn(bare: &std::sync::Arc<Bare>, clients: usize, secs: f64) -> anyhow::Result<Side> {
    let bare = bare.clone();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let deadline = started + Duration::from_secs_f64(secs);
        let uids = std::sync::atomic::AtomicU32::new(0);
        let mut side = Side::default();
        std::thread::scope(|scope| {
            let runs: Vec<_> = (0..clients)
                .map(|_| {
                    scope.spawn(|| {
                        bare.place.enter()?;
                        let mut latency = Vec::new();
                        while Instant::now() < deadline {
                            let n = uids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            latency.push(bare.once(BARE_UID_BASE + n % 65_536)?);
                        }
                        Ok::<_, anyhow::Error>(latency)
                    })
                })
                .collect();
            for run in runs {
                let latency = run.join().expect("a bare client panicked")?;
                side.tasks += latency.len();
                side.latency.extend(latency);
            }
            Ok::<_, anyhow::Error>(())
        })?;
        side.secs = started.elapsed().as_secs_f64();
        Ok(side)
    })
    .await?
}

/// Tasks per second of `clients` clients running the sample's `task print hi` back to back:
/// through nxd's API, and under bare bubblewrap (the same sandbox, see [`Bare`]), in
/// `rounds` rounds of `secs` each way (which goes first alternates).
pub async fn throughput(
    host: &Host,
    sha: &str,
    clients: usize,
    secs: f64,
    rounds: usize,
) -> anyhow::Result<Throughput> {
    let args: Vec<String> = ["task", "print", "hi"].map(String::from).to_vec();
    let bare = std::sync::Arc::new(Bare::new(host, &nx_testkit::sample_app(), &args)?);
    bare.once(BARE_UID_BASE)?;
    one(&client(host), sha, None).await?; // first use: loads the program
    let before = metrics(host).await?;
    let mut out = Throughput {
        nx: Side::default(),
        bare: Side::default(),
        rounds: Vec::new(),
        steps: Vec::new(),
        warm: 0,
    };
    for round in 0..rounds {
        let (nx, b) = if round % 2 == 0 {
            let (nx, warm) = nx_turn(host, sha, clients, secs).await?;
            out.warm += warm;
            (nx, bare_turn(&bare, clients, secs).await?)
        } else {
            let b = bare_turn(&bare, clients, secs).await?;
            let (nx, warm) = nx_turn(host, sha, clients, secs).await?;
            out.warm += warm;
            (nx, b)
        };
        out.rounds.push(nx.per_sec() / b.per_sec());
        out.nx.add(nx);
        out.bare.add(b);
    }
    let after = metrics(host).await?;
    out.steps = crate::steps::means("nx_task_step_duration_seconds", &before, &after);
    Ok(out)
}
