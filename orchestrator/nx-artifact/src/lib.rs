//! Artifacts: prebuilt Linux binaries ([`verify`]) and container image archives ([`image`]),
//! checked offline before anything is uploaded or stored. Used by nxd's artifact store and by
//! the `nx` CLI, which checks a binary before it uploads it.

pub mod bundle;
pub mod closure;
pub mod image;
pub mod verify;

/// The most bytes one artifact (a binary or an image archive) may hold:
/// 1 GiB. nxd's store refuses an upload past it; the CLI refuses the file before it reads it.
pub const MAX_ARTIFACT_BYTES: u64 = 1 << 30;

/// The SHA-256 of `bytes` as 64 lowercase hex digits: the name content is stored under.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

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
    /// host (as [`Artifact::inspect_within`] with no bound of the host's).
    pub fn inspect(bytes: &[u8]) -> Result<Self, InspectError> {
        Self::inspect_within(bytes, u64::MAX)
    }

    /// Verifies bytes as an image archive whose layers hold at most `max_image_unpacked`
    /// bytes unpacked ([`image::verify_image_within`]) when they look like one, else as a
    /// binary for this host.
    pub fn inspect_within(bytes: &[u8], max_image_unpacked: u64) -> Result<Self, InspectError> {
        if image::looks_like_archive(bytes) {
            Ok(Artifact::Image(image::verify_image_within(
                bytes,
                max_image_unpacked,
            )?))
        } else {
            Ok(Artifact::Binary(verify::verify_on_host(bytes)?))
        }
    }

    /// How many first bytes of an upload [`Artifact::check_head`] looks at: up to the end of
    /// a tar header's `ustar` magic (offset 257, POSIX.1-2001 pax(1) "ustar Interchange
    /// Format").
    pub const HEAD_BYTES: usize = image::ARCHIVE_HEAD_BYTES;

    /// Refuses, from its first [`Artifact::HEAD_BYTES`] bytes, an upload that can be neither a
    /// binary (ELF magic) nor an image archive (gzip or tar), so that it is not read whole
    /// first; whatever passes is verified whole when it is complete ([`Artifact::inspect`]).
    pub fn check_head(head: &[u8]) -> Result<(), InspectError> {
        if head.starts_with(verify::ELF_MAGIC) || image::looks_like_archive(head) {
            Ok(())
        } else {
            Err(verify::not_elf(head).into())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_is_told_from_its_first_bytes() {
        let head = |start: &[u8]| {
            let mut bytes = start.to_vec();
            bytes.resize(Artifact::HEAD_BYTES, 0);
            bytes
        };
        let image = image::tests::docker_archive(b"app", image::host_architecture());
        for program in [
            head(b"\x7fELF\x02\x01\x01"),
            head(&[0x1f, 0x8b, 8]),
            image[..Artifact::HEAD_BYTES].to_vec(),
        ] {
            assert_eq!(Artifact::check_head(&program), Ok(()));
        }
        let refused = Artifact::check_head(&head(b"\x11\x9f\"Z\\\n#!/bin/sh")).unwrap_err();
        assert_eq!(
            refused.to_string().split(';').next().unwrap(),
            r#"not an ELF executable (it starts with "\x11\x9f\"Z\\\n#!/bin/sh\x00")"#
        );
    }
}
