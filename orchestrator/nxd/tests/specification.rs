//! `SPECIFICATION.md` (the repository's root) against the tests it names: every row of its
//! tables that states a promise names what enforces it, as `<crate>/tests/<file>.rs::<test_fn>`
//! (a `#[test]` or `#[tokio::test]` function of `orchestrator/<crate>/tests/<file>.rs`, e.g.
//! `nxd/tests/lifecycle.rs::push_promote_rollback_and_restart`) or `nx-bench --only <part>` (one
//! of nx-bench's parts, as its `--only` option accepts them). A renamed or removed test fails
//! here, naming the row. It reads files only: no host, no nxd.

use std::path::{Path, PathBuf};

/// The repository's root (`orchestrator/nxd/../..`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The texts between backticks in `line`.
fn quoted(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

/// Whether `source` (a test file's text) has `name` as a function marked `#[test]` or
/// `#[tokio::test]`: the lines above its `fn` (attributes and doc comments) hold one.
fn has_test_fn(source: &str, name: &str) -> bool {
    let lines: Vec<&str> = source.lines().collect();
    lines.iter().enumerate().any(|(at, line)| {
        let line = line.trim_start();
        let Some(rest) = line
            .strip_prefix("fn ")
            .or_else(|| line.strip_prefix("async fn "))
        else {
            return false;
        };
        let Some(after) = rest.strip_prefix(name) else {
            return false;
        };
        if !after.starts_with('(') && !after.starts_with('<') {
            return false;
        }
        lines[..at]
            .iter()
            .rev()
            .map(|l| l.trim())
            .take_while(|l| l.starts_with("#[") || l.starts_with("///"))
            .any(|l| l == "#[test]" || l.starts_with("#[tokio::test"))
    })
}

/// nx-bench's parts: the values its `--only` option accepts (`value_parser = [...]` in
/// `nx-bench/src/main.rs`, the line above `only: Option<String>`).
fn bench_parts() -> Vec<String> {
    let main = repo().join("orchestrator/nx-bench/src/main.rs");
    let text = std::fs::read_to_string(&main).expect("nx-bench/src/main.rs");
    let lines: Vec<&str> = text.lines().collect();
    let only = lines
        .iter()
        .position(|l| l.trim() == "only: Option<String>,")
        .expect("nx-bench's `only: Option<String>` option");
    let parser = lines[only - 1];
    let list = parser
        .split_once("value_parser = [")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| list)
        .unwrap_or_else(|| panic!("no value_parser list above nx-bench's `only`: {parser}"));
    list.split(',')
        .map(|part| part.trim().trim_matches('"').to_owned())
        .filter(|part| !part.is_empty())
        .collect()
}

/// Whether `reference` (a backticked text of a row) names a test or a benchmark part, and if
/// so whether it exists: `None` when it names neither, `Some(Ok(()))` when what it names
/// exists, `Some(Err(why))` when not (or when it looks like a test's name but is malformed).
fn check(reference: &str, parts: &[String]) -> Option<Result<(), String>> {
    if let Some(part) = reference.strip_prefix("nx-bench --only ") {
        return Some(if parts.iter().any(|p| p == part) {
            Ok(())
        } else {
            Err(format!(
                "`{reference}`: nx-bench has no part {part:?} (its parts: {parts:?})"
            ))
        });
    }
    let (file, name) = reference.split_once(".rs::")?;
    let well_formed = file
        .split_once("/tests/")
        .is_some_and(|(krate, rest)| !krate.contains('/') && !rest.is_empty() && !name.is_empty());
    if !well_formed {
        return Some(Err(format!(
            "`{reference}`: name a test as `<crate>/tests/<file>.rs::<test_fn>`"
        )));
    }
    let path = repo().join("orchestrator").join(format!("{file}.rs"));
    Some(match std::fs::read_to_string(&path) {
        Err(e) => Err(format!(
            "`{reference}`: cannot read {}: {e}",
            path.display()
        )),
        Ok(source) if has_test_fn(&source, name) => Ok(()),
        Ok(_) => Err(format!(
            "`{reference}`: {file}.rs has no test fn {name} (renamed or removed? fix the row)"
        )),
    })
}

/// The first two cells of a table's `row` (its id and its promise), to name it.
fn row_name(row: &str) -> String {
    let cells: Vec<&str> = row.split('|').skip(1).take(2).map(str::trim).collect();
    cells.join(" | ")
}

#[test]
fn every_promise_names_a_test_or_benchmark_that_exists() {
    let path = repo().join("SPECIFICATION.md");
    let text = std::fs::read_to_string(&path).expect("SPECIFICATION.md at the repository's root");
    let lines: Vec<&str> = text.lines().collect();
    let parts = bench_parts();
    let mut problems = Vec::new();
    let mut rows = 0;
    // The last section lists what no test enforces: its rows name no test.
    let mut enforced = true;
    for (at, line) in lines.iter().enumerate() {
        if line.starts_with("## ") {
            enforced = !line.starts_with("## Promised but not enforced");
        }
        // A table's rows, not its header (the line above `|---`) nor that line; the prose
        // around the tables is not read (it names `<crate>/tests/...` as a pattern).
        let header = lines
            .get(at + 1)
            .is_some_and(|next| next.starts_with("|--"));
        if !line.starts_with("| ") || header {
            continue;
        }
        let checks: Vec<_> = quoted(line)
            .into_iter()
            .filter_map(|r| check(r, &parts))
            .collect();
        for err in checks.iter().filter_map(|c| c.as_ref().err()) {
            problems.push(format!("line {} ({}): {err}", at + 1, row_name(line)));
        }
        if enforced {
            rows += 1;
            if checks.is_empty() {
                problems.push(format!(
                    "line {} ({}): names no `<crate>/tests/<file>.rs::<test_fn>` or `nx-bench --only <part>`",
                    at + 1,
                    row_name(line)
                ));
            }
        }
    }
    assert!(
        rows >= 40,
        "SPECIFICATION.md has {rows} promise rows; expected its tables"
    );
    assert!(
        problems.is_empty(),
        "SPECIFICATION.md:\n{}",
        problems.join("\n")
    );
}
