//! Standbys: for a sandbox that pushes, nxd keeps one deployment started ahead of its next
//! push (issue 20's fast path), so that a push runs its program without a unit start, a
//! network namespace, a `/data` mount or a bubblewrap sandbox of its own to wait for.
//!
//! A standby is a deployment in all but its record: an id, a slot (port, uid, address) kept
//! from every other push ([`Standbys::reserved`]), its directory (`/data`'s image, `/etc`), and
//! its unit `nx-<id>.service` running, under the limits of the push that made it, bubblewrap
//! around nx-vm-init `--exec-on-input` (the waiter), with an empty `/app`. A push that fits it
//! (a single static binary on the container backend, no database branch, volumes, TCP port,
//! service or port of its own, the limits, egress and tier of the push that made it: [`Fit`])
//! takes it: the record is written with the standby's id and slot, the binary is linked into
//! `/app`, the unit's launch spec is rewritten as a cold start's (so a restart runs the program
//! as any deployment's does), and the waiter gets the program's arguments and environment on
//! its FIFO ([`message`]) and execs it. Every other push starts cold, as before. After a push
//! that could take one, the sandbox's next standby is made in the background.
//!
//! nxd holds standbys in memory only: at start it removes what a previous run left (their
//! directories hold [`MARK`]); `nx sandbox rm` removes the sandbox's. `[sandbox] standby =
//! false` keeps none.

use crate::backend::{Program, SandboxBackend, SandboxSpec};
use crate::domain::Deployment;
use crate::domain::{BackendKind, Desired, Runtime};
use crate::error::Error;
use crate::names::{DeploymentId, SandboxName};
use crate::orchestrator::Orchestrator;
use crate::state::NewDeployment;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How long after a push its sandbox's next standby begins: a standby's start (systemd's,
/// bubblewrap's and the launcher's work, tens of milliseconds of CPU) would otherwise run
/// beside the push's answer and its deployment's first requests, on hosts of a few cores.
/// A push into the same sandbox sooner than this (plus the standby's start) starts cold.
pub(crate) const REFILL_AFTER: Duration = Duration::from_millis(100);
/// The most times a standby's state is asked once it started, until the supervisor's cache
/// keeps it (`Supervisor::keep_state`: 10 ms apart, so some 200 ms).
const KEEP_STATE_TRIES: u32 = 20;

/// The waiter's flag (nx-vm-init's `exec_on_input::FLAG`).
pub const WAITER_FLAG: &str = "--exec-on-input";

/// How long a push that found no free slot waits, in all, for the standbys being made that
/// hold a slot to be made and removed ([`Orchestrator::remove_standbys`]); a standby's making,
/// from its slot on, is a unit start, well under it.
pub const MADE_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// The file that marks a deployment's directory as a standby's, removed when a push takes it.
pub const MARK: &str = "standby";

/// The message that makes the waiter exec `argv` (`argv[0]` the program's path inside the
/// sandbox) with `env`: a decimal byte length and `\n`, then NUL-terminated fields: the number
/// of arguments, the arguments, and the environment's `KEY=value` entries (nx-vm-init's
/// `exec_on_input` reads it).
pub fn message(argv: &[String], env: &std::collections::BTreeMap<String, String>) -> Vec<u8> {
    let mut fields = Vec::new();
    let mut field = |bytes: &[u8]| {
        fields.extend_from_slice(bytes);
        fields.push(0);
    };
    field(argv.len().to_string().as_bytes());
    for arg in argv {
        field(arg.as_bytes());
    }
    for (k, v) in env {
        field(format!("{k}={v}").as_bytes());
    }
    let mut message = format!("{}\n", fields.len()).into_bytes();
    message.extend(fields);
    message
}

/// How long a standby's waiter may take to read its message ([`send`]); past it, its push
/// starts the deployment cold.
pub const SEND_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes `message` to the standby's FIFO at `fifo` without holding a runtime thread, within
/// [`SEND_WITHIN`] (review18 #8: a blocking write waited forever on a waiter that does not
/// read, once the message passed the pipe's buffer, 64 KiB: pipe(7)). Errors: `ENXIO` when
/// no launcher holds it open (the standby's unit is not running: fifo(7)), `TimedOut` when
/// the waiter did not read it all in time, a write's.
pub async fn send(fifo: &Path, message: &[u8]) -> std::io::Result<()> {
    let mut fifo = tokio::net::unix::pipe::OpenOptions::new().open_sender(fifo)?;
    tokio::time::timeout(SEND_WITHIN, fifo.write_all(message))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the waiter read no message within {} s",
                    SEND_WITHIN.as_secs()
                ),
            )
        })?
}

