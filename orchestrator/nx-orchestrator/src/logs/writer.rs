//! The log writer of a deployment's unit: reads the program's stdout and stderr pipes, stamps
//! and marks each line, and appends the records to a capped, rotated log.
//!
//! The program is never held up by the log: a reader thread per pipe only reads, splits and
//! queues (the pipe is enlarged to 1 MiB); one writer thread writes to disk. When the queue
//! already holds [`QUEUE_BYTES`] (the disk cannot keep up), new lines are dropped and counted,
//! and the count is written as an `nx` record as soon as the writer catches up.

use super::{encode, encode_stamped, format_time, LogFiles, Stream, MAX_LINE_BYTES};
use chrono::Utc;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Output read but not yet written that the writer holds at most; past it, lines are dropped.
pub const QUEUE_BYTES: usize = 8 << 20;
/// The pipe size asked for with `F_SETPIPE_SZ` (the kernel's default `pipe-max-size`).
const PIPE_BYTES: i32 = 1 << 20;
/// A partial line (no newline yet) is written after the stream was quiet this long.
const PARTIAL_LINE_AFTER: Duration = Duration::from_millis(250);

/// Where records go: the rotated log file, or anything else in tests.
pub trait Sink: Send + 'static {
    /// Writes whole records.
    fn write_records(&mut self, records: &[u8]) -> std::io::Result<()>;
}

/// `output.log`, rotated to `output.log.1` .. `output.log.<keep>` at
/// [`LogFiles::file_max_bytes`]; with `keep` 0 it is emptied instead. Files are 0600, root's.
pub struct RotatingFile {
    files: LogFiles,
    file: File,
    size: u64,
}

