//! Benchmarks of a real NX host (nxd, embedded systemd over D-Bus, bubblewrap, PostgreSQL),
//! printed as tables:
//! 1. push-to-ready: `nx push` of the static sample (already stored) until nx returns, which is
//!    after the deployment accepts connections;
//! 2. StartTransientUnit-to-first-response: a bare unit running the sample, and a full NX
//!    sandbox unit (launcher, seccomp, bubblewrap);
//! 3. the router against direct access, nginx and Caddy, same load (wrk), side by side, its
//!    WebSocket echo rate, and promote atomicity under load for NX's router and Caddy (see
//!    `router`);
//! 4. databases: provisioning a sandbox's role and database, branching a 100 MB database (as a
//!    template copy, and by dump and restore when production has open connections), and a
//!    query's round trip over the unix socket against TCP localhost;
//! 5. tasks: start-to-first-output cold and from the warm pool, bubblewrap and Podman, and
//!    tasks per second sustained (see `tasks`);
//! 6. microVMs: boot-to-ready through NX against the bare VMM, memory per guest, many guests
//!    at once (see `microvm`);
//! 7. sandbox: log throughput through a unit's log writer, and the cost of a sized `/data`
//!    (see `sandbox`);
//! 8. views: `nx ls` and `nx status` with one deployment on the host and with a thousand more
//!    (see `views`);
//! 9. push: push to first answer beside bare bubblewrap, and a push's steps (see `push`);
//! 10. network: a deployment's namespace, veth, addresses and routes set up with 500 kept up,
//!     and the memory each adds, against issue 11's mark (see `network`);
//! 11. tls: HTTPS against plain HTTP through the same router: keep-alive requests/s and p99,
//!     new connections (TLS handshakes) per second (see `tls`).
//! 12. microVM tasks: start-to-first-output on a guest booted for the task and on one booted
//!     ahead (the pool), beside bubblewrap's warm pool (see `microvm_task_table`).
//! 13. wake: a request to an idle-stopped deployment (scale to zero) against the same request
//!     to it running (see `wake`).
//! 14. density: a thousand deployments registered, two hundred running, the rest idle-stopped:
//!     memory per running deployment, nxd's and the router's, `nx ls` and a routed request
//!     against the same host with one deployment (see `density`).

mod bundles;
mod density;
mod idle;
mod microvm;
mod network;
mod push;
mod router;
mod sandbox;
mod steps;
mod tasks;
mod tls;
mod uploads;
mod views;
mod wake;

use clap::Parser;
use nx_orchestrator::config::{Limits, SystemdMode};
use nx_orchestrator::databases::{BranchMethod, Databases};
use nx_orchestrator::names::{DeploymentId, SandboxName};
use nx_orchestrator::supervisor::{Restart, SliceKind, Supervisor, UnitOutput, UnitSpec};
use nx_testkit::Host;
use sqlx::Connection;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Deployments pushed for push-to-ready.
    #[arg(long, default_value_t = 50)]
    pushes: usize,
    /// Units started for StartTransientUnit-to-first-response.
    #[arg(long, default_value_t = 30)]
    units: usize,
    /// Seconds of load for each row of the router tables (16 and 256 connections).
    #[arg(long, default_value_t = 5)]
    load_secs: u64,
    /// Rounds of the router table's rows (each path loaded in turn in each round; the median
    /// round is shown).
    #[arg(long, default_value_t = 3)]
    router_rounds: usize,
    /// Sandboxes created for the provisioning figure.
    #[arg(long, default_value_t = 50)]
    provisions: usize,
    /// Size of the database that is branched, in MB.
    #[arg(long, default_value_t = 100)]
    branch_mb: usize,
    /// Queries for the socket/TCP round trip.
    #[arg(long, default_value_t = 5000)]
    queries: usize,
    /// Tasks run for each start-to-first-output row.
    #[arg(long, default_value_t = 50)]
    tasks: usize,
    /// Seconds of back-to-back tasks for the tasks-per-second figure, each way (through nxd,
    /// and bare bubblewrap), split into --task-rounds turns.
    #[arg(long, default_value_t = 60)]
    sustain_secs: u64,
    /// Turns of that figure: each runs nxd's tasks and the bare ones for
    /// sustain_secs / task_rounds seconds each, alternating which goes first.
    #[arg(long, default_value_t = 6)]
    task_rounds: usize,
    /// Clients running tasks at once for that figure.
    #[arg(long, default_value_t = 4)]
    task_clients: usize,
    /// Boots for each microVM row.
    #[arg(long, default_value_t = 30)]
    boots: usize,
    /// Guests up at once.
    #[arg(long, default_value_t = 20)]
    guests: usize,
    /// MiB a deployment writes to stdout for the log throughput row.
    #[arg(long, default_value_t = 500)]
    log_mib: u64,
    /// Uploads of a 50 MiB binary each way (sftp, nx push).
    #[arg(long, default_value_t = 5)]
    uploads: usize,
    /// Rounds of the bundle rows (each: a 200 MiB bundle pushed new, with one file changed,
    /// unchanged).
    #[arg(long, default_value_t = 3)]
    bundles: usize,
    /// Deployments registered on the host for the views' rows (all but --views-running stopped).
    #[arg(long, default_value_t = 1000)]
    views: usize,
    /// Of those, deployments left running.
    #[arg(long, default_value_t = 10)]
    views_running: usize,
    /// Samples of each view, before and after.
    #[arg(long, default_value_t = 50)]
    view_samples: usize,
    /// Deployments' network namespaces set up (and kept up) for the network cost figures.
    #[arg(long, default_value_t = 500)]
    namespaces: usize,
    /// Another nxd binary (e.g. a release build of an older commit) that serves the views'
    /// host in turn with this one: both measured in the same run, on the same deployments.
    #[arg(long)]
    views_baseline_nxd: Option<std::path::PathBuf>,
    /// Rounds of push to first answer (NX, bare bwrap and an API push each).
    #[arg(long, default_value_t = 50)]
    first_answers: usize,
    /// Wakes of an idle-stopped deployment (scale to zero).
    #[arg(long, default_value_t = 50)]
    wakes: usize,
    /// Tasks run for each microVM task row (cold, pooled guest, and bubblewrap beside them);
    /// a few (e.g. 3) finish on a loaded host, where one TCG boot takes half a minute.
    #[arg(long, default_value_t = 30)]
    vm_tasks: usize,
    /// The accelerator of the microVM task rows: tcg, or kvm where KVM boots the guest kernel
    /// (named in every row; `auto`'s probe fails on a loaded host).
    #[arg(long, default_value = "tcg", value_parser = ["tcg", "kvm"])]
    vm_accel: String,
    /// Density: deployments registered on the host (all but --running idle-stopped).
    #[arg(long, default_value_t = 1000)]
    deployments: usize,
    /// Density: of those, deployments left running.
    #[arg(long, default_value_t = 200)]
    running: usize,
    /// Density: samples of `nx ls` (and the other views) and of a routed request, before and
    /// after.
    #[arg(long, default_value_t = 50)]
    density_samples: usize,
    /// Idle: seconds nxd's CPU is measured in each state.
    #[arg(long, default_value_t = 20)]
    idle_secs: u64,
    /// Idle: idle database sessions open in the last state.
    #[arg(long, default_value_t = 4)]
    idle_sessions: usize,
    /// Run one part only: latency, router, databases, tasks, microvm, microvm-tasks, sandbox,
    /// uploads, bundles, views, push, network, wake, density, tls or idle; or task-throughput (of
    /// tasks, only the tasks per second through nxd and bare, and where nxd's time goes).
    #[arg(long, value_parser = ["latency", "router", "databases", "tasks", "task-throughput", "microvm", "microvm-tasks", "sandbox", "uploads", "bundles", "views", "push", "network", "wake", "density", "tls", "idle"])]
    only: Option<String>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    percentile(&sorted, 0.5)
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn row(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "| {name:<44} | {:>5} | {:>9} | {:>9} | {:>9} |",
        samples.len(),
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().expect("samples"))
    );
}

