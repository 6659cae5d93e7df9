//! nxd's typed client (`nx_api::client`) as the CLI uses it: built from the settings, with a
//! progress bar around uploads and streamed answers copied to stdout.

use crate::settings::Settings;
use anyhow::Context;
use futures_util::StreamExt;
pub use nx_api::client::{Client, ClientError};
use std::io::Write;

/// The client for the host and token the settings resolved: HTTPS verified against the
/// system's roots and `ca_cert`. For an `http://` host the system's roots are not loaded
/// (reading `/etc/ssl/certs`, about 150 files on Debian, was most of a local `nx ls`'s start).
pub fn connect(settings: &Settings) -> anyhow::Result<Client> {
    let https = settings.host.starts_with("https://");
    let mut http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_native_certs(https);
    if let Some(path) = &settings.ca_cert {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read --ca-cert {}", path.display()))?;
        let roots = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--ca-cert {} is not PEM certificates", path.display()))?;
        anyhow::ensure!(
            !roots.is_empty(),
            "--ca-cert {} holds no certificate",
            path.display()
        );
        for root in roots {
            http = http.add_root_certificate(root);
        }
    }
    let http = http
        .build()
        .context("cannot set up TLS for the API client")?;
    Ok(Client::with_http(
        http,
        settings.host.clone(),
        settings.token.clone(),
    ))
}

/// `error` as the CLI reports it, with `meanwhile` added when nxd gave no answer
/// ([`ClientError::Unreachable`]): for a change nxd may have made, or begun, before it stopped
/// answering, what became of it and how to look, so that the user does not repeat it blind.
/// A connection nxd refused (or that never opened) sent nothing, so nothing is added then.
pub fn cut_off(error: ClientError, meanwhile: impl FnOnce() -> String) -> anyhow::Error {
    match error {
        ClientError::Unreachable { ref source, .. } if source.is_connect() => error.into(),
        ClientError::Unreachable { .. } => anyhow::Error::new(error).context(meanwhile()),
        e => e.into(),
    }
}

/// A local file as a request body that advances a progress bar (hidden when `quiet`), with its
/// size; the bar is for the caller to finish.
pub async fn upload_body(
    file: &std::path::Path,
    quiet: bool,
) -> anyhow::Result<(reqwest::Body, u64, indicatif::ProgressBar)> {
    let size = tokio::fs::metadata(file).await?.len();
    let bar = crate::output::progress_bar(size, quiet);
    let body = counted_body(file, &bar).await?;
    Ok((body, size, bar))
}

/// A local file as a request body that advances `bar` by the bytes sent.
pub async fn counted_body(
    file: &std::path::Path,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<reqwest::Body> {
    let file = tokio::fs::File::open(file).await?;
    let counted = bar.clone();
    let stream = tokio_util::io::ReaderStream::new(file).inspect(move |chunk| {
        if let Ok(c) = chunk {
            counted.inc(c.len() as u64);
        }
    });
    Ok(reqwest::Body::wrap_stream(stream))
}

/// Copies a streamed text answer to stdout as it arrives.
pub async fn stream_to_stdout(resp: reqwest::Response) -> anyhow::Result<()> {
    let mut stream = resp.bytes_stream();
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = stream.next().await {
        out.write_all(&chunk?)?;
        out.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod cut_off_tests {
    use super::*;

    /// F6: a push to a port nobody listens on said the deployment "may have been made"; a
    /// refused connection sent nothing, so the error says only that nxd is not answering.
    #[tokio::test]
    async fn a_refused_connection_says_only_that_nxd_is_not_answering() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host = format!("http://127.0.0.1:{port}");
        let source = reqwest::get(&host).await.unwrap_err();
        let error = cut_off(ClientError::Unreachable { host, source }, || {
            "it may have been made".into()
        });
        let said = format!("{error:#}");
        assert!(said.contains("cannot reach nxd at"), "{said}");
        assert!(!said.contains("may have been made"), "{said}");
    }
}
