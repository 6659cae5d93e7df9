//! The content store belongs to sandboxes (attacker s7 F10): a deploy token scoped to one
//! sandbox learns nothing of another tenant's uploads (existence checks answer "missing") and
//! cannot read or run them by naming their sha256 (in a bundle manifest, as a push's or a
//! task's artifact). Uploading the same bytes itself works and makes them its own, while the
//! file stays one on disk. The root token sees the whole host, and its pushes give the target
//! sandbox what it runs; a token for every sandbox sees the host only when it may push, else
//! what it uploaded itself. Stores from before ownership keep their deployments working.

use nx_testkit::{sha256_hex, Host};
use serde_json::{json, Value};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// A secret file in the victim's bundle: a config whose only unknown is a short PIN.
const SECRET: &[u8] = b"pin = 402917\n";

/// Creates a deploy token with the root token.
fn token(host: &Host, sandbox: &str, can: &str) -> String {
    let out = host.nx_json(&["token", "create", "--sandbox", sandbox, "--can", can]);
    out["token"].as_str().expect("token").to_owned()
}

/// (status, body) of a request with a token.
fn call(
    host: &Host,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> (u16, String) {
    host.call(token, method, path, body)
}

fn post_json(host: &Host, token: &str, path: &str, body: &Value) -> (u16, String) {
    call(
        host,
        token,
        "POST",
        path,
        Some(body.to_string().into_bytes()),
    )
}

/// Which of `digests` `POST /v1/blobs/missing` answers as missing.
fn missing(host: &Host, token: &str, digests: &[&str]) -> Vec<String> {
    let (status, body) = post_json(
        host,
        token,
        "/v1/blobs/missing",
        &json!({ "sha256": digests }),
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["sha256"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_owned())
        .collect()
}

/// A bundle directory: the static sample app as `server` and `www/<name>` holding `SECRET`.
fn bundle_dir(at: &Path, name: &str) {
    std::fs::create_dir_all(at.join("www")).unwrap();
    std::fs::copy(nx_testkit::sample_app(), at.join("server")).unwrap();
    std::fs::set_permissions(at.join("server"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(at.join("www").join(name), SECRET).unwrap();
}

fn pushed_id(out: &Value) -> String {
    out["deployment"]["id"]
        .as_str()
        .expect("deployment id")
        .to_owned()
}

#[test]
fn a_tenants_token_cannot_see_read_or_run_another_tenants_files_and_uploads_its_own() {
    let host = Host::start();
    let sample = std::fs::read(nx_testkit::sample_app()).unwrap();
    let sample_sha = sha256_hex(&sample);
    let secret_sha = sha256_hex(SECRET);
    let never_stored = sha256_hex(b"nobody uploaded this\n");

    for sandbox in ["gemini", "tenant"] {
        assert!(host.nx(&["sandbox", "create", sandbox]).ok);
    }
    // The victim, sandbox gemini: a bundle with a secret file, pushed by its own token, and a
    // program of its own (the glibc build of the sample app) uploaded by its token.
    let victim = token(&host, "gemini", "push");
    let dir = host.path("gemini-site");
    bundle_dir(&dir, "index.conf");
    let out = host.nx_as(
        &victim,
        &[
            "--json",
            "push",
            dir.to_str().unwrap(),
            "--sandbox",
            "gemini",
        ],
    );
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    let out = out.json();
    let victim_bundle = out["deployment"]["artifact"]
        .as_str()
        .expect("artifact")
        .to_owned();
    let gem = host.preview_host("gemini", &pushed_id(&out));
    assert_eq!(
        host.get(&gem, "/read?path=/app/www/index.conf"),
        (200, String::from_utf8(SECRET.to_vec()).unwrap())
    );
    let program = std::fs::read(nx_testkit::bin("nx-sample-app")).unwrap();
    let program_sha = sha256_hex(&program);
    let (status, body) = call(
        &host,
        &victim,
        "PUT",
        &format!("/v1/artifacts/{program_sha}"),
        Some(program.clone()),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        call(
            &host,
            &victim,
            "GET",
            &format!("/v1/artifacts/{program_sha}"),
            None
        )
        .0,
        200
    );

    // The attacker, sandbox tenant, with push and tasks there.
    let attacker = token(&host, "tenant", "push,tasks");

    // Existence: every digest it does not own reads as missing, the victim's as a random one.
    assert_eq!(
        missing(&host, &attacker, &[&secret_sha, &sample_sha, &never_stored]),
        {
            let mut all = vec![secret_sha.clone(), sample_sha.clone(), never_stored.clone()];
            all.sort();
            all
        }
    );
    for path in [
        format!("/v1/blobs/{secret_sha}"),
        format!("/v1/artifacts/{program_sha}"),
    ] {
        for method in ["GET", "HEAD"] {
            let (status, body) = call(&host, &attacker, method, &path, None);
            assert_eq!(status, 404, "{method} {path}: {body}");
        }
    }
    let (_, not_found) = call(
        &host,
        &attacker,
        "GET",
        &format!("/v1/artifacts/{program_sha}"),
        None,
    );
    let (_, random) = call(
        &host,
        &attacker,
        "GET",
        &format!("/v1/artifacts/{never_stored}"),
        None,
    );
    assert_eq!(
        not_found.replace(&program_sha, "X"),
        random.replace(&never_stored, "X"),
        "an owned-elsewhere digest answers exactly as one never stored"
    );
    // The operator's root token sees the whole host.
    assert_eq!(
        missing(&host, &host.token, &[&secret_sha, &never_stored]),
        vec![never_stored.clone()]
    );
    assert_eq!(
        call(
            &host,
            &host.token,
            "GET",
            &format!("/v1/artifacts/{program_sha}"),
            None
        )
        .0,
        200
    );

    // Reading by naming: a bundle whose file is the victim's secret, uploaded by the attacker
    // only as far as its own program goes.
    let (status, body) = call(
        &host,
        &attacker,
        "PUT",
        &format!("/v1/blobs/{sample_sha}"),
        Some(sample.clone()),
    );
    assert_eq!(status, 200, "{body}");
    let manifest = json!({
        "files": [
            {"path": "server", "sha256": sample_sha, "size": sample.len(), "executable": true},
            {"path": "www/stolen.conf", "sha256": secret_sha, "size": SECRET.len(), "executable": false},
        ],
        "links": [], "entry": "server"
    });
    let (status, body) = post_json(&host, &attacker, "/v1/bundles", &manifest);
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("1 of the bundle's files are not uploaded yet") && body.contains(&secret_sha),
        "{body}"
    );
    // Running by naming: the victim's program and bundle as a push's artifact, and as a task's.
    for artifact in [&program_sha, &victim_bundle] {
        let push = json!({"sandbox": "tenant", "artifact": artifact});
        let (status, body) = post_json(&host, &attacker, "/v1/deployments", &push);
        assert_eq!(status, 404, "push of {artifact}: {body}");
        assert!(
            body.contains(&format!("no artifact {artifact} is stored")),
            "{body}"
        );
        let (status, body) = post_json(
            &host,
            &attacker,
            "/v1/tasks",
            &json!({"artifact": artifact}),
        );
        assert_eq!(status, 404, "task of {artifact}: {body}");
    }
    let tenant_now = host.nx_json(&["status", "tenant"]);
    assert_eq!(
        tenant_now[0]["deployments"],
        json!([]),
        "nothing was deployed: {tenant_now}"
    );

    // Wrong bytes under the victim's digest: refused, and the victim's file is untouched.
    let stored = host.path("blobs").join(&secret_sha);
    let inode = std::fs::metadata(&stored).unwrap().ino();
    let (status, body) = call(
        &host,
        &attacker,
        "PUT",
        &format!("/v1/blobs/{secret_sha}"),
        Some(b"pin = 000000\n".to_vec()),
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("hash mismatch"), "{body}");
    assert_eq!(
        missing(&host, &attacker, &[&secret_sha]),
        vec![secret_sha.clone()]
    );

    // The attacker's own copy of the same file, pushed with the CLI: every file is sent (no
    // "already stored" for what another tenant has), it is its own, and it runs; on disk the
    // file stays the one the victim stored.
    let own = host.path("tenant-site");
    bundle_dir(&own, "index.conf");
    let out = host.nx_as(
        &attacker,
        &[
            "--json",
            "push",
            own.to_str().unwrap(),
            "--sandbox",
            "tenant",
        ],
    );
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    let out = out.json();
    assert_eq!(
        out["sent"]["files"], 1,
        "the program was uploaded above, the config now: {out}"
    );
    assert_eq!(out["sent"]["bytes"], SECRET.len(), "{out}");
    let tenant = host.preview_host("tenant", &pushed_id(&out));
    assert_eq!(
        host.get(&tenant, "/read?path=/app/www/index.conf")
            .1
            .as_bytes(),
        SECRET
    );
    assert_eq!(
        std::fs::metadata(&stored).unwrap().ino(),
        inode,
        "deduplicated on disk"
    );
    assert_eq!(
        missing(&host, &attacker, &[&secret_sha]),
        Vec::<String>::new()
    );
    // Its own bundle naming the same file now works too, and the victim's still runs.
    let (status, body) = post_json(&host, &attacker, "/v1/bundles", &manifest);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        host.get(&gem, "/read?path=/app/www/index.conf")
            .1
            .as_bytes(),
        SECRET
    );

    // A removed sandbox owns nothing: a new sandbox under its name starts from scratch.
    assert!(host.nx(&["sandbox", "rm", "tenant", "--no-backup"]).ok);
    assert!(host.nx(&["sandbox", "create", "tenant"]).ok);
    let newcomer = token(&host, "tenant", "push");
    assert_eq!(
        missing(&host, &newcomer, &[&secret_sha]),
        vec![secret_sha.clone()]
    );
    assert_eq!(
        missing(&host, &victim, &[&secret_sha]),
        Vec::<String>::new()
    );
    assert!(
        host.path("blobs").join(&secret_sha).is_file(),
        "the victim's file stays"
    );
}

#[test]
fn a_root_push_gives_the_sandbox_what_it_runs_and_an_older_store_keeps_working() {
    let mut host = Host::start();
    let sample = std::fs::read(nx_testkit::sample_app()).unwrap();
    let sample_sha = sha256_hex(&sample);
    // Pushed with the root token: a program alone to "alone", a bundle to "site".
    let alone = host.push_sample("alone", &[]);
    let dir = host.path("site");
    bundle_dir(&dir, "index.conf");
    let out = host.nx_json(&["push", dir.to_str().unwrap(), "--sandbox", "site"]);
    let bundle = out["deployment"]["artifact"].as_str().unwrap().to_owned();
    let site = pushed_id(&out);

    // A store from before ownership (migrations 0016, 0017 and 0019, the owners' sizes, not
    // yet run): nxd's start runs them.
    let (ok, out) = nx_testkit::psql(
        &host.path("postgres/socket"),
        5432,
        "nx",
        "DROP TABLE content_owners; DELETE FROM _sqlx_migrations WHERE version IN (16, 17, 19)",
    );
    assert!(ok, "{out}");
    host.restart_nxd();

    for (sandbox, artifact, deployment) in
        [("alone", &sample_sha, &alone), ("site", &bundle, &site)]
    {
        assert_eq!(
            host.get(&host.preview_host(sandbox, deployment), "/health")
                .0,
            200
        );
        // Its own token runs again what its deployments run, with nothing uploaded.
        let own = token(&host, sandbox, "push");
        let (status, body) = post_json(
            &host,
            &own,
            "/v1/deployments",
            &json!({"sandbox": sandbox, "artifact": artifact}),
        );
        assert_eq!(status, 200, "{sandbox}: {body}");
        // And only that: the other sandbox's is not its.
        let other = if sandbox == "alone" {
            &bundle
        } else {
            &sample_sha
        };
        let (status, body) = post_json(
            &host,
            &own,
            "/v1/deployments",
            &json!({"sandbox": sandbox, "artifact": other}),
        );
        assert_eq!(status, 404, "{sandbox}: {body}");
    }
    // A root push of the bundle gives "alone" the bundle and its files.
    let out = host.nx_json(&["push", dir.to_str().unwrap(), "--sandbox", "alone"]);
    assert_eq!(out["sent"]["files"], 0, "root sees the whole store: {out}");
    let own = token(&host, "alone", "push");
    let secret_sha = sha256_hex(SECRET);
    assert_eq!(
        missing(&host, &own, &[&secret_sha, &sample_sha]),
        Vec::<String>::new()
    );
}

/// Review s8 #7: a root push to a sandbox that the push then failed to make (here: port 0 is
/// refused) grants that name nothing, so a sandbox made later under it (another tenant's)
/// cannot read the program (before, the grant was made first and passed to it); a root push
/// that made its sandbox still gives it what it runs.
#[test]
fn a_failed_root_push_grants_nothing_to_a_later_sandbox_of_that_name() {
    let host = Host::start();
    let (status, body, sample_sha) =
        host.put_artifact(std::fs::read(nx_testkit::sample_app()).unwrap());
    assert_eq!(status, 200, "{body}");
    // (`nx push` refuses port 0 itself: the API is asked directly.)
    let (status, body) = post_json(
        &host,
        &host.token,
        "/v1/deployments",
        &json!({"sandbox": "later", "artifact": sample_sha, "port": 0}),
    );
    assert!(status == 400 && body.contains("port 0"), "{status} {body}");
    assert!(host.nx(&["sandbox", "create", "later"]).ok);
    let tenant = token(&host, "later", "push");
    let (status, body) = call(
        &host,
        &tenant,
        "GET",
        &format!("/v1/artifacts/{sample_sha}"),
        None,
    );
    assert_eq!(status, 404, "the new sandbox was given the program: {body}");
    // A root push that runs gives its (new) sandbox the program.
    host.push_sample("fresh", &[]);
    let own = token(&host, "fresh", "push");
    let (status, body) = call(
        &host,
        &own,
        "GET",
        &format!("/v1/artifacts/{sample_sha}"),
        None,
    );
    assert_eq!(status, 200, "{body}");
}

/// Attacker s8 F12: a token for every sandbox with only `--can tasks` had the host's view of
/// the store (given to every-sandbox tokens because they may push anywhere), and ran another
/// tenant's bundle by its id. Now only every-sandbox tokens that may push see the host; one
/// that may not sees, and runs, only what it uploaded itself.
#[test]
fn a_token_for_every_sandbox_that_may_not_push_runs_only_what_it_uploaded() {
    let host = Host::start();
    assert!(host.nx(&["sandbox", "create", "gemini"]).ok);
    let victim = token(&host, "gemini", "push");
    let dir = host.path("gemini-site");
    bundle_dir(&dir, "index.conf");
    let out = host.nx_as(
        &victim,
        &[
            "--json",
            "push",
            dir.to_str().unwrap(),
            "--sandbox",
            "gemini",
        ],
    );
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    let victim_bundle = out.json()["deployment"]["artifact"]
        .as_str()
        .expect("artifact")
        .to_owned();
    let program = std::fs::read(nx_testkit::sample_app()).unwrap();
    let program_sha = sha256_hex(&program);
    let artifact = format!("/v1/artifacts/{program_sha}");
    let (status, body) = call(&host, &victim, "PUT", &artifact, Some(program.clone()));
    assert_eq!(status, 200, "{body}");
    let task = |args: &[&str]| json!({"artifact": program_sha, "args": args});

    let out = host.nx_json(&["token", "create", "--can", "tasks"]);
    let runner = out["token"].as_str().expect("token").to_owned();
    assert_eq!(call(&host, &runner, "GET", &artifact, None).0, 404);
    for sha in [&program_sha, &victim_bundle] {
        let (status, body) = post_json(&host, &runner, "/v1/tasks", &json!({"artifact": sha}));
        assert_eq!(status, 404, "task of another tenant's {sha}: {body}");
        assert!(
            body.contains(&format!("no artifact {sha} is stored")),
            "{body}"
        );
    }

    // Its own upload of the same bytes is its own, and runs.
    let (status, body) = call(&host, &runner, "PUT", &artifact, Some(program));
    assert_eq!(status, 200, "{body}");
    assert_eq!(call(&host, &runner, "GET", &artifact, None).0, 200);
    let (status, body) = post_json(
        &host,
        &runner,
        "/v1/tasks",
        &task(&["task", "print", "mine"]),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("mine"), "{body}");
    // The victim's bundle is still not its to run.
    let (status, _) = post_json(
        &host,
        &runner,
        "/v1/tasks",
        &json!({"artifact": victim_bundle}),
    );
    assert_eq!(status, 404);

    // A token for every sandbox that may push sees the host, as the root token does.
    let out = host.nx_json(&["token", "create", "--can", "push"]);
    let operator = out["token"].as_str().expect("token").to_owned();
    assert_eq!(
        missing(&host, &operator, &[&sha256_hex(SECRET)]),
        Vec::<String>::new()
    );
}

/// Threads of process `pid` sleeping in nanosleep(2) or clock_nanosleep(2) now (by
/// /proc/<pid>/task/*/syscall's first field, x86_64 numbers 35 and 230).
fn threads_sleeping(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("syscall"))
                .is_ok_and(|s| matches!(s.split(' ').next(), Some("35" | "230")))
        })
        .count()
}

