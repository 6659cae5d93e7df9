//! What nxd does to deployments on its own, every [`TICK`]: it reads from the router when each
//! deployment last had a request and keeps that in its database ([`store`]); it checks the
//! health of those with a health check and restarts one that fails its threshold in a row
//! (`health`); it stops one that had no request for its idle timeout, which the router wakes on
//! the next request (`idle`, `wake`: scale to zero); and it removes a preview that had no
//! request for its sandbox's time to live unless it is pinned (`expiry`). The idle clock starts
//! when the deployment was last ready, the time to live at its creation (both from its last
//! request on), and neither stops one while a start of it (a push, `nx start`, a wake, a
//! restart) is under way (`UpkeepState::starting`). On a clock of its own, it deletes stored
//! content no deployment runs once unused for `store.unused_grace_secs` (`content`).

mod content;
mod expiry;
mod health;
mod idle;
mod retries;
pub mod store;
mod wake;

pub use health::Resolved as ResolvedHealthCheck;
pub use wake::wake_socket;

use crate::api::DeploymentView;
use crate::domain::{Deployment, Desired};
use crate::error::Error;
use crate::names::DeploymentId;
use crate::router::Traffic;
use crate::rows_of::Of;
use crate::state::StateError;
use crate::Orchestrator;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often nxd looks at the router's traffic, idle timeouts, expiry and due health checks.
pub const TICK: Duration = Duration::from_secs(1);

/// Whether `elapsed` has reached `secs` seconds. A span past chrono's range (about 292
/// million years: a setting stored before [`crate::api::health::MAX_SECONDS`] was checked) is
/// never reached.
fn lasted(elapsed: chrono::TimeDelta, secs: u64) -> bool {
    i64::try_from(secs)
        .ok()
        .and_then(chrono::TimeDelta::try_seconds)
        .is_some_and(|limit| elapsed >= limit)
}

/// What the router last said of one deployment.
#[derive(Debug, Clone, Copy)]
struct Seen {
    requests: u64,
    in_flight: u64,
    /// Its last request (or nxd's first sight of its count).
    at: DateTime<Utc>,
}

/// nxd's memory of what it does on its own, for as long as it runs.
pub struct UpkeepState {
    /// Per deployment: its idle stop and its wakes wait for each other.
    locks: Mutex<HashMap<DeploymentId, Arc<tokio::sync::Mutex<()>>>>,
    /// Per deployment: its starts in flight (readers, any number at once: a push, `nx start`,
    /// a wake, a restart) and its idle stop or expiry (the writer, only while no start is in flight)
    /// exclude each other (see [`UpkeepState::starting`]).
    starts: Mutex<HashMap<DeploymentId, Arc<tokio::sync::RwLock<()>>>>,
    /// Per deployment: its starts run one at a time, in the order they came (newcomer18 N2:
    /// the next nxd's adoption of a preview whose branch copy a crash cut short and an
    /// `nx start` of it each made its branch again, the one dropping the database the other
    /// was copying into).
    one_start: Mutex<HashMap<DeploymentId, Arc<tokio::sync::Mutex<()>>>>,
    /// The router's counts as last read.
    seen: Mutex<HashMap<String, Seen>>,
    /// When each deployment last became ready after a start by this nxd.
    ready: Mutex<HashMap<DeploymentId, DateTime<Utc>>>,
    /// When this nxd started: the idle clock of what it adopted running starts there.
    since: DateTime<Utc>,
    health: health::Checks,
    /// Expired previews whose removal failed: when to try again.
    expiry_retries: retries::Retries,
    /// Idle deployments whose start by a wake failed: when a request may start them again.
    wake_retries: retries::Retries,
    /// The last usage sample (`crate::usage`).
    pub(crate) usage: crate::usage::Sampler,
}

impl Default for UpkeepState {
    fn default() -> Self {
        Self {
            locks: Mutex::default(),
            starts: Mutex::default(),
            one_start: Mutex::default(),
            seen: Mutex::default(),
            ready: Mutex::default(),
            since: Utc::now(),
            health: health::Checks::default(),
            expiry_retries: retries::Retries::default(),
            wake_retries: retries::Retries::default(),
            usage: crate::usage::Sampler::default(),
        }
    }
}

