//! wasmrun's benchmarks: `cargo bench` builds the release daemon and the wasm
//! fixtures, starts the test registry and the daemon (as the end-to-end tests
//! do, through the same harness) and prints one plain-text table per section
//! on stdout; progress goes to stderr. See BENCHMARKS.md.
//!
//! `cargo bench` runs every section with its defaults; `cargo bench --
//! SECTION… [OPTIONS]` runs the named sections only, e.g. `cargo bench --
//! density --counts 1000,5000`; `cargo bench -- --help` lists them all.
//!
//! A section is a module with a `clap::Args` struct of its own options
//! (flattened into [`Cli`] under a heading of its own: option names must be
//! unique across sections) and an async `run` that prints its report.

// The end-to-end tests' harness; the benchmarks use a part of what it exports.
#[path = "../e2e/harness/mod.rs"]
#[allow(unused_imports)]
mod harness;

mod append;
mod cpu;
mod density;
mod exec;
mod http;
mod netstart;
mod pull;
mod start;
mod support;
mod throughput;

use clap::{Parser, ValueEnum};

/// wasmrun's benchmarks. With no SECTION, every section runs with its defaults.
#[derive(Parser, Debug)]
#[command(name = "wasmrun-bench", bin_name = "cargo bench --", disable_version_flag = true)]
struct Cli {
    /// Sections to run, in this order (every section when none is named).
    #[arg(value_enum)]
    sections: Vec<Section>,

    #[command(flatten)]
    density: density::Args,

    #[command(flatten)]
    cpu: cpu::Args,

    #[command(flatten)]
    pull: pull::Args,

    #[command(flatten)]
    start: start::Args,

    #[command(flatten)]
    throughput: throughput::Args,

    #[command(flatten)]
    net_start: netstart::Args,

    #[command(flatten)]
    append: append::Args,

    #[command(flatten)]
    http: http::Args,

    #[command(flatten)]
    exec: exec::Args,

    /// Given by `cargo bench` itself to every bench target; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    /// Many sleeping containers in one daemon: memory, call latency, idle CPU.
    Density,
    /// Spinning guests: CPU share under a quota, CRI latency while every core spins.
    Cpu,
    /// Pull + compile of a large module against curl + compile; re-pull of a present image.
    Pull,
    /// Start latency to the first log line, against in-process wasmtime and containerd + runc.
    Start,
    /// Short-lived guests started and finished per second.
    Throughput,
    /// One record line appended from a tokio task, by each way the daemon could make it.
    Append,
    /// Pod start with pod networking (CNI bridge) against the plugins alone and containerd + runc.
    NetStart,
    /// A wasi:http component served by wasmrun against `wasmtime serve`: requests/s, latency, first request, memory.
    Http,
    /// ExecSync as exec probes call it: latency and CPU per probe, against the floors and containerd + runc.
    Exec,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    let mut sections = cli.sections.clone();
    if sections.is_empty() {
        sections = Section::value_variants().to_vec();
    }
    sections.dedup();

    println!("{}", support::header());
    for section in sections {
        match section {
            Section::Density => density::run(&cli.density).await,
            Section::Cpu => cpu::run(&cli.cpu).await,
            Section::Pull => pull::run(&cli.pull).await,
            Section::Start => start::run(&cli.start).await,
            Section::Throughput => throughput::run(&cli.throughput).await,
            Section::Append => append::run(&cli.append).await,
            Section::NetStart => netstart::run(&cli.net_start).await,
            Section::Http => http::run(&cli.http).await,
            Section::Exec => exec::run(&cli.exec).await,
        }
    }
}
