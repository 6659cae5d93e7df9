//! Timeouts and limits of a real router: slow request heads and idle connections are cut off,
//! silent new ones at the head timeout; the connection cap refuses new connections while open
//! ones keep working, and so does the cap of one client's connections while another client is
//! served; the request body cap answers 413, and 1,100 idle connections do not stop a router
//! started at 1,024 open files; requests held by a deployment that never answers, over HTTP/1
//! connections or HTTP/2 streams, take no more than the router's open files hold.

mod common;

use common::{closed_within, echo_app, OpenFiles, Router};
use nx_router_api::RouterConfig;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn get_on(stream: &mut TcpStream, host: &str) -> String {
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_slow_heads_are_closed_within_the_head_timeout() {
    let config = RouterConfig {
        head_timeout_secs: 2,
        ..RouterConfig::default()
    };
    let router = Router::with_echo(config).await;
    let mut clients = Vec::new();
    for _ in 0..50 {
        let addr = router.addr;
        clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: web.nx.test\r\n")
                .await
                .unwrap();
            let (mut read, mut write) = stream.into_split();
            let trickle = tokio::spawn(async move {
                // A header byte every second, never the end of the head.
                while write.write_all(b"X").await.is_ok() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
            let start = Instant::now();
            let mut buf = [0u8; 64];
            let closed = tokio::time::timeout(Duration::from_secs(10), read.read(&mut buf)).await;
            trickle.abort();
            (closed.is_ok(), start.elapsed())
        }));
    }
    for client in clients {
        let (closed, after) = client.await.unwrap();
        assert!(closed, "a slow head was still open after 10 s");
        assert!(
            after < Duration::from_millis(3500),
            "closed only after {after:?}"
        );
    }
    // The router still serves.
    let mut stream = TcpStream::connect(router.addr).await.unwrap();
    assert!(get_on(&mut stream, "web.nx.test")
        .await
        .starts_with("HTTP/1.1 200"));
}