impl UpkeepState {
    /// The lock a deployment's idle stop and wakes hold.
    fn lock(&self, id: &DeploymentId) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("upkeep lock")
            .entry(id.clone())
            .or_default()
            .clone()
    }

    /// The gate a deployment's starts (readers) and its idle stop or expiry (writer) take.
    fn gate(&self, id: &DeploymentId) -> Arc<tokio::sync::RwLock<()>> {
        self.starts
            .lock()
            .expect("upkeep lock")
            .entry(id.clone())
            .or_default()
            .clone()
    }

    /// A start of the deployment (pushed, started, woken, restarted, adopted) is under way
    /// until the returned guard is dropped: meanwhile no idle stop or expiry touches it, and
    /// no other start of it runs. Waits for an idle stop of it that is under way to finish
    /// first, then for the starts of it that came before ([`StartInFlight::waited`]).
    pub(crate) async fn starting(&self, id: &DeploymentId) -> StartInFlight {
        let gate = self.gate(id).read_owned().await;
        let one = self
            .one_start
            .lock()
            .expect("upkeep lock")
            .entry(id.clone())
            .or_default()
            .clone();
        let (one, waited) = match one.clone().try_lock_owned() {
            Ok(held) => (held, false),
            Err(_) => (one.lock_owned().await, true),
        };
        self.health.started(id);
        StartInFlight {
            _gate: gate,
            _one: one,
            waited,
        }
    }

    /// A start of the deployment (see [`Self::starting`]) holds it now: its program is being
    /// started, or waited for until it is ready (views say `starting`, not `running`).
    pub(crate) fn start_under_way(&self, id: &DeploymentId) -> bool {
        let one_start = self.one_start.lock().expect("upkeep lock");
        one_start.get(id).is_some_and(|one| one.try_lock().is_err())
    }

    /// A start of the deployment is under way (see [`Self::starting`]). Adds no gate: one that
    /// never started has none.
    fn is_starting(&self, id: &DeploymentId) -> bool {
        let starts = self.starts.lock().expect("upkeep lock");
        starts.get(id).is_some_and(|gate| gate.try_write().is_err())
    }

    /// A deployment was removed: everything kept of it goes, so that these maps hold only the
    /// deployments that exist (an agent making a preview per task makes thousands).
    pub(crate) fn forget(&self, id: &DeploymentId) {
        self.locks.lock().expect("upkeep lock").remove(id);
        self.starts.lock().expect("upkeep lock").remove(id);
        self.one_start.lock().expect("upkeep lock").remove(id);
        self.ready.lock().expect("upkeep lock").remove(id);
        self.seen.lock().expect("upkeep lock").remove(id.as_str());
        self.health.forget(id);
        self.expiry_retries.forget(id);
        self.wake_retries.forget(id);
    }

    /// Drops the router's counts of deployments not in `existing` (the router keeps counting
    /// a removed deployment's requests; nxd needs only those of the deployments it has).
    fn keep_seen(&self, existing: &[Deployment]) {
        let ids: std::collections::HashSet<&str> = existing.iter().map(|d| d.id.as_str()).collect();
        let mut seen = self.seen.lock().expect("upkeep lock");
        seen.retain(|id, _| ids.contains(id.as_str()));
    }

    /// How many deployments each per-deployment map holds (locks, starts, one start, ready,
    /// seen, health), for the tests.
    #[cfg(test)]
    fn sizes(&self) -> [usize; 6] {
        [
            self.locks.lock().expect("upkeep lock").len(),
            self.starts.lock().expect("upkeep lock").len(),
            self.one_start.lock().expect("upkeep lock").len(),
            self.ready.lock().expect("upkeep lock").len(),
            self.seen.lock().expect("upkeep lock").len(),
            self.health.len(),
        ]
    }

    /// The deployment became ready after a start: its idle clock starts now.
    pub(crate) fn ready(&self, id: &DeploymentId) {
        self.ready
            .lock()
            .expect("upkeep lock")
            .insert(id.clone(), Utc::now());
        // It started (a wake, `nx start`, a promotion): a failed wake's back-off is over.
        self.wake_retries.forget(id);
    }

    /// When the deployment last became ready as far as this nxd knows: after its last start by
    /// this nxd; for one created before this nxd started and not started since (adopted
    /// running), this nxd's start. None for one this nxd created that was never ready (its
    /// push is still waiting for it, or its start failed): it has no idle clock yet.
    fn ready_at(&self, d: &Deployment) -> Option<DateTime<Utc>> {
        let ready = self.ready.lock().expect("upkeep lock").get(&d.id).copied();
        ready.or((d.created_at < self.since).then_some(self.since))
    }

    /// Takes in the router's `traffic`; returns the deployments whose requests changed since
    /// the last read, with the time of their last request.
    fn observe(&self, traffic: &Traffic) -> Vec<(String, DateTime<Utc>)> {
        let mut seen = self.seen.lock().expect("upkeep lock");
        let mut changed = Vec::new();
        for (id, t) in &traffic.deployments {
            let at =
                DateTime::from_timestamp_millis(i64::try_from(t.last_request_unix_ms).unwrap_or(0))
                    .unwrap_or_else(Utc::now);
            let before = seen.get(id).copied();
            if before.is_none_or(|b| b.requests != t.requests || t.in_flight > 0) {
                changed.push((id.clone(), at));
            }
            seen.insert(
                id.clone(),
                Seen {
                    requests: t.requests,
                    in_flight: t.in_flight,
                    at,
                },
            );
        }
        changed
    }

    /// Whether the removal of a preview that is `expired` (past its time to live, neither
    /// pinned nor production) may be tried now: not within the back-off of a removal that
    /// failed. One that is not expired (a request came, it was pinned or promoted) forgets
    /// that back-off, so that its next expiry is tried at once.
    fn expiry_due(&self, id: &DeploymentId, expired: bool) -> bool {
        if !expired {
            self.expiry_retries.forget(id);
            return false;
        }
        self.expiry_retries.due(id)
    }

    /// The router's last count for a deployment.
    fn seen(&self, id: &str) -> Option<Seen> {
        self.seen.lock().expect("upkeep lock").get(id).copied()
    }

    /// When a deployment last had a request as far as this nxd saw (`stored`: the database's).
    fn last_request(&self, id: &str, stored: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        self.seen(id).map(|s| s.at).max(stored)
    }
}

