//! Images published by real third-party tools (wkg, the ORAS client for
//! Python, buildah) land in the shared registry in the layouts wasmrun must
//! pull. The first tests check what each tool pushed, read back over the
//! registry API; the last ones pull each into the daemon and run it.

use std::io::Read;

use serde_json::Value;

use crate::harness::*;

const OCI_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The manifest of `repo:tag` in the shared registry, as an OCI image manifest.
fn get_manifest(repo: &str, tag: &str) -> Value {
    let (code, body) = http_get(&registry().host(), &format!("/v2/{repo}/manifests/{tag}"), Some(MANIFEST_MEDIA_TYPE))
        .unwrap_or_else(|e| panic!("GET manifest {repo}:{tag}: {e}"));
    assert_eq!(code, 200, "GET manifest {repo}:{tag}: {}", String::from_utf8_lossy(&body));
    let manifest: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("manifest of {repo}:{tag} is not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    assert_eq!(manifest["schemaVersion"], 2, "{manifest}");
    assert_eq!(manifest["mediaType"], MANIFEST_MEDIA_TYPE, "{manifest}");
    manifest
}

/// The blob `digest` of `repo`, checked against its digest.
fn get_blob(repo: &str, digest: &Value) -> Vec<u8> {
    let digest = digest.as_str().unwrap_or_else(|| panic!("digest {digest} is not a string"));
    let (code, body) = http_get(&registry().host(), &format!("/v2/{repo}/blobs/{digest}"), None)
        .unwrap_or_else(|e| panic!("GET blob {repo}@{digest}: {e}"));
    assert_eq!(code, 200, "GET blob {repo}@{digest}");
    assert_eq!(sha256_digest(&body), digest, "blob {repo}@{digest} does not match its digest");
    body
}

fn get_json_blob(repo: &str, digest: &Value) -> Value {
    let body = get_blob(repo, digest);
    serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("blob {repo}@{digest} is not JSON ({e}): {}", String::from_utf8_lossy(&body)))
}

/// The single layer of `manifest`.
fn only_layer(manifest: &Value) -> &Value {
    let layers = manifest["layers"].as_array().unwrap_or_else(|| panic!("manifest has no layers: {manifest}"));
    assert_eq!(layers.len(), 1, "{manifest}");
    &layers[0]
}

