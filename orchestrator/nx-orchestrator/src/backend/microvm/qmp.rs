//! A client of the QEMU Machine Protocol (QMP; QEMU's docs/interop/qmp-spec.rst): JSON objects,
//! one per line, over a Unix socket. The server greets with `{"QMP": ..}`; `qmp_capabilities`
//! ends the negotiation; each command then gets `{"return": ..}` or `{"error": {"class",
//! "desc"}}`, and asynchronous `{"event": ..}` objects may come in between (skipped here).
//!
//! Written by hand (about 60 lines): NX sends five commands (`qmp_capabilities`,
//! `migrate-set-parameters`, `migrate`, `query-migrate`, `quit`) to a VMM it started itself; a
//! QAPI crate would bring a generated schema of every command for these few.

use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Why a QMP exchange failed: the socket, the stream, or QEMU's `error` answer.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("QMP: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP: QEMU closed the connection")]
    Closed,
    #[error("QMP: not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("QMP {command}: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// One QMP connection, past the negotiation.
pub struct Qmp {
    lines: Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
}

impl Qmp {
    /// Connects to the socket QEMU listens on (`-qmp unix:<path>,server=on,wait=off`), trying
    /// for up to `patience` while QEMU starts, reads the greeting and leaves negotiation.
    pub async fn connect(path: &Path, patience: Duration) -> Result<Self, QmpError> {
        let deadline = Instant::now() + patience;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => return Err(QmpError::Connect(path.display().to_string(), e)),
            }
        };
        let (read, write) = stream.into_split();
        let mut qmp = Self {
            lines: BufReader::new(read).lines(),
            write,
        };
        qmp.next().await?; // the greeting
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    /// The next object QEMU sends.
    async fn next(&mut self) -> Result<Value, QmpError> {
        let line = self.lines.next_line().await?.ok_or(QmpError::Closed)?;
        Ok(serde_json::from_str(&line)?)
    }

    /// Runs `command` with `arguments`; its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let mut line = serde_json::to_vec(&json!({ "execute": command, "arguments": arguments }))?;
        line.push(b'\n');
        self.write.write_all(&line).await?;
        loop {
            let mut answer = self.next().await?;
            if let Some(value) = answer.get_mut("return") {
                return Ok(value.take());
            }
            if let Some(error) = answer.get("error") {
                let field = |name: &str| error[name].as_str().unwrap_or("?").to_owned();
                return Err(QmpError::Command {
                    command: command.to_owned(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            // An event: not the answer.
        }
    }
}
