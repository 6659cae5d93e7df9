//! Push, preview, promote, a second push, rollback, an nxd restart: on real bubblewrap, a real
//! systemd manager over D-Bus and a real PostgreSQL.

use nx_testkit::Host;
use std::time::{Duration, Instant};

fn ids_and_states(ls: &serde_json::Value) -> Vec<(String, String, String, bool)> {
    ls.as_array()
        .expect("sandbox list")
        .iter()
        .flat_map(|s| s["deployments"].as_array().expect("deployments").clone())
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_owned(),
                d["state"]["active"].as_str().unwrap().to_owned(),
                d["preview_url"].as_str().unwrap().to_owned(),
                d["promoted"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn push_promote_rollback_and_restart() {
    let mut host = Host::start();
    let v1 = host.push_sample("web", &["--env", "APP_VERSION=v1"]);
    let (status, body) = host.get(&host.preview_host("web", &v1), "/");
    assert_eq!(
        (status, body.as_str()),
        (200, format!("nx-sample v1 deployment={v1}\n").as_str())
    );

    // Nothing is promoted yet: production is a clear 404.
    let (status, body) = host.get(&host.production_host("web"), "/");
    assert_eq!(status, 404);
    assert!(body.contains("nx promote"), "{body}");

    host.nx_json(&["promote", "web", &v1]);
    assert_eq!(
        host.get(&host.production_host("web"), "/").1,
        format!("nx-sample v1 deployment={v1}\n")
    );

    // The same binary again: nothing is uploaded, a new deployment runs beside the first.
    let sample = nx_testkit::sample_app();
    let out = host.nx_json(&[
        "push",
        sample.to_str().unwrap(),
        "--sandbox",
        "web",
        "-e",
        "APP_VERSION=v2",
    ]);
    assert_eq!(out["uploaded"], false, "the artifact was stored already");
    let v2 = out["deployment"]["id"].as_str().unwrap().to_owned();
    assert_ne!(v1, v2);
    assert_eq!(
        host.get(&host.preview_host("web", &v2), "/").1,
        format!("nx-sample v2 deployment={v2}\n")
    );
    assert_eq!(
        host.get(&host.production_host("web"), "/").1,
        format!("nx-sample v1 deployment={v1}\n")
    );

    host.nx_json(&["promote", "web", &v2]);
    assert!(host.get(&host.production_host("web"), "/").1.contains("v2"));
    let back = host.nx_json(&["rollback", "web"]);
    assert_eq!(back["promoted"], v1.as_str());
    assert!(host.get(&host.production_host("web"), "/").1.contains("v1"));
    // Nothing earlier than v1 to roll back to.
    let out = host.nx(&["rollback", "web"]);
    assert!(
        !out.ok && out.stderr.contains("no earlier promotion"),
        "{}",
        out.stderr
    );

    // Logs come from the unit's output.
    let logs = host.nx(&["logs", &v1]);
    assert!(
        logs.ok && logs.stdout.contains("nx-sample listening"),
        "{}{}",
        logs.stdout,
        logs.stderr
    );

    let before = ids_and_states(&host.nx_json(&["ls"]));
    let pids_before = host.nx_json(&["status", "web"]);
    host.restart_nxd();
    let after = ids_and_states(&host.nx_json(&["ls"]));
    assert_eq!(before, after, "nx ls changed across an nxd restart");
    let pids_after = host.nx_json(&["status", "web"]);
    for (b, a) in pids_before[0]["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .zip(pids_after[0]["deployments"].as_array().unwrap())
    {
        assert_eq!(
            b["state"]["main_pid"], a["state"]["main_pid"],
            "deployments were adopted, not restarted"
        );
    }
    assert!(host.get(&host.production_host("web"), "/").1.contains("v1"));
    assert!(host
        .get(&host.preview_host("web", &v2), "/")
        .1
        .contains("v2"));

    // Stop, start, remove.
    let out = host.nx(&["stop", &v1]);
    assert!(
        !out.ok && out.stderr.contains("serves production"),
        "the promoted deployment is protected: {}",
        out.stderr
    );
    host.nx_json(&["stop", &v2]);
    assert_eq!(host.get(&host.preview_host("web", &v2), "/").0, 404);
    host.nx_json(&["start", &v2]);
    assert!(host
        .get(&host.preview_host("web", &v2), "/")
        .1
        .contains("v2"));
    host.nx_json(&["rm", &v2]);
    assert_eq!(host.get(&host.preview_host("web", &v2), "/").0, 404);
    assert!(
        !host.path(&format!("deployments/{v2}")).exists(),
        "rm leaves no files"
    );
    assert_eq!(ids_and_states(&host.nx_json(&["ls"])).len(), 1);
}

#[test]
fn a_program_that_never_listens_fails_with_its_last_log_lines() {
    let host = Host::start();
    let sample = nx_testkit::sample_app();
    // An address its network namespace does not have: it cannot listen and exits at once.
    let out = host.nx(&[
        "push",
        sample.to_str().unwrap(),
        "--sandbox",
        "broken",
        "-e",
        "HOST=192.0.2.1",
    ]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("exited before it was ready"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("cannot listen on 192.0.2.1:"),
        "log tail shown: {}",
        out.stderr
    );
    let started = Instant::now();
    let ls = host.nx_json(&["ls"]);
    assert_eq!(ls[0]["deployments"][0]["desired"], "stopped");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A push routes its preview while the deployment starts: one that failed is routed no
    // more, as any stopped deployment (not a 502 from a route left to a program gone).
    let id = ls[0]["deployments"][0]["id"].as_str().unwrap();
    assert_eq!(host.get(&host.preview_host("broken", id), "/").0, 404);
}

/// What clients sent through an [`api_relay`]: each connection's bytes, in the order the
/// connections were opened.
type Sent = std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

/// A relay to `host`'s API inside its namespace, for `NX_HOST`: its port there, and every byte
/// clients sent through it (see `requests`).
fn api_relay(host: &Host) -> (u16, Sent) {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = host
        .netns
        .run(|| TcpListener::bind("127.0.0.1:0").expect("relay"));
    let port = listener.local_addr().expect("relay address").port();
    let sent = Sent::default();
    let (netns, api, recorded) = (host.netns.clone(), host.api, sent.clone());
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let upstream = netns.run(|| TcpStream::connect(api).expect("the API"));
            let (mut answers, mut to_client) =
                (upstream.try_clone().unwrap(), client.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut answers, &mut to_client);
                let _ = to_client.shutdown(Shutdown::Write);
            });
            let connection = {
                let mut recorded = recorded.lock().unwrap();
                recorded.push(Vec::new());
                recorded.len() - 1
            };
            let (mut client, mut upstream, recorded) = (client, upstream, recorded.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n @ 1..) = client.read(&mut buf) {
                    // Recorded before it is passed on: by the answer, the request is here.
                    recorded.lock().unwrap()[connection].extend_from_slice(&buf[..n]);
                    if upstream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = upstream.shutdown(Shutdown::Write);
            });
        }
    });
    (port, sent)
}

