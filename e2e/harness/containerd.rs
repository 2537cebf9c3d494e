//! A real containerd (Debian's `containerd` 1.6 with `runc`) serving its CRI
//! plugin on a unix socket in a scratch directory, for the tests of requests
//! that wasmrun forwards, and the Linux images it runs: a static "pause"
//! program as sandbox image and a static "hello" program (sources in
//! e2e/pause/, built with `gcc -static`), pushed to the shared test registry.
//!
//! Everything containerd keeps lives in its directory: `config.toml`,
//! `root/`, `state/`, `runc/` (runc's state), `certs.d/` (registry hosts:
//! plain HTTP to the test registry), `cni/` (no network, so pods use the
//! host's, see [`host_network_pod_config`]; or, for a containerd started in
//! a test's network namespace, that namespace's bridge network),
//! `containerd.sock` (+ `.ttrpc`) and `containerd.log`.
//!
//! Shims (`containerd-shim-runc-v2`) outlive containerd by design, so that a
//! killed containerd can be restarted and find its containers again
//! ([`Containerd::kill`], [`Containerd::restart`]). Dropping a [`Containerd`]
//! therefore kills containerd, force-deletes every runc container it made,
//! kills its shims and unmounts whatever is left under its directory. Shims of test processes that died without dropping
//! theirs (SIGKILL) are killed, with their containers, by the first
//! [`Containerd::start`] of a later test process, which also removes what
//! those left (mounts, cgroups, shim sockets, CNI cache entries).
//!
//! Needs (as root): `apt-get install -y containerd runc gcc libc6-dev`.
//! The tests may send traffic only on loopback or inside network namespaces
//! they make: a containerd on the machine's namespace has no CNI network
//! (every pod uses the host network; a pod asking for a network of its own
//! fails at RunPodSandbox), and one started in a test's namespace
//! ([`Containerd::start_in`]) gets that namespace's.

use std::fs::OpenOptions;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;
use tonic::transport::Channel;
use wasmrun::api::image_service_client::ImageServiceClient;
use wasmrun::api::runtime_service_client::RuntimeServiceClient;
use wasmrun::api::{LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig, VersionRequest};

use super::daemon::connect;
use super::oci::{ImageParts, push_image, sha256_digest, tar_layer};
use super::{POLL_INTERVAL, die_with_parent, pod_config, registry, scratch_dir, scratch_root, tail_file};

pub const CONTAINERD_BIN: &str = "/usr/bin/containerd";
pub const RUNC_BIN: &str = "/usr/sbin/runc";
pub const CONTAINERD_INSTALL: &str = "apt-get install -y containerd runc";
/// Where Debian's `containernetworking-plugins` puts the CNI plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

const SOCKET: &str = "containerd.sock";
const LOG: &str = "containerd.log";
/// The containerd namespace of everything the CRI plugin makes.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// How long containerd may take to answer `Version` after being spawned.
const START_LIMIT: Duration = Duration::from_secs(60);
/// How long each cleanup command (runc delete) may take in Drop.
const CLEANUP_LIMIT: Duration = Duration::from_secs(20);

pub const OCI_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The line the hello program prints first.
pub const LINUX_HELLO_LINE: &str = "hello from linux";

/// A running (or killed, between [`Containerd::kill`] and
/// [`Containerd::restart`]) containerd of one test.
pub struct Containerd {
    /// containerd's CRI (and containerd API) socket.
    pub socket: PathBuf,
    /// The directory holding config, root, state, socket and log.
    pub dir: PathBuf,
    /// containerd's stdout and stderr (every start appends).
    pub log: PathBuf,
    /// The network namespace it runs in (a [`super::TestNet`]'s); none: the machine's.
    pub netns: Option<PathBuf>,
    /// The config file containerd is started with.
    pub config: PathBuf,
    process: Option<Process>,
    channel: Option<Channel>,
}

/// What the thread that spawns and waits for containerd reports.
enum Event {
    Spawned(u32),
    SpawnFailed(std::io::Error),
    Exited(std::io::Result<ExitStatus>),
}

