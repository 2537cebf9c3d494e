//! The layouts of wasm image people publish: each is pulled from the real
//! registry and run; each refusal names the image and stores nothing.

use tonic::Code;

use crate::harness::*;

const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn json(value: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&value).expect("serialize")
}

/// Pushes `parts` as "e2e/<repo>:v1" to the shared registry; returns the name.
async fn push(repo: &str, parts: &ImageParts) -> String {
    let host = registry().host();
    push_image(&host, &format!("e2e/{repo}"), "v1", parts).await;
    format!("{host}/e2e/{repo}:v1")
}

/// Pushes `parts`, pulls them into `daemon`, and checks what ImageStatus and
/// ListImages (crictl images, inspecti) say of them: tag, digest and size.
async fn push_and_pull(daemon: &Daemon, repo: &str, parts: &ImageParts) -> String {
    let host = registry().host();
    let digest = push_image(&host, &format!("e2e/{repo}"), "v1", parts).await;
    let name = format!("{host}/e2e/{repo}:v1");
    let image_ref = pull(daemon, &name).await;
    let status = image_status(&mut daemon.images(), &name).await.expect("pulled image");
    assert_eq!(status.id, image_ref);
    assert_eq!(status.id, sha256_digest(&parts.config), "the image id is the config digest");
    assert_eq!(status.repo_tags, vec![name.clone()]);
    assert_eq!(status.repo_digests, vec![format!("{host}/e2e/{repo}@{digest}")]);
    let size = parts.config.len() + parts.layers.iter().map(|(_, bytes)| bytes.len()).sum::<usize>();
    assert_eq!(status.size, size as u64, "size of config and layers");
    let listed = daemon
        .images()
        .list_images(wasmrun::api::ListImagesRequest::default())
        .await
        .expect("ListImages")
        .into_inner()
        .images;
    assert!(listed.contains(&status), "ListImages does not show {status:#?}");
    name
}

/// A compat image: the given tar layer, an OCI config for wasip1/wasm.
fn compat_image(layer: Vec<u8>, layer_media_type: &str, process: serde_json::Value) -> ImageParts {
    ImageParts {
        config_media_type: OCI_CONFIG.into(),
        config: json(serde_json::json!({"architecture": "wasm", "os": "wasip1", "config": process,
            "rootfs": {"type": "layers", "diff_ids": []}})),
        layers: vec![(layer_media_type.into(), layer)],
        ..ImageParts::default()
    }
}