/// Makes a standby's empty `slot` directory (0755: the program's uid reads it) and its FIFO
/// `fifo` (0600, root's: the launcher opens it), and marks the directory above them as a
/// standby's ([`MARK`]). Returns `slot`.
pub fn lay_out(slot: &Path, fifo: &Path) -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(slot)?;
    std::fs::set_permissions(slot, std::fs::Permissions::from_mode(0o755))?;
    let _ = std::fs::remove_file(fifo);
    nix::unistd::mkfifo(fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    if let Some(dir) = slot.parent() {
        std::fs::write(dir.join(MARK), b"")?;
    }
    Ok(slot.to_owned())
}

/// What a push must match to take a standby: what its unit and sandbox were made with.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    pub limits: crate::config::Limits,
    pub egress: crate::domain::Egress,
    pub tier: crate::domain::Tier,
}

/// A standby: its deployment as it would be recorded (`artifact` empty), and what it fits.
#[derive(Debug, Clone)]
pub struct Standby {
    pub deployment: Deployment,
    pub fit: Fit,
}

/// nxd's standbys, by sandbox (at most one each), and the slots they hold.
#[derive(Debug, Default)]
pub struct Standbys {
    ready: Mutex<HashMap<SandboxName, Standby>>,
    /// Sandboxes whose standby is being made, each with whether it was removed meanwhile
    /// (`nx sandbox rm`, `nx sandbox set`, an adoption: what is made then goes, review18 #3).
    making: Mutex<HashMap<SandboxName, bool>>,
    /// The slots standbys hold, and the pushes that wait for them.
    slots: Mutex<Slots>,
    /// Deployments recorded from a standby whose program was not given to it yet.
    taken: Mutex<HashSet<DeploymentId>>,
    /// How many makings ([`Orchestrator::refill_standby`]) hold a slot, each from its
    /// reservation ([`Self::reserve`]) until what it made waits or was removed (review19 #2:
    /// counted from the making's start, a push waited for makings that held none, in
    /// [`REFILL_AFTER`]'s delay or queued on their sandbox's lock behind a backup).
    holding: tokio::sync::watch::Sender<usize>,
}

/// The slots of [`Standbys`].
#[derive(Debug, Default)]
struct Slots {
    /// The ports (slots) of standbys made or being made: a push's record takes none of them.
    held: HashSet<u16>,
    /// How many pushes found no free slot and wait for the standbys' ([`SlotWanted`]): while
    /// one waits, no standby takes a slot (newcomer19 N1: a refill took the slot a push had
    /// freed, and the push was refused while a standby held it).
    wanted: usize,
}

/// A push waits for a slot that standbys hold ([`Standbys::want_slot`]) while this lives.
pub struct SlotWanted<'a>(&'a Standbys);

impl Drop for SlotWanted<'_> {
    fn drop(&mut self) {
        self.0.slots.lock().expect("standbys").wanted -= 1;
    }
}

impl Standbys {
    /// The ports no push may take (see [`Self::reserve`]).
    pub fn reserved(&self) -> HashSet<u16> {
        self.slots.lock().expect("standbys").held.clone()
    }

    /// Holds `port` for a standby being made, which holds a slot from now on until it waits
    /// or was removed ([`Orchestrator::refill_standby`] says so); `false` (nothing held) while
    /// a push waits for a slot ([`Self::want_slot`]). Called under the deployments table's
    /// lock, as the port is chosen (`StateStore::reserve_port`).
    pub fn reserve(&self, port: u16) -> bool {
        let mut slots = self.slots.lock().expect("standbys");
        if slots.wanted > 0 {
            return false;
        }
        slots.held.insert(port);
        self.holding.send_modify(|n| *n += 1);
        true
    }