fn open_append(path: &std::path::Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl RotatingFile {
    pub fn open(files: LogFiles) -> std::io::Result<Self> {
        let file = open_append(&files.path)?;
        let size = file.metadata()?.len();
        Ok(Self { files, file, size })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if self.files.keep == 0 {
            self.file.set_len(0)?;
        } else {
            for n in (1..self.files.keep).rev() {
                match std::fs::rename(self.files.rotated(n), self.files.rotated(n + 1)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.files.path, self.files.rotated(1))?;
            self.file = open_append(&self.files.path)?;
        }
        self.size = 0;
        Ok(())
    }
}

impl Sink for RotatingFile {
    /// Writes the records that fit in the current file's share, rotates, and goes on with the
    /// rest: a batch is split at the record that would pass the share, so every rotated file
    /// holds its share less at most one record, and the oldest goes only when all files
    /// together are about full (review15 #10: a whole batch that did not fit rotated early,
    /// and under load the first lines were gone far below `max_bytes`).
    fn write_records(&mut self, mut records: &[u8]) -> std::io::Result<()> {
        let share = self.files.file_max_bytes();
        while !records.is_empty() {
            let room = usize::try_from(share.saturating_sub(self.size)).unwrap_or(usize::MAX);
            let mut cut = fitting_records(records, room);
            if cut == 0 {
                if self.size > 0 {
                    self.rotate()?;
                    continue;
                }
                // One record longer than a whole share (not made by this writer): alone.
                cut = memchr::memchr(b'\n', records).map_or(records.len(), |i| i + 1);
            }
            self.file.write_all(&records[..cut])?;
            self.size += cut as u64;
            records = &records[cut..];
        }
        Ok(())
    }
}

/// The length of the longest run of whole records (each ends in `\n`) at the start of
/// `records` that is at most `room` bytes long.
fn fitting_records(records: &[u8], room: usize) -> usize {
    if records.len() <= room {
        return records.len();
    }
    memchr::memrchr(b'\n', &records[..room]).map_or(0, |i| i + 1)
}

#[derive(Default)]
struct QueueState {
    chunks: VecDeque<Vec<u8>>,
    bytes: usize,
    dropped_lines: u64,
    dropped_bytes: u64,
    /// Readers still running.
    readers: usize,
}

struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

/// What the writer takes from the queue in one go.
struct Batch {
    chunks: Vec<Vec<u8>>,
    dropped_lines: u64,
    dropped_bytes: u64,
}

impl Queue {
    fn push(&self, chunk: Vec<u8>, lines: u64) {
        let mut state = self.state.lock().expect("log queue");
        if state.bytes + chunk.len() > QUEUE_BYTES {
            state.dropped_lines += lines;
            state.dropped_bytes += chunk.len() as u64;
        } else {
            state.bytes += chunk.len();
            state.chunks.push_back(chunk);
        }
        self.ready.notify_one();
    }

    /// Queues an `nx` record however full the queue is (notes are few and short).
    fn push_note(&self, text: &str) {
        let record = note(text);
        let mut state = self.state.lock().expect("log queue");
        state.bytes += record.len();
        state.chunks.push_back(record);
        self.ready.notify_one();
    }

    fn reader_done(&self) {
        self.state.lock().expect("log queue").readers -= 1;
        self.ready.notify_one();
    }

    /// Waits for something to write; `None` once every reader is done and all is written.
    fn take(&self) -> Option<Batch> {
        let mut state = self.state.lock().expect("log queue");
        while state.chunks.is_empty() && state.dropped_lines == 0 {
            if state.readers == 0 {
                return None;
            }
            state = self.ready.wait(state).expect("log queue");
        }
        state.bytes = 0;
        Some(Batch {
            chunks: state.chunks.drain(..).collect(),
            dropped_lines: std::mem::take(&mut state.dropped_lines),
            dropped_bytes: std::mem::take(&mut state.dropped_bytes),
        })
    }
}

/// A running capture of a program's stdout and stderr.
pub struct Capture<S: Sink> {
    queue: Arc<Queue>,
    /// Readers stop at this time even without EOF (a leftover process may hold a pipe open).
    deadline: Arc<Mutex<Option<Instant>>>,
    readers: Vec<JoinHandle<()>>,
    writer: JoinHandle<S>,
}

/// Writes `nx` records into a running [`Capture`]'s log, between the program's lines (from
/// another thread of the monitor, e.g. when forks were refused). Notes given after the
/// capture finished are lost.
#[derive(Clone)]
pub struct Notes(Arc<Queue>);

impl Notes {
    /// Queues one `nx` record for `text` (which holds no newline).
    pub fn write(&self, text: &str) {
        self.0.push_note(text);
    }
}

/// One `nx` record for `text`.
pub fn note(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    encode(&mut out, Utc::now(), Stream::Nx, text.as_bytes());
    out
}

impl<S: Sink> Capture<S> {
    /// Starts reading `stdout` and `stderr` (the read ends of the program's pipes) into `sink`.
    pub fn start(sink: S, stdout: OwnedFd, stderr: OwnedFd) -> Self {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState {
                readers: 2,
                ..QueueState::default()
            }),
            ready: Condvar::new(),
        });
        let deadline = Arc::new(Mutex::new(None));
        let readers = [(stdout, Stream::Stdout), (stderr, Stream::Stderr)]
            .into_iter()
            .map(|(fd, stream)| {
                let (queue, deadline) = (Arc::clone(&queue), Arc::clone(&deadline));
                std::thread::spawn(move || {
                    read_stream(fd, stream, &queue, &deadline);
                    queue.reader_done();
                })
            })
            .collect();
        let writer = {
            let queue = Arc::clone(&queue);
            std::thread::spawn(move || write_all(sink, &queue))
        };
        Self {
            queue,
            deadline,
            readers,
            writer,
        }
    }

    /// A handle to write `nx` records into this capture's log.
    pub fn notes(&self) -> Notes {
        Notes(Arc::clone(&self.queue))
    }

    /// Reads on until both pipes are closed, or `grace` from now at the latest, writes what
    /// was read, and gives the sink back.
    pub fn finish(self, grace: Duration) -> S {
        *self.deadline.lock().expect("deadline") = Some(Instant::now() + grace);
        for reader in self.readers {
            let _ = reader.join();
        }
        drop(self.queue);
        self.writer.join().expect("log writer thread")
    }
}

fn write_all<S: Sink>(mut sink: S, queue: &Queue) -> S {
    let mut failed = 0u64;
    while let Some(batch) = queue.take() {
        if batch.dropped_lines > 0 {
            let text = format!(
                "dropped {} lines ({} bytes): the log writer could not keep up with the program",
                batch.dropped_lines, batch.dropped_bytes
            );
            let _ = sink.write_records(&note(&text));
        }
        for chunk in batch.chunks {
            if sink.write_records(&chunk).is_err() {
                failed += chunk.len() as u64;
            }
        }
    }
    if failed > 0 {
        let _ = sink.write_records(&note(&format!(
            "{failed} bytes of output could not be written to the log"
        )));
    }
    sink
}

