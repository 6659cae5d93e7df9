//! What nxd does to deployments on its own, as a user sees it: a deployment that fails its
//! health check the threshold's number of times in a row is restarted (counted, noted in `nx
//! logs`) and healthy again; a preview with no request for its sandbox's time to live is
//! removed unless pinned, production never; a deployment with no request for its idle timeout
//! is stopped (`idle` in `nx ls`), and the next request, or 20 at once, start it again and
//! all get 200; nothing stops a deployment for idleness before it is ready, and its idle clock
//! starts when it is; a production whose wake fails answers 503 with `Retry-After`, and is
//! tried again after a back-off; a start that waited for an expiry runs nothing of the removed
//! preview, and `nx stop` during a wake stands.

use nx_testkit::metrics::{scrape, value, wait_for};
use nx_testkit::Host;
use std::time::{Duration, Instant};

/// Waits until `ok` holds (or `within` passes: then panics saying `what`).
fn eventually(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ids(host: &Host, sandbox: &str) -> Vec<String> {
    host.nx_json(&["status", sandbox])[0]["deployments"]
        .as_array()
        .expect("deployments")
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_failing_health_check_restarts_the_deployment_after_the_threshold() {
    let host = Host::start();
    let sample = nx_testkit::sample_app();
    let pushed = host.nx_json(&[
        "push",
        sample.to_str().expect("utf-8 path"),
        "--sandbox",
        "web",
        "--health-path",
        "/health",
        "--health-interval",
        "1s",
        "--health-timeout",
        "1s",
        "--health-threshold",
        "3",
    ]);
    let id = pushed["deployment"]["id"].as_str().expect("id").to_owned();
    let preview = host.preview_host("web", &id);
    // The push's own answer (its view's rows read while it started) and `nx status` show it.
    for shown in [
        pushed["deployment"]["health_check"].clone(),
        host.deployment("web", &id)["health_check"].clone(),
    ] {
        assert_eq!(shown["path"], "/health", "{shown}");
        assert_eq!(shown["failure_threshold"], 3, "{shown}");
    }
    let labels = format!("{{sandbox=\"web\",deployment=\"{id}\",backend=\"container\"}}");
    let restarts = format!("nx_health_check_restarts_total{labels}");
    let failures = format!("nx_health_check_failures_total{labels}");

    // Healthy: nothing restarts.
    std::thread::sleep(Duration::from_secs(4));
    let text = scrape(&host);
    assert_eq!(value(&text, &restarts).unwrap_or(0.0), 0.0, "{text}");

    assert_eq!(host.get(&preview, "/sick").0, 200);
    assert_eq!(host.get(&preview, "/health").0, 500);
    let text = wait_for(&host, &restarts, Duration::from_secs(30), |v| v == 1.0);
    assert!(value(&text, &failures).unwrap() >= 3.0, "{text}");

    // The restarted program is healthy again, and stays so.
    eventually("healthy after the restart", Duration::from_secs(30), || {
        host.get(&preview, "/health").0 == 200
    });
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(value(&scrape(&host), &restarts), Some(1.0));
    assert_eq!(host.get(&preview, "/health").0, 200);
    let logs = host.nx(&["logs", &id]);
    assert!(
        logs.stdout.contains(
            "health check GET /health failed 3 times in a row (last: status 500): restarting"
        ),
        "{}",
        logs.stdout
    );
}

#[test]
fn an_expired_preview_is_removed_a_pinned_one_and_production_stay() {
    let host = Host::start();
    let production = host.push_sample("web", &[]);
    let pinned = host.push_sample("web", &[]);
    let expiring = host.push_sample("web", &[]);
    host.nx_json(&["promote", "web", &production, "--keep-db"]);
    let view = host.nx_json(&["pin", &pinned]);
    assert_eq!(view["pinned"], true, "{view}");
    // A request now: the time to live counts from it.
    assert_eq!(host.get(&host.preview_host("web", &expiring), "/").0, 200);
    eventually("the request is recorded", Duration::from_secs(10), || {
        !host.deployment("web", &expiring)["last_request_at"].is_null()
    });

    // A time to live past chrono's range once panicked the upkeep loop of every sandbox.
    let far = host.nx(&["sandbox", "set", "web", "--preview-ttl", "300000000y"]);
    assert!(
        !far.ok && far.stderr.contains("more than 100 years"),
        "{} {}",
        far.stdout,
        far.stderr
    );
    host.nx_json(&["sandbox", "set", "web", "--preview-ttl", "3s"]);
    eventually(
        "the unpinned preview expires",
        Duration::from_secs(30),
        || !ids(&host, "web").contains(&expiring),
    );
    // Well past the time to live: production and the pinned preview stay.
    std::thread::sleep(Duration::from_secs(4));
    let left = ids(&host, "web");
    assert!(
        left.contains(&production) && left.contains(&pinned),
        "{left:?}"
    );
    assert_eq!(host.get(&host.production_host("web"), "/").0, 200);
    let text = scrape(&host);
    assert_eq!(
        value(&text, "nx_previews_expired_total{sandbox=\"web\"}"),
        Some(1.0),
        "{text}"
    );

    // Unpinned, it expires too.
    host.nx_json(&["unpin", &pinned]);
    eventually(
        "the unpinned preview expires",
        Duration::from_secs(30),
        || !ids(&host, "web").contains(&pinned),
    );
    assert_eq!(ids(&host, "web"), [production]);
}

#[test]
fn an_idle_deployment_is_stopped_and_woken_by_requests() {
    // The sample app's server (tiny_http 0.12) serves each connection on a thread of its own,
    // from a pool of 4 that grows only while no thread waits: the router's pooled keep-alive
    // connections hold those 4, and a burst of new connections to a freshly started sample
    // waits until they close (router.idle_timeout_secs, 60 s by default). Closing idle
    // connections after 1 s lets the burst through.
    let host = Host::start_with("[router]\nidle_timeout_secs = 1\n");
    let id = host.push_sample("web", &["--idle-timeout", "2s"]);
    let preview = host.preview_host("web", &id);
    let labels = format!("{{sandbox=\"web\",deployment=\"{id}\",backend=\"container\"}}");
    let is_idle = || {
        let d = host.deployment("web", &id);
        d["phase"] == "idle" && d["state"]["active"] != "active"
    };
    eventually("idle", Duration::from_secs(30), is_idle);
    let ls = host.nx(&["ls"]).stdout;
    assert!(
        ls.lines().any(|l| l.contains(&id) && l.contains(" idle ")),
        "{ls}"
    );

    // One request wakes it and gets its answer.
    let (code, body) = host.get(&preview, "/");
    assert_eq!(code, 200, "{body}");
    assert_eq!(host.deployment("web", &id)["phase"], "running");

    // Idle again; 20 requests at once share one start and all get 200.
    eventually("idle again", Duration::from_secs(30), is_idle);
    let client = host.http().clone();
    let url = format!("http://{}/", host.router);
    let answers: Vec<u16> = std::thread::scope(|s| {
        let requests: Vec<_> = (0..20)
            .map(|_| {
                let (client, url, preview) = (client.clone(), url.clone(), preview.clone());
                s.spawn(move || {
                    client
                        .get(url)
                        .header("Host", preview)
                        .send()
                        .map_or(0, |r| r.status().as_u16())
                })
            })
            .collect();
        requests.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(answers, [200; 20]);
    let text = scrape(&host);
    assert_eq!(
        value(&text, &format!("nx_wakes_total{labels}")),
        Some(2.0),
        "{text}"
    );
    assert!(value(&text, &format!("nx_idle_stops_total{labels}")).unwrap() >= 2.0);
    // Each wake that started it was timed, in all and step by step (the 20 shared one).
    assert_eq!(
        value(&text, "nx_wake_duration_seconds_count"),
        Some(2.0),
        "{text}"
    );
    for step in ["record", "phase", "prepare", "start", "ready"] {
        assert_eq!(
            value(
                &text,
                &format!("nx_wake_step_duration_seconds_count{{step=\"{step}\"}}")
            ),
            Some(2.0),
            "{step}: {text}"
        );
    }
}

#[test]
fn a_slow_starter_is_not_stopped_for_idleness_before_it_is_ready() {
    let host = Host::start();
    // It warms up for 6 s, twice its idle timeout: its push waits for it meanwhile, and no
    // idle stop may cut that short (before, upkeep stopped it and the push failed with
    // "exited before it was ready (exit status 0)").
    let id = host.push_sample(
        "slow",
        &[
            "--idle-timeout",
            "3s",
            "--ready-timeout",
            "60s",
            "-e",
            "LISTEN_AFTER=6",
        ],
    );
    let pushed = Instant::now();
    let d = host.deployment("slow", &id);
    assert_eq!(d["phase"], "running", "{d}");
    // Its idle clock started when it became ready, just before its push answered: it goes
    // idle 3 s after that (upkeep looks once a second), not at once for having started more
    // than 3 s ago.
    let is_idle = || host.deployment("slow", &id)["phase"] == "idle";
    eventually("idle", Duration::from_secs(30), is_idle);
    let idle_after = pushed.elapsed();
    assert!(
        idle_after >= Duration::from_millis(1500),
        "idle {idle_after:?} after its push answered"
    );
    let (code, body) = host.get(&host.preview_host("slow", &id), "/");
    assert_eq!(code, 200, "{body}");
}

/// Attacker s8 F5: a preview with an open WebSocket (a request the router has under way) is
/// not removed under it when its time to live passes; it expires once the WebSocket closed.
#[test]
fn a_preview_with_an_open_websocket_expires_only_once_it_closes() {
    use tungstenite::client::IntoClientRequest;
    let host = Host::start();
    let preview = host.push_sample("web", &[]);
    let url = format!("ws://{}/ws", host.preview_host("web", &preview));
    let tcp = std::net::TcpStream::connect(host.router).expect("the router");
    let (mut ws, _) =
        tungstenite::client(url.into_client_request().unwrap(), tcp).expect("a WebSocket");
    host.nx_json(&["sandbox", "set", "web", "--preview-ttl", "2s"]);
    // Well past its time to live the preview stays, and the WebSocket still echoes.
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        ids(&host, "web").contains(&preview),
        "removed under its open WebSocket:\n{}",
        host.nxd_log()
    );
    let text = tungstenite::Message::text("still here");
    ws.send(text.clone()).expect("send");
    assert_eq!(ws.read().expect("the echo"), text);
    ws.close(None).expect("close");
    while ws.read().is_ok() {}
    eventually(
        "the preview expires once its WebSocket closed",
        Duration::from_secs(30),
        || !ids(&host, "web").contains(&preview),
    );
}

#[test]
fn a_previews_time_to_live_is_not_started_again_by_an_nxd_restart() {
    let mut host = Host::start();
    let never_requested = host.push_sample("web", &[]);
    host.nx_json(&["sandbox", "set", "web", "--preview-ttl", "30s"]);
    // nxd is away past the preview's time to live: what counts is its creation, which the
    // state database holds, not the start of the nxd that comes back.
    host.stop_nxd();
    std::thread::sleep(Duration::from_secs(31));
    host.start_nxd();
    eventually(
        "the preview expires well before 30 s after nxd's start",
        Duration::from_secs(15),
        || !ids(&host, "web").contains(&never_requested),
    );
}

/// An expired preview whose removal fails (here conntrack, by the fail point
/// `network::conntrack`) is tried again after 2 s, then 4 s, 8 s...: not every second; once
/// removal works again (nxd restarted without the fail point) it goes. Read from the times of
/// nxd's own lines, so the machine's load moves nothing but how late a try may come.
#[test]
fn a_failed_expiry_is_tried_again_later_and_later() {
    let mut host = Host::start();
    let preview = host.push_sample("web", &[]);
    host.restart_nxd_with_failpoints("network::conntrack=return");
    let failures = |host: &Host| failed_removals(&host.nxd_log());
    let before = failures(&host).len();
    host.nx_json(&["sandbox", "set", "web", "--preview-ttl", "1s"]);
    eventually("three failed removals", Duration::from_secs(60), || {
        failures(&host).len() >= before + 3
    });
    let tries = failures(&host).split_off(before);
    for (n, pair) in tries.windows(2).enumerate() {
        let ((at, wait), (next, _)) = (pair[0], pair[1]);
        assert_eq!(wait, 2 << n, "try {n} of {tries:?}");
        assert!(
            next - at >= chrono::TimeDelta::seconds(i64::try_from(wait).unwrap()),
            "tried again {} ms after a failure that said {wait} s: {tries:?}",
            (next - at).num_milliseconds()
        );
    }
    assert!(ids(&host, "web").contains(&preview));
    host.restart_nxd();
    eventually(
        "the preview expires once it can be removed",
        Duration::from_secs(30),
        || !ids(&host, "web").contains(&preview),
    );
}

/// nxd's "could not remove the expired preview" lines in `log`: when, and the wait each
/// announced (`retry_in_secs`), in order. Colours (ANSI escapes) are left out first.
fn failed_removals(log: &str) -> Vec<(chrono::DateTime<chrono::FixedOffset>, u64)> {
    let plain = |line: &str| {
        let mut out = String::with_capacity(line.len());
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                chars.by_ref().find(|c| c.is_ascii_alphabetic());
            } else {
                out.push(c);
            }
        }
        out
    };
    log.lines()
        .filter(|l| l.contains("could not remove the expired preview"))
        .map(|l| {
            let line = plain(l);
            let at = line.split_whitespace().next().unwrap_or_default();
            let at = chrono::DateTime::parse_from_rfc3339(at)
                .unwrap_or_else(|e| panic!("no time at the start of {line:?}: {e}"));
            let wait = line
                .split_once("retry_in_secs=")
                .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("no retry_in_secs in {line:?}"));
            (at, wait)
        })
        .collect()
}

