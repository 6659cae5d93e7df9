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
    #[error("the archive grows past {limit} bytes when gunzipped ({MAX_EXPANSION} times its own size, at least {MIN_EXPANDED_BYTES} bytes): NX does not unpack it; push it uncompressed (`podman save` without gzip)")]
    Expands { limit: u64 },
    /// The files of the archive (its layers, gunzipped) hold more than `limit` bytes: what
    /// `podman load` would write to the host's disk (attacker s11 G6, a gzip bomb as a layer).
    #[error("the image's layers unpack to more than {} MiB ({MAX_EXPANSION} times the archive's size, at least {} MiB, and at most the host's store.max_image_unpacked_mb): Podman would keep all of it on the host's disk, so NX does not load it and nothing was stored. Push a smaller image (fewer or smaller layers), or ask the host's operator to raise store.max_image_unpacked_mb", .limit >> 20, MIN_EXPANDED_BYTES >> 20)]
    Unpacks {
        /// The bound, in bytes.
        limit: u64,
    },
    /// A layer compressed with something other than gzip, whose unpacked size NX does not
    /// count (Podman would unpack it unbounded).
    #[error("layer {layer} is compressed with {compression}, which NX does not unpack to count its size: save the image with its layers uncompressed (`podman save`) or gzipped")]
    LayerCompression {
        layer: String,
        /// "zstd", "xz" or "bzip2".
        compression: &'static str,
    },
}

/// How many times its own size a gzipped archive may grow when gunzipped (at least
/// [`MIN_EXPANDED_BYTES`]): images compress by 2-5 times, a gzip bomb by about 1,000 (zeros).
pub const MAX_EXPANSION: u64 = 64;

/// The least a gzipped archive may grow to, in bytes (256 MiB).
pub const MIN_EXPANDED_BYTES: u64 = 256 << 20;

/// The most bytes of an archive's files kept in memory while it is checked, in bytes (32 MiB):
/// only files that can be metadata (a manifest, an index, a config: each at most
/// [`METADATA_MAX_BYTES`]) are kept; layers are hashed as they pass.
const KEPT_MAX_BYTES: u64 = 32 << 20;

/// The largest file of an archive kept to be read as metadata, in bytes (4 MiB).
pub const METADATA_MAX_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// "docker-archive" or "oci".
    pub format: &'static str,
    /// The image id: sha256 of its config, as Podman names it.
    pub id: String,
    pub architecture: String,
    /// The bytes its layers hold unpacked (gunzipped): about what `podman load` writes to
    /// Podman's storage.
    pub unpacked_bytes: u64,
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

/// A file of an archive: its sha256 (lowercase hex), what it holds unpacked and, when it is
/// small enough to be metadata (see [`KEPT_MAX_BYTES`]), its bytes.
struct File {
    sha256: String,
    bytes: Option<Vec<u8>>,
    /// Its size, or gunzipped, the size of what it holds.
    unpacked: u64,
    /// A compression other than gzip its first bytes show (see [`other_compression`]).
    compression: Option<&'static str>,
}

/// The files of the archive, by normalised name, read as a stream: gunzipped up to
/// [`MAX_EXPANSION`] times the archive's size (at least `min_expanded` bytes), layers hashed
/// (and gunzipped layers counted) as they pass, so that neither a large image nor a gzip bomb
/// is held in memory or unpacked past `max_unpacked` bytes in all.
fn files(
    bytes: &[u8],
    min_expanded: u64,
    max_unpacked: u64,
) -> Result<HashMap<String, File>, ImageError> {
    let (limit, budget) = bounds(bytes, min_expanded, max_unpacked);
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return read_files(bytes, budget);
    }
    // Every gzip member, as Podman (Go's compress/gzip) reads them.
    let mut gunzipped = flate2::read::MultiGzDecoder::new(bytes).take(limit + 1);
    let files = read_files(&mut gunzipped, budget);
    // Files holding more than the ratio's bound: the archive grows past it when gunzipped.
    let past_ratio = budget == limit && matches!(files, Err(ImageError::Unpacks { .. }));
    if gunzipped.limit() == 0 || past_ratio {
        return Err(ImageError::Expands { limit });
    }
    files.map_err(|e| match e {
        ImageError::NotImage(e) => ImageError::NotImage(format!("gzip: {e}")),
        e => e,
    })
}

