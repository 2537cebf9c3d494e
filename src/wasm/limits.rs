//! What a guest may use and what it has used: its memory limit, its CPU
//! bandwidth, and the live counters stats calls read.
//!
//! A peer runtime gets all of this from the guest's cgroup. Guests here share
//! one process, so wasmrun does the accounting itself: CPU is the thread CPU
//! time of every poll of the guest's future (a guest runs only inside those
//! polls), and memory is what the resource limiter has let the guest grow to.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::budget::MemoryBudget;

/// Host bytes charged per table element: one pointer-sized slot.
const TABLE_ELEMENT_BYTES: u64 = 8;

/// The limits a container asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of linear memory and tables the guest may hold; 0 means the
    /// engine's default limit.
    pub memory_bytes: u64,
    /// CPU time per period; `None` means unlimited.
    pub cpu: Option<CpuBandwidth>,
}

/// What [`Usage`] held at one moment; all zero for a guest not started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct UsageSnapshot {
    pub cpu_nanos: u64,
    pub memory_bytes: u64,
    /// The limit in force: the container's, or the default; 0 means none.
    pub memory_limit_bytes: u64,
    pub throttled_periods: u64,
    pub throttled_nanos: u64,
    pub instantiate_nanos: u64,
}

/// A CFS-style CPU limit: at most `quota` of CPU time in every `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuBandwidth {
    pub quota: Duration,
    pub period: Duration,
}

impl CpuBandwidth {
    /// The CRI's `cpu_quota` and `cpu_period`, in microseconds as for the CFS.
    /// A quota of 0 or less means no limit; a period of 0 means the CFS default of 100 ms.
    pub fn from_cri(quota_micros: i64, period_micros: i64) -> Option<Self> {
        if quota_micros <= 0 {
            return None;
        }
        let period = if period_micros > 0 { period_micros as u64 } else { 100_000 };
        Some(Self { quota: Duration::from_micros(quota_micros as u64), period: Duration::from_micros(period) })
    }
}

/// A guest's open-file limit when the daemon's config says nothing
/// (`guest_max_open_files`): a Linux container's default `nofile` soft limit.
pub const DEFAULT_MAX_OPEN_FILES: usize = 1024;

/// What a guest gets where its container says nothing, from the daemon's
/// config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestDefaults {
    /// `default_memory_limit_bytes`: the memory limit of a container that
    /// sets none; 0 means none.
    pub memory_limit_bytes: u64,
    /// `guest_max_open_files`: files, directories and sockets one instance
    /// may hold open at once (see `host::open_files`); 0 means no limit.
    pub max_open_files: usize,
    /// `file_mount_max_bytes`: what a container's writable file-mount copies
    /// may hold together, in bytes (see `file_mounts`); 0 means no cap.
    pub file_mount_max_bytes: u64,
}

impl Default for GuestDefaults {
    fn default() -> Self {
        Self {
            memory_limit_bytes: 0,
            max_open_files: DEFAULT_MAX_OPEN_FILES,
            file_mount_max_bytes: super::file_mounts::DEFAULT_MAX_BYTES,
        }
    }
}

/// Live counters and limits of a container's guests, read by stats calls and
/// changed by UpdateContainerResources without stopping them.
///
/// Made by the caller ([`super::Engine::new_usage`]), one per container, and
/// given to every instance started for it ([`super::Engine::start`]): the
/// counters are sums over those instances, and the CPU quota covers them
/// together (one budget per period, as a cgroup's). The memory limit bounds
/// what a command's instances hold together, and each instance of a served
/// component on its own ([`MemoryLimiter::per_instance`]).
#[derive(Debug, Default)]
pub struct Usage {
    /// CPU time spent running the guest (and its host calls), in nanoseconds.
    pub cpu_nanos: AtomicU64,
    /// Bytes of linear memory and tables the guest holds now: the sum over
    /// every instance running under this `Usage`.
    pub memory_bytes: AtomicU64,
    /// Limit on `memory_bytes`; 0 means none.
    memory_limit: AtomicU64,
    /// CPU bandwidth in nanoseconds; a quota of 0 means unlimited.
    cpu_quota_nanos: AtomicU64,
    cpu_period_nanos: AtomicU64,
    /// How often, and for how long in all, the guest was held back for its CPU quota.
    pub throttled_periods: AtomicU64,
    pub throttled_nanos: AtomicU64,
    /// Wall time its instantiation took (memory, tables, data, WASI imports).
    pub instantiate_nanos: AtomicU64,
    /// The limits of a container that sets none.
    defaults: GuestDefaults,
    /// The budget of all guests together, which every growth is charged to as well.
    memory_budget: Arc<MemoryBudget>,
    /// CPU time used in the current period, by every instance together.
    budget: Mutex<Option<Budget>>,
    /// Held by a growth from its check against the limit to its charge to the
    /// budget (and the rollback of a refused one), so that a sibling instance
    /// never sees a charge about to be rolled back.
    growing: Mutex<()>,
}

