//! The route table the router holds: swapped whole in one atomic store (arc-swap), so a
//! request sees the old table or the new one, never a mix, whether nxd sent a whole table or
//! one route; kept on disk so that a restarted router serves the last table before nxd speaks
//! to it again.

use arc_swap::ArcSwap;
use nx_router_api::{normalize_host, Route, RouteTable};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

pub struct Table {
    routes: ArcSwap<HashMap<String, Arc<Route>>>,
    file: PathBuf,
    /// Held by a change from its read of the table to its swap, so that two changes write
    /// the file and swap in the order they read.
    changing: Mutex<()>,
}

impl Table {
    /// The table last written to `file`, or an empty one when there is none.
    pub fn load(file: &Path) -> anyhow::Result<Self> {
        let table = match std::fs::read(file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("{} is not a route table: {e}", file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RouteTable::default(),
            Err(e) => anyhow::bail!("cannot read {}: {e}", file.display()),
        };
        tracing::info!(routes = table.routes.len(), file = %file.display(), "route table loaded");
        Ok(Self {
            routes: ArcSwap::from_pointee(index(table)),
            file: file.to_owned(),
            changing: Mutex::new(()),
        })
    }

    /// The route of a `Host` value (any case, with or without port or trailing dot).
    pub fn lookup(&self, host: &str) -> Option<Arc<Route>> {
        self.routes.load().get(&normalize_host(host)).cloned()
    }

    /// Writes `table` to disk (temp file and rename), then swaps it in.
    pub fn replace(&self, table: RouteTable) -> std::io::Result<()> {
        let _changing = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
        let count = table.routes.len();
        self.keep(&serde_json::to_vec(&table)?, index(table))?;
        tracing::info!(routes = count, "route table replaced");
        Ok(())
    }

    /// Adds `route`, or replaces the route of its host, leaving the others as they are: the
    /// table written to disk, then swapped in, as [`Self::replace`] does. Returns whether the
    /// host had no route before.
    pub fn put(&self, route: Route) -> std::io::Result<bool> {
        let _changing = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
        let mut routes = HashMap::clone(&self.routes.load());
        let host = route.host.clone();
        let new = routes
            .insert(normalize_host(&route.host), Arc::new(route))
            .is_none();
        self.keep(&serde_json::to_vec(&table_of(&routes))?, routes)?;
        tracing::info!(%host, new, "route put");
        Ok(new)
    }

    /// Writes `json` (the table `routes` indexes) to the file (a temporary file renamed over
    /// it), then swaps in `routes`.
    fn keep(&self, json: &[u8], routes: HashMap<String, Arc<Route>>) -> std::io::Result<()> {
        let tmp = self.file.with_extension("json.tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, &self.file)?;
        self.routes.store(Arc::new(routes));
        Ok(())
    }

    /// The table as nxd sent it (in no particular order).
    pub fn snapshot(&self) -> RouteTable {
        table_of(&self.routes.load())
    }
}

/// The table of the indexed `routes` (in no particular order).
fn table_of(routes: &HashMap<String, Arc<Route>>) -> RouteTable {
    RouteTable {
        routes: routes.values().map(|r| Route::clone(r)).collect(),
    }
}

fn index(table: RouteTable) -> HashMap<String, Arc<Route>> {
    table
        .routes
        .into_iter()
        .map(|r| (normalize_host(&r.host), Arc::new(r)))
        .collect()
}
