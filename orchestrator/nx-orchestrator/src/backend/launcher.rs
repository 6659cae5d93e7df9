//! The launcher itself (Linux only): what `nxd launch` runs, as `launch` describes.

use super::guest_exit::{self, GUEST_OOM};
use super::launch::{
    LaunchSpec, SandboxEnvForm, StopForward, OWN_CGROUP, SANDBOX_ENV_FD, SECCOMP_FIRST_FD,
};
use super::launch_times::{self, LaunchTimes};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::os::fd::IntoRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

/// This process's cgroup path: the unified one where it is set, else name=systemd's.
fn own_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .filter(|p| *p != "/")
            .map(str::to_owned)
    };
    path("0::").or_else(|| {
        text.lines()
            .find_map(|l| l.split_once(":name=systemd:").map(|(_, p)| p.to_owned()))
    })
}

/// The VMM the launcher runs, for `pass_stop` (0: none yet).
static VMM: AtomicI32 = AtomicI32::new(0);
/// The write end of the guest's console input (the VMM's standard input; 0: none yet).
static GUEST_CONSOLE: AtomicI32 = AtomicI32::new(0);

/// The line that asks the guest's init to stop its program (nx-vm-init's `console::STOP`).
const GUEST_STOP: &[u8] = b"NX-STOP\n";

/// A stop's signal, passed on to the guest as a line on its console, so that its init passes
/// SIGTERM to the program and powers off once it has ended (write(2) is async-signal-safe,
/// and a line shorter than PIPE_BUF is written whole); to the VMM itself before the console
/// is there.
extern "C" fn pass_stop(signal: nix::libc::c_int) {
    let console = GUEST_CONSOLE.load(Ordering::SeqCst);
    if console > 0 {
        // SAFETY: write(2) is async-signal-safe; the buffer is a static.
        unsafe { nix::libc::write(console, GUEST_STOP.as_ptr().cast(), GUEST_STOP.len()) };
        return;
    }
    let pid = VMM.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { nix::libc::kill(pid, signal) };
    }
}

/// The signals a stop may send (systemd sends SIGTERM; a terminal SIGINT or SIGHUP).
fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(signal);
    }
    set
}

/// Runs a VMM and exits with the guest program's exit code from its console: the first line
/// with `key` (see `guest_exit`). What nxd writes on the launcher's standard input after the
/// spec (a pooled guest's `NX-GO`) goes on to the guest's console, and so does a stop (see
/// `pass_stop`). Returns only on failure.
fn supervise_vmm(
    program: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    key: Option<&str>,
) -> String {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler};
    use std::io::{BufRead, Write};
    use std::os::fd::AsRawFd;
    let action = SigAction::new(
        SigHandler::Handler(pass_stop),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in stop_signals().iter() {
        // SAFETY: the handler only calls write(2) or kill(2).
        if let Err(e) = unsafe { sigaction(signal, &action) } {
            return format!("sigaction {signal}: {e}");
        }
    }
    let child = std::process::Command::new(program)
        .args(args)
        .env_clear()
        .envs(env)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => return super::spawn_failure::cannot_run(program, None, &e),
    };
    VMM.store(child.id() as i32, Ordering::SeqCst);
    // Kept open (and so never EOF to the guest) while the VMM runs.
    let console_input = std::fs::File::from(std::os::fd::OwnedFd::from(
        child.stdin.take().expect("piped"),
    ));
    GUEST_CONSOLE.store(console_input.as_raw_fd(), Ordering::SeqCst);
    if let Ok(mut copy) = console_input.try_clone() {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut copy);
        });
    }
    let mut code = None;
    if let Some(console) = child.stdout.take() {
        let mut out = std::io::stdout().lock();
        for line in std::io::BufReader::new(console)
            .lines()
            .map_while(Result::ok)
        {
            if let Some((before, end)) = guest_exit::parse(&line, key) {
                if !before.trim().is_empty() {
                    let _ = writeln!(out, "{before}");
                    let _ = out.flush();
                }
                // On stderr (a task's stdout is the program's alone), without the key. The
                // rest is the reboot.
                code = Some(end.code);
                eprintln!("{}", end.line());
                if end.oom {
                    super::monitor::report_end(GUEST_OOM);
                }
                break;
            }
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
    let status = child.wait();
    match (code, status) {
        (Some(code), _) => std::process::exit(code),
        (None, Ok(status)) => {
            format!("{program} ended ({status}) before the guest reported an exit code")
        }
        (None, Err(e)) => format!("waiting for {program}: {e}"),
    }
}

fn drop_privileges(uid: u32, gid: u32, groups: &[u32]) -> nix::Result<()> {
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    let groups: Vec<Gid> = groups.iter().copied().map(Gid::from_raw).collect();
    setgroups(&groups)?;
    setresgid(gid, gid, gid)?;
    setresuid(uid, uid, uid)
}

/// Reads the spec from a file, or from standard input when the path is `-` (one line of JSON:
/// what follows is for the guest of a VMM, see `supervise_vmm`, or the next task's spec, see
/// `serve_tasks`). `None`: standard input ended before a line.
fn read(spec_path: &Path) -> Result<Option<LaunchSpec>, String> {
    let bytes = if spec_path == Path::new("-") {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::stdin().lock(), &mut line)
            .map(|_| line.into_bytes())
    } else {
        std::fs::read(spec_path)
    };
    match bytes {
        Ok(b) if b.is_empty() && spec_path == Path::new("-") => Ok(None),
        bytes => bytes
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .map(Some)
            .map_err(|e| format!("cannot read {}: {e}", spec_path.display())),
    }
}

