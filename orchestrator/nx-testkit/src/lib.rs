//! A real NX host for tests and benchmarks: `nxd` with its embedded systemd manager and
//! PostgreSQL, in a fresh state dir under /var/tmp (the embedded manager mounts a private /tmp,
//! so state dirs cannot live there), on free ports. Nothing is mocked.
//!
//! The binaries come from the workspace's target dir: `cargo build --workspace` and the static
//! sample (`cargo build -p nx-sample-app --release --target x86_64-unknown-linux-musl`) first;
//! `.ci/run` does both.
//!
//! Every host runs in a network namespace of its own (`netns`): `api` and `router` are
//! reachable from the test at the same address as inside, through forwarders.

pub mod netns;

use netns::{Forwarder, Netns};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod certs;
pub mod metrics;
pub mod pebble;
pub mod seccomp;

pub const BASE_DOMAIN: &str = "nx.test";
/// Deployment ports handed to each host.
const PORTS_PER_HOST: u16 = 40;
static HOSTS_STARTED: AtomicU16 = AtomicU16::new(0);

/// `target/<profile>` of the running test or bench binary.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// A workspace binary, built by `cargo build --workspace`.
pub fn bin(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` in orchestrator/ first",
        path.display()
    );
    path
}

/// The static sample app.
pub fn sample_app() -> PathBuf {
    static_binary("nx-sample-app")
}

/// A static (musl) release build of a workspace crate's binary (asserted to be there).
pub fn static_binary(name: &str) -> PathBuf {
    let root = target_dir().parent().expect("target dir").to_path_buf();
    let path = root.join(format!("x86_64-unknown-linux-musl/release/{name}"));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p {name} --release --target x86_64-unknown-linux-musl`",
        path.display()
    );
    path
}

/// The `[microvm]` config of a test host: the kernel of orchestrator/fetch-kernel.sh
/// (NX_KERNEL_DIR, default /var/cache/nx/kernel), the static nx-vm-init, and `accel`.
pub fn microvm_config(accel: &str) -> String {
    let kernel_dir =
        std::env::var("NX_KERNEL_DIR").unwrap_or_else(|_| "/var/cache/nx/kernel".into());
    assert!(
        Path::new(&kernel_dir).join("vmlinux").is_file(),
        "no guest kernel in {kernel_dir}: run orchestrator/fetch-kernel.sh (install-deps.sh does)"
    );
    format!(
        "[microvm]\nkernel_dir = {kernel_dir:?}\ninit = {:?}\naccel = {accel:?}\n",
        static_binary("nx-vm-init")
    )
}

/// Asserts that the sample app's `GET /fill` answer (`filled`, its JSON: `error`,
/// `written_bytes`) ended with "No space left on device" after at most `max_bytes`: `dir` is
/// full at its size. Returns the bytes written.
pub fn assert_filled_to_its_size(filled: &serde_json::Value, dir: &str, max_bytes: u64) -> u64 {
    assert!(
        filled["error"]
            .as_str()
            .unwrap_or_default()
            .contains("No space left on device"),
        "{dir}: {filled}"
    );
    let written = filled["written_bytes"].as_u64().expect("written_bytes");
    assert!(written <= max_bytes, "{dir}: {filled}");
    written
}

/// A port nothing listens on now (from the ephemeral range).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

pub struct Host {
    pub state_dir: tempfile::TempDir,
    pub api: SocketAddr,
    pub router: SocketAddr,
    pub token: String,
    pub ports: (u16, u16),
    /// The network namespace nxd and everything it runs live in.
    pub netns: Arc<Netns>,
    forwarders: std::sync::Mutex<Vec<Forwarder>>,
    nxd: Option<Child>,
    /// `NX_CRASH_AT` of the next nxd started (see `restart_nxd_crashing_at`).
    crash_at: Option<String>,
    /// `FAILPOINTS` of the next nxd started (see `restart_nxd_with_failpoints`).
    failpoints: Option<String>,
    /// The nxd binary it runs (the workspace's, unless `start_with_nxd` names another).
    nxd_bin: PathBuf,
    http: reqwest::blocking::Client,
}

