//! Which local events leave this world, and how events from other worlds are shown here.
//!
//! Out: a `say` (or the agent's bark) in a portal room (`portal: true` on the room, or
//! named in `federation.portal_rooms`), and a world event of federation scope: sent
//! with `scope: "federation"`, or without a scope and of a kind listed in
//! `federation.event_kinds` (see [`scope_of`]).
//! Only events born here leave: an event shown here because another world sent it has
//! that world as its origin and never goes out again (the loop guard at the edge of the
//! world; the log's `(origin, seq)` dedup is the one inside).
//!
//! In: a remote `say` is shown in the portal room of the same name if this world has one,
//! else in every portal room, spoken by `Alice@mac` (user id `alice@mac`, so it never
//! collides with a local user). A remote world event happens in the room of the same
//! name if this world has one, else in every portal room.

use super::wire::{FedEvent, Kind};
use crate::world::room::{Event, EventKind, RoomSpec};
use serde_json::Value;

/// Whether `spec` is a portal room here.
pub fn is_portal(spec: &RoomSpec, portal_rooms: &[String]) -> bool {
    spec.portal
        || portal_rooms
            .iter()
            .any(|p| p.trim().eq_ignore_ascii_case(&spec.name))
}

/// `Alice` of `mac` as shown in other worlds.
pub fn remote_name(name: &str, world: &str) -> String {
    format!("{name}@{world}")
}

/// Where a world event is felt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// In this world only (the default).
    World,
    /// In every world of the federation.
    Federation,
}

/// The scope of a world event of kind `kind`: the one asked for (`scope` on the line
/// `event`), else federation for the kinds in `federation.event_kinds` (compared without
/// case or surrounding blanks), else this world only.
pub fn scope_of(kind: &str, asked: Option<Scope>, event_kinds: &[String]) -> Scope {
    match asked {
        Some(scope) => scope,
        None if event_kinds
            .iter()
            .any(|k| k.trim().eq_ignore_ascii_case(kind.trim())) =>
        {
            Scope::Federation
        }
        None => Scope::World,
    }
}

/// A federated event before it has its `(origin, seq)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub kind: Kind,
    pub room: Option<String>,
    pub user_id: Option<String>,
    pub username: Option<String>,
    pub message: Option<String>,
    pub event: Option<String>,
    pub timestamp: String,
    pub data: Option<Value>,
}

impl Draft {
    pub fn into_event(self, origin: &str, seq: u64) -> FedEvent {
        FedEvent {
            origin: origin.to_string(),
            seq,
            kind: self.kind,
            room: self.room,
            user_id: self.user_id,
            username: self.username,
            message: self.message,
            event: self.event,
            timestamp: self.timestamp,
            data: self.data,
            sig: None,
        }
    }
}

/// What of a local event federates: `None` for everything that stays here.
pub fn outgoing(world: &str, ev: &Event, in_portal: bool, scope: Scope) -> Option<Draft> {
    if ev.origin != world {
        return None;
    }
    let kind = match ev.kind {
        EventKind::Say | EventKind::Bark if in_portal => Kind::Say,
        EventKind::Event if scope == Scope::Federation => Kind::Event,
        _ => return None,
    };
    let event = (kind == Kind::Event).then(|| ev.event.clone());
    Some(Draft {
        kind,
        room: Some(ev.room.clone()),
        user_id: Some(ev.user_id.clone()),
        username: Some(ev.username.clone()),
        message: ev.message.clone(),
        event,
        timestamp: ev.timestamp.clone(),
        data: None,
    })
}

/// A remote event as it is to be shown in one local room (the world's own type: the core
/// shows it without knowing federation).
pub use crate::world::room::Relayed;

