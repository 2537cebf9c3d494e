//! What every section uses: the header naming the machine, the commit and the
//! command; readings of a process from /proc; latency percentiles; tables.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The lines printed once before the sections: date, machine, commit, command.
pub fn header() -> String {
    let manifest_dir = env!("CARGO_MANIFEST_DIR");
    let cores = command_output("nproc", &[], manifest_dir).unwrap_or_else(|| "?".into());
    let memory = meminfo_kib("MemTotal").map_or_else(|| "?".into(), |kib| format!("{:.1} GiB", kib as f64 / MIB));
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let kernel: String =
        std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|_| "?".into(), |s| s.trim().into());
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let command = if args.is_empty() { "cargo bench".to_owned() } else { format!("cargo bench -- {}", args.join(" ")) };
    format!(
        "wasmrun benchmarks, {date}\n\
         machine: {cores} cores ({cpu}), {memory} memory, Linux {kernel}\n\
         commit:  {commit}\n\
         command: {command}\n",
        date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        commit = git_commit(manifest_dir),
    )
}

/// `git rev-parse --short HEAD`, with "-dirty" when the tree has any change
/// (untracked files included: they may be part of what was measured).
fn git_commit(dir: &str) -> String {
    let Some(commit) = command_output("git", &["rev-parse", "--short", "HEAD"], dir) else {
        return "unknown (not a git checkout?)".into();
    };
    match command_output("git", &["status", "--porcelain"], dir) {
        Some(status) if status.is_empty() => commit,
        Some(_) => format!("{commit}-dirty"),
        None => format!("{commit} (status unknown)"),
    }
}

fn command_output(program: &str, args: &[&str], dir: &str) -> Option<String> {
    let output = Command::new(program).args(args).current_dir(dir).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

const MIB: f64 = 1024.0 * 1024.0;

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / MIB)
}

/// Bytes as KiB with one decimal; signed, for differences.
pub fn kib(bytes: f64) -> String {
    format!("{:.1}", bytes / 1024.0)
}

/// A field of /proc/meminfo, in KiB.
fn meminfo_kib(key: &str) -> Option<u64> {
    kib_field(&std::fs::read_to_string("/proc/meminfo").ok()?, key)
}

/// The value of a `Key:   123 kB` line.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Readings of one process from /proc.
#[derive(Clone, Copy, Debug)]
pub struct Process(pub u32);

impl Process {
    fn read(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(format!("/proc/{}/{file}", self.0)).ok()
    }

    /// A memory field of /proc/PID/status (`VmRSS`, `RssAnon`, `RssFile`, …), in bytes.
    pub fn status_bytes(&self, key: &str) -> Option<u64> {
        kib_field(&self.read("status")?, key).map(|kib| kib * 1024)
    }

    /// Resident set size, in bytes.
    pub fn rss(&self) -> u64 {
        self.status_bytes("VmRSS").unwrap_or(0)
    }

    /// Number of threads.
    pub fn threads(&self) -> u64 {
        self.read("status")
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Threads:")?.trim().parse().ok()))
            .unwrap_or(0)
    }

    /// False once the process has exited (gone, or a zombie not yet reaped).
    pub fn alive(&self) -> bool {
        self.stat_fields().is_some_and(|fields| !matches!(fields.first().map(String::as_str), Some("Z" | "X")))
    }

    /// The fields of /proc/PID/stat after the command name (the first is the state).
    fn stat_fields(&self) -> Option<Vec<String>> {
        let stat = self.read("stat")?;
        let rest = &stat[stat.rfind(')')? + 1..];
        Some(rest.split_whitespace().map(str::to_owned).collect())
    }

    /// CPU time used so far, user plus system, of every thread (dead ones included).
    pub fn cpu_time(&self) -> Duration {
        // Fields 14 and 15 of stat, utime and stime, in clock ticks; the list starts at field 3.
        let ticks: u64 = self
            .stat_fields()
            .map(|f| f.get(11..13).map_or(0, |t| t.iter().filter_map(|v| v.parse::<u64>().ok()).sum()))
            .unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_nanos(ticks * 1_000_000_000 / per_second)
    }

