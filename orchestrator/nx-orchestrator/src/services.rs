//! Services within a sandbox (`nx push --service NAME`): a deployment declares itself a
//! service of its sandbox; the sandbox's other deployments reach it as `NAME` on its port, and
//! nothing else does. This widens the network's "never another deployment" rule only inside
//! one sandbox and only toward what was declared.
//!
//! - **Which deployment a name means**: the sandbox's promoted deployment if it declares the
//!   name, else the newest running one that does (a new push of the service takes the name
//!   over once it runs; `nx rm` of it gives the name back to the one before).
//! - **Resolution**: every sandbox has a hosts file, `<state_dir>/network/hosts/<sandbox>/hosts`
//!   (hosts(5): `localhost`, then `ADDRESS NAME` per service). Its directory is bound read-only
//!   at `/etc/nx-sandbox` in each of the sandbox's bubblewrap deployments and `/etc/hosts` is a
//!   link to the file in it, so a rewrite (a new file renamed over the old one) is seen by
//!   running deployments at their next lookup, never half-written. Programs that resolve with
//!   glibc or Go read /etc/hosts first (nsswitch.conf `files dns`).
//! - **Firewall**: the set `service_pairs` of nxd's table (see `network::firewall`) holds
//!   (client address, service address, service port) for each running deployment of the
//!   sandbox and each of its services; the forward chain accepts exactly those between two
//!   deployments' links (TCP and UDP). Both are rebuilt from the state whenever nxd rebuilds
//!   the router's table. A deployment's own pairs, to each service of its sandbox, are added
//!   before its program starts, so that it reaches them from its first instruction
//!   ([`Orchestrator::publish_clients`]); a service's name moves to a new deployment only once
//!   that one is ready.
//!
//! Not covered: images (Podman writes the container's own /etc/hosts; an image reaches a
//! service at its address, which `nx status` shows, and the firewall lets it) and microVMs
//! (no address of their own: refused at push).

use crate::api::{checks, DeploymentView, PushRequest};
use crate::domain::{BackendKind, Deployment};
use crate::error::Error;
use crate::names::{DeploymentId, SandboxName};
use crate::network::{firewall, NetworkError};
use crate::state::StateError;
use crate::Orchestrator;
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

/// Where a sandbox's hosts file's directory appears inside its deployments.
pub const SANDBOX_DIR: &str = "/etc/nx-sandbox";
/// `/etc/hosts` inside: a link into [`SANDBOX_DIR`] (relative, as bubblewrap makes it).
pub const HOSTS_LINK: &str = "nx-sandbox/hosts";

/// `<state_dir>/network/hosts/<sandbox>`: the directory of a sandbox's hosts file.
pub fn hosts_dir(state_dir: &Path, sandbox: &str) -> PathBuf {
    state_dir.join("network").join("hosts").join(sandbox)
}

/// The text of a hosts file naming `services` (name → address).
fn hosts_text(services: &BTreeMap<String, Ipv4Addr>) -> String {
    let mut text = String::from(
        "# Written by nxd: this sandbox's services (nx push --service).\n127.0.0.1\tlocalhost\n",
    );
    for (name, address) in services {
        text.push_str(&format!("{address}\t{name}\n"));
    }
    text
}

/// Replaces the hosts file in `dir` (made if missing) atomically: a new file renamed over it.
pub fn write_hosts(dir: &Path, services: &BTreeMap<String, Ipv4Addr>) -> std::io::Result<()> {
    let next = new_hosts_file(dir, services)?;
    std::fs::rename(&next, dir.join("hosts"))
}

/// Makes sure a sandbox's hosts file exists before a deployment binds its directory; one that
/// exists (written meanwhile with the sandbox's services) is left as it is: the new file is
/// hard-linked into place, which fails if one is there, and never renamed over it.
pub fn ensure_hosts(dir: &Path) -> std::io::Result<()> {
    if dir.join("hosts").is_file() {
        return Ok(());
    }
    let next = new_hosts_file(dir, &BTreeMap::new())?;
    let linked = std::fs::hard_link(&next, dir.join("hosts"));
    let _ = std::fs::remove_file(&next);
    match linked {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// A complete hosts file for `services` in `dir` (made if missing, 0755) under a name of its
/// own (0644): concurrent writers (pushes to a new sandbox at once, each preparing its
/// deployment) each have theirs, where one shared name let one writer's rename take another's
/// file away (ENOENT: CI run 1 of session 14, 8 concurrent first pushes).
fn new_hosts_file(
    dir: &Path,
    services: &BTreeMap<String, Ipv4Addr>,
) -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let next = dir.join(format!(".hosts.new.{}.{n}", std::process::id()));
    std::fs::write(&next, hosts_text(services))?;
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o644))?;
    Ok(next)
}

