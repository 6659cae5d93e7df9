//! Volumes (`nx volume`, `nx push --volume NAME:/PATH`): production's files survive a push, a
//! promote and a rollback; a preview gets an empty filesystem or a copy (`--volume-branch`)
//! whose writes stay out of production; the size is a quota; backups are tar archives that
//! restore; `nx sandbox rm` keeps a final one; bad names, paths, sizes and removals are refused
//! with what to do; `[volumes]` caps their number and size; a crash while one is made and a
//! push racing its removal leave nothing half made.

use nx_testkit::Host;

fn push_with_volume(host: &Host) -> String {
    push_with_volume_and(host, &[])
}

fn push_with_volume_and(host: &Host, extra: &[&str]) -> String {
    let mut args = vec!["--volume", "files:/srv/files"];
    args.extend_from_slice(extra);
    host.push_sample("shop", &args)
}

/// The files under `dir` as deployment `id` sees them (`/ls` of the sample), sorted.
fn ls(host: &Host, id: &str, dir: &str) -> Vec<String> {
    ls_at(host, &host.preview_host("shop", id), dir)
}

/// `ls`, through a host name of the router (a preview's or production's).
fn ls_at(host: &Host, name: &str, dir: &str) -> Vec<String> {
    let (status, body) = host.get(name, &format!("/ls?path={dir}"));
    assert_eq!(status, 200, "{body}");
    let mut names: Vec<String> = serde_json::from_str(&body).unwrap();
    names.retain(|n| n != "lost+found");
    names
}

fn write(host: &Host, id: &str, file: &str) {
    let name = format!("../srv/files/{file}");
    let got = host.get(
        &host.preview_host("shop", id),
        &format!("/write?name={name}"),
    );
    assert_eq!(got, (200, name), "{id} writing {file}");
}

#[test]
fn production_keeps_its_volume_across_push_promote_rollback_and_previews_get_copies() {
    let host = Host::start();
    let made = host.nx_json(&["volume", "create", "shop", "files", "--size", "32"]);
    assert_eq!(made["size_mb"], 32, "{made}");

    // A first push is a preview: an empty filesystem of its own, whatever it writes there
    // stays out of the volume; promoted, it restarts on the volume itself.
    let a = push_with_volume(&host);
    assert_eq!(host.deployment("shop", &a)["volumes"][0]["source"], "empty");
    write(&host, &a, "scratch");
    assert!(host.path(&format!("volumes/shop/{a}/files.img")).is_file());
    host.nx_json(&["promote", "shop", &a]);
    assert_eq!(host.deployment("shop", &a)["volumes"][0]["source"], "live");
    assert!(
        !host.path(&format!("volumes/shop/{a}")).exists(),
        "its copy went at its promotion"
    );
    assert_eq!(ls(&host, &a, "/srv/files"), Vec::<String>::new());
    write(&host, &a, "from-a");

    // B with --volume-branch sees production's files; what it writes stays out of them.
    let b = push_with_volume_and(&host, &["--volume-branch"]);
    assert_eq!(
        host.deployment("shop", &b)["volumes"][0]["source"],
        "branch"
    );
    assert_eq!(ls(&host, &b, "/srv/files"), ["from-a"]);
    write(&host, &b, "from-b-preview");
    assert_eq!(ls(&host, &a, "/srv/files"), ["from-a"]);
    // C without it gets an empty one.
    let c = push_with_volume(&host);
    assert_eq!(ls(&host, &c, "/srv/files"), Vec::<String>::new());

    // B promoted: it restarts on production's volume (its copy, and what it wrote there,
    // are gone); what it writes now is production's.
    host.nx_json(&["promote", "shop", &b]);
    assert_eq!(ls(&host, &b, "/srv/files"), ["from-a"]);
    write(&host, &b, "from-b");
    assert_eq!(
        host.get(
            &host.production_host("shop"),
            "/read?path=/srv/files/from-a"
        ),
        (200, "../srv/files/from-a".into())
    );
    // A rollback to A: it sees every file production wrote, its own and B's.
    host.nx_json(&["rollback", "shop"]);
    assert_eq!(
        ls_at(&host, &host.production_host("shop"), "/srv/files"),
        ["from-a", "from-b"]
    );
    write(&host, &a, "after-rollback");
    assert_eq!(
        ls(&host, &b, "/srv/files"),
        ["after-rollback", "from-a", "from-b"]
    );

    // nx rm of a preview deletes its copy and keeps the volume.
    host.nx_json(&["stop", &c]);
    host.nx_json(&["rm", &c]);
    assert!(!host.path(&format!("volumes/shop/{c}")).exists());
    let listed = host.nx_json(&["volume", "ls", "shop"]);
    assert_eq!(listed[0]["name"], "files", "{listed}");
    assert_eq!(
        listed[0]["used_by"].as_array().unwrap().len(),
        2,
        "A and B: {listed}"
    );

    // Its size is a quota: 32 MiB, then ENOSPC, and the program goes on.
    let (_, body) = host.get(&host.preview_host("shop", &a), "/fill?dir=/srv/files&mb=64");
    let filled: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        filled["error"]
            .as_str()
            .unwrap_or("")
            .contains("No space left"),
        "{body}"
    );
    assert!(
        filled["written_bytes"].as_u64().unwrap() <= 32 << 20,
        "{body}"
    );
    assert_eq!(
        host.get(&host.preview_host("shop", &a), "/health"),
        (200, "ok\n".into())
    );
    // Another sandbox has no such volume.
    let other = host.nx(&[
        "push",
        nx_testkit::sample_app().to_str().unwrap(),
        "-s",
        "other",
        "--volume",
        "files:/srv/files",
    ]);
    assert!(!other.ok);
    assert!(
        other.stderr.contains("has no volume files"),
        "{}",
        other.stderr
    );
    // Removal is refused while mounted.
    let busy = host.nx(&["volume", "rm", "shop", "files"]);
    assert!(!busy.ok);
    assert!(busy.stderr.contains("mounted by"), "{}", busy.stderr);
}

