//! A deployment's log as a byte stream (for nxd's HTTP API): the records the query asks for,
//! then (with follow) those written after them, as text lines (`<time> <stream> <text>`) or JSON
//! lines (one `Record` each). Reading happens on the blocking pool, one block at a time.

use super::reader::{Query, Reader};
use super::Record;
use bytes::Bytes;
use futures_util::Stream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often a followed log is looked at again when nothing new was there.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Every how many quiet polls (about a second) a followed log asks its [`StillFollowed`].
const CHECK_EVERY: u32 = 5;

/// Whether a followed log may go on (its deployment exists, the caller's token still holds):
/// asked about once a second while nothing new is written; `false` ends the stream.
pub type StillFollowed = Box<dyn FnMut() -> futures_util::future::BoxFuture<'static, bool> + Send>;

/// The last `n` records of a log, as `nx logs` prints them; a missing log has none.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    tail_records(path, n).iter().map(Record::display).collect()
}

/// The last `n` records of a log, oldest first; a missing log has none.
pub fn tail_records(path: &Path, n: usize) -> Vec<Record> {
    let query = Query {
        lines: Some(n),
        ..Query::default()
    };
    let mut all = Vec::new();
    if let Ok(mut reader) = Reader::open(path, query) {
        while let Ok(Some(records)) = reader.read() {
            all.extend(records);
        }
    }
    all
}

fn encode(records: &[Record], json: bool) -> Bytes {
    let mut out = Vec::new();
    for record in records {
        if json {
            serde_json::to_writer(&mut out, record).expect("a record serialises");
        } else {
            out.extend_from_slice(record.display().as_bytes());
        }
        out.push(b'\n');
    }
    Bytes::from(out)
}

enum Step {
    Open(PathBuf, Query),
    Read(Box<Reader>),
    Done,
}

/// The records `query` asks for, encoded as text or JSON lines; a followed log ends once
/// `still` says so (see [`StillFollowed`]).
pub fn stream(
    path: PathBuf,
    query: Query,
    json: bool,
    still: StillFollowed,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    let start = (Step::Open(path, query), still);
    futures_util::stream::unfold(start, move |(step, mut still)| async move {
        let mut reader = match step {
            Step::Open(path, query) => {
                match tokio::task::spawn_blocking(move || Reader::open(&path, query)).await {
                    Ok(Ok(reader)) => Box::new(reader),
                    Ok(Err(e)) => return Some((Err(e), (Step::Done, still))),
                    Err(e) => return Some((Err(std::io::Error::other(e)), (Step::Done, still))),
                }
            }
            Step::Read(reader) => reader,
            Step::Done => return None,
        };
        let mut quiet = 0u32;
        loop {
            let (back, result) = tokio::task::spawn_blocking(move || {
                let result = reader.read();
                (reader, result)
            })
            .await
            .ok()?;
            reader = back;
            match result {
                Ok(Some(records)) if records.is_empty() => {
                    quiet += 1;
                    if quiet.is_multiple_of(CHECK_EVERY) && !still().await {
                        return None;
                    }
                    tokio::time::sleep(FOLLOW_POLL).await;
                }
                Ok(Some(records)) => {
                    return Some((Ok(encode(&records, json)), (Step::Read(reader), still)))
                }
                Ok(None) => return None,
                Err(e) => return Some((Err(e), (Step::Done, still))),
            }
        }
    })
}
