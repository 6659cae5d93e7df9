//! microVM benchmarks, the accelerator named in every row: boot-to-ready through NX (`nx start`
//! until the first HTTP answer) against the bare VMM started by hand with the same kernel,
//! initramfs and command line (first HTTP answer, and the console's marker), beside the
//! bubblewrap backend on the same sample; host memory (PSS) of an idle guest; 20 guests at once.

use nx_testkit::Host;
use std::io::BufRead;
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub struct Figures {
    pub accel: String,
    pub nx_boot: Vec<Duration>,
    pub bare_answer: Vec<Duration>,
    pub bare_marker: Vec<Duration>,
    pub bwrap_start: Vec<Duration>,
    pub idle_pss_kib: u64,
    pub many: usize,
    pub many_secs: f64,
    pub many_pss_kib: u64,
}

fn timed(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

/// `nx stop` then the time `nx start` takes (it returns once the deployment answers).
fn restarts(host: &Host, id: &str, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            host.nx_json(&["stop", id]);
            timed(|| {
                host.nx_json(&["start", id]);
            })
        })
        .collect()
}

fn answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    // As NX's readiness probe: a guest that is not up leaves the request hanging.
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let mut head = [0u8; 4];
    s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_ok()
        && s.read_exact(&mut head).is_ok()
        && &head == b"HTTP"
}

/// The PSS of every process whose command line contains `needle`, in KiB.
fn pss_kib(needle: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let dir = entry.path();
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains(needle) {
            continue;
        }
        let rollup = std::fs::read_to_string(dir.join("smaps_rollup")).unwrap_or_default();
        if let Some(kib) = rollup
            .lines()
            .find(|l| l.starts_with("Pss:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
        {
            out.push(kib);
        }
    }
    out
}

/// The bare VMM: the deployment's own argv, run by hand in the host's network namespace with
/// its forward on the loopback (the deployment is stopped, its namespace gone).
fn bare_boot(host: &Host, argv: &[String], port: u16) -> anyhow::Result<(Duration, Duration)> {
    let argv: Vec<String> = argv
        .iter()
        .map(|a| match a.split_once("hostfwd=tcp:") {
            Some((head, tail)) => {
                let (_, rest) = tail.split_once(':').unwrap_or(("", tail));
                format!("{head}hostfwd=tcp:127.0.0.1:{rest}")
            }
            None => a.clone(),
        })
        .collect();
    let started = Instant::now();
    let mut child = host
        .netns
        .command(&argv[0])
        .args(&argv[1..])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let console = child.stdout.take().expect("piped");
    let marker = std::thread::spawn(move || {
        for line in std::io::BufReader::new(console)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("nx-sample listening") {
                return Some(started.elapsed());
            }
        }
        None
    });
    let deadline = started + Duration::from_secs(60);
    while !host.netns.run(|| answers(port)) {
        anyhow::ensure!(Instant::now() < deadline, "the bare VMM did not answer");
        std::thread::sleep(Duration::from_millis(5));
    }
    let answer = started.elapsed();
    child.kill()?;
    child.wait()?;
    let marker = marker.join().expect("console reader").unwrap_or(answer);
    Ok((answer, marker))
}

pub fn run(host: &Host, boots: usize, many: usize) -> anyhow::Result<Figures> {
    let id = host.push_sample("bench-vm", &["--backend", "microvm"]);
    let status = host.nx_json(&["status", "bench-vm"]);
    let d = &status[0]["deployments"][0];
    let accel = d["runs_on"].as_str().unwrap_or_default().to_owned();
    let port = d["port"].as_u64().expect("port") as u16;
    let nx_boot = restarts(host, &id, boots);

    // Idle guest's memory, after it has settled.
    std::thread::sleep(Duration::from_secs(2));
    let initrd = format!("deployments/{id}/initrd.cpio");
    let idle_pss_kib = pss_kib(&initrd).into_iter().sum();

    let launch: serde_json::Value = serde_json::from_slice(&std::fs::read(
        host.path(&format!("microvm/deployments/{id}/launch.json")),
    )?)?;
    let argv: Vec<String> = serde_json::from_value(launch["argv"].clone())?;
    host.nx_json(&["stop", &id]);
    let mut bare_answer = Vec::new();
    let mut bare_marker = Vec::new();
    for _ in 0..boots {
        let (answer, marker) = bare_boot(host, &argv, port)?;
        bare_answer.push(answer);
        bare_marker.push(marker);
    }

    let bwrap = host.push_sample("bench-vm-bwrap", &[]);
    let bwrap_start = restarts(host, &bwrap, boots);
    host.nx_json(&["rm", &bwrap]);

    // Many guests at once: pushed side by side, all answering.
    let started = Instant::now();
    let sample = nx_testkit::sample_app();
    let sample = sample.to_str().expect("utf-8 path");
    let args = [
        "push",
        sample,
        "--sandbox",
        "bench-many",
        "--backend",
        "microvm",
    ];
    let failures: Vec<String> = std::thread::scope(|scope| {
        let pushes: Vec<_> = (0..many).map(|_| scope.spawn(|| host.nx(&args))).collect();
        pushes
            .into_iter()
            .map(|p| p.join().expect("push thread"))
            .filter(|out| !out.ok)
            .map(|out| out.stderr)
            .collect()
    });
    let ok = many - failures.len();
    let many_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        failures.is_empty(),
        "{ok} of {many} guests came up; first failure: {}",
        failures[0]
    );
    std::thread::sleep(Duration::from_secs(2));
    let all = pss_kib("/initrd.cpio");
    let many_pss_kib = all.iter().sum::<u64>() / all.len().max(1) as u64;
    Ok(Figures {
        accel,
        nx_boot,
        bare_answer,
        bare_marker,
        bwrap_start,
        idle_pss_kib,
        many,
        many_secs,
        many_pss_kib,
    })
}
