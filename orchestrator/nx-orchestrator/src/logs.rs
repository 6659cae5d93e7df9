//! A deployment's output (the unit's stdout and stderr, appended to one file): the last lines,
//! and, with follow, what is appended after them.

use bytes::Bytes;
use futures_util::Stream;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// The last `n` lines of a file (all of it if shorter); a missing file has none.
pub fn tail(path: &std::path::Path, n: usize) -> Vec<String> {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// The last `n` lines, then (when `follow`) every byte appended, polled every 200 ms.
pub fn stream(
    path: PathBuf,
    n: usize,
    follow: bool,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    let start = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let head: String = tail(&path, n).into_iter().map(|l| l + "\n").collect();
    let first = futures_util::stream::once(async move { Ok(Bytes::from(head)) });
    let rest = futures_util::stream::unfold((path, start), move |(path, offset)| async move {
        if !follow {
            return None;
        }
        loop {
            let len = tokio::fs::metadata(&path)
                .await
                .map(|m| m.len())
                .unwrap_or(0);
            if len > offset {
                let mut file = match tokio::fs::File::open(&path).await {
                    Ok(f) => f,
                    Err(e) => return Some((Err(e), (path, offset))),
                };
                if let Err(e) = file.seek(std::io::SeekFrom::Start(offset)).await {
                    return Some((Err(e), (path, offset)));
                }
                let mut buf = Vec::with_capacity((len - offset) as usize);
                let read = (&mut file).take(len - offset).read_to_end(&mut buf).await;
                return Some((read.map(|_| Bytes::from(buf)), (path, len)));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    futures_util::StreamExt::chain(first, rest)
}