impl Usage {
    pub(super) fn new(limits: Limits, defaults: GuestDefaults, budget: Arc<MemoryBudget>) -> Self {
        let usage = Self { defaults, memory_budget: budget, ..Self::default() };
        usage.set_limits(limits);
        usage
    }

    /// How many files, directories and sockets each instance may hold open; 0: no limit.
    pub(super) fn max_open_files(&self) -> usize {
        self.defaults.max_open_files
    }

    /// The cap on what the container's writable file-mount copies hold
    /// together, in bytes (see `file_mounts`); 0: no cap.
    pub(super) fn file_mount_max_bytes(&self) -> u64 {
        self.defaults.file_mount_max_bytes
    }

    /// Changes the limits: memory at each instance's next growth (0: the
    /// engine's default), CPU at its next yield.
    pub fn set_limits(&self, limits: Limits) {
        let memory = if limits.memory_bytes > 0 { limits.memory_bytes } else { self.defaults.memory_limit_bytes };
        self.memory_limit.store(memory, Ordering::Relaxed);
        let (quota, period) =
            limits.cpu.map_or((0, 0), |cpu| (cpu.quota.as_nanos() as u64, cpu.period.as_nanos() as u64));
        // Period first: a reader that sees the new quota must not pair it with an old period of 0.
        self.cpu_period_nanos.store(period, Ordering::Relaxed);
        self.cpu_quota_nanos.store(quota, Ordering::Relaxed);
    }

    /// The counters as they are now.
    pub fn snapshot(&self) -> UsageSnapshot {
        UsageSnapshot {
            cpu_nanos: self.cpu_nanos.load(Ordering::Relaxed),
            memory_bytes: self.memory_bytes.load(Ordering::Relaxed),
            memory_limit_bytes: self.memory_limit(),
            throttled_periods: self.throttled_periods.load(Ordering::Relaxed),
            throttled_nanos: self.throttled_nanos.load(Ordering::Relaxed),
            instantiate_nanos: self.instantiate_nanos.load(Ordering::Relaxed),
        }
    }

    /// The memory limit in force (the container's, or the default); 0 means none.
    pub fn memory_limit(&self) -> u64 {
        self.memory_limit.load(Ordering::Relaxed)
    }

    fn bandwidth(&self) -> Option<(u64, u64)> {
        let quota = self.cpu_quota_nanos.load(Ordering::Relaxed);
        let period = self.cpu_period_nanos.load(Ordering::Relaxed);
        (quota > 0 && period > 0).then_some((quota, period))
    }

    /// Accepts a growth of one memory or table from `current` to `desired`
    /// bytes, unless what all instances hold would then pass the limit
    /// (`shared`), or what the growing instance holds, `instance_after`, would,
    /// or what all guests of the daemon hold would pass the budget.
    fn grow(&self, current: u64, desired: u64, shared: bool, instance_after: u64) -> Result<(), Refusal> {
        let _turn = self.growing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let limit = self.memory_limit();
        if !shared && limit != 0 && instance_after > limit {
            return Err(Refusal::Limit);
        }
        self.memory_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                let after = held.saturating_sub(current).saturating_add(desired);
                (!shared || limit == 0 || after <= limit).then_some(after)
            })
            .map_err(|_| Refusal::Limit)?;
        let Some(growth) = desired.checked_sub(current) else {
            self.memory_budget.release(current - desired);
            return Ok(());
        };
        self.memory_budget.charge(growth).map_err(|held| {
            self.release_own(growth);
            Refusal::Budget { budget: self.memory_budget.limit(), held, asked: growth }
        })
    }

    /// Charges `spent` nanoseconds of CPU at `now` to the container's budget
    /// for its quota; returns when its instances may run again if the quota
    /// of the period is used up. None: no quota, or within it.
    fn charge_cpu(&self, spent: u64, now: Instant) -> Option<Instant> {
        let (quota, period) = self.bandwidth()?;
        let mut budget = self.budget.lock().unwrap();
        budget.get_or_insert_with(|| Budget::new(now)).charge(spent, now, quota, period)
    }

    /// Gives back `bytes` an instance held, when it ends, to the container and the budget.
    fn release(&self, bytes: u64) {
        self.release_own(bytes);
        self.memory_budget.release(bytes);
    }

    fn release_own(&self, bytes: u64) {
        let _ = self
            .memory_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| Some(held.saturating_sub(bytes)));
    }
}

