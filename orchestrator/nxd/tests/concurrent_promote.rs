//! Promote and rollback while production is under load: no request may fail.

use nx_testkit::Host;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

const CLIENTS: usize = 4;
const REQUESTS_PER_CLIENT: usize = 1500;

#[test]
fn promote_and_rollback_under_load_fail_no_request() {
    let host = Arc::new(Host::start());
    let v1 = host.push_sample("busy", &["-e", "APP_VERSION=v1"]);
    let v2 = host.push_sample("busy", &["-e", "APP_VERSION=v2"]);
    host.nx_json(&["promote", "busy", &v1]);

    let done = Arc::new(AtomicBool::new(false));
    let served = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (host, served) = (host.clone(), served.clone());
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                for _ in 0..REQUESTS_PER_CLIENT {
                    let (status, body) = host.get(&host.production_host("busy"), "/");
                    match (status, body.contains("v1"), body.contains("v2")) {
                        (200, true, false) => served[0].fetch_add(1, Ordering::Relaxed),
                        (200, false, true) => served[1].fetch_add(1, Ordering::Relaxed),
                        _ => {
                            failures.push(format!("{status} {body}"));
                            0
                        }
                    };
                }
                failures
            })
        })
        .collect();
    let switcher = {
        let (host, done) = (host.clone(), done.clone());
        std::thread::spawn(move || {
            let mut switches = 0;
            while !done.load(Ordering::Relaxed) {
                host.nx_json(&["promote", "busy", &v2]);
                host.nx_json(&["rollback", "busy"]);
                switches += 2;
            }
            switches
        })
    };
    let failures: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    done.store(true, Ordering::Relaxed);
    let switches = switcher.join().unwrap();
    let (one, two) = (
        served[0].load(Ordering::Relaxed),
        served[1].load(Ordering::Relaxed),
    );
    eprintln!(
        "{} requests: {one} by v1, {two} by v2, across {switches} switches",
        one + two
    );
    assert!(
        failures.is_empty(),
        "{} failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(one + two, CLIENTS * REQUESTS_PER_CLIENT);
    assert!(
        switches >= 4 && one > 0 && two > 0,
        "the switch never happened under load"
    );
}
