//! The lifecycle of deployments: push, start, stop, remove, promote, rollback, and adoption of
//! what is already running when nxd starts. Each step runs in a tracing span.

use crate::access::{SshKeyStore, TokenStore};
use crate::api::access::SandboxSettings;
use crate::api::checks::{self, RequestBounds};
use crate::api::health;
use crate::api::{DeploymentView, PushRequest, SandboxRemoved, SandboxView};
use crate::artifact::owners::StoreView;
use crate::artifact::Artifact;
use crate::artifact::{ArtifactStore, BundleStore, StoreError};
use crate::backend::data_disk::DataTemplates;
use crate::backend::launch_times::{self, LaunchTimes};
use crate::backend::{
    Backends, Program, SandboxBackend, SandboxSpec, DEFAULT_STOP_TIMEOUT, MAX_STOP_TIMEOUT,
};
use crate::config::Config;
use crate::databases::{Databases, RestoreInfo};
use crate::domain::{BackendKind, Deployment, Desired, RouteKey, Runtime};
use crate::error::Error;
use crate::metrics::Operation;
use crate::names::{DeploymentId, SandboxName};
use crate::network::host::HostNetwork;
use crate::pushes::{Left, Pushing};
use crate::router::{self, RouterClient};
use crate::sandbox_locks::{SandboxGuard, SandboxWork};
use crate::sandbox_settings;
use crate::state::StateError;
use crate::state::{NewDeployment, Slot, StateStore};
use crate::state_machine::{self, Effects, Phase, Verb};
use crate::supervisor::{Supervisor, UNITS_IN_FLIGHT};
use crate::tasks::Tasks;
use crate::timing::step;
use crate::upkeep::ResolvedHealthCheck;
use crate::{embedded_db, host_limits, readiness};
use futures_util::{stream, FutureExt, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long a route change waits for a (re)starting router.
const ROUTER_PATIENCE: Duration = Duration::from_secs(10);
/// Log lines returned with a failed push.
const FAILURE_LOG_LINES: usize = 20;

/// The NX lifecycle on one host: an embedder constructs it from a [`Config`] with
/// [`Orchestrator::start`] (which also adopts what already runs) and calls its verbs; each
/// returns an [`Error`] in the domain's terms.
pub struct Orchestrator {
    pub config: Config,
    pub artifacts: ArtifactStore,
    /// Bundles and their files (`nx push ./dir`).
    pub bundles: BundleStore,
    pub router: RouterClient,
    pub databases: Databases,
    pub(crate) state: StateStore,
    pub(crate) backend: Arc<Backends>,
    /// The events nxd counts for `GET /metrics` (see `metrics`).
    pub metrics: crate::metrics::Metrics,
    pub tasks: Tasks,
    /// Deploy tokens (`nx token`).
    pub tokens: TokenStore,
    /// The public keys that may upload to each sandbox over SFTP (`nx keys`).
    pub ssh_keys: SshKeyStore,
    /// The host side of the deployments' network namespaces.
    network: HostNetwork,
    /// What the firewall's TCP port map and service pairs set were last loaded with.
    pub(crate) firewall_elements: crate::network::firewall::LoadedElements,
    /// The sandboxes' services and the service pairs, as the routes last published them.
    pub(crate) services: crate::services::Published,
    /// What deployments' monitors wrote, as views last read it.
    monitor_files: crate::backend::monitor_files::MonitorFilesCache,
    /// `nx ls` as last serialized, kept while nothing it shows changed.
    list_cache: crate::list_cache::ListCache,
    /// What each artifact runs as, by sha256 (inspecting means reading the whole file).
    pub(crate) programs: std::sync::Mutex<HashMap<String, Program>>,
    /// Serialises changes of desired state and routes, so that the route table always matches
    /// the database (shared with the task that sends a push's preview route, `route_preview`).
    pub(crate) changes: Arc<tokio::sync::Mutex<()>>,
    pub(crate) supervisor: Arc<Supervisor>,
    /// Whether PostgreSQL is the embedded cluster (started again with the manager).
    pub(crate) embedded_db: bool,
    /// What the manager's watchdog found wrong, while it is wrong (see `watchdog`).
    pub(crate) problem: std::sync::Mutex<Option<String>>,
    /// The ACME client, when `[tls]` has HTTPS and ACME on.
    pub certificates: Option<Arc<crate::tls::acme::Acme>>,
    /// What nxd does on its own: health checks, idle stops and wakes, expiry (see `upkeep`).
    pub(crate) upkeep: crate::upkeep::UpkeepState,
    /// The empty filesystems (one per size) that containers' `/data` and volumes are copied
    /// from (`<state_dir>/data-templates`).
    pub(crate) data_templates: Arc<DataTemplates>,
    /// One lock per sandbox for the work that touches its volumes (`sandbox_locks`).
    pub sandbox_locks: crate::sandbox_locks::SandboxLocks,
    /// The room in the store that each owner's uploads under way reserved (attacker s12 M4).
    pub(crate) store_reservations: crate::artifact::owners::Reservations,
    /// The pushes under way: nothing but its push acts on their deployments (`pushes`).
    pub(crate) pushes: crate::pushes::Pushes,
    /// Deployments started ahead of their push (see `standby`).
    pub(crate) standbys: crate::standby::Standbys,
    /// What the deployments' logs may still write, as last looked at (see `log_room`).
    log_room: crate::log_room::LogRoom,
}

impl Orchestrator {
    #[tracing::instrument(skip_all, fields(state_dir = %config.state_dir.display()))]
    pub async fn start(config: Config) -> Result<Arc<Self>, Error> {
        let state_dir = &config.state_dir;
        std::fs::create_dir_all(state_dir).map_err(Error::io(format_args!(
            "cannot create state_dir {}",
            state_dir.display()
        )))?;
        std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o711)).map_err(
            Error::io(format_args!(
                "cannot set the mode of {}",
                state_dir.display()
            )),
        )?;
        // Every refusal before anything of the host changes: `conntrack`, then the manager's
        // (the cgroup hierarchies, the state dir), which `Supervisor::connect` checks before it
        // starts or adopts one; `nx0` and the firewall after it (a refused start had left them
        // until `nxd manager-stop`).
        let claim = HostNetwork::check(state_dir).await?;
        let supervisor = Arc::new(
            Supervisor::connect(config.systemd.mode, state_dir, &config.systemd.slice).await?,
        );
        let slots = u32::from(config.ports.end - config.ports.start) + 1;
        let network = HostNetwork::start(claim, &config.network, slots, state_dir).await?;
        crate::backend::pts_mount::size_host_pool(slots);
        if let Err(e) = supervisor
            .configure_slices(host_limits::slice_caps(&config.systemd))
            .await
        {
            // The host's systemd may not let nxd's user change slices: there they are declared
            // with the same values (the NixOS module does).
            tracing::warn!(error = %e, "the slices keep their declared settings");
        }
        let installed = crate::launcher_install::install(state_dir)?;
        let launcher = installed.launcher.clone();
        let dbs = &config.databases;
        let embedded = if config.database_url.is_none() || dbs.admin_url.is_none() {
            Some(
                embedded_db::ensure(&supervisor, state_dir, dbs, &launcher, config.logs.keep)
                    .await?,
            )
        } else {
            None
        };
        let from_embedded = |what: &str| {
            embedded
                .as_ref()
                .map(|e| (e.url.clone(), e.socket_dir.clone()))
                .ok_or_else(|| Error::Setup(format!("no {what} and no embedded cluster")))
        };
        let state_url = match (&config.database_url, &embedded) {
            (Some(url), _) => url.clone(),
            (None, Some(e)) => e.state_url.clone(),
            (None, None) => from_embedded("database_url")?.0,
        };
        let (admin_url, socket_dir) = match (&dbs.admin_url, &dbs.socket_dir) {
            (Some(url), Some(dir)) => (url.clone(), dir.clone()),
            _ => from_embedded("databases.admin_url")?,
        };
        let state = StateStore::connect(&state_url).await?;
        let pool = state.pool().clone();
        let databases = Databases::connect(
            &admin_url,
            &socket_dir,
            state_dir,
            dbs,
            Arc::clone(&supervisor),
            launcher.clone(),
            config.logs.keep,
        )
        .await?;
        let artifacts = ArtifactStore::open(
            &state_dir.join("artifacts"),
            nx_artifact::MAX_ARTIFACT_BYTES,
            config.store.max_image_unpacked_mb.saturating_mul(1 << 20),
        )?;
        let bundles = BundleStore::open(state_dir, config.bundles.limits(), artifacts.holds())?;
        let data_templates = Arc::new(
            DataTemplates::new(state_dir.join("data-templates"))
                .map_err(Error::io("creating the data templates' directory"))?,
        );
        let backend = make_backends(
            &config,
            Arc::clone(&supervisor),
            launcher.clone(),
            Arc::clone(&data_templates),
        )
        .await?;
        let router = router::unit::ensure_running(
            &supervisor,
            &installed,
            &router::settings(&config),
            config.logs.keep,
        )
        .await?;
        let certificates = config
            .tls
            .acme_enabled()
            .then(|| crate::tls::acme::Acme::start(&config.tls, state_dir, router.clone()))
            .transpose()
            .map_err(|e| Error::Setup(e.to_string()))?;
        let guest_pool_size = match backend.get(BackendKind::Microvm) {
            Ok(_) => config.microvm.pool_size,
            Err(_) => 0,
        };
        let metrics = crate::metrics::Metrics::default();
        let tasks = Tasks::start(
            Arc::clone(&supervisor),
            backend.clone(),
            launcher,
            &config.tasks,
            guest_pool_size,
            metrics.task_steps(),
        )
        .await?;
        let app = Arc::new(Self {
            router,
            config,
            artifacts,
            bundles,
            databases,
            state,
            backend,
            tasks,
            tokens: TokenStore::new(pool.clone()),
            ssh_keys: SshKeyStore::new(pool.clone()),
            network,
            firewall_elements: Default::default(),
            services: Default::default(),
            monitor_files: Default::default(),
            list_cache: Default::default(),
            programs: std::sync::Mutex::new(HashMap::new()),
            changes: Arc::new(tokio::sync::Mutex::new(())),
            supervisor,
            embedded_db: embedded.is_some(),
            problem: std::sync::Mutex::new(None),
            certificates,
            metrics,
            upkeep: crate::upkeep::UpkeepState::default(),
            data_templates,
            sandbox_locks: Default::default(),
            store_reservations: Default::default(),
            pushes: Default::default(),
            standbys: Default::default(),
            log_room: Default::default(),
        });
        // Only here: the watchdog's re-adoption runs while volume work may be under way.
        app.recover_promotions().await?;
        app.reconcile_volumes().await?;
        app.finish_removals().await?;
        app.adopt(false).await?;
        app.keep_up()?;
        app.schedule_backups();
        app.collect_unused_content();
        app.watch_manager();
        app.watch_tenant_backends();
        Ok(app)
    }

    /// The routes come back from the database at once. Then every deployment that should run
    /// goes through `Start`: one that runs is adopted as it is, one that does not is started
    /// again; [`UNITS_IN_FLIGHT`] at a time, in the background and outside the change lock, so
    /// the API answers while they start, however many there are. `manager_lost`: the
    /// watchdog's re-adoption after the systemd manager died, which killed every program with
    /// it: each one started again says so in `nx status` and its log ([`Self::note_manager_loss`]).
    #[tracing::instrument(skip_all)]
    pub(crate) async fn adopt(self: &Arc<Self>, manager_lost: bool) -> Result<(), Error> {
        {
            let _guard = self.changes.lock().await;
            let branches: Vec<(DeploymentId, SandboxName)> = self
                .state
                .deployments()
                .await?
                .into_iter()
                .filter(|d| d.db_branch)
                .map(|d| (d.id, d.sandbox))
                .collect();
            let recovered = self.databases.recover(&branches).await?;
            for id in &recovered.swapped {
                // Its branch is production's database now: it reconnects with production's role.
                self.state.clear_db_branch(id).await?;
                let deployment = self.state.deployment(id).await?;
                self.backend
                    .stop(&self.backend.handle(&deployment), DEFAULT_STOP_TIMEOUT)
                    .await?;
            }
            // Off the start's path: a drop may wait ~35 s for sessions to end (review17 #9).
            let app = Arc::clone(self);
            tokio::spawn(async move {
                app.databases
                    .drop_left_from_before(recovered.leftovers)
                    .await;
            });
            let renamed = self
                .databases
                .rename_legacy(&self.state.sandbox_names().await?)
                .await?;
            for deployment in self.state.deployments().await? {
                // Its credentials name the old role and database: it restarts with the new
                // ones (adoption below starts what is not running).
                if renamed.contains(&deployment.sandbox) && !deployment.db_branch {
                    self.backend
                        .stop(&self.backend.handle(&deployment), DEFAULT_STOP_TIMEOUT)
                        .await?;
                }
            }
            let known = self
                .state
                .deployments()
                .await?
                .iter()
                .map(|d| d.id.to_string())
                .collect();
            self.sweep_standbys(&known).await;
            // Links and the firewall table as the deployments in the database need them.
            self.network.reconcile(&known).await?;
            self.rebuild_routes().await?;
        }
        let to_run: Vec<Deployment> = self
            .state
            .deployments()
            .await?
            .into_iter()
            .filter(|d| d.desired == Desired::Running)
            .collect();
        // Running deployments reach their database through their sandbox's gate, whose
        // socket this process binds again in the directory they have at /run/postgresql.
        for deployment in &to_run {
            self.databases
                .sandbox_socket(
                    &deployment.sandbox,
                    deployment.db_branch.then_some(&deployment.id),
                )
                .await?;
        }
        let app = Arc::clone(self);
        tokio::spawn(async move {
            let adoptions = to_run.into_iter().map(|deployment| {
                let app = Arc::clone(&app);
                async move { app.adopt_one(&deployment, manager_lost).await }
            });
            stream::iter(adoptions)
                .buffer_unordered(UNITS_IN_FLIGHT)
                .for_each(|()| async {})
                .await;
        });
        Ok(())
    }

    /// One deployment's adoption: `Start` from the phase systemd reports; errors are logged
    /// (the deployment shows as failed in `nx ls`).
    #[tracing::instrument(skip_all, fields(deployment = %deployment.id))]
    async fn adopt_one(&self, deployment: &Deployment, manager_lost: bool) {
        let adopted = async {
            // Not in the middle of a restore's or a promotion's stop and start (the watchdog
            // re-adopts while they may run): after them, as they left it.
            let (deployment, _lock) = self.locked_deployment(&deployment.id, "start").await?;
            // Its push starts it (the watchdog re-adopts while pushes run).
            if deployment.desired != Desired::Running || self.pushes.under_way(&deployment.id) {
                return Ok((Phase::Stopped, Phase::Stopped));
            }
            let phase = self.phase(&deployment).await?;
            if manager_lost && phase != Phase::Running {
                self.note_manager_loss(&deployment);
            }
            // Adopted as it runs: its routes as its start made them (see `restore_routes`).
            if phase == Phase::Running {
                let attachment = self.attachment(&deployment)?;
                if !self.network.restore_routes(&attachment).await? {
                    tracing::error!(link = %attachment.link, "its link is gone, so nothing reaches it: `nx stop` and `nx start` it (or push and promote another for production)");
                }
            }
            self.apply(&deployment, phase, Verb::Start, Route::None)
                .await
                .map(|now| (phase, now))
        };
        match adopted.await {
            Ok((before, now)) => tracing::info!(%before, %now, "adopted"),
            Err(e) => tracing::error!(error = %e, "could not restart"),
        }
    }

    /// Records that a deployment's program was killed with the host's systemd manager and is
    /// started again (tester s22 F1: it came back with no trace, RESTARTS 0 and no last exit):
    /// as its last exit (`nx status`), written where its monitor would have written it had it
    /// not been killed too, and as a line in its log (`nx logs`).
    fn note_manager_loss(&self, deployment: &Deployment) {
        const LOST: &str =
            "nxd: started again after the host's systemd manager was lost (its program was killed with it)";
        let handle = self.backend.handle(deployment);
        let exit = crate::api::LastExit {
            at: chrono::Utc::now(),
            result: "signal".into(),
            exit_code: None,
            signal: Some(nix::libc::SIGKILL),
            message: LOST.into(),
        };
        let written = serde_json::to_vec(&exit)
            .map_err(std::io::Error::other)
            .and_then(|json| {
                crate::backend::monitor::write_atomically(
                    &handle.dir.join(crate::backend::exit::LAST_EXIT_FILE),
                    &json,
                )
            });
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot record its end with the systemd manager");
        }
        crate::logs::append_note(&handle.log_file(), LOST);
    }

    /// Routes from the database: a preview route per running deployment, a production route
    /// per promoted one.
    pub(crate) async fn rebuild_routes(&self) -> Result<(), Error> {
        let (deployments, promoted) =
            tokio::try_join!(self.state.deployments(), self.state.promoted())?;
        // An idle deployment keeps its routes, marked for the router to wake it.
        let mut running: HashMap<&DeploymentId, SocketAddr> = HashMap::new();
        for d in deployments
            .iter()
            .filter(|d| matches!(d.desired, Desired::Running | Desired::Idle))
        {
            running.insert(&d.id, self.upstream(d)?);
        }
        // TCP deployments are reached through their host ports, not the router.
        let ((), tcp, domains) = tokio::try_join!(
            self.publish_services(&deployments, &promoted, &running),
            self.publish_tcp(&promoted, &running),
            self.domain_rows(),
        )?;
        running.retain(|id, _| !tcp.contains(*id));
        let keys: Vec<(RouteKey, &DeploymentId, SocketAddr)> = deployments
            .iter()
            .filter_map(|d| running.get(&d.id).map(|addr| (d, *addr)))
            .map(|(d, addr)| {
                (
                    RouteKey::Preview(d.sandbox.clone(), d.id.clone()),
                    &d.id,
                    addr,
                )
            })
            .chain(promoted.iter().filter_map(|(sandbox, id)| {
                running
                    .get(id)
                    .map(|addr| (RouteKey::Production(sandbox.clone()), id, *addr))
            }))
            .collect();
        let mut table = router::table(
            &self.config.base_domain,
            keys.iter().map(|(key, id, addr)| (key, id.as_str(), *addr)),
        );
        let custom = crate::custom_domains::routes(&table, &domains, &self.config.base_domain);
        table.routes.extend(custom);
        let idle: Vec<&str> = deployments
            .iter()
            .filter(|d| d.desired == Desired::Idle)
            .map(|d| d.id.as_str())
            .collect();
        for route in &mut table.routes {
            route.idle = idle.contains(&route.deployment.as_str());
        }
        table.routes.extend(crate::tls::api_route(&self.config));
        self.router.replace(&table, ROUTER_PATIENCE).await?;
        if let Some(acme) = &self.certificates {
            acme.want(crate::tls::certificate_names(
                &table,
                &self.config.base_domain,
            ));
        }
        Ok(())
    }

    /// Backs up every sandbox's database every `databases.backup_interval_secs`.
    fn schedule_backups(self: &Arc<Self>) {
        let every = self.config.databases.backup_interval_secs;
        if every == 0 {
            return;
        }
        let app = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(every));
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(app) = app.upgrade() else { return };
                let (Ok(names), Ok(removing)) = (
                    app.state.sandbox_names().await,
                    app.state.removing_sandboxes().await,
                ) else {
                    continue;
                };
                // A backup provisions the database again: not of one being dropped.
                let removing: Vec<SandboxName> = removing.into_iter().map(|(n, _)| n).collect();
                for name in names.into_iter().filter(|n| !removing.contains(n)) {
                    if let Err(e) = app.databases.backup(&name).await {
                        tracing::error!(sandbox = %name, error = %e, "scheduled backup failed");
                    }
                }
            }
        });
    }

    /// What a stored artifact runs as: a binary (and its linkage) or an image (and its id).
    pub async fn program(&self, sha256: &str) -> Result<Program, Error> {
        if let Some(program) = self.programs.lock().expect("lock").get(sha256) {
            return Ok(program.clone());
        }
        if let Some(bundle) = self.bundles.find(sha256)? {
            let program = Program::Bundle {
                root: bundle.root,
                manifest: bundle.manifest,
                linkage: bundle.linkage,
            };
            self.programs
                .lock()
                .expect("lock")
                .insert(sha256.to_owned(), program.clone());
            return Ok(program);
        }
        let path = self.artifacts.path(sha256)?;
        let artifact = (self.artifacts.inspect(&path).await).map_err(|e| match e {
            StoreError::Io(e) if e.kind() == std::io::ErrorKind::NotFound => {
                crate::store_access::artifact_not_stored(sha256)
            }
            StoreError::Io(e) => Error::Io {
                what: format!("reading artifact {sha256}"),
                source: e,
            },
            e => e.into(),
        })?;
        let program = match artifact {
            Artifact::Binary(elf) => Program::Binary {
                path,
                linkage: elf.linkage,
            },
            Artifact::Image(image) => Program::Image {
                archive: path,
                image_id: image.id,
                unpacked_bytes: image.unpacked_bytes,
            },
        };
        self.programs
            .lock()
            .expect("lock")
            .insert(sha256.to_owned(), program.clone());
        Ok(program)
    }

    /// A deployment's network: its slot's address in the half of its egress.
    pub(crate) fn attachment(
        &self,
        deployment: &Deployment,
    ) -> Result<crate::network::Attachment, Error> {
        let slot = u32::from(deployment.port.saturating_sub(self.config.ports.start));
        Ok(self
            .network
            .plan()
            .attachment(deployment.id.as_str(), slot, deployment.egress)?)
    }

    /// Where the router and the readiness probe reach a deployment: its own address, its port
    /// (a microVM's VMM forwards it there, in the deployment's namespace).
    pub(crate) fn upstream(&self, deployment: &Deployment) -> Result<SocketAddr, Error> {
        Ok(upstream_at(&self.attachment(deployment)?, deployment))
    }

    async fn spec(&self, deployment: &Deployment) -> Result<SandboxSpec, Error> {
        let program = self.program(&deployment.artifact).await?;
        let port = deployment.program_port();
        let mut env: BTreeMap<String, String> = BTreeMap::from([
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("HOME".into(), "/data".into()),
            ("PORT".into(), port.to_string()),
            // Its own namespace: the router comes in on eth0, so listen on every address.
            ("HOST".into(), "0.0.0.0".into()),
            ("NX_DEPLOYMENT".into(), deployment.id.to_string()),
            ("NX_SANDBOX".into(), deployment.sandbox.to_string()),
            ("NX_DATA_DIR".into(), "/data".into()),
            ("NX_PREVIEW_URL".into(), self.preview_url(deployment)),
        ]);
        let credentials = if deployment.db_branch {
            self.databases
                .branch_credentials(&deployment.sandbox, &deployment.id)
                .await?
        } else {
            self.databases.ensure_sandbox(&deployment.sandbox).await?
        };
        env.extend(self.databases.env(&credentials));
        if let Program::Bundle { manifest, .. } = &program {
            env.extend(crate::backend::bundle_env(manifest));
        }
        let env = crate::backend::args::environment(env, &deployment.env);
        let args = crate::backend::args::expand(&deployment.args, |name| env.get(name).cloned());
        Ok(SandboxSpec {
            deployment: deployment.clone(),
            program,
            env,
            args,
            database_socket: Some(
                self.databases
                    .sandbox_socket(
                        &deployment.sandbox,
                        deployment.db_branch.then_some(&deployment.id),
                    )
                    .await?,
            ),
            network: self.attachment(deployment)?,
            volumes: self.attached_volumes(deployment).await?,
        })
    }

    /// A route's URL: `https://` for a production host when HTTPS is on (it gets a
    /// certificate), `http://` otherwise (preview hosts: see `tls::certificate_names`).
    fn url(&self, key: &RouteKey) -> String {
        let host = router::host_name(key, &self.config.base_domain);
        let tls = &self.config.tls;
        let https = tls.https_listen.filter(|_| {
            matches!(key, RouteKey::Production(_)) && (tls.acme || tls.cert_file.is_some())
        });
        match https {
            Some(listen) if listen.port() == 443 => format!("https://{host}/"),
            Some(listen) => format!("https://{host}:{}/", listen.port()),
            None if self.config.router_listen.port() == 80 => format!("http://{host}/"),
            None => format!("http://{host}:{}/", self.config.router_listen.port()),
        }
    }

    fn preview_url(&self, d: &Deployment) -> String {
        self.url(&RouteKey::Preview(d.sandbox.clone(), d.id.clone()))
    }

    /// Prepares and starts a deployment (marked running) and waits until it is ready; one that
    /// is not is stopped and marked `failed` (`Stopped`, or `Idle` for a wake) unless something
    /// else changed its mark meanwhile (`nx stop`: that stands); `health` is its health check
    /// ([`Self::health_check`], asked by the caller), which readiness waits for too. On failure the error carries
    /// its last log lines.
    #[tracing::instrument(skip_all, fields(deployment = %deployment.id))]
    async fn run(
        &self,
        deployment: &Deployment,
        failed: Desired,
        health: Option<ResolvedHealthCheck>,
    ) -> Result<(), Error> {
        // Copies a crash cut short were deleted at nxd's start: they are made again.
        step("volumes", self.make_own_volumes(deployment)).await?;
        let spec = step("spec", self.spec(deployment)).await?;
        let start_ns = launch_times::now_ns();
        let (handle, restarts_before) = if self.standbys.taken(&deployment.id) {
            step("claim", self.claim_or_start(&spec)).await?
        } else {
            let handle = step("prepare", self.backend.prepare(&spec)).await?;
            step("start", self.backend.start(&handle, &spec)).await?;
            (handle, futures_util::future::ready(0).boxed().shared())
        };
        let addr = self.upstream(deployment)?;
        let timeout = readiness::timeout(deployment.ready_timeout_secs, &self.config.sandbox);
        let forwarded = self.backend.get(deployment.backend)?.port_is_forwarded();
        let path = health.as_ref().map(|h| h.path.as_str());
        let probe = readiness::Probe::for_deployment(path, forwarded);
        // Its own restarts only: a standby's unit counts its waiter's (newcomer19 N2: one
        // restarted once failed the push that took it, as a program that ended).
        let state = || async {
            let mut state = self.backend.status(&handle).await?;
            state.restarts = state.restarts.saturating_sub(restarts_before.clone().await);
            Ok::<_, crate::backend::BackendError>(state)
        };
        let ready = readiness::wait(addr, &probe, timeout, state);
        let why = match step("ready", ready).await? {
            readiness::Outcome::Ready => {
                let ready_ns = launch_times::now_ns();
                // The launcher's phases inside `start` and `ready` (see `launch_times`).
                if let Some(times) = LaunchTimes::read(&handle.dir, start_ns) {
                    for (name, took) in times.phases(start_ns, ready_ns) {
                        crate::timing::record(name, took);
                    }
                }
                return Ok(());
            }
            readiness::Outcome::Exited(how) => format!("exited before it was ready ({how})"),
            readiness::Outcome::TimedOut => format!(
                "did not accept connections on $PORT ({}) within {} s (it runs: does it listen on $HOST:$PORT, that is 0.0.0.0 in its own network namespace, not 127.0.0.1? A slow starter needs `nx push --ready-timeout`)",
                deployment.program_port(),
                timeout.as_secs()
            ),
        };
        let _ = self.backend.stop(&handle, DEFAULT_STOP_TIMEOUT).await;
        let id = &deployment.id;
        if !self
            .state
            .set_desired_if(id, Desired::Running, failed)
            .await?
        {
            // It ended because someone stopped or removed it meanwhile: say that, not why a
            // program exits. (`nx rm` marks it stopped first and deletes its record last.)
            let what = match self.state.deployment(id).await {
                Err(StateError::NoDeployment(_)) => "was removed",
                _ => "was stopped (`nx stop`) or removed (`nx rm`)",
            };
            return Err(Error::Conflict(format!(
                "deployment {id} {what} while it was starting"
            )));
        }
        let now = if failed == Desired::Idle {
            "it stays idle"
        } else {
            "it is stopped"
        };
        Err(Error::NotReady {
            message: format!(
                "deployment {} {why}; {now}. Its last log lines follow; `nx logs {}` shows all",
                deployment.id, deployment.id
            ),
            log_tail: crate::logs::tail(&handle.log_file(), FAILURE_LOG_LINES),
        })
    }

    /// Gives a deployment recorded from a standby its program; where the standby is not
    /// waiting (its unit ended), stops what is left of it and starts the deployment cold.
    /// Returns its handle and the restarts its unit had before (the standby's waiter's; 0 for
    /// a cold start), which readiness does not count as the program's.
    async fn claim_or_start(
        &self,
        spec: &SandboxSpec,
    ) -> Result<(crate::backend::SandboxHandle, RestartsBefore), Error> {
        let handle = self.backend.handle(&spec.deployment);
        // Its unit's restarts, asked beside the claim: a claim is no start, so systemd's
        // NRestarts goes on counting the waiter's (the program's own restart would come a
        // `RestartUSec` after its end, long after this answer), and the unit's state does not
        // change with it. From the supervisor's cache, where the standby's making left it
        // unless systemd said the unit changed since (else asked, and kept): the push's view
        // after ready asks systemd nothing either (the counters it shows are then the claim's,
        // as views serve them up to `COUNTERS_MAX_AGE` old). Awaited only where the readiness
        // wait first asks the unit's state (`readiness::wait`, 10 ms in): a D-Bus round trip,
        // when the cache does not hold it, is none of the push's time.
        let (supervisor, unit) = (Arc::clone(&self.supervisor), handle.unit.clone());
        let before = tokio::spawn(async move {
            let states = supervisor.states(&[unit.as_str()]).await;
            states.ok().and_then(|s| s.first().map(|s| s.restarts))
        });
        let before = async { before.await.ok().flatten().unwrap_or(0) };
        match self.backend.claim(&handle, spec).await {
            Ok(()) => return Ok((handle, before.boxed().shared())),
            Err(e) => tracing::warn!(error = %e, "the standby took no program: starting cold"),
        }
        self.backend.stop(&handle, DEFAULT_STOP_TIMEOUT).await?;
        // A deployment's directory from here on: nxd's start would stop it as a standby's
        // (review18 #2).
        match std::fs::remove_file(handle.dir.join(crate::standby::MARK)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::Setup(format!("removing its standby's mark: {e}")))
            }
            _ => {}
        }
        let handle = self.backend.prepare(spec).await?;
        self.backend.start(&handle, spec).await?;
        Ok((handle, futures_util::future::ready(0).boxed().shared()))
    }

    /// The sandbox a deployment belongs to. Errors: `State(NoDeployment)`.
    pub async fn deployment_sandbox(&self, id: &DeploymentId) -> Result<SandboxName, Error> {
        Ok(self.state.deployment(id).await?.sandbox)
    }

    /// A sandbox's deployment settings (`nx sandbox set`). Errors: `NotFound`.
    pub async fn settings(&self, name: &SandboxName) -> Result<SandboxSettings, Error> {
        sandbox_settings::get(self.state.pool(), name)
            .await
            .map_err(StateError::from)?
            .ok_or_else(|| no_sandbox(name))
    }

    /// Replaces a sandbox's deployment settings; the next push or SFTP upload starts with
    /// them. Errors: `Invalid` (a variable, an argument or a limit out of the host's bounds),
    /// `NotFound`.
    pub async fn set_settings(
        &self,
        name: &SandboxName,
        settings: &SandboxSettings,
    ) -> Result<(), Error> {
        let bounds = host_limits::request_bounds(&self.config);
        checks::check_program_input(&settings.args, &settings.env, &bounds)?;
        // Held to the sandbox's own backend, which its pushes run on when they name none (a
        // push that names another is checked on that one).
        let backend = sandbox_settings::row(self.state.pool(), name)
            .await
            .map_err(StateError::from)?
            .ok_or_else(|| no_sandbox(name))?
            .backend;
        self.push_limits(&settings.limits, backend, &bounds)?;
        checks::check_ready_timeout(settings.ready_timeout_secs, &bounds)?;
        settings.health_check.check("health_check")?;
        health::check_seconds("idle_timeout_secs", settings.idle_timeout_secs)?;
        health::check_seconds("preview_ttl_secs", settings.preview_ttl_secs)?;
        let _rows = self.state.sandbox_rows().write();
        if sandbox_settings::set(self.state.pool(), name, settings)
            .await
            .map_err(StateError::from)?
        {
            // Made with the settings before: the next push makes one with these.
            self.drop_standby(name).await;
            Ok(())
        } else {
            Err(no_sandbox(name))
        }
    }

    /// Pushes `req` for a caller whose view of the store is `view`: records the deployment,
    /// grants its program to its sandbox (see [`Self::grant_pushed`]: beside its start, a
    /// failed grant only logged) and starts it; answers once it is ready.
    #[tracing::instrument(skip_all, fields(sandbox = %req.sandbox))]
    pub async fn push(
        self: &Arc<Self>,
        mut req: PushRequest,
        view: &StoreView,
    ) -> Result<DeploymentView, Error> {
        let mut timer = self.metrics.time(Operation::Push);
        let mut sandbox_backend = None;
        // Asked at once (each from what nxd keeps, else from the state database). The
        // sandbox's row is read before the request is checked, read only: a sandbox is made
        // only once it passed (below).
        let (row, disk_promised_mb) = tokio::try_join!(
            async {
                let row = self
                    .state
                    .sandbox_rows()
                    .row(self.state.pool(), &req.sandbox);
                step("settings", row)
                    .await
                    .map_err(|e| Error::from(StateError::from(e)))
            },
            step("log_room", self.log_room_promised_mb()),
        )?;
        let sandbox_row = row.as_ref().map(|row| (row.removing, row.backend));
        if let Some(sandbox_settings::SandboxRow {
            settings, backend, ..
        }) = row
        {
            sandbox_backend = Some(backend);
            (req.env, req.args, req.limits) = settings.under(req.env, req.args, &req.limits);
            req.ready_timeout_secs = req.ready_timeout_secs.or(settings.ready_timeout_secs);
            req.egress = req.egress.or(settings.egress);
            // Both are HTTP (a GET, a request that wakes): a TCP push takes neither from the
            // sandbox, whose HTTP deployments they are for (crate::tcp).
            if req.tcp.is_none() {
                req.health_check = req.health_check.over(&settings.health_check);
                req.idle_timeout_secs = req.idle_timeout_secs.or(settings.idle_timeout_secs);
            }
        }
        let bounds = RequestBounds {
            disk_promised_mb,
            ..host_limits::request_bounds(&self.config)
        };
        // Where it will run: the backend it names, else its sandbox's (a new one's: the default).
        let asked_backend = req.backend.or(sandbox_backend).unwrap_or_default();
        checks::check_program_input(&req.args, &req.env, &bounds)?;
        let mut limits = self.push_limits(&req.limits, asked_backend, &bounds)?;
        checks::check_ready_timeout(req.ready_timeout_secs, &bounds)?;
        if req.port == Some(0) {
            return Err(Error::Invalid(
                "port 0 is not a port a program can listen on: give 1-65535, or no --port (nxd then picks one and passes it as PORT)".into(),
            ));
        }
        req.health_check.check("health_check")?;
        health::check_seconds("idle_timeout_secs", req.idle_timeout_secs)?;
        self.check_tcp(&req).await?;
        self.check_service(&req, req.backend.unwrap_or_default())?;
        let program = step("program", self.program(&req.artifact)).await?;
        if req.runtime == Runtime::Runsc && !matches!(program, Program::Image { .. }) {
            return Err(Error::Invalid(
                "runtime runsc (gVisor) is for images; a binary runs under bubblewrap: drop --runtime, or push an image with --image".into(),
            ));
        }
        if let Some(backend) = req.backend {
            self.backend.get(backend)?;
        }
        let sandbox = async {
            // Before its database is provisioned (again), whether it is being removed:
            // `create_deployment` refuses it too, for a removal marked since the push began.
            let sandbox_row_now = || self.state.sandbox_removing_and_backend(&req.sandbox);
            // The sandbox was there as the push began (a removal marked since is refused at the
            // record): no query of its own.
            let (removing, backend) = match sandbox_row {
                Some(row) => row,
                None => {
                    crate::tls::check_new_sandbox(
                        &self.state,
                        &req.sandbox,
                        &self.config.base_domain,
                    )
                    .await?;
                    self.record_sandbox(&req.sandbox, req.backend.unwrap_or_default())
                        .await?;
                    // Gone again only if its removal ran through meanwhile.
                    sandbox_row_now()
                        .await?
                        .unwrap_or((true, BackendKind::default()))
                }
            };
            if removing {
                return Err(self.removing(&req.sandbox));
            }
            let backend = req.backend.unwrap_or(backend);
            self.backend.get(backend)?;
            self.databases.ensure_sandbox(&req.sandbox).await?;
            Ok::<_, Error>(backend)
        };
        let backend = step("sandbox", sandbox).await?;
        crate::failpoint::wait("push::sandbox").await;
        if backend != asked_backend {
            // The sandbox was made meanwhile by another request, with another backend.
            limits = self.push_limits(&req.limits, backend, &bounds)?;
        }
        let tier = crate::backend::cpu_affinity::tier(req.persistent, backend)?;
        let egress = req.egress.unwrap_or_default();
        let (health_check, idle_timeout_secs) = (req.health_check.clone(), req.idle_timeout_secs);
        self.check_volumes(&req.sandbox, &req.volumes, backend)
            .await?;
        let fit = crate::standby::Fit {
            limits,
            egress,
            tier,
        };
        let takes_standbys = Self::takes_standbys(&req, &program, backend);
        let standby = takes_standbys
            .then(|| self.standbys.take(&req.sandbox, &fit))
            .flatten();
        let (id, slot) = match &standby {
            Some(standby) => (
                standby.deployment.id.clone(),
                Slot::Standby(standby.deployment.port),
            ),
            None => (DeploymentId::generate(), Slot::Free(&self.standbys)),
        };
        // Before its record: whoever reads the record finds its push (review17 #2).
        let pushing = self.pushes.enter(&id, &req.sandbox);
        let new = NewDeployment {
            id,
            sandbox: req.sandbox.clone(),
            artifact: req.artifact.clone(),
            env: std::mem::take(&mut req.env),
            args: std::mem::take(&mut req.args),
            limits,
            db_branch: req.db_branch,
            runtime: req.runtime,
            backend,
            ready_timeout_secs: req.ready_timeout_secs,
            listen_port: req.port,
            egress,
            volumes: crate::volumes::mounted(std::mem::take(&mut req.volumes), req.volume_source),
            tier,
        };
        let record = |new, slot| {
            self.state.create_deployment(
                new,
                slot,
                self.config.ports,
                self.config.sandbox.uid_base,
                self.config.sandbox.max_deployments,
                &health_check,
                idle_timeout_secs,
            )
        };
        // Standbys hold slots: where they hold the last free ones, they go, and no standby
        // takes one until this push has its own (newcomer19 N1: a refill took the slot freed
        // for it, and it was refused while that standby held it).
        let no_port = |r: &Result<_, _>| matches!(r, Err(StateError::NoPort { .. }));
        let again = standby.is_none().then(|| new.clone());
        let mut recorded = step("record", record(new, slot)).await;
        if let (true, Some(new)) = (no_port(&recorded), again) {
            let _wanted = self.standbys.want_slot();
            let until = tokio::time::Instant::now() + crate::standby::MADE_WITHIN;
            while no_port(&recorded) && self.remove_standbys(until).await {
                crate::failpoint::wait("standby::freed").await;
                recorded = step("record", record(new.clone(), Slot::Free(&self.standbys))).await;
            }
        }
        let deployment = match (recorded, standby) {
            (Ok(deployment), Some(standby)) => {
                // Its record holds its slot now.
                self.standbys.release(deployment.port);
                self.standbys.taken_by(&standby.deployment.id);
                deployment
            }
            (Ok(deployment), None) => deployment,
            (Err(e), standby) => {
                if let Some(standby) = standby {
                    self.put_back_standby(standby).await;
                }
                // A removal marked since the sandbox step: told as there (review21: this
                // push was told the removal 'did not finish' while it was under way).
                return Err(match e {
                    StateError::Removing(_) => self.removing(&req.sandbox),
                    e => e.into(),
                });
            }
        };
        self.log_room.recorded(deployment.limits.log_max_mb << 20);
        tracing::info!(deployment = %deployment.id, port = deployment.port, "deployment created");
        crate::failpoint::wait("push::recorded").await;
        if let Err(e) = self.make_pushed(&deployment, &req, &pushing).await {
            return Err(self.discard(&deployment, e).await);
        }
        // Only a preview is routed while it starts: a service name or a TCP port it takes
        // moves to it once it is ready (review19 #1: a `--service` push's early routes took
        // the name from the deployment that served it, for the whole start).
        let routes = if req.service.is_none() && req.tcp.is_none() {
            Route::Preview
        } else {
            Route::None
        };
        // The deployment is recorded, so its sandbox exists: a failed grant costs the sandbox's
        // tokens an upload, nothing more.
        let grant = async {
            let granted = self.grant_pushed(view, &deployment.sandbox, &deployment.artifact);
            if let Err(e) = step("grant", granted).await {
                tracing::warn!(error = %e, "the pushed program not granted to its sandbox");
            }
        };
        // A preview's rows of its view (its upkeep row as written; no TCP port, no service
        // name) stay as they are while it starts: read meanwhile, none of the push's time.
        let of = crate::rows_of::Of::Deployment(deployment.id.as_str());
        let early_rows = async {
            match routes {
                Route::Preview => Some(self.view_rows(of).await),
                _ => None,
            }
        };
        let health = self.resolve_health_check(&health_check);
        let (started, (), early_rows) = tokio::join!(
            self.start_pushed(&deployment, routes, health),
            grant,
            early_rows
        );
        // Made once this push is done, ready or not, so that it takes none of its time.
        if takes_standbys {
            self.refill_standby(&deployment.sandbox, fit);
        }
        self.look_at_log_room_later();
        // Still its push's while it is removed.
        if let Err(e @ Error::Router(_)) = started {
            return Err(self.discard_unrouted(&deployment, e).await);
        }
        // A removal asked while it started (`nx rm` stopped it): the push removes it, whatever
        // its start came to.
        if pushing.leave() == Left::RemovalAsked {
            return Err(self.discard(&deployment, pushing.removed()).await);
        }
        drop(pushing);
        started.map_err(|e| may_come_up(e, &deployment))?;
        crate::failpoint::wait("push::ready").await;
        timer.succeeded();
        // Its record as made: what a push's success leaves of it is what it was made with.
        let rows = async {
            match early_rows {
                Some(rows) => rows,
                None => self.view_rows(of).await,
            }
        };
        let mut view = step("view", self.view_with(&deployment, false, rows)).await?;
        if view.phase != Phase::Running {
            // Not running once ready: its program ended, or since its start someone stopped
            // it (`nx stop`) or removed it (`nx rm`), which its record tells (review19 #6);
            // read only here, none of a running push's time.
            let now = match self.state.deployment(&deployment.id).await {
                Err(StateError::NoDeployment(_)) => return Err(Error::Conflict(format!(
                    "deployment {} was ready, then removed (`nx rm`, or `nx sandbox rm`) before its push answered: nothing of it is left",
                    deployment.id
                ))),
                now => now?,
            };
            view.desired = now.desired;
            view.phase = Phase::observe(now.desired, &view.state);
        }
        Ok(view)
    }

    /// What a push makes for its deployment once recorded, before it starts it: its service
    /// name, TCP port, own volume copies and `--db-branch` copy; each is followed by a look
    /// at whether its removal was asked meanwhile (`nx rm`: `Pushing::removed`). Fail point
    /// `push::recorded` ([`crate::failpoint::wait`]s before, in `push`). Errors: those of the
    /// steps; the caller removes the deployment.
    async fn make_pushed(
        &self,
        deployment: &Deployment,
        req: &PushRequest,
        pushing: &Pushing<'_>,
    ) -> Result<(), Error> {
        pushing.check_removal()?;
        step("service", self.record_service(deployment, req)).await?;
        step("tcp", self.allocate_tcp(deployment, req)).await?;
        step("volumes", self.make_own_volumes(deployment)).await?;
        pushing.check_removal()?;
        if deployment.db_branch {
            self.branch_of_push(deployment).await?;
            pushing.check_removal()?;
        }
        Ok(())
    }

    /// A `--db-branch` push's copy of its sandbox's database (`Databases::branch`). Fail
    /// points: `push::branching` ([`crate::failpoint::wait`]s before the copy) and
    /// `push::branched` (`return`: the copy fails). Errors: `Database`.
    async fn branch_of_push(&self, deployment: &Deployment) -> Result<(), Error> {
        crate::failpoint::wait("push::branching").await;
        self.databases
            .branch(&deployment.sandbox, &deployment.id)
            .await?;
        fail::fail_point!("push::branched", |_| Err(Error::Conflict(format!(
            "fail point push::branched: the branch of deployment {} fails",
            deployment.id
        ))));
        Ok(())
    }

    /// Undoes a push that failed (`error`) after its deployment was recorded: as `nx rm` does,
    /// its unit (which its own start, stopped by `nx rm`, may have left) is stopped and
    /// removed and its link and route go before its record, and so its slot, uid and address,
    /// are freed (newcomer s17 N9: an orphan unit answered for the next push that got its
    /// slot). Returns the push's error; when the removal fails too (systemd, the host's
    /// network or the database), with what is left and what to do, the removal's own error
    /// logged (review17 #2: it replaced the push's).
    async fn discard(&self, deployment: &Deployment, error: Error) -> Error {
        self.standbys.taken(&deployment.id);
        let target = Target {
            app: self,
            deployment,
            route: Route::None,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            known: Known::Record,
        };
        match target.destroy().await {
            Ok(()) => error,
            Err(e) => {
                let id = &deployment.id;
                tracing::error!(deployment = %id, error = %e, push_error = %error, "the failed push's deployment is not removed");
                error.with_outcome(&format!(
                    "its deployment {id} could not be removed ({e}): `nx rm {id}` removes it"
                ))
            }
        }
    }

    /// Undoes a push whose deployment the router took no routes for (`error`: it refused the
    /// table or did not answer), and returns the error to answer, saying what was done and
    /// what to do (newcomer s17 N5: a router out of open files refused the table, and the
    /// deployment stayed `running` in `nx status`, never routed). It is marked stopped and
    /// removed as [`Self::discard`] removes one, but without asking the router (which keeps
    /// the table it had, without it); the routes are sent again after, if the router takes
    /// them.
    async fn discard_unrouted(&self, deployment: &Deployment, error: Error) -> Error {
        let id = &deployment.id;
        let log = self.config.state_dir.join("router/router.log");
        let removed = async {
            self.state.set_desired(id, Desired::Stopped).await?;
            self.remove_unrouted(deployment).await
        };
        if let Err(e) = removed.await {
            return error.with_outcome(&format!(
                "deployment {id} runs, but no URL leads to it, and removing it failed too ({e}): `nx rm {id}`, and push again once the router takes routes (its log: {})",
                log.display()
            ));
        }
        if let Err(e) = self.reroute().await {
            tracing::warn!(error = %e, "the routes after a push the router took none for");
        }
        error.with_outcome(&format!(
            "deployment {id} was removed, as no URL led to it: push again once the router takes routes (its log: {})",
            log.display()
        ))
    }

    /// `nx rm`'s removal: the deployment is marked as being removed (and to be stopped) and its
    /// routes go first, then its unit and files, its record last ([`Self::remove_unrouted`]).
    /// A crash in between leaves it marked, and nxd's start finishes it
    /// ([`Self::finish_removals`]; tester s22 F2: it ran on, unrouted, until `nx rm` again).
    async fn remove_marked(&self, deployment: &Deployment) -> Result<(), Error> {
        {
            let _guard = self.changes.lock().await;
            self.state.mark_deployment_removing(&deployment.id).await?;
            self.rebuild_routes().await?;
        }
        crate::failpoint::wait("deployments::removing").await;
        self.remove_unrouted(deployment).await
    }

    /// Removes a deployment no route leads to (any more): [`Self::destroy`], its series, then
    /// its record, which frees its slot.
    async fn remove_unrouted(&self, deployment: &Deployment) -> Result<(), Error> {
        let log_room = self
            .backend
            .handle(deployment)
            .log_files(&deployment.limits, self.config.logs.keep)
            .room_bytes();
        self.destroy(deployment).await?;
        let labels = crate::metrics::DeploymentLabels::of(deployment);
        self.metrics.forget(&labels);
        self.state.delete_deployment(&deployment.id).await?;
        self.log_room.removed(log_room);
        Ok(())
    }

    /// The limits of a push (or of a sandbox's settings, which pushes start from) of `asked`
    /// over nxd's `[limits]`, for a deployment on `backend`. Errors: `Invalid`, a limit out of
    /// the host's bounds or of what `backend` holds (`checks::check_limits`).
    fn push_limits(
        &self,
        asked: &crate::api::LimitsOverride,
        backend: BackendKind,
        bounds: &RequestBounds,
    ) -> Result<crate::config::Limits, Error> {
        let limits = asked.apply(self.config.limits, backend);
        checks::check_limits(&limits, backend, bounds)?;
        Ok(limits)
    }

    /// Where a deployment is in its life, from its desired state and its unit's.
    pub async fn phase(&self, deployment: &Deployment) -> Result<Phase, Error> {
        let unit = self
            .backend
            .status(&self.backend.handle(deployment))
            .await?;
        Ok(Phase::observe(deployment.desired, &unit))
    }

    /// Moves a deployment from `phase` by `verb`, through the state machine, for a verb that
    /// does not route production.
    pub(crate) async fn apply_verb(
        &self,
        deployment: &Deployment,
        phase: Phase,
        verb: Verb,
    ) -> Result<Phase, Error> {
        self.apply(deployment, phase, verb, Route::None).await
    }

    /// Moves a deployment from `phase` by `verb`, through the state machine.
    async fn apply(
        &self,
        deployment: &Deployment,
        phase: Phase,
        verb: Verb,
        route: Route,
    ) -> Result<Phase, Error> {
        self.apply_with(deployment, phase, verb, route, DEFAULT_STOP_TIMEOUT)
            .await
    }

    /// `apply`, with the time a stop gives the program between SIGTERM and SIGKILL.
    async fn apply_with(
        &self,
        deployment: &Deployment,
        phase: Phase,
        verb: Verb,
        route: Route,
        stop_timeout: Duration,
    ) -> Result<Phase, Error> {
        let serves_production = self.is_promoted(deployment).await?;
        let target = Target {
            app: self,
            deployment,
            route,
            stop_timeout,
            known: Known::Record,
        };
        state_machine::apply(
            &format!("deployment {}", deployment.id),
            phase,
            verb,
            serves_production,
            &target,
        )
        .await
    }

    /// A push's start of its new deployment (`Phase::Created`, `Verb::Start`), whose health
    /// check `health` is the one its upkeep row was written with, resolved: it serves no
    /// production and its record is as the push made it (see [`Known::Pushed`]), so neither is
    /// read (three queries fewer in a push's time than [`Self::apply`]).
    async fn start_pushed(
        &self,
        deployment: &Deployment,
        route: Route,
        health: Option<ResolvedHealthCheck>,
    ) -> Result<Phase, Error> {
        let target = Target {
            app: self,
            deployment,
            route,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            known: Known::Pushed { health },
        };
        state_machine::apply(
            &format!("deployment {}", deployment.id),
            Phase::Created,
            Verb::Start,
            false,
            &target,
        )
        .await
    }

    /// Marks a deployment to run, starts it and waits until it is ready, the routes sent as
    /// `routes` says (a deployment that did not become ready is stopped, or with
    /// [`StartRoutes::Later`] stays idle). Errors: `State(NoDeployment)` when an expiry or
    /// `nx rm` this start waited for removed it; `Router` when the router took no routes.
    pub(crate) async fn start_and_wait(
        &self,
        deployment: &Deployment,
        routes: StartRoutes,
    ) -> Result<(), Error> {
        self.start_known(deployment, routes, Known::Record).await
    }

    /// [`Self::start_and_wait`], for a start that knows what `known` says of its deployment.
    async fn start_known(
        &self,
        deployment: &Deployment,
        routes: StartRoutes,
        known: Known,
    ) -> Result<(), Error> {
        // No idle stop or expiry while it starts, nor another start; its idle clock starts
        // once it is ready.
        let start = self.upkeep.starting(&deployment.id).await;
        let (deployment, health) = match known {
            Known::Pushed { health } => (deployment.clone(), health),
            // The record as it is now: an expiry this start waited for may have removed it, an
            // idle stop changed it. Its health check is asked beside it (both read the
            // database).
            Known::Record => tokio::try_join!(
                async { Ok(self.state.deployment(&deployment.id).await?) },
                self.health_check(deployment)
            )?,
        };
        let deployment = &deployment;
        if start.waited && self.phase(deployment).await? == Phase::Running {
            // The start this one waited for (an adoption's, `nx start`, a promotion's) made it
            // run: it is not started again, nor its branch made again under it.
            return Ok(());
        }
        // A new deployment's record says so already.
        if deployment.desired != Desired::Running {
            step(
                "desired",
                self.state.set_desired(&deployment.id, Desired::Running),
            )
            .await?;
        }
        let failed = if routes == StartRoutes::Later {
            Desired::Idle
        } else {
            Desired::Stopped
        };
        // Before its program runs, so that it reaches its sandbox's services from its first
        // instruction (review19 #1b: only once it was ready, or a few ms into a push's start).
        step("clients", self.publish_clients(deployment)).await?;
        let result = match routes {
            StartRoutes::WhileStarting => {
                let (result, routed) = tokio::join!(
                    self.run(deployment, failed, health),
                    self.route_preview(deployment)
                );
                routed?;
                result
            }
            StartRoutes::After | StartRoutes::Later => self.run(deployment, failed, health).await,
        };
        if result.is_ok() {
            self.upkeep.ready(&deployment.id);
        }
        match (routes, &result) {
            (StartRoutes::Later, _) | (StartRoutes::WhileStarting, Ok(())) => {}
            // Without it: it was marked stopped.
            (StartRoutes::WhileStarting, Err(_)) | (StartRoutes::After, _) => {
                step("routes", self.reroute()).await?;
            }
        }
        result
    }

    /// Rebuilds the routes from the database, serialised with every other change.
    pub(crate) async fn reroute(&self) -> Result<(), Error> {
        let _guard = self.changes.lock().await;
        self.rebuild_routes().await
    }

    /// A push's new deployment's preview route, sent alone (`PUT /v1/routes/{host}`) under the
    /// change lock: all that [`Self::rebuild_routes`] would change for a push without
    /// `--service` or `--tcp` as it starts (its sandbox's hosts file and service names stay as
    /// they are, its own service pairs came before its start, from
    /// [`Self::publish_clients`]), without reading every deployment and writing every hosts
    /// file. The exchange with the router runs on a task of its own, which holds the lock until
    /// the router answers (also when the push is dropped meanwhile), beside the start's
    /// synchronous stretches (`tokio::join!` polls its futures in one task); the step `routes`
    /// is the time until the router holds the route. When the router takes no route alone, the
    /// whole table is sent instead ([`Self::reroute`], then `routes` is that rebuild).
    async fn route_preview(&self, deployment: &Deployment) -> Result<(), Error> {
        let started = std::time::Instant::now();
        let guard = Arc::clone(&self.changes).lock_owned().await;
        let key = RouteKey::Preview(deployment.sandbox.clone(), deployment.id.clone());
        let route = router::route(
            &self.config.base_domain,
            &key,
            deployment.id.as_str(),
            self.upstream(deployment)?,
        );
        let router = self.router.clone();
        let sent = tokio::spawn(async move {
            let sent = router.put_route(&route, ROUTER_PATIENCE).await;
            drop(guard);
            (
                sent.map_err(|e| (route.host, e.to_string())),
                started.elapsed(),
            )
        });
        let why = match sent.await {
            Ok((Ok(()), took)) => {
                crate::timing::record("routes", took);
                return Ok(());
            }
            Ok((Err((host, e)), _)) => format!("{host}: {e}"),
            Err(e) => e.to_string(),
        };
        tracing::warn!(
            error = why,
            "the router took no route alone: sending it the whole table"
        );
        step("routes", self.reroute()).await
    }

    /// `apply_verb(Verb::Start)` leaving the routes to the caller ([`Self::reroute`]), whether
    /// the deployment became ready or not (a wake).
    pub(crate) async fn start_routes_later(
        &self,
        deployment: &Deployment,
        phase: Phase,
    ) -> Result<Phase, Error> {
        self.apply(deployment, phase, Verb::Start, Route::Later)
            .await
    }

    /// Marks a deployment stopped and takes its routes away; with `stop`, stops its unit.
    async fn unroute(&self, deployment: &Deployment) -> Result<(), Error> {
        let _guard = self.changes.lock().await;
        self.state
            .set_desired(&deployment.id, Desired::Stopped)
            .await?;
        self.rebuild_routes().await
    }

    /// Production of the deployment's sandbox goes to it (it runs): with `swap_db`, its preview
    /// branch becomes production's database first; its volume mounts become the volumes
    /// themselves (`volumes::own`). When either changed it restarts on them, and if anything
    /// after the swap fails (finishing it, the records, the restart), production's database
    /// and its mounts are put back as they were, the preview's branch is its own again, and
    /// nothing is promoted. Its own volume copies are deleted once it is promoted. A crash in
    /// between is finished or undone at nxd's start (`volumes::own`).
    async fn switch_to(&self, deployment: &Deployment, swap_db: bool) -> Result<(), Error> {
        let (sandbox, id) = (&deployment.sandbox, &deployment.id);
        // From here a crash is finished or undone at nxd's start (`recover_promotions`).
        let recorded = self.record_promotion(deployment, swap_db)?;
        let previous_db = if swap_db {
            let previous = match self.databases.swap_in_branch(sandbox, id).await {
                Ok(previous) => previous,
                Err(e) => {
                    self.forget_promotion(deployment)?;
                    return Err(e.into());
                }
            };
            tracing::info!(%previous, "branch swapped in; production's database kept");
            Some(previous)
        } else {
            None
        };
        // Once the swap committed, every error goes through the undoing below (review17 #4:
        // a `?` here left production on the branch's data and the old deployment routed).
        let mut own_mounts = None;
        let switched = async {
            if previous_db.is_some() {
                self.databases.finish_branch_swap(sandbox, id).await?;
                self.state.clear_db_branch(id).await?;
            }
            own_mounts = self
                .mount_live_volumes(&self.state.deployment(id).await?)
                .await?;
            if previous_db.is_none() && own_mounts.is_none() {
                return Ok(());
            }
            // It reconnects with production's credentials, mounts production's volumes.
            let now = self.state.deployment(id).await?;
            self.backend
                .stop(&self.backend.handle(&now), DEFAULT_STOP_TIMEOUT)
                .await?;
            self.start_and_wait(&now, StartRoutes::After).await?;
            if own_mounts.is_some() {
                fail::fail_point!("volumes::promoting");
            } else {
                fail::fail_point!("databases::promoting");
            }
            Ok::<(), Error>(())
        }
        .await;
        if let Err(e) = switched {
            let mut undone = vec!["nothing was promoted".to_owned()];
            if let Some(previous) = previous_db {
                // A crash from here on undoes the promotion at nxd's start. Put
                // production's database back even when that record fails.
                if let Err(record) = self.record_swap_back(deployment, &previous) {
                    tracing::warn!(error = %record, "recording the swap-back before it");
                }
                if own_mounts.is_some() {
                    fail::fail_point!("volumes::unpromoting");
                }
                let kept = self.databases.swap_back(sandbox, &previous).await?;
                if own_mounts.is_some() {
                    fail::fail_point!("volumes::swapped_back");
                }
                tracing::warn!(error = %e, %kept, "the promotion failed after the swap; production's database put back");
                undone.push(self.branch_back(deployment, &kept).await);
            }
            if let Some(mounts) = own_mounts {
                self.put_back_mounts(deployment, &mounts).await?;
                undone.push(self.restart_on_own_volumes(deployment, swap_db).await);
            } else {
                self.forget_promotion(deployment)?;
            }
            return Err(e.with_outcome(&undone.join(", ")));
        }
        let _guard = self.changes.lock().await;
        self.state.promote(sandbox, id).await?;
        self.rebuild_routes().await?;
        tracing::info!("promoted");
        if recorded {
            if own_mounts.is_some() {
                fail::fail_point!("volumes::promoted");
            }
            self.drop_own_volumes(deployment)?;
        }
        Ok(())
    }

    /// After a `--swap-db` promotion of `deployment` was undone: the branch's data, kept as
    /// database `kept`, is its preview branch again and it runs on it at its next start
    /// (review17 #7: it ran on production's database). Says, for the promotion's error, where
    /// the branch's data is.
    async fn branch_back(&self, deployment: &Deployment, kept: &str) -> String {
        let (sandbox, id) = (&deployment.sandbox, &deployment.id);
        let given = async {
            self.databases.give_branch_back(sandbox, id, kept).await?;
            self.state.set_db_branch(id, true).await?;
            // Its sandbox's gate admits the branch's role again (the swap's finish forgot it).
            self.databases.sandbox_socket(sandbox, Some(id)).await?;
            Ok::<(), Error>(())
        };
        match given.await {
            Ok(()) => format!("production's database is as it was and the preview's branch is its own again (`nx start {id}` if it stopped)"),
            Err(e) => {
                tracing::warn!(error = %e, %kept, "the undone swap's branch could not be given back to the preview");
                format!("production's database is as it was (the branch's data is kept as database {kept}; it could not be the preview's again: {e})")
            }
        }
    }

    /// Production of the deployment's sandbox goes back to it (it runs), unless production
    /// moved meanwhile.
    async fn roll_back_to(&self, deployment: &Deployment) -> Result<(), Error> {
        let _guard = self.changes.lock().await;
        self.state
            .rollback(&deployment.sandbox, &deployment.id)
            .await?;
        self.rebuild_routes().await?;
        tracing::info!(deployment = %deployment.id, "rolled back");
        Ok(())
    }

    async fn deployment_in(
        &self,
        sandbox: &SandboxName,
        id: &DeploymentId,
    ) -> Result<Deployment, Error> {
        let d = self.state.deployment(id).await?;
        if &d.sandbox != sandbox {
            return Err(Error::Invalid(format!(
                "deployment {id} belongs to sandbox {}, not {sandbox}",
                d.sandbox
            )));
        }
        Ok(d)
    }

    #[tracing::instrument(skip(self))]
    pub async fn promote(
        &self,
        sandbox: &SandboxName,
        id: &DeploymentId,
        swap_db: bool,
    ) -> Result<SandboxView, Error> {
        let mut timer = self.metrics.time(Operation::Promote);
        let _lock = self
            .sandbox_locks
            .lock(sandbox, SandboxWork::Promote(id.clone()))
            .await;
        let deployment = self.deployment_in(sandbox, id).await?;
        // Its branch may be half copied and its program not started by its push: a promotion
        // would start it, and `--swap-db` swap in that copy (newcomer s17 N8).
        self.pushes.refuse(id, "promote")?;
        if swap_db && !deployment.db_branch {
            return Err(Error::Invalid(format!(
                "deployment {id} has no preview branch to swap in (push it with --db-branch)"
            )));
        }
        if swap_db && !self.databases.branch_is_whole(id).await? {
            return Err(Error::Conflict(format!(
                "deployment {id}'s database branch is missing or its copy was cut short (by a crash of nxd): nothing was promoted; `nx stop {id}` and `nx start {id}` make it again from production's database, or `nx rm {id}` and push again with --db-branch"
            )));
        }
        let phase = self.phase(&deployment).await?;
        self.apply(
            &deployment,
            phase,
            Verb::Promote,
            Route::Promote { swap_db },
        )
        .await?;
        timer.succeeded();
        self.sandbox(sandbox).await
    }

    /// Production goes back to the deployment promoted before the current one that still
    /// exists ([`StateStore::rollback_target`]); if that one does not run, it is started first
    /// and production switches once it is ready.
    #[tracing::instrument(skip(self))]
    pub async fn rollback(&self, sandbox: &SandboxName) -> Result<SandboxView, Error> {
        let mut timer = self.metrics.time(Operation::Rollback);
        let _lock = self
            .sandbox_locks
            .lock(sandbox, SandboxWork::Rollback)
            .await;
        let previous = self.state.rollback_target(sandbox).await?;
        let deployment = self.state.deployment(&previous).await?;
        let phase = self.phase(&deployment).await?;
        self.apply(&deployment, phase, Verb::Rollback, Route::Rollback)
            .await?;
        timer.succeeded();
        self.sandbox(sandbox).await
    }

    /// Stops a deployment: SIGTERM reaches its program, which has `timeout` (default
    /// [`DEFAULT_STOP_TIMEOUT`], at most [`MAX_STOP_TIMEOUT`]) to end before it is killed.
    #[tracing::instrument(skip(self))]
    pub async fn stop(
        &self,
        id: &DeploymentId,
        timeout: Option<Duration>,
    ) -> Result<DeploymentView, Error> {
        let timeout = timeout.unwrap_or(DEFAULT_STOP_TIMEOUT);
        if timeout > MAX_STOP_TIMEOUT {
            return Err(Error::Invalid(format!(
                "a stop timeout of {} s is too long: give at most {} s",
                timeout.as_secs(),
                MAX_STOP_TIMEOUT.as_secs()
            )));
        }
        let (deployment, _lock) = self.locked_deployment(id, "stop").await?;
        self.pushes.refuse(id, "stop")?;
        let phase = self.phase(&deployment).await?;
        self.apply_with(&deployment, phase, Verb::Stop, Route::None, timeout)
            .await?;
        self.view(&self.state.deployment(id).await?, false).await
    }

    #[tracing::instrument(skip(self))]
    pub async fn start_deployment(&self, id: &DeploymentId) -> Result<DeploymentView, Error> {
        let (deployment, _lock) = self.locked_deployment(id, "start").await?;
        // It would run before its copies are made, or make its branch under the push's copy
        // (review17 #2).
        self.pushes.refuse(id, "start")?;
        let phase = self.phase(&deployment).await?;
        self.apply(&deployment, phase, Verb::Start, Route::None)
            .await?;
        self.view(&self.state.deployment(id).await?, false).await
    }

    /// `nx rm`: stops and removes a deployment. One whose push is under way is removed by its
    /// push (`end_push`), and this answers once it is gone.
    #[tracing::instrument(skip(self))]
    pub async fn remove(&self, id: &DeploymentId) -> Result<(), Error> {
        if let Some(ended) = self.pushes.ask_removal(id) {
            self.end_push(id, ended).await;
            if let Err(StateError::NoDeployment(_)) = self.state.deployment(id).await {
                return Ok(());
            }
            // Its push could not remove it (and said so): removed here as any other.
        }
        let (deployment, _lock) = self.locked_deployment(id, "rm").await?;
        let phase = self.phase(&deployment).await?;
        self.apply(&deployment, phase, Verb::Remove, Route::None)
            .await?;
        Ok(())
    }

    /// Waits for the push of `id`, whose removal was asked (`Pushes::ask_removal`), to end
    /// (`ended` closed): the push removes its deployment at its next step (after its
    /// `--db-branch` copy, when one is under way). A push waiting for its program to be ready
    /// ends once the program ends: its unit is stopped now and every second until then (a stop
    /// that came before the push's own start of it stops what that start runs).
    async fn end_push(&self, id: &DeploymentId, mut ended: tokio::sync::watch::Receiver<()>) {
        loop {
            if let Ok(deployment) = self.state.deployment(id).await {
                let handle = self.backend.handle(&deployment);
                if let Err(e) = self.backend.stop(&handle, DEFAULT_STOP_TIMEOUT).await {
                    tracing::warn!(deployment = %id, error = %e, "stopping a deployment whose push is to remove it");
                }
            }
            tokio::select! {
                _ = ended.changed() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// For `nx VERB ID`: the deployment's record, read again under its sandbox's lock
    /// (`sandbox_locks`) when it mounts a volume, and always for `stop` and `rm`: their check
    /// that it does not serve production must not fall between a promotion's or rollback's
    /// check and its switch (they hold the lock throughout). The lock is held until the guard
    /// is dropped.
    async fn locked_deployment(
        &self,
        id: &DeploymentId,
        verb: &'static str,
    ) -> Result<(Deployment, Option<SandboxGuard<'_>>), Error> {
        let deployment = self.state.deployment(id).await?;
        if deployment.volumes.is_empty() && !matches!(verb, "stop" | "rm") {
            return Ok((deployment, None));
        }
        let lock = self
            .sandbox_locks
            .lock(
                &deployment.sandbox,
                SandboxWork::Deployment(verb, id.clone()),
            )
            .await;
        Ok((self.state.deployment(id).await?, Some(lock)))
    }

    /// Removes a deployment's sandbox, its link on the host (before its record, and so its
    /// slot and addresses, can be freed: `HostNetwork::release`) and its preview branch, if it
    /// has one; upkeep forgets it.
    pub(crate) async fn destroy(&self, deployment: &Deployment) -> Result<(), Error> {
        self.backend
            .destroy(&self.backend.handle(deployment))
            .await?;
        self.network.release(&self.attachment(deployment)?).await?;
        if deployment.db_branch {
            self.databases.drop_branch(&deployment.id).await?;
        }
        self.drop_own_volumes(deployment)?;
        self.upkeep.forget(&deployment.id);
        Ok(())
    }

    #[tracing::instrument(skip(self))]
    pub async fn create_sandbox(
        &self,
        name: &SandboxName,
        backend: BackendKind,
    ) -> Result<SandboxView, Error> {
        self.backend.get(backend)?;
        crate::tls::check_new_sandbox(&self.state, name, &self.config.base_domain).await?;
        if !self.record_sandbox(name, backend).await? {
            return Err(Error::Conflict(format!("sandbox {name} exists already")));
        }
        self.databases.ensure_sandbox(name).await?;
        self.sandbox(name).await
    }

    /// Records a sandbox whose pushes run on `backend` unless they name another (false when it
    /// exists already). A new one starts with nothing an earlier holder of its name left
    /// (`Databases::drop_leftovers`).
    async fn record_sandbox(
        &self,
        name: &SandboxName,
        backend: BackendKind,
    ) -> Result<bool, Error> {
        let new = self.state.create_sandbox(name, backend).await?;
        if new {
            self.databases.drop_leftovers(name).await?;
        }
        Ok(new)
    }

    /// Removes every deployment of a sandbox, then its volumes and its database and role,
    /// each after a final backup unless told not to, then sets all its backups aside for the
    /// host's operator (`Databases::set_backups_aside`), then its records; returns what
    /// `DELETE /v1/sandboxes/{name}` answers.
    ///
    /// Records last (attacker s12 H5): the sandbox is marked as being removed first
    /// (`StateStore::mark_removing`: it takes no push nor API call from then on), and its rows
    /// go only once all else is gone. A removal that fails or is cut by a crash leaves it
    /// listed and marked: running this again finishes it, and so does nxd's start
    /// ([`Self::finish_removals`]). The final database backup is made only while the database
    /// is still there (a removal run again after its drop makes none).
    #[tracing::instrument(skip(self))]
    pub async fn remove_sandbox(
        &self,
        name: &SandboxName,
        backup: bool,
    ) -> Result<SandboxRemoved, Error> {
        let _lock = self
            .sandbox_locks
            .lock(name, SandboxWork::RemoveSandbox)
            .await;
        let Some(resumed) = self.state.mark_removing(name, backup).await? else {
            return Err(no_sandbox(name));
        };
        if resumed {
            tracing::info!(%name, "finishing a removal that did not finish");
        }
        // Pushes under way in it remove their deployments themselves (`end_push`), before the
        // final backup: a push that became ready meanwhile answered `running` for a deployment
        // removed a moment later (newcomer18 L2).
        for (id, ended) in self.pushes.ask_removal_in(name) {
            self.end_push(&id, ended).await;
        }
        self.drop_standby(name).await;
        let final_backup = if backup && self.databases.has_database(name).await? {
            match self.databases.backup(name).await {
                Ok(made) => Some(made),
                Err(e) if !resumed => {
                    // Nothing is removed yet but the pushes under way: the sandbox is as it was.
                    self.state.unmark_removing(name).await?;
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        // Every deployment recorded before the mark; none can be recorded after it.
        let deployments = self.state.deployments_in(name).await?;
        // Units and files first, records last: a destroy that fails leaves the sandbox and
        // its (stopped) deployments listed, and `nx sandbox rm` can be run again.
        {
            let _guard = self.changes.lock().await;
            for deployment in &deployments {
                self.state
                    .set_desired(&deployment.id, Desired::Stopped)
                    .await?;
            }
            self.rebuild_routes().await?;
        }
        for deployment in &deployments {
            self.destroy(deployment).await.map_err(|e| {
                Error::Conflict(format!(
                    "sandbox {name} is not removed: deployment {} could not be destroyed ({e}); its deployments are stopped and listed. Fix that and run `nx sandbox rm {name}` again",
                    deployment.id
                ))
            })?;
        }
        let mut final_volume_backups = self.remove_sandbox_volumes(name, backup).await?;
        fail::fail_point!("sandboxes::removing");
        self.databases.drop_sandbox(name).await?;
        let backups = self.config.state_dir.join("backups").join(name.as_str());
        let kept_at = self.databases.set_backups_aside(name).map_err(|e| {
            Error::Setup(format!(
                "sandbox {name} is not removed: its backups stay at {} ({e}). Fix that and run `nx sandbox rm {name}` again",
                backups.display()
            ))
        })?;
        if let Some(kept_at) = &kept_at {
            for b in &mut final_volume_backups {
                if let Ok(rest) = std::path::Path::new(&b.path).strip_prefix(&backups) {
                    b.path = kept_at.join(rest).display().to_string();
                }
            }
        }
        {
            let _guard = self.changes.lock().await;
            self.state.delete_sandbox(name).await?;
            self.log_room.forget();
            self.rebuild_routes().await?;
        }
        Ok(SandboxRemoved {
            removed: name.clone(),
            final_backup,
            final_volume_backups,
            backups_kept_at: kept_at.map(|p| p.display().to_string()),
        })
    }

    /// At nxd's start: finishes each removal that a crash (or an error) cut short: a
    /// deployment's ([`Self::remove_marked`]), then a sandbox's ([`Self::remove_sandbox`], with
    /// final backups unless the last `nx sandbox rm` said `--no-backup`); a failure is logged
    /// and left to `nx rm` or `nx sandbox rm`, which the sandbox's refusals name.
    #[tracing::instrument(skip_all)]
    async fn finish_removals(&self) -> Result<(), Error> {
        for deployment in self.state.removing_deployments().await? {
            match self.remove_marked(&deployment).await {
                Ok(()) => {
                    tracing::info!(deployment = %deployment.id, "interrupted removal finished")
                }
                Err(e) => {
                    tracing::error!(deployment = %deployment.id, error = %e, "interrupted removal not finished: run `nx rm` on it")
                }
            }
        }
        for (name, backup) in self.state.removing_sandboxes().await? {
            match self.remove_sandbox(&name, backup).await {
                Ok(_) => tracing::info!(sandbox = %name, "interrupted removal finished"),
                Err(e) => {
                    tracing::error!(sandbox = %name, error = %e, "interrupted removal not finished: run `nx sandbox rm` on it")
                }
            }
        }
        Ok(())
    }

    /// The 409 of a push or call into sandbox `name`, which is being removed: while
    /// `nx sandbox rm` runs (it holds the sandbox's lock), to wait for its end; else, that
    /// removal began and did not finish, `StateError::Removing` (newcomer19 L3: a push racing
    /// `nx sandbox rm` was told it "did not finish").
    fn removing(&self, name: &SandboxName) -> Error {
        match self.sandbox_locks.holder(name) {
            Some((SandboxWork::RemoveSandbox, since)) => Error::Conflict(format!(
                "sandbox {name} is being removed: `nx sandbox rm {name}` is under way (since {}) and it takes nothing new. Once it ended, push again: to the sandbox if it stays (`nx status {name}`), else to a new one of that name",
                since.format("%H:%M:%S UTC")
            )),
            _ => StateError::Removing(name.to_string()).into(),
        }
    }

    /// A sandbox that exists and is not being removed, or a 404 that says how to list them (a
    /// 409 that says how to finish the removal, or to wait for it: [`Self::removing`]).
    pub async fn existing(&self, name: &SandboxName) -> Result<(), Error> {
        if !self.state.sandbox_exists(name).await? {
            Err(no_sandbox(name))
        } else if self.state.is_removing(name).await? {
            Err(self.removing(name))
        } else {
            Ok(())
        }
    }

    pub async fn restore(
        &self,
        name: &SandboxName,
        dump: &std::path::Path,
    ) -> Result<RestoreInfo, Error> {
        self.existing(name).await?;
        Ok(self.databases.restore(name, dump).await?)
    }

    /// Whether `d` is its sandbox's production: that sandbox's latest promotion alone (one
    /// indexed row, not every sandbox's).
    async fn is_promoted(&self, d: &Deployment) -> Result<bool, Error> {
        Ok(self.state.promoted_in(&d.sandbox).await?.as_ref() == Some(&d.id))
    }

    pub(crate) async fn view(
        &self,
        d: &Deployment,
        promoted: bool,
    ) -> Result<DeploymentView, Error> {
        let rows = self.view_rows(crate::rows_of::Of::Deployment(d.id.as_str()));
        self.view_with(d, promoted, rows).await
    }

    /// [`Self::view`] with its rows ([`Self::view_rows`] of `d`) asked by the caller.
    async fn view_with(
        &self,
        d: &Deployment,
        promoted: bool,
        rows: impl std::future::Future<Output = Result<ViewRows, Error>>,
    ) -> Result<DeploymentView, Error> {
        let promoted: HashMap<SandboxName, DeploymentId> = promoted
            .then(|| (d.sandbox.clone(), d.id.clone()))
            .into_iter()
            .collect();
        let mut views = self
            .views(std::slice::from_ref(d), &promoted, rows)
            .await?
            .views;
        Ok(views.pop().expect("one view per deployment"))
    }

    /// The state database's rows that the views of the deployments `of` names add to the
    /// deployments' own, the three tables asked at once.
    async fn view_rows(&self, of: crate::rows_of::Of<'_>) -> Result<ViewRows, Error> {
        let (upkeep, tcp, services) = tokio::try_join!(
            self.upkeep_rows(of),
            self.tcp_rows(of),
            self.service_names(of)
        )?;
        Ok(ViewRows {
            upkeep,
            tcp,
            services,
        })
    }

    /// The views of `deployments`, their units' states asked of systemd all at once (see
    /// `Supervisor::states`) while `rows` (from [`Self::view_rows`], or already read) are
    /// awaited, each `Result` named as its monitor saw the end.
    #[tracing::instrument(skip_all, fields(deployments = deployments.len()))]
    async fn views(
        &self,
        deployments: &[Deployment],
        promoted: &HashMap<SandboxName, DeploymentId>,
        rows: impl std::future::Future<Output = Result<ViewRows, Error>>,
    ) -> Result<Views, Error> {
        let handles: Vec<_> = deployments.iter().map(|d| self.backend.handle(d)).collect();
        let cpus = crate::backend::cpu_affinity::available();
        let units: Vec<&str> = handles.iter().map(|h| h.unit.as_str()).collect();
        // The units' states and the state database's rows, asked at once: one round trip.
        let (states, rows) = tokio::try_join!(
            async {
                self.supervisor
                    .states(&units)
                    .await
                    .map_err(|e| Error::from(crate::backend::BackendError::from(e)))
            },
            rows,
        )?;
        // Read after the states: a program's end is written before its unit changes.
        let files = self
            .monitor_files
            .get_many(handles.iter().map(|h| h.dir.as_path()));
        // What each backend runs on, said once (a microVM's names its VMM and accelerator).
        let runs_on = |kind| {
            self.backend
                .get(kind)
                .map(|b| b.runs_on())
                .unwrap_or_else(|e| e.to_string())
        };
        let (container, microvm) = (
            runs_on(BackendKind::Container),
            runs_on(BackendKind::Microvm),
        );
        let mut views = deployments
            .iter()
            .zip(handles)
            .zip(states.into_iter().zip(files))
            .map(|((d, handle), (mut state, files))| {
                crate::backend::exit::name_result(&mut state, files.last_exit.as_ref());
                let attachment = self.attachment(d)?;
                Ok(DeploymentView {
                    id: d.id.clone(),
                    sandbox: d.sandbox.clone(),
                    artifact: d.artifact.clone(),
                    port: d.program_port(),
                    listen: upstream_at(&attachment, d),
                    address6: attachment.address6,
                    egress: d.egress,
                    desired: d.desired,
                    phase: match Phase::observe(d.desired, &state) {
                        // Its unit runs, but its start still waits for it to be ready.
                        Phase::Running if self.upkeep.start_under_way(&d.id) => Phase::Starting,
                        phase => phase,
                    },
                    state,
                    promoted: promoted.get(&d.sandbox) == Some(&d.id),
                    preview_url: self.preview_url(d),
                    limits: d.limits,
                    db_branch: d.db_branch,
                    runtime: d.runtime,
                    backend: d.backend,
                    runs_on: match d.backend {
                        BackendKind::Container => container.clone(),
                        BackendKind::Microvm => microvm.clone(),
                    },
                    created_at: d.created_at,
                    last_exit: files.last_exit,
                    disk: files.disk,
                    volumes: d.volumes.clone(),
                    unit: handle.unit,
                    // Filled in by `apply_upkeep` below.
                    health_check: None,
                    idle_timeout_secs: None,
                    pinned: false,
                    last_request_at: None,
                    // Filled in by `apply_tcp_urls` below.
                    tcp_url: None,
                    // Filled in by `apply_service_names` below.
                    service: None,
                    tier: d.tier,
                    cpu_affinity: crate::backend::cpu_affinity::pinned(d, &cpus),
                })
            })
            .collect::<Result<Vec<DeploymentView>, Error>>()?;
        self.apply_upkeep(&mut views, &rows.upkeep);
        self.apply_tcp_urls(&rows.tcp, &mut [], &mut views);
        crate::services::apply_service_names(&mut views, &rows.services);
        Ok(Views {
            views,
            tcp: rows.tcp,
        })
    }

    /// Every sandbox with its deployments: the deployments and the rows their views add are
    /// read at once.
    #[tracing::instrument(skip_all)]
    pub async fn sandboxes(&self) -> Result<Vec<SandboxView>, Error> {
        let ((names, deployments, promoted), rows) = tokio::try_join!(
            async {
                Ok::<_, Error>(tokio::try_join!(
                    self.state.sandbox_names(),
                    self.state.deployments(),
                    self.state.promoted(),
                )?)
            },
            self.view_rows(crate::rows_of::Of::Host),
        )?;
        let mut by_sandbox: BTreeMap<SandboxName, Vec<DeploymentView>> =
            names.into_iter().map(|name| (name, Vec::new())).collect();
        let Views { views, tcp } = self
            .views(&deployments, &promoted, std::future::ready(Ok(rows)))
            .await?;
        for view in views {
            by_sandbox
                .entry(view.sandbox.clone())
                .or_default()
                .push(view);
        }
        let mut list: Vec<SandboxView> = by_sandbox
            .into_iter()
            .map(|(name, deployments)| self.sandbox_view(name, deployments, &promoted))
            .collect();
        self.apply_tcp_urls(&tcp, &mut list, &mut []);
        Ok(list)
    }

    /// [`Self::sandboxes`] as JSON (`GET /v1/sandboxes`, `nx ls`): the list kept from an
    /// earlier request while nothing it shows changed (see `list_cache`), else read and kept.
    /// Errors: those of [`Self::sandboxes`].
    #[tracing::instrument(skip_all)]
    pub async fn sandboxes_json(&self) -> Result<bytes::Bytes, Error> {
        let started = std::time::Instant::now();
        // Taken before any of the list's reads: a change during them leaves the list old.
        let sources = crate::list_cache::Sources {
            state: self.state.views_changes(),
            units: self.supervisor.states_changes(),
            files: self.monitor_files.changes(),
            cpus: crate::backend::cpu_affinity::available(),
        };
        if let Some(body) = self.list_cache.get(&sources) {
            tracing::debug!(bytes = body.len(), "the kept list");
            return Ok(body);
        }
        let list = self.sandboxes().await?;
        let mut body = self.list_cache.buffer();
        serde_json::to_writer(&mut body, &list).map_err(|e| Error::Io {
            what: "writing the sandboxes' list as JSON".to_owned(),
            source: e.into(),
        })?;
        let body = bytes::Bytes::from(body);
        let counters_move = list
            .iter()
            .flat_map(|s| &s.deployments)
            .any(|d| crate::supervisor::unit_states::has_processes(&d.state));
        let until =
            counters_move.then(|| started + crate::supervisor::unit_states::COUNTERS_MAX_AGE);
        self.list_cache.put(sources, body.clone(), until);
        Ok(body)
    }

    /// One sandbox: only its own deployments are read and asked about.
    #[tracing::instrument(skip(self))]
    pub async fn sandbox(&self, name: &SandboxName) -> Result<SandboxView, Error> {
        let ((exists, deployments, promoted), rows) = tokio::try_join!(
            async {
                Ok::<_, Error>(tokio::try_join!(
                    self.state.sandbox_exists(name),
                    self.state.deployments_in(name),
                    self.state.promoted_in(name),
                )?)
            },
            self.view_rows(crate::rows_of::Of::Sandbox(name.as_str())),
        )?;
        if !exists {
            return Err(no_sandbox(name));
        }
        let promoted: HashMap<SandboxName, DeploymentId> =
            promoted.map(|id| (name.clone(), id)).into_iter().collect();
        let Views { views, tcp } = self
            .views(&deployments, &promoted, std::future::ready(Ok(rows)))
            .await?;
        let mut view = [self.sandbox_view(name.clone(), views, &promoted)];
        self.apply_tcp_urls(&tcp, &mut view, &mut []);
        let [view] = view;
        Ok(view)
    }

    fn sandbox_view(
        &self,
        name: SandboxName,
        deployments: Vec<DeploymentView>,
        promoted: &HashMap<SandboxName, DeploymentId>,
    ) -> SandboxView {
        SandboxView {
            production_url: self.url(&RouteKey::Production(name.clone())),
            promoted: promoted.get(&name).cloned(),
            name,
            deployments,
            // Filled in by `apply_tcp_urls`.
            tcp_url: None,
        }
    }

    /// What the logs of every deployment on this host may still write, in MiB: each one's
    /// `limits.log_max_mb` less what its log files hold. A push's `/data` and log cap must fit
    /// beside it, so that the logs' caps together never promise more than the disk has
    /// (attacker s9 F2b): from the last look within `log_room::FRESH` and what was recorded
    /// and removed since (see `log_room`), else from a look of its own. Errors: `State`.
    async fn log_room_promised_mb(&self) -> Result<u64, Error> {
        let bytes = match self.log_room.kept() {
            Some(bytes) => bytes,
            None => self.look_at_log_room().await?,
        };
        Ok(bytes >> 20)
    }

    /// A full look at what the logs may still write, in bytes, kept for the pushes of the
    /// next [`crate::log_room::FRESH`]: every deployment's row, and a stat of each of its log
    /// files (microseconds each: no need to leave the runtime's thread). Errors: `State`.
    async fn look_at_log_room(&self) -> Result<u64, Error> {
        let looking = self.log_room.begin();
        let deployments = self.state.deployments().await?;
        let keep = self.config.logs.keep;
        let bytes: u64 = deployments
            .iter()
            .map(|d| {
                self.backend
                    .handle(d)
                    .log_files(&d.limits, keep)
                    .room_bytes()
            })
            .sum();
        self.log_room.looked(looking, bytes);
        Ok(bytes)
    }

    /// After a push, [`crate::standby::REFILL_AFTER`] from now (once its first requests are
    /// answered): a look at the logs' room for the next pushes, none of this one's time.
    fn look_at_log_room_later(self: &Arc<Self>) {
        let app = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(crate::standby::REFILL_AFTER).await;
            if let Err(e) = app.look_at_log_room().await {
                tracing::debug!(error = %e, "the logs' room not looked at: the next push looks");
            }
        });
    }

    pub async fn log_file(&self, id: &DeploymentId) -> Result<PathBuf, Error> {
        let d = self.state.deployment(id).await?;
        Ok(self.backend.handle(&d).log_file())
    }

    pub fn backend_kind(&self) -> &'static str {
        self.backend.kind()
    }

    /// One of nxd's backends, or why it has none of that kind.
    pub fn backend(&self, kind: BackendKind) -> Result<&Arc<dyn SandboxBackend>, Error> {
        Ok(self.backend.get(kind)?)
    }
}

/// What the state database's other tables add to deployments' views (see
/// [`Orchestrator::view_rows`]).
struct ViewRows {
    /// Health check, idle timeout, pin, last request, by deployment id.
    upkeep: HashMap<String, crate::upkeep::store::Upkeep>,
    /// The TCP port table's rows of the views' scope (see `Orchestrator::tcp_rows`).
    tcp: Vec<crate::tcp::store::TcpPort>,
    /// The service names of the views' deployments, by deployment id.
    services: HashMap<String, String>,
}

/// Deployments' views, with the TCP port table's rows read beside them (for the sandboxes' own
/// TCP addresses: a sandbox's view reads its production port's row, a deployment's does not).
struct Views {
    views: Vec<DeploymentView>,
    tcp: Vec<crate::tcp::store::TcpPort>,
}

/// Where the router and the readiness probe reach a deployment with this attachment.
fn upstream_at(attachment: &crate::network::Attachment, deployment: &Deployment) -> SocketAddr {
    SocketAddr::from((attachment.address, deployment.program_port()))
}

fn no_sandbox(name: &SandboxName) -> Error {
    Error::NotFound(format!("no sandbox {name}; `nx ls` lists them"))
}

/// The container backend, and the microvm backend when the config gives it a kernel.
async fn make_backends(
    config: &Config,
    supervisor: Arc<Supervisor>,
    launcher: PathBuf,
    data_templates: Arc<DataTemplates>,
) -> Result<Arc<Backends>, Error> {
    #[cfg(any(feature = "container", feature = "microvm"))]
    let settings = crate::backend::UnitSettings {
        restart_delay: Duration::from_secs(config.sandbox.restart_delay_secs),
        log_keep: config.logs.keep,
    };
    #[cfg(feature = "container")]
    let container: Arc<dyn SandboxBackend> =
        Arc::new(crate::backend::container::ContainerBackend::new(
            Arc::clone(&supervisor),
            &config.state_dir,
            launcher.clone(),
            settings,
            data_templates,
        )?);
    #[cfg(not(feature = "container"))]
    let container: Arc<dyn SandboxBackend> = {
        let _ = data_templates;
        return Err(Error::Setup(
            "nxd was built without the container backend; enable the `container` feature".into(),
        ));
    };
    #[cfg(feature = "microvm")]
    let microvm: Option<Arc<dyn SandboxBackend>> = match config.microvm.kernel_dir {
        None => None,
        Some(_) => Some(Arc::new(
            crate::backend::microvm::MicrovmBackend::new(
                supervisor,
                &config.state_dir,
                launcher,
                settings,
                &config.microvm,
                config
                    .tasks
                    .limits
                    .with_tmp_within_memory(BackendKind::Microvm)
                    .tmp_mb,
            )
            .await?,
        )),
    };
    #[cfg(not(feature = "microvm"))]
    let microvm = {
        let _ = (supervisor, launcher);
        if config.microvm.kernel_dir.is_some() {
            return Err(Error::Setup(
                "[microvm] is set, but nxd was built without the `microvm` feature".into(),
            ));
        }
        None
    };
    Ok(Arc::new(Backends::new(container, microvm)))
}

/// Where production goes when a verb's step routes (see `state_machine::Step::Route`).
#[derive(Debug, Clone, Copy)]
enum Route {
    /// The verb never routes.
    None,
    /// A start whose routes the caller rebuilds once it has answered (a wake: the router
    /// holds the deployment's upstream already and forwards as soon as it is ready).
    Later,
    /// A push's start of its new deployment: routed while it starts
    /// ([`StartRoutes::WhileStarting`]).
    Preview,
    Promote {
        swap_db: bool,
    },
    Rollback,
}

/// A push's start's error `e` with what became of its recorded `deployment`, when the start
/// did not end it (it ended as not ready, or someone stopped or removed it: its own errors say
/// so). A fault of the host's (the systemd manager ended, killed, or PostgreSQL with it)
/// leaves it recorded to run, and nxd's re-adoption starts it once the manager is back
/// (newcomer20 N2: the push answered the manager's D-Bus error alone, and a user who pushed
/// again got two).
fn may_come_up(e: Error, deployment: &Deployment) -> Error {
    match e {
        Error::NotReady { .. } | Error::Conflict(_) | Error::Invalid(_) | Error::NotFound(_) => e,
        e => {
            let (id, sandbox) = (&deployment.id, &deployment.sandbox);
            e.with_outcome(&format!(
                "deployment {id} was made and may still come up (nxd starts what should run again once its systemd manager or database is back): look with `nx status {sandbox}` before pushing again; `nx rm {id}` removes it"
            ))
        }
    }
}

/// The restarts a deployment's unit had before its program was given to it (a standby's
/// waiter's, 0 for a cold start), which its readiness wait takes from the unit's count; shared
/// by every ask of the unit's state, resolved at the first.
type RestartsBefore = futures_util::future::Shared<futures_util::future::BoxFuture<'static, u32>>;

/// When a start sends the routes (`Orchestrator::start_and_wait`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartRoutes {
    /// Once it is ready, or stopped as not ready: what a start that may serve production
    /// does, so that production never leads to a program not listening yet.
    After,
    /// While it starts (the router holds them when it is ready), and again only when it did
    /// not become ready: a push's new deployment, whose only route is its preview, whose URL
    /// nobody has before the push answers. Until it listens, a request there gets the
    /// router's 502.
    WhileStarting,
    /// Left to the caller, who rebuilds them once it answered (a wake); one that did not
    /// become ready stays idle.
    Later,
}

/// The state machine's effects on one deployment: systemd, PostgreSQL and the routes.
struct Target<'a> {
    app: &'a Orchestrator,
    deployment: &'a Deployment,
    route: Route,
    /// Between a stop's SIGTERM and SIGKILL.
    stop_timeout: Duration,
    /// What a start knows of the deployment as it begins.
    known: Known,
}

