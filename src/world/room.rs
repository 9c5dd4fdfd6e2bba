//! Rooms and the events that happen in them: the shared part of the world that every user,
//! game link and watcher sees alike.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// What kind of record an [`Event`] is; the same vocabulary flows to every transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Someone entered or left a room (`event`: `enter` | `leave`).
    Presence,
    /// Someone said something to the room (`event`: `message`).
    Say,
    /// A world event (`event`: its name, e.g. `fire`, `rain`).
    Event,
    /// The agent spoke aloud in a room (`event`: `message`).
    Bark,
}

/// One thing that happened in a room. Serialises to the seed's event shape, plus `seq`
/// (per world, increasing) and `origin` (the world it happened in).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub event: String,
    pub user_id: String,
    pub username: String,
    pub room: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub message: Option<String>,
    pub timestamp: String,
    pub seq: u64,
    pub origin: String,
    /// `timestamp` as epoch milliseconds, for `?since=` filtering.
    #[serde(skip)]
    pub ts_ms: u64,
}

/// An event of another world as it is to be shown in one room here (what federation
/// hands the world; the world does not know federation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    /// A canonical local room name.
    pub room: String,
    pub kind: EventKind,
    /// `message` for a say, the world event's name otherwise.
    pub event: String,
    pub user_id: String,
    pub username: String,
    pub message: Option<String>,
    /// The world it came from: the origin of the local event that shows it.
    pub origin: String,
}

/// The room's description as loaded from a world file or reported by a game.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomSpec {
    pub name: String,
    #[serde(default)]
    pub desc: String,
    /// Exit name → destination room.
    #[serde(default)]
    pub exits: BTreeMap<String, String>,
    #[serde(default)]
    pub objects: Vec<String>,
    #[serde(default)]
    pub portal: bool,
}

/// A world file: `fixtures/world.json` is the default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldFile {
    pub version: u32,
    pub rooms: Vec<RoomSpec>,
}

/// The built-in default world (The Threshold and the four rooms around it).
pub const DEFAULT_WORLD: &str = include_str!("../../fixtures/world.json");

impl WorldFile {
    /// Parse and check a world file: version 1, unique non-empty room names, exits that
    /// lead to rooms of the file.
    pub fn parse(text: &str) -> Result<WorldFile, String> {
        let wf: WorldFile = serde_json::from_str(text).map_err(|e| format!("world file: {e}"))?;
        if wf.version != 1 {
            return Err(format!(
                "world file: version {} is not supported (this bridge reads version 1)",
                wf.version
            ));
        }
        let mut names = std::collections::HashSet::new();
        for r in &wf.rooms {
            if r.name.trim().is_empty() {
                return Err("world file: a room has an empty name".into());
            }
            if !names.insert(r.name.as_str()) {
                return Err(format!("world file: room {:?} is listed twice", r.name));
            }
        }
        for r in &wf.rooms {
            for (exit, to) in &r.exits {
                if !names.contains(to.as_str()) {
                    return Err(format!(
                        "world file: exit {exit:?} of {:?} leads to unknown room {to:?}",
                        r.name
                    ));
                }
            }
        }
        Ok(wf)
    }
}

/// Someone present in a room: their user id, and their display name kept beside it (the
/// same as their [`crate::world::Occupant`]'s), so the people of a room are listed
/// without a look-up each: every say lists them, every chat's context names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Here {
    pub user_id: String,
    pub username: String,
}

/// How many distinct visitor names a room remembers.
pub const VISITOR_HISTORY_MAX: usize = 100;

/// A room: its description, who has visited, and its recent events (a bounded window).
#[derive(Debug, Clone)]
pub struct Room {
    pub spec: RoomSpec,
    /// Display names of everyone who has entered, oldest first, without repeats.
    pub visitor_history: VecDeque<String>,
    pub events: VecDeque<Event>,
    /// The people here now, in the order they entered.
    pub occupants: Vec<Here>,
    /// `events` as one short line each ("Alice said: hi"), kept alongside so the agent's
    /// context does not format them on every call.
    pub event_lines: VecDeque<String>,
    /// When the room last had an event or was last seen in use (epoch ms; 0: not yet
    /// seen). An empty room unused for `rooms.idle_expire_s` may expire
    /// ([`crate::world::World::expire_rooms`]).
    pub last_used_ms: u64,
}

impl Room {
    pub fn new(spec: RoomSpec) -> Room {
        Room {
            spec,
            visitor_history: VecDeque::new(),
            events: VecDeque::new(),
            occupants: Vec::new(),
            event_lines: VecDeque::new(),
            last_used_ms: 0,
        }
    }

    /// Keep `event`, dropping the oldest once `max` are kept.
    pub fn push_event(&mut self, event: Event, max: usize) {
        while self.events.len() >= max.max(1) {
            self.events.pop_front();
            self.event_lines.pop_front();
        }
        self.last_used_ms = self.last_used_ms.max(event.ts_ms);
        self.event_lines.push_back(super::describe_event(&event));
        self.events.push_back(event);
    }

    pub fn note_visitor(&mut self, name: &str) {
        if self.visitor_history.iter().any(|v| v == name) {
            return;
        }
        if self.visitor_history.len() >= VISITOR_HISTORY_MAX {
            self.visitor_history.pop_front();
        }
        self.visitor_history.push_back(name.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_world_has_the_five_rooms_linked_both_ways() {
        let wf = WorldFile::parse(DEFAULT_WORLD).expect("default world parses");
        let names: Vec<&str> = wf.rooms.iter().map(|r| r.name.as_str()).collect();
        for n in [
            "The Threshold",
            "The Tower",
            "The Garden",
            "The Forge",
            "The Bridge",
        ] {
            assert!(names.contains(&n), "{n} missing");
        }
        let threshold = &wf.rooms[0];
        for r in &wf.rooms[1..] {
            assert!(threshold.exits.values().any(|to| to == &r.name));
            assert!(r.exits.values().any(|to| to == "The Threshold"));
            assert!(!r.desc.is_empty());
        }
    }

    #[test]
    fn world_file_errors_are_clear() {
        let bad_exit = r#"{"version":1,"rooms":[{"name":"A","exits":{"n":"B"}}]}"#;
        assert!(WorldFile::parse(bad_exit)
            .unwrap_err()
            .contains("unknown room \"B\""));
        let dup = r#"{"version":1,"rooms":[{"name":"A"},{"name":"A"}]}"#;
        assert!(WorldFile::parse(dup).unwrap_err().contains("twice"));
        let v2 = r#"{"version":2,"rooms":[]}"#;
        assert!(WorldFile::parse(v2).unwrap_err().contains("version 2"));
    }

    #[test]
    fn event_window_and_visitors_are_bounded() {
        let mut room = Room::new(RoomSpec {
            name: "A".into(),
            desc: String::new(),
            exits: BTreeMap::new(),
            objects: vec![],
            portal: false,
        });
        for i in 0..(VISITOR_HISTORY_MAX + 5) {
            room.note_visitor(&format!("v{i}"));
            room.note_visitor(&format!("v{i}"));
        }
        assert_eq!(room.visitor_history.len(), VISITOR_HISTORY_MAX);
        assert_eq!(room.visitor_history.front().map(String::as_str), Some("v5"));
    }
}
