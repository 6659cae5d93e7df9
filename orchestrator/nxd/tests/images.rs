//! Images through Podman (real podman with runc): an image built here (FROM scratch plus the
//! static sample) goes push, preview, promote, rollback, reaches its database, and runs as a
//! task; archives that are not images, whose digests lie, or that are for arm64 are refused with
//! nothing stored.

use nx_testkit::{build_sample_image, files_under, Host};
use std::path::{Path, PathBuf};

/// `podman <args>` on `host`'s Podman storage, as nxd runs it.
fn podman_output(host: &Host, args: &[&str]) -> std::process::Output {
    let podman =
        nx_orchestrator::backend::container::podman::Podman::new(host.state_dir.path()).unwrap();
    std::process::Command::new("podman")
        .args(args)
        .env_clear()
        .envs(podman.env())
        .output()
        .expect("podman")
}

/// What `podman <args>` prints (trimmed), run on `host`'s Podman storage.
fn podman(host: &Host, args: &[&str]) -> String {
    let out = podman_output(host, args);
    assert!(out.status.success(), "podman {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn podman_containers(host: &Host) -> String {
    podman(host, &["ps", "--all", "--format", "{{.Names}}"])
}

/// The images in `host`'s Podman storage: one line each, repository and id. Asked again when
/// Podman 4.3 fails its listing for an image whose layers go meanwhile ("retrieving size of
/// image ...": nxd removing one, seen in session 15's CI while a test waited for the removal).
fn podman_images(host: &Host) -> String {
    let args = ["images", "--all", "--format", "{{.Repository}} {{.ID}}"];
    for _ in 0..10 {
        let out = podman_output(host, &args);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).trim().to_owned();
        }
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("retrieving size of image"),
            "podman {args:?}: {out:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    podman(host, &args)
}

#[test]
fn an_image_goes_push_preview_promote_rollback_and_runs_as_a_task() {
    let host = Host::start();
    let build = tempfile::tempdir_in("/var/tmp").unwrap();
    let image = build_sample_image(build.path(), "linux/amd64");
    let image = image.to_str().unwrap();
    let push = |version: &str| {
        let out = host.nx_json(&[
            "push",
            "--image",
            image,
            "--sandbox",
            "img",
            "-e",
            &format!("APP_VERSION={version}"),
        ]);
        out["deployment"]["id"].as_str().unwrap().to_owned()
    };
    let v1 = push("v1");
    let (status, body) = host.get(&host.preview_host("img", &v1), "/");
    assert_eq!(
        (status, body),
        (200, format!("nx-sample v1 deployment={v1}\n"))
    );
    // It runs as the deployment's uid, not root, and reaches its own database over the socket.
    let (_, whoami) = host.get(&host.preview_host("img", &v1), "/whoami");
    assert!(!whoami.contains("uid=0"), "{whoami}");
    assert_eq!(
        host.get(&host.preview_host("img", &v1), "/db/put?v=from-image")
            .0,
        200
    );
    assert!(host
        .get(&host.preview_host("img", &v1), "/db/list")
        .1
        .contains("from-image"));

    host.nx_json(&["promote", "img", &v1]);
    let v2 = push("v2");
    host.nx_json(&["promote", "img", &v2]);
    assert_eq!(
        host.get(&host.production_host("img"), "/").1,
        format!("nx-sample v2 deployment={v2}\n")
    );
    host.nx_json(&["rollback", "img"]);
    assert_eq!(
        host.get(&host.production_host("img"), "/").1,
        format!("nx-sample v1 deployment={v1}\n")
    );

    // The same image as a task: its entrypoint gets the arguments; its exit code is nx's.
    let out = host.nx(&["run-task", image, "--", "task", "exit", "3"]);
    assert_eq!(out.code, Some(3), "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stdout, "exiting with 3\n");
    let out = host.nx(&[
        "run-task",
        image,
        "--",
        "task",
        "connect",
        &host.api.to_string(),
    ]);
    assert!(out.stdout.contains("cannot connect"), "{}", out.stdout);
    // At most MAX_PTYS pseudo-terminals, as a deployment's (review15 #4).
    let out = host.nx(&["run-task", image, "--", "task", "ptys", "100"]);
    let held: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {}{}", out.stdout, out.stderr));
    assert_eq!(
        held["held"],
        nx_orchestrator::backend::pts_mount::MAX_PTYS,
        "{held}"
    );
    // The task's environment reaches its program, and only it: Podman runs as root, and a
    // tenant's LD_PRELOAD in its environment ran the tenant's library as root (attacker s9 F0).
    let library = nx_testkit::preload_library(&host.path("cc"));
    let preload = format!("LD_PRELOAD={}", library.display());
    let out = host.nx(&[
        "run-task",
        image,
        "-e",
        &preload,
        "-e",
        "PATH=/nowhere:/bin",
        "-e",
        "GREETING=hello there",
        "--",
        "task",
        "cat",
        "/proc/self/environ",
    ]);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(out.ok, "{said}");
    assert!(!said.contains("ESCAPED"), "{said}");
    for expected in [
        preload.as_str(),
        "PATH=/nowhere:/bin",
        "GREETING=hello there",
    ] {
        assert!(said.contains(expected), "{expected} in {said:?}");
    }

    // Removing a deployment removes its container; a task leaves none.
    host.nx_json(&["rm", &v2]);
    let left = podman_containers(&host);
    assert!(!left.contains(&v2), "{left}");
    assert!(!left.contains("nxt-"), "{left}");
}

fn stored_artifacts(host: &Host) -> Vec<String> {
    files_under(&host.path("artifacts"))
}

fn assert_refused(host: &Host, archive: &Path, expected: &str) {
    let before = stored_artifacts(host);
    let out = host.nx(&[
        "push",
        "--image",
        archive.to_str().unwrap(),
        "--sandbox",
        "bad",
    ]);
    assert!(!out.ok, "{} was accepted", archive.display());
    assert!(
        out.stderr.contains(expected),
        "{}: expected {expected:?} in {}",
        archive.display(),
        out.stderr
    );
    // nxd refuses it too, when a client skips the local check.
    let (status, _, _) = host.put_artifact(std::fs::read(archive).unwrap());
    assert_eq!(status, 422, "{}", archive.display());
    assert_eq!(stored_artifacts(host), before, "nothing is stored");
}

/// Rewrites one member of a tar archive (same length), keeping the rest as it is.
fn tamper(archive: &Path, out: &Path, member_suffix: &str) {
    let mut input = tar::Archive::new(std::fs::File::open(archive).unwrap());
    let mut builder = tar::Builder::new(std::fs::File::create(out).unwrap());
    for entry in input.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut header = entry.header().clone();
        let path = entry.path().unwrap().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        if path.to_string_lossy().ends_with(member_suffix) && data.len() > 1000 {
            data[600] ^= 0xff;
        }
        builder.append_data(&mut header, &path, &data[..]).unwrap();
    }
    builder.finish().unwrap();
}

