//! Crashes in the middle of a pull: the daemon killed with SIGKILL, the
//! registry killed mid-blob, the caller gone (its deadline passed). Each
//! leaves no half image visible and no temporary file, and the next start
//! finds a consistent store. And two pulls of one image share a download.

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
    push_leb128(section.len(), &mut module);
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

/// Files in `images/tmp` (downloads in progress) right now.
fn downloads_in(root: &Path) -> Vec<String> {
    files_in(&root.join("images/tmp"))
}

/// Waits (bounded by WAIT_LIMIT) until `images/tmp` under `root` is empty.
async fn wait_for_no_downloads(root: &Path, what: &str) {
    let deadline = Instant::now() + WAIT_LIMIT;
    while !downloads_in(root).is_empty() {
        assert!(Instant::now() < deadline, "{what}: files stay in images/tmp: {:?}", downloads_in(root));
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Pulls `image` with a client deadline of 1.5 s, as kubelet's cancellation
/// does, while the proxy holds the module mid-download; returns once the
/// deadline has ended the call and the daemon is writing the module.
async fn pull_cancelled_mid_download(daemon: &Daemon, image: &str) {
    let mut request = tonic::Request::new(wasmrun::api::PullImageRequest {
        image: Some(wasmrun::api::ImageSpec { image: image.into(), ..Default::default() }),
        ..Default::default()
    });
    request.set_timeout(Duration::from_millis(1500));
    let result = tokio::time::timeout(WAIT_LIMIT, daemon.images().pull_image(request))
        .await
        .expect("the deadline must end the call");
    let status = result.expect_err("the module is held: the pull cannot have finished");
    assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");
    // The held download is in images/tmp (it stays there while the proxy
    // holds it, unless the pull went on past the deadline and removed it).
    tokio::task::spawn_blocking({
        let root = daemon.root();
        move || wait_for_download(&root)
    })
    .await
    .expect("wait for the download");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_cancelled_by_its_deadline_completes_and_leaves_no_temporary_file() {
    let own = start_own_registry("cancel-complete");
    let module = big_module(16);
    push_wasm_artifact(&own.host(), "e2e/cancel-complete", "v1", &module).await;
    let proxy = HoldingProxy::start(&own.host(), 256 << 10);
    let image = format!("{}/e2e/cancel-complete:v1", proxy.host());
    let daemon = Daemon::start_with(None, &["--insecure-registry", &proxy.host()]).await;
    let root = daemon.root();

    pull_cancelled_mid_download(&daemon, &image).await;
    // The caller is gone; the registry goes on serving: the pull ends in the store.
    proxy.release();
    wait_for_no_downloads(&root, "a pull whose caller went away").await;
    let deadline = Instant::now() + WAIT_LIMIT;
    while image_status(&mut daemon.images(), &image).await.is_none() {
        assert!(Instant::now() < deadline, "the cancelled pull never completed into the store");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    // Whole: its module runs.
    let pod = Pod::run(&daemon, "cancelled").await;
    let (_, status) = pod.run_to_exit(&daemon, &container_config("cancelled", &image, &[], &[], &[])).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
    assert_eq!(downloads_in(&root), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_cancelled_by_its_deadline_then_failing_leaves_nothing() {
    let own = start_own_registry("cancel-fail");
    let module = big_module(16);
    push_wasm_artifact(&own.host(), "e2e/cancel-fail", "v1", &module).await;
    let proxy = HoldingProxy::start(&own.host(), 256 << 10);
    let image = format!("{}/e2e/cancel-fail:v1", proxy.host());
    let daemon = Daemon::start_with(None, &["--insecure-registry", &proxy.host()]).await;
    let root = daemon.root();

    pull_cancelled_mid_download(&daemon, &image).await;
    // The caller is gone, then the registry connection breaks mid-blob: the
    // pull fails on the daemon's side, and takes its partial file with it.
    proxy.cut();
    wait_for_no_downloads(&root, "a cancelled pull that then failed").await;
    assert_eq!(image_status(&mut daemon.images(), &image).await, None, "a half image is visible");
    assert_store_clean(&root, &module);
    assert_serving(&daemon).await;
}
