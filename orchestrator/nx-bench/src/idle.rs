//! nxd's CPU while nothing happens (issue 20 keeps "nxd uses no CPU when idle"): its user and
//! system time (`utime` + `stime` of /proc/<pid>/stat, proc(5), in clock ticks) over a quiet
//! span, with nothing deployed, with one deployment running, and with that and idle tenant
//! database sessions open (which the runaway watch looks at every 250 ms).

use nx_testkit::Host;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `pid`'s user and system time so far, in seconds.
fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command's closing parenthesis: state is the 3rd field of the
    // line, utime the 14th and stime the 15th (proc(5)).
    let after = stat
        .rsplit_once(')')
        .ok_or_else(|| anyhow::anyhow!("no command in /proc/{pid}/stat"))?
        .1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?
        .ok_or_else(|| anyhow::anyhow!("no CLK_TCK"))?;
    Ok(ticks as f64 / per_sec as f64)
}

/// nxd's share of one core over `span` from now, in percent.
fn cpu_percent(host: &Host, span: Duration) -> anyhow::Result<f64> {
    let pid = host.nxd_pid();
    let (before, started) = (cpu_secs(pid)?, Instant::now());
    std::thread::sleep(span);
    Ok((cpu_secs(pid)? - before) / started.elapsed().as_secs_f64() * 100.0)
}

/// An idle `psql` session on `url`, open while its standard input is.
fn idle_session(url: &str) -> anyhow::Result<Child> {
    Ok(Command::new("psql")
        .args(["-w", "-q", url])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

/// Prints nxd's CPU over `secs` in each state, `sessions` idle database sessions in the last.
pub fn run(host: &Host, secs: u64, sessions: usize) -> anyhow::Result<()> {
    let span = Duration::from_secs(secs);
    // What nxd does at start (its pool, the router) settles first.
    std::thread::sleep(Duration::from_secs(3));
    let nothing = cpu_percent(host, span)?;
    host.push_sample("idle", &[]);
    std::thread::sleep(Duration::from_secs(1));
    let deployed = cpu_percent(host, span)?;
    let url = host.nx_json(&["db", "url", "idle"])["url"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("nx db url gave no url"))?
        .to_owned();
    let mut open: Vec<Child> = (0..sessions)
        .map(|_| idle_session(&url))
        .collect::<anyhow::Result<_>>()?;
    std::thread::sleep(Duration::from_secs(1));
    let with_sessions = cpu_percent(host, span);
    for session in &mut open {
        drop(session.stdin.take());
        let _ = session.wait();
    }
    let with_sessions = with_sessions?;
    println!("\nnxd's CPU while idle ({secs} s each; user + system time, % of one core)\n");
    println!("| state | nxd CPU % |");
    println!("|---|---|");
    println!("| nothing deployed | {nothing:.2} |");
    println!("| one deployment running | {deployed:.2} |");
    println!("| and {sessions} idle database sessions of its sandbox | {with_sessions:.2} |");
    Ok(())
}
