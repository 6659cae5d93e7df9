//! The entry point of the verbs units run by re-executing the embedder's own binary (nxd's, or
//! any program that embeds [`crate::Orchestrator`]): `launch <spec>` (what a deployment's or a
//! task's unit runs: `backend::launcher`), `volume-job <spec>` (nxd's child that reaches a
//! volume's files: `backend::volume_job`), `db-gate <settings>` (the database gate's process:
//! `databases::gate`) and `manager-init <state_dir>` (PID 1 of the
//! embedded systemd manager's namespaces: `supervisor::embedded`). Call [`dispatch`] first
//! thing in `main`, before any thread (or async runtime) starts: the launcher's signal
//! handling needs the process to itself.

/// When this process was started as one of the re-exec verbs (its first argument `launch`,
/// `volume-job`, `db-gate` or `manager-init`), runs it and never returns (on failure it prints why and
/// exits 1); else returns at once.
pub fn dispatch() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).take(3).collect();
    let (Some(verb), Some(path), None) = (args.first(), args.get(1), args.get(2)) else {
        return;
    };
    let path = std::path::Path::new(path);
    let failure = match verb.to_str() {
        Some("launch") => format!("launch: {}", crate::backend::launcher::run(path)),
        Some("volume-job") => match crate::backend::volume_job::main(path) {
            Ok(()) => std::process::exit(0),
            Err(e) => format!("volume-job: {e}"),
        },
        Some("db-gate") => format!("db-gate: {}", crate::databases::gate::main(path)),
        Some("manager-init") => {
            format!("manager-init: {}", crate::supervisor::embedded::init(path))
        }
        _ => return,
    };
    eprintln!("{failure}");
    std::process::exit(1);
}
