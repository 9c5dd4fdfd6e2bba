//! Where events from other worlds are shown here, and what happens when there is no room
//! for one.
//!
//! - The rooms named in `federation.portal_rooms` exist from the start, as portal rooms
//!   with a plain description ([`PORTAL_DESC`]), within `rooms.max`.
//! - An accepted `say` or world event that no local room can show (this world has no
//!   portal room and no room of that name) creates the room it names: a portal room for
//!   a say, a plain room for a world event.
//! - When `rooms.max` forbids that, the event is kept (up to `federation.events_keep`),
//!   logged (once per room per minute) and counted in
//!   `worldbridge_federation_events_unshown_total{reason="room_limit"}`; each time the
//!   number of rooms changes the kept events are tried again, so a room created later
//!   shows them (and each time a room expires, `rooms.idle_expire_s`). An event that names no usable room, with no portal room to fall back on,
//!   cannot ever be shown: it is logged and counted (`reason="no_room"`), not kept. A
//!   kept event pushed out by a newer one is counted `reason="kept_full"`.
//!
//! Nothing here is durable: kept events live until shown or until the process stops
//! (the events themselves stay in the federation log either way).

use crate::app::App;
use crate::federation::portal::Relayed;
use crate::federation::wire::{FedEvent, Kind};
use crate::world::room::RoomSpec;
use crate::world::WorldError;
use std::collections::{BTreeMap, VecDeque};

/// The description of a portal room the bridge creates itself.
pub const PORTAL_DESC: &str = "A gateway to other worlds.";

/// A portal room as the bridge creates it.
fn portal_spec(name: &str) -> RoomSpec {
    RoomSpec {
        name: name.trim().to_string(),
        desc: PORTAL_DESC.into(),
        exits: BTreeMap::new(),
        objects: Vec::new(),
        portal: true,
    }
}

/// What became of one event.
enum Fate {
    Shown,
    /// No room can be made for it now (`rooms.max`): keep it.
    Kept(String),
    /// It names no room that could ever exist here.
    Lost(String),
}

impl App {
    /// Create the rooms of `federation.portal_rooms` that do not exist yet.
    pub(crate) fn ensure_portal_rooms(&mut self) {
        for name in self.cfg.federation.portal_rooms.clone() {
            if self.world.resolve(&name).is_some() {
                continue;
            }
            match self.world.set_room(portal_spec(&name)) {
                Ok(n) => log::info!("federation: created the portal room {n:?} (federation.portal_rooms)"),
                Err(e) => log::warn!(
                    "federation: the portal room {name:?} (federation.portal_rooms) was not created: {e}"
                ),
            }
        }
    }

    /// Show events accepted from peers in this world's rooms, creating a room an event
    /// names when none can show it; keep, log and count what cannot be shown.
    pub(crate) fn show_federated(&mut self, events: &[FedEvent], now_ms: u64) {
        for ev in events {
            match self.show_one(ev, now_ms) {
                Fate::Shown => {}
                Fate::Kept(room) => self.keep(ev, &room, now_ms),
                Fate::Lost(room) => {
                    let Some(f) = &mut self.fed else { return };
                    f.unshown.counted("no_room");
                    if f.unshown.warn_due(&room, now_ms) {
                        log::warn!(
                            "federation: an event from {} ({}/{}) is not shown: it names no usable room ({room:?}) and this world has no portal room",
                            ev.origin, ev.origin, ev.seq
                        );
                    }
                }
            }
        }
    }

    /// Try the kept events again when the number of rooms has changed.
    pub(crate) fn retry_unshown(&mut self, now_ms: u64) {
        let rooms = self.world.room_count();
        let kept = match &mut self.fed {
            Some(f) if !f.unshown.kept.is_empty() && f.unshown.tried_at_rooms != rooms => {
                f.unshown.tried_at_rooms = rooms;
                std::mem::take(&mut f.unshown.kept)
            }
            _ => return,
        };
        let mut still = VecDeque::new();
        for ev in kept {
            match self.show_one(&ev, now_ms) {
                Fate::Shown => log::info!(
                    "federation: a kept event from {} ({}/{}) is shown now",
                    ev.origin,
                    ev.origin,
                    ev.seq
                ),
                Fate::Kept(_) | Fate::Lost(_) => still.push_back(ev),
            }
        }
        if let Some(f) = &mut self.fed {
            f.unshown.tried_at_rooms = self.world.room_count();
            still.extend(f.unshown.kept.drain(..));
            f.unshown.kept = still;
        }
    }

    fn keep(&mut self, ev: &FedEvent, room: &str, now_ms: u64) {
        let cap = self.cfg.federation.events_keep.max(1);
        let max = self.cfg.rooms.max;
        let rooms = self.world.room_count();
        let Some(f) = &mut self.fed else { return };
        f.unshown.counted("room_limit");
        if f.unshown.warn_due(room, now_ms) {
            log::warn!(
                "federation: an event from {} for the room {room:?} is kept, not shown: no room can be created (rooms.max = {max} is reached); it shows once the room exists",
                ev.origin
            );
        }
        if f.unshown.kept.len() >= cap {
            f.unshown.kept.pop_front();
            f.unshown.counted("kept_full");
        }
        f.unshown.kept.push_back(ev.clone());
        f.unshown.tried_at_rooms = rooms;
    }

