//! The library closure of a dynamically linked program: each `DT_NEEDED` of the program (and,
//! transitively, of every library found) resolved as the dynamic loader would resolve it in the
//! sandbox, so that a push of a program whose library is missing is refused before it runs
//! (instead of exiting 127 with "cannot open shared object file").
//!
//! The search order is `ld.so(8)`'s ("Shared object dependencies" / "Rules"):
//! 1. a name with a `/` is a path;
//! 2. the object's `DT_RPATH`, when it has no `DT_RUNPATH` (and the program's, for its
//!    libraries);
//! 3. `LD_LIBRARY_PATH`: here the bundle's library directories, which NX sets there;
//! 4. the object's own `DT_RUNPATH`;
//! 5. `/etc/ld.so.cache`, whose directories are those `ldconfig(8)` read from
//!    `/etc/ld.so.conf` (and its `include`s);
//! 6. the default directories `/lib64` and `/usr/lib64` (64-bit) or `/lib` and `/usr/lib`.
//!
//! Everything is resolved as the sandbox sees it, never as nxd's host does: a bundle's tree at
//! `/app` ([`crate::bundle::MOUNT_POINT`]) and the host's library directories
//! ([`SANDBOX_LIBRARY_DIRS`]), nothing else. A run path or a `DT_NEEDED` path naming anything
//! else (`/root`, `/var/lib/nx`, `/tmp`) is not looked at: the library is missing, as it would be
//! in the sandbox, whether or not the host has such a file, and nxd (root) opens nothing there
//! (attacker s8 F10: a program whose `DT_RUNPATH` named a host directory made nxd read a 300 MiB
//! host file whole per request, and told which host paths exist). A path is normalised
//! lexically (`..` taken off), then followed on the host only if its real path (links followed)
//! stays in the part of the view it started in: a bundle's link out of its tree leads nowhere.
//! Of a library only what the loader needs is read, in bounded pieces ([`MAX_HEADERS_BYTES`],
//! [`MAX_DYNAMIC_BYTES`], [`MAX_NAME_BYTES`]), whatever the file's size.
//!
//! `$ORIGIN` (and `${ORIGIN}`) in a run path is the sandbox's directory of the object that names
//! it; a program pushed alone has none (it runs as `/app/main`, alone in `/app`). A candidate is
//! taken only when it is a regular file and an ELF of the program's class and machine, as the
//! loader skips others. Host directories count only where the sandbox sees them: a library in
//! `/usr/local/lib` is on the host but not in the sandbox.

use crate::bundle::{BundleManifest, MOUNT_POINT};
use goblin::container::Ctx;
use goblin::elf::dynamic::{Dynamic, DT_NEEDED, DT_RPATH, DT_RUNPATH};
use goblin::elf::header::{EI_CLASS, ELFCLASS64};
use goblin::elf::program_header::{ProgramHeader, PT_DYNAMIC};
use goblin::elf::Elf;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

/// The host's library directories that a dynamically linked program's sandbox sees, read-only
/// (with `/etc/ld.so.cache`).
pub const SANDBOX_LIBRARY_DIRS: &[&str] = &["/lib", "/lib64", "/usr/lib", "/usr/lib64"];

/// The most read of a library for its ELF header and its program headers, in bytes (a real
/// library's take under 1 KiB: 56 bytes per header).
pub const MAX_HEADERS_BYTES: u64 = 64 << 10;
/// The most read of a library's dynamic segment, in bytes (a real one holds a few dozen
/// 16-byte entries).
pub const MAX_DYNAMIC_BYTES: u64 = 64 << 10;
/// The most read of one name a library needs or searches (a soname or a run path), in bytes:
/// `PATH_MAX` (limits.h).
pub const MAX_NAME_BYTES: u64 = 4096;

/// A `DT_NEEDED` that no directory of the search provides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingLibrary {
    /// The soname, as the object names it (`libsass.so.1`).
    pub soname: String,
    /// The object that needs it: "the program" or a library's file name.
    pub needed_by: String,
}

