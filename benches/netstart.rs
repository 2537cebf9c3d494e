//! Section `net-start`: pod start with pod networking (a network namespace
//! per pod, set up by the CNI plugins), on wasmrun and on containerd + runc
//! with the same bridge configuration, beside what the plugins take alone;
//! and the daemon's memory per networked pod.
//!
//! Everything runs inside a network namespace the section makes (the e2e
//! harness's `TestNet`), so the bridge and the pod addresses exist only
//! there: the wasmrun daemon (release build), a registry serving the shared
//! test registry's storage, and, for the peer, containerd 1.6 + runc. The
//! network is Debian's plugins from /usr/lib/cni: `bridge` (a gateway
//! bridge, `host-local` addresses) then `portmap`, in one `.conflist`.
//!
//! - wasmrun, pod network / host network: starts as section `start` times
//!   them (RunPodSandbox → CreateContainer → StartContainer → the `hello`
//!   guest's first log line on disk), the pods with `network: POD`, then
//!   the same daemon with `network: NODE`.
//! - CNI plugins alone: the same configuration list run by the daemon's own
//!   CNI code (`wasmrun::cni`), from a thread inside the namespace, on a
//!   namespace made by the daemon's own code (`wasmrun::netns`, timed
//!   apart): ADD timed, then DEL (timed apart) and the namespace removed.
//! - containerd + runc: the static C `hello` program in a pod with its own
//!   network namespace, containerd running the same `.conflist` (and its
//!   own loopback plugin).
//! - memory: the daemon's RSS after RunPodSandbox of N pods of each kind
//!   (no containers), less its RSS before, per pod.

use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinSet;
use wasmrun::api::{RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest};

use crate::harness::{self, Daemon, TestNet};
use crate::start::{LEGEND, Peer, Row, Target, WASM_LINE, Watcher, failure_notes, measure, rows_table, warm_up};
use crate::support::{Latencies, Process, Table, kib, ms};

#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Section net-start")]
pub struct Args {
    /// Samples of each wasmrun row and of the plugins-alone rows.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub net_samples: u64,
    /// Numbers of starts launched together, one row each.
    #[arg(long, value_name = "N,…", value_delimiter = ',', default_values_t = [1, 8],
          value_parser = clap::value_parser!(u64).range(1..=128))]
    pub net_parallel: Vec<u64>,
    /// Samples of each containerd + runc row.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    pub net_peer_samples: u64,
    /// Pods run (of each kind) to measure the daemon's memory per pod.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub net_pods: u64,
    /// Leave out the containerd + runc rows.
    #[arg(long)]
    pub net_no_peer: bool,
}