    /// Notes a push that found no free slot: until the guard is dropped, no standby takes one
    /// ([`Self::reserve`]).
    pub fn want_slot(&self) -> SlotWanted<'_> {
        self.slots.lock().expect("standbys").wanted += 1;
        SlotWanted(self)
    }

    /// A making that held a slot ([`Self::reserve`]) holds it no more as a making: what it
    /// made waits, or was removed.
    fn made(&self) {
        self.holding.send_modify(|n| *n -= 1);
    }

    /// Whether `sandbox`'s standby being made was removed meanwhile ([`Self::remove`],
    /// [`Self::remove_all`]): it is not to be made.
    fn removed_while_made(&self, sandbox: &SandboxName) -> bool {
        self.making
            .lock()
            .expect("standbys")
            .get(sandbox)
            .copied()
            .unwrap_or(true)
    }

    /// Frees `port` (its standby was removed, or its push recorded).
    pub fn release(&self, port: u16) {
        self.slots.lock().expect("standbys").held.remove(&port);
    }

    /// Marks `sandbox`'s standby as being made for pushes that `fit` matches. `None`: none is
    /// to be made (one is being made, or one made for `fit` waits); else the one that waits
    /// for other choices (`nx sandbox set` since, a push with its own limits), taken out for
    /// the caller to remove.
    pub fn begin_making(&self, sandbox: &SandboxName, fit: &Fit) -> Option<Option<Standby>> {
        let mut ready = self.ready.lock().expect("standbys");
        let mut making = self.making.lock().expect("standbys");
        if making.contains_key(sandbox) || ready.get(sandbox).is_some_and(|s| s.fit == *fit) {
            return None;
        }
        making.insert(sandbox.clone(), false);
        Some(ready.remove(sandbox))
    }

    /// Ends [`Self::begin_making`]: `made` is the standby now waiting, if making it worked.
    /// Returns it when its sandbox's standby was removed meanwhile: the caller removes it.
    pub fn end_making(&self, sandbox: &SandboxName, made: Option<Standby>) -> Option<Standby> {
        let mut ready = self.ready.lock().expect("standbys");
        let removed = self
            .making
            .lock()
            .expect("standbys")
            .remove(sandbox)
            .unwrap_or(true);
        match made {
            Some(standby) if !removed => {
                ready.insert(sandbox.clone(), standby);
                None
            }
            made => made,
        }
    }

    /// Takes `sandbox`'s standby when it has one that `fit` matches.
    pub fn take(&self, sandbox: &SandboxName, fit: &Fit) -> Option<Standby> {
        let mut ready = self.ready.lock().expect("standbys");
        match ready.get(sandbox) {
            Some(standby) if standby.fit == *fit => ready.remove(sandbox),
            _ => None,
        }
    }

    /// Puts back a standby a push took (see [`Self::take`]); returns it when its sandbox has
    /// another one waiting or being made meanwhile: the caller removes it.
    pub fn put_back(&self, standby: Standby) -> Option<Standby> {
        let mut ready = self.ready.lock().expect("standbys");
        let sandbox = &standby.deployment.sandbox;
        if ready.contains_key(sandbox)
            || self.making.lock().expect("standbys").contains_key(sandbox)
        {
            return Some(standby);
        }
        ready.insert(sandbox.clone(), standby);
        None
    }

    /// Takes `sandbox`'s standby, whatever it fits (to remove it).
    pub fn remove(&self, sandbox: &SandboxName) -> Option<Standby> {
        let mut ready = self.ready.lock().expect("standbys");
        if let Some(removed) = self.making.lock().expect("standbys").get_mut(sandbox) {
            *removed = true;
        }
        ready.remove(sandbox)
    }

    /// Every standby, taken (to remove them all).
    pub fn remove_all(&self) -> Vec<Standby> {
        let mut ready = self.ready.lock().expect("standbys");
        for removed in self.making.lock().expect("standbys").values_mut() {
            *removed = true;
        }
        ready.drain().map(|(_, s)| s).collect()
    }

    /// Notes that deployment `id`, recorded from a standby, is to be given its program.
    pub fn taken_by(&self, id: &DeploymentId) {
        self.taken.lock().expect("standbys").insert(id.clone());
    }

    /// Whether deployment `id` was recorded from a standby that has not been given its
    /// program yet (asked once: it is forgotten here).
    pub fn taken(&self, id: &DeploymentId) -> bool {
        self.taken.lock().expect("standbys").remove(id)
    }
}

