//! One process, many tenants: what one guest may hold of the daemon's
//! resources, with the others (pods, pulls) going on beside it.
//!
//! Open files: each guest instance holds at most `guest_max_open_files`
//! (1024 by default) files, directories and sockets; past that its opens
//! fail as Linux's EMFILE would. Shown with the daemon's own descriptor
//! limit lowered (`prlimit`) to what three such hogs and a working daemon
//! need: without the guests' limit the first hog would take them all.
//!
//! Memory: all guests together hold at most `guest_memory_budget_bytes`; the
//! guest whose growth would pass it ends `OOMKilled`. Shown inside a memory
//! cgroup the test makes, as the daemon would run in a systemd unit.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wasmrun::api::{
    ContainerState, LinuxContainerConfig, LinuxContainerResources, RemovePodSandboxRequest, StatusRequest,
    StopPodSandboxRequest,
};

use crate::harness::*;

/// What the daemon may hold: three guests at their limit (3 × 1,024) and a
/// daemon that still starts pods and pulls (its own few hundred).
const DAEMON_OPEN_FILES: u64 = 3 * 1024 + 600;

/// Sets the daemon's open-file limit (soft and hard), as `prlimit --nofile` does.
fn limit_open_files(daemon: &Daemon, limit: u64) {
    let pid = daemon.pid().expect("the daemon runs") as libc::pid_t;
    let rlimit = libc::rlimit { rlim_cur: limit, rlim_max: limit };
    // SAFETY: prlimit reads `rlimit` and writes nothing (no old limit asked for).
    let set = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &rlimit, std::ptr::null_mut()) };
    assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// Waits for the fixture's `held N: errno E: message` line; returns (N, E, line).
