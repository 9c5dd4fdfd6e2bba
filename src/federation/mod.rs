//! Federation, socket-free: what one bridge holds about the others, and the documents
//! it exchanges with them. The HTTP routes, the peer-sync thread and the store tables
//! wire this in; nothing here touches a socket, a clock or a disk.
//!
//! - [`wire`]: the serde shapes below, and the checks on everything a peer sends.
//! - [`merge`]: the event log keyed by `(origin, seq)`, contiguous marks, paged deltas.
//! - [`trust`]: subject → score, last writer wins by `(updated_at, origin, seq)`.
//! - [`presence`]: each peer's own characters, `last_seen`, offline after 3 intervals.
//! - [`portal`]: which local events leave (portal says, `scope: "federation"` events),
//!   and how arriving ones are shown (`Alice@mac`).
//! - [`travel`]: moving a character exactly once, both sides, with recovery.
//! - [`sign`] and [`accept`]: world keys, signatures, and what is believed of a peer.
//! - [`Federation`]: one world's federation state, tying these together.
//!
//! # Federation (as docs/federation.md tells it)
//!
//! Each bridge has a `world` id (`world = "mac"`); each peer is a
//! `[[federation.peers]]` entry with its world id, base URL and the pair's shared token
//! (sent as `Authorization: Bearer <token>` both ways). Every `sync_interval_s` (5 s) a
//! bridge pulls each peer's `GET /bridge/state?since=<cursor>` and pushes its own delta
//! with `POST /bridge/sync`. A peer that is down changes nothing here but its presence
//! marks; each world goes on alone.
//!
//! **What federates.** A `say` in a portal room (`"portal": true` on the room, or named
//! in `federation.portal_rooms`) reaches every peer's portal room, spoken by
//! `Alice@mac`. A world event sent with `"scope": "federation"` (fire, rain, growth…)
//! happens in the room of the same name in every world (or its portal room). Trust
//! changes reach every world. Presence: each world is the only authority for its own
//! characters; its peers show them (presence is not relayed further), and show them
//! `away` (with the world `offline`) when the world has been silent for 3 intervals,
//! until it answers again.
//!
//! **Events and cursors.** A federated event is named by `(origin, seq)`: `seq` counts
//! the origin's federated events 1, 2, 3… with no holes. A cursor says, per origin, the
//! last seq held without a gap: `{"mac": 120, "vps": 77}`, or in a query string
//! `?since=mac:120,vps:77`. Merging is set union by `(origin, seq)`: receiving an event
//! twice, in any order, or from two peers, gives the same state. A world serves its own
//! events and those it received, never an event to its origin, and only what lies beyond
//! the asker's cursor; since every world asks with what it holds, an event crosses each
//! link about once and never circles.
//!
//! `GET /bridge/state` (no cursor) is a snapshot: presence, the first page of events,
//! the whole trust map. With `?since=` it is a delta: presence and the events after the
//! cursor. At most 500 events (and `page_max_bytes` of them) per document; `more: true`
//! means ask again with `next`.
//!
//! ```json
//! {
//!   "protocol": 1,
//!   "world": "mac",
//!   "presence": {
//!     "epoch": 1764612000000, "seq": 812,
//!     "characters": [{"user_id": "alice", "username": "Alice", "room": "The Bridge"}]
//!   },
//!   "events": [
//!     {"origin": "mac", "seq": 121, "kind": "say", "room": "The Bridge",
//!      "user_id": "alice", "username": "Alice", "message": "hello vps",
//!      "timestamp": "2026-12-01T18:00:00.000Z"},
//!     {"origin": "vps", "seq": 78, "kind": "event", "room": "The Forge",
//!      "event": "fire", "message": "The forge flares.",
//!      "timestamp": "2026-12-01T18:00:01.000Z"},
//!     {"origin": "mac", "seq": 122, "kind": "trust", "timestamp": "2026-12-01T18:00:02.000Z",
//!      "data": {"subject": "bob@vps", "score": 0.8, "updated_at": 1764612002000}}
//!   ],
//!   "next": {"mac": 122, "vps": 78},
//!   "more": false,
//!   "have": {"bezalel": 40, "mac": 122, "vps": 78},
//!   "trust": [
//!     {"subject": "bob@vps", "score": 0.8, "updated_at": 1764612002000,
//!      "origin": "mac", "seq": 122}
//!   ]
//! }
//! ```
//!
//! `presence.epoch` is when the world's process started and `presence.seq` its event
//! counter: a newer `(epoch, seq)` replaces an older report, never the reverse. `have` is
//! what the sender holds (a pusher sends it only what lies beyond). `pruned` (absent
//! here) says, per origin, up to which seq old events are no longer kept; a receiver
//! counts those as seen. `trust` comes only in a snapshot.
//!
//! `POST /bridge/sync`: the body is the same document, made for that peer (events beyond
//! the `have` it last told us, never its own). The answer says what was taken:
//!
//! ```json
//! {"protocol": 1, "world": "vps", "accepted": 2, "duplicates": 1, "refused": {},
//!  "have": {"bezalel": 40, "mac": 122, "vps": 78}}
//! ```
//!
//! (`refused` counts by reason, e.g. `{"bad_signature": 2}`; `refusals` lists the first
//! few: `[{"origin": "mac", "seq": 9, "reason": "bad_signature", "error": "…"}]`.)
//!
//! **Signatures.** Every event, presence report and travel message carries `sig`, its
//! origin's Ed25519 signature over its canonical encoding (see [`sign`]); events above
//! are shown without it. What a peer sends is believed only as far as [`accept`] allows:
//! an origin that is configured, a signature that verifies, a clock not far ahead.
//!
//! **Trust** is a map subject → `{score, updated_at, origin, seq}`; a subject is a
//! character (`bob@vps`) or a world (`vps`). The change with the latest
//! `(updated_at, origin, seq)` wins, in every world alike; `updated_at` is epoch ms.
//!
//! **Travel** (`POST /bridge/travel` between peers, with the pair's token) moves a
//! character exactly once. The origin offers; the destination promises and answers; the
//! origin, and only it, decides: it removes the character and commits, or aborts.
//!
//! ```json
//! {"type": "offer", "travel_id": "mac-1764612003000-1", "from": "mac", "to": "vps",
//!  "user_id": "alice", "username": "Alice", "room": "The Bridge",
//!  "history": [{"role": "user", "content": "take me to vps"}],
//!  "trust": [{"subject": "alice@mac", "score": 0.9, "updated_at": 1764612000000,
//!             "origin": "mac", "seq": 100}]}
//! {"type": "accepted", "travel_id": "mac-1764612003000-1", "duplicate": false}
//! {"type": "refused", "travel_id": "mac-1764612003000-1", "reason": "alice is already in vps"}
//! {"type": "commit", "travel_id": "mac-1764612003000-1", "from": "mac", "to": "vps", "…": "the offer again"}
//! {"type": "abort", "travel_id": "mac-1764612003000-1"}
//! {"type": "done", "travel_id": "mac-1764612003000-1"}
//! ```
//!
//! If the destination is offline or does not accept in time, the traveller is told
//! "world vps is offline" and stays. After a crash of either bridge at any step,
//! recovery settles every travel with the character in exactly one world.

