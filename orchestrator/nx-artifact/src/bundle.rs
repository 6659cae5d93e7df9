//! Bundles: a program with the files it needs (configs, templates, assets, libraries), pushed
//! as a directory or a tar archive and run read-only at `/app`. A bundle travels as a
//! [`BundleManifest`] (every file's path, sha256, size and executable bit; the links inside
//! it; the entry) and its files as content-addressed blobs, so that a re-push sends only the
//! files that changed.
//!
//! Checked here, by the CLI before it uploads and by nxd before it stores anything: paths are
//! relative and plain (no `..`, no `.`, no empty or absolute ones, no duplicates), links point
//! inside the bundle, the entry is one of its executable files, the totals are within the
//! limits. The user may add [`SETTINGS_FILE`] at the top (`entry`, `libraries`, `argv0`).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// The optional settings file at a bundle's top.
pub const SETTINGS_FILE: &str = "nx-bundle.toml";
/// The library directory a bundle gets without settings, when it has one.
pub const DEFAULT_LIBRARY_DIR: &str = "lib";
/// Where a bundle appears in the sandbox.
pub const MOUNT_POINT: &str = "/app";

/// The most hard links ext4 keeps to one file (`EXT4_LINK_MAX`, fs/ext4/ext4.h): past it nxd
/// renews a stored file, a copy of it for the next this many trees, the old one kept while an
/// older tree links it. So each file of a tree is charged this share of its size.
pub const LINKS_PER_COPY: u64 = 65_000;

/// The most components a path of a bundle may have (its depth): deeper paths are refused.
/// Each component is a directory nxd lays out (attacker s12 H2: 10 files 1,900 levels deep, a
/// 40 KB manifest, made 19,013 directories).
pub const MAX_DEPTH: usize = 64;

/// Why a bundle is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("{path:?} in the bundle: {why}; bundles hold relative paths inside themselves (re-create the archive from inside its directory: `tar -czf app.tar.gz -C dir .`)")]
    BadPath { path: String, why: &'static str },
    #[error("{path:?} is a link to {target:?}, outside the bundle; copy the file into the bundle instead")]
    LinkOutside { path: String, target: String },
    #[error(
        "{path:?} is a {kind}; bundles hold regular files, directories and links inside themselves"
    )]
    Unsupported { path: String, kind: &'static str },
    #[error("the entry {entry:?} is not a file of the bundle; name one with --entry (files at the top: {top})")]
    NoEntry { entry: String, top: String },
    #[error("the entry {entry:?} is not executable; `chmod +x` it before pushing")]
    EntryNotExecutable { entry: String },
    #[error("the entry {entry:?} is a script ({shebang}), and a bundle's entry is an ELF program; {advice}")]
    ScriptEntry {
        entry: String,
        /// Its first line, at most 80 bytes, escaped as [`crate::verify::not_elf`] does.
        shebang: String,
        /// What to push instead ([`BundleManifest::check_entry_head`]).
        advice: String,
    },
    #[error("{path:?}, a program of the bundle, is dynamically linked against {interpreter}, which this host does not have in the library directories a sandbox sees (/lib, /lib64, /usr/lib, /usr/lib64), so it could not run there; {}, or clear its executable bit (`chmod -x`) if nothing runs it", crate::verify::BUILD_HINT)]
    ProgramInterpreter { path: String, interpreter: String },
    #[error("which program does the bundle run? {found}; say it with --entry PATH or `entry = \"PATH\"` in {SETTINGS_FILE}")]
    WhichEntry { found: String },
    #[error("the library directory {dir:?} is not a directory of the bundle; fix `libraries` in {SETTINGS_FILE}")]
    NoLibraryDir { dir: String },
    #[error("the bundle holds {found}, more than the {limit} nxd accepts (bundles.{key} in nxd's config)")]
    TooLarge {
        found: String,
        limit: String,
        key: &'static str,
    },
    #[error("{path:?} is {depth} components deep, more than the {MAX_DEPTH} a bundle's paths may have; move it nearer the bundle's top")]
    TooDeep { path: String, depth: usize },
    #[error("{path:?} lies under {parent:?}, which is a file or a link of the bundle, not a directory; give each path once, as what it is")]
    UnderFile { path: String, parent: String },
    #[error("{path:?}: the manifest says {declared} bytes, the uploaded file has {stored}; give each file's true size")]
    WrongSize {
        path: String,
        declared: u64,
        stored: u64,
    },
    #[error("{SETTINGS_FILE}: {0}")]
    Settings(String),
    #[error("argv0 {0:?}: a file name is a-z, A-Z, 0-9, '.', '_', '-', '+' and at most 255 bytes")]
    BadArgv0(String),
    #[error("reading the bundle: {0}")]
    Io(String),
}

impl From<std::io::Error> for BundleError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e.to_string())
    }
}

