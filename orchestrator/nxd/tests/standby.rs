//! Standbys (issue 20's fast path, `nx_orchestrator::standby`): a sandbox that pushed keeps a
//! deployment started ahead of its next push, which a push of a single static binary with the
//! sandbox's defaults takes. What a user sees must not change: the program runs with its own
//! arguments and environment, restarts as any deployment does, readiness still refuses a
//! program that never listens and reports one that exits, and neither `nx ls` nor `nx status`
//! shows a standby; nxd's start and `nx sandbox rm` remove them.

use nx_testkit::Host;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A host whose `[microvm] init` is the static nx-vm-init: the standby's waiter.
fn host() -> Host {
    Host::start_with(&format!(
        "[microvm]\ninit = {:?}\n",
        nx_testkit::static_binary("nx-vm-init")
    ))
}

/// The deployments' directories marked as a standby's.
fn standbys(host: &Host) -> Vec<PathBuf> {
    std::fs::read_dir(host.path("deployments"))
        .expect("deployments dir")
        .flatten()
        .map(|d| d.path())
        .filter(|d| d.join("standby").exists())
        .collect()
}

/// Waits until `n` standbys are marked and their units run, and then for nxd's last step of
/// making one (a query; 200 ms).
fn wait_for_standbys(host: &Host, n: usize) -> Vec<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let runs = |dir: &PathBuf| {
        let id = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        unit_runs(&format!("nx-{id}.service"))
    };
    loop {
        let found = standbys(host);
        if found.len() == n && found.iter().all(runs) {
            std::thread::sleep(Duration::from_millis(200));
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{} standbys, not {n}: {found:?}\n{}",
            found.len(),
            host.nxd_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a process of `unit` runs (its cgroup, in /proc/<pid>/cgroup, names it).
fn unit_runs(unit: &str) -> bool {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|p| std::fs::read_to_string(p.path().join("cgroup")).ok())
        .any(|cgroups| cgroups.contains(&format!("/{unit}")))
}

/// `POST /v1/deployments` of the stored sample: (status, body, the steps of its
/// `Server-Timing`).
fn api_push(host: &Host, body: serde_json::Value) -> (u16, serde_json::Value, Vec<String>) {
    let response = host
        .http()
        .post(format!("http://{}/v1/deployments", host.api))
        .bearer_auth(&host.token)
        .json(&body)
        .send()
        .unwrap_or_else(|e| panic!("push: {e}\n{}", host.nxd_log()));
    let steps = response
        .headers()
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| s.trim().split(';').next().map(str::to_owned))
        .collect();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or_default(), steps)
}

