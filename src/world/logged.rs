//! Cluster mode's side of the world: events numbered by one shared log instead of here.
//!
//! With several processes serving one world, each event a node makes is *proposed*: it
//! gets a provisional number (at or above [`PROVISIONAL_BASE`], never a real one) and waits
//! in [`World::take_unsequenced`] until the log (Redis, `store::cluster`) has appended it
//! and given it the world-wide `seq`. Every node then applies every logged event, its own
//! included, in log order ([`World::apply_logged`]): into its room's list, into presence,
//! and out to the transports. So every node holds the same events with the same numbers,
//! and presence converges to what the log says last (an `enter` puts a user where it
//! says; a `leave` removes them only from the room it names).
//!
//! The world knows nothing of Redis: the hub carries proposals out and logged events in.

use super::room::{Event, EventKind};
use super::{Occupant, World};
use std::collections::HashMap;

/// Provisional event numbers start here: far above any real `seq`, and still exact in a
/// JavaScript number (2^52), so an answer that shows one can be renumbered safely.
pub const PROVISIONAL_BASE: u64 = 1 << 52;

/// The log's bookkeeping in the world.
#[derive(Debug, Default)]
pub struct Logged {
    next: u64,
    /// Events made here that the log has not numbered yet, in the order they were made.
    pub(super) unsequenced: Vec<Event>,
    /// This node's id.
    node: String,
    /// The node each present user's last presence or say came through: that node keeps
    /// their presence alive and ends it (another node does not expire them), and when it
    /// dies, the node that cleans up after it ends it ([`World::held_by`]).
    held_by: HashMap<String, String>,
}

impl Logged {
    pub(super) fn provisional(&mut self) -> u64 {
        self.next += 1;
        PROVISIONAL_BASE + self.next
    }
}

/// Whether `seq` is a provisional number (an event the log has not numbered yet).
pub fn is_provisional(seq: u64) -> bool {
    seq > PROVISIONAL_BASE
}

impl World {
    /// From now on the shared log numbers this world's events (cluster mode); `node` is
    /// this node's id.
    pub fn log_events(&mut self, node: &str) {
        let l = self.logged.get_or_insert_with(Logged::default);
        l.node = node.to_string();
    }

    /// The events made here since the last call, with provisional numbers, for the log.
    pub fn take_unsequenced(&mut self) -> Vec<Event> {
        match &mut self.logged {
            Some(l) => std::mem::take(&mut l.unsequenced),
            None => Vec::new(),
        }
    }

    /// Whether events made here wait for the log's numbers.
    pub fn has_unsequenced(&self) -> bool {
        self.logged
            .as_ref()
            .is_some_and(|l| !l.unsequenced.is_empty())
    }

    /// The provisional numbers of the events waiting for the log.
    pub fn unsequenced_seqs(&self) -> Vec<u64> {
        (self.logged.iter())
            .flat_map(|l| l.unsequenced.iter().map(|e| e.seq))
            .collect()
    }

    /// Whether another node holds `user_id`'s presence (cluster mode).
    pub fn held_elsewhere(&self, user_id: &str) -> bool {
        (self.logged.as_ref()).is_some_and(|l| l.held_by.get(user_id).is_some_and(|n| *n != l.node))
    }

    /// The users present whose presence came through `node` last (sorted).
    pub fn held_by(&self, node: &str) -> Vec<String> {
        let Some(l) = &self.logged else {
            return Vec::new();
        };
        let mut users: Vec<String> = (l.held_by.iter())
            .filter(|(u, n)| *n == node && self.occupants.contains_key(*u))
            .map(|(u, _)| u.clone())
            .collect();
        users.sort();
        users
    }

