//! Tasks on real bubblewrap under a real systemd manager: output streams back, whole, until the
//! last process of the sandbox ends; the exit code is nx's, a signal or the OOM killer is
//! named, the timeout kills, limits hold, the network is the task's own, and hundreds of tasks
//! leave no unit, cgroup, mount or file behind.

use nx_testkit::{files_under, sample_app, Host};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn run(host: &Host, extra: &[&str], args: &[&str]) -> nx_testkit::Nx {
    let sample = sample_app();
    let mut all = vec!["run-task", sample.to_str().unwrap()];
    all.extend_from_slice(extra);
    all.push("--");
    all.push("task");
    all.extend_from_slice(args);
    host.nx(&all)
}

/// The `exited` event of a `nx --json run-task`.
fn exited(out: &nx_testkit::Nx) -> serde_json::Value {
    out.stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["event"] == "exited")
        .unwrap_or_else(|| panic!("no exited event: {}{}", out.stdout, out.stderr))
}

#[test]
fn a_task_streams_its_output_and_its_exit_code_is_nx_s() {
    let host = Host::start();
    let out = run(&host, &[], &["print", "hello", "tasks"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "hello tasks\n");
    assert_eq!(out.stderr, "done\n");

    let out = run(&host, &[], &["exit", "3"]);
    assert_eq!(out.code, Some(3), "{}", out.stderr);
    assert_eq!(out.stdout, "exiting with 3\n");

    // It sees a fresh sandbox: no host files, no network beyond its own loopback.
    let out = run(&host, &[], &["ls", "/"]);
    let mut root: Vec<&str> = out.stdout.lines().collect();
    root.sort();
    assert_eq!(root, ["app", "dev", "etc", "proc", "tmp", "usr"]);
    let out = run(&host, &[], &["connect", &host.api.to_string()]);
    assert!(
        out.stdout.starts_with("cannot connect"),
        "a task reached nxd's API: {}",
        out.stdout
    );
    let out = run(&host, &[], &["ls", "/var/tmp"]);
    assert_eq!(out.code, Some(2), "{}", out.stdout);

    // Bad requests are refused before anything runs.
    let out = run(&host, &["--timeout", "9999h"], &["exit", "0"]);
    assert!(out.stderr.contains("max_timeout_secs"), "{}", out.stderr);
    // This host has no [microvm]: a microVM task is refused with what to do.
    let out = run(&host, &["--backend", "microvm"], &["exit", "0"]);
    assert!(out.stderr.contains("no microvm backend"), "{}", out.stderr);
    let out = host.nx(&["run-task", "/etc/hostname"]);
    assert!(out.stderr.contains("not an ELF"), "{}", out.stderr);
}

#[test]
fn the_timeout_kills_within_a_second_and_limits_hold() {
    let host = Host::start();
    let out = run(&host, &["--json", "--timeout", "1s"], &["sleep", "60"]);
    assert_eq!(out.code, Some(124), "{}", out.stderr);
    let end = exited(&out);
    assert_eq!(end["timed_out"], true);
    let ms = end["duration_ms"].as_u64().unwrap();
    assert!((1000..2000).contains(&ms), "killed {ms} ms after the start");
    assert!(
        out.stdout.contains("sleeping"),
        "its output before the kill arrives"
    );
    let out = run(&host, &["--timeout", "1s"], &["sleep", "60"]);
    assert!(out.stderr.contains("timeout"), "{}", out.stderr);

    // A fork loop stops at TasksMax (64 by default for tasks), and the host is fine.
    let out = run(&host, &[], &["fork"]);
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let forked = report["forked"].as_u64().unwrap();
    assert!(forked < 64, "{report}");
    assert!(
        report["error"].as_str().unwrap().contains("EAGAIN"),
        "{report}"
    );

    // A memory hog is killed at its MemoryMax; it never reports surviving, and nx says why.
    let out = run(&host, &["--memory", "48M"], &["hog"]);
    assert_eq!(out.code, Some(128 + 9), "{}{}", out.stdout, out.stderr);
    assert!(!out.stdout.contains("still alive"));
    assert!(
        out.stderr.contains("was killed: out of memory"),
        "{}",
        out.stderr
    );

    // The host still runs tasks and deployments.
    assert_eq!(run(&host, &[], &["exit", "0"]).code, Some(0));
    let id = host.push_sample("after", &[]);
    assert_eq!(host.get(&host.preview_host("after", &id), "/health").0, 200);
}

#[test]
fn a_task_ends_with_its_program_and_says_what_killed_it() {
    let host = Host::start();
    // The program leaves a child that would write in 20 s and exits at once: the task ends with
    // the program (not at the child's line, not at the timeout), with the program's code and
    // all it wrote, and the child is killed with the sandbox.
    let marker = format!("left-behind-{}", std::process::id());
    let started = std::time::Instant::now();
    let out = run(&host, &["--timeout", "60s"], &["leave", "20", &marker]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "left a writer\n");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the task waited for the child its program left: {:?}",
        started.elapsed()
    );
    let left = std::process::Command::new("pgrep")
        .args(["-f", &marker])
        .output()
        .expect("pgrep");
    assert!(
        !left.status.success(),
        "a process the task left still runs: {}",
        String::from_utf8_lossy(&left.stdout)
    );

    // The OOM killer may pick the program like any other process (nothing of the launcher's
    // is inherited: a -1000 there, where root may lower it, made tasks unkillable at their limit).
    let out = run(&host, &[], &["cat", "/proc/self/oom_score_adj"]);
    assert_eq!(out.stdout.trim(), "0", "{}", out.stderr);

    // A program killed by a signal: named in the stream and on nx's stderr.
    let out = run(&host, &["--json"], &["abort"]);
    assert_eq!(out.code, Some(128 + 6), "{}", out.stderr);
    let end = exited(&out);
    assert_eq!(
        (&end["signal"], &end["result"], &end["exit_code"]),
        (&6.into(), &"signal".into(), &134.into()),
        "{end}"
    );
    let out = run(&host, &[], &["abort"]);
    assert_eq!(out.code, Some(128 + 6), "{}", out.stderr);
    assert_eq!(out.stdout, "aborting\n");
    assert!(
        out.stderr.contains("was killed by SIGABRT"),
        "{}",
        out.stderr
    );
    // The OOM killer at the task's memory limit is named as systemd names it, not a plain
    // SIGKILL; an exit code of its own is not a signal.
    let end = exited(&run(&host, &["--json", "--memory", "48M"], &["hog"]));
    assert_eq!(
        (&end["result"], &end["signal"]),
        (&"oom-kill".into(), &9.into()),
        "{end}"
    );
    let end = exited(&run(&host, &["--json"], &["exit", "3"]));
    assert_eq!(
        (&end["result"], &end["signal"], &end["exit_code"]),
        (&"exit-code".into(), &serde_json::Value::Null, &3.into()),
        "{end}"
    );
}

