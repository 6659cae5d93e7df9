//! A typed client of nxd's HTTP API: one method per route, taking and returning the shapes in
//! this crate. Every request carries `Authorization: Bearer <token>`.

use crate::access::{
    AddKey, CreateToken, CreatedToken, HostKeyView, KeyRemoved, KeyView, SandboxSettings,
    TokenRemoved, TokenView,
};
use crate::names::{DeploymentId, SandboxName};
use crate::{
    ArtifactInfo, BackupInfo, BackupRemoved, BlobDigests, BundleInfo, CreateSandbox, DatabaseInfo,
    DeploymentRemoved, DeploymentView, ErrorBody, Health, LogsQuery, PromoteRequest, PushRequest,
    RestoreInfo, SandboxRemoved, SandboxView, TaskEvent, TaskRequest,
};
use reqwest::Method;
use serde::de::DeserializeOwned;

/// Why a request got no answer of the expected shape.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No HTTP answer at all (connection refused, DNS, TLS, a cut-off body).
    #[error("cannot reach nxd at {host} (is nxd running, and is --host / NX_HOST right?)")]
    Unreachable {
        host: String,
        #[source]
        source: reqwest::Error,
    },
    /// nxd answered with an error status; `body.error` says what to do.
    #[error("{}", .body.error)]
    Server { status: u16, body: ErrorBody },
    /// nxd answered 2xx with a body this client does not understand (a version mismatch).
    #[error("nxd's answer to {path} is not what this nx understands ({reason}); are nx and nxd the same version?")]
    Decode { path: String, reason: String },
}

impl ClientError {
    /// The HTTP status nxd answered with, if it answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Server { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// nxd's API at one address, with one token.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    host: String,
    token: String,
}

impl Client {
    /// `host`: the API's base URL, e.g. `http://127.0.0.1:7070` (no trailing slash).
    pub fn new(host: impl Into<String>, token: impl Into<String>) -> Self {
        Self::with_http(reqwest::Client::new(), host, token)
    }

    /// [`Client::new`] over a client of the caller's (e.g. one that trusts an extra CA).
    pub fn with_http(
        http: reqwest::Client,
        host: impl Into<String>,
        token: impl Into<String>,
    ) -> Self {
        Self {
            http,
            host: host.into(),
            token: token.into(),
        }
    }