/// What `nx` printed and how it ended.
pub struct Nx {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Nx {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("nx printed no JSON ({e}): {}\n{}", self.stdout, self.stderr)
        })
    }
}

impl From<Output> for Nx {
    fn from(o: Output) -> Self {
        Self {
            ok: o.status.success(),
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into(),
            stderr: String::from_utf8_lossy(&o.stderr).into(),
        }
    }
}

impl Host {
    /// Starts nxd on a fresh state dir and waits until its API answers.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Like `start`, with more config appended (TOML tables).
    pub fn start_with(extra_config: &str) -> Self {
        Self::start_with_nxd(bin("nxd"), extra_config)
    }

    /// Like `start_with`, running the nxd binary at `nxd` (e.g. a copy under /tmp).
    pub fn start_with_nxd(nxd: PathBuf, extra_config: &str) -> Self {
        Self::start_in_block(nxd, extra_config, 0, &[])
    }

    /// Like `start_with`, with the router's HTTP listener on `router_port` (for a server that
    /// must know it first, e.g. an ACME server's HTTP-01 validation port), and nxd reaching
    /// 127.0.0.1:`port` for each of `outside` in the test's namespace at the same address in
    /// its own (servers the test runs, e.g. the ACME server's directory).
    pub fn start_with_router_port(extra_config: &str, router_port: u16, outside: &[u16]) -> Self {
        Self::start_in_block(bin("nxd"), extra_config, router_port, outside)
    }

    /// A host in this process's next block of ports and uids.
    fn start_in_block(nxd: PathBuf, extra_config: &str, router_port: u16, outside: &[u16]) -> Self {
        let n = HOSTS_STARTED.fetch_add(1, Ordering::SeqCst);
        // 256 blocks of 40 ports from 21000 to 31239: below the kernel's ephemeral range
        // (32768 and up), so that no client socket ever holds a deployment's port. Sixteen
        // blocks per test process: a host shares its block only with the 16th host after it
        // in the same process (with 4, a long test's host shared ports with a later test's,
        // whose program then answered the first one's readiness probe).
        let block = (std::process::id() % 16) as u16 * 16 + n % 16;
        let start = 21000 + block * PORTS_PER_HOST;
        Self::start_configured(
            nxd,
            (start, start + PORTS_PER_HOST - 1),
            block,
            (router_port, outside),
            extra_config,
        )
    }

    /// Like `start_with_nxd`, with `[ports]` from `ports.0` to `ports.1` (a host for more
    /// deployments than the 40 of one block; keep them below 21000 and the ephemeral range)
    /// and deployment uids from `200000 + uid_block * 100`.
    pub fn start_with_ports(
        nxd: PathBuf,
        ports: (u16, u16),
        uid_block: u16,
        extra_config: &str,
    ) -> Self {
        Self::start_configured(nxd, ports, uid_block, (0, &[]), extra_config)
    }

    /// `links`: the router's port (0: any free one, taken by its forwarder's own bind, so that no
    /// other test can take it between a pick and the bind), and the ports of servers on the
    /// test's loopback that nxd reaches (see `start_with_router_port`).
    fn start_configured(
        nxd: PathBuf,
        ports: (u16, u16),
        uid_block: u16,
        links: (u16, &[u16]),
        extra_config: &str,
    ) -> Self {
        let state_dir = tempfile::Builder::new()
            .prefix("nx-test-")
            .tempdir_in("/var/tmp")
            .expect("state dir in /var/tmp");
        let netns = Netns::new();
        let (api_forwarder, router_forwarder) =
            (Forwarder::to(&netns, 0), Forwarder::to(&netns, links.0));
        let (api_port, router_port) = (api_forwarder.port(), router_forwarder.port());
        let mut forwarders = vec![api_forwarder, router_forwarder];
        forwarders.extend(links.1.iter().map(|&port| Forwarder::back(&netns, port)));
        let config = format!(
            "state_dir = {:?}\napi_listen = \"127.0.0.1:{}\"\nrouter_listen = \"127.0.0.1:{}\"\nbase_domain = \"{BASE_DOMAIN}\"\n\n[ports]\nstart = {}\nend = {}\n\n[sandbox]\nuid_base = {}\nready_timeout_secs = 60\n\n[systemd]\nmode = \"embedded\"\n\n{extra_config}\n",
            state_dir.path(),
            api_port,
            router_port,
            ports.0,
            ports.1,
            200_000 + u32::from(uid_block) * 100,
        );
        std::fs::write(state_dir.path().join("nxd.toml"), config).expect("write config");
        let mut host = Self {
            api: "127.0.0.1:0".parse().expect("addr"),
            router: "127.0.0.1:0".parse().expect("addr"),
            token: String::new(),
            ports,
            netns,
            forwarders: std::sync::Mutex::new(forwarders),
            nxd: None,
            crash_at: None,
            failpoints: None,
            nxd_bin: nxd,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
            state_dir,
        };
        host.spawn_nxd();
        host
    }

