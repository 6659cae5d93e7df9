//! Volumes (`nx volume`, `nx push --volume NAME:/PATH`): a file written by one deployment is
//! read by the next after a promote, `nx rm` of the writer keeps it, the size is a quota, and
//! bad names, paths and removals are refused with what to do.

use nx_testkit::Host;

fn push_with_volume(host: &Host) -> String {
    host.push_sample("shop", &["--volume", "files:/srv/files"])
}

#[test]
fn a_volume_outlives_its_deployments_and_is_a_quota() {
    let host = Host::start();
    let made = host.nx_json(&["volume", "create", "shop", "files", "--size", "32"]);
    assert_eq!(made["size_mb"], 32, "{made}");

    // A writes a file (the sample writes /data/<name>: the name climbs to the volume).
    let a = push_with_volume(&host);
    host.nx_json(&["promote", "shop", &a]);
    let app = |id: &str, path: &str| host.get(&host.preview_host("shop", id), path);
    assert_eq!(
        app(&a, "/write?name=../srv/files/from-a"),
        (200, "../srv/files/from-a".into())
    );

    // B, pushed beside it, reads A's file and writes its own next to it, into A's directory
    // too (the group and umask make one deployment's files the next one's).
    let b = push_with_volume(&host);
    assert_eq!(
        app(&b, "/read?path=/srv/files/from-a"),
        (200, "../srv/files/from-a".into())
    );
    host.nx_json(&["promote", "shop", &b]);
    assert_eq!(app(&b, "/write?name=../srv/files/from-b").0, 200);
    assert_eq!(
        app(&b, "/write?name=../srv/files/from-a").0,
        200,
        "B may overwrite A's file"
    );

    // nx rm of A keeps the volume; a third deployment sees both files.
    host.nx_json(&["stop", &a]);
    host.nx_json(&["rm", &a]);
    let listed = host.nx_json(&["volume", "ls", "shop"]);
    assert_eq!(listed[0]["name"], "files", "{listed}");
    assert_eq!(listed[0]["used_by"], serde_json::json!([b]), "{listed}");
    let c = push_with_volume(&host);
    assert_eq!(app(&c, "/read?path=/srv/files/from-b").0, 200);
    assert_eq!(app(&c, "/read?path=/srv/files/from-a").0, 200);

    // Its size is a quota: 32 MiB, then ENOSPC, and the program goes on.
    let (_, body) = app(&c, "/fill?dir=/srv/files&mb=64");
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
    assert_eq!(app(&c, "/health"), (200, "ok\n".into()));
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

    // Removal: refused while mounted, and the sandbox while it has volumes.
    let busy = host.nx(&["volume", "rm", "shop", "files"]);
    assert!(!busy.ok);
    assert!(busy.stderr.contains("mounted by"), "{}", busy.stderr);
    let sandbox = host.nx(&["sandbox", "rm", "shop", "--no-backup"]);
    assert!(!sandbox.ok);
    assert!(
        sandbox.stderr.contains("nx volume rm shop"),
        "{}",
        sandbox.stderr
    );
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