fn header(title: &str) {
    println!("\n{title}\n");
    println!(
        "| {:<44} | {:>5} | {:>9} | {:>9} | {:>9} |",
        "what", "n", "p50 ms", "p99 ms", "max ms"
    );
    println!(
        "|{:-<46}|{:->7}|{:->11}|{:->11}|{:->11}|",
        "", "", "", "", ""
    );
}

fn push_to_ready(host: &Host, n: usize) -> Vec<Duration> {
    host.push_sample("bench-warmup", &[]); // stores the artifact: later pushes upload nothing
    (0..n)
        .map(|_| {
            let started = Instant::now();
            let id = host.push_sample("bench", &[]);
            let took = started.elapsed();
            host.nx_json(&["rm", &id]);
            took
        })
        .collect()
}

fn wait_for_port(port: u16, deadline: Instant) -> anyhow::Result<()> {
    while TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "port {port} never answered");
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// A bare unit: `env PORT=<port> nx-sample-app`, started over D-Bus, until its port answers.
async fn bare_units(host: &Host, n: usize) -> anyhow::Result<Vec<Duration>> {
    let supervisor =
        Supervisor::connect(SystemdMode::Embedded, host.state_dir.path(), "nx.slice").await?;
    let port = host.ports.1;
    let sample = nx_testkit::sample_app();
    let mut samples = Vec::new();
    for i in 0..n {
        let spec = UnitSpec {
            name: format!("nx-bench-bare-{i}.service"),
            description: "NX bench: bare unit".into(),
            argv: vec![
                "/usr/bin/env".into(),
                format!("PORT={port}"),
                sample.display().to_string(),
            ],
            user: Some("nobody".into()),
            limits: Some(Limits::default()),
            output: UnitOutput::File(host.path("bench-bare.log")),
            restart: Restart::No,
            slice: SliceKind::Tenants,
            graceful_stop: None,
            remain_after_exit: false,
            ambient_capabilities: 0,
            cpu_affinity: Vec::new(),
        };
        let started = Instant::now();
        supervisor.start(&spec).await?;
        let deadline = started + Duration::from_secs(10);
        if let Err(e) = host.netns.run(|| wait_for_port(port, deadline)) {
            let log = std::fs::read_to_string(host.path("bench-bare.log")).unwrap_or_default();
            let state = supervisor.state(&spec.name).await?;
            anyhow::bail!("{e}; unit {state:?}; output:\n{log}");
        }
        samples.push(started.elapsed());
        supervisor.stop(&spec.name).await?;
    }
    Ok(samples)
}

/// A full NX sandbox unit (what `nx start` does): stop a deployment, then time `nx start`
/// until it returns ready, which covers StartTransientUnit, launcher, seccomp and bwrap.
fn sandbox_units(host: &Host, n: usize, push_args: &[&str]) -> Vec<Duration> {
    let id = host.push_sample("bench-start", push_args);
    (0..n)
        .map(|_| {
            host.nx_json(&["stop", &id]);
            let started = Instant::now();
            host.nx_json(&["start", &id]);
            started.elapsed()
        })
        .collect()
}

fn provision(host: &Host, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|i| {
            let name = format!("bench-db-{i}");
            let started = Instant::now();
            host.nx_json(&["sandbox", "create", &name]);
            started.elapsed()
        })
        .collect()
}