impl Orchestrator {
    /// Whether a push of `program` with `req`'s choices on `backend` can take a standby (the
    /// one its [`Fit`] matches): a single static binary on the container backend with no
    /// database branch, volume, TCP port, service, port of its own or runtime but bubblewrap.
    /// Only such a push makes its sandbox's next standby ([`Self::refill_standby`]).
    pub(crate) fn takes_standbys(
        req: &crate::api::PushRequest,
        program: &Program,
        backend: BackendKind,
    ) -> bool {
        let single_static = matches!(
            program,
            Program::Binary {
                linkage: nx_artifact::verify::Linkage::Static,
                ..
            }
        );
        let plain = !req.db_branch
            && req.volumes.is_empty()
            && req.tcp.is_none()
            && req.service.is_none()
            && req.port.is_none()
            && req.runtime == Runtime::default();
        single_static && plain && backend == BackendKind::Container
    }

    /// After a push that [`Self::takes_standbys`], with its `fit` (its limits held to the
    /// host's bounds): makes `sandbox`'s next standby for pushes like it in the background,
    /// [`REFILL_AFTER`] from now,
    /// when nxd keeps standbys (`[sandbox] standby`, and nx-vm-init at `[microvm] init`) and
    /// the sandbox has none for `fit`; one made for other choices goes (review18 #7: it was
    /// made after every push, with the sandbox's default limits unchecked, and pushes with
    /// their own limits, images or ports never took it).
    pub(crate) fn refill_standby(self: &Arc<Self>, sandbox: &SandboxName, fit: Fit) {
        if !self.config.sandbox.standby || !self.config.microvm.init.is_file() {
            return;
        }
        let Some(stale) = self.standbys.begin_making(sandbox, &fit) else {
            return;
        };
        let (app, sandbox) = (Arc::clone(self), sandbox.clone());
        tokio::spawn(async move {
            if let Some(stale) = stale {
                app.remove_standby(&stale).await;
            }
            tokio::time::sleep(REFILL_AFTER).await;
            let made = match app.make_standby(&sandbox, fit).await {
                Ok(standby) => standby,
                Err(e) => {
                    tracing::warn!(%sandbox, error = %e, "no standby: its next push starts cold");
                    None
                }
            };
            let unit = made
                .as_ref()
                .map(|s| SandboxBackend::handle(&*app.backend, &s.deployment).unit);
            if let Some(removed) = app.standbys.end_making(&sandbox, made) {
                app.remove_standby(&removed).await;
            }
            if let Some(unit) = unit {
                app.standbys.made();
                app.keep_standby_state(&unit).await;
            }
        });
    }

    /// Asks a standby's unit's state, off any push's time, until the supervisor's cache keeps
    /// it (there until systemd says the unit changed): the push that takes the standby reads
    /// its restarts there, and so does that push's view (`Orchestrator::claim_or_start`).
    async fn keep_standby_state(&self, unit: &str) {
        match self.supervisor.keep_state(unit, KEEP_STATE_TRIES).await {
            Ok(true) => {}
            Ok(false) => tracing::debug!(%unit, "a standby's state not kept: its push asks it"),
            Err(e) => tracing::debug!(%unit, error = %e, "a standby's state not asked"),
        }
    }