#[test]
fn a_push_takes_its_sandboxs_standby_and_its_program_runs_as_a_cold_starts_would() {
    let host = host();
    let first = host.push_sample("warm", &[]);
    let sha = host.deployment("warm", &first)["artifact"]
        .as_str()
        .expect("artifact")
        .to_owned();
    let waiting = wait_for_standbys(&host, 1);
    // Neither listed nor counted.
    let status = host.nx_json(&["status", "warm"]);
    assert_eq!(
        status[0]["deployments"].as_array().unwrap().len(),
        1,
        "{status}"
    );

    let (code, view, steps) = api_push(
        &host,
        serde_json::json!({"sandbox": "warm", "artifact": sha,
            "env": {"GREETING": "hello there"}, "args": ["--flag", "two words"]}),
    );
    assert_eq!(code, 200, "{view}");
    let id = view["id"].as_str().expect("id").to_owned();
    assert!(
        steps.iter().any(|s| s == "claim"),
        "not from the standby: {steps:?}"
    );
    assert!(!steps.iter().any(|s| s == "start"), "{steps:?}");
    let log = host.nxd_log();
    assert!(!log.contains("took no program"), "{log}");
    assert_eq!(
        waiting[0].file_name().unwrap().to_str(),
        Some(id.as_str()),
        "the push took the standby's id"
    );
    let preview = host.preview_host("warm", &id);
    let (code, env) = host.get(&preview, "/env");
    assert_eq!(code, 200, "{env}");
    let env: serde_json::Value = serde_json::from_str(&env).expect("env json");
    assert_eq!(env["GREETING"], "hello there", "{env}");
    assert_eq!(env["NX_DEPLOYMENT"], id.as_str(), "{env}");
    assert!(env["PGPASSWORD"].is_string(), "its database's: {env}");
    // Its working directory's name, as bubblewrap gives a cold start's program (newcomer19 L1:
    // the waiter passed nxd's environment alone).
    assert_eq!(env["PWD"], "/data", "{env}");
    let (_, cmdline) = host.get(&preview, "/read?path=/proc/self/cmdline");
    assert_eq!(cmdline, "/app/main\0--flag\0two words\0");
    // Its /etc is its sandbox's tree, whole (review18 #1: laid out again under the running
    // sandbox, it was an empty directory).
    let (code, resolv) = host.get(&preview, "/read?path=/etc/resolv.conf");
    assert!(
        code == 200 && resolv.contains("nameserver"),
        "{code} {resolv}"
    );
    let (code, passwd) = host.get(&preview, "/read?path=/etc/passwd");
    assert!(code == 200 && passwd.contains(":/data:"), "{code} {passwd}");
    let (code, certs) = host.get(&preview, "/ls?path=/etc/ssl/certs");
    assert!(code == 200 && certs.contains(".pem"), "{code} {certs}");
    // Its database is its sandbox's, as a cold push's is.
    assert_eq!(host.get(&preview, "/db/put?v=7").0, 200);
    assert!(host.get(&preview, "/db/list").1.contains('7'));
    // A crash restarts it as any deployment: with its program, not the standby's waiter.
    host.get(&preview, "/exit?code=3");
    let deadline = Instant::now() + Duration::from_secs(30);
    while host.get(&preview, "/").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not restarted:\n{}",
            host.nxd_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, cmdline) = host.get(&preview, "/read?path=/proc/self/cmdline");
    assert_eq!(cmdline, "/app/main\0--flag\0two words\0");

    // The next standby is made; a push with other limits does not fit it and starts cold.
    wait_for_standbys(&host, 1);
    let (code, view, steps) = api_push(
        &host,
        serde_json::json!({"sandbox": "warm", "artifact": sha,
            "limits": {"memory_max_mb": 200}}),
    );
    assert_eq!(code, 200, "{view}");
    assert!(steps.iter().any(|s| s == "start"), "{steps:?}");
    let cold = host.preview_host("warm", view["id"].as_str().expect("id"));
    let (_, cold_env) = host.get(&cold, "/env");
    let cold_env: serde_json::Value = serde_json::from_str(&cold_env).expect("env json");
    assert_eq!(cold_env["PWD"], "/data", "{cold_env}");
    let listed = host.nx_json(&["ls"]);
    let all: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["deployments"].as_array().unwrap())
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(all.len(), 3, "no standby listed: {listed}");
}

#[test]
fn readiness_through_a_standby_still_refuses_a_program_that_never_listens_and_reports_one_that_exits(
) {
    let host = host();
    let first = host.push_sample("strict", &[]);
    let sha = host.deployment("strict", &first)["artifact"]
        .as_str()
        .expect("artifact")
        .to_owned();
    // Each failed push names the standby's id: it took it.
    for (env, why) in [
        (
            serde_json::json!({"LISTEN_PORT": "9"}),
            "did not accept connections",
        ),
        (
            serde_json::json!({"FAIL_AT_START_IF": "/app/main"}),
            "exited before it was ready",
        ),
    ] {
        let standby = wait_for_standbys(&host, 1).remove(0);
        let id = standby.file_name().unwrap().to_str().unwrap().to_owned();
        let (code, view, _) = api_push(
            &host,
            serde_json::json!({"sandbox": "strict", "artifact": sha, "env": env,
                "ready_timeout_secs": 2}),
        );
        assert_eq!(code, 422, "{view}");
        let error = view.to_string();
        assert!(error.contains(why) && error.contains(&id), "{id}: {error}");
    }
}

#[test]
fn nxds_start_and_sandbox_rm_remove_standbys_and_leave_no_unit() {
    let mut host = host();
    host.push_sample("gone", &[]);
    let before = wait_for_standbys(&host, 1);
    let id = before[0].file_name().unwrap().to_str().unwrap().to_owned();
    let unit = format!("nx-{id}.service");
    assert!(unit_runs(&unit), "the standby's unit runs");
    host.kill_nxd();
    host.start_nxd();
    // The last run's standby is gone; a push makes the next.
    assert!(!before[0].exists(), "{:?} left after a restart", before[0]);
    assert!(!unit_runs(&unit), "{unit} left after a restart");
    host.push_sample("gone", &[]);
    let next = wait_for_standbys(&host, 1);
    host.nx_json(&["sandbox", "rm", "gone", "--no-backup"]);
    assert!(
        standbys(&host).is_empty(),
        "{next:?} left after nx sandbox rm"
    );
}

