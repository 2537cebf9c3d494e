//! A compat image's filesystem as a container's root: relative paths resolve
//! against the working directory (Rust and C programs on wasi-libc, and
//! components), absolute paths keep reaching the root and the mounts; a
//! compat pull is synced to disk.

use std::path::Path;

use crate::harness::*;

/// A compat image built by buildah: the `fsops` programs in Rust
/// (`/bin/fsops.wasm`, the entrypoint) and C (`/bin/fsops-c.wasm`), the
/// `probe-p2` component (`/bin/probe-p2.wasm`), and files in `/data` and
/// `/etc`; its WorkingDir is `working_dir`. Returns its name.
fn fs_image(repo: &str, working_dir: Option<&str>) -> String {
    let (rust, c, component) = (fixture("fsops"), fixture_c("fsops"), fixture_p2("probe-p2"));
    let files: &[(&str, &[u8])] = &[
        ("/bin/fsops.wasm", &rust),
        ("/bin/fsops-c.wasm", &c),
        ("/bin/probe-p2.wasm", &component),
        ("/data/inputfile2", b"input two"),
        ("/data/in.txt", b"from the image"),
        ("/etc/app.conf", b"app config"),
    ];
    let image = BuildahImage { files, entrypoint: "/bin/fsops.wasm", os: "wasip1", working_dir };
    buildah_compat_image_with(&format!("e2e/{repo}"), "v1", &image)
}

fn mount(container_path: &str, host_path: &Path, readonly: bool) -> wasmrun::api::Mount {
    wasmrun::api::Mount {
        container_path: container_path.into(),
        host_path: host_path.display().to_string(),
        readonly,
        ..Default::default()
    }
}

/// Runs `config` in `pod` to its end; checks it exited 0; returns its log lines.
async fn run_ok(daemon: &Daemon, pod: &Pod, config: &wasmrun::api::ContainerConfig) -> (String, Vec<(String, String)>) {
    let (id, status) = pod.run_to_exit(daemon, config).await;
    let lines = full_lines(&read_log(&pod.log_path(config)));
    assert_eq!(status.exit_code, 0, "{status:#?}\n{lines:#?}");
    (id, lines)
}

fn assert_lines(lines: &[(String, String)], expected: &[&str], what: &str) {
    for line in expected {
        assert!(has_line(lines, "stdout", line), "{what}: no {line:?} in {lines:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_paths_resolve_against_the_working_directory() {
    let daemon = Daemon::start().await;
    let image = fs_image("rootfs-workdir", Some("/data"));
    pull(&daemon, &image).await;
    let volume = scratch_dir("rootfs-volume");
    std::fs::write(volume.join("v.txt"), "from a volume").expect("write v.txt");
    let pod = Pod::run(&daemon, "workdir").await;

    // A wasi-libc program (Rust's std, C) starts in `/` whatever $PWD says;
    // relative paths must still reach the working directory, absolute paths
    // the root, and a volume below the working directory both ways.
    let operations = ["read:inputfile2", "read:./in.txt", "read:/data/inputfile2", "read:/etc/app.conf"];
    let volume_operations = ["read:vol/v.txt", "read:/data/vol/v.txt"];
    let expected = [
        "read inputfile2: input two",
        "read ./in.txt: from the image",
        "read /data/inputfile2: input two",
        "read /etc/app.conf: app config",
        "read vol/v.txt: from a volume",
        "read /data/vol/v.txt: from a volume",
    ];
    for (name, program) in [("rust", "/bin/fsops.wasm"), ("c", "/bin/fsops-c.wasm")] {
        let args: Vec<&str> = operations.iter().chain(&volume_operations).copied().collect();
        let mut config = container_config(name, &image, &[program], &args, &[]);
        config.mounts = vec![mount("/data/vol", &volume, true)];
        let (_, lines) = run_ok(&daemon, &pod, &config).await;
        assert_lines(&lines, &expected, name);
    }

    // A component (Rust's std on wasip2, through wasi-libc too).
    let config = container_config("component", &image, &["/bin/probe-p2.wasm"], &[], &[]);
    let (_, lines) = run_ok(&daemon, &pod, &config).await;
    assert_lines(&lines, &["initial-cwd=/data", "relative read:from the image", "read:from the image"], "component");

    // A working directory given by the container, not the image.
    let mut config = container_config("cri-workdir", &image, &[], &["read:app.conf", "read:/data/in.txt"], &[]);
    config.working_dir = "/etc".into();
    let (_, lines) = run_ok(&daemon, &pod, &config).await;
    assert_lines(&lines, &["read app.conf: app config", "read /data/in.txt: from the image"], "CRI working_dir");
}

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
