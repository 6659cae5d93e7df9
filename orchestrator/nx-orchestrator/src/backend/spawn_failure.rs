//! What the launcher says when it cannot start a process: a tool that is missing names what to
//! install; a fork refused at a task limit (EAGAIN: a cgroup's `pids.max`, fork(2)) names the
//! limits, so that a push that fails for lack of processes says so.

/// Why no process could be started when fork(2) or clone(2) failed with EAGAIN.
pub const NO_PIDS: &str = "no process could be started: a task limit is reached (the deployment's TasksMax, `nx push --tasks`; its sandbox's, systemd.sandbox_tasks_max; or all tenants', systemd.slice_tasks_max); stop what forks without end and try again";

/// The error line for `program` that could not be started (`e` from spawning it); `install`
/// names what provides it, for a program that is not there.
pub fn cannot_run(program: &str, install: Option<&str>, e: &std::io::Error) -> String {
    match (e.raw_os_error(), install) {
        (Some(nix::libc::EAGAIN), _) => format!("cannot run {program}: {NO_PIDS} ({e})"),
        (_, Some(install)) if e.kind() == std::io::ErrorKind::NotFound => {
            format!("cannot run {program} ({e}); install {install}")
        }
        _ => format!("cannot run {program}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_fork_names_the_task_limits_and_a_missing_tool_what_to_install() {
        let eagain = std::io::Error::from_raw_os_error(nix::libc::EAGAIN);
        let said = cannot_run("mount", Some("mount (util-linux)"), &eagain);
        assert!(said.contains("task limit is reached"), "{said}");
        assert!(!said.contains("install"), "{said}");
        let missing = std::io::Error::from_raw_os_error(nix::libc::ENOENT);
        assert_eq!(
            cannot_run("mount", Some("mount (util-linux)"), &missing),
            "cannot run mount (No such file or directory (os error 2)); install mount (util-linux)"
        );
    }
}
