//! nxd's side of the database gate: its unit, `nx-db-gate.service`, started or adopted, and
//! the table of gates nxd writes and has it apply.

use super::{read_table, GateEntry, GateError, GateSettings, UNIT};
use crate::backend::launch::{LaunchSpec, MonitorSpec, StopForward};
use crate::logs::LogFiles;
use crate::supervisor::service;
use crate::supervisor::{Restart, SliceKind, Supervisor, UnitOutput, UnitSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// How long a started (or restarting) gate may take to answer its control socket.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a stop waits for the gate to end after its SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// The variable of the gate's environment that names the launcher's build
/// (`launcher_install::build`): it is in the launch spec, so a gate of another build does not
/// match and is restarted, and a fixed gate takes over at an upgrade.
const BUILD_VARIABLE: &str = "NX_GATE_BUILD";
/// The most the gate's log and its rotated copies hold, bytes: it logs gates opened and
/// closed and failed accepts, a few lines per sandbox.
const LOG_MAX_BYTES: u64 = 16 << 20;
/// The open-file limit of the gate process: two descriptors per forwarded connection.
const OPEN_FILES: u64 = 65_536;

/// nxd's side of the gate process: its unit and the table of gates.
pub(in crate::databases) struct Gates {
    settings: GateSettings,
    /// `<state_dir>/db-gate` (0700): settings, table, control socket, launch spec, log.
    dir: PathBuf,
    supervisor: Arc<Supervisor>,
    /// The installed launcher (`<state_dir>/bin/nxd-launcher`), which runs the gate.
    launcher: PathBuf,
    /// How many rotated copies of the gate's log are kept (`[logs] keep`).
    log_keep: u32,
    /// The uid (and gid) the gate runs as: `databases.gate_uid` when nxd runs as root, `None`
    /// (nxd's own user) else.
    uid: Option<u32>,
    /// The table as last written; held while it is written and applied.
    table: tokio::sync::Mutex<BTreeMap<String, GateEntry>>,
}

impl Gates {
    /// Makes sure the gate process runs in front of the socket `upstream` (named for `port`),
    /// admitting `per_sandbox` connections per sandbox and `open_slots` in all, with its
    /// sockets in `<state_dir>/db-gates`, as `gate_uid` when nxd runs as root: a running gate
    /// of the same settings and launch spec is adopted with its table and open connections,
    /// else it is (re)started.
    ///
    /// # Errors
    /// Writing its files; [`GateError::Unit`] from the manager; [`GateError::Unreachable`]
    /// when it does not answer within 15 s.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::databases) async fn start(
        supervisor: Arc<Supervisor>,
        launcher: PathBuf,
        log_keep: u32,
        gate_uid: u32,
        state_dir: &Path,
        upstream: PathBuf,
        port: u16,
        per_sandbox: u32,
        open_slots: u32,
    ) -> Result<Self, GateError> {
        let dir = state_dir.join("db-gate");
        let settings = GateSettings {
            sockets_dir: state_dir.join("db-gates"),
            upstream,
            file_name: format!(".s.PGSQL.{port}"),
            per_sandbox,
            open_slots,
            table: dir.join("gates.json"),
            control: dir.join("control.sock"),
        };
        let table = read_table(&settings.table)?;
        let gates = Self {
            settings,
            dir,
            supervisor,
            launcher,
            log_keep,
            uid: nix::unistd::geteuid().is_root().then_some(gate_uid),
            table: tokio::sync::Mutex::new(table),
        };
        gates.ensure_running().await?;
        Ok(gates)
    }

    /// The gate's log, `<state_dir>/db-gate/gate.log` (rotated ones beside it).
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("gate.log")
    }

    /// Makes sure the gate's unit runs (adopted, or started as [`Gates::start`] says) and
    /// waits until it has applied the table.
    ///
    /// # Errors
    /// As [`Gates::start`].
    #[tracing::instrument(skip_all)]
    pub(in crate::databases) async fn ensure_running(&self) -> Result<(), GateError> {
        use std::os::unix::fs::PermissionsExt;
        for (dir, mode) in [(&self.dir, 0o700), (&self.settings.sockets_dir, 0o711)] {
            let made = std::fs::create_dir_all(dir).and_then(|()| {
                // Deployments' uids pass through db-gates to their own directory.
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            });
            made.map_err(|e| GateError::io(format!("making {}", dir.display()), e))?;
        }
        if let Some(uid) = self.uid {
            self.hand_over(uid)?;
        }
        let settings_file = self.dir.join("settings.json");
        let launch_file = self.dir.join("launch.json");
        let build = crate::launcher_install::build(&self.launcher)
            .map_err(|e| GateError::Build(e.to_string()))?;
        let launch = LaunchSpec {
            env: [(BUILD_VARIABLE.to_owned(), build)].into(),
            argv: vec![
                self.launcher.display().to_string(),
                "db-gate".into(),
                settings_file.display().to_string(),
            ],
            monitor: Some(MonitorSpec {
                log: LogFiles {
                    path: self.log_file(),
                    max_bytes: LOG_MAX_BYTES,
                    keep: self.log_keep,
                },
                dir: self.dir.clone(),
                oom_score: crate::backend::launch::OomScore::Service,
            }),
            nofile: Some(OPEN_FILES),
            // The monitor stays root (it writes the log); the gate itself drops to its uid.
            uid: self.uid,
            stop: StopForward::Child,
            ..LaunchSpec::default()
        };
        let files = [
            (
                settings_file,
                serde_json::to_string_pretty(&self.settings).expect("settings serialize"),
            ),
            (
                launch_file.clone(),
                serde_json::to_string_pretty(&launch).expect("launch spec serializes"),
            ),
        ];
        let spec = UnitSpec {
            name: UNIT.into(),
            description: "NX database gate (each sandbox's socket in front of PostgreSQL)".into(),
            argv: vec![
                self.launcher.display().to_string(),
                "launch".into(),
                launch_file.display().to_string(),
            ],
            // As nxd's own user: it reaches the cluster's socket as nxd does.
            user: service::nxd_user(),
            limits: None,
            // Only what the launcher says before its monitor starts.
            output: UnitOutput::File(self.log_file()),
            // A gate that ends for any reason, a clean exit too, is started again.
            restart: Restart::Always(Duration::from_secs(1)),
            slice: SliceKind::Control,
            remain_after_exit: false,
            graceful_stop: Some(STOP_TIMEOUT),
            ambient_capabilities: 0,
            cpu_affinity: Vec::new(),
        };
        service::adopt_or_start(&self.supervisor, &files, &spec).await?;
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        loop {
            match self.ask().await {
                Err(GateError::Unreachable { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                answered => return answered,
            }
        }
    }

    /// Gives the gate's uid its directories: `db-gate` (where it binds its control socket) and
    /// `db-gates` with every sandbox's directory and socket in it (a gate that ran as root, or
    /// as another uid, made them), without following symbolic links.
    fn hand_over(&self, uid: u32) -> Result<(), GateError> {
        let own = |path: &Path| {
            std::os::unix::fs::lchown(path, Some(uid), Some(uid))
                .map_err(|e| GateError::io(format!("giving {} to uid {uid}", path.display()), e))
        };
        own(&self.dir)?;
        own(&self.settings.sockets_dir)?;
        let entries = |dir: &Path| -> Result<Vec<PathBuf>, GateError> {
            let list = std::fs::read_dir(dir)
                .and_then(|d| d.map(|e| e.map(|e| e.path())).collect())
                .map_err(|e| GateError::io(format!("reading {}", dir.display()), e));
            list
        };
        for sandbox_dir in entries(&self.settings.sockets_dir)? {
            own(&sandbox_dir)?;
            if std::fs::symlink_metadata(&sandbox_dir).is_ok_and(|m| m.is_dir()) {
                for socket in entries(&sandbox_dir)? {
                    own(&socket)?;
                }
            }
        }
        Ok(())
    }

    /// The socket `role`'s deployments reach the cluster by (its directory is what they get at
    /// `/run/postgresql`), its gate opened if it is not, admitting `branch` (a preview
    /// branch's role) from now on too; `sandbox` names it in the gate's log and refusals.
    ///
    /// # Errors
    /// Writing the table; the gate's, when it cannot bind the socket or does not answer (then
    /// it is started again first).
    pub(in crate::databases) async fn socket(
        &self,
        role: &str,
        sandbox: &str,
        branch: Option<String>,
    ) -> Result<PathBuf, GateError> {
        let mut table = self.table.lock().await;
        let before = table.get(role).cloned();
        let entry = table.entry(role.to_owned()).or_insert_with(|| GateEntry {
            sandbox: sandbox.to_owned(),
            branches: BTreeSet::new(),
        });
        entry.branches.extend(branch);
        if before.as_ref() != table.get(role) {
            if let Err(e) = self.publish(&table).await {
                match before {
                    Some(entry) => table.insert(role.to_owned(), entry),
                    None => table.remove(role),
                };
                return Err(e);
            }
        }
        Ok(self.settings.socket(role))
    }

    /// Closes `role`'s gate and has its directory removed (connections open through it stay
    /// until they end).
    ///
    /// # Errors
    /// As [`Gates::socket`].
    pub(in crate::databases) async fn close(&self, role: &str) -> Result<(), GateError> {
        let mut table = self.table.lock().await;
        if table.remove(role).is_some() {
            self.publish(&table).await?;
        }
        Ok(())
    }

    /// Has no gate admit `branch` (a preview branch's role, dropped with its deployment or
    /// after its database was swapped in) any more.
    ///
    /// # Errors
    /// As [`Gates::socket`].
    pub(in crate::databases) async fn forget_branch(&self, branch: &str) -> Result<(), GateError> {
        let mut table = self.table.lock().await;
        let mut admitted = false;
        for entry in table.values_mut() {
            admitted |= entry.branches.remove(branch);
        }
        if admitted {
            self.publish(&table).await?;
        }
        Ok(())
    }

    /// Replaces the table file with `table` and has the gate apply it; a gate that does not
    /// answer is started again (it reads the table at its start).
    async fn publish(&self, table: &BTreeMap<String, GateEntry>) -> Result<(), GateError> {
        let path = &self.settings.table;
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(table).expect("a table serializes");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| GateError::io(format!("writing {}", path.display()), e))?;
        match self.ask().await {
            Err(GateError::Unreachable { .. }) => {
                tracing::warn!("the database gate does not answer: starting it again");
                self.ensure_running().await
            }
            answered => answered,
        }
    }

    /// Connects to the control socket and reads the gate's answer to it.
    async fn ask(&self) -> Result<(), GateError> {
        let unreachable = |source| GateError::Unreachable {
            control: self.settings.control.clone(),
            log: self.log_file(),
            source,
        };
        let mut gate = tokio::net::UnixStream::connect(&self.settings.control)
            .await
            .map_err(unreachable)?;
        let mut answer = String::new();
        match tokio::time::timeout(ANSWER_TIMEOUT, gate.read_to_string(&mut answer)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(unreachable(e)),
            Err(_) => return Err(unreachable(std::io::ErrorKind::TimedOut.into())),
        }
        match answer.trim() {
            "ok" => Ok(()),
            "" => Err(unreachable(std::io::ErrorKind::UnexpectedEof.into())),
            failed => Err(GateError::Answered(failed.to_owned())),
        }
    }
}
