//! Each sandbox's databases on a disk of their own, so that a tenant cannot fill the host's:
//! an ext4 filesystem image of `databases.max_size_mb` (a sparse file,
//! `<state_dir>/postgres/disks/<role>.img`, formatted as deployments' `/data` is, see
//! `backend::data_disk`), loop-mounted on `<state_dir>/postgres/disks/<role>/`, whose
//! directory `pg` is the location of a tablespace named after the sandbox's role. The
//! sandbox's database is created in that tablespace (`CREATE DATABASE ... TABLESPACE`), and so
//! are its preview branches (a template copy keeps its template's tablespace), a restore's
//! fresh database and the databases restores and swaps keep.
//!
//! Why it holds: a role may create objects only in its database's default tablespace or in
//! tablespaces it has `CREATE` on (PostgreSQL's "Tablespaces"), and it has `CREATE` on none
//! (`pg_default` is the bootstrap superuser's alone); moving its database elsewhere
//! (`ALTER DATABASE ... SET TABLESPACE`) needs `CREATE` on the target too; temporary objects
//! go to `temp_tablespaces` the role may use, else to the database's default. A write past
//! the filesystem's size gets `ENOSPC`, which PostgreSQL reports to that session ("could not
//! extend file ...: No space left on device"), rolling its transaction back; other tenants,
//! nxd and the cluster go on. WAL stays in the cluster's data directory, off these disks (a
//! full disk there would stop the whole cluster).
//!
//! The mounts are made where PostgreSQL sees them: by a job (a transient unit run to its end,
//! as root) of the manager the cluster runs under, whose mount namespace its units share
//! (the embedded manager's is its own: nxd's namespace does not see them). They last as long
//! as that namespace; [`mount_all`] mounts every disk before the cluster is started.
//! A disk's space, once written, stays allocated on the host (the image is not trimmed), up to
//! its size.
//!
//! A full disk would also refuse every new session of its databases, superusers' too, so that
//! the way out (`TRUNCATE`, `DROP TABLE`) could not run: a session starting after an
//! invalidation of a database's catalogs (`ANALYZE`, `VACUUM` of them, autovacuum's too)
//! writes the relation cache file `pg_internal.init` in the database's directory, and fails
//! "FATAL: could not write init file" when it cannot (attacker s12 M6). So each disk keeps
//! [`RESERVE_BYTES`] in a file of its own, which nxd deletes once the disk is full and makes
//! again once the disk has room ([`DatabaseDisks::keep_reserves`]). Project quotas would need the state dir's filesystem mounted with them (see
//! `backend::data_disk`).

use crate::backend::data_disk::create_formatted;
use crate::supervisor::{Supervisor, UnitSpec};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The mount job's script: its first argument, the disks' directory, made a shared mount point
/// (a recursive bind of itself, so that disks an earlier nxd mounted there stay in sight, and
/// `mount --make-shared`: the embedded PostgreSQL runs in a mount namespace
/// of its own, a slave of the manager's, for its private `/dev/shm`, and sees a disk mounted
/// here after it started, or unmounted, only through this peer group); then for each pair of
/// arguments (mountpoint, image), the image loop-mounted there unless something is (nosuid,
/// nodev; util-linux `mount -o loop`, whose loop device is detached when it is unmounted or
/// its namespace goes), and the tablespace's directory `pg` in it, PostgreSQL's (`postgres`
/// user), 0700.
const MOUNT_SCRIPT: &str = r#"set -e
dir=$1; shift
mountpoint -q "$dir" || mount --rbind "$dir" "$dir"
mount --make-shared "$dir"
while [ "$#" -gt 1 ]; do
  mountpoint -q "$1" || mount -t ext4 -o loop,nosuid,nodev "$2" "$1"
  install -d -o postgres -g postgres -m 700 "$1/pg"
  shift 2
done"#;

/// The file at the root of each disk that keeps [`RESERVE_BYTES`] (root's, 0600, beside the
/// tablespace's directory `pg`).
const RESERVE_FILE: &str = "reserve";
/// The room each disk's reserve keeps for PostgreSQL once the disk is full, bytes: a session's
/// relation cache file (~200 KiB) and the catalog writes of a `TRUNCATE` or `DROP TABLE`.
pub const RESERVE_BYTES: u64 = 4 << 20;
/// A disk with less room than this free (statvfs(3) `f_bavail`, PostgreSQL's) is full.
const FULL_BELOW: u64 = 1 << 20;

/// What [`DatabaseDisks::keep_reserves`] did to a disk's reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveChange {
    /// The disk was full: its reserve was deleted, and its room is PostgreSQL's.
    Freed,
    /// The disk had room (again, or a new disk): its reserve was made.
    Kept,
}

