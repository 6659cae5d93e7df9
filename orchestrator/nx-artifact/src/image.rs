//! Container images pushed as archives: `docker save` / `podman save` (docker-archive), an OCI
//! layout (`podman save --format oci-archive`), either of them gzipped (`nix build
//! .#sandbox-image` makes a gzipped docker-archive). Checked before anything is stored: the
//! manifest, every blob's and layer's sha256, and the architecture. No registry is contacted.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("not an image archive: {0}; push `docker save` / `podman save` output or an OCI layout archive")]
    NotImage(String),
    #[error("corrupt image archive: {0}")]
    Corrupt(String),
    #[error("image digest mismatch for {what}: the archive says {expected} but the bytes hash to {actual}; nothing was stored")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("the image is for {found}, but this host runs {host}; build it for linux/{host} (e.g. `podman build --platform linux/{host}`)")]
    WrongPlatform { found: String, host: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// "docker-archive" or "oci".
    pub format: &'static str,
    /// The image id: sha256 of its config, as Podman names it.
    pub id: String,
    pub architecture: String,
}

/// Does this look like an archive (tar, or gzip)?
pub fn looks_like_archive(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
        || (bytes.len() >= ARCHIVE_HEAD_BYTES && &bytes[257..262] == b"ustar")
}

/// The bytes [`looks_like_archive`] needs to tell a tar archive: its first header's `magic`
/// field starts at offset 257 (POSIX.1-2001, pax(1), "ustar Interchange Format"); one byte
/// past `ustar` (a NUL, or a space in GNU tar's) is asked for too.
pub const ARCHIVE_HEAD_BYTES: usize = 263;

pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The files of the archive, by normalised name.
fn files(bytes: &[u8]) -> Result<HashMap<String, Vec<u8>>, ImageError> {
    let mut plain = Vec::new();
    let tar_bytes: &[u8] = if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut plain)
            .map_err(|e| ImageError::NotImage(format!("gzip: {e}")))?;
        &plain
    } else {
        bytes
    };
    let mut files = HashMap::new();
    let mut archive = tar::Archive::new(tar_bytes);
    let entries = archive
        .entries()
        .map_err(|e| ImageError::NotImage(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ImageError::NotImage(e.to_string()))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| ImageError::Corrupt(e.to_string()))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| ImageError::Corrupt(format!("{name}: {e}")))?;
        files.insert(name, data);
    }
    Ok(files)
}

fn get<'a>(files: &'a HashMap<String, Vec<u8>>, name: &str) -> Result<&'a [u8], ImageError> {
    files
        .get(name)
        .map(Vec::as_slice)
        .ok_or_else(|| ImageError::Corrupt(format!("{name} is referenced but missing")))
}

fn check(what: &str, expected: &str, bytes: &[u8]) -> Result<(), ImageError> {
    let expected = expected.trim_start_matches("sha256:");
    let actual = sha256_hex(bytes);
    if actual == expected {
        Ok(())
    } else {
        Err(ImageError::DigestMismatch {
            what: what.into(),
            expected: expected.into(),
            actual,
        })
    }
}

fn json<'a, T: Deserialize<'a>>(name: &str, bytes: &'a [u8]) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::Corrupt(format!("{name}: {e}")))
}