/// Where the loader looks, in the order of [`self`]'s module docs; every directory as the
/// sandbox sees it.
#[derive(Debug, Clone, Default)]
pub struct Search {
    /// `LD_LIBRARY_PATH`: a bundle's library directories (`/app/lib`).
    pub library_path: Vec<PathBuf>,
    /// The cache's and the default directories the sandbox sees, in the loader's order.
    pub system: Vec<PathBuf>,
    /// The program's own directory (`$ORIGIN`), when it has one (a bundle's entry's, `/app`
    /// or under it).
    pub origin: Option<PathBuf>,
    /// The bundle's tree on this host, which the sandbox sees at [`MOUNT_POINT`], when the
    /// program is a bundle's.
    pub bundle: Option<PathBuf>,
}

impl Search {
    /// The search of a program on this host: `/etc/ld.so.conf`'s directories, then the
    /// defaults, each kept only when it lies in a directory the sandbox sees.
    pub fn host() -> Self {
        let mut dirs = Vec::new();
        read_ld_so_conf(Path::new("/etc/ld.so.conf"), &mut dirs, 0);
        dirs.extend(["/lib64", "/usr/lib64", "/lib", "/usr/lib"].map(PathBuf::from));
        let mut seen = BTreeSet::new();
        let system = dirs
            .into_iter()
            .filter(|d| SANDBOX_LIBRARY_DIRS.iter().any(|root| d.starts_with(root)))
            .filter(|d| seen.insert(d.clone()))
            .collect();
        Self {
            system,
            ..Self::default()
        }
    }

    /// This search for the entry of `manifest`'s bundle, laid out at `root` on this host: its
    /// library directories first, as `LD_LIBRARY_PATH`, and the entry's directory as
    /// `$ORIGIN`.
    pub fn with_bundle(mut self, root: &Path, manifest: &BundleManifest) -> Self {
        let app = Path::new(MOUNT_POINT);
        self.library_path = manifest.library_dirs.iter().map(|d| app.join(d)).collect();
        self.origin = app.join(&manifest.entry).parent().map(Path::to_path_buf);
        self.bundle = Some(root.to_path_buf());
        self
    }

    /// The host's file that a program in the sandbox opens at `path` (absolute): under
    /// [`MOUNT_POINT`], the bundle's file (`None` without a bundle), else [`system_file`]'s.
    /// `None` for anything else, whether or not this host has it.
    pub fn host_file(&self, path: &Path) -> Option<PathBuf> {
        let path = normalize(path)?;
        match path.strip_prefix(MOUNT_POINT) {
            Ok(rest) => {
                let bundle = self.bundle.as_deref()?;
                file_under(&bundle.join(rest), &[bundle])
            }
            Err(_) => system_file(&path),
        }
    }
}

/// The host's file at `path` (absolute) when a sandbox sees it there: a regular file under
/// [`SANDBOX_LIBRARY_DIRS`] (once `..` is taken off lexically) whose real path is under one of
/// them too. `None` for anything else, whether or not this host has it: nothing outside those
/// directories is looked at.
pub fn system_file(path: &Path) -> Option<PathBuf> {
    let path = normalize(path)?;
    let roots: Vec<&Path> = SANDBOX_LIBRARY_DIRS.iter().map(Path::new).collect();
    if !roots.iter().any(|root| path.starts_with(root)) {
        return None;
    }
    file_under(&path, &roots)
}

/// `path` (absolute) with `.` and `..` taken off lexically (`/usr/lib/../../root` is `/root`);
/// `None` for a relative path, which the sandbox would resolve against its working directory.
fn normalize(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let mut clean = PathBuf::from("/");
    for part in path.components() {
        match part {
            Component::Normal(name) => clean.push(name),
            Component::ParentDir => {
                clean.pop();
            }
            Component::RootDir | Component::CurDir => {}
            Component::Prefix(_) => return None,
        }
    }
    Some(clean)
}

/// The real path of `path` (links followed) when it is a regular file under one of `roots`'
/// real paths.
fn file_under(path: &Path, roots: &[&Path]) -> Option<PathBuf> {
    let real = std::fs::canonicalize(path).ok()?;
    let inside = roots
        .iter()
        .filter_map(|root| std::fs::canonicalize(root).ok())
        .any(|root| real.starts_with(root));
    (inside && std::fs::metadata(&real).is_ok_and(|m| m.is_file())).then_some(real)
}

