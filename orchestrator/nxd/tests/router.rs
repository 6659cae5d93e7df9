//! The router as a unit of its own, beside nxd: production keeps answering while nxd restarts
//! under load, and neither the API nor the router stops serving under 1,100 idle connections
//! each when nxd starts at systemd's default soft limit of 1,024 open files; a router that
//! listens below port 1024 gets `CAP_NET_BIND_SERVICE` as an ambient capability; its log stays
//! within `router.log_max_mb` under a flood of requests; the API closes connections that send no
//! whole request head within `api_head_timeout_secs`; an upgraded nxd replaces the old build's
//! router, and a router that exits is started again while `/v1/health` says it is down; one
//! peer address holds at most `api_max_connections_per_address` API connections, and one client
//! of the API through the router (HTTPS) at most as many requests under way; a deploy token at
//! most `api_max_requests_per_token` requests under way (log follows, uploads whose body never
//! comes), and the root token keeps reserved connections; a request body that stops coming ends
//! 408 after `api_body_timeout_secs`, its temp file gone, and an answer the client does not read
//! is dropped after `api_send_timeout_secs`; settings the router cannot use leave the running
//! router serving; a router that takes a request and never answers fails a change within
//! seconds instead of holding every later one.

use nx_testkit::Host;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
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
    // All 1,100 come from one address: above one peer's share, which is not this test's.
    let mut host = Host::start_with("[router]\nmax_connections_per_address = 4096\n");
    restart_with_keys(&mut host, "api_max_connections_per_address = 4096\n");
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

/// Restarts nxd with `keys` (top-level keys of nxd.toml) added to its config.
fn restart_with_keys(host: &mut Host, keys: &str) {
    let config = host.path("nxd.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{keys}{text}")).unwrap();
    host.restart_nxd();
}

/// Newcomer17 N5 (its rest): the router's unit had no `MemoryMax`, and 11,000 held connections
/// took 1.5 GB of the host's memory. Its unit is held to `router.memory_max_mb`.
#[test]
fn the_routers_unit_is_held_to_router_memory_max_mb() {
    let host = Host::start_with("[router]\nmemory_max_mb = 300\n");
    let limit = host
        .manager_cgroups()
        .iter()
        .map(|dir| dir.join("nxd.slice/nx-router.service/memory.limit_in_bytes"))
        .find(|p| p.is_file())
        .map(|p| std::fs::read_to_string(p).unwrap().trim().to_owned())
        .expect("the router unit's memory cgroup");
    assert_eq!(limit, (300u64 << 20).to_string());
}

/// The router's process id, if it runs: the process whose command line names this host's
/// router settings.
fn router_pid(host: &Host) -> Option<u32> {
    let settings = host.path("router/settings.json").display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&settings))
        })
        .find_map(|e| e.file_name().to_str()?.parse().ok())
}

/// The router's ambient capability set (`CapAmb` in /proc/<pid>/status, proc(5)).
fn router_ambient_capabilities(host: &Host) -> u64 {
    let pid = router_pid(host).expect("the router's process");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
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

/// Every file of the router's log (`router.log`, `router.log.1`, ...): (name, bytes).
fn router_log_files(host: &Host) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(host.path("router"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("router.log"))
        // A file rotated away between the listing and its size is left out.
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            Some((name, e.metadata().ok()?.len()))
        })
        .collect();
    files.sort();
    files
}

/// The text of all of the router's log files.
fn router_log_text(host: &Host) -> String {
    router_log_files(host)
        .iter()
        .filter_map(|(name, _)| std::fs::read_to_string(host.path(&format!("router/{name}"))).ok())
        .collect()
}

