//! `verify-binary`: is this file a Linux executable this host can run? Run by the CLI before a
//! push and by nxd on every upload. Each refusal names the fix.

use crate::closure::{self, Search};
use goblin::elf::{header, program_header, Elf};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The build hint as a literal, for [`BUILD_HINT`] and the hints that end with it.
macro_rules! build_hint {
    () => {
        "build a static Linux binary: `cargo build --release --target x86_64-unknown-linux-musl` (Rust) or `CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go build` (Go)"
    };
}

pub(crate) const BUILD_HINT: &str = build_hint!();

const LIBRARY_HINT: &str = "build without them (`CGO_ENABLED=0 go build`, or `cargo build --target x86_64-unknown-linux-musl`), put the libraries in a bundle's lib/ directory and push the directory (`nx push ./dir`), or push an image (`nx push --image`)";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("the file is empty; {BUILD_HINT}")]
    Empty,
    #[error("not an ELF executable (it starts with \"{start}\"); NX runs Linux binaries: {hint}")]
    NotElf {
        start: String,
        /// What to do: [`SCRIPT_HINT`] for a `#!` script, else the build hint.
        hint: &'static str,
    },
    #[error("truncated or corrupt ELF ({0}); push the complete binary again")]
    Corrupt(String),
    #[error("built for {found}, but this host runs {host}; rebuild for {host}: {BUILD_HINT}")]
    WrongMachine { found: String, host: String },
    #[error("this ELF is a {0}, not an executable; push the program itself")]
    NotExecutable(&'static str),
    #[error(
        "dynamically linked against {interpreter}, which this host does not have in the library directories a sandbox sees (/lib, /lib64, /usr/lib, /usr/lib64); {BUILD_HINT}"
    )]
    MissingInterpreter { interpreter: String },
    #[error("needs {missing}, which neither this host's library directories nor the bundle have; {LIBRARY_HINT}")]
    MissingLibraries { missing: String },
    #[error("{path} is not executable; run `chmod +x {path}`")]
    NoExecBit { path: String },
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path} is {kind}: push a regular file (the program itself, or `nx push --image` of an archive saved to a file)")]
    NotAFile { path: String, kind: &'static str },
    #[error("{path} is {mib} MiB, and nxd stores artifacts of at most 1024 MiB: strip its debug information (`strip {path}`), or push a bundle (a directory) whose files are each smaller")]
    TooLarge { path: String, mib: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linkage {
    Static,
    Dynamic { interpreter: String },
}

impl Linkage {
    pub fn describe(&self) -> String {
        match self {
            Linkage::Static => "static".into(),
            Linkage::Dynamic { interpreter } => interpreter.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    pub machine: String,
    pub linkage: Linkage,
}

/// The ELF machine this host runs.
pub fn host_machine() -> u16 {
    match std::env::consts::ARCH {
        "x86_64" => header::EM_X86_64,
        "aarch64" => header::EM_AARCH64,
        "riscv64" => header::EM_RISCV,
        _ => header::EM_NONE,
    }
}

fn machine_name(machine: u16, is_64: bool) -> String {
    match (machine, is_64) {
        (header::EM_X86_64, true) => "x86_64".into(),
        (header::EM_X86_64, false) => "x32".into(),
        (header::EM_386, _) => "i386 (32-bit x86)".into(),
        (header::EM_AARCH64, _) => "aarch64".into(),
        (header::EM_ARM, _) => "arm (32-bit)".into(),
        (header::EM_RISCV, true) => "riscv64".into(),
        (m, _) => header::machine_to_str(m).to_lowercase(),
    }
}

/// What to do with a `#!` script (newcomer17 N2: a script was told to be rebuilt as a static
/// Rust or Go binary): run it through its interpreter as a bundle's entry.
pub const SCRIPT_HINT: &str = concat!("a script runs through its interpreter: put the script and a shell in a directory and push the directory with the shell as its entry and the script as its argument (`nx push ./dir --entry bin/dash -- /app/start.sh`; a static busybox: `--entry bin/busybox -- sh /app/start.sh`), or ", build_hint!());

/// The first bytes of every ELF file (`ELFMAG`, elf(5)).
pub const ELF_MAGIC: &[u8] = b"\x7fELF";

/// `NotElf` for bytes that do not start with [`ELF_MAGIC`]: their first 16 bytes quoted with
/// every byte that is not printable ASCII escaped as hex (`\x11`), so that binary junk never
/// reaches a terminal or a log raw; a `#!` script is told [`SCRIPT_HINT`].
pub fn not_elf(bytes: &[u8]) -> VerifyError {
    let start = bytes[..bytes.len().min(16)]
        .iter()
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect();
    let hint = if bytes.starts_with(b"#!") {
        SCRIPT_HINT
    } else {
        BUILD_HINT
    };
    VerifyError::NotElf { start, hint }
}

/// The program interpreter (`PT_INTERP`, elf(5)) that the file at `path` names when it is an
/// executable ELF of this host's machine and class (`ET_EXEC`, or `ET_DYN` with an entry
/// point): the loader a dynamically linked program needs. Read in bounded pieces, never
/// whole: the ELF header, the program headers (at most [`closure::MAX_HEADERS_BYTES`]) and
/// the interpreter's path (at most [`closure::MAX_NAME_BYTES`]). `None` for anything else: a
/// static program, a library, another machine's program, a script, data, a file that cannot
/// be read.
pub fn interpreter_of(path: &Path) -> Option<String> {
    use goblin::container::Ctx;
    use goblin::elf::header::{EI_CLASS, ELFCLASS64};
    use goblin::elf::program_header::{ProgramHeader, PT_INTERP};
    let file = std::fs::File::open(path).ok()?;
    let ehdr_len = header::header64::SIZEOF_EHDR as u64;
    let head = closure::read_at(&file, 0, ehdr_len, ehdr_len)?;
    if !head.starts_with(ELF_MAGIC) {
        return None;
    }
    let header = Elf::parse_header(&head).ok()?;
    let runs_here = (header.e_ident[EI_CLASS] == ELFCLASS64) == cfg!(target_pointer_width = "64")
        && header.e_machine == host_machine()
        && (header.e_type == header::ET_EXEC
            || (header.e_type == header::ET_DYN && header.e_entry != 0));
    if !runs_here {
        return None;
    }
    let ctx = Ctx::new(header.container().ok()?, header.endianness().ok()?);
    let table_len = u64::from(header.e_phnum) * u64::from(header.e_phentsize);
    let table = closure::read_at(&file, header.e_phoff, table_len, closure::MAX_HEADERS_BYTES)?;
    let interp = ProgramHeader::parse(&table, 0, header.e_phnum.into(), ctx)
        .ok()?
        .into_iter()
        .find(|p| p.p_type == PT_INTERP)?;
    let bytes = closure::read_at(
        &file,
        interp.p_offset,
        interp.p_filesz,
        closure::MAX_NAME_BYTES,
    )?;
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8(bytes[..end].to_vec()).ok()
}

/// What the checks read of an ELF file, as the kernel's loader does (`execve(2)`, `elf(5)`):
/// its header and program headers, not its section headers, symbols or relocations, which
/// `goblin::elf::Elf::parse` reads too (milliseconds for a 3 MB binary, on every `nx push`).
struct Headers {
    header: header::Header,
    is_64: bool,
    program_headers: Vec<program_header::ProgramHeader>,
}

impl Headers {
    /// Errors: goblin's, for a header or program header table cut short or malformed.
    fn parse(bytes: &[u8]) -> Result<Self, goblin::error::Error> {
        let header = Elf::parse_header(bytes)?;
        let ctx = goblin::container::Ctx::new(header.container()?, header.endianness()?);
        let program_headers = program_header::ProgramHeader::parse(
            bytes,
            usize::try_from(header.e_phoff)
                .map_err(|_| goblin::error::Error::Malformed("e_phoff".into()))?,
            header.e_phnum.into(),
            ctx,
        )?;
        Ok(Self {
            is_64: header.e_ident[header::EI_CLASS] == header::ELFCLASS64,
            header,
            program_headers,
        })
    }

    /// The path in its `PT_INTERP` segment (the program's loader), if it has one; the
    /// segments' ends are checked against the file first. Errors: `Corrupt`.
    fn interpreter<'a>(&self, bytes: &'a [u8]) -> Result<Option<&'a str>, VerifyError> {
        let Some(interp) = self
            .program_headers
            .iter()
            .find(|p| p.p_type == program_header::PT_INTERP)
        else {
            return Ok(None);
        };
        let name = usize::try_from(interp.p_offset)
            .ok()
            .zip(usize::try_from(interp.p_filesz).ok())
            .and_then(|(at, len)| bytes.get(at..at.checked_add(len)?))
            .ok_or_else(|| {
                VerifyError::Corrupt("its interpreter's name lies past the end of the file".into())
            })?;
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        std::str::from_utf8(&name[..end])
            .map(Some)
            .map_err(|_| VerifyError::Corrupt("its interpreter's name is not UTF-8".into()))
    }
}

/// Checks the bytes of a binary; `interpreter_exists` says whether the sandbox has a path
/// (`closure::system_file`).
pub fn verify_bytes(
    bytes: &[u8],
    interpreter_exists: impl Fn(&str) -> bool,
) -> Result<ElfInfo, VerifyError> {
    if bytes.is_empty() {
        return Err(VerifyError::Empty);
    }
    if !bytes.starts_with(ELF_MAGIC) {
        return Err(not_elf(bytes));
    }
    let elf = Headers::parse(bytes).map_err(|e| VerifyError::Corrupt(e.to_string()))?;
    for ph in &elf.program_headers {
        let end = ph.p_offset.checked_add(ph.p_filesz);
        if end.is_none_or(|end| end > bytes.len() as u64) {
            return Err(VerifyError::Corrupt(format!(
                "a segment ends at byte {}, past the end of the {}-byte file",
                end.unwrap_or(u64::MAX),
                bytes.len()
            )));
        }
    }
    let host = host_machine();
    let host_is_64 = cfg!(target_pointer_width = "64");
    if elf.header.e_machine != host || elf.is_64 != host_is_64 {
        return Err(VerifyError::WrongMachine {
            found: machine_name(elf.header.e_machine, elf.is_64),
            host: machine_name(host, host_is_64),
        });
    }
    match elf.header.e_type {
        header::ET_EXEC => {}
        header::ET_DYN if elf.header.e_entry != 0 => {}
        header::ET_DYN => return Err(VerifyError::NotExecutable("shared library")),
        header::ET_REL => return Err(VerifyError::NotExecutable("relocatable object (.o)")),
        header::ET_CORE => return Err(VerifyError::NotExecutable("core dump")),
        _ => return Err(VerifyError::NotExecutable("file of unknown type")),
    }
    let has_load = elf
        .program_headers
        .iter()
        .any(|ph| ph.p_type == program_header::PT_LOAD);
    if !has_load {
        return Err(VerifyError::Corrupt("no loadable segment".into()));
    }
    let linkage = match elf.interpreter(bytes)? {
        None => Linkage::Static,
        Some(interp) if interpreter_exists(interp) => Linkage::Dynamic {
            interpreter: interp.to_owned(),
        },
        Some(interp) => {
            return Err(VerifyError::MissingInterpreter {
                interpreter: interp.to_owned(),
            })
        }
    };
    Ok(ElfInfo {
        machine: machine_name(elf.header.e_machine, elf.is_64),
        linkage,
    })
}

/// Checks bytes against this host's filesystem: the ELF checks, then the library closure
/// against the host's library directories the sandbox sees.
pub fn verify_on_host(bytes: &[u8]) -> Result<ElfInfo, VerifyError> {
    verify_with(bytes, Search::host)
}

/// The ELF checks (an interpreter only where the sandbox sees it: `closure::system_file`, so
/// that no other host path is looked at), then (for a dynamically linked program) its library
/// closure as the loader would resolve it with what `search` makes (called only then: a static
/// binary's check reads no file); refuses naming every missing soname.
pub fn verify_with(bytes: &[u8], search: impl FnOnce() -> Search) -> Result<ElfInfo, VerifyError> {
    let info = verify_bytes(bytes, |p| closure::system_file(Path::new(p)).is_some())?;
    if let Linkage::Dynamic { .. } = info.linkage {
        let missing = closure::missing_libraries(bytes, &search());
        if !missing.is_empty() {
            return Err(VerifyError::MissingLibraries {
                missing: closure::describe(&missing),
            });
        }
    }
    Ok(info)
}

/// A local file that passed [`verify_file`]: what it is, and its bytes (for the caller to
/// hash, e.g. with [`crate::sha256_hex`]).
pub struct VerifiedFile {
    pub info: ElfInfo,
    pub bytes: LocalFile,
}

/// The CLI's check of a local file: a regular file of at most [`crate::MAX_ARTIFACT_BYTES`]
/// ([`map_local`]), its executable bit, then the ELF checks.
pub fn verify_file(path: &Path) -> Result<VerifiedFile, VerifyError> {
    let (bytes, meta) = map_local(path)?;
    let info = verify_mapped(path, &bytes, &meta)?;
    Ok(VerifiedFile { info, bytes })
}

/// [`verify_file`]'s checks of a file [`map_local`] mapped: the ELF checks
/// ([`verify_on_host`]), then its executable bit.
pub fn verify_mapped(
    path: &Path,
    bytes: &[u8],
    meta: &std::fs::Metadata,
) -> Result<ElfInfo, VerifyError> {
    let info = verify_on_host(bytes)?;
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(VerifyError::NoExecBit {
            path: path.display().to_string(),
        });
    }
    Ok(info)
}

/// A local file's bytes, mapped read-only and shared with the page cache (mmap(2) with
/// MAP_POPULATE): nothing is copied, and the pages are mapped in one call. A read into a new
/// buffer cost 1.3-1.6 ms more for the 2.7 MB sample on this project's hosts (nested
/// virtualisation makes each page fault dear), out of a push of about 20 ms.
pub struct LocalFile(memmap2::Mmap);

impl std::ops::Deref for LocalFile {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// Maps `path` for the CLI's checks and hash, refusing first, from its metadata alone, what
/// could not be pushed: a FIFO, socket, device or directory (reading a FIFO or `/dev/zero`
/// would wait or run on forever), an empty file, and a file over [`crate::MAX_ARTIFACT_BYTES`]
/// (nxd would refuse it only once uploaded). Returns the bytes and the metadata. Errors:
/// [`VerifyError::Read`] (cannot open or map it), [`VerifyError::NotAFile`],
/// [`VerifyError::Empty`], [`VerifyError::TooLarge`].
///
/// A file cut shorter by another process while it is mapped ends nx with SIGBUS when it
/// touches the lost pages (mmap(2)); one changed in place is caught by nxd, which hashes what
/// it receives against the name nx gave.
pub fn map_local(path: &Path) -> Result<(LocalFile, std::fs::Metadata), VerifyError> {
    let shown = || path.display().to_string();
    let not_a_file = |meta: &std::fs::Metadata| VerifyError::NotAFile {
        path: shown(),
        kind: file_kind(&meta.file_type()),
    };
    let read_err = |e: std::io::Error| VerifyError::Read {
        path: shown(),
        message: e.to_string(),
    };
    // Looked at before it is opened too: open(2) of a FIFO waits for a writer.
    let before = std::fs::metadata(path).map_err(read_err)?;
    let file = match before.is_file() {
        true => std::fs::File::open(path).map_err(read_err)?,
        false => return Err(not_a_file(&before)),
    };
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(not_a_file(&meta));
    }
    if meta.len() == 0 {
        return Err(VerifyError::Empty);
    }
    if meta.len() > crate::MAX_ARTIFACT_BYTES {
        return Err(VerifyError::TooLarge {
            path: shown(),
            mib: meta.len() >> 20,
        });
    }
    // SAFETY: the map is read-only and private to this process; what another process may do
    // to the file meanwhile is in the docstring (SIGBUS on a cut, a hash nxd refuses on a
    // change), not undefined behaviour of ours beyond what mmap(2) states.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }.map_err(read_err)?;
    Ok((LocalFile(map), meta))
}

/// What a file that is not a regular one is, for [`VerifyError::NotAFile`] (inode(7)'s names).
fn file_kind(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn this_test_binary() -> Vec<u8> {
        std::fs::read(std::env::current_exe().unwrap()).unwrap()
    }

    #[test]
    fn accepts_the_test_binary_itself() {
        let info = verify_on_host(&this_test_binary()).unwrap();
        assert_eq!(info.machine, "x86_64");
    }

    #[test]
    fn refuses_text_empty_and_truncated_files() {
        assert_eq!(verify_on_host(b""), Err(VerifyError::Empty));
        let e = verify_on_host(b"#!/bin/sh\necho hi\n").unwrap_err();
        assert!(e.to_string().contains("x86_64-unknown-linux-musl"), "{e}");
        let whole = this_test_binary();
        // Cut inside the ELF header, inside its loaded segments (what the kernel maps), and
        // inside the program header table. (A cut that leaves every segment whole, only
        // debug sections gone, leaves a program the kernel runs.)
        for len in [40, 4096, 100] {
            let e = verify_on_host(&whole[..len]).unwrap_err();
            assert!(matches!(e, VerifyError::Corrupt(_)), "{len} bytes: {e}");
        }
    }

    #[test]
    fn refuses_another_machine_and_a_missing_interpreter() {
        let mut arm = this_test_binary();
        arm[18..20].copy_from_slice(&header::EM_AARCH64.to_le_bytes());
        let e = verify_on_host(&arm).unwrap_err();
        assert!(e.to_string().contains("built for aarch64"), "{e}");
        if let Linkage::Dynamic { .. } = verify_on_host(&this_test_binary()).unwrap().linkage {
            let e = verify_bytes(&this_test_binary(), |_| false).unwrap_err();
            assert!(matches!(e, VerifyError::MissingInterpreter { .. }), "{e}");
        }
    }

    #[test]
    fn refuses_a_missing_library_by_its_soname_with_the_fixes() {
        if !crate::closure::tests::is_dynamic() {
            return;
        }
        let e = verify_on_host(&crate::closure::tests::needing_libq()).unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.starts_with("needs libq.so.6 (needed by the program)"),
            "{shown}"
        );
        for fix in ["CGO_ENABLED=0", "musl", "lib/ directory", "--image"] {
            assert!(shown.contains(fix), "{shown}");
        }
    }
}
