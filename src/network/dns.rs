//! A pod's name resolution: its `PodSandboxConfig.dns_config` (servers,
//! search domains, options such as `ndots`), as containerd writes it into a
//! Linux pod's `/etc/resolv.conf`, applied by a well-kept stub resolver
//! (hickory-resolver, reading that very text), whose queries leave from the
//! pod's network namespace.
//!
//! A guest's `wasi:sockets/ip-name-lookup` asks [`PodResolver::lookup`];
//! names that are addresses, and `localhost`, are answered without a query,
//! as a pod's `/etc/hosts` would.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, ResolveHosts};
use hickory_resolver::net::runtime::{RuntimeProvider, TokioRuntimeProvider};
use hickory_resolver::{Resolver, system_conf};

use super::netns::{InNetNs, NetNs};
use crate::api;

/// Why a name did not resolve, in the terms of `wasi:sockets`' error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupError {
    /// Not a valid name.
    InvalidName,
    /// The name has no address (NXDOMAIN, or no A/AAAA records).
    NoAddress,
    /// The servers did not answer, or answered with a failure: trying again may help.
    Temporary,
}

/// The resolver of one pod.
pub struct PodResolver {
    resolver: Resolver<PodRuntime>,
}

impl std::fmt::Debug for PodResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PodResolver")
    }
}

impl PodResolver {
    /// The resolver of a pod with `dns` whose queries are sent from `netns`
    /// (none: the daemon's namespace). None when `dns` names no server: the
    /// node's own resolution applies then, as containerd copies the node's
    /// `/etc/resolv.conf` into such a pod.
    ///
    /// Errors: a message for a configuration that cannot be used (a server
    /// that is not an address).
    pub fn new(dns: &api::DnsConfig, netns: Option<Arc<NetNs>>) -> Result<Option<Self>, String> {
        if dns.servers.is_empty() {
            return Ok(None);
        }
        for server in &dns.servers {
            server.parse::<IpAddr>().map_err(|_| format!("DNS server {server:?} is not an IP address"))?;
        }
        let (config, mut options) =
            system_conf::parse_resolv_conf(resolv_conf(dns)).map_err(|e| format!("the pod's DNS config: {e}"))?;
        // Both families, as getaddrinfo with AF_UNSPEC asks; a pod's
        // /etc/hosts is answered in `lookup`, not from the node's.
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.use_hosts_file = ResolveHosts::Never;
        let provider = PodRuntime { inner: TokioRuntimeProvider::default(), netns };
        let resolver = Resolver::builder_with_config(config, provider)
            .with_options(options)
            .build()
            .map_err(|e| format!("the pod's DNS config: {e}"))?;
        Ok(Some(Self { resolver }))
    }

    /// The addresses of `name`, with the pod's search domains and `ndots`
    /// applied as a Linux pod's resolver applies them.
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, LookupError> {
        if let Some(known) = without_query(name) {
            return known;
        }
        match self.resolver.lookup_ip(name).await {
            Ok(found) => Ok(found.iter().map(|ip| ip.to_canonical()).collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Err(LookupError::NoAddress),
            Err(e) => {
                tracing::debug!(%name, error = %e, "a guest's name lookup failed");
                Err(LookupError::Temporary)
            }
        }
    }
}

/// The addresses of `name` as a guest of a pod resolves it: with the pod's
/// `resolver`, or as the node resolves names (`getaddrinfo`) for a pod
/// without a DNS config of its own.
pub async fn lookup(resolver: Option<&PodResolver>, name: &str) -> Result<Vec<IpAddr>, LookupError> {
    match (without_query(name), resolver) {
        (Some(known), _) => known,
        (None, Some(resolver)) => resolver.lookup(name).await,
        (None, None) => match tokio::net::lookup_host((name, 0)).await {
            Ok(found) => Ok(found.map(|address| address.ip().to_canonical()).collect()),
            Err(_) => Err(LookupError::NoAddress),
        },
    }
}

/// The answer to a name that needs no query: an address, `localhost`, or
/// something that is not a name at all.
pub fn without_query(name: &str) -> Option<Result<Vec<IpAddr>, LookupError>> {
    let bare = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(Ok(vec![ip]));
    }
    if name.eq_ignore_ascii_case("localhost") || name.eq_ignore_ascii_case("localhost.") {
        return Some(Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)]));
    }
    let valid = !name.is_empty()
        && name.len() <= 253
        && hickory_resolver::proto::rr::Name::from_utf8(name).is_ok()
        && !name.chars().any(|c| c.is_whitespace() || c.is_control());
    (!valid).then_some(Err(LookupError::InvalidName))
}

/// `dns` as containerd writes it into a pod's `/etc/resolv.conf`.
pub fn resolv_conf(dns: &api::DnsConfig) -> String {
    let mut text = String::new();
    if !dns.searches.is_empty() {
        text.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        text.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    text
}

/// tokio's sockets for the resolver, made inside the pod's namespace.
#[derive(Clone)]
struct PodRuntime {
    inner: TokioRuntimeProvider,
    netns: Option<Arc<NetNs>>,
}

type Made<T> = Pin<Box<dyn Send + Future<Output = io::Result<T>>>>;

impl RuntimeProvider for PodRuntime {
    type Handle = <TokioRuntimeProvider as RuntimeProvider>::Handle;
    type Timer = <TokioRuntimeProvider as RuntimeProvider>::Timer;
    type Udp = <TokioRuntimeProvider as RuntimeProvider>::Udp;
    type Tcp = <TokioRuntimeProvider as RuntimeProvider>::Tcp;

    fn create_handle(&self) -> Self::Handle {
        self.inner.create_handle()
    }

    fn connect_tcp(
        &self,
        server_addr: SocketAddr,
        bind_addr: Option<SocketAddr>,
        timeout: Option<Duration>,
    ) -> Made<Self::Tcp> {
        let connecting = InNetNs::new(self.netns.clone(), self.inner.connect_tcp(server_addr, bind_addr, timeout));
        Box::pin(async move { connecting.await? })
    }

    fn bind_udp(&self, local_addr: SocketAddr, server_addr: SocketAddr) -> Made<Self::Udp> {
        let binding = InNetNs::new(self.netns.clone(), self.inner.bind_udp(local_addr, server_addr));
        Box::pin(async move { binding.await? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pods_dns_config_as_containerd_writes_it() {
        let dns = api::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&dns),
            "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        let (config, options) = system_conf::parse_resolv_conf(resolv_conf(&dns)).unwrap();
        assert_eq!(options.ndots, 5);
        assert_eq!(config.search.len(), 2);
    }

    #[test]
    fn addresses_and_localhost_need_no_query() {
        assert_eq!(without_query("10.1.2.3"), Some(Ok(vec!["10.1.2.3".parse().unwrap()])));
        assert_eq!(without_query("[::1]"), Some(Ok(vec!["::1".parse().unwrap()])));
        assert_eq!(without_query("localhost").unwrap().unwrap().len(), 2);
        assert_eq!(without_query(""), Some(Err(LookupError::InvalidName)));
        assert_eq!(without_query("a b"), Some(Err(LookupError::InvalidName)));
        assert_eq!(without_query("svc.ns.svc.cluster.local"), None);
    }

    #[tokio::test]
    async fn a_pod_without_servers_uses_the_nodes_resolution_and_bad_servers_are_refused() {
        assert!(PodResolver::new(&api::DnsConfig::default(), None).unwrap().is_none());
        let bad = api::DnsConfig { servers: vec!["dns.example".into()], ..Default::default() };
        assert!(PodResolver::new(&bad, None).unwrap_err().contains("dns.example"));
    }
}