/// The containerd process, spawned and waited for by a thread of its own:
/// PR_SET_PDEATHSIG fires when the spawning *thread* exits, and the threads
/// of a test's runtime may exit before the test does.
struct Process {
    pid: u32,
    events: mpsc::Receiver<Event>,
}

impl Process {
    /// Waits at most `limit` for the exit; None if it did not come.
    fn wait_exit(&self, limit: Duration) -> Option<std::io::Result<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            match self.events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Event::Exited(status)) => return Some(status),
                Ok(_) => {}
                // The thread is gone: so is the child it waited for.
                Err(mpsc::RecvTimeoutError::Disconnected) => return Some(Err(std::io::ErrorKind::Other.into())),
                Err(mpsc::RecvTimeoutError::Timeout) => return None,
            }
        }
    }
}

impl Containerd {
    /// Starts a containerd in a new directory and waits until its CRI
    /// plugin answers `Version`.
    pub async fn start() -> Containerd {
        Containerd::start_in(None).await
    }

    /// As [`Containerd::start`], inside a test's network namespace when `net`
    /// gives one (its pinned file and its CNI configuration directory, see
    /// [`super::TestNet`]), with the CNI configuration copied from there (its
    /// pods then get the same network as the daemon's there).
    pub async fn start_in(net: Option<(PathBuf, PathBuf)>) -> Containerd {
        reap_orphans();
        let pause = pause_image().await;
        let dir = scratch_dir("containerd");
        let config = dir.join("config.toml");
        std::fs::write(&config, config_toml(&dir, &pause)).expect("write containerd config");
        write_registry_hosts(&dir.join("certs.d"), &registry().host());
        std::fs::create_dir_all(dir.join("cni/net.d")).expect("create CNI conf dir");
        if let Some((_, conf_dir)) = &net {
            for file in std::fs::read_dir(conf_dir).expect("read the namespace's CNI configs").flatten() {
                std::fs::copy(file.path(), dir.join("cni/net.d").join(file.file_name())).expect("copy a CNI config");
            }
        }
        let netns = net.map(|(file, _)| file);
        let mut containerd = Containerd {
            socket: dir.join(SOCKET),
            log: dir.join(LOG),
            dir,
            netns,
            config,
            process: None,
            channel: None,
        };
        containerd.spawn().await;
        containerd
    }

    /// Kills containerd with SIGKILL, as a crash would: its shims and
    /// containers keep running, its socket file stays.
    pub fn kill(&mut self) {
        self.channel = None;
        let process = self.process.take().expect("containerd is not running");
        signal(process.pid, libc::SIGKILL);
        if process.wait_exit(Duration::from_secs(30)).is_none() {
            panic!("containerd (pid {}) did not exit within 30 s of SIGKILL", process.pid);
        }
    }

    /// Starts containerd again on the same directory, config and socket
    /// (killing it first if it runs) and waits until it answers `Version`.
    pub async fn restart(&mut self) {
        if self.process.is_some() {
            self.kill();
        }
        self.spawn().await;
    }

    /// containerd's registry hosts directory (its CRI `registry.config_path`):
    /// `<dir>/<host[:port]>/hosts.toml`, read by containerd at every pull, so
    /// a test may add hosts while containerd runs (see [`Containerd::write_hosts`]).
    pub fn hosts_dir(&self) -> PathBuf {
        self.dir.join("certs.d")
    }

    /// Writes `<hosts_dir>/<registry>/hosts.toml` with `toml` as its content.
    pub fn write_hosts(&self, registry: &str, toml: &str) {
        let dir = self.hosts_dir().join(registry);
        std::fs::create_dir_all(&dir).expect("create a host directory");
        std::fs::write(dir.join("hosts.toml"), toml).expect("write hosts.toml");
    }