/// Reads the directories of an `ld.so.conf(5)`-format file, following `include` lines
/// (shell patterns of the form `dir/*.conf` or plain paths) at most 8 deep.
fn read_ld_so_conf(path: &Path, dirs: &mut Vec<PathBuf>, depth: u8) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(pattern) = line.strip_prefix("include") {
            if depth < 8 {
                for file in expand_include(pattern.trim(), path.parent()) {
                    read_ld_so_conf(&file, dirs, depth + 1);
                }
            }
        } else if line.starts_with('/') {
            dirs.push(PathBuf::from(line));
        }
    }
}

/// The files an `include` names: `dir/prefix*suffix` (sorted, as glob(3) returns them) or one
/// path; relative patterns are relative to the including file's directory.
fn expand_include(pattern: &str, base: Option<&Path>) -> Vec<PathBuf> {
    let full = match (Path::new(pattern).is_absolute(), base) {
        (false, Some(base)) => base.join(pattern),
        _ => PathBuf::from(pattern),
    };
    let (Some(dir), Some(name)) = (full.parent(), full.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let Some((prefix, suffix)) = name.split_once('*') else {
        return vec![full];
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            (n.starts_with(prefix) && n.ends_with(suffix) && n.len() >= prefix.len() + suffix.len())
                .then(|| e.path())
        })
        .collect();
    files.sort();
    files
}

/// The parts of an object the loader uses to find what it needs.
#[derive(Default)]
struct Object {
    needed: Vec<String>,
    rpath: Vec<String>,
    runpath: Vec<String>,
}

impl Object {
    /// Takes the dynamic entry `tag` (`DT_NEEDED`, `DT_RPATH` or `DT_RUNPATH`; others are
    /// ignored) whose string is `value`; a run path is split at its colons.
    fn add(&mut self, tag: u64, value: &str) {
        let paths = value
            .split(':')
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        match tag {
            DT_NEEDED => self.needed.push(value.to_owned()),
            DT_RPATH => self.rpath.extend(paths),
            DT_RUNPATH => self.runpath.extend(paths),
            _ => {}
        }
    }

    /// The object of a parsed ELF (the program, already in memory).
    fn of(elf: &Elf<'_>) -> Self {
        let mut object = Self::default();
        let entries = [
            (DT_NEEDED, &elf.libraries),
            (DT_RPATH, &elf.rpaths),
            (DT_RUNPATH, &elf.runpaths),
        ];
        for (tag, values) in entries {
            for value in values {
                object.add(tag, value);
            }
        }
        object
    }
}

/// A run path entry with `$ORIGIN` replaced by `origin`; `None` when it names `$ORIGIN` and
/// there is none, or another dynamic string token (`$LIB`, `$PLATFORM`) NX does not expand.
fn expand(entry: &str, origin: Option<&Path>) -> Option<PathBuf> {
    if !entry.contains('$') {
        return Some(PathBuf::from(entry));
    }
    let origin = origin?.display().to_string();
    let expanded = entry
        .replace("${ORIGIN}", &origin)
        .replace("$ORIGIN", &origin);
    (!expanded.contains('$')).then(|| PathBuf::from(expanded))
}

/// The `(class, machine)` of an ELF, to skip libraries the loader would skip.
fn kind(elf: &Elf<'_>) -> (bool, u16) {
    (elf.is_64, elf.header.e_machine)
}

/// `len` bytes of `file` at `offset`, when `len` is at most `max` and the file has them.
pub(crate) fn read_at(file: &std::fs::File, offset: u64, len: u64, max: u64) -> Option<Vec<u8>> {
    if len > max {
        return None;
    }
    let mut bytes = vec![0; usize::try_from(len).ok()?];
    file.read_exact_at(&mut bytes, offset).ok()?;
    Some(bytes)
}