/// Sends `n` GETs of `path` with `Host: host` through the router from four keep-alive clients;
/// returns the statuses seen.
fn flood(host: &Host, host_header: &str, path: &str, n: usize) -> Vec<u16> {
    let router = host.router;
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (host_header, path) = (host_header.to_owned(), path.to_owned());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap();
                (0..n / 4)
                    .map(|_| {
                        client
                            .get(format!("http://{router}{path}"))
                            .header("host", &host_header)
                            .send()
                            .map_or(0, |r| r.status().as_u16())
                    })
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

/// Attacker s7 F5: requests anyone can send (60 KB paths to unknown hosts) filled the disk
/// through router.log at ~34 MB/s. Now the log is the deployments' rotated log, bounded by
/// `router.log_max_mb`; unknown hosts' lines are rate-limited; a real request's line is kept.
#[test]
fn a_flood_of_long_requests_keeps_router_log_within_its_bound_and_a_real_requests_line() {
    const BOUND: u64 = 1 << 20;
    let host = Host::start_with("[logs]\nkeep = 2\n\n[router]\nlog_max_mb = 1\n");
    let id = host.push_sample("flood", &[]);
    let preview = host.preview_host("flood", &id);
    let long = format!("/{}", "a".repeat(60_000));

    // 2,000 unknown-host 404s of 60 KB each: 120 MB of request heads.
    let started = Instant::now();
    let statuses = flood(&host, "nobody.nx.test", &long, 2000);
    let secs = started.elapsed().as_secs_f64();
    assert!(statuses.iter().all(|&s| s == 404), "{statuses:?}");
    std::thread::sleep(Duration::from_secs(1));
    let unrouted = router_log_text(&host)
        .lines()
        .filter(|l| l.contains("host=nobody.nx.test"))
        .count();
    eprintln!(
        "2,000 unknown-host requests in {secs:.1} s: {unrouted} access lines, log {:?}",
        router_log_files(&host)
    );
    // A burst of 100, then 10 a second (log_budget), and some slack for timing.
    assert!(
        unrouted as f64 <= 100.0 + 10.0 * (secs + 2.0),
        "{unrouted} lines for 2,000 unknown-host requests in {secs:.1} s"
    );
    // The lines left out are counted in the log (every 10 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    while !router_log_text(&host).contains("were left out of the log") {
        assert!(
            Instant::now() < deadline,
            "no count of the lines left out:\n{}",
            router_log_text(&host)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // 3,000 routed requests with long paths (each line cut at 512 B a value): ~2.5 MB of lines,
    // more than the bound holds, so the log rotates.
    let statuses = flood(&host, &preview, &long, 3000);
    assert!(statuses.iter().all(|&s| s > 0), "{statuses:?}");
    let (status, _) = host.get(&preview, "/health?after-the-flood");
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !router_log_text(&host).contains("path=/health ") {
        assert!(
            Instant::now() < deadline,
            "no access line for the request after the flood; log files {:?}",
            router_log_files(&host)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let files = router_log_files(&host);
    let total: u64 = files.iter().map(|(_, n)| n).sum();
    eprintln!("after 3,000 routed requests: {files:?}, {total} bytes");
    assert!(
        total <= BOUND,
        "router.log files hold {total} bytes: {files:?}"
    );
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["router.log", "router.log.1", "router.log.2"]);
}

/// How long after `since` the server closed `stream` (read to its end), or None when it was
/// still open `within` after the call.
fn closed_after(mut stream: TcpStream, since: Instant, within: Duration) -> Option<Duration> {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => Some(since.elapsed()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(since.elapsed()),
        Err(_) => None,
    }
}

/// `GET /v1/health` on a new API connection, its head sent in two parts `pause` apart; the
/// answer, empty when nxd closed the connection without one.
fn health_in_two_parts(host: &Host, pause: Duration) -> String {
    let mut stream = TcpStream::connect(host.api).unwrap();
    let _ = stream.write_all(b"GET /v1/health HTTP/1.1\r\nHost: nxd\r\n");
    std::thread::sleep(pause);
    let rest = format!(
        "Authorization: Bearer {}\r\nConnection: close\r\n\r\n",
        host.token
    );
    let mut answer = String::new();
    if stream.write_all(rest.as_bytes()).is_ok() {
        let _ = stream.read_to_string(&mut answer);
    }
    answer
}

/// Attacker s8 F6: the API was served with no request-head timeout, so 4,096 connections that
/// sent a few header bytes (or none) held every slot of `api_max_connections` for good and
/// locked every token out. Now each is closed `api_head_timeout_secs` after nxd starts reading,
/// slowly trickled heads included, while a head that is merely slow but whole in time is
/// answered.
#[test]
fn silent_and_half_sent_request_heads_are_closed_within_the_api_head_timeout() {
    const SLOTS: usize = 60;
    let mut host = Host::start();
    restart_with_keys(
        &mut host,
        &format!("api_max_connections = {SLOTS}\napi_head_timeout_secs = 2\n"),
    );

    // Every slot held: a third send nothing, a third part of a head, a third a byte every 300 ms.
    let started = Instant::now();
    let open = |first: &[u8]| {
        let mut stream = TcpStream::connect(host.api).unwrap();
        stream.write_all(first).unwrap();
        stream
    };
    let mut held: Vec<TcpStream> = (0..SLOTS / 3).map(|_| open(b"")).collect();
    held.extend((0..SLOTS / 3).map(|_| open(b"GET /v1/sandboxes HTTP/1.1\r\nHost: a")));
    for _ in 0..SLOTS / 3 {
        let trickler = open(b"G");
        let mut writer = trickler.try_clone().unwrap();
        std::thread::spawn(move || {
            // Never a whole head; stops once the connection is gone.
            while writer.write_all(b"x").is_ok() && started.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        held.push(trickler);
    }
    let closing: Vec<_> = held
        .into_iter()
        .map(|stream| {
            std::thread::spawn(move || closed_after(stream, started, Duration::from_secs(10)))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        health_in_two_parts(&host, Duration::ZERO),
        "",
        "answered with all {SLOTS} slots held: the test holds none"
    );

    // A head that takes a second but is whole within the timeout is answered, once the held
    // connections are closed and a slot is free.
    let answer = loop {
        let answer = health_in_two_parts(&host, Duration::from_secs(1));
        if !answer.is_empty() {
            break answer;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no slot freed within 15 s"
        );
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let closed: Vec<Option<Duration>> = closing.into_iter().map(|t| t.join().unwrap()).collect();
    eprintln!("{SLOTS} slow heads with api_head_timeout_secs = 2 closed after {closed:?}");
    for (i, after) in closed.iter().enumerate() {
        let after = after.unwrap_or_else(|| panic!("slow head {i} still open after 10 s"));
        assert!(
            after < Duration::from_secs(5),
            "slow head {i} closed only after {after:?}"
        );
    }
    let ls = host.nx(&["ls"]);
    assert!(ls.ok, "the API is still locked: {}", ls.stderr);
}

/// Attacker s8 F17: an upgraded nxd adopted the router process of the old build (the binary
/// was not part of the adoption check), and a router that exited cleanly was never started
/// again while `/v1/health` stayed ok. Now the launch spec names the router's build, so only a
/// router of the same build is adopted; the unit restarts always; health says while it is down.
#[test]
fn an_upgraded_nxd_replaces_the_old_router_and_one_that_exits_comes_back() {
    let upgrade = tempfile::Builder::new()
        .prefix("nx-test-upgrade-")
        .tempdir_in("/var/tmp")
        .unwrap();
    // Copies made now: another modification time, as a new build has.
    let nxd = upgrade.path().join("nxd");
    std::fs::copy(nx_testkit::bin("nxd"), &nxd).unwrap();
    std::fs::copy(
        nx_testkit::bin("nx-router"),
        upgrade.path().join("nx-router"),
    )
    .unwrap();
    let mut host = Host::start();
    let v1 = host.push_sample("steady", &["-e", "APP_VERSION=v1"]);
    host.nx_json(&["promote", "steady", &v1]);
    let production = host.production_host("steady");
    let first = router_pid(&host).expect("a router");

    host.restart_nxd();
    assert_eq!(
        router_pid(&host),
        Some(first),
        "the same build was not adopted"
    );
    host.restart_nxd_as(nxd);
    let second = router_pid(&host).expect("a router after the upgrade");
    assert_ne!(
        second, first,
        "the upgraded nxd adopted the old build's router"
    );
    let exe = std::fs::read_link(format!("/proc/{second}/exe")).unwrap();
    assert_eq!(exe, host.path("bin/nx-router"), "the router runs {exe:?}");
    assert_eq!(host.get(&production, "/").0, 200);

    // SIGTERM to the router itself (not a stop of its unit): it shuts down and exits 0.
    let killed = Command::new("kill")
        .args(["-TERM", &second.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let (mut reported, deadline) = (None, Instant::now() + Duration::from_secs(40));
    loop {
        let health = host
            .http()
            .get(format!("http://{}/v1/health", host.api))
            .bearer_auth(&host.token)
            .send()
            .unwrap();
        let status = health.status().as_u16();
        let body = health.text().unwrap();
        if status == 503 && body.contains("router") {
            reported.get_or_insert(body.clone());
        }
        let back = router_pid(&host).is_some_and(|pid| pid != second);
        if back && reported.is_some() && host.get(&production, "/").0 == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "router back: {back}, health said: {reported:?} (last {status} {body})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("while the router was down: {}", reported.unwrap());
    let (status, body) = host.get(&production, "/");
    assert_eq!((status, body.contains("v1")), (200, true), "{body}");
    let health = host
        .http()
        .get(format!("http://{}/v1/health", host.api))
        .bearer_auth(&host.token)
        .send()
        .unwrap();
    assert_eq!(health.status(), 200);
}

/// Attacker s11 G12: a router setting the router cannot use (a certificate under the host's
/// /tmp, which the manager's units do not see) made nxd stop the working router; the new one
/// crash-looped and nxd exited 15 s later guessing "is the address taken". Now the new settings
/// are checked where the router runs before the old router is stopped (its files read, its
/// listeners bound): nxd exits at once with the router's own error, the old router keeps
/// serving, and is adopted once the setting is fixed.
#[test]
fn settings_the_router_cannot_use_leave_the_running_router_serving_and_nxd_says_why() {
    let mut host = Host::start();
    let v1 = host.push_sample("kept", &[]);
    let preview = host.preview_host("kept", &v1);
    assert_eq!(host.get(&preview, "/").0, 200);
    let first = router_pid(&host).expect("a router");

    // A valid pair nxd itself can read, in the host's /tmp.
    let tmp = tempfile::Builder::new()
        .prefix("nx-test-g12-")
        .tempdir_in("/tmp")
        .unwrap();
    let pair = nx_testkit::certs::TestCertificate::write(tmp.path(), &[preview.as_str()]);
    let config = host.path("nxd.toml");
    let good = std::fs::read_to_string(&config).unwrap();
    let tls = format!(
        "[tls]\nhttps_listen = \"127.0.0.1:{}\"\nacme = false\ncert_file = {:?}\nkey_file = {:?}\n",
        nx_testkit::free_port(),
        pair.cert,
        pair.key
    );
    std::fs::write(&config, format!("{good}\n{tls}")).unwrap();
    host.stop_nxd();
    let started = Instant::now();
    let out = host.nxd_that_exits(&[], Duration::from_secs(60));
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot read {}", pair.cert.display()))
            && stderr.contains("left serving with its old ones"),
        "{stderr}"
    );
    assert_eq!(router_pid(&host), Some(first), "the old router was stopped");
    assert_eq!(host.get(&preview, "/").0, 200);
    eprintln!("nxd refused the certificate in {took:?}: {stderr}");

    // A router_listen another process holds: the same.
    let held = host
        .netns
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let taken = held.local_addr().unwrap();
    let router_listen = format!("router_listen = \"{}\"", host.router);
    assert!(good.contains(&router_listen), "{good}");
    let moved = good.replace(&router_listen, &format!("router_listen = \"{taken}\""));
    std::fs::write(&config, moved).unwrap();
    let out = host.nxd_that_exits(&[], Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(&format!("cannot listen on {taken}")),
        "{stderr}"
    );
    assert_eq!(router_pid(&host), Some(first), "the old router was stopped");
    assert_eq!(host.get(&preview, "/").0, 200);

    std::fs::write(&config, good).unwrap();
    host.start_nxd();
    assert_eq!(
        router_pid(&host),
        Some(first),
        "the old router was not adopted"
    );
    assert_eq!(host.get(&preview, "/").0, 200);
}

/// Attacker s8 F6, the rest: with the head timeout alone, one client re-opening thousands of
/// half-sent heads every few seconds still held the API's connections between timeouts (38 of
/// 56 other requests failed). Now one peer address holds at most
/// `api_max_connections_per_address`: its further connections are closed at accept, and
/// another address (here 127.0.0.2) is answered while it holds all it may.
#[test]
fn one_address_holding_every_connection_it_may_leaves_the_api_to_another() {
    const SLOTS: usize = 200;
    const PER_ADDRESS: usize = 100;
    let mut host = Host::start();
    restart_with_keys(
        &mut host,
        &format!("api_max_connections = {SLOTS}\napi_max_connections_per_address = {PER_ADDRESS}\napi_head_timeout_secs = 120\n"),
    );

    // Inside the host's network namespace (the test's forwarder would make every connection
    // one peer's), 127.0.0.1 opens more than all the API's connections, each with half a head.
    let api = host.api;
    let held: Vec<TcpStream> = host.netns.run(|| {
        (0..SLOTS + PER_ADDRESS)
            .map(|_| {
                let mut stream = TcpStream::connect(api).unwrap();
                let _ = stream.write_all(b"GET /v1/health HTTP/1.1\r\nHost: nxd\r\n");
                stream
            })
            .collect()
    });
    // Meanwhile 127.0.0.2 gets its answers, each on a new connection.
    std::thread::sleep(Duration::from_millis(500));
    let token = host.token.clone();
    let answers: Vec<Result<u16, String>> = host.netns.run(move || {
        let other = reqwest::blocking::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        (0..20)
            .map(|_| {
                other
                    .get(format!("http://{api}/v1/health"))
                    .bearer_auth(&token)
                    .send()
                    .map(|a| a.status().as_u16())
                    .map_err(|e| format!("{e:?}"))
            })
            .collect()
    });
    if answers.iter().any(|a| a != &Ok(200)) {
        let log = host.nxd_log();
        let tail = &log[log.len().saturating_sub(3000)..];
        panic!("127.0.0.2's 20 requests: {answers:?}\nnxd's log ends:\n{tail}");
    }

    let open = held
        .iter()
        .filter(|&stream| {
            stream
                .set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            matches!(
                (&mut &*stream).read(&mut [0; 1]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
            )
        })
        .count();
    eprintln!(
        "{} connections from 127.0.0.1: {open} held open",
        held.len()
    );
    // (The test's host keeps one keep-alive connection of its own from 127.0.0.1.)
    assert!(
        (PER_ADDRESS - 2..=PER_ADDRESS).contains(&open),
        "{open} of 127.0.0.1's connections open"
    );

    // Once 127.0.0.1 lets go, it is answered again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !host.nx(&["ls"]).ok {
        assert!(Instant::now() < deadline, "127.0.0.1 still locked out");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Closing note of session 10, "d3dd216 regression": every client of `https://api.<base_domain>`
/// reached nxd from the router's loopback address, so one client holding
/// `api_max_connections_per_address` requests there (log follows) locked every remote user and
/// the local CLI out. Now the router reaches nxd on a unix socket of its own and holds each of
/// its clients to that share itself: 127.0.0.1 holding its share of follows through the router
/// gets 429 beyond it, while 127.0.0.2 through the router and the local CLI are answered.
#[test]
fn one_client_holding_its_share_of_the_api_through_the_router_leaves_it_to_others() {
    const PER_ADDRESS: usize = 60;
    const HTTPS_PORT: u16 = 7443;
    let certs = tempfile::Builder::new()
        .prefix("nx-test-certs-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let api_name = format!("api.{}", nx_testkit::BASE_DOMAIN);
    let cert = nx_testkit::certs::TestCertificate::write(certs.path(), &[&api_name]);
    let mut host = Host::start_with(&format!(
        "[tls]\nhttps_listen = \"127.0.0.1:{HTTPS_PORT}\"\ncert_file = {:?}\nkey_file = {:?}\n",
        cert.cert, cert.key
    ));
    restart_with_keys(
        &mut host,
        &format!("api_max_connections_per_address = {PER_ADDRESS}\n"),
    );
    let followed = host.push_sample("followed", &[]);

    // A client of the API through the router, from `local` inside the host's namespace.
    let root = reqwest::Certificate::from_pem(&std::fs::read(&cert.root).unwrap()).unwrap();
    let client = move |local: [u8; 4]| {
        reqwest::blocking::Client::builder()
            .local_address(std::net::IpAddr::from(local))
            .add_root_certificate(root.clone())
            .resolve(&api_name, ([127, 0, 0, 1], HTTPS_PORT).into())
            .http1_only()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    };
    let (token, api) = (
        host.token.clone(),
        format!("https://api.{}:{HTTPS_PORT}", nx_testkit::BASE_DOMAIN),
    );
    let follow = format!("{api}/v1/deployments/{followed}/logs?follow=true&lines=0");
    // 127.0.0.1 opens 20 follows more than its share and keeps those answered open.
    let (held, refused): (Vec<_>, Vec<_>) = host.netns.run(|| {
        let one = client([127, 0, 0, 1]);
        (0..PER_ADDRESS + 20)
            .map(|_| one.get(&follow).bearer_auth(&token).send().unwrap())
            .partition(|r| r.status() == 200)
    });
    let refused: Vec<(u16, String)> = refused
        .into_iter()
        .map(|r| (r.status().as_u16(), r.text().unwrap_or_default()))
        .collect();
    eprintln!(
        "127.0.0.1 through the router: {} follows held, {} refused, first: {:?}",
        held.len(),
        refused.len(),
        refused.first()
    );
    assert_eq!(held.len(), PER_ADDRESS, "{refused:?}");
    assert!(
        refused.iter().all(
            |(status, body)| *status == 429 && body.contains("api_max_connections_per_address")
        ),
        "{refused:?}"
    );

    // Meanwhile another client through the router, and the local CLI, get their answers.
    let answers: Vec<Result<u16, String>> = host.netns.run(|| {
        let other = client([127, 0, 0, 2]);
        (0..20)
            .map(|_| {
                other
                    .get(format!("{api}/v1/sandboxes"))
                    .bearer_auth(&token)
                    .send()
                    .map(|a| a.status().as_u16())
                    .map_err(|e| format!("{e:?}"))
            })
            .collect()
    });
    assert!(
        answers.iter().all(|a| a == &Ok(200)),
        "127.0.0.2's requests through the router: {answers:?}"
    );
    let ls = host.nx(&["ls"]);
    assert!(ls.ok, "the local CLI is locked out: {}", ls.stderr);
    drop(held);
}

/// Attacker s10 F11: 4,200 `nx logs -f` of one `--can logs` token held every API connection and
/// locked the operator and every tenant out until nxd restarted. Now one deploy token holds at
/// most `api_max_requests_per_token` requests under way (429 beyond), and the last
/// `api_reserved_connections` connections serve only the root token: three such tokens'
/// follows take all they may, and the root token is still answered.
#[test]
fn deploy_tokens_log_follows_are_capped_and_leave_the_root_token_a_way_in() {
    const MAX: usize = 40;
    const RESERVED: usize = 6;
    const STREAMS: usize = 12;
    const TRIES: usize = 16;
    let mut host = Host::start();
    restart_with_keys(
        &mut host,
        &format!("api_max_connections = {MAX}\napi_reserved_connections = {RESERVED}\napi_max_requests_per_token = {STREAMS}\n"),
    );
    let followed = host.push_sample("followed", &[]);
    let tokens: Vec<String> = (0..3)
        .map(|_| {
            let out = host.nx_json(&["token", "create", "--sandbox", "followed", "--can", "logs"]);
            out["token"].as_str().expect("token").to_owned()
        })
        .collect();

    // Each follow on a connection of its own, from inside the host's namespace.
    let follow = format!(
        "http://{}/v1/deployments/{followed}/logs?follow=true&lines=0",
        host.api
    );
    let tries: Vec<Vec<Result<reqwest::blocking::Response, String>>> = host.netns.run(|| {
        let client = reqwest::blocking::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        tokens
            .iter()
            .map(|token| {
                (0..TRIES)
                    .map(|_| {
                        client
                            .get(&follow)
                            .bearer_auth(token)
                            .send()
                            .map_err(|e| format!("{e:?}"))
                    })
                    .collect()
            })
            .collect()
    });
    let mut held = Vec::new();
    let mut refused: Vec<Vec<(u16, String)>> = Vec::new();
    for token_tries in tries {
        let mut token_refused = Vec::new();
        for answer in token_tries {
            match answer {
                Ok(r) if r.status() == 200 => held.push(r),
                Ok(r) => token_refused.push((r.status().as_u16(), r.text().unwrap_or_default())),
                Err(e) => token_refused.push((0, e)),
            }
        }
        refused.push(token_refused);
    }
    eprintln!(
        "{} follows held; refused per token: {:?}",
        held.len(),
        refused
            .iter()
            .map(|r| r.iter().map(|(s, _)| *s).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    );
    for token_refused in &refused[..2] {
        assert_eq!(token_refused.len(), TRIES - STREAMS, "{token_refused:?}");
        assert!(
            token_refused
                .iter()
                .all(|(s, body)| *s == 429 && body.contains("api_max_requests_per_token")),
            "{token_refused:?}"
        );
    }
    // The third token found the connections that are not reserved taken.
    assert!(
        refused[2]
            .iter()
            .any(|(s, body)| *s == 503 && body.contains("api_reserved_connections")),
        "{:?}",
        refused[2]
    );
    assert!(held.len() <= MAX - RESERVED, "{} held", held.len());

    // The operator is still answered, on a reserved connection.
    let ls = host.nx(&["ls"]);
    assert!(ls.ok, "the root token is locked out: {}", ls.stderr);
    drop(held);
}

/// A new deploy token on sandbox `sandbox` that may `can`.
fn deploy_token(host: &Host, sandbox: &str, can: &str) -> String {
    let out = host.nx_json(&["token", "create", "--sandbox", sandbox, "--can", can]);
    out["token"].as_str().expect("token").to_owned()
}

/// An API connection with `PUT /v1/artifacts/<a digest>` sent by `token`, its head announcing
/// a body of 1 MiB that never comes (`Expect: 100-continue`, so that nxd says when its handler
/// starts reading the body).
fn upload_head(host: &Host, token: &str) -> TcpStream {
    let mut stream = TcpStream::connect(host.api).unwrap();
    let head = format!(
        "PUT /v1/artifacts/{} HTTP/1.1\r\nHost: nxd\r\nAuthorization: Bearer {token}\r\nContent-Length: 1048576\r\nExpect: 100-continue\r\n\r\n",
        "ab".repeat(32)
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream
}

/// [`upload_head`] once nxd's handler waits for its body (nxd answered `100 Continue`).
fn upload_waiting_for_its_body(host: &Host, token: &str) -> TcpStream {
    let mut stream = upload_head(host, token);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = [0u8; 25];
    let read = stream.read_exact(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        read.is_ok() && answer == "HTTP/1.1 100 Continue\r\n\r\n",
        "the upload's head: {read:?} {answer:?}"
    );
    stream
}

/// What nxd answered on `stream` within `within` (until it closed the connection or the time
/// passed), as text.
fn answer_within(mut stream: TcpStream, within: Duration) -> String {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Attacker s12 H6: one push token's uploads whose bodies never came (and a `--can logs`
/// token's log reads never read) held every API connection, since only log follows counted
/// against a token. Now every request under way counts against its token's
/// `api_max_requests_per_token`: with the token's uploads hanging, its next upload is answered
/// 429 at once, saying what to do, while another token of the same sandbox is answered; once
/// the uploads' connections close, the token is served again.
#[test]
fn one_tokens_uploads_whose_body_never_comes_are_capped_and_leave_the_api_to_others() {
    const PER_TOKEN: usize = 4;
    let mut host = Host::start();
    restart_with_keys(
        &mut host,
        &format!("api_max_requests_per_token = {PER_TOKEN}\n"),
    );
    assert!(host.nx(&["sandbox", "create", "slow"]).ok);
    let pusher = deploy_token(&host, "slow", "push");
    let other = deploy_token(&host, "slow", "logs");

    let held: Vec<TcpStream> = (0..PER_TOKEN)
        .map(|_| upload_waiting_for_its_body(&host, &pusher))
        .collect();
    let answer = answer_within(upload_head(&host, &pusher), Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.contains("api_max_requests_per_token") && answer.contains("try again"),
        "{answer}"
    );
    let (status, body) = host.call(&pusher, "GET", "/v1/sandboxes/slow", None);
    assert_eq!(
        status, 429,
        "the pusher's next request of another route: {body}"
    );

    let (status, body) = host.call(&other, "GET", "/v1/sandboxes/slow", None);
    assert_eq!(status, 200, "another token of the sandbox: {body}");

    drop(held);
    let started = Instant::now();
    loop {
        let (status, body) = host.call(&pusher, "GET", "/v1/sandboxes/slow", None);
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the pusher still refused 15 s after its uploads' connections closed: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Files in the artifact store's upload area (`<state_dir>/artifacts/.incoming`).
fn incoming_files(host: &Host) -> usize {
    std::fs::read_dir(host.path("artifacts/.incoming"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// Attacker s12 H6: an upload's body had no time bound (only its head had), so an upload whose
/// body never came, or stopped, held its connection and a temp file in the store's upload area
/// for as long as the client liked (5 still open after 140 s). Now a body that sends nothing for
/// `api_body_timeout_secs` while nxd waits for it ends its request with 408 naming the key, its
/// temp file removed; and the temp file comes with the first body bytes, not with the head.
#[test]
fn upload_bodies_that_stop_coming_end_408_after_the_api_body_timeout_and_leave_no_temp_file() {
    const TIMEOUT_SECS: u64 = 4;
    let mut host = Host::start();
    restart_with_keys(
        &mut host,
        &format!("api_body_timeout_secs = {TIMEOUT_SECS}\n"),
    );
    assert!(host.nx(&["sandbox", "create", "slow"]).ok);
    let pusher = deploy_token(&host, "slow", "push");

    let started = Instant::now();
    let silent = upload_waiting_for_its_body(&host, &pusher);
    let mut stopped = upload_waiting_for_its_body(&host, &pusher);
    let program = std::fs::read(nx_testkit::sample_app()).unwrap();
    stopped.write_all(&program[..1000]).unwrap();
    while incoming_files(&host) == 0 && started.elapsed() < Duration::from_secs(TIMEOUT_SECS - 1) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        incoming_files(&host),
        1,
        "temp files while one upload has sent 1,000 bytes and the other none"
    );

    let answers: Vec<_> = [silent, stopped]
        .into_iter()
        .map(|stream| {
            std::thread::spawn(move || {
                let answer = answer_within(stream, Duration::from_secs(TIMEOUT_SECS + 10));
                (answer, started.elapsed())
            })
        })
        .collect();
    for answer in answers {
        let (answer, after) = answer.join().unwrap();
        eprintln!("answered after {after:?}: {answer}");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(
            answer.contains("api_body_timeout_secs") && answer.contains("send the body"),
            "{answer}"
        );
        assert!(
            after >= Duration::from_secs(TIMEOUT_SECS - 1),
            "answered after {after:?}"
        );
    }
    assert_eq!(
        incoming_files(&host),
        0,
        "temp files after both uploads ended"
    );
}

/// A connection to the API from inside the host's namespace whose receive buffer is small
/// (`SO_RCVBUF` 4 KiB), so that an answer it does not read fills it at once.
fn small_window_connection(host: &Host) -> TcpStream {
    let addr = host.api;
    host.netns.run(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let stream = runtime.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            socket.connect(addr).await.unwrap()
        });
        let stream = stream.into_std().unwrap();
        stream.set_nonblocking(false).unwrap();
        stream
    })
}

/// Attacker s12 H6 with the least token: 4,096 `GET .../logs?lines=1000000` of a `--can logs`
/// token, never read (a tiny receive window), held every API connection, starved nxd's state
/// pool and tripped its watchdog. Now an answer the client does not take for
/// `api_send_timeout_secs` is dropped and its connection closed, which gives the token's
/// request back (`api_max_requests_per_token` 1 here: its next request is answered).
#[test]
fn a_log_answer_never_read_is_dropped_after_the_api_send_timeout() {
    const TIMEOUT_SECS: u64 = 3;
    let mut host = Host::start();
    restart_with_keys(
        &mut host,
        &format!("api_send_timeout_secs = {TIMEOUT_SECS}\napi_max_requests_per_token = 1\n"),
    );
    let id = host.push_sample("loud", &[]);
    let (status, body) = host.get(&host.preview_host("loud", &id), "/spew?mb=16");
    assert_eq!(status, 200, "{body}");
    let reader = deploy_token(&host, "loud", "logs");
    let logs = format!("/v1/deployments/{id}/logs?lines=1000000");
    let (status, whole) = host.call(&reader, "GET", &logs, None);
    assert_eq!(status, 200, "{whole}");
    assert!(whole.len() > 8 << 20, "the log holds {} bytes", whole.len());

    let mut unread = small_window_connection(&host);
    let request = format!(
        "GET {logs} HTTP/1.1\r\nHost: nxd\r\nAuthorization: Bearer {reader}\r\nConnection: close\r\n\r\n"
    );
    unread.write_all(request.as_bytes()).unwrap();
    let started = Instant::now();
    // Held while the answer waits for the client.
    std::thread::sleep(Duration::from_millis(500));
    let (status, body) = host.call(&reader, "GET", "/v1/sandboxes/loud", None);
    assert_eq!(
        status, 429,
        "the reader's request with its log answer unread: {body}"
    );

    // Dropped after the timeout: the token's next request is answered.
    let answered = loop {
        let (status, body) = host.call(&reader, "GET", "/v1/sandboxes/loud", None);
        if status == 200 {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(TIMEOUT_SECS + 15),
            "the unread answer still counts {:?} after it began: {status} {body}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("the token's request given back {answered:?} after the unread answer began");
    assert!(
        answered >= Duration::from_secs(TIMEOUT_SECS - 1),
        "{answered:?}"
    );

    // What the client finds when it reads at last: the start of the answer, cut off.
    unread
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let read = unread.read_to_end(&mut got);
    eprintln!(
        "read {} of the log's {} bytes: {read:?}",
        got.len(),
        whole.len()
    );
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &got[..got.len().min(200)]
    );
    assert!(
        got.len() < whole.len() && !got.ends_with(b"0\r\n\r\n"),
        "the whole answer was kept for the client: {} bytes",
        got.len()
    );
}

/// The router's table as it answers it on its control socket (`GET /v1/routes`), sorted by host.
fn router_table(host: &Host) -> Vec<serde_json::Value> {
    let mut socket = std::os::unix::net::UnixStream::connect(host.path("router/control.sock"))
        .expect("the router's control socket");
    socket
        .write_all(b"GET /v1/routes HTTP/1.1\r\nHost: nx-router\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let table: serde_json::Value = serde_json::from_str(body).expect("a route table");
    let mut routes = table["routes"].as_array().expect("routes").clone();
    routes.sort_by_key(|r| r["host"].as_str().unwrap_or_default().to_owned());
    routes
}

/// Issue 20: a push without `--service` or `--tcp` sends its preview route alone
/// (`PUT /v1/routes/{host}`) instead of the whole table rebuilt from the state database. After
/// such pushes into two sandboxes, one with a service and a promoted deployment, the router holds
/// exactly the table a rebuild makes (nxd's restart rebuilds it), each preview answers, and a
/// plain push reaches its sandbox's service.
#[test]
fn previews_routed_alone_leave_the_router_the_table_a_rebuild_makes() {
    let mut host = Host::start();
    host.push_sample("shop", &["--service", "cache", "--port", "7000"]);
    let first = host.push_sample("shop", &[]);
    host.nx_json(&["promote", "shop", &first]);
    let pushed: Vec<(&str, String)> = ["shop", "blog", "blog"]
        .into_iter()
        .map(|sandbox| (sandbox, host.push_sample(sandbox, &[])))
        .collect();
    let previews: Vec<String> = pushed
        .iter()
        .map(|(sandbox, id)| host.preview_host(sandbox, id))
        .collect();
    for preview in &previews {
        assert_eq!(host.get(preview, "/").0, 200, "{preview}");
    }
    // The router's log is written a moment after (its monitor's writer).
    let sent_alone = |log: &str| {
        previews.iter().all(|preview| {
            log.lines()
                .any(|l| l.contains("route put") && l.contains(preview.as_str()))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sent_alone(&router_log_text(&host)) {
        assert!(
            Instant::now() < deadline,
            "not every preview of {previews:?} was sent alone: {}",
            router_log_text(&host)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(nx_testkit::netns::connects(
        &host,
        "shop",
        &pushed[0].1,
        "cache:7000"
    ));
    let routed = router_table(&host);
    assert_eq!(routed.len(), 6, "{routed:#?}");
    host.restart_nxd();
    assert_eq!(router_table(&host), routed);
}

/// Review21 #4: nxd's requests to the router had no timeout, so a router that took a request
/// and never answered (stopped with SIGSTOP, stuck) held nxd's lock on changes forever: a push
/// hung, and every change after it. Each request now waits at most 5 s: a push while the router
/// is stopped falls back to the whole table as a refused route does, then ends with an error
/// that says the router gave no answer, its deployment removed; once the router runs again, a
/// push is routed.
#[test]
fn a_stopped_router_fails_a_push_within_seconds_and_leaves_later_changes_to_it() {
    let host = Host::start();
    host.push_sample("frozen", &[]);
    let router = router_pid(&host).expect("a router");
    let signal = |name: &str| {
        let sent = Command::new("kill")
            .args([name, &router.to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill {name} {router}");
    };
    signal("-STOP");
    let started = Instant::now();
    let mut push = host.spawn_push_sample("frozen", &[]);
    while push.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            push.kill().unwrap();
            signal("-CONT");
            panic!("a push while the router is stopped still waits after 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = started.elapsed();
    signal("-CONT");
    let out = push.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("gave no answer within 5 s") && stderr.contains("was removed"),
        "{stderr}"
    );
    eprintln!("push failed after {took:?}: {stderr}");
    assert!(
        host.nxd_log()
            .contains("the router took no route alone: sending it the whole table"),
        "the fallback to the whole table was not logged"
    );

    let id = host.push_sample("frozen", &[]);
    assert_eq!(host.get(&host.preview_host("frozen", &id), "/").0, 200);
}