/// Review17 #8: each `POST /v1/blobs/missing` looked its digests up on a blocking thread of
/// its own (up to `bundles.max_files` stat(2)s), as many at once as requests came (32 per
/// token, any number of tokens), out of the threads `tokio::fs` and nxd's other blocking work
/// share. Twelve lookups held on their thread (fail point `bundles::look_up=sleep(2000)`)
/// now take two threads at once, and all twelve are answered.
#[test]
fn blob_lookups_take_two_blocking_threads_at_once_however_many_are_asked() {
    let mut host = Host::start();
    host.restart_nxd_with_failpoints("bundles::look_up=sleep(2000)");
    let token = host.token.clone();
    let before = threads_sleeping(host.nxd_pid());
    let digest = sha256_hex(b"never stored");
    let answered = std::thread::scope(|scope| {
        let asks: Vec<_> = (0..12)
            .map(|_| scope.spawn(|| missing(&host, &token, &[digest.as_str()])))
            .collect();
        let mut most = 0;
        while !asks.iter().all(|a| a.is_finished()) {
            most = most.max(threads_sleeping(host.nxd_pid()).saturating_sub(before));
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let answered: Vec<Vec<String>> = asks.into_iter().map(|a| a.join().unwrap()).collect();
        assert!(most <= 2, "{most} lookups held a thread at once");
        assert!(most > 0, "no lookup was seen on its thread");
        answered
    });
    assert!(
        answered.iter().all(|m| m == std::slice::from_ref(&digest)),
        "{answered:?}"
    );
}