/// The object of the library at `path` (a host file) when it is an ELF of `want`'s kind (a
/// 32-bit library in a search directory is skipped, not loaded). Read in bounded pieces, never
/// whole: the ELF header and program headers, the dynamic segment, then each needed name and
/// run path from the string table (`DT_STRTAB`, within `DT_STRSZ`). `None` for anything the
/// loader could not load or that exceeds a bound.
fn read_library(path: &Path, want: (bool, u16)) -> Option<Object> {
    let file = std::fs::File::open(path).ok()?;
    let ehdr_len = goblin::elf::header::header64::SIZEOF_EHDR as u64;
    let header = Elf::parse_header(&read_at(&file, 0, ehdr_len, ehdr_len)?).ok()?;
    if (header.e_ident[EI_CLASS] == ELFCLASS64, header.e_machine) != want {
        return None;
    }
    let ctx = Ctx::new(header.container().ok()?, header.endianness().ok()?);
    let table_len = u64::from(header.e_phnum) * u64::from(header.e_phentsize);
    let table = read_at(&file, header.e_phoff, table_len, MAX_HEADERS_BYTES)?;
    let mut phdrs = ProgramHeader::parse(&table, 0, header.e_phnum.into(), ctx).ok()?;
    let Some(dynamic) = phdrs.iter_mut().find(|p| p.p_type == PT_DYNAMIC) else {
        return Some(Object::default());
    };
    let segment = read_at(&file, dynamic.p_offset, dynamic.p_filesz, MAX_DYNAMIC_BYTES)?;
    // `Dynamic::parse` reads the segment at its offset in the bytes it is given: `segment`'s 0.
    dynamic.p_offset = 0;
    let dynamic = Dynamic::parse(&segment, &phdrs, ctx).ok()??;
    let (strtab, strsz) = (dynamic.info.strtab as u64, dynamic.info.strsz as u64);
    let string = |at: u64| {
        let len = strsz.checked_sub(at)?.min(MAX_NAME_BYTES);
        let bytes = read_at(&file, strtab.checked_add(at)?, len, MAX_NAME_BYTES)?;
        let end = bytes.iter().position(|&b| b == 0)?;
        String::from_utf8(bytes[..end].to_vec()).ok()
    };
    let mut object = Object::default();
    for entry in &dynamic.dyns {
        if matches!(entry.d_tag, DT_NEEDED | DT_RPATH | DT_RUNPATH) {
            object.add(entry.d_tag, &string(entry.d_val)?);
        }
    }
    Some(object)
}

/// Resolves the closure of the program in `bytes` and returns every soname not found (empty:
/// the program's libraries are all there). `bytes` must parse as an ELF (the caller checked).
pub fn missing_libraries(bytes: &[u8], search: &Search) -> Vec<MissingLibrary> {
    let Ok(program) = Elf::parse(bytes) else {
        return Vec::new();
    };
    let want = kind(&program);
    let program = Object::of(&program);
    // The program's DT_RPATH also serves its libraries (when it has no DT_RUNPATH).
    let inherited_rpath: Vec<PathBuf> = if program.runpath.is_empty() {
        program
            .rpath
            .iter()
            .filter_map(|e| expand(e, search.origin.as_deref()))
            .collect()
    } else {
        Vec::new()
    };
    let mut missing = Vec::new();
    let mut loaded: BTreeMap<String, PathBuf> = BTreeMap::new();
    // (the object, its name as shown, its $ORIGIN)
    let mut queue: VecDeque<(Object, String, Option<PathBuf>)> = VecDeque::new();
    queue.push_back((program, "the program".into(), search.origin.clone()));
    while let Some((obj, name, origin)) = queue.pop_front() {
        let own_rpath: Vec<PathBuf> = if obj.runpath.is_empty() {
            obj.rpath
                .iter()
                .filter_map(|e| expand(e, origin.as_deref()))
                .collect()
        } else {
            Vec::new()
        };
        let runpath: Vec<PathBuf> = obj
            .runpath
            .iter()
            .filter_map(|e| expand(e, origin.as_deref()))
            .collect();
        for soname in &obj.needed {
            // The loader loads a soname once; later objects that need it get the same one.
            if loaded.contains_key(soname) {
                continue;
            }
            let candidates: Vec<PathBuf> = if soname.contains('/') {
                vec![PathBuf::from(soname)]
            } else {
                own_rpath
                    .iter()
                    .chain(&inherited_rpath)
                    .chain(&search.library_path)
                    .chain(&runpath)
                    .chain(&search.system)
                    .map(|dir| dir.join(soname))
                    .collect()
            };
            // Each candidate as the sandbox sees it; its origin is its directory there.
            let found = candidates.into_iter().find_map(|path| {
                let object = read_library(&search.host_file(&path)?, want)?;
                Some((path, object))
            });
            match found {
                Some((path, object)) => {
                    loaded.insert(soname.clone(), path.clone());
                    let lib_origin = path.parent().map(Path::to_path_buf);
                    queue.push_back((object, soname.clone(), lib_origin));
                }
                None => {
                    loaded.insert(soname.clone(), PathBuf::new());
                    missing.push(MissingLibrary {
                        soname: soname.clone(),
                        needed_by: name.clone(),
                    });
                }
            }
        }
    }
    missing
}

