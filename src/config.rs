//! One `Config` for the daemon: defaults, then a TOML file, then flags, then validation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

pub const DEFAULT_SOCKET: &str = "/run/wasmrun/wasmrun.sock";
pub const DEFAULT_ROOT: &str = "/var/lib/wasmrun";
pub const DEFAULT_STATE: &str = "/run/wasmrun";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// What `RuntimeConfig` tells kubelet; wasm guests have no cgroup of their own,
/// so this only has to agree with the node's kubelet configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Systemd,
    Cgroupfs,
}

/// The daemon's whole configuration. Field names are the TOML keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Unix socket serving the CRI.
    pub socket: PathBuf,
    /// Persistent data: the image store and the compiled-code cache.
    pub root: PathBuf,
    /// Runtime files that do not outlive a reboot.
    pub state: PathBuf,
    /// A tracing filter: a level (`info`) or directives (`wasmrun=debug,info`).
    pub log_level: String,
    pub log_format: LogFormat,
    /// Registries (`host` or `host:port`) that may be reached over plain http.
    pub insecure_registries: Vec<String>,
    pub cgroup_driver: CgroupDriver,
    /// The largest manifest a registry may send.
    pub max_manifest_bytes: u64,
    /// The largest blob (config, layer, module) a pull may bring in.
    pub max_blob_bytes: u64,
    /// How long compiling one binary may take, in seconds (wall time of its
    /// compile worker); a binary over it is refused at pull
    /// (ResourceExhausted). 0 means no limit.
    pub compile_timeout_secs: u64,
    /// How much memory compiling one binary may take (the compile worker's
    /// resident memory); a binary over it is refused at pull
    /// (ResourceExhausted). 0 means no limit.
    pub compile_memory_bytes: u64,
    /// How many pulls run at once; more wait their turn (containerd's
    /// `max_concurrent_downloads` is 3). At least 1.
    pub max_concurrent_pulls: usize,
    /// Memory limit (linear memories and tables) of a guest whose container
    /// sets none; 0 means no limit.
    pub default_memory_limit_bytes: u64,
    /// The memory all guests may hold together (linear memories and
    /// tables); a growth past it ends the guest that asks, `OOMKilled`.
    /// Unset: 3/4 of the daemon's cgroup memory limit, or of the node's
    /// memory where that is lower or there is none (see `wasm::budget`);
    /// 0 means no budget.
    pub guest_memory_budget_bytes: Option<u64>,
    /// How many files, directories and sockets one guest instance may hold
    /// open at once (a container's default `nofile`, 1024); past it its
    /// opens fail (EMFILE) and nothing else is touched. 0 means no limit.
    pub guest_max_open_files: usize,
    /// What a container's writable file mounts (kubelet's
    /// `/dev/termination-log`) may hold together, in bytes: their copies
    /// live in the state directory, often a tmpfs. A write past it fails in
    /// the guest (ENOSPC) and at most this much is copied back to the host
    /// file (see `wasm::file_mounts`). 0 means no cap.
    pub file_mount_max_bytes: u64,
    /// A docker `config.json` whose `auths` give default registry credentials,
    /// for pulls that bring none (no imagePullSecrets).
    pub auth_file: Option<PathBuf>,
    /// Settings of one registry, by `host[:port]`: `[registries."host:port"]`.
    pub registries: BTreeMap<String, RegistryConfig>,
    /// A directory in containerd's hosts layout (`<dir>/<host[:port]>/hosts.toml`,
    /// `<dir>/_default/hosts.toml`): mirrors, `server`, capabilities, `ca`,
    /// `skip_verify`, read at every pull. Where it has a file for a registry,
    /// that file lists the registry's sources instead of `[registries]` mirrors
    /// (see `images::hosts`). Usually the `config_path` of containerd's CRI
    /// registry config, so both runtimes of a node pull the same way.
    pub registry_config_path: Option<PathBuf>,
    /// The CRI socket of the runtime that serves every pod that is not wasm
    /// (`unix:///run/containerd/containerd.sock`); none by default.
    pub backing_endpoint: Option<String>,
    /// How long connecting to the backing runtime may take, in seconds.
    pub backing_connect_timeout_secs: u64,
    /// Runtime handlers that mean a wasm pod.
    pub wasm_handlers: Vec<String>,
    /// After SIGTERM, how long calls in flight (and clients acknowledging
    /// the shutdown) may take before the daemon stops anyway, in seconds.
    pub shutdown_grace_secs: u64,
    /// The CNI network configuration directory: its first `.conf`,
    /// `.conflist` or `.json` file in lexical order is the pods' network
    /// (containerd's `conf_dir`).
    pub cni_conf_dir: PathBuf,
    /// Where CNI plugins are looked for, in order (containerd's `bin_dirs`).
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Network namespaces made ahead of the pods that will take them, so
    /// that RunPodSandbox does not wait for one to be made; 0: none.
    pub netns_pool_size: usize,
    /// How many requests a served `wasi:http` component answers at once
    /// (each an instance); a request over it gets a 503.
    pub http_max_concurrent_requests: usize,
    /// How many instances of served components may run at once in the
    /// whole daemon: the slots of the pooling allocator that serves them
    /// (each slot reserves address space, about 8 GiB, not memory); a
    /// request that finds none free gets a 503.
    pub http_instance_pool_size: usize,
    /// The address the streaming server (Exec, Attach, PortForward URLs)
    /// listens on: an IP address (containerd's `stream_server_address`).
    /// Only kubelet (or crictl) on this node needs to reach it, hence loopback.
    pub stream_server_address: String,
    /// Its port; 0: a free one, chosen at start (containerd's `stream_server_port`).
    pub stream_server_port: u16,
}

