//! nxd's typed client (`nx_api::client`) as the CLI uses it: built from the settings, with a
//! progress bar around uploads and streamed answers copied to stdout.

use crate::settings::Settings;
use futures_util::StreamExt;
pub use nx_api::client::{Client, ClientError};
use std::io::Write;

/// The client for the host and token the settings resolved.
pub fn connect(settings: &Settings) -> Client {
    Client::new(settings.host.clone(), settings.token.clone())
}

/// A local file as a request body that advances a progress bar (hidden when `quiet`), with its
/// size; the bar is for the caller to finish.
pub async fn upload_body(
    file: &std::path::Path,
    quiet: bool,
) -> anyhow::Result<(reqwest::Body, u64, indicatif::ProgressBar)> {
    let file = tokio::fs::File::open(file).await?;
    let size = file.metadata().await?.len();
    let bar = crate::output::progress_bar(size, quiet);
    let counted = bar.clone();
    let stream = tokio_util::io::ReaderStream::new(file).inspect(move |chunk| {
        if let Ok(c) = chunk {
            counted.inc(c.len() as u64);
        }
    });
    Ok((reqwest::Body::wrap_stream(stream), size, bar))
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