/// One regular file of a bundle.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleFile {
    /// Relative, '/'-separated.
    pub path: String,
    /// Lowercase hex sha256 of its bytes.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// Whether it is executable (mode 0555 in the sandbox, else 0444).
    pub executable: bool,
}

/// A symbolic link of a bundle, relative or absolute within the bundle (an absolute target
/// is read from the bundle's top, as in the sandbox at [`MOUNT_POINT`]).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleLink {
    pub path: String,
    pub target: String,
}

/// What a bundle is: the request body of `POST /v1/bundles`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    /// The program: one of `files`, executable.
    pub entry: String,
    /// argv\[0\] of the program; default: the entry's file name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv0: Option<String>,
    /// Directories whose libraries the program finds (`LD_LIBRARY_PATH`), relative.
    #[serde(default)]
    pub library_dirs: Vec<String>,
    /// Sorted by path.
    pub files: Vec<BundleFile>,
    /// Sorted by path.
    #[serde(default)]
    pub links: Vec<BundleLink>,
}

/// The directories above a bundle's relative `path` (`a/b/c`: `a`, `a/b`).
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

/// The most a bundle may hold (nxd's `[bundles]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleLimits {
    /// All files' bytes together, in MiB.
    pub max_mb: u64,
    /// Files, links and directories together.
    pub max_files: u64,
}

/// The user's [`SETTINGS_FILE`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleSettings {
    pub entry: Option<String>,
    pub libraries: Option<Vec<String>>,
    pub argv0: Option<String>,
}

/// A relative path made of plain components only, or why not.
pub fn check_path(path: &str) -> Result<(), BundleError> {
    let bad = |why| {
        Err(BundleError::BadPath {
            path: path.to_owned(),
            why,
        })
    };
    if path.is_empty() {
        return bad("an empty path");
    }
    if path.starts_with('/') {
        return bad("an absolute path");
    }
    if path.len() > 4096 || path.contains('\0') {
        return bad("too long or with a NUL byte");
    }
    let depth = path.split('/').count();
    if depth > MAX_DEPTH {
        return Err(BundleError::TooDeep {
            path: path.to_owned(),
            depth,
        });
    }
    for part in path.split('/') {
        match part {
            "" => return bad("an empty path component"),
            "." => return bad("a '.' component"),
            ".." => return bad("a '..' component"),
            _ => {}
        }
    }
    Ok(())
}

/// Where `target` of the link at `path` leads, as a clean relative path, or `None` when it
/// leaves the bundle. Resolved lexically, as the sandbox would resolve it under `/app` (a link
/// to a link is checked as its own entry).
fn resolve_link(path: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        let inside = target.strip_prefix(MOUNT_POINT)?;
        if !(inside.is_empty() || inside.starts_with('/')) {
            return None;
        }
        return resolve_link("", inside.trim_start_matches('/'));
    } else {
        path.split('/').collect()
    };
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// argv\[0\] as the user may choose it.
fn check_argv0(argv0: &str) -> Result<(), BundleError> {
    let ok = !argv0.is_empty()
        && argv0.len() <= 255
        && argv0 != "."
        && argv0 != ".."
        && argv0
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c));
    if ok {
        Ok(())
    } else {
        Err(BundleError::BadArgv0(argv0.to_owned()))
    }
}

impl BundleManifest {
    /// The bundle's id: the sha256 of its manifest as JSON (files and links sorted).
    pub fn id(&self) -> String {
        hex::encode(Sha256::digest(
            serde_json::to_vec(self).expect("a manifest serialises"),
        ))
    }

    /// All files' bytes.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The disk its tree takes beyond its files' stored bytes, in bytes, as nxd counts it
    /// toward an owner's `store.max_owner_mb` (newcomer17 N11: trees of 50,000 directories
    /// each, counted as nothing, took 208 MB and 50,000 inodes a request), on a filesystem that
    /// provisions `inode_bytes` of its size per inode (statvfs(3): `f_blocks` × `f_frsize` /
    /// `f_files`; 16 KiB on a default ext4, mke2fs.conf(5) `inode_ratio`):
    /// - the tree's root, each directory and each symbolic link: an inode each, counted at the
    ///   larger of `inode_bytes` and a 4 KiB block (a directory's block, and a link's when its
    ///   target passes 60 bytes, lie within it). Review17 #3: at 4 KiB an inode, the owners'
    ///   rooms together reached a fresh ext4's inodes at a quarter of its size, before bytes;
    /// - a directory entry for every file, link and directory (ext4's `ext4_dir_entry_2`: 8
    ///   bytes and the name rounded up to 4; kernel.org, "ext4 Data Structures and Algorithms",
    ///   Directory Entries);
    /// - each file's share of its renewals: its size / [`LINKS_PER_COPY`], rounded up. Each
    ///   file is a hard link to a blob stored (and counted) once per digest, but every 65,000
    ///   links make one more copy, kept while an older tree links it (review17 #3: a one-file
    ///   bundle of a 2 GiB blob was charged about 4 KiB, so 65,000 of them, 267 MB of room,
    ///   made an uncounted 2 GiB copy).
    ///
    /// Paths are taken as given: call it on a manifest that passed [`Self::check`].
    pub fn tree_bytes(&self, inode_bytes: u64) -> u64 {
        const BLOCK: u64 = 4096;
        let paths = || {
            self.files
                .iter()
                .map(|f| f.path.as_str())
                .chain(self.links.iter().map(|l| l.path.as_str()))
        };
        let dirs: BTreeSet<&str> = paths().flat_map(ancestors).collect();
        let entry = |path: &str| {
            let name = path.rsplit('/').next().unwrap_or(path);
            8 + (name.len() as u64).next_multiple_of(4)
        };
        let entries: u64 = paths().chain(dirs.iter().copied()).map(entry).sum();
        let renewals: u64 = self
            .files
            .iter()
            .map(|f| f.size.div_ceil(LINKS_PER_COPY))
            .sum();
        inode_bytes.max(BLOCK) * (1 + dirs.len() as u64 + self.links.len() as u64)
            + entries
            + renewals
    }

