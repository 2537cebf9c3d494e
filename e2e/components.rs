//! WASI 0.2 components through the CRI socket: they get what a module gets
//! (argv, env, working dir, mounts, logs, exit code and reason), and a module
//! or component importing something wasmrun does not provide is refused, by
//! PullImage or by CreateContainer, with a status naming the image and the
//! import, leaving nothing behind.

use std::path::{Path, PathBuf};

use tonic::Code;

use crate::harness::*;

/// Runs the container `config` in a new pod; returns its status and log lines.
async fn run(
    daemon: &Daemon,
    name: &str,
    config: wasmrun::api::ContainerConfig,
) -> (wasmrun::api::ContainerStatus, Vec<(String, String)>) {
    let pod = Pod::run(daemon, name).await;
    let (_, status) = pod.run_to_exit(daemon, &config).await;
    let lines = full_lines(&read_log(&pod.log_path(&config)));
    (status, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_gets_its_args_env_working_dir_and_mounts() {
    let daemon = Daemon::start().await;
    let image = pulled_image(&daemon, "components-probe", &fixture_p2("probe-p2")).await;
    let data = scratch_dir("component-data");
    std::fs::write(data.join("in.txt"), "from the host").expect("write in.txt");
    let out = scratch_dir("component-out");

    let mut config = container_config(
        "probe",
        &image,
        &[],
        &["one", "two words", ""],
        &[("PROBE_A", "1"), ("PROBE_EMPTY", ""), ("PROBE_SPACES", "a b=c")],
    );
    config.working_dir = "/data".into();
    config.mounts = vec![mount("/data", &data, true), mount("/out", &out, false)];
    let (status, lines) = run(&daemon, "probe", config).await;

    assert_eq!(status.exit_code, 0, "{status:#?}");
    assert_eq!(status.reason, "Completed", "{status:#?}");
    // A wasm artifact's argv[0] is its repository's last segment; CRI args follow, as given.
    let args: Vec<&str> = stdout_with_prefix(&lines, "arg[");
    assert_eq!(args, ["arg[0]=components-probe", "arg[1]=one", "arg[2]=two words", "arg[3]="], "{lines:#?}");
    // The container's env and nothing of the daemon's; the working dir also as $PWD.
    let env: Vec<&str> = stdout_with_prefix(&lines, "env:");
    assert_eq!(env, ["env:PROBE_A=1", "env:PROBE_EMPTY=", "env:PROBE_SPACES=a b=c", "env:PWD=/data"], "{lines:#?}");
    // The working dir is the component's `wasi:cli/environment.initial-cwd`.
    // Rust's std (wasi-libc) does not read it: its current_dir starts at `/`;
    // yet a relative path resolves in the working dir, preopened as `.`.
    for line in
        ["initial-cwd=/data", "cwd=/", "relative read:from the host", "read:from the host", "wrote /out/out.txt"]
    {
        assert!(has_line(&lines, "stdout", line), "no {line:?} in {lines:#?}");
    }
    assert!(
        lines.iter().any(|(stream, line)| stream == "stdout" && line.starts_with("readonly write failed: ")),
        "a read-only mount must refuse writes: {lines:#?}"
    );
    assert!(!data.join("forbidden.txt").exists(), "the read-only mount was written");
    assert_eq!(std::fs::read_to_string(out.join("out.txt")).expect("out.txt"), "written by a component");
    // Both streams reach the CRI log file, in order, stderr last.
    assert_eq!(lines.last(), Some(&("stderr".to_owned(), "done".to_owned())), "{lines:#?}");
}

/// The stdout lines starting with `prefix`, in order.
fn stdout_with_prefix<'a>(lines: &'a [(String, String)], prefix: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter(|(stream, line)| stream == "stdout" && line.starts_with(prefix))
        .map(|(_, line)| line.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_exit_gives_the_exit_code_and_reason() {
    let daemon = Daemon::start().await;
    let image = pulled_image(&daemon, "components-exit", &fixture_p2("probe-p2")).await;

    let (status, lines) = run(&daemon, "exit-0", container_config("exit-0", &image, &[], &["exit=0"], &[])).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (0, "Completed"), "{status:#?}");
    assert_eq!(status.message, "", "{status:#?}");
    assert!(has_line(&lines, "stderr", "done"), "{lines:#?}");

    // WASI 0.2 `wasi:cli/exit.exit` takes a result, not a number: Rust's
    // `std::process::exit(3)` on wasip2 reaches the host as `exit(err)`,
    // which wasmtime-wasi reports as exit status 1.
    let (status, lines) = run(&daemon, "exit-3", container_config("exit-3", &image, &[], &["exit=3"], &[])).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (1, "Error"), "{status:#?}");
    assert_eq!(status.message, "", "an exit is not a trap: {status:#?}");
    // What the guest wrote before exiting is all in the log.
    assert!(has_line(&lines, "stdout", "arg[1]=exit=3"), "{lines:#?}");
    assert!(has_line(&lines, "stderr", "done"), "{lines:#?}");
}

/// Pushes `wasm` as the wasm artifact "e2e/<repo>:v1" and pulls it; returns its name.
async fn pulled_image(daemon: &Daemon, repo: &str, wasm: &[u8]) -> String {
    let image = push_bytes(repo, wasm).await;
    pull(daemon, &image.name).await;
    image.name
}

/// Every file under `dir`, relative to it, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path.strip_prefix(dir).expect("under dir").to_owned());
            }
        }
    }
    files.sort();
    files
}

