//! Scale to zero, the router's half: a request for an idle route is held while nxd starts its
//! deployment (`nx_router_api::wake`), then forwarded. Requests that come during a wake share
//! it: one call to nxd per deployment at a time; a request that waited for another's call
//! that succeeded goes on without one of its own.

use nx_router_api::wake::WakeClient;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One deployment's wakes: the lock its calls to nxd take turns on, and how many succeeded.
#[derive(Default)]
struct Slot {
    turn: tokio::sync::Mutex<()>,
    woken: AtomicU64,
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
    /// is not.
    pub async fn wake(&self, deployment: &str) -> Result<(), String> {
        let Some(client) = &self.client else {
            return Err("this router has no wake socket (nxd did not give one)".into());
        };
        let slot = self
            .slots
            .lock()
            .expect("wake lock")
            .entry(deployment.to_owned())
            .or_default()
            .clone();
        let before = slot.woken.load(Ordering::Acquire);
        let _turn = slot.turn.lock().await;
        if slot.woken.load(Ordering::Acquire) != before {
            return Ok(());
        }
        tracing::info!(deployment, "waking an idle deployment");
        client.wake(deployment).await.map_err(|e| e.to_string())?;
        slot.woken.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}