    /// Number of memory mappings (lines of /proc/PID/maps), what vm.max_map_count limits.
    pub fn maps(&self) -> u64 {
        self.read("maps").map_or(0, |m| m.lines().count() as u64)
    }

    /// Number of open file descriptors.
    pub fn fds(&self) -> u64 {
        std::fs::read_dir(format!("/proc/{}/fd", self.0)).map_or(0, |d| d.count() as u64)
    }

    /// The soft limit on open files (RLIMIT_NOFILE) the process runs with.
    pub fn nofile_limit(&self) -> Option<u64> {
        let limits = self.read("limits")?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line["Max open files".len()..].split_whitespace().next()?.parse().ok()
    }
}

/// `vm.max_map_count`: the most memory mappings one process may have.
pub fn max_map_count() -> Option<u64> {
    read_number(Path::new("/proc/sys/vm/max_map_count"))
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// This process's RLIMIT_NOFILE (soft, hard), which the daemon inherits.
pub fn nofile_rlimit() -> (u64, u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (limit.rlim_cur, limit.rlim_max)
}

/// Durations of a series of calls.
#[derive(Clone, Debug, Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `p`th percentile (nearest rank), or None without samples.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let mut sorted = self.0.clone();
        sorted.sort();
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
    }

    /// "p50/p99" in milliseconds, "-" without samples.
    pub fn p50_p99(&self) -> String {
        match (self.percentile(50.0), self.percentile(99.0)) {
            (Some(p50), Some(p99)) => format!("{}/{}", ms(p50), ms(p99)),
            _ => "-".into(),
        }
    }
}

/// Milliseconds, with more decimals for short times.
pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1.0 {
        format!("{ms:.3}")
    } else if ms < 100.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.0}")
    }
}

/// A plain-text table: right-aligned columns, a rule under the header.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self { headers: headers.iter().map(|h| h.to_string()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.headers.len(), "a row needs one cell per column");
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| self.rows.iter().map(|r| r[i].len()).chain([self.headers[i].len()]).max().unwrap_or(0))
            .collect();
        let line = |cells: &[String]| {
            cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:>w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        };
        let mut out = line(&self.headers);
        out.push('\n');
        out.push_str(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
        for row in &self.rows {
            out.push('\n');
            out.push_str(&line(row));
        }
        out.push('\n');
        out
    }
}

/// Ends a section: stops its daemon (noting how it exited), removes the pods'
/// log directories, and prints the notes.
pub async fn finish(daemon: crate::harness::Daemon, mut notes: Vec<String>) {
    let (daemon, exit) = stop(daemon).await;
    notes.push(format!("daemon exit after SIGTERM: {exit}; its log: {}", daemon.log_path().display()));
    let _ = std::fs::remove_dir_all(crate::harness::scratch_root().join("pods"));
    for note in notes {
        println!("- {note}");
    }
    println!();
}

/// Sends the daemon SIGTERM and waits for its exit on a blocking thread: the
/// benchmark's clients run on its one runtime thread, and the daemon's
/// graceful shutdown waits for them to answer.
pub async fn stop(mut daemon: crate::harness::Daemon) -> (crate::harness::Daemon, std::process::ExitStatus) {
    tokio::task::spawn_blocking(move || {
        let exit = daemon.sigterm_and_wait();
        (daemon, exit)
    })
    .await
    .expect("waiting for the daemon's exit")
}

/// Pulls `names` into containerd (through its CRI image service); `Err`
/// names the image that failed and why.
pub async fn pull_into(containerd: &crate::harness::Containerd, names: &[String]) -> Result<(), String> {
    use wasmrun::api::{ImageSpec, PullImageRequest};
    let mut images = containerd.images();
    for name in names {
        let pull = images.pull_image(PullImageRequest {
            image: Some(ImageSpec { image: name.clone(), ..Default::default() }),
            ..Default::default()
        });
        pull.await.map_err(|e| format!("PullImage {name}: {e:?}"))?;
    }
    Ok(())
}
