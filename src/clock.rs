//! The wall clock in the unit the CRI speaks.

/// Unix time in nanoseconds (`i64`), the unit of every CRI timestamp
/// (`created_at`, `started_at`, `finished_at`, stats' `timestamp`).
///
/// A clock before 1970 or after 2262 (outside what `i64` nanoseconds hold)
/// gives 0 rather than a panic.
pub fn now_nanos() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
}