    /// The API's base URL.
    pub fn host(&self) -> &str {
        &self.host
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.host))
            .bearer_auth(&self.token)
    }

    fn unreachable(&self, source: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            host: self.host.clone(),
            source,
        }
    }

    /// Sends a request; a 2xx answer as it is, any other as [`ClientError::Server`].
    async fn open(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
            error: format!("nxd answered {status}: {}", String::from_utf8_lossy(&bytes)),
            log_tail: Vec::new(),
        });
        Err(ClientError::Server {
            status: status.as_u16(),
            body,
        })
    }

    /// Sends a request and reads its JSON answer.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let resp = self.open(build(self.request(method, path))).await?;
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.call(Method::GET, "/v1/health", |r| r).await
    }

    /// `GET /v1/artifacts/{sha256}`: what nxd stores under that hash (404 if nothing).
    pub async fn artifact(&self, sha256: &str) -> Result<ArtifactInfo, ClientError> {
        self.call(Method::GET, &format!("/v1/artifacts/{sha256}"), |r| r)
            .await
    }

    /// `PUT /v1/artifacts/{sha256}`: uploads `size` bytes, verified and stored by nxd.
    pub async fn upload_artifact(
        &self,
        sha256: &str,
        body: reqwest::Body,
        size: u64,
    ) -> Result<ArtifactInfo, ClientError> {
        self.call(Method::PUT, &format!("/v1/artifacts/{sha256}"), |r| {
            r.header(reqwest::header::CONTENT_LENGTH, size).body(body)
        })
        .await
    }

    /// `POST /v1/blobs/missing`: which of these bundle files nxd lacks.
    pub async fn missing_blobs(&self, digests: &BlobDigests) -> Result<BlobDigests, ClientError> {
        self.call(Method::POST, "/v1/blobs/missing", |r| r.json(digests))
            .await
    }

    /// `PUT /v1/blobs/{sha256}`: uploads one file of a bundle (`size` bytes; any content).
    pub async fn upload_blob(
        &self,
        sha256: &str,
        body: reqwest::Body,
        size: u64,
    ) -> Result<ArtifactInfo, ClientError> {
        self.call(Method::PUT, &format!("/v1/blobs/{sha256}"), |r| {
            r.header(reqwest::header::CONTENT_LENGTH, size).body(body)
        })
        .await
    }

    /// `POST /v1/bundles`: makes a bundle from its manifest (`nx_artifact::bundle::
    /// BundleManifest`) once all its files are uploaded; 409 names those that are not.
    pub async fn create_bundle(
        &self,
        manifest: &impl serde::Serialize,
    ) -> Result<BundleInfo, ClientError> {
        self.call(Method::POST, "/v1/bundles", |r| r.json(manifest))
            .await
    }

    /// `POST /v1/deployments`: a new deployment, started and ready.
    pub async fn push(&self, req: &PushRequest) -> Result<DeploymentView, ClientError> {
        self.call(Method::POST, "/v1/deployments", |r| r.json(req))
            .await
    }

    /// `DELETE /v1/deployments/{id}`.
    pub async fn remove_deployment(
        &self,
        id: &DeploymentId,
    ) -> Result<DeploymentRemoved, ClientError> {
        self.call(Method::DELETE, &format!("/v1/deployments/{id}"), |r| r)
            .await
    }

    /// `POST /v1/deployments/{id}/stop?timeout_secs=`: SIGTERM to its program, SIGKILL after
    /// `timeout` (nxd's default: 10 s).
    pub async fn stop(
        &self,
        id: &DeploymentId,
        timeout: Option<std::time::Duration>,
    ) -> Result<DeploymentView, ClientError> {
        let path = match timeout {
            Some(t) => format!("/v1/deployments/{id}/stop?timeout_secs={}", t.as_secs()),
            None => format!("/v1/deployments/{id}/stop"),
        };
        self.call(Method::POST, &path, |r| r).await
    }

    /// `POST /v1/deployments/{id}/start`.
    pub async fn start(&self, id: &DeploymentId) -> Result<DeploymentView, ClientError> {
        self.call(Method::POST, &format!("/v1/deployments/{id}/start"), |r| r)
            .await
    }

    /// `POST /v1/deployments/{id}/pin` (`pinned`) or `DELETE` (not): whether the preview
    /// stays past its sandbox's time to live.
    pub async fn pin(
        &self,
        id: &DeploymentId,
        pinned: bool,
    ) -> Result<DeploymentView, ClientError> {
        let method = if pinned { Method::POST } else { Method::DELETE };
        self.call(method, &format!("/v1/deployments/{id}/pin"), |r| r)
            .await
    }

    /// `GET /v1/deployments/{id}/logs`: the records `query` asks for, then (with `follow`)
    /// what it writes, as a streamed body of text or JSON lines.
    pub async fn logs(
        &self,
        id: &DeploymentId,
        query: &LogsQuery,
    ) -> Result<reqwest::Response, ClientError> {
        let path = format!("/v1/deployments/{id}/logs");
        self.open(self.request(Method::GET, &path).query(query))
            .await
    }

    /// `GET /v1/sandboxes`.
    pub async fn sandboxes(&self) -> Result<Vec<SandboxView>, ClientError> {
        self.call(Method::GET, "/v1/sandboxes", |r| r).await
    }

    /// `GET /v1/sandboxes/{name}`.
    pub async fn sandbox(&self, name: &SandboxName) -> Result<SandboxView, ClientError> {
        self.call(Method::GET, &format!("/v1/sandboxes/{name}"), |r| r)
            .await
    }

    /// `POST /v1/sandboxes`.
    pub async fn create_sandbox(&self, req: &CreateSandbox) -> Result<SandboxView, ClientError> {
        self.call(Method::POST, "/v1/sandboxes", |r| r.json(req))
            .await
    }

    /// `DELETE /v1/sandboxes/{name}?backup=`: with `backup`, a final backup is made first.
    pub async fn remove_sandbox(
        &self,
        name: &SandboxName,
        backup: bool,
    ) -> Result<SandboxRemoved, ClientError> {
        let path = format!("/v1/sandboxes/{name}?backup={backup}");
        self.call(Method::DELETE, &path, |r| r).await
    }

    /// `POST /v1/sandboxes/{name}/promote`.
    pub async fn promote(
        &self,
        name: &SandboxName,
        req: &PromoteRequest,
    ) -> Result<SandboxView, ClientError> {
        let path = format!("/v1/sandboxes/{name}/promote");
        self.call(Method::POST, &path, |r| r.json(req)).await
    }

    /// `POST /v1/sandboxes/{name}/rollback`.
    pub async fn rollback(&self, name: &SandboxName) -> Result<SandboxView, ClientError> {
        let path = format!("/v1/sandboxes/{name}/rollback");
        self.call(Method::POST, &path, |r| r).await
    }

    /// `GET /v1/sandboxes/{name}/db`.
    pub async fn database(&self, name: &SandboxName) -> Result<DatabaseInfo, ClientError> {
        self.call(Method::GET, &format!("/v1/sandboxes/{name}/db"), |r| r)
            .await
    }

    /// `GET /v1/sandboxes/{name}/db/backups`, oldest first.
    pub async fn backups(&self, name: &SandboxName) -> Result<Vec<BackupInfo>, ClientError> {
        let path = format!("/v1/sandboxes/{name}/db/backups");
        self.call(Method::GET, &path, |r| r).await
    }

    /// `POST /v1/sandboxes/{name}/db/backups`: makes a backup now.
    pub async fn backup(&self, name: &SandboxName) -> Result<BackupInfo, ClientError> {
        let path = format!("/v1/sandboxes/{name}/db/backups");
        self.call(Method::POST, &path, |r| r).await
    }

    /// `GET /v1/sandboxes/{name}/db/backups/{id}`: the dump, as a streamed body.
    pub async fn download_backup(
        &self,
        name: &SandboxName,
        id: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let path = format!("/v1/sandboxes/{name}/db/backups/{}", urlencode(id));
        self.open(self.request(Method::GET, &path)).await
    }

    /// `DELETE /v1/sandboxes/{name}/db/backups/{id}`.
    pub async fn remove_backup(
        &self,
        name: &SandboxName,
        id: &str,
    ) -> Result<BackupRemoved, ClientError> {
        let path = format!("/v1/sandboxes/{name}/db/backups/{}", urlencode(id));
        self.call(Method::DELETE, &path, |r| r).await
    }

    /// `POST /v1/sandboxes/{name}/db/restore?backup={id}`: restores a backup kept on the host.
    pub async fn restore_backup(
        &self,
        name: &SandboxName,
        id: &str,
    ) -> Result<RestoreInfo, ClientError> {
        let path = format!("/v1/sandboxes/{name}/db/restore?backup={}", urlencode(id));
        self.call(Method::POST, &path, |r| r).await
    }

    /// `POST /v1/sandboxes/{name}/db/restore`: restores `size` bytes of a custom-format dump.
    pub async fn restore_dump(
        &self,
        name: &SandboxName,
        body: reqwest::Body,
        size: u64,
    ) -> Result<RestoreInfo, ClientError> {
        let path = format!("/v1/sandboxes/{name}/db/restore");
        self.call(Method::POST, &path, |r| {
            r.header(reqwest::header::CONTENT_LENGTH, size).body(body)
        })
        .await
    }

    /// `GET /v1/sandboxes/{name}/settings`: what its deployments start with.
    pub async fn settings(&self, name: &SandboxName) -> Result<SandboxSettings, ClientError> {
        let path = format!("/v1/sandboxes/{name}/settings");
        self.call(Method::GET, &path, |r| r).await
    }

    /// `PUT /v1/sandboxes/{name}/settings`: replaces them.
    pub async fn set_settings(
        &self,
        name: &SandboxName,
        settings: &SandboxSettings,
    ) -> Result<SandboxSettings, ClientError> {
        let path = format!("/v1/sandboxes/{name}/settings");
        self.call(Method::PUT, &path, |r| r.json(settings)).await
    }

    /// `GET /v1/tokens` (root token only).
    pub async fn tokens(&self) -> Result<Vec<TokenView>, ClientError> {
        self.call(Method::GET, "/v1/tokens", |r| r).await
    }

    /// `POST /v1/tokens` (root token only): the answer holds the token, this once.
    pub async fn create_token(&self, req: &CreateToken) -> Result<CreatedToken, ClientError> {
        self.call(Method::POST, "/v1/tokens", |r| r.json(req)).await
    }

    /// `DELETE /v1/tokens/{id}` (root token only).
    pub async fn remove_token(&self, id: &str) -> Result<TokenRemoved, ClientError> {
        let path = format!("/v1/tokens/{}", urlencode(id));
        self.call(Method::DELETE, &path, |r| r).await
    }

    /// `GET /v1/sandboxes/{name}/keys` (root token only).
    pub async fn keys(&self, name: &SandboxName) -> Result<Vec<KeyView>, ClientError> {
        let path = format!("/v1/sandboxes/{name}/keys");
        self.call(Method::GET, &path, |r| r).await
    }

    /// `POST /v1/sandboxes/{name}/domains` (root token only): a custom domain for the
    /// sandbox's production deployment.
    pub async fn add_domain(
        &self,
        name: &SandboxName,
        req: &crate::domains::AddDomain,
    ) -> Result<crate::domains::DomainView, ClientError> {
        let path = format!("/v1/sandboxes/{name}/domains");
        self.call(Method::POST, &path, |r| r.json(req)).await
    }

    /// `GET /v1/domains`, or `GET /v1/sandboxes/{name}/domains` for one sandbox.
    pub async fn domains(
        &self,
        name: Option<&SandboxName>,
    ) -> Result<Vec<crate::domains::DomainView>, ClientError> {
        let path = match name {
            Some(name) => format!("/v1/sandboxes/{name}/domains"),
            None => "/v1/domains".into(),
        };
        self.call(Method::GET, &path, |r| r).await
    }

    /// `POST /v1/sandboxes/{name}/volumes`.
    pub async fn create_volume(
        &self,
        name: &SandboxName,
        req: &crate::volumes::CreateVolume,
    ) -> Result<crate::volumes::VolumeView, ClientError> {
        let path = format!("/v1/sandboxes/{name}/volumes");
        self.call(Method::POST, &path, |r| r.json(req)).await
    }

    /// `GET /v1/sandboxes/{name}/volumes`.
    pub async fn volumes(
        &self,
        name: &SandboxName,
    ) -> Result<Vec<crate::volumes::VolumeView>, ClientError> {
        let path = format!("/v1/sandboxes/{name}/volumes");
        self.call(Method::GET, &path, |r| r).await
    }

    /// `DELETE /v1/sandboxes/{name}/volumes/{volume}`.
    pub async fn remove_volume(
        &self,
        name: &SandboxName,
        volume: &crate::names::VolumeName,
    ) -> Result<crate::volumes::VolumeRemoved, ClientError> {
        let path = format!("/v1/sandboxes/{name}/volumes/{volume}");
        self.call(Method::DELETE, &path, |r| r).await
    }

    /// `GET /v1/usage`, or `GET /v1/sandboxes/{name}/usage` for one sandbox: usage since
    /// `query.since` (default: the last 24 hours).
    pub async fn usage(
        &self,
        name: Option<&SandboxName>,
        query: &crate::usage::UsageQuery,
    ) -> Result<crate::usage::UsageReport, ClientError> {
        let path = match name {
            Some(name) => format!("/v1/sandboxes/{name}/usage"),
            None => "/v1/usage".into(),
        };
        self.call(Method::GET, &path, |r| r.query(query)).await
    }

    /// `POST /v1/sandboxes/{name}/volumes/{volume}/backups`: a tar archive of the volume,
    /// kept on the host.
    pub async fn backup_volume(
        &self,
        name: &SandboxName,
        volume: &crate::names::VolumeName,
    ) -> Result<crate::volumes::VolumeBackup, ClientError> {
        let path = format!("/v1/sandboxes/{name}/volumes/{volume}/backups");
        self.call(Method::POST, &path, |r| r).await
    }

    /// `GET /v1/sandboxes/{name}/volumes/{volume}/backups/{id}`: the archive, streamed (its
    /// size in Content-Length).
    pub async fn download_volume_backup(
        &self,
        name: &SandboxName,
        volume: &crate::names::VolumeName,
        id: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let path = format!(
            "/v1/sandboxes/{name}/volumes/{volume}/backups/{}",
            urlencode(id)
        );
        self.open(self.request(Method::GET, &path)).await
    }

    /// `POST /v1/sandboxes/{name}/volumes/{volume}/restore`: replaces the volume's files with
    /// those of a tar archive: `size` bytes of `body`, or (`body` none) the host's backup `id`.
    pub async fn restore_volume(
        &self,
        name: &SandboxName,
        volume: &crate::names::VolumeName,
        from: VolumeArchive,
    ) -> Result<crate::volumes::VolumeRestored, ClientError> {
        let path = format!("/v1/sandboxes/{name}/volumes/{volume}/restore");
        match from {
            VolumeArchive::Kept(id) => {
                let path = format!("{path}?backup={}", urlencode(&id));
                self.call(Method::POST, &path, |r| r).await
            }
            VolumeArchive::Upload { body, size } => {
                self.call(Method::POST, &path, |r| {
                    r.header(reqwest::header::CONTENT_LENGTH, size).body(body)
                })
                .await
            }
        }
    }

    /// `DELETE /v1/domains/{domain}` (root token only).
    pub async fn remove_domain(
        &self,
        domain: &str,
    ) -> Result<crate::domains::DomainRemoved, ClientError> {
        let path = format!("/v1/domains/{}", urlencode(domain));
        self.call(Method::DELETE, &path, |r| r).await
    }

    /// `POST /v1/sandboxes/{name}/keys` (root token only).
    pub async fn add_key(&self, name: &SandboxName, req: &AddKey) -> Result<KeyView, ClientError> {
        let path = format!("/v1/sandboxes/{name}/keys");
        self.call(Method::POST, &path, |r| r.json(req)).await
    }

    /// `DELETE /v1/sandboxes/{name}/keys?key=` (root token only): `key` is a fingerprint
    /// (`SHA256:...`) or the public key line.
    pub async fn remove_key(
        &self,
        name: &SandboxName,
        key: &str,
    ) -> Result<KeyRemoved, ClientError> {
        let path = format!("/v1/sandboxes/{name}/keys?key={}", urlencode(key));
        self.call(Method::DELETE, &path, |r| r).await
    }

    /// `GET /v1/sftp/host-key`: the SFTP server's host key (404 when SFTP is off).
    pub async fn host_key(&self) -> Result<HostKeyView, ClientError> {
        self.call(Method::GET, "/v1/sftp/host-key", |r| r).await
    }

    /// `POST /v1/tasks`: runs a task; its events arrive as they happen.
    pub async fn run_task(&self, req: &TaskRequest) -> Result<TaskEvents, ClientError> {
        let resp = self
            .open(self.request(Method::POST, "/v1/tasks").json(req))
            .await?;
        Ok(TaskEvents {
            resp,
            pending: Vec::new(),
            host: self.host.clone(),
        })
    }
}

