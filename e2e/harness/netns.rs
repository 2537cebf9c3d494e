//! A network namespace of the test's own (a "node" for the networking
//! tests): the daemon, a registry and the test's clients run inside it, so
//! the CNI bridge, the pods' addresses and the host-port rules exist only
//! there and no traffic leaves it.
//!
//! It is made with `unshare --net=FILE` (pinned on a file of the test's
//! scratch directory), processes are started in it with `nsenter --net=FILE`
//! (which changes only the network namespace; `ip netns exec` would also
//! remount `/sys` and hide the cgroup mounts), and the test's own client code
//! runs on a thread moved into it ([`TestNet::run`]). Dropping it kills what
//! it started there and unpins it.

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{die_with_parent, http_get, registry, scratch_dir, tail_file};

/// Debian's containernetworking-plugins install here.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// The address the test namespace has of its own besides 127.0.0.1 (on its
/// loopback interface: the kernel here may lack the dummy interface type):
/// what a host port is reached at, as a node's address.
pub const NODE_ADDRESS: &str = "10.250.0.1";

/// The pods' subnet of the bridge network [`TestNet::write_bridge_config`] writes.
pub const POD_SUBNET: &str = "10.88.7.0/24";

pub struct TestNet {
    pub dir: PathBuf,
    /// The pinned namespace (what `nsenter --net=` and `CNI_NETNS`-like paths name).
    pub file: PathBuf,
    /// What it started inside: the registry, the DNS server.
    children: Vec<Child>,
}

impl TestNet {
    /// A new namespace with `lo` up, [`NODE_ADDRESS`] on it, and `<dir>/net.d` for its CNI configuration (empty), with
    /// `<dir>/ipam` as the bridge's address store.
    pub fn new(name: &str) -> TestNet {
        let dir = scratch_dir(name);
        let file = dir.join("netns");
        std::fs::create_dir_all(dir.join("net.d")).expect("create net.d");
        std::fs::create_dir_all(dir.join("ipam")).expect("create ipam dir");
        // unshare bind-mounts the new namespace on the file, which must exist.
        std::fs::write(&file, "").expect("create the namespace's pin file");
        run_ok(Command::new("unshare").arg(format!("--net={}", file.display())).arg("true"));
        let net = TestNet { dir, file, children: Vec::new() };
        for args in [&["link", "set", "lo", "up"][..], &["addr", "add", &format!("{NODE_ADDRESS}/32"), "dev", "lo"]] {
            run_ok(net.command("ip").args(args));
        }
        net
    }