/// Every directory below `dir` whose name contains one of `ids`.
fn dirs_naming(dir: &Path, ids: &HashSet<String>) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && !path.is_symlink() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if ids.iter().any(|id| name.contains(id.as_str())) {
                    found.push(path.clone());
                }
                found.extend(dirs_naming(&path, ids));
            }
        }
    }
    found
}

/// Runs one task through `POST /v1/tasks` with `request` as its body (`{"artifact": sha,
/// "args": [..], ..}`): the answer's body (NDJSON) and its events.
fn api_task(
    http: &reqwest::blocking::Client,
    api: std::net::SocketAddr,
    token: &str,
    request: &serde_json::Value,
) -> (String, Vec<serde_json::Value>) {
    let body = http
        .post(format!("http://{api}/v1/tasks"))
        .bearer_auth(token)
        .json(request)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let events = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (body, events)
}

#[test]
fn five_hundred_tasks_leave_nothing_behind() {
    let host = Host::start();
    let (status, _, sha) = host.put_artifact(std::fs::read(sample_app()).unwrap());
    assert_eq!(status, 200);
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (api, token, sha) = (host.api, host.token.clone(), sha.clone());
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::new();
                (0..125)
                    .map(|i| {
                        let word = format!("task-{w}-{i}");
                        let request =
                            serde_json::json!({"artifact": sha, "args": ["task", "print", word]});
                        let (body, events) = api_task(&http, api, &token, &request);
                        assert!(
                            events.contains(
                                &serde_json::json!({"event": "stdout", "data": format!("{word}\n")})
                            ),
                            "{body}"
                        );
                        assert_eq!(events.last().unwrap()["exit_code"], 0, "{body}");
                        events[0]["task"].as_str().unwrap().to_owned()
                    })
                    .collect::<Vec<String>>()
            })
        })
        .collect();
    let ids: HashSet<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert_eq!(ids.len(), 500, "every task had its own id");

    // A task's answer ends when its sandbox has reported its end; its unit then waits for the
    // next task, or is tidied away right after: within a few seconds nothing of the 500 is
    // left but the pool's units.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while let Err(left) = what_is_left(&host, &ids) {
        assert!(std::time::Instant::now() < deadline, "{left}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The id of the unit task `id` ran on: a unit's first task has its id, the n-th after it
/// `<unit id>-<n>`.
fn unit_of(id: &str) -> &str {
    id.split('-').next().unwrap()
}

/// What is left of the tasks `ids` on `host` (a unit, a cgroup, a mount, a
/// file), if anything. A unit serves tasks one after another: the units that still serve the
/// pool (their launchers waiting for a task, at most `tasks.pool_max`) are all that may be left.
fn what_is_left(host: &Host, ids: &HashSet<String>) -> Result<(), String> {
    let units = std::process::Command::new("busctl")
        .arg(format!(
            "--address=unix:path={}",
            host.path("systemd/bus/system_bus_socket").display()
        ))
        .args([
            "call",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "ListUnitsByPatterns",
            "asas",
            "0",
            "1",
            "nxt-*",
        ])
        .output()
        .unwrap();
    assert!(
        units.status.success(),
        "{}",
        String::from_utf8_lossy(&units.stderr)
    );
    let units = String::from_utf8_lossy(&units.stdout);
    // `a(ssssssouso) N ...`: N units, the warm pool's: four clients grew it from
    // tasks.pool_size (2) towards tasks.pool_max (8); each is a launcher waiting for a task.
    let count: usize = units.split_whitespace().nth(1).unwrap().parse().unwrap();
    let pool_max = nx_orchestrator::config::TasksConfig::default().pool_max();
    ensure(
        count <= pool_max,
        format!("more units than the pool's: {units}"),
    )?;
    assert_eq!(
        units.matches("\"active\" \"running\"").count(),
        count,
        "{units}"
    );
    // The units the tasks ran on that no longer serve the pool: nothing of them is left.
    let gone: HashSet<String> = ids
        .iter()
        .map(|id| unit_of(id).to_owned())
        .filter(|unit| !units.contains(&format!("nxt-{unit}.service")))
        .collect();
    // No unit's cgroup, in any hierarchy of the manager.
    let mut cgroups = Vec::new();
    for root in host.manager_cgroups() {
        cgroups.extend(dirs_naming(&root, &gone));
    }
    ensure(cgroups.is_empty(), format!("cgroups left: {cgroups:?}"))?;
    // No mount of any task, on any unit.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<&str> = mounts
        .lines()
        .filter(|l| ids.iter().any(|id| l.contains(unit_of(id))))
        .collect();
    ensure(left.is_empty(), format!("mounts left: {left:?}"))?;
    // No file in nxd's state dir.
    let files: Vec<String> = files_under(host.state_dir.path())
        .into_iter()
        .filter(|f| gone.iter().any(|unit| f.contains(unit.as_str())))
        .collect();
    ensure(files.is_empty(), format!("files left: {files:?}"))?;
    Ok(())
}

fn ensure(holds: bool, otherwise: String) -> Result<(), String> {
    holds.then_some(()).ok_or(otherwise)
}

/// Runs `n` tasks `task sleep <secs>` at once through the API; whether each started warm.
fn concurrent_tasks(host: &Host, sha: &str, n: usize, secs: &str) -> Vec<bool> {
    let workers: Vec<_> = (0..n)
        .map(|_| {
            let (api, token, sha, secs) = (
                host.api,
                host.token.clone(),
                sha.to_owned(),
                secs.to_owned(),
            );
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::new();
                let request = serde_json::json!({"artifact": sha, "args": ["task", "sleep", secs]});
                let (body, events) = api_task(&http, api, &token, &request);
                assert_eq!(events.last().unwrap()["exit_code"], 0, "{body}");
                events[0]["warm"].as_bool().unwrap()
            })
        })
        .collect();
    workers.into_iter().map(|w| w.join().unwrap()).collect()
}

