//! The deployment state machine: a deployment's [`Phase`] (from what the user asked and what
//! systemd reports), the verbs that move it, and [`transition`], the one function that says what
//! a verb does from a phase or why it is refused. [`apply`] carries a step out through
//! [`Effects`]: the orchestrator's are systemd's and PostgreSQL's, the tests' an in-process fake.
//!
//! Production is only ever routed to a running deployment: promoting or rolling back to one that
//! is stopped (or failed, or never started) starts it first, waits until it is ready, and
//! switches only then; if it does not become ready, production stays where it was.

use crate::error::Error;
pub use nx_api::Phase;

/// What a user (or nxd itself) asks of one deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::Display, strum::EnumIter)]
#[strum(serialize_all = "lowercase")]
pub enum Verb {
    /// `nx start`, and the start of a push or of adoption.
    Start,
    /// `nx stop`.
    Stop,
    /// `nx rm`, and `nx sandbox rm` for each of its deployments.
    Remove,
    /// `nx promote`: production goes to this deployment.
    Promote,
    /// `nx rollback`: production goes back to this (the previous) deployment.
    Rollback,
    /// nxd, when no request came for the deployment's idle timeout: stop it, and let the
    /// router start it again on the next request (scale to zero).
    Idle,
}

/// What a verb does from a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing: the deployment is where the verb leads (or gets there by itself).
    Nothing,
    /// Start its unit and wait until it is ready.
    Start,
    /// Stop its unit.
    Stop,
    /// Stop its unit, then remove its files and its record.
    Destroy,
    /// Switch production to it (it runs).
    Route,
    /// Start it, wait until it is ready, then switch production to it.
    StartThenRoute,
    /// Mark its routes to wake it, then stop its unit.
    Idle,
}

/// Why a verb is refused; each message says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("it serves production; promote another deployment or `nx rollback` first")]
    ServesProduction,
    #[error("it is {0}; wait until `nx status` shows it running or stopped, then try again")]
    Busy(Phase),
    #[error("it was removed; `nx ls` lists what there is")]
    Removed,
}

/// What `verb` does to a deployment in `phase`; `serves_production`: it is its sandbox's
/// promoted deployment. The table is in this module's tests.
pub fn transition(phase: Phase, verb: Verb, serves_production: bool) -> Result<Step, Refusal> {
    use Phase::*;
    if phase == Removed {
        return Err(Refusal::Removed);
    }
    if serves_production && matches!(verb, Verb::Stop | Verb::Remove) {
        return Err(Refusal::ServesProduction);
    }
    Ok(match (verb, phase) {
        (Verb::Start, Created | Stopped | Failed | Idle) => Step::Start,
        (Verb::Start, Starting | Running) => Step::Nothing,
        (Verb::Start, Stopping) => return Err(Refusal::Busy(phase)),
        (Verb::Stop, Created | Starting | Running | Failed | Idle) => Step::Stop,
        (Verb::Stop, Stopping | Stopped) => Step::Nothing,
        (Verb::Remove, _) => Step::Destroy,
        (Verb::Promote | Verb::Rollback, Running) => Step::Route,
        (Verb::Promote | Verb::Rollback, Created | Stopped | Failed | Idle) => Step::StartThenRoute,
        (Verb::Promote | Verb::Rollback, Starting | Stopping) => return Err(Refusal::Busy(phase)),
        (Verb::Idle, Running) => Step::Idle,
        // Only what runs goes idle; a failed deployment stays failed, for its owner to see.
        (Verb::Idle, Created | Stopped | Failed | Idle) => Step::Nothing,
        (Verb::Idle, Starting | Stopping) => return Err(Refusal::Busy(phase)),
        (_, Removed) => unreachable!("refused above"),
    })
}

/// The side effects of the steps, on one deployment.
#[async_trait::async_trait]
pub trait Effects: Send + Sync {
    /// Starts it and returns once it is ready, or fails (and leaves it stopped).
    async fn start(&self) -> Result<(), Error>;
    async fn stop(&self) -> Result<(), Error>;
    async fn destroy(&self) -> Result<(), Error>;
    /// Switches production to it (for the verb this was built for).
    async fn route(&self) -> Result<(), Error>;
    /// Marks its routes to wake it on the next request, then stops its unit.
    async fn idle(&self) -> Result<(), Error>;
}

