//! Remote presence: the characters of each peer world, as that world (their only
//! authority) last reported them, with when we last heard from it.
//!
//! Rules:
//! - A world's report replaces its whole character list, unless an equal or newer one
//!   (by `(epoch, seq)`) is already held: reports arriving out of order (a pull answer and
//!   a push crossing) cannot bring back a stale list.
//! - `last_seen` moves with every good document from the world (pull answer or push).
//! - A world not heard from for [`SILENT_INTERVALS`] sync intervals is shown `offline`
//!   and its characters `away`: kept, not deleted. Its next report sets them right.
//! - Presence is not relayed: a world shows the characters of the peers it syncs with.

use super::wire::{PresenceEntry, WorldPresence};
use std::collections::BTreeMap;

/// How many sync intervals of silence make a peer `offline`.
pub const SILENT_INTERVALS: u64 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerStatus {
    /// Never heard from since this process started.
    Unknown,
    Online,
    Offline,
}

impl PeerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerStatus::Unknown => "unknown",
            PeerStatus::Online => "online",
            PeerStatus::Offline => "offline",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CharacterStatus {
    Online,
    /// Their world is silent: last known where shown.
    Away,
}

impl CharacterStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CharacterStatus::Online => "online",
            CharacterStatus::Away => "away",
        }
    }
}

/// A remote character as shown here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown<'a> {
    pub world: &'a str,
    pub entry: &'a PresenceEntry,
    pub status: CharacterStatus,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct RemoteWorld {
    last_seen_ms: Option<u64>,
    /// The version of the report held; `None` before the first.
    version: Option<(u64, u64)>,
    characters: BTreeMap<String, PresenceEntry>,
}

/// Whether a report replaced what was held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    Applied,
    Stale,
}

/// Every peer world's characters.
#[derive(Debug, Clone, PartialEq)]
pub struct RemotePresence {
    worlds: BTreeMap<String, RemoteWorld>,
    silent_after_ms: u64,
}

impl RemotePresence {
    pub fn new(sync_interval_ms: u64) -> RemotePresence {
        RemotePresence {
            worlds: BTreeMap::new(),
            silent_after_ms: sync_interval_ms.max(1) * SILENT_INTERVALS,
        }
    }

    /// We heard from `world` (any good document).
    pub fn seen(&mut self, world: &str, now_ms: u64) {
        let w = self.worlds.entry(world.to_string()).or_default();
        w.last_seen_ms = Some(w.last_seen_ms.map_or(now_ms, |t| t.max(now_ms)));
    }

    /// `world`'s own report of its characters.
    pub fn report(&mut self, world: &str, presence: &WorldPresence, now_ms: u64) -> Report {
        self.seen(world, now_ms);
        let w = self.worlds.entry(world.to_string()).or_default();
        if w.version.is_some_and(|held| presence.version() <= held) {
            return Report::Stale;
        }
        w.version = Some(presence.version());
        w.characters = presence
            .characters
            .iter()
            .map(|c| (c.user_id.clone(), c.clone()))
            .collect();
        Report::Applied
    }

    pub fn status(&self, world: &str, now_ms: u64) -> PeerStatus {
        match self.worlds.get(world).and_then(|w| w.last_seen_ms) {
            None => PeerStatus::Unknown,
            Some(t) if now_ms.saturating_sub(t) > self.silent_after_ms => PeerStatus::Offline,
            Some(_) => PeerStatus::Online,
        }
    }

    pub fn last_seen(&self, world: &str) -> Option<u64> {
        self.worlds.get(world).and_then(|w| w.last_seen_ms)
    }

    /// Every world heard from, with its status and when it was last heard from (the
    /// status page, `/bridge/state` consumers).
    pub fn worlds(&self, now_ms: u64) -> Vec<(&str, PeerStatus, Option<u64>)> {
        self.worlds
            .iter()
            .map(|(w, r)| (w.as_str(), self.status(w, now_ms), r.last_seen_ms))
            .collect()
    }

    /// Every remote character, by world then user id.
    pub fn characters(&self, now_ms: u64) -> Vec<Shown<'_>> {
        self.worlds
            .iter()
            .flat_map(|(world, w)| {
                let status = match self.status(world, now_ms) {
                    PeerStatus::Online => CharacterStatus::Online,
                    _ => CharacterStatus::Away,
                };
                w.characters.values().map(move |entry| Shown {
                    world,
                    entry,
                    status,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(epoch: u64, seq: u64, names: &[&str]) -> WorldPresence {
        WorldPresence {
            epoch,
            seq,
            characters: names
                .iter()
                .map(|n| PresenceEntry {
                    user_id: n.to_lowercase(),
                    username: n.to_string(),
                    room: "Gate".into(),
                })
                .collect(),
            sig: None,
        }
    }

    #[test]
    fn a_silent_peer_goes_offline_after_three_intervals_and_comes_back() {
        let mut p = RemotePresence::new(5_000);
        assert_eq!(p.status("vps", 0), PeerStatus::Unknown);
        assert_eq!(
            p.report("vps", &report(1, 10, &["Bob"]), 1_000),
            Report::Applied
        );
        assert_eq!(p.status("vps", 16_000), PeerStatus::Online);
        assert_eq!(p.status("vps", 16_001), PeerStatus::Offline);
        let shown = p.characters(16_001);
        assert_eq!(shown.len(), 1, "kept, not deleted");
        assert_eq!(shown[0].status, CharacterStatus::Away);
        assert_eq!(shown[0].entry.username, "Bob");

        p.report("vps", &report(1, 12, &["Bob", "Carol"]), 30_000);
        assert_eq!(p.status("vps", 30_000), PeerStatus::Online);
        assert_eq!(
            p.worlds(30_000),
            vec![("vps", PeerStatus::Online, Some(30_000))]
        );
        let shown = p.characters(30_000);
        assert_eq!(shown.len(), 2);
        assert!(shown.iter().all(|s| s.status == CharacterStatus::Online));
    }

    #[test]
    fn a_stale_report_does_not_bring_back_an_old_list() {
        let mut p = RemotePresence::new(5_000);
        p.report("vps", &report(1, 12, &["Carol"]), 1_000);
        assert_eq!(
            p.report("vps", &report(1, 10, &["Bob"]), 2_000),
            Report::Stale
        );
        assert_eq!(p.characters(2_000)[0].entry.username, "Carol");
        assert_eq!(p.last_seen("vps"), Some(2_000), "still heard from");
        // A restart that lost memory: a later epoch wins although its seq is lower.
        assert_eq!(p.report("vps", &report(2, 1, &[]), 3_000), Report::Applied);
        assert!(p.characters(3_000).is_empty());
    }
}
