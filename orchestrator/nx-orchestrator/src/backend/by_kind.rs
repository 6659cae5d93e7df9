//! The backends of one nxd, as one `SandboxBackend`: each deployment goes to the backend it was
//! pushed to (its `BackendKind`, kept in its handle), each task to the one it asked for.

use super::launch::LaunchSpec;
use super::{
    BackendError, SandboxBackend, SandboxHandle, SandboxSpec, TaskLaunch, WarmLaunch, WarmSandbox,
};
use crate::api::UnitState;
use crate::domain::{BackendKind, Deployment};
use std::sync::Arc;
use std::time::Duration;

pub struct Backends {
    container: Arc<dyn SandboxBackend>,
    microvm: Option<Arc<dyn SandboxBackend>>,
}

impl Backends {
    pub fn new(
        container: Arc<dyn SandboxBackend>,
        microvm: Option<Arc<dyn SandboxBackend>>,
    ) -> Self {
        Self { container, microvm }
    }

    pub fn get(&self, kind: BackendKind) -> Result<&Arc<dyn SandboxBackend>, BackendError> {
        match kind {
            BackendKind::Container => Ok(&self.container),
            BackendKind::Microvm => self.microvm.as_ref().ok_or_else(|| {
                BackendError::Unavailable(
                    "this nxd has no microvm backend: build it with the `microvm` feature and give it a kernel ([microvm] kernel_dir, see orchestrator/fetch-kernel.sh)".into(),
                )
            }),
        }
    }
}

#[async_trait::async_trait]
impl SandboxBackend for Backends {
    fn kind(&self) -> &'static str {
        if self.microvm.is_some() {
            "container, microvm"
        } else {
            "container"
        }
    }

    fn runs_on(&self) -> String {
        let mut all = vec![self.container.runs_on()];
        all.extend(self.microvm.as_ref().map(|m| m.runs_on()));
        all.join("; ")
    }

    fn handle(&self, deployment: &Deployment) -> SandboxHandle {
        match self.get(deployment.backend) {
            Ok(backend) => backend.handle(deployment),
            // Only `status` and friends see it, and they say what is missing.
            Err(_) => SandboxHandle {
                backend: deployment.backend,
                ..self.container.handle(deployment)
            },
        }
    }

    async fn prepare(&self, spec: &SandboxSpec) -> Result<SandboxHandle, BackendError> {
        self.get(spec.deployment.backend)?.prepare(spec).await
    }

    async fn prepare_standby(&self, spec: &SandboxSpec) -> Result<SandboxHandle, BackendError> {
        self.get(spec.deployment.backend)?
            .prepare_standby(spec)
            .await
    }

    async fn claim(&self, handle: &SandboxHandle, spec: &SandboxSpec) -> Result<(), BackendError> {
        self.get(handle.backend)?.claim(handle, spec).await
    }

    async fn start(&self, handle: &SandboxHandle, spec: &SandboxSpec) -> Result<(), BackendError> {
        self.get(handle.backend)?.start(handle, spec).await
    }

    async fn stop(&self, handle: &SandboxHandle, timeout: Duration) -> Result<(), BackendError> {
        self.get(handle.backend)?.stop(handle, timeout).await
    }

    async fn status(&self, handle: &SandboxHandle) -> Result<UnitState, BackendError> {
        self.get(handle.backend)?.status(handle).await
    }

    async fn destroy(&self, handle: &SandboxHandle) -> Result<(), BackendError> {
        self.get(handle.backend)?.destroy(handle).await
    }

    async fn task_launch(&self, task: &TaskLaunch) -> Result<LaunchSpec, BackendError> {
        self.get(task.backend)?.task_launch(task).await
    }

    async fn task_cleanup(&self, task: &TaskLaunch) {
        if let Ok(backend) = self.get(task.backend) {
            backend.task_cleanup(task).await
        }
    }

    async fn boot_ahead(&self, warm: &WarmSandbox) -> Result<WarmLaunch, BackendError> {
        self.get(warm.backend)?.boot_ahead(warm).await
    }

    async fn hand_over(&self, warm: &WarmSandbox, task: &TaskLaunch) -> Result<(), BackendError> {
        self.get(warm.backend)?.hand_over(warm, task).await
    }

    async fn forget_warm(&self, warm: &WarmSandbox) {
        if let Ok(backend) = self.get(warm.backend) {
            backend.forget_warm(warm).await
        }
    }

    /// Images run on the container backend only.
    async fn remove_images(
        &self,
        keep: &std::collections::HashSet<String>,
        unchanged: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<Vec<String>, BackendError> {
        self.container.remove_images(keep, unchanged).await
    }
}
