//! A real `nx-router` process for the tests, fed its table over its control socket as nxd
//! does, in front of real servers (hyper, tokio-tungstenite, tonic) on loopback.

// Each test file uses a part of this module.
#![allow(dead_code)]

use nx_router_api::{Route, RouteTable, RouterClient, RouterConfig, RouterSettings, RouterTls};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The open-file limits a router starts with.
#[derive(Clone, Copy)]
pub enum OpenFiles {
    /// Its soft limit (as systemd's default 1024), the hard one the test's: the start checks
    /// that the router raised the soft one.
    Soft(u64),
    /// Soft and hard.
    Both(u64),
}

pub struct Router {
    pub addr: SocketAddr,
    /// The HTTPS listener, when started with TLS.
    pub https: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub client: RouterClient,
    pub child: Child,
}

pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

impl Router {
    /// Starts the router binary with `config` and `open_files` limits (see [`OpenFiles`]).
    pub async fn start(config: RouterConfig, open_files: Option<OpenFiles>) -> Self {
        Self::start_with_tls(config, open_files, |_| None).await
    }

    /// [`Router::start`] with the HTTPS side `tls` makes from the router's directory.
    pub async fn start_with_tls(
        config: RouterConfig,
        open_files: Option<OpenFiles>,
        tls: impl FnOnce(&std::path::Path) -> Option<RouterTls>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = RouterSettings {
            listen: free_addr(),
            base_domain: "nx.test".into(),
            dir: dir.path().to_owned(),
            tls: tls(dir.path()),
            wake_socket: None,
            config,
        };
        let file = RouterSettings::file(dir.path());
        std::fs::write(&file, serde_json::to_vec(&settings).unwrap()).unwrap();
        let log = std::fs::File::create(dir.path().join("router.log")).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_nx-router"));
        command
            .arg("--settings")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(limits) = open_files {
            let (soft, hard) = match limits {
                OpenFiles::Soft(soft) => (soft, rlimit::Resource::NOFILE.get().unwrap().1),
                OpenFiles::Both(n) => (n, n),
            };
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                    rlimit::Resource::NOFILE.set(soft, hard)
                });
            }
        }
        let child = command.spawn().expect("spawn nx-router");
        let router = Self {
            addr: settings.listen,
            https: settings.tls.as_ref().map(|t| t.listen),
            client: RouterClient::new(&settings.control_socket()),
            dir,
            child,
        };
        router
            .client
            .table(Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", router.log()));
        let deadline = Instant::now() + Duration::from_secs(20);
        for addr in std::iter::once(router.addr).chain(router.https) {
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                assert!(
                    Instant::now() < deadline,
                    "router never listened on {addr}\n{}",
                    router.log()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if let Some(OpenFiles::Soft(_)) = open_files {
            let limits = std::fs::read_to_string(format!("/proc/{}/limits", router.child.id()))
                .expect("the router's limits");
            let line = limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .expect("Max open files");
            let soft: u64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
            assert!(
                soft > 1100,
                "the router did not raise its open-file limit: {line}"
            );
        }
        router
    }

    /// A router with `config` whose only route is `web.nx.test` to an [`echo_app`].
    pub async fn with_echo(config: RouterConfig) -> Self {
        let router = Self::start(config, None).await;
        router.routes(&[("web.nx.test", echo_app().await)]).await;
        router
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("router.log")).unwrap_or_default()
    }

    /// Replaces the table with `host -> upstream` routes.
    pub async fn routes(&self, routes: &[(&str, SocketAddr)]) {
        let table = RouteTable {
            routes: routes
                .iter()
                .map(|(host, upstream)| Route {
                    host: host.to_string(),
                    upstream: *upstream,
                    sandbox: "web".into(),
                    deployment: "d1".into(),
                    idle: false,
                    unix_socket: None,
                    max_requests_per_address: None,
                })
                .collect(),
        };
        self.client
            .replace(&table, Duration::from_secs(5))
            .await
            .expect("table replaced");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.1 app (hyper) that answers every request with what it received, as JSON:
/// `{"method", "path", "version", "headers": {name: [values]}}`.
pub async fn echo_app() -> SocketAddr {
    use http_body_util::{BodyExt, Full};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let mut headers = serde_json::Map::new();
                        for (name, value) in req.headers() {
                            let entry = headers
                                .entry(name.as_str())
                                .or_insert_with(|| serde_json::Value::Array(vec![]));
                            entry
                                .as_array_mut()
                                .unwrap()
                                .push(value.to_str().unwrap_or("").into());
                        }
                        let (method, path, version) = (
                            req.method().to_string(),
                            req.uri().path().to_owned(),
                            format!("{:?}", req.version()),
                        );
                        let body_len = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes().len())
                            .unwrap_or(0);
                        let json = serde_json::json!({
                            "method": method, "path": path, "version": version,
                            "headers": headers, "body_len": body_len,
                        });
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            bytes::Bytes::from(json.to_string()),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A WebSocket server (tokio-tungstenite) that sends back every text and binary frame.
pub async fn websocket_echo_app() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        ws.send(msg).await.unwrap();
                    }
                }
            });
        }
    });
    addr
}

/// 100 text frames and one 100 KB binary frame echoed by a [`websocket_echo_app`], then close.
pub async fn websocket_round_trips<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    for i in 0..100 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let echoed = ws.next().await.expect("a frame back").unwrap();
        assert_eq!(echoed, Message::text(format!("hello {i}")));
    }
    ws.send(Message::binary(vec![7u8; 100_000])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![7u8; 100_000])
    );
    ws.close(None).await.unwrap();
}

/// Waits until the router closes `stream` (EOF or reset); `None` if it is still open after
/// `limit`.
pub async fn closed_within(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    limit: Duration,
) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((start + limit).into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}
