//! How a deployment's program ended, named as systemd names a service's `Result` (systemd.exec(5),
//! `$SERVICE_RESULT`): `success`, `exit-code`, `signal`, `core-dump`, `oom-kill`.
//!
//! systemd itself cannot always tell: on cgroup v1 it never reports `oom-kill` (it reads the
//! unified hierarchy's `memory.events`), and the program runs under bubblewrap, which turns a
//! signal into exit code 128 + N. So the launcher (which waits for the program inside the
//! unit) reads its cgroup's counters before and after the run, the `oom_kill` count
//! (v1: `memory.oom_control`; v2: `memory.events`) and the pids controller's `max` count of
//! refused forks (`pids.events`), and writes what it found to the log and to
//! `<deployment dir>/last-exit.json`, which nxd reads for `nx status`. A stop that outlasted its
//! timeout is named `timeout`, as systemd names it, by the monitor that killed the program.

use chrono::{DateTime, Utc};
use nx_api::signals::signal_name;
use nx_api::{LastExit, UnitState};
use std::path::Path;

/// The file in a deployment's directory that holds its last [`LastExit`], as JSON.
pub const LAST_EXIT_FILE: &str = "last-exit.json";

/// The last end of a deployment's program, from its directory (none if it never ended).
pub fn read_last_exit(dir: &Path) -> Option<LastExit> {
    let bytes = std::fs::read(dir.join(LAST_EXIT_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Names systemd's `Result` of a unit that is not running as the monitor did: systemd sees
/// the monitor end as the program did (an exit code, or a signal), but only the monitor can
/// tell that the kernel's OOM killer was the cause.
pub fn name_result(state: &mut UnitState, last: Option<&LastExit>) {
    use crate::api::systemd::{ActiveState, ServiceResult};
    let ended = state.active != ActiveState::Active && state.result != ServiceResult::Success;
    if last.is_some_and(|l| ended && l.result == "oom-kill") {
        state.result = ServiceResult::OomKill;
    }
}

/// The counters of the cgroups a process is in that tell why its programs died.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupCounters {
    /// Processes the OOM killer killed in the memory cgroup.
    pub oom_kills: u64,
    /// Forks refused at the pids controller's limit.
    pub forks_refused: u64,
}

/// The limits of those cgroups, for the message (`None`: unlimited or unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    /// `MemoryMax` (v1 `memory.limit_in_bytes`), in bytes.
    pub memory_max_bytes: Option<u64>,
    /// `TasksMax` (`pids.max`).
    pub tasks_max: Option<u64>,
}

/// The directories of this process's memory and pids cgroups (v1 controllers, or the unified
/// hierarchy), from `/proc/self/cgroup`, as (memory, pids, unified).
fn own_cgroup_dirs() -> (Option<std::path::PathBuf>, Option<std::path::PathBuf>, bool) {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let root = Path::new("/sys/fs/cgroup");
    let mut memory = None;
    let mut pids = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c.trim_start_matches('/')),
            _ => continue,
        };
        for controller in controllers.split(',') {
            match controller {
                "memory" => memory = Some(root.join("memory").join(path)),
                "pids" => pids = Some(root.join("pids").join(path)),
                _ => {}
            }
        }
    }
    match (memory, pids) {
        (None, None) => {
            let unified = text
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .map(|p| root.join(p.trim_start_matches('/')));
            (unified.clone(), unified, true)
        }
        (memory, pids) => (memory, pids, false),
    }
}