    /// One event of the log, in log order, appended by `node`. A room
    /// this node has not heard of is made (another node's client named it); past
    /// `rooms.max` the event is still passed on, only not kept in a room here.
    pub fn apply_logged(&mut self, ev: Event, node: &str) {
        self.seq = self.seq.max(ev.seq);
        let Some(room) = self.ensure_room(&ev.room).ok() else {
            log::warn!(
                "log: event {} in {:?} not kept here: `rooms.max` is reached",
                ev.seq,
                ev.room
            );
            self.outbox.push(ev);
            return;
        };
        let moves = matches!(ev.kind, EventKind::Presence | EventKind::Say);
        if let (Some(l), true) = (&mut self.logged, moves) {
            match (ev.kind, ev.event.as_str()) {
                (EventKind::Presence, "leave") => l.held_by.remove(&ev.user_id),
                _ => l.held_by.insert(ev.user_id.clone(), node.to_string()),
            };
        }
        match (ev.kind, ev.event.as_str()) {
            (EventKind::Presence, "enter") => {
                self.set_present(&ev.user_id, &ev.username, &room, ev.ts_ms)
            }
            (EventKind::Presence, "leave") => self.set_absent(&ev.user_id, &room),
            (EventKind::Say, _) => {
                if let Some(o) = self.occupants.get_mut(&ev.user_id) {
                    o.last_active_ms = o.last_active_ms.max(ev.ts_ms);
                }
            }
            _ => {}
        }
        if let Some(r) = self.rooms.get_mut(&room) {
            r.push_event(ev.clone(), self.limits.events_max);
        }
        self.outbox.push(ev);
    }

    /// The log was lost (Redis restarted empty: a new epoch): the events kept here go,
    /// the numbering starts again. Presence stays as this node knows it.
    pub fn forget_logged_events(&mut self) {
        for r in self.rooms.values_mut() {
            r.events.clear();
            r.event_lines.clear();
        }
        self.seq = 0;
    }

    /// `user_id` is in `room` (canonical), as a logged `enter` says: no event is made.
    fn set_present(&mut self, user_id: &str, username: &str, room: &str, ts_ms: u64) {
        let before = self.occupants.get(user_id).map(|o| o.room.clone());
        if before.as_deref() != Some(room) {
            if let Some(r) = before.and_then(|b| self.rooms.get_mut(&b)) {
                r.occupants.retain(|h| h.user_id != user_id);
            }
            if let Some(r) = self.rooms.get_mut(room) {
                r.note_visitor(username);
                r.occupants.push(super::room::Here {
                    user_id: user_id.to_string(),
                    username: username.to_string(),
                });
            }
        }
        let o = self
            .occupants
            .entry(user_id.to_string())
            .or_insert_with(|| Occupant {
                user_id: user_id.to_string(),
                username: username.to_string(),
                room: room.to_string(),
                entered_ms: ts_ms,
                last_active_ms: ts_ms,
            });
        if o.room != room {
            o.room = room.to_string();
            o.entered_ms = ts_ms;
        }
        o.last_active_ms = o.last_active_ms.max(ts_ms);
        if o.username != username {
            o.username = username.to_string();
            self.rename_in_room(user_id, username, room);
        }
    }