/// Attacker s10 F3, its second half: a new connection that sent nothing lived for the idle
/// timeout (60 s), so 17,000 silent ones held the router's connections a minute at a time.
/// Now a silent new connection is closed at the head timeout; a kept-alive one that is idle
/// between requests still at the idle timeout.
#[tokio::test(flavor = "multi_thread")]
async fn silent_new_connections_close_at_the_head_timeout_and_idle_ones_at_the_idle_timeout() {
    let config = RouterConfig {
        head_timeout_secs: 1,
        idle_timeout_secs: 4,
        ..RouterConfig::default()
    };
    let router = Router::with_echo(config).await;
    let mut silent = TcpStream::connect(router.addr).await.unwrap();
    let mut kept_alive = TcpStream::connect(router.addr).await.unwrap();
    assert!(get_on(&mut kept_alive, "web.nx.test")
        .await
        .starts_with("HTTP/1.1 200"));
    let (silent, kept_alive) = tokio::join!(
        closed_within(&mut silent, Duration::from_secs(8)),
        closed_within(&mut kept_alive, Duration::from_secs(8)),
    );
    let silent = silent.expect("a silent connection stayed open");
    let kept_alive = kept_alive.expect("an idle connection stayed open");
    eprintln!("silent closed after {silent:?}, kept-alive after {kept_alive:?}");
    assert!(
        silent < Duration::from_millis(2500),
        "silent closed only after {silent:?}"
    );
    assert!(
        (Duration::from_millis(3500)..Duration::from_millis(6000)).contains(&kept_alive),
        "kept-alive closed after {kept_alive:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_connection_cap_new_connections_are_refused_and_open_ones_work() {
    let config = RouterConfig {
        max_connections: 20,
        ..RouterConfig::default()
    };
    let router = Router::with_echo(config).await;
    let mut open = Vec::new();
    for _ in 0..20 {
        open.push(TcpStream::connect(router.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut over = TcpStream::connect(router.addr).await.unwrap();
    assert!(
        closed_within(&mut over, Duration::from_secs(2))
            .await
            .is_some(),
        "the 21st connection was not refused"
    );
    for stream in &mut open {
        assert!(get_on(stream, "web.nx.test")
            .await
            .starts_with("HTTP/1.1 200"));
    }
    drop(open);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = TcpStream::connect(router.addr).await.unwrap();
    assert!(get_on(&mut again, "web.nx.test")
        .await
        .starts_with("HTTP/1.1 200"));
}

/// Attacker s10 F3: 17,000 silent connections from one client passed `router.max_connections`
/// and every other client's new connections were reset. Now one client (an address) holds at
/// most `max_connections_per_address`: its next is closed at once, another address is served.
#[tokio::test(flavor = "multi_thread")]
async fn one_address_at_its_connection_cap_is_refused_and_another_is_served() {
    let config = RouterConfig {
        max_connections_per_address: 20,
        ..RouterConfig::default()
    };
    let router = Router::with_echo(config).await;
    let addr = router.addr;
    let from = |last: u8| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(([127, 0, 0, last], 0).into()).unwrap();
        socket.connect(addr).await.unwrap()
    };
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(from(1).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut over = from(1).await;
    assert!(
        closed_within(&mut over, Duration::from_secs(2))
            .await
            .is_some(),
        "127.0.0.1's 21st connection was not refused"
    );
    let mut other = from(2).await;
    assert!(get_on(&mut other, "web.nx.test")
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(get_on(&mut held[0], "web.nx.test")
        .await
        .starts_with("HTTP/1.1 200"));
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = from(1).await;
    assert!(get_on(&mut again, "web.nx.test")
        .await
        .starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_the_cap_gets_413_and_one_under_it_passes() {
    let config = RouterConfig {
        max_body_mb: 1,
        ..RouterConfig::default()
    };
    let router = Router::with_echo(config).await;
    let client = reqwest::Client::new();
    let post = |body: reqwest::Body| {
        client
            .post(router.url("/upload"))
            .header("host", "web.nx.test")
            .body(body)
            .send()
    };
    let ok = post(vec![1u8; 1 << 20].into()).await.unwrap();
    assert_eq!(ok.status(), 200);
    // A declared length over the cap is answered from the head alone: the body is never sent,
    // so the answer cannot race a client still writing (which a reset would turn into EPIPE).
    let mut declared = TcpStream::connect(router.addr).await.unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: web.nx.test\r\nContent-Length: {}\r\n\r\n",
        (1 << 20) + 1
    );
    declared.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), declared.read(&mut answer))
        .await
        .expect("no answer to a head declaring too large a body within 5 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("router.max_body_mb"), "{answer}");
    // Chunked, no Content-Length: counted as it streams.
    let chunks = futures_util::stream::iter(
        (0..3).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![2u8; 512 << 10]))),
    );
    let streamed = post(reqwest::Body::wrap_stream(chunks)).await;
    match streamed {
        Ok(resp) => assert_eq!(resp.status(), 413),
        Err(e) => assert!(e.is_request(), "{e}"), // closed while the client still sent
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn eleven_hundred_idle_connections_leave_a_router_at_1024_open_files_serving() {
    rlimit::increase_nofile_limit(8192).unwrap();
    // All 1,100 from one address: above one client's share, which is not this test's.
    let config = RouterConfig {
        max_connections_per_address: 4096,
        ..RouterConfig::default()
    };
    let router = Router::start(config, Some(OpenFiles::Soft(1024))).await;
    router.routes(&[("web.nx.test", echo_app().await)]).await;
    let mut idle = Vec::new();
    for _ in 0..1100 {
        idle.push(TcpStream::connect(router.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut fresh = TcpStream::connect(router.addr).await.unwrap();
    assert!(get_on(&mut fresh, "web.nx.test")
        .await
        .starts_with("HTTP/1.1 200"));
    // The control socket answers too.
    router.routes(&[("web.nx.test", echo_app().await)]).await;
    assert!(get_on(&mut idle[0], "web.nx.test")
        .await
        .starts_with("HTTP/1.1 200"));
}

/// The connections an upstream that never answers holds (accepted, never read or closed).
type Held = std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>;

/// An upstream that takes connections and never answers: its address, what it holds, and its
/// accepting task.
async fn holding_upstream() -> (std::net::SocketAddr, Held, tokio::task::JoinHandle<()>) {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = upstream.local_addr().unwrap();
    let held = Held::default();
    let holder = {
        let held = held.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = upstream.accept().await {
                held.lock().unwrap().push(stream);
            }
        })
    };
    (addr, held, holder)
}

/// Newcomer17 N5: 11,000 held requests, under `router.max_connections` (16,384), took all of a
/// router's 20,000 open files (two a proxied connection): every new client waited in vain and
/// nxd's control connections failed EMFILE, so a push was never routed. The router admits only
/// the connections its files hold and says so at start: past them a new connection is closed
/// at once, the control socket answers, and once held ones go new ones are served.
#[tokio::test(flavor = "multi_thread")]
async fn held_requests_take_no_more_than_the_routers_open_files_hold() {
    rlimit::increase_nofile_limit(8192).unwrap();
    let (upstream_addr, held, holder) = holding_upstream().await;
    let config = RouterConfig {
        max_connections_per_address: 4096,
        ..RouterConfig::default()
    };
    // (2,048 - 512 kept) / 2.
    let router = Router::start(config, Some(OpenFiles::Both(2048))).await;
    router.routes(&[("hold.nx.test", upstream_addr)]).await;
    let mut clients = Vec::new();
    for _ in 0..1100 {
        let mut stream = TcpStream::connect(router.addr).await.unwrap();
        if stream
            .write_all(b"GET / HTTP/1.1\r\nHost: hold.nx.test\r\n\r\n")
            .await
            .is_ok()
        {
            clients.push(stream);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let upstreams = held.lock().unwrap().len();
    assert!(upstreams <= 768, "{upstreams} requests held upstream");
    // nxd's way in answers, and a new client is told at once.
    tokio::time::timeout(
        Duration::from_secs(10),
        router.routes(&[
            ("hold.nx.test", upstream_addr),
            ("web.nx.test", echo_app().await),
        ]),
    )
    .await
    .unwrap_or_else(|_| panic!("the control socket did not answer\n{}", router.log()));
    let mut over = TcpStream::connect(router.addr).await.unwrap();
    assert!(
        closed_within(&mut over, Duration::from_secs(2))
            .await
            .is_some(),
        "a connection past what the files hold waits"
    );
    drop(clients);
    held.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut fresh = TcpStream::connect(router.addr).await.unwrap();
    assert!(get_on(&mut fresh, "web.nx.test")
        .await
        .starts_with("HTTP/1.1 200"));
    holder.abort();
    assert!(
        router.log().contains("it admits 768 connections at once"),
        "{}",
        router.log()
    );
}

/// HTTP/2 streams sent from each `127.0.0.<last>` of `from` over `connections` h2c connections
/// (prior knowledge), `streams` on each, to `http://<host>/`: each stream's task ends with its
/// status and body once answered.
struct Streams {
    answers: Vec<tokio::task::JoinHandle<Option<(u16, String)>>>,
    connections: Vec<tokio::task::JoinHandle<()>>,
}

impl Streams {
    async fn open(
        router: std::net::SocketAddr,
        from: &[u8],
        connections: usize,
        streams: usize,
        host: &str,
    ) -> Self {
        use http_body_util::{BodyExt, Empty};
        let mut all = Self {
            answers: Vec::new(),
            connections: Vec::new(),
        };
        for last in from
            .iter()
            .flat_map(|&last| std::iter::repeat_n(last, connections))
        {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(([127, 0, 0, last], 0).into()).unwrap();
            let stream = socket.connect(router).await.unwrap();
            let (sender, connection) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(stream),
            )
            .await
            .expect("an h2c connection to the router");
            all.connections.push(tokio::spawn(async move {
                let _ = connection.await;
            }));
            for _ in 0..streams {
                let mut sender = sender.clone();
                let request = hyper::Request::get(format!("http://{host}/"))
                    .body(Empty::<bytes::Bytes>::new())
                    .unwrap();
                all.answers.push(tokio::spawn(async move {
                    let response = sender.send_request(request).await.ok()?;
                    let status = response.status().as_u16();
                    let body = response.into_body().collect().await.ok()?.to_bytes();
                    Some((status, String::from_utf8_lossy(&body).into_owned()))
                }));
            }
        }
        all
    }

    /// The answers, by status with one body of each, once at most `held` streams are left
    /// unanswered (or after 20 s); those are left.
    async fn answered(&mut self, held: usize) -> std::collections::BTreeMap<u16, (usize, String)> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.answers.iter().filter(|a| !a.is_finished()).count() > held
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut by_status = std::collections::BTreeMap::new();
        let (done, held): (Vec<_>, Vec<_>) = self.answers.drain(..).partition(|a| a.is_finished());
        self.answers = held;
        for answer in done {
            if let Some((status, body)) = answer.await.unwrap() {
                by_status.entry(status).or_insert((0, body)).0 += 1;
            }
        }
        by_status
    }

    /// Closes the connections (and so their streams).
    fn close(self) {
        self.answers.iter().for_each(|a| a.abort());
        self.connections.iter().for_each(|c| c.abort());
    }
}

/// How many connections `held` holds once that stops changing for a second (at most `limit`).
async fn held_when_still(held: &Held, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    let mut last = usize::MAX;
    loop {
        let now = held.lock().unwrap().len();
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Review17 #1: every HTTP/2 stream the router proxies takes an upstream connection, and
/// Pingora gives a client 100 streams a connection, so 12 h2c connections, far under every
/// connection cap, held 1,200 requests to a deployment that never answers and took all of a
/// router's 1,024 files (N5 again: other URLs waited in vain, nxd's control connections failed).
/// Now a request to a deployment holds one of as many as the router admits connections (503
/// past them), and one client's requests at most `max_connections_per_address` of them (429
/// past them), as many as its HTTP/1 connections would: another client is served, the control
/// socket answers, and once the streams go new requests are served.
#[tokio::test(flavor = "multi_thread")]
async fn held_http2_streams_take_no_more_than_the_routers_open_files_hold() {
    rlimit::increase_nofile_limit(8192).unwrap();
    let (upstream_addr, held, holder) = holding_upstream().await;
    let web = echo_app().await;
    // Admits (1,024 - 512 kept) / 2 = 256 connections, 100 of one address.
    let config = RouterConfig {
        max_connections_per_address: 100,
        ..RouterConfig::default()
    };
    let router = Router::start(config, Some(OpenFiles::Both(1024))).await;
    let routes = [("hold.nx.test", upstream_addr), ("web.nx.test", web)];
    router.routes(&routes).await;
    let addr = router.addr;
    let get_from = move |last: u8| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(([127, 0, 0, last], 0).into()).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), get_on(&mut stream, "web.nx.test"))
            .await
            .unwrap_or_default()
    };
    let control_answers = || async {
        tokio::time::timeout(Duration::from_secs(10), router.routes(&routes))
            .await
            .unwrap_or_else(|_| panic!("the control socket did not answer\n{}", router.log()));
    };

    // 127.0.0.1: 12 connections of 100 streams each, every one held by the deployment.
    let mut one = Streams::open(router.addr, &[1], 12, 100, "hold.nx.test").await;
    let upstreams = held_when_still(&held, Duration::from_secs(20)).await;
    let answer = get_from(2).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "another client's request to another URL, beside 1,200 held streams: {answer:?}\n{upstreams} requests held upstream"
    );
    control_answers().await;
    assert_eq!(upstreams, 100, "requests of one address held upstream");
    let answered = one.answered(100).await;
    let (refused, text) = answered.get(&429).cloned().unwrap_or_default();
    assert_eq!(
        refused, 1100,
        "streams past the address's share: {answered:?}"
    );
    assert!(
        text.contains("router.max_connections_per_address"),
        "{text}"
    );

    // 127.0.0.3 to 127.0.0.5 take what is left of the router's 256, and are refused past it.
    let mut more = Streams::open(router.addr, &[3, 4, 5], 1, 100, "hold.nx.test").await;
    let upstreams = held_when_still(&held, Duration::from_secs(20)).await;
    assert_eq!(upstreams, 256, "requests held upstream");
    let answered = more.answered(156).await;
    let (refused, text) = answered.get(&503).cloned().unwrap_or_default();
    assert_eq!(
        refused, 144,
        "streams past what the files hold: {answered:?}"
    );
    assert!(text.contains("try again"), "{text}");
    control_answers().await;

    one.close();
    more.close();
    held.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answer = get_from(2).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "after the streams went: {answer:?}"
    );
    holder.abort();
}