    fn config_path(&self) -> PathBuf {
        self.state_dir.path().join("nxd.toml")
    }

    fn spawn_nxd(&mut self) {
        let config = std::fs::read_to_string(self.config_path()).expect("config");
        let listen = |key: &str| -> SocketAddr {
            let line = config
                .lines()
                .find(|l| l.starts_with(key))
                .expect("listen key");
            line.split('"')
                .nth(1)
                .expect("quoted")
                .parse()
                .expect("addr")
        };
        self.api = listen("api_listen");
        self.router = listen("router_listen");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state_dir.path().join("nxd.log"))
            .expect("nxd log");
        let child = self
            .netns
            .command(&self.nxd_bin)
            .arg("--config")
            .arg(self.config_path())
            .env("RUST_LOG", "info")
            .env("NX_CRASH_AT", self.crash_at.take().unwrap_or_default())
            .env("FAILPOINTS", self.failpoints.take().unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn nxd");
        self.nxd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(token) = std::fs::read_to_string(self.state_dir.path().join("token")) {
                self.token = token.trim().to_owned();
                let ok = self
                    .http
                    .get(format!("http://{}/v1/health", self.api))
                    .bearer_auth(&self.token)
                    .send()
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    return;
                }
            }
            if let Some(status) = self.nxd.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("nxd exited ({status}) while starting:\n{}", self.nxd_log());
            }
            assert!(
                Instant::now() < deadline,
                "nxd did not answer within 60 s:\n{}",
                self.nxd_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn nxd_log(&self) -> String {
        std::fs::read_to_string(self.state_dir.path().join("nxd.log")).unwrap_or_default()
    }

    /// Waits up to `within` for a line of nxd's log that `wanted` accepts, looking every
    /// 100 ms; panics with `what` and the log when none came.
    pub fn wait_for_log_line(&self, wanted: impl Fn(&str) -> bool, within: Duration, what: &str) {
        let started = Instant::now();
        while !self.nxd_log().lines().any(&wanted) {
            assert!(
                started.elapsed() < within,
                "{what} (within {within:?}); nxd's log:\n{}",
                self.nxd_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// nxd's process id.
    pub fn nxd_pid(&self) -> u32 {
        self.nxd.as_ref().expect("nxd runs").id()
    }

    /// nxd's peak resident memory (VmHWM in /proc/<pid>/status), in bytes.
    pub fn nxd_peak_rss(&self) -> u64 {
        proc_status_bytes(self.nxd_pid(), "VmHWM").expect("nxd's VmHWM")
    }

    /// Stops nxd (SIGTERM) and starts it again on the same state dir; deployments keep running.
    pub fn restart_nxd(&mut self) {
        self.stop_nxd();
        self.spawn_nxd();
    }

    /// Restarts nxd with `keys` (TOML lines, e.g. `max_log_mb = 4096`) added to its config's
    /// `[sandbox]` table, which the host's config already holds (a table is defined once, so an
    /// extra config of `start_with` cannot name it).
    pub fn restart_nxd_with_sandbox_keys(&mut self, keys: &str) {
        let config = self.path("nxd.toml");
        let text = std::fs::read_to_string(&config).expect("read nxd.toml");
        let text = text.replacen("[sandbox]\n", &format!("[sandbox]\n{keys}\n"), 1);
        std::fs::write(&config, text).expect("write nxd.toml");
        self.restart_nxd();
    }

    /// Restarts nxd on the same state dir running the binary at `nxd` from now on (another
    /// build of nxd, e.g. to measure two builds on one host in turn).
    pub fn restart_nxd_as(&mut self, nxd: PathBuf) {
        self.stop_nxd();
        self.nxd_bin = nxd;
        self.spawn_nxd();
    }

    /// Restarts nxd so that it kills itself with SIGKILL at the crash point `point` (nxd built
    /// with the `failpoints` feature, as the tests build it; see nx_orchestrator::failpoint).
    pub fn restart_nxd_crashing_at(&mut self, point: &str) {
        self.crash_at = Some(point.to_owned());
        self.restart_nxd();
    }

    /// Restarts nxd with the fail points `failpoints` armed (the `fail` crate's `FAILPOINTS`
    /// syntax, e.g. `volumes::job=sleep(3000)`; see nx_orchestrator::failpoint), for this
    /// run of nxd only.
    pub fn restart_nxd_with_failpoints(&mut self, failpoints: &str) {
        self.failpoints = Some(failpoints.to_owned());
        self.restart_nxd();
    }

    /// Runs `nx args` against an nxd that kills itself at the crash point `point`
    /// (`restart_nxd_crashing_at`), asserts that the command failed and that nxd died there by
    /// SIGKILL, then starts nxd again (a normal one) and returns once its API answers, with
    /// what `nx` printed.
    pub fn crash_during(&mut self, point: &str, args: &[&str]) -> Nx {
        self.restart_nxd_crashing_at(point);
        let out = self.nx(args);
        assert!(!out.ok, "nx {args:?} survived the crash at {point}");
        let status = self.wait_nxd_exit();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "nxd did not die at {point}: {status}"
        );
        self.restart_nxd();
        out
    }

    /// Kills nxd with SIGKILL, as a crash would (deployments keep running); `restart_nxd`
    /// starts it again.
    pub fn kill_nxd(&mut self) {
        if let Some(mut child) = self.nxd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until nxd has exited (after a crash point) and reports how it ended.
    pub fn wait_nxd_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.nxd.take().expect("nxd was started");
        child.wait().expect("wait for nxd")
    }

    /// Starts nxd again after `stop_nxd` and returns once its API answers.
    pub fn start_nxd(&mut self) {
        self.spawn_nxd();
    }

    /// Stops nxd (SIGTERM); deployments keep running.
    pub fn stop_nxd(&mut self) {
        if let Some(mut child) = self.nxd.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    /// PID 1 of the embedded systemd manager's namespace (the child of the `unshare` nxd
    /// started), in the host's PID namespace.
    pub fn manager_pid1(&self) -> i32 {
        let unshare = std::fs::read_to_string(self.path("systemd/unshare.pid")).unwrap();
        let unshare = unshare.trim();
        std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
            .unwrap()
            .split_whitespace()
            .next()
            .expect("the manager runs")
            .parse()
            .unwrap()
    }

    /// `nxd manager-stop` for this host's state dir, in its network namespace (the host
    /// network it removes is that namespace's): stops every deployment and the embedded
    /// manager. Stop nxd first. Its exit status and what it printed on stderr.
    pub fn manager_stop(&self) -> (std::process::ExitStatus, String) {
        let out = self
            .netns
            .command(bin("nxd"))
            .arg("manager-stop")
            .arg("--state-dir")
            .arg(self.state_dir.path())
            .output()
            .expect("nxd manager-stop");
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs one more nxd on this host's config (in its namespace, the same binary) with `args`
    /// added, one that must end by itself within `within` (an nxd that refuses to start): how it
    /// ended and what it printed. One that still runs then is killed and the test fails with
    /// its output.
    pub fn nxd_that_exits(&self, args: &[&str], within: Duration) -> Output {
        let child = self
            .netns
            .command(&self.nxd_bin)
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nxd");
        let pid = child.id().to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(child.wait_with_output()));
        if let Ok(out) = rx.recv_timeout(within) {
            return out.expect("nxd's output");
        }
        let _ = Command::new("kill").args(["-9", &pid]).status();
        let out = rx.recv().expect("nxd's output").expect("nxd's output");
        panic!(
            "nxd still ran after {within:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Makes a listener the test configured itself inside the host's namespace (such as
    /// `[sftp] listen = "127.0.0.1:<port>"`) reachable from the test at 127.0.0.1:`port`, as
    /// the API and the router are, until the host is dropped.
    pub fn forward(&self, port: u16) {
        let forwarder = Forwarder::to(&self.netns, port);
        self.forwarders.lock().expect("forwarders").push(forwarder);
    }

    /// Runs the CLI against this host.
    pub fn nx(&self, args: &[&str]) -> Nx {
        self.nx_as(&self.token, args)
    }

    /// Runs the CLI against this host with another API token (a deploy token).
    pub fn nx_as(&self, token: &str, args: &[&str]) -> Nx {
        self.nx_command(token, args)
            .output()
            .expect("run nx")
            .into()
    }

    /// The CLI against this host with `token`, to spawn (e.g. `nx logs -f`, which runs until
    /// it is killed); stdin is /dev/null.
    pub fn nx_command(&self, token: &str, args: &[&str]) -> Command {
        let mut command = self.netns.command(bin("nx"));
        command
            .args(args)
            .env("NX_HOST", format!("http://{}", self.api))
            .env("NX_TOKEN", token)
            .env("NX_CONFIG", "/dev/null")
            .stdin(Stdio::null());
        command
    }

    /// Runs the CLI with --json and asserts it succeeded.
    pub fn nx_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.nx(&all);
        if !out.ok {
            let log = self.nxd_log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "nx {args:?} failed: {}{}\nlast nxd log lines:\n{}",
                out.stdout,
                out.stderr,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        out.json()
    }

    /// One deployment as `nx status` shows it.
    pub fn deployment(&self, sandbox: &str, id: &str) -> serde_json::Value {
        let status = self.nx_json(&["status", sandbox]);
        status[0]["deployments"]
            .as_array()
            .expect("deployments")
            .iter()
            .find(|d| d["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not in {status}"))
    }

    /// `nx push <sample> --sandbox <sandbox> <extra>` with the root token, started and left
    /// running: its stdout and stderr piped, for a test that acts while the push waits.
    pub fn spawn_push_sample(&self, sandbox: &str, extra: &[&str]) -> Child {
        let sample = sample_app();
        let mut args = vec![
            "push",
            sample.to_str().expect("utf-8 path"),
            "--sandbox",
            sandbox,
        ];
        args.extend_from_slice(extra);
        self.nx_command(&self.token, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nx push started")
    }

    /// Pushes the sample app and returns the deployment's id.
    pub fn push_sample(&self, sandbox: &str, extra: &[&str]) -> String {
        let sample = sample_app();
        let mut args = vec![
            "push",
            sample.to_str().expect("utf-8 path"),
            "--sandbox",
            sandbox,
        ];
        args.extend_from_slice(extra);
        let out = self.nx_json(&args);
        out["deployment"]["id"]
            .as_str()
            .expect("deployment id")
            .to_owned()
    }

    /// GET through the router with the given Host; (status, body). Status 0: no answer.
    pub fn get(&self, host: &str, path: &str) -> (u16, String) {
        self.http
            .get(format!("http://{}{path}", self.router))
            .header("Host", host)
            .send()
            .map(|r| (r.status().as_u16(), r.text().unwrap_or_default()))
            .unwrap_or((0, String::new()))
    }

    pub fn preview_host(&self, sandbox: &str, deployment: &str) -> String {
        format!("{deployment}.{sandbox}.{BASE_DOMAIN}")
    }

    pub fn production_host(&self, sandbox: &str) -> String {
        format!("{sandbox}.{BASE_DOMAIN}")
    }

    /// PUTs bytes into nxd's artifact store straight through the API, past the CLI's checks;
    /// (HTTP status, body, the bytes' sha256).
    pub fn put_artifact(&self, bytes: Vec<u8>) -> (u16, String, String) {
        let sha = sha256_hex(&bytes);
        let resp = self
            .http
            .put(format!("http://{}/v1/artifacts/{sha}", self.api))
            .bearer_auth(&self.token)
            .body(bytes)
            .send()
            .expect("PUT artifact");
        let status = resp.status().as_u16();
        (status, resp.text().unwrap_or_default(), sha)
    }

    /// (status, body) of an API request with `token`; a body that starts with `{` is sent as
    /// JSON.
    pub fn call(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (u16, String) {
        let mut req = self
            .http
            .request(
                method.parse().expect("a method"),
                format!("http://{}{path}", self.api),
            )
            .bearer_auth(token);
        if let Some(body) = body {
            if body.starts_with(b"{") {
                req = req.header("Content-Type", "application/json");
            }
            req = req.body(body);
        }
        let resp = req.send().expect("request");
        (resp.status().as_u16(), resp.text().unwrap_or_default())
    }

    pub fn http(&self) -> &reqwest::blocking::Client {
        &self.http
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.state_dir.path().join(rel)
    }

    /// The cgroup directories the embedded manager lives in, one per hierarchy.
    pub fn manager_cgroups(&self) -> Vec<PathBuf> {
        std::fs::read_to_string(self.path("systemd/cgroups"))
            .unwrap_or_default()
            .lines()
            .map(PathBuf::from)
            .collect()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop_nxd();
        let _ = self.manager_stop();
    }
}

/// Files in a directory, recursively (names only, sorted).
/// A memory field of process `pid`'s /proc/<pid>/status (`VmRSS`, `VmHWM`, ...: proc(5)), in
/// bytes; None if the process or the field is not there.
pub fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    Some(kib << 10)
}

pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// The loop devices attached now, one line each: the device and its file
/// (`losetup --list --noheadings -O NAME,BACK-FILE`, losetup(8); a deleted file ends
/// ` (deleted)`). Panics if losetup fails.
pub fn loop_devices() -> Vec<String> {
    let out = Command::new("losetup")
        .args(["--list", "--noheadings", "-O", "NAME,BACK-FILE"])
        .output()
        .expect("running losetup (util-linux)");
    assert!(
        out.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A throwaway plain PostgreSQL cluster (the machine's `initdb` and `postgres`, run as the
/// `postgres` user), on a socket in a temp dir and, when asked, on 127.0.0.1:`tcp_port`.
pub struct ThrowawayPostgres {
    dir: tempfile::TempDir,
    server: Child,
    port: u16,
}

impl ThrowawayPostgres {
    pub fn start(tcp_port: Option<u16>) -> Self {
        use std::os::unix::process::CommandExt;
        let user = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .expect("the postgres user (install postgresql)");
        let dir = tempfile::Builder::new()
            .prefix("nx-plain-pg-")
            .tempdir_in("/var/tmp")
            .expect("temp dir");
        std::os::unix::fs::chown(dir.path(), Some(user.uid.as_raw()), Some(user.gid.as_raw()))
            .expect("chown");
        let as_postgres = |program: &'static str| {
            let mut cmd = Command::new(
                nx_orchestrator::embedded_db::find_binary(program).expect("postgresql"),
            );
            cmd.uid(user.uid.as_raw())
                .gid(user.gid.as_raw())
                .current_dir(dir.path());
            cmd
        };
        let data = dir.path().join("data");
        let init = as_postgres("initdb")
            .args(["-U", "postgres", "--auth=trust", "-D"])
            .arg(&data)
            .output()
            .expect("initdb");
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let listen = tcp_port.map_or(String::new(), |_| "127.0.0.1".into());
        let port = tcp_port.unwrap_or(5432);
        let server = as_postgres("postgres")
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(dir.path())
            .arg("-p")
            .arg(port.to_string())
            .arg("-c")
            .arg(format!("listen_addresses={listen}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres");
        let pg = Self { dir, server, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pg.psql("postgres", "SELECT 1").0 {
            assert!(
                Instant::now() < deadline,
                "the throwaway PostgreSQL did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// (succeeded, output) of `psql -tAc sql` as the superuser.
    pub fn psql(&self, db: &str, sql: &str) -> (bool, String) {
        psql(self.socket_dir(), self.port, db, sql)
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.server.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.server.wait();
    }
}

/// (succeeded, output) of `psql -tAc sql` as the `postgres` role, over a cluster's socket.
pub fn psql(socket_dir: &Path, port: u16, db: &str, sql: &str) -> (bool, String) {
    let out = Command::new("psql")
        .arg("-h")
        .arg(socket_dir)
        .args([
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
            "-tAc",
            sql,
        ])
        .output()
        .expect("psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

/// Builds an image of the static sample app (FROM scratch, the sample as its entrypoint) with
/// Podman, storage and config under `dir` (NX's own Podman config), and saves it as a
/// docker-archive; returns the archive. `platform` e.g. `linux/amd64`, `linux/arm64`.
pub fn build_sample_image(dir: &Path, platform: &str) -> PathBuf {
    build_sample_image_with(dir, platform, "")
}

/// Like `build_sample_image`, with more Containerfile lines after the sample's; the build
/// context also holds `tmp/`, an empty directory of mode 0755 (as some images' /tmp is).
pub fn build_sample_image_with(dir: &Path, platform: &str, lines: &str) -> PathBuf {
    // Storage of its own per platform: Podman's build cache would hand an arm64 build the
    // amd64 image of the same layers.
    let name = platform.replace('/', "-");
    let podman = nx_orchestrator::backend::container::podman::Podman::new(&dir.join(&name))
        .expect("podman config under the test dir");
    let context = dir.join("context");
    std::fs::create_dir_all(&context).expect("build context");
    std::fs::copy(sample_app(), context.join("nx-sample-app")).expect("copy the sample");
    std::fs::create_dir_all(context.join("tmp")).expect("tmp/ in the build context");
    std::fs::write(
        context.join("Containerfile"),
        format!("FROM scratch\nCOPY nx-sample-app /app\n{lines}ENTRYPOINT [\"/app\"]\n"),
    )
    .expect("Containerfile");
    let tag = format!("localhost/nx-sample-{name}");
    let archive = dir.join(format!("{name}.tar"));
    let podman_cmd = |args: &[&str]| {
        let out = Command::new("podman")
            .args(args)
            .env_clear()
            .envs(podman.env())
            .output()
            .expect("podman is needed for this test: apt-get install podman runc");
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    podman_cmd(&[
        "build",
        "--quiet",
        "--platform",
        platform,
        "--tag",
        &tag,
        context.to_str().expect("utf-8 path"),
    ]);
    podman_cmd(&[
        "save",
        "--quiet",
        "--format",
        "docker-archive",
        "--output",
        archive.to_str().expect("utf-8 path"),
        &tag,
    ]);
    archive
}

/// sha256 through the system's coreutils, to check nxd against an independent implementation.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("write");
    let out = child.wait_with_output().expect("sha256sum output");
    String::from_utf8_lossy(&out.stdout)[..64].to_owned()
}

/// A shared library whose constructor writes `ESCAPED-PRELOAD in <argv[0]>` to standard error,
/// built with the host's C compiler (the one cargo links with) in `dir`: a host process that
/// loads it through a tenant's `LD_PRELOAD` says so in its output.
pub fn preload_library(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let source = dir.join("pre.c");
    std::fs::write(
        &source,
        "#include <stdio.h>\n\
         extern char *program_invocation_name;\n\
         __attribute__((constructor)) static void escaped(void) {\n\
         fprintf(stderr, \"ESCAPED-PRELOAD in %s\\n\", program_invocation_name);\n}\n",
    )
    .unwrap();
    let library = dir.join("pre.so");
    let cc = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .output()
        .expect("cc (the C compiler cargo links with)");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    library
}
