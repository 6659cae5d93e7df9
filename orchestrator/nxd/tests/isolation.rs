//! What a deployment can see and do: nothing of the host's files or processes, no nested user
//! namespaces, no io_uring or exotic sockets, a log only root reads, and its limits hold
//! (TasksMax, MemoryMax with a restart).

use nx_testkit::Host;
use std::time::{Duration, Instant};

#[test]
fn a_deployment_sees_nothing_of_the_host_or_its_neighbours() {
    let host = Host::start();
    let a = host.push_sample("alpha", &[]);
    let b = host.push_sample("beta", &[]);
    let get = |path: &str| host.get(&host.preview_host("alpha", &a), path);

    // B writes a file into its own data dir.
    let (status, _) = host.get(&host.preview_host("beta", &b), "/write?name=secret");
    assert_eq!(status, 200);
    let b_data = host.path(&format!("deployments/{b}/data"));

    let token = host.path("token");
    for path in [
        "/etc/shadow",
        "/root",
        "/work",
        "/home",
        token.to_str().unwrap(),
        b_data.join("secret").to_str().unwrap(),
    ] {
        let (status, body) = get(&format!("/read?path={path}"));
        assert_eq!(status, 404, "{path} was readable: {body}");
        assert!(body.contains("No such file"), "{path}: {body}");
    }
    let (_, root) = get("/ls?path=/");
    assert_eq!(
        root,
        r#"["app","data","dev","etc","proc","run","tmp","usr"]"#
    );
    let (_, usr) = get("/ls?path=/usr/share");
    assert_eq!(usr, r#"["ca-certificates","zoneinfo"]"#);
    // Its /etc: its own passwd, group, resolv.conf and hosts (a link into nx-sandbox), and of
    // the host's files only those a program reads at start, where the host has them.
    let (_, etc) = get("/ls?path=/etc");
    let etc: Vec<String> = serde_json::from_str(&etc).unwrap();
    let mut expected: Vec<String> = ["passwd", "group", "resolv.conf", "hosts", "nx-sandbox"]
        .map(String::from)
        .into();
    for file in nx_orchestrator::backend::host_files::HOST_FILES {
        if let Some(name) = file.strip_prefix("/etc/").and_then(|f| f.split('/').next()) {
            if std::path::Path::new(file).exists() && !expected.iter().any(|e| e == name) {
                expected.push(name.to_owned());
            }
        }
    }
    expected.sort();
    assert_eq!(etc, expected);
    // Copies of the host's files: one link each, whatever other deployments the host has
    // (attacker s15 E1: hard links counted every deployment's tree).
    for name in etc
        .iter()
        .filter(|n| !["hosts", "nx-sandbox", "ssl"].contains(&n.as_str()))
    {
        assert_eq!(
            get(&format!("/links?path=/etc/{name}")),
            (200, "1".into()),
            "{name}"
        );
    }
    let (status, hosts) = get("/read?path=/etc/hosts");
    assert_eq!(status, 200, "{hosts}");
    // ... and read-only (bubblewrap's root tmpfs, where /etc was made, is the program's).
    let (status, said) = get("/write?name=../etc/mine");
    assert_eq!(status, 500, "{said}");
    assert!(said.contains("Read-only file system"), "{said}");
    // Its own passwd: root, itself and nobody; none of the host's users.
    let (_, passwd) = get("/read?path=/etc/passwd");
    let users: Vec<&str> = passwd
        .lines()
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert_eq!(users, ["root", "app", "nobody"], "{passwd}");

    // Its own pid namespace: bwrap's init and the app, nothing of the host.
    let (_, ps) = get("/ps");
    let pids: Vec<u32> = serde_json::from_str(&ps).unwrap();
    assert!(pids.len() <= 3, "sees other processes: {pids:?}");

    let (_, who) = get("/whoami");
    let who: serde_json::Value = serde_json::from_str(&who).unwrap();
    assert_ne!(who["uid"], 0, "runs as root");

    // The seccomp filter: no nested user namespace, no io_uring, no hypervisor (AF_VSOCK) or
    // raw (AF_PACKET) sockets; TCP and unix sockets as usual.
    nx_testkit::seccomp::assert_filtered(get);

    // Its log is root's alone (the CLI reads it through nxd).
    use std::os::unix::fs::PermissionsExt;
    let log = host.path(&format!("deployments/{a}/output.log"));
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} is {mode:o}", log.display());
    assert!(host.nx(&["logs", &a]).ok);

    // Its own data dir is writable and survives a restart.
    assert_eq!(get("/write?name=mine").0, 200);
    host.nx_json(&["stop", &a]);
    host.nx_json(&["start", &a]);
    assert_eq!(get("/read?path=/data/mine"), (200, "mine".to_string()));
}

