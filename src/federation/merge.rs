//! The federated event log: every event this world holds, keyed by `(origin, seq)`,
//! indexed by origin then seq, with a contiguous high-water mark per origin.
//!
//! The rules, and why they give an idempotent, commutative, order-free merge:
//! - **Insert is set union.** An event is stored once under `(origin, seq)`; a second copy
//!   (from the same peer, another peer, or a page asked twice) is a [`Insert::Duplicate`]
//!   and changes nothing. The log is therefore a function of the *set* of events received,
//!   whatever their order or repetition.
//! - **The mark only advances contiguously.** `mark(origin)` is the greatest `n` such that
//!   every event `1..=n` of that origin is held (or was pruned). An event after a gap is
//!   kept (and shown), but the mark waits for the gap; the mark is again a function of the
//!   set, so it converges too.
//! - **A world serves only the contiguous part.** [`EventLog::delta_since`] returns, per
//!   origin, events in `(cursor, mark]` in seq order. The origin itself always holds its
//!   own events contiguously, so by induction every honest world serves gap-free runs and
//!   a receiver never advances past an event it lacks. Events held past a gap wait to be
//!   served until the gap fills: nothing is announced that a peer could skip forever.
//! - **Cost follows the change.** The index is `origin → BTreeMap<seq, event>`; a delta
//!   does one range seek per origin (O(log n)) and then reads only the events it returns.
//!   With 100,000 stored events and 10 new ones, a round reads those 10 (plus one seek per
//!   origin, and origins are the handful of worlds in the federation), never the rest.

use super::wire::{Cursor, FedEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `origin`'s events `1..=upto` are no longer kept here (a durable row: the store drops
/// those events and remembers the mark).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pruned {
    pub origin: String,
    pub upto: u64,
}

/// One origin's events.
#[derive(Debug, Clone, Default, PartialEq)]
struct OriginLog {
    events: BTreeMap<u64, FedEvent>,
    /// Every event `1..=mark` is held or was pruned.
    mark: u64,
    /// Events `1..=pruned` are no longer kept here.
    pruned: u64,
}

impl OriginLog {
    fn advance(&mut self) {
        while self.events.contains_key(&(self.mark + 1)) {
            self.mark += 1;
        }
    }
}

/// Whether an insert changed the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    New,
    Duplicate,
}

/// One page of [`EventLog::delta_since`].
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub events: Vec<FedEvent>,
    /// The asked cursor, moved past what this page returns.
    pub next: Cursor,
    pub more: bool,
    /// Origins whose events up to this seq are pruned here while the asker lacks them.
    pub pruned: Cursor,
}

/// Every federated event this world holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventLog {
    origins: BTreeMap<String, OriginLog>,
    len: usize,
}

impl EventLog {
    pub fn new() -> EventLog {
        EventLog::default()
    }

    /// Events held (not counting pruned ones).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Store `ev` unless it is already held or pruned. The caller has checked it.
    pub fn insert(&mut self, ev: FedEvent) -> Insert {
        let o = self.origins.entry(ev.origin.clone()).or_default();
        if ev.seq <= o.pruned || o.events.contains_key(&ev.seq) {
            return Insert::Duplicate;
        }
        let seq = ev.seq;
        o.events.insert(seq, ev);
        self.len += 1;
        if seq == o.mark + 1 {
            o.advance();
        }
        Insert::New
    }

    pub fn contains(&self, origin: &str, seq: u64) -> bool {
        self.origins
            .get(origin)
            .is_some_and(|o| seq <= o.pruned || o.events.contains_key(&seq))
    }

    pub fn get(&self, origin: &str, seq: u64) -> Option<&FedEvent> {
        self.origins.get(origin).and_then(|o| o.events.get(&seq))
    }

    /// The contiguous high-water mark of `origin`.
    pub fn mark(&self, origin: &str) -> u64 {
        self.origins.get(origin).map_or(0, |o| o.mark)
    }

    /// Every origin's mark: what this world holds, as a cursor.
    pub fn have(&self) -> Cursor {
        Cursor(
            self.origins
                .iter()
                .map(|(k, o)| (k.clone(), o.mark))
                .collect(),
        )
    }

    /// Every event held, in `(origin, seq)` order (for snapshots and tests).
    pub fn iter(&self) -> impl Iterator<Item = &FedEvent> {
        self.origins.values().flat_map(|o| o.events.values())
    }

