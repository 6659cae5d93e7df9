//! The launcher's monitor (Linux only): a deployment's launcher does not exec its program but
//! forks it, with stdout and stderr on pipes, and stays in the unit as root while it runs:
//! - the program's output goes through the log writer (`logs::writer`): stamped, marked,
//!   capped and rotated, never blocking the program;
//! - `/data`'s usage is written to `<dir>/disk-usage.json` every few seconds, and forks the
//!   pids controller refused since the last look are noted in the log;
//! - when the program ends, how it ended (`exit::classify`, with the cgroup's OOM and refused
//!   fork counters) is written to the log and to `<dir>/last-exit.json`, and the monitor ends
//!   the same way (the same exit code, or the same signal), so systemd sees what it would have;
//! - a stop's signal is passed on to the program; when the stop's timeout passes, nxd sends the
//!   monitor `STOP_TIMEOUT_SIGNAL`, and the monitor kills every other process of the unit
//!   with SIGKILL and says so (`timeout`) before it ends (were systemd to kill them all, the
//!   monitor would die with them, and nobody would say why the program ended).
//!
//! The monitor is exempt from the OOM killer (`oom_score_adj` -1000; the program gets 0 back),
//! so that it is always the program that is killed and the monitor that tells. Lowering it
//! needs `CAP_SYS_RESOURCE` (proc(5)), which root may lack (a container's root, these build
//! machines); there the program gets 1000 instead, which only raises its own score, so that it,
//! not the monitor, is the first the kernel picks in the unit's cgroup whatever their sizes
//! (memory held in a tmpfs or in kernel objects is in no process's RSS: attacker s15 O1).
//! An image's program is `podman run`, whose RSS is far larger than the container's: there
//! Podman gives the container 1000 (`--oom-score-adj`) (review15 #7: the kernel killed Podman's
//! CLI, and the container ran on until systemd stopped the unit), and Podman's CLI a score
//! between, above the monitor's ([`podman_cli_oom_score`]).

use super::data_disk::{DataImage, USAGE_FILE};
use super::exit::{
    classify, forks_refused_message, signal_unit_but_self, stop_timed_out, CgroupCounters,
    CgroupLimits, LAST_EXIT_FILE,
};
use super::launch::{MonitorSpec, StopForward, STOP_TIMEOUT_SIGNAL};
use crate::logs::writer::{note, Capture, Notes, RotatingFile, Sink};
use nix::sys::signal::{self, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use nx_api::LastExit;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// How long output is still read after the program ended (a process it left may hold a pipe).
const DRAIN: Duration = Duration::from_secs(1);
/// How often `/data`'s usage and the refused forks are looked at.
const WATCH_EVERY: Duration = Duration::from_secs(2);

static STOPPING: AtomicBool = AtomicBool::new(false);
/// In the program's process (before it execs, or the launcher that supervises a VMM): the
/// write end of the pipe on which it may name how the program ended where the cgroup's
/// counters cannot tell (see [`report_end`]); -1: no monitor.
static END_REPORT: AtomicI32 = AtomicI32::new(-1);
/// The stop signal received (0: none), and the one not passed on to the program yet.
static STOPPED_BY: AtomicI32 = AtomicI32::new(0);
static TO_PASS_ON: AtomicI32 = AtomicI32::new(0);
/// nxd said the stop's timeout passed, and the program is not killed yet.
static TIME_IS_UP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(sig: nix::libc::c_int) {
    STOPPING.store(true, Ordering::SeqCst);
    STOPPED_BY.store(sig, Ordering::SeqCst);
    TO_PASS_ON.store(sig, Ordering::SeqCst);
}

/// Tells the monitor how the program ended, where its cgroup cannot see it: `oom-kill` from a
/// microVM guest's own OOM killer. Without a monitor (a task), a note on stderr instead.
pub(super) fn report_end(what: &str) {
    let fd = END_REPORT.load(Ordering::SeqCst);
    if fd < 0 {
        eprintln!("killed: out of memory in the guest");
        return;
    }
    // SAFETY: the fd is the pipe's write end, open in this process until it exits.
    let _ = unsafe { nix::libc::write(fd, what.as_ptr().cast(), what.len()) };
}

extern "C" fn on_stop_timeout(_: nix::libc::c_int) {
    TIME_IS_UP.store(true, Ordering::SeqCst);
}

/// Writes `bytes` to `path` through a `.partial` file renamed into place: a reader sees the
/// whole file or the one before.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes)?;
    std::fs::rename(&partial, path)
}

