//! Finding an object by its id or a prefix of it, as users type ids
//! (`crictl stop 4f2a`, `crictl rmi 0123456789ab`).
//!
//! The rule, once for every kind of id: the full id first; else the one id
//! that starts with the query. A query that is empty, or that more than one
//! id starts with, finds nothing. This is containerd's truncindex (the index
//! behind its CRI stores, `internal/truncindex`): any unique prefix, of any
//! length, resolves; an empty or ambiguous one does not (truncindex answers
//! `ErrEmptyPrefix` / `ErrAmbiguousPrefix`; here both are "not found", so
//! a caller answers them as it answers an unknown id). No minimum length is
//! imposed here: ids are random, so a short prefix is merely likely to be
//! ambiguous, never wrong. Where ids share a namespace with other names (images: an
//! image is asked for by id or by reference), the caller decides which
//! queries are ids at all before resolving.

use std::collections::{BTreeMap, HashMap};

/// A map from ids to objects that can be searched by prefix.
pub trait IdMap {
    type Value;

    /// The object whose id is exactly `id`.
    fn exact(&self, id: &str) -> Option<&Self::Value>;

    /// Every object whose id starts with `prefix` (`prefix` is not empty).
    fn with_prefix<'a, 'p>(&'a self, prefix: &'p str) -> impl Iterator<Item = &'a Self::Value>
    where
        Self::Value: 'a;
}

/// The object `query` names: the one whose id is `query`, else the only one
/// whose id starts with `query`; `None` when the query is empty, matches
/// nothing, or is a prefix of several ids.
pub fn resolve<'a, M: IdMap>(map: &'a M, query: &str) -> Option<&'a M::Value> {
    if let Some(found) = map.exact(query) {
        return Some(found);
    }
    if query.is_empty() {
        return None;
    }
    let mut matches = map.with_prefix(query);
    match (matches.next(), matches.next()) {
        (Some(found), None) => Some(found),
        _ => None,
    }
}

/// A linear scan: a hash map has no order to search a prefix in.
impl<V> IdMap for HashMap<String, V> {
    type Value = V;

    fn exact(&self, id: &str) -> Option<&V> {
        self.get(id)
    }

    fn with_prefix<'a, 'p>(&'a self, prefix: &'p str) -> impl Iterator<Item = &'a V>
    where
        V: 'a,
    {
        self.iter().filter(move |(id, _)| id.starts_with(prefix)).map(|(_, value)| value)
    }
}

/// The ids starting with a prefix are one range of the ordered map.
impl<V> IdMap for BTreeMap<String, V> {
    type Value = V;

    fn exact(&self, id: &str) -> Option<&V> {
        self.get(id)
    }

    fn with_prefix<'a, 'p>(&'a self, prefix: &'p str) -> impl Iterator<Item = &'a V>
    where
        V: 'a,
    {
        self.range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(move |(id, _)| id.starts_with(prefix))
            .map(|(_, value)| value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(ids: &[&str], query: &str) -> Option<String> {
        let hashed: HashMap<String, String> = ids.iter().map(|id| (id.to_string(), id.to_string())).collect();
        let ordered: BTreeMap<String, String> = hashed.clone().into_iter().collect();
        let from_hash = resolve(&hashed, query).cloned();
        assert_eq!(from_hash, resolve(&ordered, query).cloned(), "the maps disagree on {query:?}");
        from_hash
    }

    #[test]
    fn a_full_id_or_a_unique_prefix_of_any_length_resolves() {
        let ids = ["abc123", "abd456", "ff00"];
        assert_eq!(both(&ids, "abc123").as_deref(), Some("abc123"));
        assert_eq!(both(&ids, "abc").as_deref(), Some("abc123"));
        assert_eq!(both(&ids, "f").as_deref(), Some("ff00"));
    }

    #[test]
    fn a_full_id_wins_over_a_longer_id_it_is_a_prefix_of() {
        let ids = ["abc", "abcdef"];
        assert_eq!(both(&ids, "abc").as_deref(), Some("abc"));
        assert_eq!(both(&ids, "abcd").as_deref(), Some("abcdef"));
    }

    #[test]
    fn empty_ambiguous_and_unknown_queries_find_nothing() {
        let ids = ["abc123", "abd456"];
        assert_eq!(both(&ids, ""), None);
        assert_eq!(both(&ids, "ab"), None);
        assert_eq!(both(&ids, "abc1234"), None);
        assert_eq!(both(&ids, "zz"), None);
        assert_eq!(both(&[], "a"), None);
    }
}
