//! Replacing a running router by a new process (a new binary, or new settings) under load:
//! Pingora's graceful upgrade. The new process (`nx-router --upgrade`) waits on
//! `<dir>/upgrade.sock`; the old one, sent SIGQUIT, hands it the listening socket and keeps
//! serving what it accepted until done. No connection is refused in between: the socket and
//! its accept queue never close.

mod common;

use common::Router;
use nx_router_api::{RouterConfig, RouterSettings};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Kills the new router when the test ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn not_access(log: &str) -> String {
    log.lines()
        .filter(|l| !l.contains("nx_router::access"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_router_process_takes_over_under_load_without_a_failed_request() {
    let mut old = Router::with_echo(RouterConfig::default()).await;
    let url = old.url("/");
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let started = Instant::now();
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (ok, failed, errors, stop, url) = (
            ok.clone(),
            failed.clone(),
            errors.clone(),
            stop.clone(),
            url.clone(),
        );
        // A new connection for each request: a refused connection shows as a failure.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let answer = client.get(&url).header("host", "web.nx.test").send().await;
                match answer {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("status {}", r.status()));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("at {:?}: {e:?}", started.elapsed()));
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = ok.load(Ordering::Relaxed);

    // The new process, with the same settings file, waits for the listener on upgrade.sock.
    let dir = old.dir.path().to_owned();
    let upgrade_sock = dir.join("upgrade.sock");
    let log = std::fs::File::create(dir.join("router-new.log")).unwrap();
    let new = Child(
        Command::new(env!("CARGO_BIN_EXE_nx-router"))
            .arg("--settings")
            .arg(RouterSettings::file(&dir))
            .arg("--upgrade")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn the new nx-router"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !upgrade_sock.exists() {
        assert!(
            Instant::now() < deadline,
            "the new router never waited on upgrade.sock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let new_log = || std::fs::read_to_string(dir.join("router-new.log")).unwrap_or_default();
    eprintln!("SIGQUIT at {:?}", started.elapsed());
    let quit = Command::new("kill")
        .args(["-QUIT", &old.child.id().to_string()])
        .status()
        .unwrap();
    assert!(quit.success());
    // The old one serves what it accepted, then exits (Pingora waits 5 s before it stops
    // accepting, then up to graceful_shutdown_timeout_seconds for open requests).
    let deadline = Instant::now() + Duration::from_secs(30);
    while old.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the old router did not exit\n{}",
            old.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("old exited at {:?}", started.elapsed());
    let during = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let errors: Vec<String> = errors.lock().unwrap().iter().take(5).cloned().collect();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed, e.g. {:?}\nold router:\n{}\nnew router:\n{}",
        ok + failed,
        errors,
        not_access(&old.log()),
        not_access(&new_log())
    );
    assert!(
        ok > during && during > before && ok >= 300,
        "requests answered: {before} before, {during} until the old router exited, {ok} in all"
    );
    eprintln!("{ok} requests answered, 0 failed ({before} before SIGQUIT, {during} until the old router exited)");
    // The new process serves the table the old one kept, and takes new tables.
    let table = old.client.table(Duration::from_secs(5)).await.unwrap();
    assert_eq!(table.routes.len(), 1, "{}", new_log());
    drop(new);
}
