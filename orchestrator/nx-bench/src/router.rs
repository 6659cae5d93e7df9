//! The router benchmark: the same deployment (the sample app) loaded by wrk directly, through
//! NX's router (Pingora), and through nginx and Caddy as plain reverse proxies (Debian's
//! packages, started here on loopback with configs written here), at 16 and 256 connections;
//! WebSocket echo messages per second through the router against direct; and promote
//! atomicity under load for the two engines tried: NX's router (table swapped by nxd) and
//! Caddy (configs swapped through its JSON admin API). All of it runs inside the test host's
//! network namespace (`main` enters it), where the deployments' addresses are; "direct" is
//! over the namespace hop (the deployment's veth), and the same program with no namespace of
//! its own (on the host's loopback), under the deployment's CPU quota, is the row beside it.

use nx_testkit::Host;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One run of wrk.
pub struct Load {
    pub requests: u64,
    pub errors: u64,
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

fn wrk_duration_ms(s: &str) -> Option<f64> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => return None,
    })
}

/// wrk (Debian's package) for `secs` with `connections` on `target` with `Host: host_header`.
/// Errors: non-2xx/3xx answers plus socket errors (connect, read, write, timeout).
pub fn wrk(
    target: SocketAddr,
    host_header: &str,
    connections: usize,
    secs: u64,
) -> anyhow::Result<Load> {
    let mut command = Command::new("wrk");
    command
        .args(wrk_args(connections, secs))
        .arg("-H")
        .arg(format!("Host: {host_header}"))
        .arg(format!("http://{target}/"));
    run_wrk(command)
}

/// wrk's options: 2 threads, `connections`, `secs`, latency percentiles.
pub fn wrk_args(connections: usize, secs: u64) -> [String; 4] {
    [
        "-t2".into(),
        format!("-c{connections}"),
        format!("-d{secs}s"),
        "--latency".into(),
    ]
}

/// Runs a prepared wrk `command` and reads its summary.
pub fn run_wrk(mut command: Command) -> anyhow::Result<Load> {
    let out = command
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run wrk ({e}); apt-get install wrk"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix).map(str::trim))
    };
    let first = |prefix: &str| field(prefix).and_then(|v| v.split_whitespace().next());
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("unexpected wrk output:\n{text}"))?;
    // "Socket errors: connect 0, read 3, write 0, timeout 0"
    let socket_errors: u64 = field("Socket errors:").map_or(0, |v| {
        v.split(',')
            .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    });
    Ok(Load {
        requests,
        errors: first("Non-2xx or 3xx responses:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
            + socket_errors,
        per_sec: first("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        p50_ms: first("50%").and_then(wrk_duration_ms).unwrap_or(f64::NAN),
        p99_ms: first("99%").and_then(wrk_duration_ms).unwrap_or(f64::NAN),
    })
}

/// A reverse proxy process started for the benchmark; killed when dropped.
struct Proxy {
    child: Child,
    listen: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: nginx's master then ends its workers too.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], nx_testkit::free_port()))
}

fn wait_listening(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "{what} did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `program` started inside the cgroup whose `cgroup.procs` file is `procs`: a shell writes
/// its own pid there, then becomes `program`, so that every process and thread it starts is
/// inside from the first instruction.
fn command_in_cgroup(procs: &Path, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg("echo $$ > \"$0\" && exec \"$@\"")
        .arg(procs)
        .arg(program);
    command
}

/// The `cgroup.procs` file of the host's router's cgroup in the v1 `cpu` hierarchy: the
/// proxies it is compared with run there too, with the same share of the CPU. (A test host's
/// units all sit in one cgroup, which competes with the machine's other processes as one; a
/// proxy outside it would get more of a loaded machine than the router.)
fn router_cpu_cgroup(host: &Host) -> anyhow::Result<PathBuf> {
    let pid = router_pid(host)?;
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    // cgroups(7): "hierarchy-ID:controller-list:cgroup-path".
    let path = cgroups
        .lines()
        .find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let controllers = fields.nth(1)?;
            let path = fields.next()?;
            controllers.split(',').any(|c| c == "cpu").then_some(path)
        })
        .ok_or_else(|| anyhow::anyhow!("the router is in no cgroup of the cpu controller"))?;
    Ok(Path::new(CPU_HIERARCHY)
        .join(path.trim_start_matches('/'))
        .join("cgroup.procs"))
}