/// The most the archive `bytes` may grow to gunzipped ([`MAX_EXPANSION`] times its size, at
/// least `min_expanded`), and the most its layers may unpack to (that, at most
/// `max_unpacked`), in bytes.
fn bounds(bytes: &[u8], min_expanded: u64, max_unpacked: u64) -> (u64, u64) {
    let limit = (bytes.len() as u64)
        .saturating_mul(MAX_EXPANSION)
        .max(min_expanded);
    (limit, limit.min(max_unpacked))
}

/// A reader that hashes what passes through it and keeps it in `kept` when asked to.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    kept: Option<Vec<u8>>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        if let Some(kept) = self.kept.as_mut() {
            kept.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

/// How many first bytes of a file tell its compression ([`other_compression`]).
const MAGIC_BYTES: u64 = 10;

/// The compression, other than gzip, whose magic number `head` starts with: one that Podman
/// unpacks (containers/image's `DetectCompression`: gzip, bzip2, xz, zstd). zstd: RFC 8878
/// 3.1.1; xz: the .xz file format 2.1.1.1; bzip2: "BZh", the block size, the block magic (pi).
fn other_compression(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("zstd")
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some("xz")
    } else if head.len() == 10
        && head.starts_with(b"BZh")
        && (b'1'..=b'9').contains(&head[3])
        && head[4..] == [0x31, 0x41, 0x59, 0x26, 0x53, 0x59]
    {
        Some("bzip2")
    } else {
        None
    }
}

/// Reads the files of a tar stream (see [`files`]): a gzipped one is gunzipped as it is
/// hashed and its unpacked bytes counted; all the files together may hold at most `budget`
/// bytes unpacked, else [`ImageError::Unpacks`]. A name twice is `Corrupt` (which copy Podman
/// takes is its own choice).
fn read_files(tar_stream: impl Read, budget: u64) -> Result<HashMap<String, File>, ImageError> {
    let mut files = HashMap::new();
    let mut kept = 0;
    let mut unpacked_total: u64 = 0;
    let mut archive = tar::Archive::new(tar_stream);
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
        let size = entry.size();
        let keep = size <= METADATA_MAX_BYTES && kept + size <= KEPT_MAX_BYTES;
        let corrupt = |e: std::io::Error| ImageError::Corrupt(format!("{name}: {e}"));
        let mut source = Hashing {
            inner: &mut entry,
            hasher: Sha256::new(),
            kept: keep.then(Vec::new),
        };
        let mut head = Vec::new();
        (&mut source)
            .take(MAGIC_BYTES)
            .read_to_end(&mut head)
            .map_err(corrupt)?;
        let room = budget - unpacked_total;
        let unpacked = if head.starts_with(&[0x1f, 0x8b]) {
            // Counted up to one byte past the room: a gzip bomb stops there.
            let stream = head.as_slice().chain(&mut source);
            let mut gunzipped =
                flate2::read::MultiGzDecoder::new(stream).take(room.saturating_add(1));
            std::io::copy(&mut gunzipped, &mut std::io::sink()).map_err(corrupt)?
        } else {
            size
        };
        if unpacked > room {
            return Err(ImageError::Unpacks { limit: budget });
        }
        unpacked_total += unpacked;
        // The rest of the file (all of it, unless gunzipped) is hashed as it passes.
        std::io::copy(&mut source, &mut std::io::sink()).map_err(corrupt)?;
        if keep {
            kept += size;
        }
        let file = File {
            sha256: hex::encode(source.hasher.finalize()),
            bytes: source.kept,
            unpacked,
            compression: other_compression(&head),
        };
        if files.insert(name.clone(), file).is_some() {
            return Err(ImageError::Corrupt(format!(
                "{name} is in the archive twice"
            )));
        }
    }
    Ok(files)
}

fn file<'a>(files: &'a HashMap<String, File>, name: &str) -> Result<&'a File, ImageError> {
    files
        .get(name)
        .ok_or_else(|| ImageError::Corrupt(format!("{name} is referenced but missing")))
}

