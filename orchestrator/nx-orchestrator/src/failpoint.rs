//! Crash injection for the end-to-end tests (the `fail` crate's fail points). Built with the
//! `failpoints` feature only: there, `NX_CRASH_AT=<point>[,<point>...]` in nxd's environment
//! makes nxd kill itself with SIGKILL, as `kill -9` would, when it reaches one of those points.
//! The points are the steps of the database operations that must survive a crash:
//! `databases::tool` (pg_dump or pg_restore running), `databases::restore` (the scratch
//! database made, nothing restored yet), `databases::swap` (inside the swap's transaction) and
//! `databases::swapped` (a branch swapped in, its role not yet dropped nor recorded),
//! `databases::finishing` (`return`: finishing a swapped branch fails after its objects went
//! to production's role, before its role is dropped, as a refused DROP ROLE did),
//! `databases::promoting` (a `--swap-db` preview without volume copies restarted on
//! production's database, its promotion not yet recorded nor routed),
//! `data_disk::copied` (a new filesystem image copied, not yet renamed into place),
//! `volumes::record` (a volume's image made, its row not yet committed), `volumes::job` (a
//! volume job's unit started: a preview's copy, a backup, a restore), `volumes::promoting` (a
//! preview restarted on production's volumes, its promotion not yet recorded),
//! `volumes::promoted` (its promotion recorded, its copies not yet deleted) and
//! `volumes::swapped` (a restored volume image in place, the previous one kept, production not
//! yet started), `volumes::unpromoting` (a `--swap-db` promotion of a preview with volumes
//! failed, its undoing recorded, production's database not yet put back) and
//! `volumes::swapped_back` (production's database put back, the preview's mounts not yet),
//! `store::collected` (the store's collection renamed unused files into `.incoming`, not yet
//! deleted them nor their owners' rows), `sandboxes::removing` (`nx sandbox rm`: the
//! sandbox's deployments and volumes gone, its database, role, disk, backups and records not
//! yet), `deployments::removing` (`nx rm`: the deployment marked as being removed and
//! unrouted, its unit, files and record not yet gone; [`wait`]s there), `push::sandbox` (a push's sandbox recorded and its database made, its deployment
//! not yet recorded; [`wait`]s there too), `push::recorded` (a push's deployment recorded, nothing made for it
//! yet; [`wait`]s there), `databases::remaking` (a start found its deployment's branch
//! missing or cut short, not yet made again; [`wait`]s there), `push::branching` (a
//! `--db-branch` push's deployment recorded, its database not yet copied; [`wait`]s there) and `push::branched` (`return`: that copy fails),
//! `push::ready` (a push's deployment ready and routed, its view not yet read; [`wait`]s there).
//! Points for other actions than a crash: `network::conntrack` (`return`: forgetting a removed
//! deployment's connections fails as if `conntrack` were missing), `databases::end_sessions`
//! (`return`: ending the sessions of a restore past its time bound fails, as
//! `pg_terminate_backend` does while the shared lock table is full) and `upkeep::expire` (an
//! expired preview's removal decided, its start gate not yet taken; [`wait`]s there) and
//! `upkeep::removing` (its start gate taken, the removal not yet begun; [`wait`]s there) and
//! `store::referenced` (a store collection read which programs deployments run, nothing
//! deleted yet; [`wait`]s there), `standby::making` (a standby's slot reserved, its gate,
//! directory and unit not made yet; [`wait`]s there), `standby::queued` (a standby's making
//! begun, before its sandbox's lock and its slot, as one queued behind a backup; [`wait`]s
//! there), `standby::freed` (a push that found no free slot removed the standbys that held
//! some, and has not recorded again yet; [`wait`]s there) and `bundles::look_up` (a `POST /v1/blobs/missing` lookup
//! on its blocking thread; `sleep(<ms>)` holds that thread).
//! Code marks such a step with `fail::fail_point!("<point>")`, which compiles to nothing
//! without the feature.
//!
//! `FAILPOINTS=<point>=<actions>[;...]` (the `fail` crate's own syntax, e.g.
//! `volumes::job=sleep(3000)`) arms the other actions the crate knows, such as a pause that
//! lets a test act on the step from outside.

/// Arms the points named in `NX_CRASH_AT` and `FAILPOINTS` (a no-op without the
/// `failpoints` feature).
pub fn arm_from_env() {
    #[cfg(feature = "failpoints")]
    for point in std::env::var("NX_CRASH_AT").unwrap_or_default().split(',') {
        if !point.is_empty() {
            tracing::warn!(point, "crash point armed: nxd will kill itself there");
            let _ = fail::cfg_callback(point, || {
                let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            });
        }
    }
    #[cfg(feature = "failpoints")]
    for armed in std::env::var("FAILPOINTS").unwrap_or_default().split(';') {
        if let Some((point, actions)) = armed.split_once('=') {
            tracing::warn!(point, actions, "fail point armed");
            if let Err(e) = fail::cfg(point, actions) {
                tracing::error!(point, actions, error = %e, "fail point not armed");
            }
        }
    }
}

/// At a point armed with `return(<ms>)`, waits that many milliseconds without blocking the
/// runtime's thread (the crate's own `sleep` blocks it, and with it whatever else that worker
/// runs, such as the API's handlers); nothing without the `failpoints` feature or unarmed.
pub async fn wait(point: &str) {
    #[cfg(feature = "failpoints")]
    if let Some(Some(ms)) = fail::eval(point, |ms| ms.and_then(|m| m.parse::<u64>().ok())) {
        tracing::warn!(point, ms, "fail point: waiting");
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = point;
}