/// The pid of the host's router: the process whose command line names the host's router
/// settings file (`nx-router --settings <state_dir>/router/settings.json`).
fn router_pid(host: &Host) -> anyhow::Result<u32> {
    let settings = host.state_dir.path().join("router/settings.json");
    let settings = settings.to_string_lossy();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|b| *b == 0).map(String::from_utf8_lossy);
        let program = args.next().unwrap_or_default();
        if program.ends_with("nx-router") && args.any(|a| a == settings) {
            return Ok(pid);
        }
    }
    anyhow::bail!("no nx-router process runs with --settings {settings}")
}

/// The benchmark's deployments' TasksMax (`nx push --tasks`): see [`run`].
const APP_TASKS_MAX: u64 = 2048;

/// A deployment's unit's tasks now and its restarts, from `nx status`: the sample app runs a
/// thread per connection, so its tasks show what the proxies' idle connections hold.
fn app_tasks(host: &Host, sandbox: &str, id: &str) -> String {
    let state = &host.deployment(sandbox, id)["state"];
    format!(
        "{} tasks (TasksMax {APP_TASKS_MAX}), {} restarts",
        state["tasks"], state["restarts"]
    )
}

/// Where the v1 `cpu` controller's hierarchy is mounted.
const CPU_HIERARCHY: &str = "/sys/fs/cgroup/cpu";

/// nginx as a plain reverse proxy to `upstream`: two workers (the cores), keep-alive upstream
/// connections, in the cgroup of `procs`. It writes an access log line per request (its
/// default `combined` format) through a 64 KiB buffer flushed every 200 ms, as the router does
/// by default (`router.access_log_sample = 1.0`), so that both proxies do the same work. Its
/// workers run as root, like the benchmark: the firewall lets only nxd's uid and root open
/// connections into a deployment's link, and nginx's default worker user (`nobody`) would get
/// "connection refused" from every deployment.
fn nginx(upstream: SocketAddr, procs: &Path) -> anyhow::Result<Proxy> {
    let dir = tempfile::tempdir()?;
    let listen = free_addr();
    let d = dir.path().display();
    let conf = format!(
        "user root;\nworker_processes 2;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\nevents {{ worker_connections 8192; }}\n\
         http {{\n  access_log {d}/access.log combined buffer=64k flush=200ms;\n  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n  \
         upstream app {{ server {upstream}; keepalive 64; }}\n  \
         server {{ listen {listen}; location / {{ proxy_pass http://app; proxy_http_version 1.1; \
         proxy_set_header Connection \"\"; proxy_set_header Host $host; }} }}\n}}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), conf)?;
    let child = command_in_cgroup(procs, "nginx")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run nginx ({e}); apt-get install nginx"))?;
    wait_listening(listen, "nginx")?;
    Ok(Proxy {
        child,
        listen,
        _dir: dir,
    })
}

/// Caddy's JSON config: a server on `listen` proxying `host` (any host when `None`) to `upstream`.
fn caddy_config(
    admin: SocketAddr,
    listen: SocketAddr,
    host: Option<&str>,
    upstream: SocketAddr,
) -> String {
    let matcher = host.map_or(
        serde_json::Value::Null,
        |h| serde_json::json!([{ "host": [h] }]),
    );
    serde_json::json!({
        "admin": { "listen": admin.to_string() },
        "logging": { "logs": { "default": { "level": "ERROR" } } },
        "apps": { "http": { "servers": { "bench": {
            "listen": [listen.to_string()],
            "automatic_https": { "disable": true },
            "routes": [{
                "match": matcher,
                "handle": [{ "handler": "reverse_proxy", "upstreams": [{ "dial": upstream.to_string() }] }]
            }]
        } } } }
    })
    .to_string()
}

/// Caddy (Debian's 2.6) as a plain reverse proxy, driven by its JSON config and admin API.
struct Caddy {
    proxy: Proxy,
    admin: SocketAddr,
}

impl Caddy {
    /// Caddy serving `host` (any with `None`) from `upstream`, in the cgroup of `procs`.
    fn start(host: Option<&str>, upstream: SocketAddr, procs: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (listen, admin) = (free_addr(), free_addr());
        let file = dir.path().join("caddy.json");
        std::fs::write(&file, caddy_config(admin, listen, host, upstream))?;
        let child = command_in_cgroup(procs, "caddy")
            .args(["run", "--config"])
            .arg(&file)
            .env("XDG_DATA_HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run caddy ({e}); apt-get install caddy"))?;
        wait_listening(listen, "caddy")?;
        Ok(Self {
            proxy: Proxy {
                child,
                listen,
                _dir: dir,
            },
            admin,
        })
    }

    /// Replaces the whole config through the admin API (`POST /load`).
    fn load(&self, host: Option<&str>, upstream: SocketAddr) -> anyhow::Result<()> {
        let resp = reqwest::blocking::Client::new()
            .post(format!("http://{}/load", self.admin))
            .header("content-type", "application/json")
            .body(caddy_config(self.admin, self.proxy.listen, host, upstream))
            .send()?;
        anyhow::ensure!(resp.status().is_success(), "caddy /load: {}", resp.status());
        Ok(())
    }
}

