//! Push, preview, promote, a second push, rollback, an nxd restart: on real bubblewrap, a real
//! systemd manager over D-Bus and a real PostgreSQL.

use nx_testkit::Host;
use std::time::{Duration, Instant};

fn ids_and_states(ls: &serde_json::Value) -> Vec<(String, String, String, bool)> {
    ls.as_array()
        .expect("sandbox list")
        .iter()
        .flat_map(|s| s["deployments"].as_array().expect("deployments").clone())
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_owned(),
                d["state"]["active"].as_str().unwrap().to_owned(),
                d["preview_url"].as_str().unwrap().to_owned(),
                d["promoted"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn push_promote_rollback_and_restart() {
    let mut host = Host::start();
    let v1 = host.push_sample("web", &["--env", "APP_VERSION=v1"]);
    let (status, body) = host.get(&host.preview_host("web", &v1), "/");
    assert_eq!(
        (status, body.as_str()),
        (200, format!("nx-sample v1 deployment={v1}\n").as_str())
    );

    // Nothing is promoted yet: production is a clear 404.
    let (status, body) = host.get(&host.production_host("web"), "/");
    assert_eq!(status, 404);
    assert!(body.contains("nx promote"), "{body}");

    host.nx_json(&["promote", "web", &v1]);
    assert_eq!(
        host.get(&host.production_host("web"), "/").1,
        format!("nx-sample v1 deployment={v1}\n")
    );

    // The same binary again: nothing is uploaded, a new deployment runs beside the first.
    let sample = nx_testkit::sample_app();
    let out = host.nx_json(&[
        "push",
        sample.to_str().unwrap(),
        "--sandbox",
        "web",
        "-e",
        "APP_VERSION=v2",
    ]);
    assert_eq!(out["uploaded"], false, "the artifact was stored already");
    let v2 = out["deployment"]["id"].as_str().unwrap().to_owned();
    assert_ne!(v1, v2);
    assert_eq!(
        host.get(&host.preview_host("web", &v2), "/").1,
        format!("nx-sample v2 deployment={v2}\n")
    );
    assert_eq!(
        host.get(&host.production_host("web"), "/").1,
        format!("nx-sample v1 deployment={v1}\n")
    );

    host.nx_json(&["promote", "web", &v2]);
    assert!(host.get(&host.production_host("web"), "/").1.contains("v2"));
    let back = host.nx_json(&["rollback", "web"]);
    assert_eq!(back["promoted"], v1.as_str());
    assert!(host.get(&host.production_host("web"), "/").1.contains("v1"));
    // Nothing earlier than v1 to roll back to.
    let out = host.nx(&["rollback", "web"]);
    assert!(
        !out.ok && out.stderr.contains("no earlier promotion"),
        "{}",
        out.stderr
    );

    // Logs come from the unit's output.
    let logs = host.nx(&["logs", &v1]);
    assert!(
        logs.ok && logs.stdout.contains("nx-sample listening"),
        "{}{}",
        logs.stdout,
        logs.stderr
    );

    let before = ids_and_states(&host.nx_json(&["ls"]));
    let pids_before = host.nx_json(&["status", "web"]);
    host.restart_nxd();
    let after = ids_and_states(&host.nx_json(&["ls"]));
    assert_eq!(before, after, "nx ls changed across an nxd restart");
    let pids_after = host.nx_json(&["status", "web"]);
    for (b, a) in pids_before[0]["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .zip(pids_after[0]["deployments"].as_array().unwrap())
    {
        assert_eq!(
            b["state"]["main_pid"], a["state"]["main_pid"],
            "deployments were adopted, not restarted"
        );
    }
    assert!(host.get(&host.production_host("web"), "/").1.contains("v1"));
    assert!(host
        .get(&host.preview_host("web", &v2), "/")
        .1
        .contains("v2"));

    // Stop, start, remove.
    let out = host.nx(&["stop", &v1]);
    assert!(
        !out.ok && out.stderr.contains("serves production"),
        "the promoted deployment is protected: {}",
        out.stderr
    );
    host.nx_json(&["stop", &v2]);
    assert_eq!(host.get(&host.preview_host("web", &v2), "/").0, 404);
    host.nx_json(&["start", &v2]);
    assert!(host
        .get(&host.preview_host("web", &v2), "/")
        .1
        .contains("v2"));
    host.nx_json(&["rm", &v2]);
    assert_eq!(host.get(&host.preview_host("web", &v2), "/").0, 404);
    assert!(
        !host.path(&format!("deployments/{v2}")).exists(),
        "rm leaves no files"
    );
    assert_eq!(ids_and_states(&host.nx_json(&["ls"])).len(), 1);
}

#[test]
fn a_program_that_never_listens_fails_with_its_last_log_lines() {
    let host = Host::start();
    let sample = nx_testkit::sample_app();
    // An address its network namespace does not have: it cannot listen and exits at once.
    let out = host.nx(&[
        "push",
        sample.to_str().unwrap(),
        "--sandbox",
        "broken",
        "-e",
        "HOST=192.0.2.1",
    ]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("exited before it was ready"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("cannot listen on 192.0.2.1:"),
        "log tail shown: {}",
        out.stderr
    );
    let started = Instant::now();
    let ls = host.nx_json(&["ls"]);
    assert_eq!(ls[0]["deployments"][0]["desired"], "stopped");
    assert!(started.elapsed() < Duration::from_secs(5));
}
