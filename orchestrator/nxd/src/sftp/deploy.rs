//! An upload that completed goes the way of `nx push`: the artifact store (sha256,
//! verification, rename into place), then a deployment with the sandbox's settings
//! (`nx sandbox set`). Its outcome is written next to it as `<name>.result`.

use super::area::RESULT_SUFFIX;
use nx_orchestrator::api::PushRequest;
use nx_orchestrator::artifact::owners::StoreView;
use nx_orchestrator::artifact::Upload;
use nx_orchestrator::names::{DeploymentId, SandboxName};
use nx_orchestrator::Orchestrator;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// What `<name>.result` holds (JSON): the deployment, or why there is none.
#[derive(Debug, Serialize, Deserialize)]
pub struct Outcome {
    pub ok: bool,
    pub sandbox: SandboxName,
    /// The uploaded file's name in the upload area.
    pub file: String,
    pub sha256: Option<String>,
    pub deployment: Option<DeploymentId>,
    pub preview_url: Option<String>,
    /// Why nothing runs, and what to do.
    pub error: Option<String>,
    /// The deployment's last log lines, when it started and failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
    pub at: chrono::DateTime<chrono::Utc>,
}

impl Outcome {
    pub fn refused(sandbox: &SandboxName, file: &str, why: &str) -> Self {
        Self {
            ok: false,
            sandbox: sandbox.clone(),
            file: file.to_owned(),
            sha256: None,
            deployment: None,
            preview_url: None,
            error: Some(why.to_owned()),
            log_tail: Vec::new(),
            at: chrono::Utc::now(),
        }
    }
}

/// Stores and deploys a complete upload.
#[tracing::instrument(skip(app, upload), fields(size = upload.size()))]
pub async fn deploy(
    app: &std::sync::Arc<Orchestrator>,
    sandbox: &SandboxName,
    file: &str,
    upload: Upload,
) -> Outcome {
    let info = match app.store_upload_of(sandbox, upload).await {
        Ok(info) => info,
        Err(e) => {
            tracing::info!(error = %e, "SFTP upload refused");
            return Outcome::refused(sandbox, file, &format!("{e}"));
        }
    };
    let req = PushRequest {
        sandbox: sandbox.clone(),
        artifact: info.sha256.clone(),
        env: Default::default(),
        args: Vec::new(),
        limits: Default::default(),
        db_branch: false,
        runtime: Default::default(),
        backend: None,
        ready_timeout_secs: None,
        port: None,
        egress: None,
        health_check: Default::default(),
        idle_timeout_secs: None,
        volumes: Vec::new(),
        tcp: None,
        service: None,
        volume_source: Default::default(),
        persistent: false,
    };
    let mut outcome = Outcome::refused(sandbox, file, "");
    outcome.sha256 = Some(info.sha256);
    // Stored for the sandbox's view: it owns it already.
    match app.push(req, &StoreView::Sandbox(sandbox.clone())).await {
        Ok(view) => {
            tracing::info!(deployment = %view.id, "SFTP upload deployed");
            outcome.ok = true;
            outcome.error = None;
            outcome.deployment = Some(view.id);
            outcome.preview_url = Some(view.preview_url);
        }
        Err(e) => {
            tracing::info!(error = %e, "SFTP upload did not deploy");
            outcome.error = Some(e.to_string());
            if let nx_orchestrator::Error::NotReady { log_tail, .. } = e {
                outcome.log_tail = log_tail;
            }
        }
    }
    outcome
}

/// Writes `<dir>/<file>.result` whole (a temp file renamed over it).
pub fn write_result(dir: &Path, file: &str, outcome: &Outcome) {
    let write = || -> std::io::Result<()> {
        let mut temp = tempfile::NamedTempFile::new_in(dir)?;
        serde_json::to_writer_pretty(&mut temp, outcome)?;
        temp.write_all(b"\n")?;
        temp.persist(dir.join(format!("{file}{RESULT_SUFFIX}")))?;
        Ok(())
    };
    if let Err(e) = write() {
        tracing::error!(error = %e, file, "cannot write the SFTP result file");
    }
}
