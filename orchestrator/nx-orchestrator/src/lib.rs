//! The NX orchestrator: the lifecycle of deployments ([`Orchestrator`], constructed from a
//! [`config::Config`], failing with [`Error`]), the domain, the `SandboxBackend` trait and its
//! backends (by cargo feature), the systemd supervisor, the artifact store, the router and the
//! state store.

pub mod access;
pub use nx_api as api;
pub mod artifact;
pub mod backend;
pub mod config;
pub mod custom_domains;
pub mod databases;
pub mod domain;
pub mod embedded_db;
#[cfg(target_os = "linux")]
mod error;
pub mod failpoint;
#[cfg(target_os = "linux")]
mod launcher_install;
mod list_cache;
mod log_room;
pub mod logs;
#[cfg(target_os = "linux")]
pub mod metrics;
pub mod network;
pub use nx_api::names;
pub mod host_limits;
#[cfg(target_os = "linux")]
mod orchestrator;
#[cfg(target_os = "linux")]
mod pushes;
pub mod readiness;
#[cfg(target_os = "linux")]
pub mod reexec;
pub mod router;
pub mod rows_of;
#[cfg(target_os = "linux")]
mod runaway_watch;
#[cfg(target_os = "linux")]
pub mod sandbox_locks;
pub mod sandbox_settings;
pub mod services;
pub mod standby;
pub mod state;
#[cfg(target_os = "linux")]
pub mod state_machine;
#[cfg(target_os = "linux")]
mod store_access;
pub mod supervisor;
#[cfg(target_os = "linux")]
pub mod tasks;
pub mod tcp;
pub mod timing;
pub mod tls;
pub mod upkeep;
pub mod upload_room;
pub mod usage;
pub mod volumes;
#[cfg(target_os = "linux")]
mod watchdog;

#[cfg(target_os = "linux")]
pub use error::Error;
#[cfg(target_os = "linux")]
pub use orchestrator::Orchestrator;

/// The top README's Rust examples (the embedding example), compiled as doc tests; its other code
/// blocks are ```` ```sh ````.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
