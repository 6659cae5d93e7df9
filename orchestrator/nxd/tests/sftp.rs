//! SFTP uploads with the stock OpenSSH clients (`sftp`, `scp`): a put becomes a running
//! deployment with the sandbox's settings and a result file that names it; wrong keys,
//! passwords and paths out of the upload area are refused and store nothing; a killed upload
//! leaves no artifact and no temp file; a text file and a file over the limit are refused with
//! what to do.

use nx_testkit::Host;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The upload limit of the test host, MiB.
const LIMIT_MB: u64 = 64;

struct Sftp {
    port: u16,
    dir: PathBuf,
}

impl Sftp {
    /// A new key pair `<name>` (ed25519, no passphrase); the public key file.
    fn keygen(&self, name: &str) -> PathBuf {
        let key = self.dir.join(name);
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&key)
            .output()
            .expect("ssh-keygen (openssh-client)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        key.with_extension("pub")
    }

    /// OpenSSH options: this key only, the host key pinned from `nx keys host`, no prompts.
    fn options(&self, key: &str) -> Vec<String> {
        [
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            &format!(
                "UserKnownHostsFile={}",
                self.dir.join("known_hosts").display()
            ),
            "-o",
            "LogLevel=ERROR",
            "-i",
            &self.dir.join(key).display().to_string(),
        ]
        .map(String::from)
        .to_vec()
    }

