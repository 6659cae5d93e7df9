//! Reading a deployment's log: where the last `n` records (or those since a time) begin, found
//! by reading the files backwards in blocks, then every record from there on, forwards, file by
//! file, and on as the log grows (following it across rotation). Memory stays at one block and
//! one line, whatever the size of the log or `n`.

use super::{rotated, Record};
use chrono::{DateTime, Utc};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

const BLOCK: usize = 64 * 1024;
/// The longest time prefix of a record.
const TIME_BYTES: usize = 40;

/// What to read from a log.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// The last this many records (all when `None`).
    pub lines: Option<usize>,
    /// Only records written at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Go on reading what is appended, across rotation.
    pub follow: bool,
}

/// The log's files that exist, newest first (`path`, `path.1`, ...), opened at once so that
/// a rotation while they are read changes nothing.
fn existing_files(path: &Path) -> Vec<File> {
    (0..)
        .map(|n| File::open(rotated(path, n)))
        .map_while(Result::ok)
        .collect()
}

/// The log's files written after the one with inode `ino`, newest first. Rotation renames
/// `path.N` to `path.N+1` from the oldest down, so a file may be missing for a moment: the
/// scan goes on past one gap, and looks again once when `ino` is not found. If it is gone
/// (rotated away), every file is newer.
fn files_after(path: &Path, ino: u64) -> Vec<File> {
    let scan = || {
        let mut files = Vec::new();
        let mut missing = 0;
        for n in 0.. {
            match File::open(rotated(path, n)) {
                Ok(file) => {
                    missing = 0;
                    let this = file.metadata().map(|m| m.ino()).unwrap_or(0);
                    if this == ino {
                        return Some(files);
                    }
                    files.push(file);
                }
                Err(_) if missing == 0 => missing += 1,
                Err(_) => break,
            }
        }
        None
    };
    if let Some(files) = scan() {
        return files;
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    scan().unwrap_or_else(|| existing_files(path))
}

/// Whether the record starting at `offset` was written before `since`.
fn older_than(file: &File, offset: u64, since: DateTime<Utc>) -> bool {
    let mut head = [0u8; TIME_BYTES];
    let n = file.read_at(&mut head, offset).unwrap_or(0);
    let head = &head[..n];
    let time = head
        .iter()
        .position(|&b| b == b' ')
        .and_then(|end| std::str::from_utf8(&head[..end]).ok())
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
    time.is_some_and(|t| t < since)
}

/// Scans `file` backwards from its end for line starts; counts them into `found`. Returns the
/// offset to start reading at once `want` lines were found or a line older than `since`
/// came up, else `None` (start at the beginning of this file or an older one).
fn start_in(
    file: &File,
    found: &mut usize,
    want: usize,
    since: Option<DateTime<Utc>>,
) -> std::io::Result<Option<u64>> {
    let len = file.metadata()?.len();
    let mut block = vec![0u8; BLOCK];
    let mut end = len;
    // The most recent line start found (records after it are wanted).
    let mut last_start = len;
    while end > 0 {
        let begin = end.saturating_sub(BLOCK as u64);
        let buf = &mut block[..(end - begin) as usize];
        file.read_exact_at(buf, begin)?;
        for i in (0..buf.len()).rev() {
            let at = begin + i as u64;
            // A line starts after each newline that is not the file's last byte, and at 0.
            let starts = (buf[i] == b'\n' && at + 1 < len).then_some(at + 1);
            let Some(start) = starts else { continue };
            if since.is_some_and(|s| older_than(file, start, s)) {
                return Ok(Some(last_start));
            }
            *found += 1;
            if *found >= want {
                return Ok(Some(start));
            }
            last_start = start;
        }
        end = begin;
    }
    if len > 0 {
        if since.is_some_and(|s| older_than(file, 0, s)) {
            return Ok(Some(last_start));
        }
        *found += 1;
        if *found >= want {
            return Ok(Some(0));
        }
    }
    Ok(None)
}

/// Reads records of a log, as `Query` asks.
pub struct Reader {
    path: PathBuf,
    /// Newer files still to read after the current one, newest first.
    newer: Vec<File>,
    file: Option<File>,
    /// The inode of `file`, to notice rotation.
    ino: u64,
    offset: u64,
    carry: Vec<u8>,
    query: Query,
}

impl Reader {
    /// Finds where the records the query asks for begin. A log that does not exist yet has
    /// none (and, followed, is read once it appears).
    pub fn open(path: &Path, query: Query) -> std::io::Result<Self> {
        let mut files = existing_files(path);
        let want = query.lines.unwrap_or(usize::MAX);
        let mut found = 0;
        // Newest first: the file where reading starts, and the offset in it.
        let mut start = (files.len().saturating_sub(1), 0);
        if want == 0 {
            start = (
                0,
                files
                    .first()
                    .map_or(Ok(0), |f| f.metadata().map(|m| m.len()))?,
            );
        } else if want != usize::MAX || query.since.is_some() {
            for (i, file) in files.iter().enumerate() {
                if let Some(offset) = start_in(file, &mut found, want, query.since)? {
                    start = (i, offset);
                    break;
                }
            }
        }
        files.truncate(start.0 + 1);
        let current = files.pop();
        let mut reader = Self {
            path: path.to_owned(),
            // Newest first: `pop` gives the next one to read.
            newer: files,
            file: None,
            ino: 0,
            offset: start.1,
            carry: Vec::new(),
            query,
        };
        if let Some(current) = current {
            reader.switch_to(current, start.1)?;
        }
        Ok(reader)
    }

    fn switch_to(&mut self, mut file: File, offset: u64) -> std::io::Result<()> {
        file.seek(SeekFrom::Start(offset))?;
        self.ino = file.metadata()?.ino();
        self.file = Some(file);
        self.offset = offset;
        Ok(())
    }

    fn records(&mut self, complete: bool) -> Vec<Record> {
        let cut = if complete {
            self.carry.len()
        } else {
            match self.carry.iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => return Vec::new(),
            }
        };
        let lines: Vec<u8> = self.carry.drain(..cut).collect();
        lines
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(Record::parse)
            .filter(|r| match (self.query.since, r.time) {
                (Some(since), Some(time)) => time >= since,
                _ => true,
            })
            .collect()
    }

    /// The next records: `Some` (empty when following and nothing is new: wait a moment and
    /// call again), `None` when everything was read and the query does not follow.
    pub fn read(&mut self) -> std::io::Result<Option<Vec<Record>>> {
        loop {
            let Some(file) = self.file.as_mut() else {
                if !self.query.follow {
                    return Ok(None);
                }
                match File::open(&self.path) {
                    Ok(file) => {
                        self.switch_to(file, 0)?;
                        continue;
                    }
                    Err(_) => return Ok(Some(Vec::new())),
                }
            };
            let mut buf = vec![0u8; 4 * BLOCK];
            let n = file.read(&mut buf)?;
            if n > 0 {
                self.offset += n as u64;
                self.carry.extend_from_slice(&buf[..n]);
                let records = self.records(false);
                if records.is_empty() {
                    continue;
                }
                return Ok(Some(records));
            }
            // At the end of this file.
            if let Some(next) = self.newer.pop() {
                let done = self.records(true);
                self.switch_to(next, 0)?;
                if !done.is_empty() {
                    return Ok(Some(done));
                }
                continue;
            }
            if !self.query.follow {
                let rest = self.records(true);
                self.file = None;
                return Ok(if rest.is_empty() { None } else { Some(rest) });
            }
            match self.path.metadata() {
                // Rotated: this file is complete; the ones written after it (more than one
                // when the writer rotated again meanwhile) are read from their start.
                Ok(meta) if meta.ino() != self.ino => {
                    let done = self.records(true);
                    self.newer = files_after(&self.path, self.ino);
                    match self.newer.pop() {
                        Some(next) => self.switch_to(next, 0)?,
                        None => return Ok(Some(done)),
                    }
                    if !done.is_empty() {
                        return Ok(Some(done));
                    }
                }
                // Emptied in place (`keep` 0).
                Ok(meta) if meta.len() < self.offset => {
                    self.carry.clear();
                    self.switch_to(File::open(&self.path)?, 0)?;
                }
                _ => return Ok(Some(Vec::new())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::{encode, Stream};

    fn write_log(path: &Path, from: usize, to: usize, minute: u32) {
        let mut out = Vec::new();
        for i in from..to {
            let time = format!("2026-11-30T03:{minute:02}:00Z").parse().unwrap();
            encode(
                &mut out,
                time,
                Stream::Stdout,
                format!("line {i}").as_bytes(),
            );
        }
        std::fs::write(path, out).unwrap();
    }

    fn read_all(reader: &mut Reader) -> Vec<String> {
        let mut texts = Vec::new();
        while let Some(records) = reader.read().unwrap() {
            if records.is_empty() {
                break;
            }
            texts.extend(records.into_iter().map(|r| r.text));
        }
        texts
    }

    #[test]
    fn the_last_lines_span_rotated_files_and_since_cuts_by_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("output.log");
        write_log(&rotated(&path, 2), 0, 10_000, 1);
        write_log(&rotated(&path, 1), 10_000, 20_000, 2);
        write_log(&path, 20_000, 20_003, 3);
        let query = |lines, since: Option<&str>| Query {
            lines,
            since: since.map(|s| s.parse().unwrap()),
            follow: false,
        };
        let last = read_all(&mut Reader::open(&path, query(Some(5), None)).unwrap());
        assert_eq!(
            last,
            [
                "line 19998",
                "line 19999",
                "line 20000",
                "line 20001",
                "line 20002"
            ]
        );
        let all = read_all(&mut Reader::open(&path, query(None, None)).unwrap());
        assert_eq!(all.len(), 20_003);
        let since =
            read_all(&mut Reader::open(&path, query(None, Some("2026-11-30T03:02:00Z"))).unwrap());
        assert_eq!(since.len(), 10_003);
        assert_eq!(since[0], "line 10000");
        for n in 1..5 {
            write_log(&path, 20_000, 20_000 + n, 3);
            let last = read_all(&mut Reader::open(&path, query(Some(2), None)).unwrap());
            assert_eq!(last.len(), 2, "{n} lines in the current file: {last:?}");
        }
        std::fs::write(&path, b"").unwrap();
        let last = read_all(&mut Reader::open(&path, query(Some(2), None)).unwrap());
        assert_eq!(last, ["line 19998", "line 19999"]);
        let none = read_all(&mut Reader::open(&path, query(Some(0), None)).unwrap());
        assert!(none.is_empty());
    }

    #[test]
    fn following_reads_every_file_of_two_rotations_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("output.log");
        write_log(&path, 0, 2, 1);
        let follow = Query {
            lines: None,
            since: None,
            follow: true,
        };
        let mut reader = Reader::open(&path, follow).unwrap();
        assert_eq!(read_all(&mut reader), ["line 0", "line 1"]);
        // Two rotations before the reader looks again.
        std::fs::rename(&path, rotated(&path, 1)).unwrap();
        write_log(&path, 2, 4, 2);
        std::fs::rename(rotated(&path, 1), rotated(&path, 2)).unwrap();
        std::fs::rename(&path, rotated(&path, 1)).unwrap();
        write_log(&path, 4, 6, 3);
        assert_eq!(
            read_all(&mut reader),
            ["line 2", "line 3", "line 4", "line 5"]
        );
    }

    #[test]
    fn following_goes_on_across_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("output.log");
        write_log(&path, 0, 3, 1);
        let mut reader = Reader::open(
            &path,
            Query {
                lines: Some(1),
                since: None,
                follow: true,
            },
        )
        .unwrap();
        assert_eq!(read_all(&mut reader), ["line 2"]);
        // More, then the writer rotates and writes on into a new file.
        let mut more = std::fs::read(&path).unwrap();
        let mut tail = Vec::new();
        encode(&mut tail, Utc::now(), Stream::Stderr, b"line 3");
        more.extend_from_slice(&tail);
        std::fs::write(&path, &more).unwrap();
        std::fs::rename(&path, rotated(&path, 1)).unwrap();
        write_log(&path, 4, 6, 2);
        assert_eq!(read_all(&mut reader), ["line 3", "line 4", "line 5"]);
    }
}
