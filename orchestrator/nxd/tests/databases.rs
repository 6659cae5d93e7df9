//! Every sandbox's own PostgreSQL database, on a real cluster: provisioning and isolation,
//! backup and restore, a dump that restores into a plain PostgreSQL, preview branches, and
//! names that try to inject SQL.

use nx_testkit::Host;
use std::path::PathBuf;
use std::process::Command;

fn psql_as_superuser(host: &Host, sql: &str) -> String {
    let (ok, out) = nx_testkit::psql(&host.path("postgres/socket"), 5432, "postgres", sql);
    assert!(ok, "psql failed: {sql}");
    out
}

fn database_names(host: &Host) -> Vec<String> {
    psql_as_superuser(host, "SELECT datname FROM pg_database ORDER BY 1")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn db_info(host: &Host, sandbox: &str) -> serde_json::Value {
    host.nx_json(&["db", "url", sandbox])
}

/// Review15: `nx db psql` ran `psql <URL with the password>`, and every local user reads a
/// process's arguments (`/proc/<pid>/cmdline`). While it runs, psql's arguments hold no
/// password; its environment holds it as `PGPASSWORD` (readable by its user and root only).
fn assert_password_not_in_psqls_arguments(host: &Host, sandbox: &str) {
    let url = db_info(host, sandbox)["url"].as_str().unwrap().to_owned();
    // postgres://role:password@/database?...
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(user, _)| user.split_once(':'))
        .map(|(_, password)| password.to_owned())
        .unwrap_or_else(|| panic!("no password in {url}"));
    let marker = format!("psql-{}", std::process::id());
    let sql = format!("select pg_sleep(2), '{marker}'");
    let nx = host
        .nx_command(&host.token, &["db", "psql", sandbox, "--", "-Atc", &sql])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let psql = loop {
        // psql itself (Debian's /usr/bin/psql is a wrapper that execs the version's binary).
        let found = std::fs::read_dir("/proc").unwrap().flatten().find(|e| {
            std::fs::read_link(e.path().join("exe")).is_ok_and(|exe| exe.ends_with("psql"))
                && std::fs::read(e.path().join("cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker))
        });
        if let Some(process) = found {
            break process.path();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no psql with {marker} in 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let cmdline =
        String::from_utf8_lossy(&std::fs::read(psql.join("cmdline")).unwrap()).replace('\0', " ");
    let environ = std::fs::read(psql.join("environ")).unwrap();
    let out = nx.wait_with_output().unwrap();
    assert!(
        !cmdline.contains(&password),
        "psql's arguments hold the password: {cmdline}"
    );
    assert!(
        environ
            .split(|&b| b == 0)
            .any(|v| v == format!("PGPASSWORD={password}").as_bytes()),
        "psql's environment has no PGPASSWORD"
    );
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("|{marker}\n"));
}

#[test]
fn each_sandbox_gets_its_own_database_that_others_cannot_reach() {
    let host = Host::start();
    let a = host.push_sample("alpha", &[]);
    let b = host.push_sample("beta", &[]);
    let alpha = |path: &str| host.get(&host.preview_host("alpha", &a), path);

    assert_eq!(alpha("/db/put?v=one").0, 200);
    assert_eq!(alpha("/db/put?v=two").0, 200);
    assert_eq!(alpha("/db/list"), (200, r#"["one","two"]"#.to_string()));
    // psql's own arguments after `--` (attacker s15 L2: refused, though clap's tip said so).
    let out = host.nx(&["db", "psql", "alpha", "--", "-Atc", "select 41 + 1"]);
    assert_eq!(out.stdout, "42\n", "{}", out.stderr);
    assert_password_not_in_psqls_arguments(&host, "alpha");
    // And psql's connection arguments (attacker16: after `-d`, psql took the URI for a user
    // name): the sandbox's role, socket and password stay, the database is psql's to choose.
    let alpha_name = db_info(&host, "alpha")["database"]
        .as_str()
        .unwrap()
        .to_owned();
    let which = "select current_database()";
    for args in [
        &["-d", &alpha_name, "-Atc", which][..],
        &["-Atc", which, &alpha_name],
    ] {
        let out = host.nx(&[&["db", "psql", "alpha", "--"], args].concat());
        assert_eq!(
            out.stdout,
            format!("{alpha_name}\n"),
            "{args:?}: {}",
            out.stderr
        );
    }
    assert_eq!(
        host.get(&host.preview_host("beta", &b), "/db/list").0,
        500,
        "beta sees alpha's table"
    );

    let (_, env) = alpha("/env");
    let env: serde_json::Value = serde_json::from_str(&env).unwrap();
    let alpha_db = db_info(&host, "alpha");
    assert_eq!(env["PGHOST"], "/run/postgresql");
    assert_eq!(env["PGDATABASE"], alpha_db["database"]);
    assert!(env["DATABASE_URL"]
        .as_str()
        .unwrap()
        .contains("host=/run/postgresql"));

    // Alpha's app, with alpha's credentials, at beta's database.
    let beta_db = db_info(&host, "beta")["database"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = alpha(&format!("/db/connect?db={beta_db}"));
    assert_eq!(status, 500);
    assert!(body.contains("permission denied for database"), "{body}");
    // And psql with alpha's credentials, on the host.
    let url = alpha_db["url"].as_str().unwrap().replace(
        &format!("/{}?", alpha_db["database"].as_str().unwrap()),
        &format!("/{beta_db}?"),
    );
    let out = Command::new("psql")
        .arg(&url)
        .args(["-c", "SELECT 1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied for database"));
    let out = host.nx(&[
        "db", "psql", "alpha", "--", "-d", &beta_db, "-c", "SELECT 1",
    ]);
    assert!(
        !out.ok && out.stderr.contains("permission denied for database"),
        "{}",
        out.stderr
    );

    // Its sandbox's own socket in front of the cluster's, and nothing of the cluster.
    assert_eq!(
        alpha("/ls?path=/run/postgresql"),
        (200, r#"[".s.PGSQL.5432"]"#.to_string())
    );
    let data_dir = host.path("postgres/data");
    assert_eq!(
        alpha(&format!("/read?path={}/PG_VERSION", data_dir.display())).0,
        404
    );
}

#[test]
fn backup_drop_restore_and_the_dump_restores_into_a_plain_postgres() {
    let host = Host::start();
    let id = host.push_sample("shop", &[]);
    let app = |path: &str| host.get(&host.preview_host("shop", &id), path);
    assert_eq!(app("/db/put?v=a").0, 200);
    assert_eq!(app("/db/put?v=b").0, 200);

    let saved: PathBuf = host.path("shop.dump");
    let made = host.nx_json(&["db", "backup", "shop", "-o", saved.to_str().unwrap()]);
    let backup_id = made["backup"]["id"].as_str().unwrap().to_owned();
    assert!(saved.is_file());
    let listed = host.nx_json(&["db", "backups", "shop"]);
    assert_eq!(listed[0]["id"], backup_id.as_str());

    assert_eq!(app("/db/drop").0, 200);
    let (status, body) = app("/db/list");
    assert_eq!(status, 500);
    assert!(body.contains("does not exist"), "{body}");

    let restored = host.nx_json(&["db", "restore", "shop", &backup_id]);
    assert!(restored["previous_database"]
        .as_str()
        .unwrap()
        .starts_with("nxo_"));
    assert_eq!(
        app("/db/list"),
        (200, r#"["a","b"]"#.to_string()),
        "the app answers from the restored table"
    );

    // A corrupt and a truncated dump fail clearly and leave production as it was.
    let garbage = host.path("garbage.dump");
    std::fs::write(&garbage, b"PGDMP but not really").unwrap();
    let whole = std::fs::read(&saved).unwrap();
    let truncated = host.path("truncated.dump");
    std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
    for bad in [&garbage, &truncated] {
        let out = host.nx(&["db", "restore", "shop", bad.to_str().unwrap()]);
        assert!(!out.ok, "{} restored", bad.display());
        assert!(
            out.stderr
                .contains("not a usable PostgreSQL custom-format dump"),
            "{}",
            out.stderr
        );
        assert_eq!(app("/db/list"), (200, r#"["a","b"]"#.to_string()));
    }
    // A local file restores too.
    assert_eq!(app("/db/put?v=c").0, 200);
    host.nx_json(&["db", "restore", "shop", saved.to_str().unwrap()]);
    assert_eq!(app("/db/list"), (200, r#"["a","b"]"#.to_string()));

    // No lock-in: the stock pg_restore into a plain PostgreSQL.
    let plain = nx_testkit::ThrowawayPostgres::start(None);
    assert!(plain.psql("postgres", "CREATE DATABASE elsewhere").0);
    let out = Command::new("pg_restore")
        .arg("-h")
        .arg(plain.socket_dir())
        .args(["-U", "postgres", "--no-owner", "-d", "elsewhere"])
        .arg(&saved)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        plain.psql(
            "elsewhere",
            "SELECT string_agg(v, ',' ORDER BY v) FROM items"
        ),
        (true, "a,b".into())
    );

    host.nx_json(&["db", "rm-backup", "shop", &backup_id]);
    assert_eq!(
        host.nx_json(&["db", "backups", "shop"]),
        serde_json::json!([])
    );
}

/// Review17 #4: every tenant reads the roles' names (`pg_roles`) and may grant on its own
/// tables to any role, and PostgreSQL's DROP ROLE refuses a role still granted anything in any
/// database. Before, one sandbox's grants to every other role made another sandbox's `nx rm`
/// of a --db-branch preview, its `promote --swap-db` (after the swap) and its `nx sandbox rm`
/// fail; now each goes through, and the grants go with the roles.
#[test]
fn another_tenants_grants_to_a_sandboxs_roles_hold_up_neither_rm_nor_swap_db() {
    grants_to_another_sandboxs_roles_hold_up_nothing("SELECT 1");
}

/// Newcomer18 N1: with its grants to every role, a tenant set what every session of its
/// database starts with (`ALTER DATABASE ... SET`), nxd's DROP OWNED there too: read-only
/// transactions, 1 ms bounds, its own role as the session's. Another sandbox's `nx rm`,
/// `promote --swap-db` (after its swap: production on the branch's data, the old deployment
/// routed) and `nx sandbox rm` failed ('cannot execute DROP OWNED in a read-only
/// transaction'); nxd's sessions there now start with their own settings.
#[test]
fn a_tenants_settings_on_its_database_hold_up_neither_rm_nor_swap_db_of_another() {
    grants_to_another_sandboxs_roles_hold_up_nothing(
        "DO $$ DECLARE s text; BEGIN \
         FOREACH s IN ARRAY ARRAY['default_transaction_read_only = on', 'statement_timeout = ''1ms''', \
           'lock_timeout = ''1ms''', 'search_path = pg_temp', format('role = %I', current_user)] LOOP \
         EXECUTE format('ALTER DATABASE %I SET %s', current_database(), s); END LOOP; END $$",
    );
}

/// Review18 #11: a tenant's database settings that refuse every session there
/// (`local_preload_libraries` naming no library: 'could not access file
/// "$libdir/plugins/nosuch"') or end it when idle for 1 ms (`idle_session_timeout`, and
/// `transaction_timeout` from PostgreSQL 17), with values nxd's options must escape (`DateStyle`
/// has a space). Another sandbox's `nx rm`, `promote --swap-db` and `nx sandbox rm` failed at
/// nxd's DROP OWNED there, and the tenant's own `nx db backup` at pg_dump's connection; nxd's
/// sessions there now put back every setting the database holds.
#[test]
fn a_tenants_settings_that_refuse_sessions_on_its_database_hold_up_nothing() {
    let host = grants_to_another_sandboxs_roles_hold_up_nothing(
        "DO $$ DECLARE s text; BEGIN \
         FOREACH s IN ARRAY ARRAY['local_preload_libraries = ''nosuch''', \
           'idle_session_timeout = ''1ms''', 'DateStyle = ''SQL, DMY''', 'work_mem = ''64kB'''] LOOP \
         EXECUTE format('ALTER DATABASE %I SET %s', current_database(), s); END LOOP; \
         IF current_setting('server_version_num')::int >= 170000 THEN \
           EXECUTE format('ALTER DATABASE %I SET transaction_timeout = ''1ms''', current_database()); \
         END IF; END $$",
    );
    let saved = host.path("grabby.dump");
    let made = host.nx_json(&["db", "backup", "grabby", "-o", saved.to_str().unwrap()]);
    assert!(made["backup"]["id"].is_string(), "{made}");
    host.nx_json(&["sandbox", "rm", "grabby"]);
}

/// Sandbox grabby grants on a table of its own to every other nx role, then runs `settings`
/// (SQL) in its database; victim's `nx rm` of a --db-branch preview, `promote --swap-db` and
/// `nx sandbox rm` go through, and grabby's table is as it was.
fn grants_to_another_sandboxs_roles_hold_up_nothing(settings: &str) -> Host {
    let host = Host::start();
    let prod = host.push_sample("victim", &[]);
    host.nx_json(&["promote", "victim", &prod]);
    let preview = host.push_sample("victim", &["--db-branch"]);
    let next = host.push_sample("victim", &["--db-branch"]);
    host.push_sample("grabby", &[]);
    let grant_to_all = "CREATE TABLE t (x int); DO $$ DECLARE r text; BEGIN \
        FOR r IN SELECT rolname FROM pg_roles WHERE rolname LIKE 'nx%' AND rolname <> current_user LOOP \
        EXECUTE format('GRANT SELECT ON t TO %I', r); END LOOP; END $$";
    let out = host.nx(&[
        "db",
        "psql",
        "grabby",
        "--",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        grant_to_all,
        "-c",
        settings,
    ]);
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    let granted = |role: &str| {
        psql_as_superuser(
            &host,
            &format!("SELECT count(*) FROM pg_shdepend s JOIN pg_roles r ON r.oid = s.refobjid WHERE r.rolname = '{role}'"),
        )
        .trim()
        .parse::<u32>()
        .unwrap()
    };
    let roles = || psql_as_superuser(&host, "SELECT rolname FROM pg_roles ORDER BY 1");
    let branch_role = format!("nxb_{preview}");
    assert!(roles().contains(&branch_role), "{}", roles());
    assert!(
        granted(&branch_role) > 0,
        "grabby's grant did not reach {branch_role}"
    );

    host.nx_json(&["rm", &preview]);
    assert!(!roles().contains(&branch_role), "{}", roles());
    host.nx_json(&["promote", "victim", &next, "--swap-db"]);
    assert_eq!(host.get(&host.production_host("victim"), "/health").0, 200);
    assert!(!roles().contains(&format!("nxb_{next}")), "{}", roles());
    host.nx_json(&["sandbox", "rm", "victim"]);
    // grabby's own database and table are as they were (read past its settings).
    let database = db_info(&host, "grabby")["database"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = Command::new("psql")
        .arg("-h")
        .arg(host.path("postgres/socket"))
        .args(["-U", "postgres", "-d", &database, "-qAtc"])
        .arg("SELECT count(*) FROM public.t")
        .env(
            "PGOPTIONS",
            "-c local_preload_libraries= -c idle_session_timeout=0 -c statement_timeout=0",
        )
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    host
}

#[test]
fn a_preview_branch_starts_with_production_rows_and_goes_with_its_deployment() {
    let host = Host::start();
    let prod = host.push_sample("blog", &[]);
    let on = |id: &str, path: &str| host.get(&host.preview_host("blog", id), path);
    assert_eq!(on(&prod, "/db/put?v=p1").0, 200);
    host.nx_json(&["promote", "blog", &prod]);

    let branch = host.push_sample("blog", &["--db-branch"]);
    assert_eq!(on(&branch, "/db/list"), (200, r#"["p1"]"#.to_string()));
    assert_eq!(on(&branch, "/db/put?v=b1").0, 200);
    assert_eq!(on(&branch, "/db/list"), (200, r#"["b1","p1"]"#.to_string()));
    assert_eq!(
        on(&prod, "/db/list"),
        (200, r#"["p1"]"#.to_string()),
        "a branch write reached production"
    );
    let (_, env) = on(&branch, "/env");
    assert!(
        env.contains(&format!("\"PGDATABASE\":\"nxb_{branch}\"")),
        "{env}"
    );
    // The branch's role cannot reach production's database.
    let prod_db = db_info(&host, "blog")["database"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = on(&branch, &format!("/db/connect?db={prod_db}"));
    assert_eq!(status, 500, "{body}");

    assert!(database_names(&host).contains(&format!("nxb_{branch}")));
    let gates = || std::fs::read_to_string(host.path("db-gate/gates.json")).unwrap();
    assert!(gates().contains(&format!("nxb_{branch}")), "{}", gates());
    host.nx_json(&["rm", &branch]);
    assert!(
        !database_names(&host).contains(&format!("nxb_{branch}")),
        "the branch outlived its deployment"
    );
    assert!(
        !gates().contains(&format!("nxb_{branch}")),
        "the gate still admits the removed branch's role: {}",
        gates()
    );
    assert_eq!(on(&prod, "/db/list"), (200, r#"["p1"]"#.to_string()));

    // A second branch, promoted with its database swapped in: production's database now has
    // the branch's rows, the old one is kept, the branch's role is gone.
    let next = host.push_sample("blog", &["--db-branch"]);
    assert_eq!(on(&next, "/db/put?v=n1").0, 200);
    let before = database_names(&host);
    host.nx_json(&["promote", "blog", &next, "--swap-db"]);
    let production = |path: &str| host.get(&host.production_host("blog"), path);
    assert_eq!(production("/db/list"), (200, r#"["n1","p1"]"#.to_string()));
    assert_eq!(on(&prod, "/db/list"), (200, r#"["n1","p1"]"#.to_string()));
    let after = database_names(&host);
    assert!(!after.contains(&format!("nxb_{next}")));
    assert!(
        after
            .iter()
            .any(|d| d.starts_with("nxo_") && !before.contains(d)),
        "the old production database was not kept: {after:?}"
    );
    let roles = format!("SELECT count(*) FROM pg_roles WHERE rolname = 'nxb_{next}'");
    assert_eq!(psql_as_superuser(&host, &roles), "0");
    assert!(!gates().contains(&format!("nxb_{next}")), "{}", gates());
    let out = host.nx(&["promote", "blog", &prod, "--swap-db"]);
    assert!(
        !out.ok && out.stderr.contains("no preview branch"),
        "{}",
        out.stderr
    );

    // Removing the sandbox drops its database after a final backup.
    let removed = host.nx_json(&["sandbox", "rm", "blog"]);
    assert!(removed["final_backup"]["id"].is_string());
    assert!(!database_names(&host).contains(&prod_db));

    // Pushed again, the sandbox gets a database and role again (nxd remembers which sandboxes
    // it provisioned: it must forget a removed one).
    let again = host.push_sample("blog", &[]);
    assert!(database_names(&host).contains(&prod_db));
    let (status, body) = host.get(&host.preview_host("blog", &again), "/db/connect");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn bad_names_in_db_commands_are_refused_and_inject_nothing() {
    let host = Host::start();
    host.nx_json(&["sandbox", "create", "good"]);
    let before = database_names(&host);
    let long = "a".repeat(200);
    let bad_names = [
        r#"a"; DROP DATABASE postgres; --"#,
        "x' OR '1'='1",
        "a;b",
        &long,
        "../x",
        "Upper",
    ];
    for bad in bad_names {
        for args in [
            vec!["db", "url", bad],
            vec!["db", "psql", bad],
            vec!["db", "backup", bad],
            vec!["db", "backups", bad],
            vec!["db", "restore", bad, "20261129T052012123Z"],
            vec!["db", "rm-backup", bad, "20261129T052012123Z"],
            vec!["sandbox", "create", bad],
            vec!["sandbox", "rm", bad],
        ] {
            let out = host.nx(&args);
            assert!(!out.ok, "{args:?} succeeded");
            assert!(
                out.stderr.contains("invalid sandbox name"),
                "{args:?}: {}",
                out.stderr
            );
        }
        // Straight at the API, past the CLI.
        let encoded: String = bad.bytes().map(|b| format!("%{b:02X}")).collect();
        let resp = host
            .http()
            .get(format!("http://{}/v1/sandboxes/{encoded}/db", host.api))
            .bearer_auth(&host.token)
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{bad}");
    }
    for bad_id in ["../../etc/passwd", "x'; DROP", &long] {
        for args in [
            vec!["db", "restore", "good", bad_id],
            vec!["db", "rm-backup", "good", bad_id],
        ] {
            let out = host.nx(&args);
            assert!(!out.ok, "{args:?} succeeded");
            assert!(
                out.stderr.contains("invalid backup id") || out.stderr.contains("not a usable"),
                "{args:?}: {}",
                out.stderr
            );
        }
    }
    assert_eq!(database_names(&host), before, "the cluster changed");
    let database = host.nx_json(&["db", "url", "good"])["database"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        database.starts_with("nx_") && !database.contains("good"),
        "{database}"
    );
}

/// `psql -tAc sql` with a tenant's connection URL; its output.
fn psql_with_url(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .arg(url)
        .args(["-tAc", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Everything PostgreSQL lets any role read that names databases and roles.
const CATALOG_NAMES: &str = "SELECT datname || ' ' || coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database UNION ALL SELECT rolname FROM pg_roles";

#[test]
fn another_tenant_learns_no_sandbox_name_and_readable_names_are_migrated() {
    let mut host = Host::start();
    let a = host.push_sample("acme-payroll", &[]);
    host.push_sample("beta", &[]);
    let acme_host = host.preview_host("acme-payroll", &a);
    assert_eq!(host.get(&acme_host, "/db/put?v=kept").0, 200);
    // A restore keeps the old database, with a comment (every role reads comments).
    let saved = host.path("acme.dump");
    let backup = host.nx_json(&[
        "db",
        "backup",
        "acme-payroll",
        "-o",
        saved.to_str().unwrap(),
    ]);
    let id = backup["backup"]["id"].as_str().unwrap().to_owned();
    host.nx_json(&["db", "restore", "acme-payroll", &id]);

    let beta_url = db_info(&host, "beta")["url"].as_str().unwrap().to_owned();
    let seen = psql_with_url(&beta_url, CATALOG_NAMES);
    assert!(seen.contains("nx_"), "{seen}");
    for part in ["acme", "payroll", "beta"] {
        assert!(
            !seen.contains(part),
            "beta's role reads {part:?} in:\n{seen}"
        );
    }

    // A host from before: acme's role and database under their readable names, and a
    // comment that names the sandbox. nxd renames them at start and restarts the deployment.
    let opaque = db_info(&host, "acme-payroll")["database"]
        .as_str()
        .unwrap()
        .to_owned();
    psql_as_superuser(
        &host,
        &format!(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = '{opaque}'; \
             ALTER DATABASE {opaque} RENAME TO nx_acme_payroll; ALTER ROLE {opaque} RENAME TO nx_acme_payroll; \
             COMMENT ON DATABASE nx_acme_payroll IS 'NX: acme-payroll before the restore of x'"
        ),
    );
    let secrets = host.path("secrets");
    std::fs::rename(
        secrets.join(format!("{opaque}.password")),
        secrets.join("nx_acme_payroll.password"),
    )
    .unwrap();
    host.restart_nxd();
    assert!(!database_names(&host).contains(&"nx_acme_payroll".to_string()));
    assert_eq!(db_info(&host, "acme-payroll")["database"], opaque.as_str());
    // Adoption restarts it in the background: it answers from its table once it is back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut answer = host.get(&acme_host, "/db/list");
    while answer.0 != 200 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        answer = host.get(&acme_host, "/db/list");
    }
    assert_eq!(
        answer,
        (200, r#"["kept"]"#.to_string()),
        "the deployment reconnected under the new names"
    );
    let seen = psql_with_url(&beta_url, CATALOG_NAMES);
    assert!(!seen.contains("acme"), "{seen}");
}

#[test]
fn a_dump_that_resets_its_role_is_restored_as_the_sandboxs_role_and_gains_nothing() {
    let host = Host::start();
    host.push_sample("tenant", &[]);
    let url = db_info(&host, "tenant")["url"].as_str().unwrap().to_owned();
    let role = psql_with_url(&url, "SELECT current_user").trim().to_owned();
    // A genuine dump whose one comment is then rewritten, at the same length (the custom
    // format has no checksum), into SQL that leaves the role pg_restore was told to take.
    let comment = "A".repeat(200);
    psql_with_url(
        &url,
        &format!("CREATE TABLE t (x int); COMMENT ON TABLE t IS '{comment}'"),
    );
    let saved = host.path("tenant.dump");
    host.nx_json(&["db", "backup", "tenant", "-o", saved.to_str().unwrap()]);
    let genuine = std::fs::read(&saved).unwrap();
    let statement = format!("COMMENT ON TABLE public.t IS '{comment}';");
    let mut evil = format!("RESET ROLE; ALTER ROLE \"{role}\" SUPERUSER; SET ROLE \"{role}\"; --");
    evil.push_str(&"x".repeat(statement.len() - evil.len()));
    let at = genuine
        .windows(statement.len())
        .position(|w| w == statement.as_bytes())
        .expect("the comment's statement is in the dump");
    let mut crafted = genuine.clone();
    crafted[at..at + statement.len()].copy_from_slice(evil.as_bytes());
    let crafted_path = host.path("crafted.dump");
    std::fs::write(&crafted_path, &crafted).unwrap();

    let out = host.nx(&["db", "restore", "tenant", crafted_path.to_str().unwrap()]);
    assert!(!out.ok, "the crafted dump restored: {}", out.stdout);
    assert!(out.stderr.contains("must be superuser"), "{}", out.stderr);
    let superuser = format!("SELECT rolsuper FROM pg_roles WHERE rolname = '{role}'");
    assert_eq!(psql_as_superuser(&host, &superuser).trim(), "f");
    // The genuine dump still restores, in the role's own session.
    host.nx_json(&["db", "restore", "tenant", saved.to_str().unwrap()]);
    assert_eq!(
        psql_with_url(&url, "SELECT obj_description('t'::regclass)").trim(),
        comment
    );
}

#[test]
fn a_branch_made_after_a_restore_leaves_the_kept_databases_to_production() {
    let host = Host::start();
    let prod = host.push_sample("shop", &[]);
    let on = |id: &str, path: &str| host.get(&host.preview_host("shop", id), path);
    assert_eq!(on(&prod, "/db/put?v=a").0, 200);
    let saved = host.path("shop.dump");
    let backup = host.nx_json(&["db", "backup", "shop", "-o", saved.to_str().unwrap()])["backup"]
        ["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let kept = host.nx_json(&["db", "restore", "shop", &backup])["previous_database"]
        .as_str()
        .unwrap()
        .to_owned();
    let production_role = db_info(&host, "shop")["database"]
        .as_str()
        .unwrap()
        .to_owned();

    let branch = host.push_sample("shop", &["--db-branch"]);
    assert_eq!(on(&branch, "/db/list"), (200, r#"["a"]"#.to_string()));
    let owner = format!(
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname IN ('{kept}', '{production_role}') ORDER BY datname"
    );
    assert_eq!(
        psql_as_superuser(&host, &owner),
        format!("{production_role}\n{production_role}"),
        "the branch took production's databases"
    );
    // The branch's role, with its own password, can neither open nor drop the kept one.
    let (_, env) = on(&branch, "/env");
    let env: serde_json::Value = serde_json::from_str(&env).unwrap();
    let branch_url = format!(
        "postgres://{}:{}@/{}?host={}",
        env["PGUSER"].as_str().unwrap(),
        env["PGPASSWORD"].as_str().unwrap(),
        env["PGDATABASE"].as_str().unwrap(),
        host.path("postgres/socket").display()
    );
    let out = Command::new("psql")
        .arg(&branch_url)
        .args(["-c", &format!("DROP DATABASE \"{kept}\"")])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must be owner of database"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(database_names(&host).contains(&kept));

    host.nx_json(&["rm", &branch]);
    host.nx_json(&["sandbox", "rm", "shop", "--no-backup"]);
    let left = database_names(&host);
    assert!(
        !left.contains(&kept) && !left.contains(&production_role),
        "{left:?}"
    );
}

/// Attacker s10 F2: a tenant's own role wrote 1.1 GB in 16 s and nothing capped a database,
/// until the host's disk was full. Now a sandbox's databases live on a disk of
/// `databases.max_size_mb`.
#[test]
fn a_tenant_writing_past_its_database_disk_gets_an_error_and_others_go_on() {
    let host = Host::start_with("[databases]\nmax_size_mb = 64\n");
    let info = |sandbox: &str| {
        host.nx_json(&["sandbox", "create", sandbox]);
        db_info(&host, sandbox)
    };
    let (alpha, beta) = (info("alpha"), info("beta"));
    assert_eq!(alpha["max_size_bytes"], 64 << 20, "{alpha}");
    let (alpha_url, beta_url) = (
        alpha["url"].as_str().unwrap(),
        beta["url"].as_str().unwrap(),
    );
    // Rows of ~1 KiB, under TOAST's threshold: stored as they are, not compressed.
    let rows =
        |n: u32| format!("SELECT repeat(md5(g::text), 32) AS v FROM generate_series(1, {n}) g");
    let psql = |url: &str, sql: &str| {
        Command::new("psql")
            .arg(url)
            .args(["-v", "ON_ERROR_STOP=1", "-tAc", sql])
            .output()
            .unwrap()
    };
    psql_with_url(alpha_url, &format!("CREATE TABLE keep AS {}", rows(25_000)));
    let past = psql(alpha_url, &format!("INSERT INTO keep {}", rows(40_000)));
    let said = String::from_utf8_lossy(&past.stderr);
    assert!(!past.status.success(), "70 MiB went into a 64 MiB disk");
    assert!(said.contains("No space left on device"), "{said}");
    // Nothing the role may do puts its data elsewhere (it can connect to its own database
    // only, which PostgreSQL does not move while it is open).
    let denied = "permission denied for tablespace pg_default";
    for (escape, refusal) in [
        ("CREATE TABLE out (v text) TABLESPACE pg_default", denied),
        (
            "SET default_tablespace = pg_default; CREATE TABLE out (v text)",
            denied,
        ),
        (
            &format!(
                "ALTER DATABASE {} SET TABLESPACE pg_default",
                alpha["database"].as_str().unwrap()
            ),
            "cannot change the tablespace of the currently open database",
        ),
    ] {
        let out = psql(alpha_url, escape);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && said.contains(refusal),
            "{escape}: {said}"
        );
    }
    // Another tenant, nxd and the cluster go on.
    psql_with_url(beta_url, &format!("CREATE TABLE mine AS {}", rows(2_000)));
    assert_eq!(
        psql_with_url(beta_url, "SELECT count(*) FROM mine").trim(),
        "2000"
    );
    assert_eq!(db_info(&host, "beta")["max_size_bytes"], 64 << 20);
    let postgres_log = std::fs::read_to_string(host.path("postgres/postgres.log")).unwrap();
    assert!(
        !postgres_log.contains("PANIC") && !postgres_log.contains("terminated by signal"),
        "{postgres_log}"
    );
    // Dropping data makes room again.
    psql_with_url(alpha_url, "DROP TABLE keep");
    psql_with_url(
        alpha_url,
        &format!("CREATE TABLE again AS {}", rows(35_000)),
    );
    // The sandbox's removal takes its tablespace and disk along.
    let role = alpha["role"].as_str().unwrap().to_owned();
    assert!(host.path(&format!("postgres/disks/{role}.img")).is_file());
    host.nx_json(&["sandbox", "rm", "alpha", "--no-backup"]);
    assert!(!host.path(&format!("postgres/disks/{role}.img")).exists());
    assert_eq!(
        psql_as_superuser(
            &host,
            &format!("SELECT count(*) FROM pg_tablespace WHERE spcname = '{role}'")
        )
        .trim(),
        "0"
    );
}

/// Attacker s11 G11 (critical): a sandbox named like another sandbox's database (`nx_` + 24
/// hex digits, which every role reads in pg_database) whose own database was gone took the
/// other's at nxd's next start: the start's rename of readable names took the other's
/// database for this sandbox's old readable one, and `nx db backup` handed it over. A
/// restart leaves every sandbox's database where it is.
#[test]
fn a_sandbox_named_like_another_sandboxs_database_never_takes_it() {
    let mut host = Host::start();
    let victim = host.push_sample("victim", &[]);
    let preview = host.preview_host("victim", &victim);
    assert_eq!(host.get(&preview, "/db/put?v=victims-secret").0, 200);
    let victims = db_info(&host, "victim")["database"]
        .as_str()
        .unwrap()
        .to_owned();
    let name = victims.strip_prefix("nx_").expect("an nx_ name").to_owned();
    host.nx_json(&["sandbox", "create", &name]);
    let own = db_info(&host, &name)["database"]
        .as_str()
        .unwrap()
        .to_owned();
    // Its own database gone (the attacker dropped it from a restore's scratch database).
    psql_as_superuser(&host, &format!("DROP DATABASE {own} WITH (FORCE)"));
    host.restart_nxd();
    assert!(
        database_names(&host).contains(&victims),
        "the victim's database {victims} was renamed: {:?}",
        database_names(&host)
    );
    let (ok, rows) = nx_testkit::psql(
        &host.path("postgres/socket"),
        5432,
        &victims,
        "SELECT r.rolname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE d.datname = current_database()",
    );
    assert!(ok && rows.trim() == victims, "owner of {victims}: {rows}");
    let dump = host.path("taken.dump");
    if host
        .nx(&["db", "backup", &name, "-o", dump.to_str().unwrap()])
        .ok
    {
        let out = Command::new("pg_restore")
            .args(["-f", "-"])
            .arg(&dump)
            .output()
            .expect("pg_restore (postgresql-client)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && !text.contains("victims-secret"),
            "the other sandbox's backup holds the victim's rows:\n{text}"
        );
    }
}

/// The bytes `postgres.log` and its rotated copies hold (a copy rotated away between the
/// listing and its size counts nothing: CI of session 13 read one that had just gone).
fn postgres_logs_bytes(host: &Host) -> u64 {
    std::fs::read_dir(host.path("postgres"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("postgres.log"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Attacker s12 H4 (high): any role wrote the embedded cluster's log without bound (a `RAISE
/// WARNING` loop: 304 MB in 3.6 s into `postgres.log`, never rotated). A sandbox's role logs
/// only what ends its sessions, and cannot change that; what does reach the log (here a
/// superuser's own loop) is rotated and capped like a deployment's log, and the log stays
/// where the README and `nx doctor` point.
#[test]
fn no_role_writes_the_clusters_log_past_its_cap() {
    let host = Host::start();
    host.nx_json(&["sandbox", "create", "noisy"]);
    let url = db_info(&host, "noisy")["url"].as_str().unwrap().to_owned();
    // ~100 MB of warnings, none of them sent to the client.
    let flood = "SET client_min_messages = error; DO $$ BEGIN FOR i IN 1..10000 LOOP \
                 RAISE WARNING '%', repeat('w', 10000); END LOOP; END $$";
    let before = postgres_logs_bytes(&host);
    psql_with_url(&url, flood);
    let grown = postgres_logs_bytes(&host) - before;
    assert!(
        grown < 1 << 20,
        "a tenant's RAISE WARNING loop wrote {grown} bytes to the cluster's log"
    );
    let lifted = Command::new("psql")
        .arg(&url)
        .args(["-c", "SET log_min_messages = warning"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&lifted.stderr);
    assert!(
        said.contains("permission denied to set parameter \"log_min_messages\""),
        "{said}"
    );

    psql_as_superuser(&host, flood);
    let held = postgres_logs_bytes(&host);
    assert!(
        held <= (64 << 20) + (1 << 20),
        "postgres.log and its rotated copies hold {held} bytes, past 64 MiB"
    );
    assert!(host.path("postgres/postgres.log.1").exists());
    eprintln!("the tenant's 100 MB of warnings: +{grown} bytes; after a superuser's: {held} bytes");
    psql_as_superuser(
        &host,
        "DO $$ BEGIN RAISE WARNING 'nx-after-the-flood'; END $$",
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(host.path("postgres/postgres.log"))
        .unwrap()
        .contains("nx-after-the-flood")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "postgres.log no longer gets PostgreSQL's lines"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Attacker s12 M6 (medium): once a sandbox's disk was full and an `ANALYZE` had invalidated
/// its database's relation cache file, every new session failed "FATAL: could not write init
/// file" (PostgreSQL writes it in the database's directory as a session starts), a
/// superuser's too, so the way out (`TRUNCATE`) could not run. nxd frees the disk's reserve
/// when the disk is full, and keeps it again once there is room: twice over here.
#[test]
fn a_full_database_disk_still_takes_the_session_that_makes_room() {
    let host = Host::start_with("[databases]\nmax_size_mb = 64\n");
    host.nx_json(&["sandbox", "create", "full"]);
    let url = db_info(&host, "full")["url"].as_str().unwrap().to_owned();
    let lines = |what: &str| {
        host.nxd_log()
            .lines()
            .filter(|l| l.contains("sandbox full's database disk") && l.contains(what))
            .count()
    };
    // nxd's word on the reserve, waited for up to 10 s: the sessions below say whether it
    // worked.
    let wait_for = |what: &str, count: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while lines(what) < count && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    // Rows of ~1 KiB, under TOAST's threshold: stored as they are.
    let rows =
        |n: u32| format!("SELECT repeat(md5(g::text), 32) AS v FROM generate_series(1, {n}) g");
    wait_for("keeps a reserve", 1);
    psql_with_url(&url, &format!("CREATE TABLE big AS {}", rows(25_000)));
    for round in 1..=2 {
        let past = Command::new("psql")
            .arg(&url)
            .args(["-v", "ON_ERROR_STOP=1", "-c"])
            .arg(format!("INSERT INTO big {}", rows(60_000)))
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&past.stderr);
        assert!(said.contains("No space left on device"), "{said}");
        wait_for("is full", round);
        // Invalidates the relation cache file: the next session writes it again.
        let _ = Command::new("psql")
            .arg(&url)
            .args(["-c", "ANALYZE"])
            .output();
        psql_with_url(&url, "TRUNCATE big");
        psql_with_url(&url, &format!("INSERT INTO big {}", rows(25_000)));
        wait_for("keeps a reserve", round + 1);
    }
    assert!(
        lines("is full") == 2 && lines("keeps a reserve") == 3,
        "{}",
        host.nxd_log()
    );
}
