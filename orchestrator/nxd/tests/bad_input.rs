//! Bad input is refused with a message that says what to do, and nothing is stored: by the CLI
//! before uploading, and by nxd for whatever reaches it anyway.

use nx_testkit::{files_under, sha256_hex, Host};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// (name, bytes, what the refusal must say)
fn bad_binaries() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let sample = std::fs::read(nx_testkit::sample_app()).unwrap();
    let mut arm = sample.clone();
    arm[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    let dynamic = std::fs::read(nx_testkit::bin("nx")).unwrap();
    let interp = b"/lib64/ld-linux-x86-64.so.2";
    let at = dynamic
        .windows(interp.len())
        .position(|w| w == interp)
        .expect("the nx binary is dynamically linked");
    let mut missing_interp = dynamic.clone();
    missing_interp[at..at + interp.len()].copy_from_slice(b"/lib64/ld-nxnxx-x86-64.so.2");
    // The same program needing a library no host has (its libc.so.6 renamed, same length).
    let libc = b"libc.so.6\0";
    let mut missing_lib = dynamic.clone();
    let mut from = 0;
    while let Some(i) = missing_lib[from..]
        .windows(libc.len())
        .position(|w| w == libc)
    {
        missing_lib[from + i..from + i + 4].copy_from_slice(b"libq");
        from += i + libc.len();
    }
    vec![
        (
            "text",
            b"#!/bin/sh\necho hello\n".to_vec(),
            "not an ELF executable",
        ),
        ("aarch64", arm, "built for aarch64"),
        (
            "truncated",
            sample[..sample.len() / 3].to_vec(),
            "truncated or corrupt ELF",
        ),
        (
            "no-interpreter",
            missing_interp,
            "ld-nxnxx-x86-64.so.2, which this host does not have",
        ),
        (
            "missing-library",
            missing_lib,
            "needs libq.so.6 (needed by the program)",
        ),
        ("empty", Vec::new(), "the file is empty"),
    ]
}

fn stored_artifacts(host: &Host) -> Vec<String> {
    files_under(&host.path("artifacts"))
}

fn write_exec(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn bad_binaries_and_names_are_refused_and_nothing_is_stored() {
    let host = Host::start();
    let dir = host.path("bad-inputs");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes, says) in bad_binaries() {
        let path = write_exec(&dir, name, &bytes);
        let path = path.to_str().unwrap();

        let verify = host.nx(&["verify-binary", path]);
        assert!(!verify.ok, "{name} verified");
        assert!(verify.stderr.contains(says), "{name}: {}", verify.stderr);

        let push = host.nx(&["push", path, "--sandbox", "bad"]);
        assert!(!push.ok, "{name} pushed");
        assert!(push.stderr.contains(says), "{name}: {}", push.stderr);

        // The same bytes sent straight to the API, past the CLI's check.
        let (status, body, _) = host.put_artifact(bytes.clone());
        assert_eq!(status, 422, "{name}");
        assert!(body.contains(says), "{name}: {body}");
    }
    // Refusals name the fix.
    let text = write_exec(&dir, "again", b"plain text");
    let out = host.nx(&["verify-binary", text.to_str().unwrap()]);
    assert!(
        out.stderr.contains("--target x86_64-unknown-linux-musl")
            && out.stderr.contains("CGO_ENABLED=0"),
        "{}",
        out.stderr
    );

    let sample = nx_testkit::sample_app();
    for (bad, says) in [
        ("../etc", "'.' is not allowed"),
        ("MyApp", "use lowercase"),
        (&"a".repeat(200)[..], "200 characters"),
        ("a;b", "';' is not allowed"),
    ] {
        let out = host.nx(&["push", sample.to_str().unwrap(), "--sandbox", bad]);
        assert!(
            !out.ok && out.stderr.contains(says),
            "{bad}: {}",
            out.stderr
        );
        // And from the API, for clients other than nx.
        let resp = host
            .http()
            .post(format!("http://{}/v1/deployments", host.api))
            .bearer_auth(&host.token)
            .json(&serde_json::json!({ "sandbox": bad, "artifact": "0".repeat(64) }))
            .send()
            .unwrap();
        assert!(resp.status().is_client_error(), "{bad}: {}", resp.status());
    }
    assert_eq!(
        stored_artifacts(&host),
        Vec::<String>::new(),
        "something was stored"
    );
    assert_eq!(
        host.nx_json(&["ls"]),
        serde_json::json!([]),
        "a deployment was created"
    );
}

