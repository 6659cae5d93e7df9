//! Every deployment in a network namespace of its own. The test host runs in a network
//! namespace the test kit made for it (never the machine's real network); an "upstream"
//! namespace linked to it by a veth holds a stand-in for the internet (198.51.100.1, outside
//! every blocked range) and for the cloud metadata service (169.254.169.254), each with a
//! listener. (They sit behind the host, as on a cloud host: an address of the host itself would
//! be blocked as the host's own whatever its range. This kernel has no `dummy` driver; the
//! upstream's loopback holds the addresses.)

use nx_testkit::netns::{
    connects, listen, listen_addr, nxd_reading, LoopbackResolver, HOST_UPLINK, HOST_UPLINK6,
    INTERNET, INTERNET6, METADATA, METADATA6, PRIVATE6,
};
use nx_testkit::Host;
use std::net::{Ipv6Addr, SocketAddr};
use std::process::Command;

/// Where nxd's deployments' gateway lives (the default `network.subnet`).
const GATEWAY: &str = "10.213.0.1";

fn upstream(host: &Host) -> std::sync::Arc<nx_testkit::netns::Netns> {
    nx_testkit::netns::upstream(&host.netns)
}

#[test]
fn a_deployment_reaches_the_internet_and_nothing_of_the_host_or_its_neighbours() {
    let mut host = Host::start();
    let _up = upstream(&host);
    // A service on every address of the host (what SSH or PostgreSQL over TCP would be).
    let service = nx_testkit::free_port();
    listen(&host.netns, SocketAddr::from(([0, 0, 0, 0], service)));
    let open = host.push_sample("open", &["--egress", "public"]);
    let closed = host.push_sample("closed", &[]);
    let neighbour = listen_addr(&host, "closed", &closed);
    let own = listen_addr(&host, "open", &open);
    assert_ne!(
        neighbour.ip(),
        own.ip(),
        "each deployment has its own address"
    );

    // The stand-ins answer from the host itself: what follows is the policy, not a broken net.
    host.netns.run(|| {
        for addr in [INTERNET, METADATA] {
            assert!(
                std::net::TcpStream::connect(addr).is_ok(),
                "{addr} from the host"
            );
        }
    });

    assert!(connects(&host, "open", &open, INTERNET), "the internet");
    let forbidden = [
        METADATA.to_owned(),
        host.api.to_string(),
        host.router.to_string(),
        format!("{GATEWAY}:{}", host.api.port()),
        format!("{GATEWAY}:{}", host.router.port()),
        format!("127.0.0.1:{service}"),
        format!("{GATEWAY}:{service}"),
        format!("{HOST_UPLINK}:{service}"),
        neighbour.to_string(),
    ];
    for addr in &forbidden {
        assert!(!connects(&host, "open", &open, addr), "{addr} is reachable");
    }
    // --egress none (the default): nothing but itself.
    for addr in [INTERNET, &own.to_string(), &format!("{GATEWAY}:{service}")] {
        assert!(
            !connects(&host, "closed", &closed, addr),
            "{addr} is reachable"
        );
    }
    assert!(connects(&host, "closed", &closed, &neighbour.to_string()));
    assert!(connects(
        &host,
        "closed",
        &closed,
        &format!("127.0.0.1:{}", neighbour.port())
    ));

    // A crash, a stray link and a lost table: nxd's restart removes the one, restores the
    // other, and adopts the running deployments with the policy intact.
    host.kill_nxd();
    host.netns.ip(&[
        "link",
        "add",
        "nx-dstray00",
        "type",
        "veth",
        "peer",
        "name",
        "nxpdstray00",
    ]);
    let flushed = host
        .netns
        .command("nft")
        .args(["delete", "table", "inet", "nx"])
        .status()
        .expect("nft");
    assert!(flushed.success());
    host.restart_nxd();
    let links = host
        .netns
        .command("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("stray"), "{links}");
    assert!(links.contains(&format!("nx-{open}")) && links.contains(&format!("nx-{closed}")));
    assert!(connects(&host, "open", &open, INTERNET));
    for addr in [METADATA.to_owned(), format!("{GATEWAY}:{service}")] {
        assert!(
            !connects(&host, "open", &open, &addr),
            "{addr} after restart"
        );
    }

    // nx rm takes the deployment's link and address with it.
    host.nx_json(&["rm", &closed]);
    let links = host
        .netns
        .command("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    assert!(!String::from_utf8_lossy(&links.stdout).contains(&closed));
}

/// Deployment `id`'s IPv6 address (`address6` of its view), and that the host routes it to
/// the deployment's link.
fn address6(host: &Host, sandbox: &str, id: &str) -> Ipv6Addr {
    let view = host.deployment(sandbox, id);
    let address: Ipv6Addr = view["address6"]
        .as_str()
        .unwrap_or_else(|| panic!("no address6: {view}"))
        .parse()
        .expect("an IPv6 address");
    let out = host
        .netns
        .command("ip")
        .args(["-6", "route", "show", "dev", &format!("nx-{id}")])
        .output()
        .expect("ip route");
    let routes = String::from_utf8_lossy(&out.stdout);
    assert!(
        routes.starts_with(&format!("{address} ")),
        "{address} is not routed to nx-{id}: {routes}"
    );
    address
}

/// IPv6, as the test host has it (an uplink with a global address and a default route): every
/// deployment has an address of `network.subnet6` and the policy of IPv4. With `--egress
/// public` it reaches the internet stand-in and a ULA `network.allow` lists, and not: the
/// metadata stand-in fd00:ec2::254, another ULA, the host's own address, the host through its
/// link's gateway fe80::1, a neighbour's address; with `--egress none`, nothing but itself. A
/// program listening on [::] is reached through the router, and at its IPv6 address by the host.
#[test]
fn ipv6_reaches_the_internet_and_nothing_of_the_host_or_its_neighbours() {
    let host = Host::start_with("[network]\nallow = [\"fd99::/64\"]\n");
    let up = upstream(&host);
    let allowed = "[fd99::1]:80";
    up.ip(&["addr", "add", "fd99::1/128", "dev", "lo", "nodad"]);
    listen(&up, allowed.parse().unwrap());
    let service = nx_testkit::free_port();
    listen(
        &host.netns,
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, service)),
    );
    let on_host = format!("[{HOST_UPLINK6}]:{service}");
    let open = host.push_sample("open", &["--egress", "public"]);
    // Listens on [::] (dual-stack): the router reaches it over IPv4, anyone allowed over IPv6.
    let closed = host.push_sample("closed", &["-e", "HOST=::"]);
    let (status, body) = host.get(&host.preview_host("closed", &closed), "/");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!("deployment={closed}")), "{body}");
    let (open6, closed6) = (
        address6(&host, "open", &open),
        address6(&host, "closed", &closed),
    );
    // The default network.subnet6, fd6e:7800:213::/64: which half of it.
    let half = |a: Ipv6Addr| {
        let subnet6 = u128::from("fd6e:7800:213::".parse::<Ipv6Addr>().unwrap());
        u128::from(a)
            .checked_sub(subnet6)
            .map(|offset| offset >> 63)
    };
    assert_eq!(half(open6), Some(1), "{open6}: egress public, upper half");
    assert_eq!(half(closed6), Some(0), "{closed6}: egress none, lower half");
    let neighbour = format!(
        "[{closed6}]:{}",
        listen_addr(&host, "closed", &closed).port()
    );

    // Everything answers from the host itself: what follows is the policy, not a broken net.
    host.netns.run(|| {
        for addr in [
            INTERNET6, METADATA6, PRIVATE6, allowed, &on_host, &neighbour,
        ] {
            assert!(
                std::net::TcpStream::connect(addr).is_ok(),
                "{addr} from the host"
            );
        }
    });

    assert!(connects(&host, "open", &open, INTERNET6), "the internet");
    assert!(connects(&host, "open", &open, allowed), "network.allow");
    // fe80::1%2: the host through the deployment's link (eth0 is interface 2).
    let gateway = format!("[fe80::1%2]:{service}");
    for addr in [METADATA6, PRIVATE6, &on_host, &gateway, &neighbour] {
        // Refused by the firewall (ICMPv6 administratively prohibited, which Linux reports
        // as EACCES), not lost on the way nor an address the program could not parse.
        let (_, said) = host.get(
            &host.preview_host("open", &open),
            &format!("/connect?addr={addr}"),
        );
        assert!(said.contains("Permission denied"), "{addr}: {said}");
    }
    // --egress none: nothing but itself.
    for addr in [INTERNET6, allowed, PRIVATE6, &gateway] {
        assert!(
            !connects(&host, "closed", &closed, addr),
            "{addr} is reachable"
        );
    }
    assert!(connects(&host, "closed", &closed, &neighbour), "itself");
}