#[test]
fn concurrent_tasks_that_find_the_pool_empty_grow_it_and_then_start_warm() {
    let host = Host::start_with("[tasks]\npool_size = 1\npool_max = 3\n");
    let (status, _, sha) = host.put_artifact(std::fs::read(sample_app()).unwrap());
    assert_eq!(status, 200);
    let ready = |n: f64| {
        nx_testkit::metrics::wait_for(&host, "nx_task_pool_ready", Duration::from_secs(60), |v| {
            v == n
        })
    };
    ready(1.0);
    // Six at once: one takes the warm unit, most of the rest start cold; each cold start makes
    // the pool keep one more unit, up to pool_max.
    let warm = concurrent_tasks(&host, &sha, 6, "0.5");
    let cold = warm.iter().filter(|w| !**w).count();
    assert!(cold >= 2, "six tasks at once on a pool of one: {warm:?}");
    let text = nx_testkit::metrics::scrape(&host);
    assert_eq!(
        nx_testkit::metrics::value(&text, "nx_task_pool_size"),
        Some(3.0),
        "{warm:?}"
    );
    // Refilled to three, the next three at once all start warm.
    ready(3.0);
    let warm = concurrent_tasks(&host, &sha, 3, "0");
    assert_eq!(warm, [true, true, true]);
}

