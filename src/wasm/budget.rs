//! The memory budget of all guests together (config
//! `guest_memory_budget_bytes`).
//!
//! Every guest is held to its own memory limit (`limits`), but guests share
//! one process: three guests each within a 1 GiB limit can together pass the
//! daemon's cgroup limit, and then the kernel kills the whole runtime with
//! every pod in it. The budget bounds the sum of what all instances hold
//! (linear memories and tables, counted as `limits` counts them); a growth
//! that would pass it is refused to the instance that asks, which ends
//! `OOMKilled` (see `guest::classify`), as the kernel kills the offender in a
//! pod's cgroup. Nothing else is touched.
//!
//! The default ([`DefaultBudget::derive`]) is three quarters of the memory
//! the daemon may use: the lowest `memory.max` (cgroup v2) or
//! `memory.limit_in_bytes` (cgroup v1) on the path of the daemon's own
//! cgroup, or the node's `MemTotal` where that is lower or there is none.
//! The last quarter is the daemon's own: its heap, compiled code, page cache
//! of the logs and image store.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The share of the daemon's memory guests get by default: 3/4.
const DEFAULT_SHARE: (u64, u64) = (3, 4);

/// A cgroup v1 limit at or above this is "no limit" (the kernel writes
/// `PAGE_COUNTER_MAX` pages, 9223372036854771712 bytes on x86-64).
const V1_UNLIMITED: u64 = 1 << 62;

/// What all guests hold together, against the budget. One per engine,
/// shared by every container's `Usage`.
#[derive(Debug, Default)]
pub struct MemoryBudget {
    /// The budget in bytes; 0 means none.
    limit: u64,
    /// Where the budget comes from, for verbose Status.
    source: String,
    /// Bytes of linear memory and tables all instances hold now.
    used: AtomicU64,
    /// Growths refused because they would have passed the budget.
    refusals: AtomicU64,
}

/// A [`MemoryBudget`] at one moment, as verbose Status shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BudgetSnapshot {
    /// The budget in bytes; 0 means none.
    pub budget_bytes: u64,
    /// What all guests hold now, in bytes.
    pub used_bytes: u64,
    /// How many growths were refused for the budget since the daemon started.
    pub refusals: u64,
    /// Where the budget comes from (the config key, or the rule and the limit it was derived from).
    pub source: String,
}

impl MemoryBudget {
    /// A budget of `limit` bytes (0: none), `source` saying where it comes from.
    pub fn new(limit: u64, source: impl Into<String>) -> Self {
        Self { limit, source: source.into(), ..Self::default() }
    }

    /// The budget in bytes; 0 means none.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Charges a growth of `bytes`. Refused (and counted as a refusal) when
    /// what all guests hold would pass the budget; returns what they hold
    /// then, for the refused guest's message.
    pub(super) fn charge(&self, bytes: u64) -> Result<(), u64> {
        let limit = self.limit;
        let charged = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
            let after = used.saturating_add(bytes);
            (limit == 0 || after <= limit).then_some(after)
        });
        charged.map(drop).inspect_err(|_| {
            self.refusals.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// Gives back `bytes` an instance held.
    pub(super) fn release(&self, bytes: u64) {
        let _ = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| Some(used.saturating_sub(bytes)));
    }

    /// The budget, its use and its refusals now.
    pub fn snapshot(&self) -> BudgetSnapshot {
        BudgetSnapshot {
            budget_bytes: self.limit,
            used_bytes: self.used.load(Ordering::Relaxed),
            refusals: self.refusals.load(Ordering::Relaxed),
            source: self.source.clone(),
        }
    }
}

/// The budget the daemon gets when its config sets none, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultBudget {
    pub bytes: u64,
    pub source: String,
}