/// How to reach one registry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Plain http (as if listed in `insecure_registries`).
    pub insecure: bool,
    /// A PEM file of CA certificates to trust for this registry, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Registries (`host[:port]`) tried in order before this one.
    pub mirrors: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: DEFAULT_SOCKET.into(),
            root: DEFAULT_ROOT.into(),
            state: DEFAULT_STATE.into(),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            insecure_registries: Vec::new(),
            cgroup_driver: CgroupDriver::Systemd,
            max_manifest_bytes: 4 << 20,
            max_blob_bytes: 2 << 30,
            compile_timeout_secs: 60,
            compile_memory_bytes: 2 << 30,
            max_concurrent_pulls: 3,
            default_memory_limit_bytes: 1 << 30,
            guest_memory_budget_bytes: None,
            guest_max_open_files: crate::wasm::DEFAULT_MAX_OPEN_FILES,
            file_mount_max_bytes: crate::wasm::GuestDefaults::default().file_mount_max_bytes,
            auth_file: None,
            registries: BTreeMap::new(),
            registry_config_path: None,
            backing_endpoint: None,
            backing_connect_timeout_secs: 5,
            wasm_handlers: vec!["wasmrun".into()],
            shutdown_grace_secs: 10,
            cni_conf_dir: "/etc/cni/net.d".into(),
            cni_bin_dirs: vec!["/opt/cni/bin".into()],
            netns_pool_size: 4,
            http_max_concurrent_requests: 1000,
            http_instance_pool_size: 1000,
            stream_server_address: "127.0.0.1".into(),
            stream_server_port: 0,
        }
    }
}