/// Why a memory or table growth was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// It would pass the container's memory limit: the growth fails
    /// (`memory.grow` answers -1), and the guest decides what follows, as
    /// a failed `brk` or `mmap`; a trap after it is `OOMKilled`.
    Limit,
    /// It would pass the budget of all guests (`guest_memory_budget_bytes`):
    /// the instance traps at once and ends `OOMKilled`, as the kernel kills
    /// the offender when a cgroup runs out. `budget`, what all guests
    /// `held` then and the growth `asked` for are in bytes.
    Budget { budget: u64, held: u64, asked: u64 },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Limit => f.write_str("the container's memory limit was reached"),
            Refusal::Budget { budget, held, asked } => write!(
                f,
                "the memory budget of all guests (guest_memory_budget_bytes, {budget} bytes) was reached: \
                 this guest asked for {asked} more bytes while all guests held {held}"
            ),
        }
    }
}

impl std::error::Error for Refusal {}

/// One instance's share of a [`Usage`]: refuses memory and table growth past
/// the limit of the `Usage`, and gives back what the instance held when it is
/// dropped (with the instance's store). wasmtime calls it for every growth,
/// including the initial allocation at instantiation.
pub(super) struct MemoryLimiter {
    usage: Arc<Usage>,
    /// Bytes of memories and tables this instance holds.
    held: u64,
    /// The first growth of this instance that was refused, and why; a
    /// refusal for the budget replaces one for the limit (it is what ends
    /// the instance).
    refused: Option<Refusal>,
    /// The last memory growth granted, `(current, desired)` bytes, until
    /// wasmtime either makes it or reports that it failed
    /// (`memory_grow_failed`), which gives it back.
    granted_memory: Option<(u64, u64)>,
    /// Whether the limit bounds all instances of the `Usage` together (a
    /// command and its execs), or this one alone (a request's instance).
    shared: bool,
}

impl MemoryLimiter {
    /// The usage this limiter charges.
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// A limiter holding every instance of `usage` together to its limit.
    pub fn new(usage: Arc<Usage>) -> Self {
        Self { usage, held: 0, refused: None, granted_memory: None, shared: true }
    }

    /// A limiter holding this instance alone to the limit of `usage` (what
    /// it holds still counts in the usage's memory): each request of a
    /// served component gets the container's memory limit, as
    /// `wasmtime serve` gives each its `-W max-memory-size`.
    pub fn per_instance(usage: Arc<Usage>) -> Self {
        Self { usage, held: 0, refused: None, granted_memory: None, shared: false }
    }

    /// Whether a memory or table growth of this instance was refused (for
    /// the container's limit or the budget), and why: a trap that follows
    /// is the guest running out of memory.
    pub fn refusal(&self) -> Option<Refusal> {
        self.refused
    }

    /// Whether a memory or table growth of this instance was refused.
    pub fn hit_limit(&self) -> bool {
        self.refused.is_some()
    }

    /// Grows by `current` → `desired` bytes: Ok(true) granted, Ok(false)
    /// refused for the container's limit, Err for the budget (a trap).
    fn grow(&mut self, current: u64, desired: u64) -> wasmtime::Result<bool> {
        let after = self.held.saturating_sub(current).saturating_add(desired);
        match self.usage.grow(current, desired, self.shared, after) {
            Ok(()) => {
                self.held = after;
                Ok(true)
            }
            Err(refusal) => {
                match (self.refused, refusal) {
                    (None, _) | (Some(Refusal::Limit), Refusal::Budget { .. }) => self.refused = Some(refusal),
                    _ => {}
                }
                match refusal {
                    Refusal::Limit => Ok(false),
                    Refusal::Budget { .. } => Err(wasmtime::Error::new(refusal)),
                }
            }
        }
    }