/// Expiry and a start exclude each other as an idle stop and a start do: a preview whose
/// expiry was decided (held there by the fail point `upkeep::expire`) while `nx start` of it
/// began is not removed under that start: the start succeeds, and the preview goes only
/// afterwards (still expired: no request since its creation).
#[test]
fn an_expiry_decided_while_a_start_begins_waits_for_the_start() {
    let mut host = Host::start();
    // It listens 16 s after it starts: its start is under way that long. The expiry waits 8 s
    // at the fail point (without blocking a thread of nxd's: `failpoint::wait`), and `nx start`
    // reaches the start gate well within that.
    let preview = host.push_sample("web", &["-e", "LISTEN_AFTER=16", "--ready-timeout", "60s"]);
    host.nx_json(&["stop", &preview]);
    host.restart_nxd_with_failpoints("upkeep::expire=return(8000)");
    let decided = |host: &Host| host.nxd_log().matches("preview expired").count();
    let before = decided(&host);
    host.nx_json(&["sandbox", "set", "web", "--preview-ttl", "1s"]);
    eventually("its expiry is decided", Duration::from_secs(30), || {
        decided(&host) > before
    });
    let asked = Instant::now();
    let started = host.nx(&["start", &preview]);
    assert!(
        started.ok,
        "nx start (answered after {:?}): {} {}\n{}",
        asked.elapsed(),
        started.stdout,
        started.stderr,
        host.nxd_log()
    );
    assert!(host
        .nxd_log()
        .contains("a start of it is under way: it stays"));
    eventually(
        "the preview expires after its start",
        Duration::from_secs(60),
        || !ids(&host, "web").contains(&preview),
    );
}