/// The bytes of a metadata file of the archive.
fn get<'a>(files: &'a HashMap<String, File>, name: &str) -> Result<&'a [u8], ImageError> {
    file(files, name)?.bytes.as_deref().ok_or_else(|| {
        ImageError::Corrupt(format!(
            "{name} is too large to be an image's metadata (at most {METADATA_MAX_BYTES} bytes)"
        ))
    })
}

/// The sha256 of a file of the archive.
fn digest<'a>(files: &'a HashMap<String, File>, name: &str) -> Result<&'a str, ImageError> {
    Ok(&file(files, name)?.sha256)
}

fn check(what: &str, expected: &str, actual: &str) -> Result<(), ImageError> {
    let expected = expected.trim_start_matches("sha256:");
    if actual == expected {
        Ok(())
    } else {
        Err(ImageError::DigestMismatch {
            what: what.into(),
            expected: expected.into(),
            actual: actual.into(),
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
fn check_named(files: &HashMap<String, File>, name: &str) -> Result<(), ImageError> {
    let stem = name
        .trim_start_matches("blobs/sha256/")
        .trim_end_matches(".json")
        .trim_end_matches(".tar");
    if stem.len() == 64 && stem.chars().all(|c| c.is_ascii_hexdigit()) {
        check(name, stem, digest(files, name)?)?;
    }
    Ok(())
}

/// A layer of the image, `name` in the archive: its sha256 checked against `expected`; one
/// compressed with other than gzip is refused. Returns the bytes it holds unpacked.
fn layer(files: &HashMap<String, File>, name: &str, expected: &str) -> Result<u64, ImageError> {
    let layer = file(files, name)?;
    check(name, expected, &layer.sha256)?;
    match layer.compression {
        Some(compression) => Err(ImageError::LayerCompression {
            layer: name.into(),
            compression,
        }),
        None => Ok(layer.unpacked),
    }
}

/// What [`docker`] and [`oci`] find: the image's id, its config, the bytes its layers hold
/// unpacked.
type Found = (String, ImageConfig, u64);

fn docker(files: &HashMap<String, File>) -> Result<Found, ImageError> {
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
    let mut unpacked = 0;
    for (name, diff_id) in manifest.layers.iter().zip(&diff_ids) {
        unpacked += layer(files, name, diff_id)?;
    }
    Ok((
        digest(files, &manifest.config)?.to_owned(),
        config,
        unpacked,
    ))
}

fn oci(files: &HashMap<String, File>) -> Result<Found, ImageError> {
    let index: OciIndex = json("index.json", get(files, "index.json")?)?;
    let manifest_digest = &index
        .manifests
        .first()
        .ok_or_else(|| ImageError::Corrupt("index.json lists no manifest".into()))?
        .digest;
    let manifest_name = blob_name(manifest_digest);
    check(
        "the manifest",
        manifest_digest,
        digest(files, &manifest_name)?,
    )?;
    let manifest: OciManifest = json("the manifest", get(files, &manifest_name)?)?;
    let mut unpacked = 0;
    for descriptor in &manifest.layers {
        unpacked += layer(files, &blob_name(&descriptor.digest), &descriptor.digest)?;
    }
    let config_name = blob_name(&manifest.config.digest);
    let config_digest = digest(files, &config_name)?;
    check("the config", &manifest.config.digest, config_digest)?;
    Ok((
        config_digest.to_owned(),
        json("the config", get(files, &config_name)?)?,
        unpacked,
    ))
}

/// Checks an image archive (see the module's docs) without holding its layers in memory, as
/// [`verify_image_within`] with no bound of the host's.
pub fn verify_image(bytes: &[u8]) -> Result<ImageInfo, ImageError> {
    verify_image_within(bytes, u64::MAX)
}

/// Checks an image archive (see the module's docs) without holding its layers in memory;
/// its files (layers gunzipped) may hold at most [`MAX_EXPANSION`] times its size (at least
/// [`MIN_EXPANDED_BYTES`]) and at most `max_unpacked` bytes: what `podman load` would write.
///
/// # Errors
/// [`ImageError`]: not an image, corrupt, a digest that does not match, another platform, a
/// gzipped archive that grows past [`MAX_EXPANSION`] times its size, layers that unpack past
/// the bound (`Unpacks`), a layer compressed with other than gzip.
pub fn verify_image_within(bytes: &[u8], max_unpacked: u64) -> Result<ImageInfo, ImageError> {
    verify_bounded(bytes, MIN_EXPANDED_BYTES, max_unpacked)
}

fn verify_bounded(
    bytes: &[u8],
    min_expanded: u64,
    max_unpacked: u64,
) -> Result<ImageInfo, ImageError> {
    let files = files(bytes, min_expanded, max_unpacked)?;
    let (format, (id, config, unpacked_bytes)) = if files.contains_key("manifest.json") {
        ("docker-archive", docker(&files)?)
    } else if files.contains_key("index.json") && files.contains_key("oci-layout") {
        ("oci", oci(&files)?)
    } else {
        return Err(ImageError::NotImage(
            "it has neither manifest.json (docker-archive) nor index.json and oci-layout (OCI)"
                .into(),
        ));
    };
    // Each file was read once, but Podman unpacks a layer once per time the manifest lists it
    // (attacker s13 G6b: one 592 KB layer listed 8 times wrote 2 GB): the sum is bounded too.
    let (_, budget) = bounds(bytes, min_expanded, max_unpacked);
    if unpacked_bytes > budget {
        return Err(ImageError::Unpacks { limit: budget });
    }
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
        unpacked_bytes,
    })
}

/// Archives for tests of code that stores images (enabled by the `fixtures` feature).
#[cfg(any(test, feature = "fixtures"))]
#[doc(hidden)]
pub mod tests {
    #[cfg(test)]
    use super::*;
    use crate::sha256_hex;
    use sha2::{Digest, Sha256};

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

    /// Writes to `out` and hashes what it writes (a layer's diff_id, while it is gzipped).
    struct Tee<W> {
        out: W,
        hasher: Sha256,
    }

    impl<W: std::io::Write> std::io::Write for Tee<W> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = self.out.write(buf)?;
            self.hasher.update(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.out.flush()
        }
    }

    /// An OCI archive (a plain tar, as `podman save --format oci-archive` writes) of one
    /// image for this host, `localhost/{name}:1`, whose one layer, gzipped
    /// (`application/vnd.oci.image.layer.v1.tar+gzip`), holds `/app` (`app`, mode 0755, the
    /// entrypoint) and `/zeros`, `zeros` bytes of zeros: with many, a gzip bomb of a layer
    /// (1 GiB gzips to about 1 MiB). The layer is gzipped as it is written, never held whole.
    pub fn oci_archive_gz(name: &str, app: &[u8], zeros: u64) -> Vec<u8> {
        oci_archive_gz_listed(name, app, zeros, 1)
    }

    /// [`oci_archive_gz`] whose manifest (and config) lists its one layer `times` times.
    pub fn oci_archive_gz_listed(name: &str, app: &[u8], zeros: u64, times: usize) -> Vec<u8> {
        use std::io::Read;
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut layer = tar::Builder::new(Tee {
            out: gz,
            hasher: Sha256::new(),
        });
        let mut append = |path: &str, mode: u32, size: u64, data: &mut dyn Read| {
            let mut header = tar::Header::new_gnu();
            header.set_size(size);
            header.set_mode(mode);
            layer.append_data(&mut header, path, data).unwrap();
        };
        append("app", 0o755, app.len() as u64, &mut &app[..]);
        append("zeros", 0o644, zeros, &mut std::io::repeat(0).take(zeros));
        let tee = layer.into_inner().unwrap();
        let diff_id = hex::encode(tee.hasher.finalize());
        let layer = tee.out.finish().unwrap();
        let config = serde_json::json!({
            "architecture": crate::image::host_architecture(), "os": "linux",
            "config": { "Entrypoint": ["/app"] },
            "rootfs": { "type": "layers", "diff_ids": vec![format!("sha256:{diff_id}"); times] },
        })
        .to_string();
        let descriptor = |media_type: &str, bytes: &[u8]| serde_json::json!({ "mediaType": media_type, "digest": format!("sha256:{}", sha256_hex(bytes)), "size": bytes.len() });
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptor("application/vnd.oci.image.config.v1+json", config.as_bytes()),
            "layers": vec![descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &layer); times],
        })
        .to_string();
        let mut top = descriptor(
            "application/vnd.oci.image.manifest.v1+json",
            manifest.as_bytes(),
        );
        top["annotations"] = serde_json::json!({ "org.opencontainers.image.ref.name": format!("localhost/{name}:1") });
        let index = serde_json::json!({ "schemaVersion": 2, "manifests": [top] }).to_string();
        let mut archive = tar::Builder::new(Vec::new());
        let blob = |bytes: &[u8]| format!("blobs/sha256/{}", sha256_hex(bytes));
        for (path, data) in [
            (
                "oci-layout".to_owned(),
                &br#"{"imageLayoutVersion":"1.0.0"}"#[..],
            ),
            ("index.json".to_owned(), index.as_bytes()),
            (blob(manifest.as_bytes()), manifest.as_bytes()),
            (blob(config.as_bytes()), config.as_bytes()),
            (blob(&layer), layer.as_slice()),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            archive.append_data(&mut header, path, data).unwrap();
        }
        archive.into_inner().unwrap()
    }

    /// Attacker s13 G6b: a manifest listing one layer 8 times made Podman unpack it 8 times.
    #[test]
    fn a_layer_listed_past_the_unpacked_bound_is_refused() {
        let once = oci_archive_gz_listed("rep", b"binary", 1 << 20, 1);
        let info = verify_bounded(&once, 4 << 20, u64::MAX).unwrap();
        assert!(info.unpacked_bytes > 1 << 20, "{info:?}");
        let listed = oci_archive_gz_listed("rep", b"binary", 1 << 20, 8);
        let e = verify_bounded(&listed, 4 << 20, u64::MAX).unwrap_err();
        assert!(
            matches!(e, ImageError::Unpacks { limit } if limit == 4 << 20),
            "{e}"
        );
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

    /// A gzipped docker-archive whose one layer is `layer_bytes` zeros, written as a stream.
    #[cfg(test)]
    fn zeros_image_gz(layer_bytes: u64) -> Vec<u8> {
        let zeros = || std::io::repeat(0).take(layer_bytes);
        let mut hasher = Sha256::new();
        let mut buffer = vec![0; 1 << 20];
        let mut layer = zeros();
        while let Ok(n @ 1..) = layer.read(&mut buffer) {
            hasher.update(&buffer[..n]);
        }
        let config = serde_json::json!({
            "architecture": host_architecture(), "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{}", hex::encode(hasher.finalize()))] },
        })
        .to_string();
        let config_name = format!("{}.json", sha256_hex(config.as_bytes()));
        let manifest =
            serde_json::json!([{ "Config": config_name, "Layers": ["layer.tar"] }]).to_string();
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut archive = tar::Builder::new(gz);
        let mut append = |name: &str, size: u64, data: &mut dyn Read| {
            let mut header = tar::Header::new_gnu();
            header.set_size(size);
            header.set_mode(0o644);
            archive.append_data(&mut header, name, data).unwrap();
        };
        append(
            "manifest.json",
            manifest.len() as u64,
            &mut manifest.as_bytes(),
        );
        append(&config_name, config.len() as u64, &mut config.as_bytes());
        append("layer.tar", layer_bytes, &mut zeros());
        archive.into_inner().unwrap().finish().unwrap()
    }

    /// The process's peak resident memory (VmHWM, proc(5)), in KiB.
    #[cfg(test)]
    fn peak_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    #[test]
    fn a_large_layer_is_hashed_as_it_passes_not_held() {
        let archive = zeros_image_gz(96 << 20);
        let before = peak_kib();
        let info = verify_image(&archive).unwrap();
        assert_eq!(info.format, "docker-archive");
        let grew = peak_kib() - before;
        // Held whole, the 96 MiB layer would be in memory twice (gunzipped, then the entry).
        assert!(grew < 32 << 10, "checking it took {grew} KiB more");
    }

    #[test]
    fn a_gzip_bomb_is_refused_once_it_grows_past_its_bound() {
        let bomb = zeros_image_gz(16 << 20);
        // 16 MiB of zeros gzip to some 70 KB: 64 times that is under 16 MiB.
        let e = verify_bounded(&bomb, 1 << 20, u64::MAX).unwrap_err();
        let limit = bomb.len() as u64 * MAX_EXPANSION;
        assert!(limit < 16 << 20, "{limit}");
        assert_eq!(e, ImageError::Expands { limit });
        assert!(e.to_string().contains("push it uncompressed"), "{e}");
        // The same image within a bound it fits is checked in full.
        assert!(verify_bounded(&bomb, 32 << 20, u64::MAX).is_ok());
    }

    /// Attacker s11 G6: an OCI archive is a plain tar whose layers are gzipped blobs, which
    /// `podman load` gunzips into its storage; they are counted gunzipped, as they pass.
    #[test]
    fn a_gzipped_layer_is_counted_unpacked_and_a_bomb_of_one_refused() {
        let image = oci_archive_gz("small", b"binary", 1 << 20);
        let info = verify_image(&image).unwrap();
        assert_eq!(info.format, "oci");
        // The layer's tar: headers, the app, the zeros, the end blocks.
        assert!(
            (1 << 20..(1 << 20) + (8 << 10)).contains(&info.unpacked_bytes),
            "{}",
            info.unpacked_bytes
        );
        assert_eq!(verify_image_within(&image, 2 << 20).unwrap(), info);
        let e = verify_image_within(&image, 1 << 20).unwrap_err();
        assert_eq!(e, ImageError::Unpacks { limit: 1 << 20 });
        assert!(e.to_string().contains("store.max_image_unpacked_mb"), "{e}");

        // 64 MiB of zeros gzip to some 64 KiB: past 64 times the archive's size.
        let bomb = oci_archive_gz("bomb", b"binary", 64 << 20);
        let limit = bomb.len() as u64 * MAX_EXPANSION;
        assert!(limit < 64 << 20, "{limit}");
        let e = verify_bounded(&bomb, 1 << 20, u64::MAX).unwrap_err();
        assert_eq!(e, ImageError::Unpacks { limit });
        assert!(verify_bounded(&bomb, 128 << 20, u64::MAX).is_ok());
    }

    /// Podman unpacks zstd, xz and bzip2 layers too: NX does not count them, so refuses them.
    #[test]
    fn a_layer_compressed_otherwise_than_with_gzip_is_refused() {
        let image = oci_archive_gz("small", b"binary", 0);
        let mut files = read_files(image.as_slice(), u64::MAX).unwrap();
        let name = files
            .iter()
            .find(|(_, f)| {
                f.bytes
                    .as_deref()
                    .is_some_and(|b| b.starts_with(&[0x1f, 0x8b]))
            })
            .map(|(name, _)| name.clone())
            .unwrap();
        for (magic, compression) in [
            (&[0x28, 0xb5, 0x2f, 0xfd][..], "zstd"),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0], "xz"),
            (b"BZh91AY&SY", "bzip2"),
        ] {
            assert_eq!(other_compression(magic), Some(compression));
            files.get_mut(&name).unwrap().compression = other_compression(magic);
            let Err(e) = oci(&files) else {
                panic!("a {compression} layer passed")
            };
            assert!(e.to_string().contains(compression), "{e}");
        }
        assert_eq!(other_compression(b"BZh-notes.txt"), None);
    }

    #[test]
    fn a_file_twice_in_the_archive_is_refused() {
        let mut archive = tar::Builder::new(Vec::new());
        for data in [&b"one"[..], b"two"] {
            let mut header = tar::Header::new_gnu();
            header.set_size(3);
            archive
                .append_data(&mut header, "index.json", data)
                .unwrap();
        }
        let e = verify_image(&archive.into_inner().unwrap()).unwrap_err();
        assert!(
            e.to_string().contains("index.json is in the archive twice"),
            "{e}"
        );
    }

    #[test]
    fn metadata_too_large_to_keep_is_named() {
        let mut files = HashMap::new();
        files.insert(
            "manifest.json".to_owned(),
            File {
                sha256: String::new(),
                bytes: None,
                unpacked: 0,
                compression: None,
            },
        );
        let Err(e) = docker(&files) else {
            panic!("an unreadable manifest.json passed")
        };
        assert!(
            e.to_string()
                .contains("too large to be an image's metadata"),
            "{e}"
        );
    }
}