    /// Up to `limit` events beyond `cursor`, per origin contiguous and in seq order,
    /// never one whose origin is `asker` (an event is never sent back where it was born).
    /// Reads one range per origin and then only the events returned.
    pub fn delta_since(&self, cursor: &Cursor, asker: Option<&str>, limit: usize) -> Page {
        self.delta_within(cursor, asker, limit, usize::MAX)
    }

    /// [`EventLog::delta_since`], and the page's events also stop before their JSON
    /// passes `max_bytes` (a page has at least one event, so paging always moves on): a
    /// document stays under the receiving bridge's body limit.
    pub fn delta_within(
        &self,
        cursor: &Cursor,
        asker: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Page {
        self.delta_serving(cursor, asker, limit, max_bytes, &|_| true)
    }

    /// [`EventLog::delta_within`], serving only the origins `serve` names (the others
    /// are held here and not relayed).
    pub fn delta_serving(
        &self,
        cursor: &Cursor,
        asker: Option<&str>,
        limit: usize,
        max_bytes: usize,
        serve: &dyn Fn(&str) -> bool,
    ) -> Page {
        let limit = limit.max(1);
        let mut bytes = 0usize;
        let mut events = Vec::new();
        let mut next = cursor.clone();
        let mut pruned = Cursor::default();
        let mut more = false;
        for (origin, o) in &self.origins {
            if Some(origin.as_str()) == asker || !serve(origin) {
                continue;
            }
            let mut from = cursor.get(origin);
            if from < o.pruned {
                // What the asker lacks is gone here: say so, and go on from what is kept.
                pruned.set(origin, o.pruned);
                next.set(origin, o.pruned);
                from = o.pruned;
            }
            if from >= o.mark {
                continue;
            }
            if events.len() >= limit {
                more = true;
                break;
            }
            for (seq, ev) in o.events.range(from + 1..=o.mark) {
                if events.len() >= limit {
                    more = true;
                    break;
                }
                if max_bytes != usize::MAX {
                    // The event as it goes on the wire, and its comma.
                    let size = serde_json::to_vec(ev).map_or(0, |v| v.len()) + 1;
                    if !events.is_empty() && bytes + size > max_bytes {
                        more = true;
                        break;
                    }
                    bytes += size;
                }
                events.push(ev.clone());
                next.set(origin, *seq);
            }
        }
        Page {
            events,
            next,
            more,
            pruned,
        }
    }

    /// Forget all but the last `keep` contiguous events of each origin (the mark stays:
    /// a pruned event still counts as held, so a second copy is a duplicate).
    /// Returns the origins whose pruned mark moved.
    pub fn prune(&mut self, keep: usize) -> Vec<Pruned> {
        let mut moved = Vec::new();
        let mut dropped = 0;
        for (origin, o) in self.origins.iter_mut() {
            let upto = o.mark.saturating_sub(keep as u64);
            if upto <= o.pruned {
                continue;
            }
            let kept = o.events.split_off(&(upto + 1));
            dropped += o.events.len();
            o.events = kept;
            o.pruned = upto;
            moved.push(Pruned {
                origin: origin.clone(),
                upto,
            });
        }
        self.len -= dropped;
        moved
    }

    /// Change each held event of `origin` in place (its `(origin, seq)` stays).
    pub fn each_of_mut(&mut self, origin: &str, mut f: impl FnMut(&mut FedEvent)) {
        if let Some(o) = self.origins.get_mut(origin) {
            o.events.values_mut().for_each(&mut f);
        }
    }

    /// Up to which seq `origin`'s events are pruned here.
    pub fn pruned(&self, origin: &str) -> u64 {
        self.origins.get(origin).map_or(0, |o| o.pruned)
    }

    /// A peer no longer keeps `origin`'s events up to `upto` (or the store says we
    /// pruned them): count them as seen here (held events beyond stay; the mark moves
    /// over the pruned part and any run after). Nothing changes when we already hold
    /// them all: our copies stay ours to serve. True when something changed.
    pub fn skip_to(&mut self, origin: &str, upto: u64) -> bool {
        let o = self.origins.entry(origin.to_string()).or_default();
        if upto <= o.mark {
            return false;
        }
        let kept = o.events.split_off(&(upto + 1));
        self.len -= o.events.len();
        o.events = kept;
        o.pruned = upto;
        o.mark = o.mark.max(upto);
        o.advance();
        true
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::federation::wire::Kind;

    pub(crate) fn ev(origin: &str, seq: u64) -> FedEvent {
        FedEvent {
            origin: origin.into(),
            seq,
            kind: Kind::Say,
            room: Some("Gate".into()),
            user_id: Some("u".into()),
            username: Some("U".into()),
            message: Some(format!("{origin} {seq}")),
            event: None,
            timestamp: "2026-12-01T18:00:00Z".into(),
            data: None,
            sig: None,
        }
    }

    #[test]
    fn duplicates_change_nothing_and_gaps_hold_the_mark() {
        let mut log = EventLog::new();
        assert_eq!(log.insert(ev("mac", 1)), Insert::New);
        assert_eq!(log.insert(ev("mac", 1)), Insert::Duplicate);
        assert_eq!(log.insert(ev("mac", 3)), Insert::New);
        assert_eq!(log.mark("mac"), 1, "3 is kept but 2 is missing");
        assert!(log.contains("mac", 3));
        let page = log.delta_since(&Cursor::default(), None, 10);
        assert_eq!(page.events.len(), 1, "only the contiguous run is served");
        assert_eq!(page.next.get("mac"), 1);
        assert_eq!(log.insert(ev("mac", 2)), Insert::New);
        assert_eq!(log.mark("mac"), 3, "the gap filled: the mark jumps over 3");
        assert_eq!(log.len(), 3);
    }

    #[test]
    fn delta_pages_with_a_bound_and_never_serves_the_asker_its_own_events() {
        let mut log = EventLog::new();
        for s in 1..=5 {
            log.insert(ev("mac", s));
            log.insert(ev("vps", s));
        }
        let p1 = log.delta_since(&Cursor::default(), None, 4);
        assert_eq!(p1.events.len(), 4);
        assert!(p1.more);
        assert_eq!(p1.next.get("mac"), 4);
        let p2 = log.delta_since(&p1.next, None, 4);
        assert_eq!(
            p2.events
                .iter()
                .map(|e| (e.origin.as_str(), e.seq))
                .collect::<Vec<_>>(),
            vec![("mac", 5), ("vps", 1), ("vps", 2), ("vps", 3)]
        );
        let p3 = log.delta_since(&p2.next, None, 4);
        assert_eq!(p3.events.len(), 2);
        assert!(!p3.more);
        let to_vps = log.delta_since(&Cursor::default(), Some("vps"), 100);
        assert!(to_vps.events.iter().all(|e| e.origin != "vps"));
        assert_eq!(to_vps.events.len(), 5);
    }

    #[test]
    fn a_round_after_ten_new_events_moves_only_those_ten() {
        let mut log = EventLog::new();
        for s in 1..=100_000 {
            log.insert(ev("mac", s));
        }
        let have = log.have();
        for s in 100_001..=100_010 {
            log.insert(ev("mac", s));
        }
        let page = log.delta_since(&have, None, 500);
        assert_eq!(page.events.len(), 10);
        assert_eq!(page.events[0].seq, 100_001);
        assert!(!page.more);
        assert_eq!(page.next.get("mac"), 100_010);
    }

    #[test]
    fn pruned_history_is_announced_and_skipped() {
        let mut log = EventLog::new();
        for s in 1..=10 {
            log.insert(ev("mac", s));
        }
        let moved = log.prune(3);
        assert_eq!(
            moved,
            vec![Pruned {
                origin: "mac".into(),
                upto: 7
            }]
        );
        assert_eq!(log.len(), 3);
        assert_eq!(log.pruned("mac"), 7);
        assert!(log.prune(3).is_empty(), "nothing more to drop");
        assert_eq!(log.insert(ev("mac", 2)), Insert::Duplicate);
        let page = log.delta_since(&Cursor::default(), None, 100);
        assert_eq!(page.pruned.get("mac"), 7);
        assert_eq!(page.events.first().map(|e| e.seq), Some(8));

        let mut fresh = EventLog::new();
        fresh.insert(ev("mac", 9));
        fresh.skip_to("mac", page.pruned.get("mac"));
        assert_eq!(fresh.mark("mac"), 7);
        for e in page.events {
            fresh.insert(e);
        }
        assert_eq!(fresh.mark("mac"), 10);
        assert_eq!(fresh.have(), log.have());

        // A world that holds the whole history keeps it, whatever a peer pruned.
        let mut full = EventLog::new();
        for s in 1..=10 {
            full.insert(ev("mac", s));
        }
        full.skip_to("mac", 7);
        assert_eq!(full.len(), 10);
        assert_eq!(
            full.delta_since(&Cursor::default(), None, 100).events.len(),
            10
        );
    }
}