/// Runs one container of `image` with `command`/`args`/`envs`; returns its
/// status and its log lines.
async fn run(
    daemon: &Daemon,
    image: &str,
    name: &str,
    command: &[&str],
    args: &[&str],
    envs: &[(&str, &str)],
) -> (wasmrun::api::ContainerStatus, Vec<(String, String)>) {
    let pod = Pod::run(daemon, name).await;
    let config = container_config(name, image, command, args, envs);
    let (_, status) = pod.run_to_exit(daemon, &config).await;
    let lines = full_lines(&read_log(&pod.log_path(&config)));
    (status, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runwasi_image_runs() {
    let daemon = Daemon::start().await;
    let parts = ImageParts {
        config_media_type: OCI_CONFIG.into(),
        config: json(serde_json::json!({"architecture": "wasm", "os": "wasip1"})),
        layers: vec![("application/vnd.bytecodealliance.wasm.component.layer.v0+wasm".into(), fixture("hello"))],
        ..ImageParts::default()
    };
    let image = push_and_pull(&daemon, "formats-runwasi", &parts).await;
    let (status, lines) = run(&daemon, &image, "runwasi", &[], &["x"], &[]).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
    assert!(has_line(&lines, "stdout", "arg[0]=formats-runwasi"), "{lines:#?}");
    assert!(has_line(&lines, "stdout", "arg[1]=x"), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runwasi_component_runs() {
    let daemon = Daemon::start().await;
    let parts = ImageParts {
        config_media_type: OCI_CONFIG.into(),
        config: json(serde_json::json!({"architecture": "wasm", "os": "wasip2"})),
        layers: vec![("application/vnd.bytecodealliance.wasm.component.layer.v0+wasm".into(), fixture_p2("hello-p2"))],
        ..ImageParts::default()
    };
    let image = push_and_pull(&daemon, "formats-runwasi-component", &parts).await;
    let (status, lines) = run(&daemon, &image, "runwasi-component", &[], &[], &[("K", "v")]).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
    assert!(has_line(&lines, "stdout", "hello from a component"), "{lines:#?}");
    assert!(has_line(&lines, "stdout", "env:K=v"), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_wasm_to_oci_artifact_runs() {
    let daemon = Daemon::start().await;
    let parts = ImageParts {
        config_media_type: "application/vnd.wasm.config.v1+json".into(),
        config: b"{}".to_vec(),
        layers: vec![("application/vnd.wasm.content.layer.v1+wasm".into(), fixture("hello"))],
        ..ImageParts::default()
    };
    let image = push_and_pull(&daemon, "formats-wasm-to-oci", &parts).await;
    let (status, lines) = run(&daemon, &image, "wasm-to-oci", &[], &[], &[]).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
    assert!(has_line(&lines, "stdout", "hello from wasm"), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compat_image_runs_with_its_filesystem_as_a_read_only_root() {
    let daemon = Daemon::start().await;
    let files = fixture("files");
    let layer = tar_layer(&[("files.wasm", &files, 0o755), ("data/in.txt", b"from the image", 0o644)], false);
    let parts = compat_image(layer, OCI_TAR, serde_json::json!({"Entrypoint": ["/files.wasm"]}));
    let image = push_and_pull(&daemon, "formats-compat", &parts).await;

    let pod = Pod::run(&daemon, "compat").await;
    let out = scratch_dir("compat-out");
    let mut config = container_config("compat", &image, &[], &[], &[]);
    config.linux.get_or_insert_with(Default::default).security_context =
        Some(wasmrun::api::LinuxContainerSecurityContext { readonly_rootfs: true, ..Default::default() });
    config.mounts = vec![wasmrun::api::Mount {
        container_path: "/out".into(),
        host_path: out.display().to_string(),
        ..Default::default()
    }];
    let (_, status) = pod.run_to_exit(&daemon, &config).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
    let lines = full_lines(&read_log(&pod.log_path(&config)));
    assert!(has_line(&lines, "stdout", "read:from the image"), "{lines:#?}");
    assert!(has_line(&lines, "stdout", "wrote /out/out.txt"), "{lines:#?}");
    assert!(
        lines.iter().any(|(stream, line)| stream == "stdout" && line.starts_with("readonly write failed")),
        "the image's filesystem must be read-only: {lines:#?}"
    );
    assert_eq!(std::fs::read_to_string(out.join("out.txt")).expect("out.txt"), "written by wasm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_compat_image_with_a_gzip_layer_takes_its_entrypoint_cmd_and_env() {
    let daemon = Daemon::start().await;
    let hello = fixture("hello");
    let layer = tar_layer(&[("app/hello.wasm", &hello, 0o755)], true);
    let mut parts = compat_image(
        layer,
        DOCKER_TAR_GZIP,
        serde_json::json!({"Entrypoint": ["hello.wasm"], "Cmd": ["from-cmd"], "WorkingDir": "/app",
            "Env": ["FROM_IMAGE=yes", "OVERRIDDEN=image"]}),
    );
    parts.manifest_media_type = DOCKER_MANIFEST.into();
    parts.config_media_type = DOCKER_CONFIG.into();
    let image = push_and_pull(&daemon, "formats-docker-compat", &parts).await;

    let (status, lines) = run(&daemon, &image, "docker-compat", &[], &[], &[("OVERRIDDEN", "cri")]).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
    // WASI preview 1 has no working directory: a module gets the image's WorkingDir as $PWD
    // (and preopened as `.`, see e2e/rootfs.rs).
    for line in ["arg[0]=hello.wasm", "arg[1]=from-cmd", "env:FROM_IMAGE=yes", "env:OVERRIDDEN=cri", "env:PWD=/app"] {
        assert!(has_line(&lines, "stdout", line), "no {line:?} in {lines:#?}");
    }
    // CRI args replace the image's Cmd.
    let (_, lines) = run(&daemon, &image, "docker-compat-args", &[], &["from-cri"], &[]).await;
    assert!(has_line(&lines, "stdout", "arg[1]=from-cri"), "{lines:#?}");
    assert!(!lines.iter().any(|(_, line)| line == "arg[1]=from-cmd"), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cri_command_selects_another_module_of_a_compat_image() {
    let daemon = Daemon::start().await;
    let (hello, exit_code) = (fixture("hello"), fixture("exit-code"));
    let layer = tar_layer(&[("hello.wasm", &hello, 0o755), ("bin/exit-code.wasm", &exit_code, 0o755)], false);
    let image =
        push("formats-two-modules", &compat_image(layer, OCI_TAR, serde_json::json!({"Entrypoint": ["/hello.wasm"]})))
            .await;
    pull(&daemon, &image).await;
    let (status, lines) = run(&daemon, &image, "other-module", &["/bin/exit-code.wasm"], &["5"], &[]).await;
    assert_eq!(status.exit_code, 5, "{status:#?}");
    assert!(has_line(&lines, "stdout", "exiting with 5"), "{lines:#?}");

    let pod = Pod::run(&daemon, "no-such-module").await;
    let config = container_config("missing", &image, &["/nowhere.wasm"], &[], &[]);
    let status =
        expect_code(pod.try_create(&daemon, &config).await, Code::InvalidArgument, "a module that is not there");
    assert!(status.message().contains("/nowhere.wasm"), "{status:?}");
}

/// Pushes an image index "e2e/<repo>:<tag>" over manifests of that
/// repository, each entry `(digest, os, architecture)`; returns its name.
async fn push_index(repo: &str, tag: &str, entries: &[(&str, &str, &str)]) -> String {
    let host = registry().host();
    let entries: Vec<serde_json::Value> = entries
        .iter()
        .map(|(digest, os, architecture)| {
            // Sizes must be true for a registry to accept the index; fetch them.
            let (code, body) =
                http_get(&host, &format!("/v2/e2e/{repo}/manifests/{digest}"), Some(MANIFEST_MEDIA_TYPE))
                    .expect("GET manifest");
            assert_eq!(code, 200);
            serde_json::json!({"mediaType": MANIFEST_MEDIA_TYPE, "digest": digest, "size": body.len(),
                "platform": {"os": os, "architecture": architecture}})
        })
        .collect();
    let name = format!("{host}/e2e/{repo}:{tag}");
    push_manifest_json(
        &name,
        OCI_INDEX,
        &serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}),
    )
    .await;
    name
}

/// A Linux image whose entrypoint is a shell, as busybox is.
fn linux_image(annotations: serde_json::Map<String, serde_json::Value>) -> ImageParts {
    ImageParts {
        config_media_type: OCI_CONFIG.into(),
        config: json(
            serde_json::json!({"architecture": "amd64", "os": "linux", "config": {"Entrypoint": ["/bin/sh"]}}),
        ),
        layers: vec![(OCI_TAR.into(), tar_layer(&[("bin/sh", b"#!/not/wasm\n", 0o755)], false))],
        annotations,
        ..ImageParts::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_resolves_to_its_wasm_entry() {
    let daemon = Daemon::start().await;
    let host = registry().host();
    let wasm_digest = push_image(
        &host,
        "e2e/formats-index",
        "wasm",
        &ImageParts {
            config_media_type: "application/vnd.wasm.config.v0+json".into(),
            config: b"{\"architecture\":\"wasm\",\"os\":\"wasip1\"}".to_vec(),
            layers: vec![("application/wasm".into(), fixture("hello"))],
            ..ImageParts::default()
        },
    )
    .await;
    let linux_digest = push_image(&host, "e2e/formats-index", "linux", &linux_image(Default::default())).await;
    let name =
        push_index("formats-index", "v1", &[(&linux_digest, "linux", "amd64"), (&wasm_digest, "wasip1", "wasm")]).await;

    pull(&daemon, &name).await;
    let status = image_status(&mut daemon.images(), &name).await.expect("pulled");
    assert!(status.repo_digests.iter().any(|d| d.ends_with(&wasm_digest)), "{status:#?}");
    let (status, lines) = run(&daemon, &name, "index", &[], &[], &[]).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
    assert!(has_line(&lines, "stdout", "hello from wasm"), "{lines:#?}");
}

/// An index entry qualifies by the rule a manifest does: each platform
/// spelling publishing tools write (`linux/wasm` among them) resolves to its
/// compat image, which also runs when pulled by its own digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_entry_of_every_wasm_platform_spelling_resolves_and_runs() {
    let daemon = Daemon::start().await;
    let host = registry().host();
    let hello = fixture("hello");
    let linux_digest = push_image(&host, "e2e/formats-spellings", "linux", &linux_image(Default::default())).await;
    for (os, architecture) in [("linux", "wasm"), ("wasi", "wasm"), ("wasip2", "wasm"), ("wasi", "wasm32")] {
        let tag = format!("{os}-{architecture}");
        let mut parts = compat_image(
            tar_layer(&[("hello.wasm", &hello, 0o755)], false),
            OCI_TAR,
            serde_json::json!({"Entrypoint": ["/hello.wasm"]}),
        );
        parts.config = json(serde_json::json!({"architecture": architecture, "os": os,
            "config": {"Entrypoint": ["/hello.wasm"]}, "rootfs": {"type": "layers", "diff_ids": []}}));
        let wasm_digest = push_image(&host, "e2e/formats-spellings", &tag, &parts).await;
        let index = push_index(
            "formats-spellings",
            &format!("index-{tag}"),
            &[(&linux_digest, "linux", "amd64"), (&wasm_digest, os, architecture)],
        )
        .await;
        for name in [format!("{host}/e2e/formats-spellings@{wasm_digest}"), index] {
            pull(&daemon, &name).await;
            let (status, lines) = run(&daemon, &name, &format!("spelling-{tag}"), &[], &[], &[]).await;
            assert_eq!(status.exit_code, 0, "{name}: {status:#?}");
            assert!(has_line(&lines, "stdout", "hello from wasm"), "{name}: {lines:#?}");
        }
    }
}

/// crun's `compat-smart`: wasm only if the entrypoint is wasm. A busybox-like
/// Linux image so annotated is not a wasm image (FailedPrecondition, nothing
/// stored; with a backing runtime it is forwarded); a Linux-platform image
/// so annotated whose entrypoint is a wasm module runs as wasm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_smart_claims_an_image_only_if_its_entrypoint_is_wasm() {
    let daemon = Daemon::start().await;
    let mut smart = serde_json::Map::new();
    smart.insert("module.wasm.image/variant".into(), "compat-smart".into());

    let busybox = push("smart-busybox", &linux_image(smart.clone())).await;
    expect_refused(&daemon, &busybox, Code::FailedPrecondition, "a compat-smart Linux image").await;
    let refused = try_pull(&daemon, Some(&busybox)).await.expect_err("a compat-smart Linux image");
    assert!(refused.message().contains("not a wasm image"), "{refused:?}");
    assert!(!refused.message().contains("cannot read its program"), "{refused:?}");
    let rootfs = std::fs::read_dir(daemon.root().join("images/rootfs")).expect("rootfs dir").count();
    assert_eq!(rootfs, 0, "the refused image's unpacked filesystem is left behind");

    let wasm = ImageParts {
        config_media_type: OCI_CONFIG.into(),
        config: json(serde_json::json!({"architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": ["/hello.wasm"]}})),
        layers: vec![(OCI_TAR.into(), tar_layer(&[("hello.wasm", &fixture("hello"), 0o755)], false))],
        annotations: smart,
        ..ImageParts::default()
    };
    let name = push("smart-wasm", &wasm).await;
    pull(&daemon, &name).await;
    let (status, lines) = run(&daemon, &name, "smart", &[], &[], &[]).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
    assert!(has_line(&lines, "stdout", "hello from wasm"), "{lines:#?}");
}

/// The blob files of the daemon's store.
fn stored_blobs(daemon: &Daemon) -> Vec<String> {
    let dir = daemon.root().join("images/blobs/sha256");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Pulls `image`, expects `code` with a message naming the image, and checks
/// that the store is as it was.
async fn expect_refused(daemon: &Daemon, image: &str, code: Code, reason: &str) {
    let before = stored_blobs(daemon);
    let status = expect_code(try_pull(daemon, Some(image)).await, code, reason);
    assert!(status.message().contains(image.split(':').next().unwrap_or(image)), "{reason}: {status:?}");
    assert_eq!(image_status(&mut daemon.images(), image).await, None, "{reason}");
    assert_eq!(stored_blobs(daemon), before, "{reason}: the store changed");
    assert_serving(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_image_and_store_nothing() {
    let daemon = Daemon::start().await;
    let hello = fixture("hello");

    let two_layers = ImageParts {
        config_media_type: "application/vnd.wasm.config.v0+json".into(),
        config: b"{}".to_vec(),
        layers: vec![("application/wasm".into(), hello.clone()), ("application/wasm".into(), fixture("trap"))],
        ..ImageParts::default()
    };
    let image = push("refuse-two-layers", &two_layers).await;
    expect_refused(&daemon, &image, Code::InvalidArgument, "an artifact with two wasm layers").await;

    let image = push("refuse-linux", &linux_image(Default::default())).await;
    expect_refused(&daemon, &image, Code::FailedPrecondition, "a Linux image").await;

    let escaping = compat_image(escaping_layer(&hello), OCI_TAR, serde_json::json!({"Entrypoint": ["/hello.wasm"]}));
    let image = push("refuse-escape", &escaping).await;
    expect_refused(&daemon, &image, Code::InvalidArgument, "a layer with a ../ path").await;
    assert!(!daemon.root().join("images/evil").exists());
}

/// A tar layer whose second entry climbs out of the root with `../`.
fn escaping_layer(hello: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(hello.len() as u64);
    header.set_mode(0o755);
    builder.append_data(&mut header, "hello.wasm", hello).expect("tar");
    let mut evil = tar::Header::new_old();
    let name = b"../../evil";
    evil.as_old_mut().name[..name.len()].copy_from_slice(name);
    evil.set_size(4);
    evil.set_mode(0o644);
    evil.set_entry_type(tar::EntryType::Regular);
    evil.set_cksum();
    builder.append(&evil, &b"evil"[..]).expect("tar");
    builder.into_inner().expect("tar")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_and_manifests_over_the_limits_are_resource_exhausted() {
    let config = scratch_dir("limits").join("config.toml");
    std::fs::write(&config, "max_blob_bytes = 4096\nmax_manifest_bytes = 65536\n").expect("write config");
    let daemon = Daemon::start_with(None, &["--config", &config.display().to_string()]).await;
    let image = push_fixture("hello", "refuse-too-big").await;
    expect_refused(&daemon, &image.name, Code::ResourceExhausted, "a module over max_blob_bytes").await;

    let mut big = ImageParts {
        config_media_type: "application/vnd.wasm.config.v0+json".into(),
        config: b"{}".to_vec(),
        layers: vec![("application/wasm".into(), b"\0asm\x01\0\0\0".to_vec())],
        ..ImageParts::default()
    };
    big.annotations.insert("padding".into(), "x".repeat(70_000).into());
    let image = push("refuse-big-manifest", &big).await;
    expect_refused(&daemon, &image, Code::ResourceExhausted, "a manifest over max_manifest_bytes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_that_does_not_match_its_digest_is_data_loss() {
    let daemon = Daemon::start().await;
    // A module of its own (an empty module with a unique custom section), since
    // the registry's copy is about to be corrupted and blobs are shared by digest.
    let marker = random_id();
    let mut module = b"\0asm\x01\0\0\0\0".to_vec();
    module.push((1 + marker.len()) as u8);
    module.push(marker.len() as u8);
    module.extend_from_slice(marker.as_bytes());
    let image = push_bytes("refuse-corrupt", &module).await;
    // Corrupt the registry's own copy, as a faulty disk or proxy would.
    let hex = &sha256_digest(&module)["sha256:".len()..];
    let data = registry().storage().join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]));
    let mut bytes = std::fs::read(&data).unwrap_or_else(|e| panic!("read {}: {e}", data.display()));
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, bytes).expect("corrupt the blob");
    expect_refused(&daemon, &image.name, Code::DataLoss, "a blob that does not match its digest").await;
}
