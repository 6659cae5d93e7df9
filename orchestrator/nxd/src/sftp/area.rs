//! What an SFTP user sees: its sandbox's upload area, a flat directory. `/` is the area; a
//! file put there is an upload, deployed when its handle closes; `<name>.result` (JSON) says
//! how that went. Nothing else exists: no subdirectories, no path with `..`, no name with
//! `/`, so no path leaves the area. Result files live in `<state_dir>/uploads/<sandbox>/`;
//! uploads themselves go to the artifact store's temp dir and are gone when the connection
//! drops before they complete.

use super::deploy;
use nx_orchestrator::artifact::Upload;
use nx_orchestrator::names::SandboxName;
use nx_orchestrator::Orchestrator;
use russh_sftp::protocol::{
    Attrs, Data, File, FileAttributes, Handle, Name, OpenFlags, Status, StatusCode, Version,
};
use russh_sftp::server::StatusReply;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

/// The longest file name an upload may have.
const MAX_NAME: usize = 200;
/// The suffix of result files.
pub const RESULT_SUFFIX: &str = ".result";

/// The upload area directory of a sandbox (result files only).
pub fn dir(state_dir: &std::path::Path, sandbox: &SandboxName) -> PathBuf {
    state_dir.join("uploads").join(sandbox.as_str())
}

/// Removes a sandbox's upload area (its result files), when the sandbox is removed: a sandbox
/// made again under that name starts with none.
pub fn remove(state_dir: &std::path::Path, sandbox: &SandboxName) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir(state_dir, sandbox)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// An open handle.
enum Open {
    /// A file being uploaded; `refused` once a write was refused (too large).
    Upload {
        name: String,
        upload: Option<Upload>,
        refused: Option<String>,
    },
    /// A result file being read.
    Read(std::fs::File),
    /// The area's listing; `true` once it was sent.
    Dir(bool),
}

/// Who a session authenticated as: a key (its SHA256 fingerprint) that a sandbox holds.
#[derive(Clone)]
pub struct KeyHolder {
    pub sandbox: SandboxName,
    pub fingerprint: String,
}

/// The SFTP session of one authenticated user (one sandbox).
pub struct UploadArea {
    app: Arc<Orchestrator>,
    sandbox: SandboxName,
    /// The session's key, checked again before each upload begins and before it deploys.
    fingerprint: String,
    dir: PathBuf,
    limit_bytes: u64,
    /// `sftp.max_open_handles`.
    max_handles: usize,
    handles: HashMap<String, Open>,
    next_handle: u64,
}

fn denied(message: impl Into<String>) -> StatusReply {
    StatusCode::PermissionDenied.with_message(message)
}

fn failure(message: impl Into<String>) -> StatusReply {
    StatusCode::Failure.with_message(message)
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    }
}

fn io_error(e: std::io::Error) -> StatusReply {
    match e.kind() {
        std::io::ErrorKind::NotFound => StatusCode::NoSuchFile.into(),
        _ => failure(e.to_string()),
    }
}

/// A path as the area knows it: the area itself (`None`) or one file name in it.
pub fn resolve(sandbox: &SandboxName, path: &str) -> Result<Option<String>, StatusReply> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(denied(format!(
            "{path}: no path leaves the upload area of sandbox {sandbox}; put files at its top"
        )));
    }
    match parts.as_slice() {
        [] => Ok(None),
        [name] => {
            let valid = name.len() <= MAX_NAME
                && !name.starts_with('.')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'));
            if valid {
                Ok(Some((*name).to_owned()))
            } else {
                Err(denied(format!(
                    "{name:?}: use a name of at most {MAX_NAME} characters from A-Z, a-z, 0-9, '.', '_', '-', '+', not starting with '.'"
                )))
            }
        }
        _ => Err(denied(format!(
            "{path}: the upload area has no directories; put files at its top"
        ))),
    }
}

impl UploadArea {
    pub fn new(app: Arc<Orchestrator>, user: KeyHolder) -> std::io::Result<Self> {
        let KeyHolder {
            sandbox,
            fingerprint,
        } = user;
        use std::os::unix::fs::PermissionsExt;
        let dir = dir(&app.config.state_dir, &sandbox);
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(Self {
            limit_bytes: app.config.sftp.max_upload_mb << 20,
            max_handles: app.config.sftp.max_open_handles,
            app,
            sandbox,
            fingerprint,
            dir,
            handles: HashMap::new(),
            next_handle: 0,
        })
    }