/// "libsass.so.1 (needed by the program), libfoo.so.2 (needed by libsass.so.1)".
pub fn describe(missing: &[MissingLibrary]) -> String {
    missing
        .iter()
        .map(|m| format!("{} (needed by {})", m.soname, m.needed_by))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The test binary with its `libc.so.6` renamed `libq.so.6` (same length), so that it
    /// needs a library no host has.
    pub(crate) fn needing_libq() -> Vec<u8> {
        let mut bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let from = b"libc.so.6\0";
        let mut at = 0;
        while let Some(i) = bytes[at..].windows(from.len()).position(|w| w == from) {
            bytes[at + i..at + i + 4].copy_from_slice(b"libq");
            at += i + from.len();
        }
        bytes
    }

    pub(crate) fn is_dynamic() -> bool {
        let bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        Elf::parse(&bytes).unwrap().interpreter.is_some()
    }

    /// A bundle's manifest whose entry is `main` and whose library directories are `dirs`
    /// (files are not looked at by the search).
    fn manifest(dirs: &[&str]) -> BundleManifest {
        BundleManifest {
            entry: "main".into(),
            argv0: None,
            library_dirs: dirs.iter().map(|d| d.to_string()).collect(),
            files: Vec::new(),
            links: Vec::new(),
        }
    }

    fn host_libc() -> PathBuf {
        Search::host()
            .system
            .iter()
            .map(|d| d.join("libc.so.6"))
            .find(|p| p.is_file())
            .unwrap()
    }

    /// Attacker s8 F10: a search directory or a link naming a host file outside the sandbox's
    /// view is not followed, even to a library the loader would take.
    #[test]
    fn nothing_outside_the_sandboxs_view_is_looked_at() {
        if !is_dynamic() {
            return;
        }
        let outside = tempfile::tempdir().unwrap();
        std::fs::copy(host_libc(), outside.path().join("libq.so.6")).unwrap();
        let bytes = needing_libq();
        // A run path or LD_LIBRARY_PATH naming a host directory: not searched.
        let search = Search {
            library_path: vec![outside.path().into()],
            ..Search::host()
        };
        assert_eq!(missing_libraries(&bytes, &search).len(), 1);
        let lib_path = format!("/usr/lib/../..{}/libq.so.6", outside.path().display());
        assert_eq!(system_file(Path::new(&lib_path)), None);
        assert_eq!(system_file(Path::new("/etc/passwd")), None);
        assert_eq!(
            system_file(&host_libc()),
            std::fs::canonicalize(host_libc()).ok()
        );
        // A bundle's links out of its tree lead nowhere, lexically or through a link.
        let bundle = tempfile::tempdir().unwrap();
        let lib = bundle.path().join("lib");
        std::fs::create_dir(&lib).unwrap();
        std::os::unix::fs::symlink(outside.path().join("libq.so.6"), lib.join("libq.so.6"))
            .unwrap();
        std::os::unix::fs::symlink("../..", lib.join("up")).unwrap();
        let search = Search::host().with_bundle(bundle.path(), &manifest(&["lib"]));
        assert_eq!(missing_libraries(&bytes, &search).len(), 1);
        let name = outside.path().file_name().unwrap().to_str().unwrap();
        for path in [
            format!("/app/lib/up/{name}/libq.so.6"),
            format!("/app/../..{}/libq.so.6", outside.path().display()),
        ] {
            assert_eq!(search.host_file(Path::new(&path)), None, "{path}");
        }
        // The same library as a file of the bundle: found.
        std::fs::remove_file(lib.join("libq.so.6")).unwrap();
        std::fs::copy(host_libc(), lib.join("libq.so.6")).unwrap();
        assert_eq!(missing_libraries(&bytes, &search), vec![]);
    }

    /// A library's needs read in bounded pieces are those of the whole file parsed.
    #[test]
    fn a_library_read_in_pieces_needs_what_it_needs_whole() {
        let libc = host_libc();
        let whole = std::fs::read(&libc).unwrap();
        let elf = Elf::parse(&whole).unwrap();
        let read = read_library(&libc, kind(&elf)).unwrap();
        assert_eq!(read.needed, Object::of(&elf).needed);
        assert!(!read.needed.is_empty(), "libc needs the loader");
        assert!(read_library(&libc, (false, kind(&elf).1)).is_none());
    }

    #[test]
    fn the_hosts_search_keeps_only_what_the_sandbox_sees() {
        let search = Search::host();
        assert!(search
            .system
            .iter()
            .all(|d| SANDBOX_LIBRARY_DIRS.iter().any(|r| d.starts_with(r))));
        assert!(!search.system.contains(&PathBuf::from("/usr/local/lib")));
        assert!(search.system.contains(&PathBuf::from("/usr/lib")));
    }

    #[test]
    fn a_program_with_all_its_libraries_misses_none() {
        if !is_dynamic() {
            return;
        }
        let bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(missing_libraries(&bytes, &Search::host()), vec![]);
    }

    #[test]
    fn a_missing_soname_is_named_and_a_bundle_directory_provides_it() {
        if !is_dynamic() {
            return;
        }
        let bytes = needing_libq();
        let missing = missing_libraries(&bytes, &Search::host());
        assert_eq!(
            missing,
            vec![MissingLibrary {
                soname: "libq.so.6".into(),
                needed_by: "the program".into()
            }]
        );
        assert_eq!(describe(&missing), "libq.so.6 (needed by the program)");
        // The library in the bundle's lib/ (LD_LIBRARY_PATH), or next to the program through
        // a $ORIGIN run path: found.
        let bundle = tempfile::tempdir().unwrap();
        let lib = bundle.path().join("lib");
        std::fs::create_dir(&lib).unwrap();
        let libc = host_libc();
        std::fs::copy(&libc, lib.join("libq.so.6")).unwrap();
        let search = Search::host().with_bundle(bundle.path(), &manifest(&["lib"]));
        assert_eq!(missing_libraries(&bytes, &search), vec![]);
        // A library of another machine in the way is skipped, as the loader skips it.
        let mut other = std::fs::read(&libc).unwrap();
        other[18..20].copy_from_slice(&goblin::elf::header::EM_AARCH64.to_le_bytes());
        std::fs::write(lib.join("libq.so.6"), other).unwrap();
        assert_eq!(missing_libraries(&bytes, &search).len(), 1);
    }

    #[test]
    fn origin_is_expanded_and_other_tokens_are_not() {
        let o = Path::new("/b");
        assert_eq!(expand("$ORIGIN/lib", Some(o)), Some("/b/lib".into()));
        assert_eq!(expand("${ORIGIN}/../l", Some(o)), Some("/b/../l".into()));
        assert_eq!(expand("$ORIGIN/lib", None), None);
        assert_eq!(expand("/x/$LIB", Some(o)), None);
        assert_eq!(expand("/usr/lib", None), Some("/usr/lib".into()));
    }

    #[test]
    fn ld_so_conf_includes_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("ld.so.conf.d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("b.conf"), "/usr/lib/b\n").unwrap();
        std::fs::write(d.join("a.conf"), "# a comment\n/usr/lib/a\n").unwrap();
        std::fs::write(d.join("a.txt"), "/nope\n").unwrap();
        let conf = dir.path().join("ld.so.conf");
        std::fs::write(&conf, "include ld.so.conf.d/*.conf\n/lib/c\n").unwrap();
        let mut dirs = Vec::new();
        read_ld_so_conf(&conf, &mut dirs, 0);
        assert_eq!(
            dirs,
            ["/usr/lib/a", "/usr/lib/b", "/lib/c"].map(PathBuf::from)
        );
    }
}
