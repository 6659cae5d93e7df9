//! One lock per sandbox for the work that touches its volumes: promote, rollback, `nx volume
//! backup|restore|rm`, `nx sandbox rm`, and the start, stop and removal of a deployment that
//! mounts a volume; and the making of its standby (`crate::standby`), which `nx sandbox rm`
//! must find made or not begun. Held across the whole of that work (a promotion's restart included), so
//! that none of them acts on what another one is halfway through changing: a restore counts
//! production's users of a volume and restarts them from their records as they are under the
//! lock, a promotion switches its mounts with no restore in between.
//!
//! The lock is a `tokio::sync::Mutex` per sandbox name (waiters are served first come, first
//! served); its holder says what it does ([`SandboxWork`]), so that a request may be refused
//! with what is under way rather than wait (a second `nx volume restore` of the same volume:
//! [`SandboxLocks::lock_unless`]). Entries go when no one holds or waits for them. The lock
//! lives in nxd's memory: it orders the requests of one nxd; what a crash leaves is nxd's
//! start's to settle.

use crate::error::Error;
use crate::names::{DeploymentId, SandboxName, VolumeName};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What holds a sandbox's lock (shown in a refusal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxWork {
    /// `nx promote` of this deployment.
    Promote(DeploymentId),
    /// `nx rollback`.
    Rollback,
    /// `nx start`, `nx stop` or `nx rm` (the verb) of a deployment that mounts a volume.
    Deployment(&'static str, DeploymentId),
    /// `nx volume backup`.
    Backup(VolumeName),
    /// `nx volume restore`.
    Restore(VolumeName),
    /// `nx volume rm`.
    RemoveVolume(VolumeName),
    /// `nx sandbox rm`.
    RemoveSandbox,
    /// The making of the sandbox's standby (`crate::standby`).
    Standby,
}

impl std::fmt::Display for SandboxWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Promote(id) => write!(f, "the promotion of deployment {id}"),
            Self::Rollback => f.write_str("a rollback"),
            Self::Deployment(verb, id) => write!(f, "`nx {verb} {id}`"),
            Self::Backup(v) => write!(f, "a backup of volume {v}"),
            Self::Restore(v) => write!(f, "a restore of volume {v}"),
            Self::RemoveVolume(v) => write!(f, "the removal of volume {v}"),
            Self::RemoveSandbox => f.write_str("the removal of the sandbox"),
            Self::Standby => f.write_str("the start of the sandbox's standby"),
        }
    }
}

/// One sandbox's lock, and the work that holds it or waits for it, in turn.
#[derive(Default)]
struct Entry {
    lock: Arc<tokio::sync::Mutex<()>>,
    works: Vec<Work>,
}

impl Entry {
    fn refuse(
        &self,
        refuse: impl Fn(&SandboxWork) -> bool,
        refusal: impl Fn(&SandboxWork, DateTime<Utc>) -> String,
    ) -> Result<(), Error> {
        match self.works.iter().find(|w| refuse(&w.what)) {
            Some(other) => Err(Error::Conflict(refusal(&other.what, other.since))),
            None => Ok(()),
        }
    }
}

struct Work {
    ticket: u64,
    what: SandboxWork,
    /// When it asked for the lock.
    since: DateTime<Utc>,
    holds: bool,
}

/// The locks of every sandbox in use (`Orchestrator.sandbox_locks`).
#[derive(Default)]
pub struct SandboxLocks {
    entries: Mutex<HashMap<SandboxName, Entry>>,
    tickets: std::sync::atomic::AtomicU64,
}

