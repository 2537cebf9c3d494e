//! Short blocking calls (a file opened, a line appended) made from async code
//! without a trip to another thread.
//!
//! `tokio::task::spawn_blocking` hands the call to a thread of the blocking
//! pool and wakes the caller when it is done: two wake-ups of parked
//! threads. `cargo bench -- append` times one 400-byte append from a task on
//! a worker (2 workers, appends 300 µs apart; p50 on this project's 2-core
//! test machine): a plain `write` 5–6 µs, [`in_place`] 20–26 µs,
//! `spawn_blocking` 26–31 µs, a writer thread answering through a channel
//! 26–32 µs. The pod and container records (`pods/records.rs`), written
//! before the calls that change them answer, go through [`in_place`]; the
//! plain `write` would block a worker on I/O.

/// Runs `f`, a short call that may block in the kernel, on the calling
/// thread without holding up the runtime's other tasks: on a worker of a
/// multi-thread runtime through `tokio::task::block_in_place` (the worker's
/// queue moves to another thread while `f` runs, so other tasks go on even
/// if `f` waits for the disk); outside a runtime, or on a current-thread
/// runtime (the unit tests), as it is.
///
/// Only for calls that are short unless the kernel makes them wait: code
/// that runs for long on its own (a guest, a compile, an unpack) belongs on
/// its own thread.
pub fn in_place<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|runtime| runtime.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::in_place;

    /// `block_in_place` panics on a current-thread runtime; `in_place` runs there too.
    #[test]
    fn runs_on_every_runtime_and_outside_one() {
        assert_eq!(in_place(|| 1), 1);
        let current = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert_eq!(current.block_on(async { in_place(|| 2) }), 2);
        let multi = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
        assert_eq!(multi.block_on(async { tokio::spawn(async { in_place(|| 3) }).await.unwrap() }), 3);
    }
}
