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
    let layer_digest = sha256_digest(wasm);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "wasm",
        "os": "wasip1",
        "layerDigests": [layer_digest],
        "created": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }))
    .expect("serialize wasm config");
    let config_digest = sha256_digest(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": WASM_CONFIG_MEDIA_TYPE,
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": WASM_LAYER_MEDIA_TYPE,
            "digest": layer_digest,
            "size": wasm.len(),
        }],
    }))
    .expect("serialize manifest");
    let manifest_digest = sha256_digest(&manifest);
    let config_len = config.len();

    let name = format!("{registry}/{repo}:{tag}");
    let reference: Reference = name.parse().unwrap_or_else(|e| panic!("bad reference {name}: {e}"));
    let client = Client::new(ClientConfig { protocol: ClientProtocol::Http, ..Default::default() });
    client.store_auth_if_needed(registry, &RegistryAuth::Anonymous).await;
    client
        .push_blob(&reference, wasm.to_vec(), &layer_digest)
        .await
        .unwrap_or_else(|e| panic!("push layer of {name}: {e}"));
    client.push_blob(&reference, config, &config_digest).await.unwrap_or_else(|e| panic!("push config of {name}: {e}"));
    client
        .push_manifest_raw(&reference, manifest, MANIFEST_MEDIA_TYPE.parse().unwrap())
        .await
        .unwrap_or_else(|e| panic!("push manifest of {name}: {e}"));
    (manifest_digest, config_len)
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
