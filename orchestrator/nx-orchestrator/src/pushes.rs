//! The pushes under way, by the id of the deployment each records (`Orchestrator.pushes`).
//!
//! A push's deployment is recorded (listed, its id known to its sandbox's tokens) long before
//! its push has finished with it: its own volume copies and its `--db-branch` copy are made
//! after the record, then the push starts it and waits until it is ready. Until then nothing
//! but its push acts on it (newcomer s17 N8, review17 #2): `nx start`, `nx stop` and
//! `nx promote` are refused (409, [`Pushes::refuse`]); a start would run it before its branch
//! is whole, or make the branch itself under the push's own copy, and one racing the failed
//! push's removal left an orphan unit holding the slot's uid and address. `nx rm` (and
//! `nx sandbox rm`) asks the push to remove its deployment ([`Pushes::ask_removal`]): the push
//! stops at its next step and removes it as `nx rm` does, and the asker waits for the push to
//! end. A push enters the set before its record is written, so that whoever reads the record
//! finds the push.
//!
//! The set lives in nxd's memory: a crash ends every push, and nxd's start adopts their
//! deployments as recorded.

use crate::error::Error;
use crate::names::{DeploymentId, SandboxName};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use tokio::sync::watch;

/// The pushes under way (see the module's documentation).
#[derive(Default)]
pub(crate) struct Pushes {
    under_way: Mutex<HashMap<DeploymentId, UnderWay>>,
}

/// One push under way, as the verbs see it.
struct UnderWay {
    sandbox: SandboxName,
    /// Whether `nx rm` or `nx sandbox rm` asked for its deployment's removal.
    removal_asked: bool,
    /// Whether `nx sandbox rm` asked it ([`Pushes::ask_removal_in`]).
    by_sandbox_rm: bool,
    /// Closed when the push ends (its [`Pushing`] is dropped).
    ended: watch::Receiver<()>,
}

/// A push's place in [`Pushes`] while it runs; it leaves when the push ends, however it ends
/// (an error, or its request dropped), and then whoever waits for it is woken.
pub(crate) struct Pushing<'a> {
    pushes: &'a Pushes,
    id: DeploymentId,
    /// Dropped after the push left the set: closes the receivers that [`Pushes::ask_removal`]
    /// handed out.
    _ended: watch::Sender<()>,
}

/// What [`Pushing::leave`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Left {
    /// The push left the set: its deployment is the verbs' from now on.
    Done,
    /// Its deployment's removal was asked: the push stays in the set until it removed it.
    RemovalAsked,
}

impl Pushes {
    fn lock(&self) -> MutexGuard<'_, HashMap<DeploymentId, UnderWay>> {
        self.under_way
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Enters the push of the deployment `id` (to be recorded in `sandbox`) in the set, before
    /// its record is written.
    pub(crate) fn enter(&self, id: &DeploymentId, sandbox: &SandboxName) -> Pushing<'_> {
        let (sender, ended) = watch::channel(());
        self.lock().insert(
            id.clone(),
            UnderWay {
                sandbox: sandbox.clone(),
                removal_asked: false,
                by_sandbox_rm: false,
                ended,
            },
        );
        Pushing {
            pushes: self,
            id: id.clone(),
            _ended: sender,
        }
    }

    /// Whether the push of `id` is under way.
    pub(crate) fn under_way(&self, id: &DeploymentId) -> bool {
        self.lock().contains_key(id)
    }

    /// `Error::Conflict` while the push of `id` is under way, naming `verb` (`start`, `stop`,
    /// `promote`) as what to run once it ended, and `nx rm` as what removes it meanwhile.
    pub(crate) fn refuse(&self, id: &DeploymentId, verb: &str) -> Result<(), Error> {
        if self.under_way(id) {
            return Err(Error::Conflict(format!(
                "deployment {id} is still being pushed (its push has not finished: its copies are being made, or it is starting): wait for `nx push` to end, then {verb} it; `nx rm {id}` removes it meanwhile"
            )));
        }
        Ok(())
    }

    /// Asks the push of `id`, if one is under way, to remove its deployment; returns what
    /// tells when the push ended (`changed()` then fails), `None` when none is under way.
    pub(crate) fn ask_removal(&self, id: &DeploymentId) -> Option<watch::Receiver<()>> {
        let mut under_way = self.lock();
        let push = under_way.get_mut(id)?;
        push.removal_asked = true;
        Some(push.ended.clone())
    }

    /// [`Self::ask_removal`] of every push under way in `sandbox`: their ids, each with what
    /// tells when it ended.
    pub(crate) fn ask_removal_in(
        &self,
        sandbox: &SandboxName,
    ) -> Vec<(DeploymentId, watch::Receiver<()>)> {
        let mut under_way = self.lock();
        under_way
            .iter_mut()
            .filter(|(_, push)| &push.sandbox == sandbox)
            .map(|(id, push)| {
                push.removal_asked = true;
                push.by_sandbox_rm = true;
                (id.clone(), push.ended.clone())
            })
            .collect()
    }
}