/// Where the router reaches a deployment: its own address and port (`listen`).
fn deployment_addr(host: &Host, sandbox: &str, id: &str) -> SocketAddr {
    host.deployment(sandbox, id)["listen"]
        .as_str()
        .expect("listen")
        .parse()
        .expect("an address")
}

/// A cgroup (v1 `cpu` controller) with a CFS bandwidth limit, as systemd's `CPUQuota=` sets
/// it on a deployment's unit (`cpu.cfs_quota_us` per `cpu.cfs_period_us`, systemd's default
/// period of 100 ms; sched-bwc.rst in the kernel's docs); removed when dropped.
struct CpuQuota(PathBuf);

impl CpuQuota {
    const PERIOD_US: u64 = 100_000;

    fn new(percent: u64) -> anyhow::Result<Self> {
        let dir = Path::new(CPU_HIERARCHY).join(format!("nx-bench-bare-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot make the cgroup {}: {e}", dir.display()))?;
        let quota = Self(dir);
        std::fs::write(
            quota.0.join("cpu.cfs_period_us"),
            Self::PERIOD_US.to_string(),
        )?;
        std::fs::write(
            quota.0.join("cpu.cfs_quota_us"),
            (Self::PERIOD_US * percent / 100).to_string(),
        )?;
        Ok(quota)
    }
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The sample app with no namespace of its own: on the loopback of the namespace it is
/// started in (the test host's), under the same CPU quota as the deployment (`cpu_percent`,
/// its `CPUQuota=`), so that the rows differ by the namespace hop only; killed on drop.
struct BareSample {
    // Declared first: dropped (killed) before its cgroup is removed.
    process: Proxy,
    _quota: CpuQuota,
}

fn bare_sample(cpu_percent: u64) -> anyhow::Result<BareSample> {
    let quota = CpuQuota::new(cpu_percent)?;
    let listen = free_addr();
    let child = command_in_cgroup(&quota.0.join("cgroup.procs"), nx_testkit::sample_app())
        .env("PORT", listen.port().to_string())
        .env("HOST", "127.0.0.1")
        .stdout(Stdio::null())
        .spawn()?;
    let process = Proxy {
        child,
        listen,
        _dir: tempfile::tempdir()?,
    };
    wait_listening(listen, "the sample app")?;
    Ok(BareSample {
        process,
        _quota: quota,
    })
}

/// What [`ws_echo`] measured: echo round trips per second, and the echoes lost (a connection
/// that ended or failed before its echo came back, or that could not be opened again), with the
/// first loss's cause.
struct WsLoad {
    per_sec: f64,
    lost: u64,
    first_loss: Option<String>,
}

/// WebSocket echo round trips over `connections` connections for `secs`. A lost echo is
/// counted and its client connects again and goes on, so that one loss does not end the row.
async fn ws_echo(
    target: SocketAddr,
    host_header: &str,
    connections: usize,
    secs: u64,
) -> anyhow::Result<WsLoad> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let mut request = format!("ws://{target}/ws").into_client_request()?;
    request.headers_mut().insert("host", host_header.parse()?);
    let count = Arc::new(AtomicU64::new(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut clients = Vec::new();
    for _ in 0..connections {
        // The first connection of each client must open: a row where none opens is an error.
        let (first, _) = tokio_tungstenite::connect_async(request.clone()).await?;
        let (count, request) = (count.clone(), request.clone());
        clients.push(tokio::spawn(async move {
            let payload = "x".repeat(64);
            let mut losses: Vec<String> = Vec::new();
            let mut ws = Some(first);
            while tokio::time::Instant::now() < deadline {
                let Some(socket) = ws.as_mut() else {
                    match tokio_tungstenite::connect_async(request.clone()).await {
                        Ok((socket, _)) => ws = Some(socket),
                        Err(e) => {
                            losses.push(format!("reconnect failed: {e}"));
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                    continue;
                };
                let sent = socket.send(Message::text(payload.clone())).await;
                match (sent, socket.next().await) {
                    (Ok(()), Some(Ok(_))) => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    (sent, answer) => {
                        losses.push(format!("send: {sent:?}, answer: {answer:?}"));
                        ws = None;
                    }
                }
            }
            losses
        }));
    }
    let mut lost = 0;
    let mut first_loss = None;
    for c in clients {
        let losses = c.await?;
        lost += losses.len() as u64;
        first_loss = first_loss.or(losses.into_iter().next());
    }
    Ok(WsLoad {
        per_sec: count.load(Ordering::Relaxed) as f64 / secs as f64,
        lost,
        first_loss,
    })
}

/// Runs `switch` in a loop while wrk loads `target`; (load, switches).
fn under_switches(
    target: SocketAddr,
    host_header: &str,
    secs: u64,
    switch: impl Fn(bool) -> anyhow::Result<()> + Send + 'static,
) -> anyhow::Result<(Load, u64)> {
    let done = Arc::new(AtomicBool::new(false));
    let switcher = {
        let done = done.clone();
        std::thread::spawn(move || -> anyhow::Result<u64> {
            let mut n = 0;
            while !done.load(Ordering::Relaxed) {
                switch(n % 2 == 0)?;
                n += 1;
            }
            Ok(n)
        })
    };
    let load = wrk(target, host_header, 16, secs);
    done.store(true, Ordering::Relaxed);
    let switches = switcher.join().expect("switcher")?;
    Ok((load?, switches))
}

/// The head of a table of [`print_row`]s; `first` names the first column.
pub fn print_header(first: &str) {
    println!(
        "| {first:<14} | {:>9} | {:>7} | {:>7} | {:>7} | {:>7} | {:>6} |",
        "req/s", "ratio", "p50 ms", "p99 ms", "Δp99 ms", "errors"
    );
    println!(
        "|{:-<16}|{:->11}|{:->9}|{:->9}|{:->9}|{:->9}|{:->8}|",
        "", "", "", "", "", "", ""
    );
}

/// One row of a side-by-side table: `l` against `direct` (ratio of req/s, Δp99).
pub fn print_row(name: &str, l: &Load, direct: &Load) {
    println!(
        "| {name:<14} | {:>9.0} | {:>6.2}x | {:>7.2} | {:>7.2} | {:>+7.2} | {:>6} |",
        l.per_sec,
        l.per_sec / direct.per_sec,
        l.p50_ms,
        l.p99_ms,
        l.p99_ms - direct.p99_ms,
        l.errors
    );
}

/// The run of `loads` (one per round) with the median requests per second, with the errors
/// of every round.
fn median_load(mut loads: Vec<Load>) -> Load {
    let errors = loads.iter().map(|l| l.errors).sum();
    loads.sort_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
    let mut median = loads.swap_remove(loads.len() / 2);
    median.errors = errors;
    median
}

/// `rounds` of `secs` of load on each of the router table's paths, one path after the other in
/// each round (so that a busy moment of a loaded machine falls on all of them alike); for
/// each, the round with the median requests per second, and every round's errors.
pub async fn run(host: &Arc<Host>, secs: u64, rounds: usize) -> anyhow::Result<()> {
    anyhow::ensure!(rounds > 0, "--router-rounds must be at least 1");
    let h = host.clone();
    // The sample app (tiny_http) runs a thread per open connection: wrk's 256, and the idle
    // keep-alive connections each proxy keeps to it after the 256-connection rows (up to about
    // 256 each for the router, nginx and Caddy), then two threads per WebSocket. At TasksMax
    // tiny_http cannot start a thread, panics with its task pool's lock held and serves
    // nothing more (a lead's run lost its WebSocket echoes so: ResetWithoutClosingHandshake).
    let tasks = APP_TASKS_MAX.to_string();
    let (a, b) = tokio::task::spawn_blocking(move || {
        (
            h.push_sample("bench-router", &["-e", "APP_VERSION=a", "--tasks", &tasks]),
            h.push_sample("bench-router", &["-e", "APP_VERSION=b", "--tasks", &tasks]),
        )
    })
    .await?;
    host.nx_json(&["promote", "bench-router", &a]);
    let upstream_a = deployment_addr(host, "bench-router", &a);
    let upstream_b = deployment_addr(host, "bench-router", &b);
    let preview = host.preview_host("bench-router", &a);
    let production = host.production_host("bench-router");
    let router_cgroup = router_cpu_cgroup(host)?;
    let nginx = nginx(upstream_a, &router_cgroup)?;
    let caddy = Caddy::start(None, upstream_a, &router_cgroup)?;
    let cpu_percent = host.deployment("bench-router", &a)["limits"]["cpu_quota_percent"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no cpu_quota_percent in the deployment's view"))?;
    let bare = bare_sample(cpu_percent)?;

    println!(
        "\nRouter, side by side (GET / of the sample app; {rounds} rounds of {secs} s of wrk on each \
         path in turn, the round with the median req/s shown, errors of all rounds; ratio: req/s \
         over direct; Δp99: p99 minus direct's). The app without a namespace runs under the \
         deployment's CPU quota ({cpu_percent}%); nginx and Caddy run in the router's cgroup."
    );
    let paths: [(&str, SocketAddr, &str); 5] = [
        ("no namespace", bare.process.listen, "localhost"),
        ("direct", upstream_a, "localhost"),
        ("NX router", host.router, &preview),
        ("nginx", nginx.listen, "localhost"),
        ("Caddy", caddy.proxy.listen, "localhost"),
    ];
    for connections in [16, 256] {
        let mut samples: Vec<Vec<Load>> = paths.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds {
            for ((_, target, host_header), taken) in paths.iter().zip(&mut samples) {
                taken.push(wrk(*target, host_header, connections, secs)?);
            }
        }
        let loads: Vec<Load> = samples.into_iter().map(median_load).collect();
        let [no_namespace, direct, router, nginx_load, _caddy] = &loads[..] else {
            unreachable!("one load per path")
        };
        println!("\n{connections} connections\n");
        print_header("path");
        for ((name, _, _), l) in paths.iter().zip(&loads) {
            print_row(name, l, direct);
        }
        println!(
            "\nNX router against nginx: {:.2}x the req/s, p99 {:+.2} ms\nthe namespace hop (direct against no namespace): {:.2}x the req/s, p99 {:+.2} ms",
            router.per_sec / nginx_load.per_sec,
            router.p99_ms - nginx_load.p99_ms,
            direct.per_sec / no_namespace.per_sec,
            direct.p99_ms - no_namespace.p99_ms
        );
    }

    let before = app_tasks(host, "bench-router", &a);
    let direct_ws = ws_echo(upstream_a, "localhost", 16, secs).await?;
    let router_ws = ws_echo(host.router, &preview, 16, secs).await?;
    println!(
        "\nThe sample app before the WebSocket rows: {before}; after: {}",
        app_tasks(host, "bench-router", &a)
    );
    println!(
        "\nWebSocket echo, 16 connections, 64-byte messages: direct {:.0}/s ({} lost), NX router {:.0}/s ({} lost) ({:.2}x)",
        direct_ws.per_sec,
        direct_ws.lost,
        router_ws.per_sec,
        router_ws.lost,
        router_ws.per_sec / direct_ws.per_sec
    );
    for (path, ws) in [("direct", &direct_ws), ("NX router", &router_ws)] {
        if let Some(loss) = &ws.first_loss {
            println!("first lost echo ({path}): {loss}");
        }
    }

    drop(caddy);
    println!("\nPromote atomicity under load (wrk, 16 connections, {secs} s; production switched A↔B in a loop)\n");
    println!(
        "| {:<34} | {:>9} | {:>8} | {:>6} |",
        "engine", "requests", "switches", "errors"
    );
    println!("|{:-<36}|{:->11}|{:->10}|{:->8}|", "", "", "", "");
    let (h, a2, b2) = (host.clone(), a.clone(), b.clone());
    let (nx_load, nx_switches) = tokio::task::spawn_blocking({
        let target = host.router;
        let production = production.clone();
        move || {
            under_switches(target, &production, secs, move |to_b| {
                h.nx_json(&["promote", "bench-router", if to_b { &b2 } else { &a2 }]);
                Ok(())
            })
        }
    })
    .await??;
    println!(
        "| {:<34} | {:>9} | {:>8} | {:>6} |",
        "NX router (Pingora; nx promote)", nx_load.requests, nx_switches, nx_load.errors
    );
    let caddy = Arc::new(Caddy::start(
        Some("prod.bench"),
        upstream_a,
        &router_cgroup,
    )?);
    let target = caddy.proxy.listen;
    let (caddy_load, caddy_switches) = tokio::task::spawn_blocking(move || {
        under_switches(target, "prod.bench", secs, move |to_b| {
            caddy.load(
                Some("prod.bench"),
                if to_b { upstream_b } else { upstream_a },
            )
        })
    })
    .await??;
    println!(
        "| {:<34} | {:>9} | {:>8} | {:>6} |",
        "Caddy 2.6 (POST /load)", caddy_load.requests, caddy_switches, caddy_load.errors
    );
    Ok(())
}