/// Command-line flags; each one overrides the same key of the config file.
#[derive(Debug, Default, Parser)]
#[command(name = "wasmrun", version, about = "A Kubernetes CRI runtime for WebAssembly")]
pub struct Flags {
    /// TOML config file; flags override its keys.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Unix socket to serve the CRI on [default: /run/wasmrun/wasmrun.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Directory for persistent data [default: /var/lib/wasmrun].
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Directory for runtime files [default: /run/wasmrun].
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Log filter: error, warn, info, debug, trace, or tracing directives [default: info].
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log line format [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// A registry (HOST or HOST:PORT) reachable over plain http; repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registries: Vec<String>,
    /// A docker config.json with default registry credentials.
    #[arg(long, value_name = "FILE")]
    pub auth_file: Option<PathBuf>,
    /// A registry hosts directory in containerd's layout (<DIR>/<host[:port]>/hosts.toml).
    #[arg(long, value_name = "DIR")]
    pub registry_config_path: Option<PathBuf>,
    /// CRI socket of the runtime for pods that are not wasm (unix:///run/containerd/containerd.sock).
    #[arg(long, value_name = "ENDPOINT")]
    pub backing_endpoint: Option<String>,
    /// Seconds compiling one binary may take; over it the pull is refused; 0: no limit [default: 60].
    #[arg(long, value_name = "SECS")]
    pub compile_timeout_secs: Option<u64>,
    /// Memory compiling one binary may take; over it the pull is refused; 0: no limit [default: 2 GiB].
    #[arg(long, value_name = "BYTES")]
    pub compile_memory_bytes: Option<u64>,
    /// Pulls that run at once; more wait their turn [default: 3].
    #[arg(long, value_name = "N")]
    pub max_concurrent_pulls: Option<usize>,
    /// Memory limit of a guest whose container sets none; 0 means none [default: 1 GiB].
    #[arg(long, value_name = "BYTES")]
    pub default_memory_limit_bytes: Option<u64>,
    /// Memory all guests may hold together; 0 means none [default: 3/4 of
    /// the daemon's cgroup memory limit or of the node's memory].
    #[arg(long, value_name = "BYTES")]
    pub guest_memory_budget_bytes: Option<u64>,
    /// Cgroup driver reported to kubelet [default: systemd].
    #[arg(long, value_enum)]
    pub cgroup_driver: Option<CgroupDriver>,
    /// After SIGTERM, seconds that calls in flight may take before wasmrun stops anyway [default: 10].
    #[arg(long, value_name = "SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// CNI network configuration directory [default: /etc/cni/net.d].
    #[arg(long, value_name = "DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    /// A directory of CNI plugins; repeatable, searched in order; replaces the
    /// config's list [default: /opt/cni/bin].
    #[arg(long = "cni-bin-dir", value_name = "DIR")]
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Requests a served wasi:http container answers at once; more get a 503 [default: 1000].
    #[arg(long, value_name = "N")]
    pub http_max_concurrent_requests: Option<usize>,
    /// Files, directories and sockets one guest may hold open; 0: no limit [default: 1024].
    #[arg(long, value_name = "N")]
    pub guest_max_open_files: Option<usize>,
    /// Bytes a container's writable file mounts may hold together; 0: no cap [default: 1 MiB].
    #[arg(long, value_name = "BYTES")]
    pub file_mount_max_bytes: Option<u64>,
    /// Instances of served components the whole daemon runs at once; more get a 503 [default: 1000].
    #[arg(long, value_name = "N")]
    pub http_instance_pool_size: Option<usize>,
    /// The IP address the streaming server (exec, attach, port-forward) listens on [default: 127.0.0.1].
    #[arg(long, value_name = "IP")]
    pub stream_server_address: Option<String>,
    /// The streaming server's port; 0 picks a free one [default: 0].
    #[arg(long, value_name = "PORT")]
    pub stream_server_port: Option<u16>,
}

impl Config {
    /// Builds the configuration from flags (and the file they name), validated.
    pub fn load(flags: Flags) -> anyhow::Result<Self> {
        let mut config = match &flags.config {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        config.apply(flags);
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }

    fn apply(&mut self, flags: Flags) {
        if let Some(socket) = flags.socket {
            self.socket = socket;
        }
        if let Some(root) = flags.root {
            self.root = root;
        }
        if let Some(state) = flags.state {
            self.state = state;
        }
        if let Some(level) = flags.log_level {
            self.log_level = level;
        }
        if let Some(format) = flags.log_format {
            self.log_format = format;
        }
        if let Some(endpoint) = flags.backing_endpoint {
            self.backing_endpoint = Some(endpoint);
        }
        if let Some(file) = flags.auth_file {
            self.auth_file = Some(file);
        }
        if let Some(dir) = flags.registry_config_path {
            self.registry_config_path = Some(dir);
        }
        if let Some(bytes) = flags.default_memory_limit_bytes {
            self.default_memory_limit_bytes = bytes;
        }
        if let Some(secs) = flags.compile_timeout_secs {
            self.compile_timeout_secs = secs;
        }
        if let Some(bytes) = flags.compile_memory_bytes {
            self.compile_memory_bytes = bytes;
        }
        if let Some(pulls) = flags.max_concurrent_pulls {
            self.max_concurrent_pulls = pulls;
        }
        if let Some(bytes) = flags.guest_memory_budget_bytes {
            self.guest_memory_budget_bytes = Some(bytes);
        }
        if let Some(driver) = flags.cgroup_driver {
            self.cgroup_driver = driver;
        }
        if let Some(secs) = flags.shutdown_grace_secs {
            self.shutdown_grace_secs = secs;
        }
        if let Some(dir) = flags.cni_conf_dir {
            self.cni_conf_dir = dir;
        }
        if let Some(max) = flags.http_max_concurrent_requests {
            self.http_max_concurrent_requests = max;
        }
        if let Some(max) = flags.guest_max_open_files {
            self.guest_max_open_files = max;
        }
        if let Some(max) = flags.file_mount_max_bytes {
            self.file_mount_max_bytes = max;
        }
        if let Some(slots) = flags.http_instance_pool_size {
            self.http_instance_pool_size = slots;
        }
        if let Some(address) = flags.stream_server_address {
            self.stream_server_address = address;
        }
        if let Some(port) = flags.stream_server_port {
            self.stream_server_port = port;
        }
        // Plugin directories are a search path, not an allow-list: flags replace it.
        if !flags.cni_bin_dirs.is_empty() {
            self.cni_bin_dirs = flags.cni_bin_dirs;
        }
        // Flags add to the file's list: both are allow-lists.
        for registry in flags.insecure_registries {
            if !self.insecure_registries.contains(&registry) {
                self.insecure_registries.push(registry);
            }
        }
    }

    /// The tracing filter for `log_level`. A bare level applies to wasmrun's own
    /// events; the libraries below it (h2, hyper, wasmtime) stay at `warn`
    /// unless directives name them.
    pub fn log_filter(&self) -> String {
        let bare_level = ["error", "warn", "info", "debug", "trace", "off"].contains(&self.log_level.as_str());
        if bare_level { format!("warn,wasmrun={}", self.log_level) } else { self.log_level.clone() }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        for (key, path) in [("socket", &self.socket), ("root", &self.root), ("state", &self.state)] {
            if path.as_os_str().is_empty() {
                bail!("config: `{key}` must not be empty");
            }
        }
        if self.socket.file_name().is_none() {
            bail!("config: `socket` ({}) must name a file", self.socket.display());
        }
        if self.max_concurrent_pulls == 0 {
            bail!("config: `max_concurrent_pulls` must be at least 1");
        }
        // sun_path holds 108 bytes including the terminating NUL.
        if self.socket.as_os_str().len() > 107 {
            bail!(
                "config: `socket` ({}) is longer than the 107 bytes a unix socket path may have",
                self.socket.display()
            );
        }
        if let Some(file) = &self.auth_file
            && !file.is_file()
        {
            bail!("config: `auth_file` {} is not a readable file", file.display());
        }
        if let Some(dir) = &self.registry_config_path {
            if !dir.is_dir() {
                bail!("config: `registry_config_path` {} is not a directory", dir.display());
            }
            crate::images::hosts::check_dir(dir).map_err(|e| anyhow::anyhow!("config: `registry_config_path`: {e}"))?;
        }
        if let Some(endpoint) = &self.backing_endpoint
            && !Path::new(endpoint.strip_prefix("unix://").unwrap_or(endpoint)).is_absolute()
        {
            bail!("config: `backing_endpoint` {endpoint:?} must be unix:///absolute/path or /absolute/path");
        }
        if self.backing_connect_timeout_secs == 0 {
            bail!("config: `backing_connect_timeout_secs` must be above 0");
        }
        if self.wasm_handlers.iter().any(String::is_empty) {
            bail!(
                "config: `wasm_handlers` must not contain an empty name (an empty handler is the backing runtime's default)"
            );
        }
        if !self.cni_conf_dir.is_absolute() {
            bail!("config: `cni_conf_dir` {} must be an absolute path", self.cni_conf_dir.display());
        }
        if self.cni_bin_dirs.is_empty() || self.cni_bin_dirs.iter().any(|dir| !dir.is_absolute()) {
            bail!("config: `cni_bin_dirs` must list at least one directory, each an absolute path");
        }
        if self.netns_pool_size > 1024 {
            bail!("config: `netns_pool_size` must be at most 1024");
        }
        if self.http_max_concurrent_requests == 0
            || self.http_max_concurrent_requests > tokio::sync::Semaphore::MAX_PERMITS
        {
            bail!(
                "config: `http_max_concurrent_requests` (--http-max-concurrent-requests) must be between 1 and {}",
                tokio::sync::Semaphore::MAX_PERMITS
            );
        }
        if !(1..=100_000).contains(&self.http_instance_pool_size) {
            bail!("config: `http_instance_pool_size` (--http-instance-pool-size) must be between 1 and 100000");
        }
        if self.stream_server_address.parse::<std::net::IpAddr>().is_err() {
            bail!(
                "config: `stream_server_address` (--stream-server-address) {:?} must be an IP address",
                self.stream_server_address
            );
        }
        if self.max_manifest_bytes == 0 || self.max_blob_bytes == 0 {
            bail!("config: `max_manifest_bytes` and `max_blob_bytes` must be above 0");
        }
        tracing_subscriber::EnvFilter::try_new(self.log_filter())
            .with_context(|| format!("config: `log_level` {:?} is not a valid filter", self.log_level))?;
        for (host, registry) in &self.registries {
            validate_registry_host(host).with_context(|| format!("config: registries.{host:?}"))?;
            for mirror in &registry.mirrors {
                validate_registry_host(mirror)
                    .with_context(|| format!("config: registries.{host:?}: mirror {mirror:?}"))?;
            }
            if let Some(ca) = &registry.ca_file
                && !ca.is_file()
            {
                bail!("config: registries.{host:?}: ca_file {} is not a readable file", ca.display());
            }
        }
        for registry in &self.insecure_registries {
            validate_registry_host(registry).with_context(|| format!("config: insecure registry {registry:?}"))?;
        }
        Ok(())
    }
}

/// A registry is named as `host` or `host:port`, the way image references name it.
fn validate_registry_host(registry: &str) -> anyhow::Result<()> {
    if registry.is_empty() {
        bail!("is empty");
    }
    if registry.contains("://") || registry.contains('/') {
        bail!("must be HOST or HOST:PORT, without a scheme or a path");
    }
    if let Some((host, port)) = registry.rsplit_once(':')
        && !host.ends_with(']')
        && !host.contains(':')
    {
        if host.is_empty() {
            bail!("has no host");
        }
        port.parse::<u16>().map_err(|_| anyhow::anyhow!("port {port:?} is not a number from 0 to 65535"))?;
    }
    if registry.chars().any(char::is_whitespace) {
        bail!("must not contain white space");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_lists_merge() {
        let mut config: Config = toml::from_str(
            r#"
            socket = "/tmp/a.sock"
            log_level = "warn"
            insecure_registries = ["127.0.0.1:5000"]
            "#,
        )
        .unwrap();
        config.apply(Flags {
            socket: Some("/tmp/b.sock".into()),
            insecure_registries: vec!["localhost:5001".into()],
            ..Flags::default()
        });
        assert_eq!(config.socket, PathBuf::from("/tmp/b.sock"));
        assert_eq!(config.log_level, "warn");
        assert_eq!(config.root, PathBuf::from(DEFAULT_ROOT));
        assert_eq!(config.insecure_registries, ["127.0.0.1:5000", "localhost:5001"]);
        config.validate().unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let err = toml::from_str::<Config>("sockett = \"/x\"").unwrap_err();
        assert!(err.to_string().contains("sockett"), "{err}");
        let err = toml::from_str::<Config>("log_format = \"xml\"").unwrap_err();
        assert!(err.to_string().contains("xml"), "{err}");

        for bad in ["http://r:5000", "r:5000/path", "r:99999", ":5000", ""] {
            let config = Config { insecure_registries: vec![bad.into()], ..Config::default() };
            assert!(config.validate().is_err(), "{bad:?} should be refused");
        }
        let config = Config { log_level: "loud=?".into(), ..Config::default() };
        assert!(config.validate().is_err());
        let config = Config { socket: format!("/tmp/{}", "s".repeat(120)).into(), ..Config::default() };
        assert!(config.validate().is_err());
    }

    #[test]
    fn the_example_config_shows_the_real_defaults() {
        let example: Config = toml::from_str(include_str!("../deploy/config.toml")).unwrap();
        assert_eq!(example, Config::default());
    }

    #[test]
    fn a_bare_level_applies_to_wasmrun_only() {
        let config = Config { log_level: "debug".into(), ..Config::default() };
        assert_eq!(config.log_filter(), "warn,wasmrun=debug");
        let config = Config { log_level: "wasmrun=trace,h2=info".into(), ..Config::default() };
        assert_eq!(config.log_filter(), "wasmrun=trace,h2=info");
    }

    #[test]
    fn the_registry_hosts_directory_is_checked_at_start() {
        let dir = std::env::temp_dir().join(format!("wasmrun-config-hosts-{}", rand::random::<u64>()));
        let config = Config { registry_config_path: Some(dir.clone()), ..Config::default() };
        assert!(config.validate().is_err(), "a missing directory");
        std::fs::create_dir_all(dir.join("r.io")).unwrap();
        std::fs::write(dir.join("r.io/hosts.toml"), "[host.\"http://m:5000\"]\ncapabilities = [\"pull\"]\n").unwrap();
        config.validate().unwrap();
        std::fs::write(dir.join("r.io/hosts.toml"), "[host.\"m\"]\ncapabilities = [\"teleport\"]\n").unwrap();
        let err = config.validate().unwrap_err();
        assert!(format!("{err:#}").contains("teleport"), "{err:#}");
        let mut flagged = Config::default();
        flagged.apply(Flags { registry_config_path: Some(dir.clone()), ..Flags::default() });
        assert_eq!(flagged.registry_config_path, Some(dir.clone()));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn good_registry_names_pass() {
        for good in ["127.0.0.1:5000", "localhost", "[::1]:5000", "registry.example.com"] {
            validate_registry_host(good).unwrap();
        }
    }
}
