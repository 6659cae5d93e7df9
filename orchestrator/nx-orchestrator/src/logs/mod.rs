//! A deployment's log: what its program writes to stdout and stderr, one record per line, in
//! `output.log` and its rotated predecessors `output.log.1` (newest) .. `output.log.<keep>`.
//!
//! A record is one line of text: `<time> <stream> <text>\n`, where `<time>` is RFC 3339 in UTC
//! with microseconds (`2026-11-30T03:10:38.123456Z`, always 27 bytes), `<stream>` is `stdout`,
//! `stderr` or `nx` (what NX itself says about the run: dropped lines, how the program ended),
//! and `<text>` is the program's bytes up to the newline (a line longer than
//! [`MAX_LINE_BYTES`] is split into several records). Lines that are not records (what the
//! unit's launcher printed before the log writer started) read as stream `nx` with no time.
//!
//! The unit writes them (`writer`, in the deployment's launcher, so the log lives and rotates
//! with the unit, also while nxd is down); nxd reads them (`reader`).

pub mod reader;
mod stream;
#[cfg(target_os = "linux")]
pub mod writer;

pub use stream::{stream, tail, tail_records, StillFollowed};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The longest text one record holds; longer lines are split (journald's `LineMax` is 48 KiB).
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Which stream a record came from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::AsRefStr, strum::EnumString,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    /// NX's own notes about the run.
    Nx,
}

/// One line of a deployment's output, as `nx logs --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When the log writer read the line; `None` for a line that is not a record.
    pub time: Option<DateTime<Utc>>,
    pub stream: Stream,
    /// The text, without its newline (invalid UTF-8 becomes U+FFFD).
    pub text: String,
}

impl Record {
    /// Parses one stored line (without its newline).
    pub fn parse(line: &[u8]) -> Record {
        let text = String::from_utf8_lossy(line);
        let parsed = text.split_once(' ').and_then(|(time, rest)| {
            let time = DateTime::parse_from_rfc3339(time).ok()?;
            let (stream, text) = rest.split_once(' ').unwrap_or((rest, ""));
            Some(Record {
                time: Some(time.with_timezone(&Utc)),
                stream: stream.parse().ok()?,
                text: text.to_owned(),
            })
        });
        parsed.unwrap_or_else(|| Record {
            time: None,
            stream: Stream::Nx,
            text: text.into_owned(),
        })
    }

    /// The line as `nx logs` prints it: `<time> <stream> <text>`.
    pub fn display(&self) -> String {
        match self.time {
            Some(time) => format!(
                "{} {} {}",
                format_time(time),
                self.stream.as_ref(),
                self.text
            ),
            None => format!("- {} {}", self.stream.as_ref(), self.text),
        }
    }
}

/// A record's time as stored: RFC 3339 in UTC with microseconds, always 27 bytes.
fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Appends one stored record for `text` (which holds no newline) to `out`.
pub fn encode(out: &mut Vec<u8>, time: DateTime<Utc>, stream: Stream, text: &[u8]) {
    encode_stamped(out, format_time(time).as_bytes(), stream, text);
}

/// [`encode`] with the time already formatted by [`format_time`] (the log writer stamps every
/// line of one read with the same time, and formats it once).
fn encode_stamped(out: &mut Vec<u8>, time: &[u8], stream: Stream, text: &[u8]) {
    out.extend_from_slice(time);
    out.push(b' ');
    out.extend_from_slice(stream.as_ref().as_bytes());
    out.push(b' ');
    out.extend_from_slice(text);
    out.push(b'\n');
}

/// Appends one `nx` record for `text` (which holds no newline) to the log at `path`, in one
/// `write(2)` with `O_APPEND` beside the unit's own writer: what nxd itself did to the
/// deployment (e.g. a restart after failed health checks) shows in `nx logs`. A failure is
/// logged, not returned: the record is a courtesy.
pub fn append_note(path: &Path, text: &str) {
    use std::io::Write;
    let mut record = Vec::new();
    encode(&mut record, Utc::now(), Stream::Nx, text.as_bytes());
    let written = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(&record));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot note in the deployment's log");
    }
}

/// Where a deployment's log lives and how large it may grow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogFiles {
    /// The current file, `output.log`; rotated ones are `output.log.1` .. `output.log.<keep>`.
    pub path: PathBuf,
    /// The most all of them hold together, in bytes; each file rotates at
    /// `max_bytes / (keep + 1)`.
    pub max_bytes: u64,
    /// How many rotated files are kept.
    pub keep: u32,
}

impl LogFiles {
    /// The size at which the current file is rotated.
    pub fn file_max_bytes(&self) -> u64 {
        (self.max_bytes / (u64::from(self.keep) + 1)).max(MAX_LINE_BYTES as u64 * 4)
    }

    /// The `n`th rotated file (0 is the current one).
    pub fn rotated(&self, n: u32) -> PathBuf {
        rotated(&self.path, n)
    }

    /// What the current file and the kept rotated ones hold now, in bytes (a missing file
    /// holds none).
    pub fn held_bytes(&self) -> u64 {
        (0..=self.keep)
            .filter_map(|n| std::fs::metadata(self.rotated(n)).ok())
            .map(|m| m.len())
            .sum()
    }

    /// What the log may still write before it is full, in bytes: `max_bytes` less
    /// [`Self::held_bytes`].
    pub fn room_bytes(&self) -> u64 {
        self.max_bytes.saturating_sub(self.held_bytes())
    }
}

/// The `n`th file of the log at `path` (0: `path` itself, n: `path.n`).
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    if n == 0 {
        return path.to_owned();
    }
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_other_lines_read_as_nx() {
        let time = DateTime::parse_from_rfc3339("2026-11-30T03:10:38.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut out = Vec::new();
        encode(&mut out, time, Stream::Stderr, b"a b  c");
        assert_eq!(out, b"2026-11-30T03:10:38.123456Z stderr a b  c\n");
        let record = Record::parse(&out[..out.len() - 1]);
        assert_eq!(record.time, Some(time));
        assert_eq!(record.stream, Stream::Stderr);
        assert_eq!(record.text, "a b  c");
        let raw = Record::parse(b"launch: cannot read spec");
        assert_eq!((raw.time, raw.stream), (None, Stream::Nx));
        assert_eq!(raw.text, "launch: cannot read spec");
    }
}
