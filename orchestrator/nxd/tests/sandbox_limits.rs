//! What a real program expects of its sandbox: a log that is capped and rotated and whose tail
//! costs little, a sized `/data` and `/tmp` that fill up with ENOSPC instead of a kill, the OS
//! files programs read at start (a static Go program loads a time zone; Debian's Caddy serves
//! with nothing but its port), its open-files limit, and the reason when it is killed (out of
//! memory, a signal, forks refused at the task limit, a stop's timeout).

use nx_testkit::Host;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The bytes of a deployment's log files on disk (`output.log`, `output.log.N`), as far as
/// a listing taken while the log rotates can tell (the callers wait until it is still).
fn log_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("output.log"))
        // A file rotated away between the listing and this look is no longer on disk.
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Has the program write `mb` MiB of lines, and waits until its log stops growing.
fn spew(host: &Host, sandbox: &str, id: &str, mb: u64) {
    let (status, body) = host.get(&host.preview_host(sandbox, id), &format!("/spew?mb={mb}"));
    assert_eq!(status, 200, "{body}");
    let dir = host.path(&format!("deployments/{id}"));
    let mut last = log_bytes(&dir);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = log_bytes(&dir);
        if now == last {
            return;
        }
        last = now;
    }
}

#[test]
fn output_is_capped_on_disk_and_a_tail_costs_memory_in_lines_not_bytes() {
    let host = Host::start();
    // 300 MiB of output against a 16 MiB cap.
    let capped = host.push_sample("chatty", &["--log-max", "16"]);
    spew(&host, "chatty", &capped, 300);
    let on_disk = log_bytes(&host.path(&format!("deployments/{capped}")));
    assert!(on_disk <= 16 << 20, "{on_disk} bytes of log on disk");
    assert!(on_disk > 8 << 20, "only {on_disk} bytes of log kept");

    // 300 MiB kept (a 1 GiB cap): the last two lines cost nxd no more than a block.
    let big = host.push_sample("big", &["--log-max", "1024"]);
    spew(&host, "big", &big, 300);
    let on_disk = log_bytes(&host.path(&format!("deployments/{big}")));
    assert!(on_disk > 250 << 20, "{on_disk} bytes of log kept");
    let before = host.nxd_peak_rss();
    let out = host.nx(&["logs", &big, "-n", "2"]);
    let after = host.nxd_peak_rss();
    assert!(out.ok, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    for line in lines {
        // <time> stdout <text>
        let mut parts = line.splitn(3, ' ');
        let time = parts.next().unwrap();
        assert!(time.starts_with("20") && time.ends_with('Z'), "{line}");
        assert_eq!(parts.next(), Some("stdout"), "{line}");
        assert_eq!(parts.next().unwrap().len(), 99, "{line}");
    }
    assert!(
        after - before < 50 << 20,
        "nx logs -n 2 raised nxd's peak memory by {} MiB",
        (after - before) >> 20
    );

    // --json: one object per line; --since: only what is newer.
    let out = host.nx(&["--json", "logs", &big, "-n", "1"]);
    let record: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(record["stream"], "stdout");
    assert_eq!(record["text"].as_str().unwrap().len(), 99);
    let out = host.nx(&["logs", &big, "--since", "2099-01-01T00:00:00Z"]);
    assert!(
        out.ok && out.stdout.is_empty(),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let out = host.nx(&["logs", &big, "--since", "1h", "-n", "3"]);
    assert_eq!(out.stdout.lines().count(), 3, "{}", out.stdout);
}

/// A stored record's time (`2026-11-30T03:10:38.123456Z`: fixed width, so it sorts as text).
fn record_time(line: &str) -> &str {
    line.split(' ').next().unwrap_or_default()
}

#[test]
fn nx_logs_follow_goes_on_across_rotation() {
    let host = Host::start();
    // 16 MiB in 5 files: each rotates at 3.2 MiB; 8 MiB of lines (10.8 MiB stamped) rotate
    // them while nx logs -f follows. Under load the writer may drop lines (and say so: the
    // reader counts them).
    let id = host.push_sample("follow", &["--log-max", "16"]);
    let mut follow = host
        .nx_command(&host.token, &["logs", &id, "-f"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let expected = (8u64 << 20) / 100;
    // Lines of the program and lines the writer dropped (and counted) that nx logs -f printed,
    // and whether the records came in order.
    let seen = std::sync::Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(1)]);
    let reader = {
        let seen = std::sync::Arc::clone(&seen);
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut last = String::new();
            for line in std::io::BufReader::new(stdout).lines() {
                let line = line.unwrap();
                let time = record_time(&line).to_owned();
                if time.starts_with("20") {
                    if time < last {
                        seen[2].store(0, Ordering::SeqCst);
                    }
                    last = time;
                }
                let (program, dropped) = spewed_lines(&line);
                seen[0].fetch_add(program, Ordering::SeqCst);
                seen[1].fetch_add(dropped, Ordering::SeqCst);
                if seen[0].load(Ordering::SeqCst) + seen[1].load(Ordering::SeqCst) == expected {
                    break;
                }
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    spew(&host, "follow", &id, 8);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reader.is_finished() {
        assert!(
            Instant::now() < deadline,
            "nx logs -f printed {} lines and {} dropped of the {expected} on disk",
            seen[0].load(Ordering::SeqCst),
            seen[1].load(Ordering::SeqCst),
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let program = seen[0].load(Ordering::SeqCst);
    assert!(program > 0, "{program} lines");
    assert_eq!(seen[2].load(Ordering::SeqCst), 1, "records out of order");
    // nx logs -f printed every line, so the files rotated while it followed: three times
    // unless lines were dropped (a file rotates at the record that would pass its share, also
    // in a big batch of a writer that fell behind), and none was deleted: the 10.8 MiB are
    // below the cap, so a plain nx logs still has every line, the first included (review15 #10).
    let dir = host.path(&format!("deployments/{id}"));
    let rotations = if seen[1].load(Ordering::SeqCst) == 0 {
        3
    } else {
        1
    };
    assert!(
        dir.join(format!("output.log.{rotations}")).exists() && !dir.join("output.log.4").exists(),
        "{rotations} rotations or more, and not 4, expected: {:?}",
        nx_testkit::files_under(&dir)
    );
    let out = host.nx(&["logs", &id, "--since", "1h"]);
    assert!(out.ok, "{}", out.stderr);
    let (program, dropped) = out
        .stdout
        .lines()
        .map(spewed_lines)
        .fold((0, 0), |(p, d), (lp, ld)| (p + lp, d + ld));
    assert_eq!(
        program + dropped,
        expected,
        "nx logs after the run has {program} of the program's lines and {dropped} dropped: \
         some went below the cap (files: {:?})",
        nx_testkit::files_under(&dir)
    );
}

/// What one line `nx logs` printed counts of `/spew`'s lines: (1, 0) for one of them, (0, n)
/// for the writer's note that it dropped n lines, (0, 0) for any other.
fn spewed_lines(line: &str) -> (u64, u64) {
    if line.contains(" stdout ") && line.ends_with(&"x".repeat(99)) {
        (1, 0)
    } else if let Some((_, rest)) = line.split_once(" nx dropped ") {
        (0, rest.split(' ').next().unwrap().parse().unwrap())
    } else {
        (0, 0)
    }
}

/// /tmp and /dev/shm are each `tmp_mb` of RAM in `memory_max_mb`: a `--tmp` past half of
/// `--memory` is refused (both full would be an OOM kill, review14 #3), and a push that asks
/// for no `--tmp` gets the host's default or half its memory, whichever is less, not a refusal.
#[test]
fn a_tmp_asked_for_past_half_the_memory_is_refused_and_one_not_asked_for_fits() {
    let host = Host::start();
    let sample = nx_testkit::sample_app();
    let sample = sample.to_str().unwrap();
    let push = host.nx(&["push", sample, "-s", "tmp", "--memory", "32", "--tmp", "32"]);
    assert!(
        !push.ok,
        "--tmp 32 --memory 32 was accepted: {}",
        push.stdout
    );
    assert!(
        push.stderr
            .contains("limits.tmp_mb: 32 is out of range: give 1 to 16 MiB")
            && push.stderr.contains("/dev/shm")
            && push.stderr.contains("--tmp"),
        "{}",
        push.stderr
    );
    // --memory 64 over the default --tmp 64: /tmp and /dev/shm of 32 MiB each.
    let id = host.push_sample("tmp", &["--memory", "64"]);
    assert_eq!(host.deployment("tmp", &id)["limits"]["tmp_mb"], 32);
    let preview = host.preview_host("tmp", &id);
    for dir in ["/tmp", "/dev/shm"] {
        let (status, body) = host.get(&preview, &format!("/fill?dir={dir}&mb=40"));
        assert_eq!(status, 200, "{dir}: {body}");
        let filled: serde_json::Value = serde_json::from_str(&body).unwrap();
        let written = nx_testkit::assert_filled_to_its_size(&filled, dir, 32 << 20);
        assert!(written > 24 << 20, "{dir}: {body}");
    }
    assert_eq!(host.get(&preview, "/health").0, 200);
}

/// `/ptys?n=N` of deployment `id` of `sandbox`: how many pseudo-terminals it holds, the error.
fn hold_ptys(host: &Host, sandbox: &str, id: &str, n: u32) -> serde_json::Value {
    let (status, body) = host.get(&host.preview_host(sandbox, id), &format!("/ptys?n={n}"));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Attacker s15 P1: one sandbox took every pseudo-terminal the host keeps for namespaces
/// (3,071), and every other sandbox's `/dev/ptmx` got ENOSPC. A deployment holds at most
/// `MAX_PTYS`, and another sandbox's program still opens its own beside it.
#[test]
fn a_deployment_holds_at_most_its_share_of_pseudo_terminals() {
    let host = Host::start();
    let max = nx_orchestrator::backend::pts_mount::MAX_PTYS;
    let a = host.push_sample("ptya", &[]);
    let b = host.push_sample("ptyb", &[]);
    let held = hold_ptys(&host, "ptya", &a, max + 36);
    assert_eq!(held["held"], max, "{held}");
    assert!(
        held["error"]
            .as_str()
            .unwrap_or_default()
            .contains("No space left on device"),
        "{held}"
    );
    let other = hold_ptys(&host, "ptyb", &b, 10);
    assert_eq!(other, serde_json::json!({"held": 10, "error": null}));
}

#[test]
fn full_data_and_tmp_are_enospc_and_the_program_keeps_serving() {
    let host = Host::start();
    let id = host.push_sample("disk", &["--disk", "64", "--tmp", "16"]);
    let preview = host.preview_host("disk", &id);
    let fill = |dir: &str, mb: u64| -> serde_json::Value {
        let (status, body) = host.get(&preview, &format!("/fill?dir={dir}&mb={mb}"));
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };

    let data = fill("/data", 100);
    let written = nx_testkit::assert_filled_to_its_size(&data, "/data", 64 << 20);
    assert!(written > 48 << 20, "{data}");
    assert_eq!(
        host.get(&preview, "/health").0,
        200,
        "serves after a full /data"
    );

    // Nothing else is writable: bubblewrap's root and /dev tmpfs have no size (attacker s13 L4).
    for dir in ["/", "/dev", "/etc"] {
        let (status, body) = host.get(&preview, &format!("/fill?dir={dir}&mb=1"));
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("Read-only file system"), "{dir}: {body}");
    }
    // /dev/shm is as large as /tmp (attacker s13 L4: it took 200 MiB beside a 16 MiB /tmp).
    for dir in ["/tmp", "/dev/shm"] {
        let tmp = fill(dir, 32);
        nx_testkit::assert_filled_to_its_size(&tmp, dir, 16 << 20);
        assert_eq!(
            host.get(&preview, "/health").0,
            200,
            "serves after a full {dir}"
        );
    }
    let state = &host.deployment("disk", &id)["state"];
    assert_eq!(state["restarts"], 0, "{state}");
    // nx status shows /data's usage (measured every 2 s by the unit's monitor).
    let deadline = Instant::now() + Duration::from_secs(10);
    let disk = loop {
        let d = host.deployment("disk", &id);
        if !d["disk"].is_null() {
            break d["disk"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no /data usage in nx status: {d}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let size = disk["size_bytes"].as_u64().unwrap();
    assert!(size > 48 << 20 && size <= 64 << 20, "{disk}");
    assert!(disk["used_bytes"].as_u64().unwrap() < 16 << 20, "{disk}");
    let text = host.nx(&["status", "disk"]).stdout;
    assert!(
        text.contains("/data: ") && text.contains(" MiB used"),
        "{text}"
    );
    // The host's state dir holds the image, not the data: the program's writes stay in it.
    let image = host.path(&format!("deployments/{id}/data.img"));
    assert_eq!(std::fs::metadata(image).unwrap().len(), 64 << 20);
}

/// The loop devices (losetup(8): NAME and BACK-FILE) attached to a file of deployment `id`'s
/// directory, a deleted one included. Matched on `/deployments/<id>/` alone: once the unit's
/// mount namespace is gone, the kernel names a device's file from the root of the filesystem
/// that holds it (`/deployments/<id>/data.img` for a test host's state dir), not the host's.
fn loop_devices_of(id: &str) -> Vec<String> {
    let dir = format!("/deployments/{id}/");
    nx_testkit::loop_devices()
        .into_iter()
        .filter(|l| l.contains(&dir))
        .collect()
}

/// Waits up to 5 s for the loop devices of deployment `id` to go (the kernel detaches them
/// once its unit's mount namespace and the mount in it are gone); returns those left.
fn loop_devices_left(id: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = loop_devices_of(id);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The launcher attaches /data's image to a loop device itself (LOOP_CTL_GET_FREE,
/// LOOP_CONFIGURE with autoclear): deployments started at once each get a device of their own
/// (two launchers may be named the same free one), and none is left attached after `nx stop`
/// or `nx rm`.
#[test]
fn each_data_image_has_its_own_loop_device_and_none_stays_after_stop_or_rm() {
    let host = Host::start();
    let ids: Vec<String> = (0..3)
        .map(|_| host.push_sample("loops", &["--disk", "32"]))
        .collect();
    for id in &ids {
        let devices = loop_devices_of(id);
        assert_eq!(devices.len(), 1, "{id}: {devices:?}");
        assert!(devices[0].ends_with("/data.img"), "{devices:?}");
        host.nx_json(&["stop", id]);
        assert_eq!(
            loop_devices_left(id),
            Vec::<String>::new(),
            "{id} after nx stop"
        );
    }
    // Started together, their launchers ask for a free device at about the same time.
    let starts: Vec<_> = std::thread::scope(|s| {
        let starting: Vec<_> = ids
            .iter()
            .map(|id| s.spawn(|| host.nx(&["start", id])))
            .collect();
        starting.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for (id, start) in ids.iter().zip(&starts) {
        assert!(start.ok, "nx start {id}: {}{}", start.stdout, start.stderr);
    }
    let mut devices = Vec::new();
    for id in &ids {
        let (status, body) = host.get(&host.preview_host("loops", id), "/fill?dir=/data&mb=1");
        assert_eq!(status, 200, "{body}");
        let fill: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(fill["written_bytes"], 1 << 20, "{id}: {fill}");
        assert!(fill["error"].is_null(), "{id}: {fill}");
        let of_it = loop_devices_of(id);
        assert_eq!(of_it.len(), 1, "{id}: {of_it:?}");
        devices.push(of_it[0].split_whitespace().next().unwrap().to_owned());
    }
    devices.sort();
    devices.dedup();
    assert_eq!(
        devices.len(),
        ids.len(),
        "one device for two images: {devices:?}"
    );
    host.nx_json(&["stop", &ids[0]]);
    assert_eq!(
        loop_devices_left(&ids[0]),
        Vec::<String>::new(),
        "after nx stop"
    );
    for id in &ids[1..] {
        host.nx_json(&["rm", id]);
        assert_eq!(
            loop_devices_left(id),
            Vec::<String>::new(),
            "{id} after nx rm"
        );
    }
}

/// A `/data` image that is no longer a filesystem: the start fails saying which mount failed
/// and what to check, and the loop device the launcher attached for it does not stay behind.
#[test]
fn a_damaged_data_image_fails_its_start_with_what_to_check_and_leaves_no_loop_device() {
    use std::os::unix::fs::FileExt;
    let host = Host::start();
    let id = host.push_sample("damaged", &["--disk", "32"]);
    host.nx_json(&["stop", &id]);
    assert_eq!(
        loop_devices_left(&id),
        Vec::<String>::new(),
        "after nx stop"
    );
    // Zeros over ext4's superblock (at 1024 bytes): the kernel no longer mounts it.
    let image = host.path(&format!("deployments/{id}/data.img"));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    file.write_all_at(&[0u8; 4096], 0).unwrap();
    drop(file);
    let start = host.nx(&["start", &id]);
    let said = format!("{}{}", start.stdout, start.stderr);
    assert!(!start.ok, "a damaged /data started: {said}");
    assert!(
        said.contains("mounting /data: mounting /dev/loop") && said.contains("e2fsck -fn "),
        "{said}"
    );
    assert_eq!(
        loop_devices_left(&id),
        Vec::<String>::new(),
        "after the failed mount"
    );
}

/// Attacker s8 F2: `--disk 0` gave `/data` as a plain directory on the host's disk, with no
/// bound; a `/data` larger than the host's free space was accepted (4 TiB with 29 GB free).
/// Now 0 is no `/data` to write (read-only: nothing reaches the host's disk), and a size or a
/// log cap that the state directory's filesystem cannot hold is refused with the numbers.
#[test]
fn no_disk_means_no_data_to_write_and_a_disk_larger_than_the_host_is_refused() {
    let host = Host::start();
    let id = host.push_sample("nodisk", &["--disk", "0"]);
    let preview = host.preview_host("nodisk", &id);
    let (status, body) = host.get(&preview, "/fill?dir=/data&mb=4");
    assert_eq!(status, 200, "{body}");
    let data: serde_json::Value = serde_json::from_str(&body).unwrap();
    let error = data["error"].as_str().unwrap_or_default();
    assert!(error.contains("Read-only file system"), "{data}");
    assert_eq!(data["written_bytes"], 0, "{data}");
    let dir = host.path(&format!("deployments/{id}/data"));
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "{dir:?}");
    assert_eq!(host.get(&preview, "/health").0, 200);

    let sample = nx_testkit::sample_app();
    let push = host.nx(&[
        "push",
        sample.to_str().unwrap(),
        "--sandbox",
        "huge",
        "--disk",
        "4194304",
    ]);
    assert!(!push.ok, "a 4 TiB --disk was accepted: {}", push.stdout);
    assert!(
        push.stderr.contains("limits.disk_mb: 4194304 MiB does not fit on this host: the filesystem of nxd's state directory has ")
            && push.stderr.contains(" MiB in reserve and the logs of the deployments here may still write ")
            && push.stderr.contains("give at most "),
        "{}",
        push.stderr
    );
    assert_eq!(host.nx_json(&["ls"]).as_array().map(Vec::len), Some(1));
}

/// Attacker s9 F2b: `--log-max 10000000` (9.5 TiB) was accepted and the log grew 40 MiB/s
/// toward it. A log cap is at most `sandbox.max_log_mb`, and a push's cap must fit in the
/// state directory's free disk beside nxd's reserve and what the logs already there may still
/// write: two caps of 3/5 of that room each are not both granted.
#[test]
fn log_caps_are_bounded_by_the_host_and_together_by_its_free_disk() {
    let mut host = Host::start();
    host.restart_nxd_with_sandbox_keys("max_log_mb = 1048576");
    let sample = nx_testkit::sample_app();
    let push = |sandbox: &str, log_max: &str| {
        host.nx(&[
            "push",
            sample.to_str().unwrap(),
            "--sandbox",
            sandbox,
            "--log-max",
            log_max,
        ])
    };
    let refused = push("logs", "10000000");
    assert!(
        !refused.ok,
        "a 9.5 TiB --log-max was accepted: {}",
        refused.stdout
    );
    assert!(
        refused.stderr.contains(
            "limits.log_max_mb: 10000000 is out of range: give 1 to 1048576 MiB (sandbox.max_log_mb) on this host"
        ),
        "{}",
        refused.stderr
    );

    let free = nx_orchestrator::host_limits::disk_free_mb(&host.path("")).unwrap();
    let room = free - nx_orchestrator::host_limits::DISK_RESERVE_MB;
    let cap = room * 3 / 5;
    let first = push("logs", &cap.to_string());
    assert!(first.ok, "{}{}", first.stdout, first.stderr);
    let second = push("logs2", &cap.to_string());
    assert!(
        !second.ok,
        "two log caps of {cap} MiB with {room} MiB of room were both granted"
    );
    // The first deployment's log holds a few KiB of its cap (or nothing yet).
    let promised = [cap - 1, cap].map(|mb| format!("may still write {mb} MiB"));
    assert!(
        second.stderr.contains(&format!(
            "limits.log_max_mb: {cap} MiB does not fit on this host"
        )) && promised.iter().any(|p| second.stderr.contains(p)),
        "{}",
        second.stderr
    );
    // Removing the first deployment gives its room back, and so does removing the sandbox of
    // the one made then (each push here comes within a second of the last look at the logs'
    // room, which pushes use with what was recorded and removed since: `log_room`).
    let first_id = host.nx_json(&["status", "logs"])[0]["deployments"][0]["id"]
        .as_str()
        .expect("the first deployment")
        .to_owned();
    assert!(host.nx(&["rm", &first_id]).ok);
    let third = push("logs2", &cap.to_string());
    assert!(third.ok, "{}{}", third.stdout, third.stderr);
    let fourth = push("logs", &cap.to_string());
    assert!(
        !fourth.ok && promised.iter().any(|p| fourth.stderr.contains(p)),
        "{}{}",
        fourth.stdout,
        fourth.stderr
    );
    assert!(host.nx(&["sandbox", "rm", "logs2", "--no-backup"]).ok);
    let fifth = push("logs", &cap.to_string());
    assert!(fifth.ok, "{}{}", fifth.stdout, fifth.stderr);
}

/// Attacker s10 F5: one push token took every deployment slot of the host (one port each,
/// stopped deployments too) and another tenant was told to `nx rm` what it could not. Now a
/// sandbox holds at most `sandbox.max_deployments`; past it, the push names its oldest.
#[test]
fn one_sandbox_holds_at_most_max_deployments_and_is_told_its_oldest_to_remove() {
    let mut host = Host::start();
    host.restart_nxd_with_sandbox_keys("max_deployments = 3");
    let ids: Vec<String> = (0..3)
        .map(|_| host.push_sample("greedy", &["--disk", "0"]))
        .collect();
    // Stopped deployments keep their slot (and their uid, which owns their /data).
    assert!(host.nx(&["stop", &ids[0]]).ok);
    let sample = nx_testkit::sample_app();
    let fourth = host.nx(&["push", sample.to_str().unwrap(), "--sandbox", "greedy"]);
    assert!(
        !fourth.ok,
        "a fourth deployment was accepted: {}",
        fourth.stdout
    );
    assert!(
        fourth.stderr.contains(
            "sandbox greedy has 3 deployments, the most a sandbox may have on this host (sandbox.max_deployments)"
        ) && fourth.stderr.contains(&format!("`nx rm {}`, `nx rm {}`", ids[0], ids[1])),
        "{}",
        fourth.stderr
    );
    // Another tenant still gets a slot.
    host.push_sample("other", &["--disk", "0"]);
    // The oldest removed, the sandbox pushes again.
    assert!(host.nx(&["rm", &ids[0]]).ok);
    host.push_sample("greedy", &["--disk", "0"]);
}

#[test]
fn an_oom_kill_and_an_exit_code_are_named_in_the_log() {
    oom_kill_and_exit_code_named(&Host::start(), &[], 128);
}

/// Memory held in /tmp and /dev/shm (tmpfs pages: in no process's RSS) fills MemoryMax, then
/// the program asks for a little more: the kernel kills the program, not its monitor (whose
/// RSS is larger), and the monitor names the kill (attacker s15 O1: on a host whose root lacks CAP_SYS_RESOURCE, the monitor was killed,
/// the log said nothing and `nx status` had no last exit).
#[test]
fn memory_held_in_tmpfs_ends_the_program_and_the_monitor_names_it() {
    let host = Host::start();
    let id = host.push_sample("shm", &["--memory", "64", "--tmp", "32"]);
    let preview = host.preview_host("shm", &id);
    let (status, body) = host.get(&preview, "/fill?dir=/tmp&mb=32&keep=1");
    assert_eq!(status, 200, "{body}");
    // /dev/shm as much again: MemoryMax is reached while it fills or, the program's own memory
    // still small (the monitor's RSS is ~10 MB: nxd's binary mapped), when it asks for more.
    if host.get(&preview, "/fill?dir=/dev/shm&mb=32&keep=1").0 == 200 {
        let (status, _) = host.get(&preview, "/hog");
        assert_ne!(status, 200, "the hog survived a 64 MiB MemoryMax");
    }
    wait_for_nx_line(&host, &id, "killed: out of memory, MemoryMax 64 MiB", "");
    let last = host.deployment("shm", &id)["last_exit"].clone();
    assert_eq!(last["result"], "oom-kill", "{last}");
}

#[test]
fn an_oom_kill_in_a_microvm_guest_and_an_exit_code_are_named_like_a_containers() {
    // The guest's own OOM killer ends the program (the VMM's cgroup sees nothing); its init
    // says so, and the log and `nx status` name it as for a container.
    let host = Host::start_with(&nx_testkit::microvm_config("tcg"));
    oom_kill_and_exit_code_named(&host, &["--backend", "microvm"], 256);
}

/// Pushes the sample with `--memory <mib>` (and `extra`), has it eat memory until the kill,
/// then exit with 3; each end is named in the log and in `nx status`.
fn oom_kill_and_exit_code_named(host: &Host, extra: &[&str], mib: u64) {
    let memory = mib.to_string();
    let mut args = vec!["--memory", memory.as_str()];
    args.extend_from_slice(extra);
    let id = host.push_sample("oom", &args);
    let preview = host.preview_host("oom", &id);
    let (status, _) = host.get(&preview, "/hog");
    assert_ne!(status, 200, "the hog survived a {mib} MiB MemoryMax");
    let deadline = Instant::now() + Duration::from_secs(20);
    let logs = loop {
        let out = host.nx(&["logs", &id, "-n", "20"]);
        if out.stdout.contains("killed: out of memory") {
            break out.stdout;
        }
        assert!(
            Instant::now() < deadline,
            "no reason in the log:\n{}",
            out.stdout
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        logs.lines()
            .any(|l| l.ends_with(&format!(" nx killed: out of memory, MemoryMax {mib} MiB"))),
        "{logs}"
    );
    // nx status names it too.
    let last = host.deployment("oom", &id)["last_exit"].clone();
    assert_eq!(last["result"], "oom-kill", "{last}");
    assert_eq!(
        last["message"],
        format!("killed: out of memory, MemoryMax {mib} MiB")
    );
    let text = host.nx(&["status", "oom"]).stdout;
    assert!(
        text.contains(&format!("killed: out of memory, MemoryMax {mib} MiB")),
        "{text}"
    );
    // Restarted: systemd's Result of the new run is `success`, but nx status and nx logs
    // still name the last kill.
    let deadline = Instant::now() + Duration::from_secs(20);
    while host.get(&preview, "/health").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not restarted after the OOM kill"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let d = host.deployment("oom", &id);
    assert_eq!(d["state"]["active"], "active", "{d}");
    assert!(d["state"]["restarts"].as_u64().unwrap() >= 1, "{d}");
    assert_eq!(d["last_exit"]["result"], "oom-kill", "{d}");
    let text = host.nx(&["status", "oom"]).stdout;
    assert!(
        text.contains("running")
            && text.contains(&format!("killed: out of memory, MemoryMax {mib} MiB")),
        "{text}"
    );
    assert!(
        host.nx(&["logs", &id])
            .stdout
            .contains(&format!(" nx killed: out of memory, MemoryMax {mib} MiB")),
        "the kill left the log"
    );
    host.get(&preview, "/exit?code=3");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = host.nx(&["logs", &id, "-n", "20"]);
        if out
            .stdout
            .lines()
            .any(|l| l.ends_with(" nx exited with code 3"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no exit code in the log:\n{}",
            out.stdout
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits up to 20 s for an `nx` line of `id`'s log whose text (after `<time> nx `) starts with
/// `start` and ends with `end`, and returns that text.
fn wait_for_nx_line(host: &Host, id: &str, start: &str, end: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = host.nx(&["logs", id, "-n", "50"]).stdout;
        let found = out
            .lines()
            .filter_map(|l| l.split_once(" nx ").map(|(_, text)| text))
            .find(|text| text.starts_with(start) && text.ends_with(end));
        if let Some(text) = found {
            return text.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no nx line {start:?}..{end:?} in the log:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_signal_and_forks_refused_at_the_task_limit_are_named() {
    let host = Host::start();
    let id = host.push_sample("named", &["--tasks", "40"]);
    let preview = host.preview_host("named", &id);

    // Forks refused: said while the program runs on, and again when it ends.
    let (status, body) = host.get(&preview, "/fork");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("EAGAIN"), "{body}");
    let refused = " forks were refused at the task limit (TasksMax 40)";
    let note = wait_for_nx_line(&host, &id, "", refused);
    let count: u64 = note
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .expect("a count first");
    assert!(count >= 1, "{note}");
    assert_eq!(host.get(&preview, "/health").0, 200);
    host.get(&preview, "/exit?code=1");
    wait_for_nx_line(&host, &id, "exited with code 1; ", refused);
    let last = host.deployment("named", &id)["last_exit"].clone();
    assert_eq!(last["result"], "exit-code", "{last}");

    // A crash: SIGABRT (abort(3)), through the sandbox's exit code 128 + 6.
    let deadline = Instant::now() + Duration::from_secs(20);
    while host.get(&preview, "/health").0 != 200 {
        assert!(Instant::now() < deadline, "not restarted after exit 1");
        std::thread::sleep(Duration::from_millis(100));
    }
    host.get(&preview, "/raise?signal=6");
    wait_for_nx_line(
        &host,
        &id,
        "killed by SIGABRT (exit code 134 from the sandbox)",
        "",
    );
    let last = host.deployment("named", &id)["last_exit"].clone();
    assert_eq!(last["result"], "signal", "{last}");
    let text = host.nx(&["status", "named"]).stdout;
    assert!(text.contains("killed by SIGABRT"), "{text}");
}

#[test]
fn a_program_that_exits_reads_failed_with_its_exit_code() {
    let host = Host::start();
    let sample = nx_testkit::sample_app();
    let out = host.nx(&[
        "push",
        sample.to_str().unwrap(),
        "--sandbox",
        "quits",
        "--",
        "task",
        "exit",
        "3",
    ]);
    assert!(!out.ok, "{}", out.stdout);
    let status = host.nx_json(&["status", "quits"]);
    let d = &status[0]["deployments"][0];
    assert_eq!(d["last_exit"]["result"], "exit-code", "{d}");
    assert_eq!(d["last_exit"]["exit_code"], 3, "{d}");
    let ls = host.nx(&["ls"]).stdout;
    assert!(ls.contains("failed (exit-code)"), "{ls}");
    assert!(ls.contains("exited with code 3"), "{ls}");
    assert!(!ls.contains("inactive/dead"), "{ls}");
}

/// This host's hard open-files limit: a unit cannot raise it without CAP_SYS_RESOURCE.
fn hard_nofile() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .unwrap()
        .1
}

#[test]
fn the_open_files_limit_is_65536_unless_set() {
    let host = Host::start();
    let open_files = |id: &str| -> (u64, u64) {
        let (status, limits) = host.get(
            &host.preview_host("files", id),
            "/read?path=/proc/self/limits",
        );
        assert_eq!(status, 200, "{limits}");
        open_files_in(&limits)
    };
    let default = host.push_sample("files", &[]);
    let expected = 65_536.min(hard_nofile());
    assert_eq!(open_files(&default), (expected, expected));
    if expected < 65_536 {
        let out = host.nx(&["logs", &default]);
        assert!(
            out.stdout.contains("the host's hard limit"),
            "{}",
            out.stdout
        );
    }
    let set = host.push_sample("files", &["--nofile", "4096"]);
    assert_eq!(open_files(&set), (4096, 4096));
}

/// The soft and hard `Max open files` of a process, from /proc/<pid>/limits.
fn open_files_of(pid: u32) -> (u64, u64) {
    open_files_in(&std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap())
}

/// The soft and hard `Max open files` in the text of a /proc/<pid>/limits.
fn open_files_in(limits: &str) -> (u64, u64) {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[test]
fn nxd_raises_its_soft_open_files_limit_to_the_hard_one() {
    use std::os::unix::fs::PermissionsExt;
    // nxd started as systemd starts a service by default: a soft limit of 1024.
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let wrapper = dir.path().join("nxd-soft-1024");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nulimit -S -n 1024\nexec {:?} \"$@\"\n",
            nx_testkit::bin("nxd")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let host = Host::start_with_nxd(wrapper, "");
    let (soft, hard) = open_files_of(host.nxd_pid());
    assert!(
        hard > 1024,
        "this host's hard limit is {hard}: nothing to raise"
    );
    assert_eq!(soft, hard);
}

/// Session 16's closing note: every sandbox's devpts instance draws from the host's one pool,
/// `kernel.pty.max` less `kernel.pty.reserve`, which only the NixOS module raised: on Debian's
/// 4096, 48 sandboxes took every terminal. nxd raises it for its deployments where it may
/// write it, and where it may not (here /proc/sys/kernel/pty read-only in nxd's mount
/// namespace, as systemd's ProtectKernelTunables makes it), says so at start.
#[test]
fn nxd_raises_the_hosts_pseudo_terminal_pool_for_its_sandboxes_or_says_it_cannot() {
    use std::os::unix::fs::PermissionsExt;
    let pty_max = "/proc/sys/kernel/pty/max";
    let read = |name: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/sys/kernel/pty/{name}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    // The kernel's default, as on a Debian host.
    std::fs::write(pty_max, "4096").unwrap();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let wrapper = dir.path().join("nxd-pty-read-only");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec unshare --mount sh -c 'mount --bind /proc/sys/kernel/pty \
             /proc/sys/kernel/pty && mount -o remount,bind,ro /proc/sys/kernel/pty && \
             exec \"$0\" \"$@\"' {:?} \"$@\"\n",
            nx_testkit::bin("nxd")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    // 1,000 deployments ([ports]' default; a test host's 40 need less than the default pool).
    let ports = (20000, 20999);
    let host = Host::start_with_ports(wrapper, ports, 0, "");
    let warned = host
        .nxd_log()
        .lines()
        .find(|l| l.contains("WARN") && l.contains("kernel.pty.max is 4096"))
        .map(str::to_owned);
    drop(host);
    let warned = warned.expect("nxd said nothing of kernel.pty.max");
    // 64 terminals each, and the reserve.
    let wanted = 1000 * 64 + read("reserve");
    assert!(
        warned.contains("nxd serves 1000") && warned.contains(&format!("kernel.pty.max={wanted}")),
        "{warned}"
    );
    assert_eq!(read("max"), 4096);
    let host = Host::start_with_ports(nx_testkit::bin("nxd"), ports, 0, "");
    assert_eq!(read("max"), wanted, "{}", host.nxd_log());
}

const GO_PROGRAM: &str = r#"package main

import (
	"fmt"
	"net/http"
	"os"
	"os/user"
	"time"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		loc, err := time.LoadLocation("America/New_York")
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		winter := time.Date(2026, 1, 15, 12, 0, 0, 0, time.UTC).In(loc)
		u, err := user.Current()
		name := "?"
		if err == nil {
			name = u.Username + " " + u.HomeDir
		} else {
			name = err.Error()
		}
		fmt.Fprintf(w, "%s|%s|%s\n", winter.Format("15:04 MST"), time.Now().Location(), name)
	})
	panic(http.ListenAndServe(os.Getenv("HOST")+":"+os.Getenv("PORT"), nil))
}
"#;

/// Builds GO_PROGRAM with `CGO_ENABLED=0` (static) into `dir`.
fn build_go(dir: &Path) -> std::path::PathBuf {
    std::fs::write(dir.join("main.go"), GO_PROGRAM).unwrap();
    let out = Command::new("go")
        .args(["build", "-o", "zone", "main.go"])
        .current_dir(dir)
        .env("CGO_ENABLED", "0")
        .env("GO111MODULE", "off")
        .env("GOCACHE", dir.join("cache"))
        .env("HOME", dir)
        .output()
        .expect("go is needed for this test: apt-get install golang-go (install-deps.sh does)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("zone")
}

#[test]
fn a_static_go_program_loads_a_time_zone_and_knows_its_user() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let binary = build_go(dir.path());
    let host = Host::start();
    let out = host.nx_json(&["push", binary.to_str().unwrap(), "--sandbox", "zone"]);
    let id = out["deployment"]["id"].as_str().unwrap().to_owned();
    let (status, body) = host.get(&host.preview_host("zone", &id), "/");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.trim(), "07:00 EST|Local|app /data");
}

#[test]
fn debians_caddy_serves_with_nothing_but_its_port() {
    let host = Host::start();
    let out = host.nx_json(&[
        "push",
        "/usr/bin/caddy",
        "--sandbox",
        "caddy",
        "--",
        "file-server",
        "--listen",
        // Every address of its own namespace: the router comes in over its veth.
        ":$PORT",
    ]);
    let id = out["deployment"]["id"].as_str().unwrap().to_owned();
    let response = host
        .http()
        .get(format!("http://{}/", host.router))
        .header("Host", host.preview_host("caddy", &id))
        .send()
        .unwrap();
    assert_eq!(response.headers()["server"], "Caddy");
    assert_eq!(response.status(), 404, "an empty /data has no index");
}