    /// argv\[0\]: the chosen one, else the entry's file name.
    pub fn argv0(&self) -> &str {
        self.argv0
            .as_deref()
            .unwrap_or_else(|| self.entry.rsplit('/').next().unwrap_or(&self.entry))
    }

    /// Every check of the module's docs; nothing is read from disk.
    pub fn check(&self, limits: &BundleLimits) -> Result<(), BundleError> {
        let count = (self.files.len() + self.links.len()) as u64;
        if count > limits.max_files {
            return Err(BundleError::TooLarge {
                found: format!("{count} files"),
                limit: limits.max_files.to_string(),
                key: "max_files",
            });
        }
        let total = self.total_bytes();
        if total > limits.max_mb << 20 {
            return Err(BundleError::TooLarge {
                found: format!("{} MiB", total.div_ceil(1 << 20)),
                limit: format!("{} MiB", limits.max_mb),
                key: "max_mb",
            });
        }
        let mut seen = BTreeSet::new();
        for path in self
            .files
            .iter()
            .map(|f| &f.path)
            .chain(self.links.iter().map(|l| &l.path))
        {
            check_path(path)?;
            if !seen.insert(path.as_str()) {
                return Err(BundleError::BadPath {
                    path: path.clone(),
                    why: "a path given twice",
                });
            }
        }
        // A file or a link is no directory: nothing may lie under one.
        let mut dirs = BTreeSet::new();
        for path in &seen {
            for ancestor in ancestors(path) {
                if seen.contains(ancestor) {
                    return Err(BundleError::UnderFile {
                        path: (*path).to_owned(),
                        parent: ancestor.to_owned(),
                    });
                }
                dirs.insert(ancestor);
            }
        }
        // Each directory is laid out as one (an inode and a block): they count with the files.
        let count = count + dirs.len() as u64;
        if count > limits.max_files {
            return Err(BundleError::TooLarge {
                found: format!("{count} files, links and directories"),
                limit: limits.max_files.to_string(),
                key: "max_files",
            });
        }
        for file in &self.files {
            crate::check_sha256_hex(&file.sha256).map_err(|why| BundleError::BadPath {
                path: file.path.clone(),
                why,
            })?;
        }
        for link in &self.links {
            if link.target.is_empty() || resolve_link(&link.path, &link.target).is_none() {
                return Err(BundleError::LinkOutside {
                    path: link.path.clone(),
                    target: link.target.clone(),
                });
            }
        }
        let entry = self.files.iter().find(|f| f.path == self.entry);
        match entry {
            None => {
                return Err(BundleError::NoEntry {
                    entry: self.entry.clone(),
                    top: self.top_files(),
                })
            }
            Some(f) if !f.executable => {
                return Err(BundleError::EntryNotExecutable {
                    entry: self.entry.clone(),
                })
            }
            Some(_) => {}
        }
        for dir in &self.library_dirs {
            check_path(dir)?;
            let prefix = format!("{dir}/");
            if !self.files.iter().any(|f| f.path.starts_with(&prefix)) {
                return Err(BundleError::NoLibraryDir { dir: dir.clone() });
            }
        }
        if let Some(argv0) = &self.argv0 {
            check_argv0(argv0)?;
        }
        Ok(())
    }

