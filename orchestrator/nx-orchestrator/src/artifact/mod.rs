//! Artifacts: prebuilt binaries and container image archives, verified (by `nx-artifact`) and
//! stored by sha256; and the collection that deletes what no deployment runs (`holds`,
//! `ArtifactStore::collect`, `BundleStore::collect`).

mod bundles;
pub mod holds;
pub mod owners;
mod store;

pub use bundles::{BundleStore, BundleStoreError, BundlesCollected, StoredBundle};
pub use nx_artifact::{bundle, image, verify, Artifact, InspectError};
pub use store::{ArtifactStore, Collected, StoreError, Upload};
