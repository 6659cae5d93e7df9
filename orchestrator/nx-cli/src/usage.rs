//! `nx usage`: what deployments used (CPU, memory, disk, requests, bytes out) and, with prices
//! in nxd's `[usage]`, what it costs, per deployment and per sandbox.

use crate::client::Client;
use crate::output::{print_json, since_time};
use nx_api::names::SandboxName;
use nx_api::usage::{Usage, UsageQuery, UsageReport};

// `nx usage [SANDBOX] [--since 24h]`.
// (Not a doc comment: see `defer` in main.rs.)
#[derive(clap::Args)]
pub struct UsageArgs {
    /// One sandbox (default: every sandbox the token may see).
    sandbox: Option<String>,
    /// The window's start: an age (24h, 7d, 30m) or a time (2026-11-30T03:00:00Z). Default:
    /// the last 24 hours.
    #[arg(long)]
    since: Option<String>,
}

/// Bytes as KiB, MiB, GiB (binary units).
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// One table row: the name columns, then the amounts.
fn row(sandbox: &str, deployment: &str, u: &Usage, currency: Option<&str>) {
    let cost = match (u.cost, currency) {
        (Some(c), Some(cur)) => format!("{c:.4} {cur}"),
        _ => "-".into(),
    };
    println!(
        "{sandbox:<20} {deployment:<10} {:>10.2} {:>12.4} {:>12.4} {:>10} {:>9} {:>10} {cost:>14}",
        u.cpu_seconds,
        u.memory_gib_hours,
        u.disk_gib_hours,
        bytes(u.disk_bytes),
        u.requests,
        bytes(u.bytes_out),
    );
}

fn print(report: &UsageReport) {
    println!(
        "usage from {} to {} (sampled every {} s)",
        humantime::format_rfc3339_seconds(report.since.into()),
        humantime::format_rfc3339_seconds(report.until.into()),
        report.sample_interval_secs
    );
    if report.deployments.is_empty() {
        println!("no usage recorded in this window");
        return;
    }
    println!(
        "{:<20} {:<10} {:>10} {:>12} {:>12} {:>10} {:>9} {:>10} {:>14}",
        "SANDBOX",
        "DEPLOYMENT",
        "CPU-S",
        "MEM-GIB-H",
        "DISK-GIB-H",
        "DISK",
        "REQUESTS",
        "BYTES-OUT",
        "COST"
    );
    let currency = report.currency.as_deref();
    for d in &report.deployments {
        row(&d.sandbox, &d.deployment, &d.usage, currency);
    }
    for s in &report.sandboxes {
        row(&s.sandbox, "(sandbox)", &s.usage, currency);
    }
    row("(all)", "", &report.total, currency);
}

pub async fn run(client: &Client, args: UsageArgs, json: bool) -> anyhow::Result<()> {
    let sandbox = args
        .sandbox
        .as_deref()
        .map(SandboxName::parse)
        .transpose()?;
    let query = UsageQuery {
        since: args.since.as_deref().map(since_time).transpose()?,
    };
    let report = client.usage(sandbox.as_ref(), &query).await?;
    if json {
        return print_json(&report);
    }
    print(&report);
    Ok(())
}
