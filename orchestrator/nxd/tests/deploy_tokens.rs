//! Deploy tokens: a token scoped to one sandbox and to verbs does those verbs there and gets
//! 403 (with what it may do) everywhere else; the root token stays the operator's; a removed
//! or expired token gets 401, and a log it follows ends; nxd's database holds no token in
//! clear; only push tokens read the values of a sandbox's settings' environment. Every route
//! of the API is tried with every verb, on the token's sandbox and on another.

use nx_testkit::Host;
use std::process::Command;

const VERBS: [&str; 6] = ["push", "promote", "rollback", "logs", "db", "tasks"];

/// Creates a token with the root token; (token, id).
fn create(host: &Host, args: &[&str]) -> (String, String) {
    let mut all = vec!["token", "create"];
    all.extend_from_slice(args);
    let out = host.nx_json(&all);
    (
        out["token"].as_str().expect("token").to_owned(),
        out["id"].as_str().expect("id").to_owned(),
    )
}

/// (status, body) of a request with a token.
fn call(host: &Host, token: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    host.call(token, method, path, body.map(|b| b.as_bytes().to_vec()))
}

#[test]
fn a_scoped_token_pushes_and_promotes_its_sandbox_and_nothing_else() {
    let host = Host::start();
    let web_v1 = host.push_sample("web", &[]);
    host.push_sample("other", &[]);
    let (token, id) = create(&host, &["--sandbox", "web", "--can", "push,promote"]);

    // Its verbs on its sandbox.
    let sample = nx_testkit::sample_app();
    let pushed = host.nx_as(
        &token,
        &[
            "--json",
            "push",
            sample.to_str().unwrap(),
            "--sandbox",
            "web",
        ],
    );
    assert!(pushed.ok, "{}{}", pushed.stdout, pushed.stderr);
    let v2 = pushed.json()["deployment"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let promoted = host.nx_as(&token, &["promote", "web", &v2]);
    assert!(promoted.ok, "{}", promoted.stderr);
    assert!(host.get(&host.production_host("web"), "/").1.contains(&v2));
    let status = host.nx_as(&token, &["--json", "status", "web"]);
    assert!(status.ok, "{}", status.stderr);

    // 403, saying what it may do, for everything else.
    let refusals: Vec<Vec<&str>> = vec![
        vec!["push", sample.to_str().unwrap(), "--sandbox", "other"],
        vec!["sandbox", "rm", "web"],
        vec!["token", "create", "--sandbox", "web"],
        vec!["token", "ls"],
        vec!["rollback", "web"],
        vec!["logs", &web_v1],
        vec!["db", "url", "web"],
        vec!["ls"],
    ];
    for args in refusals {
        let out = host.nx_as(&token, &args);
        assert!(!out.ok, "nx {args:?} was allowed");
        assert!(
            out.stderr.contains(&format!(
                "this token (id {id}) may push,promote on sandbox web"
            )),
            "nx {args:?}: {}",
            out.stderr
        );
    }
    // Nothing of it happened.
    assert_eq!(host.nx_json(&["status", "web"])[0]["promoted"], v2.as_str());
    assert_eq!(
        host.nx_json(&["status", "other"])[0]["deployments"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Removed: 401.
    host.nx_json(&["token", "rm", &id]);
    // Removing it again, or a name that is no token id (a NUL byte PostgreSQL would refuse):
    // 404 naming `nx token ls`, not a server error.
    for path in [format!("/v1/tokens/{id}"), "/v1/tokens/%00".to_owned()] {
        let (status, body) = call(&host, &host.token, "DELETE", &path, None);
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body.contains("nx token ls"), "{path}: {body}");
    }
    let out = host.nx_as(&token, &["status", "web"]);
    assert!(
        !out.ok && out.stderr.contains("wrong or removed API token"),
        "{}",
        out.stderr
    );
    assert_eq!(call(&host, &token, "GET", "/v1/health", None).0, 401);

    // Expired: 401 that says so.
    let (expiring, _) = create(&host, &["--sandbox", "web", "--expires", "1s"]);
    assert_eq!(
        call(&host, &expiring, "GET", "/v1/sandboxes/web", None).0,
        200
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (status, body) = call(&host, &expiring, "GET", "/v1/sandboxes/web", None);
    assert_eq!(status, 401);
    assert!(body.contains("expired"), "{body}");

    // The store holds hashes: no token, not even the removed one, is anywhere in nxd's database (`nx`).
    let dump = Command::new("pg_dump")
        .arg("-h")
        .arg(host.path("postgres/socket"))
        .args(["-U", "postgres", "nx"])
        .output()
        .expect("pg_dump");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.contains("deploy_tokens"),
        "the dump has the token table"
    );
    for t in [&token, &expiring] {
        let secret = t.rsplit('_').next().unwrap();
        assert!(
            !dump.contains(secret),
            "a token is in nxd's database in clear"
        );
    }
    assert!(dump.contains(&nx_testkit::sha256_hex(expiring.as_bytes())));
}

/// (method, path, body, the verb a deploy token needs or None for root-only / any token,
/// the sandbox it acts on).
type Route = (&'static str, String, Option<String>, Need);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Need {
    AnyToken,
    Root,
    /// A verb (one of them), on sandbox `web` (or on no sandbox).
    Verb(&'static [&'static str], bool),
    /// A verb, on every sandbox: only a token for every sandbox.
    Every,
}

/// Every route of the API. Requests that pass are shaped to fail harmlessly after the
/// check (unknown artifacts, backup ids and deployments), except the few that must act.
fn routes(sandbox: &str, deployment: &str, victim: &str) -> Vec<Route> {
    let zeros = "0".repeat(64);
    let s = sandbox;
    let web = |v: &'static [&'static str]| Need::Verb(v, true);
    vec![
        ("GET", "/v1/health".into(), None, Need::AnyToken),
        ("GET", "/v1/sftp/host-key".into(), None, Need::AnyToken),
        (
            "GET",
            format!("/v1/artifacts/{zeros}"),
            None,
            Need::Verb(&["push", "tasks"], false),
        ),
        (
            "PUT",
            format!("/v1/artifacts/{zeros}"),
            None,
            Need::Verb(&["push", "tasks"], false),
        ),
        (
            "GET",
            format!("/v1/blobs/{zeros}"),
            None,
            Need::Verb(&["push"], false),
        ),
        (
            "PUT",
            format!("/v1/blobs/{zeros}"),
            None,
            Need::Verb(&["push"], false),
        ),
        (
            "POST",
            "/v1/blobs/missing".into(),
            Some(r#"{"sha256":[]}"#.into()),
            Need::Verb(&["push"], false),
        ),
        (
            "POST",
            "/v1/bundles".into(),
            Some(r#"{"entry":"x","files":[]}"#.into()),
            Need::Verb(&["push"], false),
        ),
        (
            "POST",
            "/v1/deployments".into(),
            Some(format!(r#"{{"sandbox":"{s}","artifact":"{zeros}"}}"#)),
            web(&["push"]),
        ),
        (
            "GET",
            format!("/v1/deployments/{deployment}/logs?lines=1"),
            None,
            web(&["logs"]),
        ),
        (
            "POST",
            format!("/v1/deployments/{victim}/start"),
            None,
            web(&["push"]),
        ),
        (
            "POST",
            format!("/v1/deployments/{victim}/stop"),
            None,
            web(&["push"]),
        ),
        (
            "DELETE",
            format!("/v1/deployments/{victim}"),
            None,
            web(&["push"]),
        ),
        ("GET", "/v1/sandboxes".into(), None, Need::Every),
        (
            "POST",
            "/v1/sandboxes".into(),
            Some(format!(r#"{{"name":"{s}"}}"#)),
            web(&["push"]),
        ),
        ("GET", format!("/v1/sandboxes/{s}"), None, web(&VERBS)),
        ("DELETE", format!("/v1/sandboxes/{s}"), None, Need::Root),
        (
            "GET",
            format!("/v1/sandboxes/{s}/settings"),
            None,
            web(&VERBS),
        ),
        (
            "PUT",
            format!("/v1/sandboxes/{s}/settings"),
            Some("{}".into()),
            web(&["push"]),
        ),
        (
            "POST",
            format!("/v1/sandboxes/{s}/promote"),
            Some(r#"{"deployment":"zzzzzzzz"}"#.into()),
            web(&["promote"]),
        ),
        (
            "POST",
            format!("/v1/sandboxes/{s}/rollback"),
            None,
            web(&["rollback"]),
        ),
        ("GET", format!("/v1/sandboxes/{s}/db"), None, web(&["db"])),
        (
            "GET",
            format!("/v1/sandboxes/{s}/db/backups"),
            None,
            web(&["db"]),
        ),
        (
            "POST",
            format!("/v1/sandboxes/{s}/db/backups"),
            None,
            web(&["db"]),
        ),
        (
            "GET",
            format!("/v1/sandboxes/{s}/db/backups/19700101T000000000Z"),
            None,
            web(&["db"]),
        ),
        (
            "DELETE",
            format!("/v1/sandboxes/{s}/db/backups/19700101T000000000Z"),
            None,
            web(&["db"]),
        ),
        (
            "POST",
            format!("/v1/sandboxes/{s}/db/restore?backup=19700101T000000000Z"),
            None,
            web(&["db"]),
        ),
        ("GET", format!("/v1/sandboxes/{s}/keys"), None, Need::Root),
        (
            "POST",
            format!("/v1/sandboxes/{s}/keys"),
            Some(r#"{"public_key":"x"}"#.into()),
            Need::Root,
        ),
        (
            "DELETE",
            format!("/v1/sandboxes/{s}/keys?key=SHA256:x"),
            None,
            Need::Root,
        ),
        (
            "POST",
            "/v1/tasks".into(),
            Some(format!(r#"{{"artifact":"{zeros}"}}"#)),
            Need::Verb(&["tasks"], false),
        ),
        ("GET", "/v1/tokens".into(), None, Need::Root),
        ("POST", "/v1/tokens".into(), Some("{}".into()), Need::Root),
        ("DELETE", "/v1/tokens/nosuchid".into(), None, Need::Root),
    ]
}

#[test]
fn every_route_with_every_verb_on_its_sandbox_and_on_another() {
    let host = Host::start();
    let web = host.push_sample("web", &[]);
    let web_victim = host.push_sample("web", &[]);
    let other = host.push_sample("other", &[]);
    let other_victim = host.push_sample("other", &[]);
    let one_verb: Vec<(&str, String)> = VERBS
        .iter()
        .map(|v| (*v, create(&host, &["--sandbox", "web", "--can", v]).0))
        .collect();
    let all_on_web = create(&host, &["--sandbox", "web", "--can", &VERBS.join(",")]).0;
    let everywhere: Vec<(&str, String)> = VERBS
        .iter()
        .map(|v| (*v, create(&host, &["--can", v]).0))
        .collect();
    let mut checked = 0;
    let allowed = |status: u16| status != 401 && status != 403;
    // Another sandbox first: nothing passes, so nothing changes.
    for (method, path, body, need) in routes("other", &other, &other_victim) {
        let expect = match need {
            Need::AnyToken => true,
            Need::Verb(_, false) => continue, // no sandbox: checked below
            _ => false,
        };
        let web_tokens = one_verb.iter().map(|(_, t)| t).chain([&all_on_web]);
        for token in web_tokens {
            let (status, text) = call(&host, token, method, &path, body.as_deref());
            assert_eq!(
                allowed(status),
                expect,
                "{method} {path} with a token for web: {status} {text}"
            );
            if !expect {
                assert_eq!(status, 403, "{method} {path}: {text}");
                assert!(text.contains("on sandbox web; this needs"), "{text}");
            }
            checked += 1;
        }
    }
    for (method, path, body, need) in routes("web", &web, &web_victim) {
        // (label, token, may it?), those that may last: a passing DELETE removes the victim.
        let mut tries: Vec<(String, &str, bool)> = Vec::new();
        for (verb, token) in &everywhere {
            let expect = match need {
                Need::AnyToken | Need::Every => true,
                Need::Root => false,
                Need::Verb(verbs, _) => verbs.contains(verb),
            };
            // Tokens for every sandbox pass only where that changes nothing.
            if method == "GET" || !expect {
                tries.push((format!("`{verb}` everywhere"), token, expect));
            }
        }
        for (verb, token) in &one_verb {
            let expect = match need {
                Need::AnyToken => true,
                Need::Root | Need::Every => false,
                Need::Verb(verbs, _) => verbs.contains(verb),
            };
            tries.push((format!("`{verb}` on web"), token, expect));
        }
        tries.sort_by_key(|(_, _, expect)| *expect);
        for (label, token, expect) in tries {
            let (status, text) = call(&host, token, method, &path, body.as_deref());
            assert_eq!(
                allowed(status),
                expect,
                "{method} {path} with {label}: {status} {text}"
            );
            if !expect {
                assert_eq!(status, 403, "{method} {path} with {label}: {text}");
                assert!(text.contains("this token (id "), "{text}");
            }
            checked += 1;
        }
    }
    assert!(checked > 300, "{checked} checks");
    // The root token may call the root-only routes (read-only ones here).
    assert_eq!(call(&host, &host.token, "GET", "/v1/tokens", None).0, 200);
    assert_eq!(
        call(&host, &host.token, "GET", "/v1/sandboxes/web/keys", None).0,
        200
    );
    // The other sandbox was left alone.
    let other_view = host.nx_json(&["status", "other"]);
    assert_eq!(other_view[0]["deployments"].as_array().unwrap().len(), 2);
}

/// Attacker s8 F15 and s7 F8: `nx logs -f` ends once its deploy token is removed (it went on
/// streaming to a revoked token), and once its deployment is removed (it hung for ever); the
/// root token's follow is not ended by another's token.
#[test]
fn a_followed_log_ends_when_its_token_or_its_deployment_goes() {
    use std::process::{Child, Stdio};
    use std::time::{Duration, Instant};
    let host = Host::start();
    let id = host.push_sample("web", &[]);
    let (token, token_id) = create(&host, &["--sandbox", "web", "--can", "logs"]);
    let follow = |token: &str| {
        host.nx_command(token, &["logs", "-f", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nx logs -f")
    };
    let ends = |child: &mut Child, after: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().expect("its status").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("nx logs -f still ran 10 s {after}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let (mut by_token, mut by_root) = (follow(&token), follow(&host.token));
    std::thread::sleep(Duration::from_secs(3));
    assert!(by_token.try_wait().unwrap().is_none(), "it ended by itself");
    host.nx_json(&["token", "rm", &token_id]);
    ends(&mut by_token, "after `nx token rm`");
    assert!(by_root.try_wait().unwrap().is_none(), "root's follow ended");
    host.nx_json(&["rm", &id]);
    ends(&mut by_root, "after `nx rm` of its deployment");
}

/// Attacker s11 G7: every token of a sandbox, `--can logs` included, read the values of the
/// sandbox's settings' environment, where API keys go. Only the root token and tokens that may
/// push (which may set them, and whose deployments run with them) read them; the others read
/// the names.
#[test]
fn only_the_root_token_and_push_tokens_read_the_settings_env_values() {
    let host = Host::start();
    host.nx_json(&["sandbox", "create", "victim"]);
    host.nx_json(&[
        "sandbox",
        "set",
        "victim",
        "-e",
        "STRIPE_KEY=sk_live_secret123",
    ]);
    let path = "/v1/sandboxes/victim/settings";
    let env_value = |token: &str| {
        let (status, body) = call(&host, token, "GET", path, None);
        assert_eq!(status, 200, "{body}");
        let settings: serde_json::Value = serde_json::from_str(&body).unwrap();
        settings["env"]["STRIPE_KEY"].as_str().unwrap().to_owned()
    };
    assert_eq!(env_value(&host.token), "sk_live_secret123");
    let hidden = "(hidden: only a token with the push verb reads it)";
    for verb in VERBS {
        let (token, _) = create(&host, &["--sandbox", "victim", "--can", verb]);
        let want = if verb == "push" {
            "sk_live_secret123"
        } else {
            hidden
        };
        assert_eq!(env_value(&token), want, "a {verb} token");
    }
    let (everywhere, _) = create(&host, &["--can", "logs,db,promote,rollback,tasks"]);
    assert_eq!(env_value(&everywhere), hidden);
    // As `nx sandbox set` shows them.
    let (logs, _) = create(&host, &["--sandbox", "victim", "--can", "logs"]);
    let shown = host.nx_as(&logs, &["sandbox", "set", "victim"]);
    assert!(
        shown.ok && shown.stdout.contains(&format!("env STRIPE_KEY={hidden}")),
        "{}{}",
        shown.stdout,
        shown.stderr
    );
    assert!(!shown.stdout.contains("sk_live"), "{}", shown.stdout);
}

/// Attacker s11 (low): a CI matrix pushing one new build with a new token at once: every
/// push asks nxd, gets 404 (its sandbox does not own the file yet) and uploads; a push whose
/// upload check came after another's upload found the file stored and gave up with "no
/// artifact ... upload it first" (4 of 10). Every push runs.
#[test]
fn concurrent_first_pushes_of_one_file_with_a_new_token_all_run() {
    const PUSHES: usize = 8;
    let host = Host::start();
    host.nx_json(&["sandbox", "create", "matrix"]);
    let (token, _) = create(&host, &["--sandbox", "matrix", "--can", "push"]);
    let sample = nx_testkit::sample_app();
    let outs: Vec<_> = std::thread::scope(|s| {
        let pushes: Vec<_> = (0..PUSHES)
            .map(|_| {
                s.spawn(|| {
                    host.nx_as(
                        &token,
                        &["push", sample.to_str().unwrap(), "--sandbox", "matrix"],
                    )
                })
            })
            .collect();
        pushes.into_iter().map(|p| p.join().unwrap()).collect()
    });
    let failed: Vec<_> = outs.iter().filter(|o| !o.ok).map(|o| &o.stderr).collect();
    assert!(
        failed.is_empty(),
        "{} of {PUSHES} failed: {failed:?}",
        failed.len()
    );
}
