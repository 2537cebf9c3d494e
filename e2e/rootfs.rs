//! A compat image's filesystem: a compat pull is synced to disk.

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compat_pull_syncs_its_filesystem_without_a_warning() {
    let daemon = Daemon::start().await;
    let image = buildah_compat_image("e2e/rootfs-synced", "v1", &fixture("hello"), "/hello.wasm", "wasip1");
    pull(&daemon, &image).await;
    let log = daemon.log();
    assert!(log.contains("pulled image"), "{log}");
    let warnings: Vec<&str> = log.lines().filter(|line| line.contains("syncfs")).collect();
    assert!(warnings.is_empty(), "the unpacked filesystem was not synced: {warnings:#?}");
}
