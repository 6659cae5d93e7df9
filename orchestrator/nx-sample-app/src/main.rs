//! The sample app of NX's quick start, tests and benchmarks: a small HTTP service that also
//! reports what it can see of its sandbox, so that tests can ask it to try to escape.
//!
//! - `GET /`            `nx-sample <APP_VERSION> deployment=<NX_DEPLOYMENT>`
//! - `GET /health`      `ok`, or 500 `sick` after `GET /sick`
//! - `GET /sick`        makes `/health` answer 500 until the program restarts
//! - `GET /env`         its environment, as JSON
//! - `GET /read?path=P` the file's first 4 KiB, or 404 with the error
//! - `GET /ls?path=P`   the directory's entries, or 404 with the error
//! - `GET /links?path=P` the number of hard links of file P (its st_nlink), or 404 with the error
//! - `GET /ps`          the pids it can see in /proc, as JSON
//! - `GET /whoami`      its uid and gid
//! - `GET /write?name=N` writes /data/N and reads it back
//! - `GET /fork?hold=S` forks until the kernel refuses for a second in a row, keeps the
//!   children S seconds (default 0), then reaps them and reports how many
//! - `GET /hog`         allocates and touches memory until the sandbox's limit ends it
//! - `GET /spin?threads=T&secs=S` keeps T threads busy for S seconds; answers at once
//! - `GET /unshare`     tries to create a user namespace, by unshare(2) and by clone(2);
//!   reports the errors
//! - `GET /io-uring`    tries to set up an io_uring; reports the error
//! - `GET /socket?family=F` tries to open a socket of address family F (a number); reports the error
//! - `GET /db/put?v=V`  inserts V into table `items` (made if missing) of its database
//! - `GET /db/list`     the values in `items`, as JSON
//! - `GET /db/drop`     drops table `items`
//! - `GET /db/connect?db=D` connects to database D with its own credentials; reports the error
//! - `GET /db/hold?n=N` opens N more connections and keeps them open; reports how many it holds
//!   and the first refusal
//! - `GET /db/held`     asks each connection `/db/hold` keeps for its server process's pid
//!   (`pg_backend_pid()`): the same pids later show the same sessions; 500 with the error
//!

//! The database is reached as libpq would: PGHOST (a socket dir or a host), PGPORT, PGDATABASE,
//! PGUSER, PGPASSWORD.
//! - `GET /connect?addr=A` tries a TCP connection to A (host:port); reports the outcome
//! - `GET /exit?code=C` exits with code C
//! - `GET /raise?signal=N` sends itself signal N (6: a crash as abort(3) makes it)
//! - `GET /fill?dir=D&mb=M[&keep=1]` writes M MiB to D/fill (removed after, unless `keep`);
//!   reports how much and the error
//! - `GET /ptys?n=N`   opens /dev/ptmx N more times (each a pseudo-terminal) and keeps them open;
//!   reports how many it holds and the first error
//! - `GET /spew?mb=M`   writes M MiB of 100-byte lines to stdout; reports the seconds it took
//! - `GET /ws`          a WebSocket echo
//!
//! With `task` as its first argument it runs once instead (see `task`).
//!
//! For the lifecycle tests, four variables:
//! - `FAIL_AT_START_IF=P`: when file P exists at start, it exits 1 at once (a start that fails)
//! - `CONNECT_AT_START=A`: at start it tries a TCP connection to A (host:port), as
//!   `GET /connect` does, and exits 1 when there is none (a program that needs a service first)
//! - `LISTEN_AFTER=S`: it warms up for S seconds before it listens (a slow starter)
//! - `DRAIN_ON_SIGTERM=S`: on SIGTERM it writes /data/sigterm, drains for S seconds, writes
//!   /data/drained and exits 0

mod task;
mod ws;

use std::io::Read;
use tiny_http::{Header, Request, Response, Server};

