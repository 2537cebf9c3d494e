//! Pod networking: a network namespace per pod, set up and torn down by the
//! node's CNI plugins with containerd's contract, and the namespaces guests
//! make their sockets in.
//!
//! - `netns`: namespaces made and pinned (`<state>/netns/<pod id>`), opened by
//!   path whoever made them, entered around a guest's socket creation.
//! - `cni`: the libcni contract: configuration loading, plugin execution,
//!   results.
//! - this module: [`Network`], what a pod's life asks of them: whether the
//!   network is ready (Status), [`Network::prepare`] and [`Network::attach`]
//!   for RunPodSandbox, [`Network::detach`] (CNI DEL) for StopPodSandbox,
//!   [`Network::release`] (unpin) for RemovePodSandbox. An [`Attachment`] is
//!   all a pod's teardown needs, kept in the pod's record, so that it runs
//!   the same after a daemon restart.
//! - `dns`: a pod's name resolution, from its DNS config, from inside its
//!   namespace.

pub mod cni;
pub mod dns;
pub mod netns;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

pub use dns::{LookupError, PodResolver};
pub use netns::{InNetNs, NetNs};

use crate::api;
use crate::error::{Error, Result};

/// The interface name a pod's network gets inside its namespace, as containerd names it.
pub const POD_INTERFACE: &str = "eth0";

/// The node's CNI setup, as the config names it.
#[derive(Debug)]
pub struct Network {
    conf_dir: PathBuf,
    bin_dirs: Vec<PathBuf>,
    /// `<state>/netns`: where pods' namespaces are pinned.
    netns_dir: PathBuf,
    /// Namespaces made ahead (`<state>/netns-pool`).
    pool: Arc<netns::Pool>,
}

/// What a pod's network is: everything its CNI DEL and unpinning need.
/// Written in the pod's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    /// Where the pod's namespace is pinned (`CNI_NETNS`).
    pub netns: PathBuf,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The configuration ADD ran with.
    pub network: cni::ConfigList,
    /// `CNI_ARGS` pairs.
    pub args: Vec<(String, String)>,
    /// Capability arguments (`runtimeConfig`) by capability name.
    pub capability_args: Map<String, Value>,
    /// The result of ADD, once it succeeded (libcni's cached result).
    pub result: Option<Value>,
}

/// The network of a mixed pod's sandbox, which the backing runtime made and
/// owns (namespace, CNI): wasm guests of the pod join it, nothing of it is
/// set up or torn down by wasmrun. Written in the pod's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Joined {
    /// The sandbox's namespace file (containerd's pinned path, or
    /// `/proc/<pid>/ns/net` of its pause process); none: the node's network
    /// (a hostNetwork pod).
    pub netns: Option<PathBuf>,
    /// The sandbox's addresses as the backing runtime reported them when it
    /// was joined (`PodSandboxStatus.network`), first the primary one; what
    /// the wasm side's events say of the pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
}

/// What a pod has of its network while the daemon runs.
#[derive(Debug, Default)]
pub struct PodNetwork {
    /// Set up by CNI; none for a hostNetwork pod.
    pub attachment: Option<Attachment>,
    /// The pod's namespace, open; none for a hostNetwork pod, or when it could
    /// not be opened again after a restart (a reboot). Its guests' sockets
    /// are made in it.
    pub netns: Option<Arc<NetNs>>,
    /// The pod's name resolution, from its DNS config; none: the node's.
    pub resolver: Option<Arc<PodResolver>>,
}

impl PodNetwork {
    /// A pod's network from its parts; a DNS config that cannot be used is
    /// logged, and leaves the pod with the node's resolution.
    pub fn new(
        pod_id: &str,
        config: &api::PodSandboxConfig,
        attachment: Option<Attachment>,
        netns: Option<Arc<NetNs>>,
    ) -> Self {
        let resolver = config.dns_config.as_ref().and_then(|dns| match PodResolver::new(dns, netns.clone()) {
            Ok(resolver) => resolver.map(Arc::new),
            Err(e) => {
                tracing::warn!(pod = %pod_id, error = %e, "the pod's DNS config cannot be used; its guests resolve names as the node does");
                None
            }
        });
        Self { attachment, netns, resolver }
    }
}

impl Attachment {
    /// The pod's addresses from the ADD result, IPv4 first; none before ADD.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.result.as_ref().map(|result| cni::pod_ips(result, &self.ifname)).unwrap_or_default()
    }
}