pub mod accept;
pub mod merge;
pub mod portal;
pub mod presence;
pub mod sign;
pub mod travel;
pub mod trust;
pub mod wire;

use crate::config::FederationConfig;
use crate::world::check_name;
use crate::world::room::{Event, RoomSpec};
use crate::world::time::rfc3339;
use accept::{Origins, Reason, Refusal, Tally};
use merge::{EventLog, Insert, Pruned};
use portal::{Draft, Relayed, Scope};
use presence::{PeerStatus, RemotePresence, Report};
use sign::{PublicKey, WorldKey};
use std::collections::{BTreeMap, VecDeque};
use travel::{Arrival, Arrivals, Departure, Departures};
use trust::Trust;
use wire::{
    check_world_id, Cursor, Delta, FedEvent, Kind, Refused, SyncAnswer, TrustChange, TrustEntry,
    WireError, WorldPresence, AHEAD_MAX, PAGE_MAX, PROTOCOL, REFUSED_LISTED_MAX,
};

/// The least time a destination has to accept an offer, whatever the sync interval.
pub const TRAVEL_TIMEOUT_MIN_MS: u64 = 10_000;

/// A configured peer world.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    pub world: String,
    pub url: String,
    token: String,
}

impl Peer {
    /// Whether `given` is this pair's token, in time that does not depend on where the
    /// two first differ. A peer with no token accepts none (an open federation port is
    /// refused at bind time by config).
    pub fn token_matches(&self, given: &str) -> bool {
        let (a, b) = (self.token.as_bytes(), given.as_bytes());
        if a.is_empty() || a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    pub fn token(&self) -> &str {
        &self.token
    }
}

/// A durable row federation adds to the store (`fed_events`, `fed_trust`,
/// `fed_departures`, `fed_arrivals`; see `store::Row`).
#[derive(Debug, Clone, PartialEq)]
pub enum FedRow {
    /// Keyed by `(origin, seq)`; writing it again is harmless.
    Event(FedEvent),
    /// An origin's events up to a seq are no longer kept (pruned here, or by a peer that
    /// had them first): the store drops them and keeps the mark.
    Pruned(Pruned),
    /// Keyed by subject: the winner now held.
    Trust(TrustEntry),
    Departure(Departure),
    DepartureGone(String),
    Arrival(Arrival),
    ArrivalGone(String),
}

/// What merging a peer's document changed here.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// Events new here, in the document's order: to store, and to show
    /// ([`Federation::shown`]).
    pub accepted: Vec<FedEvent>,
    pub duplicates: u64,
    pub refused: Vec<Refused>,
    /// Trust entries that now win here: to store.
    pub trust: Vec<TrustEntry>,
    /// Origins whose old events the peer no longer keeps, skipped here: to store.
    pub pruned: Vec<Pruned>,
    pub presence: Option<Report>,
}