const WORKERS: usize = 4;
/// Set by `GET /sick`: `/health` fails from then on.
static SICK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("task") {
        std::process::exit(task::run(&args[1..]));
    }
    if let Some(path) = std::env::var_os("FAIL_AT_START_IF") {
        if std::path::Path::new(&path).exists() {
            eprintln!(
                "nx-sample: {} exists: failing at start",
                path.to_string_lossy()
            );
            std::process::exit(1);
        }
    }
    if let Ok(addr) = std::env::var("CONNECT_AT_START") {
        let outcome = task::connect(&addr);
        eprintln!("nx-sample: {outcome}");
        if !outcome.starts_with("connected") {
            std::process::exit(1);
        }
    }
    if let Some(secs) = std::env::var("DRAIN_ON_SIGTERM")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        drain_on_sigterm(secs);
    }
    if let Some(secs) = std::env::var("LISTEN_AFTER")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        println!("nx-sample: warming up for {secs} s before listening");
        std::thread::sleep(std::time::Duration::from_secs(secs));
    }
    // LISTEN_PORT overrides PORT, so that tests can make it fail to start.
    let port: u16 = std::env::var("LISTEN_PORT")
        .or_else(|_| std::env::var("PORT"))
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    // HOST is the address NX says to listen on: 127.0.0.1 in a container, 0.0.0.0 in a microVM.
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let server = match Server::http((host.as_str(), port)) {
        Ok(s) => std::sync::Arc::new(s),
        Err(e) => {
            eprintln!("nx-sample: cannot listen on {host}:{port}: {e}");
            std::process::exit(1);
        }
    };
    println!("nx-sample listening on {host}:{port}");
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let server = server.clone();
            std::thread::spawn(move || {
                for request in server.incoming_requests() {
                    handle(request);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
}

/// Blocks SIGTERM (every thread started later inherits that) and waits for it on a thread of
/// its own: then /data/sigterm, `secs` seconds of draining, /data/drained, exit 0.
fn drain_on_sigterm(secs: u64) {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.thread_block().expect("block SIGTERM");
    std::thread::spawn(move || {
        if set.wait().is_ok() {
            let _ = std::fs::write("/data/sigterm", "received\n");
            println!("nx-sample: SIGTERM; draining for {secs} s");
            std::thread::sleep(std::time::Duration::from_secs(secs));
            let _ = std::fs::write("/data/drained", "done\n");
            println!("nx-sample: drained");
            std::process::exit(0);
        }
    });
}

fn query<'a>(url: &'a str, key: &str) -> Option<&'a str> {
    url.split_once('?')?
        .1
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn text(status: u16, body: impl Into<String>) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(body.into()).with_status_code(status)
}

fn json(value: serde_json::Value) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(value.to_string())
        .with_header(Header::from_bytes("Content-Type", "application/json").expect("static header"))
}

