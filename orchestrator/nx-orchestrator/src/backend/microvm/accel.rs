//! Which accelerator runs guests: KVM where it boots, else QEMU's TCG. `auto` boots a probe
//! guest (NX's init and modules with no program, which reports at once) with each, once per state dir, and keeps the
//! faster one that reached its init; the choice and the figures are what `nx status` reports.

use super::vmm::{self, Accel, Guest};
use crate::backend::guest_exit::EXIT_MARKER;
use crate::backend::BackendError;
use crate::config::AccelMode;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

/// How long a probe guest may take to reach its init: TCG boots in ~1.6 s on an idle host of
/// 2 cores and took 7.8 s at a load average of 18 (09:58 UTC, 2026-11-30).
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Choice {
    pub accel: Accel,
    /// How it was chosen, with the probe's figures.
    pub report: String,
}

/// Boots the probe guest; the time until its init reported, if it did.
async fn boot(
    accel: Accel,
    kernel: &Path,
    initrd: &Path,
    tsc_khz: Option<u64>,
) -> Option<Duration> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .ok()?;
    let argv = vmm::qemu(
        &Guest {
            kernel,
            initrd,
            memory_mb: 128,
            vcpus: 1,
            forward: Some(std::net::SocketAddr::from(([127, 0, 0, 1], port))),
            egress: false,
            database_socket: None,
            tsc_khz: (accel == Accel::Tcg).then_some(tsc_khz).flatten(),
            tap: "",
            disk: None,
        },
        accel,
    );
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take()?).lines();
    let reached = tokio::time::timeout(PROBE_TIMEOUT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(EXIT_MARKER.trim()) {
                return true;
            }
        }
        false
    })
    .await;
    let elapsed = started.elapsed();
    let _ = child.kill().await;
    matches!(reached, Ok(true)).then_some(elapsed)
}

fn describe(result: Option<Duration>) -> String {
    match result {
        Some(d) => format!("boots in {:.2} s", d.as_secs_f64()),
        None => format!("no boot within {} s", PROBE_TIMEOUT.as_secs()),
    }
}

#[tracing::instrument(skip_all, fields(mode = ?mode))]
pub async fn choose(
    mode: AccelMode,
    dir: &Path,
    kernel: &Path,
    probe_initrd: &Path,
    tsc_khz: Option<u64>,
) -> Result<Choice, BackendError> {
    let from_config = |accel: Accel| Choice {
        accel,
        report: format!("{accel} (from the config)"),
    };
    match mode {
        AccelMode::Kvm => return Ok(from_config(Accel::Kvm)),
        AccelMode::Tcg => return Ok(from_config(Accel::Tcg)),
        AccelMode::Auto => {}
    }
    let cached = dir.join("accel.json");
    if let Some(choice) = std::fs::read(&cached)
        .ok()
        .and_then(|b| serde_json::from_slice::<Choice>(&b).ok())
    {
        return Ok(choice);
    }
    let tcg = boot(Accel::Tcg, kernel, probe_initrd, tsc_khz).await;
    let kvm = if Path::new("/dev/kvm").exists() {
        boot(Accel::Kvm, kernel, probe_initrd, tsc_khz).await
    } else {
        None
    };
    let accel = match (kvm, tcg) {
        (Some(k), Some(t)) if k <= t => Accel::Kvm,
        (Some(_), None) => Accel::Kvm,
        (_, Some(_)) => Accel::Tcg,
        (None, None) => {
            return Err(BackendError::Prepare(format!(
                "no accelerator boots the guest kernel {} (kvm: {}, tcg: {}); check qemu-system-x86_64 and the kernel",
                kernel.display(),
                describe(kvm),
                describe(tcg)
            )))
        }
    };
    let choice = Choice {
        accel,
        report: format!(
            "{} (probed: kvm {}, tcg {})",
            accel,
            describe(kvm),
            describe(tcg)
        ),
    };
    tracing::info!(report = %choice.report, "microvm accelerator chosen");
    std::fs::write(
        &cached,
        serde_json::to_vec(&choice).map_err(|e| BackendError::Prepare(e.to_string()))?,
    )?;
    Ok(choice)
}
