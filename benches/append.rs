//! Section `append`: what one append of a record line to a file kept open
//! costs a tokio task, by each way the daemon could make it. The pod records
//! (`src/pods/records.rs`) are written so, before the call that changed them
//! answers: this is the floor of what durability adds to RunPodSandbox,
//! CreateContainer and StartContainer.
//!
//! A multi-thread runtime of two workers (the daemon's CRI runtime on a
//! 2-core machine) runs one task that makes `--append-samples` appends of a
//! 400-byte line (about a pod's record), `--append-gap-us` apart (so that
//! threads park between appends, as between CRI calls), by each way in
//! turn, to a file in the benches' scratch directory:
//! - a plain `write` on the worker: the floor; it blocks a worker on I/O,
//!   which the daemon does not do;
//! - `block_in_place`, what the daemon does (`src/blocking.rs`);
//! - `spawn_blocking`;
//! - a writer thread fed through a channel, the task awaiting its answer.
//!
//! No daemon runs: these are the ways, not the daemon.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::support::{Latencies, Table};

/// Bytes of one line, about the size of a pod's record.
const LINE_BYTES: usize = 400;

#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Section append")]
pub struct Args {
    /// Appends timed by each way.
    #[arg(long, value_name = "N", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub append_samples: u64,
    /// Microseconds between two appends.
    #[arg(long, value_name = "US", default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub append_gap_us: u64,
}

/// One way of appending, as the task sees it.
#[derive(Clone, Copy, Debug)]
enum Way {
    Plain,
    BlockInPlace,
    SpawnBlocking,
    WriterThread,
}

impl Way {
    fn label(self) -> &'static str {
        match self {
            Way::Plain => "plain write on the worker (floor)",
            Way::BlockInPlace => "block_in_place (the daemon)",
            Way::SpawnBlocking => "spawn_blocking",
            Way::WriterThread => "writer thread, answer awaited",
        }
    }
}

pub async fn run(args: &Args) {
    println!(
        "== append: one {LINE_BYTES}-byte line appended to a file kept open, from a tokio task (2 workers), {} µs apart ==",
        args.append_gap_us
    );
    let path = crate::harness::scratch_root().join("append-bench");
    let args = args.clone();
    let rows = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || measure(&path, &args)).await.expect("the append bench panicked")
    };
    let _ = std::fs::remove_file(&path);
    let mut table = Table::new(&["way", "samples", "p50 µs", "p99 µs", "p50 / floor"]);
    let floor = rows.first().and_then(|(_, latencies)| latencies.percentile(50.0));
    for (way, latencies) in &rows {
        let p50 = latencies.percentile(50.0);
        let ratio = match (p50, floor) {
            (Some(p50), Some(floor)) if !floor.is_zero() => format!("{:.1}", p50.as_secs_f64() / floor.as_secs_f64()),
            _ => "-".into(),
        };
        table.row(vec![
            way.label().into(),
            latencies.len().to_string(),
            micros(p50),
            micros(latencies.percentile(99.0)),
            ratio,
        ]);
    }
    print!("{}", table.render());
    println!(
        "- file: {} (removed after); each way's appends go to the same file, in the order of the rows",
        path.display()
    );
    println!();
}

fn micros(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e6))
}

/// Runs every way on a runtime of its own (this section's caller is on a
/// current-thread runtime, where `block_in_place` is not allowed).
fn measure(path: &std::path::Path, args: &Args) -> Vec<(Way, Latencies)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the bench runtime");
    let file = std::sync::Arc::new(
        std::fs::OpenOptions::new().create(true).append(true).open(path).expect("opening the append file"),
    );
    let (samples, gap) = (args.append_samples, Duration::from_micros(args.append_gap_us));
    runtime.block_on(async move {
        let writer = WriterThread::start(file.clone());
        let mut rows = Vec::new();
        for way in [Way::Plain, Way::BlockInPlace, Way::SpawnBlocking, Way::WriterThread] {
            let file = file.clone();
            let sender = writer.sender.clone();
            let latencies = tokio::spawn(async move {
                let mut latencies = Latencies::default();
                let line: std::sync::Arc<[u8]> = vec![b'x'; LINE_BYTES].into();
                for _ in 0..samples {
                    tokio::time::sleep(gap).await;
                    let began = Instant::now();
                    let written = match way {
                        Way::Plain => (&*file).write_all(&line),
                        Way::BlockInPlace => tokio::task::block_in_place(|| (&*file).write_all(&line)),
                        Way::SpawnBlocking => {
                            let (file, line) = (file.clone(), line.clone());
                            tokio::task::spawn_blocking(move || (&*file).write_all(&line))
                                .await
                                .expect("a blocking append")
                        }
                        Way::WriterThread => {
                            let (answer, answered) = tokio::sync::oneshot::channel();
                            sender.send((line.clone(), answer)).expect("the writer thread has stopped");
                            answered.await.expect("the writer thread dropped an answer")
                        }
                    };
                    written.expect("appending to the bench file");
                    latencies.push(began.elapsed());
                }
                latencies
            })
            .await
            .expect("an append task panicked");
            rows.push((way, latencies));
        }
        rows
    })
}

/// A line for the writer thread, and where it answers once the line is written.
type Append = (std::sync::Arc<[u8]>, tokio::sync::oneshot::Sender<std::io::Result<()>>);

/// A thread appending the lines it is sent, answering each once written.
struct WriterThread {
    sender: std::sync::mpsc::Sender<Append>,
}

impl WriterThread {
    fn start(file: std::sync::Arc<std::fs::File>) -> Self {
        let (sender, lines) = std::sync::mpsc::channel::<Append>();
        std::thread::Builder::new()
            .name("append-writer".into())
            .spawn(move || {
                while let Ok((line, answer)) = lines.recv() {
                    let _ = answer.send((&*file).write_all(&line));
                }
            })
            .expect("starting the writer thread");
        Self { sender }
    }
}