fn read_stream(fd: OwnedFd, stream: Stream, queue: &Queue, deadline: &Mutex<Option<Instant>>) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let _ = nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BYTES),
    );
    let mut file = File::from(fd);
    // As much as the pipe holds: one read takes whatever the program wrote meanwhile.
    let mut buf = vec![0u8; PIPE_BYTES as usize];
    let mut pending: Vec<u8> = Vec::new();
    let mut quiet_since = Instant::now();
    loop {
        if deadline
            .lock()
            .expect("deadline")
            .is_some_and(|d| Instant::now() >= d)
        {
            break;
        }
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(100u16)) {
            Ok(0) => {
                if !pending.is_empty() && quiet_since.elapsed() >= PARTIAL_LINE_AFTER {
                    let mut chunk = Vec::new();
                    encode(&mut chunk, Utc::now(), stream, &pending);
                    pending.clear();
                    queue.push(chunk, 1);
                }
                continue;
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
            Ok(_) => {}
        }
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        quiet_since = Instant::now();
        let (chunk, lines) = split_lines(&mut pending, &buf[..n], stream);
        if lines > 0 {
            queue.push(chunk, lines);
        }
    }
    if !pending.is_empty() {
        let mut chunk = Vec::new();
        encode(&mut chunk, Utc::now(), stream, &pending);
        queue.push(chunk, 1);
    }
}

/// Encodes every complete line of `pending` + `data` (and every [`MAX_LINE_BYTES`] piece of an
/// overlong one) as records stamped now; what is left of a line stays in `pending`. Only a
/// line begun in an earlier read is copied (into `pending`); the rest is encoded from `data`.
fn split_lines(pending: &mut Vec<u8>, data: &[u8], stream: Stream) -> (Vec<u8>, u64) {
    let time = format_time(Utc::now());
    let time = time.as_bytes();
    // A stamp and a stream name per line: about half again for 100-byte lines.
    let mut chunk = Vec::with_capacity(data.len() + data.len() / 2 + 256);
    let mut data = data;
    let mut lines = 0;
    if !pending.is_empty() {
        // The line begun earlier, up to this read's first newline.
        let cut = memchr::memchr(b'\n', data).map_or(data.len(), |i| i + 1);
        pending.extend_from_slice(&data[..cut]);
        let (used, n) = encode_lines(pending, time, stream, &mut chunk);
        pending.drain(..used);
        lines += n;
        data = &data[cut..];
    }
    let (used, n) = encode_lines(data, time, stream, &mut chunk);
    pending.extend_from_slice(&data[used..]);
    (chunk, lines + n)
}

