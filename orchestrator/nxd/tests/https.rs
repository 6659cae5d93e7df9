//! HTTPS end to end against Let's Encrypt's test ACME server, Pebble (with pebble-challtestsrv
//! answering 127.0.0.1 for every name), started by the test on loopback ports: production
//! hosts and the API get certificates by HTTP-01 through the router, curl verifies them against
//! Pebble's root with HTTP/2 negotiated, plain HTTP redirects, a restarted nxd serves the stored
//! certificate without a new order, renewal swaps certificates under load without a failed
//! request, and a failed validation is reported with the server's reason. With
//! `acme_challenge = "tls-alpn-01"` the certificate comes through the HTTPS listener alone.

use nx_testkit::pebble::Pebble;
use nx_testkit::{free_port, Host};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A host whose router has HTTPS on `https_port` and orders from `pebble`.
fn host_with_acme(pebble: &Pebble, router_port: u16, https_port: u16, extra: &str) -> Host {
    let config = format!(
        "[tls]\nhttps_listen = \"127.0.0.1:{https_port}\"\nacme_directory_url = \"{}\"\nacme_ca_roots = {:?}\nacme_check_interval_secs = 2\n{extra}",
        pebble.directory, pebble.api_root
    );
    // nxd runs in the host's network namespace: it reaches Pebble through a forwarder back,
    // Pebble (and curl) the router's ports through forwarders in.
    let host = Host::start_with_router_port(&config, router_port, &[pebble.listen.port()]);
    host.forward(https_port);
    host
}

