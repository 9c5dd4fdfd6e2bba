//! Trust: subject (a character `alice@mac` or a world `mac`) → score, merged
//! last-writer-wins. Every change is a federated `trust` event, so it reaches every world
//! by the same road as the rest; the map is what those events add up to.
//!
//! The order: the change with the greatest `(updated_at, origin, seq)` wins. `updated_at`
//! is the origin's clock in ms; equal times are broken by the origin's world id, then by
//! its seq (two changes of one world in one millisecond: the later one). The key is
//! unique per change, so the winner does not depend on the order changes arrive in: the
//! map is a max over a set, idempotent and commutative.

use super::wire::{FedEvent, TrustChange, TrustEntry, WireError};
use std::collections::BTreeMap;

/// The order key of a change.
fn key(e: &TrustEntry) -> (u64, &str, u64) {
    (e.updated_at, e.origin.as_str(), e.seq)
}

/// Every subject's trust as this world knows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trust {
    map: BTreeMap<String, TrustEntry>,
}

impl Trust {
    pub fn new() -> Trust {
        Trust::default()
    }

    /// Keep `entry` if it beats the one held for its subject. Returns whether it did.
    pub fn apply(&mut self, entry: TrustEntry) -> bool {
        match self.map.get(&entry.subject) {
            Some(held) if key(held) >= key(&entry) => false,
            _ => {
                self.map.insert(entry.subject.clone(), entry);
                true
            }
        }
    }

    /// The entry a checked `trust` event sets.
    pub fn entry_of(ev: &FedEvent) -> Result<TrustEntry, WireError> {
        let c = TrustChange::from_event(ev)?;
        Ok(TrustEntry {
            subject: c.subject,
            score: c.score,
            updated_at: c.updated_at,
            origin: ev.origin.clone(),
            seq: ev.seq,
            timestamp: Some(ev.timestamp.clone()),
            sig: ev.sig.clone(),
        })
    }

    pub fn get(&self, subject: &str) -> Option<&TrustEntry> {
        self.map.get(subject)
    }

    /// The `updated_at` a new local change should carry so it wins over what is held,
    /// even where this world's clock is behind the world that made the held change:
    /// a person who sets a score expects to see it.
    pub fn stamp(&self, subject: &str, now_ms: u64) -> u64 {
        self.map
            .get(subject)
            .map_or(now_ms, |held| now_ms.max(held.updated_at.saturating_add(1)))
    }

    /// The whole map, ordered by subject (a snapshot's `trust`).
    pub fn entries(&self) -> Vec<TrustEntry> {
        self.map.values().cloned().collect()
    }

    /// The entries about `subject` and, for a character, nothing else: what travels with
    /// them.
    pub fn about(&self, subject: &str) -> Vec<TrustEntry> {
        self.map.get(subject).cloned().into_iter().collect()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(subject: &str, score: f64, at: u64, origin: &str, seq: u64) -> TrustEntry {
        TrustEntry {
            subject: subject.into(),
            score,
            updated_at: at,
            origin: origin.into(),
            seq,
            timestamp: None,
            sig: None,
        }
    }

    #[test]
    fn latest_change_wins_and_ties_break_on_origin_then_seq() {
        let mut t = Trust::new();
        assert!(t.apply(entry("alice@mac", 0.5, 100, "mac", 1)));
        assert!(!t.apply(entry("alice@mac", 0.1, 99, "vps", 4)), "older");
        assert!(
            t.apply(entry("alice@mac", 0.9, 100, "vps", 1)),
            "same time, vps > mac"
        );
        assert!(!t.apply(entry("alice@mac", 0.2, 100, "mac", 9)));
        assert!(
            t.apply(entry("alice@mac", 0.3, 100, "vps", 2)),
            "same world, later seq"
        );
        assert!(
            !t.apply(entry("alice@mac", 0.3, 100, "vps", 2)),
            "again: no change"
        );
        assert_eq!(t.get("alice@mac").map(|e| e.score), Some(0.3));
    }

    #[test]
    fn a_local_change_is_stamped_after_what_is_held() {
        let mut t = Trust::new();
        t.apply(entry("vps", 0.5, 5_000, "vps", 1));
        assert_eq!(t.stamp("vps", 1_000), 5_001, "our clock is behind vps");
        assert_eq!(t.stamp("vps", 9_000), 9_000);
        assert_eq!(t.stamp("bezalel", 1_000), 1_000);
    }
}
