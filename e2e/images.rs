//! ImageService: PullImage, ImageStatus, ListImages, RemoveImage, ImageFsInfo.

use tonic::transport::Channel;
use wasmrun::api::image_service_client::ImageServiceClient;
use wasmrun::api::{
    Image, ImageFilter, ImageFsInfoRequest, ImageSpec, ImageStatusRequest, ListImagesRequest, RemoveContainerRequest,
    RemoveImageRequest,
};

use crate::harness::registry::Request;
use crate::harness::*;

fn spec(image: &str) -> ImageSpec {
    ImageSpec { image: image.into(), ..Default::default() }
}

async fn list_images(images: &mut ImageServiceClient<Channel>, filter: Option<&str>) -> Vec<Image> {
    images
        .list_images(ListImagesRequest { filter: filter.map(|f| ImageFilter { image: Some(spec(f)) }) })
        .await
        .expect("ListImages")
        .into_inner()
        .images
}

async fn remove_image(images: &mut ImageServiceClient<Channel>, image: &str) {
    images
        .remove_image(RemoveImageRequest { image: Some(spec(image)) })
        .await
        .unwrap_or_else(|s| panic!("RemoveImage {image}: {s:?}"));
}

#[track_caller]
fn assert_image_id(id: &str) {
    let hex = id.strip_prefix("sha256:").unwrap_or_else(|| panic!("image id {id:?} lacks sha256:"));
    assert_hex_id(hex);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulled_image_is_described_by_status_and_list() {
    let daemon = Daemon::start().await;
    let mut images = daemon.images();
    let image = push_fixture("hello", "images-status").await;

    let image_id = pull(&daemon, &image.name).await;
    assert_image_id(&image_id);
    assert_eq!(pull(&daemon, &image.name).await, image_id, "pulling again changed the image id");

    let response = images
        .image_status(ImageStatusRequest { image: Some(image.spec()), verbose: true })
        .await
        .expect("ImageStatus")
        .into_inner();
    let status = response.image.clone().expect("ImageStatus of a pulled image has no image");
    assert_eq!(status.id, image_id);
    assert!(status.repo_tags.contains(&image.name), "repo_tags {:?}", status.repo_tags);
    assert!(
        status.repo_digests.contains(&image.repo_digest()),
        "repo_digests {:?} lack {}",
        status.repo_digests,
        image.repo_digest()
    );
    assert_eq!(status.size, image.size(), "size must be wasm layer + config bytes");
    let info = response
        .info
        .get("info")
        .unwrap_or_else(|| panic!("verbose ImageStatus has no \"info\" key: {:?}", response.info));
    serde_json::from_str::<serde_json::Value>(info)
        .unwrap_or_else(|e| panic!("info[\"info\"] is not JSON ({e}): {info}"));

    let all = list_images(&mut images, None).await;
    assert!(all.iter().any(|i| i.id == image_id), "ListImages lacks {image_id}: {all:?}");
    let filtered = list_images(&mut images, Some(&image.name)).await;
    assert_eq!(filtered.len(), 1, "filtered ListImages: {filtered:?}");
    assert_eq!(filtered[0].id, image_id);
    assert!(filtered[0].repo_tags.contains(&image.name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_status_of_an_absent_image_is_empty() {
    let daemon = Daemon::start().await;
    let name = format!("{}/e2e/never-pulled:v1", registry().host());
    assert_eq!(image_status(&mut daemon.images(), &name).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_image_is_idempotent() {
    let daemon = Daemon::start().await;
    let mut images = daemon.images();
    let image = pulled_fixture(&daemon, "hello", "images-remove").await;
    assert!(image_status(&mut images, &image.name).await.is_some());

    remove_image(&mut images, &image.name).await;
    assert_eq!(image_status(&mut images, &image.name).await, None);
    let left = list_images(&mut images, None).await;
    assert!(left.iter().all(|i| !i.repo_tags.contains(&image.name)), "removed image still listed: {left:?}");
    // Its blobs and its compiled code are gone from disk: no other image used them.
    let files = |dir: std::path::PathBuf| -> Vec<_> { walk(&dir).into_iter().filter(|p| p.is_file()).collect() };
    assert_eq!(files(daemon.root().join("images/blobs")), Vec::<std::path::PathBuf>::new());
    assert_eq!(files(daemon.root().join("cache")), Vec::<std::path::PathBuf>::new());
    remove_image(&mut images, &image.name).await;
}

/// Every path below `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        }
        found.push(path);
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_fs_info_counts_pulled_images() {
    let daemon = Daemon::start().await;
    pulled_fixture(&daemon, "hello", "images-fsinfo").await;
    let info = daemon.images().image_fs_info(ImageFsInfoRequest {}).await.expect("ImageFsInfo").into_inner();
    let fs = info.image_filesystems.first().expect("ImageFsInfo without image_filesystems");
    assert!(fs.used_bytes.as_ref().is_some_and(|v| v.value > 0), "used_bytes {:?}", fs.used_bytes);
    assert!(fs.inodes_used.as_ref().is_some_and(|v| v.value > 0), "inodes_used {:?}", fs.inodes_used);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_survive_a_daemon_restart() {
    let mut daemon = Daemon::start().await;
    let image = pulled_fixture(&daemon, "hello", "images-restart").await;
    let before = image_status(&mut daemon.images(), &image.name).await.expect("pulled image");

    let dir = daemon.dir().to_path_buf();
    let status = daemon.sigterm_and_wait();
    assert!(status.success(), "wasmrun exited with {status}");
    drop(daemon);

    let daemon = Daemon::start_with(Some(dir), &[]).await;
    let after = image_status(&mut daemon.images(), &image.name).await.expect("image lost across a restart");
    assert_eq!(after, before);
}

/// Kubelet resolves the name to the image id once (ImageStatus), then uses
/// the id: in CreateContainer (with the name as user_specified_image), in
/// ImageStatus, and in RemoveImage during image garbage collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_id_works_wherever_kubelet_uses_it() {
    let daemon = Daemon::start().await;
    let mut images = daemon.images();
    let image = pulled_fixture(&daemon, "hello", "images-by-id").await;
    let image_id = image_status(&mut images, &image.name).await.expect("pulled image").id;

    let by_id = image_status(&mut images, &image_id).await.expect("ImageStatus by image id");
    assert_eq!(by_id.id, image_id);

    let pod = Pod::run(&daemon, "by-id").await;
    let mut config = container_config("by-id", &image.name, &["/hello.wasm"], &[], &[]);
    config.image =
        Some(ImageSpec { image: image_id.clone(), user_specified_image: image.name.clone(), ..Default::default() });
    let (id, status) = pod.run_to_exit(&daemon, &config).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
    // As containerd does: the image shown is the image's tag, not the id kubelet sent.
    let shown = status.image.as_ref().expect("image");
    assert_eq!(shown.image, image.name);
    assert_eq!(shown.user_specified_image, image.name);
    assert_eq!(status.image_id, image_id);
    assert!(has_line(&full_lines(&read_log(&pod.log_path(&config))), "stdout", "hello from wasm"));
    daemon.runtime().remove_container(RemoveContainerRequest { container_id: id }).await.expect("RemoveContainer");

    remove_image(&mut images, &image_id).await;
    assert_eq!(image_status(&mut images, &image.name).await, None);
}

/// Pulling an image that is present again asks the registry for one manifest
/// and no blob: the manifest's digest names what the store holds already. The
/// only other request is the `GET /v2/` that oci-client sends before each
/// request to a registry that asks for no authentication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulling_a_present_image_again_costs_one_manifest_request() {
    const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    let own = start_own_registry("repull");
    let host = own.host();
    push_wasm_artifact(&host, "e2e/repull", "v1", &fixture("hello")).await;
    // Another module behind an index, whose wasm entry is a manifest of its own.
    let entry = push_wasm_artifact(&host, "e2e/repull", "wasm", &fixture("exit-code")).await;
    let (code, entry_bytes) =
        http_get(&host, &format!("/v2/e2e/repull/manifests/{entry}"), Some(MANIFEST_MEDIA_TYPE)).expect("GET manifest");
    assert_eq!(code, 200);
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{
        "mediaType": MANIFEST_MEDIA_TYPE, "digest": entry, "size": entry_bytes.len(),
        "platform": {"os": "wasip1", "architecture": "wasm"}}]});
    push_manifest_json(&format!("{host}/e2e/repull:index"), OCI_INDEX, &index).await;
    let daemon = Daemon::start_with(None, &["--insecure-registry", &host]).await;

    for (tag, manifests) in [("v1", 1), ("index", 2)] {
        let image = format!("{host}/e2e/repull:{tag}");
        let before = own.log_len();
        let id = pull(&daemon, &image).await;
        let first = own.requests_since(before);
        let count = |requests: &[Request], what: fn(&Request) -> bool| requests.iter().filter(|r| what(r)).count();
        assert_eq!(count(&first, Request::is_manifest), manifests, "the first pull of {tag}: {first:#?}");
        assert_eq!(count(&first, Request::is_blob), 2, "the first pull of {tag} fetches config and module: {first:#?}");

        for _ in 0..2 {
            let before = own.log_len();
            assert_eq!(pull(&daemon, &image).await, id);
            let again = own.requests_since(before);
            let manifests: Vec<&Request> = again.iter().filter(|r| r.is_manifest()).collect();
            assert_eq!(manifests.len(), 1, "a re-pull of {tag} asks for one manifest: {again:#?}");
            assert_eq!(
                (manifests[0].method.as_str(), manifests[0].uri.as_str()),
                ("GET", format!("/v2/e2e/repull/manifests/{tag}").as_str()),
                "{again:#?}"
            );
            assert_eq!(count(&again, Request::is_blob), 0, "a re-pull of {tag} fetches no blob: {again:#?}");
            assert!(
                again.len() <= 2 && again.iter().all(|r| r.is_manifest() || r.is_ping()),
                "a re-pull of {tag} makes the manifest request and at most a GET /v2/: {again:#?}"
            );
        }
    }
}