#[test]
fn a_push_that_finds_only_standbys_slots_free_takes_one_of_them() {
    // Two slots: the first push takes one, its sandbox's standby the other.
    let host = Host::start_with_ports(
        nx_testkit::bin("nxd"),
        (20990, 20991),
        99,
        &format!(
            "[microvm]\ninit = {:?}\n",
            nx_testkit::static_binary("nx-vm-init")
        ),
    );
    host.push_sample("first", &[]);
    wait_for_standbys(&host, 1);
    let other = host.push_sample("second", &[]);
    let (code, body) = host.get(&host.preview_host("second", &other), "/");
    assert_eq!(code, 200, "{body}");
}

/// The artifact (sha256) of `sandbox`'s deployment `id`.
fn artifact(host: &Host, sandbox: &str, id: &str) -> String {
    host.deployment(sandbox, id)["artifact"]
        .as_str()
        .expect("artifact")
        .to_owned()
}

/// Review18 #7: a standby was made after every push, with the sandbox's default limits, so a
/// sandbox whose pushes take none (a port of its own here; an image, a bundle, a TCP port or
/// a service alike) kept a unit and a slot for nothing, and one whose pushes give their own
/// limits never took one. A standby now follows the last push that could take one, with its
/// limits (held to the host's bounds as the push's were).
#[test]
fn standbys_follow_pushes_that_can_take_them() {
    let host = host();
    let first = host.push_sample("own", &[]);
    let sha = artifact(&host, "own", &first);
    wait_for_standbys(&host, 1);
    let (code, view, _) = api_push(
        &host,
        serde_json::json!({"sandbox": "own", "artifact": sha, "port": 8081}),
    );
    assert_eq!(code, 200, "{view}");
    // The standby made before stays; none is made for this push.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(standbys(&host).len(), 1, "{}", host.nxd_log());
    let fresh = host.push_sample("fresh", &["--port", "8081"]);
    assert!(!fresh.is_empty());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(standbys(&host).len(), 1, "a standby no push takes");

    // Pushes with their own limits take the standby the push before them left.
    let limited =
        serde_json::json!({"sandbox": "own", "artifact": sha, "limits": {"memory_max_mb": 200}});
    let default = wait_for_standbys(&host, 1);
    let (code, view, steps) = api_push(&host, limited.clone());
    assert_eq!(code, 200, "{view}");
    assert!(steps.iter().any(|s| s == "start"), "{steps:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while standbys(&host).len() != 1 || standbys(&host) == default {
        assert!(
            Instant::now() < deadline,
            "no new standby\n{}",
            host.nxd_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_for_standbys(&host, 1);
    let (code, view, steps) = api_push(&host, limited);
    assert_eq!(code, 200, "{view}");
    assert!(
        steps.iter().any(|s| s == "claim"),
        "not from the standby: {steps:?}\n{}",
        host.nxd_log()
    );
}

/// Review18 #7: a push that took the standby and was refused at its record (here: the
/// sandbox holds `sandbox.max_deployments`) removed the standby, and none was made again. It
/// is put back for the next push.
#[test]
fn a_push_refused_at_its_record_leaves_the_standby_it_took() {
    let mut host = host();
    host.restart_nxd_with_sandbox_keys("max_deployments = 1");
    let first = host.push_sample("full", &[]);
    let sha = artifact(&host, "full", &first);
    let before = wait_for_standbys(&host, 1);
    let (code, view, _) = api_push(
        &host,
        serde_json::json!({"sandbox": "full", "artifact": sha}),
    );
    assert_eq!(code, 409, "{view}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(standbys(&host), before, "{}", host.nxd_log());
    let id = before[0].file_name().unwrap().to_str().unwrap().to_owned();
    assert!(unit_runs(&format!("nx-{id}.service")), "its unit runs");
}

/// The processes of `unit` (their cgroup names it).
fn unit_pids(unit: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|p| p.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|cgroups| cgroups.contains(&format!("/{unit}")))
        })
        .collect()
}