fn handle(request: Request) {
    let url = request.url().to_owned();
    let path = url.split('?').next().unwrap_or("/");
    if path == "/ws" {
        return ws::echo(request);
    }
    let response = match path {
        "/" => text(
            200,
            format!(
                "nx-sample {} deployment={}\n",
                std::env::var("APP_VERSION").unwrap_or_else(|_| "dev".into()),
                std::env::var("NX_DEPLOYMENT").unwrap_or_default()
            ),
        ),
        "/health" if SICK.load(std::sync::atomic::Ordering::Relaxed) => text(500, "sick\n"),
        "/health" => text(200, "ok\n"),
        "/sick" => {
            SICK.store(true, std::sync::atomic::Ordering::Relaxed);
            text(200, "/health answers 500 from now on\n")
        }
        "/env" => json(serde_json::json!(std::env::vars()
            .collect::<std::collections::BTreeMap<_, _>>(
        ))),
        "/read" => read(query(&url, "path").unwrap_or("")),
        "/links" => match std::fs::metadata(query(&url, "path").unwrap_or("/")) {
            Ok(meta) => text(
                200,
                std::os::unix::fs::MetadataExt::nlink(&meta).to_string(),
            ),
            Err(e) => text(404, e.to_string()),
        },
        "/ls" => match std::fs::read_dir(query(&url, "path").unwrap_or("/")) {
            Ok(entries) => {
                let mut names: Vec<String> = entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                json(serde_json::json!(names))
            }
            Err(e) => text(404, format!("error: {e}\n")),
        },
        "/ps" => json(serde_json::json!(pids())),
        "/whoami" => json(serde_json::json!({
            "uid": nix::unistd::getuid().as_raw(),
            "gid": nix::unistd::getgid().as_raw(),
        })),
        "/write" => {
            let name = query(&url, "name").unwrap_or("probe");
            let file = format!("/data/{name}");
            match std::fs::write(&file, name).and_then(|_| std::fs::read_to_string(&file)) {
                Ok(back) => text(200, back),
                Err(e) => text(500, format!("error: {e}\n")),
            }
        }
        "/fork" => json(fork_until_refused(
            query(&url, "hold")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        )),
        "/fill" => json(fill(
            query(&url, "dir").unwrap_or("/data"),
            query(&url, "mb").and_then(|m| m.parse().ok()).unwrap_or(1),
            query(&url, "keep") == Some("1"),
        )),
        "/ptys" => json(ptys(
            query(&url, "n").and_then(|n| n.parse().ok()).unwrap_or(1),
        )),
        "/spew" => json(spew(
            query(&url, "mb").and_then(|m| m.parse().ok()).unwrap_or(1),
        )),
        "/connect" => text(
            200,
            format!("{}\n", task::connect(query(&url, "addr").unwrap_or(""))),
        ),
        "/spin" => {
            let threads: usize = query(&url, "threads")
                .and_then(|t| t.parse().ok())
                .unwrap_or(1);
            let secs: u64 = query(&url, "secs")
                .and_then(|s| s.parse().ok())
                .unwrap_or(1);
            for _ in 0..threads {
                std::thread::spawn(move || {
                    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
                    while std::time::Instant::now() < end {
                        std::hint::spin_loop();
                    }
                });
            }
            text(200, "spinning\n")
        }
        "/hog" => {
            hog();
            text(200, "still alive\n")
        }
        "/unshare" => user_namespace(),
        "/io-uring" => {
            let mut params = [0u8; 120];
            // SAFETY: io_uring_setup(2) reads and writes a struct io_uring_params (120 bytes).
            let fd = unsafe {
                nix::libc::syscall(nix::libc::SYS_io_uring_setup, 8, params.as_mut_ptr())
            };
            if fd >= 0 {
                text(200, "set up an io_uring\n")
            } else {
                text(403, format!("error: {}\n", std::io::Error::last_os_error()))
            }
        }
        "/socket" => {
            let family = query(&url, "family")
                .and_then(|f| f.parse().ok())
                .unwrap_or(0);
            // SAFETY: socket(2) takes plain integers.
            let fd = unsafe { nix::libc::socket(family, nix::libc::SOCK_STREAM, 0) };
            if fd >= 0 {
                // SAFETY: fd was just opened here.
                unsafe { nix::libc::close(fd) };
                text(200, "opened a socket\n")
            } else {
                text(403, format!("error: {}\n", std::io::Error::last_os_error()))
            }
        }
        "/db/hold" => hold_connections(query(&url, "n").and_then(|n| n.parse().ok()).unwrap_or(1)),
        "/db/held" => held_sessions(),
        "/db/hold-unauthenticated" => {
            hold_unauthenticated(query(&url, "n").and_then(|n| n.parse().ok()).unwrap_or(1))
        }
        "/db/put" => db(&url, |c| {
            c.batch_execute("CREATE TABLE IF NOT EXISTS items (v text)")?;
            c.execute(
                "INSERT INTO items VALUES ($1)",
                &[&query(&url, "v").unwrap_or("")],
            )?;
            Ok(serde_json::json!("ok"))
        }),
        "/db/list" => db(&url, |c| {
            let rows = c.query("SELECT v FROM items ORDER BY v", &[])?;
            Ok(serde_json::json!(rows
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()))
        }),
        "/db/drop" => db(&url, |c| {
            c.batch_execute("DROP TABLE items")?;
            Ok(serde_json::json!("dropped"))
        }),
        "/db/connect" => db(&url, |_| Ok(serde_json::json!("connected"))),
        "/exit" => {
            let code = query(&url, "code")
                .and_then(|c| c.parse().ok())
                .unwrap_or(1);
            std::process::exit(code);
        }
        "/raise" => {
            let signal = query(&url, "signal").and_then(|s| s.parse::<i32>().ok());
            match signal.map(nix::sys::signal::Signal::try_from) {
                Some(Ok(signal)) => match nix::sys::signal::raise(signal) {
                    Ok(()) => text(200, format!("{signal} was not fatal\n")),
                    Err(e) => text(500, format!("raise: {e}\n")),
                },
                _ => text(400, "give signal=N, a signal number\n"),
            }
        }
        _ => text(404, "not found\n"),
    };
    let _ = request.respond(response);
}

fn fill(dir: &str, mb: u64, keep: bool) -> serde_json::Value {
    use std::io::Write;
    let path = format!("{dir}/fill");
    let chunk = vec![7u8; 1 << 20];
    let mut written = 0u64;
    let result = std::fs::File::create(&path).and_then(|mut f| {
        for _ in 0..mb {
            f.write_all(&chunk)?;
            written += chunk.len() as u64;
        }
        f.sync_all()
    });
    if !keep {
        let _ = std::fs::remove_file(&path);
    }
    serde_json::json!({
        "written_bytes": written,
        "error": result.err().map(|e| e.to_string()),
    })
}

/// The pseudo-terminals `/ptys` holds (their masters), until the program ends.
static PTYS: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());