#[test]
fn a_host_without_a_pool_starts_every_task_cold_and_grows_none() {
    // tasks.pool_max unset follows pool_size (4 times it): 0 stays 0.
    let host = Host::start_with("[tasks]\npool_size = 0\n");
    let (status, _, sha) = host.put_artifact(std::fs::read(sample_app()).unwrap());
    assert_eq!(status, 200);
    for _ in 0..2 {
        let warm = concurrent_tasks(&host, &sha, 3, "0");
        assert_eq!(warm, [false, false, false]);
    }
    let text = nx_testkit::metrics::scrape(&host);
    assert_eq!(
        nx_testkit::metrics::value(&text, "nx_task_pool_size"),
        Some(0.0)
    );
    assert_eq!(
        nx_testkit::metrics::value(&text, "nx_task_pool_ready"),
        Some(0.0)
    );
}

/// Starts `task sleep <secs>` as `token`, returning once nxd has answered the request (its
/// status; the task then runs on) and a thread that reads its events to the end.
fn start_task(
    host: &Host,
    token: &str,
    sha: &str,
    secs: &str,
) -> (u16, String, Option<std::thread::JoinHandle<String>>) {
    let resp = host
        .http()
        .post(format!("http://{}/v1/tasks", host.api))
        .bearer_auth(token)
        .json(&serde_json::json!({"artifact": sha, "args": ["task", "sleep", secs]}))
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    if status != 200 {
        return (status, resp.text().unwrap(), None);
    }
    (
        status,
        String::new(),
        Some(std::thread::spawn(move || resp.text().unwrap())),
    )
}

/// One caller (token) may run at most `tasks.max_concurrent_per_token` tasks at once: past it,
/// 429 saying what to do, while another token's task still runs; its slots come back as its
/// tasks end (attacker s10: one tenant's tasks could take every slot of nx-run_task.slice).
#[test]
fn one_tokens_tasks_at_its_cap_leave_room_for_another_tokens() {
    let host = Host::start();
    let program = std::fs::read(sample_app()).unwrap();
    let token = || {
        let out = host.nx_json(&["token", "create", "--can", "tasks"]);
        let token = out["token"].as_str().expect("token").to_owned();
        let sha = nx_testkit::sha256_hex(&program);
        let (status, body) = host.call(
            &token,
            "PUT",
            &format!("/v1/artifacts/{sha}"),
            Some(program.clone()),
        );
        assert_eq!(status, 200, "{body}");
        (token, sha)
    };
    let ((greedy, sha), (other, _)) = (token(), token());
    let cap = nx_orchestrator::config::TasksConfig::default().max_concurrent_per_token;
    let running: Vec<_> = (0..cap)
        .map(|_| {
            let (status, body, reader) = start_task(&host, &greedy, &sha, "20");
            assert_eq!(status, 200, "{body}");
            reader.unwrap()
        })
        .collect();

    let (status, body, _) = start_task(&host, &greedy, &sha, "0");
    assert_eq!(status, 429, "task {} of one token: {body}", cap + 1);
    assert!(
        body.contains(&format!("runs {cap} tasks"))
            && body.contains("tasks.max_concurrent_per_token"),
        "{body}"
    );
    // Another token's task runs meanwhile, to its end.
    let (status, body, reader) = start_task(&host, &other, &sha, "0");
    assert_eq!(status, 200, "{body}");
    let events = reader.unwrap().join().unwrap();
    assert!(events.contains("\"exit_code\":0"), "{events}");

    // Once its tasks have ended, the first token runs tasks again.
    for reader in running {
        let events = reader.join().unwrap();
        assert!(events.contains("\"exit_code\":0"), "{events}");
    }
    let (status, body, reader) = start_task(&host, &greedy, &sha, "0");
    assert_eq!(status, 200, "{body}");
    reader.unwrap().join().unwrap();
}