/// What [`Orchestrator::publish_services`] last made of the state, so that a starting
/// deployment's pairs are added without reading the state again
/// ([`Orchestrator::publish_clients`]).
#[derive(Default)]
pub(crate) struct Published {
    last: std::sync::Mutex<Last>,
}

#[derive(Default)]
struct Last {
    /// Each sandbox's services: the deployment each name means, and its address and port.
    services: HashMap<SandboxName, Vec<(DeploymentId, SocketAddrV4)>>,
    /// The service pairs set as loaded (or to be loaded again after a failed load).
    pairs: BTreeSet<(Ipv4Addr, SocketAddrV4)>,
}

impl Published {
    fn lock(&self) -> std::sync::MutexGuard<'_, Last> {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Stores a deployment's service name.
async fn insert(pool: &PgPool, deployment: &str, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO deployment_services (deployment, name) VALUES ($1, $2)")
        .bind(deployment)
        .bind(name)
        .execute(pool)
        .await?;
    Ok(())
}

/// Every deployment's service name, by deployment id.
async fn names(pool: &PgPool) -> Result<HashMap<String, String>, sqlx::Error> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT deployment, name FROM deployment_services")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

/// For each sandbox, each service name → the deployment it means (see the module's docs):
/// `deployments` oldest first, `running` their addresses.
fn resolve<'a>(
    deployments: &'a [Deployment],
    names: &HashMap<String, String>,
    promoted: &HashMap<SandboxName, DeploymentId>,
    running: &HashMap<&DeploymentId, SocketAddr>,
) -> BTreeMap<&'a SandboxName, BTreeMap<String, &'a Deployment>> {
    let mut out: BTreeMap<&SandboxName, BTreeMap<String, &Deployment>> = BTreeMap::new();
    for d in deployments.iter().filter(|d| running.contains_key(&d.id)) {
        let Some(name) = names.get(d.id.as_str()) else {
            continue;
        };
        let services = out.entry(&d.sandbox).or_default();
        let holder_promoted = services
            .get(name)
            .is_some_and(|held| promoted.get(&held.sandbox) == Some(&held.id));
        // Oldest first: a later one takes the name over, unless production holds it.
        if !holder_promoted {
            services.insert(name.clone(), d);
        }
    }
    out
}

impl Orchestrator {
    /// Refuses a bad `--service` before anything is stored.
    pub(crate) fn check_service(
        &self,
        req: &PushRequest,
        backend: BackendKind,
    ) -> Result<(), Error> {
        let Some(name) = &req.service else {
            return Ok(());
        };
        checks::check_service_name(name)?;
        if backend == BackendKind::Microvm {
            return Err(Error::Invalid(
                "--service is for the container backend: a microVM has no address of its own for its sandbox to reach; push with --backend container".into(),
            ));
        }
        Ok(())
    }

    /// Records a new deployment's service name.
    pub(crate) async fn record_service(
        &self,
        deployment: &Deployment,
        req: &PushRequest,
    ) -> Result<(), Error> {
        if let Some(name) = &req.service {
            let _write = self.state.views_write();
            insert(self.state.pool(), deployment.id.as_str(), name)
                .await
                .map_err(StateError::from)?;
        }
        Ok(())
    }

    /// Makes every sandbox's hosts file and the firewall's service pairs what the state says
    /// (`deployments` oldest first; `running`: the addresses of those that run).
    pub(crate) async fn publish_services(
        &self,
        deployments: &[Deployment],
        promoted: &HashMap<SandboxName, DeploymentId>,
        running: &HashMap<&DeploymentId, SocketAddr>,
    ) -> Result<(), Error> {
        let names = names(self.state.pool()).await.map_err(StateError::from)?;
        let services = resolve(deployments, &names, promoted, running);
        let v4 = |id: &DeploymentId| match running.get(id) {
            Some(SocketAddr::V4(addr)) => Some(*addr),
            _ => None,
        };
        let mut pairs: BTreeSet<(Ipv4Addr, SocketAddrV4)> = BTreeSet::new();
        let mut addresses: HashMap<SandboxName, Vec<(DeploymentId, SocketAddrV4)>> = HashMap::new();
        let mut sandboxes: BTreeMap<&SandboxName, BTreeMap<String, Ipv4Addr>> = deployments
            .iter()
            .map(|d| (&d.sandbox, BTreeMap::new()))
            .collect();
        for (sandbox, by_name) in &services {
            for (name, service) in by_name {
                let Some(to) = v4(&service.id) else { continue };
                sandboxes
                    .entry(sandbox)
                    .or_default()
                    .insert(name.clone(), *to.ip());
                addresses
                    .entry((*sandbox).clone())
                    .or_default()
                    .push((service.id.clone(), to));
                let clients = deployments
                    .iter()
                    .filter(|d| &d.sandbox == *sandbox && d.id != service.id)
                    .filter_map(|d| v4(&d.id));
                pairs.extend(clients.map(|from| (*from.ip(), to)));
            }
        }
        for (sandbox, entries) in &sandboxes {
            let dir = hosts_dir(&self.config.state_dir, sandbox.as_str());
            write_hosts(&dir, entries).map_err(NetworkError::io(format!(
                "writing the hosts file of sandbox {sandbox}"
            )))?;
        }
        let update = firewall::service_pairs_update(&pairs);
        *self.services.lock() = Last {
            services: addresses,
            pairs,
        };
        self.firewall_elements
            .replace(firewall::SERVICE_PAIRS, update)
            .await?;
        Ok(())
    }

