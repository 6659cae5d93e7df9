//! `nx logs` in text mode: the control characters a program wrote (ESC, CR, NUL, DEL, the C1
//! range) are printed escaped, `\r` for CR and `\xNN` for the others, tab kept, as
//! `journalctl` does: an untrusted program cannot recolour, rewrite or hide earlier lines of
//! the terminal that reads its log, nor send it commands (OSC). `--raw` prints the bytes as
//! they are; `--json` is escaped by JSON already.

use futures_util::StreamExt;
use std::io::Write;

/// Prints the log stream `resp` line by line, escaped unless `raw`.
pub async fn print(resp: reqwest::Response, raw: bool) -> anyhow::Result<()> {
    if raw {
        return crate::client::stream_to_stdout(resp).await;
    }
    let mut stream = resp.bytes_stream();
    let mut pending = Vec::new();
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = stream.next().await {
        pending.extend_from_slice(&chunk?);
        let Some(end) = pending.iter().rposition(|&b| b == b'\n') else {
            continue;
        };
        for line in pending[..end].split(|&b| b == b'\n') {
            writeln!(out, "{}", escaped(line))?;
        }
        pending.drain(..=end);
        out.flush()?;
    }
    if !pending.is_empty() {
        writeln!(out, "{}", escaped(&pending))?;
    }
    Ok(())
}

/// `line` with its control characters but tab escaped (see the module's docs); also for the
/// log tail of a failed push or start (`output::fail`).
pub fn escaped(line: &[u8]) -> String {
    let mut text = String::with_capacity(line.len());
    for c in String::from_utf8_lossy(line).chars() {
        match c {
            '\t' => text.push(c),
            '\r' => text.push_str("\\r"),
            c if c.is_control() => text.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => text.push(c),
        }
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_but_tab_are_escaped() {
        assert_eq!(
            super::escaped(b"a\x1b[31mred\x1b[0m\tb\rc\0d\x7f\xc2\x9b"),
            "a\\x1b[31mred\\x1b[0m\tb\\rc\\x00d\\x7f\\x9b"
        );
    }
}
