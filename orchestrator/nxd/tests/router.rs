//! The router as a unit of its own, beside nxd: production keeps answering while nxd restarts
//! under load, and neither the API nor the router stops serving under 1,100 idle connections
//! each when nxd starts at systemd's default soft limit of 1,024 open files; a router that
//! listens below port 1024 gets `CAP_NET_BIND_SERVICE` as an ambient capability.

use nx_testkit::Host;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn production_answers_every_request_while_nxd_restarts_under_load() {
    let mut host = Host::start();
    let v1 = host.push_sample("steady", &["-e", "APP_VERSION=v1"]);
    host.nx_json(&["promote", "steady", &v1]);
    let router = host.router;
    let production = host.production_host("steady");

    let done = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (done, production) = (done.clone(), production.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                let (mut ok, mut failed) = (0usize, Vec::new());
                while !done.load(Ordering::Relaxed) {
                    let answer = client
                        .get(format!("http://{router}/"))
                        .header("host", &production)
                        .send()
                        .and_then(|r| Ok((r.status(), r.text()?)));
                    match answer {
                        Ok((status, body)) if status == 200 && body.contains("v1") => ok += 1,
                        Ok((status, body)) => failed.push(format!("{status} {body}")),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..2 {
        host.restart_nxd();
        std::thread::sleep(Duration::from_millis(500));
    }
    done.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for c in clients {
        let (o, f) = c.join().unwrap();
        ok += o;
        failed.extend(f);
    }
    eprintln!(
        "{ok} requests served across two nxd restarts, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(
        ok >= 300,
        "only {ok} requests: the load was too light to tell"
    );
    // nxd is back and still drives the router.
    let v2 = host.push_sample("steady", &["-e", "APP_VERSION=v2"]);
    host.nx_json(&["promote", "steady", &v2]);
    assert!(host.get(&production, "/").1.contains("v2"));
}

#[test]
fn eleven_hundred_idle_connections_each_leave_the_api_and_the_router_serving() {
    // nxd (and through the manager, the router) start at 1,024 open files, as under systemd.
    let (_, hard) = rlimit::Resource::NOFILE.get().unwrap();
    rlimit::Resource::NOFILE.set(1024, hard).unwrap();
    let host = Host::start();
    rlimit::Resource::NOFILE.set(hard, hard).unwrap();
    let v1 = host.push_sample("crowd", &[]);
    host.nx_json(&["promote", "crowd", &v1]);

    let connect = |addr, n| -> Vec<TcpStream> {
        (0..n)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect()
    };
    let idle_router = connect(host.router, 1100);
    let idle_api = connect(host.api, 1100);
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    let (status, body) = host.get(&host.production_host("crowd"), "/");
    assert_eq!(status, 200, "{body}");
    let ls = host.nx(&["ls"]);
    assert!(ls.ok, "the API stopped serving: {}", ls.stderr);
    assert!(start.elapsed() < Duration::from_secs(10));
    drop((idle_router, idle_api));
}

/// The router's ambient capability set (`CapAmb` in /proc/<pid>/status, proc(5)); the router
/// is the process whose command line names this host's router settings.
fn router_ambient_capabilities(host: &Host) -> u64 {
    let settings = host.path("router/settings.json").display().to_string();
    let pid = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&settings))
        })
        .expect("the router's process")
        .path();
    let status = std::fs::read_to_string(pid.join("status")).unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("CapAmb:"))
        .expect("CapAmb");
    u64::from_str_radix(line.trim(), 16).unwrap()
}

#[test]
fn a_router_on_port_443_runs_with_cap_net_bind_service_and_one_on_high_ports_without() {
    const CAP_NET_BIND_SERVICE: u64 = 1 << 10;
    // 443 inside the host's own network namespace (ACME off: no order leaves the machine).
    let host = Host::start_with("[tls]\nhttps_listen = \"127.0.0.1:443\"\nacme = false\n");
    assert_eq!(
        router_ambient_capabilities(&host),
        CAP_NET_BIND_SERVICE,
        "{}",
        host.nxd_log()
    );
    assert!(host
        .netns
        .run(|| TcpStream::connect("127.0.0.1:443"))
        .is_ok());
    let plain = Host::start();
    assert_eq!(router_ambient_capabilities(&plain), 0);
}