/// Carries `verb` out on a deployment in `phase`: the step [`transition`] gives, through
/// `effects`. Returns the phase it ends in; a refusal is [`Error::Conflict`] (or
/// [`Error::NotFound`] for a removed deployment) naming `what` (e.g. "deployment dxyz").
pub async fn apply(
    what: &str,
    phase: Phase,
    verb: Verb,
    serves_production: bool,
    effects: &dyn Effects,
) -> Result<Phase, Error> {
    let step = transition(phase, verb, serves_production).map_err(|refusal| {
        let message = format!("cannot {verb} {what}: {refusal}");
        match refusal {
            Refusal::Removed => Error::NotFound(message),
            _ => Error::Conflict(message),
        }
    })?;
    tracing::info!(%what, %phase, %verb, ?step, "transition");
    match step {
        Step::Nothing => return Ok(phase),
        Step::Start => effects.start().await?,
        Step::Stop => effects.stop().await?,
        Step::Destroy => {
            effects.destroy().await?;
            return Ok(Phase::Removed);
        }
        Step::Route => effects.route().await?,
        Step::StartThenRoute => {
            effects.start().await?;
            effects.route().await?;
        }
        Step::Idle => effects.idle().await?,
    }
    Ok(match verb {
        Verb::Stop => Phase::Stopped,
        Verb::Idle => Phase::Idle,
        _ => Phase::Running,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::UnitState;
    use crate::domain::Desired;
    use std::sync::Mutex;
    use strum::IntoEnumIterator;

    const PHASES: [Phase; 8] = [
        Phase::Created,
        Phase::Starting,
        Phase::Running,
        Phase::Stopping,
        Phase::Stopped,
        Phase::Failed,
        Phase::Removed,
        Phase::Idle,
    ];

    /// A deployment in memory: its phase, whether it serves production, and what was done.
    struct Fake {
        phase: Mutex<Phase>,
        production: Mutex<bool>,
        /// Its program exits before it is ready.
        broken: bool,
        calls: Mutex<Vec<&'static str>>,
    }

    impl Fake {
        fn new(phase: Phase, broken: bool) -> Self {
            Self {
                phase: Mutex::new(phase),
                production: Mutex::new(false),
                broken,
                calls: Mutex::new(Vec::new()),
            }
        }
        fn call(&self, name: &'static str) {
            self.calls.lock().unwrap().push(name);
        }
    }

    #[async_trait::async_trait]
    impl Effects for Fake {
        async fn start(&self) -> Result<(), Error> {
            self.call("start");
            if self.broken {
                *self.phase.lock().unwrap() = Phase::Stopped;
                return Err(Error::NotReady {
                    message: "exited before it was ready (exit status 0)".into(),
                    log_tail: Vec::new(),
                });
            }
            *self.phase.lock().unwrap() = Phase::Running;
            Ok(())
        }
        async fn stop(&self) -> Result<(), Error> {
            self.call("stop");
            *self.phase.lock().unwrap() = Phase::Stopped;
            Ok(())
        }
        async fn destroy(&self) -> Result<(), Error> {
            self.call("destroy");
            *self.phase.lock().unwrap() = Phase::Removed;
            Ok(())
        }
        async fn route(&self) -> Result<(), Error> {
            self.call("route");
            // The invariant: production is never routed to what does not run.
            assert_eq!(
                *self.phase.lock().unwrap(),
                Phase::Running,
                "routed to a deployment that does not run"
            );
            *self.production.lock().unwrap() = true;
            Ok(())
        }
        async fn idle(&self) -> Result<(), Error> {
            self.call("idle");
            *self.phase.lock().unwrap() = Phase::Idle;
            Ok(())
        }
    }

    /// Every (phase, verb) pair: the step, or the refusal.
    #[test]
    fn every_phase_and_verb() {
        use Phase::*;
        use Step::*;
        let busy = |p| Err(Refusal::Busy(p));
        #[rustfmt::skip]
        let table: Vec<(Phase, [Result<Step, Refusal>; 6])> = vec![
            //            Start          Stop           Remove         Promote               Rollback              Idle
            (Created,  [Ok(Step::Start), Ok(Stop),     Ok(Destroy),  Ok(StartThenRoute),   Ok(StartThenRoute),   Ok(Nothing)]),
            (Starting, [Ok(Nothing),     Ok(Stop),     Ok(Destroy),  busy(Starting),       busy(Starting),       busy(Starting)]),
            (Running,  [Ok(Nothing),     Ok(Stop),     Ok(Destroy),  Ok(Route),            Ok(Route),            Ok(Step::Idle)]),
            (Stopping, [busy(Stopping),  Ok(Nothing),  Ok(Destroy),  busy(Stopping),       busy(Stopping),       busy(Stopping)]),
            (Stopped,  [Ok(Step::Start), Ok(Nothing),  Ok(Destroy),  Ok(StartThenRoute),   Ok(StartThenRoute),   Ok(Nothing)]),
            (Failed,   [Ok(Step::Start), Ok(Stop),     Ok(Destroy),  Ok(StartThenRoute),   Ok(StartThenRoute),   Ok(Nothing)]),
            (Removed,  [Err(Refusal::Removed), Err(Refusal::Removed), Err(Refusal::Removed), Err(Refusal::Removed), Err(Refusal::Removed), Err(Refusal::Removed)]),
            (Phase::Idle, [Ok(Step::Start), Ok(Stop),     Ok(Destroy),  Ok(StartThenRoute),   Ok(StartThenRoute),   Ok(Nothing)]),
        ];
        assert_eq!(table.len(), PHASES.len());
        for (phase, row) in &table {
            for (verb, expected) in Verb::iter().zip(row) {
                assert_eq!(&transition(*phase, verb, false), expected, "{phase} {verb}");
            }
        }
        // The deployment that serves production can be neither stopped nor removed.
        for phase in PHASES {
            for verb in [Verb::Stop, Verb::Remove] {
                let expected = if phase == Removed {
                    Refusal::Removed
                } else {
                    Refusal::ServesProduction
                };
                assert_eq!(
                    transition(phase, verb, true),
                    Err(expected),
                    "{phase} {verb}"
                );
            }
        }
    }

    /// Every pair carried out on the fake: where it ends, what it did, and that production is
    /// only ever routed to a running deployment (the fake asserts it).
    #[tokio::test]
    async fn every_phase_and_verb_on_a_fake_backend() {
        for phase in PHASES {
            for verb in Verb::iter() {
                let fake = Fake::new(phase, false);
                let result = apply("deployment d1", phase, verb, false, &fake).await;
                let calls = fake.calls.lock().unwrap().clone();
                match transition(phase, verb, false) {
                    Err(_) => {
                        let e = result.expect_err("refused");
                        assert!(
                            matches!(e, Error::Conflict(_) | Error::NotFound(_)),
                            "{e:?}"
                        );
                        assert!(
                            e.to_string()
                                .starts_with(&format!("cannot {verb} deployment d1: ")),
                            "{e}"
                        );
                        assert!(calls.is_empty(), "{phase} {verb}: {calls:?}");
                    }
                    Ok(step) => {
                        let ended = result.unwrap_or_else(|e| panic!("{phase} {verb}: {e}"));
                        assert_eq!(ended, *fake.phase.lock().unwrap(), "{phase} {verb}");
                        let expected_end = match verb {
                            Verb::Start if step == Step::Nothing => phase,
                            Verb::Stop | Verb::Idle if step == Step::Nothing => phase,
                            Verb::Start | Verb::Promote | Verb::Rollback => Phase::Running,
                            Verb::Stop => Phase::Stopped,
                            Verb::Remove => Phase::Removed,
                            Verb::Idle => Phase::Idle,
                        };
                        assert_eq!(ended, expected_end, "{phase} {verb}");
                        let routed = *fake.production.lock().unwrap();
                        assert_eq!(
                            routed,
                            matches!(verb, Verb::Promote | Verb::Rollback),
                            "{phase} {verb}"
                        );
                    }
                }
            }
        }
    }

    /// Promote and rollback to a deployment that does not become ready leave production alone.
    #[tokio::test]
    async fn a_target_that_fails_to_start_is_never_routed_to() {
        for phase in [Phase::Created, Phase::Stopped, Phase::Failed] {
            for verb in [Verb::Promote, Verb::Rollback] {
                let fake = Fake::new(phase, true);
                let e = apply("deployment d1", phase, verb, false, &fake)
                    .await
                    .unwrap_err();
                assert!(matches!(e, Error::NotReady { .. }), "{e:?}");
                assert_eq!(*fake.calls.lock().unwrap(), ["start"]);
                assert!(!*fake.production.lock().unwrap());
            }
        }
    }

    #[test]
    fn phases_from_systemd() {
        let unit = |active: &str, sub: &str| UnitState {
            active: active.to_owned().into(),
            sub: sub.to_owned().into(),
            main_pid: 0,
            restarts: 0,
            memory_bytes: None,
            tasks: None,
            result: "success".to_owned().into(),
            exit_status: 0,
            exit_code: 0,
        };
        use Desired::{Idle as I, Running as R, Stopped as S};
        for (desired, active, sub, phase) in [
            (R, "active", "running", Phase::Running),
            (R, "activating", "start", Phase::Starting),
            (R, "activating", "auto-restart", Phase::Starting),
            (R, "inactive", "dead", Phase::Failed),
            (R, "failed", "failed", Phase::Failed),
            (S, "active", "running", Phase::Stopping),
            (S, "deactivating", "stop-sigterm", Phase::Stopping),
            (S, "inactive", "dead", Phase::Stopped),
            (S, "failed", "failed", Phase::Stopped),
            (I, "inactive", "dead", Phase::Idle),
            (I, "deactivating", "stop-sigterm", Phase::Stopping),
        ] {
            assert_eq!(
                Phase::observe(desired, &unit(active, sub)),
                phase,
                "{desired:?} {active}/{sub}"
            );
        }
    }
}