#[test]
fn backup_restore_and_the_final_backup_of_sandbox_rm() {
    let host = Host::start();
    let out = tempfile::tempdir().unwrap();
    host.nx_json(&["volume", "create", "shop", "files", "--size", "32"]);
    let a = push_with_volume(&host);
    host.nx_json(&["promote", "shop", &a]);
    write(&host, &a, "kept");

    // A backup: a tar archive on the host and here, with the volume's files.
    let saved = out.path().join("files.tar");
    let made = host.nx_json(&[
        "volume",
        "backup",
        "shop",
        "files",
        "-o",
        saved.to_str().unwrap(),
    ]);
    let listing = tar_list(&saved);
    assert!(listing.contains(&"./kept".to_owned()), "{listing:?}");
    assert!(
        !listing.iter().any(|f| f.contains("lost+found")),
        "{listing:?}"
    );
    let kept = made["backup"]["path"].as_str().unwrap();
    assert_eq!(std::fs::read(kept).unwrap(), std::fs::read(&saved).unwrap());

    // A file written after it is gone after a restore of it (production restarts on the
    // restored files and writes them again); a bad archive changes nothing.
    write(&host, &a, "later");
    let junk = out.path().join("junk.tar");
    std::fs::write(&junk, b"not a tar archive at all").unwrap();
    let bad = restore_from(&host, &junk);
    assert!(!bad.ok);
    assert!(
        bad.stderr.contains("the volume is as it was"),
        "{}",
        bad.stderr
    );
    assert_eq!(ls(&host, &a, "/srv/files"), ["kept", "later"]);
    let restored = host.nx_json(&[
        "volume",
        "restore",
        "shop",
        "files",
        saved.to_str().unwrap(),
    ]);
    assert_eq!(restored["restored"], "files", "{restored}");
    assert_eq!(ls(&host, &a, "/srv/files"), ["kept"]);
    write(&host, &a, "kept");
    write(&host, &a, "after-restore");
    let id = made["backup"]["id"].as_str().unwrap();
    host.nx_json(&["volume", "restore", "shop", "files", id]);
    assert_eq!(ls(&host, &a, "/srv/files"), ["kept"]);

    // nx sandbox rm: a final backup of each volume, kept on the host; --no-backup: none.
    let removed = host.nx_json(&["sandbox", "rm", "shop"]);
    let finals = removed["final_volume_backups"].as_array().unwrap();
    assert_eq!(finals.len(), 1, "{removed}");
    let path = std::path::PathBuf::from(finals[0]["path"].as_str().unwrap());
    let aside = removed["backups_kept_at"]
        .as_str()
        .expect("backups set aside");
    assert!(
        aside.starts_with(host.path("backups/.removed/shop.").to_str().unwrap())
            && path.starts_with(std::path::Path::new(aside).join("volumes/files")),
        "{removed}"
    );
    assert!(tar_list(&path).contains(&"./kept".to_owned()));
    assert!(!host.path("volumes/shop").exists());
    // The name is someone else's now: a sandbox made again as shop, with a token of its own,
    // reads none of the old one's backups (volume or database).
    host.nx_json(&["sandbox", "create", "shop"]);
    let token = host.nx_json(&["token", "create", "--sandbox", "shop", "--can", "push,db"])
        ["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = finals[0]["id"].as_str().unwrap();
    let status = host
        .http()
        .get(format!(
            "http://{}/v1/sandboxes/shop/volumes/files/backups/{id}",
            host.api
        ))
        .bearer_auth(&token)
        .send()
        .expect("request")
        .status();
    assert_eq!(status, 404);
    let listed = host.nx_as(&token, &["--json", "db", "backups", "shop"]);
    assert!(
        listed.ok && listed.stdout.trim() == "[]",
        "{}{}",
        listed.stdout,
        listed.stderr
    );
    host.nx_json(&["sandbox", "rm", "shop", "--no-backup"]);
    host.nx_json(&["volume", "create", "scratch", "files", "--size", "16"]);
    let removed = host.nx_json(&["sandbox", "rm", "scratch", "--no-backup"]);
    assert_eq!(removed["final_volume_backups"], serde_json::json!([]));
    assert!(!host.path("volumes/scratch").exists());
    assert!(!host.path("backups/scratch/volumes").exists());
}

/// Attacker s8 F9: a backup of a volume holding a sparse file was as large as the file's length
/// (3 GiB for 16 MiB used), and backups were never deleted. A backup now leaves the holes out
/// (GNU tar `--sparse`; it restores them as holes) and the host keeps the newest
/// `volumes.backup_retention` of each volume (7 by default).
#[test]
fn a_backup_of_a_mostly_empty_volume_is_small_and_old_backups_are_deleted() {
    use std::os::unix::fs::FileExt;
    let host = Host::start();
    let out = tempfile::tempdir().unwrap();
    host.nx_json(&["volume", "create", "shop", "files", "--size", "1024"]);
    // A 768 MiB file that holds 1 MiB, restored into the volume (tar keeps it sparse).
    let tree = out.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    let data = vec![7u8; 1 << 20];
    let sparse = std::fs::File::create(tree.join("sparse")).unwrap();
    sparse.set_len(768 << 20).unwrap();
    sparse.write_all_at(&data, 256 << 20).unwrap();
    let archive = out.path().join("sparse.tar");
    let made = std::process::Command::new("tar")
        .args(["--sparse", "--format=pax", "-C"])
        .arg(&tree)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap();
    assert!(made.success());
    host.nx_json(&[
        "volume",
        "restore",
        "shop",
        "files",
        archive.to_str().unwrap(),
    ]);

    let saved = out.path().join("backup.tar");
    let mut ids = Vec::new();
    for _ in 0..8 {
        let made = host.nx_json(&[
            "volume",
            "backup",
            "shop",
            "files",
            "-o",
            saved.to_str().unwrap(),
        ]);
        let size = made["backup"]["size"].as_u64().unwrap();
        assert!(
            size < 4 << 20,
            "a backup of a volume holding 1 MiB took {} MiB",
            size >> 20
        );
        ids.push(made["backup"]["id"].as_str().unwrap().to_owned());
    }
    // It holds the file as it was: its length, its data where it was written.
    let check = out.path().join("check");
    std::fs::create_dir(&check).unwrap();
    let unpacked = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&saved)
        .arg("-C")
        .arg(&check)
        .status()
        .unwrap();
    assert!(unpacked.success());
    let file = std::fs::File::open(check.join("sparse")).unwrap();
    assert_eq!(file.metadata().unwrap().len(), 768 << 20);
    let mut read = vec![0u8; 1 << 20];
    file.read_exact_at(&mut read, 256 << 20).unwrap();
    assert!(read == data, "the data written at 256 MiB");
    // Eight backups made, the newest seven kept.
    let mut kept: Vec<String> = std::fs::read_dir(host.path("backups/shop/volumes/files"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    kept.sort();
    let newest: Vec<String> = ids[1..].iter().map(|id| format!("{id}.tar")).collect();
    assert_eq!(kept, newest);
}

fn tar_list(archive: &std::path::Path) -> Vec<String> {
    let out = std::process::Command::new("tar")
        .arg("-tf")
        .arg(archive)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim_end_matches('/').to_owned())
        .collect()
}

#[test]
fn bad_volume_names_paths_and_sizes_are_refused_and_nothing_is_made() {
    let host = Host::start();
    for (args, says) in [
        (
            vec!["volume", "create", "shop", "a/b", "--size", "32"],
            "not allowed",
        ),
        (
            vec!["volume", "create", "shop", "..", "--size", "32"],
            "not allowed",
        ),
        (
            vec!["volume", "create", "shop", "Files", "--size", "32"],
            "lowercase",
        ),
        (
            vec!["volume", "create", "shop", "files", "--size", "1"],
            "16 to",
        ),
        // The wire's largest (16 TiB) is past the host's default maximum (100 GiB).
        (
            vec!["volume", "create", "shop", "files", "--size", "16777216"],
            "give 16 to 102400 MiB (the largest is nxd's volumes.max_size_mb)",
        ),
    ] {
        let out = host.nx(&args);
        assert!(!out.ok, "{args:?}");
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
    host.nx_json(&["volume", "create", "shop", "files", "--size", "16"]);
    let again = host.nx(&["volume", "create", "shop", "files", "--size", "16"]);
    assert!(!again.ok);
    assert!(again.stderr.contains("already"), "{}", again.stderr);
    let sample = nx_testkit::sample_app();
    // The last two: volumes one under the other (one would hide the other), in either order.
    host.nx_json(&["volume", "create", "shop", "inner", "--size", "16"]);
    for (mounts, says) in [
        (vec!["files:/data"], "inside /data"),
        (vec!["files:/app"], "inside /app"),
        (vec!["files:/data/x"], "inside /data"),
        (vec!["files:/"], "plain absolute"),
        (vec!["files:relative"], "not absolute"),
        (vec!["files:/srv/../etc"], "plain absolute"),
        (vec!["nope:/srv/x"], "has no volume nope"),
        (vec!["files:/srv/a/b", "inner:/srv/a"], "are nested"),
        (vec!["inner:/srv/a", "files:/srv/a/b"], "are nested"),
    ] {
        let mut args = vec!["push", sample.to_str().unwrap(), "-s", "shop"];
        for mount in &mounts {
            args.extend(["--volume", mount]);
        }
        let out = host.nx(&args);
        assert!(!out.ok, "{mounts:?}");
        assert!(out.stderr.contains(says), "{mounts:?}: {}", out.stderr);
    }
    host.nx_json(&["volume", "rm", "shop", "inner"]);
    let listed = host.nx_json(&["status", "shop"]);
    assert_eq!(listed[0]["deployments"], serde_json::json!([]), "{listed}");
    assert_eq!(
        nx_testkit::files_under(&host.path("volumes")),
        [host.path("volumes/shop/files.img").display().to_string()]
    );
    // Unmounted, it goes, with its files.
    host.nx_json(&["volume", "rm", "shop", "files"]);
    assert!(nx_testkit::files_under(&host.path("volumes")).is_empty());
    assert_eq!(
        host.nx_json(&["volume", "ls", "shop"]),
        serde_json::json!([])
    );
}

/// Everything under the host's `volumes/` (images, copies, leftovers).
fn volume_files(host: &Host) -> Vec<String> {
    nx_testkit::files_under(&host.path("volumes"))
}

#[test]
fn a_crash_while_a_volume_is_created_leaves_nothing_half_made() {
    let mut host = Host::start();
    // kill -9 with the image copied but not in place, then with the image in place but its
    // row not committed: after the next start no volume is listed, no file is left, and the
    // name can be used.
    for point in ["data_disk::copied", "volumes::record"] {
        host.crash_during(
            point,
            &["volume", "create", "shop", "files", "--size", "16"],
        );
        let listed = host.nx(&["volume", "ls", "shop"]);
        assert!(
            !listed.ok && listed.stderr.contains("no sandbox shop"),
            "{point}: the sandbox came with a volume that was never made: {}{}",
            listed.stdout,
            listed.stderr
        );
        assert_eq!(volume_files(&host), Vec::<String>::new(), "{point}");
    }
    host.nx_json(&["volume", "create", "shop", "files", "--size", "16"]);
    assert_only_the_image(&host);
    let a = push_with_volume_and(&host, &["--volume-live"]);
    write(&host, &a, "made");
}

/// `ls_at` once the deployment behind `name` answers again (it is adopted in the background
/// after nxd's start): within 60 s.
fn ls_once_up(host: &Host, name: &str, dir: &str) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (status, body) = host.get(name, &format!("/ls?path={dir}"));
        if status == 200 {
            let mut names: Vec<String> = serde_json::from_str(&body).unwrap();
            names.retain(|n| n != "lost+found");
            return names;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} does not answer: {status} {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The promoted deployment of `shop`, as `nx status` says.
fn production(host: &Host) -> String {
    let status = host.nx_json(&["status", "shop"]);
    status[0]["promoted"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_crash_during_the_promotion_of_a_volume_preview_finishes_it_or_leaves_it_undone() {
    let mut host = Host::start();
    host.nx_json(&["volume", "create", "shop", "files", "--size", "32"]);
    let mut prod = push_with_volume(&host);
    host.nx_json(&["promote", "shop", &prod]);
    write(&host, &prod, "from-production");

    // kill -9 once the preview runs on production's volume, its promotion not recorded:
    // after the next start it is a preview on its own filesystem again (it sees what it
    // wrote there, not production's files), production is as it was. Then kill -9 once the
    // promotion is recorded, its copies not yet deleted: the promotion is finished.
    // A crash once the preview's database branch was swapped in (`--swap-db`) finishes the
    // promotion too: production's database is the branch's already.
    for (point, swap_db, finished) in [
        ("volumes::promoting", false, false),
        ("volumes::promoted", false, true),
        ("volumes::promoting", true, true),
    ] {
        let (push, promote) = if swap_db {
            (&["--db-branch"][..], &["--swap-db"][..])
        } else {
            (&[][..], &["--keep-db"][..])
        };
        let preview = push_with_volume_and(&host, push);
        write(&host, &preview, &format!("preview-{point}"));
        let mut args = vec!["promote", "shop", &preview];
        args.extend_from_slice(promote);
        let cut = host.crash_during(point, &args);
        assert!(
            cut.stderr.contains("finishes it or undoes it"),
            "{point}: {}",
            cut.stderr
        );
        let own = host.path(&format!("volumes/shop/{preview}"));
        let mounted = host.deployment("shop", &preview)["volumes"][0]["source"].clone();
        if finished {
            prod = preview.clone();
            assert_eq!(production(&host), prod, "{point}");
            assert_eq!(mounted, "live", "{point}");
            assert!(!own.exists(), "{point}: its copies stayed");
        } else {
            assert_eq!(production(&host), prod, "{point}: production moved");
            assert_eq!(
                mounted, "empty",
                "{point}: a preview mounts production's volume"
            );
            assert_eq!(
                ls_once_up(&host, &host.preview_host("shop", &preview), "/srv/files"),
                [format!("preview-{point}")],
                "{point}: the preview does not run on its own filesystem"
            );
        }
        assert_eq!(
            ls_once_up(&host, &host.production_host("shop"), "/srv/files"),
            ["from-production"],
            "{point}: production's files changed"
        );
        assert_eq!(
            ls_once_up(&host, &host.preview_host("shop", &prod), "/srv/files"),
            ["from-production"],
            "{point}"
        );
    }
}

#[test]
fn a_preview_that_does_not_start_on_production_s_volume_is_not_promoted_and_runs_on_its_copy_again()
{
    let host = Host::start();
    host.nx_json(&["volume", "create", "shop", "files", "--size", "16"]);
    let prod = push_with_volume(&host);
    host.nx_json(&["promote", "shop", &prod]);
    write(&host, &prod, "poison");
    // Its own (empty) filesystem has no poison: it runs; on production's it exits at start.
    let preview = push_with_volume_and(&host, &["-e", "FAIL_AT_START_IF=/srv/files/poison"]);
    write(&host, &preview, "own");
    let promoted = host.nx(&["promote", "shop", &preview]);
    assert!(!promoted.ok, "{}", promoted.stdout);
    for said in [
        "nothing was promoted",
        "what it wrote there stays",
        "it runs on its own volume copies again",
    ] {
        assert!(
            promoted.stderr.contains(said),
            "{said}: {}",
            promoted.stderr
        );
    }
    assert_eq!(production(&host), prod);
    assert_eq!(
        host.deployment("shop", &preview)["volumes"][0]["source"],
        "empty"
    );
    assert_eq!(ls(&host, &preview, "/srv/files"), ["own"]);
    assert_eq!(
        ls_at(&host, &host.production_host("shop"), "/srv/files"),
        ["poison"]
    );
}

/// Processes of volume jobs left from before nxd's start (a job's `nxd volume-job`, its `cp`
/// or `tar`), as "pid: command line": those whose command line names a job directory under
/// the host's `volumes/.jobs` that is gone (nxd's start removes the old ones; a job the new
/// nxd runs, such as a copy made again, has its directory).
fn volume_job_processes(host: &Host) -> Vec<String> {
    let jobs = format!("{}/", host.path("volumes/.jobs").display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let (_, inside) = cmdline.split_once(&jobs)?;
            let job = inside.split(['/', ' ']).next()?;
            let gone = !std::path::Path::new(&jobs).join(job).exists();
            gone.then(|| format!("{}: {cmdline}", entry.file_name().to_string_lossy()))
        })
        .collect()
}

/// Loop devices (losetup(8)) still attached to a deleted image of the host's state dir or of
/// `sandbox`'s volumes (an image removed at start while a job's mount of it lived on), waiting
/// up to 5 s for the kernel to let go of those of a job just stopped.
fn loop_devices_on_deleted_files(host: &Host, sandbox: &str) -> Vec<String> {
    let state = host.state_dir.path().display().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let leaked: Vec<String> = nx_testkit::loop_devices()
            .into_iter()
            .filter(|l| on_a_deleted_image(l, &state, sandbox))
            .collect();
        if leaked.is_empty() || std::time::Instant::now() > deadline {
            return leaked;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Whether a losetup(8) line (`NAME BACK-FILE`) is a device on a deleted file of the state
/// dir `state` or of `sandbox`'s volumes. While a mount namespace holds the image, the kernel
/// names it from the host's root (`<state>/volumes/<sandbox>/<name>.img (deleted)`); once none
/// does, from the root of the embedded manager's bind of the state dir
/// (`/volumes/<sandbox>/<name>.img (deleted)`; notes/s14/mount14.md), which the full path
/// alone missed.
fn on_a_deleted_image(line: &str, state: &str, sandbox: &str) -> bool {
    let Some((_, file)) = line.split_once(char::is_whitespace) else {
        return false;
    };
    let file = file.trim_start();
    file.ends_with(" (deleted)")
        && (file.starts_with(&format!("{state}/"))
            || file.starts_with(&format!("/volumes/{sandbox}/")))
}

#[test]
fn a_leaked_loop_device_is_seen_by_either_name_of_its_deleted_image() {
    let state = "/var/tmp/nx-test-abc";
    for (line, leaked) in [
        (
            "/dev/loop3 /var/tmp/nx-test-abc/volumes/shop/files.img (deleted)",
            true,
        ),
        ("/dev/loop3 /volumes/shop/files.img (deleted)", true),
        (
            "/dev/loop12  /volumes/shop/de0abc12/files.img (deleted)",
            true,
        ),
        (
            "/dev/loop3 /var/tmp/nx-test-abc/volumes/shop/files.img",
            false,
        ),
        ("/dev/loop3 /volumes/other/files.img (deleted)", false),
        (
            "/dev/loop3 /var/tmp/nx-test-abcd/volumes/shop/files.img (deleted)",
            false,
        ),
    ] {
        assert_eq!(on_a_deleted_image(line, state, "shop"), leaked, "{line}");
    }
}

/// After a crash and nxd's next start: no process of a volume job runs, no loop device of one
/// (on the images of the crash test's sandbox `shop`) is left.
fn assert_no_job_left(host: &Host, after: &str) {
    assert_eq!(volume_job_processes(host), Vec::<String>::new(), "{after}");
    assert_eq!(
        loop_devices_on_deleted_files(host, "shop"),
        Vec::<String>::new(),
        "{after}"
    );
}

/// Fills a volume's image, mounted on the host while no deployment mounts it, with `count`
/// files of 4 MiB of random bytes, `f00` to `fNN`; returns their names.
fn fill_image(host: &Host, image: &str, count: usize) -> Vec<String> {
    let mnt = tempfile::tempdir().unwrap();
    let image = host.path(image);
    let names: Vec<String> = (0..count).map(|i| format!("f{i:02}")).collect();
    let script = format!(
        "set -e; mount -o loop {image} {mnt}; for f in {files}; do head -c 4M /dev/urandom > {mnt}/$f; done; umount {mnt}",
        image = image.display(),
        mnt = mnt.path().display(),
        files = names.join(" ")
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    names
}

#[test]
fn kill_9_of_nxd_during_each_volume_job_leaves_no_job_running_and_nothing_half_made() {
    let mut host = Host::start();
    host.nx_json(&["volume", "create", "shop", "files", "--size", "512"]);
    let files = fill_image(&host, "volumes/shop/files.img", 96);
    let prod = push_with_volume_and(&host, &["--volume-live"]);
    host.nx_json(&["promote", "shop", &prod]);
    let archive = host.path("files.tar");
    host.nx_json(&[
        "volume",
        "backup",
        "shop",
        "files",
        "-o",
        archive.to_str().unwrap(),
    ]);

    // kill -9 of nxd just after a backup's and a restore's job started: after the next start
    // no process of the job runs, nothing of it is left, production's files are whole.
    let steps: [&[&str]; 2] = [
        &["volume", "backup", "shop", "files"],
        &[
            "volume",
            "restore",
            "shop",
            "files",
            archive.to_str().unwrap(),
        ],
    ];
    for command in steps {
        host.crash_during("volumes::job", command);
        assert_no_job_left(&host, &format!("{command:?}"));
        let left: Vec<String> = nx_testkit::files_under(&host.path("volumes"))
            .into_iter()
            .chain(nx_testkit::files_under(&host.path("backups")))
            .filter(|f| f.contains(".jobs") || f.ends_with(".partial") || f.ends_with(".restoring"))
            .collect();
        assert_eq!(left, Vec::<String>::new(), "{command:?}");
        assert_eq!(
            ls_once_up(&host, &host.production_host("shop"), "/srv/files"),
            files,
            "{command:?}"
        );
    }

    // The copy of a --volume-branch push, cut short: the preview never runs on a half-made
    // copy; its start makes the copy again, whole.
    let listed = host.nx_json(&["status", "shop"]);
    let before: Vec<String> = listed[0]["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    host.crash_during(
        "volumes::job",
        &[
            "push",
            nx_testkit::sample_app().to_str().unwrap(),
            "-s",
            "shop",
            "--volume",
            "files:/srv/files",
            "--volume-branch",
        ],
    );
    assert_no_job_left(&host, "a crash in a copy");
    let listed = host.nx_json(&["status", "shop"]);
    let preview = listed[0]["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .find(|id| !before.contains(id))
        .expect("the push was recorded before its copy");
    assert_eq!(
        ls_once_up(&host, &host.preview_host("shop", &preview), "/srv/files"),
        files,
        "the preview runs on a half-made copy"
    );
    assert!(!host
        .path(&format!("volumes/shop/{preview}/.copying"))
        .exists());

    // The final backup of `nx sandbox rm`, cut short: no job runs on, no partial archive is
    // left, and nxd's next start finishes the removal, with a whole final backup (records
    // last: attacker s12 H5).
    let archives = |host: &Host, under: &str| -> Vec<String> {
        nx_testkit::files_under(&host.path(under))
            .into_iter()
            .filter(|f| f.contains("/volumes/") && f.ends_with(".tar"))
            .collect()
    };
    let before = archives(&host, "backups/shop").len();
    host.crash_during("volumes::job", &["sandbox", "rm", "shop"]);
    assert_no_job_left(&host, "a crash in sandbox rm's final backup");
    let partial: Vec<String> = nx_testkit::files_under(&host.path("backups"))
        .into_iter()
        .filter(|f| f.ends_with(".partial"))
        .collect();
    assert_eq!(partial, Vec::<String>::new());
    assert_eq!(host.nx_json(&["ls"]), serde_json::json!([]));
    let kept = archives(&host, "backups/.removed");
    assert_eq!(kept.len(), before + 1, "{kept:?}");
}

/// `POST /v1/sandboxes/{sandbox}/volumes` as a deploy token would send it: (status, error).
fn create_raw(host: &Host, token: &str, sandbox: &str, name: &str, size_mb: u64) -> (u16, String) {
    let answer = host
        .http()
        .post(format!(
            "http://{}/v1/sandboxes/{sandbox}/volumes",
            host.api
        ))
        .bearer_auth(token)
        .json(&serde_json::json!({ "name": name, "size_mb": size_mb }))
        .send()
        .unwrap();
    let status = answer.status().as_u16();
    let body: serde_json::Value = answer.json().unwrap();
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

#[test]
fn volumes_per_sandbox_and_their_size_are_capped_and_a_refusal_leaves_nothing() {
    let host = Host::start_with("[volumes]\nmax_per_sandbox = 2\nmax_size_mb = 16777216\n");
    host.nx_json(&["volume", "create", "shop", "keep", "--size", "16"]);
    let token = host.nx_json(&["token", "create", "--sandbox", "shop", "--can", "push"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // A deploy token fills its sandbox's allowance, then is refused with the limit named.
    assert_eq!(create_raw(&host, &token, "shop", "two", 16).0, 200);
    let (status, error) = create_raw(&host, &token, "shop", "three", 16);
    assert_eq!(status, 409, "{error}");
    assert!(error.contains("volumes.max_per_sandbox = 2"), "{error}");
    // The largest size allowed, more than the disk has: refused before anything is made,
    // the sandbox not even created.
    let (status, error) = create_raw(&host, &host.token, "big", "huge", 16 << 20);
    assert_eq!(status, 409, "{error}");
    assert!(error.contains("MiB free"), "{error}");
    let listed = host.nx(&["volume", "ls", "big"]);
    assert!(
        listed.stderr.contains("no sandbox big"),
        "{}",
        listed.stderr
    );
    assert_eq!(
        volume_files(&host),
        [
            host.path("volumes/shop/keep.img").display().to_string(),
            host.path("volumes/shop/two.img").display().to_string()
        ]
    );
    // One removed, one may be made again.
    host.nx_json(&["volume", "rm", "shop", "two"]);
    assert_eq!(create_raw(&host, &token, "shop", "three", 16).0, 200);
}

/// `psql` as the superuser on nxd's own database, kept open: it takes `lock` on table
/// deployments in a transaction and holds it until `release`.
struct TableLock(std::process::Child);

impl TableLock {
    fn take(host: &Host, lock: &str) -> Self {
        use std::io::Write;
        let mut child = std::process::Command::new("psql")
            .arg("-h")
            .arg(host.path("postgres/socket"))
            .args(["-p", "5432", "-U", "postgres", "-d", "nx", "-q"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let sql = format!("BEGIN; LOCK TABLE deployments IN {lock} MODE;\n");
        child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(sql.as_bytes())
            .unwrap();
        wait_for_locks(host, &format!("{lock}Lock", lock = camel(lock)), true, 1);
        Self(child)
    }

    fn release(mut self) {
        use std::io::Write;
        self.0
            .stdin
            .as_mut()
            .unwrap()
            .write_all(b"COMMIT;\n")
            .unwrap();
        drop(self.0.stdin.take());
        assert!(self.0.wait().unwrap().success());
    }
}

/// `SHARE` -> `Share`, as pg_locks names modes (`ShareLock`).
fn camel(mode: &str) -> String {
    mode.split(' ')
        .map(|w| w[..1].to_owned() + &w[1..].to_lowercase())
        .collect()
}

/// Waits (up to 120 s) until `count` locks of `mode` on table deployments are granted or
/// waiting, as `granted` says; false if they never were.
fn wait_for_locks(host: &Host, mode: &str, granted: bool, count: usize) -> bool {
    let sql = format!(
        "SELECT count(*) FROM pg_locks WHERE database = (SELECT oid FROM pg_database WHERE datname = 'nx') AND relation = 'deployments'::regclass AND mode = '{mode}' AND granted = {granted}"
    );
    eventually(|| {
        let (ok, out) = nx_testkit::psql(&host.path("postgres/socket"), 5432, "nx", &sql);
        ok && out.parse::<usize>().unwrap_or(0) >= count
    })
}

#[test]
fn a_push_and_a_volume_rm_at_once_one_of_them_is_refused_and_nothing_is_left() {
    let host = Host::start();
    let sample = nx_testkit::sample_app();
    let push = || {
        spawn_nx(
            &host,
            &[
                "--json",
                "push",
                sample.to_str().unwrap(),
                "-s",
                "race",
                "--volume",
                "v:/srv/v",
            ],
        )
    };
    let rm = || spawn_nx(&host, &["volume", "rm", "race", "v"]);
    let done = finished;
    host.nx_json(&["volume", "create", "race", "v", "--size", "16"]);

    // The push reaches its record first (it waits there behind a lock held for the test),
    // then the rm: the push is recorded, the rm refused naming it.
    let held = TableLock::take(&host, "EXCLUSIVE");
    let pushing = push();
    assert!(
        wait_for_locks(&host, "ExclusiveLock", false, 1),
        "the push never reached its record"
    );
    let removing = rm();
    let rm_waited = wait_for_locks(&host, "ShareLock", false, 1);
    held.release();
    let (pushed, removed) = (done(pushing), done(removing));
    assert!(pushed.ok, "{}", pushed.stderr);
    let id = pushed.json()["deployment"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!removed.ok, "the volume went from under deployment {id}");
    assert!(
        removed
            .stderr
            .contains(&format!("mounted by deployment(s) {id}")),
        "{}",
        removed.stderr
    );
    assert!(rm_waited, "the rm did not wait for the push's record");
    host.nx_json(&["stop", &id]);
    host.nx_json(&["rm", &id]);

    // The rm first, the push after it passed its checks: the volume goes, the push is refused
    // and no deployment is left.
    let held = TableLock::take(&host, "EXCLUSIVE");
    let removing = rm();
    assert!(
        wait_for_locks(&host, "ShareLock", false, 1),
        "the rm never took its lock"
    );
    let pushing = push();
    assert!(
        wait_for_locks(&host, "ExclusiveLock", false, 1),
        "the push never reached its record"
    );
    held.release();
    let (pushed, removed) = (done(pushing), done(removing));
    assert!(removed.ok, "{}", removed.stderr);
    assert!(!pushed.ok, "{}", pushed.stdout);
    // --json: the error is printed as {"error": ...}.
    assert!(
        pushed.json()["error"]
            .as_str()
            .unwrap()
            .contains("was removed while this push was being made"),
        "{}",
        pushed.stdout
    );
    let status = host.nx_json(&["status", "race"]);
    assert_eq!(status[0]["deployments"], serde_json::json!([]), "{status}");
    assert_eq!(volume_files(&host), Vec::<String>::new());
}

/// A tar archive at `<dir>/<name>.tar` of files named `files` (each holding its name).
fn archive(dir: &std::path::Path, name: &str, files: &[&str]) -> std::path::PathBuf {
    let tree = dir.join(name);
    std::fs::create_dir_all(&tree).unwrap();
    for f in files {
        std::fs::write(tree.join(f), f).unwrap();
    }
    let tar = dir.join(format!("{name}.tar"));
    let made = std::process::Command::new("tar")
        .arg("-C")
        .arg(&tree)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(made.success());
    tar
}

/// `nx volume restore shop files FILE`.
fn restore_from(host: &Host, file: &std::path::Path) -> nx_testkit::Nx {
    host.nx(&restore_args(file)[1..])
}

/// Nothing under `volumes/` but volume files' image of sandbox shop (no copy, no leftover of
/// a restore).
fn assert_only_the_image(host: &Host) {
    assert_eq!(
        volume_files(host),
        [host.path("volumes/shop/files.img").display().to_string()]
    );
}

/// `nx --json volume restore shop files FILE`'s arguments.
fn restore_args(file: &std::path::Path) -> [&str; 6] {
    let file = file.to_str().unwrap();
    ["--json", "volume", "restore", "shop", "files", file]
}

/// `nx ARGS` started in the background, its output piped.
fn spawn_nx(host: &Host, args: &[&str]) -> std::process::Child {
    host.nx_command(&host.token, args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn finished(child: std::process::Child) -> nx_testkit::Nx {
    child.wait_with_output().unwrap().into()
}

/// Waits (up to 120 s) until `what` holds; false if it never did.
fn eventually(mut what: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        if what() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

#[test]
fn a_promotion_whose_client_goes_away_midway_is_finished() {
    let host = Host::start();
    host.nx_json(&["volume", "create", "shop", "files", "--size", "32"]);
    let slow = ["-e", "LISTEN_AFTER=3"];
    let a = push_with_volume_and(&host, &slow);
    host.nx_json(&["promote", "shop", &a]);
    // B's promotion is under way (its mounts switched to the volume, it takes 3 s to listen on
    // it) when its client is killed: nxd finishes the promotion all the same.
    let b = push_with_volume_and(&host, &slow);
    let mut promoting = spawn_nx(&host, &["promote", "shop", &b]);
    assert!(eventually(|| host.deployment("shop", &b)["volumes"][0]
        ["source"]
        == "live"));
    promoting.kill().unwrap();
    promoting.wait().unwrap();
    let production = host.production_host("shop");
    assert!(
        eventually(|| host.get(&production, "/").1.contains(&b)),
        "B never became production:\n{}",
        host.nxd_log()
    );
    let d = host.deployment("shop", &b);
    assert_eq!(d["phase"], "running", "{d}");
    assert_eq!(d["volumes"][0]["source"], "live", "{d}");
    assert!(
        !host.path("volumes/shop").join(&b).exists(),
        "B's own copies are gone"
    );
}

#[test]
fn a_promote_and_a_restore_at_once_are_served_in_turn_and_a_second_restore_is_refused() {
    let host = Host::start();
    let out = tempfile::tempdir().unwrap();
    host.nx_json(&["volume", "create", "shop", "files", "--size", "32"]);
    // Deployments that take 3 s to listen: a promotion and a restore hold the sandbox's lock
    // for as long as they wait for them.
    let slow = ["-e", "LISTEN_AFTER=3"];
    let a = push_with_volume_and(&host, &slow);
    host.nx_json(&["promote", "shop", &a]);
    write(&host, &a, "from-a");
    let restored = archive(out.path(), "restored", &["restored"]);
    let other = archive(out.path(), "other", &["other"]);

    // B's promotion is under way (its mounts switched to the volume, it is starting on it)
    // when a restore of the volume comes: the restore waits for it, then restarts B (now
    // production) and A from their records on the restored files.
    let b = push_with_volume_and(&host, &slow);
    let promoting = spawn_nx(&host, &["--json", "promote", "shop", &b]);
    assert!(eventually(|| host.deployment("shop", &b)["volumes"][0]
        ["source"]
        == "live"));
    let restoring = spawn_nx(&host, &restore_args(&restored));
    let (promoted, restore) = (finished(promoting), finished(restoring));
    assert!(promoted.ok, "{}{}", promoted.stdout, promoted.stderr);
    assert!(
        restore.ok,
        "{}{}\n{}",
        restore.stdout,
        restore.stderr,
        host.nxd_log()
    );
    let production = host.production_host("shop");
    assert_eq!(ls_at(&host, &production, "/srv/files"), ["restored"]);
    assert!(host.get(&production, "/").1.contains(&b), "B is production");
    for id in [&a, &b] {
        let d = host.deployment("shop", id);
        assert_eq!(d["phase"], "running", "{d}");
        assert_eq!(d["volumes"][0]["source"], "live", "{d}");
        assert_eq!(ls(&host, id, "/srv/files"), ["restored"]);
    }

    // A restore while another one of the same volume runs (it is starting production on the
    // restored files: the previous image is kept meanwhile) is refused at once, saying so;
    // the first one ends as if alone.
    let first = spawn_nx(&host, &restore_args(&other));
    assert!(eventually(|| host
        .path("volumes/shop/files.img.previous")
        .exists()));
    let second = restore_from(&host, &restored);
    assert!(!second.ok, "{}", second.stdout);
    assert!(
        second
            .stderr
            .contains("a restore of volume files of sandbox shop is under way already")
            && second.stderr.contains("changed nothing"),
        "{}",
        second.stderr
    );
    let first = finished(first);
    assert!(first.ok, "{}{}", first.stdout, first.stderr);
    assert_eq!(ls_at(&host, &production, "/srv/files"), ["other"]);
    assert_only_the_image(&host);
}

#[test]
fn a_restore_production_does_not_start_on_is_undone_and_so_is_one_cut_short_by_a_crash() {
    let mut host = Host::start();
    let out = tempfile::tempdir().unwrap();
    host.nx_json(&["volume", "create", "shop", "files", "--size", "16"]);
    // Production refuses to start when the volume holds a file named poison.
    let a = push_with_volume_and(&host, &["-e", "FAIL_AT_START_IF=/srv/files/poison"]);
    host.nx_json(&["promote", "shop", &a]);
    write(&host, &a, "kept");
    let production = host.production_host("shop");

    // More files than the volume has inodes: refused with the reason and a few of tar's
    // lines, not one per file.
    let names: Vec<String> = (0..6000).map(|i| format!("f{i}")).collect();
    let many = archive(
        out.path(),
        "many",
        &names.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let full = restore_from(&host, &many);
    assert!(!full.ok, "{}", full.stdout);
    assert!(
        full.stderr.contains("more lines, in nxd's log")
            && full.stderr.contains("need more than the volume's 16 MiB")
            && full.stderr.len() < 4096,
        "{}",
        full.stderr
    );
    assert_eq!(ls_at(&host, &production, "/srv/files"), ["kept"]);

    let poison = archive(out.path(), "poison", &["poison"]);
    let failed = restore_from(&host, &poison);
    assert!(!failed.ok, "{}", failed.stdout);
    for says in [
        "exited before it was ready",
        "volume files is as it was: its previous files were put back",
        "production runs on the previous files again",
    ] {
        assert!(failed.stderr.contains(says), "{says}: {}", failed.stderr);
    }
    assert_eq!(ls_at(&host, &production, "/srv/files"), ["kept"]);
    assert_eq!(host.deployment("shop", &a)["phase"], "running");
    assert_only_the_image(&host);

    // kill -9 of nxd once the restored image is in place, production stopped and not yet
    // started on it: the restore never answered, so at the next start it did not happen.
    let good = archive(out.path(), "good", &["restored"]);
    host.crash_during(
        "volumes::swapped",
        &["volume", "restore", "shop", "files", good.to_str().unwrap()],
    );
    assert!(eventually(|| host.get(&production, "/health").0 == 200));
    assert_eq!(ls_at(&host, &production, "/srv/files"), ["kept"]);
    assert_only_the_image(&host);
    // And a restore works after it.
    host.nx_json(&["volume", "restore", "shop", "files", good.to_str().unwrap()]);
    assert_eq!(ls_at(&host, &production, "/srv/files"), ["restored"]);
}

/// Sends a restore's request head (announcing `head` headers) on a new connection to the API.
fn restore_request(host: &Host, path: &str, head: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut conn = std::net::TcpStream::connect(host.api).unwrap();
    write!(
        conn,
        "POST {path} HTTP/1.1\r\nHost: nx\r\nAuthorization: Bearer {}\r\n{head}\r\n",
        host.token
    )
    .unwrap();
    conn
}

/// The answer on `conn`: (status, body as far as read).
fn answer(conn: &mut std::net::TcpStream) -> (u16, String) {
    use std::io::Read;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0; 4096];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if text.contains("\r\n\r\n") && text.trim_end().ends_with('}') {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Attacker s13 H9: a database restore's upload was capped at all the free space of nxd's
/// disk, its reserve not kept, and uploads at once were each told all of it. One that fits
/// the free space but not above nxd's reserve is refused before it is read, and one under way
/// holds its room from another until it ends. Newcomer17 N12: one sandbox's slow uploads, each
/// taking its room, claimed all of it, and every other tenant's restore got 413; a sandbox has
/// one restore upload under way at most, a second is 409 however small, another's fits.
#[test]
fn a_restore_upload_keeps_nxds_disk_reserve_and_uploads_at_once_share_the_room() {
    use std::io::Read;
    use std::time::Duration;
    let host = Host::start_with("[databases]\nmax_size_mb = 0\n");
    host.nx_json(&["sandbox", "create", "shop"]);
    host.nx_json(&["sandbox", "create", "mall"]);
    let path = "/v1/sandboxes/shop/db/restore";
    let other = "/v1/sandboxes/mall/db/restore";
    let continued = |conn: &mut std::net::TcpStream| {
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut head = [0u8; 64];
        let n = conn.read(&mut head).unwrap_or(0);
        String::from_utf8_lossy(&head[..n]).into_owned()
    };
    let announced = |bytes: u64| format!("Content-Length: {bytes}\r\nExpect: 100-continue\r\n");
    let stat = nix::sys::statvfs::statvfs(host.state_dir.path()).unwrap();
    let free = stat.blocks_available() * stat.fragment_size();
    let reserve = nx_orchestrator::host_limits::DISK_RESERVE_MB << 20;
    let (got, text) = answer(&mut restore_request(
        &host,
        path,
        &announced(free - reserve / 2),
    ));
    assert_eq!(got, 413, "{text}");
    assert!(text.contains("MiB reserve"), "{text}");
    // Two at once, each 60% of the room: the first is taken (100 Continue) and holds its room.
    let share = (free - reserve) / 10 * 6;
    let mut first = restore_request(&host, path, &announced(share));
    let head = continued(&mut first);
    assert!(head.starts_with("HTTP/1.1 100 Continue"), "{head}");
    let (got, text) = answer(&mut restore_request(&host, other, &announced(share)));
    assert_eq!(got, 413, "{text}");
    assert!(text.contains("other uploads under way"), "{text}");
    // The same sandbox's second, of 1 KiB: 409; another sandbox's of 1 KiB fits.
    let (got, text) = answer(&mut restore_request(&host, path, &announced(1024)));
    assert_eq!(got, 409, "{text}");
    assert!(
        text.contains("sandbox shop has a restore upload under way"),
        "{text}"
    );
    let head = continued(&mut restore_request(&host, other, &announced(1024)));
    assert!(head.starts_with("HTTP/1.1 100 Continue"), "{head}");
    // The first cut off: its room is given back.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut again = restore_request(&host, path, &announced(share));
        again
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut head = [0u8; 64];
        let n = again.read(&mut head).unwrap_or(0);
        if String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 100 Continue") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the room was not given back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_restore_is_refused_before_its_upload_for_unknown_names_and_cut_off_past_the_volumes_size() {
    let host = Host::start();
    host.nx_json(&["volume", "create", "shop", "files", "--size", "16"]);
    // 1 GiB announced, waiting for 100 Continue: the refusal comes before any of it is sent.
    // A database's restore too: 404 for an unknown sandbox, 413 past the disk's free space.
    let free = nix::sys::statvfs::statvfs(host.state_dir.path()).unwrap();
    let past_free = (free.blocks_available() * free.fragment_size() + (1 << 30)).to_string();
    let past_free = format!("Content-Length: {past_free}\r\nExpect: 100-continue\r\n");
    for (path, status, says) in [
        ("/v1/sandboxes/nosuch/db/restore", 404, "no sandbox nosuch"),
        // Past the free space or past twice databases.max_size_mb, whichever is less (CI of
        // session 13 had 32 GB free: past the 20 GiB bound first).
        (
            "/v1/sandboxes/shop/db/restore",
            413,
            "the dump is larger than",
        ),
    ] {
        let mut conn = restore_request(&host, path, &past_free);
        let (got, text) = answer(&mut conn);
        assert_eq!(got, status, "{path}: {text}");
        assert!(text.contains(says), "{path}: {text}");
    }
    for (path, status, says) in [
        (
            "/v1/sandboxes/nosuch/volumes/files/restore",
            404,
            "no sandbox nosuch",
        ),
        (
            "/v1/sandboxes/shop/volumes/nope/restore",
            404,
            "has no volume nope",
        ),
        (
            "/v1/sandboxes/shop/volumes/files/restore",
            413,
            "the archive is larger than volume files can hold: it takes at most 34603008 bytes",
        ),
    ] {
        let mut conn = restore_request(
            &host,
            path,
            "Content-Length: 1073741824\r\nExpect: 100-continue\r\n",
        );
        let (got, text) = answer(&mut conn);
        assert_eq!(got, status, "{path}: {text}");
        assert!(text.contains(says), "{path}: {text}");
    }
    // A body of unannounced length is cut off once past the cap, and nothing of it stays.
    let mut conn = restore_request(
        &host,
        "/v1/sandboxes/shop/volumes/files/restore",
        "Transfer-Encoding: chunked\r\n",
    );
    let mut sending = conn.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        let chunk = vec![0u8; 1 << 20];
        let mut sent = 0u64;
        while sent < 512 << 20 {
            let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
            if sending.write_all(&framed).is_err() {
                break;
            }
            sent += chunk.len() as u64;
        }
        sent
    });
    let (got, text) = answer(&mut conn);
    assert_eq!(got, 413, "{text}");
    drop(conn);
    let sent = sender.join().unwrap();
    assert!(sent < 256 << 20, "nxd read {sent} bytes");
    assert_only_the_image(&host);
    // The CLI says the same for a file too large.
    let out = tempfile::tempdir().unwrap();
    let big = out.path().join("big.tar");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(40 << 20)
        .unwrap();
    let refused = restore_from(&host, &big);
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("larger than volume files can hold"),
        "{}",
        refused.stderr
    );
    // A file name with a typo is not taken for a backup id.
    let typo = host.nx(&["volume", "restore", "shop", "files", "missing.tar"]);
    assert!(
        !typo.ok && typo.stderr.contains("no file missing.tar"),
        "{}",
        typo.stderr
    );
}

/// Every volume job waits 3 s once its unit started (before nxd waits for its end): time for
/// a test to act on the unit from outside.
const PAUSED_JOBS: &str = "volumes::job=sleep(3000)";

/// In the background: the first unit named like `pattern` that the host's embedded manager
/// starts from now on (within 60 s; units loaded already are left alone) is stopped from
/// outside, as `systemctl stop` would (a manager started again loses it alike: it reads
/// inactive/dead); returns its name.
fn stop_next_unit(host: &Host, pattern: &'static str) -> std::thread::JoinHandle<String> {
    use nx_orchestrator::{config::SystemdMode, supervisor::Supervisor};
    let state_dir = host.state_dir.path().to_owned();
    let (listed, before) = std::sync::mpsc::channel();
    let stopper = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let manager = Supervisor::connect(SystemdMode::Embedded, &state_dir, "nx.slice")
                .await
                .expect("the host's embedded manager");
            let old = manager.list(pattern).await.unwrap();
            listed.send(()).unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                let new = manager.list(pattern).await.unwrap();
                if let Some(unit) = new.into_iter().find(|u| !old.contains(u)) {
                    manager.stop(&unit).await.unwrap();
                    return unit;
                }
                assert!(std::time::Instant::now() < deadline, "no {pattern} ran");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
    });
    before.recv().expect("the units loaded before");
    stopper
}

/// What `nx` printed, once it ended within 60 s (else it is killed and the test fails).
fn finished_within_a_minute(
    host: &Host,
    mut child: std::process::Child,
    what: &str,
) -> nx_testkit::Nx {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not end within 60 s:\n{}", host.nxd_log());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    finished(child)
}

#[test]
fn a_volume_job_whose_unit_vanishes_ends_with_why_and_a_copy_it_left_half_made_is_made_again() {
    let mut host = Host::start();
    host.nx_json(&["volume", "create", "shop", "files", "--size", "32"]);
    let prod = push_with_volume_and(&host, &["--volume-live"]);
    host.nx_json(&["promote", "shop", &prod]);
    write(&host, &prod, "kept");

    // A backup whose unit is stopped under it ends, says why, and frees the sandbox: the
    // next backup works.
    host.restart_nxd_with_failpoints(PAUSED_JOBS);
    let stopper = stop_next_unit(&host, "nxvol-backup-*");
    let backup = spawn_nx(&host, &["volume", "backup", "shop", "files"]);
    let unit = stopper.join().unwrap();
    let backup = finished_within_a_minute(&host, backup, "a backup whose unit vanished");
    assert!(!backup.ok, "{}", backup.stdout);
    for said in [
        unit.as_str(),
        "is gone before it ran to its end",
        "started again",
    ] {
        assert!(backup.stderr.contains(said), "{said}: {}", backup.stderr);
    }
    let saved = host.path("files.tar");
    let again = spawn_nx(
        &host,
        &[
            "--json",
            "volume",
            "backup",
            "shop",
            "files",
            "-o",
            saved.to_str().unwrap(),
        ],
    );
    let again = finished_within_a_minute(&host, again, "a backup after it");
    assert!(again.ok, "{}", again.stderr);
    let archive = tar_list(std::path::Path::new(
        again.json()["backup"]["path"].as_str().unwrap(),
    ));
    assert!(archive.contains(&"./kept".to_owned()), "{archive:?}");

    // A --volume-branch preview whose copy a crash cut short; at nxd's next start its copy is
    // made again, and that job's unit vanishes: the preview is not started. Its next start
    // makes every copy again (the half-made one too), whole.
    host.restart_nxd_crashing_at("volumes::job");
    let sample = nx_testkit::sample_app();
    let push = [
        "push",
        sample.to_str().unwrap(),
        "-s",
        "shop",
        "--volume",
        "files:/srv/files",
        "--volume-branch",
    ];
    assert!(!host.nx(&push).ok);
    let died = host.wait_nxd_exit();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&died),
        Some(9)
    );
    let stopper = stop_next_unit(&host, "nxvol-copy-*");
    host.restart_nxd_with_failpoints(PAUSED_JOBS);
    let unit = stopper.join().unwrap();
    let preview = host.nx_json(&["status", "shop"])[0]["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .find(|id| *id != prod)
        .expect("the push was recorded before its copy");
    assert!(
        eventually(|| host
            .nxd_log()
            .lines()
            .any(|l| l.contains(&unit) && l.contains("is gone before it ran to its end"))),
        "the adoption's copy did not end:\n{}",
        host.nxd_log()
    );
    assert!(host
        .path(&format!("volumes/shop/{preview}/.copying"))
        .exists());
    let start = spawn_nx(&host, &["start", &preview]);
    let start = finished_within_a_minute(&host, start, "the preview's start");
    assert!(start.ok, "{}", start.stderr);
    assert_eq!(
        ls(&host, &preview, "/srv/files"),
        ["kept"],
        "a half-made copy"
    );
    assert!(!host
        .path(&format!("volumes/shop/{preview}/.copying"))
        .exists());
}

/// What `path` of the deployment behind `name` answers, once it answers 200 (within 60 s).
fn get_once_up(host: &Host, name: &str, path: &str) -> String {
    let mut got = (0, String::new());
    assert!(
        eventually(|| {
            got = host.get(name, path);
            got.0 == 200
        }),
        "{name}{path}: {got:?}"
    );
    got.1
}

#[test]
fn a_crash_while_a_failed_swap_db_promotion_is_undone_never_promotes_it() {
    let mut host = Host::start();
    host.nx_json(&["volume", "create", "shop", "files", "--size", "16"]);
    let prod = push_with_volume(&host);
    host.nx_json(&["promote", "shop", &prod]);
    write(&host, &prod, "poison");
    let production_host = host.production_host("shop");
    assert_eq!(host.get(&production_host, "/db/put?v=kept").0, 200);

    // Its own filesystem has no poison: it runs; on production's it exits at start. Its
    // promotion with --swap-db fails after the swap, and is undone: nxd is killed once the
    // undoing is recorded, then once production's database is back (the mounts not yet).
    for point in ["volumes::unpromoting", "volumes::swapped_back"] {
        let preview = push_with_volume_and(
            &host,
            &["--db-branch", "-e", "FAIL_AT_START_IF=/srv/files/poison"],
        );
        write(&host, &preview, "own");
        let preview_host = host.preview_host("shop", &preview);
        assert_eq!(host.get(&preview_host, "/db/put?v=branch").0, 200);
        let cut = host.crash_during(point, &["promote", "shop", &preview, "--swap-db"]);
        assert!(
            cut.stderr.contains("finishes it or undoes it"),
            "{point}: {}",
            cut.stderr
        );
        assert_eq!(
            production(&host),
            prod,
            "{point}: the failed preview is promoted"
        );
        let record = host.deployment("shop", &preview);
        assert_eq!(record["volumes"][0]["source"], "empty", "{point}: {record}");
        assert_eq!(record["desired"], "stopped", "{point}: {record}");
        assert!(
            !host
                .path(&format!("volumes/shop/{preview}/.promoting"))
                .exists(),
            "{point}"
        );
        assert_eq!(
            get_once_up(&host, &production_host, "/db/list"),
            r#"["kept"]"#,
            "{point}: production's database is not as it was"
        );
        assert_eq!(
            ls_once_up(&host, &production_host, "/srv/files"),
            ["poison"],
            "{point}"
        );
    }
}