impl Network {
    /// CNI configuration read from `conf_dir`, plugins looked for in
    /// `bin_dirs`, namespaces pinned under `<state_dir>/netns`, up to
    /// `pool_size` of them made ahead under `<state_dir>/netns-pool` (emptied
    /// now, filled in the background once a runtime runs: see
    /// [`Network::fill_pool`]). Blocking.
    ///
    /// Errors: Internal when the pool's directory or the pins' directory
    /// cannot be made, or the pool emptied.
    pub fn new(conf_dir: PathBuf, bin_dirs: Vec<PathBuf>, state_dir: &Path, pool_size: usize) -> Result<Self> {
        let pool_dir = state_dir.join("netns-pool");
        let pool = netns::Pool::new(pool_dir.clone(), pool_size)
            .map_err(|e| Error::internal(format!("emptying the network namespace pool {}", pool_dir.display()), e))?;
        let netns_dir = state_dir.join("netns");
        std::fs::create_dir_all(&netns_dir)
            .map_err(|e| Error::internal(format!("creating {}", netns_dir.display()), e))?;
        Ok(Self { conf_dir, bin_dirs, netns_dir, pool: Arc::new(pool) })
    }

    /// Starts making namespaces ahead of the pods, when there is a CNI
    /// configuration (a node whose pods all use the host's network needs
    /// none). Call it from a runtime.
    pub async fn fill_pool(&self) {
        if self.ready().await.is_ok() {
            self.pool.refill();
        }
    }

    /// Unpins the namespaces made ahead (at shutdown: a stopped daemon holds none).
    pub async fn empty_pool(&self) {
        let pool = self.pool.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || pool.empty()).await {
            tracing::warn!(error = %e, "cannot empty the network namespace pool");
        }
    }

    /// Whether pods can get a network: a usable configuration is in the
    /// directory now (read at each call, so one added or changed later counts
    /// at once, as containerd's watch of the directory does).
    ///
    /// Errors: why not, for the reason of `NetworkReady=false`.
    pub async fn ready(&self) -> std::result::Result<(), String> {
        let conf_dir = self.conf_dir.clone();
        tokio::task::spawn_blocking(move || cni::load(&conf_dir).map(drop))
            .await
            .unwrap_or_else(|e| Err(format!("cannot read the CNI config: {e}")))
    }

    /// The attachment a pod `pod_id` with `config` will get, before anything
    /// is made: the configuration loaded now, the `CNI_ARGS` and the
    /// capability arguments containerd passes.
    ///
    /// Errors: FailedPrecondition when there is no usable CNI configuration
    /// (as containerd: "cni plugin not initialized"); InvalidArgument for a
    /// bandwidth annotation that is not a quantity.
    pub async fn prepare(&self, pod_id: &str, config: &api::PodSandboxConfig) -> Result<Attachment> {
        let conf_dir = self.conf_dir.clone();
        let network = tokio::task::spawn_blocking(move || cni::load(&conf_dir))
            .await
            .map_err(|e| Error::internal("loading the CNI config", e))?
            .map_err(|why| {
                Error::FailedPrecondition(format!("cannot set up the pod's network: cni plugin not initialized: {why}"))
            })?;
        Ok(Attachment {
            netns: self.netns_dir.join(pod_id),
            ifname: POD_INTERFACE.into(),
            network,
            args: cni_args(pod_id, config),
            capability_args: capability_args(config)?,
            result: None,
        })
    }

    /// Makes the pod's namespace (loopback up; one made ahead when the pool
    /// has one), pins it, and runs CNI ADD on it; records the result in
    /// `attachment`. Returns the open namespace, and how long ADD took.
    ///
    /// Errors: Internal when the namespace cannot be made; FailedPrecondition
    /// naming the plugin and its error output when ADD fails. Either way
    /// nothing is left: what ADD did is deleted (DEL) and the namespace is
    /// removed.
    pub async fn attach(&self, pod_id: &str, attachment: &mut Attachment) -> Result<(NetNs, Duration)> {
        self.pool.take(attachment.netns.clone()).await.map_err(|e| {
            Error::internal(
                format!("making the network namespace of pod sandbox {pod_id} at {}", attachment.netns.display()),
                e,
            )
        })?;
        let adding = Instant::now();
        let added = async {
            let netns = NetNs::open(&attachment.netns)
                .map_err(|e| Error::internal(format!("opening the network namespace of pod sandbox {pod_id}"), e))?;
            let result =
                cni::add(&attachment.network, &self.invocation(pod_id, attachment, &attachment.netns)).await.map_err(
                    |e| Error::FailedPrecondition(format!("cannot set up the network of pod sandbox {pod_id}: {e}")),
                )?;
            Ok::<_, Error>((netns, result))
        }
        .await;
        match added {
            Ok((netns, result)) => {
                attachment.result = Some(result);
                Ok((netns, adding.elapsed()))
            }
            Err(error) => {
                // Whatever ADD did before it failed: DEL is made to undo a partial ADD.
                if let Err(e) =
                    cni::del(&attachment.network, &self.invocation(pod_id, attachment, &attachment.netns), None).await
                {
                    tracing::warn!(pod = %pod_id, error = %e, "cannot undo a failed network setup");
                }
                if let Err(e) = self.release(attachment).await {
                    tracing::warn!(pod = %pod_id, error = %e, "cannot remove the network namespace of a pod that failed to start");
                }
                Err(error)
            }
        }
    }

    /// Runs CNI DEL for the pod, with the configuration and result of its ADD.
    /// A namespace that is gone (a reboot) is passed as an empty `CNI_NETNS`,
    /// as containerd does; plugins still release what they hold (addresses).
    ///
    /// Errors: FailedPrecondition naming the plugin and its error output.
    pub async fn detach(&self, pod_id: &str, attachment: &Attachment) -> Result<()> {
        let pinned = tokio::fs::metadata(&attachment.netns).await.is_ok();
        let netns = if pinned { attachment.netns.as_path() } else { Path::new("") };
        cni::del(&attachment.network, &self.invocation(pod_id, attachment, netns), attachment.result.as_ref())
            .await
            .map_err(|e| {
                Error::FailedPrecondition(format!("cannot tear down the network of pod sandbox {pod_id}: {e}"))
            })
    }

    /// Unpins the pod's namespace and removes its file; fine when it is gone.
    ///
    /// Errors: Internal when it cannot be unmounted or removed.
    pub async fn release(&self, attachment: &Attachment) -> Result<()> {
        let path = attachment.netns.clone();
        tokio::task::spawn_blocking(move || {
            netns::remove(&path)
                .map_err(|e| Error::internal(format!("removing the network namespace {}", path.display()), e))
        })
        .await
        .map_err(|e| Error::internal("removing a network namespace", e))?
    }

    fn invocation<'a>(&'a self, pod_id: &'a str, attachment: &'a Attachment, netns: &'a Path) -> cni::Invocation<'a> {
        cni::Invocation {
            bin_dirs: &self.bin_dirs,
            container_id: pod_id,
            netns,
            ifname: &attachment.ifname,
            args: &attachment.args,
            capability_args: &attachment.capability_args,
        }
    }
}

