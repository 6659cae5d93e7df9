//! Usage and cost attribution as a user sees it (`nx usage`): a deployment kept busy shows
//! CPU-seconds, requests and bytes out, an idle one next to it close to no CPU; both hold
//! memory; `--since` keeps only what came after it; prices turn amounts into a cost; bad input
//! (`--since garbage`, an age before 1970, a time to come, an unknown sandbox) is refused
//! saying what to give; a sandbox made again under a removed one's name starts with none.

use nx_testkit::metrics::{scrape, value};
use nx_testkit::Host;
use serde_json::Value;
use std::time::{Duration, Instant};

/// The row of deployment `id` in a usage report.
fn of<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["deployments"]
        .as_array()
        .expect("deployments")
        .iter()
        .find(|d| d["deployment"] == id)
        .unwrap_or_else(|| panic!("no usage of {id}: {report}"))
}

fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// `nx usage web [--since since] --json`, until `ok` holds of it (or 30 s pass: panics).
fn usage_until(host: &Host, since: Option<&str>, ok: impl Fn(&Value) -> bool) -> Value {
    let mut args = vec!["usage", "web"];
    args.extend(since.iter().flat_map(|s| ["--since", *s]));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report = host.nx_json(&args);
        if ok(&report) {
            return report;
        }
        assert!(Instant::now() < deadline, "not within 30 s: {report}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn usage_shows_cpu_for_a_busy_deployment_and_near_zero_for_an_idle_one() {
    // A sample every second; CPU at 3.6 per CPU-hour (0.001 per CPU-second), nothing else
    // priced.
    let host = Host::start_with(
        "[usage]\nsample_interval_secs = 1\ncurrency = \"EUR\"\nprice_cpu_hour = 3.6\n",
    );
    let busy = host.push_sample("web", &[]);
    let idle = host.push_sample("web", &[]);
    let preview = host.preview_host("web", &busy);

    // Three seconds of two spinning threads, and a few requests. The spin is bounded by the
    // wall clock, so the CPU it gets depends on the machine's load: the usage must match what
    // the deployment's cgroup counted (nx_deployment_cpu_seconds), whatever that is.
    assert_eq!(host.get(&preview, "/spin?threads=2&secs=3").0, 200);
    for _ in 0..4 {
        assert_eq!(host.get(&preview, "/").0, 200);
    }
    std::thread::sleep(Duration::from_secs(4));
    let series = format!(
        "nx_deployment_cpu_seconds_total{{sandbox=\"web\",deployment=\"{busy}\",backend=\"container\"}}"
    );
    let counted = value(&scrape(&host), &series).expect("the busy deployment's CPU series");
    assert!(counted >= 0.25, "the spin got {counted} CPU-seconds");
    let report = usage_until(&host, None, |r| {
        r["deployments"].as_array().is_some_and(|d| {
            d.iter().any(|d| {
                d["deployment"] == busy
                    && d["cpu_seconds"]
                        .as_f64()
                        .is_some_and(|c| c >= counted * 0.98)
            })
        })
    });
    let (b, i) = (of(&report, &busy), of(&report, &idle));
    assert!(
        number(&b["cpu_seconds"]) <= counted * 1.05,
        "busy: {b}, counted {counted}"
    );
    let quiet = number(&i["cpu_seconds"]);
    assert!(quiet < 0.2 && quiet < counted / 5.0, "idle: {i}");
    assert!(number(&b["requests"]) >= 5.0, "busy: {b}");
    assert!(number(&b["bytes_out"]) > 0.0, "busy: {b}");
    assert_eq!(i["requests"], 0, "idle: {i}");
    for d in [b, i] {
        assert!(number(&d["memory_gib_hours"]) > 0.0, "{d}");
    }
    // The cost is the CPU's alone, and the sandbox's row sums its deployments.
    assert_eq!(report["currency"], "EUR");
    let cost = number(&b["cost"]);
    assert!(
        (cost - number(&b["cpu_seconds"]) * 0.001).abs() < 1e-9,
        "cost {cost}: {b}"
    );
    let web = &report["sandboxes"][0];
    assert_eq!(web["sandbox"], "web");
    let sum = number(&b["cpu_seconds"]) + number(&i["cpu_seconds"]);
    assert!((number(&web["cpu_seconds"]) - sum).abs() < 1e-6, "{report}");

    // The table names both deployments and the cost.
    let table = host.nx(&["usage"]).stdout;
    println!("{table}");
    assert!(
        table.contains(&busy) && table.contains(&idle) && table.contains("EUR"),
        "{table}"
    );

    // --since: after the spin ended, the busy deployment is as quiet as the other; the last
    // hour still holds the spin.
    std::thread::sleep(Duration::from_secs(3));
    let after = host.nx_json(&["usage", "web"])["until"]
        .as_str()
        .unwrap()
        .to_owned();
    let later = usage_until(&host, Some(&after), |r| {
        r["deployments"].as_array().is_some_and(|d| d.len() == 2)
    });
    assert!(
        number(&of(&later, &busy)["cpu_seconds"]) < 0.2,
        "since {after}: {later}"
    );
    let hour = host.nx_json(&["usage", "web", "--since", "1h"]);
    assert!(
        number(&of(&hour, &busy)["cpu_seconds"]) >= counted * 0.98,
        "{hour}"
    );

    // Bad input is refused, saying what to give.
    let garbage = host.nx(&["usage", "--since", "garbage"]);
    assert!(!garbage.ok);
    assert!(
        garbage.stderr.contains("--since \"garbage\"") && garbage.stderr.contains("10m"),
        "{}",
        garbage.stderr
    );
    // An age past 1970, or past what the clock can subtract, is refused (it once panicked
    // the CLI), by `nx usage` and `nx logs` alike.
    for args in [
        vec!["usage", "--since", "100y"],
        vec!["usage", "--since", "584000000000y"],
        vec!["logs", busy.as_str(), "--since", "60y"],
    ] {
        let out = host.nx(&args);
        assert!(
            !out.ok && out.code == Some(1) && out.stderr.contains("before 1970"),
            "nx {args:?}: {:?} {}",
            out.code,
            out.stderr
        );
    }
    let api = |query: &str| {
        let resp = host
            .http()
            .get(format!("http://{}/v1/usage{query}", host.api))
            .bearer_auth(&host.token)
            .send()
            .unwrap();
        (resp.status().as_u16(), resp.text().unwrap())
    };
    let (code, body) = api("?since=garbage");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("RFC 3339"), "{body}");
    let (code, body) = api("?since=2999-01-01T00:00:00Z");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("after now"), "{body}");
    let unknown = host.nx(&["usage", "nosuch"]);
    assert!(
        !unknown.ok && unknown.stderr.contains("no sandbox nosuch"),
        "{}",
        unknown.stderr
    );
}

/// Attacker s8 F4: a sandbox made again under a removed one's name does not inherit its usage
/// (the samples are kept by name): its report starts empty, then holds its own deployments.
#[test]
fn a_sandbox_made_again_under_a_removed_name_starts_with_no_usage() {
    let host = Host::start_with("[usage]\nsample_interval_secs = 1\n");
    let old = host.push_sample("web", &[]);
    assert_eq!(host.get(&host.preview_host("web", &old), "/").0, 200);
    usage_until(&host, None, |r| {
        r["deployments"].as_array().is_some_and(|d| {
            d.iter()
                .any(|d| d["deployment"] == old && d["requests"] == 1)
        })
    });
    assert!(host.nx(&["sandbox", "rm", "web", "--no-backup"]).ok);
    host.nx_json(&["sandbox", "create", "web"]);
    let report = host.nx_json(&["usage", "web"]);
    assert_eq!(report["deployments"], serde_json::json!([]), "{report}");
    assert_eq!(report["total"]["requests"], 0, "{report}");
    let new = host.push_sample("web", &[]);
    let report = usage_until(&host, None, |r| {
        r["deployments"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["deployment"] == new))
    });
    assert!(
        report["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["deployment"] != old),
        "{report}"
    );
}