/// What a start knows of its deployment before it begins (`Orchestrator::start_and_wait`).
#[derive(Clone)]
enum Known {
    /// Its record as read before the start, which may have waited for another start, an idle
    /// stop or an expiry: the record is read again as the start begins, with its health check.
    Record,
    /// A push's new deployment, as its push recorded it: no verb changes it while the push is
    /// under way (`crate::pushes`: promote, stop and start are refused, `nx rm` waits for the
    /// push), so nothing is read again; `health` is the check its upkeep row was written with,
    /// resolved.
    Pushed { health: Option<ResolvedHealthCheck> },
}

#[async_trait::async_trait]
impl Effects for Target<'_> {
    async fn start(&self) -> Result<(), Error> {
        let routes = match self.route {
            Route::Later => StartRoutes::Later,
            Route::Preview => StartRoutes::WhileStarting,
            Route::None | Route::Promote { .. } | Route::Rollback => StartRoutes::After,
        };
        (self.app)
            .start_known(self.deployment, routes, self.known.clone())
            .await
    }

    async fn stop(&self) -> Result<(), Error> {
        self.app.unroute(self.deployment).await?;
        let handle = self.app.backend.handle(self.deployment);
        Ok(self.app.backend.stop(&handle, self.stop_timeout).await?)
    }

    async fn destroy(&self) -> Result<(), Error> {
        self.app.remove_marked(self.deployment).await
    }

    async fn route(&self) -> Result<(), Error> {
        match self.route {
            Route::None | Route::Later | Route::Preview => Ok(()),
            Route::Promote { swap_db } => self.app.switch_to(self.deployment, swap_db).await,
            Route::Rollback => self.app.roll_back_to(self.deployment).await,
        }
    }

    async fn idle(&self) -> Result<(), Error> {
        self.app.go_idle(self.deployment).await
    }
}