#[test]
fn archives_that_are_not_good_images_are_refused_and_nothing_is_stored() {
    let host = Host::start();
    let build = tempfile::tempdir_in("/var/tmp").unwrap();

    // A tar that is no image.
    let plain = build.path().join("plain.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&plain).unwrap());
        let text = b"just some text\n";
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        b.append_data(&mut header, "notes.txt", &text[..]).unwrap();
        b.finish().unwrap();
    }
    assert_refused(&host, &plain, "manifest");

    // A layer whose bytes no longer match the digest the manifest gives.
    let good = build_sample_image(build.path(), "linux/amd64");
    let tampered = build.path().join("tampered.tar");
    tamper(&good, &tampered, ".tar");
    assert_refused(&host, &tampered, "digest");

    // An image for arm64 on this x86_64 host.
    let arm = build_sample_image(build.path(), "linux/arm64");
    assert_refused(&host, &arm, "arm64");
}

#[test]
fn an_image_runs_under_gvisor_when_asked() {
    let host = Host::start();
    let build = tempfile::tempdir_in("/var/tmp").unwrap();
    let image = build_sample_image(build.path(), "linux/amd64");
    let out = host.nx_json(&[
        "push",
        "--image",
        image.to_str().unwrap(),
        "--sandbox",
        "gvisor",
        "--runtime",
        "runsc",
    ]);
    assert_eq!(out["deployment"]["runtime"], "runsc");
    let id = out["deployment"]["id"].as_str().unwrap();
    let preview = host.preview_host("gvisor", id);
    assert_eq!(host.get(&preview, "/health"), (200, "ok\n".into()));
    // The kernel it talks to is gVisor's, not the host's.
    let host_kernel = std::fs::read_to_string("/proc/version").unwrap();
    let (status, seen) = host.get(&preview, "/read?path=/proc/version");
    assert_eq!(status, 200, "{seen}");
    assert_ne!(
        seen.trim(),
        host_kernel.trim(),
        "runsc shows the host's kernel"
    );
    // It still reaches its database over the socket.
    assert_eq!(host.get(&preview, "/db/put?v=gvisor").0, 200);
    // Its pseudo-terminals are bounded as runc's are (closing-s15: nobody had looked): runsc
    // opens them in the launcher's devpts instance (seen there: one more than the program
    // holds, runsc's own), so the program gets MAX_PTYS less that one, then ENOSPC.
    let (_, body) = host.get(&preview, "/ptys?n=100");
    let held: serde_json::Value = serde_json::from_str(&body).unwrap();
    let max = u64::from(nx_orchestrator::backend::pts_mount::MAX_PTYS);
    assert!(
        (max - 1..=max).contains(&held["held"].as_u64().unwrap()),
        "{body}"
    );
    assert!(body.contains("No space left on device"), "{body}");

    // runsc is for images: a binary is refused, with the way out.
    let sample = nx_testkit::sample_app();
    let out = host.nx(&[
        "push",
        sample.to_str().unwrap(),
        "--sandbox",
        "gvisor",
        "--runtime",
        "runsc",
    ]);
    assert!(!out.ok && out.stderr.contains("--image"), "{}", out.stderr);
}

