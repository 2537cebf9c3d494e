//! Which manifests are wasm images, and which of their blobs is the module.
//!
//! Today: CNCF wasm artifacts (`application/vnd.wasm.config.v0+json` with one
//! `application/wasm` layer) and the older wasm-to-oci layout. Image indexes
//! resolve to their wasm platform entry.

use super::pull::{Descriptor, IndexEntry, Manifest};
use crate::error::{Error, Result};

pub const WASM_CONFIG_V0: &str = "application/vnd.wasm.config.v0+json";
pub const WASM_LAYER: &str = "application/wasm";
pub const WASM_CONFIG_V1: &str = "application/vnd.wasm.config.v1+json";
pub const WASM_LAYER_V1: &str = "application/vnd.wasm.content.layer.v1+wasm";

/// The blobs of a wasm image that wasmrun needs.
#[derive(Debug)]
pub struct WasmLayout {
    pub config: Descriptor,
    pub layer: Descriptor,
}

/// Reads a manifest and says where its wasm is, or why it is not a wasm image.
pub(super) fn detect(name: &str, manifest: &Manifest) -> Result<WasmLayout> {
    let config = manifest.config.clone().ok_or_else(|| {
        Error::InvalidArgument(format!(
            "image {name}: the manifest has no config descriptor"
        ))
    })?;
    let wasm_layer = match config.media_type.as_str() {
        WASM_CONFIG_V0 => WASM_LAYER,
        WASM_CONFIG_V1 => WASM_LAYER_V1,
        other => {
            return Err(Error::FailedPrecondition(format!(
                "image {name} is not a wasm image (config media type {other:?}), and no backing runtime is configured to run it"
            )));
        }
    };
    let mut wasm_layers = manifest
        .layers
        .iter()
        .filter(|layer| layer.media_type == wasm_layer);
    match (wasm_layers.next(), wasm_layers.next()) {
        (Some(layer), None) => Ok(WasmLayout {
            config,
            layer: layer.clone(),
        }),
        (None, _) => Err(Error::InvalidArgument(format!(
            "image {name}: a wasm artifact needs one {wasm_layer:?} layer and this one has none"
        ))),
        (Some(_), Some(_)) => Err(Error::InvalidArgument(format!(
            "image {name}: a wasm artifact must have exactly one {wasm_layer:?} layer, this one has several"
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
        ["wasip1", "wasip2", "wasi"]
            .iter()
            .position(|os| *os == platform.os)
    };
    entries
        .iter()
        .filter_map(|entry| rank(entry).map(|r| (r, entry)))
        .min_by_key(|(r, _)| *r)
        .map(|(_, e)| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(json: &str) -> Manifest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_cncf_artifact_is_detected() {
        let m = manifest(
            r#"{"config":{"mediaType":"application/vnd.wasm.config.v0+json","digest":"sha256:c","size":2},
                "layers":[{"mediaType":"application/wasm","digest":"sha256:l","size":9}]}"#,
        );
        let layout = detect("r/x", &m).unwrap();
        assert_eq!(layout.layer.digest, "sha256:l");
        assert_eq!(layout.config.digest, "sha256:c");
    }

    #[test]
    fn linux_images_and_odd_artifacts_are_refused() {
        let linux = manifest(
            r#"{"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:c"},
                "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:l"}]}"#,
        );
        let err = detect("r/linux", &linux).unwrap_err();
        assert!(
            matches!(&err, Error::FailedPrecondition(m) if m.contains("not a wasm image")),
            "{err}"
        );

        let two = manifest(
            r#"{"config":{"mediaType":"application/vnd.wasm.config.v0+json","digest":"sha256:c"},
                "layers":[{"mediaType":"application/wasm","digest":"sha256:a"},{"mediaType":"application/wasm","digest":"sha256:b"}]}"#,
        );
        assert!(
            matches!(detect("r/two", &two).unwrap_err(), Error::InvalidArgument(m) if m.contains("several"))
        );
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
        let linux_only = manifest(
            r#"{"manifests":[{"digest":"sha256:a","platform":{"architecture":"amd64","os":"linux"}}]}"#,
        );
        assert!(pick_platform(&linux_only.manifests).is_none());
    }
}