impl Applied {
    /// The rows to store for this merge.
    pub fn rows(&self) -> Vec<FedRow> {
        let skipped = self.pruned.iter().cloned().map(FedRow::Pruned);
        let events = self.accepted.iter().cloned().map(FedRow::Event);
        skipped
            .chain(events)
            .chain(self.trust.iter().cloned().map(FedRow::Trust))
            .collect()
    }
}

/// One world's federation state.
#[derive(Debug, Clone)]
pub struct Federation {
    world: String,
    epoch_ms: u64,
    peers: Vec<Peer>,
    portal_rooms: Vec<String>,
    /// World event kinds that federate without being asked (`federation.event_kinds`).
    event_kinds: Vec<String>,
    /// Events kept per origin (`federation.events_keep`).
    events_keep: usize,
    /// Most bytes of events per document (`federation.page_max_bytes`).
    page_max_bytes: usize,
    pub log: EventLog,
    pub trust: Trust,
    pub presence: RemotePresence,
    pub departures: Departures,
    pub arrivals: Arrivals,
    /// The last seq given to an event of this world.
    last_seq: u64,
    /// Own events not yet durable: not served until stored, so no peer ever holds an
    /// event this world could hand out again under the same seq after a crash.
    unstored: VecDeque<FedEvent>,
    /// What each peer last said it holds.
    peer_have: BTreeMap<String, Cursor>,
    /// Which origins are held, with their keys and the clock bound.
    origins: Origins,
    /// This world's key: what it originates is signed with it.
    key: WorldKey,
    /// Refusals by peer and reason.
    pub refusals: Tally,
    /// `federation.max_clock_skew_s`, in ms.
    max_skew_ms: u64,
}

/// Why this world's own trust change was not made.
#[derive(Debug, Clone, PartialEq)]
pub enum TrustRefused {
    /// The subject or score is not acceptable.
    Invalid(WireError),
    /// An entry in force wins over any change this world may stamp now (it lies further
    /// ahead than `federation.max_clock_skew_s`): that entry.
    Superseded(TrustEntry),
}

impl std::fmt::Display for TrustRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrustRefused::Invalid(e) => write!(f, "{e}"),
            TrustRefused::Superseded(t) => write!(
                f,
                "the trust of {} set by {} (updated_at {}) stays in force: a change made now would lose to it",
                t.subject, t.origin, t.updated_at
            ),
        }
    }
}

impl From<WireError> for TrustRefused {
    fn from(e: WireError) -> TrustRefused {
        TrustRefused::Invalid(e)
    }
}

/// A configured `public_key`, parsed; empty is none.
fn public_key(what: &str, text: &str) -> Result<Option<PublicKey>, WireError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    PublicKey::parse(text)
        .map(Some)
        .map_err(|e| WireError::Document(format!("{what}: public_key: {e}")))
}

