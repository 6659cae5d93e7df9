//! The flags of what nxd does on its own to a deployment (`nx push` and `nx sandbox set`):
//! its health check and its idle timeout; and `nx pin` / `nx unpin`.

use crate::client::Client;
use crate::output;
use crate::push::whole_seconds;
use nx_api::names::DeploymentId;
use nx_api::HealthCheck;

// `--health-path`, `--health-interval`, `--health-timeout`, `--health-threshold`,
// `--idle-timeout`.
// (Not a doc comment: see `defer` in main.rs.)
#[derive(clap::Args)]
pub struct UpkeepArgs {
    /// Health check: GET this path (e.g. /healthz) every --health-interval; a status of 400
    /// and up, or no answer within --health-timeout, is a failure, and --health-threshold
    /// failures in a row restart the deployment. The path also decides readiness. Default:
    /// the sandbox's (`nx sandbox set --health-path`), else nxd's sandbox.health_path (none:
    /// no health check).
    #[arg(long, value_name = "PATH")]
    health_path: Option<String>,
    /// Time between health checks, e.g. 10s (default: the sandbox's, else nxd's
    /// sandbox.health_interval_secs, 10 s unless configured).
    #[arg(long, value_name = "DURATION", value_parser = whole_seconds)]
    health_interval: Option<u64>,
    /// How long a health check's answer may take, e.g. 2s (default: the sandbox's, else
    /// nxd's sandbox.health_timeout_secs, 2 s unless configured).
    #[arg(long, value_name = "DURATION", value_parser = whole_seconds)]
    health_timeout: Option<u64>,
    /// Failed health checks in a row that restart the deployment (default: the sandbox's, else
    /// nxd's sandbox.health_failure_threshold, 3 unless configured).
    #[arg(long, value_name = "N")]
    health_threshold: Option<u32>,
    /// Scale to zero: stop the deployment after this long with no request, e.g. 5m; the next
    /// request starts it again (that request waits for it to be ready). `nx ls` shows it as
    /// idle. Production is stopped too only if its sandbox says so (`nx sandbox set
    /// --idle-production true`). Default: the sandbox's (`nx sandbox set --idle-timeout`),
    /// else never.
    #[arg(long, value_name = "DURATION", value_parser = whole_seconds)]
    idle_timeout: Option<u64>,
}

impl UpkeepArgs {
    /// The health check these flags name (unset fields: the sandbox's, then nxd's).
    pub fn health_check(&self) -> HealthCheck {
        HealthCheck {
            path: self.health_path.clone(),
            interval_secs: self.health_interval,
            timeout_secs: self.health_timeout,
            failure_threshold: self.health_threshold,
        }
    }

    pub fn idle_timeout_secs(&self) -> Option<u64> {
        self.idle_timeout
    }
}

/// `nx pin` (`pinned`) or `nx unpin`.
pub async fn pin(
    client: &Client,
    deployment: &str,
    pinned: bool,
    json: bool,
) -> anyhow::Result<()> {
    let id = DeploymentId::parse(deployment)?;
    let view = client.pin(&id, pinned).await?;
    if json {
        return output::print_json(&view);
    }
    if pinned {
        println!(
            "{id} is pinned: it stays however long no request comes (`nx unpin {id}` undoes it)"
        );
    } else {
        println!("{id} is not pinned: as a preview it expires after its sandbox's time to live with no request");
    }
    Ok(())
}
