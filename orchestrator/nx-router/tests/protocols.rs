//! HTTP semantics through a real router: WebSockets, gRPC (unary and streaming), h2c with prior
//! knowledge, forwarded and hop-by-hop headers, Host, request ids, error pages, the retry
//! of a request that a reused upstream connection dropped, and cookies a deployment may not
//! set for the domain every tenant shares.

mod common;

use common::Router;
use nx_router_api::RouterConfig;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// `GET /` through the router with `Host: host`.
async fn get(client: &reqwest::Client, router: &Router, host: &str) -> reqwest::Response {
    client
        .get(router.url("/"))
        .header("host", host)
        .send()
        .await
        .unwrap()
}

fn header<'a>(seen: &'a Value, name: &str) -> Vec<&'a str> {
    seen["headers"][name]
        .as_array()
        .map(|v| v.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_frames_echo_both_ways() {
    let upstream = common::websocket_echo_app().await;
    let router = Router::start(RouterConfig::default(), None).await;
    router.routes(&[("chat.nx.test", upstream)]).await;

    let mut request = format!("ws://{}/socket", router.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("host", "chat.nx.test".parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("WebSocket handshake through the router");
    assert_eq!(response.status(), 101);
    common::websocket_round_trips(&mut ws).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_unary_and_server_streaming_pass_over_h2c() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let (mut reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("nx.Test", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let router = Router::start(RouterConfig::default(), None).await;
    router.routes(&[("grpc.nx.test", upstream)]).await;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", router.addr))
        .unwrap()
        .origin("http://grpc.nx.test".parse().unwrap())
        .connect()
        .await
        .expect("h2c connection to the router");
    let mut client = HealthClient::new(channel);
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    let unary = client.check(check("nx.Test")).await.expect("unary call");
    assert_eq!(unary.into_inner().status, ServingStatus::Serving as i32);
    let missing = client.check(check("nx.Nothing")).await.unwrap_err();
    assert_eq!(
        missing.code(),
        tonic::Code::NotFound,
        "grpc-status trailer passed"
    );

    let mut stream = client.watch(check("nx.Test")).await.unwrap().into_inner();
    let first = stream
        .message()
        .await
        .unwrap()
        .expect("first streamed message");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    reporter
        .set_service_status("nx.Test", tonic_health::ServingStatus::NotServing)
        .await;
    let second = stream
        .message()
        .await
        .unwrap()
        .expect("second streamed message");
    assert_eq!(second.status, ServingStatus::NotServing as i32);
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_with_prior_knowledge_reaches_an_http1_app() {
    let router = Router::with_echo(RouterConfig::default()).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve("web.nx.test", router.addr)
        .build()
        .unwrap();
    for _ in 0..3 {
        let resp = client
            .get(format!("http://web.nx.test:{}/h2", router.addr.port()))
            .send()
            .await
            .expect("h2c request");
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        let seen: Value = resp.json().await.unwrap();
        assert_eq!(seen["path"], "/h2");
        assert_eq!(
            seen["version"], "HTTP/1.1",
            "the app speaks HTTP/1.1 behind the router"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_headers_are_the_peers_not_the_clients() {
    let router = Router::with_echo(RouterConfig::default()).await;
    let resp = reqwest::Client::new()
        .get(router.url("/who"))
        .header("host", "web.nx.test.")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "a trailing dot in Host is accepted");
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(request_id.len(), 32);
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(header(&seen, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(header(&seen, "x-real-ip"), ["127.0.0.1"]);
    assert_eq!(header(&seen, "x-forwarded-proto"), ["http"]);
    assert_eq!(header(&seen, "x-forwarded-host"), ["web.nx.test."]);
    assert_eq!(
        header(&seen, "forwarded"),
        ["for=127.0.0.1;host=\"web.nx.test.\";proto=http"]
    );
    assert_eq!(header(&seen, "host"), ["web.nx.test."], "Host is kept");
    assert_eq!(header(&seen, "x-request-id"), [request_id.as_str()]);
    for hop in ["x-hop", "keep-alive"] {
        assert!(
            header(&seen, hop).is_empty(),
            "{hop} reached the app: {seen}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_proxy_is_appended_to() {
    let config = RouterConfig {
        trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
        ..RouterConfig::default()
    };
    let router = Router::with_echo(config).await;
    let seen: Value = reqwest::Client::new()
        .get(router.url("/"))
        .header("host", "web.nx.test")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(header(&seen, "x-forwarded-for"), ["203.0.113.9, 127.0.0.1"]);
    assert_eq!(header(&seen, "x-forwarded-proto"), ["https"]);
}

/// An unknown host gets a 404 that says how URLs are made; a routed deployment that refuses
/// the connection (attacker s8 F14: it crashed) answers as one whose wake failed: 503 with
/// `Retry-After`, what is down, and neither its internal address nor Pingora's error chain
/// (before: 502 "did not answer (... Connection refused ... 127.0.0.1:<port>)" with operator
/// hints).
#[tokio::test(flavor = "multi_thread")]
async fn unknown_hosts_and_dead_deployments_get_pages_that_say_what_to_do() {
    let router = Router::start(RouterConfig::default(), None).await;
    let gone = common::free_addr();
    router.routes(&[("gone.nx.test", gone)]).await;
    let client = reqwest::Client::new();
    let resp = get(&client, &router, "nothing.nx.test").await;
    assert_eq!(resp.status(), 404);
    assert!(resp.headers().contains_key("x-request-id"));
    assert!(resp.text().await.unwrap().contains("nx promote"));
    let resp = get(&client, &router, "gone.nx.test").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "5");
    let text = resp.text().await.unwrap();
    assert_eq!(
        text,
        "NX: production of web is down: it does not run now. Try again in 5 s.\n"
    );
    assert!(!text.contains(&gone.port().to_string()), "{text}");
}

/// The router's log until a line containing `needle` shows (the log is written every 200 ms),
/// or all of it after 5 s.
async fn log_with(router: &Router, needle: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let log = router.log();
        if log.contains(needle) || std::time::Instant::now() > deadline {
            return log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The access lines of a router's log.
fn access_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" INFO nx_router::access: request "))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_request_gets_an_access_log_line_with_its_route_status_and_bytes() {
    let router = Router::with_echo(RouterConfig::default()).await;
    let resp = reqwest::Client::new()
        .post(router.url("/logged?q=1"))
        .header("host", "web.nx.test")
        .body("twelve bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body = resp.bytes().await.unwrap();
    let log = log_with(&router, &request_id).await;
    let lines = access_lines(&log);
    let line = lines
        .iter()
        .find(|l| l.contains(&format!(" request_id={request_id} ")))
        .unwrap_or_else(|| panic!("no access line for {request_id}:\n{log}"));
    for field in [
        "peer=127.0.0.1".to_owned(),
        "host=web.nx.test".into(),
        "method=POST".into(),
        "path=/logged".into(),
        "version=HTTP/1.1".into(),
        "sandbox=web".into(),
        "deployment=d1".into(),
        "status=200".into(),
        format!("bytes_sent={}", body.len()),
        "bytes_received=12".into(),
    ] {
        assert!(
            line.split(' ').any(|f| f == field),
            "{field} is not in {line}"
        );
    }
    let ms: f64 = line
        .split(' ')
        .find_map(|f| f.strip_prefix("duration_ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no duration_ms in {line}"));
    assert!(ms > 0.0 && ms < 5_000.0, "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_access_log_sample_0_only_5xx_answers_are_logged() {
    let config = RouterConfig {
        access_log_sample: 0.0,
        ..RouterConfig::default()
    };
    let router = Router::start(config, None).await;
    router
        .routes(&[
            ("web.nx.test", common::echo_app().await),
            ("gone.nx.test", common::free_addr()),
        ])
        .await;
    let client = reqwest::Client::new();
    for _ in 0..20 {
        let resp = get(&client, &router, "web.nx.test").await;
        assert_eq!(resp.status(), 200);
    }
    let resp = get(&client, &router, "gone.nx.test").await;
    assert_eq!(resp.status(), 503);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let log = log_with(&router, &request_id).await;
    let lines = access_lines(&log);
    assert_eq!(lines.len(), 1, "one line, the 503's:\n{log}");
    assert!(
        lines[0].contains(&format!(" request_id={request_id} ")),
        "{log}"
    );
    assert!(lines[0].contains(" host=gone.nx.test "), "{log}");
    assert!(lines[0].contains(" status=503 "), "{log}");
    assert!(lines[0].contains(" error=\""), "the cause is logged: {log}");
}

/// An app that answers the first request of each connection (`connection <n>`) and closes the
/// connection without a word when a second one comes (an early idle keep-alive close); it
/// counts the request heads it received per method, answered or not.
async fn app_dropping_second_requests() -> (std::net::SocketAddr, Arc<Mutex<HashMap<String, usize>>>)
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(HashMap::new()));
    let seen = received.clone();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut stream, _)) = listener.accept().await {
            n += 1;
            let seen = seen.clone();
            tokio::spawn(async move {
                let count = |head: &[u8]| {
                    let method = String::from_utf8_lossy(head)
                        .split(' ')
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    *seen.lock().unwrap().entry(method).or_insert(0) += 1;
                };
                let mut buf = vec![0u8; 8192];
                let mut read = 0;
                while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => read += k,
                    }
                }
                count(&buf[..read]);
                let body = format!("connection {n}");
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(reply.as_bytes()).await.unwrap();
                // The next request: counted, then dropped unanswered.
                if let Ok(k @ 1..) = stream.read(&mut buf).await {
                    count(&buf[..k]);
                }
            });
        }
    });
    (upstream, received)
}

/// Pingora's rule, which the router keeps (`ProxyHttp::error_while_proxy`'s default): a request
/// that fails on a reused upstream connection before any response byte is sent again on another
/// connection only if its method is idempotent (RFC 9110 §9.2.2: GET, HEAD, PUT, DELETE,
/// OPTIONS, TRACE) and its body is still buffered; a fresh connection's failure is never
/// retried. POST and PATCH are never sent twice: the client gets 502.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_dropped_by_a_reused_upstream_connection_is_retried_only_when_idempotent() {
    let (upstream, received) = app_dropping_second_requests().await;
    let router = Router::start(RouterConfig::default(), None).await;
    router.routes(&[("flaky.nx.test", upstream)]).await;
    let client = reqwest::Client::new();
    let received = |method: &str| received.lock().unwrap().get(method).copied().unwrap_or(0);
    for (method, idempotent) in [
        ("GET", true),
        ("POST", false),
        ("PATCH", false),
        ("PUT", true),
    ] {
        // Send until one goes out on a pooled connection (the first of each is answered on a
        // fresh one; the pause lets its connection go back to the pool).
        let mut sent = 0;
        let reused = loop {
            assert!(sent < 20, "no {method} went out on a pooled connection");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let response = client
                .request(method.parse().unwrap(), router.url("/"))
                .header("host", "flaky.nx.test")
                .body("x")
                .send()
                .await
                .unwrap();
            sent += 1;
            let status = response.status();
            let text = response.text().await.unwrap();
            if received(method) > sent {
                // The app saw this request twice: dropped on the pooled connection, then
                // answered on a fresh one.
                assert_eq!(status, 200, "{method}: {text}");
                break true;
            }
            if status == 502 {
                assert!(text.contains("did not answer"), "{method}: {text}");
                break false;
            }
            assert_eq!(status, 200, "{method}: {text}");
        };
        assert_eq!(reused, idempotent, "{method} retried: {reused}");
        let expected = if idempotent { sent + 1 } else { sent };
        assert_eq!(
            received(method),
            expected,
            "{method}: heads the app received"
        );
    }
}

/// An HTTP/1.1 app that answers every request with these `Set-Cookie` headers.
async fn cookie_app(cookies: &'static [&'static str]) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async move {
                    let mut resp = hyper::Response::builder();
                    for cookie in cookies {
                        resp = resp.header("set-cookie", *cookie);
                    }
                    resp.body(http_body_util::Full::new(bytes::Bytes::from("ok")))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Attacker s10 F9: a deployment's `Set-Cookie: ...; Domain=<base_domain>` passed the router,
/// so one tenant set cookies that browsers send to every other tenant's URLs (cookie tossing).
/// Now the router drops a cookie for `base_domain` or a parent of it, and says so in its log;
/// host-only cookies and those for the deployment's own names pass, on a production host and
/// on a custom domain alike.
#[tokio::test(flavor = "multi_thread")]
async fn cookies_for_the_shared_base_domain_are_dropped_and_the_deployments_own_pass() {
    const COOKIES: &[&str] = &[
        "host=1; Path=/; HttpOnly",
        "toss=1; Domain=nx.test; Path=/",
        "own=1; Domain=web.nx.test",
        "toss2=1; domain=.NX.TEST",
        "tld=1; Domain=test",
        "custom=1; Domain=example.com",
    ];
    let router = Router::start(RouterConfig::default(), None).await;
    let app = cookie_app(COOKIES).await;
    router
        .routes(&[("web.nx.test", app), ("www.example.com", app)])
        .await;
    let client = reqwest::Client::new();
    for host in ["web.nx.test", "www.example.com"] {
        let resp = get(&client, &router, host).await;
        assert_eq!(resp.status(), 200);
        let cookies: Vec<&str> = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(
            cookies,
            [
                "host=1; Path=/; HttpOnly",
                "own=1; Domain=web.nx.test",
                "custom=1; Domain=example.com"
            ],
            "through {host}"
        );
    }
    let log = log_with(&router, "every tenant's hosts share").await;
    assert!(
        log.contains("Set-Cookie for a domain every tenant's hosts share dropped")
            && log.contains("domain=nx.test"),
        "{log}"
    );
}