/// The unmount job's script: its argument unmounted while something is mounted there (after an
/// upgrade, a disk an earlier nxd mounted is there twice: its own mount, under the recursive
/// bind [`MOUNT_SCRIPT`] makes, and the bind's copy, review16 #5).
const UNMOUNT_SCRIPT: &str = r#"while mountpoint -q "$1"; do umount "$1" || exit 1; done"#;

/// The disks of the sandboxes' databases, in `<state_dir>/postgres/disks`.
pub struct DatabaseDisks {
    dir: PathBuf,
    /// A new disk's size, MiB (`databases.max_size_mb`).
    size_mb: u64,
    supervisor: Arc<Supervisor>,
    /// The free bytes of each full disk (by role) at the last look, so that a reserve is freed
    /// only once the disk stayed full, no byte written, between two looks: freed while a
    /// writer still ran, the writer took it (CI of session 13: the INSERT that filled the disk
    /// used the freed 4 MiB, and the TRUNCATE after it failed "No space left on device").
    full_at_last_look: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

/// Where the disks are: `<state_dir>/postgres/disks`, created if missing and made 0711
/// (PostgreSQL passes through it to the tablespaces; the images are root's, 0600).
/// Errors: creating it or setting its mode, naming it.
fn disks_dir(state_dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = state_dir.join("postgres").join("disks");
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)))
        .map_err(|e| std::io::Error::new(e.kind(), format!("making {}: {e}", dir.display())))?;
    Ok(dir)
}

/// Runs `script` with `args` as root in a job of `supervisor`'s manager (its mount namespace),
/// to its end. Errors: the job's output and exit status, or the manager's error.
#[tracing::instrument(skip(supervisor, dir, args))]
async fn run_job(
    supervisor: &Supervisor,
    dir: &Path,
    what: &str,
    script: &str,
    args: Vec<String>,
) -> Result<(), String> {
    let name = format!(
        "nxdb-disk-{what}-{}",
        super::backup::now_id().to_lowercase()
    );
    let log = dir.join(format!("{name}.log"));
    let mut argv = vec!["/bin/sh".into(), "-c".into(), script.into(), "sh".into()];
    argv.extend(args);
    let spec = UnitSpec::run_to_end(
        format!("{name}.service"),
        format!("NX database disk {what}"),
        argv,
        log.clone(),
    );
    supervisor.start(&spec).await.map_err(|e| e.to_string())?;
    supervisor.finish_job(&spec.name, &log).await
}

/// Makes `<state_dir>/postgres/disks` ([`disks_dir`]) a shared mount point and mounts every
/// disk in it, where `supervisor`'s units see it: before the embedded cluster starts, so that
/// its tablespaces are there and the disks mounted later reach it (see [`MOUNT_SCRIPT`]).
/// Errors: the directory's, or the mount job's (naming the images).
pub async fn mount_all(supervisor: &Supervisor, state_dir: &Path) -> Result<(), String> {
    let dir = disks_dir(state_dir).map_err(|e| e.to_string())?;
    let mut args = vec![dir.display().to_string()];
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let image = entry.path();
        if image.extension().is_some_and(|e| e == "img") {
            args.push(image.with_extension("").display().to_string());
            args.push(image.display().to_string());
        }
    }
    run_job(supervisor, &dir, "mount", MOUNT_SCRIPT, args)
        .await
        .map_err(|e| {
            format!(
                "mounting the sandboxes' database disks in {}: {e}",
                dir.display()
            )
        })
}

