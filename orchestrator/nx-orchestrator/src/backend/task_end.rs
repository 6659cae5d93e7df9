//! A task's end, as its launcher reports it (`LaunchSpec::exit_report`). The launcher runs the
//! task's bubblewrap as its child, as a child subreaper (prctl(2) `PR_SET_CHILD_SUBREAPER`):
//! bubblewrap exits as soon as the program has (with its exit code, or 128 + N when signal N
//! killed it), which kills the sandbox's init (its pid 1, bubblewrap's own;
//! `--die-with-parent`) and so every process the program left (pid_namespaces(7)): a task ends
//! with its program, as a container ends with its first process. The init comes to the
//! launcher, and only when no child is left, so that nothing can write to the task's output
//! any more, does the launcher write how
//! the program ended on its standard input, the socket nxd reads (`tasks::exit_report`): one
//! line of JSON, a [`LastExit`] named as a deployment's end is (`exit::classify`: the cgroup's
//! OOM-kill count tells an `oom-kill` from a plain SIGKILL, on cgroup v1 as on v2). Then it
//! waits for the next task (`launcher::serve_tasks`): nothing of this one is left by then (its
//! processes are reaped, its mount, pid, IPC and network namespaces gone with them, its files
//! were on the sandbox's own tmpfs), and the next runs as another uid. Its standard output
//! and error are the unit's, the same pipes for every task: what a task may change of them
//! ([`Outputs`]) is set back before the next.

use super::exit::{classify, CgroupCounters, CgroupLimits};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use nx_api::signals::signal_of_exit_code;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;

/// The unit's standard output and error as they were when it started: their file status
/// flags (fcntl(2) `F_GETFL`: `O_NONBLOCK`, `O_APPEND`, `O_ASYNC`, `O_DIRECT`, which is packet
/// mode on a pipe, pipe(7)) and, for a pipe, its size (`F_GETPIPE_SZ`). Both belong to the
/// open file description that every task of the unit writes to, not to the task (attacker s13
/// T1: `O_NONBLOCK` left by one task made a later one lose its output with exit code 0).
pub struct Outputs([(RawFd, OFlag, Option<i32>); 2]);

impl Outputs {
    /// Fds 1 and 2 as they are now. Errors: fcntl(2)'s, naming the descriptor.
    pub fn as_started() -> Result<Self, String> {
        let read = |fd: RawFd| -> Result<(RawFd, OFlag, Option<i32>), String> {
            let flags =
                fcntl(fd, FcntlArg::F_GETFL).map_err(|e| format!("fcntl({fd}, F_GETFL): {e}"))?;
            // Not a pipe (a file, a socket): EBADF, no size to keep.
            let size = fcntl(fd, FcntlArg::F_GETPIPE_SZ).ok();
            Ok((fd, OFlag::from_bits_truncate(flags), size))
        };
        Ok(Self([read(1)?, read(2)?]))
    }

    /// Sets fds 1 and 2 back to [`Outputs::as_started`]'s. A pipe holding more than its first
    /// size (output not yet read) keeps its size (`EBUSY`): the kernel allows no shrink below
    /// what it holds, and the next task's writes are bounded by the reader as ever. Errors:
    /// `F_SETFL`'s.
    pub fn restore(&self) -> Result<(), String> {
        for &(fd, flags, size) in &self.0 {
            fcntl(fd, FcntlArg::F_SETFL(flags))
                .map_err(|e| format!("fcntl({fd}, F_SETFL): {e}"))?;
            if let Some(size) = size {
                let _ = fcntl(fd, FcntlArg::F_SETPIPE_SZ(size));
            }
        }
        Ok(())
    }
}

/// Runs the task's sandbox, `program args` (bubblewrap) with `env` and /dev/null as its
/// standard input, as `uid` (its gid the same, no supplementary groups) when given, waits until
/// it and every process it left have been reaped (this process must be a child subreaper),
/// and reports the end on standard input (see the module's docs). Errors: why the sandbox
/// could not run or its end was lost.
pub fn run(
    program: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    uid: Option<u32>,
) -> Result<(), String> {
    let before = CgroupCounters::read();
    let mut command = std::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(env)
        .stdin(std::process::Stdio::null());
    if let Some(uid) = uid {
        // As root, std drops the supplementary groups (setgroups(0)) before setgid and setuid.
        command.uid(uid).gid(uid);
    }
    let sandbox = match command.spawn() {
        Ok(child) => Pid::from_raw(child.id() as i32),
        Err(e) => return Err(super::spawn_failure::cannot_run(program, None, &e)),
    };
    let code = match wait_for_all(sandbox) {
        Some(WaitStatus::Exited(_, code)) => code,
        Some(WaitStatus::Signaled(_, signal, _)) => 128 + signal as i32,
        _ => return Err(format!("lost {program}'s exit status")),
    };
    let end = classify(
        Some(code),
        signal_of_exit_code(code),
        false,
        before,
        CgroupCounters::read(),
        CgroupLimits::read(),
        chrono::Utc::now(),
    );
    let mut line = serde_json::to_vec(&end).expect("a LastExit is plain data");
    line.push(b'\n');
    // SAFETY: fd 0 is the unit's standard input, which nothing else in this process uses now;
    // ManuallyDrop leaves it open (the next task's spec comes on it).
    let mut report = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(0) });
    // Nobody may read it any more (nxd gave up on the task): it then closes it, and the next
    // read of a spec ends this launcher.
    let _ = report.write_all(&line);
    Ok(())
}

/// Reaps children until none is left; the wait status of `sandbox`, once it was reaped.
fn wait_for_all(sandbox: Pid) -> Option<WaitStatus> {
    let mut status = None;
    loop {
        match waitpid(None, None) {
            Ok(s) if s.pid() == Some(sandbox) => status = Some(s),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return status,
        }
    }
}