fn ptys(n: usize) -> serde_json::Value {
    let mut held = PTYS.lock().unwrap_or_else(|e| e.into_inner());
    let mut error = None;
    for _ in 0..n {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/ptmx")
        {
            Ok(master) => held.push(master),
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    serde_json::json!({ "held": held.len(), "error": error })
}

fn spew(mb: u64) -> serde_json::Value {
    use std::io::Write;
    let started = std::time::Instant::now();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let line = format!("{}\n", "x".repeat(99));
    for _ in 0..(mb << 20) / 100 {
        if out.write_all(line.as_bytes()).is_err() {
            break;
        }
    }
    let _ = out.flush();
    serde_json::json!({ "seconds": started.elapsed().as_secs_f64() })
}

fn read(path: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    let mut buf = vec![0u8; 4096];
    match std::fs::File::open(path).and_then(|mut f| f.read(&mut buf)) {
        Ok(n) => {
            buf.truncate(n);
            Response::from_data(buf).with_status_code(200)
        }
        Err(e) => text(404, format!("error: {e}\n")),
    }
}

fn pids() -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort();
    pids
}

/// Forks children that sleep until the kernel refuses one, keeps them `hold_secs`, then kills
/// and reaps them: `{"forked": N, "error": the refusal}`.
fn fork_until_refused(hold_secs: u64) -> serde_json::Value {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::{fork, ForkResult};
    let mut children = Vec::new();
    let mut error = None;
    // Refused since: a fork bomb tries again, since a refusal (EAGAIN) may come from processes
    // that start or end beside it and count against the same limit; it gives up after a second
    // of refusals in a row.
    let mut refused_since: Option<std::time::Instant> = None;
    while children.len() < 100_000 {
        // SAFETY: the child only sleeps and exits; it touches no lock and allocates nothing.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => loop {
                nix::unistd::pause();
            },
            Ok(ForkResult::Parent { child }) => {
                children.push(child);
                refused_since = None;
            }
            Err(e) => {
                let since = *refused_since.get_or_insert_with(std::time::Instant::now);
                if e != nix::errno::Errno::EAGAIN || since.elapsed().as_secs() >= 1 {
                    error = Some(e.to_string());
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
    std::thread::sleep(std::time::Duration::from_secs(hold_secs));
    for child in &children {
        let _ = kill(*child, Signal::SIGKILL);
    }
    for child in &children {
        let _ = nix::sys::wait::waitpid(*child, None);
    }
    serde_json::json!({ "forked": children.len(), "error": error })
}

fn hog() {
    const CHUNK: usize = 16 << 20;
    let mut held: Vec<Vec<u8>> = Vec::new();
    for _ in 0..(64 << 30) / CHUNK {
        held.push(vec![1u8; CHUNK]);
    }
    std::hint::black_box(&held);
}

/// Connections `/db/hold` keeps open.
static HELD: std::sync::Mutex<Vec<postgres::Client>> = std::sync::Mutex::new(Vec::new());

/// The server process id of each connection in [`HELD`], or 500 with the first error.
fn held_sessions() -> Response<std::io::Cursor<Vec<u8>>> {
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    let pids: Result<Vec<i32>, postgres::Error> = held
        .iter_mut()
        .map(|client| Ok(client.query_one("SELECT pg_backend_pid()", &[])?.get(0)))
        .collect();
    match pids {
        Ok(pids) => json(serde_json::json!(pids)),
        Err(e) => text(500, format!("error: {e}\n")),
    }
}

fn hold_connections(n: usize) -> Response<std::io::Cursor<Vec<u8>>> {
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    let mut refused = None;
    for _ in 0..n {
        match pg_config(None).connect(postgres::NoTls) {
            Ok(client) => held.push(client),
            Err(e) => {
                refused = Some(
                    e.as_db_error()
                        .map_or(e.to_string(), |d| d.message().to_owned()),
                );
                break;
            }
        }
    }
    json(serde_json::json!({ "held": held.len(), "refused": refused }))
}

/// Connections `/db/hold-unauthenticated` keeps open, each asked for a password it never gets.
static UNAUTHENTICATED: std::sync::Mutex<Vec<std::os::unix::net::UnixStream>> =
    std::sync::Mutex::new(Vec::new());

/// Opens `n` connections to `$PGHOST/.s.PGSQL.$PGPORT`, each sending a startup packet for
/// PGUSER and PGDATABASE (protocol 3.0) and never answering the password request, and keeps
/// those asked for one. Reports how many were asked, how many refused (and the first refusal's
/// message) and how many ended otherwise.
fn hold_unauthenticated(n: usize) -> Response<std::io::Cursor<Vec<u8>>> {
    use std::io::Write;
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let socket = format!("{}/.s.PGSQL.{}", env("PGHOST"), env("PGPORT"));
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (key, value) in [("user", env("PGUSER")), ("database", env("PGDATABASE"))] {
        body.extend(key.as_bytes().iter().chain(b"\0"));
        body.extend(value.as_bytes().iter().chain(b"\0"));
    }
    body.push(0);
    let mut startup = u32::try_from(body.len() + 4)
        .unwrap_or(0)
        .to_be_bytes()
        .to_vec();
    startup.extend(body);
    let mut held = UNAUTHENTICATED.lock().unwrap_or_else(|e| e.into_inner());
    let (mut asked, mut refused, mut other) = (0, 0, Vec::new());
    let mut refusal = None;
    for _ in 0..n {
        let answer = std::os::unix::net::UnixStream::connect(&socket).and_then(|mut stream| {
            stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
            stream.write_all(&startup)?;
            let mut head = [0u8; 5];
            stream.read_exact(&mut head)?;
            let length = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let mut rest = vec![0u8; length.saturating_sub(4).min(4096)];
            stream.read_exact(&mut rest)?;
            Ok((head[0], rest, stream))
        });
        match answer {
            Ok((b'R', _, stream)) => {
                asked += 1;
                held.push(stream);
            }
            Ok((b'E', fields, _)) => {
                refused += 1;
                // The `M` field: its text up to its NUL.
                let message = fields
                    .split(|b| *b == 0)
                    .find_map(|f| f.strip_prefix(b"M"))
                    .map(|m| String::from_utf8_lossy(m).into_owned());
                refusal = refusal.or(message);
            }
            Ok((kind, _, _)) => other.push(format!("message {:?}", kind as char)),
            Err(e) => other.push(e.to_string()),
        }
    }
    json(serde_json::json!({
        "asked_for_password": asked, "refused": refused, "refusal": refusal, "other": other,
    }))
}

/// libpq's view of the PG* environment, with `database` instead of PGDATABASE if given.
fn pg_config(database: Option<&str>) -> postgres::Config {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let database = database
        .map(str::to_owned)
        .unwrap_or_else(|| env("PGDATABASE"));
    let mut config = postgres::Config::new();
    // As libpq: a PGHOST that is a path is a socket directory, anything else a host name.
    let host = env("PGHOST");
    if host.starts_with('/') {
        config.host_path(host);
    } else {
        config.host(&host);
    }
    config
        .port(env("PGPORT").parse().unwrap_or(5432))
        .user(&env("PGUSER"))
        .password(env("PGPASSWORD"))
        .dbname(&database);
    config
}

/// Connects with the PG* environment (or to `?db=` instead of PGDATABASE) and runs `work`.
fn db(
    url: &str,
    work: impl FnOnce(&mut postgres::Client) -> Result<serde_json::Value, postgres::Error>,
) -> Response<std::io::Cursor<Vec<u8>>> {
    match pg_config(query(url, "db"))
        .connect(postgres::NoTls)
        .and_then(|mut c| work(&mut c))
    {
        Ok(value) => json(value),
        Err(e) => text(
            500,
            format!(
                "error: {}\n",
                e.as_db_error()
                    .map_or(e.to_string(), |d| d.message().to_owned())
            ),
        ),
    }
}

/// `GET /unshare`: a user namespace made by unshare(2) (this process would enter it: only
/// tried, the answer is what counts) or by clone(2) into a child that exits at once (how
/// busybox's and util-linux's `unshare` start a program in one): 200 if either worked, else
/// 403 with both errors.
fn user_namespace() -> Response<std::io::Cursor<Vec<u8>>> {
    // SAFETY: a fork-like clone (no new stack): the child only calls _exit(2).
    let cloned = unsafe {
        let pid = nix::libc::syscall(
            nix::libc::SYS_clone,
            nix::libc::CLONE_NEWUSER | nix::libc::SIGCHLD,
            0,
            0,
            0,
            0,
        );
        if pid == 0 {
            nix::libc::_exit(0);
        }
        if pid > 0 {
            nix::libc::waitpid(pid as nix::libc::pid_t, std::ptr::null_mut(), 0);
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let unshared = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER);
    match (cloned, unshared) {
        (Err(c), Err(u)) => text(403, format!("error: clone: {c}; unshare: {u}\n")),
        (c, u) => text(
            200,
            format!("created a user namespace (clone: {c:?}, unshare: {u:?})\n"),
        ),
    }
}
