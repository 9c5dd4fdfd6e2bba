//! Rooms that expire: a room nobody defines (no world file, no game link, no portal list)
//! that has stayed empty for `rooms.idle_expire_s` is removed, its events with it, so
//! rooms that clients mention cannot fill `rooms.max` for good.
//!
//! The core only knows the world file's rooms and portal rooms; the caller says which
//! other rooms are kept (those a live game link reported, the configured portal rooms).

use super::World;

impl World {
    /// Remove the rooms that have been empty and unused for `idle_ms` and that neither the
    /// world file defines, nor are portals, nor `keep` names. Rooms in use (someone
    /// present, or kept) are marked used now, so a room's idle time starts when it was
    /// last in use, not when it was created. A room never seen before starts its clock
    /// now. Returns the names removed. Work: one pass over the rooms (at most
    /// `rooms.max`).
    pub fn expire_rooms(
        &mut self,
        now_ms: u64,
        idle_ms: u64,
        keep: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let mut gone = Vec::new();
        for (name, room) in &mut self.rooms {
            let held = self.file_rooms.contains(name)
                || room.spec.portal
                || !room.occupants.is_empty()
                || keep(name);
            if held || room.last_used_ms == 0 {
                room.last_used_ms = now_ms;
            } else if now_ms.saturating_sub(room.last_used_ms) >= idle_ms {
                gone.push(name.clone());
            }
        }
        for name in &gone {
            self.remove_room(name);
        }
        gone
    }

    /// Forget a room and its events (the store deletes both with the next batch).
    fn remove_room(&mut self, name: &str) {
        if self.rooms.remove(name).is_none() {
            return;
        }
        let lower = name.to_lowercase();
        if self.by_lower.get(&lower).map(String::as_str) == Some(name) {
            self.by_lower.remove(&lower);
            // Another room that differs only by case takes over the forgiving look-up.
            if let Some(other) = self.rooms.keys().find(|k| k.to_lowercase() == lower) {
                self.by_lower.insert(lower, other.clone());
            }
        }
        if self.track {
            self.changes.rooms.remove(name);
            self.changes.events.retain(|e| e.room != name);
            self.changes.rooms_gone.insert(name.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::world::room::{RoomSpec, WorldFile};
    use crate::world::session::SessionLimits;
    use crate::world::{World, WorldLimits};
    use std::collections::BTreeMap;

    const HOUR: u64 = 3_600_000;

    fn world(rooms_max: usize) -> World {
        let limits = WorldLimits {
            sessions: SessionLimits {
                max: 20,
                idle_timeout_ms: HOUR,
                history_max: 50,
            },
            events_max: 50,
            rooms_max,
            occupants_max: 100,
        };
        let wf = WorldFile::parse(crate::world::room::DEFAULT_WORLD).unwrap();
        let mut w = World::new("local", "Timmy", wf, limits);
        w.track_changes();
        w
    }

    #[test]
    fn an_idle_client_room_expires_with_its_events_and_frees_its_place() {
        let mut w = world(6);
        w.say("a", "Alice", "Limbo", "anyone?", 1_000).unwrap();
        assert_eq!(w.room_count(), 6);
        assert!(w.ensure_room("Elsewhere").is_err(), "rooms.max is reached");
        w.move_user("a", None, "The Garden", 2_000).unwrap();
        w.take_changes();
        // Empty since 2_000 (the leave): not yet idle for an hour.
        assert!(w.expire_rooms(2_000 + HOUR - 1, HOUR, |_| false).is_empty());
        assert_eq!(w.expire_rooms(2_000 + HOUR, HOUR, |_| false), ["Limbo"]);
        assert!(w.room("Limbo").is_none() && w.room("limbo").is_none());
        assert!(w.events("Limbo", None, None).is_err());
        let changes = w.take_changes();
        assert!(changes.rooms_gone.contains("Limbo"));
        assert!(!changes.rooms.contains("Limbo"));
        // Its place under rooms.max is free again.
        assert_eq!(w.ensure_room("Elsewhere").unwrap(), "Elsewhere");
    }

    #[test]
    fn defined_occupied_and_kept_rooms_stay() {
        let mut w = world(100);
        // A portal room (as federation.portal_rooms or the world file makes them).
        w.set_room(RoomSpec {
            name: "The Gate".into(),
            desc: String::new(),
            exits: BTreeMap::new(),
            objects: vec![],
            portal: true,
        })
        .unwrap();
        w.say("a", "Alice", "Occupied", "I stay", 1_000).unwrap();
        w.say("b", "Bob", "Declared", "a game's room", 1_000)
            .unwrap();
        w.remove("b", 1_000);
        w.ensure_room("Fresh").unwrap();
        let keep = |r: &str| r == "Declared";
        // First sight starts the clock of a room with no event yet ("Fresh").
        assert!(w.expire_rooms(2_000, HOUR, keep).is_empty());
        let gone = w.expire_rooms(10 * HOUR, HOUR, keep);
        assert_eq!(gone, ["Fresh"], "only the undefined, empty room goes");
        for r in [
            "The Threshold",
            "The Garden",
            "The Gate",
            "Occupied",
            "Declared",
        ] {
            assert!(w.room(r).is_some(), "{r} was expired");
        }
        // Once the link that declared it is gone, the idle time counts from the last
        // sweep that saw it kept.
        assert!(w.expire_rooms(10 * HOUR + 1, HOUR, |_| false).is_empty());
        assert_eq!(w.expire_rooms(11 * HOUR, HOUR, |_| false), ["Declared"]);
    }

    #[test]
    fn a_room_removed_then_made_again_is_written_again() {
        let mut w = world(100);
        w.say("a", "Alice", "Limbo", "one", 1_000).unwrap();
        w.remove("a", 1_000);
        w.expire_rooms(1_000 + HOUR, HOUR, |_| false);
        w.say("b", "Bob", "Limbo", "two", 2 * HOUR).unwrap();
        let c = w.take_changes();
        assert!(c.rooms_gone.contains("Limbo") && c.rooms.contains("Limbo"));
        assert!(
            c.events.iter().all(|e| e.ts_ms == 2 * HOUR),
            "the old room's unsaved events are dropped: {:?}",
            c.events
        );
        assert_eq!(w.events("Limbo", None, Some(0)).unwrap().len(), 2);
    }
}