/// And its `/dev/shm` is as large as its `/tmp` (review14 #4: it was Podman's 64 MiB whatever
/// `--tmp` said), and it holds at most `MAX_PTYS` pseudo-terminals (attacker s15 P1).
#[test]
fn an_images_tmp_is_writable_whatever_its_mode_and_its_dev_shm_and_ptys_are_bounded() {
    let host = Host::start();
    let build = tempfile::tempdir_in("/var/tmp").unwrap();
    // The image's /tmp is 0755, root's; the program runs as the deployment's uid. Podman's
    // --tmpfs would take the image's mode (runc chmods a tmpfs to the directory it covers).
    let image = nx_testkit::build_sample_image_with(
        build.path(),
        "linux/amd64",
        "COPY --chmod=0755 tmp /tmp\n",
    );
    let id = host.nx_json(&[
        "push",
        "--image",
        image.to_str().unwrap(),
        "-s",
        "tmp",
        "--tmp",
        "8",
    ])["deployment"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let preview = host.preview_host("tmp", &id);
    let (status, body) = host.get(&preview, "/fill?dir=/tmp&mb=2");
    assert_eq!(status, 200, "{body}");
    let filled: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(filled["error"], serde_json::Value::Null, "{body}");
    assert_eq!(filled["written_bytes"], 2 << 20, "{body}");
    // Still its own size: 8 MiB, then ENOSPC; /dev/shm the same.
    for dir in ["/tmp", "/dev/shm"] {
        let (_, body) = host.get(&preview, &format!("/fill?dir={dir}&mb=12"));
        let filled: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            filled["error"]
                .as_str()
                .unwrap_or("")
                .contains("No space left"),
            "{dir}: {body}"
        );
        assert!(
            filled["written_bytes"].as_u64().unwrap() <= 8 << 20,
            "{dir}: {body}"
        );
    }
    // At most MAX_PTYS pseudo-terminals, as a binary's (attacker s15 P1).
    let max = nx_orchestrator::backend::pts_mount::MAX_PTYS;
    let (_, body) = host.get(&preview, &format!("/ptys?n={}", max + 36));
    let held: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(held["held"], max, "{body}");
}

/// The command names (`task=`) of the processes the kernel's OOM killer ended in `unit`'s
/// memory cgroup, oldest first, from the kernel's log (`oom-kill:... oom_memcg=<path>/<unit>,`).
fn oom_victims(unit: &str) -> Vec<String> {
    let out = std::process::Command::new("dmesg").output().expect("dmesg");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("oom-kill:") && l.contains(&format!("/{unit},")))
        .filter_map(|l| {
            l.split(",task=")
                .nth(1)?
                .split(',')
                .next()
                .map(str::to_owned)
        })
        .collect()
}

