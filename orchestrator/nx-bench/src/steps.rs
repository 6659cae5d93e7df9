//! Where nxd's time goes, step by step, as its metrics report it: a histogram per step (label
//! `step`), such as `nx_wake_step_duration_seconds` and `nx_task_step_duration_seconds`.

use std::time::Duration;

/// The mean of each step of histogram `series` over what was observed between two scrapes of
/// nxd's metrics (`before` empty: since nxd started), in the order `after` lists the steps;
/// steps observed nothing in between are left out.
pub fn means(series: &str, before: &str, after: &str) -> Vec<(String, Duration)> {
    let value = |text: &str, name: &str| nx_testkit::metrics::value(text, name).unwrap_or(0.0);
    let prefix = format!("{series}_count{{step=\"");
    after
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str())?.split_once('"'))
        .filter_map(|(step, _)| {
            let labels = format!("{{step=\"{step}\"}}");
            let delta = |part: &str| {
                let name = format!("{series}_{part}{labels}");
                value(after, &name) - value(before, &name)
            };
            let count = delta("count");
            (count > 0.0).then(|| {
                let mean = Duration::from_secs_f64(delta("sum") / count);
                (step.to_owned(), mean)
            })
        })
        .collect()
}

#[cfg(test)]
#[test]
fn means_are_taken_between_two_scrapes() {
    let before = "x_sum{step=\"a\"} 1.0\nx_count{step=\"a\"} 10\n";
    let after = "x_sum{step=\"b\"} 0.5\nx_count{step=\"b\"} 1\n\
                 x_sum{step=\"a\"} 3.0\nx_count{step=\"a\"} 14\nx_count{step=\"c\"} 0\n";
    assert_eq!(
        means("x", before, after),
        [
            ("b".to_owned(), Duration::from_millis(500)),
            ("a".to_owned(), Duration::from_millis(500)),
        ]
    );
}