/// A start in flight (see [`UpkeepState::starting`]); dropped when the start is over.
pub(crate) struct StartInFlight {
    _gate: tokio::sync::OwnedRwLockReadGuard<()>,
    _one: tokio::sync::OwnedMutexGuard<()>,
    /// Whether it waited for another start of the deployment, which may have made it run.
    pub(crate) waited: bool,
}

impl Orchestrator {
    /// Runs the upkeep every [`TICK`] in the background, for as long as the orchestrator
    /// lives; serves the router's wakes.
    pub(crate) fn keep_up(self: &Arc<Self>) -> Result<(), Error> {
        self.serve_wakes()?;
        let app = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(app) = app.upgrade() else { return };
                if let Err(e) = app.upkeep_once().await {
                    tracing::warn!(error = %e, "upkeep: trying again next tick");
                }
            }
        });
        Ok(())
    }

    /// One round: traffic in, then health checks, idle stops and expiry as due.
    async fn upkeep_once(self: &Arc<Self>) -> Result<(), Error> {
        let traffic = match self.router.traffic().await {
            Ok(traffic) => Some(traffic),
            Err(e) => {
                tracing::debug!(error = %e, "no traffic from the router: no idle stop or expiry this round");
                None
            }
        };
        if let Some(traffic) = &traffic {
            let changed = self.upkeep.observe(traffic);
            // Only rounds that saw requests write (and change views).
            let _write = (!changed.is_empty()).then(|| self.state.views_write());
            store::record_requests(self.state.pool(), &changed)
                .await
                .map_err(StateError::from)?;
        }
        if let Err(e) = self.sample_usage(traffic.as_ref()).await {
            tracing::warn!(error = %e, "usage: no sample this round");
        }
        let pool = self.state.pool();
        let (deployments, promoted, rows, settings) = tokio::try_join!(
            async { Ok::<_, Error>(self.state.deployments().await?) },
            async { Ok::<_, Error>(self.state.promoted().await?) },
            async {
                Ok::<_, Error>(
                    store::rows(pool, Of::Host)
                        .await
                        .map_err(StateError::from)?,
                )
            },
            async {
                Ok::<_, Error>(
                    store::sandbox_settings(pool)
                        .await
                        .map_err(StateError::from)?,
                )
            },
        )?;
        self.upkeep.keep_seen(&deployments);
        let now = Utc::now();
        for d in deployments.iter().filter(|d| d.desired == Desired::Running) {
            let row = rows.get(d.id.as_str()).cloned().unwrap_or_default();
            if let Some(check) = health::resolve(&row.health_check, &self.config.sandbox) {
                if self.upkeep.health.due(&d.id, check.interval) {
                    let (app, d) = (Arc::clone(self), d.clone());
                    tokio::spawn(async move { app.check_health(&d, &check).await });
                }
            }
        }
        if traffic.is_none() {
            return Ok(());
        }
        let serves_production = |d: &Deployment| promoted.get(&d.sandbox) == Some(&d.id);
        for d in &deployments {
            let row = rows.get(d.id.as_str()).cloned().unwrap_or_default();
            let sandbox = settings
                .get(d.sandbox.as_str())
                .cloned()
                .unwrap_or_default();
            let last_request = self.upkeep.last_request(d.id.as_str(), row.last_request_at);
            let idle_timeout = row
                .idle_timeout_secs
                .filter(|_| !serves_production(d) || sandbox.idle_production);
            // Nothing stops or removes a deployment for idleness while it starts.
            if self.upkeep.is_starting(&d.id) {
                continue;
            }
            let ready_at = self.upkeep.ready_at(d);
            // Requests under way (an open WebSocket, a long download), as the router said.
            let in_flight = self
                .upkeep
                .seen(d.id.as_str())
                .is_some_and(|s| s.in_flight > 0);
            if let (Some(secs), Desired::Running, Some(ready_at)) =
                (idle_timeout, d.desired, ready_at)
            {
                // Its idle clock starts at its last request or when it was last ready,
                // whichever is later.
                let active = last_request.map_or(ready_at, |r| r.max(ready_at));
                if !in_flight && lasted(now - active, secs) {
                    let (app, id) = (Arc::clone(self), d.id.clone());
                    tokio::spawn(async move { app.stop_idle(&id, ready_at).await });
                }
            }
            let ttl = sandbox
                .preview_ttl_secs
                .unwrap_or(self.config.sandbox.preview_ttl_secs);
            // Counted from its last request, else its creation: both are in the state
            // database, so an nxd restart does not start the clock again (`ready_at` of a
            // deployment adopted at start is this nxd's start).
            let active = last_request.unwrap_or(d.created_at).max(d.created_at);
            let expired = !serves_production(d)
                && !row.pinned
                && ttl > 0
                && lasted(now - active, ttl)
                && (!in_flight || lasted(now - active, ttl.saturating_add(expiry::HELD_OPEN_SECS)));
            if self.upkeep.expiry_due(&d.id, expired) {
                self.expire(d, now - active).await;
            }
        }
        Ok(())
    }

    /// The upkeep rows of the deployments `of` names (those without one are missing), for
    /// [`Self::apply_upkeep`].
    pub(crate) async fn upkeep_rows(
        &self,
        of: Of<'_>,
    ) -> Result<HashMap<String, store::Upkeep>, Error> {
        Ok(store::rows(self.state.pool(), of)
            .await
            .map_err(StateError::from)?)
    }

    /// Adds what nxd does on its own to each view (`rows` from [`Self::upkeep_rows`]): health
    /// check, idle timeout, pin, last request.
    pub(crate) fn apply_upkeep(
        &self,
        views: &mut [DeploymentView],
        rows: &HashMap<String, store::Upkeep>,
    ) {
        for view in views {
            let row = rows.get(view.id.as_str()).cloned().unwrap_or_default();
            view.health_check =
                health::resolve(&row.health_check, &self.config.sandbox).map(|r| r.to_wire());
            view.idle_timeout_secs = row.idle_timeout_secs;
            view.pinned = row.pinned;
            view.last_request_at = self
                .upkeep
                .last_request(view.id.as_str(), row.last_request_at);
        }
    }

    /// A deployment's health check, every field resolved; none without a path.
    pub(crate) async fn health_check(
        &self,
        deployment: &Deployment,
    ) -> Result<Option<ResolvedHealthCheck>, Error> {
        let rows = store::rows(self.state.pool(), Of::Deployment(deployment.id.as_str()))
            .await
            .map_err(StateError::from)?;
        let own = rows
            .get(deployment.id.as_str())
            .map(|r| r.health_check.clone())
            .unwrap_or_default();
        Ok(self.resolve_health_check(&own))
    }

    /// A deployment's own health check (`own`: its push's fields over its sandbox's, as its
    /// upkeep row holds them) with every field resolved from nxd's `[sandbox]`; none without a
    /// path.
    pub(crate) fn resolve_health_check(
        &self,
        own: &crate::api::HealthCheck,
    ) -> Option<ResolvedHealthCheck> {
        health::resolve(own, &self.config.sandbox)
    }

    /// `nx pin` (`pinned`) or `nx unpin`: whether a preview stays past its sandbox's time to
    /// live. Errors: `State(NoDeployment)`.
    #[tracing::instrument(skip(self))]
    pub async fn pin(&self, id: &DeploymentId, pinned: bool) -> Result<DeploymentView, Error> {
        let deployment = self.state.deployment(id).await?;
        let write = self.state.views_write();
        store::set_pinned(self.state.pool(), id.as_str(), pinned)
            .await
            .map_err(StateError::from)?;
        drop(write);
        tracing::info!(pinned, "pin changed");
        let promoted = self.state.promoted_in(&deployment.sandbox).await? == Some(id.clone());
        self.view(&deployment, promoted).await
    }
}