/// The events of a running task, in order: `started`, output, `exited` (the answer to
/// `POST /v1/tasks` is newline-delimited JSON).
#[derive(Debug)]
pub struct TaskEvents {
    resp: reqwest::Response,
    pending: Vec<u8>,
    host: String,
}

impl TaskEvents {
    /// The next event; `None` once nxd has ended the stream.
    pub async fn next(&mut self) -> Result<Option<TaskEvent>, ClientError> {
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return serde_json::from_slice(&line)
                    .map(Some)
                    .map_err(|e| ClientError::Decode {
                        path: "/v1/tasks".into(),
                        reason: format!("{e} in {:?}", String::from_utf8_lossy(&line)),
                    });
            }
            let chunk = self
                .resp
                .chunk()
                .await
                .map_err(|source| ClientError::Unreachable {
                    host: self.host.clone(),
                    source,
                })?;
            match chunk {
                Some(chunk) => self.pending.extend_from_slice(&chunk),
                None => return Ok(None),
            }
        }
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986, 2.3), so an id reaches nxd
/// as typed and is refused there if bad.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The archive a volume is restored from.
pub enum VolumeArchive {
    /// A backup kept on the host, by id.
    Kept(String),
    /// A tar archive sent in the request: `size` bytes.
    Upload { body: reqwest::Body, size: u64 },
}
