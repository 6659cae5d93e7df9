//! The copies of nxd's binaries that units run, in `<state_dir>/bin`. A deployment's unit runs
//! the launcher (`nxd launch`, this very binary), the router's unit runs `nx-router` (nxd's
//! sibling); the embedded systemd manager has a private /tmp (and a system manager's units may
//! have `PrivateTmp=`), so an nxd run from under /tmp would not exist where its units look.
//! Units therefore run copies in the state dir, which every unit sees.

use crate::error::Error;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The binaries units run.
pub struct Installed {
    /// `<state_dir>/bin/nxd-launcher`: a copy of the running nxd.
    pub launcher: PathBuf,
    /// `<state_dir>/bin/nx-router`: a copy of the `nx-router` beside nxd (if there is one).
    pub router: PathBuf,
    /// Which build `router` is: `<size in bytes>-<modification time in ns since the epoch>`,
    /// the identity [`install`] copies by (a copy keeps its source's modification time). A
    /// running router started from another build is not adopted.
    pub router_build: String,
}

/// `<state_dir>/bin/nxd-launcher`: where [`install`] puts the copy of nxd that units run
/// (deployment launchers, tasks, volume jobs).
pub fn launcher_path(state_dir: &Path) -> PathBuf {
    state_dir.join("bin").join("nxd-launcher")
}

/// Copies the running binary and its sibling `nx-router` to `<state_dir>/bin` (0755) unless
/// identical copies (same size and modification time) are there already. Errors: `Setup` when
/// there is no `nx-router` beside nxd and none installed before; `Io`.
pub fn install(state_dir: &Path) -> Result<Installed, Error> {
    let exe = std::env::current_exe().map_err(Error::io("locating the nxd binary"))?;
    let dir = state_dir.join("bin");
    std::fs::create_dir_all(&dir).map_err(Error::io(format_args!("creating {}", dir.display())))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).map_err(Error::io(
        format_args!("setting the mode of {}", dir.display()),
    ))?;
    let launcher = launcher_path(state_dir);
    copy_if_changed(&exe, &launcher)?;
    let installed_router = dir.join("nx-router");
    let router = exe.with_file_name("nx-router");
    if router.exists() {
        copy_if_changed(&router, &installed_router)?;
    } else if !installed_router.exists() {
        return Err(Error::Setup(format!(
            "no nx-router beside nxd ({}): nxd runs it as its router; build it with `cargo build --release -p nx-router` (or install it next to nxd)",
            router.display()
        )));
    }
    Ok(Installed {
        launcher,
        router_build: build(&installed_router)?,
        router: installed_router,
    })
}

/// `<state_dir>/bin/nx-vm-init`: a copy of `init` (`[microvm] init`), which a standby's
/// sandbox binds as its waiter (`crate::standby`), installed as [`install`] installs nxd's
/// binaries and for the same reason (a clone under /tmp: CI run 3 of session 18, where every
/// standby's unit ended at once). Returns the copy's path. Errors: `Io`.
pub fn install_waiter(state_dir: &Path, init: &Path) -> Result<PathBuf, Error> {
    let copy = state_dir.join("bin").join("nx-vm-init");
    copy_if_changed(init, &copy)?;
    Ok(copy)
}

/// Which build the binary at `path` is: `<size in bytes>-<modification time in ns since the
/// epoch>`, the identity [`install`] copies by (a copy keeps its source's modification time).
/// Errors: `Io` reading its metadata.
pub fn build(path: &Path) -> Result<String, Error> {
    let (size, modified) = identity(path)?;
    let since_epoch = modified
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Ok(format!("{size}-{}", since_epoch.as_nanos()))
}

/// A binary's size and modification time: what tells one build from another here.
fn identity(path: &Path) -> Result<(u64, std::time::SystemTime), Error> {
    let meta =
        std::fs::metadata(path).map_err(Error::io(format_args!("reading {}", path.display())))?;
    let modified = meta.modified().map_err(Error::io(format_args!(
        "reading the mtime of {}",
        path.display()
    )))?;
    Ok((meta.len(), modified))
}

/// Copies `from` to `to` (atomically, by a rename), keeping its modification time, unless `to`
/// has its size and modification time already.
fn copy_if_changed(from: &Path, to: &Path) -> Result<(), Error> {
    let (size, modified) = identity(from)?;
    if identity(to).is_ok_and(|copy| copy == (size, modified)) {
        return Ok(());
    }
    let partial = to.with_extension("partial");
    let copy = || -> std::io::Result<()> {
        std::fs::copy(from, &partial)?;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))?;
        std::fs::File::options()
            .write(true)
            .open(&partial)?
            .set_modified(modified)?;
        std::fs::rename(&partial, to)
    };
    copy().map_err(Error::io(format_args!(
        "copying {} to {}",
        from.display(),
        to.display()
    )))?;
    tracing::info!(from = %from.display(), to = %to.display(), "installed for units");
    Ok(())
}