/// `nx` with `args`, which must end within 20 s: its outcome. One that still runs then is
/// killed and the test fails (a push of a FIFO once waited for a writer forever).
fn nx_within(host: &Host, args: &[&str]) -> nx_testkit::Nx {
    use std::process::Stdio;
    let child = host
        .nx_command(&host.token, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nx");
    let pid = child.id().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(out) => out.expect("nx's output").into(),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid])
                .status();
            panic!("nx {args:?} still ran after 20 s");
        }
    }
}

#[test]
fn a_fifo_a_device_and_a_file_over_the_limit_are_refused_before_they_are_read() {
    let host = Host::start();
    let dir = host.path("odd-files");
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo");
    // 1.5 GiB, sparse: it costs no disk, and a CLI that read it would take seconds and then
    // call it no ELF.
    let huge = write_exec(&dir, "huge", b"");
    std::fs::File::options()
        .write(true)
        .open(&huge)
        .unwrap()
        .set_len(3 << 29)
        .unwrap();
    let (fifo, huge) = (fifo.to_str().unwrap(), huge.to_str().unwrap());
    for (path, says) in [
        (fifo, "is a FIFO (named pipe): push a regular file"),
        ("/dev/zero", "is a character device: push a regular file"),
        (
            huge,
            "is 1536 MiB, and nxd stores artifacts of at most 1024 MiB",
        ),
    ] {
        for args in [
            &["push", path, "--sandbox", "odd"][..],
            &["push", "--image", path, "--sandbox", "odd"],
            &["run-task", path],
            &["verify-binary", path],
        ] {
            let out = nx_within(&host, args);
            assert!(
                !out.ok && out.stderr.contains(path) && out.stderr.contains(says),
                "nx {args:?}: {}",
                out.stderr
            );
        }
    }
    assert_eq!(stored_artifacts(&host), Vec::<String>::new());
    assert_eq!(host.nx_json(&["ls"]), serde_json::json!([]));
}

#[test]
fn a_killed_upload_leaves_no_artifact_and_no_temp_file() {
    let host = Host::start();
    let sample = std::fs::read(nx_testkit::sample_app()).unwrap();
    let sha = sha256_hex(&sample);
    let mut stream = std::net::TcpStream::connect(host.api).unwrap();
    write!(
        stream,
        "PUT /v1/artifacts/{sha} HTTP/1.1\r\nHost: nx\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        host.token,
        sample.len()
    )
    .unwrap();
    stream.write_all(&sample[..sample.len() / 2]).unwrap();
    stream.flush().unwrap();
    // Wait until nxd is writing the temp file, then cut the connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    while files_under(&host.path("artifacts/.incoming")).is_empty() {
        assert!(Instant::now() < deadline, "the upload never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stored_artifacts(&host).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left behind: {:?}",
            stored_artifacts(&host)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The whole binary then uploads fine.
    let id = host.push_sample("after-cut", &[]);
    assert_eq!(
        host.get(&host.preview_host("after-cut", &id), "/health").0,
        200
    );
}

/// Sends `PUT /v1/artifacts/{sha}` announcing `announced` bytes but sending only `sent`, and
/// returns nxd's answer (status, JSON body) as it comes, without the rest of the body.
fn put_partly(host: &Host, sha: &str, announced: u64, sent: &[u8]) -> (u16, serde_json::Value) {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(host.api).unwrap();
    write!(
        stream,
        "PUT /v1/artifacts/{sha} HTTP/1.1\r\nHost: nx\r\nAuthorization: Bearer {}\r\nContent-Length: {announced}\r\n\r\n",
        host.token,
    )
    .unwrap();
    // nxd may answer and stop reading before all of it is written.
    let _ = stream.write_all(sent);
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a Content-Length");
            if answer.len() >= end + 4 + length {
                let status = head[9..12].parse().unwrap();
                let body = serde_json::from_slice(&answer[end + 4..end + 4 + length]).unwrap();
                return (status, body);
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => panic!(
                "nxd closed without a whole answer: {:?}",
                String::from_utf8_lossy(&answer)
            ),
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) => panic!(
                "no answer while the body was not all sent ({e}): {:?}",
                String::from_utf8_lossy(&answer)
            ),
        }
    }
}