    /// `program` to be run inside the namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.file.display())).arg("--").arg(program);
        cmd
    }

    /// Runs `f` on a thread moved into the namespace, and returns what it returns.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let namespace = std::fs::File::open(&self.file).expect("open the test namespace");
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: setns on a descriptor we hold open; it changes only this thread.
                    let entered = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .expect("the thread in the test namespace panicked")
        })
    }

    /// The CNI configuration directory to give the daemon (`--cni-conf-dir`).
    pub fn conf_dir(&self) -> PathBuf {
        self.dir.join("net.d")
    }

    /// Writes `10-bridge.conflist`: a bridge `wr0` as the pods' gateway,
    /// host-local addresses from [`POD_SUBNET`] kept in `<dir>/ipam`, and
    /// portmap for host ports, then the plugins of `extra` (JSON objects).
    pub fn write_bridge_config(&self, extra: &[&str]) {
        let mut plugins = vec![format!(
            r#"{{"type":"bridge","bridge":"wr0","isGateway":true,"ipMasq":false,"hairpinMode":true,
              "ipam":{{"type":"host-local","ranges":[[{{"subnet":"{POD_SUBNET}"}}]],"routes":[{{"dst":"0.0.0.0/0"}}],
                      "dataDir":"{}"}}}}"#,
            self.dir.join("ipam").display()
        )];
        plugins.push(r#"{"type":"portmap","capabilities":{"portMappings":true}}"#.to_owned());
        plugins.extend(extra.iter().map(|plugin| plugin.to_string()));
        let config = format!(r#"{{"cniVersion":"1.0.0","name":"wasmrun-e2e","plugins":[{}]}}"#, plugins.join(","));
        std::fs::write(self.conf_dir().join("10-bridge.conflist"), config).expect("write the CNI config");
    }

    /// Serves the shared test registry's storage inside the namespace, on
    /// the same `127.0.0.1:PORT`, so image names pushed to it pull as they are.
    pub fn serve_registry(&mut self) {
        let shared = registry();
        let config = self.dir.join("registry.yml");
        let log = self.dir.join("registry.log");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {}\n",
                shared.storage().display(),
                shared.host()
            ),
        )
        .expect("write the registry config");
        let log_file = std::fs::File::create(&log).expect("create the registry log");
        let mut cmd = self.command("/usr/bin/docker-registry");
        cmd.arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log handle"))
            .stderr(log_file);
        die_with_parent(&mut cmd);
        self.children.push(cmd.spawn().expect("run docker-registry in the test namespace"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.run(|| http_get(&shared.host(), "/v2/", None).is_ok_and(|(status, _)| status == 200)) {
            assert!(
                Instant::now() < deadline,
                "the registry did not answer in the namespace:\n{}",
                tail_file(&log, 30)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Serves DNS on [`NODE_ADDRESS`]:53 inside the namespace (dnsmasq, no
    /// upstream, no hosts file), answering each `(name, address)` of `records`
    /// and nothing else.
    pub fn serve_dns(&mut self, records: &[(&str, &str)]) {
        let log = self.dir.join("dnsmasq.log");
        let mut cmd = self.command("/usr/sbin/dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--log-queries",
            "--user=root",
        ])
        .arg(format!("--listen-address={NODE_ADDRESS}"))
        .arg(format!("--pid-file={}", self.dir.join("dnsmasq.pid").display()))
        .arg(format!("--log-facility={}", log.display()))
        .args(records.iter().map(|(name, address)| format!("--host-record={name},{address}")))
        .stdin(Stdio::null());
        die_with_parent(&mut cmd);
        self.children.push(cmd.spawn().expect("run dnsmasq in the test namespace"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.run(|| std::net::TcpStream::connect((NODE_ADDRESS, 53)).is_ok()) {
            assert!(Instant::now() < deadline, "dnsmasq did not listen in the namespace:\n{}", tail_file(&log, 30));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What pods could have left in the namespace and the daemon's state:
    /// veth interfaces, pinned namespaces under `state/netns`, and address
    /// leases of the bridge's host-local store. Empty when all is torn down.
    pub fn leftovers(&self, daemon_state: &Path) -> Vec<String> {
        let mut left = Vec::new();
        let links = self.command("ip").args(["-o", "link", "show", "type", "veth"]).output().expect("ip link show");
        left.extend(String::from_utf8_lossy(&links.stdout).lines().map(|line| format!("veth: {line}")));
        if let Ok(pins) = std::fs::read_dir(daemon_state.join("netns")) {
            left.extend(pins.flatten().map(|pin| format!("pinned namespace: {}", pin.path().display())));
        }
        // host-local keeps one file per address leased, named by the address.
        let ipam = self.dir.join("ipam").join("wasmrun-e2e");
        if let Ok(leases) = std::fs::read_dir(ipam) {
            left.extend(
                leases
                    .flatten()
                    .map(|lease| lease.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.parse::<std::net::IpAddr>().is_ok())
                    .map(|name| format!("address lease: {name}")),
            );
        }
        left
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("umount").arg(&self.file).status();
        let _ = std::fs::remove_file(&self.file);
    }
}

fn run_ok(cmd: &mut Command) {
    let output = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(output.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&output.stderr));
}