#[cfg(test)]
mod tests {
    use super::lasted;
    use chrono::TimeDelta;

    #[tokio::test]
    async fn a_removed_deployment_is_forgotten_and_asking_about_starts_adds_nothing() {
        let upkeep = super::UpkeepState::default();
        let id = crate::names::DeploymentId::generate();
        assert!(!upkeep.is_starting(&id));
        assert_eq!(upkeep.sizes(), [0; 6], "a question added an entry");
        let start = upkeep.starting(&id).await;
        assert!(upkeep.is_starting(&id));
        assert!(upkeep.start_under_way(&id));
        drop(start);
        upkeep.ready(&id);
        let _ = upkeep.lock(&id);
        let _ = upkeep.health.due(&id, std::time::Duration::from_secs(1));
        upkeep.seen.lock().expect("seen").insert(
            id.to_string(),
            super::Seen {
                requests: 1,
                in_flight: 0,
                at: chrono::Utc::now(),
            },
        );
        assert_eq!(upkeep.sizes(), [1; 6]);
        upkeep.forget(&id);
        assert_eq!(upkeep.sizes(), [0; 6]);
    }

    /// Review s8 #9: a preview whose removal failed, then had a request (no longer expired),
    /// is removed at once when it expires again, not after the old back-off.
    #[test]
    fn a_preview_no_longer_expired_forgets_its_failed_removals_back_off() {
        let upkeep = super::UpkeepState::default();
        let id = crate::names::DeploymentId::generate();
        assert!(upkeep.expiry_due(&id, true));
        for _ in 0..4 {
            upkeep.expiry_retries.failed(&id);
        }
        assert!(!upkeep.expiry_due(&id, true), "within its back-off");
        assert!(!upkeep.expiry_due(&id, false), "not expired");
        assert!(upkeep.expiry_due(&id, true), "expired again: tried at once");
    }

    #[test]
    fn a_span_is_reached_at_its_seconds_and_one_past_chronos_range_never() {
        assert!(lasted(TimeDelta::seconds(60), 60));
        assert!(!lasted(TimeDelta::seconds(59), 60));
        // i64::MAX seconds is past TimeDelta's range: TimeDelta::seconds would panic.
        assert!(!lasted(TimeDelta::MAX, i64::MAX as u64));
        assert!(!lasted(TimeDelta::MAX, u64::MAX));
    }
}