/// A host whose warm pool is one unit (so every task that finds it ready runs on it), and a
/// token that runs tasks, with the sample app uploaded: (host, sha).
fn host_with_a_pool_of_one() -> (Host, String) {
    let host = Host::start_with("[tasks]\npool_size = 1\npool_max = 1\n");
    let sha = nx_testkit::sha256_hex(&std::fs::read(sample_app()).unwrap());
    (host, sha)
}

/// A token of `host` that runs tasks, with the sample app uploaded as `sha`.
fn task_token(host: &Host, sha: &str) -> String {
    let out = host.nx_json(&["token", "create", "--can", "tasks"]);
    let token = out["token"].as_str().expect("token").to_owned();
    let program = std::fs::read(sample_app()).unwrap();
    let (status, body) = host.call(
        &token,
        "PUT",
        &format!("/v1/artifacts/{sha}"),
        Some(program),
    );
    assert_eq!(status, 200, "{body}");
    token
}

/// What one task on a pool of one said: its stdout, its `exited` event and the unit it ran on
/// (see [`unit_of`]).
struct PoolTask {
    stdout: String,
    exited: serde_json::Value,
    unit: String,
}

/// Runs one task (`more`: the request's fields beside artifact and args) once the pool's unit
/// is ready for it, so that it runs on that unit.
fn pool_task(
    host: &Host,
    token: &str,
    sha: &str,
    args: &[&str],
    more: serde_json::Value,
) -> PoolTask {
    nx_testkit::metrics::wait_for(host, "nx_task_pool_ready", Duration::from_secs(30), |v| {
        v == 1.0
    });
    let mut request = serde_json::json!({"artifact": sha, "args": args});
    request
        .as_object_mut()
        .unwrap()
        .extend(more.as_object().cloned().unwrap_or_default());
    let (body, events) = api_task(host.http(), host.api, token, &request);
    let id = events[0]["task"].as_str().expect("a task id");
    assert_eq!(events[0]["warm"], true, "{body}");
    PoolTask {
        stdout: events
            .iter()
            .filter(|e| e["event"] == "stdout")
            .map(|e| e["data"].as_str().unwrap())
            .collect(),
        exited: events.last().unwrap().clone(),
        unit: unit_of(id).to_owned(),
    }
}

