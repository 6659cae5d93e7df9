//! The control plane against its tenants and its own crashes, on a host with the embedded
//! defaults: a sandbox's role reaches only its own database, cannot delay nxd's start with
//! locks nor crowd it out of connections; a PostgreSQL restart leaves running deployments
//! connected, and so do kill -9 and a restart of nxd (their gate is a process of its own); the
//! cluster's socket is closed to the host's other users; kill -9 of nxd at each step of a
//! backup, a restore and a swap leaves production's database usable and nothing behind after
//! the next start; one sandbox's fork bomb leaves room for the others' pushes and tasks; a
//! restore's scratch database is its sandbox's alone and held to the tenants' bounds; a
//! tenant's statements, fast-path function calls included, are held to their time bound.

use nx_orchestrator::config::SystemdMode;
use nx_orchestrator::supervisor::Supervisor;
use nx_testkit::Host;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn superuser(host: &Host, db: &str, sql: &str) -> String {
    let (ok, out) = nx_testkit::psql(&host.path("postgres/socket"), 5432, db, sql);
    assert!(ok, "psql failed: {sql}: {out}");
    out.trim().to_owned()
}

/// sqlx's migration lock id for a database name (sqlx-postgres `generate_lock_id`).
fn sqlx_lock_id(database: &str) -> i64 {
    0x3d32ad9e * i64::from(crc32fast::hash(database.as_bytes()))
}

/// The embedded manager of a test host, over D-Bus, as `systemctl` would reach it.
fn with_manager<T>(host: &Host, f: impl AsyncFnOnce(&Supervisor) -> T) -> T {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let supervisor =
            Supervisor::connect(SystemdMode::Embedded, host.state_dir.path(), "nx.slice")
                .await
                .expect("the host's embedded manager");
        f(&supervisor).await
    })
}

