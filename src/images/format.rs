//! Which manifests are wasm images, and where their program is.
//!
//! | format | how it is told | the program |
//! |---|---|---|
//! | CNCF wasm artifact | config `application/vnd.wasm.config.v0+json` | its one `application/wasm` layer |
//! | wasm-to-oci | config `application/vnd.wasm.config.v1+json` | its one `…content.layer.v1+wasm` layer |
//! | runwasi | a `…wasm.component.layer.v0+wasm` layer | that layer |
//! | compat | a wasm platform ([`is_wasm_platform`]), or annotation `module.wasm.image/variant=compat` | the entrypoint file in its tar layers |
//! | compat-smart | annotation `module.wasm.image/variant=compat-smart` on another platform | the entrypoint file, if it is wasm; else not a wasm image |
//!
//! An image index entry qualifies by the same platform rule as a manifest;
//! among several, `wasip1` wins before `wasip2` before `wasi` before other
//! spellings ([`pick_platform`]).

use std::collections::HashMap;

use serde::Deserialize;

use super::pull::{Descriptor, IndexEntry, Manifest};
use super::store::ImageFormat;
use crate::error::{Error, Result};

pub const WASM_CONFIG_V0: &str = "application/vnd.wasm.config.v0+json";
pub const WASM_LAYER: &str = "application/wasm";
pub const WASM_CONFIG_V1: &str = "application/vnd.wasm.config.v1+json";
pub const WASM_LAYER_V1: &str = "application/vnd.wasm.content.layer.v1+wasm";
pub const RUNWASI_LAYER: &str = "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";
/// The annotation (or image label) of crun's wasm handler: `compat` or `compat-smart`.
pub const VARIANT_ANNOTATION: &str = "module.wasm.image/variant";

/// Where a wasm image keeps its program.
#[derive(Debug)]
pub enum Layout {
    /// One layer is the wasm binary.
    Artifact { format: ImageFormat, layer: Descriptor },
    /// Tar layers hold a filesystem; the program is a file in it.
    Compat {
        layers: Vec<Descriptor>,
        /// Claimed only by the `compat-smart` variant (crun's meaning): the
        /// image is wasm only if the file its entrypoint names is a wasm
        /// binary, and otherwise not a wasm image at all.
        smart: bool,
    },
}

/// The parts of an OCI (or Docker) image config that matter to a wasm guest.
#[derive(Debug, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: ProcessConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProcessConfig {
    #[serde(default, deserialize_with = "null_as_default")]
    pub entrypoint: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub cmd: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: HashMap<String, String>,
}

/// Docker writes `null` for empty lists and maps.
fn null_as_default<'de, D, T>(deserializer: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Reads a manifest and its config and says where the wasm is, or why this
/// is not a wasm image.
pub(super) fn detect(name: &str, manifest: &Manifest, config: &Descriptor, config_json: &[u8]) -> Result<Layout> {
    match config.media_type.as_str() {
        WASM_CONFIG_V0 => return one_wasm_layer(name, manifest, WASM_LAYER, ImageFormat::WasmArtifact),
        WASM_CONFIG_V1 => return one_wasm_layer(name, manifest, WASM_LAYER_V1, ImageFormat::WasmToOci),
        _ => {}
    }
    if manifest.layers.iter().any(|layer| layer.media_type == RUNWASI_LAYER) {
        return one_wasm_layer(name, manifest, RUNWASI_LAYER, ImageFormat::Runwasi);
    }
    let image_config = parse_config(name, config_json)?;
    let variant = |wanted: &str| {
        [&manifest.annotations, &image_config.config.labels]
            .iter()
            .any(|annotations| annotations.get(VARIANT_ANNOTATION).is_some_and(|v| v == wanted))
    };
    if is_wasm_platform(&image_config.os, &image_config.architecture) || variant("compat") {
        return Ok(Layout::Compat { layers: manifest.layers.clone(), smart: false });
    }
    if variant("compat-smart") {
        return Ok(Layout::Compat { layers: manifest.layers.clone(), smart: true });
    }
    Err(Error::NotWasm(format!(
        "image {name} is not a wasm image (platform {}/{}, config media type {:?}), and no backing runtime is configured to run it",
        image_config.os, image_config.architecture, config.media_type
    )))
}

pub(super) fn parse_config(name: &str, config_json: &[u8]) -> Result<ImageConfig> {
    serde_json::from_slice(config_json)
        .map_err(|e| Error::InvalidArgument(format!("image {name}: its config is not a valid image config: {e}")))
}

fn one_wasm_layer(name: &str, manifest: &Manifest, media_type: &str, format: ImageFormat) -> Result<Layout> {
    let mut wasm_layers = manifest.layers.iter().filter(|layer| layer.media_type == media_type);
    match (wasm_layers.next(), wasm_layers.next()) {
        (Some(layer), None) => Ok(Layout::Artifact { format, layer: layer.clone() }),
        (None, _) => Err(Error::InvalidArgument(format!(
            "image {name}: a wasm artifact needs one {media_type:?} layer and this one has none"
        ))),
        (Some(_), Some(_)) => Err(Error::InvalidArgument(format!(
            "image {name}: a wasm artifact must have exactly one {media_type:?} layer, this one has {}",
            manifest.layers.iter().filter(|layer| layer.media_type == media_type).count()
        ))),
    }
}