impl DatabaseDisks {
    /// Disks of `size_mb` MiB in `<state_dir>/postgres/disks` ([`disks_dir`]).
    pub fn new(
        state_dir: &Path,
        size_mb: u64,
        supervisor: Arc<Supervisor>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            dir: disks_dir(state_dir)?,
            size_mb,
            supervisor,
            full_at_last_look: Default::default(),
        })
    }

    fn image(&self, role: &str) -> PathBuf {
        self.dir.join(format!("{role}.img"))
    }

    fn mountpoint(&self, role: &str) -> PathBuf {
        self.dir.join(role)
    }

    /// The size of `role`'s disk in bytes (its image's length), if it has one.
    pub fn size(&self, role: &str) -> Option<u64> {
        std::fs::metadata(self.image(role)).ok().map(|m| m.len())
    }

    /// A sandbox's database disk's size, MiB (`databases.max_size_mb`).
    pub fn size_mb(&self) -> u64 {
        self.size_mb
    }

    /// `role`'s disk, made (an empty ext4 filesystem of `databases.max_size_mb`) unless it
    /// exists, and mounted unless it is; returns the tablespace's location on it. Errors:
    /// mkfs.ext4's, or the mount job's.
    #[tracing::instrument(skip(self))]
    pub async fn ensure(&self, role: &str) -> Result<PathBuf, String> {
        let (image, mountpoint) = (self.image(role), self.mountpoint(role));
        if !image.exists() {
            let (path, size_mb) = (image.clone(), self.size_mb);
            tokio::task::spawn_blocking(move || create_formatted(&path, size_mb))
                .await
                .map_err(|e| e.to_string())??;
        }
        std::fs::create_dir_all(&mountpoint)
            .map_err(|e| format!("creating {}: {e}", mountpoint.display()))?;
        run_job(
            &self.supervisor,
            &self.dir,
            "mount",
            MOUNT_SCRIPT,
            vec![
                self.dir.display().to_string(),
                mountpoint.display().to_string(),
                image.display().to_string(),
            ],
        )
        .await?;
        Ok(mountpoint.join("pg"))
    }

    /// Each mounted disk's reserve: deleted when the disk has had less than [`FULL_BELOW`]
    /// free, the same number of bytes, at this look and the one before (nothing writes any
    /// more),
    /// made when it is missing and the disk has room for it and twice that, with the roles
    /// whose disk's reserve changed. `root`: the root directory of the mount namespace the
    /// disks are mounted in, as nxd reaches it (`/proc/<pid>/root` of a process there).
    /// A disk that cannot be read (being made or removed) is passed over.
    pub fn keep_reserves(&self, root: &Path) -> Vec<(String, ReserveChange)> {
        use std::os::unix::fs::MetadataExt;
        let seen = |path: &Path| root.join(path.strip_prefix("/").unwrap_or(path));
        let Ok(dir_device) = std::fs::metadata(seen(&self.dir)).map(|m| m.dev()) else {
            return Vec::new();
        };
        let mut changes = Vec::new();
        let mut full = self
            .full_at_last_look
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Only this look's full disks are kept (a removed disk's entry goes with it).
        let before = std::mem::take(&mut *full);
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let image = entry.path();
            if image.extension().is_none_or(|e| e != "img") {
                continue;
            }
            let Some(role) = image.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let mountpoint = seen(&self.mountpoint(role));
            // A disk mounted there, not the directory it would be mounted on.
            let device = std::fs::metadata(&mountpoint).map(|m| m.dev());
            if device.map_or(true, |device| device == dir_device) {
                continue;
            }
            let Ok(stat) = nix::sys::statvfs::statvfs(&mountpoint) else {
                continue;
            };
            let free = stat.blocks_available() * stat.fragment_size();
            let reserve = mountpoint.join(RESERVE_FILE);
            let stayed_full = free < FULL_BELOW && before.get(role) == Some(&free);
            if free < FULL_BELOW {
                full.insert(role.to_owned(), free);
            }
            let change = if reserve.exists() {
                (stayed_full && std::fs::remove_file(&reserve).is_ok())
                    .then_some(ReserveChange::Freed)
            } else {
                (free >= RESERVE_BYTES + 2 * FULL_BELOW && make_reserve(&reserve).is_ok())
                    .then_some(ReserveChange::Kept)
            };
            if let Some(change) = change {
                changes.push((role.to_owned(), change));
            }
        }
        changes
    }

    /// Unmounts `role`'s disk and deletes it (after its tablespace was dropped). Errors: the
    /// unmount job's (the image then stays), or the files' removal.
    #[tracing::instrument(skip(self))]
    pub async fn remove(&self, role: &str) -> Result<(), String> {
        let (image, mountpoint) = (self.image(role), self.mountpoint(role));
        if !image.exists() {
            return Ok(());
        }
        run_job(
            &self.supervisor,
            &self.dir,
            "unmount",
            UNMOUNT_SCRIPT,
            vec![mountpoint.display().to_string()],
        )
        .await?;
        let _ = std::fs::remove_dir(&mountpoint);
        std::fs::remove_file(&image).map_err(|e| format!("removing {}: {e}", image.display()))
    }
}

/// Makes a disk's reserve file at `path`: [`RESERVE_BYTES`] allocated (fallocate(2)), root's,
/// 0600; nothing is left when it cannot be.
fn make_reserve(path: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let allocated = nix::fcntl::fallocate(
        file.as_raw_fd(),
        nix::fcntl::FallocateFlags::empty(),
        0,
        RESERVE_BYTES as i64,
    )
    .map_err(std::io::Error::from);
    if allocated.is_err() {
        let _ = std::fs::remove_file(path);
    }
    allocated
}