    /// A logged `leave` of `room`: the user goes, unless they are elsewhere by now.
    fn set_absent(&mut self, user_id: &str, room: &str) {
        if self.occupants.get(user_id).is_some_and(|o| o.room == room) {
            self.occupants.remove(user_id);
            if let Some(r) = self.rooms.get_mut(room) {
                r.occupants.retain(|h| h.user_id != user_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::room::WorldFile;
    use crate::world::session::SessionLimits;
    use crate::world::WorldLimits;

    fn world() -> World {
        let wf = WorldFile::parse(crate::world::room::DEFAULT_WORLD).unwrap();
        let mut w = World::new(
            "w",
            "Timmy",
            wf,
            WorldLimits {
                sessions: SessionLimits {
                    max: 100,
                    idle_timeout_ms: 1000,
                    history_max: 10,
                },
                events_max: 100,
                rooms_max: 100,
                occupants_max: 100,
            },
        );
        w.log_events("a");
        w
    }

    /// What the log would hand back: the same events, numbered from `first`.
    fn numbered(events: Vec<Event>, first: u64) -> Vec<Event> {
        (events.into_iter().zip(first..))
            .map(|(mut e, seq)| {
                e.seq = seq;
                e
            })
            .collect()
    }

    #[test]
    fn events_wait_for_the_log_and_then_carry_its_numbers() {
        let mut w = world();
        let said = w.say("u1", "Una", "The Threshold", "hello", 10).unwrap();
        assert!(is_provisional(said.event.seq), "{}", said.event.seq);
        assert!(w.events("The Threshold", None, None).unwrap().is_empty());
        assert!(
            w.take_new_events().is_empty(),
            "nothing goes out before the log has it"
        );
        let proposed = w.take_unsequenced();
        assert_eq!(proposed.len(), 2, "enter, then the say");
        for e in numbered(proposed, 41) {
            w.apply_logged(e, "a");
        }
        let seqs: Vec<u64> = (w.events("The Threshold", None, None).unwrap().iter())
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, vec![41, 42]);
        assert_eq!(w.last_seq(), 42);
        assert_eq!(w.take_new_events().len(), 2);
    }

    #[test]
    fn another_nodes_events_place_its_users_and_make_its_rooms() {
        let mut a = world();
        let mut b = world();
        a.say("u1", "Una", "Back Room", "psst", 10).unwrap();
        for e in numbered(a.take_unsequenced(), 1) {
            a.apply_logged(e.clone(), "a");
            b.apply_logged(e, "a");
        }
        assert_eq!(b.occupant("u1").map(|o| o.room.as_str()), Some("Back Room"));
        assert_eq!(b.events("Back Room", None, None).unwrap().len(), 2);
        b.log_events("b");
        assert!(b.held_elsewhere("u1") && !a.held_elsewhere("u1"));
        assert_eq!(b.held_by("a"), ["u1"]);
        assert!(b.held_by("b").is_empty());
        // B does not expire a user another node holds; A does.
        let (_, leaves) = b.expire(1_000_000, &|_| false);
        assert!(leaves.is_empty());
        let (_, leaves) = a.expire(1_000_000, &|_| false);
        assert_eq!(leaves.len(), 1);
    }

    #[test]
    fn concurrent_moves_on_two_nodes_end_where_the_log_says_last() {
        let mut a = world();
        let mut b = world();
        for w in [&mut a, &mut b] {
            w.apply_logged(
                Event {
                    seq: 1,
                    ..presence("enter", "The Threshold")
                },
                "a",
            );
        }
        a.move_user("u1", None, "The Tower", 20).unwrap();
        b.move_user("u1", None, "The Garden", 21).unwrap();
        let log = numbered([a.take_unsequenced(), b.take_unsequenced()].concat(), 2);
        for e in &log {
            a.apply_logged(e.clone(), "a");
            b.apply_logged(e.clone(), "a");
        }
        for w in [&a, &b] {
            assert_eq!(
                w.occupant("u1").map(|o| o.room.as_str()),
                Some("The Garden")
            );
            assert!(w.players("The Tower").is_empty());
            assert!(w.players("The Threshold").is_empty());
        }
    }

    #[test]
    fn a_lost_log_forgets_the_events_and_numbers_again() {
        let mut w = world();
        w.say("u1", "Una", "The Threshold", "hello", 10).unwrap();
        for e in numbered(w.take_unsequenced(), 7) {
            w.apply_logged(e, "a");
        }
        w.forget_logged_events();
        assert_eq!(w.last_seq(), 0);
        assert!(w.events("The Threshold", None, None).unwrap().is_empty());
        assert!(w.occupant("u1").is_some(), "presence stays");
    }

    fn presence(event: &str, room: &str) -> Event {
        Event {
            kind: EventKind::Presence,
            event: event.into(),
            user_id: "u1".into(),
            username: "Una".into(),
            room: room.into(),
            message: None,
            timestamp: "2026-12-07T00:00:00Z".into(),
            seq: 0,
            origin: "w".into(),
            ts_ms: 1,
        }
    }
}