    /// Refuses a new handle while the session holds `sftp.max_open_handles` (attacker s11 G2:
    /// one session opening uploads without closing them took every file descriptor of nxd).
    fn room_for_one_more(&self) -> Result<(), StatusReply> {
        if self.handles.len() >= self.max_handles {
            return Err(failure(format!(
                "this session has {} files open, the most one may (sftp.max_open_handles); close one first",
                self.handles.len()
            )));
        }
        Ok(())
    }

    /// Refuses work once the session's key no longer belongs to its sandbox (attacker s11 G3:
    /// `nx keys rm` or `nx sandbox rm` left open sessions deploying, also into the next
    /// sandbox of the same name): as a deploy token's follow ends with the token.
    async fn key_still_held(&self) -> Result<(), StatusReply> {
        match self
            .app
            .ssh_keys
            .authorizes(&self.sandbox, &self.fingerprint)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(denied(format!(
                "the key of this session ({}) was removed from sandbox {}: nothing is deployed; connect again with a key `nx keys ls {}` lists",
                self.fingerprint, self.sandbox, self.sandbox
            ))),
            Err(e) => Err(failure(format!("cannot check this session's key: {e}"))),
        }
    }

    fn add(&mut self, open: Open) -> String {
        self.next_handle += 1;
        let handle = self.next_handle.to_string();
        self.handles.insert(handle.clone(), open);
        handle
    }

    fn name(&self, path: &str) -> Result<Option<String>, StatusReply> {
        resolve(&self.sandbox, path)
    }

    fn file(&self, path: &str) -> Result<(String, PathBuf), StatusReply> {
        match self.name(path)? {
            Some(name) => {
                let on_disk = self.dir.join(&name);
                Ok((name, on_disk))
            }
            None => Err(failure(format!("{path} is the upload area itself"))),
        }
    }

    fn attrs(&self, path: &str) -> Result<FileAttributes, StatusReply> {
        let on_disk = match self.name(path)? {
            None => self.dir.clone(),
            Some(name) => self.dir.join(name),
        };
        let meta = std::fs::metadata(on_disk).map_err(io_error)?;
        Ok(FileAttributes::from(&meta))
    }
}