/// Encodes every complete line of `buf` (and every [`MAX_LINE_BYTES`] piece of an overlong
/// one) into `chunk`, stamped `time`; returns the bytes of `buf` used and the records written
/// (what is left is the start of a line).
fn encode_lines(buf: &[u8], time: &[u8], stream: Stream, chunk: &mut Vec<u8>) -> (usize, u64) {
    let (mut start, mut lines) = (0, 0);
    while start < buf.len() {
        let rest = &buf[start..];
        let window = &rest[..rest.len().min(MAX_LINE_BYTES + 1)];
        let (end, newline) = match memchr::memchr(b'\n', window) {
            Some(i) => (i, 1),
            None if rest.len() >= MAX_LINE_BYTES => (MAX_LINE_BYTES, 0),
            None => break,
        };
        encode_stamped(chunk, time, stream, &rest[..end]);
        lines += 1;
        start += end + newline;
    }
    (start, lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::Record;

    fn records(bytes: &[u8]) -> Vec<Record> {
        bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(Record::parse)
            .collect()
    }

    #[test]
    fn lines_are_split_stamped_and_overlong_ones_cut() {
        let mut pending = b"par".to_vec();
        let (chunk, n) = split_lines(&mut pending, b"tial\nnext\nhalf", Stream::Stdout);
        assert_eq!(n, 2);
        assert_eq!(pending, b"half");
        let texts: Vec<String> = records(&chunk).into_iter().map(|r| r.text).collect();
        assert_eq!(texts, ["partial", "next"]);
        // A line over three reads.
        let mut pending = Vec::new();
        let (_, n) = split_lines(&mut pending, b"a\nb", Stream::Stdout);
        assert_eq!((n, pending.as_slice()), (1, &b"b"[..]));
        let (chunk, n) = split_lines(&mut pending, b"cd", Stream::Stdout);
        assert_eq!((n, chunk.len(), pending.as_slice()), (0, 0, &b"bcd"[..]));
        let (chunk, n) = split_lines(&mut pending, b"e\nf\n", Stream::Stdout);
        let texts: Vec<String> = records(&chunk).into_iter().map(|r| r.text).collect();
        assert_eq!(
            (n, texts, pending.len()),
            (2, vec!["bcde".to_owned(), "f".into()], 0)
        );
        let mut pending = Vec::new();
        let long = vec![b'x'; MAX_LINE_BYTES * 2 + 5];
        let (chunk, n) = split_lines(&mut pending, &long, Stream::Stderr);
        assert_eq!((n, pending.len()), (2, 5));
        assert!(records(&chunk)
            .iter()
            .all(|r| r.text.len() == MAX_LINE_BYTES));
    }

    #[test]
    fn rotation_keeps_at_most_keep_files_under_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let files = LogFiles {
            path: dir.path().join("output.log"),
            max_bytes: 3 << 20,
            keep: 2,
        };
        let mut log = RotatingFile::open(files.clone()).unwrap();
        let line = note(&"y".repeat(1000));
        for _ in 0..20_000 {
            log.write_records(&line).unwrap();
        }
        let total = files.held_bytes();
        assert!(total <= files.max_bytes, "{total} bytes on disk");
        assert!(files.rotated(2).exists() && !files.rotated(3).exists());
    }

    /// Review15 #10: a writer that fell behind writes big batches (a 1 MiB pipe read, stamped);
    /// one that passes the file's share is split there, so below the cap nothing is removed.
    #[test]
    fn a_batch_past_the_files_share_is_split_and_nothing_goes_below_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let files = LogFiles {
            path: dir.path().join("output.log"),
            max_bytes: 16 << 20,
            keep: 4,
        };
        let mut log = RotatingFile::open(files.clone()).unwrap();
        let first = note("the first line");
        log.write_records(&first).unwrap();
        // Eight batches of 1.7 MiB: 13.6 MiB, below the cap; a file's share is 3.2 MiB.
        let line = note(&"x".repeat(99));
        let batch = line.repeat((17 << 20) / 10 / line.len());
        for _ in 0..8 {
            log.write_records(&batch).unwrap();
        }
        let written = (first.len() + 8 * batch.len()) as u64;
        assert!(written < files.max_bytes);
        let held = files.held_bytes();
        assert_eq!(held, written, "{held} of {written} bytes written are left");
        for n in 0..=files.keep {
            let size = std::fs::metadata(files.rotated(n)).map_or(0, |m| m.len());
            assert!(
                size <= files.file_max_bytes(),
                "file {n} holds {size} bytes"
            );
        }
        let oldest = std::fs::read(files.rotated(files.keep)).unwrap();
        assert_eq!(records(&oldest)[0].text, "the first line");
    }

    /// A sink as slow as a stalled disk.
    struct Stalled(Arc<Mutex<Vec<u8>>>);
    impl Sink for Stalled {
        fn write_records(&mut self, records: &[u8]) -> std::io::Result<()> {
            std::thread::sleep(Duration::from_millis(200));
            self.0.lock().unwrap().extend_from_slice(records);
            Ok(())
        }
    }

    #[test]
    fn a_stalled_writer_drops_and_counts_lines_instead_of_blocking_the_program() {
        let (out_r, out_w) = nix::unistd::pipe().unwrap();
        let (err_r, err_w) = nix::unistd::pipe().unwrap();
        let written = Arc::new(Mutex::new(Vec::new()));
        let capture = Capture::start(Stalled(Arc::clone(&written)), out_r, err_r);
        let mut program = File::from(out_w);
        let line = [b'z'; 1023];
        let started = Instant::now();
        // 64 MiB, eight times what the queue holds, against a sink that writes 5 times a second.
        for _ in 0..65_536 {
            program.write_all(&line).unwrap();
            program.write_all(b"\n").unwrap();
        }
        let blocked_for = started.elapsed();
        drop((program, err_w));
        capture.finish(Duration::from_secs(5));
        assert!(
            blocked_for < Duration::from_secs(10),
            "the program waited {blocked_for:?}"
        );
        let records = records(&written.lock().unwrap());
        let dropped = records
            .iter()
            .find(|r| r.stream == Stream::Nx && r.text.starts_with("dropped "))
            .expect("a note of the dropped lines");
        let n: u64 = dropped.text.split(' ').nth(1).unwrap().parse().unwrap();
        let kept = records
            .iter()
            .filter(|r| r.stream == Stream::Stdout)
            .count() as u64;
        assert!(n > 0);
        assert!(kept > 0);
        let noted: u64 = records
            .iter()
            .filter(|r| r.text.starts_with("dropped "))
            .map(|r| r.text.split(' ').nth(1).unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(kept + noted, 65_536, "every line is written or counted");
    }
}