impl Pushing<'_> {
    /// `Error::Conflict` saying that its deployment was removed while it was pushed, when that
    /// removal was asked ([`Pushes::ask_removal`]): the push removes it at once.
    pub(crate) fn check_removal(&self) -> Result<(), Error> {
        // The set's lock let go first: `removed` takes it again.
        let asked = (self.pushes.lock().get(&self.id)).is_some_and(|push| push.removal_asked);
        match asked {
            true => Err(self.removed()),
            false => Ok(()),
        }
    }

    /// What a push whose deployment's removal was asked fails with. One that `nx sandbox rm`
    /// asked says that the sandbox may stay: that removal ends the pushes into it before its
    /// final backup, which can still fail (review19 #7).
    pub(crate) fn removed(&self) -> Error {
        let id = &self.id;
        match self.pushes.lock().get(id) {
            Some(push) if push.by_sandbox_rm => Error::Conflict(format!(
                "deployment {id} was removed while it was starting, before its push ended: `nx sandbox rm {0}` was asked, which ends the pushes into it first; nothing of the deployment is left. Should sandbox {0} stay (its removal can still fail, at its final backup: `nx status {0}`), push again",
                push.sandbox
            )),
            _ => Error::Conflict(format!(
                "deployment {id} was removed (`nx rm`) while it was starting, before its push ended: nothing of it is left"
            )),
        }
    }

    /// Leaves the set unless its deployment's removal was asked, in one step with that check:
    /// a removal asked later finds no push, and removes the deployment itself.
    pub(crate) fn leave(&self) -> Left {
        let mut under_way = self.pushes.lock();
        match under_way.get(&self.id) {
            Some(push) if push.removal_asked => Left::RemovalAsked,
            _ => {
                under_way.remove(&self.id);
                Left::Done
            }
        }
    }
}

impl Drop for Pushing<'_> {
    fn drop(&mut self) {
        self.pushes.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeploymentId {
        DeploymentId::parse(s).expect("id")
    }

    fn sandbox(s: &str) -> SandboxName {
        SandboxName::parse(s).expect("sandbox")
    }

    #[tokio::test]
    async fn a_push_is_refused_to_verbs_until_it_ends_and_a_removal_waits_for_its_end() {
        let pushes = Pushes::default();
        let (a, b) = (id("daaaaaaa"), id("dbbbbbbb"));
        let pushing = pushes.enter(&a, &sandbox("web"));
        let other = pushes.enter(&b, &sandbox("api"));
        let refused = pushes.refuse(&a, "start").expect_err("under way");
        assert!(
            refused
                .to_string()
                .contains("then start it; `nx rm daaaaaaa`"),
            "{refused}"
        );
        assert!(pushing.check_removal().is_ok());
        let mut ended = pushes.ask_removal(&a).expect("under way");
        assert!(pushing.check_removal().is_err());
        assert_eq!(pushing.leave(), Left::RemovalAsked);
        assert!(
            pushes.under_way(&a),
            "stays until it removed its deployment"
        );
        let in_api = pushes.ask_removal_in(&sandbox("api"));
        assert_eq!(in_api.len(), 1);
        assert_eq!(in_api[0].0, b);
        drop(pushing);
        assert!(ended.changed().await.is_err(), "the push ended");
        assert!(pushes.refuse(&a, "start").is_ok());
        assert!(pushes.ask_removal(&a).is_none());
        assert_eq!(other.leave(), Left::RemovalAsked);
    }

    #[test]
    fn a_push_with_no_removal_asked_leaves_at_once() {
        let pushes = Pushes::default();
        let a = id("daaaaaaa");
        let pushing = pushes.enter(&a, &sandbox("web"));
        assert_eq!(pushing.leave(), Left::Done);
        assert!(!pushes.under_way(&a));
        assert!(
            pushes.ask_removal(&a).is_none(),
            "a later rm removes it itself"
        );
    }
}