/// Puts the seccomp programs of `spec` at `SECCOMP_FIRST_FD` onwards, where bubblewrap reads
/// them (`--seccomp`).
fn hand_over_seccomp(spec: &LaunchSpec) -> Result<(), String> {
    for (i, path) in spec.seccomp.iter().enumerate() {
        let target = SECCOMP_FIRST_FD + i as i32;
        let fd = match std::fs::File::open(path) {
            Ok(f) => f.into_raw_fd(),
            Err(e) => {
                return Err(format!(
                    "cannot open seccomp program {}: {e}",
                    path.display()
                ))
            }
        };
        // dup2 clears FD_CLOEXEC on the new fd, so bwrap inherits it.
        if let Err(e) = nix::unistd::dup2(fd, target) {
            return Err(format!("dup2 seccomp fd: {e}"));
        }
        let _ = nix::unistd::close(fd);
    }
    Ok(())
}

/// A task unit's launcher (a spec with `exit_report`, read from standard input): runs each
/// task's sandbox as its child, as the task's uid (it stays root itself, and runs nothing of
/// the task's), with a devpts instance of the task's own (`spec.ptys`, see `pts_mount`),
/// reports the task's end on standard input once no process of it is left (see
/// `task_end`), and then reads the next task's spec there; exits 0 when nxd closes it. So one
/// unit serves tasks one after another without a unit start or an exec of this binary each.
/// Returns only on failure, with the reason.
fn serve_tasks(first: LaunchSpec, spec_path: &Path) -> String {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        return format!("prctl(PR_SET_CHILD_SUBREAPER): {e}");
    }
    let outputs = match super::task_end::Outputs::as_started() {
        Ok(outputs) => outputs,
        Err(e) => return e,
    };
    let mut spec = first;
    // A mount namespace of the launcher's own, made for the first task that has a devpts
    // instance (every container task does): the instances are mounted there, never on the host.
    let mut own_namespace = false;
    loop {
        if let Err(e) = outputs.restore() {
            return e;
        }
        if let Some(ptys) = &spec.ptys {
            if !own_namespace {
                if let Err(e) = super::data_disk::own_mount_namespace() {
                    return e;
                }
                own_namespace = true;
            }
            if let Err(e) = ptys.mount() {
                return format!("mounting /dev/pts: {e}");
            }
        }
        if let Err(e) = hand_over_seccomp(&spec) {
            return e;
        }
        if let Some(n) = spec.nofile {
            if let Err(e) = set_nofile(n) {
                return e;
            }
        }
        let Some((program, args)) = spec.argv.split_first() else {
            return "empty argv in launch spec".into();
        };
        if let Err(e) = hand_over_env(&spec) {
            return format!("handing the program's environment to {program}: {e}");
        }
        if let Err(e) = super::task_end::run(program, args, &spec.env, spec.uid) {
            return e;
        }
        if let Some(Err(e)) = spec.ptys.as_ref().map(|ptys| ptys.unmount()) {
            return e;
        }
        spec = match read(spec_path) {
            Ok(Some(next)) => next,
            Ok(None) => std::process::exit(0),
            Err(e) => return e,
        };
    }
}