    /// A standby of `sandbox` for pushes that `fit` matches (see the module's docs), its unit
    /// started; `None` for a sandbox being removed or gone, a standby removed while it
    /// waited for its sandbox's lock, before it took a slot, or one begun while a push waits
    /// for a slot ([`Standbys::want_slot`]). Fail point `standby::queued`
    /// ([`crate::failpoint::wait`]s before that lock, as behind a backup that holds it).
    /// Errors: those of the reservation (no slot left) and of the start, whose slot is
    /// freed.
    #[tracing::instrument(skip(self))]
    async fn make_standby(
        &self,
        sandbox: &SandboxName,
        fit: Fit,
    ) -> Result<Option<Standby>, Error> {
        // Under its sandbox's lock, as `nx sandbox rm`: a removal waits for the making and
        // finds the standby (review18 #4: one made meanwhile opened the sandbox's database
        // gate again once the removal had closed it, and kept it open), and none is made once
        // the sandbox is marked removed.
        crate::failpoint::wait("standby::queued").await;
        let _lock = self
            .sandbox_locks
            .lock(sandbox, crate::sandbox_locks::SandboxWork::Standby)
            .await;
        // Gone, too: a making begun after the removal finished (`REFILL_AFTER`). Removed
        // while it waited (a push that found no free slot, `nx sandbox set`): it takes no slot
        // and starts no unit only to be removed (review19 #2).
        if self.standbys.removed_while_made(sandbox) || !self.state.is_live(sandbox).await? {
            return Ok(None);
        }
        let backend = BackendKind::Container;
        let ports = self.config.ports;
        let Some(port) = self.state.reserve_port(ports, &self.standbys).await? else {
            return Ok(None);
        };
        let deployment = NewDeployment {
            id: DeploymentId::generate(),
            sandbox: sandbox.clone(),
            artifact: String::new(),
            env: Default::default(),
            args: Vec::new(),
            limits: fit.limits,
            db_branch: false,
            runtime: Runtime::default(),
            backend,
            ready_timeout_secs: None,
            listen_port: None,
            egress: fit.egress,
            volumes: Vec::new(),
            tier: fit.tier,
        }
        .at(
            port,
            self.config.sandbox.uid_base + u32::from(port - ports.start),
        );
        let standby = Standby { deployment, fit };
        let started = self.start_standby(&standby).await;
        if started.is_err() {
            self.remove_standby(&standby).await;
            self.standbys.made();
        }
        started.map(|()| Some(standby))
    }

    /// Lays out a standby and starts its unit. Fail point `standby::making`
    /// ([`crate::failpoint::wait`]s before its database gate and directory are made).
    async fn start_standby(&self, standby: &Standby) -> Result<(), Error> {
        crate::failpoint::wait("standby::making").await;
        let deployment = &standby.deployment;
        let waiter = crate::launcher_install::install_waiter(
            &self.config.state_dir,
            &self.config.microvm.init,
        )?;
        let spec = SandboxSpec {
            deployment: deployment.clone(),
            program: Program::Binary {
                path: waiter,
                linkage: nx_artifact::verify::Linkage::Static,
            },
            env: Default::default(),
            args: Vec::new(),
            database_socket: Some(
                self.databases
                    .sandbox_socket(&deployment.sandbox, None)
                    .await?,
            ),
            network: self.attachment(deployment)?,
            volumes: Vec::new(),
        };
        let backend = self.backend.get(deployment.backend)?;
        let handle = backend.prepare_standby(&spec).await?;
        backend.start(&handle, &spec).await?;
        Ok(())
    }

    /// Stops and removes a standby's unit, directory and link, and frees its slot; what fails
    /// is logged (nxd's next start removes what is left: [`Self::sweep_standbys`]).
    pub(crate) async fn remove_standby(&self, standby: &Standby) {
        let deployment = &standby.deployment;
        match self.destroy(deployment).await {
            Ok(()) => self.standbys.release(deployment.port),
            Err(e) => tracing::warn!(
                deployment = %deployment.id,
                error = %e,
                "a standby is left: nxd's next start removes it"
            ),
        }
    }