pub async fn run(args: &Args) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("== net-start: SKIPPED: network namespaces and CNI plugins need root ==\n");
        return;
    }
    let watcher = match Watcher::new() {
        Ok(w) => Arc::new(w),
        Err(e) => {
            println!("== net-start: SKIPPED: cannot watch log files with inotify: {e} ==\n");
            return;
        }
    };
    let mut parallels: Vec<usize> = args.net_parallel.iter().map(|&n| n as usize).collect();
    parallels.dedup();
    let samples = args.net_samples as usize;
    let mut notes = Vec::new();

    eprintln!("net-start: a network namespace with a bridge network, a registry and the daemon in it");
    let image = harness::push_fixture("hello", "bench-net-hello").await;
    let mut net = TestNet::new("bench-net");
    net.write_bridge_config(&[]);
    net.serve_registry();
    let conf_dir = net.conf_dir();
    let daemon =
        Daemon::start_in(Some(&net), None, &["--log-level", "info", "--cni-conf-dir", conf_dir.to_str().unwrap()])
            .await;
    harness::pull(&daemon, &image.name).await;
    let networked = Target {
        name: "wasmrun",
        rt: daemon.runtime(),
        image: image.name.clone(),
        line: WASM_LINE,
        host_network: false,
        pod_network: true,
        readonly_rootfs: None,
    };
    let host = Target { pod_network: false, ..networked.clone() };

    let mut rows: Vec<Row> = Vec::new();
    for (target, label) in [(&networked, "wasmrun, pod network"), (&host, "wasmrun, host network")] {
        notes.extend(warm_up(target, &watcher, WARM_UPS).await.0);
        for &parallel in &parallels {
            eprintln!("net-start: {label}, {parallel} at a time, {samples} samples");
            rows.push(measure(target, &watcher, label, parallel, samples).await);
        }
    }

    let mut plugin_rows: Vec<(usize, Alone)> = Vec::new();
    for &parallel in &parallels {
        eprintln!("net-start: the CNI plugins alone, {parallel} at a time, {samples} samples");
        match plugins_alone(&net, parallel, samples) {
            Ok(alone) => plugin_rows.push((parallel, alone)),
            Err(e) => notes.push(format!("ERROR: the plugins alone at {parallel} in parallel: {e}")),
        }
    }

    // The daemon's own measure of each networked RunPodSandbox: its network
    // setup, and the CNI plugins' ADD within it (the log's "pod sandbox ready").
    // In the log's order: the warm-ups, then each pod-network row in turn.
    let mut own_share = own_share_from_log(&daemon.log_path()).into_iter().skip(WARM_UPS);
    let own_shares: Vec<(usize, Latencies)> = parallels
        .iter()
        .map(|&parallel| {
            let mut row = Latencies::default();
            own_share.by_ref().take(samples.div_ceil(parallel) * parallel).for_each(|d| row.push(d));
            (parallel, row)
        })
        .collect();
    eprintln!("net-start: the daemon's memory per pod, {} pods of each kind", args.net_pods);
    match daemon.pid().map(Process) {
        Some(process) => {
            for (network, label) in [(false, "host network"), (true, "pod network")] {
                match memory_per_pod(&daemon, process, network, args.net_pods as usize).await {
                    Ok(per_pod) => notes.push(format!(
                        "daemon memory per {label} pod (RunPodSandbox only, {} pods): {} KiB of RSS",
                        args.net_pods,
                        kib(per_pod)
                    )),
                    Err(e) => notes.push(format!("ERROR: memory per {label} pod: {e}")),
                }
            }
        }
        None => notes.push("ERROR: the daemon's pid is unknown: no memory rows".into()),
    }
    let leftovers = net.leftovers(&daemon.state());
    if !leftovers.is_empty() {
        notes.push(format!("LEFT BEHIND after every wasmrun pod was removed: {leftovers:?}"));
    }
    let (daemon, exit) = crate::support::stop(daemon).await;
    notes.push(format!("wasmrun daemon exit after SIGTERM: {exit}; its log: {}", daemon.log_path().display()));

    let mut peer_rows = Vec::new();
    if args.net_no_peer {
        notes.push("containerd + runc rows left out (--net-no-peer)".into());
    } else {
        let peer = Peer {
            net: Some((net.file.clone(), net.conf_dir())),
            warmup: 3,
            parallels: &parallels,
            samples: args.net_peer_samples as usize,
        };
        peer.rows(&watcher, &mut peer_rows, &mut notes).await;
    }

    let mut table = rows_table();
    for row in rows.iter().chain(&peer_rows) {
        table.row(row.cells());
    }
    println!(
        "== net-start: RunPodSandbox → CreateContainer → StartContainer → the guest's first log line on disk, \
         pods with a network namespace of their own (bridge + portmap) =="
    );
    println!("{}", table.render());
    println!("{LEGEND}");

    let mut split = Table::new(&[
        "parallel",
        "wasmrun RunPod (pod network)",
        "plugins' ADD alone",
        "wasmrun's own share",
        "making a namespace (wasmrun: made ahead)",
        "wasmrun RunPod (host network)",
        "plugins' DEL alone",
        "target",
    ]);
    let run_pod = |label: &str, n: usize| {
        rows.iter().find(|r| r.label == label && r.parallel == n).and_then(|r| r.run_pod.percentile(50.0))
    };
    for (parallel, Alone { add, del, netns }) in &plugin_rows {
        let ours = run_pod("wasmrun, pod network", *parallel);
        let share = match (ours, add.percentile(50.0)) {
            (Some(ours), Some(add)) if ours >= add => ms(ours - add),
            (Some(ours), Some(add)) => format!("-{}", ms(add - ours)),
            _ => "-".into(),
        };
        split.row(vec![
            parallel.to_string(),
            ours.map(ms).unwrap_or_else(|| "-".into()),
            add.percentile(50.0).map(ms).unwrap_or_else(|| "-".into()),
            share,
            netns.percentile(50.0).map(ms).unwrap_or_else(|| "-".into()),
            run_pod("wasmrun, host network", *parallel).map(ms).unwrap_or_else(|| "-".into()),
            del.percentile(50.0).map(ms).unwrap_or_else(|| "-".into()),
            "share < 1 ms".into(),
        ]);
    }
    println!("== net-start: where a networked RunPodSandbox's time goes (p50s, ms) ==");
    println!("{}", split.render());
    for (parallel, share) in &own_shares {
        println!(
            "the daemon's own measure at {parallel} in parallel ({} pods): its network setup less the plugins' ADD \
             within it (the config loaded, the pod's record written before ADD, a namespace taken or made, opened): \
             p50/p99 {} ms; target < 1 ms",
            share.len(),
            share.p50_p99()
        );
    }
    notes.extend(failure_notes(rows.iter().chain(&peer_rows)));
    let _ = std::fs::remove_dir_all(harness::scratch_root().join("pods"));
    drop(net);
    for note in notes {
        println!("- {note}");
    }
    println!();
}

/// Warm-up starts before each kind of wasmrun row.
const WARM_UPS: usize = 5;