/// Returns only on failure, with the reason.
pub fn run(spec_path: &Path) -> String {
    let started_ns = launch_times::now_ns();
    let spec = match read(spec_path) {
        Ok(Some(spec)) => spec,
        Ok(None) => return format!("cannot read {}: it is empty", spec_path.display()),
        Err(e) => return e,
    };
    if spec.exit_report {
        return serve_tasks(spec, spec_path);
    }
    if let Err(e) = hand_over_seccomp(&spec) {
        return e;
    }
    if spec.data_image.is_some()
        || spec.tmp.is_some()
        || spec.ptys.is_some()
        || !spec.volumes.is_empty()
    {
        if let Err(e) = super::data_disk::own_mount_namespace() {
            return e;
        }
    }
    // /data's loop device and mount are set up on a thread while the network is: neither
    // needs the other.
    let data = match spec.data_image.as_ref().map(|image| image.start_mount()) {
        Some(Err(e)) => return format!("mounting /data: {e}"),
        Some(Ok(mount)) => Some(mount),
        None => None,
    };
    if let Some(attachment) = &spec.network {
        if let Err(e) = crate::network::attach::enter(attachment) {
            return e.to_string();
        }
    }
    let network_ns = launch_times::now_ns();
    if let Some(Err(e)) = data.map(|mount| mount.finish()) {
        return format!("mounting /data: {e}");
    }
    if let Some(tmp) = &spec.tmp {
        if let Err(e) = tmp.mount() {
            return format!("mounting /tmp: {e}");
        }
    }
    if let Some(ptys) = &spec.ptys {
        if let Err(e) = ptys.mount() {
            return format!("mounting /dev/pts: {e}");
        }
    }
    for volume in &spec.volumes {
        if let Err(e) = volume.mount() {
            return format!("mounting a volume: {e}");
        }
    }
    if !spec.volumes.is_empty() {
        // Files and directories a deployment makes on a volume stay writable by the next.
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o002));
    }
    if let Some(n) = spec.nofile {
        match set_nofile(n) {
            // In a deployment's log (a task's stderr is the program's alone).
            Ok(Some(note)) if spec.monitor.is_some() => eprintln!("{note}"),
            Ok(_) => {}
            Err(e) => return e,
        }
    }
    if let Some(fifo) = &spec.standby_input {
        if let Err(e) = standby_input(fifo) {
            return format!("opening the standby's input {}: {e}", fifo.display());
        }
    }
    match &spec.monitor {
        Some(monitor) => {
            let times = LaunchTimes {
                started_ns,
                network_ns,
                exec_ns: launch_times::now_ns(),
            };
            times.write(&monitor.dir);
            let owner = spec.uid.map(|uid| (uid, spec.gid.unwrap_or(uid)));
            super::monitor::run(monitor, spec.data_image.as_ref(), spec.stop, owner, || {
                exec(&spec)
            })
        }
        None => exec(&spec),
    }
}

/// The standby's FIFO as standard input (fd 0), opened for reading and writing: a FIFO read
/// with no writer open ends at once, and nxd opens it only when it gives the program
/// (fifo(7)).
fn standby_input(fifo: &Path) -> nix::Result<()> {
    use nix::fcntl::{open, OFlag};
    use nix::sys::stat::Mode;
    let fd = open(fifo, OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())?;
    // dup2 clears FD_CLOEXEC on the new fd, so what the launcher runs inherits it.
    nix::unistd::dup2(fd, 0)?;
    nix::unistd::close(fd)
}