impl Federation {
    /// `epoch_ms`: when this process started (orders our presence reports across
    /// restarts).
    pub fn new(
        world: &str,
        cfg: &FederationConfig,
        epoch_ms: u64,
    ) -> Result<Federation, WireError> {
        check_world_id(world)?;
        let mut peers: Vec<Peer> = Vec::new();
        let mut keyed: Vec<(String, Option<PublicKey>)> = Vec::new();
        for p in &cfg.peers {
            check_world_id(&p.world)?;
            if p.world == world {
                return Err(WireError::World(format!(
                    "peer {:?} is this world itself",
                    p.world
                )));
            }
            if peers.iter().any(|q| q.world == p.world) {
                return Err(WireError::World(format!(
                    "peer {:?} is listed twice",
                    p.world
                )));
            }
            peers.push(Peer {
                world: p.world.clone(),
                url: p.url.trim_end_matches('/').to_string(),
                token: p.token.clone(),
            });
            keyed.push((
                p.world.clone(),
                public_key(&format!("peer {:?}", p.world), &p.public_key)?,
            ));
        }
        let mut worlds: Vec<(String, PublicKey)> = Vec::new();
        for w in &cfg.worlds {
            let what = format!("[[federation.worlds]] {:?}", w.world);
            check_world_id(&w.world)?;
            if w.world == world || peers.iter().any(|p| p.world == w.world) {
                return Err(WireError::Document(format!(
                    "{what} is this world or a peer (list a peer's key as its public_key)"
                )));
            }
            if worlds.iter().any(|(x, _)| x == &w.world) {
                return Err(WireError::Document(format!("{what} is listed twice")));
            }
            let key = public_key(&what, &w.public_key)?
                .ok_or_else(|| WireError::Document(format!("{what} needs a public_key")))?;
            worlds.push((w.world.clone(), key));
        }
        let key = WorldKey::generate().map_err(|e| WireError::Document(e.to_string()))?;
        let interval_ms = cfg.sync_interval_s.max(1) * 1000;
        Ok(Federation {
            world: world.to_string(),
            epoch_ms,
            peers,
            portal_rooms: cfg.portal_rooms.clone(),
            event_kinds: cfg.event_kinds.clone(),
            events_keep: cfg.events_keep.max(1),
            page_max_bytes: cfg.page_max_bytes.max(1),
            log: EventLog::new(),
            trust: Trust::new(),
            presence: RemotePresence::new(interval_ms),
            departures: Departures::new(world, (2 * interval_ms).max(TRAVEL_TIMEOUT_MIN_MS)),
            arrivals: Arrivals::new(world, cfg.travels_pending_max),
            last_seq: 0,
            unstored: VecDeque::new(),
            peer_have: BTreeMap::new(),
            origins: Origins::new(
                world,
                &keyed,
                &worlds,
                cfg.max_clock_skew_s.saturating_mul(1000),
            ),
            key,
            refusals: Tally::default(),
            max_skew_ms: cfg.max_clock_skew_s.saturating_mul(1000),
        })
    }

    /// Sign with this key from now on (the world's own, read at start; until then a key
    /// made for this run).
    /// Own events held without a valid signature by this key (stored before keys
    /// existed, or under a key since rotated) are signed again: they are this world's
    /// to vouch for, and a peer that lacks them checks them against the key it has now.
    pub fn set_key(&mut self, key: WorldKey) {
        self.key = key;
        let (key, public) = (&self.key, self.key.public());
        let mut resign = |ev: &mut FedEvent| {
            if accept::verify_event(&public, ev).is_err() {
                if let Err(e) = accept::sign_event(key, ev) {
                    log::warn!(
                        "federation: event {}/{} cannot be signed: {e}",
                        ev.origin,
                        ev.seq
                    );
                }
            }
        };
        self.log.each_of_mut(&self.world, &mut resign);
        self.unstored.iter_mut().for_each(&mut resign);
    }

    pub fn public_key(&self) -> PublicKey {
        self.key.public()
    }

    /// The origins whose events are held here, with their keys.
    pub fn origins(&self) -> &Origins {
        &self.origins
    }