/// A tmpfs of `size` mounted over `dir` while it lives (a disk that fills up).
struct SmallDisk<'a>(&'a Path);

impl<'a> SmallDisk<'a> {
    fn mount(dir: &'a Path, size: &str) -> Self {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs on {}", dir.display());
        Self(dir)
    }
}

impl Drop for SmallDisk<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0)
            .status();
    }
}

#[test]
fn an_upload_that_is_no_program_is_refused_on_its_first_bytes_and_a_full_disk_says_so() {
    let host = Host::start();
    // 300 MiB announced, 64 KiB sent: refused from its first bytes, quoted with hex escapes.
    let mut junk = vec![0x11, 0x9f, b'Z', b'"', 0x1b];
    junk.resize(64 << 10, 0xe3);
    let (status, body) = put_partly(&host, &"1".repeat(64), 300 << 20, &junk);
    assert_eq!(status, 422, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains(r#"refused: not an ELF executable (it starts with "\x11\x9fZ\"\x1b\xe3"#),
        "{error}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !files_under(&host.path("artifacts/.incoming")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the refused upload's temp file stays"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // A full disk where uploads are written: 507, the operator's to fix, nothing stored.
    let sample = std::fs::read(nx_testkit::sample_app()).unwrap();
    assert!(
        sample.len() > 1 << 20,
        "the sample app is larger than the 1 MiB disk below"
    );
    let sha = sha256_hex(&sample);
    let incoming = host.path("artifacts/.incoming");
    let disk = SmallDisk::mount(&incoming, "1m");
    let (status, body) = put_partly(&host, &sha, sample.len() as u64, &sample);
    drop(disk);
    assert_eq!(status, 507, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.starts_with("the host's disk is full: ask its operator"),
        "{error}"
    );
    let store = host.path("artifacts");
    assert!(
        error.contains(store.to_str().unwrap()),
        "names the disk: {error}"
    );
    assert!(!store.join(&sha).exists());
    // With room again, the same upload is stored.
    let (status, answer, _) = host.put_artifact(sample);
    assert_eq!(status, 200, "{answer}");
}

/// PUTs `body` (`size` bytes) as the artifact `sha` and asserts that nxd refused it with 422
/// saying `refusal`, stored nothing, and that its peak memory grew by less than 64 MiB meanwhile.
fn refused_without_holding_it(
    host: &Host,
    sha: &str,
    size: u64,
    body: reqwest::blocking::Body,
    refusal: &str,
) {
    let before = host.nxd_peak_rss();
    let resp = host
        .http()
        .put(format!("http://{}/v1/artifacts/{sha}", host.api))
        .bearer_auth(&host.token)
        .timeout(Duration::from_secs(300))
        .body(body)
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains(refusal), "{body}");
    let grew = host.nxd_peak_rss() - before;
    assert!(
        grew < 64 << 20,
        "a {} KiB upload raised nxd's peak memory by {} MiB",
        size >> 10,
        grew >> 20
    );
    assert!(stored_artifacts(host).is_empty());
}

#[test]
fn a_large_upload_is_not_held_in_memory() {
    let host = Host::start();
    // 512 MiB with a digest that is not theirs: hashed on the way in, refused, never read back.
    // It starts as a program does (else its first bytes refuse it at once).
    let size: u64 = 512 << 20;
    let head = std::fs::read(nx_testkit::sample_app()).unwrap()[..4096].to_vec();
    let body = reqwest::blocking::Body::sized(
        std::io::Read::chain(
            std::io::Cursor::new(head),
            std::io::Read::take(std::io::repeat(7), size - 4096),
        ),
        size,
    );
    refused_without_holding_it(&host, &"0".repeat(64), size, body, "hash mismatch");
}

/// A gzip bomb: 1 GiB of zeros gzips to about 1 MB; an image archive is checked as a stream, so
/// nxd neither holds what it gunzips nor gunzips past 64 times the upload (attacker s8 F11: nxd
/// held 1 GiB for this upload).
#[test]
fn a_gzip_bomb_is_refused_without_being_unpacked_into_memory() {
    let host = Host::start();
    let gzip = std::process::Command::new("sh")
        .args(["-c", "head -c 1G /dev/zero | gzip -1"])
        .output()
        .expect("gzip");
    assert!(gzip.status.success());
    let bomb = gzip.stdout;
    let (sha, size) = (sha256_hex(&bomb), bomb.len() as u64);
    refused_without_holding_it(&host, &sha, size, bomb.into(), "not an image archive");
}

/// Runs `cc args` (Debian's gcc, install-deps.sh) in `dir`, asserting that it worked.
fn cc(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("cc")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("cc (gcc: orchestrator/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "cc {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Attacker s8 F10: a program whose `DT_RUNPATH`, `DT_NEEDED` path or interpreter names a host
/// file outside what a sandbox sees is refused as missing it, and nxd does not read the file:
/// here a 300 MiB one, which nxd read whole for each such upload (its peak memory grew by
/// 300 MiB). The refusal is the same whether or not the host has the file (no oracle of the
/// host's paths).
#[test]
fn host_files_a_program_names_are_not_read() {
    let host = Host::start();
    let dir = host.path("host-files");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("lib.c"), "int huge(void) { return 1; }\n").unwrap();
    std::fs::write(
        dir.join("main.c"),
        "int huge(void);\nint main(void) { return huge(); }\n",
    )
    .unwrap();
    std::fs::write(dir.join("plain.c"), "int main(void) { return 0; }\n").unwrap();
    let huge = dir.join("libhuge.so");
    let absolute = dir.join("libabsolute.so");
    let (huge_s, absolute_s) = (huge.to_str().unwrap(), absolute.to_str().unwrap());
    let rpath = format!("-Wl,-rpath,{}", dir.display());
    cc(
        &dir,
        &[
            "-shared",
            "-fPIC",
            "-Wl,-soname,libhuge.so",
            "-o",
            huge_s,
            "lib.c",
        ],
    );
    cc(&dir, &["-o", "runpath", "main.c", &rpath, huge_s]);
    // No soname: the program's DT_NEEDED is the library's path as linked.
    cc(&dir, &["-shared", "-fPIC", "-o", absolute_s, "lib.c"]);
    cc(&dir, &["-o", "needed-path", "main.c", absolute_s]);
    let interp = |path: &Path, out: &str| {
        let linker = format!("-Wl,--dynamic-linker,{}", path.display());
        cc(&dir, &["-o", out, "plain.c", &linker]);
    };
    interp(&huge, "interpreter");
    interp(&dir.join("nothing-here.so"), "no-interpreter");
    // The libraries become 300 MiB files (sparse: nothing is written).
    for lib in [&huge, &absolute] {
        std::fs::File::create(lib)
            .unwrap()
            .set_len(300 << 20)
            .unwrap();
    }
    let lacks = "which this host does not have in the library directories a sandbox sees";
    for (program, refusal) in [
        (
            "runpath",
            "needs libhuge.so (needed by the program)".to_owned(),
        ),
        (
            "needed-path",
            format!("needs {absolute_s} (needed by the program)"),
        ),
        (
            "interpreter",
            format!("dynamically linked against {huge_s}, {lacks}"),
        ),
        (
            "no-interpreter",
            format!(
                "dynamically linked against {}, {lacks}",
                dir.join("nothing-here.so").display()
            ),
        ),
    ] {
        let bytes = std::fs::read(dir.join(program)).unwrap();
        let (sha, size) = (sha256_hex(&bytes), bytes.len() as u64);
        refused_without_holding_it(&host, &sha, size, bytes.into(), &refusal);
    }
}

#[test]
fn requests_without_the_token_get_401() {
    let host = Host::start();
    for (method, path) in [
        ("GET", "/v1/sandboxes"),
        ("GET", "/v1/health"),
        ("POST", "/v1/deployments"),
    ] {
        let req = host.http().request(
            method.parse().unwrap(),
            format!("http://{}{path}", host.api),
        );
        assert_eq!(
            req.send().unwrap().status().as_u16(),
            401,
            "{method} {path}"
        );
    }
    let wrong = host
        .http()
        .get(format!("http://{}/v1/sandboxes", host.api))
        .bearer_auth("not-the-token")
        .send()
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(host.path("token")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

/// Every request field is checked before anything is stored: zero and out-of-range limits, a
/// NUL byte, oversized arguments and environments, misspelled fields. Each gets a 4xx whose
/// message names the field, and neither a sandbox nor a deployment nor a unit is left.
#[test]
fn bad_request_fields_get_a_4xx_naming_the_field_and_store_nothing() {
    let host = Host::start();
    let sample = std::fs::read(nx_testkit::sample_app()).unwrap();
    let (status, _, sha) = host.put_artifact(sample);
    assert_eq!(status, 200);
    let push = |body: serde_json::Value| {
        let resp = host
            .http()
            .post(format!("http://{}/v1/deployments", host.api))
            .bearer_auth(&host.token)
            .json(&body)
            .send()
            .unwrap();
        (resp.status().as_u16(), resp.text().unwrap())
    };
    let base = |extra: serde_json::Value| {
        let mut body = serde_json::json!({ "sandbox": "web", "artifact": sha });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let huge = "x".repeat(1 << 20);
    let many: Vec<String> = (0..200).map(|_| "y".repeat(1000)).collect();
    let cases = [
        (
            serde_json::json!({ "limits": { "memory_max_mb": 0 } }),
            "limits.memory_max_mb",
        ),
        (
            serde_json::json!({ "limits": { "tasks_max": 0 } }),
            "limits.tasks_max",
        ),
        (
            serde_json::json!({ "limits": { "cpu_quota_percent": 0 } }),
            "limits.cpu_quota_percent",
        ),
        (
            serde_json::json!({ "limits": { "memory_max_mb": 1u64 << 40 } }),
            "limits.memory_max_mb",
        ),
        (
            serde_json::json!({ "limits": { "cpu_quota_percent": 100_000 } }),
            "limits.cpu_quota_percent",
        ),
        (
            serde_json::json!({ "limits": { "memory": 64 } }),
            "unknown field `memory`",
        ),
        (serde_json::json!({ "limts": {} }), "unknown field `limts`"),
        (
            serde_json::json!({ "env": { "KEY": "a\u{0}b" } }),
            "env.KEY",
        ),
        (serde_json::json!({ "args": ["ok", "a\u{0}b"] }), "args[1]"),
        (serde_json::json!({ "args": [huge] }), "args[0]"),
        (
            serde_json::json!({ "args": many }),
            "sandbox.max_args_bytes",
        ),
        (
            serde_json::json!({ "env": { "BIG": "z".repeat(200_000) } }),
            "env.BIG",
        ),
        (
            serde_json::json!({ "env": { "NX_SECRET": "1" } }),
            "env.NX_SECRET",
        ),
        // A second line would be a second variable in Podman's env file (attacker s9).
        (
            serde_json::json!({ "env": { "KEY": "a\nLD_PRELOAD=/app/x.so" } }),
            "env.KEY: holds the control character U+000A",
        ),
    ];
    for (extra, names) in cases {
        let (status, body) = push(base(extra.clone()));
        assert!((400..500).contains(&status), "{extra}: {status} {body}");
        assert!(body.contains(names), "{extra}: {body}");
    }
    // The same checks hold for tasks.
    let task = |body: serde_json::Value| {
        let resp = host
            .http()
            .post(format!("http://{}/v1/tasks", host.api))
            .bearer_auth(&host.token)
            .json(&body)
            .send()
            .unwrap();
        (resp.status().as_u16(), resp.text().unwrap())
    };
    for (body, names) in [
        (
            serde_json::json!({ "artifact": sha, "args": ["a\u{0}"] }),
            "args[0]",
        ),
        (
            serde_json::json!({ "artifact": sha, "memory_max_mb": 0 }),
            "memory_max_mb",
        ),
        (
            serde_json::json!({ "artifact": sha, "env": { "KEY": "a\rb" } }),
            "env.KEY: holds the control character U+000D",
        ),
        (
            serde_json::json!({ "artifact": sha, "timeout": 5 }),
            "unknown field `timeout`",
        ),
    ] {
        let (status, text) = task(body.clone());
        assert!((400..500).contains(&status), "{body}: {status} {text}");
        assert!(text.contains(names), "{body}: {text}");
    }
    assert_eq!(
        host.nx_json(&["ls"]),
        serde_json::json!([]),
        "something was stored"
    );
    assert!(
        nx_testkit::files_under(&host.path("deployments")).is_empty(),
        "a deployment directory was made"
    );
    // And a good push still works.
    let (status, body) = push(base(
        serde_json::json!({ "limits": { "memory_max_mb": 64 } }),
    ));
    assert_eq!(status, 200, "{body}");
    // A log query with a parameter nxd does not know, or a negative count, is refused, not
    // answered as if understood.
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for (query, names) in [("n=-1", "unknown field `n`"), ("lines=-1", "lines")] {
        let resp = host
            .http()
            .get(format!(
                "http://{}/v1/deployments/{id}/logs?{query}",
                host.api
            ))
            .bearer_auth(&host.token)
            .send()
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().unwrap();
        assert_eq!(status, 400, "{query}: {text}");
        assert!(text.contains(names), "{query}: {text}");
    }
}

#[test]
fn a_sandbox_named_api_is_refused_because_api_dot_base_domain_is_the_api() {
    let host = Host::start();
    let sample = nx_testkit::sample_app();
    let expected = format!(
        "the sandbox name \"api\" is reserved: api.{} is nxd's own API over HTTPS",
        nx_testkit::BASE_DOMAIN
    );
    let push = host.nx(&["push", sample.to_str().unwrap(), "--sandbox", "api"]);
    assert!(!push.ok, "a push made sandbox api");
    assert!(
        push.stderr.contains(&expected) && push.stderr.contains("e.g. api-app"),
        "{}",
        push.stderr
    );
    let create = host.nx(&["sandbox", "create", "api"]);
    assert!(!create.ok, "nx sandbox create api succeeded");
    assert!(create.stderr.contains(&expected), "{}", create.stderr);
    assert_eq!(
        host.nx_json(&["ls"]),
        serde_json::json!([]),
        "something was created"
    );
    // Other names that start with it are fine.
    assert!(host.nx(&["sandbox", "create", "api-app"]).ok);
}
