//! Is a deployment ready? Its port accepts a connection, and when a health path is configured,
//! `GET <path>` answers below 400.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub async fn probe(addr: SocketAddr, health_path: Option<&str>) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let Some(path) = health_path else {
            return Some(true);
        };
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        // "HTTP/1.x NNN"
        let code: u16 = std::str::from_utf8(&head[9..12]).ok()?.parse().ok()?;
        Some(code < 400)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(true))
    )
}