fn statuses(host: &Host) -> Value {
    std::fs::read(host.path("tls/status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

/// Waits until `name`'s certificate status satisfies `done` (90 s at most).
fn wait_status(host: &Host, pebble: &Pebble, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let status = statuses(host)[name].clone();
        if done(&status) {
            return status;
        }
        if Instant::now() > deadline {
            panic!(
                "{name}: certificate status {status}\nnxd log:\n{}\nPebble:\n{}",
                host.nxd_log(),
                pebble.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn is_valid(status: &Value) -> bool {
    status["state"] == "valid"
}

/// `curl` to `https://{name}:{port}{path}` resolved to loopback, verifying against `root`
/// only; answers (HTTP version, status code, body).
fn curl_https(name: &str, port: u16, path: &str, root: &Path) -> (String, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(root)
        .args(["--capath", "/nonexistent", "--resolve"])
        .arg(format!("{name}:{port}:127.0.0.1"))
        .args(["-w", "\n%{http_version} %{http_code}"])
        .arg(format!("https://{name}:{port}{path}"))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl https://{name}:{port}{path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = text.rsplit_once('\n').expect("write-out line");
    let (version, code) = last.split_once(' ').expect("version and code");
    (version.to_owned(), code.to_owned(), body.to_owned())
}

/// The serial number of the certificate served for `name` on `port` (openssl s_client),
/// verified against `root`.
fn served_serial(name: &str, port: u16, root: &Path) -> String {
    let script = format!(
        "openssl s_client -connect 127.0.0.1:{port} -servername {name} -verify_return_error -CAfile {} </dev/null 2>/dev/null | openssl x509 -noout -serial",
        root.display()
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("openssl");
    let serial = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        serial.starts_with("serial="),
        "no verified certificate for {name}: {serial}"
    );
    serial
}

#[test]
fn production_hosts_get_certificates_that_survive_restarts_and_renew_without_a_failed_request() {
    let (router_port, https_port) = (free_port(), free_port());
    let pebble = Pebble::start(router_port, https_port);
    let mut host = host_with_acme(
        &pebble,
        router_port,
        https_port,
        "acme_renew_before_days = 0\n",
    );
    let root = host.path("pebble-root.pem");
    std::fs::write(&root, pebble.issuing_root()).unwrap();

    let v1 = host.push_sample("shop", &["-e", "APP_VERSION=v1"]);
    host.nx_json(&["promote", "shop", &v1]);
    let name = host.production_host("shop");
    // nx shows the production URL on HTTPS; previews stay on HTTP (no wildcard certificate).
    let shown = &host.nx_json(&["status", "shop"])[0];
    assert_eq!(
        shown["production_url"],
        format!("https://{name}:{https_port}/")
    );
    assert!(shown["deployments"][0]["preview_url"]
        .as_str()
        .unwrap()
        .starts_with("http://"));
    let status = wait_status(&host, &pebble, &name, is_valid);
    assert!(status["not_after"].as_i64().unwrap() > chrono_now());

    // curl verifies it against Pebble's root, over HTTP/2.
    let (version, code, body) = curl_https(&name, https_port, "/", &root);
    assert_eq!((version.as_str(), code.as_str()), ("2", "200"), "{body}");
    assert!(body.contains("v1"), "{body}");

    // Plain HTTP on that name: 308 to HTTPS.
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
        ])
        .args(["-H", &format!("Host: {name}")])
        .arg(format!("http://{}/cart?id=7", host.router))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("308 https://{name}:{https_port}/cart?id=7")
    );

    // A restarted nxd serves the stored certificate, and orders nothing.
    let serial = served_serial(&name, https_port, &root);
    let stored = host.path(&format!("tls/certs/{name}.pem"));
    let modified = std::fs::metadata(&stored).unwrap().modified().unwrap();
    host.restart_nxd();
    std::thread::sleep(Duration::from_secs(5)); // two checks at acme_check_interval_secs = 2
    assert_eq!(served_serial(&name, https_port, &root), serial);
    assert_eq!(
        std::fs::metadata(&stored).unwrap().modified().unwrap(),
        modified
    );
    assert!(pebble_orders(&pebble) == 2, "{}", pebble.log()); // shop and the API host

    // Renewal: a renew-before window longer than the certificate's life renews at every
    // check; fresh TLS connections meanwhile all succeed.
    let config = host.path("nxd.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "acme_renew_before_days = 0",
            "acme_renew_before_days = 100000",
        ),
    )
    .unwrap();
    host.restart_nxd();
    let pem = std::fs::read(&root).unwrap();
    let load = std::thread::spawn({
        let name = name.clone();
        move || {
            let client = reqwest::blocking::Client::builder()
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
                .resolve(&name, ([127, 0, 0, 1], https_port).into())
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            let (mut ok, mut failed) = (0, Vec::new());
            while Instant::now() < deadline {
                match client.get(format!("https://{name}:{https_port}/")).send() {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(r.status().to_string()),
                    Err(e) => failed.push(format!("{e:?}")),
                }
            }
            (ok, failed)
        }
    });
    let mut serials = vec![serial];
    let deadline = Instant::now() + Duration::from_secs(18);
    while Instant::now() < deadline {
        let now = served_serial(&name, https_port, &root);
        if serials.last() != Some(&now) {
            serials.push(now);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let (ok, failed) = load.join().unwrap();
    eprintln!(
        "renewal: {} certificates served in turn, {ok} requests on fresh connections, {} failed",
        serials.len(),
        failed.len()
    );
    assert!(
        serials.len() >= 3,
        "not renewed twice: {serials:?}\n{}",
        host.nxd_log()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok > 20);
}

/// How many orders Pebble finalized (its log says "Issued certificate" for each).
#[test]
fn with_tls_alpn_01_a_production_host_gets_its_certificate_through_the_https_listener_alone() {
    let (router_port, https_port) = (free_port(), free_port());
    // Pebble's HTTP-01 port has nothing behind it: only TLS-ALPN-01 (RFC 8737) can succeed.
    let pebble = Pebble::start(free_port(), https_port);
    let host = host_with_acme(
        &pebble,
        router_port,
        https_port,
        "acme_challenge = \"tls-alpn-01\"\n",
    );
    let root = host.path("pebble-root.pem");
    std::fs::write(&root, pebble.issuing_root()).unwrap();
    let v1 = host.push_sample("shop", &["-e", "APP_VERSION=v1"]);
    host.nx_json(&["promote", "shop", &v1]);
    let name = host.production_host("shop");
    let status = wait_status(&host, &pebble, &name, is_valid);
    assert!(status["not_after"].as_i64().unwrap() > chrono_now());
    let (version, code, body) = curl_https(&name, https_port, "/", &root);
    assert_eq!((version.as_str(), code.as_str()), ("2", "200"), "{body}");
    assert!(body.contains("v1"), "{body}");
    std::thread::sleep(Duration::from_millis(500)); // the router flushes its log every 200 ms
    let router_log = std::fs::read_to_string(host.path("router/router.log")).unwrap_or_default();
    assert!(
        router_log.contains("ACME TLS-ALPN-01 validation handshake answered"),
        "the router saw no TLS-ALPN-01 validation:\n{router_log}"
    );
    // The validation certificates are gone once the orders are done.
    let left: Vec<_> = std::fs::read_dir(host.path("tls/challenges/tls-alpn-01"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "validation certificates left: {left:?}");
}

fn pebble_orders(pebble: &Pebble) -> usize {
    pebble.log().matches("Issued certificate serial").count()
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `nx domain ls --json` as (domain -> view).
fn domains(host: &Host) -> Value {
    let list = host.nx_json(&["domain", "ls"]);
    let mut by_name = serde_json::Map::new();
    for view in list.as_array().unwrap() {
        by_name.insert(view["domain"].as_str().unwrap().to_owned(), view.clone());
    }
    Value::Object(by_name)
}

fn wait_domain(host: &Host, pebble: &Pebble, domain: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let view = domains(host)[domain].clone();
        if view["certificate"]["state"] == state {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "{domain}: {view}\nnxd log:\n{}\nPebble:\n{}",
            host.nxd_log(),
            pebble.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn custom_domains_get_certificates_bad_ones_are_refused_and_a_remote_nx_deploys_over_tls() {
    let (router_port, https_port) = (free_port(), free_port());
    let pebble = Pebble::start(router_port, https_port);
    let host = host_with_acme(&pebble, router_port, https_port, "");
    let root = host.path("pebble-root.pem");
    std::fs::write(&root, pebble.issuing_root()).unwrap();
    let v1 = host.push_sample("shop", &["-e", "APP_VERSION=v1"]);
    host.nx_json(&["promote", "shop", &v1]);
    host.push_sample("blog", &[]);

    // Added in upper case: stored and served in lower case; the DNS record to create.
    let added = host.nx_json(&["domain", "add", "shop", "WWW.Shop.Example."]);
    assert_eq!(added["domain"], "www.shop.example");
    assert!(added["dns_record"]
        .as_str()
        .unwrap()
        .contains("CNAME shop.nx.test."));
    let text = host.nx(&["domain", "add", "shop", "www.shop.example"]);
    assert!(
        text.ok && text.stdout.contains("create this DNS record"),
        "{}",
        text.stdout
    );
    wait_domain(&host, &pebble, "www.shop.example", "valid");
    let (version, code, body) = curl_https("www.shop.example", https_port, "/", &root);
    assert_eq!((version.as_str(), code.as_str()), ("2", "200"));
    assert!(body.contains("v1"), "{body}");

    // Bad input: refused with what to do; nothing stored.
    let long = format!("{}.example.com", vec!["a".repeat(60); 5].join("."));
    for (bad, says) in [
        ("203.0.113.7", "IP address"),
        ("shop..example", "empty label"),
        ("*.shop.example", "wildcard"),
        (long.as_str(), "at most 253"),
        ("nx.test", "base_domain"),
        ("x.nx.test", "base_domain"),
    ] {
        let out = host.nx(&["domain", "add", "shop", bad]);
        assert!(!out.ok, "{bad} was accepted");
        assert!(out.stderr.contains(says), "{bad}: {}", out.stderr);
    }
    let taken = host.nx(&["domain", "add", "blog", "www.shop.example"]);
    assert!(!taken.ok);
    assert!(
        taken.stderr.contains("belongs to sandbox shop") && taken.stderr.contains("nx domain rm"),
        "{}",
        taken.stderr
    );
    assert_eq!(domains(&host).as_object().unwrap().len(), 1);

    // A validation that fails: the ACME server's reason, shown by `nx domain ls`.
    pebble.set_a_record("broken.shop.example", "127.0.0.2");
    host.nx_json(&["domain", "add", "shop", "broken.shop.example"]);
    let failed = wait_domain(&host, &pebble, "broken.shop.example", "failed");
    let error = failed["certificate"]["error"].as_str().unwrap();
    eprintln!("validation failure as nx domain ls shows it: {error}");
    assert!(error.contains("127.0.0.2"), "{failed}");
    assert!(failed["certificate"]["next_attempt"].as_i64().is_some());
    let text = host.nx(&["domain", "ls", "shop"]);
    assert!(
        text.stdout.contains("FAILED") && text.stdout.contains("127.0.0.2"),
        "{}",
        text.stdout
    );
    host.nx_json(&["domain", "rm", "broken.shop.example"]);
    assert!(!host.nx(&["domain", "rm", "broken.shop.example"]).ok);

    // A remote nx: https://api.nx.test on the router's HTTPS listener, verified against
    // Pebble's root, pushes and promotes. The name resolves through a private /etc/hosts in a
    // mount namespace of nx's own.
    wait_status(&host, &pebble, "api.nx.test", is_valid);
    let hosts = host.path("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost api.nx.test\n").unwrap();
    let remote = |args: &str| {
        let script = format!(
            "mount --bind {} /etc/hosts && exec {} --host https://api.nx.test:{https_port} --ca-cert {} --json {args}",
            hosts.display(),
            nx_testkit::bin("nx").display(),
            root.display()
        );
        let out = Command::new("unshare")
            .args(["--mount", "sh", "-c", &script])
            .env("NX_TOKEN", &host.token)
            .env("NX_CONFIG", "/dev/null")
            .env_remove("NX_HOST")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "remote nx {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let sample = nx_testkit::sample_app();
    let pushed = remote(&format!(
        "push {} --sandbox remote -e APP_VERSION=remote1",
        sample.display()
    ));
    let id = pushed["deployment"]["id"].as_str().unwrap().to_owned();
    remote(&format!("promote remote {id}"));
    assert!(host.get("remote.nx.test", "/").1.contains("remote1"));

    // The GitHub Action's script over TLS, as a runner runs it for a pull request: a deploy
    // token, and the private CA passed as its `ca-cert` input (PEM text, not a path).
    let token = host.nx_json(&[
        "token",
        "create",
        "--sandbox",
        "remote",
        "--can",
        "push,promote",
    ])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let work = host.path("action");
    std::fs::create_dir_all(&work).unwrap();
    let event = work.join("event.json");
    let outputs = work.join("outputs");
    std::fs::write(
        &event,
        r#"{"repository":{"default_branch":"main"},"pull_request":{"number":7}}"#,
    )
    .unwrap();
    std::fs::write(&outputs, "").unwrap();
    let action = |ca_cert: &str| {
        let script = format!(
            "mount --bind {} /etc/hosts && exec bash {}/../../action/nx-deploy.sh",
            hosts.display(),
            env!("CARGO_MANIFEST_DIR")
        );
        Command::new("unshare")
            .args(["--mount", "sh", "-c", &script])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("HOME", &work)
            .env("RUNNER_TEMP", &work)
            .env("GITHUB_EVENT_PATH", &event)
            .env("GITHUB_OUTPUT", &outputs)
            .envs([
                ("GITHUB_EVENT_NAME", "pull_request"),
                ("GITHUB_REF", "refs/pull/7/merge"),
                (
                    "NX_ACTION_HOST",
                    &format!("https://api.nx.test:{https_port}"),
                ),
                ("NX_ACTION_TOKEN", &token),
                ("NX_ACTION_SANDBOX", "remote"),
                ("NX_ACTION_BINARY", sample.to_str().unwrap()),
                ("NX_ACTION_ENV", "APP_VERSION=pr7\n"),
                ("NX_ACTION_NX", nx_testkit::bin("nx").to_str().unwrap()),
                ("NX_ACTION_CA_CERT", ca_cert),
            ])
            .output()
            .unwrap()
    };
    let said = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let bad = action("not a certificate");
    assert!(!bad.status.success());
    assert!(
        said(&bad).contains("input 'ca-cert' is not a PEM certificate"),
        "{}",
        said(&bad)
    );
    let out = action(&pebble.issuing_root());
    assert!(out.status.success(), "{}", said(&out));
    let written = std::fs::read_to_string(&outputs).unwrap();
    let field = |name: &str| {
        written
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in the action's outputs: {written}"))
            .to_owned()
    };
    assert_eq!(field("promoted"), "false");
    let pr = field("deployment-id");
    assert_eq!(
        host.get(&host.preview_host("remote", &pr), "/"),
        (200, format!("nx-sample pr7 deployment={pr}\n"))
    );

    // Plain http:// to a non-loopback address is refused before anything is sent.
    let out = Command::new(nx_testkit::bin("nx"))
        .args(["--host", "http://203.0.113.7:7700", "ls"])
        .env("NX_TOKEN", "x")
        .env("NX_CONFIG", "/dev/null")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("clear text") && stderr.contains("--insecure"),
        "{stderr}"
    );
}