/// The operating systems that name a WASI platform: `wasi` (docker buildx
/// `--platform wasi/wasm`), `wasip1` (Go's `GOOS=wasip1`, TinyGo, buildah
/// `--os wasip1`), `wasip2`.
const WASI_OSES: [&str; 3] = ["wasip1", "wasip2", "wasi"];
/// The architectures that name wasm: `wasm` (the OCI platform of every tool
/// above, and `linux/wasm` as some build tools write it), `wasm32`.
const WASM_ARCHITECTURES: [&str; 2] = ["wasm", "wasm32"];

/// Whether a platform, as an image config or an image index entry gives it,
/// is a wasm platform: its os is a WASI one ([`WASI_OSES`]) or its
/// architecture is wasm ([`WASM_ARCHITECTURES`]), whatever the other says
/// (`wasi/wasm`, `wasip1/wasm`, `wasip2/wasm`, `linux/wasm`, `wasi/wasm32`, …).
/// One rule for both, so an image pulled through its index is judged as the
/// same manifest pulled directly.
pub(super) fn is_wasm_platform(os: &str, architecture: &str) -> bool {
    WASI_OSES.contains(&os) || WASM_ARCHITECTURES.contains(&architecture)
}

/// Picks the wasm entry of an image index: of the entries whose platform
/// [`is_wasm_platform`], the one whose os or variant is `wasip1`
/// first, since a wasip1 module runs everywhere; then `wasip2`; then `wasi`;
/// then any other spelling (`linux/wasm`); the first in the index among equals.
pub(super) fn pick_platform(entries: &[IndexEntry]) -> Option<&IndexEntry> {
    let rank = |entry: &IndexEntry| {
        let platform = entry.platform.as_ref()?;
        if !is_wasm_platform(&platform.os, &platform.architecture) {
            return None;
        }
        let wasi = |name: &str| WASI_OSES.iter().position(|os| *os == name);
        Some(
            [&platform.os, &platform.variant]
                .into_iter()
                .filter_map(|name| wasi(name))
                .min()
                .unwrap_or(WASI_OSES.len()),
        )
    };
    entries.iter().filter_map(|entry| rank(entry).map(|r| (r, entry))).min_by_key(|(r, _)| *r).map(|(_, e)| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(json: &str) -> Manifest {
        serde_json::from_str(json).unwrap()
    }

    fn detect_json(manifest_json: &str, config_json: &str) -> Result<Layout> {
        let m = manifest(manifest_json);
        let config = m.config.clone().unwrap();
        detect("r/x", &m, &config, config_json.as_bytes())
    }

    #[test]
    fn a_cncf_artifact_is_detected() {
        let layout = detect_json(
            r#"{"config":{"mediaType":"application/vnd.wasm.config.v0+json","digest":"sha256:c","size":2},
                "layers":[{"mediaType":"application/wasm","digest":"sha256:l","size":9}]}"#,
            "{}",
        )
        .unwrap();
        assert!(
            matches!(layout, Layout::Artifact { format: ImageFormat::WasmArtifact, layer } if layer.digest == "sha256:l")
        );
    }

    #[test]
    fn runwasi_and_compat_images_are_detected() {
        let runwasi = detect_json(
            r#"{"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:c"},
                "layers":[{"mediaType":"application/vnd.bytecodealliance.wasm.component.layer.v0+wasm","digest":"sha256:w"}]}"#,
            r#"{"architecture":"wasm","os":"wasip2"}"#,
        )
        .unwrap();
        assert!(matches!(runwasi, Layout::Artifact { format: ImageFormat::Runwasi, .. }));

        let tar = r#"{"config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:c"},
                "layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"sha256:t"}]}"#;
        let compat =
            detect_json(tar, r#"{"architecture":"wasm","os":"wasi","config":{"Entrypoint":["/app.wasm"],"Env":null}}"#);
        assert!(matches!(compat.unwrap(), Layout::Compat { layers, smart: false } if layers.len() == 1));
        let labelled = detect_json(
            tar,
            r#"{"architecture":"amd64","os":"linux","config":{"Labels":{"module.wasm.image/variant":"compat"}}}"#,
        );
        assert!(matches!(labelled.unwrap(), Layout::Compat { .. }));
    }

    #[test]
    fn linux_images_and_odd_artifacts_are_refused() {
        let linux = detect_json(
            r#"{"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:c"},
                "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:l"}]}"#,
            r#"{"architecture":"amd64","os":"linux"}"#,
        );
        assert!(matches!(&linux, Err(Error::NotWasm(m)) if m.contains("not a wasm image")), "{linux:?}");

        let two = detect_json(
            r#"{"config":{"mediaType":"application/vnd.wasm.config.v0+json","digest":"sha256:c"},
                "layers":[{"mediaType":"application/wasm","digest":"sha256:a"},{"mediaType":"application/wasm","digest":"sha256:b"}]}"#,
            "{}",
        );
        assert!(matches!(two, Err(Error::InvalidArgument(m)) if m.contains("exactly one")));
    }

    #[test]
    fn the_wasip1_entry_of_an_index_wins() {
        let index = manifest(
            r#"{"manifests":[
                {"digest":"sha256:amd64","platform":{"architecture":"amd64","os":"linux"}},
                {"digest":"sha256:p2","platform":{"architecture":"wasm","os":"wasip2"}},
                {"digest":"sha256:p1","platform":{"architecture":"wasm","os":"wasip1"}}]}"#,
        );
        assert_eq!(pick_platform(&index.manifests).unwrap().digest, "sha256:p1");
        let linux_only =
            manifest(r#"{"manifests":[{"digest":"sha256:a","platform":{"architecture":"amd64","os":"linux"}}]}"#);
        assert!(pick_platform(&linux_only.manifests).is_none());
    }

    /// Every spelling publishing tools write qualifies in an index exactly as
    /// the same platform qualifies in an image config.
    #[test]
    fn every_wasm_platform_spelling_qualifies_in_an_index_as_in_a_config() {
        let spellings = [
            ("wasi", "wasm"),
            ("wasip1", "wasm"),
            ("wasip2", "wasm"),
            ("linux", "wasm"),
            ("wasi", "wasm32"),
            ("wasip1", "wasm32"),
            ("wasi", ""),
            ("unknown", "wasm"),
        ];
        for (os, architecture) in spellings {
            let index = manifest(&format!(
                r#"{{"manifests":[
                    {{"digest":"sha256:amd64","platform":{{"architecture":"amd64","os":"linux"}}}},
                    {{"digest":"sha256:w","platform":{{"architecture":"{architecture}","os":"{os}"}}}}]}}"#
            ));
            assert_eq!(
                pick_platform(&index.manifests).map(|e| e.digest.as_str()),
                Some("sha256:w"),
                "index entry {os}/{architecture}"
            );
            let config = format!(r#"{{"architecture":"{architecture}","os":"{os}"}}"#);
            let layout = detect_json(
                r#"{"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:c"},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:l"}]}"#,
                &config,
            );
            assert!(
                matches!(layout, Ok(Layout::Compat { smart: false, .. })),
                "config {os}/{architecture}: {layout:?}"
            );
        }
        for (os, architecture) in [("linux", "amd64"), ("linux", "arm64"), ("windows", "amd64"), ("", "")] {
            let index = manifest(&format!(
                r#"{{"manifests":[{{"digest":"sha256:x","platform":{{"architecture":"{architecture}","os":"{os}"}}}}]}}"#
            ));
            assert!(pick_platform(&index.manifests).is_none(), "index entry {os}/{architecture}");
        }
    }

    #[test]
    fn the_preference_order_holds_across_spellings() {
        let index = manifest(
            r#"{"manifests":[
                {"digest":"sha256:linux","platform":{"architecture":"wasm","os":"linux"}},
                {"digest":"sha256:wasi","platform":{"architecture":"wasm","os":"wasi"}},
                {"digest":"sha256:variant","platform":{"architecture":"wasm","os":"wasi","variant":"wasip1"}}]}"#,
        );
        assert_eq!(pick_platform(&index.manifests).unwrap().digest, "sha256:variant");
        let index = manifest(
            r#"{"manifests":[
                {"digest":"sha256:linux","platform":{"architecture":"wasm","os":"linux"}},
                {"digest":"sha256:p2","platform":{"architecture":"wasm","os":"wasip2"}}]}"#,
        );
        assert_eq!(pick_platform(&index.manifests).unwrap().digest, "sha256:p2");
        let only_linux_wasm =
            manifest(r#"{"manifests":[{"digest":"sha256:lw","platform":{"architecture":"wasm","os":"linux"}}]}"#);
        assert_eq!(pick_platform(&only_linux_wasm.manifests).unwrap().digest, "sha256:lw");
    }

    #[test]
    fn compat_smart_on_another_platform_is_claimed_only_if_its_entrypoint_is_wasm() {
        let layers = r#"{"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:c"},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:l"}],
            "annotations":{"module.wasm.image/variant":"compat-smart"}}"#;
        let busybox = detect_json(layers, r#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["sh"]}}"#);
        assert!(matches!(busybox, Ok(Layout::Compat { smart: true, .. })), "{busybox:?}");
        let labelled = detect_json(
            r#"{"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:c"},"layers":[]}"#,
            r#"{"architecture":"amd64","os":"linux","config":{"Labels":{"module.wasm.image/variant":"compat-smart"}}}"#,
        );
        assert!(matches!(labelled, Ok(Layout::Compat { smart: true, .. })), "{labelled:?}");
        // On a wasm platform the annotation changes nothing.
        let wasi = detect_json(layers, r#"{"architecture":"wasm","os":"wasip1"}"#);
        assert!(matches!(wasi, Ok(Layout::Compat { smart: false, .. })), "{wasi:?}");
    }
}