impl russh_sftp::server::Handler for UploadArea {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported
            .with_message("the upload area does not do that; put a file, get its .result")
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        Ok(Version::new())
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let shown = match self.name(&path)? {
            None => "/".to_owned(),
            Some(name) => format!("/{name}"),
        };
        Ok(Name {
            id,
            files: vec![File::dummy(shown)],
        })
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        _attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        self.room_for_one_more()?;
        let (name, on_disk) = self.file(&filename)?;
        let open = if pflags.contains(OpenFlags::WRITE) {
            if name.ends_with(RESULT_SUFFIX) {
                return Err(denied(format!(
                    "{name}: nxd writes the {RESULT_SUFFIX} files; upload the program under another name"
                )));
            }
            self.key_still_held().await?;
            // A result from an earlier upload of the same name would now be stale.
            let _ = std::fs::remove_file(self.dir.join(format!("{name}{RESULT_SUFFIX}")));
            let upload = self
                .app
                .artifacts
                .begin_upload(self.limit_bytes)
                .map_err(|e| failure(e.to_string()))?;
            tracing::info!(sandbox = %self.sandbox, file = %name, "SFTP upload started");
            Open::Upload {
                name,
                upload: Some(upload),
                refused: None,
            }
        } else {
            Open::Read(std::fs::File::open(on_disk).map_err(io_error)?)
        };
        Ok(Handle {
            id,
            handle: self.add(open),
        })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        let Some(Open::Upload {
            name,
            upload,
            refused,
        }) = self.handles.get_mut(&handle)
        else {
            return Err(failure("not a file open for writing"));
        };
        if let Some(why) = refused {
            return Err(failure(why.clone()));
        }
        let Some(up) = upload.as_mut() else {
            return Err(failure("not a file open for writing"));
        };
        match up.write_at(offset, &data) {
            Ok(()) => Ok(ok(id)),
            Err(e) => {
                // The temp file goes now; the result file says why.
                *upload = None;
                let why = format!("refused: {e}; nothing was stored");
                deploy::write_result(
                    &self.dir,
                    name,
                    &deploy::Outcome::refused(&self.sandbox, name, &why),
                );
                *refused = Some(why.clone());
                Err(failure(why))
            }
        }
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.handles.remove(&handle) {
            Some(Open::Upload {
                name,
                upload: Some(upload),
                refused: None,
            }) => {
                self.key_still_held().await?;
                let outcome = deploy::deploy(&self.app, &self.sandbox, &name, upload).await;
                deploy::write_result(&self.dir, &name, &outcome);
                match outcome.error {
                    None => Ok(ok(id)),
                    Some(why) => Err(failure(format!("{why} (details in {name}{RESULT_SUFFIX})"))),
                }
            }
            Some(Open::Upload { refused, .. }) => Err(failure(
                refused.unwrap_or_else(|| "the upload was refused".into()),
            )),
            Some(_) => Ok(ok(id)),
            None => Err(failure("no such handle")),
        }
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let Some(Open::Read(file)) = self.handles.get(&handle) else {
            return Err(failure("not a file open for reading"));
        };
        let mut buf = vec![0u8; len.min(1 << 18) as usize];
        let n = file.read_at(&mut buf, offset).map_err(io_error)?;
        if n == 0 {
            return Err(StatusCode::Eof.into());
        }
        buf.truncate(n);
        Ok(Data { id, data: buf })
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        self.room_for_one_more()?;
        if self.name(&path)?.is_some() {
            return Err(failure(format!("{path} is not a directory")));
        }
        Ok(Handle {
            id,
            handle: self.add(Open::Dir(false)),
        })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let Some(Open::Dir(sent)) = self.handles.get_mut(&handle) else {
            return Err(failure("not a directory handle"));
        };
        if *sent {
            return Err(StatusCode::Eof.into());
        }
        *sent = true;
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_error)?.flatten() {
            if let (Ok(name), Ok(meta)) = (entry.file_name().into_string(), entry.metadata()) {
                files.push(File::new(name, FileAttributes::from(&meta)));
            }
        }
        files.sort_by(|a, b| a.filename.cmp(&b.filename));
        Ok(Name { id, files })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        Ok(Attrs {
            id,
            attrs: self.attrs(&path)?,
        })
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        self.stat(id, path).await
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let attrs = match self.handles.get(&handle) {
            Some(Open::Read(file)) => FileAttributes::from(&file.metadata().map_err(io_error)?),
            Some(Open::Upload { upload, .. }) => FileAttributes {
                size: Some(upload.as_ref().map_or(0, Upload::size)),
                permissions: Some(0o100600),
                ..FileAttributes::empty()
            },
            Some(Open::Dir(_)) => self.attrs("/")?,
            None => return Err(failure("no such handle")),
        };
        Ok(Attrs { id, attrs })
    }

    /// Modes and times are not kept (an upload becomes a deployment, not a file): accepted
    /// and ignored, so `put -p` and `scp -p` work.
    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        _attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        self.name(&path)?;
        Ok(ok(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        _attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        if self.handles.contains_key(&handle) {
            Ok(ok(id))
        } else {
            Err(failure("no such handle"))
        }
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        let (_, on_disk) = self.file(&filename)?;
        std::fs::remove_file(on_disk).map_err(io_error)?;
        Ok(ok(id))
    }

    async fn mkdir(
        &mut self,
        _id: u32,
        path: String,
        _attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        Err(denied(format!(
            "{path}: the upload area has no directories; put files at its top"
        )))
    }

    async fn rename(
        &mut self,
        _id: u32,
        oldpath: String,
        _newpath: String,
    ) -> Result<Status, Self::Error> {
        Err(denied(format!(
            "{oldpath}: files in the upload area cannot be renamed; put the file under the name you want"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_at_the_top_resolve() {
        let web = SandboxName::parse("web").unwrap();
        assert_eq!(resolve(&web, "/").unwrap(), None);
        assert_eq!(resolve(&web, ".").unwrap(), None);
        assert_eq!(resolve(&web, "/./app").unwrap().as_deref(), Some("app"));
        assert_eq!(
            resolve(&web, "app.result").unwrap().as_deref(),
            Some("app.result")
        );
        for bad in [
            "../../etc/x",
            "/..",
            "a/../../b",
            "dir/app",
            ".hidden",
            "a b",
            "a\\b",
        ] {
            assert!(resolve(&web, bad).is_err(), "{bad} resolved");
        }
        let e = resolve(&web, "../../etc/x").unwrap_err();
        assert_eq!(e.status_code, StatusCode::PermissionDenied);
        assert!(e.error_message.unwrap().contains("no path leaves"));
    }
}