    /// Lets `deployment`, about to start, reach each service of its sandbox as the last
    /// [`Self::publish_services`] resolved them: its pairs are added to the firewall's set
    /// (one `nft` run when its sandbox has services it lacks pairs to, none otherwise). What
    /// its sandbox's hosts file names does not change: a name moves to a new deployment
    /// of the service only once that one is ready (its start's full rebuild). Serialised with
    /// the other route changes (`changes`). Errors: the firewall's.
    pub(crate) async fn publish_clients(&self, deployment: &Deployment) -> Result<(), Error> {
        let SocketAddr::V4(from) = self.upstream(deployment)? else {
            return Ok(());
        };
        let _guard = self.changes.lock().await;
        let update = {
            let mut last = self.services.lock();
            let Last { services, pairs } = &mut *last;
            let missing: Vec<(Ipv4Addr, SocketAddrV4)> = services
                .get(&deployment.sandbox)
                .into_iter()
                .flatten()
                .filter(|(service, _)| *service != deployment.id)
                .map(|(_, to)| (*from.ip(), *to))
                .filter(|pair| !pairs.contains(pair))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            pairs.extend(missing);
            firewall::service_pairs_update(pairs)
        };
        self.firewall_elements
            .replace(firewall::SERVICE_PAIRS, update)
            .await?;
        Ok(())
    }

    /// The service names of the deployments `of` names (those without one are missing), by
    /// deployment id, for [`apply_service_names`].
    pub(crate) async fn service_names(
        &self,
        of: crate::rows_of::Of<'_>,
    ) -> Result<HashMap<String, String>, Error> {
        let rows: Vec<(String, String)> = of
            .fetch(self.state.pool(), "deployment, name", "deployment_services")
            .await
            .map_err(StateError::from)?;
        Ok(rows.into_iter().collect())
    }
}

/// Adds each deployment's service name (`names` from [`Orchestrator::service_names`]) to its
/// view.
pub(crate) fn apply_service_names(views: &mut [DeploymentView], names: &HashMap<String, String>) {
    for view in views {
        view.service = names.get(view.id.as_str()).cloned();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hosts_file_names_localhost_and_the_services() {
        let text = hosts_text(&BTreeMap::from([(
            "cache".to_string(),
            Ipv4Addr::new(10, 213, 0, 7),
        )]));
        assert!(text.contains("127.0.0.1\tlocalhost\n"));
        assert!(text.ends_with("10.213.0.7\tcache\n"), "{text}");
        let dir = std::env::temp_dir().join(format!("nx-hosts-test-{}", std::process::id()));
        ensure_hosts(&dir).unwrap();
        assert!(std::fs::read_to_string(dir.join("hosts"))
            .unwrap()
            .contains("localhost"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_writers_of_one_sandboxs_hosts_file_all_succeed_and_keep_its_services() {
        let root = std::env::temp_dir().join(format!("nx-hosts-race-{}", std::process::id()));
        let services = BTreeMap::from([("db".to_string(), Ipv4Addr::new(10, 213, 0, 9))]);
        for round in 0..50 {
            let dir = root.join(round.to_string());
            std::thread::scope(|s| {
                for i in 0..8 {
                    let (dir, services) = (&dir, &services);
                    s.spawn(move || {
                        match i {
                            0 => write_hosts(dir, services),
                            _ => ensure_hosts(dir),
                        }
                        .unwrap_or_else(|e| panic!("round {round}, writer {i}: {e}"))
                    });
                }
            });
            let text = std::fs::read_to_string(dir.join("hosts")).unwrap();
            // ensure_hosts never replaces the file write_hosts made with the services.
            assert!(text.contains("10.213.0.9\tdb\n"), "round {round}: {text}");
            // Nothing left beside it.
            assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