#[test]
fn a_tenant_reaches_only_its_database_and_cannot_hold_nxd_up_or_crowd_it_out() {
    let mut host = Host::start();
    let a = host.push_sample("alpha", &[]);
    let b = host.push_sample("beta", &[]);
    let alpha = |host: &Host, path: &str| host.get(&host.preview_host("alpha", &a), path);
    let beta = |host: &Host, path: &str| host.get(&host.preview_host("beta", &b), path);
    let beta_db = host.nx_json(&["db", "url", "beta"])["database"]
        .as_str()
        .unwrap()
        .to_owned();

    // Only its own database: not nxd's, not the maintenance ones, not a neighbour's.
    for other in ["nx", "postgres", "template1", beta_db.as_str()] {
        let (status, body) = alpha(&host, &format!("/db/connect?db={other}"));
        assert_eq!(status, 500, "alpha connected to {other}");
        assert!(
            body.contains("permission denied for database"),
            "{other}: {body}"
        );
    }
    assert_eq!(alpha(&host, "/db/connect").0, 200);
    // nxd's state is in its own database, not in `postgres`.
    assert!(superuser(&host, "nx", "SELECT count(*) FROM deployments") == "2");
    assert_eq!(
        superuser(
            &host,
            "postgres",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        "0"
    );

    // Every lock it can take, held in a session that stays open: sqlx's migration locks of
    // every database name nxd could use, and an exclusive lock on its own table.
    assert_eq!(alpha(&host, "/db/put?v=x").0, 200);
    let alpha_db = host.nx_json(&["db", "url", "alpha"]);
    let url = alpha_db["url"].as_str().unwrap().to_owned();
    let alpha_database = alpha_db["database"].as_str().unwrap().to_owned();
    let mut holder = Command::new("psql")
        .arg(&url)
        .args(["-v", "ON_ERROR_STOP=1", "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sql = String::new();
    for name in ["nx", "postgres", "template1", alpha_database.as_str()] {
        sql.push_str(&format!(
            "SELECT pg_advisory_lock({});\n",
            sqlx_lock_id(name)
        ));
    }
    sql.push_str("SELECT 'held';\n");
    holder
        .stdin
        .as_mut()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        holder.try_wait().unwrap().is_none(),
        "the locks were not taken"
    );
    let started = Instant::now();
    host.restart_nxd();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "nxd took {took:?} to start");
    assert!(holder.try_wait().unwrap().is_none());
    let _ = holder.kill();

    // Its connection limit, and the slots left for the others and for nxd.
    let limit: usize = superuser(
        &host,
        "postgres",
        &format!("SELECT rolconnlimit FROM pg_roles WHERE rolname = '{alpha_database}'"),
    )
    .parse()
    .unwrap();
    assert_eq!(limit, 20, "25% of 100 - 20 reserved slots");
    let info = host.nx_json(&["db", "url", "alpha"]);
    assert_eq!(info["connection_limit"], limit);
    assert!(info["size_bytes"].as_u64().unwrap() > 1_000_000, "{info}");
    let (_, held) = alpha(&host, "/db/hold?n=500");
    let held: serde_json::Value = serde_json::from_str(&held).unwrap();
    assert_eq!(held["held"], limit);
    assert!(
        held["refused"]
            .as_str()
            .unwrap()
            .contains("too many connections for sandbox alpha's database"),
        "{held}"
    );
    assert_eq!(beta(&host, "/db/put?v=y").0, 200, "beta could not connect");
    let listed = host.nx_json(&["ls"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let saved = host.path("alpha.dump");
    let backup = host.nx_json(&["db", "backup", "alpha", "-o", saved.to_str().unwrap()]);
    assert!(backup["backup"]["id"].is_string(), "{backup}");
    // Timeouts are set on the role.
    let settings = superuser(
        &host,
        "postgres",
        &format!("SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname = '{alpha_database}'"),
    );
    assert!(settings.contains("statement_timeout=300s"), "{settings}");
    assert!(
        settings.contains("idle_in_transaction_session_timeout=60s"),
        "{settings}"
    );
}

/// (status, body) of `GET /v1/health`.
fn health(host: &Host) -> (u16, String) {
    host.call(&host.token, "GET", "/v1/health", None)
}

#[test]
fn unauthenticated_connections_of_one_sandbox_leave_the_others_and_nxd_connecting() {
    let host = Host::start();
    let a = host.push_sample("alpha", &[]);
    let b = host.push_sample("beta", &[]);
    let alpha = |path: &str| host.get(&host.preview_host("alpha", &a), path);
    let beta = |path: &str| host.get(&host.preview_host("beta", &b), path);
    assert_eq!(beta("/db/put?v=before").0, 200);
    let limit = host.nx_json(&["db", "url", "alpha"])["connection_limit"]
        .as_u64()
        .unwrap();

    // Alpha's app opens 200 connections, sends each a startup packet and never answers the
    // password request: on the cluster's own socket each held a backend slot until
    // authentication_timeout, and every other client got "sorry, too many clients already".
    let (status, held) = alpha("/db/hold-unauthenticated?n=200");
    assert_eq!(status, 200, "{held}");
    let held: serde_json::Value = serde_json::from_str(&held).unwrap();
    let (status, body) = beta("/db/put?v=during");
    assert_eq!(status, 200, "beta could not connect ({held}): {body}");
    let saved = host.path("beta.dump");
    let made = host.nx(&["db", "backup", "beta", "-o", saved.to_str().unwrap()]);
    assert!(made.ok, "nx db backup failed ({held}): {}", made.stderr);
    assert_eq!(health(&host).0, 200, "{held}");
    assert_eq!(held["asked_for_password"], limit, "{held}");
    assert_eq!(held["refused"], 200 - limit, "{held}");
    assert!(
        held["refusal"]
            .as_str()
            .unwrap()
            .contains("too many connections for sandbox alpha's database"),
        "{held}"
    );
    // PostgreSQL ends them at authentication_timeout (10 s), and alpha's slots are free again.
    let started = Instant::now();
    loop {
        let (status, body) = alpha("/db/put?v=after");
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "alpha's slots stayed taken: {body}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// (succeeded, output) of `psql -w` as `user` over the socket in `dir`: never a password prompt.
fn psql_as(dir: &std::path::Path, user: &str, db: &str, sql: &str) -> (bool, String) {
    psql_url(
        &format!("host={} port=5432 user={user} dbname={db}", dir.display()),
        sql,
    )
}

/// (succeeded, stdout then stderr) of `psql -w -tAc sql` on the connection string `url`.
fn psql_url(url: &str, sql: &str) -> (bool, String) {
    let out = Command::new("psql")
        .args(["-w", url, "-tAc", sql])
        .output()
        .expect("psql");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn a_sandboxs_database_socket_admits_only_its_own_role() {
    let host = Host::start();
    let a = host.push_sample("alpha", &[]);
    let info = host.nx_json(&["db", "url", "alpha"]);
    let role = info["role"].as_str().unwrap();
    // The socket alpha's deployments get at /run/postgresql. nxd's connection behind it is
    // the cluster's superuser's (peer: root is postgres), so asking for `postgres` there made
    // any deployment the cluster's superuser: every tenant's data, nxd's own tables, COPY
    // ... PROGRAM as the OS user postgres.
    let gate = host.path(&format!("db-gates/{role}"));
    for user in ["postgres", "nx", "root"] {
        let (ok, out) = psql_as(
            &gate,
            user,
            "postgres",
            "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user",
        );
        assert!(!ok, "the gate let {user} in: {out}");
        assert!(
            out.contains(&format!(
                "this socket admits only the sandbox's own roles ({role}"
            )),
            "{user}: {out}"
        );
    }
    // Its own role still reaches PostgreSQL, which asks for the role's password.
    let (ok, out) = psql_as(&gate, role, role, "SELECT 1");
    assert!(!ok && out.contains("no password supplied"), "{out}");
    assert_eq!(
        host.get(&host.preview_host("alpha", &a), "/db/connect").0,
        200
    );
    assert_eq!(
        host.get(&host.preview_host("alpha", &a), "/db/put?v=x").0,
        200
    );
}

#[test]
fn health_says_when_postgresql_refuses_nxd() {
    let host = Host::start();
    assert_eq!(health(&host).0, 200);
    superuser(
        &host,
        "nx",
        "ALTER DATABASE postgres WITH ALLOW_CONNECTIONS false",
    );
    let (status, body) = health(&host);
    superuser(
        &host,
        "nx",
        "ALTER DATABASE postgres WITH ALLOW_CONNECTIONS true",
    );
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("PostgreSQL refuses nxd's connections")
            && body.contains("is not currently accepting connections")
            && body.contains("postgres.log"),
        "{body}"
    );
    assert_eq!(health(&host).0, 200);
}

#[test]
fn restarting_postgres_leaves_running_deployments_connected() {
    let host = Host::start();
    let ids: Vec<String> = ["one", "two"]
        .iter()
        .map(|s| host.push_sample(s, &[]))
        .collect();
    let app = |i: usize, path: &str| {
        let sandbox = ["one", "two"][i];
        host.get(&host.preview_host(sandbox, &ids[i]), path)
    };
    let pids: Vec<serde_json::Value> = (0..2)
        .map(|i| host.deployment(["one", "two"][i], &ids[i])["state"]["main_pid"].clone())
        .collect();
    for i in 0..2 {
        assert_eq!(app(i, "/db/put?v=before").0, 200);
    }
    with_manager(&host, async |s| {
        s.restart("nx-postgres.service").await.unwrap()
    });
    let restarted = Instant::now();
    for i in 0..2 {
        loop {
            let (status, body) = app(i, "/db/list");
            if status == 200 {
                assert_eq!(body, r#"["before"]"#);
                break;
            }
            assert!(
                restarted.elapsed() < Duration::from_secs(10),
                "deployment {i} cannot reach its database: {body}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for i in 0..2 {
        let now = host.deployment(["one", "two"][i], &ids[i])["state"]["main_pid"].clone();
        assert_eq!(now, pids[i], "deployment {i} was restarted");
    }
}

/// The uid (and gid) the database gate runs as: `databases.gate_uid`'s default.
const GATE_UID: u32 = 199_999;

/// The pid of the database gate process of `host` (`nxd-launcher db-gate <state_dir>/...`).
fn gate_pid(host: &Host) -> i32 {
    let state_dir = host.state_dir.path();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.get(1) == Some(&&b"db-gate"[..])
            && args.get(2).is_some_and(|a| {
                std::path::Path::new(std::str::from_utf8(a).unwrap_or("")).starts_with(state_dir)
            })
        {
            return pid;
        }
    }
    panic!("no database gate process of {}", state_dir.display())
}

/// Attacker s9: when each sandbox's gate was a socket of nxd's own, kill -9 of nxd cut every
/// deployment's open database session and refused new connections until nxd was back.
#[test]
fn database_sessions_and_new_connections_outlive_a_kill_9_and_restart_of_nxd() {
    let mut host = Host::start();
    let id = host.push_sample("keep", &[]);
    let app = |host: &Host, path: &str| host.get(&host.preview_host("keep", &id), path);
    let (status, body) = app(&host, "/db/hold?n=1");
    assert_eq!(status, 200, "{body}");
    let (status, sessions) = app(&host, "/db/held");
    assert_eq!(status, 200, "{sessions}");

    let same_session = |host: &Host, after: &str| {
        let (status, body) = app(host, "/db/held");
        assert_eq!(
            (status, body.as_str()),
            (200, sessions.as_str()),
            "the open session did not survive {after}"
        );
    };
    host.kill_nxd();
    same_session(&host, "kill -9 of nxd");
    let (status, body) = app(&host, "/db/put?v=while-nxd-was-down");
    assert_eq!(status, 200, "a new connection while nxd was down: {body}");

    host.restart_nxd();
    same_session(&host, "nxd's restart (the gate was not adopted)");
    assert_eq!(
        app(&host, "/db/list"),
        (200, r#"["while-nxd-was-down"]"#.to_owned())
    );

    // The gate runs as a uid of its own, which pg_ident.conf does not map to `postgres`.
    let gate = gate_pid(&host);
    let status = std::fs::read_to_string(format!("/proc/{gate}/status")).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let gate_uid = GATE_UID.to_string();
    assert!(
        uids.split_whitespace().skip(1).all(|uid| uid == gate_uid),
        "{uids}"
    );

    // A gate process that dies is started again, and new connections pass again.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gate),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for_database(&host, &app, "after-the-gate-died");

    // One stopped from outside (systemd does not restart it) is started again by nxd, and
    // health says meanwhile.
    with_manager(&host, async |s| s.stop("nx-db-gate.service").await.unwrap());
    let (status, body) = health(&host);
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("the database gate (nx-db-gate.service) is not running"),
        "{body}"
    );
    wait_for_database(&host, &app, "after-the-gate-was-stopped");
    assert_eq!(health(&host).0, 200);
}

/// Waits until the sample app `app` stores `value` in its database (at most 20 s).
fn wait_for_database(host: &Host, app: &impl Fn(&Host, &str) -> (u16, String), value: &str) {
    let since = Instant::now();
    loop {
        let (status, body) = app(host, &format!("/db/put?v={value}"));
        if status == 200 {
            println!("{value}: database reached again in {:?}", since.elapsed());
            return;
        }
        assert!(
            since.elapsed() < Duration::from_secs(20),
            "the gate was not started again ({value}): {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Attacker s9: the embedded cluster's socket directory was 0755 and PostgreSQL's socket 0777,
/// so every user of the host reached the cluster (and could fill its slots before
/// authentication, past every gate). Now only PostgreSQL, the gate's group and root do.
#[test]
fn the_clusters_socket_is_closed_to_the_hosts_other_users() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let host = Host::start();
    let socket_dir = host.path("postgres/socket");
    let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
    for (dir, mode) in [(host.path("postgres"), 0o710), (socket_dir.clone(), 0o750)] {
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(
            (meta.mode() & 0o777, meta.uid(), meta.gid()),
            (mode, postgres.uid.as_raw(), GATE_UID),
            "{}",
            dir.display()
        );
    }
    let out = Command::new("psql")
        .args([
            "-h",
            socket_dir.to_str().unwrap(),
            "-p",
            "5432",
            "-d",
            "postgres",
        ])
        .args(["-w", "-c", "SELECT 1"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Permission denied"),
        "user nobody reached the cluster's socket: {stderr}"
    );
    // nxd and its tools still do.
    assert_eq!(superuser(&host, "postgres", "SELECT 1"), "1");
    assert_eq!(health(&host).0, 200);
}

/// What an interrupted database operation could leave: tool units, partial and uploaded
/// dumps, scratch and orphan branch databases.
fn assert_nothing_left(host: &Host) {
    let units = with_manager(host, async |s| s.list("nxdb-*.service").await.unwrap());
    assert!(units.is_empty(), "tool units left: {units:?}");
    let files = nx_testkit::files_under(&host.path("backups"));
    let stray: Vec<&String> = files
        .iter()
        .filter(|f| {
            f.ends_with(".partial")
                || f.contains("upload-")
                || f.contains(".tmp")
                || f.contains("nxdb-")
        })
        .collect();
    assert!(stray.is_empty(), "files left: {stray:?}");
    assert_eq!(scratch_left_within(host, 30), "", "scratch databases left");
}

/// The scratch databases (`nxr_*`) still there after up to `secs` seconds (nxd drops those
/// left from before in the background, after its start), comma-separated.
fn scratch_left_within(host: &Host, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let scratch = superuser(
            host,
            "postgres",
            "SELECT string_agg(datname, ',') FROM pg_database WHERE datname LIKE 'nxr\\_%'",
        );
        if scratch.is_empty() || Instant::now() > deadline {
            return scratch;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn kill_9_of_nxd_at_each_step_of_backup_restore_and_swap_leaves_production_usable() {
    let mut host = Host::start();
    let id = host.push_sample("shop", &[]);
    let dump = host.path("shop.dump");
    host.nx_json(&["db", "backup", "shop", "-o", dump.to_str().unwrap()]);
    let app = |host: &Host, path: &str| host.get(&host.preview_host("shop", &id), path);
    assert_eq!(app(&host, "/db/put?v=a").0, 200);
    let listed = |host: &Host| app(host, "/db/list");

    let unsaved = host.path("unsaved.dump");
    let steps: [(&str, &[&str]); 4] = [
        (
            "databases::tool",
            &["db", "backup", "shop", "-o", unsaved.to_str().unwrap()],
        ),
        (
            "databases::tool",
            &["db", "restore", "shop", dump.to_str().unwrap()],
        ),
        (
            "databases::restore",
            &["db", "restore", "shop", dump.to_str().unwrap()],
        ),
        (
            "databases::swap",
            &["db", "restore", "shop", dump.to_str().unwrap()],
        ),
    ];
    for (point, command) in steps {
        host.crash_during(point, command);
        assert_eq!(
            listed(&host),
            (200, r#"["a"]"#.into()),
            "after a crash at {point}"
        );
        assert_nothing_left(&host);
    }

    // A preview branch swapped in by promote --swap-db: a crash inside the swap leaves both
    // as they were; a crash after it is finished at the next start.
    let branch = host.push_sample("shop", &["--db-branch"]);
    let preview = |host: &Host, path: &str| host.get(&host.preview_host("shop", &branch), path);
    assert_eq!(preview(&host, "/db/put?v=b").0, 200);
    for point in ["databases::swap", "databases::swapped"] {
        host.restart_nxd_crashing_at(point);
        let out = host.nx(&["promote", "shop", &branch, "--swap-db"]);
        assert!(!out.ok, "promote survived the crash at {point}");
        host.wait_nxd_exit();
        host.restart_nxd();
        // The branch's deployment, stopped when its swap is finished at start, is started
        // again in the background (adoption does not hold the API up).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while preview(&host, "/db/list").0 != 200 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let expected_production = if point == "databases::swap" {
            r#"["a"]"#
        } else {
            r#"["a","b"]"#
        };
        assert_eq!(
            listed(&host),
            (200, expected_production.into()),
            "after a crash at {point}"
        );
        assert_eq!(
            preview(&host, "/db/list"),
            (200, r#"["a","b"]"#.into()),
            "after {point}"
        );
        assert_nothing_left(&host);
    }
    let roles = superuser(
        &host,
        "postgres",
        "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'nxb\\_%'",
    );
    assert_eq!(roles, "0", "the swapped branch's role is left");
    assert_eq!(host.deployment("shop", &branch)["db_branch"], false);
}

/// Newcomer s17 N4: a kill -9 of nxd during `nx promote --swap-db`, after the branch was
/// swapped in and before production was routed to it, left production on the OLD deployment,
/// now on the preview's database, and the next nxd neither finished nor undid it. A crash
/// inside the swap leaves both as they were; one after it is finished at the next start: the
/// preview is production, on its branch (now production's database).
#[test]
fn a_crash_during_promote_swap_db_finishes_the_promotion_or_leaves_it_undone() {
    let mut host = Host::start();
    let old = host.push_sample("shop", &[]);
    host.nx_json(&["promote", "shop", &old]);
    let production = host.production_host("shop");
    assert_eq!(host.get(&production, "/db/put?v=a").0, 200);
    // Production's deployment and what its database holds, once it answers again.
    let production_now = |host: &Host| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, env) = host.get(&production, "/env");
            if status == 200 {
                let env: serde_json::Value = serde_json::from_str(&env).unwrap();
                let listed = host.get(&production, "/db/list");
                return (env["NX_DEPLOYMENT"].as_str().unwrap().to_owned(), listed);
            }
            assert!(
                Instant::now() < deadline,
                "production does not answer: {env}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let steps = [
        ("databases::swap", false, "b"),
        ("databases::swapped", true, "c"),
        ("databases::promoting", true, "d"),
    ];
    let mut rows = vec!["a"];
    let mut expected_production = old.clone();
    let mut kept_branches = Vec::new();
    for (point, finished, row) in steps {
        let preview = host.push_sample("shop", &["--db-branch"]);
        let preview_host = host.preview_host("shop", &preview);
        assert_eq!(host.get(&preview_host, &format!("/db/put?v={row}")).0, 200);
        host.crash_during(point, &["promote", "shop", &preview, "--swap-db"]);
        let mut branch_rows = rows.clone();
        branch_rows.push(row);
        if finished {
            expected_production = preview.clone();
            rows = branch_rows.clone();
        } else {
            kept_branches.push(format!("nxb_{preview}"));
        }
        let (deployment, listed) = production_now(&host);
        assert_eq!(
            (deployment.as_str(), listed),
            (
                expected_production.as_str(),
                (200, serde_json::to_string(&rows).unwrap())
            ),
            "production after a crash at {point}:\n{}",
            host.nxd_log()
        );
        let status = host.nx_json(&["status", "shop"]);
        assert_eq!(
            status[0]["promoted"],
            expected_production.as_str(),
            "{point}"
        );
        assert_eq!(
            host.deployment("shop", &preview)["db_branch"],
            !finished,
            "{point}"
        );
        // The preview's program serves its branch's rows: production's database when finished.
        let deadline = Instant::now() + Duration::from_secs(30);
        while host.get(&preview_host, "/db/list").0 != 200 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            host.get(&preview_host, "/db/list"),
            (200, serde_json::to_string(&branch_rows).unwrap()),
            "the preview after a crash at {point}"
        );
        assert!(
            !host
                .path(&format!("volumes/shop/{preview}/.promoting"))
                .exists(),
            "the promotion's intent is left after {point}"
        );
    }
    let roles = superuser(
        &host,
        "postgres",
        "SELECT string_agg(rolname, ',') FROM pg_roles WHERE rolname LIKE 'nxb\\_%'",
    );
    // Only the branches whose swap was undone are left.
    assert_eq!(roles, kept_branches.join(","), "branch roles");
}

/// Newcomer s17 N6: after a kill -9 of nxd during a restore, a session of the restore's
/// scratch database that outlives `DROP DATABASE ... WITH (FORCE)`'s 5 s wait (there: a
/// backend in the middle of a large COPY) made nxd's next start exit ("is being accessed by
/// other users"). Here the session is held by a stopped (SIGSTOP) backend, resumed 7 s after
/// nxd's start began dropping the database: the start waits for it and drops it.
#[test]
fn a_session_outliving_the_drop_of_a_leftover_scratch_database_does_not_end_nxds_start() {
    let mut host = Host::start();
    let id = host.push_sample("shop", &[]);
    let dump = host.path("shop.dump");
    host.nx_json(&["db", "backup", "shop", "-o", dump.to_str().unwrap()]);
    assert_eq!(
        host.get(&host.preview_host("shop", &id), "/db/put?v=a").0,
        200
    );
    host.restart_nxd_crashing_at("databases::restore");
    let out = host.nx(&["db", "restore", "shop", dump.to_str().unwrap()]);
    assert!(!out.ok, "the restore survived the crash");
    host.wait_nxd_exit();
    let scratch = superuser(
        &host,
        "postgres",
        "SELECT datname FROM pg_database WHERE datname LIKE 'nxr\\_%'",
    );
    assert!(
        scratch.starts_with("nxr_"),
        "no scratch database: {scratch:?}"
    );
    // A session of the scratch database, its backend stopped: it ends only once resumed.
    let (mut session, backend) = held_session(&host, &scratch);
    nix::sys::signal::kill(backend, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let log = host.path("nxd.log");
    let resume = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        let dropping = |line: &str| {
            line.contains("dropping a database left from before") && line.contains(&scratch)
        };
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .any(dropping)
        {
            assert!(Instant::now() < deadline, "nxd never dropped {scratch}");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(7));
        nix::sys::signal::kill(backend, nix::sys::signal::Signal::SIGCONT).unwrap();
    });
    host.restart_nxd();
    resume.join().unwrap();
    drop(session.stdin.take());
    let _ = session.wait();
    assert_nothing_left(&host);
    assert_eq!(
        host.get(&host.preview_host("shop", &id), "/db/list"),
        (200, r#"["a"]"#.into())
    );
}

/// Review17 #9 and crash17's untested give-up: nxd dropped the databases left from before
/// one after another inside its start, each waiting up to ~35 s for sessions that outlive
/// `DROP DATABASE ... WITH (FORCE)`, before its API answered. Now they are dropped in the
/// background: nxd answers, and its deployments do, while a scratch database's session (its
/// backend stopped) holds the drop up; past 30 s the drop is given up, logged, and the
/// database left to the next start, which drops it.
#[test]
fn nxd_answers_while_a_leftover_database_cannot_be_dropped_and_drops_it_at_the_next_start() {
    let mut host = Host::start();
    let id = host.push_sample("shop", &[]);
    let dump = host.path("shop.dump");
    host.nx_json(&["db", "backup", "shop", "-o", dump.to_str().unwrap()]);
    let app = |host: &Host, path: &str| host.get(&host.preview_host("shop", &id), path);
    assert_eq!(app(&host, "/db/put?v=a").0, 200);
    host.restart_nxd_crashing_at("databases::restore");
    let out = host.nx(&["db", "restore", "shop", dump.to_str().unwrap()]);
    assert!(!out.ok, "the restore survived the crash");
    host.wait_nxd_exit();
    let scratch = scratch_left_within(&host, 0);
    assert!(
        scratch.starts_with("nxr_"),
        "no scratch database: {scratch:?}"
    );
    let (mut session, backend) = held_session(&host, &scratch);
    nix::sys::signal::kill(backend, nix::sys::signal::Signal::SIGSTOP).unwrap();

    let started = Instant::now();
    host.restart_nxd();
    let answered = started.elapsed();
    assert!(
        answered < Duration::from_secs(25),
        "nxd answered {answered:?} after its start began (the drop of {scratch} held it up):\n{}",
        host.nxd_log()
    );
    assert_eq!(app(&host, "/db/list"), (200, r#"["a"]"#.into()));
    host.wait_for_log_line(
        |l| l.contains("dropping a database left from before") && l.contains(&scratch),
        Duration::from_secs(10),
        "nxd did not begin dropping the scratch database",
    );
    // Past LEFTOVER_DROP_PATIENCE (30 s) and the last DROP's own 5 s: given up, left.
    host.wait_for_log_line(
        |l| l.contains("could not drop a database left from before") && l.contains(&scratch),
        Duration::from_secs(60),
        "nxd did not give the drop up",
    );
    assert_eq!(scratch_left_within(&host, 0), scratch);
    assert_eq!(health(&host).0, 200);
    nix::sys::signal::kill(backend, nix::sys::signal::Signal::SIGCONT).unwrap();
    drop(session.stdin.take());
    let _ = session.wait();
    host.restart_nxd();
    assert_nothing_left(&host);
    assert_eq!(app(&host, "/db/list"), (200, r#"["a"]"#.into()));
}

/// Review17 #4 (its part on 3bcbf69's path): when a step after the swap of `promote --swap-db`
/// failed (there: the branch role's DROP ROLE, refused; also the records, the volume mounts),
/// production was left on the branch's data while the old deployment stayed routed, until
/// nxd's next start; and review17 #7: an undone db-only swap left the preview without its
/// branch (its next start ran it on production's database). Such a failure is undone now:
/// production's database is as it was, the preview runs on its own branch, and a later
/// promotion of it goes through.
#[test]
fn a_swap_db_promotion_failing_after_its_swap_is_undone_and_the_preview_keeps_its_branch() {
    let mut host = Host::start();
    let old = host.push_sample("shop", &[]);
    host.nx_json(&["promote", "shop", &old]);
    let production = host.production_host("shop");
    assert_eq!(host.get(&production, "/db/put?v=a").0, 200);
    let preview = host.push_sample("shop", &["--db-branch"]);
    let preview_host = host.preview_host("shop", &preview);
    assert_eq!(host.get(&preview_host, "/db/put?v=b").0, 200);

    host.restart_nxd_with_failpoints("databases::finishing=return");
    let out = host.nx(&["promote", "shop", &preview, "--swap-db"]);
    assert!(!out.ok, "the promotion went through its failing finish");
    assert_eq!(
        (
            host.get(&production, "/env").1.contains(&old),
            host.get(&production, "/db/list")
        ),
        (true, (200, r#"["a"]"#.into())),
        "production after the failed promotion:\n{}",
        host.nxd_log()
    );
    assert_eq!(
        host.nx_json(&["status", "shop"])[0]["promoted"],
        old.as_str()
    );
    assert_eq!(host.deployment("shop", &preview)["db_branch"], true);
    assert_eq!(
        host.get(&preview_host, "/db/list"),
        (200, r#"["a","b"]"#.into()),
        "the preview after the failed promotion"
    );
    assert!(
        out.stderr.contains("cannot be dropped") && out.stderr.contains("nothing was promoted"),
        "{}",
        out.stderr
    );
    host.nx_json(&["stop", &preview]);
    host.nx_json(&["start", &preview]);
    assert_eq!(
        host.get(&preview_host, "/db/list"),
        (200, r#"["a","b"]"#.into()),
        "the preview started again after the failed promotion"
    );
    assert!(!host
        .path(&format!("volumes/shop/{preview}/.promoting"))
        .exists());

    host.restart_nxd();
    host.nx_json(&["promote", "shop", &preview, "--swap-db"]);
    assert!(host.get(&production, "/env").1.contains(&preview));
    assert_eq!(
        host.get(&production, "/db/list"),
        (200, r#"["a","b"]"#.into())
    );
}

/// Review17 #4 (its start part) / 3bcbf69: a swap that nxd's start cannot finish (there: the
/// branch role's DROP ROLE, refused) made nxd exit at every start, every tenant down. Now
/// that start goes on (the deployment stays stopped, its promotion's intent kept) and the
/// next one finishes the promotion.
#[test]
fn a_swap_that_nxds_start_cannot_finish_leaves_it_starting_and_the_next_start_finishes_it() {
    let mut host = Host::start();
    let old = host.push_sample("shop", &[]);
    host.nx_json(&["promote", "shop", &old]);
    let production = host.production_host("shop");
    assert_eq!(host.get(&production, "/db/put?v=a").0, 200);
    let other = host.push_sample("other", &[]);
    let preview = host.push_sample("shop", &["--db-branch"]);
    assert_eq!(
        host.get(&host.preview_host("shop", &preview), "/db/put?v=b")
            .0,
        200
    );
    host.restart_nxd_crashing_at("databases::swapped");
    assert!(!host.nx(&["promote", "shop", &preview, "--swap-db"]).ok);
    host.wait_nxd_exit();

    host.restart_nxd_with_failpoints("databases::finishing=return");
    host.wait_for_log_line(
        |l| l.contains("could not finish nor undo a promotion"),
        Duration::from_secs(30),
        "nxd's start did not say it could not finish the swap",
    );
    let intent = host.path(&format!("volumes/shop/{preview}/.promoting"));
    assert!(intent.exists(), "the promotion's intent is gone");
    let other_host = host.preview_host("other", &other);
    let deadline = Instant::now() + Duration::from_secs(30);
    while host.get(&other_host, "/db/connect").0 != 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(host.get(&other_host, "/db/connect").0, 200);

    host.restart_nxd();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !host.get(&production, "/env").1.contains(&preview) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        (
            host.get(&production, "/env").1.contains(&preview),
            host.get(&production, "/db/list")
        ),
        (true, (200, r#"["a","b"]"#.into())),
        "production after the next start:\n{}",
        host.nxd_log()
    );
    assert!(!intent.exists(), "the promotion's intent is left");
}

/// Newcomer s17 N3: a kill -9 of nxd while a `--db-branch` push copied production's database
/// left a preview that the next nxd started and showed running, with no branch database (or,
/// cut during pg_dump | pg_restore, an empty one). Its next start makes the branch again; and
/// `promote --swap-db` of a deployment whose branch is missing says what to do.
#[test]
fn a_preview_branch_whose_copy_a_crash_cut_short_is_made_again_before_it_runs() {
    let mut host = Host::start();
    let id = host.push_sample("shop", &[]);
    assert_eq!(
        host.get(&host.preview_host("shop", &id), "/db/put?v=a").0,
        200
    );
    let production_db = superuser(
        &host,
        "postgres",
        "SELECT datname FROM pg_database WHERE datname LIKE 'nx\\_%'",
    );
    // A session on production's database: the branch is copied by pg_dump | pg_restore.
    let (mut session, _) = held_session(&host, &production_db);
    let sample = nx_testkit::sample_app();
    host.crash_during(
        "databases::tool",
        &[
            "push",
            sample.to_str().unwrap(),
            "--sandbox",
            "shop",
            "--db-branch",
        ],
    );
    drop(session.stdin.take());
    let _ = session.wait();
    let deployments = host.nx_json(&["status", "shop"])[0]["deployments"].clone();
    let preview = deployments
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .find(|d| d != &id)
        .expect("the preview was recorded");
    let preview_host = host.preview_host("shop", &preview);
    let deadline = Instant::now() + Duration::from_secs(60);
    while host.get(&preview_host, "/db/list").0 != 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        host.get(&preview_host, "/db/list"),
        (200, r#"["a"]"#.into()),
        "the preview's branch after the crash:\n{}",
        host.nxd_log()
    );
    assert_eq!(host.get(&preview_host, "/db/put?v=b").0, 200);
    let marks: Vec<String> = nx_testkit::files_under(&host.path("backups"))
        .into_iter()
        .filter(|f| f.contains(".copying-"))
        .collect();
    assert!(marks.is_empty(), "branch marks left: {marks:?}");

    superuser(
        &host,
        "postgres",
        &format!("DROP DATABASE nxb_{preview} WITH (FORCE)"),
    );
    let promoted = host.nx_json(&["status", "shop"])[0]["promoted"].clone();
    let refused = host.nx(&["promote", "shop", &preview, "--swap-db"]);
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("database branch is missing")
            && refused.stderr.contains(&format!("nx rm {preview}")),
        "{}",
        refused.stderr
    );
    assert_eq!(host.nx_json(&["status", "shop"])[0]["promoted"], promoted);
}

/// A psql session on `database` as PostgreSQL's superuser, held until its stdin closes, and
/// its backend's pid on the host.
#[allow(
    clippy::zombie_processes,
    reason = "the caller ends and waits for the session"
)]
fn held_session(host: &Host, database: &str) -> (std::process::Child, nix::unistd::Pid) {
    let mut session = Command::new("psql")
        .arg("-h")
        .arg(host.path("postgres/socket"))
        .args(["-p", "5432", "-U", "postgres", "-d", database])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let backend_query = format!(
        "SELECT pid FROM pg_stat_activity WHERE datname = '{database}' AND application_name = 'psql'"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(pid) = superuser(host, "postgres", &backend_query).parse() {
            return (session, nix::unistd::Pid::from_raw(host_pid(host, pid)));
        }
        if Instant::now() >= deadline {
            let _ = session.kill();
            let _ = session.wait();
            panic!("psql did not connect to {database}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pid on the host of the process `pid` of the embedded manager's pid namespace (where
/// PostgreSQL runs, and the pids pg_stat_activity shows).
fn host_pid(host: &Host, pid: i32) -> i32 {
    let namespace = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    let managers = namespace(&host.manager_pid1().to_string());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|p| p.parse::<i32>().is_ok() && namespace(p) == managers)
        .find(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
            status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|ids| ids.split_whitespace().last())
                == Some(pid.to_string().as_str())
        })
        .expect("the process in the manager's namespace")
        .parse()
        .unwrap()
}

#[test]
fn killing_the_managers_pid_1_is_repaired_by_nxd_alone() {
    let host = Host::start();
    let id = host.push_sample("web", &[]);
    host.nx_json(&["promote", "web", &id]);
    let production = host.production_host("web");
    assert_eq!(host.get(&production, "/db/put?v=kept").0, 200);
    let health = || {
        let resp = host
            .http()
            .get(format!("http://{}/v1/health", host.api))
            .bearer_auth(&host.token)
            .send()
            .unwrap();
        (resp.status().as_u16(), resp.text().unwrap())
    };
    assert_eq!(health().0, 200);

    let pid1 = host.manager_pid1();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid1),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();
    let mut said = None;
    loop {
        let (status, body) = health();
        match status {
            503 => said = Some(body),
            200 if said.is_some() => break,
            200 => {}
            other => panic!("health answered {other}: {body}"),
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "nxd did not recover within 60 s (health said {said:?}):\n{}",
            host.nxd_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let said = said.expect("health never said anything was wrong");
    assert!(said.contains("systemd manager"), "{said}");
    println!("recovered in {:?}", killed.elapsed());
    assert_ne!(host.manager_pid1(), pid1);
    // Production serves again, from its database, without a human.
    let deadline = Instant::now() + Duration::from_secs(30);
    while host.get(&production, "/db/list") != (200, r#"["kept"]"#.into()) {
        assert!(Instant::now() < deadline, "production did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(host.deployment("web", &id)["state"]["active"], "active");
    // Tester s22 F1: its restart is told, as its last exit and in its log (it came back with
    // no trace).
    let lost = "started again after the host's systemd manager was lost";
    let text = host.nx(&["status", "web"]).stdout;
    assert!(text.contains("last exit") && text.contains(lost), "{text}");
    assert_eq!(host.deployment("web", &id)["last_exit"]["signal"], 9);
    let logs = host.nx(&["logs", &id]).stdout;
    assert!(logs.contains(lost), "{logs}");
}

/// Attacker s15 R1: one missed answer of a live but busy manager was taken for its death, and
/// the re-adoption stopped every database tool in flight as left from before (a tenant's
/// backup failed). A manager stopped (SIGSTOP) for 12 s, while a backup waits for a tenant's
/// lock, misses three checks: the watchdog revives it, finds it answering, re-adopts nothing,
/// and the backup ends well.
#[test]
fn a_manager_that_stalls_for_seconds_is_not_taken_for_dead() {
    let host = Host::start();
    let url = sandbox_db_url(&host, "slow");
    let (_, stderr) = psql_within_a_minute(&url, "CREATE TABLE t(x int)");
    assert!(!stderr.contains("ERROR"), "{stderr}");
    // pg_dump waits for this lock, so the backup is in flight for as long as it is held.
    let mut holder = psql_session(&url);
    let stdin = holder.stdin.as_mut().unwrap();
    writeln!(
        stdin,
        "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; SELECT 'locked';"
    )
    .unwrap();
    let dump = host.path("slow.dump");
    let backup = host
        .nx_command(
            &host.token,
            &["db", "backup", "slow", "-o", dump.to_str().unwrap()],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let pid1 = nix::unistd::Pid::from_raw(host.manager_pid1());
    nix::sys::signal::kill(pid1, nix::sys::signal::Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_secs(12));
    nix::sys::signal::kill(pid1, nix::sys::signal::Signal::SIGCONT).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    writeln!(holder.stdin.as_mut().unwrap(), "COMMIT;").unwrap();
    let out = output_within(backup, Duration::from_secs(60), "nx db backup");
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        host.nxd_log()
    );
    let log = host.nxd_log();
    assert!(
        log.contains("it was slow, not dead") && !log.contains("left from before"),
        "{log}"
    );
    close_sessions(vec![holder]);
}

/// A cgroup file of the embedded manager's `<slice>`, in whichever hierarchy has it.
fn slice_file(host: &Host, slice: &str, file: &str) -> String {
    host.manager_cgroups()
        .iter()
        .map(|dir| dir.join(slice).join(file))
        .find(|p| p.is_file())
        .map(|p| std::fs::read_to_string(p).unwrap().trim().to_owned())
        .unwrap_or_else(|| panic!("no {slice}/{file} under {:?}", host.manager_cgroups()))
}

#[test]
fn nxd_comes_first_under_a_fork_bomb_a_cpu_spin_and_a_memory_hog() {
    let host = Host::start();
    // The tenants' slice is capped and weighs little; the control plane's weighs much more.
    assert_eq!(
        slice_file(&host, "nx.slice", "pids.max"),
        "8192",
        "{}",
        host.nxd_log()
    );
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 = meminfo
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let limit: u64 = slice_file(&host, "nx.slice", "memory.limit_in_bytes")
        .parse()
        .unwrap();
    assert_eq!(limit, ((total_kib / 1024) * 80 / 100) << 20);
    let tenants: u64 = slice_file(&host, "nx.slice", "cpu.shares").parse().unwrap();
    let control: u64 = slice_file(&host, "nxd.slice", "cpu.shares")
        .parse()
        .unwrap();
    assert!(
        control >= 50 * tenants,
        "nxd.slice {control} against nx.slice {tenants}"
    );
    assert_ne!(
        slice_file(&host, "nxd.slice/nx-postgres.service", "cgroup.procs"),
        "",
        "PostgreSQL is not in nxd.slice"
    );

    let ids: Vec<(String, String)> = (0..5)
        .map(|i| {
            let sandbox = format!("load{i}");
            let id = host.push_sample(&sandbox, &[]);
            (sandbox, id)
        })
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for (sandbox, id) in &ids {
        let preview = host.preview_host(sandbox, id);
        assert_eq!(host.get(&preview, "/spin?threads=4&secs=60").0, 200);
        for path in ["/fork", "/hog"] {
            let (preview, stop, router) = (preview.clone(), stop.clone(), host.router);
            load.push(std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = client
                        .get(format!("http://{router}{path}"))
                        .header("Host", &preview)
                        .send();
                    std::thread::sleep(Duration::from_millis(200));
                }
            }));
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    let mut times: Vec<Duration> = (0..30)
        .map(|_| {
            let started = Instant::now();
            let out = host.nx(&["ls", "--json"]);
            assert!(out.ok, "{}", out.stderr);
            started.elapsed()
        })
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    times.sort();
    let p99 = times[times.len() * 99 / 100];
    println!(
        "nx ls under load: p50 {:?}, p99 {p99:?}",
        times[times.len() / 2]
    );
    for thread in load {
        thread.join().unwrap();
    }
    assert!(
        p99 < Duration::from_secs(1),
        "nx ls p99 {p99:?} under load: {times:?}"
    );
}

/// A host whose tenants' slice (`nx.slice`) holds 500 tasks, of which each sandbox's
/// deployments (64 each by default) may take 150 and all tasks 100 (two sandboxes and all tasks
/// at their caps leave 100: nxd refuses a budget that leaves less than a deployment's 64).
fn host_with_500_tenant_tasks() -> Host {
    let mut host = Host::start_with("[limits]\ntasks_max = 64\n");
    let config = host.path("nxd.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let systemd = "mode = \"embedded\"\n";
    assert!(text.contains(systemd), "{text}");
    let keys = format!(
        "{systemd}slice_tasks_max = 500\nsandbox_tasks_max = 150\ntasks_slice_tasks_max = 100\n"
    );
    std::fs::write(&config, text.replace(systemd, &keys)).unwrap();
    host.restart_nxd();
    assert_eq!(slice_file(&host, "nx.slice", "pids.max"), "500");
    host
}

/// The tenants' task count once fork bombs are refused: `at_least` or more, and still for 2 s.
fn settled_tenant_tasks(host: &Host, at_least: u64) -> u64 {
    let tenants_tasks = || {
        slice_file(host, "nx.slice", "pids.current")
            .parse::<u64>()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut seen, mut since) = (tenants_tasks(), Instant::now());
    while seen < at_least || since.elapsed() < Duration::from_secs(2) {
        assert!(
            Instant::now() < deadline,
            "the fork bombs never settled: {seen}"
        );
        std::thread::sleep(Duration::from_millis(200));
        let now = tenants_tasks();
        if now != seen {
            (seen, since) = (now, Instant::now());
        }
    }
    seen
}

/// Attacker s10 F13: tasks ran in `nx.slice` itself, each at `tasks.limits.tasks_max`, so 135
/// concurrent tasks that fork took all of the tenants' 8,192 tasks and another tenant's push
/// failed ("install mount"). Now every task runs in `nx-run_task.slice`, whose `TasksMax`
/// (`systemd.tasks_slice_tasks_max`) is below the tenants' whole.
#[test]
fn concurrent_tasks_at_their_slices_limit_leave_room_for_pushes() {
    let host = host_with_500_tenant_tasks();
    let sample = nx_testkit::sample_app();
    let sample = sample.to_str().unwrap();
    // Eight tasks of 64 each (512: more than all tenants' 500) fork until refused and hold
    // their children 60 s.
    let tasks: Vec<std::process::Child> = (0..8)
        .map(|_| {
            host.nx_command(
                &host.token,
                &[
                    "run-task",
                    sample,
                    "--timeout",
                    "120s",
                    "--",
                    "task",
                    "fork",
                    "60",
                ],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let seen = settled_tenant_tasks(&host, 100);
    eprintln!("tasks in nx.slice under eight forking tasks: {seen} of 500");

    // Meanwhile a push serves.
    let pushed = host.nx(&["--json", "push", sample, "--sandbox", "other"]);
    assert!(
        pushed.ok,
        "a push failed under the tasks: {}{}",
        pushed.stdout, pushed.stderr
    );
    let id = pushed.json()["deployment"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(host.get(&host.preview_host("other", &id), "/health").0, 200);
    assert_eq!(
        slice_file(&host, "nx.slice/nx-run_task.slice", "pids.max"),
        "100"
    );
    let outputs: Vec<String> = tasks
        .into_iter()
        .map(|task| {
            let out = task.wait_with_output().unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect();
    eprintln!("the eight tasks said: {outputs:?}");
    let forked: u64 = outputs
        .iter()
        .filter_map(|o| serde_json::from_str::<serde_json::Value>(o.trim()).ok())
        .map(|f| f["forked"].as_u64().unwrap_or(0))
        .sum();
    assert!(forked < 100, "{outputs:?}");
}

/// Attacker s8 F7: `--tasks` went up to `pid_max` while every tenant shared `nx.slice`'s
/// `TasksMax`, so one sandbox's fork bomb within its own `--tasks` made every other push and
/// task fail (and the push said "install mount"). Now each sandbox's deployments share a slice
/// of their own capped at `systemd.sandbox_tasks_max`, below `slice_tasks_max`; `--tasks`
/// above it is refused; a push that finds no room says so.
#[test]
fn one_sandboxs_fork_bomb_leaves_room_for_other_sandboxes_pushes_and_tasks() {
    let host = host_with_500_tenant_tasks();
    let sample = nx_testkit::sample_app();
    let sample = sample.to_str().unwrap();

    // Three deployments of one sandbox, each within its own `--tasks 150` (together three
    // times the sandbox's 150), fork until refused and hold their children 60 s.
    let bombs: Vec<String> = (0..3)
        .map(|_| host.push_sample("bomb", &["--tasks", "150"]))
        .collect();
    let forks: Vec<_> = bombs
        .iter()
        .map(|id| {
            let (router, preview) = (host.router, host.preview_host("bomb", id));
            std::thread::spawn(move || {
                reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(120))
                    .build()
                    .unwrap()
                    .get(format!("http://{router}/fork?hold=60"))
                    .header("Host", preview)
                    .send()
                    .and_then(|r| r.json::<serde_json::Value>())
                    .unwrap()
            })
        })
        .collect();
    let seen = settled_tenant_tasks(&host, 150);
    eprintln!("tasks in nx.slice under the fork bombs: {seen} of 500");

    // Meanwhile another sandbox's push serves and a task runs.
    assert_room_left(&host, sample, "under a fork bomb");
    assert_eq!(
        slice_file(&host, "nx.slice/nx-bomb.slice", "pids.max"),
        "150"
    );
    // A push into the full sandbox fails and says why.
    let full = host.nx(&["push", sample, "--sandbox", "bomb"]);
    assert!(!full.ok, "a push into the full sandbox started");
    assert!(
        full.stderr.contains("a task limit is reached"),
        "{}",
        full.stderr
    );
    let forked: Vec<serde_json::Value> = forks.into_iter().map(|t| t.join().unwrap()).collect();
    eprintln!("the three fork bombs: {forked:?}");
    let total: u64 = forked.iter().map(|f| f["forked"].as_u64().unwrap()).sum();
    assert!(total < 150, "{forked:?}");

    // `--tasks` beyond a sandbox's share is refused, naming the key.
    let refused = host.nx(&["push", sample, "--sandbox", "bomb", "--tasks", "400"]);
    assert!(!refused.ok, "--tasks 400 was accepted");
    assert!(
        refused.stderr.contains("limits.tasks_max")
            && refused.stderr.contains("give 4 to 150")
            && refused.stderr.contains("systemd.sandbox_tasks_max"),
        "{}",
        refused.stderr
    );
}

/// Newcomer17 N10: at nxd's defaults two sandboxes' fork bombs, each at its sandbox's cap
/// (`systemd.sandbox_tasks_max`, then 4,096), took all of the tenants' 8,192 tasks, and every
/// other sandbox's push and every task failed. Now the default cap is 2,048 and nxd refuses a
/// budget in which two sandboxes at their cap and all tasks at theirs leave no room for one
/// more deployment (config's unit test), so real bombs in two sandboxes leave room.
#[test]
fn two_sandboxes_fork_bombs_at_nxds_defaults_leave_room_for_other_sandboxes_pushes_and_tasks() {
    let host = Host::start();
    let sample = nx_testkit::sample_app();
    let sample = sample.to_str().unwrap();
    // A sandbox's cap, as nxd sets it on its slice.
    host.push_sample("bomb1", &[]);
    let cap: u64 = slice_file(&host, "nx.slice/nx-bomb1.slice", "pids.max")
        .parse()
        .unwrap();
    // A deployment at the cap in each of two sandboxes (3/4 MiB of memory a process); each
    // forks until refused and holds its children 60 s.
    let (tasks, memory) = (cap.to_string(), (cap * 3 / 4).to_string());
    let forks: Vec<_> = ["bomb1", "bomb2"]
        .into_iter()
        .map(|sandbox| {
            let id = host.push_sample(sandbox, &["--tasks", &tasks, "--memory", &memory]);
            let (router, preview) = (host.router, host.preview_host(sandbox, &id));
            std::thread::spawn(move || {
                reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(180))
                    .build()
                    .unwrap()
                    .get(format!("http://{router}/fork?hold=60"))
                    .header("Host", preview)
                    .send()
                    .and_then(|r| r.json::<serde_json::Value>())
                    .unwrap()
            })
        })
        .collect();
    let seen = settled_tenant_tasks(&host, 2 * cap - cap / 8);
    eprintln!(
        "tasks in nx.slice under two sandboxes' fork bombs at {cap} each: {seen} of {}",
        slice_file(&host, "nx.slice", "pids.max")
    );

    // Meanwhile a third sandbox's push serves and a task runs.
    assert_room_left(
        &host,
        sample,
        &format!("under two fork bombs at {cap} each"),
    );
    let forked: Vec<serde_json::Value> = forks.into_iter().map(|t| t.join().unwrap()).collect();
    eprintln!("the two fork bombs: {forked:?}");
}

/// The host's pid of a process whose arguments hold `option` followed by an argument that
/// begins with `path` (`postgres -D <data>`, `nx-router --settings <state dir>/...`).
fn process_with(option: &str, path: &std::path::Path) -> Option<u32> {
    let wanted = format!("\0{option}\0{}", path.display());
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(&wanted)
                .then_some(pid)
        })
}

/// Attacker s16 O2: where the monitor cannot take oom_score_adj -1000 (no CAP_SYS_RESOURCE, as
/// on these machines), a tenant's program gets 1000 so that the kernel kills it first; nxd's
/// own services got it too, and were the host's first victims, before any tenant. What matters
/// on any host (review16: "not 1000" could not fail where the monitor may take -1000, and the
/// gate was not looked at): none of nxd's services, PostgreSQL, the router and the database
/// gate, is a likelier victim than nxd itself or than a tenant's program.
#[test]
fn nxds_own_services_are_not_the_kernels_first_oom_victims() {
    let host = Host::start();
    let id = host.push_sample("app", &[]);
    let score = |pid: u32| -> i32 {
        std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    // The deployment's unit: its monitor (-1000, or 0 where it may not) and its program.
    let unit = format!("nx-{id}.service");
    let tenant = with_manager(&host, async |s| s.unit_pids(&unit).await.unwrap())
        .into_iter()
        .map(score)
        .max()
        .expect("the deployment runs");
    let nxd = score(host.nxd_pid());
    let services = [
        (
            "PostgreSQL",
            process_with("-D", &host.path("postgres/data")),
        ),
        ("the router", process_with("--settings", &host.path(""))),
        ("the database gate", u32::try_from(gate_pid(&host)).ok()),
    ];
    for (what, pid) in services {
        let pid = pid.unwrap_or_else(|| panic!("{what} runs"));
        let service = score(pid);
        assert!(
            service <= nxd && service <= tenant,
            "{what} (pid {pid}) at {service}: nxd at {nxd}, the tenant's program at {tenant}"
        );
    }
}

/// `nxd manager-stop` kills the embedded PostgreSQL; the System V segment it leaves (named on
/// line 7 of postmaster.pid) must go too, or every stopped state dir holds one of the host's
/// `kernel.shmmni` segments for good.
#[test]
fn manager_stop_leaves_no_shared_memory_segment_of_the_embedded_postgresql() {
    let mut host = Host::start();
    let pid_file = std::fs::read_to_string(host.path("postgres/data/postmaster.pid"))
        .expect("the embedded PostgreSQL's postmaster.pid");
    let id = pid_file
        .lines()
        .nth(6)
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("line 7: the segment's key and id")
        .to_owned();
    let segments = || {
        let out = Command::new("ipcs").arg("-m").output().expect("ipcs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
            .collect::<Vec<_>>()
    };
    assert!(
        segments().contains(&id),
        "segment {id} while PostgreSQL runs"
    );
    // Its dynamic shared memory segments are in a /dev/shm of its own, not the host's
    // (attacker s16 D1: each killed cluster left its segments there, 1.9 GB of RAM in all).
    let data = host.path("postgres/data");
    let host_pid = process_with("-D", &data).expect("the postmaster as the host sees it");
    let maps = std::fs::read_to_string(format!("/proc/{host_pid}/maps")).unwrap();
    let dsm: Vec<&str> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with("/dev/shm/PostgreSQL."))
        .collect();
    assert!(!dsm.is_empty(), "the postmaster maps no segment:\n{maps}");
    let in_hosts_shm = || {
        dsm.iter()
            .filter(|p| std::path::Path::new(p).exists())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        in_hosts_shm(),
        Vec::<&&str>::new(),
        "in the host's /dev/shm"
    );

    host.stop_nxd();
    let (status, stderr) = host.manager_stop();
    assert!(status.success(), "nxd manager-stop: {stderr}");
    assert!(
        !segments().contains(&id),
        "segment {id} is left after nxd manager-stop"
    );
    assert_eq!(
        in_hosts_shm(),
        Vec::<&&str>::new(),
        "left in the host's /dev/shm"
    );
}

/// `psql URL -c sql`, given 60 s: (how long it took, its stderr). Panics when it is still
/// running then (nothing ended it).
fn psql_within_a_minute(url: &str, sql: &str) -> (Duration, String) {
    let started = Instant::now();
    let child = Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = output_within(child, Duration::from_secs(60), sql);
    (
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Creates `sandbox`; its database's URL (`nx db url`).
fn sandbox_db_url(host: &Host, sandbox: &str) -> String {
    host.nx_json(&["sandbox", "create", sandbox]);
    host.nx_json(&["db", "url", sandbox])["url"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `psql` on `url` reading statements from its stdin (piped, as are its outputs): a session
/// that stays, idle, while its stdin is open.
fn psql_session(url: &str) -> std::process::Child {
    Command::new("psql")
        .arg(url)
        .args(["-At"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Backs `sandbox`'s database up into the host's directory as `file` (`nx db backup -o`) and
/// starts restoring it (`nx db restore`, outputs piped).
fn backup_and_restore(host: &Host, sandbox: &str, file: &str) -> std::process::Child {
    let dump = host.path(file);
    let dump = dump.to_str().unwrap();
    host.nx_json(&["db", "backup", sandbox, "-o", dump]);
    host.nx_command(&host.token, &["db", "restore", sandbox, dump])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Asserts that nxd ended `session` (a [`psql_session`] whose standard input is `stdin`): its
/// client learns it at its next statement, or at once when it was ended in a statement (psql
/// then exits, and the write finds no reader).
fn assert_session_was_ended(session: std::process::Child, mut stdin: std::process::ChildStdin) {
    let _ = stdin.write_all(b"SELECT 'still here';\n");
    drop(stdin);
    let out = session.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("still here")
            && stderr.contains("terminating connection due to administrator command"),
        "{stderr}"
    );
}

/// Whether `line` of nxd's log says it ended a database session of `sandbox`'s for `why`.
fn ends_session(line: &str, sandbox: &str, why: &str) -> bool {
    line.contains("ended a tenant's database session")
        && line.contains(sandbox)
        && line.contains(why)
}

/// Asserts that nxd ended the session whose psql printed `stderr`, and logged that it ended
/// one of `sandbox`'s for its memory.
fn assert_ended_for_memory(host: &Host, sandbox: &str, stderr: &str) {
    assert!(
        stderr.contains("terminating connection due to administrator command"),
        "{stderr}"
    );
    assert!(
        host.nxd_log()
            .lines()
            .any(|l| ends_session(l, sandbox, "MiB")),
        "{}",
        host.nxd_log()
    );
}

/// Closes the standard input of each of `sessions` (see [`psql_session`]) and waits for it.
fn close_sessions(sessions: Vec<std::process::Child>) {
    for mut session in sessions {
        drop(session.stdin.take());
        session.wait().unwrap();
    }
}

/// Attacker s10 F6: one tenant's parallel sessions, each under `backend_memory_max_mb`,
/// together reached the cluster unit's MemoryMax; the kernel killed a backend and PostgreSQL
/// restarted every session of every tenant.
#[test]
fn one_tenants_parallel_sessions_leave_another_tenants_session_and_postgresql_running() {
    let host = Host::start_with(
        "[databases]\nbackend_memory_max_mb = 512\nsandbox_memory_max_mb = 600\nmemory_max_mb = 3072\n",
    );
    let url = |sandbox: &str| sandbox_db_url(&host, sandbox);
    let (alpha, beta) = (url("alpha"), url("beta"));
    let psql = |url: &str, sql: &str| {
        Command::new("psql")
            .arg(url)
            .args(["-v", "ON_ERROR_STOP=1", "-Atc", sql])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let victim = psql(&beta, "SELECT pg_sleep(30); SELECT 'survived'");
    // Six sessions of ~350 MiB each (under 512), 2.1 GiB together.
    let sessions: Vec<_> = (0..6)
        .map(|_| {
            psql(
                &alpha,
                "SELECT length(x), pg_sleep(20) FROM (SELECT repeat('x', 350000000) x) s",
            )
        })
        .collect();
    let ended = sessions
        .into_iter()
        .map(|s| s.wait_with_output().unwrap())
        .filter(|out| {
            String::from_utf8_lossy(&out.stderr)
                .contains("terminating connection due to administrator command")
        })
        .count();
    assert!(ended >= 4, "only {ended} of alpha's 6 sessions were ended");
    let victim = victim.wait_with_output().unwrap();
    assert!(
        victim.status.success() && String::from_utf8_lossy(&victim.stdout).contains("survived"),
        "beta's session: {}",
        String::from_utf8_lossy(&victim.stderr)
    );
    assert!(host.nxd_log().lines().any(|l| ends_session(
        l,
        "alpha",
        "its sandbox's sessions held"
    )));
    let postgres_log = std::fs::read_to_string(host.path("postgres/postgres.log")).unwrap();
    assert!(
        !postgres_log.contains("terminated by signal 9"),
        "PostgreSQL restarted: {postgres_log}"
    );
}

/// Attacker s12 H1 (high): what a session keeps between statements (a `set_config` value)
/// stays in its process, and the watch looked at active sessions only: idle sessions of one
/// tenant took the cluster to its `MemoryMax`. Idle sessions count toward their role's bound.
#[test]
fn idle_sessions_count_toward_their_roles_memory_bound() {
    let host = Host::start_with("[databases]\nsandbox_memory_max_mb = 400\n");
    let alpha = sandbox_db_url(&host, "alpha");
    // Fourteen sessions, one after another, each keeping 40 MB or more once idle (~200 MB at
    // most while its statement runs: under the bound alone).
    let sessions: Vec<_> = (0..14)
        .map(|_| {
            let mut session = psql_session(&alpha);
            let stdin = session.stdin.as_mut().unwrap();
            stdin
                .write_all(b"SELECT length(set_config('nx.kept', repeat('x', 40000000), false));\n")
                .unwrap();
            stdin.flush().unwrap();
            std::thread::sleep(Duration::from_secs(1));
            session
        })
        .collect();
    host.wait_for_log_line(
        |l| l.contains("ended a tenant's database session") && l.contains("alpha"),
        Duration::from_secs(30),
        "alpha's idle sessions hold over 560 MB past its 400 MB and none was ended",
    );
    close_sessions(sessions);
}

/// A [`psql_session`] of `url` that keeps `values` `set_config` values of `mb` MB each while
/// it sits idle (each made alone: no large transient memory).
fn session_keeping(url: &str, values: u32, mb: u32) -> std::process::Child {
    let mut session = psql_session(url);
    let stdin = session.stdin.as_mut().unwrap();
    for i in 0..values {
        let sql =
            format!("SELECT length(set_config('nx.kept{i}', repeat('x', {mb}000000), false));\n");
        stdin.write_all(sql.as_bytes()).unwrap();
    }
    stdin.flush().unwrap();
    session
}

/// Attacker s16 T1: past all tenants' memory bound the watch ended the largest single session
/// of any tenant, so a tenant whose memory was spread over many smaller sessions had another
/// tenant's ordinary session ended, and kept its own. Now the sessions of the role holding the
/// most give way. (No per-role bound here, as with one sandbox's many roles: its own and its
/// `--db-branch` previews'.)
#[test]
fn past_the_tenants_memory_bound_the_tenant_holding_the_most_gives_way() {
    let host = Host::start_with(
        "[databases]\nbackend_memory_max_mb = 512\nsandbox_memory_max_mb = 0\nmemory_max_mb = 2048\n",
    );
    let (alpha, beta) = (
        sandbox_db_url(&host, "alpha"),
        sandbox_db_url(&host, "beta"),
    );
    // beta: one ordinary session of ~250 MB; alpha: twelve of ~140 MB, 1.7 GB together with
    // beta's, past the tenants' 1,536 MiB.
    let mut victim = session_keeping(&beta, 10, 25);
    std::thread::sleep(Duration::from_secs(2));
    let sessions: Vec<_> = (0..12)
        .map(|_| {
            let session = session_keeping(&alpha, 10, 14);
            std::thread::sleep(Duration::from_millis(500));
            session
        })
        .collect();
    host.wait_for_log_line(
        |l| ends_session(l, "alpha", "its sandbox's the most"),
        Duration::from_secs(30),
        "none of alpha's sessions was ended past the tenants' bound",
    );
    assert!(
        !host.nxd_log().lines().any(|l| ends_session(l, "beta", "")),
        "beta's session was ended: {}",
        host.nxd_log()
    );
    let stdin = victim.stdin.take().unwrap();
    let mut stdin = stdin;
    stdin.write_all(b"SELECT 'still here';\n").unwrap();
    drop(stdin);
    let out = victim.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("still here"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    close_sessions(sessions);
}

/// Review16 #1: the bounds past one session's were per role, and each `--db-branch` preview
/// has a role of its own: a sandbox that spread its sessions over its previews' roles, each
/// role holding less than another tenant's one session, had that tenant's session ended at
/// the tenants' bound. A sandbox's roles are weighed as one.
#[test]
fn past_the_tenants_memory_bound_a_sandbox_spread_over_its_previews_gives_way() {
    let host = Host::start_with("[databases]\nsandbox_memory_max_mb = 0\nmemory_max_mb = 1600\n");
    let (alpha, beta) = (
        sandbox_db_url(&host, "alpha"),
        sandbox_db_url(&host, "beta"),
    );
    // alpha's own role's URL, and its two previews' (their roles' passwords are in nxd's
    // secrets; the socket as in alpha's).
    let socket = alpha.split_once('?').unwrap().1;
    let mut urls = vec![alpha.clone()];
    for _ in 0..2 {
        let id = host.push_sample("alpha", &["--db-branch"]);
        let branch = format!("nxb_{}", id.replace('-', "_"));
        let password =
            std::fs::read_to_string(host.path(&format!("secrets/{branch}.password"))).unwrap();
        urls.push(format!(
            "postgres://{branch}:{}@/{branch}?{socket}",
            password.trim()
        ));
    }
    // beta: one session of ~500 MB; alpha: four of ~50 MB on each of its three roles (~200 MB
    // a role, less than half beta's), ~1.1 GB together with beta's, past the tenants' 1,200
    // MiB with what each session holds besides (its heap's freed room, its caches).
    let mut victim = session_keeping(&beta, 20, 25);
    std::thread::sleep(Duration::from_secs(2));
    let sessions: Vec<_> = urls
        .iter()
        .flat_map(|url| std::iter::repeat_n(url, 4))
        .map(|url| {
            let session = session_keeping(url, 5, 10);
            std::thread::sleep(Duration::from_millis(300));
            session
        })
        .collect();
    host.wait_for_log_line(
        |l| ends_session(l, "", "all tenants' sessions held"),
        Duration::from_secs(30),
        "no session was ended past the tenants' bound",
    );
    std::thread::sleep(Duration::from_secs(1));
    let log = host.nxd_log();
    assert!(
        !log.lines().any(|l| ends_session(l, "beta", "")),
        "beta's session was ended: {log}"
    );
    assert!(
        log.lines()
            .any(|l| ends_session(l, "alpha", "its sandbox's the most")),
        "{log}"
    );
    let mut stdin = victim.stdin.take().unwrap();
    stdin.write_all(b"SELECT 'still here';\n").unwrap();
    drop(stdin);
    let out = victim.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("still here"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    close_sessions(sessions);
}

/// Attacker s12 C1 (critical): PostgreSQL's lock table is the whole cluster's, and a session
/// keeps its advisory locks after its statement. One tenant's idle session holding 100,000
/// of them (taken in ~30 ms) made every other session, nxd's own state included, fail "out of
/// shared memory" for as long as that session chose to stay. nxd ends it, and the others go
/// on.
#[test]
fn a_session_filling_the_lock_table_is_ended_and_every_other_database_goes_on() {
    let host = Host::start();
    let url = |sandbox: &str| sandbox_db_url(&host, sandbox);
    let (alpha, beta) = (url("alpha"), url("beta"));
    let mut hog = psql_session(&alpha);
    // Taken, then idle (its stdin stays open).
    let mut stdin = hog.stdin.take().unwrap();
    stdin
        .write_all(b"SELECT count(pg_advisory_lock(g)) FROM generate_series(1, 100000) g;\n")
        .unwrap();
    stdin.flush().unwrap();
    host.wait_for_log_line(
        |l| l.contains("ended a database session") && l.contains("shared lock table"),
        Duration::from_secs(30),
        "the session holding the locks was not ended",
    );
    assert_session_was_ended(hog, stdin);
    // Another tenant's database, and nxd's own state (a push), go on.
    let other = Command::new("psql")
        .arg(&beta)
        .args([
            "-v",
            "ON_ERROR_STOP=1",
            "-Atc",
            "CREATE TABLE t (x int); SELECT 'ok'",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&other.stdout).contains("ok"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    let id = host.push_sample("beta", &[]);
    assert_eq!(host.get(&host.preview_host("beta", &id), "/").0, 200);
}

/// Attacker s13 H7: with the lock table full, PostgreSQL takes no new connection, not even
/// nxd's: a tenant that filled it while nxd was away (an upgrade, a crash) kept nxd from
/// starting ("did not accept connections within 30 s"), and so from ending the session, for
/// as long as the session stayed. nxd, refused so at its start, ends the tenants' sessions by
/// signal and starts.
/// A session of `url`'s role (a [`psql_session`], with its standard input) that fills the
/// shared lock table with advisory locks, once a new session of the role is refused "out of
/// shared memory". For while nxd cannot end it (stopped), since it would.
fn lock_table_filled_by(url: &str) -> (std::process::Child, std::process::ChildStdin) {
    let mut hog = psql_session(url);
    let mut stdin = hog.stdin.take().unwrap();
    stdin
        .write_all(b"SELECT count(pg_advisory_lock(g)) FROM generate_series(1, 100000) g;\n")
        .unwrap();
    stdin.flush().unwrap();
    let refused = || {
        let probe = Command::new("psql")
            .arg(url)
            .args(["-Atc", "SELECT 1"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&probe.stderr).contains("out of shared memory")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !refused() {
        assert!(Instant::now() < deadline, "the lock table did not fill");
        std::thread::sleep(Duration::from_millis(200));
    }
    (hog, stdin)
}

#[test]
fn nxd_starts_while_a_tenants_session_fills_the_lock_table_and_ends_it() {
    let mut host = Host::start();
    let alpha = sandbox_db_url(&host, "alpha");
    host.stop_nxd();
    let (hog, stdin) = lock_table_filled_by(&alpha);
    host.start_nxd();
    assert!(
        host.nxd_log().contains("ended every tenant's session"),
        "{}",
        host.nxd_log()
    );
    assert_session_was_ended(hog, stdin);
    let id = host.push_sample("alpha", &[]);
    assert_eq!(host.get(&host.preview_host("alpha", &id), "/").0, 200);
}

/// Attacker s13 H7 (high), its second half: the runaway watch reads on nxd's pool of
/// connections, and one lost while a tenant's locks filled the lock table could not be
/// replaced (PostgreSQL refuses every new connection "out of shared memory"): nothing ended
/// the hog. The pool keeps its connections (sqlx replaced each after 30 min), and a watch
/// refused a connection ends every tenant's session by signal, as nxd's start does. Here
/// nxd's connections are ended while nxd is stopped (SIGSTOP) and the table is full.
#[test]
fn the_watch_ends_a_lock_table_hog_after_losing_its_connections_while_the_table_is_full() {
    let host = Host::start();
    let alpha = sandbox_db_url(&host, "alpha");
    let signal = |signal: &str, pid: u32| {
        let sent = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill {signal} {pid}");
    };
    signal("-STOP", host.nxd_pid());
    let (hog, stdin) = lock_table_filled_by(&alpha);
    // nxd's own sessions: the cluster's client backends of its user, `postgres`.
    let pids = with_manager(&host, async |s| {
        s.unit_pids("nx-postgres.service").await.unwrap()
    });
    let nxds: Vec<u32> = pids
        .into_iter()
        .filter(|pid| {
            let title = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let title = String::from_utf8_lossy(&title);
            title.starts_with("postgres: postgres ") && title.contains("[local]")
        })
        .collect();
    assert!(!nxds.is_empty(), "nxd holds no connection to the cluster");
    for pid in nxds {
        signal("-TERM", pid);
    }
    signal("-CONT", host.nxd_pid());
    host.wait_for_log_line(
        |l| l.contains("ended every tenant's session"),
        Duration::from_secs(30),
        "the watch did not end the tenants' sessions while it could not connect",
    );
    assert_session_was_ended(hog, stdin);
    let id = host.push_sample("alpha", &[]);
    assert_eq!(host.get(&host.preview_host("alpha", &id), "/").0, 200);
}

/// Attacker s13 C2 (critical): sessions each under the 1,024-entry bound filled the lock
/// table together (3 roles x 19 sessions x 1,000 advisory locks): every tenant's database and
/// nxd's state failed "out of shared memory", and nxd ended none. Each role's sessions
/// together, and all tenants' together, are bounded too.
#[test]
fn sessions_each_under_the_lock_bound_cannot_fill_the_lock_table_together() {
    let host = Host::start();
    let urls: Vec<String> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|sandbox| sandbox_db_url(&host, sandbox))
        .collect();
    let victim = sandbox_db_url(&host, "victim");
    let sessions: Vec<_> = (0..57)
        .map(|i| {
            let mut session = psql_session(&urls[i % 3]);
            let first = i * 1000;
            let sql = format!(
                "SELECT count(pg_advisory_lock(g)) FROM generate_series({first}, {}) g;\n",
                first + 999
            );
            let stdin = session.stdin.as_mut().unwrap();
            stdin.write_all(sql.as_bytes()).unwrap();
            stdin.flush().unwrap();
            session
        })
        .collect();
    host.wait_for_log_line(
        |l| l.contains("ended a database session") && l.contains("its sandbox's sessions held"),
        Duration::from_secs(60),
        "no session was ended for its role's share of the lock table",
    );
    // What the sessions hold settles at their roles' bounds (3 x 4,096) or under. Until then a
    // new session, this count's own, can be refused "out of shared memory" (CI of session 13).
    let held = || {
        let (ok, out) = nx_testkit::psql(
            &host.path("postgres/socket"),
            5432,
            "postgres",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
        );
        ok.then(|| out.trim().parse::<u64>().unwrap())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = held();
        if now.is_some_and(|n| n <= 3 * 4096) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tenants hold {now:?} advisory locks (None: the count's own session was refused)"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Another tenant connects and writes, and nxd's own state takes a push.
    let (ok, out) = psql_url(&victim, "CREATE TABLE t (x int); SELECT 'ok'");
    assert!(ok && out.contains("ok"), "{out}");
    let id = host.push_sample("victim", &[]);
    assert_eq!(host.get(&host.preview_host("victim", &id), "/").0, 200);
    close_sessions(sessions);
}

/// Attacker s13 C3 (critical): nxd's own restore session runs the dump's SQL (here a CHECK
/// constraint whose function takes advisory locks, swallowing "out of shared memory", then
/// sleeps) and was exempt from the lock bounds: a 2.4 KB dump filled the lock table for as
/// long as it said, every tenant's database and nxd's state failing "out of shared memory".
/// The restore is held to the tenants' bound: ended, it fails, and nothing is swapped.
#[test]
fn a_restore_whose_dump_fills_the_lock_table_is_ended_and_nothing_is_swapped() {
    let host = Host::start();
    let alpha = sandbox_db_url(&host, "alpha");
    let victim = sandbox_db_url(&host, "victim");
    let (ok, out) = psql_url(
        &alpha,
        "CREATE FUNCTION grab(n int) RETURNS boolean LANGUAGE plpgsql AS $$ \
         BEGIN \
           IF current_database() NOT LIKE 'nxr\\_%' THEN RETURN true; END IF; \
           IF n < 0 THEN PERFORM pg_sleep(-n); RETURN true; END IF; \
           FOR g IN n * 1000 .. n * 1000 + 999 LOOP \
             BEGIN PERFORM pg_advisory_lock(g); \
             EXCEPTION WHEN others THEN RETURN true; END; \
           END LOOP; \
           RETURN true; \
         END $$; \
         CREATE TABLE t (n int CHECK (grab(n))); \
         INSERT INTO t SELECT generate_series(0, 59); INSERT INTO t VALUES (-40)",
    );
    assert!(ok, "{out}");
    let started = Instant::now();
    let restore = backup_and_restore(&host, "alpha", "lockbomb.dump");
    host.wait_for_log_line(
        |l| l.contains("ended a database session") && l.contains("all tenants' sessions held"),
        Duration::from_secs(60),
        "the restore's session filling the lock table was not ended",
    );
    // Another tenant connects and writes (once the ended session has let its entries go).
    let ended = Instant::now();
    loop {
        let (ok, out) = psql_url(&victim, "CREATE TABLE IF NOT EXISTS t (x int); SELECT 'ok'");
        if ok && out.contains("ok") {
            break;
        }
        assert!(ended.elapsed() < Duration::from_secs(10), "{out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let restored = restore.wait_with_output().unwrap();
    assert!(
        !restored.status.success() && started.elapsed() < Duration::from_secs(40),
        "the restore went on: {}",
        String::from_utf8_lossy(&restored.stderr)
    );
    // Production is as it was.
    assert_eq!(
        psql_url(&alpha, "SELECT count(*) FROM t"),
        (true, "61\n".to_owned())
    );
}

/// Review16 #2: nxd told its restore's session apart by its random `application_name` alone
/// (the earliest backend with it, in any database), which every role reads in
/// `pg_stat_activity` and may take: another tenant's session older than the restore that took
/// the name was held to the tenants' share of the lock table alone. The restore's session is
/// now also of the restore's role, in its database, and started after nxd started pg_restore.
#[test]
fn a_session_that_takes_the_name_of_a_restore_under_way_is_held_to_every_bound() {
    let host = Host::start();
    let alpha = sandbox_db_url(&host, "alpha");
    let beta = sandbox_db_url(&host, "beta");
    // alpha's restore runs 20 s: its dump's CHECK constraint sleeps in the scratch database.
    let (ok, out) = psql_url(
        &alpha,
        "CREATE FUNCTION slow(n int) RETURNS boolean LANGUAGE plpgsql AS $$ \
         BEGIN \
           IF current_database() LIKE 'nxr\\_%' THEN PERFORM pg_sleep(n); END IF; \
           RETURN true; \
         END $$; \
         CREATE TABLE t (n int CHECK (slow(n))); INSERT INTO t VALUES (20)",
    );
    assert!(ok, "{out}");
    // beta's session, older than the restore, waits for the restore's name, takes it, and then
    // 2,000 advisory locks (past a session's 1,024) and stays.
    let mut impostor = psql_session(&beta);
    let mut stdin = impostor.stdin.take().unwrap();
    stdin
        .write_all(
            b"DO $$ DECLARE taken text; BEGIN \
                LOOP \
                  PERFORM pg_stat_clear_snapshot(); \
                  SELECT application_name INTO taken FROM pg_stat_activity \
                  WHERE application_name LIKE 'nxd-restore-%' LIMIT 1; \
                  EXIT WHEN taken IS NOT NULL; \
                  PERFORM pg_sleep(0.02); \
                END LOOP; \
                PERFORM set_config('application_name', taken, false); \
              END $$;\n\
              SELECT current_setting('application_name');\n\
              SELECT count(pg_advisory_lock(g)) FROM generate_series(1, 2000) g;\n",
        )
        .unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let mut restore = backup_and_restore(&host, "alpha", "slow.dump");
    host.wait_for_log_line(
        |l| {
            l.contains("ended a database session")
                && l.contains("shared lock table, past its bound of 1024")
        },
        Duration::from_secs(30),
        "beta's session holding 2,000 entries under the restore's name was not ended",
    );
    assert!(
        restore.try_wait().unwrap().is_none(),
        "beta's session was ended only once the restore was over: {}",
        host.nxd_log()
    );
    let _ = stdin.write_all(b"SELECT 'still here';\n");
    drop(stdin);
    let out = impostor.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stdout.contains("nxd-restore-"),
        "beta's session did not take the restore's name: {stdout}{stderr}"
    );
    assert!(
        !stdout.contains("still here")
            && stderr.contains("terminating connection due to administrator command"),
        "{stdout}{stderr}"
    );
    let restored = restore.wait_with_output().unwrap();
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
}

/// Waits for `child` (its outputs piped) to end, given `within`: its output. Panics when it
/// still runs then (nothing ended it), naming `what`.
fn output_within(
    mut child: std::process::Child,
    within: Duration,
    what: &str,
) -> std::process::Output {
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > within {
            let _ = child.kill();
            panic!("{what} still ran after {within:?}: nothing ended it");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// Attacker s13 C3 (critical), its time half: nxd's own restore session runs the dump's SQL
/// with no statement time bound (a restore takes as long as its data), and a dump whose CHECK
/// constraint slept held it for as long as it said (a day with `pg_sleep(86400)`). A restore,
/// and a `--db-branch` copy of production, past `databases.restore_timeout_secs` fail saying
/// so: the session ended, nothing swapped, no scratch or branch database left. Ending that
/// session fails while the shared lock table is full (`pg_terminate_backend` reads a shared
/// catalog), which a tenant may time to the bound: the first try is made to fail, and nxd
/// tries again.
#[test]
fn a_restore_whose_dump_sleeps_fails_at_its_time_bound_and_nothing_is_swapped() {
    let mut host = Host::start_with("[databases]\nrestore_timeout_secs = 5\n");
    host.restart_nxd_with_failpoints("databases::end_sessions=1*return");
    let alpha = sandbox_db_url(&host, "alpha");
    let (ok, out) = psql_url(
        &alpha,
        "CREATE FUNCTION slow(n int) RETURNS boolean LANGUAGE plpgsql AS $$ \
         BEGIN \
           IF current_database() LIKE 'nxr\\_%' OR current_database() LIKE 'nxb\\_%' \
           THEN PERFORM pg_sleep(600); END IF; \
           RETURN true; \
         END $$; \
         CREATE TABLE t (n int CHECK (slow(n))); INSERT INTO t VALUES (1)",
    );
    assert!(ok, "{out}");
    let scratch_left = || {
        superuser(
            &host,
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'nxr\\_%' OR datname LIKE 'nxb\\_%'",
        )
    };
    let started = Instant::now();
    let restore = backup_and_restore(&host, "alpha", "sleeper.dump");
    let restored = output_within(restore, Duration::from_secs(60), "the restore");
    let stderr = String::from_utf8_lossy(&restored.stderr);
    assert!(
        !restored.status.success() && stderr.contains("databases.restore_timeout_secs (5 s)"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "failed after {:?}",
        started.elapsed()
    );
    assert!(
        host.nxd_log()
            .contains("the restore's session was not ended yet: again in 1 s"),
        "the fail point did not make the first try fail: {}",
        host.nxd_log()
    );
    assert_eq!(
        psql_url(&alpha, "SELECT count(*) FROM t"),
        (true, "1\n".to_owned())
    );
    assert_eq!(scratch_left(), "0");

    // A branch copied through pg_dump | pg_restore (production has an open session).
    let session = psql_session(&alpha);
    let push = host.spawn_push_sample("alpha", &["--db-branch"]);
    let pushed = output_within(push, Duration::from_secs(60), "the push's branch copy");
    let stderr = String::from_utf8_lossy(&pushed.stderr);
    assert!(
        !pushed.status.success() && stderr.contains("databases.restore_timeout_secs (5 s)"),
        "{stderr}"
    );
    assert_eq!(scratch_left(), "0");
    close_sessions(vec![session]);
}

/// Attacker s13 H8 (high): `SET force_parallel_mode = on` (any role may) moved a whole sort
/// into a parallel worker, which the watch did not look at: 4 GB in 20 s, the kernel killed it
/// at the cluster's `MemoryMax` and PostgreSQL restarted every tenant's sessions. A backend's
/// memory counts with its workers'.
#[test]
fn a_statement_run_by_parallel_workers_is_held_to_its_memory_bound() {
    let host = Host::start_with("[databases]\nbackend_memory_max_mb = 256\nmemory_max_mb = 3072\n");
    let alpha = sandbox_db_url(&host, "alpha");
    let (_, stderr) = psql_within_a_minute(
        &alpha,
        "SET force_parallel_mode = on; SET work_mem = '4GB'; \
         SELECT count(*) FROM (SELECT g FROM generate_series(1, 20000000) g ORDER BY g DESC) s",
    );
    assert_ended_for_memory(&host, "alpha", &stderr);
}

/// Attacker s15 A2 (high): a parallel hash join builds its hash table in dynamic shared memory
/// (`/dev/shm/PostgreSQL.<n>`, in every participant's `RssShmem`), sized by the tenant's own
/// `work_mem` and `hash_mem_multiplier`, which the watch did not count (it read `RssAnon`):
/// three such joins took the cluster past its `MemoryMax`. The segments count, once, with the
/// backend's memory.
#[test]
fn a_parallel_hash_join_is_held_to_its_memory_bound_in_shared_memory() {
    let host = Host::start_with("[databases]\nbackend_memory_max_mb = 256\nmemory_max_mb = 3072\n");
    let alpha = sandbox_db_url(&host, "alpha");
    let (_, stderr) = psql_within_a_minute(
        &alpha,
        "CREATE TABLE big AS SELECT g AS x FROM generate_series(1, 8000000) g; ANALYZE big",
    );
    assert!(!stderr.contains("ERROR"), "{stderr}");
    let (_, stderr) = psql_within_a_minute(
        &alpha,
        "SET work_mem = '4GB'; SET hash_mem_multiplier = 4; \
         SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; \
         SET enable_mergejoin = off; SET enable_nestloop = off; \
         SELECT count(*) FROM big a JOIN big b USING (x)",
    );
    assert_ended_for_memory(&host, "alpha", &stderr);
}

/// Attacker s15 A1 and A3 (high, critical): autovacuum's ANALYZE evaluates an expression
/// index's expressions, a function the tenant wrote, in an autovacuum worker (with
/// `statement_timeout` 0), which the watch did not look at: 4 GB and the cluster OOM-killed,
/// or the shared lock table filled for every tenant. The worker is held to the bounds of the
/// database's owner, and to the lock table's.
#[test]
fn a_tenants_function_run_by_autovacuum_is_held_to_the_memory_and_lock_bounds() {
    let host = Host::start_with("[databases]\nbackend_memory_max_mb = 256\nmemory_max_mb = 3072\n");
    // Each runs its work only in autovacuum (where statement_timeout is 0), on the row x = 1.
    let in_autovacuum = |table: &str, work: &str| {
        format!(
            "CREATE TABLE {table}(x int) WITH (autovacuum_analyze_threshold = 1, \
                 autovacuum_analyze_scale_factor = 0); \
             CREATE FUNCTION {table}_f(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$ \
             DECLARE a text; BEGIN \
               IF $1 = 1 AND current_setting('statement_timeout') = '0' THEN {work} \
                 PERFORM pg_sleep(100); END IF; \
               RETURN $1; END $$; \
             CREATE INDEX ON {table} ({table}_f(x)); \
             INSERT INTO {table} SELECT generate_series(1, 200);"
        )
    };
    let alpha = sandbox_db_url(&host, "alpha");
    let (_, stderr) = psql_within_a_minute(
        &alpha,
        &in_autovacuum("hog", "a := repeat('a', 600000000);"),
    );
    assert!(!stderr.contains("ERROR"), "{stderr}");
    let beta = sandbox_db_url(&host, "beta");
    let (_, stderr) = psql_within_a_minute(
        &beta,
        &in_autovacuum(
            "locks",
            "FOR g IN 1..2000 LOOP PERFORM pg_advisory_xact_lock(g); END LOOP;",
        ),
    );
    assert!(!stderr.contains("ERROR"), "{stderr}");
    // autovacuum_naptime is 60 s: both are analyzed within it, each ends in a moment.
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let log = host.nxd_log();
        let memory = log.lines().any(|l| ends_session(l, "alpha", "MiB"));
        let locks = log.lines().any(|l| {
            l.contains("ended a database session")
                && l.contains("entries of PostgreSQL's shared lock table")
        });
        if memory && locks {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "memory ended: {memory}, locks ended: {locks}\n{log}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Attacker s15: nxd's pg_dump ran in a superuser session outside every bound, so a tenant's
/// rows decided its memory (four backups of three 400 MB values held 773 MB each, toward the
/// cluster's MemoryMax). Now it is held to its sandbox's memory bounds: a backup whose values
/// need more fails, saying why, production's database is as it was, and the cluster runs on.
#[test]
fn a_backup_whose_values_pass_the_memory_bound_fails_saying_so_and_keeps_the_database() {
    let host = Host::start_with("[databases]\nbackend_memory_max_mb = 256\nmemory_max_mb = 3072\n");
    let alpha = sandbox_db_url(&host, "alpha");
    // Stored as they are (no compression buffer), each inserted by its own statement in a
    // session under the bound (the value and the row made of it: ~200 MiB); pg_dump's session
    // holds a value, its text and its COPY line, each backslash written twice (~450 MiB).
    let (ok, out) = psql_url(
        &alpha,
        "CREATE TABLE huge (v text); ALTER TABLE huge ALTER v SET STORAGE EXTERNAL",
    );
    assert!(ok, "{out}");
    for _ in 0..4 {
        let (ok, out) = psql_url(&alpha, "INSERT INTO huge SELECT repeat(E'\\\\', 100000000)");
        assert!(ok, "{out}");
    }
    assert!(
        !host
            .nxd_log()
            .lines()
            .any(|l| ends_session(l, "alpha", "MiB")),
        "the inserts were ended: make the values smaller\n{}",
        host.nxd_log()
    );
    let dump = host.path("huge.dump");
    let backup = host.nx(&["db", "backup", "alpha", "-o", dump.to_str().unwrap()]);
    assert!(
        !backup.ok
            && backup
                .stderr
                .contains("pg_dump's database session was ended by nxd's runaway watch")
            && backup.stderr.contains("MiB"),
        "{}{}",
        backup.stdout,
        backup.stderr
    );
    assert!(
        host.nxd_log()
            .lines()
            .any(|l| ends_session(l, "alpha", "MiB")),
        "{}",
        host.nxd_log()
    );
    assert_eq!(
        host.nx_json(&["db", "backups", "alpha"])
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    assert_eq!(
        psql_url(&alpha, "SELECT count(*), sum(length(v)) FROM huge"),
        (true, "4|400000000\n".to_owned())
    );
}

#[test]
fn a_tenant_cannot_lift_its_statement_time_memory_and_temp_file_bounds() {
    let host = Host::start_with(
        "[databases]\nstatement_timeout_secs = 8\nbackend_memory_max_mb = 256\ntemp_file_limit_mb = 16\nmemory_max_mb = 3072\n",
    );
    host.nx_json(&["sandbox", "create", "alpha"]);
    let url = host.nx_json(&["db", "url", "alpha"])["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let ended = "terminating connection due to administrator command";
    let logged = |what: &str| {
        host.nxd_log()
            .lines()
            .any(|l| ends_session(l, "alpha", what))
    };

    // The role lifts its statement_timeout: nxd ends the statement at the bound.
    let (took, stderr) =
        psql_within_a_minute(&url, "SET statement_timeout = 0; SELECT pg_sleep(600)");
    assert!(stderr.contains(ended), "{stderr}");
    assert!(
        took >= Duration::from_secs(8) && took < Duration::from_secs(20),
        "ended after {took:?}"
    );
    assert!(logged("its statement ran"), "{}", host.nxd_log());

    // It raises work_mem and hashes a big series: ended near 256 MiB, long before the
    // cluster's MemoryMax (which would have had the kernel kill it, or the postmaster).
    let (_, stderr) = psql_within_a_minute(
        &url,
        "SET statement_timeout = 0; SET work_mem = '4GB'; SELECT count(*) FROM (SELECT DISTINCT g FROM generate_series(1, 400000000) g) s",
    );
    assert!(stderr.contains(ended), "{stderr}");
    assert!(logged("MiB"), "{}", host.nxd_log());
    assert_eq!(
        slice_file(
            &host,
            "nxd.slice/nx-postgres.service",
            "memory.limit_in_bytes"
        ),
        (3072u64 << 20).to_string()
    );

    // temp_file_limit is the role's, and only a superuser may change it.
    let (_, stderr) = psql_within_a_minute(&url, "SET temp_file_limit = -1");
    assert!(
        stderr.contains("permission denied to set parameter \"temp_file_limit\""),
        "{stderr}"
    );
    let (_, stderr) = psql_within_a_minute(
        &url,
        "SET work_mem = '64kB'; SELECT count(*) FROM (SELECT g FROM generate_series(1, 5000000) g ORDER BY g DESC) s",
    );
    assert!(
        stderr.contains("temporary file size exceeds temp_file_limit"),
        "{stderr}"
    );

    // The others (and nxd) kept working meanwhile.
    assert_eq!(health(&host).0, 200);
    let (ok, _) = nx_testkit::psql(&host.path("postgres/socket"), 5432, "nx", "SELECT 1");
    assert!(ok);
}

/// A length or count as PostgreSQL's protocol writes it: Int32, big-endian.
fn int32(n: usize) -> [u8; 4] {
    i32::try_from(n).unwrap().to_be_bytes()
}

/// Sends one frontend message of PostgreSQL's protocol: its type byte, its length, `body`.
fn send_message(stream: &mut UnixStream, tag: u8, body: &[u8]) {
    let mut message = vec![tag];
    message.extend_from_slice(&int32(body.len() + 4));
    message.extend_from_slice(body);
    stream.write_all(&message).unwrap();
}

/// Reads one backend message: its type byte and body.
fn receive_message(stream: &mut UnixStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    stream.read_exact(&mut header)?;
    let length = i32::from_be_bytes(header[1..].try_into().unwrap());
    let mut body = vec![0; usize::try_from(length - 4).unwrap()];
    stream.read_exact(&mut body)?;
    Ok((header[0], body))
}

/// The `M` (message) field of an ErrorResponse's `body`.
fn error_text(body: &[u8]) -> String {
    body.split(|&b| b == 0)
        .find_map(|field| field.strip_prefix(b"M"))
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .unwrap_or_default()
}

/// Reads backend messages up to ReadyForQuery; panics on an ErrorResponse.
fn until_ready(stream: &mut UnixStream) {
    loop {
        match receive_message(stream).unwrap() {
            (b'Z', _) => return,
            (b'E', body) => panic!("{}", error_text(&body)),
            _ => {}
        }
    }
}

/// A session as the role of `url` (`nx db url`'s `postgres://role:password@/database?host=DIR&port=N`)
/// over its socket, logged in with SCRAM-SHA-256 (PostgreSQL 15's "SASL Authentication"),
/// ready for a query.
fn tenant_session(url: &str) -> UnixStream {
    let (credentials, rest) = url
        .strip_prefix("postgres://")
        .and_then(|u| u.split_once("@/"))
        .unwrap();
    let (role, password) = credentials.split_once(':').unwrap();
    let (database, query) = rest.split_once('?').unwrap();
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|p| p.strip_prefix(&format!("{name}=")))
            .unwrap()
    };
    let socket = format!("{}/.s.PGSQL.{}", param("host"), param("port"));
    let mut stream = UnixStream::connect(socket).unwrap();
    // StartupMessage: no type byte, protocol 3.0.
    let mut startup = 196_608i32.to_be_bytes().to_vec();
    for s in ["user", role, "database", database, ""] {
        startup.extend_from_slice(s.as_bytes());
        startup.push(0);
    }
    let mut message = int32(startup.len() + 4).to_vec();
    message.extend_from_slice(&startup);
    stream.write_all(&message).unwrap();
    let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    loop {
        let (tag, body) = receive_message(&mut stream).unwrap();
        let code = body
            .get(..4)
            .map(|c| i32::from_be_bytes(c.try_into().unwrap()));
        match (tag, code) {
            (b'R', Some(10)) => {
                let mut initial = b"SCRAM-SHA-256\0".to_vec();
                initial.extend_from_slice(&int32(scram.message().len()));
                initial.extend_from_slice(scram.message());
                send_message(&mut stream, b'p', &initial);
            }
            (b'R', Some(11)) => {
                scram.update(&body[4..]).unwrap();
                send_message(&mut stream, b'p', scram.message());
            }
            (b'R', Some(12)) => scram.finish(&body[4..]).unwrap(),
            (b'E', _) => panic!("{}", error_text(&body)),
            (b'Z', _) => return stream,
            _ => {}
        }
    }
}

/// Attacker s13 M8 (medium): a fast-path function call (the protocol's FunctionCall message,
/// PostgreSQL 15's "Function Call"; libpq's `PQfn`, which its large-object calls use) is in
/// `pg_stat_activity`'s state `fastpath function call`, which nxd read as idle: after `SET
/// statement_timeout = 0`, a fast-path `pg_sleep` ran past the bound (321 s of 300). nxd ends
/// it at the bound.
#[test]
fn a_fast_path_function_call_is_held_to_the_statement_time_bound() {
    let host = Host::start_with("[databases]\nstatement_timeout_secs = 8\n");
    let alpha = sandbox_db_url(&host, "alpha");
    let mut session = tenant_session(&alpha);
    send_message(&mut session, b'Q', b"SET statement_timeout = 0\0");
    until_ready(&mut session);
    // FunctionCall of pg_sleep(float8) (oid 2626) for 600 s: one argument, binary.
    let mut call = 2626i32.to_be_bytes().to_vec();
    call.extend_from_slice(&[0, 1, 0, 1, 0, 1]);
    call.extend_from_slice(&int32(8));
    call.extend_from_slice(&600f64.to_be_bytes());
    call.extend_from_slice(&[0, 1]);
    let started = Instant::now();
    send_message(&mut session, b'F', &call);
    session
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let answer = receive_message(&mut session);
    let took = started.elapsed();
    let Ok((b'E', body)) = answer else {
        panic!("the fast-path call was not ended (after {took:?}): {answer:?}");
    };
    assert_eq!(
        error_text(&body),
        "terminating connection due to administrator command"
    );
    assert!(
        took >= Duration::from_secs(8) && took < Duration::from_secs(20),
        "ended after {took:?}"
    );
    // Logged once pg_terminate_backend answered: maybe just after the client heard.
    host.wait_for_log_line(
        |l| ends_session(l, "alpha", "its statement ran"),
        Duration::from_secs(5),
        "nxd did not log ending the fast-path call",
    );
}

/// Attacker s12 M1 (medium): a LISTENing session left idle in a transaction (after `SET
/// idle_in_transaction_session_timeout = 0`, which any role may) pinned PostgreSQL's NOTIFY
/// queue: 1 GB in `pg_notify` in 27 s, in the cluster's data directory, up to 8 GB, and then
/// NOTIFY fails in every database. nxd ends it at `databases.idle_in_transaction_timeout_secs`.
#[test]
fn a_listener_idle_in_a_transaction_past_its_bound_is_ended_whatever_it_set() {
    let host = Host::start_with("[databases]\nidle_in_transaction_timeout_secs = 5\n");
    let alpha = sandbox_db_url(&host, "alpha");
    let mut pin = psql_session(&alpha);
    let mut stdin = pin.stdin.take().unwrap();
    stdin
        .write_all(
            b"SET idle_in_transaction_session_timeout = 0;\nLISTEN jobs;\nBEGIN;\nSELECT 'in';\n",
        )
        .unwrap();
    stdin.flush().unwrap();
    let (ok, out) = psql_url(
        &alpha,
        "SELECT count(pg_notify('jobs', repeat('x', 7000))) FROM generate_series(1, 2000)",
    );
    assert!(ok, "{out}");
    host.wait_for_log_line(
        |l| ends_session(l, "alpha", "idle in a transaction"),
        Duration::from_secs(30),
        "alpha's listener sat idle in its transaction and was not ended",
    );
    assert_session_was_ended(pin, stdin);
    // A session that is idle, but in no transaction, stays.
    let mut idle = psql_session(&alpha);
    let mut stdin = idle.stdin.take().unwrap();
    stdin.write_all(b"SELECT 'first';\n").unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_secs(8));
    stdin.write_all(b"SELECT 'second';\n").unwrap();
    drop(stdin);
    let out = idle.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("second"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Attacker s11 G10 (high): while a restore ran, its scratch database took any tenant's
/// connections (PostgreSQL gives a new database `CONNECT` for PUBLIC), through the tenant's
/// gate too, and the runaway watch left every session in it alone, whoever's: unbounded
/// sessions there took the cluster past its `MemoryMax`. Now only the sandbox's role reaches
/// it, from the host alone, and only nxd's own restore session goes without the time bound.
#[test]
fn a_restores_scratch_database_is_its_sandboxs_alone_and_held_to_its_bounds() {
    let host = Host::start_with("[databases]\nstatement_timeout_secs = 8\n");
    host.nx_json(&["sandbox", "create", "alpha"]);
    host.push_sample("beta", &[]);
    let (alpha, beta) = (
        host.nx_json(&["db", "url", "alpha"]),
        host.nx_json(&["db", "url", "beta"]),
    );
    let field = |info: &serde_json::Value, key: &str| info[key].as_str().unwrap().to_owned();
    let (alpha_url, beta_url) = (field(&alpha, "url"), field(&beta, "url"));
    let in_database = |url: &str, info: &serde_json::Value, database: &str| {
        url.replace(
            &format!("/{}?", field(info, "database")),
            &format!("/{database}?"),
        )
    };
    // A dump whose restore takes 40 s: its index's function sleeps in a scratch database.
    let (ok, out) = psql_url(
        &alpha_url,
        "CREATE FUNCTION slow(int) RETURNS int IMMUTABLE LANGUAGE sql AS \
         $$ SELECT $1 FROM pg_sleep(CASE WHEN current_database() LIKE 'nxr%' THEN 40 ELSE 0 END) $$; \
         CREATE TABLE t AS SELECT 1 AS x; CREATE INDEX t_slow ON t (slow(x))",
    );
    assert!(ok, "{out}");
    let started = Instant::now();
    let restore = backup_and_restore(&host, "alpha", "slow.dump");
    let building = "SELECT datname FROM pg_stat_activity WHERE datname LIKE 'nxr\\_%' AND query LIKE '%CREATE INDEX%'";
    let mut scratch = superuser(&host, "postgres", building);
    while scratch.is_empty() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
        scratch = superuser(&host, "postgres", building);
    }
    assert!(!scratch.is_empty(), "no restore is building its index");

    // Another tenant: neither on the host nor through its sandbox's socket.
    let (ok, out) = psql_url(&in_database(&beta_url, &beta, &scratch), "SELECT 1");
    assert!(
        !ok && out.contains("permission denied for database"),
        "beta's role connected to alpha's scratch database {scratch}: {out}"
    );
    let beta_role = field(&beta, "role");
    let gate = host.path(&format!("db-gates/{beta_role}"));
    let (ok, out) = psql_as(&gate, &beta_role, &scratch, "SELECT 1");
    assert!(
        !ok && out.contains("this socket admits role"),
        "beta's gate passed a connection to {scratch} on: {out}"
    );

    // Alpha's own role, with the application name its restore's session has (every session of
    // the role reads it), is held to the statement bound there as anywhere.
    let (ok, name) = psql_url(
        &alpha_url,
        &format!("SELECT application_name FROM pg_stat_activity WHERE datname = '{scratch}'"),
    );
    assert!(ok && !name.trim().is_empty(), "{name}");
    let impostor = format!(
        "{}&application_name={}",
        in_database(&alpha_url, &alpha, &scratch),
        name.trim()
    );
    let (took, stderr) =
        psql_within_a_minute(&impostor, "SET statement_timeout = 0; SELECT pg_sleep(600)");
    assert!(
        stderr.contains("terminating connection due to administrator command")
            && took < Duration::from_secs(20),
        "alpha's session in {scratch} ran {took:?}: {stderr}"
    );
    assert!(
        host.nxd_log()
            .lines()
            .any(|l| ends_session(l, "alpha", "its statement ran")),
        "{}",
        host.nxd_log()
    );

    // nxd's own restore session ran its 40 s, past the 8 s bound, and the restore went in.
    let restored = restore.wait_with_output().unwrap();
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert!(started.elapsed() >= Duration::from_secs(40));
    assert_eq!(
        psql_url(&alpha_url, "SELECT count(*) FROM t WHERE slow(x) = 1"),
        (true, "1\n".to_owned())
    );
}

/// Attacker s16 C1: nxd started under `ip netns exec`, which mounts a fresh /sys without
/// /sys/fs/cgroup, ran its embedded systemd manager at the host's root cgroups, and its
/// database watch found no process of the cluster's unit: it bounded and ended nothing, and
/// said nothing. Where no cgroup hierarchy is mounted, nxd refuses to start, saying what to do,
/// and leaves nothing behind: no `nx0`, no nftables table (session 16's closing note).
#[test]
fn nxd_refuses_to_start_its_manager_where_no_cgroup_hierarchy_is_mounted() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("nxd.toml");
    std::fs::write(
        &config,
        format!("state_dir = {state:?}\n\n[systemd]\nmode = \"embedded\"\n"),
    )
    .unwrap();
    let output = dir.path().join("nxd.out");
    let said = std::fs::File::create(&output).unwrap();
    let netns = nx_testkit::netns::Netns::new();
    // What `ip netns exec` does to /sys, in a network namespace of the test's own.
    let mut nxd = netns
        .command("unshare")
        .args([
            "--mount",
            "sh",
            "-c",
            "mount -t sysfs sysfs /sys && exec \"$0\" --config \"$1\"",
        ])
        .arg(nx_testkit::bin("nxd"))
        .arg(&config)
        .stdout(said.try_clone().unwrap())
        .stderr(said)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = nxd.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = nxd.kill();
            let _ = nxd.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // What the refused start left on the host (nothing: it refuses before it makes them).
    let left: Vec<String> = [
        ["ip", "link", "show", "nx0"].as_slice(),
        &["nft", "list", "table", "inet", "nx"],
    ]
    .iter()
    .filter_map(|cmd| {
        let out = netns.command(cmd[0]).args(&cmd[1..]).output().unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .collect();
    // Whatever it started goes (the manager and its units, the network in the namespace).
    let _ = netns
        .command(nx_testkit::bin("nxd"))
        .arg("manager-stop")
        .arg("--state-dir")
        .arg(&state)
        .output();
    let said = std::fs::read_to_string(&output).unwrap();
    assert!(
        status.is_some_and(|s| !s.success()),
        "nxd ran on ({status:?}): {said}"
    );
    assert!(left.is_empty(), "a refused start left {left:#?}");
    assert!(
        said.contains("no cgroup hierarchy is mounted under /sys/fs/cgroup")
            && said.contains("nsenter --net="),
        "{said}"
    );
}

/// Attacker s16 V1: the time bound held an autovacuum worker only in a plain ANALYZE, so a
/// tenant's expression-index function that sleeps in the ANALYZE phase of a `VACUUM ANALYZE`
/// pass (both due at once) held the worker with no bound, and three tables held every
/// autovacuum worker of the cluster. That phase is timed from when nxd first sees it.
#[test]
fn a_tenants_function_run_by_a_vacuum_analyze_is_held_to_the_time_bound() {
    let host = Host::start_with("[databases]\nstatement_timeout_secs = 5\n");
    let alpha = sandbox_db_url(&host, "alpha");
    let (_, stderr) = psql_within_a_minute(
        &alpha,
        "CREATE TABLE slow(x int) WITH (autovacuum_vacuum_threshold = 1, \
             autovacuum_vacuum_scale_factor = 0, autovacuum_analyze_threshold = 1, \
             autovacuum_analyze_scale_factor = 0); \
         CREATE FUNCTION slow_f(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN \
           IF $1 = 1 AND current_setting('statement_timeout') = '0' THEN \
             PERFORM pg_sleep(600); END IF; \
           RETURN $1; END $$; \
         CREATE INDEX ON slow (slow_f(x)); \
         INSERT INTO slow SELECT generate_series(1, 200); \
         DELETE FROM slow WHERE x > 100;",
    );
    assert!(!stderr.contains("ERROR"), "{stderr}");
    let database = host.nx_json(&["db", "url", "alpha"])["database"]
        .as_str()
        .unwrap()
        .to_owned();
    // autovacuum_naptime is 60 s: the pass comes within it, and is ended 5 s into its ANALYZE.
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut passes = String::new();
    loop {
        let now = superuser(
            &host,
            "postgres",
            &format!(
                "SELECT query FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' \
                 AND datname = '{database}'"
            ),
        );
        if !now.trim().is_empty() && !passes.contains(now.trim()) {
            passes.push_str(&now);
        }
        let log = host.nxd_log();
        if log
            .lines()
            .any(|l| ends_session(l, "alpha", "its statement ran"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker was not ended; its passes: {passes}\n{log}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(passes.contains("autovacuum: VACUUM ANALYZE"), "{passes}");
}

/// Attacker s16 W2: the database watch asked systemd over D-Bus where the cluster's processes
/// are at every look, so while the manager did not answer (stopped here; slow at load) no
/// memory bound held: a backend grew 2.4 GiB past its 1 GiB bound. They are read in the
/// cgroup the cluster was last found in: the bound holds while the manager is stopped.
#[test]
fn the_memory_bound_holds_while_the_systemd_manager_does_not_answer() {
    let host = Host::start_with("[databases]\nbackend_memory_max_mb = 256\n");
    let alpha = sandbox_db_url(&host, "alpha");
    let pid1 = nix::unistd::Pid::from_raw(host.manager_pid1());
    nix::sys::signal::kill(pid1, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let (took, stderr) = psql_within_a_minute(
        &alpha,
        "SELECT length(x), pg_sleep(20) FROM (SELECT repeat('x', 400000000) x) s",
    );
    nix::sys::signal::kill(pid1, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(
        stderr.contains("terminating connection due to administrator command"),
        "not ended while the manager was stopped (it ran {took:?}): {stderr}"
    );
    assert!(host
        .nxd_log()
        .lines()
        .any(|l| ends_session(l, "alpha", "MiB")));
}

/// The cgroup directory at or below `dir` whose `cgroup.procs` lists `pid`.
fn cgroup_holding(dir: &std::path::Path, pid: u32) -> Option<std::path::PathBuf> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    if procs.lines().any(|p| p.trim() == pid.to_string()) {
        return Some(dir.to_owned());
    }
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|e| cgroup_holding(&e.path(), pid))
}

/// Moves each of `pids` into the cgroup `to` (those that ended meanwhile are left).
fn move_into(to: &std::path::Path, pids: &[u32]) {
    for pid in pids {
        let _ = std::fs::write(to.join("cgroup.procs"), pid.to_string());
    }
}

/// Session 16's closing note: the database watch reads the cluster's processes in the cgroup
/// of its unit (d6ee173), and where it read none while tenants' sessions ran, it bounded
/// nothing, in silence. Here the cluster's processes are moved out of the unit's cgroups (into
/// the manager's own), as anything writing the host's cgroups may: the watch says so once, not
/// at each of its looks (every 250 ms), and says when it reads them again.
#[test]
fn the_database_watch_says_once_when_it_reads_no_process_of_the_cluster() {
    let host = Host::start();
    let alpha = sandbox_db_url(&host, "alpha");
    let session = psql_session(&alpha);
    let postmaster = process_with("-D", &host.path("postgres/data")).expect("the postmaster");
    // Each hierarchy's cgroup of the unit, the manager's, and the processes moved between them.
    let moved: Vec<_> = host
        .manager_cgroups()
        .into_iter()
        .filter_map(|manager| {
            let unit = cgroup_holding(&manager, postmaster)?;
            let pids: Vec<u32> = std::fs::read_to_string(unit.join("cgroup.procs"))
                .unwrap()
                .lines()
                .filter_map(|p| p.trim().parse().ok())
                .collect();
            move_into(&manager, &pids);
            Some((unit, pids))
        })
        .collect();
    assert!(!moved.is_empty(), "{:?}", host.manager_cgroups());
    let blind = |l: &str| l.contains("reads no process of the embedded PostgreSQL");
    host.wait_for_log_line(blind, Duration::from_secs(10), "the watch said nothing");
    // Twelve more looks.
    std::thread::sleep(Duration::from_secs(3));
    for (unit, pids) in &moved {
        move_into(unit, pids);
    }
    host.wait_for_log_line(
        |l| l.contains("reads the embedded PostgreSQL's processes again"),
        Duration::from_secs(10),
        "the watch did not say it reads them again",
    );
    let said = host.nxd_log().lines().filter(|l| blind(l)).count();
    close_sessions(vec![session]);
    assert_eq!(said, 1, "{}", host.nxd_log());
}

/// Asserts that sandbox `other`'s push of `sample` serves and that a task runs, `during` what
/// (for the failure's message).
fn assert_room_left(host: &Host, sample: &str, during: &str) {
    let other = host.nx(&["--json", "push", sample, "--sandbox", "other"]);
    assert!(
        other.ok,
        "another sandbox's push failed {during}: {}{}",
        other.stdout, other.stderr
    );
    let other = other.json()["deployment"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(
        host.get(&host.preview_host("other", &other), "/health").0,
        200
    );
    let task = host.nx(&["run-task", sample, "--", "task", "print", "room", "left"]);
    assert!(task.ok, "a task failed {during}: {}", task.stderr);
    assert_eq!(task.stdout, "room left\n");
}
