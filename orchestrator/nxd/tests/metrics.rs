//! `GET /metrics`: nxd's and the router's series in the Prometheus text format, with the right
//! labels, moving as a user would check them: requests counted per status code, CPU and memory
//! of a running deployment, a restart after a forced crash, pushes counted; root token only on
//! the API, no token on `metrics_listen`.

use nx_testkit::metrics::value;
use nx_testkit::Host;
use std::time::Duration;

/// Scrapes until `series` has a value that `want` accepts (or 30 s pass).
fn wait_for(host: &Host, series: &str, want: impl Fn(f64) -> bool) -> String {
    nx_testkit::metrics::wait_for(host, series, Duration::from_secs(30), want)
}

#[test]
fn series_appear_with_their_labels_and_move() {
    let mut host = Host::start();
    let id = host.push_sample("web", &[]);
    let preview = host.preview_host("web", &id);
    let labels = format!("sandbox=\"web\",deployment=\"{id}\"");
    let unit = format!("{labels},backend=\"container\"");

    for _ in 0..3 {
        assert_eq!(host.get(&preview, "/").0, 200);
    }
    assert_eq!(host.get(&preview, "/read?path=/nonexistent").0, 404);

    // A unit's memory and task counts may be served up to 1 s old (supervisor::unit_states::
    // COUNTERS_MAX_AGE): the first scrape can still hold the count from the unit's start.
    let text = wait_for(&host, &format!("nx_deployment_tasks{{{unit}}}"), |v| {
        v >= 2.0
    });
    let get = |series: &str| value(&text, series).unwrap_or_else(|| panic!("no {series}:\n{text}"));
    assert_eq!(get(&format!("nx_deployment_up{{{unit}}}")), 1.0);
    let cpu = get(&format!("nx_deployment_cpu_seconds_total{{{unit}}}"));
    assert!(get(&format!("nx_deployment_memory_bytes{{{unit}}}")) > 100_000.0);
    assert_eq!(get(&format!("nx_deployment_restarts_total{{{unit}}}")), 0.0);
    assert!(get("nx_sandbox_database_size_bytes{sandbox=\"web\"}") > 1_000_000.0);
    assert_eq!(
        get("nx_operations_total{operation=\"push\",outcome=\"ok\"}"),
        1.0
    );
    assert_eq!(
        get("nx_operation_duration_seconds_count{operation=\"push\"}"),
        1.0
    );
    assert_eq!(get("nx_router_up"), 1.0);
    assert_eq!(
        get(&format!(
            "nx_router_requests_total{{{labels},code=\"200\"}}"
        )),
        3.0
    );
    assert_eq!(
        get(&format!(
            "nx_router_requests_total{{{labels},code=\"404\"}}"
        )),
        1.0
    );
    assert_eq!(
        get(&format!(
            "nx_router_request_duration_seconds_count{{{labels}}}"
        )),
        4.0
    );
    assert!(get(&format!("nx_router_sent_bytes_total{{{labels}}}")) > 50.0);
    assert!(
        text.contains("# TYPE nx_router_open_connections gauge"),
        "{text}"
    );
    assert!(
        text.contains("nx_tasks_started_total{start=\"warm\"} 0"),
        "{text}"
    );

    // Busy: its CPU time moves.
    host.get(&preview, "/spin?threads=1&secs=3");
    wait_for(
        &host,
        &format!("nx_deployment_cpu_seconds_total{{{unit}}}"),
        |v| v > cpu + 0.3,
    );

    // A forced crash: systemd restarts it, and the count moves.
    host.get(&preview, "/exit?code=3");
    wait_for(
        &host,
        &format!("nx_deployment_restarts_total{{{unit}}}"),
        |v| v == 1.0,
    );

    // A deploy token may not read every sandbox's series.
    let token = host.nx_json(&["token", "create", "--can", "push,logs"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let denied = host
        .http()
        .get(format!("http://{}/metrics", host.api))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(denied.status(), 403);

    // metrics_listen: the same series, no token.
    let port = nx_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let config = host.path("nxd.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("metrics_listen = \"{listen}\"\n{text}")).unwrap();
    host.restart_nxd();
    // nxd listens inside the host's network namespace: reach it from here as the API.
    host.forward(port);
    let open = host
        .http()
        .get(format!("http://{listen}/metrics"))
        .send()
        .expect("GET /metrics on metrics_listen");
    assert_eq!(open.status(), 200);
    let text = open.text().unwrap();
    assert_eq!(
        value(&text, &format!("nx_deployment_up{{{unit}}}")),
        Some(1.0)
    );
}