/// Branches a sandbox database of `mb` MB, `n` times each way.
async fn branches(
    host: &Host,
    mb: usize,
    n: usize,
) -> anyhow::Result<Vec<(BranchMethod, Duration)>> {
    let socket = host.path("postgres/socket");
    let admin = format!(
        "postgres://postgres@localhost/postgres?host={}",
        socket.display()
    );
    // The host's own embedded manager (adopted): the copy's pg_dump and pg_restore run there.
    let supervisor = nx_orchestrator::supervisor::Supervisor::connect(
        nx_orchestrator::config::SystemdMode::Embedded,
        host.state_dir.path(),
        "nx.slice",
    )
    .await?;
    let dbs = Databases::connect(
        &admin,
        &socket,
        host.state_dir.path(),
        &nx_orchestrator::config::DatabasesConfig::default(),
        std::sync::Arc::new(supervisor),
        // The host's own database gate, adopted (its settings are nxd's defaults).
        host.path("bin/nxd-launcher"),
        nx_orchestrator::config::LogsConfig::default().keep,
    )
    .await?;
    let sandbox = SandboxName::parse("bench-big")?;
    let prod = dbs.ensure_sandbox(&sandbox).await?;
    let prod_admin = format!(
        "postgres://postgres@localhost/{}?host={}",
        prod.database,
        socket.display()
    );
    let mut conn = sqlx::PgConnection::connect(&prod_admin).await?;
    sqlx::query(&format!("SET ROLE {}", prod.role))
        .execute(&mut conn)
        .await?;
    sqlx::query(&format!(
        "CREATE TABLE big AS SELECT i, repeat(md5(i::text), 30) AS payload FROM generate_series(1, {}) i",
        mb * 1024 * 1024 / 1000
    ))
    .execute(&mut conn)
    .await?;
    let size: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    println!("\nbranching a {} MB database", size >> 20);
    let mut out = Vec::new();
    for busy in [false, true] {
        // An open connection to production makes a template copy impossible.
        let holder = if busy {
            Some(sqlx::PgConnection::connect(&prod_admin).await?)
        } else {
            None
        };
        for _ in 0..n {
            let id = DeploymentId::generate();
            let started = Instant::now();
            let (_, method) = dbs.branch(&sandbox, &id).await?;
            out.push((method, started.elapsed()));
            dbs.drop_branch(&id).await?;
        }
        drop(holder);
    }
    Ok(out)
}

/// `SELECT 1` round trips to one throwaway cluster over its socket and over TCP.
async fn round_trips(n: usize) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let port = nx_testkit::free_port();
    let pg = tokio::task::spawn_blocking(move || nx_testkit::ThrowawayPostgres::start(Some(port)))
        .await?;
    let socket = format!(
        "postgres://postgres@localhost:{port}/postgres?host={}",
        pg.socket_dir().display()
    );
    let tcp = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let mut over_socket = sqlx::PgConnection::connect(&socket).await?;
    let mut over_tcp = sqlx::PgConnection::connect(&tcp).await?;
    let (mut socket, mut tcp) = (Vec::with_capacity(n), Vec::with_capacity(n));
    // Interleaved, so that neither side profits from running second.
    for _ in 0..n {
        for (conn, samples) in [(&mut over_socket, &mut socket), (&mut over_tcp, &mut tcp)] {
            let started = Instant::now();
            let _: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *conn).await?;
            samples.push(started.elapsed());
        }
    }
    Ok((socket, tcp))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.only.as_deref() == Some("network") {
        // Needs no host: it sets up namespaces of its own.
        return network_table(&args).await;
    }
    if args.only.as_deref() == Some("tls") {
        // On a host of its own, with HTTPS on.
        let secs = args.load_secs;
        return tokio::task::spawn_blocking(move || tls::run(secs)).await?;
    }
    // The log throughput row's deployment keeps all it writes (`sandbox::log_throughput`).
    let log_cap = sandbox::log_cap_mb(args.log_mib);
    let host = tokio::task::spawn_blocking(move || {
        // With nx-vm-init, as the quick start's: nxd keeps standbys (see `push`).
        let mut host = Host::start_with(&format!(
            "[microvm]\ninit = {:?}\n",
            nx_testkit::static_binary("nx-vm-init")
        ));
        host.restart_nxd_with_sandbox_keys(&format!("max_log_mb = {}", log_cap.max(1024)));
        host
    })
    .await?;
    println!(
        "NX benchmarks: real nxd, embedded systemd over D-Bus, bubblewrap, PostgreSQL; {} cores",
        std::thread::available_parallelism()?.get()
    );

    let host = std::sync::Arc::new(host);
    let part = |name: &str| args.only.as_deref().is_none_or(|only| only == name);
    if part("latency") {
        latency(&host, &args).await?;
    }
    if part("router") {
        // Inside the host's namespace (threads and processes started there stay there): the
        // deployments' addresses are reachable only from it.
        let (h, secs, rounds) = (host.clone(), args.load_secs, args.router_rounds);
        tokio::task::spawn_blocking(move || {
            h.netns.run(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(router::run(&h, secs, rounds))
            })
        })
        .await??;
    }
    if part("databases") {
        databases(&host, &args).await?;
    }
    if part("tasks") {
        task_table(&host, &args).await?;
    }
    if part("tasks") || args.only.as_deref() == Some("task-throughput") {
        task_throughput_table(&host, &args).await?;
    }
    if part("microvm") {
        microvm_table(&args).await?;
    }
    if part("microvm-tasks") {
        microvm_task_table(&args).await?;
    }
    if part("sandbox") {
        sandbox_table(&host, &args).await?;
    }
    if part("uploads") {
        upload_table(&args).await?;
    }
    if part("bundles") {
        bundle_table(&host, &args).await?;
    }
    if part("views") {
        view_table(&args).await?;
    }
    if part("push") {
        push_table(&host, &args).await?;
    }
    if part("network") {
        network_table(&args).await?;
    }
    if part("wake") {
        wake_table(&args).await?;
    }
    if part("density") {
        density_table(&args).await?;
    }
    if part("idle") {
        let (h, secs, sessions) = (host.clone(), args.idle_secs, args.idle_sessions);
        tokio::task::spawn_blocking(move || idle::run(&h, secs, sessions)).await??;
    }
    if part("tls") {
        let secs = args.load_secs;
        tokio::task::spawn_blocking(move || tls::run(secs)).await??;
    }
    Ok(())
}

