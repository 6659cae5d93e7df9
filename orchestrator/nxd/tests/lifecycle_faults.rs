//! The lifecycle's faults a new user hits, each with the outcome a user expects: on real
//! bubblewrap, a real systemd manager over D-Bus and a real PostgreSQL.

use nx_testkit::Host;
use std::process::Command;
use std::time::{Duration, Instant};

fn body_of(host: &Host, sandbox: &str) -> (u16, String) {
    host.get(&host.production_host(sandbox), "/")
}

#[test]
fn rollback_and_promote_route_production_only_to_a_running_deployment() {
    let host = Host::start();
    let a = host.push_sample("web", &["-e", "APP_VERSION=va"]);
    host.nx_json(&["promote", "web", &a]);
    let b = host.push_sample("web", &["-e", "APP_VERSION=vb"]);
    host.nx_json(&["promote", "web", &b]);
    host.nx_json(&["stop", &a]);
    assert_eq!(host.deployment("web", &a)["phase"], "stopped");

    // Rolling back to the stopped A starts it, and switches only once it answers.
    let back = host.nx_json(&["rollback", "web"]);
    assert_eq!(back["promoted"], a.as_str());
    assert_eq!(
        body_of(&host, "web"),
        (200, format!("nx-sample va deployment={a}\n"))
    );
    assert_eq!(host.deployment("web", &a)["phase"], "running");

    // Promoting the stopped B does the same.
    host.nx_json(&["stop", &b]);
    host.nx_json(&["promote", "web", &b]);
    assert_eq!(
        body_of(&host, "web"),
        (200, format!("nx-sample vb deployment={b}\n"))
    );

    // A target that cannot start is never routed to: production stays where it was.
    let broken = host.push_sample("web", &["-e", "FAIL_AT_START_IF=/data/broken"]);
    assert_eq!(
        host.get(&host.preview_host("web", &broken), "/write?name=broken")
            .0,
        200
    );
    host.nx_json(&["stop", &broken]);
    let out = host.nx(&["promote", "web", &broken]);
    assert!(
        !out.ok && out.stderr.contains("exited before it was ready"),
        "{}",
        out.stderr
    );
    assert_eq!(
        body_of(&host, "web"),
        (200, format!("nx-sample vb deployment={b}\n"))
    );
}

