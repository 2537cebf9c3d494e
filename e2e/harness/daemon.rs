//! The wasmrun daemon under test, one per test.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use wasmrun::api::VersionRequest;
use wasmrun::api::image_service_client::ImageServiceClient;
use wasmrun::api::runtime_service_client::RuntimeServiceClient;

use super::{POLL_INTERVAL, die_with_parent, registry, scratch_dir, tail_file};

/// Name of the socket inside the daemon directory.
const SOCKET: &str = "wasmrun.sock";
/// Name of the log file (stdout and stderr) inside the daemon directory.
const LOG: &str = "daemon.log";
/// How long the daemon may take to answer `Version` after being spawned.
const START_LIMIT: Duration = Duration::from_secs(60);
/// Upper bound of any single RPC, so that a wedged daemon fails the test
/// instead of hanging it.
const RPC_LIMIT: Duration = Duration::from_secs(120);

/// A running daemon. Its directory holds `root/`, `state/`, `wasmrun.sock`
/// and `daemon.log`. Dropping it sends SIGTERM (SIGKILL after 10 s).
pub struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
    channel: Option<Channel>,
}

impl Daemon {
    /// Starts a daemon in a new directory.
    pub async fn start() -> Daemon {
        Daemon::start_with(None, &[]).await
    }

    /// Starts a daemon in `dir` (a new directory when None; pass the `dir()`
    /// of a stopped daemon to restart on the same root and state) with
    /// `extra_args` appended to the standard flags.
    pub async fn start_with(dir: Option<PathBuf>, extra_args: &[&str]) -> Daemon {
        Daemon::start_in(None, dir, extra_args).await
    }

    /// As [`Daemon::start_with`], inside the test's network namespace `net`
    /// when there is one (the CRI socket is a file: the test reaches it from anywhere).
    pub async fn start_in(net: Option<&super::netns::TestNet>, dir: Option<PathBuf>, extra_args: &[&str]) -> Daemon {
        Daemon::spawn(net, dir, extra_args, |_| {}).await
    }

    /// As [`Daemon::start_with`] in a new directory, the daemon put in the
    /// cgroup whose `cgroup.procs` file is `procs` before it runs anything
    /// (it writes `0`, itself, there between fork and exec).
    pub async fn start_in_cgroup(procs: &Path, extra_args: &[&str]) -> Daemon {
        let procs = std::ffi::CString::new(procs.as_os_str().as_encoded_bytes()).expect("a path without NUL");
        Daemon::spawn(None, None, extra_args, move |cmd| {
            // SAFETY: open, write and close are async-signal-safe; `procs` outlives the closure.
            unsafe {
                cmd.pre_exec(move || {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let written = libc::write(fd, b"0\n".as_ptr().cast(), 2);
                    let error = std::io::Error::last_os_error();
                    libc::close(fd);
                    if written != 2 { Err(error) } else { Ok(()) }
                });
            }
        })
        .await
    }

    async fn spawn(
        net: Option<&super::netns::TestNet>,
        dir: Option<PathBuf>,
        extra_args: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Daemon {
        let dir = dir.unwrap_or_else(|| scratch_dir("daemon"));
        let log = OpenOptions::new().create(true).append(true).open(dir.join(LOG)).expect("open daemon log");
        let mut cmd = Daemon::command(&dir, &dir.join(SOCKET), extra_args);
        adjust(&mut cmd);
        if let Some(net) = net {
            // nsenter execs the daemon: the child's pid is the daemon's.
            let mut inside = net.command(cmd.get_program());
            inside.args(cmd.get_args()).stdin(Stdio::null());
            die_with_parent(&mut inside);
            cmd = inside;
        }
        cmd.stdout(log.try_clone().expect("clone log handle")).stderr(log);
        let child = cmd.spawn().expect("spawn wasmrun");
        let mut daemon = Daemon { child: Some(child), dir, channel: None };
        daemon.wait_ready().await;
        daemon
    }

    /// The command line of a daemon using `dir` for root and state and
    /// listening on `socket`, without stdout/stderr redirection. Its CNI
    /// configuration directory is `<dir>/net.d`, empty (pods of the tests
    /// that need none use the host's network), and its plugins are Debian's,
    /// unless `extra_args` name others.
    pub fn command(dir: &Path, socket: &Path, extra_args: &[&str]) -> Command {
        // A `--log-level` among `extra_args` replaces the default (clap refuses a flag given twice).
        let log_level: &[&str] = if extra_args.contains(&"--log-level") { &[] } else { &["--log-level", "debug"] };
        let conf_dir = dir.join("net.d");
        let mut cni = Vec::new();
        if !extra_args.contains(&"--cni-conf-dir") {
            cni.extend(["--cni-conf-dir".into(), conf_dir.into_os_string()]);
        }
        if !extra_args.contains(&"--cni-bin-dir") {
            cni.extend(["--cni-bin-dir".into(), super::netns::CNI_BIN_DIR.into()]);
        }
        let mut cmd = Command::new(daemon_binary());
        cmd.arg("--socket")
            .arg(socket)
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--state")
            .arg(dir.join("state"))
            .args(log_level)
            .args(cni)
            .arg("--insecure-registry")
            .arg(registry().host())
            .args(extra_args)
            .stdin(Stdio::null());
        die_with_parent(&mut cmd);
        cmd
    }

    async fn wait_ready(&mut self) {
        let socket = self.socket();
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                // Drop prints the log.
                panic!("wasmrun exited during startup with {status}");
            }
            if socket.exists()
                && let Ok(Ok(channel)) = tokio::time::timeout(Duration::from_secs(2), connect(&socket)).await
            {
                let mut client = RuntimeServiceClient::new(channel.clone());
                let version = client.version(VersionRequest { version: "v1".into() });
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), version).await {
                    self.channel = Some(channel);
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("wasmrun did not answer Version within {START_LIMIT:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The daemon's directory (root, state, socket and log live in it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join(SOCKET)
    }

    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(LOG)
    }