/// gVisor (`--runtime runsc`) runs its own network stack (runsc's `network=sandbox`), which
/// takes over the namespace's interface with the addresses and routes nxd gave it: its IPv6
/// egress follows the same policy. With `--egress public` an image under gVisor reaches the
/// IPv6 internet stand-in (and the IPv4 one), and not the metadata stand-in fd00:ec2::254, a
/// ULA or the host's own IPv6 address.
#[test]
fn a_gvisor_deployment_has_ipv6_and_its_policy() {
    let host = Host::start();
    let _up = upstream(&host);
    let service = nx_testkit::free_port();
    listen(
        &host.netns,
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, service)),
    );
    let build = tempfile::tempdir_in("/var/tmp").unwrap();
    let image = nx_testkit::build_sample_image(build.path(), "linux/amd64");
    let out = host.nx_json(&[
        "push",
        "--image",
        image.to_str().unwrap(),
        "--sandbox",
        "gvisor6",
        "--runtime",
        "runsc",
        "--egress",
        "public",
    ]);
    assert_eq!(out["deployment"]["runtime"], "runsc", "{out}");
    let id = out["deployment"]["id"].as_str().unwrap();
    address6(&host, "gvisor6", id);
    assert!(
        connects(&host, "gvisor6", id, INTERNET6),
        "the IPv6 internet"
    );
    assert!(
        connects(&host, "gvisor6", id, INTERNET),
        "the IPv4 internet"
    );
    let on_host = format!("[{HOST_UPLINK6}]:{service}");
    for addr in [METADATA6, PRIVATE6, &on_host] {
        assert!(!connects(&host, "gvisor6", id, addr), "{addr} is reachable");
    }
}

