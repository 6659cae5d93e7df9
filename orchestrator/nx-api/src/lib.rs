//! NX's HTTP API as types: the JSON bodies nxd takes and answers with ([`wire`], re-exported
//! here), the names in its paths ([`names`]), the vocabulary they are made of ([`kinds`]), and
//! with the `client` feature a typed client ([`client::Client`]). It depends on no server crate,
//! so the `nx` CLI and other clients build without sqlx, zbus or cgroups.

pub mod access;
pub mod checks;
pub mod domains;
pub mod health;
pub mod kinds;
pub mod names;
pub mod signals;
pub mod systemd;
pub mod usage;
pub mod volumes;
mod wire;

#[cfg(feature = "client")]
pub mod client;

pub use health::HealthCheck;
pub use kinds::{check_env_name, BackendKind, Desired, Egress, Limits, Phase, Runtime, Tier};
pub use wire::*;
