//! Artifacts: prebuilt binaries and container image archives, verified (by `nx-artifact`) and
//! stored by sha256.

mod store;

pub use nx_artifact::{image, verify, Artifact, InspectError};
pub use store::{ArtifactStore, StoreError, Upload};
