//! A compat image's filesystem as a container's root: relative paths resolve
//! against the working directory (Rust and C programs on wasi-libc, and
//! components), absolute paths keep reaching the root and the mounts; the
//! root is the container's own and writable unless `readonly_rootfs`, when a
//! write fails with EROFS; its writes go with the container; a daemon killed
//! with roots mounted starts clean; a compat pull is synced to disk.

use std::path::{Path, PathBuf};

use wasmrun::api::{LinuxContainerSecurityContext, RemoveContainerRequest, StartContainerRequest};

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

fn set_readonly_rootfs(config: &mut wasmrun::api::ContainerConfig) {
    let linux = config.linux.get_or_insert_with(Default::default);
    linux.security_context = Some(LinuxContainerSecurityContext { readonly_rootfs: true, ..Default::default() });
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

fn assert_line_starts(lines: &[(String, String)], prefix: &str, what: &str) {
    assert!(
        lines.iter().any(|(stream, line)| stream == "stdout" && line.starts_with(prefix)),
        "{what}: no line starting {prefix:?} in {lines:#?}"
    );
}

/// The mount points of this machine at or below `dir`.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|point| point.starts_with(dir))
        .collect()
}

/// The one unpacked image filesystem of `daemon`'s store.
fn image_rootfs(daemon: &Daemon) -> PathBuf {
    let dir = daemon.root().join("images/rootfs");
    let entries: Vec<PathBuf> =
        std::fs::read_dir(&dir).expect("list the unpacked images").flatten().map(|entry| entry.path()).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries.into_iter().next().expect("one image")
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
async fn a_writable_root_is_each_containers_own_and_goes_with_it() {
    let daemon = Daemon::start().await;
    let image = fs_image("rootfs-writable", None);
    pull(&daemon, &image).await;
    let pod = Pod::run(&daemon, "writable").await;

    let args = ["write:/tmp.txt=first", "read:/tmp.txt", "write:/data/inputfile2=changed", "read:/data/inputfile2"];
    let first = container_config("first", &image, &[], &args, &[]);
    let (first_id, lines) = run_ok(&daemon, &pod, &first).await;
    assert_lines(
        &lines,
        &["wrote /tmp.txt", "read /tmp.txt: first", "wrote /data/inputfile2", "read /data/inputfile2: changed"],
        "first",
    );
    let first_dir = daemon.state().join("containers").join(&first_id);
    assert!(!mounts_below(&first_dir).is_empty(), "the first container's root is not a mount of its own");

    // Another container of the image sees the image as pulled, and writes its own.
    let args = ["read:/tmp.txt", "read:/data/inputfile2", "write:/c.txt=second", "read:/c.txt"];
    let second = container_config("second", &image, &["/bin/fsops-c.wasm"], &args, &[]);
    let (_, lines) = run_ok(&daemon, &pod, &second).await;
    assert_line_starts(&lines, "read /tmp.txt failed: errno=44 ", "second");
    assert_lines(&lines, &["read /data/inputfile2: input two", "wrote /c.txt", "read /c.txt: second"], "second");

    // The image's filesystem is unchanged.
    let rootfs = image_rootfs(&daemon);
    assert!(!rootfs.join("tmp.txt").exists() && !rootfs.join("c.txt").exists(), "a write reached the image");
    assert_eq!(std::fs::read_to_string(rootfs.join("data/inputfile2")).expect("inputfile2"), "input two");

    // RemoveContainer unmounts the root and deletes its writes.
    daemon
        .runtime()
        .remove_container(RemoveContainerRequest { container_id: first_id.clone() })
        .await
        .expect("RemoveContainer");
    assert_eq!(mounts_below(&first_dir), Vec::<PathBuf>::new(), "the removed container's root is still mounted");
    assert!(!first_dir.exists(), "the removed container's writes are still on disk");
    assert_eq!(std::fs::read_to_string(rootfs.join("data/inputfile2")).expect("inputfile2"), "input two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_root_refuses_writes_with_erofs() {
    let daemon = Daemon::start().await;
    let image = fs_image("rootfs-readonly", None);
    pull(&daemon, &image).await;
    let pod = Pod::run(&daemon, "readonly").await;
    let out = scratch_dir("rootfs-out");

    let args = ["write:/tmp.txt=x", "write:/data/new.txt=x", "read:/data/inputfile2", "write:/out/ok.txt=fine"];
    for (name, program) in [("rust", "/bin/fsops.wasm"), ("c", "/bin/fsops-c.wasm")] {
        let mut config = container_config(name, &image, &[program], &args, &[]);
        set_readonly_rootfs(&mut config);
        config.mounts = vec![mount("/out", &out, false)];
        let (id, lines) = run_ok(&daemon, &pod, &config).await;
        // WASI's EROFS is 69 (EPERM, what a write to a read-only preopen gets, is 63).
        for path in ["/tmp.txt", "/data/new.txt"] {
            assert_line_starts(&lines, &format!("write {path} failed: errno=69 "), name);
        }
        if name == "rust" {
            assert_line_starts(&lines, "write /tmp.txt failed: errno=69 kind=ReadOnlyFilesystem", name);
        }
        assert_lines(&lines, &["read /data/inputfile2: input two", "wrote /out/ok.txt"], name);
        assert_eq!(mounts_below(&daemon.state().join("containers").join(&id)), Vec::<PathBuf>::new());
    }
    assert_eq!(std::fs::read_to_string(out.join("ok.txt")).expect("ok.txt"), "fine");
    let rootfs = image_rootfs(&daemon);
    assert!(!rootfs.join("tmp.txt").exists() && !rootfs.join("data/new.txt").exists(), "a write reached the image");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_with_roots_mounted_starts_clean() {
    let mut daemon = Daemon::start().await;
    let layer = tar_layer(&[("fsops.wasm", &fixture("fsops"), 0o755)], false);
    let parts = ImageParts {
        config_media_type: "application/vnd.oci.image.config.v1+json".into(),
        config: serde_json::to_vec(&serde_json::json!({"architecture": "wasm", "os": "wasip1",
            "config": {"Entrypoint": ["/fsops.wasm"]}, "rootfs": {"type": "layers", "diff_ids": []}}))
        .expect("serialize"),
        layers: vec![("application/vnd.oci.image.layer.v1.tar".into(), layer)],
        ..ImageParts::default()
    };
    let host = registry().host();
    push_image(&host, "e2e/rootfs-killed", "v1", &parts).await;
    let image = format!("{host}/e2e/rootfs-killed:v1");
    pull(&daemon, &image).await;
    let pod = Pod::run(&daemon, "killed").await;
    let mut ids = Vec::new();
    for name in ["a", "b"] {
        ids.push(pod.create(&daemon, &container_config(name, &image, &[], &["write:/x=y", "read:/x"], &[])).await);
    }
    let containers = daemon.state().join("containers");
    let mounted = mounts_below(&containers);
    assert_eq!(mounted.len(), 2, "each created container has its root mounted");
    // A write through the overlay, as a running guest's would be, that a new mount must not show.
    std::fs::write(mounted[0].join("left-behind"), "x").expect("write through the overlay");

    daemon.sigkill();
    let dir = daemon.dir().to_owned();
    let daemon = Daemon::start_with(Some(dir), &[]).await;
    assert_serving(&daemon).await;
    // The killed daemon's mounts were released and its scratch directories
    // cleared; the two created containers, recovered, have a fresh root each.
    let mounted = mounts_below(&containers);
    assert_eq!(mounted.len(), 2, "the recovered containers' roots: {mounted:?}");
    assert!(mounted.iter().all(|root| !root.join("left-behind").exists()), "a root kept the killed daemon's writes");
    let mut rt = daemon.runtime();
    rt.start_container(StartContainerRequest { container_id: ids[0].clone() }).await.expect("start a recovered one");
    let status = wait_exited(&mut rt, &ids[0]).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
    for id in &ids {
        rt.remove_container(RemoveContainerRequest { container_id: id.clone() }).await.expect("remove");
    }
    assert_eq!(mounts_below(&containers), Vec::<PathBuf>::new(), "removed containers' roots are left mounted");
    let left: Vec<_> = std::fs::read_dir(&containers).map(|dir| dir.flatten().collect()).unwrap_or_default();
    assert!(left.is_empty(), "removed containers' directories are left: {left:?}");
    // The image itself is untouched and still runs.
    let pod = Pod::run(&daemon, "after").await;
    let (_, lines) =
        run_ok(&daemon, &pod, &container_config("after", &image, &[], &["write:/x=y", "read:/x"], &[])).await;
    assert_lines(&lines, &["read /x: y"], "after the restart");
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
