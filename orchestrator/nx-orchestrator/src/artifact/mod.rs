//! Artifacts: prebuilt binaries, verified and stored by sha256.

mod store;
pub mod verify;

pub use store::{ArtifactStore, StoreError};
