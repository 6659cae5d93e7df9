//! Artifacts: prebuilt Linux binaries ([`verify`]) and container image archives ([`image`]),
//! checked offline before anything is uploaded or stored. Used by nxd's artifact store and by
//! the `nx` CLI, which checks a binary before it uploads it.

pub mod bundle;
pub mod closure;
pub mod image;
pub mod verify;

/// A lowercase hex sha256, or why not.
pub(crate) fn check_sha256_hex(hex: &str) -> Result<(), &'static str> {
    if hex.len() == 64 && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
        Ok(())
    } else {
        Err("a digest that is not 64 lowercase hex characters")
    }
}

/// Why bytes are not an artifact NX runs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InspectError {
    #[error(transparent)]
    Verify(#[from] verify::VerifyError),
    #[error(transparent)]
    Image(#[from] image::ImageError),
}

/// What an artifact is, once verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Artifact {
    Binary(verify::ElfInfo),
    Image(image::ImageInfo),
}

impl Artifact {
    /// Verifies bytes as an image archive when they look like one, else as a binary for this
    /// host.
    pub fn inspect(bytes: &[u8]) -> Result<Self, InspectError> {
        if image::looks_like_archive(bytes) {
            Ok(Artifact::Image(image::verify_image(bytes)?))
        } else {
            Ok(Artifact::Binary(verify::verify_on_host(bytes)?))
        }
    }

    /// "binary" or "image".
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
