//! Reading nxd's `GET /metrics` (Prometheus text format) as a test checks it.

use crate::Host;
use std::time::{Duration, Instant};

/// The value of the series `name{labels}` in `text` (labels written as Prometheus writes
/// them, e.g. `nx_wakes_total{sandbox="web",deployment="d1",backend="container"}`).
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `GET /metrics` with the root token; asserts a 200 in the text format.
pub fn scrape(host: &Host) -> String {
    let resp = host
        .http()
        .get(format!("http://{}/metrics", host.api))
        .bearer_auth(&host.token)
        .send()
        .expect("GET /metrics");
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    resp.text().expect("the metrics' text")
}

/// Scrapes until `series` has a value that `want` accepts (or `within` passes: then panics
/// with the last scrape); returns that scrape.
pub fn wait_for(host: &Host, series: &str, within: Duration, want: impl Fn(f64) -> bool) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = scrape(host);
        if value(&text, series).is_some_and(&want) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never as wanted:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