/// Forks the program (`exec` runs in the child and returns only on failure, with the reason)
/// and monitors it; never returns on success (the process ends as the program did). The
/// program's stdout and stderr pipes belong to `owner` (the uid and gid `exec` drops to; `None`
/// leaves them root's), so that it may open its own output again as `/dev/stdout` or
/// `/proc/self/fd/1`, which open(2) checks against the pipe's owner and mode, 0600 (newcomer18
/// N3: nginx's `access_log /dev/stdout` failed "Permission denied").
/// A stop's signal (the unit sends it to the monitor alone) is passed on to the program as
/// `stop` says, so that it can shut down in the stop timeout.
pub fn run(
    spec: &MonitorSpec,
    data: Option<&DataImage>,
    stop: StopForward,
    owner: Option<(u32, u32)>,
    exec: impl FnOnce() -> String,
) -> String {
    let sink = match RotatingFile::open(spec.log.clone()) {
        Ok(sink) => sink,
        Err(e) => return format!("cannot open the log {}: {e}", spec.log.path.display()),
    };
    let pipes = (
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC),
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC),
    );
    let ((out_r, out_w), (err_r, err_w)) = match pipes {
        (Ok(out), Ok(err)) => (out, err),
        (Err(e), _) | (_, Err(e)) => return format!("pipe: {e}"),
    };
    if let Some((uid, gid)) = owner {
        let (uid, gid) = (
            nix::unistd::Uid::from_raw(uid),
            nix::unistd::Gid::from_raw(gid),
        );
        for pipe in [&out_w, &err_w] {
            let fd = std::os::fd::AsRawFd::as_raw_fd(pipe);
            if let Err(e) = nix::unistd::fchown(fd, Some(uid), Some(gid)) {
                return format!("giving the output pipes to uid {uid}: {e}");
            }
        }
    }
    let (report_r, report_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(pipe) => pipe,
        Err(e) => return format!("pipe: {e}"),
    };
    let before = CgroupCounters::read();
    let exempt = std::fs::write("/proc/self/oom_score_adj", "-1000").is_ok();
    let program_oom_score_adj = match (exempt, spec.oom_score) {
        (false, super::launch::OomScore::Tenant) => 1000,
        (false, super::launch::OomScore::Container) => {
            podman_cli_oom_score(own_resident_pages(), CgroupLimits::read().memory_max_bytes)
        }
        _ => 0,
    }
    .to_string();
    // SAFETY: the launcher is single-threaded here; the child only dup2s, writes a file and
    // execs (or returns the reason it could not).
    match unsafe { fork() } {
        Err(nix::errno::Errno::EAGAIN) => format!("fork: {}", super::spawn_failure::NO_PIDS),
        Err(e) => format!("fork: {e}"),
        Ok(ForkResult::Child) => {
            let redirected = nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&out_w), 1)
                .and_then(|_| nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&err_w), 2));
            let _ = std::fs::write("/proc/self/oom_score_adj", program_oom_score_adj);
            END_REPORT.store(std::os::fd::AsRawFd::as_raw_fd(&report_w), Ordering::SeqCst);
            let reason = match redirected {
                Ok(_) => exec(),
                Err(e) => format!("dup2: {e}"),
            };
            eprintln!("launch: {reason}");
            std::process::exit(127);
        }
        Ok(ForkResult::Parent { child }) => {
            drop((out_w, err_w, report_w));
            // No SA_RESTART: a stop interrupts waitpid(2), which passes the signal on.
            let action = signal::SigAction::new(
                SigHandler::Handler(on_stop),
                signal::SaFlags::empty(),
                signal::SigSet::empty(),
            );
            for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
                // SAFETY: the handler only stores to atomics.
                let _ = unsafe { signal::sigaction(sig, &action) };
            }
            let timeout = signal::SigAction::new(
                SigHandler::Handler(on_stop_timeout),
                signal::SaFlags::empty(),
                signal::SigSet::empty(),
            );
            if let Ok(sig) = Signal::try_from(STOP_TIMEOUT_SIGNAL) {
                // SAFETY: the handler only stores to an atomic.
                let _ = unsafe { signal::sigaction(sig, &timeout) };
            }
            let capture = Capture::start(sink, out_r, err_r);
            let watched = (data.cloned(), spec.dir.join(USAGE_FILE), capture.notes());
            std::thread::spawn(move || watch(watched.0.as_ref(), &watched.1, &watched.2, before));
            // When the stop's signal was passed on, and how long after it the time was up.
            let mut stop_passed_on: Option<Instant> = None;
            let mut killed_after: Option<Duration> = None;
            let status = loop {
                if let Ok(sig) = Signal::try_from(TO_PASS_ON.swap(0, Ordering::SeqCst)) {
                    stop_passed_on.get_or_insert_with(Instant::now);
                    super::launcher::pass_on(sig, child, stop);
                }
                if TIME_IS_UP.swap(false, Ordering::SeqCst) && STOPPING.load(Ordering::SeqCst) {
                    killed_after = Some(stop_passed_on.map(|t| t.elapsed()).unwrap_or_default());
                    signal_unit_but_self(Signal::SIGKILL);
                }
                match waitpid(child, None) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    other => break other,
                }
            };
            let mut reported = String::new();
            let _ =
                std::io::Read::read_to_string(&mut std::fs::File::from(report_r), &mut reported);
            let record = match killed_after {
                Some(waited) => stop_timed_out(
                    STOPPED_BY.load(Ordering::SeqCst),
                    waited,
                    chrono::Utc::now(),
                ),
                None => record(status, before, &reported),
            };
            // The file first, before the output is drained: whoever read the end in the log
            // finds it in `nx status`, and an image's end is told even if the kernel kills the
            // monitor in the drain (conmon keeps the pipes open while Podman's cleanup runs
            // into the unit's MemoryMax, its tmpfs pages still charged: CI of session 19).
            if let Ok(json) = serde_json::to_vec(&record) {
                let _ = write_atomically(&spec.dir.join(LAST_EXIT_FILE), &json);
            }
            let mut sink = capture.finish(DRAIN);
            let _ = sink.write_records(&note(&record.message));
            end_like(status)
        }
    }
}

