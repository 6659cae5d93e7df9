//! `nx --json` when the command line itself is wrong: the same `{"error": ...}` a script gets
//! for every other failure, not clap's text (no nxd is needed: nothing is sent).

use std::process::Command;

fn nx(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nx"))
        .args(args)
        .env("NX_CONFIG", "/dev/null")
        .output()
        .expect("run nx")
}

#[test]
fn a_bad_command_line_with_json_prints_an_error_object() {
    for args in [
        &["--json", "push", "./app", "--port", "70000"][..],
        &["--json", "promote", "web"][..],
        &["push", "./app", "--volume", "files:/data", "--json"][..],
    ] {
        let out = nx(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        let error = body["error"].as_str().expect("an error string");
        assert!(
            !error.starts_with("error:") && !error.contains("--help"),
            "{error}"
        );
        assert!(
            error.contains("70000") || error.contains("<DEPLOYMENT>") || error.contains("/data"),
            "{error}"
        );
    }
    // Without --json, or with it only among the program's own words: clap's text on stderr.
    for args in [
        &["push", "./app", "--port", "70000"][..],
        &["push", "./app", "--port", "70000", "--", "--json"][..],
    ] {
        let out = nx(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("error: "),
            "{args:?}"
        );
    }
}

/// `nx db restore --help` names the time bound a restore is held to (review14 #5: the help
/// said nothing of it, and a long restore failed with no hint of why or what to change).
#[test]
fn db_restore_help_names_its_time_bound() {
    let out = nx(&["db", "restore", "--help"]);
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("databases.restore_timeout_secs") && help.contains("600 s"),
        "{help}"
    );
}