/// Review15 #7: memory held in an image's /tmp and /dev/shm (tmpfs pages: in no process's
/// RSS) fills MemoryMax, then the program asks for more: the kernel kills the container's
/// program (`app`), not Podman's CLI (`podman run`, the monitor's child, whose RSS is far
/// larger), and the monitor names the kill, as for a binary (sandbox_limits
/// `memory_held_in_tmpfs_ends_the_program_and_the_monitor_names_it`).
#[test]
fn memory_held_in_an_images_tmpfs_ends_its_program_not_podman_and_is_named() {
    let host = Host::start();
    let build = tempfile::tempdir_in("/var/tmp").unwrap();
    let image = build_sample_image(build.path(), "linux/amd64");
    let id = host.nx_json(&[
        "push",
        "--image",
        image.to_str().unwrap(),
        "-s",
        "shm",
        "--memory",
        "128",
        "--tmp",
        "64",
    ])["deployment"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let preview = host.preview_host("shm", &id);
    let (status, body) = host.get(&preview, "/fill?dir=/tmp&mb=64&keep=1");
    assert_eq!(status, 200, "{body}");
    if host.get(&preview, "/fill?dir=/dev/shm&mb=64&keep=1").0 == 200 {
        let (status, _) = host.get(&preview, "/hog");
        assert_ne!(status, 200, "the hog survived a 128 MiB MemoryMax");
    }
    let unit = format!("nx-{id}.service");
    // What a red CI needs to tell why: the deployment as nxd sees it, the kernel's victims in
    // the unit (the monitor, `nxd-launcher`, among them: CI of session 19), the program's log.
    let seen = || {
        let logs = host.nx(&["logs", &id, "--sandbox", "shm"]);
        format!(
            "deployment: {}\nthe kernel's OOM victims in {unit}: {:?}\nnx logs:\n{}{}",
            host.deployment("shm", &id),
            oom_victims(&unit),
            logs.stdout,
            logs.stderr
        )
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let last = loop {
        let last = host.deployment("shm", &id)["last_exit"].clone();
        if !last.is_null() {
            break last;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no last exit 30 s after MemoryMax was filled\n{}",
            seen()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(last["result"], "oom-kill", "{}", seen());
    assert_eq!(
        last["message"],
        "killed: out of memory, MemoryMax 128 MiB",
        "{}",
        seen()
    );
    let victims = oom_victims(&unit);
    assert_eq!(
        victims.first().map(String::as_str),
        Some("app"),
        "the kernel's first victim: {victims:?}"
    );
    // The monitor outlived Podman: it ranks below Podman's CLI, conmon and its cleanup.
    assert!(
        !victims.iter().any(|v| v == "nxd-launcher"),
        "the kernel killed the monitor: {victims:?}"
    );
}

/// Attacker s9 F4n: an image's `VOLUME` became an anonymous Podman volume, a directory on the
/// host's disk that a task or a deployment could fill past every limit. It is a tmpfs, which
/// the container's memory limit counts.
#[test]
fn an_images_volume_is_a_tmpfs_not_the_hosts_disk() {
    let host = Host::start();
    let build = tempfile::tempdir_in("/var/tmp").unwrap();
    let image = nx_testkit::build_sample_image_with(build.path(), "linux/amd64", "VOLUME /big\n");
    let out = host.nx(&[
        "run-task",
        image.to_str().unwrap(),
        "--",
        "task",
        "cat",
        "/proc/self/mountinfo",
    ]);
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    // mountinfo(5): "... <mount point> <options> [optional fields] - <fs type> <source> ...".
    let big = out
        .stdout
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/big"))
        .unwrap_or_else(|| panic!("no /big in {}", out.stdout));
    let fs_type = big.split(" - ").nth(1).and_then(|r| r.split(' ').next());
    assert_eq!(fs_type, Some("tmpfs"), "{big}");
}

/// Attacker s10 F7: under Podman's default seccomp profile an image's program could create a
/// user namespace (uid 0 with every capability in it: mounts, netfilter, the kernel code most
/// container escapes start from). Images run under NX's own filter, as binaries do
/// (`isolation::a_deployment_sees_nothing_of_the_host_or_its_neighbours`).
#[test]
fn an_image_runs_under_the_same_seccomp_filter_as_a_binary() {
    let host = Host::start();
    let build = tempfile::tempdir_in("/var/tmp").unwrap();
    let image = build_sample_image(build.path(), "linux/amd64");
    let id = host.nx_json(&["push", "--image", image.to_str().unwrap(), "-s", "filter"])
        ["deployment"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let get = |path: &str| host.get(&host.preview_host("filter", &id), path);
    nx_testkit::seccomp::assert_filtered(get);
    // Everything else as before: it serves.
    assert_eq!(get("/").0, 200);
}

/// An OCI archive of the sample (`/app`) and `zeros` bytes of zeros in one gzipped layer
/// (`nx_artifact::image::tests::oci_archive_gz`), written to `dir/<name>.tar`.
fn sample_oci_archive(dir: &Path, name: &str, zeros: u64) -> PathBuf {
    let app = std::fs::read(nx_testkit::sample_app()).unwrap();
    let path = dir.join(format!("{name}.tar"));
    let bytes = nx_artifact::image::tests::oci_archive_gz(name, &app, zeros);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Attacker s11 G6: an OCI archive is a plain tar whose layers are gzipped blobs, which `podman
/// load` gunzips into Podman's storage on the state directory's disk: a 2 MB push put 1 GiB
/// there. The layers are counted gunzipped before anything is stored or loaded.
#[test]
fn a_gzip_bomb_of_a_layer_is_refused_and_podman_keeps_nothing() {
    let host = Host::start();
    let build = tempfile::tempdir_in("/var/tmp").unwrap();
    // 320 MiB of zeros in the one gzipped layer: past 64 times the archive's size (at least
    // 256 MiB).
    let bomb = sample_oci_archive(build.path(), "bomb", 320 << 20);
    let size = std::fs::metadata(&bomb).unwrap().len();
    assert!(size < 4 << 20, "the bomb is {size} bytes");
    assert_refused(&host, &bomb, "layers unpack to more than 256 MiB");
    assert_eq!(podman_images(&host), "", "Podman's storage holds the bomb");

    // An image of the same shape within the bound is loaded and runs.
    let small = sample_oci_archive(build.path(), "small", 1 << 20);
    let id = host.nx_json(&["push", "--image", small.to_str().unwrap(), "-s", "small"])
        ["deployment"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = host.get(&host.preview_host("small", &id), "/");
    assert_eq!(
        (status, body),
        (200, format!("nx-sample dev deployment={id}\n"))
    );
    let images = podman_images(&host);
    assert!(images.contains("localhost/small"), "{images}");
}

/// Attacker s11 G6 too: an image unpacks to at most `store.max_image_unpacked_mb`; what it
/// takes in Podman's storage counts toward its owner's `store.max_owner_mb`, and leaves Podman
/// with its archive once no deployment runs it; a push after that loads it again (nxd asks
/// Podman, it does not trust what it loaded before).
#[test]
fn an_images_layers_count_toward_its_owner_and_leave_podman_with_its_archive() {
    let host = Host::start_with(
        "[store]\nmax_owner_mb = 16\nunused_grace_secs = 5\nmax_image_unpacked_mb = 48\n",
    );
    let build = tempfile::tempdir_in("/var/tmp").unwrap();
    // The host's own cap on what one image unpacks to: 64 MiB of zeros are past its 48 MiB
    // (though within 64 times the archive's size, at least 256 MiB, which the CLI checks).
    let big = sample_oci_archive(build.path(), "big", 64 << 20);
    assert_refused(&host, &big, "layers unpack to more than 48 MiB");
    // About 1.2 MB to upload, 26 MiB unpacked: past the sandbox's 16 MiB.
    let mid = sample_oci_archive(build.path(), "mid", 24 << 20);
    assert!(host.nx(&["sandbox", "create", "quota"]).ok);
    let token = host.nx_json(&["token", "create", "--sandbox", "quota", "--can", "push"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = host.nx_as(
        &token,
        &["push", "--image", mid.to_str().unwrap(), "-s", "quota"],
    );
    assert!(!out.ok, "pushed: {}", out.stdout);
    assert!(
        out.stderr.contains("may hold 16 MiB (store.max_owner_mb)"),
        "{}",
        out.stderr
    );
    assert_eq!(podman_images(&host), "", "loaded past the owner's cap");

    let small = sample_oci_archive(build.path(), "small", 1 << 20);
    let push = || {
        host.nx_json(&["push", "--image", small.to_str().unwrap(), "-s", "small"])["deployment"]
            ["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let id = push();
    assert!(podman_images(&host).contains("localhost/small"));
    host.nx_json(&["rm", &id]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while podman_images(&host).contains("localhost/small") {
        assert!(
            std::time::Instant::now() < deadline,
            "the image stayed in Podman's storage 90 s after `nx rm` of its only deployment: {}",
            podman_images(&host)
        );
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let id = push();
    let (status, body) = host.get(&host.preview_host("small", &id), "/");
    assert_eq!(
        (status, body.trim()),
        (200, format!("nx-sample dev deployment={id}").as_str())
    );
}