#[derive(Deserialize)]
struct ImageConfig {
    architecture: String,
    os: String,
    rootfs: Option<RootFs>,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct OciIndex {
    manifests: Vec<OciDescriptor>,
}

#[derive(Deserialize)]
struct OciDescriptor {
    digest: String,
}

#[derive(Deserialize)]
struct OciManifest {
    config: OciDescriptor,
    layers: Vec<OciDescriptor>,
}

fn blob_name(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

/// A blob of a docker-archive named by its digest (newer `docker save`) is checked by name.
fn check_named(files: &HashMap<String, Vec<u8>>, name: &str) -> Result<(), ImageError> {
    let stem = name
        .trim_start_matches("blobs/sha256/")
        .trim_end_matches(".json")
        .trim_end_matches(".tar");
    if stem.len() == 64 && stem.chars().all(|c| c.is_ascii_hexdigit()) {
        check(name, stem, get(files, name)?)?;
    }
    Ok(())
}

fn docker(files: &HashMap<String, Vec<u8>>) -> Result<(String, ImageConfig), ImageError> {
    let manifests: Vec<DockerManifest> = json("manifest.json", get(files, "manifest.json")?)?;
    let manifest = manifests
        .first()
        .ok_or_else(|| ImageError::Corrupt("manifest.json lists no image".into()))?;
    check_named(files, &manifest.config)?;
    let config_bytes = get(files, &manifest.config)?;
    let config: ImageConfig = json(&manifest.config, config_bytes)?;
    let diff_ids = config
        .rootfs
        .as_ref()
        .map(|r| r.diff_ids.clone())
        .unwrap_or_default();
    if diff_ids.len() != manifest.layers.len() {
        return Err(ImageError::Corrupt(format!(
            "{} layers but {} diff_ids in the config",
            manifest.layers.len(),
            diff_ids.len()
        )));
    }
    for (layer, diff_id) in manifest.layers.iter().zip(&diff_ids) {
        check(layer, diff_id, get(files, layer)?)?;
    }
    Ok((sha256_hex(config_bytes), config))
}

fn oci(files: &HashMap<String, Vec<u8>>) -> Result<(String, ImageConfig), ImageError> {
    let index: OciIndex = json("index.json", get(files, "index.json")?)?;
    let manifest_digest = &index
        .manifests
        .first()
        .ok_or_else(|| ImageError::Corrupt("index.json lists no manifest".into()))?
        .digest;
    let manifest_bytes = get(files, &blob_name(manifest_digest))?;
    check("the manifest", manifest_digest, manifest_bytes)?;
    let manifest: OciManifest = json("the manifest", manifest_bytes)?;
    for layer in &manifest.layers {
        check(
            &blob_name(&layer.digest),
            &layer.digest,
            get(files, &blob_name(&layer.digest))?,
        )?;
    }
    let config_bytes = get(files, &blob_name(&manifest.config.digest))?;
    check("the config", &manifest.config.digest, config_bytes)?;
    Ok((sha256_hex(config_bytes), json("the config", config_bytes)?))
}

pub fn verify_image(bytes: &[u8]) -> Result<ImageInfo, ImageError> {
    let files = files(bytes)?;
    let (format, (id, config)) = if files.contains_key("manifest.json") {
        ("docker-archive", docker(&files)?)
    } else if files.contains_key("index.json") && files.contains_key("oci-layout") {
        ("oci", oci(&files)?)
    } else {
        return Err(ImageError::NotImage(
            "it has neither manifest.json (docker-archive) nor index.json and oci-layout (OCI)"
                .into(),
        ));
    };
    let host = host_architecture();
    if config.os != "linux" || config.architecture != host {
        return Err(ImageError::WrongPlatform {
            found: format!("{}/{}", config.os, config.architecture),
            host: host.into(),
        });
    }
    Ok(ImageInfo {
        format,
        id,
        architecture: config.architecture,
    })
}

/// Archives for tests of code that stores images (enabled by the `fixtures` feature).
#[cfg(any(test, feature = "fixtures"))]
#[doc(hidden)]
pub mod tests {
    use super::*;

    /// A docker-archive with one layer holding `app`, for `architecture`.
    pub fn docker_archive(app: &[u8], architecture: &str) -> Vec<u8> {
        let mut layer = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(app.len() as u64);
        header.set_mode(0o755);
        layer.append_data(&mut header, "app", app).unwrap();
        let layer = layer.into_inner().unwrap();
        let config = serde_json::json!({
            "architecture": architecture, "os": "linux",
            "config": { "Entrypoint": ["/app"] },
            "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&layer))] },
        })
        .to_string();
        let config_name = format!("{}.json", sha256_hex(config.as_bytes()));
        let manifest = serde_json::json!([{ "Config": config_name, "RepoTags": ["nx/test:1"], "Layers": ["layer.tar"] }]).to_string();
        let mut archive = tar::Builder::new(Vec::new());
        for (name, data) in [
            ("manifest.json", manifest.as_bytes()),
            (config_name.as_str(), config.as_bytes()),
            ("layer.tar", &layer),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            archive.append_data(&mut header, name, data).unwrap();
        }
        archive.into_inner().unwrap()
    }

    #[test]
    fn accepts_a_docker_archive_for_this_host_and_gzipped() {
        let archive = docker_archive(b"binary", host_architecture());
        let info = verify_image(&archive).unwrap();
        assert_eq!(info.format, "docker-archive");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &archive).unwrap();
        assert_eq!(verify_image(&gz.finish().unwrap()).unwrap(), info);
    }

    #[test]
    fn refuses_other_tars_tampered_layers_and_other_architectures() {
        let mut plain = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        plain
            .append_data(&mut header, "notes.txt", &b"hi"[..])
            .unwrap();
        let e = verify_image(&plain.into_inner().unwrap()).unwrap_err();
        assert!(matches!(e, ImageError::NotImage(_)), "{e}");

        let mut tampered = docker_archive(b"binary", host_architecture());
        let at = tampered.windows(6).position(|w| w == b"binary").unwrap();
        tampered[at] = b'B';
        let e = verify_image(&tampered).unwrap_err();
        assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");

        let e = verify_image(&docker_archive(b"binary", "arm64")).unwrap_err();
        assert!(e.to_string().contains("linux/arm64"), "{e}");
    }
}
