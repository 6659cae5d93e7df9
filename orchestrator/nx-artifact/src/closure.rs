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
//! `$ORIGIN` (and `${ORIGIN}`) in a run path is the directory of the object that names it; a
//! program pushed alone has none (it runs as `/app/main`, alone in `/app`). A candidate is taken
//! only when it is an ELF of the program's class and machine, as the loader skips others. Host
//! directories count only where the sandbox sees them ([`SANDBOX_LIBRARY_DIRS`]): a library in
//! `/usr/local/lib` is on the host but not in the sandbox.

use goblin::elf::Elf;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

/// The host's library directories that a dynamically linked program's sandbox sees, read-only
/// (with `/etc/ld.so.cache`).
pub const SANDBOX_LIBRARY_DIRS: &[&str] = &["/lib", "/lib64", "/usr/lib", "/usr/lib64"];

/// A `DT_NEEDED` that no directory of the search provides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingLibrary {
    /// The soname, as the object names it (`libsass.so.1`).
    pub soname: String,
    /// The object that needs it: "the program" or a library's file name.
    pub needed_by: String,
}

/// Where the loader looks, in the order of [`self`]'s module docs.
#[derive(Debug, Clone, Default)]
pub struct Search {
    /// `LD_LIBRARY_PATH`: a bundle's library directories, as paths on this host.
    pub library_path: Vec<PathBuf>,
    /// The cache's and the default directories the sandbox sees, in the loader's order.
    pub system: Vec<PathBuf>,
    /// The program's own directory on this host (`$ORIGIN`), when it has one (a bundle's).
    pub origin: Option<PathBuf>,
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

    /// This search with `dirs` (a bundle's library directories) first, as `LD_LIBRARY_PATH`,
    /// and `origin` as the program's `$ORIGIN`.
    pub fn with_bundle(mut self, dirs: Vec<PathBuf>, origin: PathBuf) -> Self {
        self.library_path = dirs;
        self.origin = Some(origin);
        self
    }
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
struct Object {
    needed: Vec<String>,
    rpath: Vec<String>,
    runpath: Vec<String>,
}

fn object(elf: &Elf<'_>) -> Object {
    let split = |list: &[&str]| -> Vec<String> {
        list.iter()
            .flat_map(|s| s.split(':'))
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    Object {
        needed: elf.libraries.iter().map(|s| s.to_string()).collect(),
        rpath: split(&elf.rpaths),
        runpath: split(&elf.runpaths),
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

/// Whether `path` is an ELF of `want`'s kind (a 32-bit library in a search directory is
/// skipped, not loaded).
fn loadable(path: &Path, want: (bool, u16)) -> Option<Vec<u8>> {
    let bytes = std::fs::read(path).ok()?;
    let elf = Elf::parse(&bytes).ok()?;
    (kind(&elf) == want).then_some(bytes)
}

/// Resolves the closure of the program in `bytes` and returns every soname not found (empty:
/// the program's libraries are all there). `bytes` must parse as an ELF (the caller checked).
pub fn missing_libraries(bytes: &[u8], search: &Search) -> Vec<MissingLibrary> {
    let Ok(program) = Elf::parse(bytes) else {
        return Vec::new();
    };
    let want = kind(&program);
    let program = object(&program);
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
            let found = candidates
                .into_iter()
                .find_map(|path| loadable(&path, want).map(|bytes| (path, bytes)));
            match found {
                Some((path, bytes)) => {
                    loaded.insert(soname.clone(), path.clone());
                    if let Ok(elf) = Elf::parse(&bytes) {
                        let lib_origin = path.parent().map(Path::to_path_buf);
                        queue.push_back((object(&elf), soname.clone(), lib_origin));
                    }
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
        let libc = Search::host()
            .system
            .iter()
            .map(|d| d.join("libc.so.6"))
            .find(|p| p.is_file())
            .unwrap();
        std::fs::copy(&libc, lib.join("libq.so.6")).unwrap();
        let search = Search::host().with_bundle(vec![lib.clone()], bundle.path().into());
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