impl DefaultBudget {
    /// Derives the default from the daemon's own cgroup and the node's
    /// memory (see the module's docs): reads `/proc/self/cgroup`,
    /// `/proc/meminfo` and the cgroup files under `/sys/fs/cgroup`. Blocks
    /// on those reads: call it off the async workers.
    ///
    /// Errors: none; what cannot be read is left out, and with neither a
    /// cgroup limit nor `MemTotal` the budget is 0 (none), saying so.
    pub fn derive() -> Self {
        let own_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self::derive_from(&own_cgroup, Path::new("/sys/fs/cgroup"), &meminfo)
    }

    /// [`DefaultBudget::derive`] with the files' contents and the cgroup
    /// mount given: `own_cgroup` as `/proc/self/cgroup` reads,
    /// `cgroup_root` where the hierarchies are mounted, `meminfo` as
    /// `/proc/meminfo` reads.
    pub fn derive_from(own_cgroup: &str, cgroup_root: &Path, meminfo: &str) -> Self {
        let cgroup = cgroup_limit(own_cgroup, cgroup_root);
        let node = mem_total(meminfo);
        let (memory, from) = match (cgroup, node) {
            (Some((limit, file)), Some(total)) if limit < total => (limit, format!("{file} ({limit} bytes)")),
            (_, Some(total)) => (total, format!("the node's MemTotal ({total} bytes)")),
            (Some((limit, file)), None) => (limit, format!("{file} ({limit} bytes)")),
            (None, None) => {
                return Self {
                    bytes: 0,
                    source: "none: neither a cgroup memory limit nor MemTotal could be read".into(),
                };
            }
        };
        let (numerator, denominator) = DEFAULT_SHARE;
        let bytes = memory / denominator * numerator;
        Self { bytes, source: format!("{numerator}/{denominator} of {from}") }
    }
}

/// The lowest memory limit on the path from the daemon's cgroup up to the
/// root of its hierarchy, and the file it was read from. cgroup v1's
/// `memory` hierarchy is used when `/proc/self/cgroup` names one, else the
/// v2 (unified) one. A path that is not under the mount (a cgroup
/// namespace shows `/`, or a path from outside it) falls back to the
/// mount's own root, which is then the namespace's cgroup.
fn cgroup_limit(own_cgroup: &str, cgroup_root: &Path) -> Option<(u64, String)> {
    let mut v1 = None;
    let mut v2 = None;
    for line in own_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if controllers.split(',').any(|controller| controller == "memory") {
            v1 = Some(path);
        } else if controllers.is_empty() {
            v2 = Some(path);
        }
    }
    let (mount, file, path) = match (v1, v2) {
        (Some(path), _) => (cgroup_root.join("memory"), "memory.limit_in_bytes", path),
        (None, Some(path)) => (cgroup_root.to_owned(), "memory.max", path),
        (None, None) => return None,
    };
    let relative = Path::new(path.trim_start_matches('/'));
    let inside = relative.components().all(|part| matches!(part, std::path::Component::Normal(_)));
    let mut dir = mount.join(relative);
    if !inside || !dir.is_dir() {
        dir = mount.clone();
    }
    let mut lowest: Option<(u64, String)> = None;
    loop {
        let at = dir.join(file);
        if let Some(limit) = std::fs::read_to_string(&at).ok().and_then(|text| parse_limit(&text))
            && lowest.as_ref().is_none_or(|(low, _)| limit < *low)
        {
            lowest = Some((limit, at.display().to_string()));
        }
        if dir == mount || !dir.pop() {
            break;
        }
    }
    lowest
}