/// A unit serves tasks one after another, and nothing of one task reaches the next, another
/// caller's: no file, no process (a writer it left behind), no environment variable, no open
/// file, not its uid. One unit in the pool, so every task here runs on it (their ids name it).
#[test]
fn tasks_one_after_another_on_one_unit_see_nothing_of_each_other() {
    let (host, sha) = host_with_a_pool_of_one();
    let (first, second) = (task_token(&host, &sha), task_token(&host, &sha));
    let none = serde_json::json!({});
    let mut units = HashSet::new();
    let mut task = |token: &str, args: &[&str], more: serde_json::Value| {
        let task = pool_task(&host, token, &sha, args, more);
        units.insert(task.unit);
        (task.stdout, task.exited["exit_code"].clone())
    };

    let (out, code) = task(
        &first,
        &["task", "write", "/tmp/secret", "first's"],
        serde_json::json!({"env": {"FIRSTS_SECRET": "1"}}),
    );
    assert_eq!((out.as_str(), code), ("wrote /tmp/secret\n", 0.into()));
    let (out, _) = task(
        &first,
        &["task", "leave", "1", "first's writer"],
        none.clone(),
    );
    assert_eq!(out, "left a writer\n");
    let (first_fds, _) = task(&first, &["task", "ls", "/proc/self/fd"], none.clone());
    let (first_status, _) = task(&first, &["task", "cat", "/proc/self/status"], none.clone());

    let (out, code) = task(&second, &["task", "ls", "/tmp"], none.clone());
    assert_eq!((out.as_str(), code), ("", 0.into()), "the first's file");
    let (out, _) = task(
        &second,
        &["task", "cat", "/proc/self/environ"],
        none.clone(),
    );
    assert!(!out.contains("FIRSTS_SECRET"), "the first's env: {out:?}");
    let (out, _) = task(&second, &["task", "sleep", "2"], none.clone());
    assert_eq!(
        out, "sleeping\n",
        "the first's writer wrote into the second's output"
    );
    let (second_fds, _) = task(&second, &["task", "ls", "/proc/self/fd"], none.clone());
    assert_eq!(
        first_fds, second_fds,
        "the launcher handed more open files to the second"
    );
    let (second_status, _) = task(&second, &["task", "cat", "/proc/self/status"], none);
    let uid = |status: &str| {
        status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap()
            .to_owned()
    };
    assert_ne!(uid(&first_status), uid(&second_status));
    assert_eq!(
        units.len(),
        1,
        "every task ran on the pool's one unit: {units:?}"
    );
}

/// Attacker s13 T1: a task's stdout and stderr are its unit's pipes, the same open file
/// descriptions for every task the unit serves, so `O_NONBLOCK` set by one task stayed for
/// the next, which lost most of its output with exit code 0. Each task starts with the flags
/// and the pipe size the unit started with.
#[test]
fn a_tasks_output_flags_do_not_reach_the_next_task_on_its_unit() {
    let (host, sha) = host_with_a_pool_of_one();
    let token = task_token(&host, &sha);
    let mut units = HashSet::new();
    let mut task = |args: &[&str]| {
        let task = pool_task(&host, &token, &sha, args, serde_json::json!({}));
        units.insert(task.unit);
        (task.stdout, task.exited["exit_code"].clone())
    };
    let (as_started, _) = task(&["task", "outputs"]);
    assert!(
        as_started.contains("fd 1: nonblock false append false"),
        "{as_started}"
    );
    assert_eq!(
        task(&["task", "unsettle"]),
        ("unsettled\n".into(), 0.into())
    );
    let (next, _) = task(&["task", "outputs"]);
    assert_eq!(next, as_started, "what the task before set");
    task(&["task", "unsettle"]);
    // 4 MiB: far past the pipe, so that a non-blocking write would fail (EAGAIN).
    let (burst, code) = task(&["task", "burst", "4096"]);
    assert_eq!((burst.len(), code), (4096 * 1024, 0.into()));
    assert_eq!(
        units.len(),
        1,
        "every task ran on the pool's one unit: {units:?}"
    );
}