    /// containerd's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid)
    }

    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel())
    }

    pub fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel())
    }

    fn channel(&self) -> Channel {
        self.channel.clone().expect("containerd has been killed")
    }

    /// Everything containerd logged so far (all starts).
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The pids of the shims serving this containerd's containers (from
    /// their bundles, and any process started with `-address <socket>`).
    pub fn shim_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.bundles().iter().filter_map(|b| read_pid(&b.join("shim.pid"))).collect();
        pids.extend(processes_with_args("-address", &self.socket));
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// The pids of the init processes of this containerd's sandboxes and
    /// containers (the pause and hello programs), from their bundles.
    pub fn container_pids(&self) -> Vec<u32> {
        self.bundles().iter().filter_map(|b| read_pid(&b.join("init.pid"))).collect()
    }

    /// containerd, its shims and its containers' init processes: what must
    /// be gone once this is dropped (see [`assert_processes_gone`]).
    pub fn processes(&self) -> Vec<u32> {
        let mut pids = self.shim_pids();
        pids.extend(self.container_pids());
        pids.extend(self.pid());
        pids
    }

    /// The bundle directories of the runc v2 shims:
    /// `state/io.containerd.runtime.v2.task/<namespace>/<id>`.
    fn bundles(&self) -> Vec<PathBuf> {
        read_dir_paths(&self.dir.join("state/io.containerd.runtime.v2.task"))
            .iter()
            .flat_map(|ns| read_dir_paths(ns))
            .collect()
    }

    async fn spawn(&mut self) {
        assert!(self.process.is_none(), "containerd is already running");
        for program in [CONTAINERD_BIN, RUNC_BIN, SHIM_BIN] {
            assert!(Path::new(program).exists(), "{program} is missing; install it with `{CONTAINERD_INSTALL}`");
        }
        let (tx, rx) = mpsc::channel();
        let (config, log, netns) = (self.config.clone(), self.log.clone(), self.netns.clone());
        std::thread::Builder::new()
            .name("e2e-containerd".into())
            .spawn(move || {
                let spawned = OpenOptions::new().create(true).append(true).open(&log).and_then(|log| {
                    // nsenter (changing only the network namespace) execs containerd: the pid is containerd's.
                    let mut cmd = match &netns {
                        Some(netns) => {
                            let mut cmd = Command::new("nsenter");
                            cmd.arg(format!("--net={}", netns.display())).arg("--").arg(CONTAINERD_BIN);
                            cmd
                        }
                        None => Command::new(CONTAINERD_BIN),
                    };
                    cmd.arg("--config")
                        .arg(&config)
                        .stdin(Stdio::null())
                        .stdout(log.try_clone()?)
                        .stderr(log)
                        // containerd finds containerd-shim-runc-v2, and the shim runc, through PATH.
                        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
                    die_with_parent(&mut cmd);
                    cmd.spawn()
                });
                match spawned {
                    Ok(mut child) => {
                        let _ = tx.send(Event::Spawned(child.id()));
                        let _ = tx.send(Event::Exited(child.wait()));
                    }
                    Err(e) => {
                        let _ = tx.send(Event::SpawnFailed(e));
                    }
                }
            })
            .expect("spawn containerd thread");
        let pid = match rx.recv() {
            Ok(Event::Spawned(pid)) => pid,
            Ok(Event::SpawnFailed(e)) => panic!("cannot run {CONTAINERD_BIN}: {e}"),
            _ => panic!("containerd thread ended before spawning"),
        };
        self.process = Some(Process { pid, events: rx });
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(process) = &self.process
                && let Ok(Event::Exited(status)) = process.events.try_recv()
            {
                self.process = None;
                panic!(
                    "containerd exited during startup ({status:?}); log {}:\n{}",
                    self.log.display(),
                    tail_file(&self.log, 60)
                );
            }
            if self.socket.exists()
                && let Ok(Ok(channel)) = tokio::time::timeout(Duration::from_secs(2), connect(&self.socket)).await
            {
                let mut client = RuntimeServiceClient::new(channel.clone());
                let version = client.version(VersionRequest { version: "v1".into() });
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), version).await {
                    self.channel = Some(channel);
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "containerd did not answer CRI Version within {START_LIMIT:?}; log {}:\n{}",
                    self.log.display(),
                    tail_file(&self.log, 60)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Kills containerd, every runc container and shim it made, and
    /// unmounts what is left under its directory.
    fn clean_up(&mut self) {
        self.channel = None;
        if let Some(process) = self.process.take() {
            signal(process.pid, libc::SIGKILL);
            let _ = process.wait_exit(Duration::from_secs(30));
        }
        // The shims are found from their bundles: read those before runc
        // delete and the shims' own exit remove them.
        let bundles = self.bundles();
        let mut shims: Vec<u32> = bundles.iter().filter_map(|b| read_pid(&b.join("shim.pid"))).collect();
        let sockets: Vec<PathBuf> = bundles.iter().filter_map(|b| shim_socket(&b.join("address"))).collect();
        // runc delete --force SIGKILLs the container's processes and removes its cgroups and state.
        for ns_root in read_dir_paths(&self.dir.join("runc")) {
            for container in read_dir_paths(&ns_root) {
                let mut cmd = Command::new(RUNC_BIN);
                cmd.arg("--root").arg(&ns_root).args(["delete", "--force"]).arg(container.file_name().unwrap());
                run_bounded(&mut cmd, CLEANUP_LIMIT);
            }
        }
        shims.extend(processes_with_args("-address", &self.socket));
        for pid in shims {
            if process_name(pid).is_some_and(|name| name.contains("containerd-shim")) {
                signal(pid, libc::SIGKILL);
            }
        }
        for socket in sockets {
            let _ = std::fs::remove_file(socket);
        }
        for bundle in &bundles {
            if let Some(id) = bundle.file_name().and_then(|n| n.to_str()) {
                remove_cni_results(id);
            }
        }
        unmount_under(&self.dir);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "=== containerd log {} (last 80 lines) ===\n{}\n=== end of containerd log ===",
                self.log.display(),
                tail_file(&self.log, 80)
            );
        }
        self.clean_up();
    }
}

