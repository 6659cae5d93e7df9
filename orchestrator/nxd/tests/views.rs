//! `nx ls` and `nx status` from units' states that systemd's signals keep (see
//! `supervisor::unit_states`): what they show is what systemd says, right after each verb and
//! after a program ends on its own; a state cached for a stopped deployment follows a start made
//! by another client; one sandbox's status lists only its own deployments.

use nx_orchestrator::api::systemd::ActiveState;
use nx_orchestrator::api::UnitState;
use nx_orchestrator::config::SystemdMode;
use nx_orchestrator::supervisor::Supervisor;
use nx_testkit::Host;
use std::time::{Duration, Instant};

/// A deployment's unit state as `nx status` shows it.
fn unit_state(host: &Host, sandbox: &str, id: &str) -> serde_json::Value {
    host.deployment(sandbox, id)["state"].clone()
}

/// What two reads of the same unit must agree on (the counters move between them).
fn settled(state: &UnitState) -> UnitState {
    UnitState {
        memory_bytes: None,
        tasks: None,
        ..state.clone()
    }
}

/// Polls `states` of one unit until `done` holds; panics after 5 s with the last state.
async fn states_until(
    supervisor: &Supervisor,
    unit: &str,
    what: &str,
    done: impl Fn(&UnitState) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state = supervisor.states(&[unit]).await.expect("states").remove(0);
        if done(&state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{unit} never became {what} in the cached view: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn cached_states_are_systemds_and_follow_changes_made_by_another_client() {
    let host = Host::start();
    let running = host.push_sample("alpha", &[]);
    let stopped = host.push_sample("alpha", &[]);
    host.nx_json(&["stop", &stopped]);
    let unit_of = |id: &str| {
        host.deployment("alpha", id)["unit"]
            .as_str()
            .expect("unit")
            .to_owned()
    };
    let (running_unit, stopped_unit) = (unit_of(&running), unit_of(&stopped));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // A client of its own on the host's manager, as nxd is one.
        let supervisor =
            Supervisor::connect(SystemdMode::Embedded, host.state_dir.path(), "nx.slice")
                .await
                .expect("the host's embedded manager");
        let units = [
            running_unit.as_str(),
            stopped_unit.as_str(),
            "nx-nosuch1.service",
            "nx-nosuch2.service",
        ];
        // Many at once (listed first, then only the loaded one asked) equal one by one, and
        // equal again from the cache.
        for _ in 0..2 {
            let many = supervisor.states(&units).await.expect("states");
            for (unit, state) in units.iter().zip(&many) {
                let one = supervisor.state(unit).await.expect("state");
                assert_eq!(settled(state), settled(&one), "{unit}");
            }
        }
        let both = supervisor.states(&units).await.unwrap();
        assert_eq!(both[0].active, ActiveState::Active);
        assert_eq!(both[1].active, ActiveState::Inactive);

        // nxd (another client) starts the stopped one: the view this client has cached as
        // "no unit" follows systemd's signal.
        host.nx_json(&["start", &stopped]);
        states_until(&supervisor, &stopped_unit, "active", |s| {
            s.active == ActiveState::Active && s.main_pid != 0
        })
        .await;
        host.nx_json(&["stop", &stopped]);
        states_until(&supervisor, &stopped_unit, "inactive", |s| {
            s.active == ActiveState::Inactive
        })
        .await;
    });
}

#[test]
fn status_shows_each_verb_at_once_and_a_program_that_ended_on_its_own() {
    let host = Host::start();
    let id = host.push_sample("web", &[]);
    let other = host.push_sample(
        "other",
        &["--health-path", "/health", "--idle-timeout", "60s"],
    );
    // Warm whatever nxd caches, then change the deployment and look right away: no stale view.
    for _ in 0..3 {
        host.nx_json(&["ls"]);
        host.nx_json(&["stop", &id]);
        let state = unit_state(&host, "web", &id);
        assert_eq!(state["active"], "inactive", "{state}");
        host.nx_json(&["ls"]);
        host.nx_json(&["start", &id]);
        let state = unit_state(&host, "web", &id);
        assert_eq!(state["active"], "active", "{state}");
        assert_ne!(state["main_pid"], 0, "{state}");
    }

    // The program exits by itself: the next views say so (systemd restarts it on failure).
    let pid = unit_state(&host, "web", &id)["main_pid"].clone();
    // It exits instead of answering: the router answers 502 (or nothing).
    let (status, _) = host.get(&host.preview_host("web", &id), "/exit?code=3");
    assert_ne!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = unit_state(&host, "web", &id);
        if state["restarts"].as_u64() >= Some(1) || state["main_pid"] != pid {
            break;
        }
        assert!(Instant::now() < deadline, "the exit never showed: {state}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // One sandbox's status has its own deployments only; `nx ls` has both sandboxes'.
    let web = host.nx_json(&["status", "web"]);
    let ids: Vec<&str> = web[0]["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str()]);
    let all = host.nx_json(&["ls"]);
    let all_ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["deployments"].as_array().unwrap())
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert!(all_ids.contains(&id.as_str()) && all_ids.contains(&other.as_str()));

    // What nxd does on its own (health check, idle timeout, pin) is in both views, each
    // deployment with its own, right after a pin and an unpin.
    for pinned in [true, false] {
        host.nx_json(&[if pinned { "pin" } else { "unpin" }, &other]);
        for view in [host.nx_json(&["ls"]), host.nx_json(&["status", "other"])] {
            let deployments: Vec<&serde_json::Value> = view
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|s| s["deployments"].as_array().unwrap())
                .collect();
            let find = |want: &str| deployments.iter().find(|d| d["id"] == want).copied();
            let o = find(&other).unwrap_or_else(|| panic!("{other} not in {view}"));
            assert_eq!(o["pinned"], pinned, "{o}");
            assert_eq!(o["health_check"]["path"], "/health", "{o}");
            assert_eq!(o["idle_timeout_secs"], 60, "{o}");
            if let Some(web) = find(&id) {
                assert_eq!(web["pinned"], false, "{web}");
                assert!(web["health_check"].is_null(), "{web}");
                assert!(web["idle_timeout_secs"].is_null(), "{web}");
            }
        }
    }
    let missing = host.nx(&["status", "nosuch"]);
    assert!(
        !missing.ok && missing.stderr.contains("no sandbox nosuch"),
        "{}",
        missing.stderr
    );
}
