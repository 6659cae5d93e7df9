//! PID 1 of an NX microVM (a static binary in the initramfs NX builds per deployment):
//! mounts /proc, /sys, /dev, and /tmp and /dev/shm (each of /nx/tmp-mb MiB), loads the virtio
//! modules listed in /nx/modules/order, brings up lo and, when /nx/network exists (a
//! deployment, not a task), eth0 (QEMU's user-mode network: 10.0.2.15/24), turns the
//! console's echo off (the host writes to it, see `console`), and then:
//! - when /nx/await-task exists (a guest booted ahead for the task pool), prints `NX-READY` and
//!   waits for `NX-GO` (saying `NX-READY` again to the first `NX-PING`: a guest restored from a
//!   snapshot of this wait), sets the clock and reseeds the kernel's CRNG from what came with it
//!   (see `fresh`), then reads its task from the task drive (see `handover`);
//! - when /nx/data exists (a deployment with a `/data`), mounts its disk (`/dev/vda`, ext4) on
//!   /data;
//!
//! runs /app/main as an unprivileged uid with the environment of /nx/env and the arguments of
//! /nx/args (standard input /dev/null), passes `NX-STOP` on as SIGTERM, reaps every child, and
//! when /app/main ends prints `NX-EXIT <key> <code>` (with ` oom-kill` when the guest's OOM
//! killer ended it) on the console and reboots, which ends the VMM (run with -no-reboot /
//! reboot=k). The key (nx-orchestrator's `backend::guest_exit`) comes in /nx/exit-key (0600,
//! root's; read and removed before the program starts) or, booted ahead, with `NX-GO`: the
//! program shares the console but cannot know it, so it cannot end its run with a line of its
//! own.
//!
//! With `--exec-on-input` it is none of that: the waiter of a deployment's standby (see
//! `exec_on_input`).

mod console;
mod exec_on_input;
mod fresh;
mod handover;
mod net;

use nix::mount::{mount, MsFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use std::ffi::CString;
use std::io::Write;

/// The marker nxd reads from the console to learn the program's exit code.
const EXIT_MARKER: &str = "NX-EXIT";
/// Where the key of the exit line is when the initramfs brings it.
const EXIT_KEY_FILE: &str = "/nx/exit-key";
/// The uid (and gid) /app/main runs as inside the guest.
const APP_UID: u32 = 1000;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The file that holds the size of /tmp and of /dev/shm in MiB (decimal text; nxd writes the
/// deployment's or task's `limits.tmp_mb`); without it the kernel's default, half the RAM.
const TMP_MB: &str = "/nx/tmp-mb";

/// /dev, /proc, /sys, and /tmp and /dev/shm: each a tmpfs of [`TMP_MB`] MiB, so that a write
/// past `--tmp` gets ENOSPC as in a container (review14 #4: /tmp was half the guest's RAM and
/// there was no /dev/shm).
fn mounts() -> nix::Result<()> {
    let tmp = std::fs::read_to_string(TMP_MB)
        .ok()
        .and_then(|mb| mb.trim().parse::<u64>().ok())
        .map(|mb| format!("size={mb}m"));
    for (source, target, fstype, options) in [
        ("devtmpfs", "/dev", "devtmpfs", None),
        ("proc", "/proc", "proc", None),
        ("sysfs", "/sys", "sysfs", None),
        ("tmpfs", "/tmp", "tmpfs", tmp.as_deref()),
        ("tmpfs", "/dev/shm", "tmpfs", tmp.as_deref()),
    ] {
        let _ = std::fs::create_dir_all(target);
        mount(
            Some(source),
            target,
            Some(fstype),
            MsFlags::empty(),
            options,
        )?;
    }
    Ok(())
}

/// Loads the listed modules; one that needs a symbol of a later one (ENOENT) is tried again
/// after the others, until a round loads nothing more.
fn load_modules() -> Result<(), String> {
    let order = std::fs::read_to_string("/nx/modules/order").unwrap_or_default();
    let mut pending: Vec<&str> = order.split_whitespace().collect();
    while !pending.is_empty() {
        let mut failed = Vec::new();
        let mut last_error = String::new();
        for name in &pending {
            let path = format!("/nx/modules/{name}.ko");
            let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
            let flags = nix::kmod::ModuleInitFlags::empty();
            match nix::kmod::finit_module(&file, &CString::default(), flags) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => {
                    last_error = format!("loading {name}: {e}");
                    failed.push(*name);
                }
            }
        }
        if failed.len() == pending.len() {
            return Err(last_error);
        }
        pending = failed;
    }
    Ok(())
}

/// NUL-separated strings of a file (absent: none).
fn strings(path: &str) -> Vec<CString> {
    std::fs::read(path)
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| CString::new(s).expect("no NUL inside"))
        .collect()
}

