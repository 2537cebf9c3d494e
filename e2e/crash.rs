//! Crashes in the middle of a pull: the daemon killed with SIGKILL, the
//! registry killed mid-blob. Each leaves no half image visible, and the next
//! start finds a consistent store. And two pulls of one image share a download.

use std::path::Path;
use std::time::{Duration, Instant};

use tonic::Code;

use crate::harness::*;

/// A runnable module of about `mib` MiB more than the hello fixture: hello
/// with a custom section appended (which compiles at once), unique to this call.
fn big_module(mib: usize) -> Vec<u8> {
    let name = random_id();
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name.as_bytes());
    section.resize(section.len() + (mib << 20), 0x5a);
    let mut module = fixture("hello");
    module.push(0);
    let mut size = section.len();
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        if size == 0 {
            module.push(byte);
            break;
        }
        module.push(byte | 0x80);
    }
    module.extend_from_slice(&section);
    module
}

/// Waits (bounded) until the daemon is writing a blob into its store.
fn wait_for_download(root: &Path) {
    let tmp = root.join("images/tmp");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let writing = std::fs::read_dir(&tmp)
            .map(|entries| entries.flatten().any(|e| e.metadata().is_ok_and(|m| m.is_file() && m.len() > 0)))
            .unwrap_or(false);
        if writing {
            return;
        }
        assert!(Instant::now() < deadline, "no download started in {}", tmp.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// No trace of `module` in the store under `root`, and nothing half-written.
fn assert_store_clean(root: &Path, module: &[u8]) {
    let hex = sha256_digest(module)["sha256:".len()..].to_owned();
    assert!(!files_in(&root.join("images/blobs/sha256")).contains(&hex), "the module's blob is in the store");
    assert_eq!(files_in(&root.join("images/tmp")), Vec::<String>::new(), "half-written files remain");
    let index = std::fs::read(root.join("images/index.json")).unwrap_or_else(|_| b"[]".to_vec());
    let index: serde_json::Value = serde_json::from_slice(&index).expect("the image index is valid JSON");
    assert!(!index.to_string().contains(&hex), "the index names the module: {index}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_pull_restarts_with_a_consistent_store() {
    let module = big_module(96);
    let image = push_bytes("crash-daemon", &module).await;
    let mut daemon = Daemon::start().await;
    let root = daemon.root();
    let pulling = tokio::spawn({
        let mut images = daemon.images();
        let spec = image.spec();
        async move { images.pull_image(wasmrun::api::PullImageRequest { image: Some(spec), ..Default::default() }).await }
    });
    tokio::task::spawn_blocking({
        let root = root.clone();
        move || wait_for_download(&root)
    })
    .await
    .expect("wait for the download");
    let dir = daemon.dir().to_path_buf();
    daemon.sigkill();
    assert!(pulling.await.expect("pull task").is_err(), "the pull cannot have finished");
    drop(daemon);

    let daemon = Daemon::start_with(Some(dir), &[]).await;
    assert_eq!(image_status(&mut daemon.images(), &image.name).await, None, "a half image is visible");
    assert_store_clean(&root, &module);
    pull(&daemon, &image.name).await;
    assert!(image_status(&mut daemon.images(), &image.name).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_killed_mid_blob_fails_the_pull_cleanly() {
    let own = start_own_registry("crash-registry");
    let module = big_module(96);
    push_wasm_artifact(&own.host(), "e2e/crash-registry", "v1", &module).await;
    let image = format!("{}/e2e/crash-registry:v1", own.host());
    let daemon = Daemon::start_with(None, &["--insecure-registry", &own.host()]).await;
    let root = daemon.root();
    let pulling = tokio::spawn({
        let image = image.clone();
        let mut images = daemon.images();
        async move {
            let request = wasmrun::api::PullImageRequest {
                image: Some(wasmrun::api::ImageSpec { image, ..Default::default() }),
                ..Default::default()
            };
            tokio::time::timeout(Duration::from_secs(120), images.pull_image(request)).await
        }
    });
    tokio::task::spawn_blocking({
        let root = root.clone();
        move || wait_for_download(&root)
    })
    .await
    .expect("wait for the download");
    own.kill();
    let result = pulling.await.expect("pull task").expect("the pull must end once the registry is gone");
    let status = expect_code(result, Code::Unavailable, "a pull whose registry died");
    assert!(status.message().contains("crash-registry"), "{status:?}");
    assert_eq!(image_status(&mut daemon.images(), &image).await, None);
    assert_store_clean(&root, &module);
    assert_serving(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_image_download_it_once() {
    let own = start_own_registry("shared-download");
    let module = big_module(8);
    push_wasm_artifact(&own.host(), "e2e/shared-download", "v1", &module).await;
    let image = format!("{}/e2e/shared-download:v1", own.host());
    let daemon = Daemon::start_with(None, &["--insecure-registry", &own.host()]).await;
    let pulls: Vec<_> = (0..4)
        .map(|_| {
            let (mut images, image) = (daemon.images(), image.clone());
            tokio::spawn(async move {
                let request = wasmrun::api::PullImageRequest {
                    image: Some(wasmrun::api::ImageSpec { image, ..Default::default() }),
                    ..Default::default()
                };
                images.pull_image(request).await.map(|r| r.into_inner().image_ref)
            })
        })
        .collect();
    let mut refs = Vec::new();
    for pull in pulls {
        refs.push(pull.await.expect("pull task").expect("PullImage"));
    }
    refs.dedup();
    assert_eq!(refs.len(), 1, "the pulls disagree: {refs:?}");
    let digest = sha256_digest(&module);
    let log = std::fs::read_to_string(&own.log).expect("registry log");
    let downloads =
        log.lines().filter(|l| l.contains(&format!("blobs/{digest}")) && l.contains("response completed")).count();
    assert_eq!(downloads, 1, "the module was downloaded {downloads} times; registry log {}", own.log.display());
}
