//! Volumes (`nx volume`, `nx push --volume NAME:/PATH`): production's files survive a push, a
//! promote and a rollback; a preview gets an empty filesystem or a copy (`--volume-branch`)
//! whose writes stay out of production; the size is a quota; backups are tar archives that
//! restore; `nx sandbox rm` keeps a final one; bad names, paths and removals are refused with
//! what to do.

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
    let bad = host.nx(&["volume", "restore", "shop", "files", junk.to_str().unwrap()]);
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
    assert!(
        path.starts_with(host.path("backups/shop/volumes/files")),
        "{removed}"
    );
    assert!(tar_list(&path).contains(&"./kept".to_owned()));
    assert!(!host.path("volumes/shop").exists());
    host.nx_json(&["volume", "create", "scratch", "files", "--size", "16"]);
    let removed = host.nx_json(&["sandbox", "rm", "scratch", "--no-backup"]);
    assert_eq!(removed["final_volume_backups"], serde_json::json!([]));
    assert!(!host.path("volumes/scratch").exists());
    assert!(!host.path("backups/scratch/volumes").exists());
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
    for (mount, says) in [
        ("files:/data", "inside /data"),
        ("files:/app", "inside /app"),
        ("files:/data/x", "inside /data"),
        ("files:/", "plain absolute"),
        ("files:relative", "not absolute"),
        ("files:/srv/../etc", "plain absolute"),
        ("nope:/srv/x", "has no volume nope"),
    ] {
        let out = host.nx(&[
            "push",
            sample.to_str().unwrap(),
            "-s",
            "shop",
            "--volume",
            mount,
        ]);
        assert!(!out.ok, "{mount}");
        assert!(out.stderr.contains(says), "{mount}: {}", out.stderr);
    }
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