/// The deployment's disk on /data (nosuid, nodev), its root directory given to [`APP_UID`]
/// (the host copies the image from an empty filesystem whose root is root's).
fn mount_data() -> Result<(), String> {
    handover::wait_for_device(handover::DRIVE)?;
    std::fs::create_dir_all("/data").map_err(|e| format!("/data: {e}"))?;
    mount(
        Some(handover::DRIVE),
        "/data",
        Some("ext4"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| format!("mounting {} on /data: {e}", handover::DRIVE))?;
    std::os::unix::fs::chown("/data", Some(APP_UID), Some(APP_UID))
        .map_err(|e| format!("chown /data: {e}"))
}

fn start_app() -> Result<Pid, String> {
    let mut argv = vec![CString::new("/app/main").expect("literal")];
    argv.extend(strings("/nx/args"));
    let env = strings("/nx/env");
    // SAFETY: init is single-threaded here (the console thread starts later); the child only
    // changes its ids, directory, session and standard input, and execs.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => {
            let _ = nix::unistd::setsid();
            // The console's input is the host's channel to init, not the program's.
            if let Ok(null) = std::fs::File::open("/dev/null") {
                let _ = nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0);
            }
            let _ = std::env::set_current_dir("/tmp");
            let id = nix::unistd::Gid::from_raw(APP_UID);
            let dropped = nix::unistd::setgroups(&[])
                .and_then(|_| nix::unistd::setresgid(id, id, id))
                .and_then(|_| {
                    let uid = nix::unistd::Uid::from_raw(APP_UID);
                    nix::unistd::setresuid(uid, uid, uid)
                });
            if let Err(e) = dropped {
                say(&format!("nx-init: cannot drop to uid {APP_UID}: {e}"));
                std::process::exit(126);
            }
            let err = nix::unistd::execve(&argv[0], &argv, &env).unwrap_err();
            say(&format!("nx-init: cannot run /app/main: {err}"));
            std::process::exit(127);
        }
    }
}

/// How many processes the guest kernel's OOM killer has killed (`oom_kill` of /proc/vmstat).
fn oom_kills() -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// How /app/main ended: its exit code (128 + signal when killed), and whether the guest's OOM
/// killer was the killer.
struct End {
    code: i32,
    oom: bool,
}

/// The key of the exit line, from the initramfs (the file then goes) or from `NX-GO`.
static EXIT_KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Takes the key from the initramfs, where it came that way.
fn take_key_file() {
    if let Ok(key) = std::fs::read_to_string(EXIT_KEY_FILE) {
        let _ = EXIT_KEY.set(key.trim().to_owned());
        let _ = std::fs::remove_file(EXIT_KEY_FILE);
    }
}

/// Reaps children until the app ends; returns its exit code (128 + signal when killed).
fn reap_until(app: Pid) -> i32 {
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == app => return code,
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == app => return 128 + signal as i32,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                say(&format!("nx-init: wait: {e}"));
                return 1;
            }
        }
    }
}

fn run() -> Result<End, String> {
    take_key_file();
    mounts().map_err(|e| format!("mounts: {e}"))?;
    load_modules()?;
    net::configure(std::path::Path::new("/nx/network").exists())
        .map_err(|e| format!("network: {e}"))?;
    console::quiet()?;
    if std::path::Path::new("/nx/await-task").exists() {
        say(console::READY);
        let go =
            console::wait_for_go(|| say(console::READY)).ok_or("stopped before a task came")?;
        if let Some(key) = &go.exit_key {
            let _ = EXIT_KEY.set(key.clone());
        }
        fresh::apply(&go)?;
        handover::unpack()?;
    }
    if std::path::Path::new("/nx/data").exists() {
        mount_data()?;
    }
    let ooms = oom_kills();
    let app = start_app()?;
    console::pass_stops_to(app);
    let code = reap_until(app);
    let oom = code == 128 + nix::libc::SIGKILL && oom_kills() > ooms;
    Ok(End { code, oom })
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some(exec_on_input::FLAG) {
        eprintln!(
            "nx-vm-init {}: {}",
            exec_on_input::FLAG,
            exec_on_input::run()
        );
        std::process::exit(127);
    }
    let end = run().unwrap_or_else(|e| {
        say(&format!("nx-init: {e}"));
        End {
            code: 125,
            oom: false,
        }
    });
    // `NX-EXIT <key> <code>`, and ` oom-kill` when the guest's OOM killer ended the program
    // (the host's cgroup cannot see it: the guest's memory is the VMM's, and the VMM lives on).
    let oom = if end.oom { " oom-kill" } else { "" };
    let key = EXIT_KEY.get().map(|k| format!(" {k}")).unwrap_or_default();
    say(&format!("{EXIT_MARKER}{key} {}{oom}", end.code));
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