/// How `ev` is shown here. `portals` are the canonical names of this world's portal
/// rooms; `resolve` gives the canonical name of a local room, `None` if there is none.
/// Trust and unknown kinds are not shown.
pub fn incoming(
    ev: &FedEvent,
    portals: &[String],
    resolve: &dyn Fn(&str) -> Option<String>,
) -> Vec<Relayed> {
    let room = ev.room.as_deref().unwrap_or_default();
    let (kind, name, rooms) = match &ev.kind {
        Kind::Say => {
            let same = portals.iter().find(|p| p.eq_ignore_ascii_case(room));
            let rooms = match same {
                Some(p) => vec![p.clone()],
                None => portals.to_vec(),
            };
            (EventKind::Say, "message".to_string(), rooms)
        }
        Kind::Event => {
            let rooms = match resolve(room) {
                Some(r) => vec![r],
                None => portals.to_vec(),
            };
            let name = ev.event.clone().unwrap_or_default();
            (EventKind::Event, name, rooms)
        }
        Kind::Trust | Kind::Other(_) => return Vec::new(),
    };
    let (user_id, username) = match kind {
        EventKind::Say => (
            remote_name(ev.user_id.as_deref().unwrap_or("someone"), &ev.origin),
            remote_name(ev.username.as_deref().unwrap_or("someone"), &ev.origin),
        ),
        _ => (ev.origin.clone(), ev.origin.clone()),
    };
    rooms
        .into_iter()
        .map(|room| Relayed {
            room,
            kind,
            event: name.clone(),
            user_id: user_id.clone(),
            username: username.clone(),
            message: ev.message.clone(),
            origin: ev.origin.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn local(kind: EventKind, room: &str, origin: &str) -> Event {
        Event {
            kind,
            event: if kind == EventKind::Event {
                "fire"
            } else {
                "message"
            }
            .into(),
            user_id: "alice".into(),
            username: "Alice".into(),
            room: room.into(),
            message: Some("hi".into()),
            timestamp: "2026-12-01T18:00:00Z".into(),
            seq: 4,
            origin: origin.into(),
            ts_ms: 0,
        }
    }

    #[test]
    fn event_kinds_federate_unless_asked_otherwise() {
        let kinds: Vec<String> = ["fire", "rain"].map(String::from).to_vec();
        assert_eq!(scope_of("fire", None, &kinds), Scope::Federation);
        assert_eq!(scope_of("Rain", None, &kinds), Scope::Federation);
        assert_eq!(scope_of("fire", Some(Scope::World), &kinds), Scope::World);
        assert_eq!(scope_of("bell", None, &kinds), Scope::World);
        assert_eq!(
            scope_of("bell", Some(Scope::Federation), &kinds),
            Scope::Federation
        );
        assert_eq!(scope_of("fire", None, &[]), Scope::World);
    }

    #[test]
    fn portal_by_flag_or_by_config() {
        let mut spec = RoomSpec {
            name: "The Bridge".into(),
            desc: String::new(),
            exits: BTreeMap::new(),
            objects: vec![],
            portal: false,
        };
        assert!(!is_portal(&spec, &[]));
        assert!(is_portal(&spec, &["the bridge".into()]));
        spec.portal = true;
        assert!(is_portal(&spec, &[]));
    }

    #[test]
    fn only_portal_says_and_federation_events_born_here_go_out() {
        let say = local(EventKind::Say, "Gate", "mac");
        assert!(outgoing("mac", &say, false, Scope::Federation).is_none());
        let d = outgoing("mac", &say, true, Scope::World).expect("portal say goes out");
        assert_eq!(d.kind, Kind::Say);
        assert_eq!(d.message.as_deref(), Some("hi"));
        let relayed = local(EventKind::Say, "Gate", "vps");
        assert!(outgoing("mac", &relayed, true, Scope::World).is_none());
        let fire = local(EventKind::Event, "The Forge", "mac");
        assert!(outgoing("mac", &fire, true, Scope::World).is_none());
        let d = outgoing("mac", &fire, false, Scope::Federation).expect("goes out");
        assert_eq!(d.event.as_deref(), Some("fire"));
        let enter = local(EventKind::Presence, "Gate", "mac");
        assert!(outgoing("mac", &enter, true, Scope::Federation).is_none());
    }

    #[test]
    fn a_remote_say_is_shown_as_alice_at_mac_in_the_portal_room() {
        let ev = outgoing(
            "mac",
            &local(EventKind::Say, "Gate", "mac"),
            true,
            Scope::World,
        )
        .expect("goes out")
        .into_event("mac", 1);
        let portals = vec!["The Bridge".to_string(), "Gate".to_string()];
        let none = |_: &str| None;
        let shown = incoming(&ev, &portals, &none);
        assert_eq!(shown.len(), 1, "the portal room of the same name");
        assert_eq!(shown[0].room, "Gate");
        assert_eq!(shown[0].username, "Alice@mac");
        assert_eq!(shown[0].user_id, "alice@mac");
        assert_eq!(shown[0].origin, "mac");
        let elsewhere = incoming(&ev, &["The Bridge".to_string(), "Dock".to_string()], &none);
        assert_eq!(elsewhere.len(), 2, "no same name: every portal room");
    }

    #[test]
    fn a_remote_fire_burns_in_the_room_of_the_same_name() {
        let ev = outgoing(
            "mac",
            &local(EventKind::Event, "The Forge", "mac"),
            false,
            Scope::Federation,
        )
        .expect("goes out")
        .into_event("mac", 2);
        let forge = |r: &str| (r == "The Forge").then(|| "The Forge".to_string());
        let shown = incoming(&ev, &["Gate".to_string()], &forge);
        assert_eq!(shown.len(), 1);
        assert_eq!(
            (shown[0].room.as_str(), shown[0].event.as_str()),
            ("The Forge", "fire")
        );
        let none = |_: &str| None;
        assert_eq!(incoming(&ev, &["Gate".to_string()], &none)[0].room, "Gate");
    }
}