    /// Refuses an entry whose first bytes `head` are a `#!` script's (newcomer17 N2: the
    /// refusal said to rebuild it as a static Rust or Go binary), saying how to run it: its
    /// interpreter as the entry and the script as the interpreter's argument, as execve(2)
    /// runs a script (`#!/app/bin/busybox sh` in `start.sh`: `--entry bin/busybox -- sh
    /// /app/start.sh`), or, for an interpreter the sandbox does not have (the host's
    /// `/bin/sh`: a sandbox sees the bundle at [`MOUNT_POINT`] and the host's libraries only),
    /// a shell copied into the bundle.
    pub fn check_entry_head(&self, head: &[u8]) -> Result<(), BundleError> {
        let Some(line) = head.strip_prefix(b"#!") else {
            return Ok(());
        };
        let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
        let shown = |bytes: &[u8]| -> String {
            bytes
                .iter()
                .take(80)
                .flat_map(|b| std::ascii::escape_default(*b))
                .map(char::from)
                .collect()
        };
        let text = String::from_utf8_lossy(line);
        let mut words = text.trim().splitn(2, [' ', '\t']);
        let interpreter = words.next().unwrap_or("");
        let argument = words.next().map(str::trim).filter(|a| !a.is_empty());
        let script = format!("{MOUNT_POINT}/{}", self.entry);
        let in_bundle = interpreter
            .strip_prefix(MOUNT_POINT)
            .and_then(|p| p.strip_prefix('/'))
            .filter(|p| self.files.iter().any(|f| f.path == *p && f.executable));
        let advice = match in_bundle {
            Some(path) => format!(
                "push it with its interpreter as the entry and the script as its argument: `--entry {path} -- {}{script}`",
                argument.map(|a| format!("{} ", shown(a.as_bytes()))).unwrap_or_default()
            ),
            None => format!(
                "the sandbox has no {} (it sees the bundle at {MOUNT_POINT} and the host's libraries only): copy a shell into the bundle (`cp /bin/dash DIR/bin/`, or Debian's busybox-static as bin/busybox) and push with `--entry bin/dash -- {script}` (`--entry bin/busybox -- sh {script}`)",
                shown(interpreter.as_bytes())
            ),
        };
        Err(BundleError::ScriptEntry {
            entry: self.entry.clone(),
            shebang: format!("#!{}", shown(line)),
            advice,
        })
    }

    /// The bundle's executable files other than its entry that are dynamically linked
    /// programs, in path order, with the interpreter each names
    /// ([`crate::verify::interpreter_of`]); `file` is where a path of the bundle is on this host.
    /// A static entry (a shell such as busybox) that runs one of them needs the loader and the
    /// library directories in its sandbox as much as a dynamic entry (newcomer17 N1).
    pub fn dynamic_programs<'a>(
        &'a self,
        file: impl Fn(&str) -> PathBuf + 'a,
    ) -> impl Iterator<Item = (&'a str, String)> + 'a {
        self.files
            .iter()
            .filter(|f| f.executable && f.path != self.entry)
            .filter_map(move |f| {
                crate::verify::interpreter_of(&file(&f.path)).map(|i| (f.path.as_str(), i))
            })
    }

    /// Refuses a bundle one of whose [`Self::dynamic_programs`] names an interpreter its
    /// sandbox would not have ([`crate::closure::system_file`]): it would fail "not found" (exit
    /// 127) when run. Its libraries are not looked at: the loader names a missing one.
    pub fn check_programs(&self, file: impl Fn(&str) -> PathBuf) -> Result<(), BundleError> {
        for (path, interpreter) in self.dynamic_programs(file) {
            if crate::closure::system_file(Path::new(&interpreter)).is_none() {
                return Err(BundleError::ProgramInterpreter {
                    path: path.to_owned(),
                    interpreter,
                });
            }
        }
        Ok(())
    }

    fn top_files(&self) -> String {
        let top: Vec<&str> = self
            .files
            .iter()
            .map(|f| f.path.as_str())
            .filter(|p| !p.contains('/'))
            .collect();
        if top.is_empty() {
            "none".into()
        } else {
            top.join(", ")
        }
    }
}

/// What [`scan_dir`] read: the manifest and where each file is on this machine.
#[derive(Debug)]
pub struct ScannedBundle {
    pub manifest: BundleManifest,
    /// The local path of each file of the manifest, by path in the bundle.
    pub local: std::collections::BTreeMap<String, PathBuf>,
}

/// What the user chose on the command line (which wins over the settings file).
#[derive(Debug, Default, Clone)]
pub struct BundleChoices {
    pub entry: Option<String>,
    pub argv0: Option<String>,
}

