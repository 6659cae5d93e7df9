//! Where a request's time goes. Each step of a lifecycle verb runs in a span `step` named after
//! it; when it ends, its duration is logged at debug level (`RUST_LOG=nx_orchestrator::timing=debug`
//! prints one `step done step=start ms=3.2` line per step) and added to the timings of the
//! request it belongs to, which nxd answers in a `Server-Timing` header (W3C Server Timing,
//! <https://www.w3.org/TR/server-timing/>: `spec;dur=1.2, prepare;dur=0.4`, in milliseconds).

use std::cell::RefCell;
use std::future::Future;
use std::time::{Duration, Instant};
use tracing::Instrument;

tokio::task_local! {
    /// The steps of the request the current task serves, when someone collects them.
    static STEPS: RefCell<Vec<(&'static str, Duration)>>;
}

/// Runs `work` as the step `name`: in its span, timed.
pub async fn step<F: Future>(name: &'static str, work: F) -> F::Output {
    let span = tracing::info_span!("step", step = name);
    let started = Instant::now();
    let out = work.instrument(span.clone()).await;
    done(&span, name, started.elapsed());
    out
}

/// Adds the step `name` that took `took`, timed elsewhere (e.g. by another process): logged
/// and collected as [`step`] does.
pub fn record(name: &'static str, took: Duration) {
    done(&tracing::info_span!("step", step = name), name, took);
}

fn done(span: &tracing::Span, name: &'static str, took: Duration) {
    span.in_scope(|| {
        tracing::debug!(step = name, ms = took.as_secs_f64() * 1000.0, "step done");
    });
    let _ = STEPS.try_with(|steps| steps.borrow_mut().push((name, took)));
}

/// The steps one request took, in the order they ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Steps(pub Vec<(&'static str, Duration)>);

impl Steps {
    /// The `Server-Timing` header's value: `name;dur=<ms>` per step, comma-separated.
    pub fn server_timing(&self) -> String {
        self.0
            .iter()
            .map(|(name, took)| format!("{name};dur={:.3}", took.as_secs_f64() * 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Steps from a `Server-Timing` header's value (what [`Self::server_timing`] writes;
    /// metrics without a duration are skipped), as (name, duration).
    pub fn parse_server_timing(header: &str) -> Vec<(String, Duration)> {
        header
            .split(',')
            .filter_map(|metric| {
                let mut params = metric.trim().split(';');
                let name = params.next()?.trim().to_owned();
                let ms: f64 = params
                    .find_map(|p| p.trim().strip_prefix("dur="))?
                    .parse()
                    .ok()?;
                Some((name, Duration::from_secs_f64(ms / 1000.0)))
            })
            .collect()
    }
}

/// Runs `work` (in this task), collecting the steps it takes.
pub async fn collect<F: Future>(work: F) -> (F::Output, Steps) {
    STEPS
        .scope(RefCell::new(Vec::new()), async {
            let out = work.await;
            (out, Steps(STEPS.with(|steps| steps.take())))
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn steps_are_collected_in_order_and_written_as_server_timing() {
        let (out, steps) = collect(async {
            step("first", tokio::time::sleep(Duration::from_millis(5))).await;
            step("second", async {}).await;
            7
        })
        .await;
        assert_eq!(out, 7);
        let names: Vec<&str> = steps.0.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["first", "second"]);
        assert!(steps.0[0].1 >= Duration::from_millis(5));
        let header = steps.server_timing();
        assert!(header.starts_with("first;dur=") && header.contains(", second;dur="));
        let parsed = Steps::parse_server_timing(&header);
        assert_eq!(parsed[0].0, "first");
        assert!(parsed[0].1 >= Duration::from_millis(5));
        assert_eq!(parsed.len(), 2);
    }

    #[tokio::test]
    async fn steps_outside_a_collection_are_only_logged() {
        step("alone", async {}).await;
        let (_, steps) = collect(async {}).await;
        assert_eq!(steps, Steps::default());
    }
}