pub const SHIM_BIN: &str = "/usr/bin/containerd-shim-runc-v2";

/// containerd's config (version 2, containerd 1.6): everything in `dir`,
/// CRI plugin with `pause` as sandbox image.
fn config_toml(dir: &Path, pause: &str) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
# Snapshotters that cannot work on this host (only overlayfs and native are used).
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{d}/{SOCKET}"

[ttrpc]
  address = "{d}/{SOCKET}.ttrpc"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # Nobody here, not even root, has CAP_SYS_RESOURCE: without this, runc
  # fails to set the sandbox's oom_score_adj (-998) below containerd's own,
  # and RunPodSandbox fails with "runc create failed: unable to start
  # container process: can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  disable_apparmor = true
  # Pod network namespaces are bind-mounted under state/, not /var/run/netns.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{RUNC_BIN}"
        # runc's state: <Root>/k8s.io/<id>
        Root = "{d}/runc"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{d}/cni/net.d"

  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{d}/certs.d"
"#
    )
}

/// `certs.d/<host>/hosts.toml`: pull from `host` over plain HTTP.
fn write_registry_hosts(certs_d: &Path, host: &str) {
    let dir = certs_d.join(host);
    std::fs::create_dir_all(&dir).expect("create certs.d");
    std::fs::write(
        dir.join("hosts.toml"),
        format!("server = \"http://{host}\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
    )
    .expect("write hosts.toml");
}

/// A pod config as kubelet sends it (see [`pod_config`]) for a pod on the
/// host network (`network: NODE`, so no CNI is involved) with a PID
/// namespace per container, as kubelet asks for v1 pods.
pub fn host_network_pod_config(name: &str, uid: &str) -> PodSandboxConfig {
    let mut config = with_namespaces(pod_config(name, uid), NamespaceMode::Node);
    // Kubelet sends no hostname for host-network pods: they share the host's
    // UTS namespace, and runc refuses to set a hostname without one of their own.
    config.hostname.clear();
    config
}

fn with_namespaces(mut config: PodSandboxConfig, network: NamespaceMode) -> PodSandboxConfig {
    let linux = config.linux.get_or_insert_with(Default::default);
    linux.security_context = Some(LinuxSandboxSecurityContext {
        namespace_options: Some(NamespaceOption {
            network: network as i32,
            pid: NamespaceMode::Container as i32,
            ipc: NamespaceMode::Pod as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

/// The static Linux program `name` (`pause`, `hello` or `sidecar`) built from
/// e2e/pause/<name>.c, once per test process.
pub fn linux_program(name: &str) -> Vec<u8> {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let dir = scratch_dir("linux-programs");
        let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/pause");
        for program in ["pause", "hello", "sidecar"] {
            let mut cmd = Command::new("gcc");
            cmd.args(["-static", "-Os", "-s", "-Wall", "-o"])
                .arg(dir.join(program))
                .arg(sources.join(format!("{program}.c")));
            super::tools::run_tool(
                &format!("gcc -static {program}.c (needs `apt-get install -y gcc libc6-dev`)"),
                &mut cmd,
            );
        }
        dir
    });
    let path = dir.join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The GOARCH name of this machine, as image configs spell it.
pub fn oci_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// An ordinary Linux OCI image for this machine: one gzipped tar layer of
/// `files` (path, content, mode), `entrypoint` as Entrypoint.
pub fn linux_image(files: &[(&str, &[u8], u32)], entrypoint: &[&str]) -> ImageParts {
    let diff_id = sha256_digest(&tar_layer(files, false));
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": oci_architecture(),
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": { "Entrypoint": entrypoint, "Env": ["PATH=/"] },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    }))
    .expect("serialize image config");
    ImageParts {
        config_media_type: OCI_CONFIG_MEDIA_TYPE.into(),
        config,
        layers: vec![(OCI_LAYER_GZIP_MEDIA_TYPE.into(), tar_layer(files, true))],
        ..ImageParts::default()
    }
}

/// Pushes a Linux image holding the static program `program` as `/<program>`
/// (Entrypoint) to the shared registry as `e2e/<repo>:v1`; returns its name.
async fn push_linux_program(program: &str, repo: &str) -> String {
    let binary = linux_program(program);
    let path_in_image = format!("/{program}");
    let parts = linux_image(&[(program, &binary, 0o755)], &[&path_in_image]);
    let host = registry().host();
    push_image(&host, &format!("e2e/{repo}"), "v1", &parts).await;
    format!("{host}/e2e/{repo}:v1")
}

/// The sandbox ("pause") image in the shared registry, pushed once per process.
pub async fn pause_image() -> String {
    static IMAGE: OnceCell<String> = OnceCell::const_new();
    IMAGE.get_or_init(|| push_linux_program("pause", "linux-pause")).await.clone()
}

/// The Linux image of e2e/pause/hello.c (Entrypoint `/hello`: prints
/// [`LINUX_HELLO_LINE`]; args `--wait` or `--exit N`) in the shared
/// registry, pushed once per process.
pub async fn linux_hello_image() -> String {
    static IMAGE: OnceCell<String> = OnceCell::const_new();
    IMAGE.get_or_init(|| push_linux_program("hello", "linux-hello")).await.clone()
}

/// The Linux image of e2e/pause/sidecar.c (Entrypoint `/sidecar`; args
/// `SERVE_PORT CALL_PORT PATH`: serves on one port of its pod, calls the
/// other on 127.0.0.1) in the shared registry, pushed once per process.
pub async fn linux_sidecar_image() -> String {
    static IMAGE: OnceCell<String> = OnceCell::const_new();
    IMAGE.get_or_init(|| push_linux_program("sidecar", "linux-sidecar")).await.clone()
}

/// Waits (at most 10 s) until none of `pids` is a live process (zombies
/// count as gone); panics naming those left.
pub fn assert_processes_gone(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive: Vec<(u32, String)> =
            pids.iter().filter_map(|&pid| live_cmdline(pid).map(|cmdline| (pid, cmdline))).collect();
        if alive.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!("processes left behind: {alive:?}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The command line of `pid` (arguments joined with spaces), if it is alive
/// and not a zombie.
pub fn live_cmdline(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&cmdline).replace('\0', " ").trim_end().to_owned())
}

/// The comm name of `pid`, if it exists.
fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim_end().to_owned())
}

/// The parent pid of `pid`, if it exists.
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Every pid in /proc with its arguments.
fn all_processes() -> Vec<(u32, Vec<Vec<u8>>)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args = cmdline.split(|&b| b == 0).filter(|a| !a.is_empty()).map(<[u8]>::to_vec).collect();
            Some((pid, args))
        })
        .collect()
}

