//! Which manifests are wasm images, and where their program is.
//!
//! | format | how it is told | the program |
//! |---|---|---|
//! | CNCF wasm artifact | config `application/vnd.wasm.config.v0+json` | its one `application/wasm` layer |
//! | wasm-to-oci | config `application/vnd.wasm.config.v1+json` | its one `…content.layer.v1+wasm` layer |
//! | runwasi | a `…wasm.component.layer.v0+wasm` layer | that layer |
//! | compat | platform os `wasi`/`wasip1`/`wasip2` or architecture `wasm`, or annotation `module.wasm.image/variant=compat` | the entrypoint file in its tar layers |
//!
//! In an image index, the `wasm` entry wins: `wasip1` before `wasip2` before `wasi`.

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
const VARIANT_ANNOTATION: &str = "module.wasm.image/variant";

/// Where a wasm image keeps its program.
#[derive(Debug)]
pub enum Layout {
    /// One layer is the wasm binary.
    Artifact { format: ImageFormat, layer: Descriptor },
    /// Tar layers hold a filesystem; the program is a file in it.
    Compat { layers: Vec<Descriptor> },
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
    let wasi_platform =
        matches!(image_config.os.as_str(), "wasi" | "wasip1" | "wasip2") || image_config.architecture == "wasm";
    let compat_variant = |annotations: &HashMap<String, String>| {
        annotations.get(VARIANT_ANNOTATION).is_some_and(|v| v == "compat" || v == "compat-smart")
    };
    if wasi_platform || compat_variant(&manifest.annotations) || compat_variant(&image_config.config.labels) {
        return Ok(Layout::Compat { layers: manifest.layers.clone() });
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

/// Picks the wasm entry of an image index: wasip1 first (it runs as a module
/// everywhere), then wasip2, then plain `wasi`.
pub(super) fn pick_platform(entries: &[IndexEntry]) -> Option<&IndexEntry> {
    let rank = |entry: &IndexEntry| {
        let platform = entry.platform.as_ref()?;
        if platform.architecture != "wasm" {
            return None;
        }
        ["wasip1", "wasip2", "wasi"].iter().position(|os| *os == platform.os)
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
        assert!(matches!(compat.unwrap(), Layout::Compat { layers } if layers.len() == 1));
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
}
