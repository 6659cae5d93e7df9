//! The microvm backend on real QEMU guests (Debian's kernel, NX's init, the static sample as the
//! only program): push, preview, database, promote, rollback, logs, the exit code of a crashing
//! program, and what the guest can see of the host and of the network.

use nx_testkit::netns::{
    connects, listen, listen_addr, nxd_reading, upstream, LoopbackResolver, HOST_UPLINK,
    HOST_UPLINK6, INTERNET, INTERNET6, METADATA, METADATA6, PRIVATE6,
};
use nx_testkit::{microvm_config, Host};
use std::net::{Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[test]
fn a_deployment_runs_as_the_only_program_of_a_microvm() {
    // `auto`: KVM and TCG are probed once; whichever boots faster runs the guests.
    let host = Host::start_with(&microvm_config("auto"));
    let push = |version: &str| {
        host.push_sample(
            "vm",
            &[
                "--backend",
                "microvm",
                "--tmp",
                "8",
                "-e",
                &format!("APP_VERSION={version}"),
            ],
        )
    };
    let v1 = push("v1");
    let preview = host.preview_host("vm", &v1);
    assert_eq!(
        host.get(&preview, "/").1,
        format!("nx-sample v1 deployment={v1}\n")
    );
    let d = host.deployment("vm", &v1);
    assert_eq!(d["backend"], "microvm");
    let runs_on = d["runs_on"].as_str().unwrap();
    assert!(
        runs_on.contains("kvm") || runs_on.contains("tcg"),
        "the accelerator is named: {runs_on}"
    );

    // The guest holds only what NX put in its initramfs; the host's files are not there.
    for path in ["/etc/shadow", "/work", "/home", "/var/tmp"] {
        let (status, body) = host.get(&preview, &format!("/read?path={path}"));
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (_, root) = host.get(&preview, "/ls?path=/");
    let mut root: Vec<String> = serde_json::from_str(&root).unwrap();
    root.sort();
    // (/root is the kernel's own empty mount point; /data the deployment's disk.)
    assert_eq!(
        root,
        ["app", "data", "dev", "etc", "init", "nx", "proc", "root", "sys", "tmp", "usr"]
    );
    // What the bubblewrap sandbox shows a program of the OS: its own users (not the host's),
    // the time zones.
    let (status, passwd) = host.get(&preview, "/read?path=/etc/passwd");
    assert_eq!(status, 200, "{passwd}");
    assert!(passwd.contains("app:x:1000:1000:"), "{passwd}");
    assert!(!passwd.contains("daemon:"), "the host's users: {passwd}");
    let (status, zone) = host.get(&preview, "/read?path=/usr/share/zoneinfo/Europe/Paris");
    assert_eq!(status, 200);
    assert!(zone.starts_with("TZif"), "{zone}");
    if std::path::Path::new("/etc/localtime").exists() {
        let (status, local) = host.get(&preview, "/read?path=/etc/localtime");
        assert_eq!((status, &local[..4]), (200, "TZif"));
    }
    assert!(host
        .get(&preview, "/ls?path=/root")
        .1
        .contains("Permission denied"));
    // Its secrets are for the guest's init only, not for the program.
    assert_eq!(host.get(&preview, "/read?path=/nx/env").0, 404);
    let (_, whoami) = host.get(&preview, "/whoami");
    assert!(!whoami.contains("uid=0"), "{whoami}");
    // /tmp and /dev/shm are each --tmp (8 MiB) in the guest, as in a container (review14 #4:
    // /tmp was half the guest's RAM, and there was no /dev/shm).
    for dir in ["/tmp", "/dev/shm"] {
        let (status, body) = host.get(&preview, &format!("/fill?dir={dir}&mb=12"));
        assert_eq!(status, 200, "{dir}: {body}");
        let filled: serde_json::Value = serde_json::from_str(&body).unwrap();
        nx_testkit::assert_filled_to_its_size(&filled, dir, 8 << 20);
    }

    // The host's other services are out of reach: only the database is forwarded. With
    // --egress none (the default): not the host's API (at QEMU's alias for the host, 10.0.2.2, and
    // at the host's own loopback), not a service on every address of the host, not a
    // stand-in for the cloud metadata service on the host's link-local address.
    let service = nx_testkit::free_port();
    listen(&host.netns, SocketAddr::from(([0, 0, 0, 0], service)));
    host.netns
        .ip(&["addr", "add", "169.254.169.254/32", "dev", "lo"]);
    listen(&host.netns, "169.254.169.254:80".parse().unwrap());
    for addr in [
        format!("10.0.2.2:{}", host.api.port()),
        host.api.to_string(),
        format!("10.0.2.2:{service}"),
        format!("127.0.0.1:{service}"),
        "169.254.169.254:80".to_owned(),
    ] {
        let (_, reached) = host.get(&preview, &format!("/connect?addr={addr}"));
        assert!(reached.starts_with("cannot connect"), "{reached}");
    }
    let (_, reached) = host.get(&preview, "/connect?addr=10.0.2.100:5432");
    assert!(reached.starts_with("connected"), "{reached}");

    // Its database, through the one forward the guest has.
    let (status, body) = host.get(&preview, "/db/put?v=from-a-vm");
    assert_eq!(status, 200, "{body}{}", host.nx(&["logs", &v1]).stdout);
    assert!(host.get(&preview, "/db/list").1.contains("from-a-vm"));

    host.nx_json(&["promote", "vm", &v1]);
    let v2 = push("v2");
    // v2's VMM sees of the host's files only the system's and its own guest's: not v1's.
    assert_vmm_jailed(&host, &v2, &v1);
    host.nx_json(&["promote", "vm", &v2]);
    assert_eq!(
        host.get(&host.production_host("vm"), "/").1,
        format!("nx-sample v2 deployment={v2}\n")
    );
    host.nx_json(&["rollback", "vm"]);
    assert_eq!(
        host.get(&host.production_host("vm"), "/").1,
        format!("nx-sample v1 deployment={v1}\n")
    );

    // Logs: the program's output, from the guest's console.
    let logs = host.nx(&["logs", &v1]);
    assert!(
        logs.stdout.contains("nx-sample listening"),
        "{}",
        logs.stdout
    );

    // A crashing program: its exit code comes out of the guest (the unit's exit status while
    // it waits to restart), and the unit restarts the VM.
    // (Asked again if the request got lost on a busy host: two TCG guests share 2 cores.)
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut asked: Option<Instant> = None;
    loop {
        if asked.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
            let _ = host.get(&host.preview_host("vm", &v2), "/exit?code=7");
            asked = Some(Instant::now());
        }
        let d = host.deployment("vm", &v2);
        if d["state"]["sub"] == "auto-restart" {
            assert_eq!(d["state"]["exit_status"], 7, "{d}");
            assert_eq!(d["state"]["result"], "exit-code", "{d}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no restart after the crash: {d}\n{}",
            host.nx(&["logs", &v2]).stdout
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let logs = host.nx(&["logs", &v2]);
    assert!(logs.stdout.contains("NX-EXIT 7"), "{}", logs.stdout);

    // A sandbox whose default is the microvm backend: pushes that name none run there.
    host.nx_json(&["sandbox", "create", "vmdefault", "--backend", "microvm"]);
    let id = host.push_sample("vmdefault", &[]);
    assert_eq!(host.deployment("vmdefault", &id)["backend"], "microvm");
    let deadline = Instant::now() + Duration::from_secs(60);
    while host.get(&host.preview_host("vm", &v2), "/health").0 != 200 {
        assert!(Instant::now() < deadline, "the VM did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Review15 #5: a microVM's /tmp and /dev/shm are its guest's RAM, `--memory` less 64 MiB,
/// beside the guest's kernel and program. With `--memory 192` (a 128 MiB guest, the least that
/// boots) both full are ENOSPC and the program keeps serving; before, each was 64 MiB, and
/// filling /tmp alone was the guest's OOM kill. A `--tmp` past what the guest holds, and a
/// `--memory` whose guest would not boot (a 64 MiB guest panicked), are refused, saying why.
#[test]
fn a_small_microvms_full_tmp_and_dev_shm_are_enospc_and_the_program_keeps_serving() {
    let host = Host::start_with(&microvm_config("tcg"));
    let small = ["--backend", "microvm", "--memory", "192"];
    let id = host.push_sample("small", &small);
    let preview = host.preview_host("small", &id);
    let logs = || host.nx(&["logs", &id]).stdout;
    let meminfo = || {
        let (status, meminfo) = host.get(&preview, "/read?path=/proc/meminfo");
        assert_eq!(status, 200, "{meminfo}");
        meminfo
    };
    eprintln!("the guest at the program's start:\n{}", meminfo());
    for dir in ["/tmp", "/dev/shm"] {
        // Kept: both are full at once.
        let (status, body) = host.get(&preview, &format!("/fill?dir={dir}&mb=64&keep=1"));
        assert_eq!(status, 200, "{dir}: {body}\n{}", logs());
        let filled: serde_json::Value = serde_json::from_str(&body).unwrap();
        nx_testkit::assert_filled_to_its_size(&filled, dir, 24 << 20);
    }
    // Both full, the program still serves from the same boot, and the guest has memory left.
    assert_eq!(host.get(&preview, "/health").0, 200, "{}", logs());
    eprintln!("the guest with /tmp and /dev/shm full:\n{}", meminfo());
    let (_, tmp) = host.get(&preview, "/ls?path=/tmp");
    assert!(tmp.contains("fill"), "/tmp was emptied: a new boot? {tmp}");
    let state = &host.deployment("small", &id)["state"];
    assert_eq!(state["restarts"], 0, "{state}\n{}", logs());

    let sample = nx_testkit::sample_app();
    let push = |extra: &[&str]| {
        let mut args = vec!["push", sample.to_str().unwrap(), "--sandbox", "small"];
        args.extend_from_slice(extra);
        host.nx(&args)
    };
    let mut asked = small.to_vec();
    asked.extend_from_slice(&["--tmp", "32"]);
    let refused = push(&asked);
    assert!(
        !refused.ok
            && refused
                .stderr
                .contains("limits.tmp_mb: 32 is out of range: give 1 to 24 MiB in a microVM")
            && refused.stderr.contains("--memory"),
        "{}{}",
        refused.stdout,
        refused.stderr
    );
    let refused = push(&["--backend", "microvm", "--memory", "128"]);
    assert!(
        !refused.ok
            && refused
                .stderr
                .contains("limits.memory_max_mb: 128 is out of range: give 192 to ")
            && refused.stderr.contains("give --memory 192 or more"),
        "{}{}",
        refused.stdout,
        refused.stderr
    );
}

/// The VMM runs in the deployment's network namespace: the guest's port is at the
/// deployment's own address (not on the host's loopback), and its connections out leave under
/// the same firewall as any deployment's.
#[test]
fn a_microvm_has_its_own_address_and_the_egress_policy_of_every_deployment() {
    let host = Host::start_with(&microvm_config("tcg"));
    let _up = upstream(&host.netns);
    // A service on every address of the host (what SSH or PostgreSQL over TCP would be).
    let service = nx_testkit::free_port();
    listen(&host.netns, SocketAddr::from(([0, 0, 0, 0], service)));
    let open = host.push_sample("vmopen", &["--backend", "microvm", "--egress", "public"]);
    let closed = host.push_sample("vmclosed", &["--backend", "microvm"]);
    let neighbour_id = host.push_sample("neighbour", &[]);
    let neighbour = listen_addr(&host, "neighbour", &neighbour_id);
    let own = listen_addr(&host, "vmopen", &open);
    assert!(
        own.ip().to_string().starts_with("10.213."),
        "the deployment's own address: {own}"
    );
    host.netns.run(|| {
        assert!(
            TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], own.port()))).is_err(),
            "the guest's port is on the host's loopback"
        );
        assert!(TcpStream::connect(own).is_ok(), "{own}");
    });

    assert!(connects(&host, "vmopen", &open, INTERNET), "the internet");
    let gateway = "10.213.0.1";
    for addr in [
        METADATA.to_owned(),
        format!("{gateway}:{}", host.api.port()),
        format!("{gateway}:{}", host.router.port()),
        format!("{gateway}:{service}"),
        format!("{HOST_UPLINK}:{service}"),
        // QEMU's alias for its own side: the deployment's namespace, not the host.
        format!("10.0.2.2:{}", host.api.port()),
        neighbour.to_string(),
    ] {
        assert!(
            !connects(&host, "vmopen", &open, &addr),
            "{addr} is reachable"
        );
    }
    assert!(
        !connects(&host, "vmclosed", &closed, INTERNET),
        "--egress none reaches the internet"
    );

    // IPv6: the guest's kernel takes slirp's router advertisement (an address of fec0::/64
    // and a default route), and its connections out are QEMU's sockets in the namespace, so
    // under the deployment's IPv6 policy. The address comes a few seconds after boot.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !connects(&host, "vmopen", &open, INTERNET6) {
        assert!(
            Instant::now() < deadline,
            "the guest never reached the IPv6 internet"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let service6 = nx_testkit::free_port();
    listen(
        &host.netns,
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, service6)),
    );
    for addr in [
        METADATA6.to_owned(),
        PRIVATE6.to_owned(),
        format!("[{HOST_UPLINK6}]:{service6}"),
    ] {
        assert!(
            !connects(&host, "vmopen", &open, &addr),
            "{addr} is reachable"
        );
    }
    assert!(
        !connects(&host, "vmclosed", &closed, INTERNET6),
        "--egress none reaches the IPv6 internet"
    );
    // The database stays reachable through its forward with a way out too.
    let (status, body) = host.get(&host.preview_host("vmopen", &open), "/db/put?v=out");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_microvm_is_a_tcp_service_at_a_port_of_the_host() {
    let host = Host::start_with(&microvm_config("tcg"));
    let id = host.push_sample("vmtcp", &["--backend", "microvm", "--tcp"]);
    let url = host.deployment("vmtcp", &id)["tcp_url"].clone();
    let port: u16 = url
        .as_str()
        .and_then(|u| u.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no tcp://HOST:PORT: {url}"));
    // The sample speaks HTTP; as a TCP service it answers whatever reaches the host's port.
    let answer = host.netns.run(|| {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("{url}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: vm\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    });
    assert!(answer.starts_with("HTTP/1."), "{answer}");
    assert!(answer.contains(&format!("deployment={id}")), "{answer}");
}

#[test]
fn a_task_runs_once_in_a_microvm_with_no_network() {
    // No guest booted ahead (`pool_size` 0, the default): each task boots its own.
    let host = Host::start_with(&microvm_config("tcg"));
    let sample = nx_testkit::sample_app();
    let task = |extra: &[&str], args: &[&str]| {
        let mut all = vec!["run-task", sample.to_str().unwrap(), "--backend", "microvm"];
        all.extend_from_slice(extra);
        all.push("--");
        all.push("task");
        all.extend_from_slice(args);
        host.nx(&all)
    };
    let out = task(&[], &["exit", "3"]);
    assert_eq!(out.code, Some(3), "{}{}", out.stdout, out.stderr);
    assert_eq!(
        out.stdout, "exiting with 3\n",
        "stdout is the program's alone"
    );
    // The program shares the console with init, but not init's key: a line like init's exit
    // line is its output, and the task ends as the program did (attacker s10 F12: it ended 7).
    let out = task(&[], &["print", "NX-EXIT", "7"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("NX-EXIT 7\n"), "{}", out.stdout);
    assert!(out.stderr.contains("NX-EXIT 0\n"), "{}", out.stderr);
    // No network device at all: nothing but its own loopback.
    let out = task(&[], &["ls", "/sys/class/net"]);
    assert_eq!(out.stdout, "lo\n", "{}", out.stderr);
    let out = task(&["--timeout", "4s"], &["sleep", "60"]);
    assert_eq!(out.code, Some(124), "{}{}", out.stdout, out.stderr);
    // Past its memory, the guest's OOM killer ends it: 128 + SIGKILL, and the reason.
    let out = task(&[], &["hog"]);
    assert_eq!(out.code, Some(137), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("killed: out of memory in the guest"),
        "{}",
        out.stderr
    );
    // Nothing of the tasks is left in the backend's directory.
    assert!(nx_testkit::files_under(&host.path("microvm/tasks")).is_empty());
}

/// The QEMU processes whose command line mentions `needle`: pid and command line.
fn vmm_processes(needle: &str) -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")))
        })
        .filter(|(_, c)| c.starts_with("qemu-system") && c.contains(needle))
        .collect()
}

/// Asserts that the one QEMU process whose command line mentions `needle` runs under a seccomp
/// filter (QEMU's `-sandbox`) with no new privileges: `Seccomp: 2` and `NoNewPrivs: 1` in its
/// status (proc(5)).
fn assert_vmm_filtered(needle: &str) {
    let vmms = vmm_processes(needle);
    assert_eq!(vmms.len(), 1, "one VMM with {needle}: {vmms:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", vmms[0].0)).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    assert_eq!(field("Seccomp:").as_deref(), Some("2"), "{status}");
    assert_eq!(field("NoNewPrivs:").as_deref(), Some("1"), "{status}");
}

/// Asserts that the one QEMU process whose command line mentions `needle` (a deployment's
/// id) sees, through its root (`/proc/<pid>/root`, proc(5)), nothing of the host's files but
/// the system's and its own guest's (`microvm::jail`): no /home, no /root, no /var/log, of
/// /etc only the loader's cache, of nxd's state dir only the way to its guest's files, and not
/// the directory of deployment `other`.
fn assert_vmm_jailed(host: &Host, needle: &str, other: &str) {
    let vmms = vmm_processes(needle);
    assert_eq!(vmms.len(), 1, "one VMM with {needle}: {vmms:?}");
    let root = std::path::PathBuf::from(format!("/proc/{}/root", vmms[0].0));
    for hidden in ["home", "root", "var/log", "etc/passwd", "etc/shadow"] {
        assert!(!root.join(hidden).exists(), "the VMM sees /{hidden}");
    }
    let names = |dir: &std::path::Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(&root.join("etc")), ["ld.so.cache"]);
    let state = host.state_dir.path();
    let deployments = state.join("microvm/deployments");
    let inside = |path: &std::path::Path| root.join(path.strip_prefix("/").unwrap());
    assert_eq!(names(&inside(&deployments)), [needle]);
    assert!(!inside(&deployments.join(other)).exists());
    assert!(inside(&deployments.join(needle).join("initrd.cpio")).is_file());
    // Of the state dir: the guest's files (microvm/) and its database socket's directory.
    let seen = names(&inside(state));
    assert!(
        seen.len() <= 2 && seen.len() < names(state).len() && seen.contains(&"microvm".to_owned()),
        "the VMM sees {seen:?} of the state dir"
    );
}

/// The command lines of the QEMU processes that mention `needle`.
fn vmms_with(needle: &str) -> Vec<String> {
    vmm_processes(needle).into_iter().map(|(_, c)| c).collect()
}

/// `Cpus_allowed_list` of a process's or thread's status (proc(5)), as CPU numbers:
/// "0-2,5" is [0, 1, 2, 5].
fn cpus_allowed(status_file: &std::path::Path) -> Vec<u32> {
    let status = std::fs::read_to_string(status_file).unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or_else(|| panic!("no Cpus_allowed_list in {status_file:?}"))
        .trim();
    list.split(',')
        .flat_map(|range| {
            let (first, last) = range.split_once('-').unwrap_or((range, range));
            first.parse::<u32>().unwrap()..=last.parse::<u32>().unwrap()
        })
        .collect()
}

/// The CPUs every thread of deployment `id`'s VMM may run on (all threads agree).
fn vmm_cpus(id: &str) -> Vec<u32> {
    let vmms = vmm_processes(&format!("deployments/{id}/"));
    assert_eq!(vmms.len(), 1, "one VMM for {id}: {vmms:?}");
    let pid = vmms[0].0;
    let mut all: Vec<Vec<u32>> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|t| cpus_allowed(&t.path().join("status")))
        .collect();
    all.dedup();
    assert_eq!(all.len(), 1, "the VMM's threads differ: {all:?}");
    all.pop().unwrap()
}

/// A pet: `--persistent` pins the VMM, each of its threads (the vCPUs' too), to the CPUs its
/// view names (systemd's `CPUAffinity=` on its unit), its guest has no memory balloon, its
/// `/data` and its pinning survive `nx stop`/`nx start`, and `nx ls` names its tier. Other
/// deployments are cattle, and a container refuses `--persistent`.
#[test]
fn a_persistent_microvm_is_pinned_to_its_cpus_has_no_balloon_and_keeps_its_data() {
    let host = Host::start_with(&microvm_config("tcg"));
    let pet = host.push_sample("pet", &["--backend", "microvm", "--persistent"]);
    let d = host.deployment("pet", &pet);
    assert_eq!(d["tier"], "persistent", "{d}");
    let pinned: Vec<u32> = serde_json::from_value(d["cpu_affinity"].clone()).unwrap();
    let ours = cpus_allowed(std::path::Path::new("/proc/self/status"));
    // One vCPU (the default 100 % CPUQuota): one of the CPUs the host may use.
    assert_eq!(pinned.len(), 1, "{d}");
    assert!(ours.contains(&pinned[0]), "{pinned:?} not in {ours:?}");
    assert_eq!(vmm_cpus(&pet), pinned);
    // A guest that takes over its VMM is still held by QEMU's seccomp filter (attacker s10 F8).
    assert_vmm_filtered(&format!("deployments/{pet}/"));

    // No balloon: QEMU adds no default device, and the guest sees none of virtio type 5
    // (virtio spec 1.2, 5.5), among the devices it has (its network and its /data disk).
    let vmm = vmms_with(&format!("deployments/{pet}/")).pop().unwrap();
    assert!(
        vmm.contains("-nodefaults") && !vmm.contains("balloon"),
        "{vmm}"
    );
    let preview = host.preview_host("pet", &pet);
    let (status, devices) = host.get(&preview, "/ls?path=/sys/bus/virtio/devices");
    assert_eq!(status, 200, "{devices}");
    let devices: Vec<String> = serde_json::from_str(&devices).unwrap();
    let kinds: Vec<String> = devices
        .iter()
        .map(|dev| {
            host.get(
                &preview,
                &format!("/read?path=/sys/bus/virtio/devices/{dev}/device"),
            )
            .1
            .trim()
            .to_owned()
        })
        .collect();
    assert!(
        kinds.contains(&"0x0001".to_owned()),
        "a network device: {kinds:?}"
    );
    assert!(
        kinds.contains(&"0x0002".to_owned()),
        "a block device: {kinds:?}"
    );
    assert!(
        !kinds.contains(&"0x0005".to_owned()),
        "a balloon: {kinds:?}"
    );

    assert_eq!(host.get(&preview, "/write?name=kept"), (200, "kept".into()));
    host.nx_json(&["stop", &pet]);
    assert!(vmms_with(&format!("deployments/{pet}/")).is_empty());
    host.nx_json(&["start", &pet]);
    assert_eq!(
        host.get(&preview, "/read?path=/data/kept"),
        (200, "kept".into())
    );
    assert_eq!(vmm_cpus(&pet), pinned, "pinned again after its restart");

    // Cattle: a container is not pinned, and refuses --persistent with what to do.
    let cattle = host.push_sample("cattle", &[]);
    let d = host.deployment("cattle", &cattle);
    assert_eq!(
        (
            d["tier"].as_str(),
            d["cpu_affinity"].as_array().map(Vec::len)
        ),
        (Some("ephemeral"), Some(0)),
        "{d}"
    );
    let sample = nx_testkit::sample_app();
    let refused = host.nx(&[
        "push",
        sample.to_str().unwrap(),
        "--sandbox",
        "cattle",
        "--persistent",
    ]);
    assert!(!refused.ok);
    assert!(
        refused
            .stderr
            .contains("--persistent is for microVM deployments")
            && refused.stderr.contains("--backend microvm"),
        "{}",
        refused.stderr
    );

    let ls = host.nx(&["ls"]).stdout;
    let line = |id: &str| {
        ls.lines()
            .find(|l| l.contains(id))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(line(&pet).contains(" persistent "), "{ls}");
    assert!(line(&cattle).contains(" ephemeral "), "{ls}");
    let cpus: Vec<String> = pinned.iter().map(u32::to_string).collect();
    assert!(
        ls.contains(&format!(
            "pinned to CPUs {}, no memory balloon",
            cpus.join(",")
        )),
        "{ls}"
    );
}

/// Names inside a guest with `--egress public`: its resolv.conf names the deployments'
/// gateway, whose port 53 the firewall sends to the host's resolver (here one on the host's
/// loopback, as systemd-resolved's); QEMU's user network carries the query out of the
/// deployment's namespace like any other datagram. With `--egress none` the name does not
/// resolve.
#[test]
fn a_microvm_with_egress_resolves_names_through_the_hosts_resolver() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let host = Host::start_with_nxd(
        nxd_reading(
            dir.path(),
            &format!("nameserver {}\n", LoopbackResolver::ADDR),
        ),
        &microvm_config("tcg"),
    );
    let _up = upstream(&host.netns);
    let _dns = LoopbackResolver::start(&host);
    let open = host.push_sample("vmnames", &["--backend", "microvm", "--egress", "public"]);
    let preview = host.preview_host("vmnames", &open);
    let (_, said) = host.get(&preview, "/read?path=/etc/resolv.conf");
    assert!(said.contains("nameserver 10.213.0.1"), "{said}");
    let named = "internet.test:80";
    let (_, said) = host.get(&preview, &format!("/connect?addr={named}"));
    assert!(said.starts_with("connected"), "{named}: {said}");

    let closed = host.push_sample("vmnames", &["--backend", "microvm", "--egress", "none"]);
    let (_, said) = host.get(
        &host.preview_host("vmnames", &closed),
        &format!("/connect?addr={named}"),
    );
    assert!(said.starts_with("cannot connect"), "{said}");
}

/// Waits until a guest booted ahead waits in the pool of `host` (nxd's
/// `nx_microvm_pool_ready`).
fn wait_for_pooled_guest(host: &Host) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let metrics = host
            .http()
            .get(format!("http://{}/metrics", host.api))
            .bearer_auth(&host.token)
            .send()
            .and_then(|r| r.text())
            .expect("GET /metrics");
        let ready = metrics
            .lines()
            .find_map(|l| l.strip_prefix("nx_microvm_pool_ready "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if ready > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no guest was booted ahead:\n{metrics}\n{}",
            host.nxd_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A task run with `--json`: its events, and the text of its stdout.
fn run_json(host: &Host, extra: &[&str], args: &[&str]) -> (Vec<serde_json::Value>, String) {
    let sample = nx_testkit::sample_app();
    let mut all = vec![
        "run-task",
        sample.to_str().unwrap(),
        "--backend",
        "microvm",
        "--json",
    ];
    all.extend_from_slice(extra);
    all.push("--");
    all.push("task");
    all.extend_from_slice(args);
    let out = host.nx(&all);
    let events: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let stdout = events
        .iter()
        .filter(|e| e["event"] == "stdout")
        .map(|e| e["data"].as_str().unwrap().to_owned())
        .collect();
    (events, stdout)
}

fn started(events: &[serde_json::Value]) -> &serde_json::Value {
    events
        .iter()
        .find(|e| e["event"] == "started")
        .unwrap_or_else(|| panic!("no started event: {events:?}"))
}

fn exited(events: &[serde_json::Value]) -> &serde_json::Value {
    events
        .iter()
        .find(|e| e["event"] == "exited")
        .unwrap_or_else(|| panic!("no exited event: {events:?}"))
}

#[test]
fn a_pooled_microvm_task_takes_a_guest_booted_ahead_once_and_leaves_nothing() {
    // Booted, not restored (see the snapshot test below).
    let host = Host::start_with(&format!(
        "{}pool_size = 1\nsnapshot = false\n",
        microvm_config("tcg")
    ));
    wait_for_pooled_guest(&host);

    // Output and exit code as a cold guest gives them.
    let (events, stdout) = run_json(&host, &[], &["write", "/tmp/secret", "first task's"]);
    let first = started(&events);
    assert_eq!(first["warm"], true, "{events:?}");
    let task = first["task"].as_str().unwrap().to_owned();
    assert_eq!(stdout, "wrote /tmp/secret\n", "{events:?}");
    assert_eq!(exited(&events)["exit_code"], 0, "{events:?}");
    let (events, stdout) = run_json(&host, &["--timeout", "60s"], &["exit", "3"]);
    assert_eq!(stdout, "exiting with 3\n", "{events:?}");
    assert_eq!(exited(&events)["exit_code"], 3, "{events:?}");
    // Its key came with its task: a line like init's exit line is the program's output.
    wait_for_pooled_guest(&host);
    let (events, stdout) = run_json(&host, &[], &["print", "NX-EXIT", "7"]);
    assert_eq!(started(&events)["warm"], true, "{events:?}");
    assert!(stdout.contains("NX-EXIT 7\n"), "{events:?}");
    assert_eq!(exited(&events)["exit_code"], 0, "{events:?}");

    // The first task's guest is gone: no VMM, no drive, no directory.
    assert!(vmms_with(&task).is_empty(), "{:?}", vmms_with(&task));
    assert!(!host.path(&format!("microvm/tasks/{task}")).exists());

    // A fresh guest each time: the next pooled task sees nothing of the first's.
    wait_for_pooled_guest(&host);
    let (events, stdout) = run_json(&host, &[], &["ls", "/tmp"]);
    assert_eq!(started(&events)["warm"], true, "{events:?}");
    assert_ne!(started(&events)["task"], task.as_str());
    assert_eq!(stdout, "", "the previous task's /tmp: {events:?}");
    // Its /tmp and /dev/shm are tasks.limits.tmp_mb (64 MiB) lowered to what its guest holds
    // (tasks.limits.memory_max_mb 256: a 192 MiB guest, (192 - 80) / 2 = 56 MiB each, review15
    // #5), mounted before the task came.
    wait_for_pooled_guest(&host);
    let (events, mounts) = run_json(&host, &[], &["cat", "/proc/mounts"]);
    assert_eq!(started(&events)["warm"], true, "{events:?}");
    for dir in ["/tmp", "/dev/shm"] {
        let options = mounts
            .lines()
            .find_map(|l| l.strip_prefix(&format!("tmpfs {dir} tmpfs ")))
            .unwrap_or_else(|| panic!("no tmpfs on {dir}: {mounts}"));
        assert!(options.contains(",size=57344k"), "{dir}: {mounts}");
    }
    let (events, _) = run_json(&host, &[], &["cat", "/tmp/secret"]);
    assert_eq!(exited(&events)["exit_code"], 2, "{events:?}");
    // The task's program and secrets are init's, not the program's.
    let (events, _) = run_json(&host, &[], &["cat", "/nx/env"]);
    assert_eq!(exited(&events)["exit_code"], 2, "{events:?}");

    // More memory than the pool's guests have (tasks.limits: 256 MiB): a guest of its own size.
    let mem_total_kib = |events: &[serde_json::Value], stdout: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{events:?}"))
    };
    wait_for_pooled_guest(&host);
    let (events, stdout) = run_json(&host, &[], &["cat", "/proc/meminfo"]);
    assert_eq!(started(&events)["warm"], true, "{events:?}");
    let pooled = mem_total_kib(&events, &stdout);
    let (events, stdout) = run_json(&host, &["--memory", "640M"], &["cat", "/proc/meminfo"]);
    let big = mem_total_kib(&events, &stdout);
    assert!(pooled < 256 * 1024, "{pooled} KiB");
    assert!(
        big > 512 * 1024,
        "{big} KiB: the guest is not the size asked"
    );

    // After the tasks, only the one guest waiting in the pool is left.
    wait_for_pooled_guest(&host);
    let left: Vec<String> = std::fs::read_dir(host.path("microvm/tasks"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    let own = host.path("microvm/tasks").display().to_string();
    assert_eq!(vmms_with(&own).len(), 1, "{:?}", vmms_with(&own));
    assert_vmm_filtered(&own);
    drop(host);
    // nxd gone: no VMM of its state dir stays behind.
}

/// The Unix time a task's guest printed (`task now`).
fn guest_clock(events: &[serde_json::Value], stdout: &str) -> u64 {
    stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{events:?}"))
}

#[test]
fn a_pool_guest_restored_from_a_snapshot_runs_a_task_and_leaves_nothing() {
    let host = Host::start_with(&format!(
        "{}pool_size = 1\nsnapshot = true\n",
        microvm_config("tcg")
    ));
    wait_for_pooled_guest(&host);
    // The waiting guest was restored from the snapshot of a booted one, not booted.
    let own = host.path("microvm/tasks").display().to_string();
    let vmms = vmms_with(&own);
    assert_eq!(vmms.len(), 1, "{vmms:?}");
    assert!(vmms[0].contains(" -incoming exec:cat "), "{vmms:?}");
    let snapshots: Vec<_> = std::fs::read_dir(host.path("microvm/snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(snapshots, ["guest-256.snap"]);

    // Time passes: a guest restored from now on starts with the snapshot's clock.
    std::thread::sleep(Duration::from_secs(12));
    let (events, stdout) = run_json(&host, &[], &["write", "/tmp/restored", "yes"]);
    let first = started(&events);
    assert_eq!(first["warm"], true, "{events:?}");
    let task = first["task"].as_str().unwrap().to_owned();
    assert_eq!(stdout, "wrote /tmp/restored\n", "{events:?}");
    assert_eq!(exited(&events)["exit_code"], 0, "{events:?}");
    let (events, _) = run_json(&host, &[], &["exit", "5"]);
    assert_eq!(exited(&events)["exit_code"], 5, "{events:?}");

    // The host's clock, not the template's, and a random state of its own in each clone.
    wait_for_pooled_guest(&host);
    let (events, stdout) = run_json(&host, &[], &["now"]);
    let guest = guest_clock(&events, &stdout);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        guest.abs_diff(now) <= 3,
        "the guest's clock says {guest}, the host's {now}"
    );
    let mut uuids = Vec::new();
    for _ in 0..2 {
        wait_for_pooled_guest(&host);
        let (events, stdout) = run_json(&host, &[], &["cat", "/proc/sys/kernel/random/uuid"]);
        assert_eq!(exited(&events)["exit_code"], 0, "{events:?}");
        uuids.push(stdout);
    }
    assert_ne!(
        uuids[0], uuids[1],
        "two restored guests drew the same random numbers"
    );

    // The used guests are gone: no VMM, no drive, no directory; one guest waits.
    assert!(vmms_with(&task).is_empty(), "{:?}", vmms_with(&task));
    assert!(!host.path(&format!("microvm/tasks/{task}")).exists());
    wait_for_pooled_guest(&host);
    let left = nx_testkit::files_under(&host.path("microvm/tasks"));
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(vmms_with(&own).len(), 1, "{:?}", vmms_with(&own));
    drop(host);
    // nxd gone: no VMM of its state dir stays behind.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !vmms_with(&own).is_empty() {
        assert!(Instant::now() < deadline, "{:?}", vmms_with(&own));
        std::thread::sleep(Duration::from_millis(100));
    }
}
