//! `nx ls` and `nx status` from units' states that systemd's signals keep (see
//! `supervisor::unit_states`): what they show is what systemd says, right after each verb and
//! after a program ends on its own; a state cached for a stopped deployment follows a start made
//! by another client; one sandbox's status lists only its own deployments. `nx ls` is kept
//! serialized between requests (`list_cache`): every change shows in the very next list, and a
//! token scoped to one sandbox gets nothing of it.

use nx_orchestrator::api::systemd::ActiveState;
use nx_orchestrator::api::UnitState;
use nx_orchestrator::config::SystemdMode;
use nx_orchestrator::supervisor::Supervisor;
use nx_testkit::Host;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A deployment's unit state as `nx status` shows it.
fn unit_state(host: &Host, sandbox: &str, id: &str) -> serde_json::Value {
    host.deployment(sandbox, id)["state"].clone()
}

/// The ids of a sandbox's deployments as `nx status` or `nx ls` shows them.
fn ids(sandbox: &serde_json::Value) -> Vec<&str> {
    sandbox["deployments"]
        .as_array()
        .expect("deployments")
        .iter()
        .map(|d| d["id"].as_str().expect("id"))
        .collect()
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
    assert_eq!(ids(&web[0]), [id.as_str()]);
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

/// Every deployment `nx ls` shows, by id.
fn listed(host: &Host) -> HashMap<String, serde_json::Value> {
    host.nx_json(&["ls"])
        .as_array()
        .expect("sandboxes")
        .iter()
        .flat_map(|s| s["deployments"].as_array().expect("deployments").clone())
        .map(|d| (d["id"].as_str().expect("id").to_owned(), d))
        .collect()
}

#[test]
fn the_kept_list_shows_each_change_in_the_very_next_nx_ls_and_nothing_to_a_scoped_token() {
    let host = Host::start();
    let first = host.push_sample("web", &[]);
    let other = host.push_sample("other", &[]);
    host.nx_json(&["promote", "web", &first]);
    // Nothing changed between two lists: the same list (the second is the kept one).
    let kept = listed(&host);
    assert_eq!(listed(&host), kept);

    // Each verb, then one list at once.
    let second = host.push_sample("web", &[]);
    let list = listed(&host);
    assert_eq!(
        list[&second]["state"]["active"], "active",
        "pushed: {list:?}"
    );
    host.nx_json(&["stop", &second]);
    let d = listed(&host).remove(&second).expect("listed");
    assert_eq!(d["desired"], "stopped", "{d}");
    assert_eq!(d["state"]["active"], "inactive", "{d}");
    host.nx_json(&["start", &second]);
    let d = listed(&host).remove(&second).expect("listed");
    assert_eq!(d["state"]["active"], "active", "{d}");
    assert_ne!(d["state"]["main_pid"], 0, "{d}");
    host.nx_json(&["promote", "web", &second]);
    let list = listed(&host);
    assert_eq!(
        list[&second]["promoted"], true,
        "promoted: {}",
        list[&second]
    );
    assert_eq!(list[&first]["promoted"], false, "{}", list[&first]);
    host.nx_json(&["pin", &first]);
    assert_eq!(listed(&host)[&first]["pinned"], true);

    // The program of `first` exits on its own: once its monitor has written how it ended, the
    // very next list names that end (and the list kept before it is not served).
    let before = listed(&host);
    assert!(before[&first]["last_exit"].is_null(), "{}", before[&first]);
    let last_exit = host
        .state_dir
        .path()
        .join("deployments")
        .join(&first)
        .join("last-exit.json");
    let (status, _) = host.get(&host.preview_host("web", &first), "/exit?code=3");
    assert_ne!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !last_exit.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never written",
            last_exit.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let d = listed(&host).remove(&first).expect("listed");
    assert_eq!(d["last_exit"]["exit_code"], 3, "{d}");

    host.nx_json(&["rm", &first]);
    let list = listed(&host);
    assert!(!list.contains_key(&first), "removed: {list:?}");
    assert!(list.contains_key(&second) && list.contains_key(&other));

    // A token of sandbox web, right after the root token's list was kept: refused the list,
    // and its sandbox's status has web's deployments only.
    listed(&host);
    let token = host.nx_json(&["token", "create", "--sandbox", "web", "--can", "push"])["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let refused = host.nx_as(&token, &["--json", "ls"]);
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert!(!refused.ok, "{said}");
    assert!(said.contains("nx status"), "says what it may do: {said}");
    assert!(!said.contains(&other) && !said.contains(&second), "{said}");
    let web = host.nx_as(&token, &["--json", "status", "web"]).json();
    assert_eq!(ids(&web[0]), [second.as_str()]);
}
