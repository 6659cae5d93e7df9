//! Artifacts: prebuilt binaries and container image archives, verified (by `nx-artifact`) and
//! stored by sha256.

mod bundles;
pub mod owners;
mod store;

pub use bundles::{BundleStore, BundleStoreError, StoredBundle};
pub use nx_artifact::{bundle, image, verify, Artifact, InspectError};
pub use store::{inspect_file, ArtifactStore, StoreError, Upload};