/// A limit file's value: bytes, or None for `max` (v2) and v1's "unlimited".
fn parse_limit(text: &str) -> Option<u64> {
    text.trim().parse::<u64>().ok().filter(|&bytes| bytes < V1_UNLIMITED)
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line["MemTotal:".len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       16384000 kB\nMemFree:         1000 kB\n";
    const NODE: u64 = 16384000 * 1024;

    /// A directory of `files` (path, content), removed when dropped.
    struct Tree(std::path::PathBuf);

    impl Tree {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tree(files: &[(&str, &str)]) -> Tree {
        let root =
            Tree(std::env::temp_dir().join(format!("wasmrun-budget-{}", hex::encode(rand::random::<[u8; 8]>()))));
        std::fs::create_dir_all(root.path()).unwrap();
        for (path, content) in files {
            let path = root.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        root
    }

    #[test]
    fn a_budget_refuses_the_growth_that_passes_it_and_counts_it() {
        let budget = MemoryBudget::new(1000, "test");
        assert_eq!(budget.charge(600), Ok(()));
        assert_eq!(budget.charge(500), Err(600), "600 + 500 passes 1000");
        assert_eq!(budget.charge(400), Ok(()), "exactly the budget is within it");
        budget.release(600);
        assert_eq!(
            budget.snapshot(),
            BudgetSnapshot { budget_bytes: 1000, used_bytes: 400, refusals: 1, source: "test".into() }
        );
        let none = MemoryBudget::new(0, "none");
        assert_eq!(none.charge(u64::MAX / 2), Ok(()), "0 is no budget");
    }

    #[test]
    fn the_default_is_three_quarters_of_the_lowest_v2_limit_on_the_cgroup_path() {
        let root = tree(&[
            ("memory.max", "max\n"),
            ("system.slice/memory.max", "4294967296\n"),
            ("system.slice/wasmrun.service/memory.max", "max\n"),
        ]);
        let budget = DefaultBudget::derive_from("0::/system.slice/wasmrun.service\n", root.path(), MEMINFO);
        assert_eq!(budget.bytes, 3 << 30);
        let file = root.path().join("system.slice/memory.max");
        assert_eq!(budget.source, format!("3/4 of {} (4294967296 bytes)", file.display()));
    }

    #[test]
    fn the_default_reads_the_v1_memory_hierarchy_where_there_is_one() {
        let root = tree(&[
            ("memory/memory.limit_in_bytes", "9223372036854771712\n"),
            ("memory/pods/memory.limit_in_bytes", "2147483648\n"),
            // The v2 hierarchy of a hybrid host has no memory controller.
            ("unified/pods/memory.max", "1024\n"),
        ]);
        let own = "12:pids:/pods\n4:cpu,cpuacct:/pods\n3:memory:/pods\n0::/pods\n";
        assert_eq!(DefaultBudget::derive_from(own, root.path(), MEMINFO).bytes, 1536 << 20);
    }

    #[test]
    fn without_a_cgroup_limit_the_default_is_three_quarters_of_the_node() {
        let root = tree(&[("memory.max", "max\n")]);
        let budget = DefaultBudget::derive_from("0::/\n", root.path(), MEMINFO);
        assert_eq!(budget.bytes, NODE / 4 * 3);
        assert_eq!(budget.source, format!("3/4 of the node's MemTotal ({NODE} bytes)"));
        // A cgroup limit above the node's memory is no limit either.
        let big = tree(&[("memory.max", "999999999999999\n")]);
        assert_eq!(DefaultBudget::derive_from("0::/\n", big.path(), MEMINFO).bytes, NODE / 4 * 3);
    }

    #[test]
    fn a_cgroup_path_outside_the_mount_reads_the_mounts_root() {
        // Inside a cgroup namespace `/proc/self/cgroup` can name a path the mount does not show.
        let root = tree(&[("memory.max", "1073741824\n")]);
        let budget = DefaultBudget::derive_from("0::/../elsewhere/x\n", root.path(), MEMINFO);
        assert_eq!(budget.bytes, 768 << 20);
        let budget = DefaultBudget::derive_from("0::/not/there\n", root.path(), MEMINFO);
        assert_eq!(budget.bytes, 768 << 20);
    }

    #[test]
    fn nothing_readable_is_no_budget() {
        let root = tree(&[]);
        let budget = DefaultBudget::derive_from("", root.path(), "");
        assert_eq!(budget.bytes, 0);
        assert!(budget.source.starts_with("none"));
    }
}
