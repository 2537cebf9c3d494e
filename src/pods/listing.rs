//! The wasm part of ListPodSandbox and ListContainers responses, encoded.
//!
//! kubelet lists every pod and every container without a filter once a
//! second (PLEG's relist). On a dense node each answer is thousands of
//! entries, the same from one second to the next: each pod and container
//! keeps its entry encoded until its state changes, and a whole unfiltered
//! answer is kept and given again until something it shows has changed.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};

/// Counts the changes a list shows (pods run, stopped and removed;
/// containers created, started, exited and removed). Each is counted once it
/// is visible in the registry and the object's state.
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
}

/// The last answer to a list without a filter, and the generation (`G`)
/// it was made in.
pub(super) struct UnfilteredList<G> {
    /// Held while an answer is made, so that answers are made one at a time
    /// and the one kept is always the newest: a list never shows a pod or
    /// container in an older state than a list before it did.
    last: tokio::sync::Mutex<Option<(G, Bytes)>>,
}

impl<G> Default for UnfilteredList<G> {
    fn default() -> Self {
        Self { last: tokio::sync::Mutex::new(None) }
    }
}

impl<G: Copy + PartialEq> UnfilteredList<G> {
    /// The kept answer if nothing changed since it was made, or a new one from `make`.
    pub async fn get_or_make(&self, generation: impl FnOnce() -> G, make: impl FnOnce() -> Bytes) -> Bytes {
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

/// A pod's or container's encoded list entry, and the state it shows (the
/// rest of an entry never changes).
pub struct KeptEntry<S>(Mutex<Option<(S, Bytes)>>);

impl<S> Default for KeptEntry<S> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

impl<S: Copy + PartialEq> KeptEntry<S> {
    /// The kept entry if it shows `state`, or a new one made by `encode` (and kept).
    pub fn get_or_encode(&self, state: S, encode: impl FnOnce() -> Bytes) -> Bytes {
        let mut kept = self.0.lock().unwrap();
        match &*kept {
            Some((kept_state, entry)) if *kept_state == state => entry.clone(),
            _ => {
                let entry = encode();
                *kept = Some((state, entry.clone()));
                entry
            }
        }
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

    fn generation(changes: u64) -> Generation {
        Generation { changes }
    }

    #[tokio::test]
    async fn an_answer_is_made_again_only_when_its_generation_changed() {
        let list = UnfilteredList::default();
        let made = std::cell::Cell::new(0);
        let make = |text: &'static str| {
            made.set(made.get() + 1);
            Bytes::from_static(text.as_bytes())
        };
        assert_eq!(list.get_or_make(|| generation(1), || make("a")).await, "a");
        assert_eq!(list.get_or_make(|| generation(1), || make("b")).await, "a");
        assert_eq!(made.get(), 1);
        assert_eq!(list.get_or_make(|| generation(2), || make("c")).await, "c");
        assert_eq!(list.get_or_make(|| generation(3), || make("d")).await, "d");
        assert_eq!(list.get_or_make(|| generation(3), || make("e")).await, "d");
        assert_eq!(made.get(), 3);
    }

    #[test]
    fn an_entry_is_encoded_again_only_for_another_state() {
        let kept = KeptEntry::default();
        assert_eq!(kept.get_or_encode(1, || Bytes::from_static(b"one")), "one");
        assert_eq!(kept.get_or_encode(1, || Bytes::from_static(b"again")), "one");
        assert_eq!(kept.get_or_encode(2, || Bytes::from_static(b"two")), "two");
        assert_eq!(kept.get_or_encode(1, || Bytes::from_static(b"one, later")), "one, later");
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
