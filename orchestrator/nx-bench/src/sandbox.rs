//! Sandbox benchmarks: the log pipeline's throughput (a program writing as fast as it can to
//! stdout, through the log writer of its unit, against the same program writing to /dev/null),
//! and the cost of each deployment's sized `/data` (making the ext4 image: a copy of the
//! host's template beside formatting each image; starting with it mounted against starting
//! with no `/data` to write, `--disk 0`: a read-only directory).

use nx_orchestrator::backend::data_disk::{DataImage, DataTemplates};
use nx_testkit::Host;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// What the program saw and what reached the log.
pub struct LogThroughput {
    pub mib: u64,
    /// The program's own time to write it all, through NX's log writer.
    pub program_nx: Duration,
    /// The same program writing to /dev/null, outside NX.
    pub program_bare: Duration,
    /// From the request to the last record on disk.
    pub to_disk: Duration,
    pub lines_stored: u64,
    pub lines_dropped: u64,
    pub bytes_stored: u64,
}

fn spew_seconds(body: &str) -> anyhow::Result<Duration> {
    let v: serde_json::Value = serde_json::from_str(body)?;
    let secs = v["seconds"]
        .as_f64()
        .ok_or_else(|| anyhow::anyhow!("no seconds: {body}"))?;
    Ok(Duration::from_secs_f64(secs))
}

/// The sample app outside NX, stdout to /dev/null, asked to write `mib`.
fn bare_spew(mib: u64) -> anyhow::Result<Duration> {
    let port = nx_testkit::free_port();
    let mut child = Command::new(nx_testkit::sample_app())
        .env("PORT", port.to_string())
        .env("HOST", "127.0.0.1")
        .stdout(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the bare sample never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    let body = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()?
        .get(format!("http://127.0.0.1:{port}/spew?mb={mib}"))
        .send()?
        .text()?;
    let _ = child.kill();
    let _ = child.wait();
    spew_seconds(&body)
}

/// Lines and bytes in a deployment's log files, lines dropped by the writer, and the last
/// time one of them was written.
fn count(dir: &std::path::Path) -> anyhow::Result<(u64, u64, u64, SystemTime)> {
    let (mut lines, mut bytes, mut dropped) = (0, 0, 0);
    let mut last = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("output.log")
        {
            continue;
        }
        last = last.max(entry.metadata()?.modified()?);
        let text = std::fs::read(entry.path())?;
        bytes += text.len() as u64;
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let line = String::from_utf8_lossy(line);
            match line.split_once(" nx dropped ") {
                Some((_, rest)) => {
                    dropped += rest
                        .split(' ')
                        .next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0)
                }
                None => lines += u64::from(line.contains(" stdout ")),
            }
        }
    }
    Ok((lines, bytes, dropped, last))
}

/// The log cap, in MiB, under which a deployment's log keeps all of `mib` MiB of 100-byte lines
/// with their stamps: the host's `sandbox.max_log_mb` must allow it.
pub fn log_cap_mb(mib: u64) -> u64 {
    mib * 4
}

/// A deployment writes `mib` MiB of 100-byte lines as fast as it can (its log capped at
/// [`log_cap_mb`]).
pub fn log_throughput(host: &Host, mib: u64) -> anyhow::Result<LogThroughput> {
    let id = host.push_sample("bench-logs", &["--log-max", &log_cap_mb(mib).to_string()]);
    let dir = host.path(&format!("deployments/{id}"));
    let started = SystemTime::now();
    let response = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()?
        .get(format!("http://{}/spew?mb={mib}", host.router))
        .header("Host", host.preview_host("bench-logs", &id))
        .send()?
        .text()?;
    let program_nx = spew_seconds(&response)?;
    // Until the writer is done: the files stop growing.
    let mut last = count(&dir)?.1;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = count(&dir)?.1;
        if now == last {
            break;
        }
        last = now;
    }
    let (lines_stored, bytes_stored, lines_dropped, written) = count(&dir)?;
    host.nx_json(&["rm", &id]);
    Ok(LogThroughput {
        mib,
        program_nx,
        program_bare: bare_spew(mib)?,
        to_disk: written.duration_since(started).unwrap_or_default(),
        lines_stored,
        lines_dropped,
        bytes_stored,
    })
}

/// Making 1 GiB `/data` images, interleaved: as a push does (a sparse copy of the host's
/// formatted template), and by running `mkfs.ext4` on each new sparse file, as pushes did
/// before templates (`lazy_itable_init`, which still writes the 32 MiB journal's zeros).
pub struct ImageCreation {
    pub copied: Vec<Duration>,
    pub formatted: Vec<Duration>,
}

pub fn image_creation(n: usize) -> anyhow::Result<ImageCreation> {
    let dir = tempfile::tempdir_in("/var/tmp")?;
    let templates = DataTemplates::new(dir.path().join("templates"))?;
    templates.template(1024).map_err(anyhow::Error::msg)?;
    let mut times = ImageCreation {
        copied: Vec::new(),
        formatted: Vec::new(),
    };
    for i in 0..n {
        let image = DataImage {
            image: dir.path().join(format!("data-{i}.img")),
            mountpoint: dir.path().join(format!("data-{i}")),
            size_mb: 1024,
            uid: 200_000,
        };
        let started = Instant::now();
        image.create(&templates).map_err(anyhow::Error::msg)?;
        times.copied.push(started.elapsed());

        let formatted = dir.path().join(format!("mkfs-{i}.img"));
        let started = Instant::now();
        std::fs::File::create(&formatted)?.set_len(1 << 30)?;
        let status = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-E"])
            .arg("root_owner=200000:200000,lazy_itable_init=1,nodiscard")
            .arg(&formatted)
            .status()?;
        anyhow::ensure!(status.success(), "mkfs.ext4: {status}");
        times.formatted.push(started.elapsed());
    }
    Ok(times)
}
