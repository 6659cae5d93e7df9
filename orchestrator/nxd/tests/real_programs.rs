//! Real third-party programs as they ship: Debian 12's packages, fetched with `apt-get
//! download` and unpacked with `dpkg -x`, and crates.io's with `cargo install --locked`, by
//! `fetch-programs.sh` (install-deps.sh runs it), each
//! pushed with the command the README's table gives and checked in its own protocol: HTTP
//! through its preview URL, TCP services (`nx push --tcp`) at their `tcp://` addresses, from
//! the host and from a client in a network of its own. Go, Rust and C, static and dynamic,
//! single files and bundles with their configuration, UI assets and libraries, a multi-call
//! binary, one with the sandbox's PostgreSQL. A package that is not unpacked fails the test,
//! naming the script that fetches it.

use nx_testkit::Host;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a Debian package was unpacked (its `usr/`, `etc/`...) or a crate installed (its
/// `bin/`); panics when it was not.
fn package(name: &str) -> PathBuf {
    let dir = PathBuf::from(
        std::env::var("NX_PROGRAMS_DIR").unwrap_or_else(|_| "/var/cache/nx/programs".into()),
    )
    .join(name);
    assert!(
        dir.join(".unpacked").is_file(),
        "{name} is not in {}: run orchestrator/fetch-programs.sh \
         (orchestrator/install-deps.sh runs it)",
        dir.display()
    );
    dir
}

/// A file of an unpacked package, e.g. `file("caddy", "usr/bin/caddy")`.
fn file(name: &str, path: &str) -> PathBuf {
    let path = package(name).join(path);
    assert!(path.exists(), "{} is not in {name}", path.display());
    path
}

/// A bundle directory being put together, as a user would in a shell.
struct Bundle(PathBuf);

impl Bundle {
    fn new(host: &Host, name: &str) -> Self {
        let dir = host.path(&format!("bundles-src/{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Copies a file, or a directory's tree without the links that point outside it (Debian
    /// links web assets to packages of their own), to `to` inside the bundle.
    fn copy(self, from: &Path, to: &str) -> Self {
        let dest = self.0.join(to);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        if from.is_dir() {
            let ok = std::process::Command::new("cp")
                .args(["-a", "--no-preserve=ownership"])
                .arg(from)
                .arg(&dest)
                .status()
                .unwrap()
                .success();
            assert!(ok, "cp -a {}", from.display());
            drop_dangling_links(&dest);
        } else {
            std::fs::copy(from, &dest).unwrap();
        }
        self
    }

    fn text(self, to: &str, text: &str) -> Self {
        let dest = self.0.join(to);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(&dest, text).unwrap();
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644)).unwrap();
        self
    }

    /// An executable script `to` holding `text`.
    fn script(self, to: &str, text: &str) -> Self {
        let dest = self.0.join(to);
        std::fs::write(&dest, text).unwrap();
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).unwrap();
        self
    }

    /// A symbolic link `at` (inside the bundle) to `target`.
    fn link(self, target: &str, at: &str) -> Self {
        std::os::unix::fs::symlink(target, self.0.join(at)).unwrap();
        self
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

fn drop_dangling_links(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.file_type().is_symlink() {
            if std::fs::metadata(&path).is_err() || std::fs::read_link(&path).unwrap().is_absolute()
            {
                std::fs::remove_file(&path).unwrap();
            }
        } else if meta.is_dir() {
            drop_dangling_links(&path);
        }
    }
}

/// `nx push ARGS` (with --json); the deployment's id. On failure, the CLI's answer and the end of
/// nxd's log.
fn push(host: &Host, args: &[&str]) -> String {
    let mut all = vec!["push"];
    all.extend_from_slice(args);
    host.nx_json(&all)["deployment"]["id"]
        .as_str()
        .expect("deployment id")
        .to_owned()
}

/// GET through the deployment's preview URL, with the deployment's log when it did not answer.
fn get(host: &Host, sandbox: &str, id: &str, path: &str) -> (u16, String) {
    let answer = host.get(&host.preview_host(sandbox, id), path);
    if answer.0 == 0 || answer.0 >= 500 {
        let logs = host.nx(&["logs", id, "-n", "30"]);
        eprintln!(
            "{sandbox} {path}: {answer:?}; its log:\n{}{}",
            logs.stdout, logs.stderr
        );
    }
    answer
}

/// The port of a `tcp://HOST:PORT` address.
fn tcp_port(url: &serde_json::Value) -> u16 {
    let url = url
        .as_str()
        .unwrap_or_else(|| panic!("no tcp:// address: {url}"));
    let rest = url
        .strip_prefix(&format!("tcp://{}:", nx_testkit::BASE_DOMAIN))
        .unwrap_or_else(|| panic!("{url} is not tcp://{}:PORT", nx_testkit::BASE_DOMAIN));
    rest.parse().expect("a port")
}

/// A deployment's own TCP port (its `tcp_url` in `nx status`).
fn own_tcp_port(host: &Host, sandbox: &str, id: &str) -> u16 {
    tcp_port(&host.deployment(sandbox, id)["tcp_url"])
}

/// The sandbox's production TCP port (its `tcp_url` in `nx status`).
fn production_tcp_port(host: &Host, sandbox: &str) -> u16 {
    tcp_port(&host.nx_json(&["status", sandbox])[0]["tcp_url"])
}

/// Sends `request` to `addr` from the calling thread's namespace; the first line it answers.
fn first_line(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line
}

/// Sends `request` to the host's TCP `port` from the host itself (127.0.0.1 in its namespace);
/// the first line it answers.
fn tcp_line(host: &Host, port: u16, request: &[u8]) -> String {
    host.netns
        .run(|| first_line(SocketAddr::from(([127, 0, 0, 1], port)), request))
}

/// A client in a network namespace of its own, linked to the host's by a veth pair: the host
/// is 192.0.2.1 to it (TEST-NET-1, RFC 5737), as a host's public address is to the internet.
struct Client {
    netns: std::sync::Arc<nx_testkit::netns::Netns>,
}

impl Client {
    const HOST: [u8; 4] = [192, 0, 2, 1];

    fn new(host: &Host) -> Self {
        let netns = nx_testkit::netns::Netns::new();
        nx_testkit::netns::link(
            &host.netns,
            ("ext0", "192.0.2.1/24"),
            &netns,
            ("eth0", "192.0.2.2/24"),
        );
        Self { netns }
    }

    /// Sends `request` to the host's TCP `port`; the first line it answers.
    fn tcp_line(&self, port: u16, request: &[u8]) -> String {
        self.netns
            .run(|| first_line(SocketAddr::from((Self::HOST, port)), request))
    }

    /// A Gemini request for `url` (the URL and CRLF over TLS, the Gemini specification's
    /// section 2) to the host's TCP `port`, as a client that trusts on first use: `openssl
    /// s_client` with the name `url` has as SNI, verifying nothing. What it printed: the
    /// server's certificate (`subject=CN = ...`) and, after it, the whole response.
    fn gemini(&self, port: u16, url: &str) -> String {
        let name = url
            .strip_prefix("gemini://")
            .and_then(|rest| rest.split([':', '/']).next())
            .expect("a gemini:// URL");
        let [a, b, c, d] = Self::HOST;
        let out = self.netns.run(|| {
            let mut child = std::process::Command::new("timeout")
                .args(["10", "openssl", "s_client", "-ign_eof", "-servername", name])
                .arg("-connect")
                .arg(format!("{a}.{b}.{c}.{d}:{port}"))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("openssl (install-deps.sh installs it)");
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(format!("{url}\r\n").as_bytes()).unwrap();
            drop(stdin);
            child.wait_with_output().unwrap()
        });
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

const INDEX: &str = "<h1>served by NX</h1>\n";

#[test]
fn caddy_serves_a_site_from_its_bundle() {
    let host = Host::start();
    let app = Bundle::new(&host, "caddy")
        .copy(&file("caddy", "usr/bin/caddy"), "caddy")
        .text("site/index.html", INDEX);
    let id = push(
        &host,
        &[
            app.path(),
            "-s",
            "caddy",
            "--",
            "file-server",
            "--listen",
            ":$PORT",
            "--root",
            "/app/site",
        ],
    );
    assert_eq!(get(&host, "caddy", &id, "/"), (200, INDEX.into()));
}

#[test]
fn prometheus_runs_with_its_config_and_its_web_ui_from_the_bundle() {
    let host = Host::start();
    let web = file("prometheus", "usr/share/prometheus/web");
    let app = Bundle::new(&host, "prometheus")
        .copy(&file("prometheus", "usr/bin/prometheus"), "prometheus")
        .copy(&web.join("templates"), "web/templates")
        .copy(&web.join("static"), "web/static")
        .copy(
            &file("prometheus", "etc/prometheus/console_libraries"),
            "console_libraries",
        )
        .text("consoles/nx.html", "NX console: {{ 6 }} x {{ 7 }}\n")
        .text(
            "prometheus.yml",
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: itself\n    \
             static_configs:\n      - targets: ['127.0.0.1:9090']\n",
        );
    let id = push(
        &host,
        &[
            app.path(),
            "-s",
            "prometheus",
            "--port",
            "9090",
            "--",
            "--config.file=/app/prometheus.yml",
            "--storage.tsdb.path=/data/prometheus",
            "--web.local-assets=/app/web",
            "--web.console.templates=/app/consoles",
            "--web.console.libraries=/app/console_libraries",
        ],
    );
    // Prometheus listens before its TSDB is open and answers /-/ready 503 until then.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while host
        .get(&host.preview_host("prometheus", &id), "/-/ready")
        .0
        != 200
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        get(&host, "prometheus", &id, "/-/ready").0,
        200,
        "Prometheus is not ready within 30 s"
    );
    // The UI renders its templates from the bundle; the config is the bundle's.
    let (status, page) = get(&host, "prometheus", &id, "/graph");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<title>Prometheus"), "{page}");
    let (status, config) = get(&host, "prometheus", &id, "/api/v1/status/config");
    assert_eq!(status, 200, "{config}");
    assert!(config.contains("job_name: itself"), "{config}");
    let console = get(&host, "prometheus", &id, "/consoles/nx.html");
    assert_eq!(console, (200, "NX console: 6 x 7\n".into()));
}

#[test]
fn node_exporter_alone_serves_its_metrics_from_proc() {
    // A host monitor: its default collectors read the host's /sys, which no sandbox has (it
    // panics "failed to open sysfs"); the /proc ones describe the sandbox.
    let host = Host::start();
    let bin = file(
        "prometheus-node-exporter",
        "usr/bin/prometheus-node-exporter",
    );
    let id = push(
        &host,
        &[
            bin.to_str().unwrap(),
            "-s",
            "node",
            "--",
            "--web.listen-address=:$PORT",
            "--collector.disable-defaults",
            "--collector.loadavg",
            "--collector.meminfo",
            "--collector.stat",
        ],
    );
    let (status, metrics) = get(&host, "node", &id, "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("node_exporter_build_info"), "{metrics}");
    assert!(metrics.contains("node_memory_MemTotal_bytes"), "{metrics}");
}

#[test]
fn pushgateway_keeps_what_is_pushed_to_it() {
    let host = Host::start();
    let bin = file("prometheus-pushgateway", "usr/bin/prometheus-pushgateway");
    let id = push(
        &host,
        &[
            bin.to_str().unwrap(),
            "-s",
            "pushgateway",
            "--",
            "--web.listen-address=:$PORT",
        ],
    );
    let url = format!("http://{}/metrics/job/nx", host.router);
    let pushed = host
        .http()
        .put(url)
        .header("Host", host.preview_host("pushgateway", &id))
        .body("nx_pushed_total 42\n")
        .send()
        .unwrap();
    assert!(pushed.status().is_success(), "{pushed:?}");
    let (_, metrics) = get(&host, "pushgateway", &id, "/metrics");
    assert!(
        metrics.contains("nx_pushed_total{instance=\"\",job=\"nx\"} 42"),
        "{metrics}"
    );
}

#[test]
fn webhook_runs_the_hook_its_hooks_file_declares() {
    // The hook's command comes with the bundle (the host's /usr/bin is not in a sandbox):
    // busybox's echo applet, by the name of the link.
    let host = Host::start();
    let app = Bundle::new(&host, "webhook")
        .copy(&file("webhook", "usr/bin/webhook"), "webhook")
        .copy(&file("busybox-static", "bin/busybox"), "bin/busybox")
        .link("busybox", "bin/echo")
        .text(
            "hooks.json",
            r#"[{"id": "hello", "execute-command": "/app/bin/echo",
                "include-command-output-in-response": true,
                "pass-arguments-to-command": [{"source": "string", "name": "hello from a hook"}]}]"#,
        );
    let id = push(
        &host,
        &[
            app.path(),
            "-s",
            "webhook",
            "--",
            "-hooks",
            "/app/hooks.json",
            "-port",
            "$PORT",
        ],
    );
    let (status, body) = get(&host, "webhook", &id, "/hooks/hello");
    assert_eq!((status, body.trim()), (200, "hello from a hook"));
}

#[test]
fn busybox_is_its_httpd_applet_by_argv0() {
    let host = Host::start();
    let app = Bundle::new(&host, "busybox")
        .copy(&file("busybox-static", "bin/busybox"), "busybox")
        .text("www/index.html", INDEX);
    let id = push(
        &host,
        &[
            app.path(),
            "--argv0",
            "httpd",
            "-s",
            "busybox",
            "--",
            "-f",
            "-p",
            "$PORT",
            "-h",
            "/app/www",
        ],
    );
    assert_eq!(get(&host, "busybox", &id, "/"), (200, INDEX.into()));
}

/// Newcomer18 L1: a program that accepts readiness's connection and then ends (busybox's
/// `nc -l`, once) was pushed with rc 0, as `failed (exit-code)` or `running`, with a `promote`
/// line. Here nxd waits 1.5 s once it is ready (fail point `push::ready`), so that it has ended
/// when the push answers: `nx push` fails, saying so and what to look at, with no promote line.
/// With `--json` it prints one document, the deployment with that `error` (review19 #5: a
/// second one, `{"error"}`, followed it, and stdout was no JSON document).
#[test]
fn a_program_that_ends_after_readinesss_connection_is_not_pushed_as_running() {
    let mut host = Host::start();
    host.restart_nxd_with_failpoints("push::ready=return(1500)");
    let app = Bundle::new(&host, "once").copy(&file("busybox-static", "bin/busybox"), "busybox");
    let push = |json: &[&'static str]| {
        let mut args = json.to_vec();
        args.extend_from_slice(&["push", app.path(), "--argv0", "sh", "-s", "once", "--"]);
        args.extend_from_slice(&["-c", "nc -l -p $PORT; exit 0"]);
        host.nx(&args)
    };
    let out = push(&[]);
    assert!(!out.ok, "{}", out.stdout);
    assert!(
        out.stderr.contains("its program ended") && out.stderr.contains("nx logs"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("promote:"), "{}", out.stdout);
    let out = push(&["--json"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let document = out.json();
    let error = document["error"].as_str().unwrap_or_default();
    assert!(error.contains("its program ended"), "{document}");
    assert!(document["deployment"]["id"].is_string(), "{document}");
}

/// Review19 #6: a deployment stopped (`nx stop`, its id shown by `nx ls` while it starts)
/// between its readiness and its push's answer was told "its program ended" (the push's view
/// read its own record, `desired` running): it now says it was stopped, and how to start it.
/// nxd waits 3 s once it is ready (fail point `push::ready`), and the stop comes then.
#[test]
fn a_push_whose_deployment_was_stopped_once_ready_says_so() {
    let mut host = Host::start();
    host.restart_nxd_with_failpoints("push::ready=return(3000)");
    let sample = nx_testkit::sample_app();
    let pushing = host
        .nx_command(
            &host.token,
            &["push", sample.to_str().unwrap(), "-s", "halt"],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run nx push");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let id = loop {
        assert!(std::time::Instant::now() < deadline, "no deployment listed");
        let listed = host.nx(&["--json", "ls"]);
        let id = listed
            .json()
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|s| {
                (s["name"] == "halt").then(|| s["deployments"][0]["id"].as_str().map(str::to_owned))
            });
        if let Some(Some(id)) = id {
            break id;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Ready: its preview answers (routed while it starts).
    while host.get(&host.preview_host("halt", &id), "/").0 != 200 {
        assert!(std::time::Instant::now() < deadline, "{id} never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let stopped = host.nx(&["stop", &id]);
    assert!(stopped.ok, "{}", stopped.stderr);
    let out: nx_testkit::Nx = pushing.wait_with_output().expect("nx push").into();
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(
        out.stderr.contains("it was stopped (`nx stop`)")
            && out.stderr.contains(&format!("nx start {id}"))
            && !out.stderr.contains("its program ended"),
        "{}",
        out.stderr
    );
}

/// A bundle of a static shell (Debian's busybox-static), a start script and a dynamically
/// linked program (pushgateway, Go with cgo).
fn shell_bundle(host: &Host, name: &str, script: &str) -> Bundle {
    Bundle::new(host, name)
        .copy(&file("busybox-static", "bin/busybox"), "bin/busybox")
        .copy(
            &file("prometheus-pushgateway", "usr/bin/prometheus-pushgateway"),
            "bin/pushgateway",
        )
        .script("start.sh", script)
}

/// Pushes [`shell_bundle`] with `script` as its start script into `sandbox`, busybox's `sh`
/// running it; the deployment's id.
fn push_shell_script(host: &Host, sandbox: &str, script: &str) -> String {
    let app = shell_bundle(host, sandbox, script);
    push(
        host,
        &[
            app.path(),
            "--entry",
            "bin/busybox",
            "-s",
            sandbox,
            "--",
            "sh",
            "/app/start.sh",
        ],
    )
}

/// Newcomer17 N1: a bundle whose entry is static (a busybox shell running a start script, the
/// common way to start a program that reads only a config file) got no dynamic loader and no
/// library directories, so the dynamic program its script ran failed "not found" (exit 127),
/// and nxd had taken the bundle without a word. A bundle's sandbox now has the loader when any
/// of its programs is dynamic.
#[test]
fn a_static_shell_runs_the_dynamic_program_of_its_bundle() {
    let host = Host::start();
    let id = push_shell_script(
        &host,
        "shell",
        "#!/app/bin/busybox sh\nexec /app/bin/pushgateway --web.listen-address=:$PORT\n",
    );
    let (status, metrics) = get(&host, "shell", &id, "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("pushgateway_build_info"), "{metrics}");
}

/// Newcomer18 N3: a program could not open its own output again (`/dev/stdout`,
/// `/proc/self/fd/2`: nginx's `access_log /dev/stdout`), since the pipes were root's, 0600.
#[test]
fn a_deployment_writes_to_dev_stdout_and_its_own_fd_2() {
    let host = Host::start();
    let id = push_shell_script(&host, "out", "#!/app/bin/busybox sh\necho to-stdout > /dev/stdout && echo to-fd2 > /proc/self/fd/2 && exec /app/bin/pushgateway --web.listen-address=:$PORT\n");
    let logs = host.nx(&["logs", &id, "-n", "50"]);
    assert!(
        logs.stdout.contains("to-stdout") && logs.stdout.contains("to-fd2"),
        "{}{}",
        logs.stdout,
        logs.stderr
    );
}

/// Newcomer17 N2: a script as a bundle's entry was refused with advice to rebuild it as a
/// static Rust or Go binary, and `nx run-task` took no bundle (nor `--entry`). The refusal
/// now gives the command that runs it (its interpreter as the entry, the script as its
/// argument), and a task runs a bundle that way.
#[test]
fn a_script_entry_is_refused_naming_its_interpreter_and_a_task_runs_the_bundle_so() {
    let host = Host::start();
    let app = shell_bundle(
        &host,
        "job",
        "#!/app/bin/busybox sh\necho \"job of $1\"\nexec /app/bin/pushgateway --version 2>&1\n",
    );
    for verb in [&["push", "-s", "job"][..], &["run-task"]] {
        let mut args = verb.to_vec();
        args.extend([app.path(), "--entry", "start.sh"]);
        let refused = host.nx(&args);
        assert!(!refused.ok, "{verb:?} of a script entry was accepted");
        assert!(
            refused
                .stderr
                .contains("is a script (#!/app/bin/busybox sh)")
                && refused
                    .stderr
                    .contains("`--entry bin/busybox -- sh /app/start.sh`"),
            "{verb:?}: {}",
            refused.stderr
        );
    }
    let task = host.nx(&[
        "run-task",
        app.path(),
        "--entry",
        "bin/busybox",
        "--",
        "sh",
        "/app/start.sh",
        "nx",
    ]);
    assert!(task.ok, "{:?}: {}{}", task.code, task.stdout, task.stderr);
    assert!(
        task.stdout.starts_with("job of nx\npushgateway, version"),
        "{}",
        task.stdout
    );
}

#[test]
fn hugo_needs_libsass_which_its_bundle_ships() {
    let host = Host::start();
    let hugo = file("hugo", "usr/bin/hugo");
    // Alone: refused before anything is sent, naming the library.
    let alone = host.nx(&["verify-binary", hugo.to_str().unwrap()]);
    assert!(!alone.ok);
    assert!(alone.stderr.contains("libsass.so.1"), "{}", alone.stderr);
    let app = Bundle::new(&host, "hugo")
        .copy(&hugo, "hugo")
        .copy(
            &file("libsass1", "usr/lib/x86_64-linux-gnu/libsass.so.1.0.0"),
            "lib/libsass.so.1",
        )
        // Hugo writes its processed resources and a lock file beside the site unless told
        // otherwise: the bundle is read-only.
        .text(
            "site/config.toml",
            "title = \"NX site\"\nresourceDir = \"/tmp/hugo-resources\"\nnoBuildLock = true\n",
        )
        .text(
            "site/content/_index.md",
            "---\ntitle: home\n---\nwritten in markdown\n",
        )
        .text(
            "site/layouts/index.html",
            "<h1>{{ .Site.Title }}</h1>{{ .Content }}",
        );
    let id = push(
        &host,
        &[
            app.path(),
            "-s",
            "hugo",
            "--",
            "server",
            "--source",
            "/app/site",
            "--bind",
            "0.0.0.0",
            "--port",
            "$PORT",
            "--baseURL",
            "/",
            "--appendPort=false",
            "--disableLiveReload",
            "--watch=false",
            "--cacheDir",
            "/tmp/hugo",
        ],
    );
    let (status, page) = get(&host, "hugo", &id, "/");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<h1>NX site</h1>"), "{page}");
    assert!(page.contains("<p>written in markdown</p>"), "{page}");
}

#[test]
fn lighttpd_runs_with_its_config_file() {
    let host = Host::start();
    let app = Bundle::new(&host, "lighttpd")
        .copy(&file("lighttpd", "usr/sbin/lighttpd"), "lighttpd")
        .text(
            "lighttpd.conf",
            "server.document-root = \"/app/www\"\nserver.port = env.PORT\n\
             index-file.names = (\"index.html\")\nmimetype.assign = (\".html\" => \"text/html\")\n",
        )
        .text("www/index.html", INDEX);
    let id = push(
        &host,
        &[
            app.path(),
            "-s",
            "lighttpd",
            "--",
            "-D",
            "-f",
            "/app/lighttpd.conf",
        ],
    );
    assert_eq!(get(&host, "lighttpd", &id, "/"), (200, INDEX.into()));
}

#[test]
fn mini_httpd_serves_a_directory() {
    let host = Host::start();
    let app = Bundle::new(&host, "mini-httpd")
        .copy(&file("mini-httpd", "usr/sbin/mini_httpd"), "mini_httpd")
        .text("www/index.html", INDEX);
    let id = push(
        &host,
        &[
            app.path(),
            "-s",
            "mini-httpd",
            "--",
            "-D",
            "-p",
            "$PORT",
            "-d",
            "/app/www",
        ],
    );
    assert_eq!(
        get(&host, "mini-httpd", &id, "/index.html"),
        (200, INDEX.into())
    );
}

#[test]
fn webfsd_serves_a_directory() {
    let host = Host::start();
    let app = Bundle::new(&host, "webfs")
        .copy(&file("webfs", "usr/bin/webfsd"), "webfsd")
        .text("www/index.html", INDEX);
    let id = push(
        &host,
        &[
            app.path(),
            "-s",
            "webfs",
            "--",
            "-F",
            "-p",
            "$PORT",
            "-r",
            "/app/www",
            "-f",
            "index.html",
        ],
    );
    assert_eq!(get(&host, "webfs", &id, "/"), (200, INDEX.into()));
}

#[test]
fn rclone_serves_a_directory_over_http() {
    let host = Host::start();
    let app = Bundle::new(&host, "rclone")
        .copy(&file("rclone", "usr/bin/rclone"), "rclone")
        .text("www/index.html", INDEX);
    let id = push(
        &host,
        &[
            app.path(),
            "-s",
            "rclone",
            "--",
            "serve",
            "http",
            "/app/www",
            "--addr",
            ":$PORT",
        ],
    );
    assert_eq!(
        get(&host, "rclone", &id, "/index.html"),
        (200, INDEX.into())
    );
}

#[test]
fn victoria_metrics_stores_and_answers_a_sample() {
    let host = Host::start();
    let bin = file("victoria-metrics", "usr/bin/victoria-metrics");
    let id = push(
        &host,
        &[
            bin.to_str().unwrap(),
            "-s",
            "victoria",
            "--",
            "-httpListenAddr=:$PORT",
            "-storageDataPath=/data/victoria-metrics",
        ],
    );
    assert_eq!(get(&host, "victoria", &id, "/health"), (200, "OK".into()));
    let imported = host
        .http()
        .post(format!("http://{}/api/v1/import/prometheus", host.router))
        .header("Host", host.preview_host("victoria", &id))
        .body("nx_sample 7\n")
        .send()
        .unwrap();
    assert!(imported.status().is_success(), "{imported:?}");
    // Imported samples become searchable after the next flush (within a second or two).
    let found = (0..40).any(|_| {
        std::thread::sleep(Duration::from_millis(250));
        get(&host, "victoria", &id, "/api/v1/export?match[]=nx_sample")
            .1
            .contains("\"values\":[7]")
    });
    assert!(found, "the imported sample never showed up");
}

#[test]
fn docker_registry_listens_on_the_port_its_config_names() {
    let host = Host::start();
    let app = Bundle::new(&host, "registry")
        .copy(
            &file("docker-registry", "usr/bin/docker-registry"),
            "registry",
        )
        .text(
            "config.yml",
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /data/registry\n\
             http:\n  addr: :5000\n",
        );
    let id = push(
        &host,
        &[
            app.path(),
            "-s",
            "registry",
            "--port",
            "5000",
            "--",
            "serve",
            "/app/config.yml",
        ],
    );
    assert_eq!(get(&host, "registry", &id, "/v2/"), (200, "{}".into()));
}

#[test]
fn nats_answers_its_own_protocol_at_its_tcp_address() {
    let host = Host::start();
    let bin = file("nats-server", "usr/sbin/nats-server");
    let id = push(
        &host,
        &[
            bin.to_str().unwrap(),
            "-s",
            "nats",
            "--tcp",
            "--",
            "--port",
            "$PORT",
        ],
    );
    let info = tcp_line(&host, own_tcp_port(&host, "nats", &id), b"");
    assert!(info.starts_with("INFO {"), "{info}");
    // A TCP deployment has no HTTP route.
    assert_eq!(host.get(&host.preview_host("nats", &id), "/").0, 404);
}

/// Pushes Redis (redis-check-rdb from redis-tools run as `redis-server`, liblzf and jemalloc in
/// the bundle's lib/) as a TCP service, with `extra` nx push arguments; its id.
fn push_redis(host: &Host, extra: &[&str]) -> String {
    let lib = "usr/lib/x86_64-linux-gnu";
    let app = Bundle::new(host, "redis")
        .copy(
            &file("redis-tools", "usr/bin/redis-check-rdb"),
            "bin/redis-check-rdb",
        )
        .copy(
            &file("liblzf1", &format!("{lib}/liblzf.so.1.5")),
            "lib/liblzf.so.1",
        )
        .copy(
            &file("libjemalloc2", &format!("{lib}/libjemalloc.so.2")),
            "lib/libjemalloc.so.2",
        );
    let mut args = vec![
        app.path(),
        "--entry",
        "bin/redis-check-rdb",
        "--argv0",
        "redis-server",
        "-s",
        "redis",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        "--",
        "--port",
        "$PORT",
        "--save",
        "",
        "--protected-mode",
        "no",
    ]);
    push(host, &args)
}

#[test]
fn redis_ships_its_libraries_and_is_redis_server_by_argv0() {
    let host = Host::start();
    let first = push_redis(&host, &["--tcp"]);
    assert_eq!(
        tcp_line(&host, own_tcp_port(&host, "redis", &first), b"PING\r\n"),
        "+PONG\r\n"
    );
}

/// Production's `tcp://` address follows promote and rollback, from the host and from a client
/// outside it; each deployment keeps an address of its own; a TCP port outside the range or
/// held by another sandbox is refused and nothing is stored.
#[test]
fn redis_production_tcp_address_moves_with_promote_and_rollback() {
    let host = Host::start();
    let client = Client::new(&host);
    let first = push_redis(&host, &["--tcp=30100"]);
    host.nx_json(&["promote", "redis", &first]);
    assert_eq!(production_tcp_port(&host, "redis"), 30100);
    let first_port = own_tcp_port(&host, "redis", &first);
    assert_ne!(first_port, 30100);
    assert_eq!(tcp_line(&host, 30100, b"SET who first\r\n"), "+OK\r\n");
    // The value tells the deployments apart: the second one starts empty.
    assert_eq!(client.tcp_line(30100, b"GET who\r\n"), "$5\r\n");

    let second = push_redis(&host, &["--tcp"]);
    let second_port = own_tcp_port(&host, "redis", &second);
    assert_eq!(client.tcp_line(second_port, b"GET who\r\n"), "$-1\r\n");
    assert_eq!(client.tcp_line(30100, b"GET who\r\n"), "$5\r\n");
    let promoted = host.nx(&["promote", "redis", &second]);
    assert!(promoted.ok, "{}", promoted.stderr);
    assert!(
        promoted.stdout.contains("tcp://nx.test:30100"),
        "{}",
        promoted.stdout
    );
    assert_eq!(client.tcp_line(30100, b"GET who\r\n"), "$-1\r\n");
    assert_eq!(tcp_line(&host, 30100, b"GET who\r\n"), "$-1\r\n");
    assert_eq!(client.tcp_line(first_port, b"GET who\r\n"), "$5\r\n");

    host.nx_json(&["rollback", "redis"]);
    assert_eq!(client.tcp_line(30100, b"GET who\r\n"), "$5\r\n");
    assert_eq!(tcp_line(&host, 30100, b"GET who\r\n"), "$5\r\n");
    let status = host.nx(&["status", "redis"]);
    assert!(
        status.stdout.contains("tcp://nx.test:30100  (production)"),
        "{}",
        status.stdout
    );

    // Refused, with what to do, and nothing stored.
    let before = deployments(&host);
    let outside = host.nx(&["push", "/bin/true", "-s", "other", "--tcp=29999"]);
    assert!(!outside.ok);
    assert!(
        outside
            .stderr
            .contains("outside nxd's network.tcp_ports (30000-30999)"),
        "{}",
        outside.stderr
    );
    let taken = host.nx(&["push", "/bin/true", "-s", "other", "--tcp=30100"]);
    assert!(!taken.ok);
    assert!(
        taken
            .stderr
            .contains("TCP port 30100 is taken (by sandbox redis's production)"),
        "{}",
        taken.stderr
    );
    let moved = host.nx(&["push", "/bin/true", "-s", "redis", "--tcp=30200"]);
    assert!(!moved.ok);
    assert!(
        moved.stderr.contains("at TCP port 30100 already"),
        "{}",
        moved.stderr
    );
    assert_eq!(deployments(&host), before);
}

/// Every sandbox and its deployments' ids (`nx ls`).
fn deployments(host: &Host) -> Vec<(String, Vec<String>)> {
    let list = host.nx_json(&["ls"]);
    list.as_array()
        .expect("sandboxes")
        .iter()
        .map(|s| {
            let ids = s["deployments"].as_array().expect("deployments");
            (
                s["name"].to_string(),
                ids.iter().map(|d| d["id"].to_string()).collect(),
            )
        })
        .collect()
}

#[test]
fn memcached_answers_its_text_protocol() {
    let host = Host::start();
    let bin = file("memcached", "usr/bin/memcached");
    let id = push(
        &host,
        &[
            bin.to_str().unwrap(),
            "-s",
            "memcached",
            "--tcp",
            "--",
            "-p",
            "$PORT",
            "-U",
            "0",
        ],
    );
    let memcached = own_tcp_port(&host, "memcached", &id);
    assert_eq!(
        Client::new(&host).tcp_line(memcached, b"version\r\n"),
        "VERSION 1.6.18\r\n"
    );
}

#[test]
fn postgres_exporter_reaches_the_sandboxs_database_through_a_variable_reference() {
    let host = Host::start();
    let bin = file(
        "prometheus-postgres-exporter",
        "usr/bin/prometheus-postgres-exporter",
    );
    // The exporter reads its own variable; NX's DATABASE_URL is passed on by reference.
    let id = push(
        &host,
        &[
            bin.to_str().unwrap(),
            "-s",
            "pg",
            "-e",
            "DATA_SOURCE_NAME=$DATABASE_URL",
            "--",
            "--web.listen-address=:$PORT",
        ],
    );
    let (status, metrics) = get(&host, "pg", &id, "/metrics");
    assert_eq!(status, 200, "{metrics}");
    assert!(
        metrics.contains("\npg_up 1\n"),
        "pg_up is not 1; the exporter's log:\n{}",
        host.nx(&["logs", &id]).stdout
    );
    // `nx db url --inside` is that URL; the default one is the host's.
    let inside = host.nx(&["db", "url", "--inside", "pg"]);
    assert!(inside.ok, "{}", inside.stderr);
    assert!(
        inside.stdout.contains("?host=/run/postgresql&"),
        "{}",
        inside.stdout
    );
    let outside = host.nx(&["db", "url", "pg"]);
    assert!(
        !outside.stdout.contains("/run/postgresql"),
        "{}",
        outside.stdout
    );
    assert!(outside.stderr.contains("--inside"), "{}", outside.stderr);
}

const CAPSULE: &str = "# served by NX\n";

#[test]
fn agate_serves_a_gemini_capsule_from_its_bundle_at_its_tcp_address() {
    let host = Host::start();
    let app = Bundle::new(&host, "agate")
        .copy(&file("agate", "bin/agate"), "agate")
        .text("content/index.gmi", CAPSULE);
    let id = push(
        &host,
        &[
            app.path(),
            "-s",
            "gemini",
            "--tcp",
            "--",
            "--content",
            "/app/content",
            "--addr",
            "0.0.0.0:$PORT",
            "--hostname",
            nx_testkit::BASE_DOMAIN,
            "--skip-port-check",
            "--certs",
            "/data/certs",
        ],
    );
    let port = own_tcp_port(&host, "gemini", &id);
    let client = Client::new(&host);
    let url = format!("gemini://{}:{port}/", nx_testkit::BASE_DOMAIN);
    let answer = client.gemini(port, &url);
    // The certificate agate made for its --hostname on its first start, then the page.
    assert!(
        answer.contains(&format!("subject=CN = {}\n", nx_testkit::BASE_DOMAIN)),
        "{answer}"
    );
    let response = answer
        .split_once("20 text/gemini\r\n")
        .unwrap_or_else(|| panic!("no success header for {url}: {answer}"))
        .1;
    assert!(response.starts_with(CAPSULE), "{response}");
    // A page that is not in the capsule: 51 (not found), still in Gemini.
    let missing = client.gemini(port, &format!("{url}nowhere.gmi"));
    assert!(missing.contains("51 Not found"), "{missing}");
}