/// On a host of its own: requests that wake an idle-stopped deployment, and the same request
/// to it running.
async fn wake_table(args: &Args) -> anyhow::Result<()> {
    let rounds = args.wakes;
    let f = tokio::task::spawn_blocking(move || wake::run(rounds)).await??;
    header("Scale to zero: GET / of the sample app through the router (bubblewrap)");
    row("idle-stopped: the request wakes it", f.wake.clone());
    row("running: the same request", f.running.clone());
    println!(
        "
wake p50 {:.1} ms (mark <= 50 ms); {:.0}x the running request's p50",
        median(&f.wake).as_secs_f64() * 1000.0,
        median(&f.wake).as_secs_f64() / median(&f.running).as_secs_f64()
    );
    let mean_ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("\nnxd's side of a wake (its metrics: nx_wake_duration_seconds and _step_; means)\n");
    println!("| step | mean ms | share of nxd's wake |\n|---|---|---|");
    for (step, took) in &f.steps {
        println!(
            "| {step} | {:.1} | {:.0}% |",
            mean_ms(*took),
            100.0 * took.as_secs_f64() / f.nxd_mean.as_secs_f64()
        );
    }
    let mean_wake = f.wake.iter().sum::<Duration>() / f.wake.len().max(1) as u32;
    println!(
        "| nxd's wake in all | {:.1} | 100% |\n| the rest of the request's mean ({:.1} ms): router, test forwarder, client | {:.1} | |",
        mean_ms(f.nxd_mean),
        mean_ms(mean_wake),
        mean_ms(mean_wake.saturating_sub(f.nxd_mean))
    );
    println!(
        "load average (1, 5, 15 min, /proc/loadavg): {}",
        load_average()
    );
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// p50 / p99 of `samples`, in ms.
fn p50_p99(samples: &[Duration]) -> String {
    let mut sorted = samples.to_vec();
    sorted.sort();
    format!(
        "{} / {} ms",
        ms(percentile(&sorted, 0.5)),
        ms(percentile(&sorted, 0.99))
    )
}

/// On a host of its own: `--deployments` registered, `--running` of them running.
async fn density_table(args: &Args) -> anyhow::Result<()> {
    let (n, running, samples) = (args.deployments, args.running, args.density_samples);
    let f = tokio::task::spawn_blocking(move || density::run(n, running, samples)).await??;
    let (a, d) = (&f.alone, &f.dense);
    println!(
        "\nDensity: {} deployments of the sample registered in one sandbox, {} running, {} idle-stopped (pushed in {:.0} s, all in their phase {:.0} s later), beside one deployment alone (bubblewrap)\n",
        f.deployments,
        f.running,
        f.deployments - f.running,
        f.registering.as_secs_f64(),
        f.settling.as_secs_f64()
    );
    println!(
        "| what | 1 deployment | {} deployments ({} running) |",
        f.deployments + 1,
        f.running + 1
    );
    println!("|---|---|---|");
    if let (Some(first), Some(last)) = (f.per_deployment.first(), f.per_deployment.last()) {
        let mean = f.per_deployment.iter().sum::<u64>() / f.per_deployment.len() as u64;
        println!(
            "| memory per running deployment (its cgroup, /metrics): min / p50 / mean / max | | {} / {} / {} / {} |",
            mib(*first),
            mib(f.per_deployment[f.per_deployment.len() / 2]),
            mib(mean),
            mib(*last)
        );
    }
    let added = d.units_memory.saturating_sub(a.units_memory);
    println!(
        "| every unit, the router and the manager (manager's memory cgroup) | {} | {} (+{} per running deployment added) |",
        mib(a.units_memory),
        mib(d.units_memory),
        mib(added / f.running.max(1) as u64)
    );
    let mark = if f.nxd_peak_rss < 100 << 20 {
        "holds"
    } else {
        "MISSED"
    };
    println!(
        "| nxd resident memory (VmRSS) | {} | {} (peak VmHWM {}; mark < 100 MiB: {mark}) |",
        mib(a.nxd_rss),
        mib(d.nxd_rss),
        mib(f.nxd_peak_rss)
    );
    println!(
        "| nx-router resident memory (VmRSS) | {} | {} |",
        mib(a.router_rss),
        mib(d.router_rss)
    );
    println!(
        "| nx ls, p50 / p99 (n {}) | {} | {} |",
        a.views.ls_cli.len(),
        p50_p99(&a.views.ls_cli),
        p50_p99(&d.views.ls_cli)
    );
    println!(
        "| GET /v1/sandboxes (nx ls's request), p50 / p99 | {} | {} |",
        p50_p99(&a.views.ls_api),
        p50_p99(&d.views.ls_api)
    );
    println!(
        "| GET / through the router to one running deployment, p50 / p99 (n {}) | {} | {} |",
        a.routed.len(),
        p50_p99(&a.routed),
        p50_p99(&d.routed)
    );
    println!(
        "\nwith {} routes / with 1 (p50): routed request {:.2}x, nx ls {:.2}x",
        f.deployments + 1,
        median(&d.routed).as_secs_f64() / median(&a.routed).as_secs_f64(),
        median(&d.views.ls_cli).as_secs_f64() / median(&a.views.ls_cli).as_secs_f64()
    );
    println!(
        "load average (1, 5, 15 min, /proc/loadavg): {}",
        load_average()
    );
    Ok(())
}

async fn sandbox_table(host: &std::sync::Arc<Host>, args: &Args) -> anyhow::Result<()> {
    let (h, mib) = (host.clone(), args.log_mib);
    let logs = tokio::task::spawn_blocking(move || sandbox::log_throughput(&h, mib)).await??;
    let n = args.units;
    let images = tokio::task::spawn_blocking(move || sandbox::image_creation(n)).await??;
    let h = host.clone();
    let with_disk =
        tokio::task::spawn_blocking(move || sandbox_units(&h, n, &["--disk", "1024"])).await?;
    let h = host.clone();
    let plain = tokio::task::spawn_blocking(move || sandbox_units(&h, n, &["--disk", "0"])).await?;
    let secs = logs.to_disk.as_secs_f64();
    println!(
        "
Log pipeline: a deployment writes {} MiB of 100-byte lines to stdout
",
        logs.mib
    );
    println!(
        "| what | value |
|---|---|"
    );
    println!(
        "| the program's time, stdout through NX's log writer | {:.2} s ({:.0} MiB/s) |",
        logs.program_nx.as_secs_f64(),
        logs.mib as f64 / logs.program_nx.as_secs_f64()
    );
    println!(
        "| the same program, stdout to /dev/null, outside NX | {:.2} s ({:.0} MiB/s) |",
        logs.program_bare.as_secs_f64(),
        logs.mib as f64 / logs.program_bare.as_secs_f64()
    );
    println!(
        "| NX over /dev/null (program's time) | {:.2}x |",
        logs.program_nx.as_secs_f64() / logs.program_bare.as_secs_f64()
    );
    println!(
        "| stored: lines, lines/s, MiB/s (records, with stamps) | {} lines, {:.0} lines/s, {:.0} MiB/s |",
        logs.lines_stored,
        logs.lines_stored as f64 / secs,
        (logs.bytes_stored >> 20) as f64 / secs
    );
    println!(
        "| dropped (counted in the log) | {} lines ({:.1}%) |",
        logs.lines_dropped,
        100.0 * logs.lines_dropped as f64 / (logs.lines_dropped + logs.lines_stored).max(1) as f64
    );
    header("Sized /data");
    let ratio = median(&images.copied).as_secs_f64() / median(&images.formatted).as_secs_f64();
    row(
        "1 GiB image: copy of the template (per push)",
        images.copied,
    );
    row("1 GiB image: mkfs.ext4 (per push before)", images.formatted);
    row("nx start-to-ready, /data a 1 GiB image", with_disk);
    row("nx start-to-ready, no /data to write (--disk 0)", plain);
    println!("\n1 GiB image, copy over mkfs.ext4 (p50): {ratio:.2}x");
    Ok(())
}

async fn push_table(host: &std::sync::Arc<Host>, args: &Args) -> anyhow::Result<()> {
    let (h, n) = (host.clone(), args.first_answers);
    let f = tokio::task::spawn_blocking(move || h.netns.run(|| push::run(&h, n))).await??;
    let ratio = |p: f64| {
        let (mut nx, mut bare) = (f.nx.clone(), f.bwrap.clone());
        nx.sort();
        bare.sort();
        percentile(&nx, p).as_secs_f64() / percentile(&bare, p).as_secs_f64()
    };
    header("Push to first answer (the sample, bytes stored; rounds interleaved)");
    row("nx push until the preview URL answers 200", f.nx.clone());
    row(
        "nx push until it exits (ready; the rest: the router's first answer)",
        f.nx_exited.clone(),
    );
    row(
        "the same, started cold (a limit no standby has)",
        f.cold.clone(),
    );
    row("bare bwrap until the program answers 200", f.bwrap.clone());
    row("POST /v1/deployments (API push, to ready)", f.api.clone());
    println!(
        "\nNX over bare bwrap: p50 {:.2}x (mark <= 2x), p99 {:.2}x (mark <= 3x)",
        ratio(0.5),
        ratio(0.99)
    );
    let total = median(&f.api).as_secs_f64();
    header("A push's steps (nxd's Server-Timing, API pushes)");
    for (name, samples) in &f.steps {
        let share = 100.0 * median(samples).as_secs_f64() / total;
        row(
            &format!("{name} ({share:.0}% of the push p50)"),
            samples.clone(),
        );
    }
    println!("\nlauncher, netns, mounts, exec_to_ready: the launcher's phases, which together make start + ready (nx_orchestrator::backend::launch_times)");
    Ok(())
}

/// On a host of its own, with ports for all the deployments.
async fn view_table(args: &Args) -> anyhow::Result<()> {
    let (many, running, samples) = (args.views, args.views_running, args.view_samples);
    let baseline = args.views_baseline_nxd.clone();
    let f =
        tokio::task::spawn_blocking(move || views::run(many, running, samples, baseline)).await??;
    let p50 = |d: &[Duration]| median(d).as_secs_f64() * 1000.0;
    header(&format!(
        "Views: sandbox solo (1 deployment), alone and with {} more on the host ({} running; registered in {:.0} s)",
        f.many,
        f.running,
        f.registering.as_secs_f64()
    ));
    let label = |i: usize| match (i, f.builds.len()) {
        (_, 1) => String::new(),
        (0, _) => " [this]".to_owned(),
        _ => " [baseline]".to_owned(),
    };
    for (when, among) in [("alone", false), ("+ many", true)] {
        for (i, b) in f.builds.iter().enumerate() {
            let v = if among { &b.among_many } else { &b.alone };
            let label = label(i);
            row(&format!("nx ls, {when}{label}"), v.ls_cli.clone());
            row(
                &format!("GET /v1/sandboxes, {when}{label}"),
                v.ls_api.clone(),
            );
            row(
                &format!("nx status solo, {when}{label}"),
                v.status_cli.clone(),
            );
            row(
                &format!("GET /v1/sandboxes/solo, {when}{label}"),
                v.status_api.clone(),
            );
        }
    }
    println!();
    for (i, b) in f.builds.iter().enumerate() {
        println!(
            "{}{}: nx ls p50 with {} deployments: {:.1} ms (mark <= 20 ms); with them / alone (p50): GET /v1/sandboxes {:.2}x, nx status solo {:.2}x (CLI), {:.2}x (API)",
            b.nxd.display(),
            label(i),
            f.many + 1,
            p50(&b.among_many.ls_cli),
            p50(&b.among_many.ls_api) / p50(&b.alone.ls_api),
            p50(&b.among_many.status_cli) / p50(&b.alone.status_cli),
            p50(&b.among_many.status_api) / p50(&b.alone.status_api),
        );
    }
    if let [this, baseline] = &f.builds[..] {
        println!(
            "this build / the baseline, with {} deployments (p50): nx ls {:.2}x, GET /v1/sandboxes {:.2}x, GET /v1/sandboxes/solo {:.2}x",
            f.many + 1,
            p50(&this.among_many.ls_cli) / p50(&baseline.among_many.ls_cli),
            p50(&this.among_many.ls_api) / p50(&baseline.among_many.ls_api),
            p50(&this.among_many.status_api) / p50(&baseline.among_many.status_api),
        );
    }
    Ok(())
}

/// On a host of its own, with SFTP on.
async fn upload_table(args: &Args) -> anyhow::Result<()> {
    let rounds = args.uploads;
    let f = tokio::task::spawn_blocking(move || {
        let port = nx_testkit::free_port();
        let host = Host::start_with(&format!("[sftp]\nlisten = \"127.0.0.1:{port}\"\n"));
        host.forward(port);
        uploads::run_rounds(&host, port, rounds)
    })
    .await??;
    let mib = uploads::MIB as f64;
    let rate = |d: &[Duration]| mib / median(d).as_secs_f64();
    header(&format!(
        "Uploads: a {} MiB binary to a ready deployment (new bytes each round)",
        uploads::MIB
    ));
    row("nx push (HTTP upload, verify, deploy)", f.nx_push.clone());
    row("sftp put (SFTP upload, verify, deploy)", f.sftp.clone());
    row("deploy only (nx push, bytes stored)", f.deploy_only.clone());
    println!(
        "\nend to end (p50): nx push {:.1} MiB/s, sftp {:.1} MiB/s; sftp/nx push time {:.2}x",
        rate(&f.nx_push),
        rate(&f.sftp),
        median(&f.sftp).as_secs_f64() / median(&f.nx_push).as_secs_f64()
    );
    Ok(())
}

/// A 200 MiB bundle: every file new, one file changed, nothing changed.
async fn bundle_table(host: &std::sync::Arc<Host>, args: &Args) -> anyhow::Result<()> {
    let (h, rounds) = (host.clone(), args.bundles);
    let f = tokio::task::spawn_blocking(move || bundles::run_rounds(&h, rounds)).await??;
    let total = bundles::FILES * bundles::FILE_MIB;
    header(&format!(
        "Bundles: nx push ./dir of {total} MiB ({} files of {} MiB and the program) to a ready deployment",
        bundles::FILES,
        bundles::FILE_MIB
    ));
    let mib = |k: &bundles::Kind| {
        k.sent.iter().sum::<u64>() as f64 / k.sent.len() as f64 / f64::from(1 << 20)
    };
    for (name, kind) in [
        ("every file new (full upload)", &f.full),
        ("one 4 MiB file changed", &f.one_changed),
        ("nothing changed", &f.unchanged),
    ] {
        row(
            &format!("{name}: {:.1} MiB sent", mib(kind)),
            kind.times.clone(),
        );
    }
    println!(
        "
re-push with one file changed vs full upload (p50): time {:.2}x, bytes sent {:.3}x",
        median(&f.one_changed.times).as_secs_f64() / median(&f.full.times).as_secs_f64(),
        mib(&f.one_changed) / mib(&f.full)
    );
    Ok(())
}

/// The mark of issue 11: per deployment, at most 5 ms and 256 KiB.
const NETWORK_MARK: (Duration, f64) = (Duration::from_millis(5), 256.0);

async fn network_table(args: &Args) -> anyhow::Result<()> {
    let n = args.namespaces;
    println!("\nload average before: {}", load_average());
    let dual = tokio::task::spawn_blocking(move || network::setup_cost(n, true)).await??;
    let v4 = tokio::task::spawn_blocking(move || network::setup_cost(n, false)).await??;
    println!("load average after: {}", load_average());
    header(&format!(
        "Deployment network: namespace + veth + addresses + routes, {n} kept up"
    ));
    row(
        "setup, IPv4 + IPv6 (launcher's attach)",
        dual.samples.clone(),
    );
    row("setup, IPv4 only (host without IPv6)", v4.samples.clone());
    for (name, cost) in [("IPv4 + IPv6", &dual), ("IPv4 only", &v4)] {
        let p50 = median(&cost.samples);
        let mut sorted = cost.samples.clone();
        sorted.sort();
        let p99 = percentile(&sorted, 0.99);
        let (available, kernel) = cost.kib_each;
        println!(
            "\n{name}: kernel memory per deployment (SUnreclaim + Percpu + VmallocUsed, median of {} rounds): {kernel:.0} KiB\n  an empty network namespace alone: {:.0} KiB; the veth pair, addresses and routes: {:.0} KiB\n  (MemAvailable fell {available:.0} KiB per deployment: the whole machine's, noisy while others run)\n  against the mark ({} ms, {:.0} KiB): p50 {:.2}x, p99 {:.2}x, memory {:.2}x",
            network::ROUNDS,
            cost.bare_kib_each,
            kernel - cost.bare_kib_each,
            NETWORK_MARK.0.as_millis(),
            NETWORK_MARK.1,
            p50.as_secs_f64() / NETWORK_MARK.0.as_secs_f64(),
            p99.as_secs_f64() / NETWORK_MARK.0.as_secs_f64(),
            kernel / NETWORK_MARK.1
        );
    }
    println!(
        "\nIPv6's share (IPv4 + IPv6 over IPv4 only): setup p50 {:.2}x, memory {:+.0} KiB per deployment",
        median(&dual.samples).as_secs_f64() / median(&v4.samples).as_secs_f64(),
        dual.kib_each.1 - v4.kib_each.1
    );
    Ok(())
}

/// On a host of its own, with the microvm backend (the accelerator probed: `auto`).
async fn microvm_table(args: &Args) -> anyhow::Result<()> {
    let (boots, guests) = (args.boots, args.guests);
    let f = tokio::task::spawn_blocking(move || {
        let host = Host::start_with(&nx_testkit::microvm_config("auto"));
        microvm::run(&host, boots, guests)
    })
    .await??;
    let overhead = median(&f.nx_boot).as_secs_f64() / median(&f.bare_answer).as_secs_f64();
    header(&format!("microVMs ({})", f.accel));
    row(
        "NX microvm: nx start to first HTTP answer",
        f.nx_boot.clone(),
    );
    row("bare qemu: start to first HTTP answer", f.bare_answer);
    row("bare qemu: start to the app's console line", f.bare_marker);
    row("NX bubblewrap: nx start to ready (same app)", f.bwrap_start);
    println!(
        "\nNX over the bare VMM (p50): {overhead:.2}x\nidle guest PSS (VMM process): {} KiB\n{} guests pushed at once: all answering after {:.1} s, {} KiB PSS each",
        f.idle_pss_kib, f.many, f.many_secs, f.many_pss_kib
    );
    Ok(())
}

/// microVM tasks, start to first output: on a host whose every guest boots for its task, on one
/// with a guest booted ahead (`[microvm] pool_size = 1`, `snapshot = false`), and on one whose
/// pool restores its guests from a snapshot (`snapshot = true`); each pooled task waits until a
/// guest waits, and the time from the previous task's start until then is the refill (a boot or
/// a restore). Bubblewrap's warm pool on the last host beside them. One host at a time: the
/// others' guests would share the CPU.
async fn microvm_task_table(args: &Args) -> anyhow::Result<()> {
    let n = args.vm_tasks;
    let accel = args.vm_accel.as_str();
    let mut loads = vec![("start", load_average())];
    let sample = nx_testkit::sample_app();
    let mut rows = Vec::new();
    let mut refills = Vec::new();
    let mut p50 = Vec::new();
    let hosts = [
        ("cold, a guest booted per task", 0, false),
        ("warm pool, guests booted ahead", 1, false),
        ("warm pool, guests restored from a snapshot", 1, true),
    ];
    for (i, (pool, size, snapshot)) in hosts.into_iter().enumerate() {
        // The accelerator named in the config, not probed: `auto` needs a TCG boot within
        // 20 s, which this shared host missed at load 20+ (22-34 s per boot, 13:49 UTC,
        // 2026-11-30), and KVM (PVM here) boots no stock kernel.
        let config = format!(
            "{}pool_size = {size}\nsnapshot = {snapshot}\n",
            nx_testkit::microvm_config(accel)
        );
        let program = sample.clone();
        let (host, sha) = tokio::task::spawn_blocking(move || {
            let host = Host::start_with(&config);
            let sha = tasks::upload(&host, &program);
            (host, sha)
        })
        .await?;
        let sha = sha?;
        let pause = match size {
            0 => tasks::Pause::For(Duration::from_millis(100)),
            _ => tasks::Pause::UntilGuestReady,
        };
        let run = tasks::measure(&host, &sha, Some("microvm"), n, pause).await?;
        p50.push(median(&run.samples));
        rows.push((format!("microVM ({accel}), {pool}"), run.samples));
        if size > 0 {
            let how = if snapshot { "restore" } else { "boot" };
            refills.push((
                format!("microVM ({accel}) pool refill: a {how}, task start to a guest waiting"),
                run.refills,
            ));
        }
        if i + 1 == hosts.len() {
            let pause = tasks::Pause::For(Duration::from_millis(100));
            let (samples, warm) = tasks::start_to_output(&host, &sha, None, n, pause).await?;
            rows.push((
                format!("bubblewrap, warm pool ({warm} of {n} warm)"),
                samples,
            ));
        }
        tokio::task::spawn_blocking(move || drop(host)).await?;
        loads.push((pool, load_average()));
    }
    header("microVM tasks: start-to-first-output (POST /v1/tasks to the first stdout line)");
    for (name, samples) in rows.into_iter().chain(refills) {
        row(&name, samples);
    }
    let ratio = |i: usize| p50[i].as_secs_f64() / p50[0].as_secs_f64();
    println!(
        "\nwarm/cold (p50): booted pool {:.2}, restored pool {:.2} (mark <= 0.20)",
        ratio(1),
        ratio(2)
    );
    println!("load average (1, 5, 15 min, /proc/loadavg) at the start and after each host:");
    for (when, load) in loads {
        println!("  {when}: {load}");
    }
    Ok(())
}

/// The first three fields of /proc/loadavg (proc(5)): the 1, 5 and 15 minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

async fn latency(host: &std::sync::Arc<Host>, args: &Args) -> anyhow::Result<()> {
    let (pushes_n, units) = (args.pushes, args.units);
    let h = host.clone();
    let pushes = tokio::task::spawn_blocking(move || push_to_ready(&h, pushes_n)).await?;
    let h = host.clone();
    let sandboxes = tokio::task::spawn_blocking(move || sandbox_units(&h, units, &[])).await?;
    let bare = bare_units(host, units).await?;
    header("Latency");
    row("push-to-ready (nx push, artifact stored)", pushes);
    row("StartTransientUnit-to-first-response, bare", bare);
    row("nx start-to-ready (NX sandbox unit)", sandboxes);
    Ok(())
}

async fn databases(host: &std::sync::Arc<Host>, args: &Args) -> anyhow::Result<()> {
    let (h, n) = (host.clone(), args.provisions);
    let provisioned = tokio::task::spawn_blocking(move || provision(&h, n)).await?;
    let branched = branches(host, args.branch_mb, 3).await?;
    let (socket, tcp) = round_trips(args.queries).await?;
    header("Databases");
    row("nx sandbox create (role + database)", provisioned);
    for method in [BranchMethod::Template, BranchMethod::DumpRestore] {
        let samples: Vec<Duration> = branched
            .iter()
            .filter(|(m, _)| *m == method)
            .map(|(_, d)| *d)
            .collect();
        if !samples.is_empty() {
            row(
                &format!("branch {} MB, {method:?}", args.branch_mb),
                samples,
            );
        }
    }
    let (s50, t50) = (median(&socket), median(&tcp));
    row("SELECT 1 round trip, unix socket", socket);
    row("SELECT 1 round trip, TCP 127.0.0.1", tcp);
    println!(
        "\nsocket/TCP round trip (p50): {:.2}x",
        s50.as_secs_f64() / t50.as_secs_f64()
    );
    Ok(())
}

/// Start-to-first-output on this host (warm pool of 2 to 8) and on a second one with no pool.
async fn task_table(host: &std::sync::Arc<Host>, args: &Args) -> anyhow::Result<()> {
    let cold_host =
        tokio::task::spawn_blocking(|| Host::start_with("[tasks]\npool_size = 0\n")).await?;
    let build = tempfile::tempdir_in("/var/tmp")?;
    let dir = build.path().to_owned();
    let image =
        tokio::task::spawn_blocking(move || nx_testkit::build_sample_image(&dir, "linux/amd64"))
            .await?;
    let pause = Duration::from_millis(100);
    let mut rows = Vec::new();
    for (program, file) in [("bubblewrap", nx_testkit::sample_app()), ("Podman", image)] {
        for (pool, h) in [("cold", &cold_host), ("warm pool", &**host)] {
            let sha = tasks::upload(h, &file)?;
            let (samples, warm) =
                tasks::start_to_output(h, &sha, None, args.tasks, tasks::Pause::For(pause)).await?;
            rows.push((
                format!("{program}, {pool} ({warm} of {} warm)", args.tasks),
                samples,
            ));
        }
    }
    header("Tasks: start-to-first-output (POST /v1/tasks to the first stdout line)");
    for (name, samples) in rows {
        row(&name, samples);
    }
    Ok(())
}

/// Tasks per second of concurrent clients through nxd against bare bubblewrap running the
/// same sandbox, in turns; and where an nxd task's time goes.
async fn task_throughput_table(host: &Host, args: &Args) -> anyhow::Result<()> {
    let sha = tasks::upload(host, &nx_testkit::sample_app())?;
    let rounds = args.task_rounds.max(1);
    let secs = args.sustain_secs as f64 / rounds as f64;
    let load_before = load_average();
    let t = tasks::throughput(host, &sha, args.task_clients, secs, rounds).await?;
    let title = format!(
        "Tasks per second: {} clients back to back, the sample's `task print hi`, {rounds} rounds of {secs:.0} s each way",
        args.task_clients
    );
    header(&title);
    row(
        &format!("NX, POST /v1/tasks to its end ({} warm)", t.warm),
        t.nx.latency.clone(),
    );
    row(
        "bare bwrap, the same sandbox, to its end",
        t.bare.latency.clone(),
    );
    let mut ratios = t.rounds.clone();
    ratios.sort_by(f64::total_cmp);
    println!(
        "\ntasks/s: NX {:.1}, bare bwrap {:.1}; NX / bare {:.2}x (mark >= 0.8x); rounds {:.2}x to {:.2}x",
        t.nx.per_sec(),
        t.bare.per_sec(),
        t.nx.per_sec() / t.bare.per_sec(),
        ratios[0],
        ratios[ratios.len() - 1],
    );
    let mean = |d: &[Duration]| d.iter().sum::<Duration>().as_secs_f64() * 1000.0 / d.len() as f64;
    println!("\nWhere an NX task's time goes (nxd's nx_task_step_duration_seconds, means over the NX turns)\n");
    println!("| step | mean ms |\n|---|---|");
    let mut nxd_total = None;
    for (step, took) in &t.steps {
        let ms = took.as_secs_f64() * 1000.0;
        match step.as_str() {
            "task" => nxd_total = Some(ms),
            "refill" => {
                println!("| refill (a unit started for the pool, in the background) | {ms:.2} |")
            }
            _ => println!("| {step} | {ms:.2} |"),
        }
    }
    if let Some(total) = nxd_total {
        println!("| all of nxd's steps (task) | {total:.2} |");
        println!(
            "| HTTP and client (the client's mean less nxd's) | {:.2} |",
            mean(&t.nx.latency) - total
        );
    }
    println!(
        "| the client's mean per task | {:.2} |\n| bare bwrap's mean per task | {:.2} |",
        mean(&t.nx.latency),
        mean(&t.bare.latency)
    );
    println!(
        "\nload average (1, 5, 15 min, /proc/loadavg): before {load_before}, after {}",
        load_average()
    );
    Ok(())
}