/// This process's resident set, in pages (proc(5) `/proc/self/statm`, second field; 0 if
/// unreadable).
fn own_resident_pages() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// The `oom_score_adj` of a tenant's `podman run` where the monitor cannot exempt itself
/// (`OomScore::Container`): the least with which even a process of no memory of its own
/// outranks the monitor (`monitor_pages` resident, and a quarter more for what it allocates
/// later) at the unit's `memory_max_bytes`, by the kernel's measure (mm/oom_kill.c
/// `oom_badness`: resident pages plus `oom_score_adj` × (the limit in pages / 1000)).
/// conmon and the `podman container cleanup` it starts inherit it, so that when the container
/// (1000, the first victim) ended with its tmpfs pages still charged to the unit, the kernel
/// kills Podman's processes, not the monitor, which then names the end (CI of session 19:
/// the monitor was killed and the deployment had no last exit). At most 999, below the
/// container; 0 without a limit (no memory cgroup OOM to rank for).
fn podman_cli_oom_score(monitor_pages: u64, memory_max_bytes: Option<u64>) -> u64 {
    let Some(max) = memory_max_bytes else {
        return 0;
    };
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
        .unwrap_or(4096);
    let per_point = max / page / 1000;
    if per_point == 0 {
        return 999;
    }
    // Strictly above: of equal scores the kernel may pick either.
    (monitor_pages * 5 / 4 / per_point + 1).min(999)
}