    pub fn world(&self) -> &str {
        &self.world
    }

    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    pub fn peer(&self, world: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.world == world)
    }

    /// The peer whose token this is (every peer is compared, so the time taken does not
    /// tell which one nearly matched).
    pub fn peer_by_token(&self, token: &str) -> Option<&Peer> {
        let mut found = None;
        for p in &self.peers {
            if p.token_matches(token) && found.is_none() {
                found = Some(p);
            }
        }
        found
    }

    pub fn is_portal(&self, spec: &RoomSpec) -> bool {
        portal::is_portal(spec, &self.portal_rooms)
    }

    /// The scope of a local world event of kind `kind` (see [`portal::scope_of`]).
    pub fn event_scope(&self, kind: &str, asked: Option<Scope>) -> Scope {
        portal::scope_of(kind, asked, &self.event_kinds)
    }

    /// The last seq handed out to an event of this world (stored or not).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Put back the stored state at start: pruned marks, events, trust winners, travel
    /// rows. Own events (and an own pruned mark) set the seq to go on from. The caller
    /// then carries out `departures.recover()` and `arrivals.recover()`.
    pub fn restore(
        &mut self,
        pruned: Vec<Pruned>,
        events: Vec<FedEvent>,
        trust: Vec<TrustEntry>,
        departures: Vec<Departure>,
        arrivals: Vec<Arrival>,
    ) {
        let held = |o: &str| self.origins.holds(o);
        let (pruned, gone): (Vec<Pruned>, Vec<Pruned>) =
            pruned.into_iter().partition(|p| held(&p.origin));
        let (events, dropped): (Vec<FedEvent>, Vec<FedEvent>) =
            events.into_iter().partition(|e| held(&e.origin));
        let (trust, untrusted): (Vec<TrustEntry>, Vec<TrustEntry>) =
            trust.into_iter().partition(|t| held(&t.origin));
        if !gone.is_empty() || !dropped.is_empty() || !untrusted.is_empty() {
            log::warn!(
                "federation: {} stored events and {} trust entries of worlds no longer configured are not loaded",
                dropped.len(),
                untrusted.len()
            );
        }
        for p in pruned {
            if p.origin == self.world {
                self.last_seq = self.last_seq.max(p.upto);
            }
            self.log.skip_to(&p.origin, p.upto);
        }
        for ev in events {
            if ev.origin == self.world {
                self.last_seq = self.last_seq.max(ev.seq);
            }
            self.merge_event(ev);
        }
        for t in trust {
            self.trust.apply(t);
        }
        self.departures.restore(departures);
        self.arrivals.restore(arrivals);
    }

    /// Give a draft this world's next seq. The event is returned to be stored
    /// ([`FedRow::Event`]); it is served to peers once [`Federation::stored`] says so.
    fn record(&mut self, draft: Draft) -> FedEvent {
        self.last_seq += 1;
        let mut ev = draft.into_event(&self.world, self.last_seq);
        if let Err(e) = accept::sign_event(&self.key, &mut ev) {
            log::warn!(
                "federation: event {}/{} cannot be signed: {e}",
                ev.origin,
                ev.seq
            );
        }
        if ev.kind == Kind::Trust {
            if let Ok(entry) = Trust::entry_of(&ev) {
                self.trust.apply(entry);
            }
        }
        self.unstored.push_back(ev.clone());
        ev
    }

    /// Drop all but the last `federation.events_keep` events of each origin; the marks
    /// that moved are to be stored ([`FedRow::Pruned`]).
    pub fn prune(&mut self) -> Vec<Pruned> {
        self.log.prune(self.events_keep)
    }

    /// Own events up to `seq` are durable: serve them from now on.
    pub fn stored(&mut self, seq: u64) {
        while self.unstored.front().is_some_and(|e| e.seq <= seq) {
            if let Some(ev) = self.unstored.pop_front() {
                self.log.insert(ev);
            }
        }
    }

    /// Whether a local event federates (a say in a portal room, a world event of scope
    /// federation, born here).
    pub fn federates(&self, ev: &Event, in_portal: bool, scope: Scope) -> bool {
        portal::outgoing(&self.world, ev, in_portal, scope).is_some()
    }

    /// A local event: if it federates (a say in a portal room, a world event of scope
    /// federation, born here), the federated event to store.
    pub fn local_event(&mut self, ev: &Event, in_portal: bool, scope: Scope) -> Option<FedEvent> {
        let draft = portal::outgoing(&self.world, ev, in_portal, scope)?;
        Some(self.record(draft))
    }

    /// This world sets `subject`'s trust. The change wins here at once and reaches every
    /// world as a `trust` event.
    pub fn set_trust(
        &mut self,
        subject: &str,
        score: f64,
        now_ms: u64,
    ) -> Result<FedEvent, TrustRefused> {
        check_name("subject", subject).map_err(|e| WireError::Trust(e.to_string()))?;
        if !(-1.0..=1.0).contains(&score) {
            return Err(WireError::Trust("score must be a number in [-1.0, 1.0]".into()).into());
        }
        let updated_at = self.trust.stamp(subject, now_ms);
        // A stamp past the clock bound would be refused by every peer (`clock_skew`):
        // the entry in force wins, and the person is told so.
        if updated_at > now_ms.saturating_add(self.max_skew_ms()) {
            if let Some(held) = self.trust.get(subject) {
                return Err(TrustRefused::Superseded(held.clone()));
            }
        }
        let change = TrustChange {
            subject: subject.to_string(),
            score,
            updated_at,
        };
        let data = serde_json::to_value(&change).map_err(|e| WireError::Trust(e.to_string()))?;
        Ok(self.record(Draft {
            kind: Kind::Trust,
            room: None,
            user_id: None,
            username: None,
            message: None,
            event: None,
            timestamp: rfc3339(now_ms),
            data: Some(data),
        }))
    }

    /// The document for `GET /bridge/state` (`asker` is the authenticated peer) or for a
    /// push. No cursor: a snapshot (trust map included). `presence` is this world's own
    /// characters, from the world.
    pub fn delta(
        &self,
        asker: Option<&str>,
        since: Option<&Cursor>,
        limit: usize,
        presence: WorldPresence,
    ) -> Delta {
        let from = since.cloned().unwrap_or_default();
        // Only what a receiver can check leaves: this world's events, and those of
        // worlds whose key is configured here (a keyless peer's events stay here).
        let page = self.log.delta_serving(
            &from,
            asker,
            limit.clamp(1, PAGE_MAX),
            self.page_max_bytes,
            &|origin| self.origins.relayable(origin),
        );
        Delta {
            protocol: PROTOCOL,
            world: self.world.clone(),
            presence,
            events: page.events,
            next: page.next,
            more: page.more,
            have: self.log.have(),
            pruned: page.pruned,
            trust: if since.is_none() {
                let mut entries = self.trust.entries();
                // A keyless peer's entries go back only to it (which skips them).
                entries.retain(|t| self.origins.relayable(&t.origin) || asker == Some(&t.origin));
                entries
            } else {
                Vec::new()
            },
        }
    }

    /// The `POST /bridge/sync` body for `peer`: what lies beyond what it last said it
    /// holds. Before it has said anything, presence only (its first answer tells us).
    pub fn push_body(&self, peer: &str, limit: usize, presence: WorldPresence) -> Delta {
        match self.peer_have.get(peer) {
            Some(have) => self.delta(Some(peer), Some(have), limit, presence),
            None => Delta {
                events: Vec::new(),
                next: Cursor::default(),
                more: false,
                pruned: Cursor::default(),
                ..self.delta(Some(peer), Some(&Cursor::default()), 1, presence)
            },
        }
    }

    /// What this world's own presence report looks like (the wiring lists characters),
    /// signed.
    pub fn presence_report(&self, seq: u64, characters: Vec<wire::PresenceEntry>) -> WorldPresence {
        let mut p = WorldPresence {
            epoch: self.epoch_ms,
            seq,
            characters,
            sig: None,
        };
        if let Err(e) = accept::sign_presence(&self.key, &self.world, &mut p) {
            log::warn!("federation: the presence report cannot be signed: {e}");
        }
        p
    }

    fn max_skew_ms(&self) -> u64 {
        self.max_skew_ms
    }

    /// Sign a travel message as it leaves.
    pub fn sign_travel(&self, msg: &mut wire::TravelMsg) {
        if let Err(e) = accept::sign_travel(&self.key, msg) {
            log::warn!("travel {}: cannot sign: {e}", msg.travel_id());
        }
    }

    /// Merge a document from the authenticated peer `from`: a pull answer or a push
    /// body. Refused whole if it is malformed or claims another sender; otherwise each
    /// event on its own, by the rules of [`accept`]. A refused event is not recorded as
    /// seen.
    pub fn apply(&mut self, from: &str, delta: &Delta, now_ms: u64) -> Result<Applied, WireError> {
        delta.check()?;
        if delta.world != from {
            return Err(WireError::Document(format!(
                "a document from {from} says it is from {}",
                delta.world
            )));
        }
        let mut applied = Applied::default();
        let refused = |applied: &mut Applied, origin: &str, seq: u64, r: Refusal| {
            applied.refused.push(Refused {
                origin: origin.to_string(),
                seq,
                reason: r.reason.as_str().to_string(),
                error: r.why,
            })
        };
        // The peer is heard from either way; its report counts only if it is its own.
        self.presence.seen(from, now_ms);
        match self.origins.presence(from, &delta.presence, now_ms) {
            Ok(()) => applied.presence = Some(self.presence.report(from, &delta.presence, now_ms)),
            Err(r) => refused(&mut applied, from, delta.presence.seq, r),
        }
        self.peer_have.insert(from.to_string(), delta.have.clone());
        for (origin, upto) in &delta.pruned.0 {
            // Only origins held here: a pruned mark must not add an origin.
            if origin != &self.world
                && self.origins.holds(origin)
                && self.log.skip_to(origin, *upto)
            {
                applied.pruned.push(Pruned {
                    origin: origin.clone(),
                    upto: *upto,
                });
            }
        }
        for ev in &delta.events {
            let verdict = self.origins.event(from, ev, now_ms).and_then(|()| {
                let mark = self.log.mark(&ev.origin);
                if ev.seq > mark.saturating_add(AHEAD_MAX) {
                    return Err(Refusal {
                        reason: Reason::TooFarAhead,
                        why: format!("more than {AHEAD_MAX} ahead of the {mark} events held"),
                    });
                }
                Ok(())
            });
            if let Err(r) = verdict {
                refused(&mut applied, &ev.origin, ev.seq, r);
                continue;
            }
            match self.merge_event(ev.clone()) {
                (Insert::New, trust) => {
                    applied.trust.extend(trust);
                    applied.accepted.push(ev.clone());
                }
                (Insert::Duplicate, _) => applied.duplicates += 1,
            }
        }
        for t in &delta.trust {
            match self.origins.trust_entry(from, t, now_ms) {
                // Our own entries come back in every snapshot: nothing to take.
                Err(r) if r.reason == Reason::OwnOrigin => {}
                Err(r) => refused(&mut applied, &t.origin, t.seq, r),
                Ok(()) => {
                    if self.trust.apply(t.clone()) {
                        applied.trust.push(t.clone());
                    }
                }
            }
        }
        self.note_refusals(from, &applied.refused, now_ms);
        Ok(applied)
    }

    /// Count refusals of `from`, and log each reason at most once a minute per peer.
    fn note_refusals(&mut self, from: &str, refused: &[Refused], now_ms: u64) {
        let mut by_reason: BTreeMap<&str, (u64, &Refused)> = BTreeMap::new();
        for r in refused {
            by_reason.entry(&r.reason).or_insert((0, r)).0 += 1;
        }
        for (reason, (n, first)) in by_reason {
            let Some(stable) = accept::reason_name(reason) else {
                continue;
            };
            if self.refusals.note(from, stable, n, now_ms) {
                log::warn!(
                    "federation: refused {n} from {from} ({reason}), e.g. {}/{}: {} (logged at most once a minute per peer and reason)",
                    first.origin,
                    first.seq,
                    first.error
                );
            }
        }
    }

    /// Insert one checked event; a new trust event also updates the map (returned when it
    /// now wins).
    fn merge_event(&mut self, ev: FedEvent) -> (Insert, Option<TrustEntry>) {
        let entry = (ev.kind == Kind::Trust)
            .then(|| Trust::entry_of(&ev).ok())
            .flatten();
        let inserted = self.log.insert(ev);
        let won = match (inserted, entry) {
            (Insert::New, Some(e)) if self.trust.apply(e.clone()) => Some(e),
            _ => None,
        };
        (inserted, won)
    }

    /// The `POST /bridge/sync` answer for a merge.
    pub fn sync_answer(&self, applied: &Applied) -> SyncAnswer {
        SyncAnswer {
            protocol: PROTOCOL,
            world: self.world.clone(),
            accepted: applied.accepted.len() as u64,
            duplicates: applied.duplicates,
            refused: applied.refused.iter().fold(BTreeMap::new(), |mut m, r| {
                *m.entry(r.reason.clone()).or_default() += 1;
                m
            }),
            refusals: applied
                .refused
                .iter()
                .take(REFUSED_LISTED_MAX)
                .cloned()
                .collect(),
            have: self.log.have(),
        }
    }

    /// A peer answered our push.
    pub fn on_sync_answer(
        &mut self,
        from: &str,
        answer: &SyncAnswer,
        now_ms: u64,
    ) -> Result<(), WireError> {
        if answer.world != from {
            return Err(WireError::Document(format!(
                "an answer from {from} says it is from {}",
                answer.world
            )));
        }
        answer.have.check()?;
        self.presence.seen(from, now_ms);
        self.peer_have.insert(from.to_string(), answer.have.clone());
        Ok(())
    }

    /// Start moving a local character to the peer `to`: its status comes from
    /// presence (offline: refused at once, "world vps is offline"), and the trust held
    /// about the character travels with them. `unreachable` (the last sync could not
    /// reach the peer) counts as offline: waiting for the travel timeout would only say
    /// the same thing later.
    #[allow(clippy::too_many_arguments)]
    pub fn begin_travel(
        &mut self,
        user_id: &str,
        username: &str,
        room: Option<&str>,
        history: Vec<crate::agent::Turn>,
        to: &str,
        unreachable: bool,
        now_ms: u64,
    ) -> Result<Vec<travel::Step>, travel::TravelError> {
        let peer = self.peer(to).map(|_| match unreachable {
            true => PeerStatus::Offline,
            false => self.presence.status(to, now_ms),
        });
        let trust = self.trust.about(&portal::remote_name(user_id, &self.world));
        self.departures
            .begin(user_id, username, room, history, trust, to, peer, now_ms)
    }

    /// A travel message from the authenticated peer `from`, on the destination side;
    /// `raw` is the message as received (its signature is checked over it). A
    /// character placed here brings the trust entries about them that pass the rules of
    /// [`accept`] (merged by the same LWW rule); the entries that now win are returned
    /// with the landings, to be stored.
    pub fn on_travel(
        &mut self,
        from: &str,
        msg: &wire::TravelMsg,
        raw: &serde_json::Value,
        here: travel::Here<'_>,
        now_ms: u64,
    ) -> (Vec<travel::Landing>, Vec<TrustEntry>) {
        if let Err(r) = self.origins.travel(from, raw) {
            self.note_travel_refusal(from, r.reason.as_str(), &r.why, now_ms);
            let reply = wire::TravelReply::Refused {
                travel_id: msg.travel_id().to_string(),
                reason: r.why,
                code: Some(r.reason.as_str().to_string()),
            };
            return (vec![travel::Landing::Reply(reply)], Vec::new());
        }
        let landings = self.arrivals.on_msg(from, msg, here, now_ms);
        let mut won = Vec::new();
        for l in &landings {
            match l {
                travel::Landing::Place { offer, .. } => {
                    for t in &offer.trust {
                        match self.origins.trust_entry(from, t, now_ms) {
                            Ok(()) => {
                                if self.trust.apply(t.clone()) {
                                    won.push(t.clone());
                                }
                            }
                            Err(r) if r.reason == Reason::OwnOrigin => {}
                            Err(r) => {
                                self.note_travel_refusal(from, r.reason.as_str(), &r.why, now_ms)
                            }
                        }
                    }
                }
                travel::Landing::Reply(wire::TravelReply::Refused {
                    reason,
                    code: Some(code),
                    ..
                }) => {
                    if let Some(code) = accept::reason_name(code) {
                        let (code, reason) = (code, reason.clone());
                        self.note_travel_refusal(from, code, &reason, now_ms);
                    }
                }
                _ => {}
            }
        }
        (landings, won)
    }

    fn note_travel_refusal(&mut self, from: &str, code: &'static str, why: &str, now_ms: u64) {
        if self.refusals.note(from, code, 1, now_ms) {
            log::warn!(
                "travel: refused a message from {from} ({code}): {why} (logged at most once a minute per peer and reason)"
            );
        }
    }

    /// How an accepted event is shown here: one local event per room (see [`portal`]).
    /// `portals` are this world's portal rooms (canonical names), `resolve` finds a room.
    pub fn shown(
        &self,
        ev: &FedEvent,
        portals: &[String],
        resolve: &dyn Fn(&str) -> Option<String>,
    ) -> Vec<Relayed> {
        portal::incoming(ev, portals, resolve)
    }
}

#[cfg(test)]
mod tests;
