//! The world as data: what changed since the store last looked ([`Changes`]), and the
//! whole state as one serialisable [`Snapshot`] (what the store loads at start, and what
//! `worldbridge export` writes).

use super::room::{Event, Room, RoomSpec};
use super::session::Session;
use super::{Occupant, World};
use crate::world::time::parse_rfc3339;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Keys changed since the last [`World::take_changes`]: each is written again whole (or
/// deleted when gone), so writing a key twice is harmless.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    pub rooms: BTreeSet<String>,
    pub presence: BTreeSet<String>,
    pub sessions: BTreeSet<String>,
    /// New events, in order.
    pub events: Vec<Event>,
    /// Rooms removed (expired): their row and their events are deleted, before any
    /// row of `rooms` (a room of the same name created since is written again).
    pub rooms_gone: BTreeSet<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
            && self.presence.is_empty()
            && self.sessions.is_empty()
            && self.events.is_empty()
            && self.rooms_gone.is_empty()
    }
}

/// A room's stored part: its description and who has visited (its events and occupants
/// are stored on their own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomState {
    pub spec: RoomSpec,
    pub visitor_history: Vec<String>,
}

/// The whole state of a world, ordered so that equal worlds serialise identically. (The
/// store keeps more beside it: the gateway's resume history and the federation's state,
/// in `store::Stored`.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub world: String,
    /// The last event sequence number handed out.
    pub seq: u64,
    pub rooms: Vec<RoomState>,
    pub presence: Vec<Occupant>,
    /// Every room's event window, in `seq` order.
    pub events: Vec<Event>,
    pub sessions: Vec<Session>,
}

impl World {
    /// Keep track of changes from now on (a store persists this world).
    pub fn track_changes(&mut self) {
        self.track = true;
        self.sessions.track = true;
    }

    pub(super) fn mark_room(&mut self, name: &str) {
        if self.track {
            self.changes.rooms.insert(name.to_string());
        }
    }

    pub(super) fn mark_presence(&mut self, user_id: &str) {
        if self.track {
            self.changes.presence.insert(user_id.to_string());
        }
    }

    /// What changed since the last call.
    pub fn take_changes(&mut self) -> Changes {
        let mut c = std::mem::take(&mut self.changes);
        c.sessions = self.sessions.take_dirty();
        c
    }

    pub fn has_changes(&self) -> bool {
        !self.changes.is_empty() || self.sessions.has_dirty()
    }

    /// A room's stored part, `None` if it does not exist.
    pub fn room_state(&self, name: &str) -> Option<RoomState> {
        self.rooms.get(name).map(|r| RoomState {
            spec: r.spec.clone(),
            visitor_history: r.visitor_history.iter().cloned().collect(),
        })
    }

    pub fn snapshot(&self) -> Snapshot {
        let rooms = self
            .rooms
            .keys()
            .filter_map(|n| self.room_state(n))
            .collect();
        let mut presence: Vec<Occupant> = self.occupants.values().cloned().collect();
        presence.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        let mut events: Vec<Event> = self
            .rooms
            .values()
            .flat_map(|r| r.events.iter().cloned())
            .collect();
        events.sort_by_key(|e| e.seq);
        let mut sessions: Vec<Session> = self.sessions.all().cloned().collect();
        sessions.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Snapshot {
            world: self.id.clone(),
            seq: self.seq,
            rooms,
            presence,
            events,
            sessions,
        }
    }

    /// Load a snapshot over the world built from its world file: stored rooms replace
    /// the file's (the game and the users may have changed them), everything else is put
    /// back as it was. Event windows keep the last `rooms.events_max` per room.
    pub fn restore(&mut self, snap: Snapshot) {
        for rs in snap.rooms {
            let name = rs.spec.name.clone();
            self.by_lower.insert(name.to_lowercase(), name.clone());
            let room = self
                .rooms
                .entry(name)
                .or_insert_with(|| Room::new(rs.spec.clone()));
            room.spec = rs.spec;
            room.visitor_history = rs.visitor_history.into();
        }
        for mut ev in snap.events {
            ev.ts_ms = parse_rfc3339(&ev.timestamp).unwrap_or(0);
            if let Some(r) = self.rooms.get_mut(&ev.room) {
                r.push_event(ev, self.limits.events_max);
            }
        }
        for o in snap.presence {
            if let Some(r) = self.rooms.get_mut(&o.room) {
                r.occupants.push(super::room::Here {
                    user_id: o.user_id.clone(),
                    username: o.username.clone(),
                });
                self.occupants.insert(o.user_id.clone(), o);
            }
        }
        // Occupants in the order they entered, as `players` lists them.
        for r in self.rooms.values_mut() {
            let occ = &self.occupants;
            r.occupants.sort_by_key(|h| {
                occ.get(&h.user_id)
                    .map(|o| (o.entered_ms, o.user_id.clone()))
            });
        }
        for s in snap.sessions {
            self.sessions.restore(s);
        }
        self.seq = self.seq.max(snap.seq);
    }

    /// A stored copy of one occupant, `None` if the user is not present.
    pub fn presence_row(&self, user_id: &str) -> Option<&Occupant> {
        self.occupants.get(user_id)
    }
}

#[cfg(test)]
mod tests {
    use crate::world::room::WorldFile;
    use crate::world::session::SessionLimits;
    use crate::world::{World, WorldLimits};

    fn world() -> World {
        let limits = WorldLimits {
            sessions: SessionLimits {
                max: 20,
                idle_timeout_ms: 3_600_000,
                history_max: 50,
            },
            events_max: 50,
            rooms_max: 100,
            occupants_max: 100,
        };
        let wf = WorldFile::parse(crate::world::room::DEFAULT_WORLD).unwrap();
        World::new("local", "Timmy", wf, limits)
    }

    #[test]
    fn a_snapshot_restores_the_same_world() {
        let mut w = world();
        w.track_changes();
        w.say("a", "Alice", "The Garden", "hello", 1_000).unwrap();
        w.say("b", "Bob", "Limbo", "new room", 2_000).unwrap();
        w.move_user("a", None, "The Tower", 3_000).unwrap();
        w.sessions
            .touch("a", "Alice", "The Tower", 3_000, &|_| false);
        w.sessions.record("a", "hi", "hello Alice", 3_001);
        let changes = w.take_changes();
        assert!(changes.rooms.contains("Limbo") && changes.rooms.contains("The Tower"));
        assert_eq!(changes.presence.len(), 2);
        assert_eq!(changes.events.len(), 6, "2×(enter, say), leave, enter");
        assert!(changes.sessions.contains("a"));
        assert!(w.take_changes().is_empty());

        let snap = w.snapshot();
        let mut again = world();
        again.restore(snap.clone());
        assert_eq!(again.snapshot(), snap, "restore ∘ snapshot is the identity");
        assert_eq!(again.last_seq(), 6);
        assert_eq!(again.players("The Tower")[0].username, "Alice");
        assert_eq!(again.events("Limbo", None, Some(0)).unwrap().len(), 2);
        assert!(again.events("Limbo", Some(1_500), None).unwrap().len() == 2);
        let s = again.sessions.get("a").unwrap();
        assert_eq!(s.history.len(), 2);
        // New events go on from the stored sequence.
        let ev = again
            .say("b", "Bob", "Limbo", "again", 4_000)
            .unwrap()
            .event;
        assert_eq!(ev.seq, 7);
    }
}