#[test]
fn names_resolve_through_the_hosts_loopback_resolver_and_the_sandboxs_egress_is_the_default() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let host = Host::start_with_nxd(
        nxd_reading(
            dir.path(),
            &format!("nameserver {}\noptions edns0\n", LoopbackResolver::ADDR),
        ),
        "",
    );
    let _up = upstream(&host);
    let _dns = LoopbackResolver::start(&host);

    // The sandbox's default: pushes that name no --egress get it.
    host.nx_json(&["sandbox", "create", "web"]);
    let settings = host.nx_json(&["sandbox", "set", "web", "--egress", "public"]);
    assert_eq!(settings["egress"], "public", "{settings}");
    let open = host.push_sample("web", &[]);
    assert_eq!(host.deployment("web", &open)["egress"], "public");
    let named = "internet.test:80";
    assert!(connects(&host, "web", &open, named), "a name, resolved");
    let (_, said) = host.get(
        &host.preview_host("web", &open),
        "/read?path=/etc/resolv.conf",
    );
    assert!(said.contains(&format!("nameserver {GATEWAY}")), "{said}");

    // A push's own --egress wins over the sandbox's; with none there is no resolver either.
    let closed = host.push_sample("web", &["--egress", "none"]);
    assert_eq!(host.deployment("web", &closed)["egress"], "none");
    let (_, said) = host.get(
        &host.preview_host("web", &closed),
        &format!("/connect?addr={named}"),
    );
    assert!(said.starts_with("cannot connect"), "{said}");
}

#[test]
fn ports_any_number_also_the_same_and_below_1024_and_no_squatting() {
    let host = Host::start();
    let a = host.push_sample("a", &["--port", "8080"]);
    let b = host.push_sample("b", &["--port", "8080"]);
    let low = host.push_sample("low", &["--port", "80"]);
    for (sandbox, id) in [("a", &a), ("b", &b), ("low", &low)] {
        let (status, body) = host.get(&host.preview_host(sandbox, id), "/");
        assert_eq!(status, 200);
        assert!(body.contains(&format!("deployment={id}")), "{body}");
    }
    assert_eq!(listen_addr(&host, "a", &a).port(), 8080);
    assert_eq!(listen_addr(&host, "low", &low).port(), 80);

    // The squatter: stop V, push W listening on V's port, start V again. V runs on its own
    // address; its URL never serves W.
    let v = host.push_sample("v", &[]);
    let port = listen_addr(&host, "v", &v).port().to_string();
    host.nx_json(&["stop", &v]);
    let w = host.push_sample("w", &["--port", &port]);
    host.nx_json(&["start", &v]);
    let (_, body) = host.get(&host.preview_host("v", &v), "/");
    assert!(body.contains(&format!("deployment={v}")), "{body}");
    let (_, body) = host.get(&host.preview_host("w", &w), "/");
    assert!(body.contains(&format!("deployment={w}")), "{body}");

    let sample = nx_testkit::sample_app();
    let sample = sample.to_str().unwrap();
    for (bad, says) in [
        ("0", "not a port"),
        ("70000", "not a port"),
        ("http", "not a number"),
    ] {
        let out = host.nx(&["push", sample, "--sandbox", "bad", "--port", bad]);
        assert!(!out.ok, "--port {bad} was taken");
        assert!(out.stderr.contains(says), "--port {bad}: {}", out.stderr);
    }
    // Past the CLI, straight at the API.
    let (_, _, sha) = host.put_artifact(std::fs::read(sample).unwrap());
    let resp = host
        .http()
        .post(format!("http://{}/v1/deployments", host.api))
        .bearer_auth(&host.token)
        .json(&serde_json::json!({"sandbox": "bad", "artifact": sha, "port": 0}))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().unwrap().contains("port 0"));
}

#[test]
fn a_third_party_program_takes_its_port_as_a_flag() {
    let host = Host::start();
    // Debian's caddy: a dynamically linked Go program that has never heard of NX.
    let out = host.nx_json(&[
        "push",
        "/usr/bin/caddy",
        "--sandbox",
        "caddy",
        "--",
        "respond",
        "--listen",
        ":$PORT",
        "hello from caddy on ${PORT}, $$5",
    ]);
    let id = out["deployment"]["id"].as_str().unwrap();
    let port = out["deployment"]["port"].as_u64().unwrap();
    let (status, body) = host.get(&host.preview_host("caddy", id), "/");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, format!("hello from caddy on {port}, $5"));
}

#[test]
fn network_allow_entries_that_are_not_cidrs_refuse_to_start_with_the_line_named() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let config = dir.path().join("nxd.toml");
    for (entry, says) in [
        ("\"intranet\"", "not a CIDR"),
        ("\"10.20.0.1/16\"", "did you mean 10.20.0.0/16"),
        ("\"10.0.0.0/33\"", "not a CIDR"),
    ] {
        std::fs::write(
            &config,
            format!(
                "state_dir = {:?}\n\n[network]\nallow = [\"192.168.7.0/24\", {entry}]\n",
                dir.path()
            ),
        )
        .unwrap();
        let out = Command::new(nx_testkit::bin("nxd"))
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{entry} was taken");
        assert!(
            stderr.contains("line 4") && stderr.contains(says),
            "{entry}: {stderr}"
        );
    }
}

