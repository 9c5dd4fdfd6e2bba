//! The socket-free core: rooms, who is in them, what happens there, and each user's
//! conversation with the agent.
//!
//! Every method takes `now` (epoch ms) instead of reading the clock, and returns what
//! happened; transports turn that into bytes. New events also collect in an outbox
//! ([`World::take_new_events`]) for the transports that fan them out.

pub mod expiry;
pub mod logged;
pub mod lookalike;
pub mod protocol;
pub mod ratelimit;
pub mod room;
pub mod session;
pub mod state;
pub mod time;

use crate::agent::WorldContext;
use crate::world::time::rfc3339;
use room::{Event, EventKind, Here, Relayed, Room, RoomSpec, WorldFile};
use session::{SessionLimits, Sessions};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Most names of people present that go into the agent's context (a crowded room is
/// summarised, not listed in full in every prompt).
pub const PRESENT_MAX: usize = 20;

/// Longest accepted user id, user name or room name, in bytes.
pub const NAME_MAX_BYTES: usize = 256;

/// Where a user is in the world.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Occupant {
    pub user_id: String,
    pub username: String,
    pub room: String,
    pub entered_ms: u64,
    pub last_active_ms: u64,
}

/// Why the core refused an input. Transports map these to their own errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorldError {
    /// No room by that name.
    UnknownRoom(String),
    /// A move to the room the user is already in.
    AlreadyThere(String),
    /// A field with a bad value: (field, why).
    Invalid(&'static str, String),
    /// A configured limit would be passed: the config key.
    Limit(&'static str),
}

impl std::fmt::Display for WorldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorldError::UnknownRoom(r) => write!(f, "there is no room called {r:?}"),
            WorldError::AlreadyThere(r) => write!(f, "you are already in {r}"),
            WorldError::Invalid(field, why) => write!(f, "`{field}` {why}"),
            WorldError::Limit(key) => write!(f, "this world is full: the limit `{key}` is reached"),
        }
    }
}

/// The outcome of a `say`.
#[derive(Debug, Clone)]
pub struct Said {
    pub event: Event,
    /// Presence events caused by putting the speaker into the room first.
    pub moved: Vec<Event>,
}

/// The limits the core needs, from Config.
#[derive(Debug, Clone, Copy)]
pub struct WorldLimits {
    pub sessions: SessionLimits,
    pub events_max: usize,
    /// Most rooms; creating one more is refused.
    pub rooms_max: usize,
    /// Most people present; one more evicts the least recently active.
    pub occupants_max: usize,
}

/// The whole live state of one world.
#[derive(Debug)]
pub struct World {
    pub id: String,
    pub agent_name: String,
    rooms: BTreeMap<String, Room>,
    /// Rooms the world file defines (the operator's; no anonymous game link rewrites them).
    file_rooms: HashSet<String>,
    /// Lower-cased room name → canonical name, for forgiving look-ups.
    by_lower: HashMap<String, String>,
    occupants: HashMap<String, Occupant>,
    pub sessions: Sessions,
    seq: u64,
    /// The last event time stamped and its text: the events of one request (a newcomer's
    /// enter, an evicted session's leave, a say) share their millisecond.
    stamp: (u64, String),
    limits: WorldLimits,
    outbox: Vec<Event>,
    /// What changed since [`World::take_changes`], kept only while a store persists the
    /// world (see [`World::track_changes`]).
    changes: state::Changes,
    track: bool,
    /// Cluster mode: this world's events are numbered by the shared log, not here
    /// ([`World::log_events`]).
    logged: Option<logged::Logged>,
}