/// The pids of processes whose arguments hold `flag` followed by `value`.
pub fn processes_with_args(flag: &str, value: &Path) -> Vec<u32> {
    let value = value.as_os_str().as_bytes();
    all_processes()
        .into_iter()
        .filter(|(_, args)| args.windows(2).any(|w| w[0] == flag.as_bytes() && w[1] == value))
        .map(|(pid, _)| pid)
        .collect()
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: plain kill(2).
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The shim socket named by a bundle's `address` file (`unix:///run/containerd/s/<hash>`).
fn shim_socket(address_file: &Path) -> Option<PathBuf> {
    let address = std::fs::read_to_string(address_file).ok()?;
    Some(PathBuf::from(address.trim().strip_prefix("unix://")?))
}

fn read_dir_paths(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map(|entries| entries.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

/// Runs `cmd` quietly for at most `limit` (then kills it); never panics.
fn run_bounded(cmd: &mut Command, limit: Duration) {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let Ok(mut child) = cmd.spawn() else {
        return;
    };
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            Ok(None) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}

/// The mount points of this process' mount namespace at or under `dir`.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|escaped| PathBuf::from(unescape_mount_path(escaped)))
        .filter(|mount_point| mount_point.starts_with(&dir))
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(escaped: &str) -> String {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Ok(byte) = u8::from_str_radix(&escaped[i + 1..i + 4], 8)
        {
            out.push(byte);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Lazily unmounts everything mounted at or under `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let mut mounts = mounts_under(dir);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for mount_point in mounts {
        let Ok(path) = std::ffi::CString::new(mount_point.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: umount2 with a valid NUL-terminated path.
        unsafe {
            libc::umount2(path.as_ptr(), libc::MNT_DETACH);
        }
    }
}

/// Kills, once per test process, the shims (and their containers) of
/// containerds whose test process died without dropping them (SIGKILL),
/// unmounts what those left mounted and removes their directories.
fn reap_orphans() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let Some(runs) = scratch_root().parent().map(Path::to_path_buf) else {
            return;
        };
        let dead_run = |path: &Path| -> Option<PathBuf> {
            let rest = path.strip_prefix(&runs).ok()?;
            let run = rest.components().next()?.as_os_str().to_str()?;
            let pid: libc::pid_t = run.strip_prefix("run-")?.parse().ok()?;
            // SAFETY: kill with signal 0 only checks whether the process exists.
            let gone = unsafe { libc::kill(pid, 0) } == -1
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            gone.then(|| runs.join(run))
        };
        let processes = all_processes();
        let mut dead_dirs = Vec::new();
        let mut cgroups = Vec::new();
        for (pid, args) in &processes {
            let is_shim = args.first().is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"));
            let address = args
                .windows(2)
                .find(|w| w[0] == b"-address")
                .map(|w| PathBuf::from(String::from_utf8_lossy(&w[1]).into_owned()));
            let (true, Some(address)) = (is_shim, address) else {
                continue;
            };
            let Some(dir) = dead_run(&address) else {
                continue;
            };
            for (child, _) in &processes {
                if parent_pid(*child) == Some(*pid) {
                    cgroups.extend(container_cgroups(*child));
                    signal(*child, libc::SIGKILL);
                }
            }
            signal(*pid, libc::SIGKILL);
            if let Some(socket) = orphan_shim_socket(args, &address) {
                let _ = std::fs::remove_file(socket);
            }
            if let Some(id) = args.windows(2).find(|w| w[0] == b"-id") {
                remove_cni_results(&String::from_utf8_lossy(&id[1]));
            }
            dead_dirs.push(dir);
        }
        let mountinfo_dirs: Vec<PathBuf> = mounts_under(&runs).iter().filter_map(|m| dead_run(m)).collect();
        dead_dirs.extend(mountinfo_dirs);
        dead_dirs.sort();
        dead_dirs.dedup();
        for dir in dead_dirs {
            unmount_under(&dir);
            let _ = std::fs::remove_dir_all(&dir);
        }
        remove_cgroups(&cgroups);
    });
}

/// The socket of a shim started with `args` (`-namespace NS -id ID -address
/// ADDRESS`): containerd 1.6 puts it at
/// `/run/containerd/s/<hex sha256 of "ADDRESS/NS/ID">`.
fn orphan_shim_socket(args: &[Vec<u8>], address: &Path) -> Option<PathBuf> {
    let arg = |flag: &[u8]| args.windows(2).find(|w| w[0] == flag).map(|w| String::from_utf8_lossy(&w[1]).into_owned());
    let (namespace, id) = (arg(b"-namespace")?, arg(b"-id")?);
    let key = address.join(namespace).join(id);
    let digest = sha256_digest(key.as_os_str().as_bytes());
    Some(Path::new("/run/containerd/s").join(digest.strip_prefix("sha256:")?))
}

/// libcni's cache of what it set up for sandbox `id` (containerd 1.6 has no
/// setting to move it out of /var/lib/cni): `<network>-<id>-<interface>`.
fn remove_cni_results(id: &str) {
    for entry in read_dir_paths(Path::new("/var/lib/cni/results")) {
        if entry.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains(&format!("-{id}-"))) {
            let _ = std::fs::remove_file(entry);
        }
    }
}

/// A pod's cgroup (its `cgroup_parent`), made as kubelet makes it before
/// RunPodSandbox: a directory in every hierarchy (cgroup v1), or in the
/// unified one (v2). containerd reads a sandbox's stats from it, and fails
/// PodSandboxStats ("cgroup deleted") without it. Dropping it removes the
/// directories (empty: runc puts the pod's processes elsewhere, see
/// [`container_cgroups`]).
pub struct PodCgroup {
    dirs: Vec<PathBuf>,
}

impl PodCgroup {
    /// Makes the cgroup `config.linux.cgroup_parent` names.
    pub fn create(config: &PodSandboxConfig) -> PodCgroup {
        let parent = config.linux.as_ref().map(|linux| linux.cgroup_parent.clone()).unwrap_or_default();
        assert!(!parent.is_empty() && !parent.contains('/'), "a pod cgroup name like kubelet's: {parent:?}");
        let root = Path::new("/sys/fs/cgroup");
        let hierarchies =
            if root.join("cgroup.controllers").exists() { vec![root.to_owned()] } else { read_dir_paths(root) };
        let dirs: Vec<PathBuf> = hierarchies.iter().map(|hierarchy| hierarchy.join(&parent)).collect();
        for dir in &dirs {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("cannot make the pod cgroup {}: {e}", dir.display()));
        }
        PodCgroup { dirs }
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        remove_cgroups(&self.dirs);
    }
}

/// The cgroup directories of a container's process `pid`, in every
/// hierarchy: CRI names them `<pod slice>:cri-containerd:<id>`, and runc
/// (cgroupfs driver) makes them directly under its own cgroup.
fn container_cgroups(pid: u32) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return Vec::new();
    };
    let mut dirs = Vec::new();
    for line in text.lines() {
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        if !path.contains(":cri-containerd:") {
            continue;
        }
        let relative = path.trim_start_matches('/');
        dirs.push(Path::new("/sys/fs/cgroup").join(relative));
        dirs.extend(read_dir_paths(Path::new("/sys/fs/cgroup")).into_iter().map(|h| h.join(relative)));
    }
    dirs.retain(|d| d.is_dir());
    dirs
}

/// Removes the (emptied) cgroup directories `dirs`, waiting at most 5 s for
/// their killed processes to leave them.
fn remove_cgroups(dirs: &[PathBuf]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left: Vec<&PathBuf> = dirs.iter().collect();
    while !left.is_empty() && Instant::now() < deadline {
        left.retain(|dir| std::fs::remove_dir(dir).is_err() && dir.exists());
        if !left.is_empty() {
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}
