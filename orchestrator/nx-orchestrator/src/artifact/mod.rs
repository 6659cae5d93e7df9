//! Artifacts: prebuilt binaries and container image archives, verified and stored by sha256.

pub mod image;
mod store;
pub mod verify;

pub use store::{ArtifactStore, StoreError};

/// What an artifact is, once verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Artifact {
    Binary(verify::ElfInfo),
    Image(image::ImageInfo),
}

impl Artifact {
    /// Verifies bytes as an image archive when they look like one, else as a binary.
    pub fn inspect(bytes: &[u8]) -> Result<Self, StoreError> {
        if image::looks_like_archive(bytes) {
            Ok(Artifact::Image(image::verify_image(bytes)?))
        } else {
            Ok(Artifact::Binary(verify::verify_on_host(bytes)?))
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Artifact::Binary(_) => "binary",
            Artifact::Image(_) => "image",
        }
    }

    /// "static", the interpreter, or the image's format and architecture.
    pub fn details(&self) -> String {
        match self {
            Artifact::Binary(elf) => elf.linkage.describe(),
            Artifact::Image(img) => format!("{} {}", img.format, img.architecture),
        }
    }
}