/// Check a name-like field: non-empty, at most [`NAME_MAX_BYTES`], no control characters.
pub fn check_name(field: &'static str, value: &str) -> Result<(), WorldError> {
    if value.trim().is_empty() {
        return Err(WorldError::Invalid(field, "must not be empty".into()));
    }
    if value.len() > NAME_MAX_BYTES {
        return Err(WorldError::Invalid(
            field,
            format!("is longer than {NAME_MAX_BYTES} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(WorldError::Invalid(
            field,
            "must not contain control characters".into(),
        ));
    }
    Ok(())
}

impl World {
    pub fn new(id: &str, agent_name: &str, world: WorldFile, limits: WorldLimits) -> World {
        let mut w = World {
            id: id.to_string(),
            agent_name: agent_name.to_string(),
            rooms: BTreeMap::new(),
            file_rooms: HashSet::new(),
            by_lower: HashMap::new(),
            occupants: HashMap::new(),
            sessions: Sessions::new(limits.sessions),
            seq: 0,
            stamp: (0, rfc3339(0)),
            limits,
            outbox: Vec::new(),
            changes: state::Changes::default(),
            track: false,
            logged: None,
        };
        for spec in world.rooms {
            w.file_rooms.insert(spec.name.clone());
            w.insert_room(spec);
        }
        w
    }

    /// Whether the world file defines the room `name` (canonical).
    pub fn from_world_file(&self, name: &str) -> bool {
        self.file_rooms.contains(name)
    }

    fn insert_room(&mut self, spec: RoomSpec) {
        self.mark_room(&spec.name);
        self.by_lower
            .insert(spec.name.to_lowercase(), spec.name.clone());
        self.rooms.insert(spec.name.clone(), Room::new(spec));
    }

    /// The canonical name of a room: an exact match, else a case-insensitive one.
    pub fn resolve(&self, name: &str) -> Option<&str> {
        if let Some((k, _)) = self.rooms.get_key_value(name) {
            return Some(k.as_str());
        }
        self.by_lower.get(&name.to_lowercase()).map(String::as_str)
    }

    pub fn room(&self, name: &str) -> Option<&Room> {
        self.resolve(name).and_then(|n| self.rooms.get(n))
    }

    pub fn rooms(&self) -> impl Iterator<Item = &Room> {
        self.rooms.values()
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// The canonical name of `name`, creating an empty room on first mention: a game is
    /// the authority over its rooms.
    pub fn ensure_room(&mut self, name: &str) -> Result<String, WorldError> {
        if let Some(n) = self.resolve(name) {
            return Ok(n.to_string());
        }
        check_name("room", name)?;
        if self.rooms.len() >= self.limits.rooms_max {
            return Err(WorldError::Limit("rooms.max"));
        }
        let name = name.trim().to_string();
        self.insert_room(RoomSpec {
            name: name.clone(),
            desc: String::new(),
            exits: BTreeMap::new(),
            objects: Vec::new(),
            portal: false,
        });
        Ok(name)
    }

    /// A game's room snapshot replaces the room's description, exits and objects (the
    /// room is created on first mention). Returns the canonical name.
    pub fn set_room(&mut self, spec: RoomSpec) -> Result<String, WorldError> {
        let name = self.ensure_room(&spec.name)?;
        self.mark_room(&name);
        if let Some(r) = self.rooms.get_mut(&name) {
            r.spec = RoomSpec {
                name: name.clone(),
                ..spec
            };
        }
        Ok(name)
    }

    pub fn occupant(&self, user_id: &str) -> Option<&Occupant> {
        self.occupants.get(user_id)
    }

    /// People in a room, in the order they entered.
    pub fn players(&self, room: &str) -> Vec<&Occupant> {
        self.rooms.get(room).map_or_else(Vec::new, |r| {
            r.occupants
                .iter()
                .filter_map(|h| self.occupants.get(&h.user_id))
                .collect()
        })
    }

    pub fn occupant_count(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, |r| r.occupants.len())
    }

    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// Record a new event of this world in its room and the outbox.
    fn emit(
        &mut self,
        kind: EventKind,
        event: &str,
        user: (&str, &str),
        room: &str,
        message: Option<&str>,
        now_ms: u64,
    ) -> Event {
        let origin = self.id.clone();
        let ev = self.new_event(origin, kind, event, user, room, message, now_ms);
        self.record(ev.clone());
        ev
    }

    /// A presence event (`enter`, `leave`) of `who` in `room`, given back only when
    /// `give` says so: a new user's enter and an evicted session's leave happen on every
    /// request of a stream of strangers, and most callers drop them.
    fn presence(
        &mut self,
        event: &str,
        who: (&str, &str),
        room: &str,
        now_ms: u64,
        give: bool,
    ) -> Option<Event> {
        let origin = self.id.clone();
        let ev = self.new_event(origin, EventKind::Presence, event, who, room, None, now_ms);
        let given = give.then(|| ev.clone());
        self.record(ev);
        given
    }

    /// A new event that happened in `origin` (this world, or a peer's event shown here),
    /// with a local `seq`: the origin is kept so it never federates again from here.
    #[allow(clippy::too_many_arguments)]
    fn new_event(
        &mut self,
        origin: String,
        kind: EventKind,
        event: &str,
        user: (&str, &str),
        room: &str,
        message: Option<&str>,
        now_ms: u64,
    ) -> Event {
        let seq = match &mut self.logged {
            Some(l) => l.provisional(),
            None => {
                self.seq += 1;
                self.seq
            }
        };
        Event {
            kind,
            event: event.to_string(),
            user_id: user.0.to_string(),
            username: user.1.to_string(),
            room: room.to_string(),
            message: message.map(str::to_string),
            timestamp: self.stamp(now_ms),
            seq,
            origin,
            ts_ms: now_ms,
        }
    }

    /// `now_ms` as RFC 3339, written once per millisecond.
    fn stamp(&mut self, now_ms: u64) -> String {
        if self.stamp.0 != now_ms {
            self.stamp = (now_ms, rfc3339(now_ms));
        }
        self.stamp.1.clone()
    }

    /// Keep a new event in its room and the outbox.
    fn record(&mut self, ev: Event) {
        if let Some(l) = &mut self.logged {
            // Into the rooms (and out to the transports) once the log has numbered it.
            l.unsequenced.push(ev);
            return;
        }
        if let Some(r) = self.rooms.get_mut(&ev.room) {
            r.push_event(ev.clone(), self.limits.events_max);
        }
        if self.track {
            self.changes.events.push(ev.clone());
        }
        self.outbox.push(ev);
    }

    /// Put a user in `room` (a canonical name): `leave` from the old room then `enter`.
    /// Already there: no events, only the name and activity are refreshed.
    pub fn place(&mut self, user_id: &str, username: &str, room: &str, now_ms: u64) -> Vec<Event> {
        self.seat(user_id, username, room, now_ms, true)
    }

    /// [`World::place`] for a caller that does not need the events back.
    pub fn enter(&mut self, user_id: &str, username: &str, room: &str, now_ms: u64) {
        self.seat(user_id, username, room, now_ms, false);
    }

    /// [`World::place`]; the events are returned only when `give` says so.
    fn seat(
        &mut self,
        user_id: &str,
        username: &str,
        room: &str,
        now_ms: u64,
        give: bool,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        let previous = self.occupants.get(user_id).map(|o| o.room.clone());
        if previous.as_deref() == Some(room) {
            let mut renamed = false;
            if let Some(o) = self.occupants.get_mut(user_id) {
                renamed = o.username != username;
                if renamed {
                    o.username = username.to_string();
                }
                o.last_active_ms = now_ms;
            }
            // Activity alone is not written on every message (it only moves the idle
            // expiry); the stored row is refreshed with the next change of name or room.
            if renamed {
                self.mark_presence(user_id);
                self.rename_in_room(user_id, username, room);
            }
            return events;
        }
        self.mark_presence(user_id);
        if let Some(prev) = previous {
            if let Some(r) = self.rooms.get_mut(&prev) {
                r.occupants.retain(|h| h.user_id != user_id);
            }
            let who = (user_id, username);
            events.extend(self.presence("leave", who, &prev, now_ms, give));
        } else if self.occupants.len() >= self.limits.occupants_max {
            let lru = self
                .occupants
                .values()
                .min_by_key(|o| (o.last_active_ms, o.entered_ms))
                .map(|o| o.user_id.clone());
            if let Some(u) = lru {
                match give {
                    true => events.extend(self.remove(&u, now_ms)),
                    false => _ = self.leave(&u, now_ms),
                }
            }
        }
        self.occupants.insert(
            user_id.to_string(),
            Occupant {
                user_id: user_id.to_string(),
                username: username.to_string(),
                room: room.to_string(),
                entered_ms: now_ms,
                last_active_ms: now_ms,
            },
        );
        self.mark_room(room);
        // A session's room is where its user is now, not where they last chatted.
        if self.sessions.get(user_id).is_some_and(|s| s.room != room) {
            if let Some(s) = self.sessions.get_mut(user_id) {
                s.room = room.to_string();
            }
        }
        if let Some(r) = self.rooms.get_mut(room) {
            r.note_visitor(username);
            r.occupants.push(Here {
                user_id: user_id.to_string(),
                username: username.to_string(),
            });
        }
        let who = (user_id, username);
        events.extend(self.presence("enter", who, room, now_ms, give));
        events
    }

    /// A user leaves the world (a game reports a disconnect, or presence expires).
    pub fn remove(&mut self, user_id: &str, now_ms: u64) -> Option<Event> {
        let o = self.unseat(user_id)?;
        let who = (o.user_id.as_str(), o.username.as_str());
        self.presence("leave", who, &o.room, now_ms, true)
    }

    /// [`World::remove`] for a caller that does not need the event back: whether the
    /// user was there.
    pub fn leave(&mut self, user_id: &str, now_ms: u64) -> bool {
        let Some(o) = self.unseat(user_id) else {
            return false;
        };
        let who = (o.user_id.as_str(), o.username.as_str());
        self.presence("leave", who, &o.room, now_ms, false);
        true
    }

    /// Take a user out of the world and their room: their [`Occupant`], if there.
    fn unseat(&mut self, user_id: &str) -> Option<Occupant> {
        let o = self.occupants.remove(user_id)?;
        self.mark_presence(user_id);
        if let Some(r) = self.rooms.get_mut(&o.room) {
            r.occupants.retain(|h| h.user_id != user_id);
        }
        Some(o)
    }

    /// `POST /bridge/move`: to a known room only, and not to the room the user is in.
    pub fn move_user(
        &mut self,
        user_id: &str,
        username: Option<&str>,
        room: &str,
        now_ms: u64,
    ) -> Result<(String, Vec<Event>), WorldError> {
        check_name("user_id", user_id)?;
        let to = self
            .resolve(room)
            .ok_or_else(|| WorldError::UnknownRoom(room.to_string()))?
            .to_string();
        let current = self.occupants.get(user_id);
        if current.map(|o| o.room.as_str()) == Some(to.as_str()) {
            return Err(WorldError::AlreadyThere(to));
        }
        let name = username
            .map(str::to_string)
            .or_else(|| current.map(|o| o.username.clone()))
            .or_else(|| self.sessions.get(user_id).map(|s| s.username.clone()))
            .unwrap_or_else(|| user_id.to_string());
        check_name("username", &name)?;
        let events = self.place(user_id, &name, &to, now_ms);
        Ok((to, events))
    }

    /// `POST /bridge/say`: the speaker is put in the room first if elsewhere; everyone
    /// else there receives it.
    pub fn say(
        &mut self,
        user_id: &str,
        username: &str,
        room: &str,
        message: &str,
        now_ms: u64,
    ) -> Result<Said, WorldError> {
        check_name("user_id", user_id)?;
        check_name("username", username)?;
        if message.trim().is_empty() {
            return Err(WorldError::Invalid("message", "must not be empty".into()));
        }
        let room = self.ensure_room(room)?;
        let moved = self.place(user_id, username, &room, now_ms);
        let event = self.emit(
            EventKind::Say,
            "message",
            (user_id, username),
            &room,
            Some(message),
            now_ms,
        );
        Ok(Said { event, moved })
    }

    /// Who hears a say in `room` (canonical name): everyone there but the speaker.
    pub fn recipients<'a>(
        &'a self,
        room: &str,
        speaker: &'a str,
    ) -> impl Iterator<Item = &'a Here> {
        (self.rooms.get(room).into_iter())
            .flat_map(|r| r.occupants.iter())
            .filter(move |h| h.user_id != speaker)
    }

    /// A present user's new name, in the room's list too (`room`: where they are).
    fn rename_in_room(&mut self, user_id: &str, username: &str, room: &str) {
        let here = (self.rooms.get_mut(room).into_iter())
            .flat_map(|r| r.occupants.iter_mut())
            .find(|h| h.user_id == user_id);
        if let Some(h) = here {
            h.username = username.to_string();
        }
    }

    /// The agent speaks aloud in a room (its replies seen by others, barks).
    pub fn bark(&mut self, room: &str, text: &str, now_ms: u64) -> Option<Event> {
        let room = self.resolve(room)?.to_string();
        let agent = self.agent_name.clone();
        Some(self.emit(
            EventKind::Bark,
            "message",
            (&agent.to_lowercase(), &agent),
            &room,
            Some(text),
            now_ms,
        ))
    }

    /// A world event (`fire`, `rain`, …) in a room.
    pub fn world_event(
        &mut self,
        room: &str,
        name: &str,
        text: Option<&str>,
        now_ms: u64,
    ) -> Result<Event, WorldError> {
        check_name("event", name)?;
        let room = self.ensure_room(room)?;
        let id = self.id.clone();
        Ok(self.emit(EventKind::Event, name, (&id, &id), &room, text, now_ms))
    }

    /// Show an event from another world in one of this world's rooms (`shown.room` is a
    /// canonical name): nobody is placed, the speaker is `Alice@mac`, and the event's
    /// `origin` is the remote world. `None` when the room is gone.
    pub fn show_remote(&mut self, shown: &Relayed, now_ms: u64) -> Option<Event> {
        let room = self.resolve(&shown.room)?.to_string();
        let ev = self.new_event(
            shown.origin.clone(),
            shown.kind,
            &shown.event,
            (&shown.user_id, &shown.username),
            &room,
            shown.message.as_deref(),
            now_ms,
        );
        self.record(ev.clone());
        Some(ev)
    }

    /// Everyone present in this world (in no particular order): the characters its
    /// federation presence report lists.
    pub fn occupants(&self) -> impl Iterator<Item = &Occupant> {
        self.occupants.values()
    }

    /// A room's events, oldest first, after a time and/or after a sequence number.
    pub fn events(
        &self,
        room: &str,
        since_ms: Option<u64>,
        after_seq: Option<u64>,
    ) -> Result<Vec<&Event>, WorldError> {
        let r = self
            .room(room)
            .ok_or_else(|| WorldError::UnknownRoom(room.to_string()))?;
        Ok(r.events
            .iter()
            .filter(|e| since_ms.is_none_or(|s| e.ts_ms > s))
            .filter(|e| after_seq.is_none_or(|s| e.seq > s))
            .collect())
    }

    /// What a user sees of `room`: its name, description and exits (the rest of the
    /// context left empty: who is there, what happened, the game).
    pub fn context_seen(&self, room: &str) -> WorldContext {
        let r = self.rooms.get(room);
        WorldContext {
            world: self.id.clone(),
            agent_name: self.agent_name.clone(),
            room: room.to_string(),
            room_desc: r.map(|r| r.spec.desc.clone()).unwrap_or_default(),
            exits: r.map(|r| exit_lines(&r.spec.exits)).unwrap_or_default(),
            ..Default::default()
        }
    }

    /// What the agent knows when it answers `user_id` in `room` (canonical name).
    pub fn context(&self, user_id: &str, room: &str, recent: usize) -> WorldContext {
        let r = self.rooms.get(room);
        let recent_events = r
            .map(|r| {
                let skip = r.event_lines.len().saturating_sub(recent);
                r.event_lines.iter().skip(skip).cloned().collect()
            })
            .unwrap_or_default();
        let mut present: Vec<String> = r
            .map(|r| {
                r.occupants
                    .iter()
                    .take(PRESENT_MAX)
                    .map(|h| h.username.clone())
                    .collect()
            })
            .unwrap_or_default();
        if present.is_empty() {
            if let Some(o) = self.occupants.get(user_id) {
                present.push(o.username.clone());
            }
        }
        WorldContext {
            present,
            recent_events,
            ..self.context_seen(room)
        }
    }

    /// Drop sessions and presence idle past the timeout (except users in `busy`).
    /// Returns the expired session user ids and the `leave` events.
    pub fn expire(
        &mut self,
        now_ms: u64,
        busy: &dyn Fn(&str) -> bool,
    ) -> (Vec<String>, Vec<Event>) {
        let gone = self.sessions.expire(now_ms, busy);
        let limit = self.limits.sessions.idle_timeout_ms;
        let idle: Vec<String> = self
            .occupants
            .values()
            .filter(|o| now_ms.saturating_sub(o.last_active_ms) > limit && !busy(&o.user_id))
            .filter(|o| !self.held_elsewhere(&o.user_id))
            .map(|o| o.user_id.clone())
            .collect();
        let leaves = idle.iter().filter_map(|u| self.remove(u, now_ms)).collect();
        (gone, leaves)
    }

    /// Tests stand for an operator who raised `rooms.max` (a restart, in real life).
    #[cfg(test)]
    pub fn raise_rooms_max_for_test(&mut self, max: usize) {
        self.limits.rooms_max = max;
    }

    /// Events created since the last call, for the transports that fan them out.
    pub fn take_new_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.outbox)
    }
}

/// An event as one short line for the agent's context.
pub fn describe_event(e: &Event) -> String {
    // Every event of a room is described as it happens: joined by hand, not `format!`.
    let join = |a: &str, b: &str, c: &str| {
        let mut line = String::with_capacity(a.len() + b.len() + c.len());
        line.push_str(a);
        line.push_str(b);
        line.push_str(c);
        line
    };
    match (e.kind, e.event.as_str()) {
        (EventKind::Presence, "enter") => join(&e.username, " entered", ""),
        (EventKind::Presence, "leave") => join(&e.username, " left", ""),
        (EventKind::Say, _) | (EventKind::Bark, _) => {
            join(&e.username, " said: ", e.message.as_deref().unwrap_or(""))
        }
        _ => match &e.message {
            Some(m) => join(&e.event, ": ", m),
            None => e.event.clone(),
        },
    }
}

/// A room's exits as the agent's context lists them (`north: The Hall`).
fn exit_lines(exits: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    exits.iter().map(|(k, v)| format!("{k}: {v}")).collect()
}

#[cfg(test)]
mod tests;