/// Review s8 #2: a start that waited for an expiry's removal (held there by the fail point
/// `upkeep::removing`, the start gate taken) does not run the removed deployment: `nx start`
/// says it is gone, and no unit of it runs afterwards (before, the start ran it from its stale
/// record: a unit no `nx` verb could reach).
#[test]
fn a_start_that_waited_for_an_expiry_does_not_run_the_removed_preview() {
    let mut host = Host::start();
    let preview = host.push_sample("web", &[]);
    host.nx_json(&["stop", &preview]);
    host.restart_nxd_with_failpoints("upkeep::removing=return(6000)");
    let holding = |host: &Host| {
        host.nxd_log()
            .lines()
            .any(|l| l.contains("fail point: waiting") && l.contains("upkeep::removing"))
    };
    host.nx_json(&["sandbox", "set", "web", "--preview-ttl", "1s"]);
    eventually(
        "its removal holds the gate",
        Duration::from_secs(30),
        || holding(&host),
    );
    let started = host.nx(&["start", &preview]);
    assert!(
        !started.ok && started.stderr.contains(&preview),
        "{} {}\n{}",
        started.stdout,
        started.stderr,
        host.nxd_log()
    );
    assert!(!ids(&host, "web").contains(&preview));
    // Nothing of it runs: its unit's cgroup is gone or empty in every hierarchy.
    std::thread::sleep(Duration::from_secs(2));
    for root in host.manager_cgroups() {
        let procs = root.join(format!("nx.slice/nx-{preview}.service/cgroup.procs"));
        let left = std::fs::read_to_string(&procs).unwrap_or_default();
        assert!(left.trim().is_empty(), "{} holds {left}", procs.display());
    }
}