    /// Gives back a growth granted and then not made: `desired` → `current`.
    fn ungrow(&mut self, current: u64, desired: u64) {
        let after = self.held.saturating_sub(desired).saturating_add(current);
        // A shrink is never refused.
        let _ = self.usage.grow(desired, current, self.shared, after);
        self.held = after;
    }
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        self.usage.release(self.held);
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    // wasmtime asks before it checks the memory's or table's own maximum and
    // before it maps anything: a growth past the maximum is refused here
    // without a charge (wasmtime would fail it right after), and a memory
    // growth that fails after the grant (the mapping, or a pooled slot's
    // capacity) is given back in `memory_grow_failed`. A table's only
    // failure after the grant is its maximum. Without this a loop of
    // `table.grow` on a full table would charge the budget each time.
    // `memory_grow_failed` is also called without a grant for a memory of
    // 1-byte pages (custom-page-sizes, off in the daemon's engines); the
    // grant is forgotten once given back, so that case gives back nothing
    // it was not given.

    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|maximum| desired > maximum) {
            return Ok(false);
        }
        let granted = self.grow(current as u64, desired as u64)?;
        self.granted_memory = granted.then_some((current as u64, desired as u64));
        Ok(granted)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        tracing::debug!(error = %error, "a guest's memory growth failed after it was granted");
        if let Some((current, desired)) = self.granted_memory.take() {
            self.ungrow(current, desired);
        }
        Ok(())
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|maximum| desired > maximum) {
            return Ok(false);
        }
        self.grow(current as u64 * TABLE_ELEMENT_BYTES, desired as u64 * TABLE_ELEMENT_BYTES)
    }
}

pin_project_lite::pin_project! {
    /// Runs a guest's future: counts the CPU time of each poll and, when the guest
    /// has a CPU limit, holds it back once it has used its quota for the period.
    ///
    /// A guest yields at every epoch tick, so it can overrun its quota by up to a
    /// tick; the overrun is carried into the next periods as debt, which keeps
    /// the long-run share at quota / period (as the CFS does with its slices).
    pub(super) struct CpuMeter<U, F> {
        #[pin]
        inner: F,
        usage: U,
        throttle: Option<Pin<Box<Sleep>>>,
    }
}

impl<U: std::ops::Deref<Target = Usage>, F> CpuMeter<U, F> {
    /// Meters `inner` against `usage` (a reference or an `Arc`): its CPU
    /// is counted there, and its quota's budget is the container's, shared
    /// by all its instances.
    pub fn new(inner: F, usage: U) -> Self {
        Self { inner, usage, throttle: None }
    }
}

impl<U: std::ops::Deref<Target = Usage>, F: Future> Future for CpuMeter<U, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if let Some(throttle) = this.throttle {
            if throttle.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            *this.throttle = None;
        }
        let before = crate::sys::thread_cpu_nanos();
        let poll = this.inner.poll(cx);
        let spent = crate::sys::thread_cpu_nanos().saturating_sub(before);
        this.usage.cpu_nanos.fetch_add(spent, Ordering::Relaxed);
        if poll.is_pending()
            && let Some(until) = this.usage.charge_cpu(spent, Instant::now())
        {
            let now = Instant::now();
            this.usage.throttled_periods.fetch_add(1, Ordering::Relaxed);
            this.usage
                .throttled_nanos
                .fetch_add(until.saturating_duration_since(now).as_nanos() as u64, Ordering::Relaxed);
            let mut throttle = Box::pin(tokio::time::sleep_until(until));
            // Registers the wake-up; the guest is not polled again before it.
            let _ = throttle.as_mut().poll(cx);
            *this.throttle = Some(throttle);
        }
        poll
    }
}

/// CPU time used in the current period, CFS-style: each period that passes
/// refills one quota; time used beyond the quota is debt the next periods repay.
#[derive(Debug)]
struct Budget {
    period_start: Instant,
    used: u64,
}

impl Budget {
    fn new(now: Instant) -> Self {
        Self { period_start: now, used: 0 }
    }

