//! The route table the router holds: swapped whole in one atomic store (arc-swap), so a
//! request sees the old table or the new one, never a mix; kept on disk so that a restarted
//! router serves the last table before nxd speaks to it again.

use arc_swap::ArcSwap;
use nx_router_api::{normalize_host, Route, RouteTable};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Table {
    routes: ArcSwap<HashMap<String, Arc<Route>>>,
    file: PathBuf,
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
        })
    }

    /// The route of a `Host` value (any case, with or without port or trailing dot).
    pub fn lookup(&self, host: &str) -> Option<Arc<Route>> {
        self.routes.load().get(&normalize_host(host)).cloned()
    }

    /// Writes `table` to disk (temp file and rename), then swaps it in.
    pub fn replace(&self, table: RouteTable) -> std::io::Result<()> {
        let tmp = self.file.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&table)?)?;
        std::fs::rename(&tmp, &self.file)?;
        let count = table.routes.len();
        self.routes.store(Arc::new(index(table)));
        tracing::info!(routes = count, "route table replaced");
        Ok(())
    }

    /// The table as nxd sent it (in no particular order).
    pub fn snapshot(&self) -> RouteTable {
        RouteTable {
            routes: self
                .routes
                .load()
                .values()
                .map(|r| Route::clone(r))
                .collect(),
        }
    }
}

fn index(table: RouteTable) -> HashMap<String, Arc<Route>> {
    table
        .routes
        .into_iter()
        .map(|r| (normalize_host(&r.host), Arc::new(r)))
        .collect()
}