#[test]
fn an_exit_before_ready_fails_the_push_at_once_naming_the_exit() {
    let host = Host::start();
    let sample = nx_testkit::sample_app();
    // What a push that succeeds takes on this machine now (into the sandbox, once it and its
    // database exist): on a loaded machine (CI's whole suite, or other builds) preparing a
    // sandbox alone can pass 2 s.
    host.push_sample("quick", &[]);
    let started = Instant::now();
    host.push_sample("quick", &[]);
    let ready = started.elapsed();
    let limit = Duration::from_secs(2).max(ready + Duration::from_secs(1));
    for code in ["0", "3"] {
        let started = Instant::now();
        // `task exit N` prints a line and exits N: like a program that daemonizes (exit 0) or
        // dies at start.
        let out = host.nx(&[
            "push",
            sample.to_str().unwrap(),
            "--sandbox",
            "quick",
            "--",
            "task",
            "exit",
            code,
        ]);
        let took = started.elapsed();
        assert!(!out.ok, "{}", out.stdout);
        assert!(
            out.stderr
                .contains(&format!("exited before it was ready (exit status {code})")),
            "{}",
            out.stderr
        );
        assert!(
            out.stderr.contains(&format!("exiting with {code}")),
            "the log tail is shown: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("$PORT"), "{}", out.stderr);
        eprintln!("exit {code}: the push failed after {took:?} (a push that succeeds: {ready:?})");
        assert!(
            took < limit,
            "took {took:?}; a push that succeeds took {ready:?}"
        );
    }
}

/// On SIGTERM the sample logs "SIGTERM; draining", drains, then logs "drained" (its /data may
/// be a disk image only the unit mounts, so the log is what the host sees). `push` deploys it
/// into sandbox "drain" with the extra arguments it is given and returns the deployment's id.
fn stop_drains_then_kills_at_the_stop_timeout(host: &Host, push: impl Fn(&[&str]) -> String) {
    let id = push(&["-e", "DRAIN_ON_SIGTERM=2"]);
    let started = Instant::now();
    host.nx_json(&["stop", &id]);
    let took = started.elapsed();
    let logs = host.nx(&["logs", &id]).stdout;
    assert!(
        logs.contains("SIGTERM; draining"),
        "the program got no SIGTERM:\n{logs}"
    );
    assert!(
        logs.contains("nx-sample: drained"),
        "the program was killed while it drained (stop took {took:?}):\n{logs}"
    );
    assert!(took >= Duration::from_secs(2), "{took:?}");

    // A stop timeout shorter than the drain: the program is killed when it runs out.
    let id = push(&["-e", "DRAIN_ON_SIGTERM=30"]);
    let started = Instant::now();
    host.nx_json(&["stop", &id, "--stop-timeout", "1s"]);
    let took = started.elapsed();
    let logs = host.nx(&["logs", &id]).stdout;
    assert!(logs.contains("SIGTERM; draining"), "{logs}");
    assert!(!logs.contains("nx-sample: drained"), "{logs}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Named as such: in the log, by the unit's monitor, and in nx status.
    let waited: f64 = logs
        .lines()
        .find_map(|l| {
            l.split_once(" nx killed by SIGKILL at the stop timeout: still running ")?
                .1
                .strip_suffix(" s after SIGTERM")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("the stop's timeout is not named:\n{logs}"));
    assert!((1.0..10.0).contains(&waited), "{waited} s");
    let d = host.deployment("drain", &id);
    assert_eq!(d["phase"], "stopped");
    assert_eq!(d["last_exit"]["result"], "timeout", "{d}");
    let ls = host.nx(&["ls"]).stdout;
    assert!(ls.contains("stopped (timeout)"), "{ls}");
}

#[test]
fn stop_passes_sigterm_to_the_program_and_waits_up_to_the_stop_timeout() {
    let host = Host::start();
    stop_drains_then_kills_at_the_stop_timeout(&host, |extra| host.push_sample("drain", extra));
}

#[test]
fn stop_passes_sigterm_into_a_podman_container_and_waits_up_to_the_stop_timeout() {
    let host = Host::start();
    let build = tempfile::tempdir().unwrap();
    let image = nx_testkit::build_sample_image(build.path(), "linux/amd64");
    let image = image.to_str().unwrap();
    stop_drains_then_kills_at_the_stop_timeout(&host, |extra| {
        let mut args = vec!["push", "--image", image, "--sandbox", "drain"];
        args.extend_from_slice(extra);
        host.nx_json(&args)["deployment"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    });
}

#[test]
fn stop_passes_sigterm_into_a_microvm_guest_whose_data_survives_the_restart() {
    let host = Host::start_with(&nx_testkit::microvm_config("tcg"));
    let push = |extra: &[&str]| {
        let mut args = vec!["--backend", "microvm"];
        args.extend_from_slice(extra);
        host.push_sample("drain", &args)
    };
    stop_drains_then_kills_at_the_stop_timeout(&host, push);
    // The first deployment wrote its markers on its /data (a disk of its own) while it
    // drained; they are there when it starts again.
    let first = host.nx_json(&["status", "drain"])[0]["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .min_by_key(|id| host.deployment("drain", id)["created_at"].to_string())
        .unwrap();
    host.nx_json(&["start", &first]);
    let preview = host.preview_host("drain", &first);
    assert_eq!(
        host.get(&preview, "/read?path=/data/sigterm"),
        (200, "received\n".to_string())
    );
    assert_eq!(
        host.get(&preview, "/read?path=/data/drained"),
        (200, "done\n".to_string())
    );
}

#[test]
fn output_into_a_closed_pipe_ends_nx_quietly() {
    let host = Host::start();
    let id = host.push_sample("web", &[]);
    host.nx_json(&["promote", "web", &id]);
    let nx = nx_testkit::bin("nx");
    for args in [
        "ls",
        "--json ls",
        "status web",
        "--json status web",
        &format!("logs {id}"),
        &format!("--json logs {id}"),
        &format!("promote web {id}"),
        &format!("--json promote web {id}"),
        "rollback web",
        "--json rollback web",
        "db url web",
        "--json db backups web",
    ] {
        // Enough output to fill the pipe's buffer is not needed: one write after `head` is
        // gone is enough; `sleep` makes sure it is gone.
        let script = format!(
            "{} {args} | (head -c 1 >/dev/null; sleep 0.1); echo \"${{PIPESTATUS[0]}}\"",
            nx.display()
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .env("NX_HOST", format!("http://{}", host.api))
            .env("NX_TOKEN", &host.token)
            .env("NX_CONFIG", "/dev/null")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let status = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(!stderr.contains("panicked"), "nx {args}: {stderr}");
        assert!(
            status == "0" || status == "141",
            "nx {args} ended with {status} (0, or 141: SIGPIPE, expected): {stderr}"
        );
    }
}

#[test]
fn an_nxd_under_tmp_deploys_and_runs_volume_jobs() {
    let dir = tempfile::Builder::new()
        .prefix("nx-test-nxd-")
        .tempdir_in("/tmp")
        .unwrap();
    let nxd = dir.path().join("nxd");
    std::fs::copy(nx_testkit::bin("nxd"), &nxd).unwrap();
    // nxd finds the router beside itself.
    std::fs::copy(nx_testkit::bin("nx-router"), dir.path().join("nx-router")).unwrap();
    let host = Host::start_with_nxd(nxd, "");
    let id = host.push_sample("web", &["-e", "APP_VERSION=tmp"]);
    assert_eq!(
        host.get(&host.preview_host("web", &id), "/"),
        (200, format!("nx-sample tmp deployment={id}\n"))
    );
    // Volume jobs (a --volume-branch copy, a backup) run in units of their own, from the copy
    // of nxd in the state dir too.
    host.nx_json(&["volume", "create", "web", "files", "--size", "64"]);
    let live = host.push_sample("web", &["--volume", "files:/srv/files", "--volume-live"]);
    host.nx_json(&["promote", "web", &live]);
    let name = "../srv/files/kept";
    let wrote = host.get(&host.production_host("web"), &format!("/write?name={name}"));
    assert_eq!(wrote, (200, name.to_owned()));
    let branch = host.push_sample("web", &["--volume", "files:/srv/files", "--volume-branch"]);
    let (status, listed) = host.get(&host.preview_host("web", &branch), "/ls?path=/srv/files");
    assert_eq!(status, 200);
    assert!(
        listed.contains("\"kept\""),
        "the branch copy lacks production's file: {listed}"
    );
    let archive = host.path("files.tar");
    host.nx_json(&[
        "volume",
        "backup",
        "web",
        "files",
        "-o",
        archive.to_str().unwrap(),
    ]);
    let listed = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("kept"),
        "the backup lacks production's file: {listed:?}"
    );
}

#[test]
fn twenty_dead_deployments_do_not_delay_the_api_at_start() {
    let mut host = Host::start();
    let ids: Vec<String> = (0..20).map(|_| host.push_sample("many", &[])).collect();
    // What a start costs with nothing to restart (all 20 run and are adopted as they are).
    host.stop_nxd();
    let started = Instant::now();
    host.start_nxd();
    host.nx_json(&["ls"]);
    let baseline = started.elapsed();
    host.stop_nxd();
    // SIGTERM to each launcher: the programs end, and systemd counts it as a clean stop, so
    // it does not restart them: 20 deployments that should run and do not.
    let state_dir = host.state_dir.path().display().to_string();
    let launchers: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            let deployments = format!("{state_dir}/deployments/");
            cmdline.contains("\0launch\0") && cmdline.contains(&deployments)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(launchers.len(), 20, "{launchers:?}");
    assert!(Command::new("kill")
        .arg("-TERM")
        .args(&launchers)
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while launchers
        .iter()
        .any(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
    {
        assert!(Instant::now() < deadline, "the launchers did not end");
        std::thread::sleep(Duration::from_millis(50));
    }

    let started = Instant::now();
    host.start_nxd();
    let ls = host.nx_json(&["ls"]);
    let took = started.elapsed();
    eprintln!("API answered after {took:?}; with nothing to restart: {baseline:?}");
    assert!(
        took < baseline + Duration::from_secs(1),
        "the API answered after {took:?} (with nothing to restart: {baseline:?})"
    );
    assert_eq!(ls[0]["deployments"].as_array().unwrap().len(), 20);

    // And all of them run again, restarted in the background.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ls = host.nx_json(&["ls"]);
        let running = ls[0]["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["phase"] == "running")
            .count();
        if running == 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{running} of 20 run again:\n{}",
            host.nxd_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for id in &ids {
        assert_eq!(host.get(&host.preview_host("many", id), "/").0, 200);
    }
}

#[test]
fn a_failed_destroy_leaves_the_sandbox_listed() {
    let host = Host::start();
    let id = host.push_sample("doomed", &[]);
    // An immutable file: removing the deployment's directory fails.
    let pinned = host.path(&format!("deployments/{id}/launch.json"));
    assert!(Command::new("chattr")
        .arg("+i")
        .arg(&pinned)
        .status()
        .unwrap()
        .success());
    let out = host.nx(&["sandbox", "rm", "doomed", "--no-backup"]);
    let _ = Command::new("chattr").arg("-i").arg(&pinned).status();
    assert!(!out.ok);
    assert!(
        out.stderr.contains("sandbox doomed is not removed")
            && out.stderr.contains("nx sandbox rm doomed"),
        "{}",
        out.stderr
    );
    let ls = host.nx_json(&["ls"]);
    assert_eq!(ls[0]["name"], "doomed", "{ls}");
    assert_eq!(ls[0]["deployments"][0]["id"], id.as_str());
    assert_eq!(ls[0]["deployments"][0]["phase"], "stopped");

    // Once the cause is gone, the same command removes everything.
    host.nx_json(&["sandbox", "rm", "doomed", "--no-backup"]);
    assert_eq!(host.nx_json(&["ls"]), serde_json::json!([]));
    assert!(!host.path(&format!("deployments/{id}")).exists());
}

#[test]
fn a_failed_restart_after_swap_db_leaves_production_data_as_it_was() {
    let host = Host::start();
    let on = |id: &str, path: &str| host.get(&host.preview_host("blog", id), path);
    let prod = host.push_sample("blog", &[]);
    assert_eq!(on(&prod, "/db/put?v=p1").0, 200);
    host.nx_json(&["promote", "blog", &prod]);

    let next = host.push_sample(
        "blog",
        &["--db-branch", "-e", "FAIL_AT_START_IF=/data/fail"],
    );
    assert_eq!(on(&next, "/db/put?v=n1").0, 200);
    // From now on it cannot start again: its restart on production's database will fail.
    assert_eq!(on(&next, "/write?name=fail").0, 200);
    let out = host.nx(&["promote", "blog", &next, "--swap-db"]);
    assert!(!out.ok, "{}", out.stdout);
    assert!(
        out.stderr.contains("production's database is as it was"),
        "{}",
        out.stderr
    );
    assert_eq!(
        body_of(&host, "blog").1,
        format!("nx-sample dev deployment={prod}\n"),
        "production moved"
    );
    assert_eq!(
        host.get(&host.production_host("blog"), "/db/list"),
        (200, r#"["p1"]"#.to_string()),
        "production's data changed"
    );
    // Review17 #7: the preview's branch is its own again (it ran on production's database at
    // its next start): its record says so and its branch database holds what it wrote.
    assert_eq!(host.deployment("blog", &next)["db_branch"], true);
    let (ok, rows) = nx_testkit::psql(
        &host.path("postgres/socket"),
        5432,
        &format!("nxb_{next}"),
        "SELECT string_agg(v, ',' ORDER BY v) FROM items",
    );
    assert_eq!((ok, rows.trim()), (true, "n1,p1"), "the preview's branch");
}

#[test]
fn a_slow_starter_deploys_with_its_ready_timeout_within_the_hosts_maximum() {
    let host = Host::start();
    let slow = ["-e", "LISTEN_AFTER=20"];
    // The sandbox's default (5 s here; the host's is 60 s in tests, 15 s out of the box)
    // is what a push without --ready-timeout gets: a 20 s warm-up fails it.
    host.nx_json(&["sandbox", "create", "slow"]);
    let set = host.nx_json(&["sandbox", "set", "slow", "--ready-timeout", "5s"]);
    assert_eq!(set["ready_timeout_secs"], 5);
    // Printed for a person: a set value with its unit, an unset one as nxd's default alone.
    let shown = host.nx(&["sandbox", "set", "slow"]).stdout;
    assert!(shown.contains("ready within 5 s"), "{shown}");
    assert!(
        shown.contains("memory nxd's default, cpu nxd's default,"),
        "{shown}"
    );
    let sample = nx_testkit::sample_app();
    let push = |extra: &[&str]| {
        let mut args = vec!["push", sample.to_str().unwrap(), "--sandbox", "slow"];
        args.extend_from_slice(extra);
        let started = Instant::now();
        (host.nx(&args), started.elapsed())
    };
    let (out, took) = push(&slow);
    assert!(!out.ok, "{}", out.stdout);
    assert!(
        out.stderr.contains("within 5 s") && out.stderr.contains("--ready-timeout"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("warming up for 20 s"), "{}", out.stderr);
    assert!(took < Duration::from_secs(15), "took {took:?}");

    // --ready-timeout 30s, over the sandbox's 5 s: deployed once it listens, after 20 s.
    let (out, took) = push(&[&["--ready-timeout", "30s"][..], &slow].concat());
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    assert!(took >= Duration::from_secs(20), "took {took:?}");
    let id = host.nx_json(&["status", "slow"])[0]["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["phase"] == "running")
        .expect("a running deployment")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(host.get(&host.preview_host("slow", &id), "/health").0, 200);

    // Above the host's maximum (sandbox.max_ready_timeout_secs, 600 s by default): refused,
    // naming the field and the bound, whether asked by a push or by the sandbox's settings.
    let (out, _) = push(&["--ready-timeout", "2h"]);
    assert!(
        !out.ok
            && out
                .stderr
                .contains("ready_timeout_secs: 7200 is out of range: give 1 to 600 s"),
        "{}",
        out.stderr
    );
    let out = host.nx(&["sandbox", "set", "slow", "--ready-timeout", "11m"]);
    assert!(
        !out.ok && out.stderr.contains("give 1 to 600 s"),
        "{}",
        out.stderr
    );
}

/// nxd killed while a push waits for its program to listen: nx says that the deployment may
/// exist and how to look (it does: recorded before it was started), once, without the HTTP
/// client's text twice; after nxd's restart it is listed.
#[test]
fn a_push_whose_nxd_dies_while_it_starts_says_the_deployment_may_exist() {
    let mut host = Host::start();
    let push = host.spawn_push_sample("cut", &["-e", "LISTEN_AFTER=30"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let recorded = |host: &Host| {
        let out = host.nx(&["--json", "status", "cut"]);
        out.ok && out.stdout.contains(r#""phase""#)
    };
    while !recorded(&host) {
        assert!(Instant::now() < deadline, "the push made no deployment");
        std::thread::sleep(Duration::from_millis(100));
    }
    host.kill_nxd();
    let out = push.wait_with_output().expect("nx push ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("it may have been made") && stderr.contains("nx status cut"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("error sending request").count(),
        1,
        "{stderr}"
    );
    host.restart_nxd();
    let listed = host.nx_json(&["status", "cut"]);
    assert_eq!(
        listed[0]["deployments"].as_array().unwrap().len(),
        1,
        "{listed}"
    );
}

/// Newcomer20 N2: the embedded systemd manager killed (kill -9) while a push waits for its
/// program: the push answered the manager's D-Bus error alone, and the deployment came up
/// seconds later with nxd's re-adoption, so a user who pushed again got two. The error says
/// that the deployment was made and may come up, and how to look.
#[test]
fn a_push_whose_systemd_manager_is_killed_while_it_starts_says_the_deployment_may_come_up() {
    let host = Host::start();
    let (push, id) = slow_push(&host, "cut", 30);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(host.manager_pid1()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let out = push.wait_with_output().expect("nx push ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("deployment {id} was made and may still come up"))
            && stderr.contains("`nx status cut`"),
        "{stderr}"
    );
}

/// `nx push` of the sample app into `sandbox`, listening only after `listen_after` seconds
/// (60 s to be ready), spawned; returns it with its deployment's id once its unit runs (the
/// sandbox's only deployment but production).
fn slow_push(host: &Host, sandbox: &str, listen_after: u32) -> (std::process::Child, String) {
    let listen_after = format!("LISTEN_AFTER={listen_after}");
    let push = host.spawn_push_sample(sandbox, &["--ready-timeout", "60s", "-e", &listen_after]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let running = |host: &Host| {
        let out = host.nx(&["--json", "status", sandbox]);
        let status: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
        let d = status[0]["deployments"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["state"]["active"] == "active" && d["promoted"] != true)?;
        Some(d["id"].as_str().unwrap().to_owned())
    };
    let id = loop {
        if let Some(id) = running(host) {
            break id;
        }
        assert!(Instant::now() < deadline, "the push started no deployment");
        std::thread::sleep(Duration::from_millis(100));
    };
    (push, id)
}

/// Asserts that `push` failed saying that its deployment `id` was removed while it started.
fn assert_push_says_removed(push: std::process::Child, id: &str) -> String {
    let out = push.wait_with_output().expect("nx push ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("deployment {id} was"))
            && stderr.contains("removed")
            && stderr.contains("while it was starting"),
        "{stderr}"
    );
    assert!(!stderr.contains("exited"), "{stderr}");
    stderr.into_owned()
}

/// Session 7's F7: a push whose deployment `nx rm` removed while it started says so, not that
/// its program "exited before it was ready" (the rm's stop ended it).
#[test]
fn a_push_whose_deployment_is_removed_while_it_starts_says_it_was_removed() {
    let host = Host::start();
    let (push, id) = slow_push(&host, "cut", 30);
    host.nx_json(&["rm", &id]);
    assert_push_says_removed(push, &id);
}

/// Newcomer18 L3: while its push waited for it to be ready, a deployment whose unit runs was
/// listed `running` (README's phases: `starting`); it is `starting` until the push's wait is
/// over, then `running`.
#[test]
fn a_deployment_whose_push_waits_for_it_is_listed_starting() {
    let host = Host::start();
    let (push, id) = slow_push(&host, "warm", 4);
    assert_eq!(host.deployment("warm", &id)["phase"], "starting");
    let listed = host.nx(&["ls"]);
    assert!(
        listed
            .stdout
            .lines()
            .any(|l| l.contains(id.as_str()) && l.contains("starting")),
        "{}",
        listed.stdout
    );
    let out = push.wait_with_output().expect("nx push ends");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(host.deployment("warm", &id)["phase"], "running");
}

/// Sandbox racy's database given a table `held`, locked for `secs` s by a session of a thread
/// of its own (returned; the lock is held when this returns), so that `nx sandbox rm`'s final
/// backup (pg_dump) waits for it.
fn hold_a_table_of_racy(host: &Host, secs: u32) -> std::thread::JoinHandle<(bool, String)> {
    let database = host.nx_json(&["db", "url", "racy"])["database"]
        .as_str()
        .expect("database name")
        .to_owned();
    let socket = host.path("postgres/socket");
    let (ok, out) = nx_testkit::psql(&socket, 5432, &database, "CREATE TABLE held (x int)");
    assert!(ok, "{out}");
    let lock =
        format!("BEGIN; LOCK TABLE held IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep({secs}); COMMIT");
    let held = std::thread::spawn(move || nx_testkit::psql(&socket, 5432, &database, &lock));
    std::thread::sleep(Duration::from_millis(500));
    held
}

/// Newcomer18 L2: `nx sandbox rm` while a push into the sandbox waited for its program to be
/// ready: the removal's final backup (here ~6 s: a table lock holds pg_dump) outlasted that
/// wait, and the push answered `running`, rc 0 and a promote line for a deployment removed a
/// moment later. The removal now ends the pushes under way first: the push says it was
/// removed, by `nx sandbox rm racy`, and to push again should the sandbox stay (review19 #7:
/// it said "`nx rm`, or `nx sandbox rm`", as though the sandbox were gone, where that final
/// backup may fail and leave it).
#[test]
fn sandbox_rm_ends_a_push_under_way_before_its_final_backup() {
    let host = Host::start();
    let production = host.push_sample("racy", &[]);
    host.nx_json(&["promote", "racy", &production]);
    let (push, id) = slow_push(&host, "racy", 2);
    let held = hold_a_table_of_racy(&host, 6);
    let rm = host.nx(&["sandbox", "rm", "racy"]);
    assert!(rm.ok, "{}", rm.stderr);
    held.join().expect("the lock's session");
    let out = assert_push_says_removed(push, &id);
    assert!(
        out.contains("`nx sandbox rm racy` was asked") && out.contains("push again"),
        "{out}"
    );
    assert_eq!(host.nx_json(&["ls"]), serde_json::json!([]));
}

/// A push that lands while `nx sandbox rm` runs (here while its final backup waits on a table
/// lock) is not lost as a unit with no record: the removal is refused naming the new
/// deployment, which stays listed and keeps serving; the same command run again removes it all.
#[test]
fn a_push_during_sandbox_rm_is_refused_and_the_rm_removes_everything() {
    let host = Host::start();
    let first = host.push_sample("racy", &[]);
    // pg_dump waits for this lock: the removal's backup takes ~4 s.
    let held = hold_a_table_of_racy(&host, 4);
    std::thread::scope(|s| {
        let rm = s.spawn(|| host.nx(&["sandbox", "rm", "racy"]));
        std::thread::sleep(Duration::from_millis(1000));
        // The removal is marked before its backup: the push is refused, saying that it is
        // under way (newcomer19 L3: it was told the removal "did not finish").
        let pushed = host.nx(&[
            "push",
            nx_testkit::sample_app().to_str().unwrap(),
            "--sandbox",
            "racy",
        ]);
        assert!(!pushed.ok, "pushed during the removal: {}", pushed.stdout);
        assert!(
            pushed.stderr.contains("sandbox racy is being removed")
                && pushed.stderr.contains("`nx sandbox rm racy` is under way")
                && !pushed.stderr.contains("did not finish"),
            "{}",
            pushed.stderr
        );
        let rm = rm.join().expect("rm");
        assert!(rm.ok, "{}", rm.stderr);
    });
    held.join().expect("the lock's session");
    assert_eq!(host.nx_json(&["ls"]), serde_json::json!([]));
    assert!(!host.path(&format!("deployments/{first}")).exists());
    assert_eq!(
        nx_testkit::files_under(&host.path("deployments")),
        Vec::<String>::new()
    );
}

/// Review21: a push whose sandbox step came before `nx sandbox rm` marked the sandbox, and
/// whose record came after (held 5 s at `push::sandbox`, the removal's final backup held by a
/// table lock meanwhile), was told at its record that the removal "began and did not finish:
/// run `nx sandbox rm`" while it ran (newcomer19 L3's message, which only the sandbox step had
/// stopped giving): it is told that the removal is under way, as a push refused at that step.
#[test]
fn a_push_recorded_once_sandbox_rm_marked_its_sandbox_is_told_the_removal_is_under_way() {
    let mut host = Host::start();
    host.push_sample("racy", &[]);
    host.restart_nxd_with_failpoints("push::sandbox=return(5000)");
    let held = hold_a_table_of_racy(&host, 10);
    let push = host.spawn_push_sample("racy", &[]);
    // The push is at `push::sandbox` (its sandbox step passed) when the removal is marked.
    std::thread::sleep(Duration::from_millis(2000));
    std::thread::scope(|s| {
        let rm = s.spawn(|| host.nx(&["sandbox", "rm", "racy"]));
        let out = push.wait_with_output().expect("nx push ends");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "pushed during the removal: {stderr}");
        assert!(
            stderr.contains("sandbox racy is being removed")
                && stderr.contains("`nx sandbox rm racy` is under way")
                && !stderr.contains("did not finish"),
            "{stderr}"
        );
        let rm = rm.join().expect("rm");
        assert!(rm.ok, "{}", rm.stderr);
    });
    held.join().expect("the lock's session");
    assert_eq!(host.nx_json(&["ls"]), serde_json::json!([]));
}

/// The superuser's one-line answer to `sql` in database `db` of the test host's cluster.
fn superuser(host: &Host, db: &str, sql: &str) -> String {
    let (ok, out) = nx_testkit::psql(&host.path("postgres/socket"), 5432, db, sql);
    assert!(ok, "psql failed: {sql}: {out}");
    out.trim().to_owned()
}

/// Asserts that sandbox `name`, just made again, starts empty: no table in its database, no
/// backup listed (the previous holder's row `v` = 'private' was in `items`).
fn assert_starts_empty(host: &Host, name: &str) {
    assert_eq!(
        host.nx_json(&["db", "backups", name]),
        serde_json::json!([]),
        "the new holder of {name} lists the previous holder's backups"
    );
    let database = host.nx_json(&["db", "url", name])["database"]
        .as_str()
        .expect("database name")
        .to_owned();
    assert_eq!(
        superuser(
            host,
            &database,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        "0",
        "the new holder of {name} reads the previous holder's tables"
    );
}

/// `nx sandbox rm` cut by a crash after the sandbox's deployments went (attacker s12 H5: its
/// records went first, and the next holder of the name adopted its database, role and
/// backups): nxd's next start finishes the removal, and the sandbox made again under the name
/// starts with an empty database and no backups.
#[test]
fn a_sandbox_rm_cut_by_a_crash_is_finished_at_start_and_the_next_holder_gets_nothing() {
    let mut host = Host::start();
    let id = host.push_sample("tenant", &[]);
    assert_eq!(
        host.get(&host.preview_host("tenant", &id), "/db/put?v=private")
            .0,
        200
    );
    let dump = host.path("tenant.dump");
    host.nx_json(&["db", "backup", "tenant", "-o", dump.to_str().unwrap()]);
    let database = host.nx_json(&["db", "url", "tenant"])["database"]
        .as_str()
        .expect("database name")
        .to_owned();
    host.crash_during(
        "sandboxes::removing",
        &["sandbox", "rm", "tenant", "--no-backup"],
    );
    assert_eq!(host.nx_json(&["ls"]), serde_json::json!([]));
    let left = superuser(
        &host,
        "postgres",
        &format!(
            "SELECT (SELECT count(*) FROM pg_roles WHERE rolname = '{database}') + (SELECT count(*) FROM pg_database WHERE datname = '{database}')"
        ),
    );
    assert_eq!(left, "0", "the removed sandbox's role or database is left");
    host.nx_json(&["sandbox", "create", "tenant"]);
    assert_starts_empty(&host, "tenant");
}

/// Attacker s15 L1: a push cut off by a crash after its sandbox was made (and its database)
/// and before its deployment was recorded leaves a sandbox with no deployment. `nx ls` and
/// `nx status` show it, saying how to push to it or remove it (before: `nx ls` had no line
/// for it and `nx status` printed a bare header), and `nx sandbox rm` removes it all.
#[test]
fn a_sandbox_left_empty_by_a_push_cut_off_is_listed_and_removable() {
    let mut host = Host::start();
    let sample = nx_testkit::sample_app();
    host.crash_during(
        "push::sandbox",
        &["push", sample.to_str().unwrap(), "--sandbox", "cut"],
    );
    let database = host.nx_json(&["db", "url", "cut"])["database"]
        .as_str()
        .expect("database name")
        .to_owned();
    let ls = host.nx(&["ls"]);
    let line = ls
        .stdout
        .lines()
        .find(|l| l.starts_with("cut "))
        .unwrap_or_else(|| panic!("not listed: {}{}", ls.stdout, ls.stderr));
    assert!(line.contains("no deployments"), "{}", ls.stdout);
    let status = host.nx(&["status", "cut"]);
    assert!(
        status.ok
            && status.stdout.contains("no deployments")
            && status.stdout.contains("nx push ./app --sandbox cut")
            && status.stdout.contains("nx sandbox rm cut"),
        "{}{}",
        status.stdout,
        status.stderr
    );
    host.nx_json(&["sandbox", "rm", "cut", "--no-backup"]);
    assert!(
        host.nx(&["ls"]).stdout.starts_with("no sandboxes yet"),
        "{}",
        host.nx(&["ls"]).stdout
    );
    let left = superuser(
        &host,
        "postgres",
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{database}'"),
    );
    assert_eq!(left, "0", "the removed sandbox's database is left");
}

/// A database, role and backups left without a sandbox's record (by an nxd from before
/// removals were recorded, or by hand) are not adopted by a sandbox made under the name: they
/// are dropped and the backups set aside.
#[test]
fn a_new_sandbox_never_adopts_a_database_left_without_a_record() {
    let host = Host::start();
    host.nx_json(&["sandbox", "create", "tenant"]);
    let database = host.nx_json(&["db", "url", "tenant"])["database"]
        .as_str()
        .expect("database name")
        .to_owned();
    superuser(
        &host,
        &database,
        "CREATE TABLE items (v text); INSERT INTO items VALUES ('private')",
    );
    let dump = host.path("tenant.dump");
    host.nx_json(&["db", "backup", "tenant", "-o", dump.to_str().unwrap()]);
    superuser(&host, "nx", "DELETE FROM sandboxes WHERE name = 'tenant'");
    host.nx_json(&["sandbox", "create", "tenant"]);
    assert_starts_empty(&host, "tenant");
}

/// `nx logs` shows the control characters a program wrote escaped (an untrusted program may
/// not drive the operator's terminal), tab kept; `--raw` gives them as they are; so does the
/// log tail of the failed push (review s8 #6: it printed them raw). Here the sample app prints
/// a line carrying ESC and CR (`task print`, as its argument: an environment value may not
/// hold control characters) and ends before it is ready.
#[test]
fn nx_logs_escapes_control_characters_and_raw_keeps_them() {
    let host = Host::start();
    let failed = host.nx(&[
        "push",
        nx_testkit::sample_app().to_str().unwrap(),
        "-s",
        "esc",
        "--ready-timeout",
        "40s",
        "--",
        "task",
        "print",
        "cannot listen on \x1b[31mred\x1b[0m\tand\rcarriage",
    ]);
    assert!(!failed.ok, "{}", failed.stdout);
    assert!(
        failed
            .stderr
            .contains("cannot listen on \\x1b[31mred\\x1b[0m\tand\\rcarriage"),
        "{:?}",
        failed.stderr
    );
    assert!(
        !failed.stderr.contains('\x1b') && !failed.stderr.contains('\r'),
        "{:?}",
        failed.stderr
    );
    let id = host.nx_json(&["status", "esc"])[0]["deployments"][0]["id"]
        .as_str()
        .expect("its id")
        .to_owned();
    let shown = host.nx(&["logs", &id]).stdout;
    assert!(
        shown.contains("cannot listen on \\x1b[31mred\\x1b[0m\tand\\rcarriage"),
        "{shown:?}"
    );
    assert!(
        !shown.contains('\x1b') && !shown.contains('\r'),
        "{shown:?}"
    );
    let raw = host.nx(&["logs", "--raw", &id]).stdout;
    assert!(
        raw.contains("cannot listen on \x1b[31mred\x1b[0m\tand\rcarriage"),
        "{raw:?}"
    );
}

/// The links on the test's host side, one a line (`ip -o link show`).
fn host_links(host: &Host) -> String {
    let out = host
        .netns
        .command("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The id of the deployment a push under way in `sandbox` recorded (none of `others`), once
/// `nx status` lists it (within 60 s).
fn recorded_by_push(host: &Host, sandbox: &str, others: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = host.nx(&["--json", "status", sandbox]);
        let status: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
        let recorded = status[0]["deployments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["id"].as_str())
            .find(|id| !others.contains(id));
        if let Some(id) = recorded {
            return id.to_owned();
        }
        assert!(Instant::now() < deadline, "the push recorded no deployment");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts that `verb` (`nx start ID`, `nx stop ID`, `nx promote SANDBOX ID`) is refused for a
/// deployment whose push is under way, saying what to do.
fn assert_refused_while_pushed(host: &Host, verb: &[&str], id: &str) {
    let out = host.nx(verb);
    assert!(
        !out.ok
            && out
                .stderr
                .contains(&format!("deployment {id} is still being pushed"))
            && out.stderr.contains("wait for `nx push` to end")
            && out.stderr.contains(&format!("`nx rm {id}`")),
        "{verb:?}: {} {}",
        out.stdout,
        out.stderr
    );
}

/// Newcomer s17 N9 (high), review17 #2: a push that failed after something had started its
/// deployment (`nx promote --swap-db`, then `nx start`, while its branch was being copied)
/// deleted the deployment's record and so freed its slot, but left its unit running with its
/// link, route and uid: the next push, of another sandbox, got that slot, its readiness was
/// answered by the orphan, and it crash-looped ("routing ... File exists"). Nothing but its
/// push starts a deployment whose push is under way: `nx start` is refused while its push is
/// held before its branch (`push::branching`), whose copy then fails (`push::branched`), at
/// the fail point (not because the start made the branch first); nothing of it runs on, and the
/// next push works in its slot.
#[test]
fn a_push_failing_after_its_deployment_was_started_leaves_nothing_running() {
    let mut host = Host::start();
    host.restart_nxd_with_failpoints("push::branching=return(8000);push::branched=return");
    let push = host.spawn_push_sample("pgb", &["--db-branch"]);
    let id = recorded_by_push(&host, "pgb", &[]);
    assert_refused_while_pushed(&host, &["start", &id], &id);
    let out = push.wait_with_output().expect("nx push ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("push::branched"),
        "{stderr}"
    );
    // Nothing of it runs: no process in its unit's cgroup, no link.
    for root in host.manager_cgroups() {
        let procs = root.join(format!("nx.slice/nx-{id}.service/cgroup.procs"));
        let left = std::fs::read_to_string(&procs).unwrap_or_default();
        assert!(left.trim().is_empty(), "{} holds {left}", procs.display());
    }
    let links = host_links(&host);
    assert!(!links.contains(&format!("nx-{id}")), "{links}");
    // The next push (another sandbox) gets a slot nothing else uses and keeps running.
    let next = host.push_sample("race1", &[]);
    let preview = host.preview_host("race1", &next);
    assert_eq!(host.get(&preview, "/").0, 200);
    std::thread::sleep(Duration::from_secs(3));
    let view = host.deployment("race1", &next);
    assert_eq!(view["state"]["restarts"], 0, "{view}");
    assert_eq!(view["state"]["active"], "active", "{view}");
}

/// Newcomer s17 N5 (its rest): a push during which the router refused nxd's route table (out
/// of open files there) failed after minutes, and its deployment stayed `running` in `nx
/// status` but was never routed: its URL answered 404 for good. Such a push now fails saying
/// what to do, and its deployment is removed as any failed push's is (no unit process, no
/// link, no record); once the router takes tables again, the next push is routed.
#[test]
fn a_push_whose_routes_the_router_refuses_fails_and_leaves_nothing_running() {
    let host = Host::start();
    // The router cannot keep a new table: the name of its temporary file is a directory.
    let blocker = host.path("router/routes.json.tmp");
    std::fs::create_dir_all(blocker.join("held")).unwrap();
    let sample = nx_testkit::sample_app();
    let out = host.nx(&["push", sample.to_str().unwrap(), "--sandbox", "web"]);
    assert!(!out.ok, "the push succeeded: {}", out.stdout);
    let status = host.nx_json(&["status", "web"]);
    let left = &status[0]["deployments"];
    assert_eq!(left.as_array().map_or(0, Vec::len), 0, "{status}");
    assert!(
        out.stderr.contains("the router refused") && out.stderr.contains("push again"),
        "{}",
        out.stderr
    );
    // Nothing of it runs: no deployment's process in nx.slice, no deployment's link.
    for root in host.manager_cgroups() {
        let slice = root.join("nx.slice");
        for unit in std::fs::read_dir(&slice).into_iter().flatten().flatten() {
            let name = unit.file_name().to_string_lossy().into_owned();
            if name.starts_with("nx-d") && name.ends_with(".service") {
                let procs = std::fs::read_to_string(unit.path().join("cgroup.procs"));
                let procs = procs.unwrap_or_default();
                assert!(procs.trim().is_empty(), "{name} holds {procs}");
            }
        }
    }
    let links = host_links(&host);
    assert!(!links.contains(": nx-d"), "{links}");
    std::fs::remove_dir_all(&blocker).unwrap();
    let id = host.push_sample("web", &[]);
    assert_eq!(host.get(&host.preview_host("web", &id), "/").0, 200);
}

/// Newcomer s17 N8 (medium), review17 #2: `nx promote --swap-db` of a deployment whose
/// `--db-branch` push was still copying started it, swapped production's database for the
/// copy in progress, and the push then failed: production ran on a copy nobody had asked for;
/// `nx start` then made the branch itself under the push's copy (dropping it `WITH (FORCE)`
/// when marked), and the push failed 'already exists'. A deployment whose push has not
/// finished is neither promotable, nor started or stopped (409); its push ends as it would
/// have, and then every verb works.
#[test]
fn a_deployment_whose_push_has_not_finished_is_not_promotable() {
    let mut host = Host::start();
    let production = host.push_sample("pgb", &[]);
    host.nx_json(&["promote", "pgb", &production]);
    host.restart_nxd_with_failpoints("push::branching=return(8000)");
    let push = host.spawn_push_sample("pgb", &["--db-branch"]);
    let id = recorded_by_push(&host, "pgb", &[&production]);
    assert_refused_while_pushed(&host, &["start", &id], &id);
    assert_refused_while_pushed(&host, &["stop", &id], &id);
    assert_refused_while_pushed(&host, &["promote", "pgb", &id, "--swap-db"], &id);
    let out = push.wait_with_output().expect("nx push ends");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = host.nx_json(&["status", "pgb"]);
    assert_eq!(status[0]["promoted"], production.as_str(), "{status}");
    // Once pushed, it is stopped, started and promoted as any other.
    host.nx_json(&["stop", &id]);
    host.nx_json(&["start", &id]);
    host.nx_json(&["promote", "pgb", &id, "--swap-db"]);
}

/// Review17 #2: the push entered the set of pushes under way after its record was committed,
/// and a verb in between saw the record but not the push. Held just after its record
/// (`push::recorded`), a push's deployment is already refused to `nx start`, `nx stop` and
/// `nx promote`; the push then serves.
#[test]
fn a_deployment_is_a_push_under_way_from_the_moment_it_is_listed() {
    let mut host = Host::start();
    host.restart_nxd_with_failpoints("push::recorded=return(6000)");
    let push = host.spawn_push_sample("early", &[]);
    let id = recorded_by_push(&host, "early", &[]);
    assert_refused_while_pushed(&host, &["start", &id], &id);
    assert_refused_while_pushed(&host, &["stop", &id], &id);
    assert_refused_while_pushed(&host, &["promote", "early", &id], &id);
    let out = push.wait_with_output().expect("nx push ends");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view = host.deployment("early", &id);
    assert_eq!(view["state"]["restarts"], 0, "{view}");
    assert_eq!(host.get(&host.preview_host("early", &id), "/").0, 200);
}

/// Review17 #2: `nx rm` of a deployment whose `--db-branch` push was still before (or in) its
/// copy removed the record and dropped a branch not made yet; the push then made the branch
/// anyway (left behind, with no deployment) and failed raw. `nx rm` ends the push instead: the
/// push removes its deployment at its next step and says it was removed; `nx rm` answers once
/// it is gone; no record, link or branch database is left, and the next push works.
#[test]
fn nx_rm_of_a_deployment_whose_push_is_under_way_ends_the_push_and_leaves_nothing() {
    let mut host = Host::start();
    let production = host.push_sample("pgb", &[]);
    host.restart_nxd_with_failpoints("push::branching=return(5000)");
    let push = host.spawn_push_sample("pgb", &["--db-branch"]);
    let id = recorded_by_push(&host, "pgb", &[&production]);
    let removed = host.nx(&["rm", &id]);
    assert!(removed.ok, "{} {}", removed.stdout, removed.stderr);
    let out = push.wait_with_output().expect("nx push ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains(&format!("deployment {id} was removed"))
            && stderr.contains("while it was starting"),
        "{} {stderr} (nx rm: {})",
        String::from_utf8_lossy(&out.stdout),
        removed.stdout
    );
    let status = host.nx_json(&["status", "pgb"]);
    let ids: Vec<&str> = status[0]["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(ids, [production.as_str()], "{status}");
    let branches = superuser(
        &host,
        "postgres",
        &format!("SELECT count(*) FROM pg_database WHERE datname = 'nxb_{id}'"),
    );
    assert_eq!(
        branches, "0",
        "the branch of the removed deployment is left"
    );
    let links = host_links(&host);
    assert!(!links.contains(&format!("nx-{id}")), "{links}");
    let next = host.push_sample("pgb", &["--db-branch"]);
    assert_eq!(host.get(&host.preview_host("pgb", &next), "/").0, 200);
}

/// Newcomer18 N2 (medium): after a kill -9 during a `--db-branch` push, the next nxd's
/// adoption made the preview's branch again, and an `nx start` of it meanwhile made it again
/// too: the one dropped the database the other copied into, the start answered raw 'database
/// nxb_<id> already exists' (a promote: pg_restore's 'relation already exists'), and the
/// preview ended running with neither branch database nor role. Here two `nx start`s of a
/// preview whose branch is missing (dropped by hand), both held where they would make it again
/// (`databases::remaking`): starts of one deployment run one at a time, the second finds it
/// running; both answer, and the preview serves production's rows from its branch.
#[test]
fn two_starts_of_a_preview_whose_branch_is_missing_make_it_once() {
    let mut host = Host::start();
    let production = host.push_sample("shop", &[]);
    assert_eq!(
        host.get(&host.preview_host("shop", &production), "/db/put?v=a")
            .0,
        200
    );
    let preview = host.push_sample("shop", &["--db-branch"]);
    host.nx_json(&["stop", &preview]);
    superuser(
        &host,
        "postgres",
        &format!("DROP DATABASE nxb_{preview} WITH (FORCE)"),
    );
    host.restart_nxd_with_failpoints("databases::remaking=return(3000)");
    let started: Vec<nx_testkit::Nx> = std::thread::scope(|s| {
        let starts: Vec<_> = (0..2)
            .map(|_| s.spawn(|| host.nx(&["start", &preview])))
            .collect();
        starts
            .into_iter()
            .map(|start| start.join().expect("nx start"))
            .collect()
    });
    for out in &started {
        assert!(out.ok, "{} {}", out.stdout, out.stderr);
    }
    assert_eq!(
        host.get(&host.preview_host("shop", &preview), "/db/list"),
        (200, r#"["a"]"#.into())
    );
    let view = host.deployment("shop", &preview);
    assert_eq!(view["state"]["active"], "active", "{view}");
}

/// Tester s22 F2: nxd killed while it runs `nx rm ID`, once the deployment is unrouted and
/// before its unit and record go: nx says that the removal may be under way, that nxd finishes
/// it and how to look; nxd's next start finishes it (before: it ran on, listed `stopping`,
/// its preview 404, until `nx rm` again).
#[test]
fn an_rm_cut_by_a_crash_is_finished_at_start() {
    let mut host = Host::start();
    let id = host.push_sample("cut", &[]);
    let out = host.crash_during("deployments::removing", &["rm", &id]);
    assert!(
        out.stderr.contains("the removal may be under way")
            && out.stderr.contains("nxd finishes it")
            && out.stderr.contains("`nx status SANDBOX`"),
        "{}",
        out.stderr
    );
    let status = host.nx_json(&["status", "cut"]);
    assert_eq!(status[0]["deployments"], serde_json::json!([]), "{status}");
    assert!(
        !host.path(&format!("deployments/{id}")).exists(),
        "the removal left its files"
    );
}

/// Tester s22 F2: a deployment being removed whose program still runs is `stopping` in
/// `nx status`, as its JSON phase says (before: `running`).
#[test]
fn a_deployment_being_removed_is_listed_stopping() {
    let mut host = Host::start();
    let id = host.push_sample("cut", &[]);
    host.restart_nxd_with_failpoints("deployments::removing=return(30000)");
    let mut rm = host
        .nx_command(&host.token, &["rm", &id])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nx rm started");
    let deadline = Instant::now() + Duration::from_secs(20);
    while host.deployment("cut", &id)["phase"] != "stopping" {
        assert!(Instant::now() < deadline, "it never was stopping");
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = host.nx(&["status", "cut"]).stdout;
    let line = text
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("stopping") && !line.contains("running"),
        "{text}"
    );
    let _ = rm.kill();
    let _ = rm.wait();
}