/// Whether a pod gets a network namespace of its own: unless its
/// `linux.security_context.namespace_options.network` is NODE
/// (hostNetwork). POD, the default, and anything else do.
pub fn has_own_namespace(config: &api::PodSandboxConfig) -> bool {
    let network = config
        .linux
        .as_ref()
        .and_then(|linux| linux.security_context.as_ref())
        .and_then(|context| context.namespace_options.as_ref())
        .map(|options| options.network);
    network != Some(api::NamespaceMode::Node as i32)
}

/// `CNI_ARGS` as containerd sets them: `IgnoreUnknown=1` and the pod's identity.
fn cni_args(pod_id: &str, config: &api::PodSandboxConfig) -> Vec<(String, String)> {
    let metadata = config.metadata.clone().unwrap_or_default();
    [
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", metadata.namespace.as_str()),
        ("K8S_POD_NAME", metadata.name.as_str()),
        ("K8S_POD_INFRA_CONTAINER_ID", pod_id),
        ("K8S_POD_UID", metadata.uid.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The capability arguments containerd gives a pod's plugins: `portMappings`
/// (those with a host port; an empty list when none), `bandwidth` (from the
/// `kubernetes.io/ingress-bandwidth` and `egress-bandwidth` annotations, in
/// bits per second, burst unlimited), `dns` (from the pod's DNS config), and
/// the pod's annotations (`io.kubernetes.cri.pod-annotations`).
///
/// Errors: InvalidArgument for a bandwidth annotation that is not a quantity.
fn capability_args(config: &api::PodSandboxConfig) -> Result<Map<String, Value>> {
    let mut args = Map::new();
    let mappings: Vec<Value> = config
        .port_mappings
        .iter()
        .filter(|mapping| mapping.host_port > 0)
        .map(|mapping| {
            let protocol = match api::Protocol::try_from(mapping.protocol) {
                Ok(api::Protocol::Udp) => "udp",
                Ok(api::Protocol::Sctp) => "sctp",
                _ => "tcp",
            };
            json!({
                "hostPort": mapping.host_port,
                "containerPort": mapping.container_port,
                "protocol": protocol,
                "hostIP": mapping.host_ip,
            })
        })
        .collect();
    // Always, empty too, as containerd's go-cni sets it.
    args.insert("portMappings".into(), Value::Array(mappings));
    let mut bandwidth = Map::new();
    for (annotation, rate, burst) in [
        ("kubernetes.io/ingress-bandwidth", "ingressRate", "ingressBurst"),
        ("kubernetes.io/egress-bandwidth", "egressRate", "egressBurst"),
    ] {
        if let Some(text) = config.annotations.get(annotation) {
            let bits = parse_quantity(text).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "annotation {annotation}: {} is not a quantity",
                    crate::error::quoted(text)
                ))
            })?;
            bandwidth.insert(rate.into(), json!(bits));
            // containerd's: no burst limit.
            bandwidth.insert(burst.into(), json!(u32::MAX));
        }
    }
    if !bandwidth.is_empty() {
        args.insert("bandwidth".into(), Value::Object(bandwidth));
    }
    if let Some(dns) = &config.dns_config {
        args.insert("dns".into(), json!({"servers": dns.servers, "searches": dns.searches, "options": dns.options}));
    }
    args.insert("io.kubernetes.cri.pod-annotations".into(), json!(config.annotations));
    Ok(args)
}

