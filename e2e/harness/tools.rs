//! Test images published by real third-party tools, run as subprocesses:
//!
//! - `wkg oci push` (crate `wkg`: `cargo install wkg --locked`) pushes a
//!   component as a CNCF wasm artifact;
//! - the ORAS client for Python (`pip install oras`) pushes a module as a CNCF
//!   wasm artifact;
//! - `buildah` (`apt-get install -y buildah`) builds and pushes a "compat"
//!   image: an OCI image whose tar layer holds the .wasm file and whose config
//!   names it as Entrypoint, with platform os `wasip1` (or `wasi`) and
//!   architecture `wasm`.
//!
//! Each publisher pushes to the shared test registry and returns the reference
//! `127.0.0.1:PORT/repo:tag`. A missing tool is a test failure (the panic names
//! the install command), never a skip: CI installs every tool.
//!
//! Also builds the WASI 0.2 guest programs of e2e/fixtures-p2 (see
//! [`fixture_p2`]).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use super::{POLL_INTERVAL, WAIT_LIMIT, die_with_parent, registry, scratch_dir};

pub const WKG_INSTALL: &str = "cargo install wkg --locked";
pub const ORAS_INSTALL: &str = "pip install oras";
pub const BUILDAH_INSTALL: &str = "apt-get install -y buildah";

/// The first 8 bytes of a WebAssembly component (a core module has `01 00 00 00`
/// as version and layer).
pub const COMPONENT_HEADER: &[u8] = b"\0asm\x0d\0\x01\0";

/// Annotation that marks a compat image whose entrypoint is a wasm file.
pub const COMPAT_VARIANT_ANNOTATION: &str = "module.wasm.image/variant";

