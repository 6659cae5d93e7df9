//! What one tenant may keep in the content store (attacker s10 F2): stored content that no
//! deployment runs is deleted once unused for `store.unused_grace_secs` (not what a push or a
//! task in flight needs, not after a crash mid-way), and one owner holds at most
//! `store.max_owner_mb`; past it an upload gets 507 saying what to do.

use nx_testkit::{files_under, sha256_hex, Host};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Unused content goes after 2 s; the collection runs every second.
const GRACE: &str = "[store]\nunused_grace_secs = 2\n";

/// Creates a deploy token with the root token.
fn token(host: &Host, sandbox: &str, can: &str) -> String {
    let out = host.nx_json(&["token", "create", "--sandbox", sandbox, "--can", can]);
    out["token"].as_str().expect("token").to_owned()
}

/// `bytes` of pseudo-random content (a different `seed`, different bytes).
fn noise(bytes: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A bundle directory: the static sample app as `server` and `www/page.html`.
fn bundle_dir(at: &Path) {
    std::fs::create_dir_all(at.join("www")).unwrap();
    std::fs::copy(nx_testkit::sample_app(), at.join("server")).unwrap();
    std::fs::set_permissions(at.join("server"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(at.join("www/page.html"), b"<p>kept</p>\n").unwrap();
}

/// The files of the store's directories (blobs, bundles, executables, artifacts), as paths
/// relative to the state dir, work in progress (`.incoming`) left out.
fn stored(host: &Host) -> Vec<String> {
    let root = host.path("");
    ["artifacts", "blobs", "bundles", "executables"]
        .iter()
        .flat_map(|dir| files_under(&host.path(dir)))
        .filter(|path| !path.contains("/.incoming/"))
        .map(|path| {
            let relative = path.trim_start_matches(root.to_str().unwrap());
            relative.trim_start_matches('/').to_owned()
        })
        .collect()
}

/// Waits up to 30 s for `done`, polling every 200 ms.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what}: not within 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pushed(out: &serde_json::Value) -> String {
    out["deployment"]["id"].as_str().expect("id").to_owned()
}

#[test]
fn content_no_deployment_runs_is_deleted_after_its_grace_and_what_deployments_run_stays() {
    let host = Host::start_with(GRACE);
    let sample = std::fs::read(nx_testkit::sample_app()).unwrap();
    let sample_sha = sha256_hex(&sample);
    let kept = host.push_sample("keep", &["--disk", "0"]);
    // Production and the deployment a rollback returns to stay, stopped or not.
    let previous = host.push_sample("keep", &["--disk", "0"]);
    assert!(host.nx(&["promote", "keep", &kept]).ok);
    assert!(host.nx(&["promote", "keep", &previous]).ok);
    assert!(host.nx(&["stop", &kept]).ok);
    // A bundle in a sandbox that goes, and a blob a tenant uploaded and never used.
    let dir = host.path("bundle");
    bundle_dir(&dir);
    let out = host.nx_json(&[
        "push",
        dir.to_str().unwrap(),
        "-s",
        "gone",
        "--entry",
        "server",
    ]);
    pushed(&out);
    let tenant = token(&host, "keep", "push");
    let unused = noise(1 << 20, 1);
    let unused_sha = sha256_hex(&unused);
    let path = format!("/v1/blobs/{unused_sha}");
    assert_eq!(
        host.call(&tenant, "PUT", &path, Some(unused.clone())).0,
        200
    );
    let before = stored(&host);
    assert!(
        before.iter().any(|f| f.ends_with(&unused_sha)),
        "{before:?}"
    );
    assert!(
        before.iter().any(|f| f.starts_with("executables/")),
        "{before:?}"
    );

    assert!(host.nx(&["sandbox", "rm", "gone", "--no-backup"]).ok);
    // What remains: the sample both deployments of `keep` run; nothing of the bundle or blob.
    let want = vec![format!("artifacts/{sample_sha}")];
    wait_until("the unused content deleted", || stored(&host) == want);
    assert_eq!(host.call(&tenant, "GET", &path, None).0, 404);
    // The stopped deployment starts from its program, and the blob can be stored again.
    assert!(
        host.nx(&["rollback", "keep"]).ok,
        "rollback to the stopped deployment"
    );
    assert_eq!(host.get(&host.production_host("keep"), "/health").0, 200);
    assert_eq!(host.call(&tenant, "PUT", &path, Some(unused)).0, 200);
    assert_eq!(host.call(&tenant, "GET", &path, None).0, 200);
}

/// A push of a program the collection has just found unused, made while that collection runs
/// (held 8 s at the fail point `store::referenced`, after it read which programs deployments
/// run; it runs at nxd's start): the program stays, and the deployment starts from it later.
#[test]
fn a_push_during_a_collection_keeps_its_program() {
    let mut host = Host::start_with(GRACE);
    let sample = std::fs::read(nx_testkit::sample_app()).unwrap();
    let artifact = host.path("artifacts").join(sha256_hex(&sample));
    let first = host.push_sample("race", &["--disk", "0"]);
    assert!(host.nx(&["rm", &first]).ok);
    // Unused from now on: its grace passes while nxd restarts, and the restarted nxd's first
    // collection finds it so and waits.
    host.restart_nxd_with_failpoints("store::referenced=return(8000)");
    let sample_path = nx_testkit::sample_app();
    let out = host.nx_json(&[
        "push",
        sample_path.to_str().unwrap(),
        "-s",
        "race",
        "--disk",
        "0",
    ]);
    assert_eq!(
        out["uploaded"], false,
        "the program was gone before the push: {out}"
    );
    let second = pushed(&out);
    // That collection, and the next ones, are over.
    std::thread::sleep(Duration::from_secs(10));
    assert!(artifact.is_file(), "the pushed program was deleted");
    assert!(
        host.nxd_log().contains("fail point: waiting"),
        "no collection was held"
    );
    assert!(host.nx(&["stop", &second]).ok);
    assert!(host.nx(&["start", &second]).ok);
    assert_eq!(
        host.get(&host.preview_host("race", &second), "/health").0,
        200
    );
}

/// kill -9 of nxd between a collection's renames and its deletions: the next nxd deletes what
/// was left, and a push of the same bundle stores it again.
#[test]
fn a_collection_cut_by_kill_9_is_finished_by_the_next_nxd() {
    let mut host = Host::start_with(GRACE);
    let dir = host.path("bundle");
    bundle_dir(&dir);
    let push = [
        "push",
        dir.to_str().unwrap(),
        "-s",
        "cut",
        "--entry",
        "server",
    ];
    let first = pushed(&host.nx_json(&push));
    host.restart_nxd_crashing_at("store::collected");
    // Without a deployment its bundle is unused; the collection dies mid-way.
    let _ = host.nx(&["rm", &first]);
    let status = host.wait_nxd_exit();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "nxd did not die at store::collected: {status}"
    );
    let left: Vec<String> = ["artifacts", "blobs", "bundles", "executables"]
        .iter()
        .flat_map(|d| files_under(&host.path(d).join(".incoming")))
        .collect();
    assert!(left.iter().any(|f| f.contains("/gc-")), "{left:?}");
    host.restart_nxd();
    wait_until("the cut collection finished", || {
        ["artifacts", "blobs", "bundles", "executables"]
            .iter()
            .all(|d| files_under(&host.path(d).join(".incoming")).is_empty())
    });
    let second = host.nx_json(&push);
    assert!(second["sent"]["files"].as_u64().unwrap() > 0, "{second}");
    let id = pushed(&second);
    assert_eq!(
        host.get(
            &host.preview_host("cut", &id),
            "/read?path=/app/www/page.html"
        ),
        (200, "<p>kept</p>\n".into())
    );
}

#[test]
fn one_owner_holds_at_most_max_owner_mb_and_is_told_what_to_do() {
    let host = Host::start_with("[store]\nmax_owner_mb = 4\n");
    // The sample it runs counts (pushed by root: granted to the sandbox, which must exist for
    // its token to own uploads).
    host.push_sample("full", &["--disk", "0"]);
    let tenant = token(&host, "full", "push");
    let put = |token: &str, bytes: Vec<u8>| {
        let path = format!("/v1/blobs/{}", sha256_hex(&bytes));
        host.call(token, "PUT", &path, Some(bytes))
    };
    let sample = std::fs::metadata(nx_testkit::sample_app()).unwrap().len();
    assert!(sample < 3 << 20, "the sample is {sample} bytes");
    let (status, body) = put(&tenant, noise(3 << 20, 2));
    assert_eq!(status, 507, "{body}");
    let held = sample.div_ceil(1 << 20);
    assert!(
        body.contains(&format!(
            "sandbox full holds {held} MiB of stored content and may hold 4 MiB (store.max_owner_mb)"
        )) && body.contains("nothing was stored")
            && body.contains("nx rm"),
        "{body}"
    );
    // What fits is stored; the same bytes again cost nothing more.
    let small = noise(256 << 10, 3);
    assert_eq!(put(&tenant, small.clone()).0, 200);
    assert_eq!(put(&tenant, small).0, 200);
    // Another sandbox has a cap of its own.
    host.push_sample("other", &["--disk", "0"]);
    let other = token(&host, "other", "push");
    assert_eq!(put(&other, noise(1 << 20, 4)).0, 200);
}

/// Newcomer17 N11: a bundle's tree counts toward its owner's room (its directories and links;
/// its files count as blobs): before, a tree counted as nothing, and one push token's bundles of
/// 49,990 one-file directories laid out 208 MB and 50,000 inodes each. Here trees of one-file
/// directories fill a sandbox's room, and the one past it is refused with 507 and laid out
/// nowhere; the same bundle again costs nothing more. Review17 #3: a directory counts what the
/// filesystem provides per inode (about 16 KiB on ext4), not 4 KiB.
#[test]
fn bundle_trees_count_toward_their_owners_room_and_one_past_it_lays_out_nothing() {
    use serde_json::json;
    let host = Host::start_with("[store]\nmax_owner_mb = 8\n");
    host.push_sample("trees", &["--disk", "0"]);
    let tenant = token(&host, "trees", "push");
    let sample = std::fs::read(nx_testkit::sample_app()).unwrap();
    let (sample_sha, empty_sha) = (sha256_hex(&sample), sha256_hex(b""));
    for (sha, bytes) in [(&sample_sha, sample.clone()), (&empty_sha, Vec::new())] {
        let (status, body) = host.call(&tenant, "PUT", &format!("/v1/blobs/{sha}"), Some(bytes));
        assert_eq!(status, 200, "{body}");
    }
    // Held: the sample as the pushed program and as a blob.
    let room = (8u64 << 20) - 2 * sample.len() as u64;
    // A directory costs its inode here (the filesystem's bytes per inode, at least a 4 KiB
    // block), its entry (16 bytes) and its file's (12): each tree takes 2/5 of the room, so
    // two fit and the third does not.
    let fs = nix::sys::statvfs::statvfs(host.state_dir.path()).unwrap();
    let per_inode = (fs.blocks() * fs.fragment_size() / fs.files()).max(4096);
    let dirs = room * 2 / 5 / (per_inode + 28);
    eprintln!("{per_inode} bytes an inode: trees of {dirs} directories");
    let manifest = |prefix: &str| {
        let mut files = vec![
            json!({"path": "app", "sha256": sample_sha, "size": sample.len(), "executable": true}),
        ];
        files.extend((0..dirs).map(|i| {
            json!({"path": format!("{prefix}{i:05}/f"), "sha256": empty_sha, "size": 0, "executable": false})
        }));
        json!({"entry": "app", "files": files, "links": []})
    };
    let post = |m: &serde_json::Value| {
        host.call(
            &tenant,
            "POST",
            "/v1/bundles",
            Some(m.to_string().into_bytes()),
        )
    };
    let laid_out = || {
        std::fs::read_dir(host.state_dir.path().join("bundles"))
            .unwrap()
            .filter(|e| {
                let e = e.as_ref().unwrap();
                e.file_type().unwrap().is_dir() && !e.file_name().to_string_lossy().starts_with('.')
            })
            .count()
    };
    for prefix in ["d", "e"] {
        let (status, body) = post(&manifest(prefix));
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(laid_out(), 2);
    let (status, body) = post(&manifest("g"));
    assert_eq!(
        status, 507,
        "a third tree of {dirs} directories was laid out: {body}"
    );
    assert!(
        body.contains("sandbox trees holds")
            && body.contains("(store.max_owner_mb)")
            && body.contains("nothing was stored"),
        "{body}"
    );
    assert_eq!(laid_out(), 2, "the refused tree was laid out");
    let (status, body) = post(&manifest("d"));
    assert_eq!(status, 200, "the same bundle again: {body}");
}

/// A body that gives its first half at once and the rest `pause` later: uploads sent with it at
/// the same moment are all under way at once.
struct Halting {
    bytes: Vec<u8>,
    sent: usize,
    pause: Duration,
}

impl std::io::Read for Halting {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let half = self.bytes.len() / 2;
        if self.sent == half && !self.pause.is_zero() {
            std::thread::sleep(std::mem::take(&mut self.pause));
        }
        let end = if self.sent < half {
            half
        } else {
            self.bytes.len()
        };
        let n = buf.len().min(end - self.sent);
        buf[..n].copy_from_slice(&self.bytes[self.sent..self.sent + n]);
        self.sent += n;
        Ok(n)
    }
}

/// Uploads of one owner at once share its room (attacker s12 M4: six at once each saw the room
/// as it was when they began, and stored 913 MiB under a 200 MiB cap): each reserves its
/// Content-Length before its body, so only those that fit together are stored.
#[test]
fn uploads_of_one_owner_at_once_share_its_room() {
    let host = Host::start_with("[store]\nmax_owner_mb = 8\n");
    host.push_sample("shared", &["--disk", "0"]);
    let tenant = token(&host, "shared", "push");
    let sample = std::fs::metadata(nx_testkit::sample_app()).unwrap().len();
    // Four files of 5/12 of the room the sample leaves each: two fit beside it, three do not.
    let size = ((8 << 20) - sample) * 5 / 12;
    let files: Vec<Vec<u8>> = (0..4).map(|i| noise(size as usize, 20 + i)).collect();
    let put = |bytes: &[u8]| {
        let body = reqwest::blocking::Body::sized(
            Halting {
                bytes: bytes.to_vec(),
                sent: 0,
                pause: Duration::from_secs(3),
            },
            bytes.len() as u64,
        );
        host.http()
            .put(format!(
                "http://{}/v1/blobs/{}",
                host.api,
                sha256_hex(bytes)
            ))
            .bearer_auth(&tenant)
            .body(body)
            .send()
            .map(|r| r.status().as_u16())
            // An upload refused before its body may see its connection closed mid-body.
            .unwrap_or(0)
    };
    let answers: Vec<u16> = std::thread::scope(|s| {
        let uploads: Vec<_> = files.iter().map(|f| s.spawn(|| put(f))).collect();
        uploads.into_iter().map(|u| u.join().unwrap()).collect()
    });
    let stored: Vec<bool> = files
        .iter()
        .map(|f| {
            let path = format!("/v1/blobs/{}", sha256_hex(f));
            host.call(&tenant, "GET", &path, None).0 == 200
        })
        .collect();
    assert_eq!(
        stored.iter().filter(|s| **s).count(),
        2,
        "answers {answers:?}, stored {stored:?}"
    );
    for (answer, stored) in answers.iter().zip(&stored) {
        assert_eq!(*stored, *answer == 200, "answers {answers:?}");
        assert!(matches!(answer, 200 | 507 | 0), "answers {answers:?}");
    }
    // The room the two took stays taken: a refused file does not fit now either.
    let refused = files
        .iter()
        .zip(&stored)
        .find_map(|(f, stored)| (!stored).then_some(f))
        .expect("a refused file");
    let (status, body) = host.call(
        &tenant,
        "PUT",
        &format!("/v1/blobs/{}", sha256_hex(refused)),
        Some(refused.clone()),
    );
    assert_eq!(status, 507, "{body}");
    assert!(body.contains("may hold 8 MiB"), "{body}");
}

/// An image archive that fits its owner's room but whose layers unpack past it is refused, and
/// nothing of it stays in the store (attacker s13 H3b: each refusal said "nothing was stored"
/// and left the archive there, unowned, for an hour: a push token grew the store without
/// bound).
#[test]
fn an_image_past_its_owners_room_unpacked_leaves_nothing_in_the_store() {
    let host = Host::start_with("[store]\nmax_owner_mb = 8\n");
    host.push_sample("img", &["--disk", "0"]);
    let tenant = token(&host, "img", "push");
    let before = stored(&host);
    let app = std::fs::read(nx_testkit::sample_app()).unwrap();
    for i in 0..3 {
        // About 1 MiB, 16 MiB of zeros and the app unpacked: past the room the sample left.
        let archive = nx_artifact::image::tests::oci_archive_gz(&format!("big{i}"), &app, 16 << 20);
        assert!(archive.len() < 4 << 20, "{} bytes", archive.len());
        let path = format!("/v1/artifacts/{}", sha256_hex(&archive));
        let (status, body) = host.call(&tenant, "PUT", &path, Some(archive));
        assert_eq!(status, 507, "{body}");
        assert!(body.contains("nothing was stored"), "{body}");
    }
    assert_eq!(stored(&host), before);
}
