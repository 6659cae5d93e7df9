//! Is a deployment ready? Its port accepts a connection; when a health path is configured,
//! `GET <path>` answers below 400; behind a VMM's port forward (which accepts before the guest
//! listens), `GET /` gets any HTTP answer.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub enum Probe<'a> {
    Connect,
    Health(&'a str),
    AnyAnswer,
}

pub async fn probe(addr: SocketAddr, how: &Probe<'_>) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let path = match how {
            Probe::Connect => return Some(true),
            Probe::Health(path) => path,
            Probe::AnyAnswer => "/",
        };
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        // "HTTP/1.x NNN"
        let code: u16 = std::str::from_utf8(&head[9..12]).ok()?.parse().ok()?;
        Some(code < 400 || matches!(how, Probe::AnyAnswer))
    };
    // Behind a VMM's forward, a guest that is not up yet leaves the request hanging: give up
    // soon and ask again.
    let limit = match how {
        Probe::AnyAnswer => Duration::from_millis(100),
        _ => Duration::from_secs(2),
    };
    matches!(tokio::time::timeout(limit, attempt).await, Ok(Some(true)))
}
