//! Pushing CNCF WebAssembly OCI artifacts to the test registry.

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

use super::{fixture, registry};
use wasmrun::api::ImageSpec;

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";

/// Bytes that are not a wasm module at all.
pub const GARBAGE: &[u8] = b"this is not wasm";

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Pushes `wasm` as a wasm artifact (`application/wasm` layer, wasm config)
/// to `registry` ("127.0.0.1:PORT") as `repo:tag`. Returns the manifest digest.
/// The bytes are not checked: pass garbage to push a malformed artifact.
pub async fn push_wasm_artifact(registry: &str, repo: &str, tag: &str, wasm: &[u8]) -> String {
    push_wasm_artifact_sizes(registry, repo, tag, wasm).await.0
}

/// [`push_wasm_artifact`], also returning the size of the config blob.
async fn push_wasm_artifact_sizes(registry: &str, repo: &str, tag: &str, wasm: &[u8]) -> (String, usize) {
    let parts = wasm_artifact(wasm);
    (push_image(registry, repo, tag, &parts).await, parts.config.len())
}

/// A CNCF wasm artifact of `wasm`: wasm config, one `application/wasm` layer.
pub fn wasm_artifact(wasm: &[u8]) -> ImageParts {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "wasm",
        "os": "wasip1",
        "layerDigests": [sha256_digest(wasm)],
        "created": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }))
    .expect("serialize wasm config");
    ImageParts {
        config_media_type: WASM_CONFIG_MEDIA_TYPE.into(),
        config,
        layers: vec![(WASM_LAYER_MEDIA_TYPE.into(), wasm.to_vec())],
        ..ImageParts::default()
    }
}

/// Everything an image manifest points at, for pushing any layout of image.
#[derive(Clone, Debug)]
pub struct ImageParts {
    pub manifest_media_type: String,
    pub config_media_type: String,
    pub config: Vec<u8>,
    /// (media type, bytes) of each layer, in order.
    pub layers: Vec<(String, Vec<u8>)>,
    pub annotations: serde_json::Map<String, serde_json::Value>,
}

impl Default for ImageParts {
    fn default() -> Self {
        Self {
            manifest_media_type: MANIFEST_MEDIA_TYPE.into(),
            config_media_type: String::new(),
            config: Vec::new(),
            layers: Vec::new(),
            annotations: serde_json::Map::new(),
        }
    }
}

fn client_for(name: &str) -> (Client, Reference) {
    client_with(name, ClientConfig { protocol: ClientProtocol::Http, ..Default::default() })
}

fn client_with(name: &str, config: ClientConfig) -> (Client, Reference) {
    let reference: Reference = name.parse().unwrap_or_else(|e| panic!("bad reference {name}: {e}"));
    (Client::new(config), reference)
}

/// Pushes the blobs and the manifest of `parts` as `registry/repo:tag`;
/// returns the manifest digest.
pub async fn push_image(registry: &str, repo: &str, tag: &str, parts: &ImageParts) -> String {
    push_image_as(registry, repo, tag, parts, &RegistryAuth::Anonymous).await
}

/// [`push_image`] to a registry that wants `auth`.
pub async fn push_image_as(registry: &str, repo: &str, tag: &str, parts: &ImageParts, auth: &RegistryAuth) -> String {
    let config = ClientConfig { protocol: ClientProtocol::Http, ..Default::default() };
    push_image_with(config, registry, repo, tag, parts, auth).await
}

