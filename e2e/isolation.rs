//! One process, many tenants: what one guest may hold of the daemon's
//! resources, with the others (pods, pulls) going on beside it.
//!
//! Open files: each guest instance holds at most `guest_max_open_files`
//! (1024 by default) files, directories and sockets; past that its opens
//! fail as Linux's EMFILE would. Shown with the daemon's own descriptor
//! limit lowered (`prlimit`) to what three such hogs and a working daemon
//! need: without the guests' limit the first hog would take them all.

use std::path::Path;
use std::time::Instant;

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
