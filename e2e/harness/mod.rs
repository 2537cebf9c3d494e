//! Shared machinery of the end-to-end tests: a local OCI registry, the wasm
//! fixture programs, the daemon under test and CRI helpers that drive it the
//! way kubelet does.
//!
//! Everything a test creates on disk lives under one scratch directory per
//! test process (see [`scratch_dir`]); child processes are killed when the
//! test process dies (see [`die_with_parent`]).

// Not every test module uses every helper.
#![allow(dead_code)]

pub mod containerd;
pub mod cri;
pub mod daemon;
pub mod fixtures;
pub mod http;
pub mod logs;
pub mod netns;
pub mod oci;
pub mod registry;
pub mod throttle;
pub mod token;
pub mod tools;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub use containerd::*;
pub use cri::*;
pub use daemon::Daemon;
pub use fixtures::{fixture, fixture_c, fixture_http, fixture_p2, push_leb128, wat_fixture};
pub use http::{HttpConnection, HttpResponse, http_request};
pub use logs::*;
pub use netns::{NODE_ADDRESS, POD_SUBNET, TestNet};
pub use oci::*;
pub use registry::{auth_registry, registry, start_own_registry, tls_registry};
pub use throttle::HoldingProxy;
pub use token::*;
pub use tools::*;

/// How long any single wait in the tests may last before the test fails.
pub const WAIT_LIMIT: Duration = Duration::from_secs(120);
/// Interval between two polls of a condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The scratch directory of this test process: `<CARGO_TARGET_TMPDIR>/e2e/run-<pid>`.
/// Directories left by earlier runs whose process is gone are removed on first use.
pub fn scratch_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let mut parent = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e");
        // Unix socket paths are limited to 108 bytes; keep room for
        // "/run-<pid>/daemon-<n>/wasmrun.sock".
        if parent.as_os_str().len() > 60 {
            parent = std::env::temp_dir().join("wasmrun-e2e");
        }
        std::fs::create_dir_all(&parent).unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        remove_dead_runs(&parent);
        let dir = parent.join(format!("run-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        dir
    })
}

/// Removes the `run-<pid>` directories of test processes that no longer exist.
fn remove_dead_runs(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("run-")).and_then(|p| p.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let gone =
            unsafe { libc::kill(pid, 0) } == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A new, empty, uniquely named directory under [`scratch_root`].
pub fn scratch_dir(prefix: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = scratch_root().join(format!("{prefix}-{n}"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// A TCP port on 127.0.0.1 that nothing listens on (at the time of the call).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Makes the child get SIGKILL when the thread that spawns it exits, so that
/// no registry or daemon outlives the test process.
pub fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl, getppid and _exit are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// The last `n` lines of a text file (for failure messages).
pub fn tail_file(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// A minimal HTTP/1.0 GET: returns the status code and the body.
pub fn http_get(addr: &str, path: &str, accept: Option<&str>) -> std::io::Result<(u16, Vec<u8>)> {
    let sock_addr =
        addr.parse().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let mut stream = TcpStream::connect_timeout(&sock_addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some(accept) = accept {
        request.push_str(&format!("Accept: {accept}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response");
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(bad)?;
    let head = std::str::from_utf8(&response[..head_end]).map_err(|_| bad())?;
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(bad)?;
    Ok((code, response[head_end + 4..].to_vec()))
}
