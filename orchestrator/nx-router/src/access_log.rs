//! The router's log output: every line (tracing's events and the access log) goes to stdout
//! (under nxd, a pipe to the unit's log writer, which stamps, caps and rotates `router.log`)
//! through one [`LogBuffer`], and the access log's line per request is
//! formatted here ([`Entry`]), not by tracing's formatter.
//!
//! Why by hand: tracing-subscriber's `fmt` layer took 4.4% of the router's CPU under wrk, about
//! 1.7 µs per access line (dispatch, a visitor per field, `Debug` of each value, its timer);
//! this line takes 1.7%, about 0.65 µs, of a router spending about 38 µs per request (perf
//! with call graphs, release build, 16 connections on loopback). The
//! line keeps the shape of tracing's lines around it, `<RFC 3339 time>  INFO nx_router::access:
//! request key=value ...` (logfmt: a value with a space, `"`, `=` or a control character is
//! quoted with Rust's string escapes), and the same filter: `RUST_LOG=nx_router::access=off`
//! turns it off.

use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How often the log buffer is written out when it has not filled up before.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// The target of the access log's lines (what `RUST_LOG` names to filter them).
pub const TARGET: &str = "nx_router::access";

/// The buffer every log line goes through: 64 KiB, written when full and every
/// [`FLUSH_INTERVAL`] by a thread of its own (like nginx's `access_log ... buffer= flush=`): a
/// `write(2)` per access log line cost about a tenth of the router's time per request, and a
/// log thread fed per line cost more in wake-ups (perf, nx-bench). Lines of the last interval
/// are lost if the router is killed.
#[derive(Clone)]
pub struct LogBuffer(Arc<Mutex<BufWriter<std::fs::File>>>);

impl LogBuffer {
    /// A buffer in front of a duplicate of stdout's fd (stdout's own handle writes line by
    /// line), with its flush thread started.
    pub fn stdout() -> std::io::Result<Self> {
        use std::os::fd::AsFd;
        let file = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
        let buffer = Self(Arc::new(Mutex::new(BufWriter::with_capacity(
            64 << 10,
            file,
        ))));
        let flushed = buffer.clone();
        std::thread::Builder::new()
            .name("nx-router-log".into())
            .spawn(move || loop {
                std::thread::sleep(FLUSH_INTERVAL);
                let result = flushed.0.lock().map(|mut b| b.flush());
                if let Ok(Err(e)) = result {
                    eprintln!("nx-router: cannot write the log: {e}");
                }
            })?;
        Ok(buffer)
    }

    /// Appends whole lines (a poisoned lock loses them: a thread panicked while appending).
    pub fn append(&self, lines: &[u8]) -> std::io::Result<()> {
        let mut buffer = self
            .0
            .lock()
            .map_err(|_| std::io::Error::other("the log buffer's lock is poisoned"))?;
        buffer.write_all(lines)
    }
}

/// tracing's writer for one event: appends its formatted line to the [`LogBuffer`].
pub struct EventWriter(pub LogBuffer);

impl Write for EventWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.append(bytes)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One finished request, as its access log line tells it.
pub struct Entry<'a> {
    pub request_id: &'a str,
    pub peer: Option<IpAddr>,
    /// The request's authority (`Host` or `:authority`) as the client sent it.
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub version: http::Version,
    /// Empty when no route matched.
    pub sandbox: &'a str,
    pub deployment: &'a str,
    /// The response status; 0 when none was sent.
    pub status: u16,
    /// From the request head to the end of the response.
    pub duration: Duration,
    /// Response body bytes sent to the client.
    pub bytes_sent: usize,
    /// Request body bytes received from the client.
    pub bytes_received: u64,
    /// Why the request failed, when it did.
    pub error: Option<&'a dyn std::fmt::Display>,
}

impl Entry<'_> {
    /// Appends the line (with its `\n`) for a request that ended `at` to `out`.
    pub fn format(&self, at: SystemTime, out: &mut Vec<u8>) {
        // Writing to a Vec does not fail.
        let _ = write!(
            out,
            "{}  INFO {TARGET}: request request_id=",
            humantime::format_rfc3339_micros(at)
        );
        value(out, self.request_id);
        out.extend_from_slice(b" peer=");
        match self.peer {
            Some(ip) => {
                let _ = write!(out, "{ip}");
            }
            None => out.extend_from_slice(b"\"\""),
        }
        for (key, text) in [
            (" host=", self.host),
            (" method=", self.method),
            (" path=", self.path),
        ] {
            out.extend_from_slice(key.as_bytes());
            value(out, text);
        }
        let _ = write!(out, " version={:?} sandbox=", self.version);
        value(out, self.sandbox);
        out.extend_from_slice(b" deployment=");
        value(out, self.deployment);
        let micros = self.duration.as_micros();
        let _ = write!(
            out,
            " status={} duration_ms={}.{:03} bytes_sent={} bytes_received={}",
            self.status,
            micros / 1000,
            micros % 1000,
            self.bytes_sent,
            self.bytes_received
        );
        if let Some(error) = self.error {
            out.extend_from_slice(b" error=");
            value(out, &error.to_string());
        }
        out.push(b'\n');
    }
}

