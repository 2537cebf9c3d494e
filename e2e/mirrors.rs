//! Pulls behind registry mirrors on a mixed node: wasmrun and containerd read
//! one hosts directory (containerd's `config_path` layout), the registry an
//! image names cannot be reached, and a mirror holds a wasm and a Linux
//! image. A wasm image pulls through the mirror; a Linux one, which the
//! mirror shows is not wasm, is forwarded, and containerd pulls it through the
//! same mirror; an image no source can give is forwarded too, and without a
//! backing runtime the error names each source.

use tonic::Code;

use crate::harness::*;

/// `127.0.0.1:<port>` on which nothing listens: a registry that cannot be reached.
fn unreachable_registry() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A hosts.toml whose `server` is `upstream` and whose one mirror is `mirror`, both plain http.
fn hosts_toml(upstream: &str, mirror: &str) -> String {
    format!("server = \"http://{upstream}\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n")
}

/// Asserts that no source failed for `image`: wasmrun took the first
/// source's answer and did not go on to the (unreachable) registry.
fn assert_no_source_failed(daemon: &Daemon, image: &str) {
    let log = daemon.log();
    let failed: Vec<&str> = log.lines().filter(|l| l.contains(image) && l.contains("could not serve")).collect();
    assert!(failed.is_empty(), "wasmrun went on after the mirror said {image} is not wasm: {failed:#?}");
}

/// A config file with `toml` as its content; returns its path.
fn config_file(name: &str, toml: &str) -> String {
    let path = scratch_dir(name).join("config.toml");
    std::fs::write(&path, toml).expect("write config");
    path.display().to_string()
}

/// The repository path of `image` (`host/e2e/x:v1` → `e2e/x:v1`), to name it under another registry.
fn path_of(image: &str) -> &str {
    image.split_once('/').map(|(_, path)| path).expect("an image name with a registry")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hosts_directory_serves_wasm_and_forwards_linux_through_a_mirror() {
    let containerd = Containerd::start().await;
    let mirror = registry().host();
    let upstream = unreachable_registry();
    containerd.write_hosts(&upstream, &hosts_toml(&upstream, &mirror));
    let hosts_dir = containerd.hosts_dir();
    let endpoint = format!("unix://{}", containerd.socket.display());
    let daemon = Daemon::start_with(
        None,
        &["--backing-endpoint", &endpoint, "--registry-config-path", hosts_dir.to_str().expect("utf-8 path")],
    )
    .await;

    // The wasm image: pulled by wasmrun through the mirror, and it runs.
    let wasm = push_fixture("hello", "hosts-dir-hello").await;
    let wasm_image = format!("{upstream}/{}", path_of(&wasm.name));
    pull(&daemon, &wasm_image).await;
    let status = image_status(&mut daemon.images(), &wasm_image).await.expect("the wasm image is wasmrun's");
    assert!(status.repo_tags.contains(&wasm_image), "the image keeps the name it was pulled by: {status:#?}");
    assert_eq!(image_status(&mut containerd.images(), &wasm_image).await, None, "containerd pulled the wasm image");
    // With a backing runtime, a pod naming no handler is containerd's: this one says it is wasm.
    let pod = Pod::run_config(&daemon, {
        let mut config = pod_config("hosts-dir", &new_uid());
        config.annotations.insert("module.wasm.image/variant".into(), "compat".into());
        config
    })
    .await;
    let (_, exited) = pod.run_to_exit(&daemon, &container_config("hello", &wasm_image, &[], &[], &[])).await;
    assert_eq!(exited.exit_code, 0, "{exited:#?}");

    // The Linux image: the mirror's answer (not wasm) forwards the pull, and
    // containerd pulls it through the same mirror with the same hosts.toml.
    let linux_image = format!("{upstream}/{}", path_of(&linux_hello_image().await));
    pull(&daemon, &linux_image).await;
    let from_containerd =
        image_status(&mut containerd.images(), &linux_image).await.expect("containerd has the Linux image");
    let through_wasmrun = image_status(&mut daemon.images(), &linux_image).await.expect("ImageStatus through wasmrun");
    assert_eq!(through_wasmrun.id, from_containerd.id, "wasmrun answers containerd's image");
    assert_no_source_failed(&daemon, &linux_image);

    // No source reachable: forwarded, and containerd's error is the answer.
    let nowhere = unreachable_registry();
    containerd.write_hosts(&nowhere, &hosts_toml(&nowhere, &unreachable_registry()));
    let lost = format!("{nowhere}/e2e/hosts-dir-hello:v1");
    let status = try_pull(&daemon, Some(&lost)).await.expect_err("no source can serve the image");
    assert!(status.message().starts_with("backing runtime"), "not containerd's answer: {status:?}");
    assert!(daemon.log().contains("forwarding the pull to the backing runtime"), "no log line says why");

    // Without a backing runtime: a clear status naming the image and each
    // source; and the Linux image is refused as not wasm (the mirror's
    // answer), not as unreachable (the registry's).
    let alone = Daemon::start_with(None, &["--registry-config-path", hosts_dir.to_str().expect("utf-8 path")]).await;
    let status = expect_code(try_pull(&alone, Some(&lost)).await, Code::Unavailable, "no source and no backing");
    for part in [lost.as_str(), "mirror http://127.0.0.1:", &format!("registry http://{nowhere}")] {
        assert!(status.message().contains(part), "{part:?} is not named: {status:?}");
    }
    let status = expect_code(
        try_pull(&alone, Some(&linux_image)).await,
        Code::FailedPrecondition,
        "a Linux image without a backing runtime",
    );
    assert!(status.message().contains("not a wasm image"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registries_mirror_saying_not_wasm_forwards_instead_of_falling_to_the_registry() {
    let containerd = Containerd::start().await;
    let mirror = registry().host();
    let upstream = unreachable_registry();
    // containerd reaches the mirror through its own hosts directory; wasmrun
    // through its `[registries]` table.
    containerd.write_hosts(&upstream, &hosts_toml(&upstream, &mirror));
    let registries = format!(
        "insecure_registries = [\"{upstream}\", \"{mirror}\"]\n[registries.\"{upstream}\"]\nmirrors = [\"{mirror}\"]\n"
    );
    let backing = format!("backing_endpoint = \"unix://{}\"\n", containerd.socket.display());
    let config = config_file("registries-mirror", &format!("{backing}{registries}"));
    let daemon = Daemon::start_with(None, &["--config", &config]).await;

    let linux_image = format!("{upstream}/{}", path_of(&linux_hello_image().await));
    pull(&daemon, &linux_image).await;
    let from_containerd =
        image_status(&mut containerd.images(), &linux_image).await.expect("containerd has the Linux image");
    let through_wasmrun = image_status(&mut daemon.images(), &linux_image).await.expect("ImageStatus through wasmrun");
    assert_eq!(through_wasmrun.id, from_containerd.id);
    assert_no_source_failed(&daemon, &linux_image);

    // Without a backing runtime the same answer is "not wasm", not "unreachable".
    let alone = Daemon::start_with(None, &["--config", &config_file("registries-mirror-alone", &registries)]).await;
    let status =
        expect_code(try_pull(&alone, Some(&linux_image)).await, Code::FailedPrecondition, "a Linux image, alone");
    assert!(status.message().contains("not a wasm image"), "{status:?}");
}
