//! The NX orchestrator: the domain, the `SandboxBackend` trait and its backends (by cargo
//! feature), the systemd supervisor, the artifact store, the router and the state store.

pub mod api;
pub mod artifact;
pub mod backend;
pub mod config;
pub mod databases;
pub mod domain;
pub mod embedded_db;
pub mod names;
pub mod readiness;
pub mod router;
pub mod state;
pub mod supervisor;
#[cfg(target_os = "linux")]
pub mod tasks;
