//! The guest's initramfs, in the kernel's `newc` cpio format: a base archive per artifact
//! (NX's init, the binary, the virtio modules), cached by the artifact's hash, and a small
//! archive per deployment (its environment and arguments, readable by the guest's root only),
//! concatenated: the kernel unpacks both, one after the other.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

/// One archive being written.
pub struct Archive<W: Write> {
    out: W,
    written: u64,
    ino: u32,
    /// Directories written so far (`host` adds the missing parents of what it copies).
    dirs: BTreeSet<String>,
}

impl<W: Write> Archive<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            ino: 1,
            dirs: BTreeSet::new(),
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
        self.dirs.insert(name.to_owned());
        self.entry(name, 0o040_755, &[])
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> std::io::Result<()> {
        self.entry(name, 0o120_777, target.as_bytes())
    }

    /// Copies the host's `path` (absolute) to the same place in the archive, with the
    /// directories above it: a file (0644, or 0755 if executable), a symbolic link as a link,
    /// a directory with what it holds but the entries named in `skip`. Nothing if the host has
    /// no `path`.
    pub fn host(&mut self, path: &Path, skip: &[&str]) -> std::io::Result<()> {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return Ok(());
        };
        let name = path
            .display()
            .to_string()
            .trim_start_matches('/')
            .to_owned();
        let mut parent = String::new();
        for part in name
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, p)| p)
        {
            parent = if parent.is_empty() {
                (*part).to_owned()
            } else {
                format!("{parent}/{part}")
            };
            if !self.dirs.contains(&parent) {
                self.dir(&parent.clone())?;
            }
        }
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(path)?;
            return self.symlink(&name, &target.display().to_string());
        }
        if meta.is_dir() {
            if !self.dirs.contains(&name) {
                self.dir(&name)?;
            }
            let mut entries: Vec<_> = std::fs::read_dir(path)?.flatten().collect();
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                if !skip.iter().any(|s| entry.file_name() == **s) {
                    self.host(&entry.path(), skip)?;
                }
            }
            return Ok(());
        }
        let mode = if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        self.file(&name, mode, &std::fs::read(path)?)
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

    #[test]
    fn a_host_tree_comes_with_its_parents_links_and_files_but_the_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let zones = dir.path().join("share/zoneinfo");
        std::fs::create_dir_all(zones.join("Europe")).unwrap();
        std::fs::create_dir_all(zones.join("right")).unwrap();
        std::fs::write(zones.join("Europe/Paris"), b"TZif").unwrap();
        std::fs::write(zones.join("right/UTC"), b"TZif").unwrap();
        std::os::unix::fs::symlink("Europe/Paris", zones.join("CET")).unwrap();
        let mut a = Archive::new(Vec::new());
        a.host(&zones, &["right"]).unwrap();
        a.host(&dir.path().join("absent"), &[]).unwrap();
        let text = String::from_utf8_lossy(&a.finish().unwrap()).into_owned();
        let inside = dir.path().display().to_string();
        let inside = inside.trim_start_matches('/');
        for name in [
            "share/zoneinfo\0",
            "share/zoneinfo/Europe/Paris\0",
            "share/zoneinfo/CET\0",
        ] {
            assert!(text.contains(&format!("{inside}/{name}")), "{name}");
        }
        // Every parent once, the link as a link to its target, nothing of `right`.
        assert_eq!(text.matches(&format!("{inside}/share\0")).count(), 1);
        let link = text.find("/CET\0").unwrap() + "/CET\0".len();
        assert!(text[link..]
            .trim_start_matches('\0')
            .starts_with("Europe/Paris"));
        assert!(!text.contains("right"));
    }
}