/// The SHA-256 of a file's bytes as 64 lowercase hex digits, read in 1 MiB blocks (never the
/// whole file in memory). Errors: `BundleError::Io` when it cannot be opened or read.
pub fn sha256_file(path: &Path) -> Result<String, BundleError> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// Reads a local directory as a bundle: every regular file hashed, links kept (and checked),
/// other kinds of file refused; the entry is `choices.entry`, else the settings file's, else
/// the only executable at the top.
pub fn scan_dir(
    root: &Path,
    choices: &BundleChoices,
    limits: &BundleLimits,
) -> Result<ScannedBundle, BundleError> {
    let mut files = Vec::new();
    let mut links = Vec::new();
    let mut local = std::collections::BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry
                .file_name()
                .into_string()
                .map_err(|n| BundleError::BadPath {
                    path: n.to_string_lossy().into_owned(),
                    why: "a name that is not UTF-8",
                })?;
            let rel = format!("{prefix}{name}");
            let meta = std::fs::symlink_metadata(entry.path())?;
            let kind = meta.file_type();
            if kind.is_dir() {
                stack.push((entry.path(), format!("{rel}/")));
            } else if kind.is_symlink() {
                let target = std::fs::read_link(entry.path())?;
                links.push(BundleLink {
                    path: rel,
                    target: target.to_string_lossy().into_owned(),
                });
            } else if kind.is_file() {
                if (files.len() + links.len()) as u64 >= limits.max_files {
                    return Err(BundleError::TooLarge {
                        found: format!("more than {} files", limits.max_files),
                        limit: limits.max_files.to_string(),
                        key: "max_files",
                    });
                }
                files.push(BundleFile {
                    sha256: sha256_file(&entry.path())?,
                    size: meta.len(),
                    executable: meta.permissions().mode() & 0o111 != 0,
                    path: rel.clone(),
                });
                local.insert(rel, entry.path());
            } else {
                return Err(BundleError::Unsupported {
                    path: rel,
                    kind: "device, socket or FIFO",
                });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    links.sort_by(|a, b| a.path.cmp(&b.path));
    let settings = match std::fs::read_to_string(root.join(SETTINGS_FILE)) {
        Ok(text) => toml::from_str::<BundleSettings>(&text)
            .map_err(|e| BundleError::Settings(e.to_string()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BundleSettings::default(),
        Err(e) => return Err(e.into()),
    };
    let entry = match choices.entry.clone().or(settings.entry) {
        Some(entry) => entry.trim_start_matches("./").to_owned(),
        None => {
            let top: Vec<&BundleFile> = files
                .iter()
                .filter(|f| f.executable && !f.path.contains('/'))
                .collect();
            match top.as_slice() {
                [only] => only.path.clone(),
                [] => {
                    return Err(BundleError::WhichEntry {
                        found: "no executable file at its top".into(),
                    })
                }
                many => {
                    return Err(BundleError::WhichEntry {
                        found: format!(
                            "several executables at its top ({})",
                            many.iter()
                                .map(|f| f.path.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    })
                }
            }
        }
    };
    let library_dirs = match settings.libraries {
        Some(dirs) => dirs,
        None if files
            .iter()
            .any(|f| f.path.starts_with(&format!("{DEFAULT_LIBRARY_DIR}/"))) =>
        {
            vec![DEFAULT_LIBRARY_DIR.to_owned()]
        }
        None => Vec::new(),
    };
    let manifest = BundleManifest {
        entry,
        argv0: choices.argv0.clone().or(settings.argv0),
        library_dirs,
        files,
        links,
    };
    manifest.check(limits)?;
    Ok(ScannedBundle { manifest, local })
}

/// Unpacks a tar archive (gzip-compressed or not) into `dest`, refusing what a bundle may not
/// hold before anything is written outside `dest`: absolute or `..` paths, links that leave
/// it, hard links, devices. `dest` must be empty.
pub fn unpack_tar(archive: &Path, dest: &Path) -> Result<(), BundleError> {
    let mut head = [0u8; 2];
    let gzipped = std::fs::File::open(archive)?.read(&mut head)? == 2 && head == [0x1f, 0x8b];
    let file = std::fs::File::open(archive)?;
    let reader: Box<dyn Read> = if gzipped {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut tar = tar::Archive::new(reader);
    for entry in tar.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.to_string_lossy().into_owned();
        let path = raw
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        if path.is_empty() || raw == "." {
            continue;
        }
        if raw.starts_with('/') {
            return Err(BundleError::BadPath {
                path: raw,
                why: "an absolute path",
            });
        }
        check_path(&path)?;
        let kind = entry.header().entry_type();
        let target = dest.join(&path);
        if kind.is_dir() {
            std::fs::create_dir_all(&target)?;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // A parent created by an earlier link would lead outside: links are refused below
        // unless they stay inside, and are made only after every check of their own.
        if target
            .parent()
            .is_some_and(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()))
        {
            return Err(BundleError::BadPath {
                path,
                why: "a path through a link",
            });
        }
        if kind.is_symlink() {
            let link = entry
                .link_name()?
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default();
            if link.is_empty() || resolve_link(&path, &link).is_none() {
                return Err(BundleError::LinkOutside { path, target: link });
            }
            std::os::unix::fs::symlink(&link, &target)?;
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            let mode = entry.header().mode().unwrap_or(0o644);
            let mut out = std::fs::File::create(&target)?;
            std::io::copy(&mut entry, &mut out)?;
            let exec = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(exec))?;
        } else {
            return Err(BundleError::Unsupported {
                path,
                kind: if kind.is_hard_link() {
                    "hard link (re-create the archive with `tar --hard-dereference`)"
                } else {
                    "device, FIFO or other special file"
                },
            });
        }
    }
    Ok(())
}

/// Whether a local path is a bundle (a directory or a tar archive) rather than one binary.
pub fn is_bundle_path(path: &Path) -> bool {
    if path.is_dir() {
        return true;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    [".tar", ".tar.gz", ".tgz"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// The directory of the bundle's entry in the sandbox (`/app/bin` for `bin/x`).
pub fn entry_dir_in_sandbox(entry: &str) -> String {
    match entry.rsplit_once('/') {
        Some((dir, _)) => format!("{MOUNT_POINT}/{dir}"),
        None => MOUNT_POINT.to_owned(),
    }
}

/// `LD_LIBRARY_PATH` of a bundle's program: its library directories under [`MOUNT_POINT`].
pub fn library_path(manifest: &BundleManifest) -> Option<String> {
    (!manifest.library_dirs.is_empty()).then(|| {
        manifest
            .library_dirs
            .iter()
            .map(|d| format!("{MOUNT_POINT}/{d}"))
            .collect::<Vec<_>>()
            .join(":")
    })
}

/// The clean path of `p` relative to nothing: used for a tree on this host.
pub fn host_path(root: &Path, rel: &str) -> PathBuf {
    let mut out = root.to_path_buf();
    for c in Path::new(rel).components() {
        if let Component::Normal(c) = c {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BundleLimits = BundleLimits {
        max_mb: 16,
        max_files: 100,
    };

    fn file(path: &str, executable: bool) -> BundleFile {
        BundleFile {
            path: path.into(),
            sha256: "a".repeat(64),
            size: 10,
            executable,
        }
    }

    fn manifest() -> BundleManifest {
        BundleManifest {
            entry: "bin/app".into(),
            argv0: None,
            library_dirs: vec!["lib".into()],
            files: vec![file("bin/app", true), file("lib/libx.so.1", false)],
            links: vec![BundleLink {
                path: "lib/libx.so".into(),
                target: "libx.so.1".into(),
            }],
        }
    }

    #[test]
    fn a_good_manifest_passes_and_has_a_stable_id() {
        let m = manifest();
        m.check(&LIMITS).unwrap();
        assert_eq!(m.id(), manifest().id());
        assert_eq!(m.argv0(), "app");
        assert_eq!(library_path(&m).as_deref(), Some("/app/lib"));
        assert_eq!(entry_dir_in_sandbox(&m.entry), "/app/bin");
    }

    /// Newcomer17 N11: a tree's directories and links count, its files' bytes do not, but
    /// for their share of a renewal; review17 #3: an inode counts what the filesystem
    /// provisions for one.
    #[test]
    fn a_trees_cost_is_its_inodes_entries_and_files_share_of_a_renewal() {
        // bin/, lib/ and the root: 3 inodes; the link: 1; entries: app (8+4), libx.so.1
        // (8+12), libx.so (8+8), bin (8+4), lib (8+4); two files of 10 bytes: 1 each.
        let m = manifest();
        let entries = 12 + 20 + 16 + 12 + 12;
        assert_eq!(m.tree_bytes(4096), 4 * 4096 + entries + 2);
        // At ext4's default 16 KiB an inode (and never less than a block).
        assert_eq!(m.tree_bytes(16384), 4 * 16384 + entries + 2);
        assert_eq!(m.tree_bytes(512), m.tree_bytes(4096));
        // A 1 GiB file: its share of the copy made every 65,000 links, not its bytes.
        let mut big = manifest();
        big.files[1].size = 1 << 30;
        assert_eq!(
            big.tree_bytes(4096),
            m.tree_bytes(4096) - 1 + (1u64 << 30).div_ceil(LINKS_PER_COPY)
        );
        assert_eq!(LINKS_PER_COPY * 16_520, 1_073_800_000);
        // 1,000 one-file directories: 1,000 inodes more, whatever the files hold.
        let mut wide = manifest();
        wide.files
            .extend((0..1000).map(|i| file(&format!("d{i:04}/f"), false)));
        assert!(wide.tree_bytes(16384) > m.tree_bytes(16384) + 1000 * 16384);
        assert!(wide.tree_bytes(16384) < m.tree_bytes(16384) + 1000 * (16384 + 40));
    }

    /// Newcomer17 N2: a script entry was told to be rebuilt as a static Rust or Go binary.
    #[test]
    fn a_script_entry_is_told_to_run_through_its_interpreter() {
        let mut m = manifest();
        m.entry = "start.sh".into();
        m.files.push(file("bin/busybox", true));
        m.files.push(file("start.sh", true));
        let e = m
            .check_entry_head(b"#!/app/bin/busybox sh\nexec x\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is a script (#!/app/bin/busybox sh)")
                && e.contains("`--entry bin/busybox -- sh /app/start.sh`"),
            "{e}"
        );
        // The host's shell is no file of the sandbox: a shell goes into the bundle.
        let e = m.check_entry_head(b"#!/bin/sh\n").unwrap_err().to_string();
        assert!(
            e.contains("the sandbox has no /bin/sh")
                && e.contains("`--entry bin/dash -- /app/start.sh`"),
            "{e}"
        );
        m.check_entry_head(crate::verify::ELF_MAGIC).unwrap();
    }

    /// Newcomer17 N1: a bundle's dynamic programs besides its entry are found (so that its
    /// sandbox gets their loader), and one whose loader no sandbox has is refused by name.
    #[test]
    fn a_bundles_dynamic_programs_are_found_and_one_without_its_loader_is_refused() {
        let test_binary = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let Some(loader) = crate::verify::verify_on_host(&test_binary)
            .ok()
            .and_then(|i| match i.linkage {
                crate::verify::Linkage::Dynamic { interpreter } => Some(interpreter),
                crate::verify::Linkage::Static => None,
            })
        else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut m = manifest();
        for (path, bytes) in [("bin/app", &b"#!x"[..]), ("bin/tool", &test_binary)] {
            std::fs::create_dir_all(root.join("bin")).unwrap();
            std::fs::write(root.join(path), bytes).unwrap();
            m.files.push(file(path, true));
        }
        m.files.remove(0);
        let on_host = |p: &str| host_path(root, p);
        let found: Vec<(&str, String)> = m.dynamic_programs(on_host).collect();
        assert_eq!(found, [("bin/tool", loader.clone())]);
        m.check_programs(on_host).unwrap();
        // The same program naming a loader of the same length that no host has.
        let mut elsewhere = test_binary.clone();
        let at = elsewhere
            .windows(loader.len())
            .position(|w| w == loader.as_bytes())
            .unwrap();
        elsewhere[at + loader.len() - 1] = b'~';
        std::fs::write(root.join("bin/tool"), &elsewhere).unwrap();
        let e = m.check_programs(on_host).unwrap_err();
        assert!(
            matches!(&e, BundleError::ProgramInterpreter { path, .. } if path == "bin/tool"),
            "{e}"
        );
        assert!(e.to_string().contains("chmod -x"), "{e}");
    }

    /// Attacker s12 H2: files under long chains of directories made a directory per
    /// component, counted nowhere.
    #[test]
    fn paths_deeper_than_max_depth_and_directories_past_max_files_are_refused() {
        let chain = |top: &str, depth: usize| {
            let mut parts = vec![top; depth - 1];
            parts.push("f");
            parts.join("/")
        };
        // 64 components (MAX_DEPTH) pass, 65 do not.
        let mut m = manifest();
        m.files.push(file(&chain("a", 64), false));
        m.check(&LIMITS).unwrap();
        m.files.push(file(&chain("b", 65), false));
        let e = m.check(&LIMITS).expect_err("a path 65 deep passed");
        assert!(
            e.to_string()
                .contains("is 65 components deep, more than the 64"),
            "{e}"
        );

        // 3 entries and 2 directories of the manifest + 3 files 40 deep (39 directories each).
        let mut m = manifest();
        for top in ["c", "d", "e"] {
            m.files.push(file(&chain(top, 40), false));
        }
        let e = m
            .check(&LIMITS)
            .expect_err("125 inodes passed max_files = 100");
        assert!(
            matches!(
                e,
                BundleError::TooLarge {
                    key: "max_files",
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("125 files, links and directories, more than the 100"),
            "{e}"
        );
    }

    #[test]
    fn bad_paths_links_entries_and_sizes_are_refused() {
        for bad in ["/etc/passwd", "../x", "a/../../x", "a//b", "./a", ""] {
            let mut m = manifest();
            m.files.push(file(bad, false));
            assert!(
                matches!(m.check(&LIMITS), Err(BundleError::BadPath { .. })),
                "{bad}"
            );
        }
        for target in ["../../etc/passwd", "/etc/passwd", "../..", "/application/x"] {
            let mut m = manifest();
            m.links[0].target = target.into();
            let e = m.check(&LIMITS).unwrap_err();
            assert!(
                matches!(e, BundleError::LinkOutside { .. }),
                "{target}: {e}"
            );
        }
        for target in ["/app/bin/app", "../bin/app", "./libx.so.1"] {
            let mut m = manifest();
            m.links[0].target = target.into();
            m.check(&LIMITS).unwrap();
        }
        let mut m = manifest();
        m.entry = "bin/nope".into();
        assert!(m
            .check(&LIMITS)
            .unwrap_err()
            .to_string()
            .contains("--entry"));
        let mut m = manifest();
        m.entry = "lib/libx.so.1".into();
        assert!(m
            .check(&LIMITS)
            .unwrap_err()
            .to_string()
            .contains("chmod +x"));
        let mut m = manifest();
        m.files[0].size = 17 << 20;
        assert!(m
            .check(&LIMITS)
            .unwrap_err()
            .to_string()
            .contains("bundles.max_mb"));
        let mut m = manifest();
        m.argv0 = Some("../sh".into());
        assert!(matches!(m.check(&LIMITS), Err(BundleError::BadArgv0(_))));
        // Paths that collide: a file, or a link, used as a directory.
        let mut m = manifest();
        m.files.push(file("bin/app/x", false));
        let e = m.check(&LIMITS).unwrap_err();
        assert_eq!(
            e,
            BundleError::UnderFile {
                path: "bin/app/x".into(),
                parent: "bin/app".into()
            }
        );
        let mut m = manifest();
        m.files.push(file("lib/libx.so/y", false));
        assert!(matches!(
            m.check(&LIMITS),
            Err(BundleError::UnderFile { .. })
        ));
        let mut m = manifest();
        m.links.push(BundleLink {
            path: "bin".into(),
            target: "lib".into(),
        });
        assert!(matches!(
            m.check(&LIMITS),
            Err(BundleError::UnderFile { .. })
        ));
    }

    fn exec(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn a_directory_is_scanned_with_its_settings_and_its_only_executable() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        exec(&root.join("server"), "#!");
        std::fs::create_dir(root.join("lib")).unwrap();
        std::fs::write(root.join("lib/libq.so.1"), "lib").unwrap();
        std::os::unix::fs::symlink("libq.so.1", root.join("lib/libq.so")).unwrap();
        let scanned = scan_dir(root, &BundleChoices::default(), &LIMITS).unwrap();
        let m = &scanned.manifest;
        assert_eq!(m.entry, "server");
        assert_eq!(m.library_dirs, ["lib"]);
        assert_eq!(m.links.len(), 1);
        assert_eq!(scanned.local["lib/libq.so.1"], root.join("lib/libq.so.1"));
        // Two executables at the top: which one must be said.
        exec(&root.join("other"), "#!");
        let e = scan_dir(root, &BundleChoices::default(), &LIMITS).unwrap_err();
        assert!(e.to_string().contains("other, server"), "{e}");
        std::fs::write(
            root.join(SETTINGS_FILE),
            "entry = \"other\"\nargv0 = \"sh\"\n",
        )
        .unwrap();
        let m = scan_dir(root, &BundleChoices::default(), &LIMITS)
            .unwrap()
            .manifest;
        assert_eq!((m.entry.as_str(), m.argv0()), ("other", "sh"));
        // The command line wins.
        let choices = BundleChoices {
            entry: Some("./server".into()),
            argv0: None,
        };
        assert_eq!(
            scan_dir(root, &choices, &LIMITS).unwrap().manifest.entry,
            "server"
        );
        // A link out of the bundle.
        std::os::unix::fs::symlink("/etc/passwd", root.join("passwd")).unwrap();
        let e = scan_dir(root, &choices, &LIMITS).unwrap_err();
        assert!(matches!(e, BundleError::LinkOutside { .. }), "{e}");
    }

    fn tar_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> tempfile::NamedTempFile {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        let bytes = builder.into_inner().unwrap();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), bytes).unwrap();
        file
    }

    fn raw_entry(b: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, link: &str) {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(0o755);
        h.set_size(if kind == tar::EntryType::Regular {
            2
        } else {
            0
        });
        h.set_cksum();
        let data: &[u8] = if kind == tar::EntryType::Regular {
            b"hi"
        } else {
            b""
        };
        b.append(&h, data).unwrap();
    }

    #[test]
    fn a_tar_with_escaping_paths_or_links_is_refused_and_a_good_one_unpacks() {
        use tar::EntryType::{Link, Regular, Symlink};
        for (name, kind, link) in [
            ("/etc/x", Regular, ""),
            ("../x", Regular, ""),
            ("a/../../x", Regular, ""),
            ("out", Symlink, "../../etc"),
            ("out", Symlink, "/etc/passwd"),
            ("hard", Link, "server"),
        ] {
            let archive = tar_with(|b| raw_entry(b, name, kind, link));
            let dest = tempfile::tempdir().unwrap();
            assert!(
                unpack_tar(archive.path(), dest.path()).is_err(),
                "{name} -> {link}"
            );
        }
        // A link inside, then a file written through it: refused too.
        let archive = tar_with(|b| {
            raw_entry(b, "d", Symlink, ".");
            raw_entry(b, "d/x", Regular, "");
        });
        let dest = tempfile::tempdir().unwrap();
        assert!(unpack_tar(archive.path(), dest.path()).is_err());
        let archive = tar_with(|b| {
            raw_entry(b, "./server", Regular, "");
            raw_entry(b, "./lib/libq.so", Symlink, "libq.so.1");
        });
        let dest = tempfile::tempdir().unwrap();
        unpack_tar(archive.path(), dest.path()).unwrap();
        assert_eq!(std::fs::read(dest.path().join("server")).unwrap(), b"hi");
        let mode = std::fs::metadata(dest.path().join("server"))
            .unwrap()
            .permissions();
        assert_eq!(mode.mode() & 0o777, 0o755);
    }
}