/// Review15 #4: a task's bubblewrap had an unbounded devpts instance, which draws from the
/// host's shared pool (`kernel.pty.max` less `kernel.pty.reserve`, 3,071 here), so one task
/// could take every sandbox's pseudo-terminals. A task holds at most `MAX_PTYS`, a deployment
/// beside it still opens its own, and the next task on the same unit gets as many again.
#[test]
fn a_task_holds_at_most_its_share_of_pseudo_terminals() {
    use std::io::BufRead;
    let (host, sha) = host_with_a_pool_of_one();
    let token = task_token(&host, &sha);
    let max = nx_orchestrator::backend::pts_mount::MAX_PTYS;
    let id = host.push_sample("ptys", &[]);
    let full = |said: &str| {
        let held: serde_json::Value = serde_json::from_str(said.trim()).unwrap();
        assert_eq!(held["held"], max, "{said}");
        assert!(
            held["error"]
                .as_str()
                .unwrap_or_default()
                .contains("No space left on device"),
            "{said}"
        );
    };

    // It holds what it got for 8 s; the deployment opens one meanwhile.
    let sample = sample_app();
    let mut task = host
        .nx_command(
            &host.token,
            &[
                "run-task",
                sample.to_str().unwrap(),
                "--",
                "task",
                "ptys",
                "100",
                "8",
            ],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    std::io::BufReader::new(task.stdout.take().unwrap())
        .read_line(&mut said)
        .unwrap();
    full(&said);
    let (status, body) = host.get(&host.preview_host("ptys", &id), "/ptys?n=1");
    assert_eq!(status, 200, "{body}");
    let opened: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(opened, serde_json::json!({"held": 1, "error": null}));
    assert!(
        task.try_wait().unwrap().is_none(),
        "the task ended before the deployment opened its terminal"
    );
    assert_eq!(task.wait().unwrap().code(), Some(0));

    // Two on the pool's one unit: each has an instance of its own.
    let mut units = HashSet::new();
    for _ in 0..2 {
        let task = pool_task(
            &host,
            &token,
            &sha,
            &["task", "ptys", "100"],
            serde_json::json!({}),
        );
        full(&task.stdout);
        units.insert(task.unit);
    }
    assert_eq!(units.len(), 1, "both ran on the pool's one unit: {units:?}");
}

/// A unit whose task was killed at its timeout, or that ran a task with a memory limit of its
/// own, serves no task after it: the next runs on a fresh unit (of the pool's own limits).
#[test]
fn a_unit_serves_no_task_after_one_killed_at_its_timeout_or_of_its_own_memory() {
    let (host, sha) = host_with_a_pool_of_one();
    let token = task_token(&host, &sha);
    let print = ["task", "print", "hi"];
    let none = serde_json::json!({});

    let before = pool_task(&host, &token, &sha, &print, none.clone());
    assert_eq!(before.stdout, "hi\n");
    let killed = pool_task(
        &host,
        &token,
        &sha,
        &["task", "sleep", "30"],
        serde_json::json!({"timeout_secs": 1}),
    );
    assert_eq!(
        killed.unit, before.unit,
        "the second task ran on the first's unit"
    );
    assert_eq!(killed.exited["timed_out"], true, "{}", killed.exited);
    let after_kill = pool_task(&host, &token, &sha, &print, none.clone());
    assert_ne!(
        after_kill.unit, killed.unit,
        "a killed task's unit served again"
    );
    assert_eq!(after_kill.stdout, "hi\n");

    let own_memory = pool_task(
        &host,
        &token,
        &sha,
        &print,
        serde_json::json!({"memory_max_mb": 128}),
    );
    assert_eq!(own_memory.unit, after_kill.unit);
    let after_memory = pool_task(&host, &token, &sha, &print, none);
    assert_ne!(
        after_memory.unit, own_memory.unit,
        "a unit with a task's own memory limit served again"
    );
    assert_eq!(
        after_memory.exited["exit_code"], 0,
        "{}",
        after_memory.exited
    );
}

/// Attacker s11 G5: a second nxd on a state dir that a running nxd owns (another `api_listen`)
/// ran the start-up recovery against the first one's work (removed its warm task units, the
/// next task failed "Broken pipe"). Now it exits at once naming the first one's pid, and so
/// does `nxd manager-stop`; the first keeps its warm units and runs tasks.
#[test]
fn a_second_nxd_on_the_state_dir_exits_at_once_and_the_first_keeps_its_warm_tasks() {
    let host = Host::start();
    let (status, _, sha) = host.put_artifact(std::fs::read(sample_app()).unwrap());
    assert_eq!(status, 200);
    // The default pool: two warm units.
    nx_testkit::metrics::wait_for(&host, "nx_task_pool_ready", Duration::from_secs(60), |v| {
        v == 2.0
    });

    let api = format!("127.0.0.1:{}", nx_testkit::free_port());
    let second = host.nxd_that_exits(&["--api-listen", &api], Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    let holder = format!("another nxd (pid {}) runs on the state dir", host.nxd_pid());
    assert!(
        stderr.contains(&holder) && stderr.contains("Stop it first"),
        "{stderr}"
    );

    let (status, stderr) = host.manager_stop();
    assert!(!status.success() && stderr.contains(&holder), "{stderr}");

    // The first nxd's warm units are still there: two tasks at once both start warm.
    assert_eq!(concurrent_tasks(&host, &sha, 2, "0"), [true, true]);
    let out = run(&host, &[], &["print", "hello"]);
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "hello\n"));
}