/// `key value` lines (`memory.oom_control`, `memory.events`, `pids.events`).
fn keyed(path: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

fn limit(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    // v1 says "unlimited" with a page-rounded i64::MAX, v2 with "max".
    text.trim().parse().ok().filter(|&v: &u64| v < (1 << 62))
}

impl CgroupCounters {
    /// Reads this process's counters (zero where a controller is missing).
    pub fn read() -> Self {
        let (memory, pids, unified) = own_cgroup_dirs();
        let oom_file = if unified {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        Self {
            oom_kills: memory
                .and_then(|d| keyed(&d.join(oom_file), "oom_kill"))
                .unwrap_or(0),
            forks_refused: pids
                .and_then(|d| keyed(&d.join("pids.events"), "max"))
                .unwrap_or(0),
        }
    }
}

impl CgroupLimits {
    /// Reads the limits of this process's cgroups.
    pub fn read() -> Self {
        let (memory, pids, unified) = own_cgroup_dirs();
        let memory_file = if unified {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        Self {
            memory_max_bytes: memory.and_then(|d| limit(&d.join(memory_file))),
            tasks_max: pids.and_then(|d| limit(&d.join("pids.max"))),
        }
    }
}

/// Sends `signal` to every process of this process's cgroup (the unit's) and of the cgroups
/// below it (a container's), but not to this process: systemd's `KillUnit` to all but the
/// monitor. Read from the pids hierarchy (v1) or the unified one; the tree is walked twice, for
/// processes forked while the first walk ran. Returns how many signals were sent.
pub fn signal_unit_but_self(signal: nix::sys::signal::Signal) -> usize {
    let (_, pids, _) = own_cgroup_dirs();
    let Some(root) = pids else { return 0 };
    let me = std::process::id() as i32;
    let mut sent = 0;
    for _ in 0..2 {
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                if pid != me && pid > 0 {
                    let pid = nix::unistd::Pid::from_raw(pid);
                    sent += usize::from(nix::sys::signal::kill(pid, signal).is_ok());
                }
            }
            let children = std::fs::read_dir(&dir).into_iter().flatten().flatten();
            dirs.extend(children.filter(|e| e.path().is_dir()).map(|e| e.path()));
        }
    }
    sent
}

/// What the log says of forks refused at the pids controller's limit.
pub fn forks_refused_message(refused: u64, limits: CgroupLimits) -> String {
    let limit = limits
        .tasks_max
        .map(|n| format!(" (TasksMax {n})"))
        .unwrap_or_default();
    format!("{refused} forks were refused at the task limit{limit}")
}

/// How a program ended that a stop had to kill: it was still running `waited` after the stop's
/// `stop_signal` (systemd names this `Result` `timeout`).
pub fn stop_timed_out(
    stop_signal: i32,
    waited: std::time::Duration,
    at: DateTime<Utc>,
) -> LastExit {
    LastExit {
        at,
        result: "timeout".to_owned(),
        exit_code: None,
        signal: Some(nix::libc::SIGKILL),
        message: format!(
            "killed by SIGKILL at the stop timeout: still running {:.1} s after {}",
            waited.as_secs_f64(),
            signal_name(stop_signal)
        ),
    }
}

/// Names how the program ended: its wait status (`exit_code` or `signal`, `core` when it
/// dumped one) and what the cgroup's counters did during the run.
pub fn classify(
    exit_code: Option<i32>,
    signal: Option<i32>,
    core: bool,
    before: CgroupCounters,
    after: CgroupCounters,
    limits: CgroupLimits,
    at: DateTime<Utc>,
) -> LastExit {
    let oom = after.oom_kills > before.oom_kills && exit_code != Some(0);
    let refused = after.forks_refused.saturating_sub(before.forks_refused);
    let (result, mut message) = if oom {
        let limit = limits
            .memory_max_bytes
            .map(|b| format!(", MemoryMax {} MiB", b >> 20))
            .unwrap_or_default();
        ("oom-kill", format!("killed: out of memory{limit}"))
    } else {
        match (exit_code, signal) {
            (Some(0), _) => ("success", "exited with code 0".to_owned()),
            (Some(code), _) if code > 128 && code < 128 + 65 => (
                "signal",
                format!(
                    "killed by {} (exit code {code} from the sandbox)",
                    signal_name(code - 128)
                ),
            ),
            (Some(code), _) => ("exit-code", format!("exited with code {code}")),
            (None, Some(sig)) if core => {
                ("core-dump", format!("dumped core on {}", signal_name(sig)))
            }
            (None, Some(sig)) => ("signal", format!("killed by {}", signal_name(sig))),
            (None, None) => ("exit-code", "ended for an unknown reason".to_owned()),
        }
    };
    if refused > 0 {
        message.push_str("; ");
        message.push_str(&forks_refused_message(refused, limits));
    }
    LastExit {
        at,
        result: result.to_owned(),
        exit_code,
        signal,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oom_kill_a_signal_and_refused_forks_are_named() {
        let at = Utc::now();
        let none = CgroupCounters::default();
        let limits = CgroupLimits {
            memory_max_bytes: Some(128 << 20),
            tasks_max: Some(64),
        };
        let oom = CgroupCounters {
            oom_kills: 1,
            forks_refused: 0,
        };
        let r = classify(Some(137), None, false, none, oom, limits, at);
        assert_eq!(r.result.to_string(), "oom-kill");
        assert_eq!(r.message, "killed: out of memory, MemoryMax 128 MiB");
        let r = classify(Some(143), None, false, none, none, limits, at);
        assert_eq!(
            (r.result.as_str(), r.message.as_str()),
            (
                "signal",
                "killed by SIGTERM (exit code 143 from the sandbox)"
            )
        );
        let forks = CgroupCounters {
            oom_kills: 0,
            forks_refused: 3,
        };
        let r = classify(Some(1), None, false, none, forks, limits, at);
        assert_eq!(r.result.to_string(), "exit-code");
        assert_eq!(
            r.message,
            "exited with code 1; 3 forks were refused at the task limit (TasksMax 64)"
        );
        assert_eq!(
            classify(Some(0), None, false, none, none, limits, at).result,
            "success"
        );
    }

    #[test]
    fn a_failed_unit_reads_oom_kill_when_the_monitor_saw_one() {
        let mut state = UnitState {
            active: "failed".to_owned().into(),
            sub: "failed".to_owned().into(),
            main_pid: 0,
            restarts: 1,
            memory_bytes: None,
            tasks: None,
            result: "exit-code".to_owned().into(),
            exit_status: 137,
            exit_code: 1,
        };
        let none = CgroupCounters::default();
        let oom = CgroupCounters {
            oom_kills: 1,
            forks_refused: 0,
        };
        let limits = CgroupLimits::default();
        let exit = classify(Some(1), None, false, none, none, limits, Utc::now());
        name_result(&mut state, Some(&exit));
        assert_eq!(state.result.to_string(), "exit-code");
        let killed = classify(Some(137), None, false, none, oom, limits, Utc::now());
        name_result(&mut state, Some(&killed));
        assert_eq!(state.result.to_string(), "oom-kill");
        // Running again: systemd's word stands.
        let mut running = UnitState {
            active: "active".to_owned().into(),
            result: "success".to_owned().into(),
            ..state
        };
        name_result(&mut running, Some(&killed));
        assert_eq!(running.result.to_string(), "success");
    }
}