async fn held_line(log: &Path) -> (usize, i32, String) {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let lines = full_lines(&read_log(log));
        if let Some((_, line)) = lines.iter().find(|(stream, line)| stream == "stdout" && line.starts_with("held ")) {
            let parsed = line.strip_prefix("held ").and_then(|rest| {
                let (held, rest) = rest.split_once(": errno ")?;
                let (errno, _) = rest.split_once(':')?;
                Some((held.parse().ok()?, errno.parse().ok()?))
            });
            let (held, errno) = parsed.unwrap_or_else(|| panic!("not `held N: errno E: …`: {line}"));
            return (held, errno, line.clone());
        }
        assert!(Instant::now() < deadline, "no `held` line in {}: {lines:?}", log.display());
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// wasi-libc's errno values.
const EMFILE: i32 = 33;
const EDQUOT: i32 = 19;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_opening_files_without_end_stops_at_its_limit_and_the_node_goes_on() {
    let daemon = Daemon::start().await;
    limit_open_files(&daemon, DAEMON_OPEN_FILES);
    let module = push_bytes("isolation-fdhog", &fixture("fdhog")).await;
    let component = push_bytes("isolation-fdhog-p2", &fixture_p2("fdhog-p2")).await;
    pull(&daemon, &module.name).await;
    pull(&daemon, &component.name).await;

    // Three hogs: a module's files, a component's files, a component's sockets.
    let pod = Pod::run(&daemon, "fd-hogs").await;
    let data = scratch_dir("fdhog-data");
    let mut hogs = Vec::new();
    for (name, image, args) in [
        ("files-p1", &module.name, vec!["/data"]),
        ("files-p2", &component.name, vec!["files", "/data"]),
        ("sockets-p2", &component.name, vec!["sockets"]),
    ] {
        let mut config = container_config(name, image, &[], &args, &[]);
        config.mounts = vec![mount("/data", &data.join(name), false)];
        std::fs::create_dir_all(data.join(name)).unwrap();
        pod.create_and_start(&daemon, &config).await;
        hogs.push((name, pod.log_path(&config)));
    }
    for (name, log) in &hogs {
        let (held, errno, line) = held_line(log).await;
        // The limit counts what the instance holds: its preopens (a module's
        // from the start, a component's once it asks for them to open a
        // path), then what it opened.
        assert!((1000..=1024).contains(&held), "{name}: {line}");
        let want = if *name == "files-p2" { EDQUOT } else { EMFILE };
        assert_eq!(errno, want, "{name}: {line}");
    }

    // While they hold all they may: another pod runs to its end, a pull succeeds.
    let other = Pod::run(&daemon, "fd-neighbour").await;
    let hello = pulled_fixture(&daemon, "hello", "isolation-hello").await;
    let (_, status) = other.run_to_exit(&daemon, &container_config("hello", &hello.name, &[], &[], &[])).await;
    assert_eq!(status.exit_code, 0, "{status:?}");
    let late = push_bytes("isolation-late", &fixture("exit-code")).await;
    pull(&daemon, &late.name).await;
    assert_serving(&daemon).await;
    assert!(!daemon.log().contains("Too many open files"), "the daemon ran out of descriptors");
}

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A memory cgroup the test makes (v2 where `/sys/fs/cgroup` is the unified
/// hierarchy with the memory controller, else v1's `memory` hierarchy),
/// removed when dropped (after the daemons in it are gone).
struct MemoryCgroup {
    dir: PathBuf,
    /// `memory.max` (v2) or `memory.limit_in_bytes` (v1).
    limit_file: &'static str,
}

impl MemoryCgroup {
    /// Makes one limited to `limit` bytes; Err says why it cannot be made here.
    fn create(limit: u64) -> Result<Self, String> {
        let root = Path::new("/sys/fs/cgroup");
        let v2 = std::fs::read_to_string(root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        let (parent, limit_file) = if v2 {
            // Children get the memory controller only if the parent hands it down.
            std::fs::write(root.join("cgroup.subtree_control"), "+memory")
                .map_err(|e| format!("cannot enable the memory controller in {}: {e}", root.display()))?;
            (root.to_owned(), "memory.max")
        } else if root.join("memory/memory.limit_in_bytes").exists() {
            (root.join("memory"), "memory.limit_in_bytes")
        } else {
            return Err(format!(
                "neither a cgroup v2 memory controller nor a v1 memory hierarchy under {}",
                root.display()
            ));
        };
        let dir = parent.join(format!("wasmrun-e2e-budget-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("cannot make the cgroup {}: {e}", dir.display()))?;
        let cgroup = Self { dir, limit_file };
        std::fs::write(cgroup.dir.join(limit_file), limit.to_string())
            .map_err(|e| format!("cannot set {} of {}: {e}", limit_file, cgroup.dir.display()))?;
        Ok(cgroup)
    }

    fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Whether process `pid` is in this cgroup.
    fn holds(&self, pid: u32) -> bool {
        let name = self.dir.file_name().unwrap().to_str().unwrap();
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|text| {
            text.lines().any(|line| {
                line.ends_with(&format!(":/{name}")) && (line.starts_with("0::") || line.contains("memory"))
            })
        })
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // The daemons are gone, but the kernel may take a moment to empty the cgroup.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove the test cgroup {}", self.dir.display());
    }
}

/// The `guestMemory` object of verbose Status.
async fn guest_memory(daemon: &Daemon) -> serde_json::Value {
    let status = daemon.runtime().status(StatusRequest { verbose: true }).await.expect("Status verbose").into_inner();
    let text = status.info.get("guestMemory").unwrap_or_else(|| panic!("no guestMemory in {:?}", status.info));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("guestMemory is not JSON ({e}): {text}"))
}

/// `memhog` holding `mib` MiB (or growing to it and ending), under a 1 GiB limit of its own.
fn memhog_config(name: &str, image: &str, mib: u64, hold: bool) -> wasmrun::api::ContainerConfig {
    let mib = mib.to_string();
    let args: Vec<&str> = if hold { vec![&mib, "hold"] } else { vec![&mib] };
    let mut config = container_config(name, image, &[], &args, &[]);
    let resources = LinuxContainerResources { memory_limit_in_bytes: GIB as i64, ..Default::default() };
    config.linux = Some(LinuxContainerConfig { resources: Some(resources), ..Default::default() });
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_within_their_limits_but_past_the_budget_are_oom_killed_and_the_daemon_lives() {
    // The attack this stops: a daemon in a 2 GiB cgroup, three guests of
    // 900 MiB each within their own 1 GiB limits; the kernel killed the
    // whole daemon. Here the guests' budget is 1 GiB.
    let cgroup = match MemoryCgroup::create(2 * GIB) {
        Ok(cgroup) => cgroup,
        Err(why) => {
            eprintln!("SKIPPED guests_within_their_limits_but_past_the_budget_…: {why}");
            return;
        }
    };
    let daemon = Daemon::start_in_cgroup(&cgroup.procs(), &["--guest-memory-budget-bytes", &GIB.to_string()]).await;
    assert!(cgroup.holds(daemon.pid().unwrap()), "the daemon is not in {}", cgroup.dir.display());
    let memhog = pulled_fixture(&daemon, "memhog", "isolation-memhog").await;
    let pod = Pod::run(&daemon, "budget").await;

    let first = memhog_config("first", &memhog.name, 900, true);
    let first_id = pod.create_and_start(&daemon, &first).await;
    wait_log_line(&pod.log_path(&first), "stdout", "holding").await;
    let held = guest_memory(&daemon).await;
    assert_eq!(held["budget_bytes"], GIB, "{held}");
    assert_eq!(held["source"], "guest_memory_budget_bytes", "{held}");
    let used = held["used_bytes"].as_u64().unwrap();
    assert!((900 * MIB..=1000 * MIB).contains(&used), "{held}");

    for name in ["second", "third"] {
        let (_, status) = pod.run_to_exit(&daemon, &memhog_config(name, &memhog.name, 900, false)).await;
        assert_eq!((status.exit_code, status.reason.as_str()), (137, "OOMKilled"), "{name}: {status:#?}");
        assert!(
            status.message.contains(&format!("guest_memory_budget_bytes, {GIB} bytes")),
            "{name}'s message names the budget: {status:#?}"
        );
        // It got what was left of the budget, no more, and nothing of it is still charged.
        let lines = full_lines(&read_log(&pod.log_path(&memhog_config(name, &memhog.name, 900, false))));
        let said = |text: &str| lines.iter().any(|(_, line)| line == text);
        assert!(said("allocated 16 MiB"), "{name} never ran: {lines:?}");
        assert!(!said("allocated 128 MiB"), "{name} got more than the budget left: {lines:?}");
    }
    let after = guest_memory(&daemon).await;
    assert_eq!(after["refusals"], 2, "{after}");
    assert_eq!(after["used_bytes"], used, "the killed guests gave back what they held: {after}");

    // Nobody else is touched: the first guest still holds its memory, another pod runs to its end.
    let mut rt = daemon.runtime();
    let first_status = container_status(&mut rt, &first_id, false).await.status.unwrap();
    assert_eq!(first_status.state(), ContainerState::ContainerRunning, "{first_status:#?}");
    let hello = pulled_fixture(&daemon, "hello", "isolation-budget-hello").await;
    let other = Pod::run(&daemon, "budget-neighbour").await;
    let (_, status) = other.run_to_exit(&daemon, &container_config("hello", &hello.name, &[], &[], &[])).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");

    // With the first gone, a guest of 900 MiB fits again.
    rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await.expect("StopPodSandbox");
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await.expect("RemovePodSandbox");
    assert_eq!(guest_memory(&daemon).await["used_bytes"], 0);
    let (_, status) = other.run_to_exit(&daemon, &memhog_config("fourth", &memhog.name, 900, false)).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (0, "Completed"), "{status:#?}");
    assert_serving(&daemon).await;
    drop(daemon);

    // Unset, the budget is 3/4 of the daemon's cgroup limit (or of the node's memory, when lower).
    let daemon = Daemon::start_in_cgroup(&cgroup.procs(), &[]).await;
    let derived = guest_memory(&daemon).await;
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let mem_total: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse::<u64>()
        .unwrap()
        * 1024;
    let memory = mem_total.min(2 * GIB);
    assert_eq!(derived["budget_bytes"], memory / 4 * 3, "{derived}");
    if memory == 2 * GIB {
        let source = derived["source"].as_str().unwrap();
        assert!(source.contains(&cgroup.dir.join(cgroup.limit_file).display().to_string()), "{derived}");
    }
}

/// A module of `functions` functions, each `body_ops` additions long: valid,
/// small to send, costly to compile (a compile bomb, as the 44 MB module of
/// 300,000 functions that took 30 s and 1.72 GB to compile). Encoded here
/// by hand, per the core spec's binary format (section 5).
fn compile_bomb(functions: u32, body_ops: u32, salt: u8) -> Vec<u8> {
    fn section(id: u8, content: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        push_leb128(content.len(), out);
        out.extend_from_slice(content);
    }
    let mut wasm = b"\0asm\x01\0\0\0".to_vec();
    // Type 0: [] -> [].
    section(1, &[1, 0x60, 0, 0], &mut wasm);
    let mut funcs = Vec::new();
    push_leb128(functions as usize, &mut funcs);
    funcs.extend(std::iter::repeat_n(0u8, functions as usize));
    section(3, &funcs, &mut wasm);
    // Export "_start", function 0.
    section(7, &[1, 6, b'_', b's', b't', b'a', b'r', b't', 0, 0], &mut wasm);
    // Each body: one i32 local; (local.get 0, i32.const salt, i32.add, local.set 0) × body_ops; end.
    let mut body = vec![1, 1, 0x7f];
    for _ in 0..body_ops {
        body.extend_from_slice(&[0x20, 0, 0x41, salt & 0x3f, 0x6a, 0x21, 0]);
    }
    body.push(0x0b);
    let mut code = Vec::new();
    push_leb128(functions as usize, &mut code);
    for _ in 0..functions {
        push_leb128(body.len(), &mut code);
        code.extend_from_slice(&body);
    }
    section(10, &code, &mut wasm);
    wasm
}

/// The daemon's resident memory, from `/proc/PID/status` (`VmRSS`), in bytes.
fn daemon_rss(daemon: &Daemon) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid().unwrap())).unwrap();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB");
    kib.trim().parse::<u64>().unwrap() * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compile_bomb_is_refused_at_its_limits_and_the_daemon_keeps_none_of_its_memory() {
    // Memory: one function of a million additions (7 MB), whose compilation
    // grows without end (at ~7 MB/s in a debug build, much faster in a
    // release one); in the daemon a compiler's heap is ~40× the binary.
    let bomb = compile_bomb(1, 1_000_000, 1);
    let daemon = Daemon::start_with(None, &["--compile-memory-bytes", &(80 * MIB).to_string()]).await;
    let hello = pulled_fixture(&daemon, "hello", "isolation-compile-hello").await;
    let image = push_bytes("isolation-compile-bomb", &bomb).await;
    let before = daemon_rss(&daemon);
    let refused = try_pull(&daemon, Some(&image.name)).await;
    let status = expect_code(refused, tonic::Code::ResourceExhausted, "a module whose compilation passes 80 MiB");
    assert!(status.message().contains(&format!("compile_memory_bytes ({} bytes", 80 * MIB)), "{status:?}");
    let after = daemon_rss(&daemon);
    eprintln!("daemon RSS before the bomb {before} bytes, after {after} bytes");
    assert!(after < before + 24 * MIB, "the daemon's RSS grew from {before} to {after} bytes");
    let listed = daemon.images().list_images(wasmrun::api::ListImagesRequest::default()).await.unwrap().into_inner();
    assert!(listed.images.iter().all(|i| !i.repo_tags.iter().any(|t| t.contains("compile-bomb"))), "{listed:?}");
    // Nothing else is touched: a pulled image runs.
    let pod = Pod::run(&daemon, "compile-neighbour").await;
    let (_, exit) = pod.run_to_exit(&daemon, &container_config("hello", &hello.name, &[], &[], &[])).await;
    assert_eq!(exit.exit_code, 0, "{exit:#?}");
    drop(daemon);

    // Time: three bombs of 60,000 small functions (8.4 MB) at once, one
    // pull at a time, each stopped after 1 s.
    let daemon = Daemon::start_with(
        None,
        &["--compile-timeout-secs", "1", "--max-concurrent-pulls", "1", "--log-level", "debug"],
    )
    .await;
    let mut images = Vec::new();
    for salt in 2..5 {
        images.push(push_bytes(&format!("isolation-compile-bomb-{salt}"), &compile_bomb(60_000, 20, salt)).await);
    }
    let pulls = images.iter().map(|image| try_pull(&daemon, Some(&image.name)));
    for refused in futures_util::future::join_all(pulls).await {
        let status = expect_code(refused, tonic::Code::ResourceExhausted, "a module compiling for more than 1 s");
        assert!(status.message().contains("compile_timeout_secs (1 s)"), "{status:?}");
    }
    // The workers ran one after another: each stopped before the next started.
    let log = daemon.log();
    let events: Vec<&str> = log
        .lines()
        .filter_map(|line| {
            if line.contains("compile worker started") {
                Some("started")
            } else if line.contains("compile worker stopped at its limit") {
                Some("stopped")
            } else {
                None
            }
        })
        .collect();
    assert_eq!(events, ["started", "stopped"].repeat(3), "{log}");
    assert_serving(&daemon).await;
}