#[test]
fn fixture_p2_builds_to_a_component() {
    let component = fixture_p2("hello-p2");
    assert!(component.starts_with(COMPONENT_HEADER), "hello-p2 is not a component: {:02x?}", &component[..8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wkg_pushes_a_component_as_a_wasm_artifact() {
    let component = fixture_p2("hello-p2");
    let repo = "e2e/interop-wkg";
    let reference = wkg_push_component(repo, "v1", &component);
    assert_eq!(reference, format!("{}/{repo}:v1", registry().host()));

    let manifest = get_manifest(repo, "v1");
    assert_eq!(manifest["config"]["mediaType"], WASM_CONFIG_MEDIA_TYPE, "{manifest}");
    let layer = only_layer(&manifest);
    assert_eq!(layer["mediaType"], WASM_LAYER_MEDIA_TYPE, "{manifest}");
    assert_eq!(layer["digest"], sha256_digest(&component), "{manifest}");
    assert_eq!(layer["size"], component.len(), "{manifest}");
    assert_eq!(get_blob(repo, &layer["digest"]), component);

    let config = get_json_blob(repo, &manifest["config"]["digest"]);
    assert_eq!(config["architecture"], "wasm", "{config}");
    assert_eq!(config["os"], "wasip2", "{config}");
    assert_eq!(config["layerDigests"], serde_json::json!([layer["digest"]]), "{config}");
    let exports = config["component"]["exports"].as_array().unwrap_or_else(|| panic!("no component exports: {config}"));
    assert!(
        exports.iter().any(|e| e.as_str().is_some_and(|e| e.starts_with("wasi:cli/run@0.2"))),
        "component does not export wasi:cli/run: {config}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oras_python_pushes_a_wasm_artifact() {
    let module = fixture("hello");
    let repo = "e2e/interop-oras";
    let reference = oras_push_artifact(repo, "v1", &module);
    assert_eq!(reference, format!("{}/{repo}:v1", registry().host()));

    let manifest = get_manifest(repo, "v1");
    assert_eq!(manifest["config"]["mediaType"], WASM_CONFIG_MEDIA_TYPE, "{manifest}");
    let layer = only_layer(&manifest);
    assert_eq!(layer["mediaType"], WASM_LAYER_MEDIA_TYPE, "{manifest}");
    assert_eq!(layer["digest"], sha256_digest(&module), "{manifest}");
    assert_eq!(layer["size"], module.len(), "{manifest}");
    assert_eq!(layer["annotations"]["org.opencontainers.image.title"], "module.wasm", "{manifest}");
    assert_eq!(get_blob(repo, &layer["digest"]), module);

    let config = get_json_blob(repo, &manifest["config"]["digest"]);
    assert_eq!(config["architecture"], "wasm", "{config}");
    assert_eq!(config["os"], "wasip1", "{config}");
    assert_eq!(config["layerDigests"], serde_json::json!([layer["digest"]]), "{config}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildah_builds_a_compat_image() {
    let module = fixture("hello");
    let repo = "e2e/interop-buildah";
    let reference = buildah_compat_image(repo, "v1", &module, "/hello.wasm", "wasip1");
    assert_eq!(reference, format!("{}/{repo}:v1", registry().host()));

    let manifest = get_manifest(repo, "v1");
    assert_eq!(manifest["config"]["mediaType"], OCI_CONFIG_MEDIA_TYPE, "{manifest}");
    assert_eq!(manifest["annotations"][COMPAT_VARIANT_ANNOTATION], "compat", "{manifest}");
    let layer = only_layer(&manifest);
    assert_eq!(layer["mediaType"], OCI_LAYER_GZIP_MEDIA_TYPE, "{manifest}");

    let config = get_json_blob(repo, &manifest["config"]["digest"]);
    assert_eq!(config["architecture"], "wasm", "{config}");
    assert_eq!(config["os"], "wasip1", "{config}");
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/hello.wasm"]), "{config}");

    // The layer is a gzipped tar holding the module at hello.wasm, and the
    // config's diff_id is the digest of the uncompressed tar.
    let compressed = get_blob(repo, &layer["digest"]);
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(&compressed[..]).read_to_end(&mut tar_bytes).expect("gunzip the layer");
    assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!([sha256_digest(&tar_bytes)]), "{config}");
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let mut found = Vec::new();
    for entry in archive.entries().expect("read the layer tar") {
        let mut entry = entry.expect("layer tar entry");
        let path = entry.path().expect("entry path").to_string_lossy().into_owned();
        if path.trim_start_matches("./").trim_start_matches('/') == "hello.wasm" {
            let mut content = Vec::new();
            entry.read_to_end(&mut content).expect("read hello.wasm from the layer");
            found.push(content);
        }
    }
    assert_eq!(found.len(), 1, "the layer holds hello.wasm {} times", found.len());
    assert!(found[0] == module, "hello.wasm in the layer differs from the module");
}

/// Pulls `image` into a fresh daemon, runs it with `args`, and returns the
/// container's status and log lines.
async fn pull_and_run(image: &str, args: &[&str]) -> (wasmrun::api::ContainerStatus, Vec<(String, String)>) {
    let daemon = Daemon::start().await;
    pull(&daemon, image).await;
    let pod = Pod::run(&daemon, "interop").await;
    let config = container_config("interop", image, &[], args, &[("FROM_CRI", "yes")]);
    let (_, status) = pod.run_to_exit(&daemon, &config).await;
    let lines = full_lines(&read_log(&pod.log_path(&config)));
    (status, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_pushed_by_wkg_pulls_and_runs() {
    let reference = wkg_push_component("e2e/interop-wkg-run", "v1", &fixture_p2("hello-p2"));
    let (status, lines) = pull_and_run(&reference, &["one"]).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
    assert_eq!(status.reason, "Completed");
    for line in ["hello from a component", "arg[0]=interop-wkg-run", "arg[1]=one", "env:FROM_CRI=yes"] {
        assert!(has_line(&lines, "stdout", line), "no {line:?} in {lines:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_pushed_by_oras_pulls_and_runs() {
    let reference = oras_push_artifact("e2e/interop-oras-run", "v1", &fixture("hello"));
    let (status, lines) = pull_and_run(&reference, &[]).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
    assert!(has_line(&lines, "stdout", "hello from wasm"), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compat_image_built_by_buildah_pulls_and_runs() {
    let reference = buildah_compat_image("e2e/interop-buildah-run", "v1", &fixture("hello"), "/hello.wasm", "wasip1");
    let (status, lines) = pull_and_run(&reference, &["two"]).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
    for line in ["hello from wasm", "arg[0]=/hello.wasm", "arg[1]=two"] {
        assert!(has_line(&lines, "stdout", line), "no {line:?} in {lines:#?}");
    }
}
