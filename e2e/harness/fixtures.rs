//! The wasm guest programs of e2e/fixtures, built once per test process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Environment variables of the outer `cargo test` that must not leak into
/// the nested wasm build.
const LEAKY_ENV: &[&str] = &[
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_MAKEFLAGS",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
];

/// The bytes of the fixture `name` (`hello`, `exit-code`, `longline`, `spin`,
/// `sleeper`, `trap`, `files`, `memhog`, `termination`, `fsops`): a WASI preview 1 module.
pub fn fixture(name: &str) -> Vec<u8> {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    read(BUILT.get_or_init(|| build("e2e/fixtures", "wasm32-wasip1")), name)
}

/// The bytes of the fixture `name` of e2e/fixtures-p2 (`hello-p2`): a WASI 0.2 component.
pub fn fixture_p2(name: &str) -> Vec<u8> {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    read(BUILT.get_or_init(|| build("e2e/fixtures-p2", "wasm32-wasip2")), name)
}

/// The bytes of the fixture `name` of e2e/fixtures-http: a WASI 0.2 component
/// exporting `wasi:http/incoming-handler`, `http-service` (the crate's
/// library, built as `http_service.wasm`) or `http-command` (a program that
/// also exports the handler).
pub fn fixture_http(name: &str) -> Vec<u8> {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| build("e2e/fixtures-http", "wasm32-wasip2"));
    // A cdylib's file is named after its library, with underscores.
    read(dir, if name == "http-service" { "http_service" } else { name })
}

/// Debian's packages for the C fixtures: clang and lld with the wasm32
/// builtins, and wasi-libc.
pub const C_FIXTURE_INSTALL: &str = "apt-get install -y clang lld wasi-libc libclang-rt-dev-wasm32";

/// The bytes of the C fixture `name` of e2e/fixtures-c (`fsops`: `fsops.c`):
/// a WASI preview 1 module compiled against wasi-libc by clang.
pub fn fixture_c(name: &str) -> Vec<u8> {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    read(BUILT.get_or_init(build_c), name)
}

/// Compiles every `.c` file of e2e/fixtures-c with
/// `clang --target=wasm32-wasi -O2`; returns the directory holding the .wasm files.
fn build_c() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = root.join("target").join("fixtures").join("wasm32-wasi-c");
    std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("cannot create {}: {e}", out.display()));
    let sources = std::fs::read_dir(root.join("e2e/fixtures-c")).expect("list e2e/fixtures-c");
    for source in sources.flatten().map(|entry| entry.path()) {
        if source.extension().is_none_or(|ext| ext != "c") {
            continue;
        }
        let name = source.file_stem().expect("a file name").to_string_lossy().into_owned();
        let output = Command::new("clang")
            .args(["--target=wasm32-wasi", "-O2", "-Wall", "-Werror", "-Wl,--strip-all", "-o"])
            .arg(out.join(format!("{name}.wasm")))
            .arg(&source)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run clang to build {} ({e}); install `{C_FIXTURE_INSTALL}`", source.display())
            });
        if !output.status.success() {
            panic!(
                "building {} failed ({}); are the packages installed (`{C_FIXTURE_INSTALL}`)?\n{}",
                source.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    out
}

/// The hand-written fixture `file` of e2e/fixtures-wat, compiled from text.
pub fn wat_fixture(file: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/fixtures-wat").join(file);
    wat::parse_file(&path).unwrap_or_else(|e| panic!("compiling {}: {e}", path.display()))
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {name}: cannot read {}: {e}", path.display()))
}

/// Builds every program of the fixture crate `crate_dir` (relative to the
/// repository) for `target`; returns the directory holding the .wasm files.
/// The benchmarks build their own fixture crates with it.
pub fn build(crate_dir: &str, target: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target_dir = root.join("target").join("fixtures");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--release", "--target", target, "--manifest-path"])
        .arg(root.join(crate_dir).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    for var in LEAKY_ENV {
        cmd.env_remove(var);
    }
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_TARGET_") && (key.ends_with("_RUSTFLAGS") || key.ends_with("_RUNNER")) {
            cmd.env_remove(&*key);
        }
    }
    let output = cmd.output().expect("run cargo to build the wasm fixtures");
    if !output.status.success() {
        panic!(
            "building the fixtures of {crate_dir} failed ({}); is the target installed \
             (`rustup target add {target}`)?\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    target_dir.join(target).join("release")
}

/// Appends `value` as unsigned LEB128, the integer encoding of the wasm
/// binary format (core spec 5.2.2), for tests that build modules by hand.
pub fn push_leb128(mut value: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}