/// A sandbox's lock, held until dropped (dropped while waiting, it leaves the queue).
#[must_use = "the lock is released when the guard is dropped"]
pub struct SandboxGuard<'a> {
    locks: &'a SandboxLocks,
    sandbox: SandboxName,
    ticket: u64,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl SandboxLocks {
    /// What holds `sandbox`'s lock now, and since when (UTC), if anything does.
    pub fn holder(&self, sandbox: &SandboxName) -> Option<(SandboxWork, DateTime<Utc>)> {
        let entries = self.entries.lock().expect("sandbox locks");
        let work = entries.get(sandbox)?.works.iter().find(|w| w.holds)?;
        Some((work.what.clone(), work.since))
    }

    /// `Error::Conflict` with `refusal(that work, since)` while the work holding `sandbox`'s
    /// lock or waiting for it is one that `refuse` names; nothing is taken.
    pub fn check(
        &self,
        sandbox: &SandboxName,
        refuse: impl Fn(&SandboxWork) -> bool,
        refusal: impl Fn(&SandboxWork, DateTime<Utc>) -> String,
    ) -> Result<(), Error> {
        let entries = self.entries.lock().expect("sandbox locks");
        match entries.get(sandbox) {
            Some(entry) => entry.refuse(refuse, refusal),
            None => Ok(()),
        }
    }

    /// Takes `sandbox`'s lock for `what`, waiting for whoever holds it or asked before.
    pub async fn lock(&self, sandbox: &SandboxName, what: SandboxWork) -> SandboxGuard<'_> {
        self.lock_unless(sandbox, what, |_| false, |_, _| String::new())
            .await
            .expect("nothing is refused")
    }

    /// As [`Self::lock`], but refused at once while the work holding the lock or waiting for
    /// it is one that `refuse` names: `Error::Conflict` with `refusal(that work, since)`.
    #[tracing::instrument(skip_all, fields(sandbox = %sandbox, work = %what))]
    pub async fn lock_unless(
        &self,
        sandbox: &SandboxName,
        what: SandboxWork,
        refuse: impl Fn(&SandboxWork) -> bool,
        refusal: impl Fn(&SandboxWork, DateTime<Utc>) -> String,
    ) -> Result<SandboxGuard<'_>, Error> {
        let ticket = self
            .tickets
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let lock = {
            let mut entries = self.entries.lock().expect("sandbox locks");
            let entry = entries.entry(sandbox.clone()).or_default();
            entry.refuse(refuse, refusal)?;
            entry.works.push(Work {
                ticket,
                what,
                since: Utc::now(),
                holds: false,
            });
            Arc::clone(&entry.lock)
        };
        let mut guard = SandboxGuard {
            locks: self,
            sandbox: sandbox.clone(),
            ticket,
            held: None,
        };
        guard.held = Some(lock.lock_owned().await);
        let mut entries = self.entries.lock().expect("sandbox locks");
        if let Some(work) = entries
            .get_mut(sandbox)
            .and_then(|e| e.works.iter_mut().find(|w| w.ticket == ticket))
        {
            work.holds = true;
        }
        drop(entries);
        Ok(guard)
    }
}

impl Drop for SandboxGuard<'_> {
    fn drop(&mut self) {
        let mut entries = self.locks.entries.lock().expect("sandbox locks");
        if let Some(entry) = entries.get_mut(&self.sandbox) {
            entry.works.retain(|w| w.ticket != self.ticket);
            if entry.works.is_empty() {
                entries.remove(&self.sandbox);
            }
        }
        drop(self.held.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sandbox() -> SandboxName {
        SandboxName::parse("shop").unwrap()
    }

    fn restore() -> SandboxWork {
        SandboxWork::Restore(VolumeName::parse("files").unwrap())
    }

    async fn refuse_restores(locks: &SandboxLocks) -> Result<SandboxGuard<'_>, Error> {
        locks
            .lock_unless(
                &sandbox(),
                restore(),
                |w| *w == restore(),
                |w, _| format!("{w} is under way"),
            )
            .await
    }

    #[tokio::test]
    async fn work_waits_for_the_holder_and_a_refused_kind_is_told_what_runs_or_waits() {
        let locks = Arc::new(SandboxLocks::default());
        let first = locks.lock(&sandbox(), restore()).await;
        assert_eq!(locks.holder(&sandbox()).unwrap().0, restore());
        // A second restore is refused, naming the first.
        let refused = refuse_restores(&locks).await.err().unwrap();
        assert_eq!(
            refused.to_string(),
            "a restore of volume files is under way"
        );
        // A promotion waits until the restore ends.
        let id = DeploymentId::parse("d1234567").unwrap();
        let (promoted, promote) = tokio::sync::oneshot::channel::<()>();
        let promoting = {
            let (locks, id) = (Arc::clone(&locks), id.clone());
            tokio::spawn(async move {
                let _guard = locks.lock(&sandbox(), SandboxWork::Promote(id)).await;
                promote.await.unwrap();
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!promoting.is_finished(), "it did not wait");
        drop(first);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            locks.holder(&sandbox()).unwrap().0,
            SandboxWork::Promote(id)
        );
        // A restore waiting behind it refuses another one too; given up, it leaves the queue.
        let waiting = {
            let locks = Arc::clone(&locks);
            tokio::spawn(async move { refuse_restores(&locks).await.map(drop) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(refuse_restores(&locks).await.is_err());
        waiting.abort();
        assert!(waiting.await.unwrap_err().is_cancelled());
        promoted.send(()).unwrap();
        promoting.await.unwrap();
        assert!(locks.holder(&sandbox()).is_none());
        assert!(locks.entries.lock().unwrap().is_empty(), "the entry stayed");
        drop(refuse_restores(&locks).await.unwrap());
    }
}
