//! The guest's initramfs, in the kernel's `newc` cpio format: a base archive per artifact
//! (NX's init, the binary, the virtio modules), cached by the artifact's hash, and a small
//! archive per deployment (its environment and arguments, readable by the guest's root only),
//! concatenated: the kernel unpacks both, one after the other.

use std::io::Write;

/// One archive being written.
pub struct Archive<W: Write> {
    out: W,
    written: u64,
    ino: u32,
}

impl<W: Write> Archive<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            ino: 1,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        let pad = (4 - self.written % 4) % 4;
        self.out.write_all(&[0u8; 3][..pad as usize])?;
        self.written += pad;
        Ok(())
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        // magic, then ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor
        // rdevminor namesize check, each 8 hex digits.
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        self.ino += 1;
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08X}"));
        }
        let mut head = header.into_bytes();
        head.extend_from_slice(name.as_bytes());
        head.push(0);
        self.put(&head)?;
        self.put(data)
    }

    pub fn dir(&mut self, name: &str) -> std::io::Result<()> {
        self.entry(name, 0o040_755, &[])
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        self.entry(name, 0o100_000 | mode, data)
    }

    /// Ends the archive and hands back the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.entry("TRAILER!!!", 0, &[])?;
        Ok(self.out)
    }
}

/// NUL-separated strings, as the guest's init reads them.
pub fn nul_separated<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        out.extend_from_slice(item.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_entries_are_aligned_and_named() {
        let mut a = Archive::new(Vec::new());
        a.dir("nx").unwrap();
        a.file("nx/env", 0o600, b"A=1\0").unwrap();
        let bytes = a.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("nx/env\0"));
        assert!(text.contains("TRAILER!!!\0"));
        // The file's mode and size fields: regular file 0600, 4 bytes.
        let second = text.match_indices("070701").nth(1).unwrap().0;
        assert_eq!(&text[second + 14..second + 22], "00008180");
        assert_eq!(&text[second + 54..second + 62], "00000004");
    }
}