/// Review14 #8: a dynamically linked program's `/etc` holds the host's loader cache (bound
/// file by file before the tree), and a deployment that systemd restarts after a crash starts
/// again with the same tree (it is laid out when nxd starts it, not at each unit start).
#[test]
fn a_dynamic_programs_etc_has_the_loader_cache_and_a_restart_after_a_crash_keeps_it() {
    let host = Host::start();
    let dynamic = nx_testkit::bin("nx-sample-app");
    let id = host.nx_json(&["push", dynamic.to_str().unwrap(), "-s", "dyn"])["deployment"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let preview = host.preview_host("dyn", &id);
    let (status, etc) = host.get(&preview, "/ls?path=/etc");
    assert_eq!(status, 200, "{etc}");
    if std::path::Path::new("/etc/ld.so.cache").exists() {
        assert!(etc.contains("\"ld.so.cache\""), "{etc}");
    }
    host.get(&preview, "/exit?code=3");
    let deadline = Instant::now() + Duration::from_secs(30);
    while host.deployment("dyn", &id)["state"]["restarts"] != 1
        || host.get(&preview, "/health").0 != 200
    {
        assert!(Instant::now() < deadline, "not restarted after exit 3");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(host.get(&preview, "/ls?path=/etc"), (200, etc));
    let (status, passwd) = host.get(&preview, "/read?path=/etc/passwd");
    assert_eq!(status, 200, "{passwd}");
    assert!(passwd.contains("app:x:"), "{passwd}");
}

#[test]
fn limits_hold_a_fork_loop_and_a_memory_hog() {
    let host = Host::start();
    let id = host.push_sample("limits", &["--tasks", "40", "--memory", "64"]);
    let preview = host.preview_host("limits", &id);

    let (status, body) = host.get(&preview, "/fork");
    assert_eq!(status, 200, "{body}");
    let fork: serde_json::Value = serde_json::from_str(&body).unwrap();
    let forked = fork["forked"].as_u64().unwrap();
    assert!(forked < 40, "forked {forked} processes past TasksMax=40");
    assert!(fork["error"].as_str().unwrap().contains("EAGAIN"), "{fork}");
    assert_eq!(
        host.get(&preview, "/health").0,
        200,
        "still serves after the fork loop"
    );

    // The kernel enforces the limit systemd set.
    let memory_cgroup = host
        .manager_cgroups()
        .into_iter()
        .find(|d| d.starts_with("/sys/fs/cgroup/memory"))
        .expect("memory hierarchy");
    let relative = memory_cgroup
        .strip_prefix("/sys/fs/cgroup/memory")
        .unwrap()
        .join(format!("nx.slice/nx-limits.slice/nx-{id}.service"));
    let cgroup =
        cgroups_rs::Cgroup::load(cgroups_rs::hierarchies::auto(), relative.to_str().unwrap());
    let mem: &cgroups_rs::memory::MemController =
        cgroup.controller_of().expect("memory controller");
    assert_eq!(mem.memory_stat().limit_in_bytes, 64 << 20);

    let restarts_before = host.deployment("limits", &id)["state"]["restarts"]
        .as_u64()
        .unwrap();
    let (status, _) = host.get(&preview, "/hog");
    assert_ne!(status, 200, "the hog survived a 64 MiB MemoryMax");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d = host.deployment("limits", &id);
        if d["state"]["restarts"].as_u64().unwrap() > restarts_before
            && host.get(&preview, "/health").0 == 200
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not restarted after the OOM kill: {d}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