/// The full path of `program` found in PATH, or else in `extra` directories.
fn find_program(program: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain(extra.iter().cloned()).map(|dir| dir.join(program)).find(|candidate| {
        std::fs::metadata(candidate)
            .map(|m| m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// `program`'s path, or a panic that names the command installing it.
pub fn require_program(program: &str, extra: &[PathBuf], install: &str) -> PathBuf {
    find_program(program, extra)
        .unwrap_or_else(|| panic!("`{program}` is not installed (not found in PATH); install it with `{install}`"))
}

/// Where `cargo install` puts binaries, in case that directory is not in PATH.
fn cargo_bin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo").join("bin"));
    }
    dirs
}

/// What a finished tool run printed.
pub struct ToolOutput {
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` (stdin closed, output captured) for at most [`WAIT_LIMIT`];
/// panics with its stdout and stderr unless it exits 0.
pub fn run_tool(what: &str, cmd: &mut Command) -> ToolOutput {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    die_with_parent(cmd);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = reader(Box::new(child.stdout.take().expect("stdout pipe")));
    let stderr = reader(Box::new(child.stderr.take().expect("stderr pipe")));
    let deadline = Instant::now() + WAIT_LIMIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(POLL_INTERVAL),
            Err(e) => panic!("{what}: waiting for {cmd:?}: {e}"),
        }
    };
    let output = ToolOutput { stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() };
    match status {
        Some(status) if status.success() => output,
        Some(status) => {
            panic!("{what} failed ({status}): {cmd:?}\n--- stderr:\n{}\n--- stdout:\n{}", output.stderr, output.stdout)
        }
        None => panic!(
            "{what} did not finish within {WAIT_LIMIT:?}: {cmd:?}\n--- stderr:\n{}\n--- stdout:\n{}",
            output.stderr, output.stdout
        ),
    }
}

fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// Pushes `component` to the shared registry as `repo:tag` with
/// `wkg oci push --insecure 127.0.0.1:PORT 127.0.0.1:PORT/repo:tag FILE`.
/// wkg writes a CNCF wasm artifact: config `application/vnd.wasm.config.v0+json`
/// (os `wasip2`, with the component's imports and exports), one
/// `application/wasm` layer. Returns `127.0.0.1:PORT/repo:tag`.
pub fn wkg_push_component(repo: &str, tag: &str, component: &[u8]) -> String {
    let wkg = require_program("wkg", &cargo_bin_dirs(), WKG_INSTALL);
    let host = registry().host();
    let reference = format!("{host}/{repo}:{tag}");
    let dir = scratch_dir("wkg");
    let file = dir.join("component.wasm");
    write_file(&file, component);
    // An empty config keeps a developer's ~/.config/wasm-pkg/config.toml out of the test.
    let config = dir.join("wkg-config.toml");
    write_file(&config, b"");
    let output = run_tool(
        "wkg oci push",
        Command::new(wkg)
            .args(["oci", "push", "--insecure", &host, &reference])
            .arg(&file)
            .current_dir(&dir)
            .env("WKG_CONFIG_FILE", &config)
            .env("WKG_CACHE_DIR", dir.join("cache"))
            .env("RUST_BACKTRACE", "0")
            .env_remove("WKG_OCI_USERNAME")
            .env_remove("WKG_OCI_PASSWORD"),
    );
    assert!(
        output.stdout.contains(&format!("pushed: {reference}")),
        "wkg oci push did not report pushing {reference}:\n{}\n{}",
        output.stdout,
        output.stderr
    );
    reference
}

/// Python run by [`oras_push_artifact`]: argv is TARGET MODULE_FILE. Writes the
/// wasm config next to the module and pushes both with oras-py.
const ORAS_PUSH_SCRIPT: &str = r#"
import hashlib, json, sys
import oras.client

target, module = sys.argv[1], sys.argv[2]
with open(module, "rb") as f:
    digest = "sha256:" + hashlib.sha256(f.read()).hexdigest()
with open("config.json", "w") as f:
    json.dump({"architecture": "wasm", "os": "wasip1", "layerDigests": [digest]}, f)
client = oras.client.OrasClient(insecure=True)
response = client.push(
    target=target,
    files=[module + ":application/wasm"],
    manifest_config="config.json:application/vnd.wasm.config.v0+json",
    quiet=True,
)
if response.status_code not in (200, 201):
    sys.exit("push of %s answered %s: %s" % (target, response.status_code, response.text))
print(response.headers.get("Docker-Content-Digest", ""))
"#;

/// Whether `python3` can import the `oras` package (checked once per process).
fn require_oras() -> PathBuf {
    let python = require_program("python3", &[], "apt-get install -y python3");
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let checked = CHECKED.get_or_init(|| {
        let output = Command::new(&python)
            .args(["-c", "import oras.client"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
        if output.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&output.stderr).into_owned()) }
    });
    if let Err(error) = checked {
        panic!(
            "the ORAS Python client is not installed for {}; install it with `{ORAS_INSTALL}`:\n{error}",
            python.display()
        );
    }
    python
}

/// Pushes `module` to the shared registry as `repo:tag` with the ORAS client
/// for Python (`OrasClient(insecure=True).push(...)`) as a CNCF wasm artifact:
/// config `application/vnd.wasm.config.v0+json` holding
/// `{"architecture":"wasm","os":"wasip1","layerDigests":[...]}` and one
/// `application/wasm` layer (oras-py adds an `org.opencontainers.image.title`
/// annotation `module.wasm`). Returns `127.0.0.1:PORT/repo:tag`.
pub fn oras_push_artifact(repo: &str, tag: &str, module: &[u8]) -> String {
    let python = require_oras();
    let reference = format!("{}/{repo}:{tag}", registry().host());
    let dir = scratch_dir("oras");
    // oras-py only pushes files under its working directory, named relatively.
    write_file(&dir.join("module.wasm"), module);
    run_tool(
        "oras push (Python)",
        Command::new(python).args(["-c", ORAS_PUSH_SCRIPT, &reference, "module.wasm"]).current_dir(&dir),
    );
    reference
}

/// Builds a compat image with buildah (vfs storage in a scratch directory, no
/// daemon, no namespaces: works as root) and pushes it over plain HTTP:
/// `FROM scratch`, the module copied to `module_path_in_image` (e.g.
/// "/hello.wasm"), Entrypoint `[module_path_in_image]`, platform `os`/`wasm`
/// (`os` e.g. "wasip1" or "wasi"), manifest annotation
/// `module.wasm.image/variant=compat`, OCI format (config
/// `application/vnd.oci.image.config.v1+json`, one
/// `application/vnd.oci.image.layer.v1.tar+gzip` layer whose tar entry is the
/// path without its leading `/`). Returns `127.0.0.1:PORT/repo:tag`.
pub fn buildah_compat_image(repo: &str, tag: &str, module: &[u8], module_path_in_image: &str, os: &str) -> String {
    let image = BuildahImage {
        files: &[(module_path_in_image, module)],
        entrypoint: module_path_in_image,
        os,
        working_dir: None,
    };
    buildah_compat_image_with(repo, tag, &image)
}

/// What [`buildah_compat_image_with`] builds.
pub struct BuildahImage<'a> {
    /// Each file's absolute path in the image and its content (`buildah copy`
    /// makes the directories leading to it).
    pub files: &'a [(&'a str, &'a [u8])],
    /// The Entrypoint, one absolute path (a .wasm file among `files`).
    pub entrypoint: &'a str,
    /// The platform's os, e.g. "wasip1"; its architecture is `wasm`.
    pub os: &'a str,
    /// The image's WorkingDir (`buildah config --workingdir`), if any.
    pub working_dir: Option<&'a str>,
}

/// Builds a compat image as [`buildah_compat_image`] does, with several files
/// (in one layer per `buildah copy`) and an optional WorkingDir, and pushes it.
/// Returns `127.0.0.1:PORT/repo:tag`.
pub fn buildah_compat_image_with(repo: &str, tag: &str, image: &BuildahImage) -> String {
    let buildah = require_program("buildah", &[], BUILDAH_INSTALL);
    let reference = format!("{}/{repo}:{tag}", registry().host());
    let dir = scratch_dir("buildah");
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap_or_else(|e| panic!("cannot create {}: {e}", tmp.display()));
    let storage = dir.join("storage");
    let run_root = dir.join("run");
    let buildah_cmd = |args: &[&str]| {
        let mut cmd = Command::new(&buildah);
        cmd.arg("--storage-driver")
            .arg("vfs")
            .arg("--root")
            .arg(&storage)
            .arg("--runroot")
            .arg(&run_root)
            .args(args)
            .current_dir(&dir)
            .env("TMPDIR", &tmp);
        cmd
    };

    let container = run_tool("buildah from scratch", &mut buildah_cmd(&["from", "scratch"])).stdout.trim().to_owned();
    assert!(!container.is_empty(), "buildah from scratch printed no container name");
    for (index, (path_in_image, content)) in image.files.iter().enumerate() {
        let name = Path::new(path_in_image).file_name().map(|n| n.to_owned()).unwrap_or("file".into());
        let source = dir.join(format!("{index}"));
        std::fs::create_dir_all(&source).unwrap_or_else(|e| panic!("cannot create {}: {e}", source.display()));
        let file = source.join(name);
        write_file(&file, content);
        let mut copy = buildah_cmd(&["copy", &container]);
        copy.arg(&file).arg(path_in_image);
        run_tool("buildah copy", &mut copy);
    }
    let entrypoint = serde_json::to_string(&[image.entrypoint]).expect("serialize entrypoint");
    let mut config = vec!["config", "--entrypoint", &entrypoint, "--os", image.os, "--arch", "wasm", "--annotation"];
    let annotation = format!("{COMPAT_VARIANT_ANNOTATION}=compat");
    config.push(&annotation);
    if let Some(working_dir) = image.working_dir {
        config.extend(["--workingdir", working_dir]);
    }
    config.push(&container);
    run_tool("buildah config", &mut buildah_cmd(&config));
    let local = format!("localhost/{repo}:{tag}");
    run_tool("buildah commit", &mut buildah_cmd(&["commit", "--quiet", "--format", "oci", &container, &local]));
    run_tool(
        "buildah push",
        &mut buildah_cmd(&["push", "--quiet", "--tls-verify=false", &local, &format!("docker://{reference}")]),
    );
    // The vfs storage holds a copy of every layer: drop it now.
    let _ = std::fs::remove_dir_all(&storage);
    reference
}

/// How to install Python's gRPC and its code generator.
pub const GRPCIO_INSTALL: &str = "pip install grpcio grpcio-tools";

/// A directory holding `api_pb2.py` and `api_pb2_grpc.py`, generated once
/// per test process from proto/api.proto by Python's own generator
/// (`python3 -m grpc_tools.protoc`), and the `python3` that generated them.
pub fn python_cri_stubs() -> (PathBuf, &'static Path) {
    static STUBS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    let (python, dir) = STUBS.get_or_init(|| {
        let python = require_program("python3", &[], "apt-get install -y python3");
        let dir = scratch_dir("python-stubs");
        let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
        let generated = Command::new(&python)
            .args(["-m", "grpc_tools.protoc", "-I"])
            .arg(&proto)
            .arg(format!("--python_out={}", dir.display()))
            .arg(format!("--grpc_python_out={}", dir.display()))
            .arg(proto.join("api.proto"))
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
        assert!(
            generated.status.success(),
            "generating Python CRI stubs failed; is grpcio-tools installed (`{GRPCIO_INSTALL}`)?\n{}",
            String::from_utf8_lossy(&generated.stderr)
        );
        (python, dir)
    });
    (dir.clone(), python.as_path())
}
