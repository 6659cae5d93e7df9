//! nxd's API over HTTP, with its errors turned into messages.

use crate::settings::Settings;
use futures_util::StreamExt;
use nx_orchestrator::api::ErrorBody;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::Write;

/// An error nxd answered with.
#[derive(Debug)]
pub struct ServerError {
    pub status: u16,
    pub body: ErrorBody,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.body.error)
    }
}

impl std::error::Error for ServerError {}

pub struct Client {
    http: reqwest::Client,
    host: String,
    token: String,
}

impl Client {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder().build()?,
            host: settings.host.clone(),
            token: settings.token.clone(),
        })
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.host))
            .bearer_auth(&self.token)
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        anyhow::anyhow!(
            "cannot reach nxd at {}: {e}; is nxd running, and is --host / NX_HOST right?",
            self.host
        )
    }

    /// Sends a request and reads a JSON answer, or nxd's error.
    pub async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if status.is_success() {
            return Ok(serde_json::from_slice(&bytes)?);
        }
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
            error: format!("nxd answered {status}: {}", String::from_utf8_lossy(&bytes)),
            log_tail: Vec::new(),
        });
        Err(ServerError {
            status: status.as_u16(),
            body,
        }
        .into())
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(self.request(reqwest::Method::POST, path).json(body))
            .await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.request(reqwest::Method::DELETE, path)).await
    }

    /// Streams a local file as the body of a request, with a progress bar, and reads the answer.
    pub async fn upload<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        file: &std::path::Path,
        quiet: bool,
    ) -> anyhow::Result<T> {
        let file = tokio::fs::File::open(file).await?;
        let size = file.metadata().await?.len();
        let bar = crate::output::progress_bar(size, quiet);
        let counted = bar.clone();
        let stream = tokio_util::io::ReaderStream::new(file).inspect(move |chunk| {
            if let Ok(c) = chunk {
                counted.inc(c.len() as u64);
            }
        });
        let req = self
            .request(method, path)
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(stream));
        let result = self.send(req).await;
        bar.finish_and_clear();
        result
    }

    /// Sends a request whose answer streams; nxd's error when it refuses.
    pub async fn open_stream(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body: ErrorBody = resp.json().await.unwrap_or_else(|e| ErrorBody {
                error: format!("nxd answered {status}: {e}"),
                log_tail: Vec::new(),
            });
            return Err(ServerError {
                status: status.as_u16(),
                body,
            }
            .into());
        }
        Ok(resp)
    }

    /// Copies a streamed text answer to stdout as it arrives.
    pub async fn stream_to_stdout(&self, path: &str) -> anyhow::Result<()> {
        let resp = self
            .open_stream(self.request(reqwest::Method::GET, path))
            .await?;
        let mut stream = resp.bytes_stream();
        let mut out = std::io::stdout().lock();
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk?)?;
            out.flush()?;
        }
        Ok(())
    }
}
