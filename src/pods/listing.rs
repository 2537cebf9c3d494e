//! The wasm part of a ListContainers response, encoded.
//!
//! kubelet lists every container without a filter once a second (PLEG's
//! relist). On a dense node that answer is thousands of entries, the same
//! from one second to the next: it is kept whole and given again until a
//! container is created, started, ended or removed.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};

/// Counts the changes a list shows: containers created, started and
/// removed. Each is counted once it is visible in the registry and the
/// container's state.
#[derive(Default)]
pub(super) struct Changes(AtomicU64);

impl Changes {
    pub fn record(&self) {
        self.0.fetch_add(1, Ordering::Release);
    }

    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// The state a list was made in: it differs as soon as anything a list
/// shows has changed. Counts grow only after a change is visible, and are
/// read before the containers are, so an answer shows every change its
/// generation counts (and perhaps later ones): it is never older than it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Generation {
    pub changes: u64,
    pub ended_guests: u64,
}

/// The last answer to a list without a filter.
#[derive(Default)]
pub(super) struct UnfilteredList {
    /// Held while an answer is made, so that answers are made one at a time
    /// and the one kept is always the newest: a list never shows a container
    /// in an older state than a list before it did.
    last: tokio::sync::Mutex<Option<(Generation, Bytes)>>,
}

impl UnfilteredList {
    /// The kept answer if nothing changed since it was made, or a new one from `make`.
    pub async fn get_or_make(&self, generation: impl FnOnce() -> Generation, make: impl FnOnce() -> Bytes) -> Bytes {
        let mut last = self.last.lock().await;
        let now = generation();
        if let Some((made_in, answer)) = &*last
            && *made_in == now
        {
            return answer.clone();
        }
        let answer = make();
        *last = Some((now, answer.clone()));
        answer
    }
}

/// The entries one after another, as the repeated field they encode.
pub(super) fn concat(entries: Vec<Bytes>) -> Bytes {
    let mut all = BytesMut::with_capacity(entries.iter().map(Bytes::len).sum());
    for entry in &entries {
        all.put_slice(entry);
    }
    all.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(changes: u64, ended_guests: u64) -> Generation {
        Generation { changes, ended_guests }
    }

    #[tokio::test]
    async fn an_answer_is_made_again_only_when_its_generation_changed() {
        let list = UnfilteredList::default();
        let made = std::cell::Cell::new(0);
        let make = |text: &'static str| {
            made.set(made.get() + 1);
            Bytes::from_static(text.as_bytes())
        };
        assert_eq!(list.get_or_make(|| generation(1, 0), || make("a")).await, "a");
        assert_eq!(list.get_or_make(|| generation(1, 0), || make("b")).await, "a");
        assert_eq!(made.get(), 1);
        assert_eq!(list.get_or_make(|| generation(2, 0), || make("c")).await, "c");
        assert_eq!(list.get_or_make(|| generation(2, 1), || make("d")).await, "d");
        assert_eq!(list.get_or_make(|| generation(2, 1), || make("e")).await, "d");
        assert_eq!(made.get(), 3);
    }

    #[test]
    fn entries_are_concatenated_in_order() {
        let entries = vec![Bytes::from_static(b"ab"), Bytes::new(), Bytes::from_static(b"cde")];
        assert_eq!(concat(entries), Bytes::from_static(b"abcde"));
        assert_eq!(concat(Vec::new()), Bytes::new());
    }

    #[test]
    fn changes_count_up() {
        let changes = Changes::default();
        assert_eq!(changes.count(), 0);
        changes.record();
        changes.record();
        assert_eq!(changes.count(), 2);
    }
}
