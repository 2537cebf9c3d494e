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
/// `sleeper`, `trap`, `files`, `memhog`).
pub fn fixture(name: &str) -> Vec<u8> {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(build);
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {name}: cannot read {}: {e}", path.display()))
}

/// Builds every fixture; returns the directory holding the .wasm files.
fn build() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target_dir = root.join("target").join("fixtures");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--release", "--target", "wasm32-wasip1", "--manifest-path"])
        .arg(root.join("e2e/fixtures/Cargo.toml"))
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
        panic!("building the wasm fixtures failed ({}):\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    target_dir.join("wasm32-wasip1").join("release")
}