/// [`push_image`] with a client of its own configuration (https, a CA).
pub async fn push_image_with(
    config: ClientConfig,
    registry: &str,
    repo: &str,
    tag: &str,
    parts: &ImageParts,
    auth: &RegistryAuth,
) -> String {
    let name = format!("{registry}/{repo}:{tag}");
    let (client, reference) = client_with(&name, config);
    client.store_auth_if_needed(registry, auth).await;
    let descriptor = |media_type: &str, bytes: &[u8]| serde_json::json!({ "mediaType": media_type, "digest": sha256_digest(bytes), "size": bytes.len() });
    for (_, bytes) in &parts.layers {
        client
            .push_blob(&reference, bytes.clone(), &sha256_digest(bytes))
            .await
            .unwrap_or_else(|e| panic!("push layer of {name}: {e}"));
    }
    client
        .push_blob(&reference, parts.config.clone(), &sha256_digest(&parts.config))
        .await
        .unwrap_or_else(|e| panic!("push config of {name}: {e}"));
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": parts.manifest_media_type,
        "config": descriptor(&parts.config_media_type, &parts.config),
        "layers": parts.layers.iter().map(|(media_type, bytes)| descriptor(media_type, bytes)).collect::<Vec<_>>(),
    });
    if !parts.annotations.is_empty() {
        manifest["annotations"] = serde_json::Value::Object(parts.annotations.clone());
    }
    let bytes = serde_json::to_vec(&manifest).expect("serialize manifest");
    client
        .push_manifest_raw(&reference, bytes.clone(), parts.manifest_media_type.parse().unwrap())
        .await
        .unwrap_or_else(|e| panic!("push manifest of {name}: {e}"));
    sha256_digest(&bytes)
}

/// Pushes a manifest or index document as `name`; returns its digest.
pub async fn push_manifest_json(name: &str, media_type: &str, document: &serde_json::Value) -> String {
    let (client, reference) = client_for(name);
    client.store_auth_if_needed(reference.registry(), &RegistryAuth::Anonymous).await;
    let bytes = serde_json::to_vec(document).expect("serialize manifest");
    let digest = sha256_digest(&bytes);
    client
        .push_manifest_raw(&reference, bytes, media_type.parse().unwrap())
        .await
        .unwrap_or_else(|e| panic!("push manifest of {name}: {e}"));
    digest
}

/// A tar layer holding `files` (path, content, mode), gzipped or not.
pub fn tar_layer(files: &[(&str, &[u8], u32)], gzip: bool) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(*mode);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, *content).unwrap_or_else(|e| panic!("tar {path}: {e}"));
    }
    let tar = builder.into_inner().expect("finish tar");
    if !gzip {
        return tar;
    }
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut encoder, &tar).expect("gzip");
    encoder.finish().expect("gzip")
}

/// An artifact pushed to the shared registry.
#[derive(Clone, Debug)]
pub struct TestImage {
    /// "127.0.0.1:PORT/e2e/<repo>" (no tag).
    pub repository: String,
    /// "127.0.0.1:PORT/e2e/<repo>:v1", the name a pod spec would use.
    pub name: String,
    /// "sha256:..." of the manifest.
    pub manifest_digest: String,
    /// Size of the wasm layer.
    pub wasm_len: usize,
    /// Size of the config blob.
    pub config_len: usize,
}

impl TestImage {
    /// "127.0.0.1:PORT/e2e/<repo>@sha256:...".
    pub fn repo_digest(&self) -> String {
        format!("{}@{}", self.repository, self.manifest_digest)
    }

    /// The size the daemon must report: wasm layer plus config blob.
    pub fn size(&self) -> u64 {
        (self.wasm_len + self.config_len) as u64
    }

    /// An ImageSpec naming this image by tag.
    pub fn spec(&self) -> ImageSpec {
        ImageSpec { image: self.name.clone(), ..Default::default() }
    }
}

/// Pushes `bytes` to the shared registry as "e2e/<repo>:v1".
pub async fn push_bytes(repo: &str, bytes: &[u8]) -> TestImage {
    let host = registry().host();
    let repository = format!("e2e/{repo}");
    let (manifest_digest, config_len) = push_wasm_artifact_sizes(&host, &repository, "v1", bytes).await;
    TestImage {
        repository: format!("{host}/{repository}"),
        name: format!("{host}/{repository}:v1"),
        manifest_digest,
        wasm_len: bytes.len(),
        config_len,
    }
}

/// Pushes the fixture program `fixture_name` to the shared registry as "e2e/<repo>:v1".
pub async fn push_fixture(fixture_name: &str, repo: &str) -> TestImage {
    push_bytes(repo, &fixture(fixture_name)).await
}