/// What the daemon keeps of images: blobs, unpacked filesystems, index and compiled code.
fn kept(daemon: &Daemon) -> (Vec<PathBuf>, Vec<PathBuf>) {
    (files_under(&daemon.root().join("images")), files_under(&daemon.root().join("cache")))
}

/// Expects PullImage of `image` to be refused with FailedPrecondition naming
/// the image and `import`, keeping nothing of it.
async fn expect_refused_for_import(daemon: &Daemon, image: &str, import: &str) {
    let before = kept(daemon);
    let status = expect_code(
        try_pull(daemon, Some(image)).await,
        Code::FailedPrecondition,
        "an image importing what wasmrun does not provide cannot run on it",
    );
    let message = status.message();
    assert!(message.contains(image), "the message names the image: {message}");
    assert!(message.contains(&format!("imports {import}, which wasmrun does not provide")), "{message}");
    assert_eq!(image_status(&mut daemon.images(), image).await, None);
    assert_eq!(kept(daemon), before, "the refused image left files behind");
    assert_serving(daemon).await;
}

/// Pushes a compat image of `files` (path, bytes) whose Entrypoint is
/// `entrypoint` as "e2e/<repo>:v1"; returns its name.
async fn push_compat_image(repo: &str, files: &[(&str, &[u8])], entrypoint: &str) -> String {
    let files: Vec<(&str, &[u8], u32)> = files.iter().map(|(path, bytes)| (*path, *bytes, 0o755)).collect();
    let parts = ImageParts {
        config_media_type: "application/vnd.oci.image.config.v1+json".into(),
        config: serde_json::to_vec(&serde_json::json!({"architecture": "wasm", "os": "wasip2",
            "config": {"Entrypoint": [entrypoint]}, "rootfs": {"type": "layers", "diff_ids": []}}))
        .expect("serialize config"),
        layers: vec![("application/vnd.oci.image.layer.v1.tar".into(), tar_layer(&files, false))],
        ..ImageParts::default()
    };
    let host = registry().host();
    push_image(&host, &format!("e2e/{repo}"), "v1", &parts).await;
    format!("{host}/e2e/{repo}:v1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_importing_an_interface_wasmrun_lacks_is_refused_by_the_pull() {
    let daemon = Daemon::start().await;
    // The same hand-written command, importing an interface wasmrun provides: it runs.
    let twin = wat_fixture("provided-import.component.wat");
    assert!(twin.starts_with(COMPONENT_HEADER), "not a component: {:02x?}", &twin[..8]);
    let image = pulled_image(&daemon, "components-provided-import", &twin).await;
    let (status, _) = run(&daemon, "provided", container_config("provided", &image, &[], &[], &[])).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (0, "Completed"), "{status:#?}");

    let image = push_bytes("components-missing-import", &wat_fixture("missing-import.component.wat")).await.name;
    expect_refused_for_import(&daemon, &image, "interface `example:missing/greeter@1.0.0`").await;
    // A second pull is refused the same way (nothing of the first was kept to be reused).
    expect_refused_for_import(&daemon, &image, "interface `example:missing/greeter@1.0.0`").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_importing_a_function_wasmrun_lacks_is_refused_by_the_pull() {
    let daemon = Daemon::start().await;
    let missing = wat_fixture("missing-import.module.wat");
    assert!(missing.starts_with(b"\0asm\x01\0\0\0"), "not a core module: {:02x?}", &missing[..8]);
    let image = push_bytes("modules-missing-import", &missing).await.name;
    expect_refused_for_import(&daemon, &image, "function `env::missing_host_function`").await;
    // The same module as the program of a compat image: its unpacked filesystem is not kept either.
    let image =
        push_compat_image("modules-compat-missing-import", &[("bin/app.wasm", &missing)], "/bin/app.wasm").await;
    expect_refused_for_import(&daemon, &image, "function `env::missing_host_function`").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_refuses_a_program_of_a_compat_image_importing_what_wasmrun_lacks() {
    let daemon = Daemon::start().await;
    let hello = fixture("hello");
    let (module, component) = (wat_fixture("missing-import.module.wat"), wat_fixture("missing-import.component.wat"));
    let image = push_compat_image(
        "components-compat-missing-import",
        &[("hello.wasm", &hello), ("bin/module.wasm", &module), ("bin/component.wasm", &component)],
        "/hello.wasm",
    )
    .await;
    // The image's own program links: the pull succeeds.
    pull(&daemon, &image).await;

    let pod = Pod::run(&daemon, "compat-missing-import").await;
    for (program, import) in [
        ("/bin/module.wasm", "function `env::missing_host_function`"),
        ("/bin/component.wasm", "interface `example:missing/greeter@1.0.0`"),
    ] {
        let before = kept(&daemon);
        let config = container_config("picked", &image, &[program], &[], &[]);
        let status = expect_code(
            pod.try_create(&daemon, &config).await,
            Code::FailedPrecondition,
            "a program importing what wasmrun does not provide",
        );
        let message = status.message();
        assert!(message.contains(&image), "the message names the image: {message}");
        assert!(message.contains(&format!("imports {import}, which wasmrun does not provide")), "{message}");
        assert_eq!(kept(&daemon), before, "the refused program left compiled code behind");
    }
    // The refusals left the container name free: the image's own program runs under it.
    let config = container_config("picked", &image, &[], &[], &[]);
    let (_, status) = pod.run_to_exit(&daemon, &config).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (0, "Completed"), "{status:#?}");
    assert_serving(&daemon).await;
}