    /// The local rooms that show `ev` now (see [`crate::federation::portal::incoming`]).
    fn targets(&self, ev: &FedEvent, portals: Option<Vec<String>>) -> Vec<Relayed> {
        let Some(f) = &self.fed else {
            return Vec::new();
        };
        let portals = portals.unwrap_or_else(|| {
            self.world
                .rooms()
                .filter(|r| f.core.is_portal(&r.spec))
                .map(|r| r.spec.name.clone())
                .collect()
        });
        let world = &self.world;
        let resolve = |name: &str| world.resolve(name).map(str::to_string);
        f.core.shown(ev, &portals, &resolve)
    }

    fn show_one(&mut self, ev: &FedEvent, now_ms: u64) -> Fate {
        if !matches!(ev.kind, Kind::Say | Kind::Event) {
            // Trust and kinds this bridge does not know are not shown in rooms.
            return Fate::Shown;
        }
        let mut targets = self.targets(ev, None);
        if targets.is_empty() {
            let room = ev.room.as_deref().unwrap_or_default().trim().to_string();
            // A say goes to portal rooms: one of the name it came from is made. A room
            // of that name that is not a portal shows it as it is.
            let made = match (self.world.resolve(&room), ev.kind == Kind::Say) {
                (Some(existing), _) => Ok(existing.to_string()),
                (None, true) => self.world.set_room(portal_spec(&room)),
                (None, false) => self.world.ensure_room(&room),
            };
            match made {
                Ok(name) => {
                    log::info!(
                        "federation: created the room {name:?} for an event from {}",
                        ev.origin
                    );
                    targets = self.targets(ev, Some(vec![name]));
                }
                Err(WorldError::Limit(_)) => return Fate::Kept(room),
                Err(_) => return Fate::Lost(room),
            }
        }
        for t in &targets {
            self.world.show_remote(t, now_ms);
        }
        Fate::Shown
    }
}

#[cfg(test)]
mod tests {
    use crate::app::peering::tests::app_with as app;
    use crate::app::App;
    use crate::federation::wire::PAGE_MAX;

    /// What vps has federated so far, as mac would pull it.
    fn doc(vps: &mut App) -> crate::federation::wire::Delta {
        vps.route_events(None);
        let presence = vps.own_presence();
        vps.fed
            .as_ref()
            .unwrap()
            .core
            .delta(Some("mac"), None, PAGE_MAX, presence)
    }

    fn messages(a: &App, room: &str) -> Vec<String> {
        a.world
            .events(room, None, None)
            .map(|evs| {
                evs.iter()
                    .map(|e| e.message.clone().unwrap_or_else(|| e.event.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn configured_portal_rooms_exist_from_the_start() {
        let a = app("mac", &["The Gate", "The Bridge"], 100);
        let gate = a.world.room("The Gate").expect("created");
        assert_eq!(gate.spec.desc, super::PORTAL_DESC);
        assert!(gate.spec.portal);
        // One the world file has is left as it is.
        assert_ne!(
            a.world.room("The Bridge").unwrap().spec.desc,
            super::PORTAL_DESC
        );
        // Within rooms.max: the built-in world has 5 rooms.
        let full = app("mac", &["The Gate"], 5);
        assert!(full.world.room("The Gate").is_none());
    }

    #[test]
    fn a_say_for_a_room_missing_here_creates_it_as_a_portal_and_shows() {
        let mut vps = app("vps", &["The Gate"], 100);
        vps.world
            .say("alice", "Alice", "The Gate", "hello mac", 1)
            .unwrap();
        let d = doc(&mut vps);
        // mac has no portal room at all.
        let mut mac = app("mac", &[], 100);
        let applied = mac.fed_apply("vps", &d, 2).unwrap();
        assert_eq!(applied.accepted.len(), 1);
        assert!(mac.world.room("The Gate").unwrap().spec.portal);
        assert_eq!(messages(&mac, "The Gate"), ["hello mac"]);
    }

    #[test]
    fn at_rooms_max_an_event_is_kept_counted_and_shown_once_its_room_exists() {
        let mut vps = app("vps", &["The Gate"], 100);
        vps.world
            .say("alice", "Alice", "The Gate", "hello mac", 1)
            .unwrap();
        let d = doc(&mut vps);
        // mac is full (the built-in world's 5 rooms) and has no portal room.
        let mut mac = app("mac", &[], 5);
        mac.fed_apply("vps", &d, 2).unwrap();
        assert!(mac.world.room("The Gate").is_none());
        let f = mac.fed.as_ref().unwrap();
        assert_eq!((f.unshown.kept(), f.unshown.count("room_limit")), (1, 1));
        let mut metrics = String::new();
        f.unshown.render_metrics(&mut metrics);
        assert!(metrics
            .contains("worldbridge_federation_events_unshown_total{reason=\"room_limit\"} 1"));
        // Nothing changed: trying again shows nothing and counts nothing.
        mac.retry_unshown(3);
        assert_eq!(mac.fed.as_ref().unwrap().unshown.count("room_limit"), 1);
        // A room appears (here: the world is given room, then a game declares it).
        mac.world.raise_rooms_max_for_test(6);
        mac.world
            .set_room(super::portal_spec("The Gate"))
            .expect("room");
        mac.retry_unshown(4);
        assert_eq!(messages(&mac, "The Gate"), ["hello mac"]);
        assert_eq!(mac.fed.as_ref().unwrap().unshown.kept(), 0);
    }
}