    /// Charges `spent` nanoseconds at `now`. Returns when the guest may run
    /// again if it has used up its quota.
    fn charge(&mut self, spent: u64, now: Instant, quota: u64, period: u64) -> Option<Instant> {
        let elapsed = now.saturating_duration_since(self.period_start).as_nanos() as u64;
        if elapsed >= period {
            let periods = elapsed / period;
            // Unused quota is not banked: an idle guest gets no burst later.
            self.used = self.used.saturating_sub(periods.saturating_mul(quota));
            self.period_start += Duration::from_nanos(periods * period);
        }
        self.used += spent;
        if self.used < quota {
            return None;
        }
        // After k more refills the debt is below one quota again.
        let periods_to_wait = self.used / quota;
        Some(self.period_start + Duration::from_nanos(periods_to_wait.saturating_mul(period)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn cri_quota_of_zero_or_less_is_no_limit() {
        assert_eq!(CpuBandwidth::from_cri(0, 100_000), None);
        assert_eq!(CpuBandwidth::from_cri(-1, 100_000), None);
        let half = CpuBandwidth::from_cri(50_000, 0).unwrap();
        assert_eq!((half.quota, half.period), (Duration::from_millis(50), Duration::from_millis(100)));
    }

    #[test]
    fn budget_holds_back_at_the_quota_until_the_next_period() {
        let start = Instant::now();
        let mut budget = Budget::new(start);
        assert_eq!(budget.charge(30 * MS, start, 50 * MS, 100 * MS), None);
        let until = budget.charge(30 * MS, start + Duration::from_millis(40), 50 * MS, 100 * MS);
        assert_eq!(until, Some(start + Duration::from_millis(100)));
        // At the next period the 10 ms overrun is carried: 40 ms are left.
        let next = start + Duration::from_millis(100);
        assert_eq!(budget.charge(39 * MS, next, 50 * MS, 100 * MS), None);
        assert_eq!(budget.charge(2 * MS, next, 50 * MS, 100 * MS), Some(start + Duration::from_millis(200)));
    }

    #[test]
    fn budget_repays_a_long_overrun_over_several_periods() {
        let start = Instant::now();
        let mut budget = Budget::new(start);
        // 25 ms used against a 10 ms quota: two more periods repay it.
        assert_eq!(budget.charge(25 * MS, start, 10 * MS, 100 * MS), Some(start + Duration::from_millis(200)));
        assert_eq!(budget.charge(0, start + Duration::from_millis(200), 10 * MS, 100 * MS), None);
    }

    #[test]
    fn an_idle_guest_banks_no_quota() {
        let start = Instant::now();
        let mut budget = Budget::new(start);
        let later = start + Duration::from_secs(10);
        assert_eq!(budget.charge(49 * MS, later, 50 * MS, 100 * MS), None);
        assert!(budget.charge(2 * MS, later, 50 * MS, 100 * MS).is_some());
    }

    #[test]
    fn memory_limit_counts_tables_and_memories_together() {
        let usage =
            Arc::new(Usage::new(Limits { memory_bytes: 1000, cpu: None }, GuestDefaults::default(), Arc::default()));
        let mut limiter = MemoryLimiter::new(usage.clone());
        assert!(limiter.grow(0, 800).unwrap());
        assert!(limiter.grow(0, 100).unwrap());
        assert!(!limiter.hit_limit());
        assert!(!limiter.grow(800, 1000).unwrap(), "growth past the limit must be refused");
        assert!(limiter.hit_limit());
        assert_eq!(usage.memory_bytes.load(Ordering::Relaxed), 900);
        drop(limiter);
        assert_eq!(usage.memory_bytes.load(Ordering::Relaxed), 0, "an ended instance gives its memory back");
    }

    #[test]
    fn instances_sharing_a_usage_share_its_memory_limit() {
        let usage =
            Arc::new(Usage::new(Limits { memory_bytes: 1000, cpu: None }, GuestDefaults::default(), Arc::default()));
        let (mut first, mut second) = (MemoryLimiter::new(usage.clone()), MemoryLimiter::new(usage.clone()));
        assert!(first.grow(0, 600).unwrap());
        assert!(!second.grow(0, 600).unwrap(), "the two together would hold 1200 bytes");
        assert!(second.hit_limit() && !first.hit_limit(), "only the refused instance hit the limit");
        assert!(second.grow(0, 400).unwrap());
        assert_eq!(usage.memory_bytes.load(Ordering::Relaxed), 1000);
        drop(first);
        assert_eq!(usage.memory_bytes.load(Ordering::Relaxed), 400);
        assert!(second.grow(400, 1000).unwrap(), "what the first held is free again");
    }

    #[test]
    fn a_per_instance_limit_holds_each_instance_alone_and_counts_all() {
        let usage =
            Arc::new(Usage::new(Limits { memory_bytes: 1000, cpu: None }, GuestDefaults::default(), Arc::default()));
        let (mut first, mut second) =
            (MemoryLimiter::per_instance(usage.clone()), MemoryLimiter::per_instance(usage.clone()));
        assert!(first.grow(0, 800).unwrap());
        assert!(second.grow(0, 800).unwrap(), "each instance has the whole limit");
        assert_eq!(usage.memory_bytes.load(Ordering::Relaxed), 1600, "the usage counts both");
        assert!(!first.grow(800, 1200).unwrap(), "one instance past the limit is refused");
        assert!(first.hit_limit() && !second.hit_limit());
        assert_eq!(usage.memory_bytes.load(Ordering::Relaxed), 1600, "a refused growth takes nothing");
        drop(first);
        assert_eq!(usage.memory_bytes.load(Ordering::Relaxed), 800);
    }

    #[test]
    fn the_budget_refuses_the_guest_that_would_pass_it_and_spares_the_others() {
        let budget = Arc::new(MemoryBudget::new(1000, "test"));
        let container = |memory_bytes| {
            Arc::new(Usage::new(Limits { memory_bytes, cpu: None }, GuestDefaults::default(), budget.clone()))
        };
        let (one, two) = (container(900), container(900));
        let mut first = MemoryLimiter::new(one.clone());
        let mut second = MemoryLimiter::new(two.clone());
        assert!(first.grow(0, 800).unwrap());
        let error = second.grow(0, 300).expect_err("800 + 300 passes the budget of 1000: the asker traps");
        assert_eq!(second.refusal(), Some(Refusal::Budget { budget: 1000, held: 800, asked: 300 }));
        assert!(error.to_string().contains("guest_memory_budget_bytes, 1000 bytes"), "{error}");
        assert_eq!(first.refusal(), None, "the guest that held its memory is not touched");
        assert_eq!(two.memory_bytes.load(Ordering::Relaxed), 0, "a refused growth is charged to nobody");
        assert!(!second.grow(0, 950).unwrap(), "past its own limit a growth fails without a trap");
        assert_eq!(
            second.refusal(),
            Some(Refusal::Budget { budget: 1000, held: 800, asked: 300 }),
            "the first refusal stays"
        );
        assert!(second.grow(0, 200).unwrap(), "what is left of the budget");
        assert_eq!(budget.snapshot().used_bytes, 1000);
        assert_eq!(budget.snapshot().refusals, 1, "a refusal for the container's limit is not the budget's");
        drop(first);
        assert_eq!(budget.snapshot().used_bytes, 200, "an ended instance gives its memory back to the budget");
        assert_eq!(one.memory_bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_budget_refusal_after_a_limit_refusal_is_the_one_kept() {
        let budget = Arc::new(MemoryBudget::new(1000, "test"));
        let usage =
            Arc::new(Usage::new(Limits { memory_bytes: 900, cpu: None }, GuestDefaults::default(), budget.clone()));
        let mut other = MemoryLimiter::new(Arc::new(Usage::new(Limits::default(), GuestDefaults::default(), budget)));
        assert!(other.grow(0, 500).unwrap());
        let mut limiter = MemoryLimiter::new(usage);
        assert!(!limiter.grow(0, 950).unwrap());
        assert_eq!(limiter.refusal(), Some(Refusal::Limit));
        limiter.grow(0, 600).expect_err("500 + 600 passes the budget");
        assert_eq!(
            limiter.refusal(),
            Some(Refusal::Budget { budget: 1000, held: 500, asked: 600 }),
            "the trap is the budget's: its message must say so"
        );
    }

    #[test]
    fn a_memory_growth_that_fails_after_its_grant_is_given_back_once() {
        use wasmtime::ResourceLimiter;
        let budget = Arc::new(MemoryBudget::new(1 << 20, "test"));
        let usage = Arc::new(Usage::new(Limits::default(), GuestDefaults::default(), budget.clone()));
        let mut limiter = MemoryLimiter::new(usage.clone());
        assert!(limiter.memory_growing(0, 65536, None).unwrap());
        assert!(limiter.memory_growing(65536, 131072, None).unwrap());
        limiter.memory_grow_failed(wasmtime::format_err!("mmap failed")).unwrap();
        assert_eq!((usage.memory_bytes.load(Ordering::Relaxed), budget.snapshot().used_bytes), (65536, 65536));
        // A failure reported without a grant before it gives back nothing.
        limiter.memory_grow_failed(wasmtime::format_err!("memory growth exceeds memory type's limits")).unwrap();
        assert_eq!((usage.memory_bytes.load(Ordering::Relaxed), budget.snapshot().used_bytes), (65536, 65536));
        drop(limiter);
        assert_eq!(budget.snapshot().used_bytes, 0);
    }

    #[test]
    fn growing_a_full_table_or_memory_in_a_loop_charges_nothing() {
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(
            &engine,
            r#"(module
                (table 1 1 funcref)
                (memory 1 2)
                (func (export "grow") (result i32)
                  (local $i i32) (local $failed i32)
                  (loop $again
                    (local.set $failed (i32.add (local.get $failed)
                      (i32.eq (table.grow (ref.null func) (i32.const 1000000)) (i32.const -1))))
                    (local.set $failed (i32.add (local.get $failed)
                      (i32.eq (memory.grow (i32.const 100)) (i32.const -1))))
                    (local.set $i (i32.add (local.get $i) (i32.const 1)))
                    (br_if $again (i32.lt_u (local.get $i) (i32.const 1000))))
                  (local.get $failed)))"#,
        )
        .unwrap();
        let budget = Arc::new(MemoryBudget::new(64 << 20, "test"));
        let usage = Arc::new(Usage::new(Limits::default(), GuestDefaults::default(), budget.clone()));
        let mut store = wasmtime::Store::new(&engine, MemoryLimiter::new(usage.clone()));
        store.limiter(|limiter| limiter);
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let held = budget.snapshot().used_bytes;
        assert_eq!(held, 65536 + TABLE_ELEMENT_BYTES, "one page and one table slot");
        let grow = instance.get_typed_func::<(), i32>(&mut store, "grow").unwrap();
        assert_eq!(grow.call(&mut store, ()).unwrap(), 2000, "every growth past the maximum fails");
        assert_eq!(budget.snapshot().used_bytes, held, "and is charged to nobody");
        assert_eq!(usage.memory_bytes.load(Ordering::Relaxed), held);
        assert_eq!(budget.snapshot().refusals, 0, "a guest's own maximum is not the budget's refusal");
        assert!(store.data().refusal().is_none(), "nor the container's limit");
    }

    #[test]
    fn instances_share_one_cpu_budget_per_period() {
        let cpu = CpuBandwidth { quota: Duration::from_millis(10), period: Duration::from_millis(100) };
        let usage = Usage::new(Limits { memory_bytes: 0, cpu: Some(cpu) }, GuestDefaults::default(), Arc::default());
        let start = Instant::now();
        // Two instances each using 6 ms pass the 10 ms quota together.
        assert_eq!(usage.charge_cpu(6 * MS, start), None);
        assert_eq!(usage.charge_cpu(6 * MS, start), Some(start + Duration::from_millis(100)));
        let unlimited = Usage::new(Limits::default(), GuestDefaults::default(), Arc::default());
        assert_eq!(unlimited.charge_cpu(u64::MAX / 2, start), None);
    }

    #[test]
    fn no_container_limit_means_the_default() {
        assert_eq!(
            Usage::new(
                Limits::default(),
                GuestDefaults { memory_limit_bytes: 4096, ..GuestDefaults::default() },
                Arc::default()
            )
            .memory_limit(),
            4096
        );
        assert_eq!(
            Usage::new(
                Limits { memory_bytes: 10, cpu: None },
                GuestDefaults { memory_limit_bytes: 4096, ..GuestDefaults::default() },
                Arc::default()
            )
            .memory_limit(),
            10
        );
        assert_eq!(Usage::new(Limits::default(), GuestDefaults::default(), Arc::default()).memory_limit(), 0);
    }
}