    /// Everything the daemon (and earlier daemons on the same directory) logged.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel())
    }

    pub fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel())
    }

    fn channel(&self) -> Channel {
        self.channel.clone().expect("the daemon has been stopped")
    }

    /// Sends SIGTERM and waits (at most 30 s, then SIGKILL and panic) for the exit.
    pub fn sigterm_and_wait(&mut self) -> ExitStatus {
        self.channel = None;
        let mut child = self.child.take().expect("the daemon has already been stopped");
        signal(&child, libc::SIGTERM);
        match wait_bounded(&mut child, Duration::from_secs(30)) {
            Some(status) => status,
            None => {
                signal(&child, libc::SIGKILL);
                let _ = child.wait();
                panic!(
                    "wasmrun did not exit within 30 s of SIGTERM; log {}:\n{}",
                    self.log_path().display(),
                    tail_file(&self.log_path(), 80)
                );
            }
        }
    }

    /// Kills the daemon with SIGKILL (leaving its socket file behind).
    pub fn sigkill(&mut self) -> ExitStatus {
        self.channel = None;
        let mut child = self.child.take().expect("the daemon has already been stopped");
        signal(&child, libc::SIGKILL);
        child.wait().expect("wait for wasmrun")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "=== wasmrun log {} (last 80 lines) ===\n{}\n=== end of wasmrun log ===",
                self.log_path().display(),
                tail_file(&self.log_path(), 80)
            );
        }
        self.channel = None;
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            if wait_bounded(&mut child, Duration::from_secs(10)).is_none() {
                signal(&child, libc::SIGKILL);
                let _ = child.wait();
            }
        }
        unmount_below(&self.state());
    }
}

/// Detaches every mount at or below `dir`, deepest first: the writable roots
/// of the containers a test did not remove, which a stopped daemon leaves
/// mounted until its next start.
fn unmount_below(dir: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|point| point.starts_with(dir))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    for point in points {
        let Ok(path) = std::ffi::CString::new(point.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: `path` is a NUL-terminated string that outlives the call.
        unsafe {
            libc::umount2(path.as_ptr(), libc::MNT_DETACH);
        }
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: plain kill(2) on our own, not yet reaped, child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}

/// Waits for the child to exit, at most `limit`.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// A gRPC channel to a CRI server on a unix socket.
pub async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    // kubelet's gRPC client (grpc-go) sizes its HTTP/2 flow-control window
    // from the measured bandwidth-delay product; so does this one. With the
    // fixed 64 KiB default, a large list needs a window update per 64 KiB.
    Endpoint::from_static("http://[::]:50051")
        .http2_adaptive_window(true)
        .connect_timeout(Duration::from_secs(5))
        .timeout(RPC_LIMIT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
}

/// The wasmrun binary under test: `$WASMRUN_E2E_BIN` when set (a copy of a
/// build, so that a later build into the shared target directory cannot
/// swap the daemon under a running test binary), else the one cargo built
/// with this test binary.
pub fn daemon_binary() -> std::ffi::OsString {
    std::env::var_os("WASMRUN_E2E_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_wasmrun").into())
}