/// The request lines (without " HTTP/1.1") of every request in `sent`, connection by
/// connection; emptied. Each request is its head up to the blank line, then a body of its
/// Content-Length (nx sends no chunked body: a test fails on one).
fn requests(sent: &Sent) -> Vec<String> {
    let mut lines = Vec::new();
    for stream in std::mem::take(&mut *sent.lock().unwrap()) {
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let end = rest
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("a whole request head");
            let head = std::str::from_utf8(&rest[..end]).expect("a UTF-8 request head");
            let mut fields = head.split("\r\n");
            let line = fields.next().expect("a request line");
            lines.push(line.strip_suffix(" HTTP/1.1").unwrap_or(line).to_owned());
            let mut length = 0;
            for (name, value) in fields.filter_map(|f| f.split_once(':')) {
                assert!(
                    !name.eq_ignore_ascii_case("transfer-encoding"),
                    "a body framed otherwise than by Content-Length: {head}"
                );
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().expect("a Content-Length");
                }
            }
            rest = &rest[end + 4 + length..];
        }
    }
    lines
}

#[test]
fn a_push_of_a_stored_binary_is_one_request_and_a_new_binary_is_uploaded_on_404() {
    let host = Host::start();
    let (port, sent) = api_relay(&host);
    let sample = nx_testkit::sample_app();
    let sha = nx_artifact::sha256_hex(&std::fs::read(&sample).unwrap());
    let push = || {
        let out = host
            .nx_command(
                &host.token,
                &[
                    "--json",
                    "push",
                    sample.to_str().unwrap(),
                    "--sandbox",
                    "web",
                ],
            )
            .env("NX_HOST", format!("http://127.0.0.1:{port}"))
            .output()
            .expect("run nx");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("nx's JSON")
    };
    // New bytes: the push is asked for, nxd answers 404, nx asks for the file by its hash,
    // uploads it on that 404, and asks for the push again.
    assert_eq!(push()["uploaded"], true);
    let deployments = "POST /v1/deployments".to_owned();
    let artifact = format!("/v1/artifacts/{sha}");
    assert_eq!(
        requests(&sent),
        [
            deployments.clone(),
            format!("GET {artifact}"),
            format!("PUT {artifact}"),
            deployments.clone()
        ]
    );
    // Stored bytes: the push alone.
    assert_eq!(push()["uploaded"], false);
    assert_eq!(requests(&sent), [deployments]);
}