    /// Runs `sftp -b -` with these batch commands as `user`, with `key`.
    fn batch(&self, user: &str, key: &str, commands: &str, extra: &[&str]) -> Output {
        use std::io::Write;
        let mut child = Command::new("sftp")
            .args(self.options(key))
            .args(extra)
            .args(["-P", &self.port.to_string(), "-b", "-"])
            .arg(format!("{user}@127.0.0.1"))
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sftp (openssh-client)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(commands.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// `scp -s` (the SFTP protocol) from `from` to `to`.
    fn scp(&self, key: &str, from: &str, to: &str) -> Output {
        Command::new("scp")
            .args(self.options(key))
            .args(["-s", "-P", &self.port.to_string(), from, to])
            .current_dir(&self.dir)
            .output()
            .expect("scp (openssh-client)")
    }

    fn result(&self, name: &str) -> serde_json::Value {
        let text =
            std::fs::read_to_string(self.dir.join(name)).expect("the result file was fetched");
        serde_json::from_str(&text).unwrap()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Stored artifacts (not the temp dir) and what is in the temp dir.
fn store(host: &Host) -> (Vec<String>, Vec<String>) {
    let names = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.retain(|n| n != ".incoming");
        v.sort();
        v
    };
    (
        names(&host.path("artifacts")),
        names(&host.path("artifacts/.incoming")),
    )
}

fn deployments(host: &Host, sandbox: &str) -> usize {
    host.nx_json(&["status", sandbox])[0]["deployments"]
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn sftp_and_scp_uploads_deploy_and_bad_ones_are_refused() {
    let (host, sftp, web_pub, added) =
        sftp_host_with_web_key(&format!("max_upload_mb = {LIMIT_MB}\n"));
    let (port, dir) = (sftp.port, sftp.dir.clone());
    host.nx_json(&["sandbox", "create", "other"]);
    let other_pub = sftp.keygen("other_key");
    sftp.keygen("stranger_key");
    host.nx_json(&["keys", "add", "other", other_pub.to_str().unwrap()]);
    // The fingerprint is the one ssh-keygen prints.
    let printed = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&web_pub)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&printed.stdout).contains(added["fingerprint"].as_str().unwrap())
    );
    assert_eq!(
        host.nx_json(&["keys", "ls", "web"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    host.nx_json(&["sandbox", "set", "web", "-e", "APP_VERSION=sftp"]);
    std::fs::copy(nx_testkit::sample_app(), dir.join("app")).unwrap();

    // sftp: put, then get the result file; the deployment runs with the sandbox's settings.
    let out = sftp.batch("web", "web_key", "put app\nget app.result\nls\n", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let result = sftp.result("app.result");
    assert_eq!(result["ok"], true, "{result}");
    let id = result["deployment"].as_str().unwrap().to_owned();
    assert_eq!(
        result["sha256"],
        nx_testkit::sha256_hex(&std::fs::read(dir.join("app")).unwrap())
    );
    assert!(result["preview_url"].as_str().unwrap().contains(&id));
    let (status, body) = host.get(&host.preview_host("web", &id), "/");
    assert_eq!(
        (status, body),
        (200, format!("nx-sample sftp deployment={id}\n"))
    );
    assert!(
        text(&out).contains("app.result"),
        "ls shows the result file: {}",
        text(&out)
    );

    // scp (SFTP mode) into the sandbox, and the result back.
    let out = sftp.scp("web_key", "app", "web@127.0.0.1:app2");
    assert!(out.status.success(), "{}", text(&out));
    let out = sftp.scp("web_key", "web@127.0.0.1:app2.result", "scp.result");
    assert!(out.status.success(), "{}", text(&out));
    let second = sftp.result("scp.result");
    assert_eq!(second["ok"], true, "{second}");
    assert_ne!(second["deployment"], result["deployment"]);
    assert_eq!(deployments(&host, "web"), 2);

    let before = store(&host);
    // Unregistered key, the key of another sandbox, a password: refused.
    for (user, key, extra) in [
        ("web", "stranger_key", vec![]),
        ("web", "other_key", vec![]),
        ("nosuchsandbox", "web_key", vec![]),
        (
            "web",
            "web_key",
            vec![
                "-o",
                "PreferredAuthentications=password,keyboard-interactive",
                "-o",
                "PubkeyAuthentication=no",
            ],
        ),
    ] {
        let out = sftp.batch(user, key, "put app refused\n", &extra);
        assert!(!out.status.success(), "{user} with {key} {extra:?} got in");
        assert!(
            text(&out).contains("Permission denied (publickey)"),
            "{}",
            text(&out)
        );
    }
    // A path out of the upload area.
    let out = sftp.batch("web", "web_key", "put app ../../etc/x\n", &[]);
    assert!(!out.status.success());
    // (OpenSSH's sftp prints the status code, not the server's message.)
    assert!(text(&out).contains("Permission denied"), "{}", text(&out));
    assert!(!Path::new("/etc/x").exists());
    assert_eq!(store(&host), before, "nothing was stored");
    assert_eq!(deployments(&host, "web"), 2);

    // A text file: refused, and the result file names the fix.
    std::fs::write(dir.join("notes.txt"), "just some notes\n").unwrap();
    let out = sftp.batch(
        "web",
        "web_key",
        "-put notes.txt notes\nget notes.result\n",
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let refused = sftp.result("notes.result");
    assert_eq!(refused["ok"], false);
    let why = refused["error"].as_str().unwrap();
    assert!(
        why.contains("not an ELF executable") && why.contains("x86_64-unknown-linux-musl"),
        "{why}"
    );
    assert_eq!(store(&host), before, "nothing was stored");

    // Over the limit: refused while it arrives.
    let big = dir.join("big");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len((LIMIT_MB + 1) << 20).unwrap();
    let out = sftp.batch("web", "web_key", "-put big\nget big.result\n", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let refused = sftp.result("big.result");
    assert_eq!(refused["ok"], false);
    let why = refused["error"].as_str().unwrap();
    assert!(
        why.contains(&format!("larger than the {LIMIT_MB} MiB limit")),
        "{why}"
    );
    assert_eq!(store(&host), before, "nothing was stored");

    // Killed midway (rate-limited so that it is): no artifact, no temp file.
    let mut bytes = std::fs::read(nx_testkit::sample_app()).unwrap();
    bytes.resize(32 << 20, 7);
    std::fs::write(dir.join("slow"), &bytes).unwrap();
    let mut child = Command::new("sftp")
        .args(sftp.options("web_key"))
        .args(["-l", "8000", "-P", &port.to_string(), "-b", "-"])
        .arg("web@127.0.0.1")
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"put slow\n")
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let incoming = host.path("artifacts/.incoming");
    loop {
        let growing = std::fs::read_dir(&incoming)
            .unwrap()
            .flatten()
            .any(|e| e.metadata().map(|m| m.len() > 1 << 20).unwrap_or(false));
        if growing {
            break;
        }
        assert!(Instant::now() < deadline, "the upload never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(20);
    while store(&host) != before {
        assert!(Instant::now() < deadline, "left behind: {:?}", store(&host));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!host.path("uploads/web/slow.result").exists());
    assert_eq!(deployments(&host, "web"), 2);
    assert_eq!(deployments(&host, "other"), 0);

    // A removed key gets in no more.
    host.nx_json(&["keys", "rm", "web", web_pub.to_str().unwrap()]);
    let out = sftp.batch("web", "web_key", "ls\n", &[]);
    assert!(!out.status.success(), "{}", text(&out));

    // Removing the sandbox removes its result files: a sandbox made again under its name
    // starts with none.
    assert!(host.path("uploads/web/app.result").exists());
    host.nx_json(&["sandbox", "rm", "web", "--no-backup"]);
    assert!(!host.path("uploads/web").exists());
}

/// An SSH client that trusts any host key (the session's files are this test's subject, not
/// the host key, which the OpenSSH test above pins).
struct AnyHostKey;

impl russh::client::Handler for AnyHostKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// An authenticated SFTP session as `user` with `key`: the SSH connection (kept for as long as
/// the session is used) and the SFTP client on it.
async fn session(
    port: u16,
    user: &str,
    key: &std::sync::Arc<russh::keys::PrivateKey>,
) -> (
    russh::client::Handle<AnyHostKey>,
    russh_sftp::client::SftpSession,
) {
    try_session(port, user, key).await.unwrap()
}

/// [`session`], or what failed: the connection, the authentication, the subsystem.
async fn try_session(
    port: u16,
    user: &str,
    key: &std::sync::Arc<russh::keys::PrivateKey>,
) -> Result<
    (
        russh::client::Handle<AnyHostKey>,
        russh_sftp::client::SftpSession,
    ),
    String,
> {
    let config = std::sync::Arc::new(russh::client::Config::default());
    let mut ssh = russh::client::connect(config, ("127.0.0.1", port), AnyHostKey)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let auth = ssh
        .authenticate_publickey(
            user,
            russh::keys::PrivateKeyWithHashAlg::new(key.clone(), None),
        )
        .await
        .map_err(|e| format!("authenticate: {e}"))?;
    if !auth.success() {
        return Err("the key was refused".into());
    }
    let channel = ssh
        .channel_open_session()
        .await
        .map_err(|e| format!("open a session channel: {e}"))?;
    channel
        .request_subsystem(true, "sftp")
        .await
        .map_err(|e| format!("request the sftp subsystem: {e}"))?;
    let sftp = russh_sftp::client::SftpSession::new(channel.into_stream())
        .await
        .map_err(|e| format!("start SFTP: {e}"))?;
    Ok((ssh, sftp))
}

/// A host with SFTP on a free port and `keys` in its `[sftp]` table (a table after them is
/// the host's too), sandbox `web` holding a new key `web_key`, the host key that `nx keys
/// host` prints pinned in the client's `known_hosts`: the host, the client's key directory,
/// the public key file and `nx keys add`'s answer.
fn sftp_host_with_web_key(keys: &str) -> (Host, Sftp, PathBuf, serde_json::Value) {
    let port = nx_testkit::free_port();
    let host = Host::start_with(&format!("[sftp]\nlisten = \"127.0.0.1:{port}\"\n{keys}"));
    host.forward(port);
    let dir = host.path("sftp-client");
    std::fs::create_dir_all(&dir).unwrap();
    let hostkey = host.nx_json(&["keys", "host"]);
    std::fs::write(
        dir.join("known_hosts"),
        format!(
            "[127.0.0.1]:{port} {}\n",
            hostkey["public_key"].as_str().unwrap()
        ),
    )
    .unwrap();
    let sftp = Sftp { port, dir };
    host.nx_json(&["sandbox", "create", "web"]);
    let public = sftp.keygen("web_key");
    let added = host.nx_json(&["keys", "add", "web", public.to_str().unwrap()]);
    (host, sftp, public, added)
}

/// Attacker s12 H3: an SFTP upload past its sandbox's room under `store.max_owner_mb` was
/// refused only once stored, and stayed in the store (four 152 MiB files for a sandbox
/// capped at 200 MiB) until the collection. Refused before it is stored; the same bytes
/// again are no new bytes and deploy.
#[test]
fn an_sftp_upload_past_its_sandboxs_room_leaves_nothing_in_the_store() {
    // Room for the sample (its size in MiB, rounded up), not for another program beside it.
    let other = nx_testkit::sample_app().with_file_name("nx-vm-init");
    let size = |path: &std::path::Path| std::fs::metadata(path).unwrap().len();
    let room_mb = size(&nx_testkit::sample_app()).div_ceil(1 << 20);
    assert!(
        size(&nx_testkit::sample_app()) + size(&other) > room_mb << 20,
        "{} and {} fit in {room_mb} MiB together",
        nx_testkit::sample_app().display(),
        other.display()
    );
    let (host, sftp, _, _) =
        sftp_host_with_web_key(&format!("[store]\nmax_owner_mb = {room_mb}\n"));
    std::fs::copy(nx_testkit::sample_app(), sftp.dir.join("app")).unwrap();
    std::fs::copy(&other, sftp.dir.join("other")).unwrap();
    let out = sftp.batch("web", "web_key", "put app\nget app.result\n", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sftp.result("app.result")["ok"], true);
    let before = store(&host);
    let out = sftp.batch("web", "web_key", "-put other\nget other.result\n", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let refused = sftp.result("other.result");
    assert_eq!(refused["ok"], false, "{refused}");
    let why = refused["error"].as_str().unwrap();
    assert!(why.contains("store.max_owner_mb"), "{why}");
    assert_eq!(store(&host), before, "the refused upload was stored");
    // The program it holds, again: deploys.
    let out = sftp.batch("web", "web_key", "put app again\nget again.result\n", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sftp.result("again.result")["ok"], true);
}

/// [`sftp_host_with_web_key`] for russh clients: the host, the SFTP port, `web_key` loaded
/// for russh and its fingerprint.
fn sftp_host(keys: &str) -> (Host, u16, std::sync::Arc<russh::keys::PrivateKey>, String) {
    let (host, sftp, _, added) = sftp_host_with_web_key(keys);
    let key = russh::keys::load_secret_key(sftp.dir.join("web_key"), None).unwrap();
    let fingerprint = added["fingerprint"].as_str().unwrap().to_owned();
    (host, sftp.port, std::sync::Arc::new(key), fingerprint)
}

/// Attacker s11 G2: one session that opened uploads and never closed them took every file
/// descriptor of nxd (and a temp file each). A session holds at most `sftp.max_open_handles`;
/// the next open is refused with what to do, a close makes room, and other sessions and the
/// API are not affected.
#[test]
fn one_sftp_session_holds_at_most_its_share_of_open_files() {
    const MAX: usize = 4;
    let (host, port, key, _) = sftp_host(&format!("max_open_handles = {MAX}\n"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (_ssh, first) = session(port, "web", &key).await;
        let mut open = Vec::new();
        for i in 0..MAX {
            open.push(
                first
                    .create(format!("f{i}"))
                    .await
                    .expect("an open within the cap"),
            );
        }
        let refused = first
            .create("one-more")
            .await
            .err()
            .expect("an open past the cap");
        assert!(
            refused.to_string().contains("sftp.max_open_handles"),
            "{refused}"
        );
        assert!(first.read_dir("/").await.is_err(), "a listing past the cap");
        // Another session has its own share; the API answers meanwhile.
        let (_other_ssh, other) = session(port, "web", &key).await;
        other.create("other").await.expect("another session's open");
        assert!(host.nx(&["ls"]).ok);
        // Closing one makes room again (the empty upload itself is refused at its close).
        let _ = open.pop().unwrap().close().await;
        first
            .create("after-close")
            .await
            .expect("an open after a close");
    });
    // Uploads left open are only temp files: nothing went into the store.
    assert!(store(&host).0.is_empty(), "{:?}", store(&host));
}

/// Attacker s11 G3: a session kept deploying after its key was removed (`nx keys rm`, or
/// `nx sandbox rm` and the name given to someone else). Its next upload is refused, and one
/// it had begun is not deployed when it closes.
#[test]
fn an_sftp_session_deploys_nothing_once_its_key_is_removed() {
    let (host, port, key, fingerprint) = sftp_host("");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use tokio::io::AsyncWriteExt;
        let (_ssh, sftp) = session(port, "web", &key).await;
        let mut begun = sftp
            .create("app")
            .await
            .expect("an upload while the key is held");
        begun
            .write_all(&std::fs::read(nx_testkit::sample_app()).unwrap())
            .await
            .unwrap();
        host.nx_json(&["keys", "rm", "web", &fingerprint]);
        let closed = begun.close().await;
        assert!(
            closed.is_err(),
            "the upload begun before the key's removal deployed"
        );
        let refused = sftp
            .create("again")
            .await
            .err()
            .expect("an upload after removal");
        assert!(refused.to_string().contains("was removed"), "{refused}");
    });
    assert!(
        host.nx_json(&["ls"])
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["deployments"].as_array().unwrap().is_empty()),
        "a deployment came from a removed key"
    );
    assert!(store(&host).0.is_empty(), "{:?}", store(&host));
}

/// `n` connections to the SFTP port that never speak, held open.
fn silent_connections_held(port: u16, n: usize) -> Vec<std::net::TcpStream> {
    (0..n)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect()
}

/// Connections to the SFTP port that never speak: each is the server's banner (those the
/// server took) or nothing (those it closed at once); `(banners, closed)`.
fn silent_connections(port: u16, n: usize) -> (Vec<std::net::TcpStream>, usize) {
    use std::io::Read;
    let streams = silent_connections_held(port, n);
    std::thread::sleep(Duration::from_millis(500));
    let (mut open, mut closed) = (Vec::new(), 0);
    for mut stream in streams {
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut banner = [0u8; 64];
        match stream.read(&mut banner) {
            Ok(n) if n > 0 && banner.starts_with(b"SSH-2.0-") => open.push(stream),
            _ => closed += 1,
        }
    }
    (open, closed)
}

/// Attacker s11 G1: 20,000 connections that never spoke made the SFTP server's accept fail
/// (EMFILE), and nxd exited with it: API, router feed and every SFTP user gone. Now one client
/// holds `sftp.max_connections_per_address`, the rest are closed as they come; those that do
/// not authenticate within `sftp.login_grace_secs` are closed; and an accept error, here with
/// nxd at 1,024 open files and the caps set above that, is retried, never fatal.
#[test]
fn silent_sftp_connections_neither_end_nxd_nor_lock_out_its_users() {
    let (host, port, key, _) = sftp_host(
        "max_connections = 4096\nmax_connections_per_address = 4096\nmax_startups = 4096\nlogin_grace_secs = 600\n",
    );
    // nxd (soft and hard) at 1,024 open files, so that the flood reaches EMFILE (prlimit(1):
    // the test's own hard limit could not be raised again without CAP_SYS_RESOURCE).
    let limited = Command::new("prlimit")
        .arg(format!("--pid={}", host.nxd_pid()))
        .arg("--nofile=1024:1024")
        .status()
        .expect("prlimit (util-linux)");
    assert!(limited.success());
    let flood = silent_connections_held(port, 1100);
    // The test's forwarder hands them to nxd one thread each: slower on a busy machine (CI
    // of session 12: 495 had their banner after 3 s).
    host.wait_for_log_line(
        |l| l.contains("SFTP accept failed"),
        Duration::from_secs(60),
        "the flood did not reach nxd's open-file limit",
    );
    drop(flood);
    assert!(
        host.nx(&["ls"]).ok,
        "nxd stopped serving after its SFTP accept failed:\n{}",
        host.nxd_log()
    );
    // The flood's descriptors go as its connections end (the test's forwarder closes them
    // one thread each): a client retrying for a while gets in, long before the 600 s grace
    // (on 48eddeb each connection's second descriptor stayed for the grace: nxd stayed at
    // its limit and closed every new connection).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let (_ssh, sftp) = loop {
            match try_session(port, "web", &key).await {
                Ok(session) => break session,
                Err(e) if std::time::Instant::now() > deadline => {
                    panic!("no SFTP session within 30 s of the flood's end: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        };
        sftp.read_dir("/")
            .await
            .expect("an SFTP session after the flood");
    });

    // The default shares: one client holds 16 connections; silent ones go after the grace.
    let (host, port, key, _) = sftp_host("login_grace_secs = 2\n");
    let (open, closed) = silent_connections(port, 40);
    assert_eq!((open.len(), closed), (16, 24), "one client's share");
    std::thread::sleep(Duration::from_secs(3));
    let (after_grace, _) = silent_connections(port, 1);
    assert_eq!(
        after_grace.len(),
        1,
        "the silent ones still hold the client's share"
    );
    drop((open, after_grace));
    runtime.block_on(async {
        let (_ssh, sftp) = session(port, "web", &key).await;
        sftp.read_dir("/")
            .await
            .expect("an SFTP session within the grace");
    });
    assert!(host.nx(&["ls"]).ok);
}

/// Attacker s12 M3: from 20 addresses, connections that sent only their version line held
/// every SFTP connection, so no key holder got in, and each refusal was a warning line (3,100
/// a second). Now at most `sftp.max_startups` connections are unauthenticated, a new one takes
/// the place of the oldest of the client holding the most, and those lines are rate-limited:
/// a key holder gets in while the flood goes on.
#[test]
fn a_flood_without_a_key_from_many_addresses_leaves_key_holders_room() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let (host, port, key, _) =
        sftp_host("max_connections = 64\nmax_startups = 32\nlogin_grace_secs = 600\n");
    // 20 addresses (fewer than the 32 startups: see `startups`) x 4 connections (80: more
    // than every connection), each opened again as soon as nxd closes it, until stopped;
    // `made` counts the connections opened.
    let (stop, made) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let flood = {
        let (ns, stop, made) = (host.netns.clone(), stop.clone(), made.clone());
        std::thread::spawn(move || {
            ns.enter();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                for client in 1..=20u8 {
                    for _ in 0..4 {
                        let made = made.clone();
                        tokio::spawn(async move {
                            loop {
                                silent_until_closed(client, port).await;
                                made.fetch_add(1, Ordering::Relaxed);
                            }
                        });
                    }
                }
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        })
    };
    host.wait_for_log_line(
        |l| l.contains("sftp.max_startups reached"),
        Duration::from_secs(60),
        "the flood did not fill sftp.max_startups",
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (started, at_start) = (Instant::now(), made.load(Ordering::Relaxed));
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        let (_ssh, sftp) = loop {
            match try_session(port, "web", &key).await {
                Ok(session) => break session,
                Err(e) if Instant::now() > deadline => {
                    panic!("no SFTP session within 20 s during the flood: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        };
        sftp.read_dir("/")
            .await
            .expect("an SFTP session during the flood");
    });
    let during = made.load(Ordering::Relaxed) - at_start;
    assert!(
        during > 0,
        "the flood's connections were not closed while the key holder got in"
    );
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    // The lines about it: a burst of 100 and 10 a second at most, and summaries.
    let lines = host
        .nxd_log()
        .lines()
        .filter(|l| l.contains("sftp.max_startups reached"))
        .count();
    let bound = 100 + 10 * (started.elapsed().as_secs() as usize + 61);
    assert!(
        lines <= bound,
        "{lines} lines about closed connections (bound {bound}) for {} connections",
        made.load(Ordering::Relaxed)
    );
    assert!(host.nx(&["ls"]).ok);
}

/// One connection from 127.0.3.`client` to the SFTP port that sends its version line and
/// nothing else, until the server closes it.
async fn silent_until_closed(client: u8, port: u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 3, client], 0)))
        .unwrap();
    let Ok(mut stream) = socket
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
    else {
        tokio::time::sleep(Duration::from_millis(100)).await;
        return;
    };
    let _ = stream.write_all(b"SSH-2.0-flood\r\n").await;
    let mut buffer = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buffer).await {
        if n == 0 {
            break;
        }
    }
}