/// Newcomer19 N2: a standby whose waiter ended once (killed; an OOM kill picks waiters first)
/// and which systemd started again failed the push that took it, "exited before it was ready
/// (exit status 0)": readiness took the unit's restart, its waiter's, for the program's. Now
/// only the program's own restarts count.
#[test]
fn a_standby_restarted_once_takes_a_push_whose_program_listens_late() {
    let host = host();
    host.push_sample("again", &[]);
    let standby = wait_for_standbys(&host, 1).remove(0);
    let id = standby.file_name().unwrap().to_str().unwrap().to_owned();
    let unit = format!("nx-{id}.service");
    let before = unit_pids(&unit);
    for pid in &before {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // systemd starts it again (`sandbox.restart_delay_secs`): new processes, still a standby.
    let deadline = Instant::now() + Duration::from_secs(30);
    while unit_pids(&unit).iter().all(|pid| before.contains(pid)) || unit_pids(&unit).is_empty() {
        assert!(Instant::now() < deadline, "{unit} was not started again");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for_standbys(&host, 1);
    let pushed = host.nx(&[
        "push",
        nx_testkit::sample_app().to_str().unwrap(),
        "--sandbox",
        "again",
        "-e",
        "LISTEN_AFTER=1",
    ]);
    assert!(pushed.ok, "{}\n{}", pushed.stderr, host.nxd_log());
    assert!(
        pushed.stdout.contains(&id),
        "the push took the restarted standby {id}: {}",
        pushed.stdout
    );
}

/// Review18 #8: the claim wrote the program's arguments and environment to the standby's
/// FIFO on one of the runtime's threads, blocking, with no time bound: a standby that does not
/// read (stopped here; its message, past the pipe's 64 KiB, cannot all be written without a
/// reader) held the push forever. The push now gives up on it and starts cold.
#[test]
fn a_push_whose_standby_does_not_read_starts_cold() {
    let host = host();
    let first = host.push_sample("stuck", &[]);
    let sha = artifact(&host, "stuck", &first);
    let standby = wait_for_standbys(&host, 1).remove(0);
    let id = standby.file_name().unwrap().to_str().unwrap().to_owned();
    let pids = unit_pids(&format!("nx-{id}.service"));
    assert!(!pids.is_empty(), "the standby's processes");
    for pid in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGSTOP,
        );
    }
    let started = Instant::now();
    let (code, view, steps) = api_push(
        &host,
        serde_json::json!({"sandbox": "stuck", "artifact": sha,
            "env": {"BIG": "x".repeat(100_000)}}),
    );
    assert_eq!(code, 200, "{view}\n{}", host.nxd_log());
    assert!(steps.iter().any(|s| s == "claim"), "{steps:?}");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
    let (code, env) = host.get(&host.preview_host("stuck", &id), "/env");
    assert!(code == 200 && env.contains(&"x".repeat(100_000)), "{code}");
}

/// Review18 #4: a standby being made while `nx sandbox rm` ran opened the sandbox's database
/// gate again after the removal had closed it (fail point `standby::making` holds the making
/// 4 s before its gate), so a gate for a dropped role stayed published, a socket under
/// `db-gates`. The removal now waits for the making and removes what it made.
#[test]
fn nx_sandbox_rm_while_its_standby_is_made_leaves_no_gate() {
    let mut host = host();
    host.restart_nxd_with_failpoints("standby::making=return(4000)");
    host.push_sample("brief", &[]);
    host.nx_json(&["sandbox", "rm", "brief", "--no-backup"]);
    std::thread::sleep(Duration::from_secs(6));
    assert!(standbys(&host).is_empty(), "{}", host.nxd_log());
    let gates: Vec<PathBuf> = std::fs::read_dir(host.path("db-gates"))
        .expect("db-gates")
        .flatten()
        .map(|d| d.path())
        .filter(|p| p.is_dir())
        .collect();
    assert!(gates.is_empty(), "{gates:?}\n{}", host.nxd_log());
}

/// Review18 #9: a push that found no free slot removed the standbys that wait, but not one
/// being made (fail point `standby::making` holds it 4 s), whose slot stayed taken: the push
/// failed for want of a port while a standby no push could take held the last one. The push
/// now waits for that standby's removal and takes its slot.
#[test]
fn a_push_that_finds_only_the_slot_of_a_standby_being_made_free_takes_it() {
    let mut host = Host::start_with_ports(
        nx_testkit::bin("nxd"),
        (20992, 20993),
        98,
        &format!(
            "[microvm]\ninit = {:?}\n",
            nx_testkit::static_binary("nx-vm-init")
        ),
    );
    host.restart_nxd_with_failpoints("standby::making=return(4000)");
    host.push_sample("first", &[]);
    let other = host.push_sample("second", &[]);
    let (code, body) = host.get(&host.preview_host("second", &other), "/");
    assert_eq!(code, 200, "{body}");
}

