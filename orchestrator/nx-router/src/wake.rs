//! Scale to zero, the router's half: a request for an idle route is held while nxd starts its
//! deployment (`nx_router_api::wake`), then forwarded. Requests that come during a wake share
//! it: one call to nxd per deployment at a time; a request that waited for another's call
//! that succeeded goes on without one of its own.
//!
//! A wake that nxd refused with `Retry-After` (the deployment did not start; nxd tries again
//! only after a back-off) is remembered for that long: requests in between get the same
//! answer at once, without a call to nxd each.

use nx_router_api::wake::{WakeClient, WakeError};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `Retry-After` of a 503 when nxd gave none (it did not answer, or refused for another
/// reason), and of one whose deployment refused the connection (`proxy`).
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// One deployment's wakes: the lock its calls to nxd take turns on, how many succeeded, and
/// until when its last refusal holds.
#[derive(Default)]
struct Slot {
    turn: tokio::sync::Mutex<()>,
    woken: AtomicU64,
    down_until: Mutex<Option<Instant>>,
}

impl Slot {
    /// The remembered refusal, while it holds.
    fn down(&self) -> Option<Down> {
        let until = (*self.down_until.lock().expect("wake slot"))?;
        let left = until.checked_duration_since(Instant::now())?;
        Some(Down {
            retry_after: left.max(Duration::from_secs(1)),
        })
    }
}

/// A deployment that cannot answer now (nxd's reason is in the router's log): when to ask
/// again.
#[derive(Debug, Clone)]
pub struct Down {
    /// For `Retry-After`: at least a second.
    pub retry_after: Duration,
}

/// The wakes by deployment id.
pub struct Waker {
    client: Option<WakeClient>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

impl Waker {
    /// Wakes through nxd's socket; without one, every wake fails with a message that says so.
    pub fn new(socket: Option<&Path>) -> Self {
        Self {
            client: socket.map(WakeClient::new),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Returns once `deployment` is ready for requests (sharing a wake under way), or why it
    /// is not and when to ask again.
    pub async fn wake(&self, deployment: &str) -> Result<(), Down> {
        let Some(client) = &self.client else {
            tracing::warn!(
                deployment,
                "wake failed: this router has no wake socket (nxd did not give one)"
            );
            return Err(Down {
                retry_after: RETRY_AFTER,
            });
        };
        let slot = self
            .slots
            .lock()
            .expect("wake lock")
            .entry(deployment.to_owned())
            .or_default()
            .clone();
        let before = slot.woken.load(Ordering::Acquire);
        if let Some(down) = slot.down() {
            return Err(down);
        }
        let _turn = slot.turn.lock().await;
        if slot.woken.load(Ordering::Acquire) != before {
            return Ok(());
        }
        if let Some(down) = slot.down() {
            return Err(down);
        }
        tracing::info!(deployment, "waking an idle deployment");
        match client.wake(deployment).await {
            Ok(()) => {
                *slot.down_until.lock().expect("wake slot") = None;
                slot.woken.fetch_add(1, Ordering::AcqRel);
                Ok(())
            }
            Err(e) => {
                let held = match &e {
                    WakeError::Refused {
                        retry_after: Some(after),
                        ..
                    } => Some(*after),
                    _ => None,
                };
                tracing::warn!(deployment, error = %e, retry_after_secs = held.map(|d| d.as_secs()), "wake failed");
                if let Some(after) = held {
                    *slot.down_until.lock().expect("wake slot") = Some(Instant::now() + after);
                }
                Err(Down {
                    retry_after: held.unwrap_or(RETRY_AFTER).max(Duration::from_secs(1)),
                })
            }
        }
    }
}