/// `network_setup_us` less `cni_add_us` of each "pod sandbox ready" line of
/// the daemon's log, in order.
fn own_share_from_log(log: &std::path::Path) -> Vec<std::time::Duration> {
    let mut share = Vec::new();
    let text = std::fs::read_to_string(log).unwrap_or_default();
    for line in text.lines().filter(|line| line.contains("pod sandbox ready")) {
        let field = |key: &str| {
            line.split_whitespace().find_map(|word| word.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok())
        };
        if let (Some(setup), Some(add)) = (field("network_setup_us"), field("cni_add_us")) {
            share.push(std::time::Duration::from_micros(setup.saturating_sub(add)));
        }
    }
    share
}

/// What the plugins alone took, and making a pod's namespace.
struct Alone {
    add: Latencies,
    del: Latencies,
    /// `wasmrun::netns::create`: a thread unsharing a namespace, loopback up, pinned.
    netns: Latencies,
}

/// A namespace made (timed), ADD (timed), then DEL (timed) and the
/// namespace removed, of `net`'s CNI configuration, `parallel` at a time
/// until `samples`.
fn plugins_alone(net: &TestNet, parallel: usize, samples: usize) -> Result<Alone, String> {
    let list = wasmrun::cni::load(&net.conf_dir())?;
    let pins = net.dir.join("bench-pins");
    std::fs::create_dir_all(&pins).map_err(|e| format!("creating {}: {e}", pins.display()))?;
    // The plugins are children of a thread inside the namespace: they run there.
    net.run(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("a runtime in the namespace: {e}"))?;
        runtime.block_on(async {
            let (mut add, mut del, mut netns) = (Latencies::default(), Latencies::default(), Latencies::default());
            let list = Arc::new(list);
            for round in 0..samples.div_ceil(parallel) {
                let mut tasks = JoinSet::new();
                for n in 0..parallel {
                    let (list, id) = (list.clone(), format!("bench-plugins-{round}-{n}"));
                    let pin = pins.join(&id);
                    tasks.spawn(async move {
                        let started = Instant::now();
                        wasmrun::netns::create(pin.clone()).await.map_err(|e| format!("a namespace: {e}"))?;
                        let netns_time = started.elapsed();
                        let args: Vec<(String, String)> = [
                            ("IgnoreUnknown", "1"),
                            ("K8S_POD_NAMESPACE", "default"),
                            ("K8S_POD_NAME", id.as_str()),
                            ("K8S_POD_INFRA_CONTAINER_ID", id.as_str()),
                            ("K8S_POD_UID", id.as_str()),
                        ]
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect();
                        let bin_dirs = [std::path::PathBuf::from(harness::netns::CNI_BIN_DIR)];
                        // What the daemon gives a pod without host ports (portmap declares only this).
                        let capabilities: serde_json::Map<String, serde_json::Value> =
                            [("portMappings".to_owned(), serde_json::json!([]))].into_iter().collect();
                        let invocation = wasmrun::cni::Invocation {
                            bin_dirs: &bin_dirs,
                            container_id: &id,
                            netns: &pin,
                            ifname: "eth0",
                            args: &args,
                            capability_args: &capabilities,
                        };
                        let started = Instant::now();
                        let added = wasmrun::cni::add(&list, &invocation).await;
                        let add_time = started.elapsed();
                        let started = Instant::now();
                        let deleted = wasmrun::cni::del(&list, &invocation, added.as_ref().ok()).await;
                        let del_time = started.elapsed();
                        let _ = wasmrun::netns::remove(&pin);
                        added.map_err(|e| e.to_string())?;
                        deleted.map_err(|e| e.to_string())?;
                        Ok::<_, String>((netns_time, add_time, del_time))
                    });
                }
                while let Some(joined) = tasks.join_next().await {
                    let (netns_time, add_time, del_time) = joined.map_err(|e| e.to_string())??;
                    netns.push(netns_time);
                    add.push(add_time);
                    del.push(del_time);
                }
            }
            Ok(Alone { add, del, netns })
        })
    })
}

/// The daemon's RSS growth per pod over `count` pods (RunPodSandbox only),
/// networked or on the host network; the pods are removed after.
async fn memory_per_pod(daemon: &Daemon, process: Process, network: bool, count: usize) -> Result<f64, String> {
    let mut rt = daemon.runtime();
    let before = process.rss();
    let mut pods = Vec::new();
    for n in 0..count {
        let uid = harness::new_uid();
        let name = format!("memory-{network}-{n}");
        let config = if network { harness::pod_network_config(&name, &uid) } else { harness::pod_config(&name, &uid) };
        let request = RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() };
        match rt.run_pod_sandbox(request).await {
            Ok(answer) => pods.push(answer.into_inner().pod_sandbox_id),
            Err(s) => return Err(format!("RunPodSandbox: {}", s.message())),
        }
    }
    let after = process.rss();
    for id in pods {
        let _ = rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await;
        let _ = rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id }).await;
    }
    Ok(after.saturating_sub(before) as f64 / count as f64)
}