/// Review19 #2: a push that found no free slot waited up to 10 s (`MADE_WITHIN`) for every
/// standby being made, also for one that held no slot yet (fail point `standby::queued` holds
/// each making 8 s before its sandbox's lock, as a backup holding that lock would), which then
/// took the slot the push had freed, started a unit, and was removed. The push now waits only
/// for makings that hold a slot, and a making removed meanwhile takes none.
#[test]
fn a_push_waits_for_no_standby_being_made_that_holds_no_slot() {
    let mut host = Host::start_with_ports(
        nx_testkit::bin("nxd"),
        (20984, 20986),
        97,
        &format!(
            "[microvm]\ninit = {:?}\n",
            nx_testkit::static_binary("nx-vm-init")
        ),
    );
    host.restart_nxd_with_failpoints("standby::queued=return(8000)");
    // Three slots: a's deployment and standby, b's deployment, whose standby is being made.
    host.push_sample("a", &[]);
    wait_for_standbys(&host, 1);
    host.push_sample("b", &[]);
    let began = Instant::now();
    let c = host.push_sample("c", &[]);
    let took = began.elapsed();
    let (code, body) = host.get(&host.preview_host("c", &c), "/");
    assert_eq!(code, 200, "{body}");
    assert!(
        took < Duration::from_secs(4),
        "the push waited {took:?} for b's standby, which held no slot\n{}",
        host.nxd_log()
    );
    // b's making, removed while it waited, leaves nothing.
    std::thread::sleep(Duration::from_secs(9));
    assert!(standbys(&host).is_empty(), "{:?}", standbys(&host));
}

/// Newcomer19 N1: a push that found no free slot removed the standbys, and the refill of
/// another push that had just taken its sandbox's standby took the slot it had freed (fail
/// point `standby::freed` holds the push 5 s between the removal and its record, and
/// `push::recorded` holds the other push 2 s, so that its refill falls in between): the push
/// was refused "the host has no deployment slot left" while a standby held a slot. No standby
/// takes a slot now while a push waits for one.
#[test]
fn a_push_is_not_refused_while_a_standby_holds_a_slot() {
    let mut host = Host::start_with_ports(
        nx_testkit::bin("nxd"),
        (20987, 20990),
        96,
        &format!(
            "[microvm]\ninit = {:?}\n",
            nx_testkit::static_binary("nx-vm-init")
        ),
    );
    host.restart_nxd_with_failpoints("push::recorded=return(2000);standby::freed=return(5000)");
    // Four slots: a's and b's deployments and standbys.
    host.push_sample("a", &[]);
    host.push_sample("b", &[]);
    wait_for_standbys(&host, 2);
    // a's next push takes a's standby; a's refill begins 2 s later.
    let a = host.spawn_push_sample("a", &[]);
    std::thread::sleep(Duration::from_millis(500));
    let c = host.nx(&[
        "push",
        nx_testkit::sample_app().to_str().unwrap(),
        "-s",
        "c",
    ]);
    assert!(c.ok, "{}{}\n{}", c.stdout, c.stderr, host.nxd_log());
    let a = a.wait_with_output().expect("a's push");
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
}

/// What a push starts with is its sandbox's row as it is then, not as an earlier push (or the
/// standby made after it) found it: a push after `nx sandbox set` starts with the new
/// settings, and one after `nx sandbox rm` makes the sandbox again, as a first push does.
#[test]
fn a_push_after_its_sandboxs_settings_changed_or_it_was_removed_sees_that() {
    let host = host();
    let env = |id: &str| {
        let (status, body) = host.get(&host.preview_host("kept", id), "/env");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).expect("the sample's /env")["GREETING"]
            .clone()
    };
    let first = host.push_sample("kept", &[]);
    assert_eq!(env(&first), serde_json::Value::Null);
    for greeting in ["hello", "again"] {
        let set = host.nx_json(&[
            "sandbox",
            "set",
            "kept",
            "-e",
            &format!("GREETING={greeting}"),
        ]);
        assert_eq!(set["env"]["GREETING"], greeting, "{set}");
        let next = host.push_sample("kept", &[]);
        assert_eq!(env(&next), greeting);
    }
    assert!(host.nx(&["sandbox", "rm", "kept", "--no-backup"]).ok);
    let made_again = host.push_sample("kept", &[]);
    assert_eq!(env(&made_again), serde_json::Value::Null);
    let listed = host.nx_json(&["status", "kept"])[0]["deployments"].clone();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
}