/// Review s8 #3: `nx stop` of a deployment while a request wakes it (a slow starter: the stop
/// ends it before it is ready, so the wake fails) stays stopped; before, the failed wake put
/// it back to idle and the next request started it again.
#[test]
fn a_stop_during_a_wake_is_not_undone_by_the_failed_wake() {
    let host = Host::start_with("[router]\nidle_timeout_secs = 1\n");
    let id = host.push_sample(
        "web",
        &[
            "--idle-timeout",
            "2s",
            "--ready-timeout",
            "60s",
            "-e",
            "LISTEN_AFTER=8",
        ],
    );
    let phase = || host.deployment("web", &id)["phase"].clone();
    eventually("idle", Duration::from_secs(30), || phase() == "idle");
    let preview = host.preview_host("web", &id);
    std::thread::scope(|s| {
        let woken = s.spawn(|| host.get(&preview, "/"));
        // Its unit runs (the program warms up): the stop ends it before it is ready.
        eventually("the wake starts it", Duration::from_secs(30), || {
            host.deployment("web", &id)["state"]["active"] == "active"
        });
        let stopped = host.nx(&["stop", &id]);
        assert!(stopped.ok, "{} {}", stopped.stdout, stopped.stderr);
        let (code, body) = woken.join().unwrap();
        assert_ne!(code, 200, "{body}");
    });
    // The wake has answered: what the user asked stands.
    assert_eq!(phase(), "stopped", "{}", host.nxd_log());
    std::thread::sleep(Duration::from_secs(3));
    let (code, body) = host.get(&preview, "/");
    assert_ne!(code, 200, "a request started it again: {body}");
    assert_eq!(phase(), "stopped");
}