#[test]
fn a_binary_rewritten_in_place_with_its_old_mtime_is_pushed_as_its_new_bytes() {
    let host = Host::start();
    let dir = host.path("rebuilt");
    std::fs::create_dir_all(&dir).unwrap();
    let (app, cache) = (dir.join("app"), dir.join("cache"));
    std::fs::copy(nx_testkit::sample_app(), &app).unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    let set_mtime = |to| {
        let file = std::fs::File::options().write(true).open(&app).unwrap();
        file.set_modified(to).unwrap();
    };
    set_mtime(old);
    // nx remembers the digest of a file left alone for 2 s (nx-cli's digests::SETTLED).
    std::thread::sleep(Duration::from_millis(2100));
    let push = || {
        let out = host
            .nx_command(
                &host.token,
                &["--json", "push", app.to_str().unwrap(), "--sandbox", "web"],
            )
            .env("XDG_CACHE_HOME", &cache)
            .output()
            .expect("run nx");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let out: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nx's JSON");
        (
            out["deployment"]["artifact"].clone(),
            out["uploaded"].clone(),
        )
    };
    let sha = |bytes: &[u8]| serde_json::json!(nx_artifact::sha256_hex(bytes));
    let first = std::fs::read(&app).unwrap();
    assert_eq!(push(), (sha(&first), true.into()));
    assert_eq!(push(), (sha(&first), false.into()));
    let kept = std::fs::read_dir(cache.join("nx/digests")).unwrap().count();
    assert_eq!(kept, 1, "nx keeps the digest of the file it pushed");

    // Rebuilt in place, as long as before, and given its old mtime back (utimensat, as
    // `touch -d` or a build tool that keeps timestamps): only its ctime tells the change.
    let text = b"called `Option::unwrap()`";
    let at = first
        .windows(text.len())
        .position(|w| w == text)
        .expect("a panic message in the sample");
    {
        use std::io::{Seek, Write};
        let mut file = std::fs::File::options().write(true).open(&app).unwrap();
        file.seek(std::io::SeekFrom::Start(at as u64)).unwrap();
        file.write_all(b"C").unwrap();
    }
    set_mtime(old);
    let second = std::fs::read(&app).unwrap();
    assert_eq!((second.len(), second != first), (first.len(), true));
    assert_eq!(push(), (sha(&second), true.into()));
}