/// Newcomer17 N13: a second nxd in the network namespace of a running one (the quick start's
/// second try, other state dir and ports) deleted the first's links and firewall table and gave
/// its deployments the first's addresses, so the first's URLs served the second's deployment.
/// Now it refuses before it changes anything, naming the first nxd and what to do, and the
/// first goes on serving.
#[test]
fn a_second_nxd_in_the_network_namespace_of_a_running_one_refuses_and_names_it() {
    let mut host = Host::start();
    let id = host.push_sample("first", &[]);
    let preview = host.preview_host("first", &id);
    let (_second, out) = second_nxd(&host, std::time::Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second nxd started: {stderr}");
    let first = host.state_dir.path().display().to_string();
    assert!(
        stderr.contains("runs the deployments' network of this network namespace")
            && stderr.contains(&format!("state dir {first}"))
            && stderr.contains("manager-stop")
            // Newcomer20 Q1: what works (README's second quick start), not `ip netns exec`.
            && stderr.contains("nsenter --net=/run/netns/NAME nxd"),
        "{stderr}"
    );
    // The first serves as before.
    assert_eq!(host.get(&preview, "/").0, 200);
    assert_eq!(host.get(&host.production_host("first"), "/").0, 404);
    let again = host.push_sample("first", &[]);
    assert_eq!(host.get(&host.preview_host("first", &again), "/").0, 200);

    // Review17 #12: any local process may take the claim's name first; one of another uid is
    // named by the kernel's pid and uid, not by what it says of itself.
    host.stop_nxd();
    let squat = "import socket,time\ns=socket.socket(socket.AF_UNIX)\ns.bind(b'\\0nx-deployment-network')\ns.listen()\nprint('bound',flush=True)\nwhile True:\n c,_=s.accept(); c.send(b'the nxd of pid 1 and state dir /x\\n'); c.close()\n";
    let mut squatter = host
        .netns
        .command("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            squat,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut bound = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(squatter.stdout.take().unwrap()),
        &mut bound,
    )
    .unwrap();
    assert_eq!(bound.trim(), "bound");
    let out = host.nxd_that_exits(&[], std::time::Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = squatter.kill();
    let _ = squatter.wait();
    assert!(
        !out.status.success()
            && stderr.contains(&format!("a process of uid 65534 (pid {})", squatter.id()))
            && !stderr.contains("pid 1 "),
        "{stderr}"
    );
    host.start_nxd();
    assert_eq!(host.get(&host.preview_host("first", &again), "/").0, 200);
}

/// Whether the test host's namespace has `nx0` and the table `inet nx`.
fn nx0_and_table(host: &Host) -> (bool, bool) {
    let run = |program: &str, args: &[&str]| {
        host.netns
            .command(program)
            .args(args)
            .output()
            .expect(program)
            .status
            .success()
    };
    (
        run("ip", &["link", "show", "nx0"]),
        run("nft", &["list", "table", "inet", "nx"]),
    )
}

/// Waits up to 20 s for `url_host` to answer 200 through the test host's router; panics with
/// what it answered last.
fn wait_for_200(host: &Host, url_host: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (status, body) = host.get(url_host, "/");
        if status == 200 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{url_host} answers {status}: {body}\n{}",
            host.nxd_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Newcomer18 N4: the claim lasted only while nxd ran, but what it guards outlives nxd (a
/// plain stop leaves the deployments running): a second nxd of another state dir started after
/// it removed the first's links and handed out its addresses, and the first's URLs served the
/// second's deployments. Now nx0 names the state dir whose network it is: the second refuses,
/// naming it and what to do, and the first's state dir starts again and serves.
#[test]
fn a_second_nxd_beside_a_stopped_ones_running_deployments_refuses_and_names_its_state_dir() {
    let mut host = Host::start();
    let id = host.push_sample("first", &[]);
    host.nx_json(&["promote", "first", &id]);
    let production = host.production_host("first");
    host.stop_nxd();
    assert_eq!(host.get(&production, "/").0, 200, "nxd's stop stopped it");
    let (_second, out) = second_nxd(&host, std::time::Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = host.state_dir.path().display().to_string();
    assert!(
        !out.status.success()
            && stderr.contains(&format!("belongs to the nxd of state dir {first}"))
            && stderr.contains(&format!("nxd manager-stop --state-dir {first}")),
        "{stderr}"
    );
    assert_eq!(host.get(&production, "/").0, 200);
    host.netns.ip(&["link", "show", &format!("nx-{id}")]);
    // Its own state dir takes the network back (a restart or an upgrade keeps deployments).
    host.start_nxd();
    assert_eq!(host.get(&production, "/").0, 200);
    let again = host.push_sample("first", &[]);
    assert_eq!(host.get(&host.preview_host("first", &again), "/").0, 200);
}

/// Newcomer18 N5: `nxd manager-stop` of a state dir whose nxd ran elsewhere (README's stop
/// recipe for an old quick start, run where another nxd now runs) removed the running nxd's
/// nx0 and table: every URL down, unnoticed. Now manager-stop leaves a network that another
/// nxd runs or that nx0 names another state dir for, and says so; its own it still removes.
#[test]
fn manager_stop_of_another_state_dir_leaves_the_network_of_the_nxd_that_runs_here() {
    let mut host = Host::start();
    let id = host.push_sample("shop", &[]);
    host.nx_json(&["promote", "shop", &id]);
    let production = host.production_host("shop");
    // Another state dir, whose nxd ran its network in a namespace of its own.
    let mut elsewhere = Host::start();
    elsewhere.stop_nxd();
    let (here, there) = (host.netns.clone(), elsewhere.state_dir.path().to_owned());
    let stop_elsewhere_here = || {
        here.command(nx_testkit::bin("nxd"))
            .arg("manager-stop")
            .arg("--state-dir")
            .arg(&there)
            .output()
            .expect("nxd manager-stop")
    };
    let first = host.state_dir.path().display().to_string();
    let out = stop_elsewhere_here();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success()
            && stderr.contains("left the network of this network namespace")
            && stderr.contains(&format!("state dir {first}")),
        "while the first runs: {stderr}"
    );
    assert_eq!(nx0_and_table(&host), (true, true));
    assert_eq!(host.get(&production, "/").0, 200);
    // The first stopped (its deployments run on): nx0 names its state dir.
    host.stop_nxd();
    let out = stop_elsewhere_here();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success()
            && stderr.contains(&format!("belongs to the nxd of state dir {first}")),
        "while the first is stopped: {stderr}"
    );
    assert_eq!(nx0_and_table(&host), (true, true));
    assert_eq!(host.get(&production, "/").0, 200);
    host.start_nxd();
    assert_eq!(host.get(&production, "/").0, 200);
}

/// Newcomer18 N5: after nx0 and the table vanished under a running nxd (an old manager-stop of
/// another state dir, an operator's `ip link del`), a restart adopted every deployment as
/// running while none was reachable (nx0's address went, and with it the routes to the
/// deployments whose source it was). Now adoption puts back nx0, the table and each running
/// deployment's route.
#[test]
fn a_restarted_nxd_puts_back_nx0_the_table_and_its_running_deployments_routes() {
    let mut host = Host::start();
    let id = host.push_sample("shop", &[]);
    host.nx_json(&["promote", "shop", &id]);
    let production = host.production_host("shop");
    let tcp = host.push_sample("db", &["--tcp"]);
    let port = SocketAddr::from(([127, 0, 0, 1], own_tcp_port(&host, "db", &tcp)));
    host.netns.ip(&["link", "del", "nx0"]);
    let nft = host
        .netns
        .command("nft")
        .args(["delete", "table", "inet", "nx"])
        .status()
        .unwrap();
    assert!(nft.success());
    assert_ne!(host.get(&production, "/").0, 200, "still reachable");
    host.restart_nxd();
    assert_eq!(nx0_and_table(&host), (true, true));
    wait_for_200(&host, &production);
    assert_eq!(connect_from(&host.netns, port), Ok(()));
}

/// `--service`: the sandbox's other deployments reach the service by its name (and address),
/// not the sandbox's deployments that declared nothing; another sandbox reaches neither; a
/// newer push of the service takes the name over; a bad name is refused.
#[test]
fn a_service_is_reached_by_name_from_its_sandbox_and_not_from_another() {
    let host = Host::start();
    let service = host.push_sample("shop", &["--service", "cache", "--port", "7000"]);
    let plain = host.push_sample("shop", &[]);
    let client = host.push_sample("shop", &[]);
    let other = host.push_sample("other", &[]);
    assert_eq!(host.deployment("shop", &service)["service"], "cache");
    assert!(connects(&host, "shop", &client, "cache:7000"));
    let service_addr = listen_addr(&host, "shop", &service).to_string();
    assert!(connects(&host, "shop", &client, &service_addr));
    // Only what was declared.
    let plain_addr = listen_addr(&host, "shop", &plain).to_string();
    assert!(!connects(&host, "shop", &client, &plain_addr));
    // Not from another sandbox: the name means nothing there, the address is closed.
    assert!(!connects(&host, "other", &other, "cache:7000"));
    assert!(!connects(&host, "other", &other, &service_addr));

    // The push says that the name moves to it at once, not at a promotion.
    let sample = nx_testkit::sample_app();
    let pushed = host.nx(&[
        "push",
        sample.to_str().unwrap(),
        "-s",
        "shop",
        "--service",
        "cache",
        "--port",
        "7000",
    ]);
    assert!(pushed.ok, "{}", pushed.stderr);
    let newer = pushed.stdout.split(' ').nth(1).unwrap().to_owned();
    assert!(
        pushed.stdout.contains(&format!(
            "service: the sandbox's deployments reach {newer} as cache from now on, before any promotion, unless production declares cache: then from its promotion on"
        )),
        "{}",
        pushed.stdout
    );
    let newer_addr = listen_addr(&host, "shop", &newer).to_string();
    assert!(connects(&host, "shop", &client, &newer_addr));
    // The name means the newer one: the older one's address is closed now.
    assert!(!connects(&host, "shop", &client, &service_addr));
    assert!(connects(&host, "shop", &client, "cache:7000"));

    let bad = host.nx(&[
        "push",
        sample.to_str().unwrap(),
        "-s",
        "shop",
        "--service",
        "Cache",
    ]);
    assert!(!bad.ok);
    assert!(bad.stderr.contains("not a service name"), "{}", bad.stderr);
}

/// Newcomer20 N3: a preview pushed with production's `--service` name took the name (and the
/// firewall's way to it) from production while it was only a preview, so production's clients
/// reached the preview. The name stays with production until the preview is promoted, and goes
/// back with a rollback.
#[test]
fn a_preview_leaves_productions_service_name_alone_until_promoted() {
    let host = Host::start();
    let production = host.push_sample("shop", &["--service", "web", "--port", "7000"]);
    host.nx_json(&["promote", "shop", &production]);
    let client = host.push_sample("shop", &[]);
    let production_addr = listen_addr(&host, "shop", &production);
    let means = |addr: SocketAddr| {
        let (status, hosts) =
            host.get(&host.preview_host("shop", &client), "/read?path=/etc/hosts");
        assert_eq!(status, 200, "{hosts}");
        assert!(connects(&host, "shop", &client, "web:7000"), "{hosts}");
        assert!(hosts.contains(&format!("{}\tweb\n", addr.ip())), "{hosts}");
        assert!(connects(&host, "shop", &client, &addr.to_string()));
    };
    means(production_addr);

    let preview = host.push_sample("shop", &["--service", "web", "--port", "7000"]);
    let preview_addr = listen_addr(&host, "shop", &preview);
    means(production_addr);
    assert!(!connects(&host, "shop", &client, &preview_addr.to_string()));

    host.nx_json(&["promote", "shop", &preview]);
    means(preview_addr);
    host.nx_json(&["rollback", "shop"]);
    means(production_addr);
}

/// Review19 #1: a push's routes went out while its deployment started (a52f011), and with them
/// its sandbox's service name, so every caller of a `--service` name was refused until the new
/// deployment listened (for its whole readiness timeout when it never did). The name moves once
/// the new one is ready.
#[test]
fn a_service_push_moves_the_name_once_ready_not_while_it_starts() {
    let host = Host::start();
    host.push_sample("shop", &["--service", "cache", "--port", "7000"]);
    let client = host.push_sample("shop", &[]);
    assert!(connects(&host, "shop", &client, "cache:7000"));
    let mut push = host.spawn_push_sample(
        "shop",
        &[
            "--service",
            "cache",
            "--port",
            "7000",
            "--ready-timeout",
            "60s",
            "-e",
            "LISTEN_AFTER=4",
        ],
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        connects(&host, "shop", &client, "cache:7000"),
        "the name left the service that runs while its successor started"
    );
    assert!(push.wait().expect("the push").success());
    assert!(connects(&host, "shop", &client, "cache:7000"));
}

/// Review19 #1b: a deployment's own way to its sandbox's services (the firewall's service pairs)
/// came with its routes, so once it was ready on `nx start` (a few ms into its start on a push):
/// a program that connects to a service before it listens was refused, and its start failed.
/// The pairs now come before its program runs, on a push and on `nx start`.
#[test]
fn a_program_reaches_its_sandboxs_service_before_it_listens() {
    let host = Host::start();
    host.push_sample("shop", &["--service", "cache", "--port", "7000"]);
    let client = host.push_sample("shop", &["-e", "CONNECT_AT_START=cache:7000"]);
    host.nx_json(&["stop", &client]);
    let started = host.nx(&["start", &client]);
    assert!(started.ok, "{}{}", started.stdout, started.stderr);
    assert!(connects(&host, "shop", &client, "cache:7000"));
}

/// The host port of deployment `id`'s `tcp://HOST:PORT` (`nx status`).
fn own_tcp_port(host: &Host, sandbox: &str, id: &str) -> u16 {
    let url = host.deployment(sandbox, id)["tcp_url"].clone();
    let url = url.as_str().unwrap_or_else(|| panic!("no tcp_url: {url}"));
    url.rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("{url} is not tcp://HOST:PORT"))
}

/// How a TCP connect to `addr` from inside `netns` ends within 5 s: Ok, or the error's kind
/// (`TimedOut` when nothing answered at all).
fn connect_from(
    netns: &nx_testkit::netns::Netns,
    addr: SocketAddr,
) -> Result<(), std::io::ErrorKind> {
    netns.run(|| {
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
            .map(drop)
            .map_err(|e| e.kind())
    })
}

#[test]
fn after_manager_stop_a_tcp_port_refuses_and_no_table_link_or_route_of_nx_is_left() {
    let mut host = Host::start();
    let id = host.push_sample("tcp", &["--tcp"]);
    let port = SocketAddr::from(([127, 0, 0, 1], own_tcp_port(&host, "tcp", &id)));
    assert_eq!(connect_from(&host.netns, port), Ok(()));

    host.stop_nxd();
    let (status, stderr) = host.manager_stop();
    assert!(status.success(), "nxd manager-stop: {stderr}");
    // Nothing listens on the port any more: refused at once, not DNATed to an address nobody
    // has (where a connect hangs).
    assert_eq!(
        connect_from(&host.netns, port),
        Err(std::io::ErrorKind::ConnectionRefused)
    );
    let nft = host
        .netns
        .command("nft")
        .args(["list", "table", "inet", "nx"])
        .output()
        .unwrap();
    assert!(!nft.status.success(), "table inet nx is left");
    let links = host
        .netns
        .command("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("nx0"), "{links}");
    let routes = host
        .netns
        .command("ip")
        .args(["route", "show", "type", "unreachable"])
        .output()
        .unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(!routes.contains("10.213."), "{routes}");
    let routes = host
        .netns
        .command("ip")
        .args(["-6", "route", "show", "type", "unreachable"])
        .output()
        .unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(!routes.contains("fd6e:7800:213:"), "{routes}");
}

#[test]
fn a_tcp_push_leaves_its_sandboxs_http_health_check_and_idle_timeout_to_http_deployments() {
    let host = Host::start();
    host.push_sample("mixed", &[]);
    let set = host.nx(&[
        "sandbox",
        "set",
        "mixed",
        "--health-path",
        "/health",
        "--idle-timeout",
        "5m",
    ]);
    assert!(set.ok, "{}", set.stderr);
    let web = host.push_sample("mixed", &[]);
    let tcp = host.push_sample("mixed", &["--tcp"]);
    let port = SocketAddr::from(([127, 0, 0, 1], own_tcp_port(&host, "mixed", &tcp)));
    assert_eq!(connect_from(&host.netns, port), Ok(()));
    // Given with the push itself, still refused, with what to do.
    let sample = nx_testkit::sample_app();
    let own = host.nx(&[
        "push",
        sample.to_str().unwrap(),
        "-s",
        "mixed",
        "--tcp",
        "--health-path",
        "/health",
    ]);
    assert!(!own.ok);
    assert!(own.stderr.contains("drop --health-path"), "{}", own.stderr);
    // The HTTP deployment has the sandbox's health check and idle timeout, the TCP one neither.
    let web = host.deployment("mixed", &web);
    let tcp = host.deployment("mixed", &tcp);
    assert_eq!(web["health_check"]["path"], "/health", "{web}");
    assert_eq!(web["idle_timeout_secs"], 300, "{web}");
    assert!(tcp["health_check"].is_null(), "{tcp}");
    assert!(tcp["idle_timeout_secs"].is_null(), "{tcp}");
}

/// Deployment `id`'s network namespace, held open from one of its unit's processes (found by
/// its cgroup, `nx-<id>.service`): the kernel keeps the namespace, and with it the devices in
/// it, while this is held, as anything holding a namespace would (an open
/// `/proc/<pid>/ns/net`, a bind mount, a process that outlived its unit).
fn hold_namespace(host: &Host, id: &str) -> std::sync::Arc<nx_testkit::netns::Netns> {
    let unit = format!("/nx-{id}.service");
    let host_ns = host.netns.inode();
    let pids = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok());
    for pid in pids {
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if !cgroups.lines().any(|l| l.ends_with(&unit)) {
            continue;
        }
        if let Ok(ns) = nx_testkit::netns::Netns::of_process(pid) {
            if ns.inode() != host_ns {
                return ns;
            }
        }
    }
    panic!("no process of {unit} in a namespace of its own");
}

/// The link the test host routes `address` through (`ip route get`), e.g. `nx-<id>`.
fn routed_through(host: &Host, address: std::net::IpAddr) -> String {
    let out = host
        .netns
        .command("ip")
        .args(["-o", "route", "get", &address.to_string()])
        .output()
        .expect("ip route get");
    let route = String::from_utf8_lossy(&out.stdout);
    let mut words = route.split_whitespace();
    words
        .by_ref()
        .find(|w| *w == "dev")
        .and_then(|_| words.next())
        .unwrap_or_else(|| panic!("no link routes {address}: {route}"))
        .to_owned()
}

/// The connections the test host tracks from or to `address` (`conntrack -L`, one a line).
fn tracked_to(host: &Host, address: std::net::IpAddr) -> String {
    let family = if address.is_ipv6() { "ipv6" } else { "ipv4" };
    let mut flows = String::new();
    for side in ["--orig-src", "--reply-src"] {
        let out = host
            .netns
            .command("conntrack")
            .args(["-L", "--family", family, side, &address.to_string()])
            .output()
            .expect("conntrack (install conntrack)");
        flows.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    flows
}

/// nxd refuses to start on a host without `conntrack` (it could not forget a removed
/// deployment's connections: every `nx rm` would fail after its unit was gone), saying what to
/// install, before it changed the host (review s8 #11: it had made its bridge `nx0` first);
/// here its PATH holds every program of the test host's but `conntrack`.
#[test]
fn nxd_refuses_to_start_without_conntrack_and_says_what_to_install() {
    let mut host = Host::start();
    host.stop_nxd();
    host.netns.ip(&["link", "del", "nx0"]);
    let path = tempfile::tempdir_in("/var/tmp").expect("a PATH directory");
    for dir in ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin"] {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let link = path.path().join(&name);
            if name != "conntrack" && !link.exists() {
                std::os::unix::fs::symlink(entry.path(), link).expect("symlink");
            }
        }
    }
    let log = path.path().join("nxd.log");
    let mut nxd = host
        .netns
        .command(nx_testkit::bin("nxd"))
        .arg("--config")
        .arg(host.state_dir.path().join("nxd.toml"))
        .env("PATH", path.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("nxd");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = nxd.try_wait().expect("nxd's status") {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = nxd.kill();
            let _ = nxd.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.is_some_and(|s| !s.success()),
        "nxd ran without conntrack ({status:?}): {said}"
    );
    assert!(
        said.contains("cannot run it") && said.contains("apt-get install conntrack"),
        "{said}"
    );
    let nx0 = host
        .netns
        .command("ip")
        .args(["link", "show", "nx0"])
        .output()
        .expect("ip");
    assert!(
        !nx0.status.success(),
        "nxd made nx0 before it refused to start: {}",
        String::from_utf8_lossy(&nx0.stdout)
    );
}

/// `nx rm` frees a deployment's slot and with it its addresses; a push right after gets them.
/// The removed deployment's namespace may outlive it (the kernel destroys a namespace
/// asynchronously, and only once nothing holds it: here the test holds each one open), yet
/// its link and routes go with `nx rm`: each new deployment routes the same addresses to its
/// own link, answers at once, and nothing of its predecessor is left: not in the held
/// namespaces, and no connection the host tracked to it (a new holder of the address could
/// send within such a flow past the firewall, which accepts established flows first), over
/// IPv4 (the router's) or IPv6 (the host's own connection to its IPv6 address).
#[test]
fn an_address_freed_by_nx_rm_goes_to_the_next_push_while_the_old_namespace_lingers() {
    let host = Host::start();
    // Listening on [::] (dual-stack): reached over IPv4 by the router, over IPv6 by the host.
    let dual_stack = ["-e", "HOST=::"];
    let mut previous = host.push_sample("reuse", &dual_stack);
    let first = listen_addr(&host, "reuse", &previous).ip();
    let first6 = address6(&host, "reuse", &previous);
    let mut held = Vec::new();
    for round in 0..4 {
        held.push(hold_namespace(&host, &previous));
        let (status, body) = host.get(&host.preview_host("reuse", &previous), "/health");
        assert_eq!(status, 200, "round {round}: {body}");
        let port = listen_addr(&host, "reuse", &previous).port();
        let over_ipv6 = host
            .netns
            .run(|| std::net::TcpStream::connect((first6, port)))
            .unwrap_or_else(|e| panic!("round {round}: [{first6}]:{port} from the host: {e}"));
        for address in [first, first6.into()] {
            assert!(
                !tracked_to(&host, address).is_empty(),
                "round {round}: a connection to {address} is tracked"
            );
        }
        // Closed: its flow stays tracked (TIME_WAIT) until nx rm forgets it.
        drop(over_ipv6);
        host.nx_json(&["rm", &previous]);
        for address in [first, first6.into()] {
            let left = tracked_to(&host, address);
            assert!(
                left.is_empty(),
                "round {round}: tracked after nx rm: {left}"
            );
        }
        let next = host.push_sample("reuse", &dual_stack);
        let link = format!("nx-{next}");
        assert_eq!(
            listen_addr(&host, "reuse", &next).ip(),
            first,
            "round {round}: the freed slot's address"
        );
        assert_eq!(address6(&host, "reuse", &next), first6, "round {round}");
        assert_eq!(routed_through(&host, first), link, "round {round}");
        let (status, body) = host.get(&host.preview_host("reuse", &next), "/env");
        assert_eq!(status, 200, "round {round}: {body}");
        assert!(
            body.contains(&next),
            "round {round}: not {next}'s answer: {body}"
        );
        previous = next;
    }
    for ns in &held {
        let out = ns
            .command("ip")
            .args(["-o", "link", "show"])
            .output()
            .expect("ip");
        let links = String::from_utf8_lossy(&out.stdout);
        assert_eq!(links.lines().count(), 1, "only lo is left: {links}");
    }
}

/// An nxd of a second, empty state dir (under /var/tmp, free ports) started in `host`'s network
/// namespace, run until it exits (within `within`): the dir (removed when dropped) and what
/// the nxd printed.
fn second_nxd(
    host: &Host,
    within: std::time::Duration,
) -> (tempfile::TempDir, std::process::Output) {
    let second = tempfile::Builder::new()
        .prefix("nx-test-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let listen = |port: u16| format!("127.0.0.1:{port}");
    let out = host.nxd_that_exits(
        &[
            "--state-dir",
            second.path().to_str().unwrap(),
            "--api-listen",
            &listen(nx_testkit::free_port()),
            "--router-listen",
            &listen(nx_testkit::free_port()),
        ],
        within,
    );
    (second, out)
}