    /// Puts back a standby that a push took and could not record (`sandbox.max_deployments`,
    /// a removal), for the next push (review18 #7: it was removed, and none made again);
    /// removed instead when its sandbox is being removed or has another one meanwhile.
    pub(crate) async fn put_back_standby(&self, standby: Standby) {
        let sandbox = standby.deployment.sandbox.clone();
        if let Some(left) = self.standbys.put_back(standby) {
            self.remove_standby(&left).await;
        } else if !self.state.is_live(&sandbox).await.unwrap_or(false) {
            // Marked before this look: `nx sandbox rm` found no standby to remove.
            self.drop_standby(&sandbox).await;
        }
    }

    /// Removes every standby, for a push that found no free slot and waits for one
    /// ([`Standbys::want_slot`]): those that wait, then those being made that hold a slot,
    /// once made (review18 #9: their slots stayed taken, and the push failed for want of one),
    /// waiting until `until` for them; those being made that hold none yet take none
    /// ([`Self::make_standby`]). Returns whether standbys held slots and have let them go:
    /// the push records again.
    pub(crate) async fn remove_standbys(&self, until: tokio::time::Instant) -> bool {
        let removed = self.standbys.remove_all();
        let mut freed = !removed.is_empty();
        for standby in removed {
            self.remove_standby(&standby).await;
        }
        let mut holding = self.standbys.holding.subscribe();
        freed |= *holding.borrow_and_update() > 0;
        if tokio::time::timeout_at(until, holding.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            tracing::warn!("standbys still being made hold their slots");
            return false;
        }
        freed
    }

    /// Removes `sandbox`'s standby, if it has one (`nx sandbox rm`).
    pub(crate) async fn drop_standby(&self, sandbox: &SandboxName) {
        if let Some(standby) = self.standbys.remove(sandbox) {
            self.remove_standby(&standby).await;
        }
    }

    /// At each adoption: removes every standby, those nxd holds and those a previous run left
    /// (a directory marked [`MARK`]): the unit is stopped, and the directory removed unless a
    /// push recorded it as its deployment (a crash before it was given its program: adoption
    /// then starts it cold).
    pub(crate) async fn sweep_standbys(&self, recorded: &HashSet<String>) {
        for standby in self.standbys.remove_all() {
            self.remove_standby(&standby).await;
        }
        let root = self.config.state_dir.join("deployments");
        let Ok(dirs) = std::fs::read_dir(&root) else {
            return;
        };
        for dir in dirs.flatten().map(|d| d.path()) {
            let Some(id) = dir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            if !dir.join(MARK).exists() {
                continue;
            }
            let removed = async {
                let unit = crate::domain::unit_name(&DeploymentId::parse(&id)?);
                self.supervisor.stop(&unit).await?;
                match recorded.contains(&id) {
                    true => std::fs::remove_file(dir.join(MARK)),
                    false => std::fs::remove_dir_all(&dir),
                }
                .map_err(|e| Error::Setup(format!("removing {}: {e}", dir.display())))
            };
            // Best effort: nxd starts whatever is left (review18 #7); the next start tries
            // again.
            match removed.await {
                Ok(()) => tracing::info!(deployment = %id, "a standby of nxd's last run removed"),
                Err(e) => {
                    tracing::warn!(deployment = %id, error = %e, "a standby of nxd's last run is left")
                }
            }
        }
    }
}

impl NewDeployment {
    /// The deployment this would be recorded as, at `port` with `uid`, marked running.
    pub fn at(self, port: u16, uid: u32) -> Deployment {
        Deployment {
            id: self.id,
            sandbox: self.sandbox,
            artifact: self.artifact,
            port,
            listen_port: self.listen_port,
            egress: self.egress,
            uid,
            env: self.env,
            args: self.args,
            limits: self.limits,
            desired: Desired::Running,
            db_branch: self.db_branch,
            runtime: self.runtime,
            backend: self.backend,
            ready_timeout_secs: self.ready_timeout_secs,
            volumes: self.volumes,
            tier: self.tier,
            created_at: chrono::Utc::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_message_is_its_length_then_nul_terminated_fields() {
        let env = std::collections::BTreeMap::from([("PORT".to_owned(), "8080".to_owned())]);
        let message = super::message(&["/app/main".to_owned(), "a b".to_owned()], &env);
        assert_eq!(message, b"26\n2\0/app/main\0a b\0PORT=8080\0");
    }
}