/// Attacker s7 F9: production whose wake failed answered 404 "no deployment answers ... once a
/// deployment is promoted" for ever after. Now it stays idle and routed: its URL (and its
/// preview's) answers 503 with `Retry-After`, saying what is down and nothing for operators;
/// no start is tried before the back-off passed, and one is after it.
#[test]
fn a_production_whose_wake_fails_answers_503_with_retry_after_and_is_tried_again_later() {
    let host = Host::start_with("[router]\nidle_timeout_secs = 1\n");
    host.nx_json(&["sandbox", "create", "once"]);
    host.nx_json(&[
        "sandbox",
        "set",
        "once",
        "--idle-production",
        "true",
        "--idle-timeout",
        "2s",
    ]);
    let id = host.push_sample("once", &["-e", "FAIL_AT_START_IF=/data/broken"]);
    host.nx_json(&["promote", "once", &id]);
    let (production, preview) = (host.production_host("once"), host.preview_host("once", &id));
    // It serves once; from its next start on it fails at start.
    assert_eq!(host.get(&production, "/write?name=broken").0, 200);
    eventually("idle", Duration::from_secs(30), || {
        host.deployment("once", &id)["phase"] == "idle"
    });
    let failed_starts = || {
        host.nx(&["logs", &id])
            .stdout
            .matches("failing at start")
            .count()
    };
    let get = |name: &str| {
        let r = host
            .http()
            .get(format!("http://{}/", host.router))
            .header("Host", name)
            .send()
            .unwrap();
        let retry_after = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        (r.status().as_u16(), retry_after, r.text().unwrap())
    };

    // The wake fails: 503, Retry-After, what is down; no operator hints for visitors.
    let (status, retry_after, body) = get(&production);
    assert_eq!(status, 503, "{body}");
    assert!(
        retry_after.is_some_and(|s| (1..=2).contains(&s)),
        "{retry_after:?}"
    );
    assert!(body.contains("production of once is down"), "{body}");
    assert!(
        !body.contains("nx "),
        "operator hints in a visitor's page: {body}"
    );
    assert_eq!(failed_starts(), 1);
    // At once again, and on its preview URL: 503 (not 404), and no second start.
    let (status, _, body) = get(&production);
    assert_eq!(status, 503, "{body}");
    let (status, retry_after, body) = get(&preview);
    assert_eq!(status, 503, "{body}");
    assert!(retry_after.is_some(), "{body}");
    assert!(
        body.contains(&format!("deployment {id} of once is down")),
        "{body}"
    );
    assert_eq!(host.deployment("once", &id)["phase"], "idle");
    assert_eq!(failed_starts(), 1, "started again within its back-off");

    // After the back-off the next request tries again, and the wait doubles.
    std::thread::sleep(Duration::from_secs(3));
    let (status, retry_after, body) = get(&production);
    assert_eq!(status, 503, "{body}");
    assert!(
        retry_after.is_some_and(|s| (3..=4).contains(&s)),
        "{retry_after:?}"
    );
    assert_eq!(failed_starts(), 2);
}