/// A Kubernetes quantity (`10M`, `1Gi`, `500k`, `1e6`, `2.5M`) as a whole
/// number, rounded up as `Quantity.Value()` rounds; none if it is not one.
fn parse_quantity(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent if exponent.starts_with(['e', 'E']) => 10f64.powi(exponent[1..].parse().ok()?),
        _ => return None,
    };
    let value = (number * factor).ceil();
    (value.is_finite() && value >= 0.0 && value <= u64::MAX as f64).then_some(value as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_as_kubernetes_reads_them() {
        for (text, value) in [
            ("10M", 10_000_000),
            ("1Gi", 1 << 30),
            ("500k", 500_000),
            ("1e6", 1_000_000),
            ("2.5M", 2_500_000),
            ("7", 7),
        ] {
            assert_eq!(parse_quantity(text), Some(value), "{text}");
        }
        for bad in ["", "M", "10X", "-1", "1.2.3"] {
            assert_eq!(parse_quantity(bad), None, "{bad}");
        }
    }

    #[test]
    fn capability_args_as_containerd_passes_them() {
        let config = api::PodSandboxConfig {
            port_mappings: vec![
                api::PortMapping {
                    protocol: api::Protocol::Udp as i32,
                    container_port: 53,
                    host_port: 5353,
                    host_ip: String::new(),
                },
                api::PortMapping {
                    protocol: api::Protocol::Tcp as i32,
                    container_port: 80,
                    host_port: 0,
                    host_ip: String::new(),
                },
            ],
            annotations: [("kubernetes.io/ingress-bandwidth".to_owned(), "10M".to_owned())].into(),
            dns_config: Some(api::DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["ns.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            ..Default::default()
        };
        let args = capability_args(&config).unwrap();
        assert_eq!(args["portMappings"], json!([{"hostPort":5353,"containerPort":53,"protocol":"udp","hostIP":""}]));
        assert_eq!(args["bandwidth"], json!({"ingressRate":10_000_000u64,"ingressBurst":u32::MAX}));
        assert_eq!(args["dns"]["searches"], json!(["ns.svc.cluster.local"]));
        assert_eq!(capability_args(&api::PodSandboxConfig::default()).unwrap()["portMappings"], json!([]));
        let bad = api::PodSandboxConfig {
            annotations: [("kubernetes.io/egress-bandwidth".to_owned(), "fast".to_owned())].into(),
            ..Default::default()
        };
        assert!(matches!(capability_args(&bad), Err(Error::InvalidArgument(m)) if m.contains("egress-bandwidth")));
    }

    #[test]
    fn only_host_network_pods_share_the_daemons_namespace() {
        let with = |mode: Option<api::NamespaceMode>| api::PodSandboxConfig {
            linux: Some(api::LinuxPodSandboxConfig {
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: mode
                        .map(|mode| api::NamespaceOption { network: mode as i32, ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(has_own_namespace(&api::PodSandboxConfig::default()));
        assert!(has_own_namespace(&with(None)));
        assert!(has_own_namespace(&with(Some(api::NamespaceMode::Pod))));
        assert!(!has_own_namespace(&with(Some(api::NamespaceMode::Node))));
    }
}
