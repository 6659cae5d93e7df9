//! The GitHub Action (action.yml, action/nx-deploy.sh) run here the way a runner runs it: with
//! the environment GitHub gives a step, against a real test host, installing nx from a release
//! directory with its SHA256SUMS. And the workflows lint clean with actionlint (and the script
//! with shellcheck).

use nx_testkit::Host;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tool(name: &str) -> Command {
    let which = Command::new("which").arg(name).output().expect("which");
    assert!(
        which.status.success(),
        "{name} is needed for this test: bash orchestrator/install-deps.sh installs it"
    );
    Command::new(name)
}

#[test]
fn the_workflows_and_the_action_script_lint_clean() {
    let out = tool("actionlint")
        .current_dir(repo())
        .args(["-shellcheck", "shellcheck"])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "actionlint:\n{said}");
    let workflows = std::fs::read_dir(repo().join(".github/workflows"))
        .unwrap()
        .count();
    assert!(
        workflows >= 2,
        "the release and the deploy workflows are there"
    );
    let out = tool("shellcheck")
        .arg(repo().join("action/nx-deploy.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shellcheck:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A release of nx as the action downloads it: `<dir>/<version>/nx-<target>` and SHA256SUMS.
fn release(dir: &Path, version: &str, tamper: bool) -> String {
    let at = dir.join(version);
    std::fs::create_dir_all(&at).unwrap();
    let name = "nx-x86_64-unknown-linux-musl";
    let bytes = std::fs::read(nx_testkit::bin("nx")).unwrap();
    let sum = nx_testkit::sha256_hex(&bytes);
    let mut shipped = bytes;
    if tamper {
        shipped.extend_from_slice(b"tampered");
    }
    std::fs::write(at.join(name), shipped).unwrap();
    std::fs::write(at.join("SHA256SUMS"), format!("{sum}  {name}\n")).unwrap();
    format!("file://{}", dir.display())
}

struct Run {
    out: Output,
    outputs: BTreeMap<String, String>,
}

/// Runs the action's script with what a runner sets for a step of `event` on `git_ref`.
fn run_action(
    host: &Host,
    token: &str,
    work: &Path,
    releases: &str,
    event: &str,
    git_ref: &str,
) -> Run {
    let runner_temp = work.join(format!("runner-{event}"));
    std::fs::create_dir_all(&runner_temp).unwrap();
    let output_file = runner_temp.join("output");
    let payload = runner_temp.join("event.json");
    let mut body = serde_json::json!({ "repository": { "default_branch": "main" } });
    if event == "pull_request" {
        body["pull_request"] = serde_json::json!({ "number": 7 });
    }
    std::fs::write(&payload, body.to_string()).unwrap();
    std::fs::write(&output_file, "").unwrap();
    let out = Command::new("bash")
        .arg(repo().join("action/nx-deploy.sh"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", work)
        .envs([
            ("GITHUB_ACTIONS", "true"),
            ("CI", "true"),
            ("GITHUB_EVENT_NAME", event),
            ("GITHUB_REF", git_ref),
            ("GITHUB_REPOSITORY", "example/app"),
            ("GITHUB_SHA", "0123456789abcdef0123456789abcdef01234567"),
            ("RUNNER_OS", "Linux"),
            ("RUNNER_ARCH", "X64"),
            ("NX_ACTION_HOST", &format!("http://{}", host.api)),
            ("NX_ACTION_TOKEN", token),
            ("NX_ACTION_SANDBOX", "web"),
            (
                "NX_ACTION_BINARY",
                nx_testkit::sample_app().to_str().unwrap(),
            ),
            ("NX_ACTION_ENV", &format!("APP_VERSION={event}\n")),
            ("NX_ACTION_PROMOTE", "auto"),
            ("NX_ACTION_VERSION", "v0.1.0"),
            ("NX_ACTION_RELEASES_URL", releases),
        ])
        .env("GITHUB_EVENT_PATH", &payload)
        .env("GITHUB_OUTPUT", &output_file)
        .env("GITHUB_STEP_SUMMARY", runner_temp.join("summary"))
        .env("RUNNER_TEMP", &runner_temp)
        .output()
        .unwrap();
    let outputs = std::fs::read_to_string(&output_file)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Run { out, outputs }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_action_previews_pull_requests_and_promotes_the_default_branch() {
    let host = Host::start();
    host.nx_json(&["sandbox", "create", "web"]);
    let created = host.nx_json(&[
        "token",
        "create",
        "--sandbox",
        "web",
        "--can",
        "push,promote",
    ]);
    let token = created["token"].as_str().unwrap().to_owned();
    let work = host.path("action");
    let releases = release(&work.join("releases"), "v0.1.0", false);

    // A pull request: a preview, not promoted.
    let pr = run_action(
        &host,
        &token,
        &work,
        &releases,
        "pull_request",
        "refs/pull/7/merge",
    );
    assert!(pr.out.status.success(), "{}", text(&pr.out));
    let id = pr.outputs["deployment-id"].clone();
    let preview = pr.outputs["preview-url"].clone();
    assert!(preview.contains(&id), "{preview}");
    assert_eq!(pr.outputs["promoted"], "false");
    assert!(
        text(&pr.out).contains(&format!("deployment-id={id}")),
        "printed: {}",
        text(&pr.out)
    );
    assert!(text(&pr.out).contains(&format!("preview-url={preview}")));
    // Only in GitHub's masking command, which hides it everywhere else in the log.
    let printed = text(&pr.out);
    let shown: Vec<&str> = printed.lines().filter(|l| l.contains(&token)).collect();
    assert_eq!(
        shown,
        [format!("::add-mask::{token}")],
        "the token is printed"
    );
    assert_eq!(
        host.get(&host.preview_host("web", &id), "/"),
        (200, format!("nx-sample pull_request deployment={id}\n"))
    );
    assert_eq!(host.get(&host.production_host("web"), "/").0, 404);

    // A push to the default branch: promoted.
    let main = run_action(&host, &token, &work, &releases, "push", "refs/heads/main");
    assert!(main.out.status.success(), "{}", text(&main.out));
    let id2 = main.outputs["deployment-id"].clone();
    assert_ne!(id, id2);
    assert_eq!(main.outputs["promoted"], "true");
    assert!(main.outputs["production-url"].contains("web."));
    assert_eq!(
        host.get(&host.production_host("web"), "/").1,
        format!("nx-sample push deployment={id2}\n")
    );

    // Another branch: a preview only.
    let branch = run_action(
        &host,
        &token,
        &work,
        &releases,
        "push",
        "refs/heads/feature",
    );
    assert!(branch.out.status.success(), "{}", text(&branch.out));
    assert_eq!(branch.outputs["promoted"], "false");
    assert!(host.get(&host.production_host("web"), "/").1.contains(&id2));

    // A release whose binary does not match its SHA256SUMS is not run.
    let tampered = release(&work.join("tampered"), "v0.1.0", true);
    let bad = run_action(&host, &token, &work, &tampered, "push", "refs/heads/main");
    assert!(!bad.out.status.success());
    assert!(
        text(&bad.out).contains("refusing to run it"),
        "{}",
        text(&bad.out)
    );
    assert!(bad.outputs.is_empty());
    assert_eq!(
        host.nx_json(&["status", "web"])[0]["deployments"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}