/// The longest value a line quotes whole, in bytes: a longer one (a 60 KB path) is cut at a
/// character boundary and ends with `...(N bytes)`, so that a request writes at most a few
/// KiB to the log however long its head.
pub const MAX_VALUE_BYTES: usize = 512;

/// Writes `text` as a logfmt value: as it is when it is a non-empty run of visible characters
/// other than `"` and `=`, else quoted with Rust's escapes (`\"`, `\\`, `\n`, `\u{..}`);
/// cut past [`MAX_VALUE_BYTES`].
fn value(out: &mut Vec<u8>, text: &str) {
    if text.len() > MAX_VALUE_BYTES {
        let mut end = MAX_VALUE_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let cut = format!("{}...({} bytes)", &text[..end], text.len());
        return logfmt(out, &cut);
    }
    logfmt(out, text);
}

/// `text` as it is or quoted (see [`value`]).
fn logfmt(out: &mut Vec<u8>, text: &str) {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && c != '"' && c != '=');
    if plain {
        out.extend_from_slice(text.as_bytes());
    } else {
        let _ = write!(out, "{text:?}");
    }
}

/// The access log: which requests get a line, and writing them.
pub struct AccessLog {
    buffer: LogBuffer,
    /// `router.access_log_sample`: the share of requests below 500 that get a line.
    sample: f64,
}

impl AccessLog {
    /// An access log that writes its lines into `buffer` (the router's one [`LogBuffer`]) and
    /// keeps `sample` (`router.access_log_sample`, 0.0 to 1.0) of the requests below 500.
    pub fn new(buffer: LogBuffer, sample: f64) -> Self {
        Self { buffer, sample }
    }

    /// Whether a request answered `status` gets a line: every 5xx (and a request with no
    /// response, status 0, is not one), [`sample`](Self::sample) of the others, none when
    /// `RUST_LOG` turns [`TARGET`] off.
    pub fn wants(&self, status: u16) -> bool {
        (status >= 500 || self.sample >= 1.0 || rand::random::<f64>() < self.sample)
            && tracing::enabled!(target: TARGET, tracing::Level::INFO)
    }

    /// Writes `entry`'s line, formatted in a buffer of the calling thread's own.
    pub fn write(&self, entry: &Entry<'_>) {
        thread_local! {
            static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        LINE.with_borrow_mut(|line| {
            line.clear();
            entry.format(SystemTime::now(), line);
            if let Err(e) = self.buffer.append(line) {
                eprintln!("nx-router: cannot write the access log: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(error: Option<&'a dyn std::fmt::Display>) -> Entry<'a> {
        Entry {
            request_id: "0123abcd",
            peer: Some("::1".parse().unwrap()),
            host: "web.nx.test",
            method: "GET",
            path: "/a/b",
            version: http::Version::HTTP_11,
            sandbox: "web",
            deployment: "d1",
            status: 200,
            duration: Duration::from_micros(12_345),
            bytes_sent: 512,
            bytes_received: 0,
            error,
        }
    }

    fn line(e: &Entry<'_>) -> String {
        let mut out = Vec::new();
        e.format(
            SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_540_000_123_456),
            &mut out,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_line_is_logfmt_with_every_field() {
        assert_eq!(
            line(&entry(None)),
            "2025-11-30T22:00:00.123456Z  INFO nx_router::access: request request_id=0123abcd \
             peer=::1 host=web.nx.test method=GET path=/a/b version=HTTP/1.1 sandbox=web \
             deployment=d1 status=200 duration_ms=12.345 bytes_sent=512 bytes_received=0\n"
        );
    }

    #[test]
    fn values_that_would_break_the_line_are_quoted() {
        let error = "upstream said \"no\"\nthen closed";
        let mut e = entry(Some(&error));
        e.host = "a b=c";
        e.sandbox = "";
        e.peer = None;
        let text = line(&e);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains(" peer=\"\" host=\"a b=c\" "), "{text}");
        assert!(text.contains(" sandbox=\"\" deployment=d1 "), "{text}");
        assert!(
            text.ends_with(" error=\"upstream said \\\"no\\\"\\nthen closed\"\n"),
            "{text}"
        );
    }

    #[test]
    fn a_long_value_is_cut_and_says_how_long_it_was() {
        let path = format!("/{}", "é".repeat(30_000));
        let mut out = Vec::new();
        value(&mut out, &path);
        let text = String::from_utf8(out).unwrap();
        assert!(text.len() < MAX_VALUE_BYTES + 40, "{} bytes", text.len());
        assert!(text.starts_with("\"/é"), "{text}");
        assert!(text.ends_with("...(60001 bytes)\""), "{text}");
    }
}