/// Sets `RLIMIT_NOFILE` to `n` (soft and hard). Raising the hard limit needs
/// `CAP_SYS_RESOURCE`; where the unit lacks it, the limit is the hard one it has, and the
/// returned note says so.
fn set_nofile(n: u64) -> Result<Option<String>, String> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match setrlimit(Resource::RLIMIT_NOFILE, n, n) {
        Ok(()) => Ok(None),
        Err(nix::errno::Errno::EPERM) => {
            let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
            let limit = n.min(hard);
            setrlimit(Resource::RLIMIT_NOFILE, limit, limit)
                .map_err(|e| format!("setrlimit(RLIMIT_NOFILE, {limit}): {e}"))?;
            Ok(Some(format!("open-files limit {limit}, not {n}: the host's hard limit (the unit may not raise it: no CAP_SYS_RESOURCE)")))
        }
        Err(e) => Err(format!(
            "setrlimit(RLIMIT_NOFILE, {n}): {e} (at most /proc/sys/fs/nr_open)"
        )),
    }
}

/// Drops to the program's uid and execs it (or runs the VMM, or a task's sandbox as a child);
/// returns only on failure.
fn exec(spec: &LaunchSpec) -> String {
    if let Some(uid) = spec.uid {
        let groups: Vec<u32> = spec.volumes.iter().map(|v| v.gid).collect();
        if let Err(e) = drop_privileges(uid, spec.gid.unwrap_or(uid), &groups) {
            return format!("cannot switch to uid {uid}: {e}");
        }
    }
    let mut argv = spec.argv.clone();
    if argv.iter().any(|a| a == OWN_CGROUP) {
        let Some(cgroup) = own_cgroup() else {
            return "cannot read this process's cgroup from /proc/self/cgroup".into();
        };
        for arg in argv.iter_mut().filter(|a| *a == OWN_CGROUP) {
            *arg = cgroup.clone();
        }
    }
    let Some((program, args)) = argv.split_first() else {
        return "empty argv in launch spec".into();
    };
    if let Err(e) = hand_over_env(spec) {
        return format!("handing the program's environment to {program}: {e}");
    }
    if spec.console_exit {
        return supervise_vmm(program, args, &spec.env, spec.exit_key.as_deref());
    }
    let err = std::process::Command::new(program)
        .args(args)
        .env_clear()
        .envs(&spec.env)
        .exec();
    format!("cannot exec {program}: {err}")
}

/// Puts the program's environment (`spec.sandbox_env`) on a memfd at `SANDBOX_ENV_FD`, in the
/// form the tool reads it (`SandboxEnvForm`), so the tool itself never runs with it.
fn hand_over_env(spec: &LaunchSpec) -> std::io::Result<()> {
    use std::io::{Seek, Write};
    use std::os::fd::AsRawFd;
    if spec.sandbox_env_form == SandboxEnvForm::None {
        return Ok(());
    }
    let text = spec.sandbox_env_form.encode(&spec.sandbox_env);
    let fd = nix::sys::memfd::memfd_create(
        c"nx-sandbox-env",
        nix::sys::memfd::MemFdCreateFlag::empty(),
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(&text)?;
    file.rewind()?;
    // dup2 clears FD_CLOEXEC on the new fd, so the tool inherits it.
    nix::unistd::dup2(file.as_raw_fd(), SANDBOX_ENV_FD)?;
    Ok(())
}

/// Sends `signal` to the sandbox: to `child` itself, or to each process below it that is not
/// bubblewrap (read from /proc).
pub(super) fn pass_on(signal: Signal, child: Pid, how: StopForward) {
    let targets = match how {
        StopForward::Sandboxed => sandboxed_processes(child),
        _ => Vec::new(),
    };
    if targets.is_empty() {
        let _ = kill(child, signal);
    }
    for pid in targets {
        let _ = kill(pid, signal);
    }
}

/// The processes below `root` whose command is not bubblewrap's.
fn sandboxed_processes(root: Pid) -> Vec<Pid> {
    // (pid, parent, command) of every process, from /proc/<pid>/stat: "pid (comm) state ppid".
    let all: Vec<(i32, i32, String)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_owned();
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid, comm))
        })
        .collect();
    let mut below = vec![root.as_raw()];
    let mut i = 0;
    while i < below.len() {
        let parent = below[i];
        below.extend(all.iter().filter(|p| p.1 == parent).map(|p| p.0));
        i += 1;
    }
    all.iter()
        .filter(|(pid, _, comm)| below[1..].contains(pid) && comm != "bwrap")
        .map(|(pid, _, _)| Pid::from_raw(*pid))
        .collect()
}