/// Every [`WATCH_EVERY`] while the program runs: writes `/data`'s usage to `usage_file` when it
/// changed, and notes in the log the forks refused at the task limit since the last look
/// (counted from `before`, the counters at the start).
fn watch(data: Option<&DataImage>, usage_file: &Path, notes: &Notes, before: CgroupCounters) {
    let mut last = None;
    let mut refused = before.forks_refused;
    loop {
        if let Some(usage) = data.and_then(DataImage::usage) {
            if last != Some((usage.used_bytes, usage.size_bytes)) {
                last = Some((usage.used_bytes, usage.size_bytes));
                if let Ok(json) = serde_json::to_vec(&usage) {
                    let _ = write_atomically(usage_file, &json);
                }
            }
        }
        let now = CgroupCounters::read().forks_refused;
        if now > refused {
            notes.write(&forks_refused_message(now - refused, CgroupLimits::read()));
            refused = now;
        }
        std::thread::sleep(WATCH_EVERY);
    }
}

/// How the program ended (`reported`: what its process said of it, see [`report_end`]).
fn record(status: nix::Result<WaitStatus>, before: CgroupCounters, reported: &str) -> LastExit {
    let mut after = CgroupCounters::read();
    if reported == "oom-kill" {
        // The guest's OOM killer, inside the unit's MemoryMax: as if the cgroup's had killed.
        after.oom_kills = after.oom_kills.max(before.oom_kills + 1);
    }
    let limits = CgroupLimits::read();
    let now = chrono::Utc::now();
    let (code, sig, core) = match status {
        Ok(WaitStatus::Exited(_, code)) => (Some(code), None, false),
        Ok(WaitStatus::Signaled(_, sig, core)) => (None, Some(sig as i32), core),
        _ => (None, None, false),
    };
    let mut record = classify(code, sig, core, before, after, limits, now);
    // Stopped on request (systemd sends SIGTERM to every process of the unit).
    let by_sigterm = sig == Some(Signal::SIGTERM as i32) || code == Some(128 + 15);
    if STOPPING.load(Ordering::SeqCst) && by_sigterm && record.result != "oom-kill" {
        record.result = "success".into();
        record.message = "stopped".into();
    }
    record
}

/// Ends this process as the program ended; after a stop, by the stop's signal, which systemd
/// counts as a clean stop (and does not restart), however the program ended.
fn end_like(status: nix::Result<WaitStatus>) -> String {
    if let Ok(sig) = Signal::try_from(STOPPED_BY.load(Ordering::SeqCst)) {
        // SAFETY: restoring the default action.
        let _ = unsafe { signal::signal(sig, SigHandler::SigDfl) };
        let _ = signal::raise(sig);
    }
    match status {
        Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
        Ok(WaitStatus::Signaled(_, sig, _)) => {
            // SAFETY: restoring the default action.
            let _ = unsafe { signal::signal(sig, SigHandler::SigDfl) };
            let _ = signal::raise(sig);
            std::process::exit(128 + sig as i32)
        }
        other => format!("waiting for the program: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::podman_cli_oom_score;

    #[test]
    fn podmans_cli_outranks_the_monitor_and_not_the_container() {
        // 128 MiB: 32 pages a point; a debug monitor of 7245 pages (CI of session 19).
        let score = podman_cli_oom_score(7245, Some(128 << 20));
        assert_eq!(score, 284);
        assert!(score * 32 > 7245 * 5 / 4);
        // The container (1000) still outranks a `podman run` of 9000 pages.
        assert!(9000 + score * 32 < 1000 * 32);
        assert_eq!(podman_cli_oom_score(7245, None), 0);
        assert_eq!(podman_cli_oom_score(7245, Some(1 << 20)), 999);
        assert_eq!(podman_cli_oom_score(0, Some(128 << 20)), 1);
    }
}
