//! The serde types that travel between bridges: the `/bridge/state` answer and the
//! `/bridge/sync` body (one shape, [`Delta`]), the sync answer, federated events, trust
//! entries, cursors, and the travel messages. Also the checks that every field a peer
//! sent must pass before the core looks at it: nothing here panics on peer data.

use crate::agent::Turn;
use crate::world::check_name;
use crate::world::time::parse_rfc3339;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The federation protocol's major version (`protocol` in every document).
pub const PROTOCOL: u64 = 1;

/// Longest world id, in bytes.
pub const WORLD_ID_MAX_BYTES: usize = 64;

/// Most events in one [`Delta`]; a server pages past it, a receiver refuses more.
pub const PAGE_MAX: usize = 500;

/// How far past its contiguous mark a receiver keeps an origin's events. An honest
/// world serves gap-free runs from the asker's cursor, so nothing it sends lies further
/// ahead than one page; the bound keeps a faulty peer from filling memory with events
/// that can never be served.
pub const AHEAD_MAX: u64 = 4 * PAGE_MAX as u64;

/// Longest `message` of a federated event, in bytes.
pub const MESSAGE_MAX_BYTES: usize = 16 * 1024;

/// Most origins a cursor may name (a peer controls it).
pub const CURSOR_MAX_ORIGINS: usize = 1024;

/// Most characters in one world's presence.
pub const PRESENCE_MAX: usize = 10_000;

/// Most trust entries in one delta (a snapshot carries the whole map).
pub const TRUST_MAX: usize = 10_000;

/// Most turns of conversation history a travelling character carries.
pub const HISTORY_MAX: usize = 200;

/// Why something a peer sent was refused. Each names what a person would look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// A world id that is empty, too long, or has characters outside `[A-Za-z0-9_.-]`.
    World(String),
    /// A cursor (`?since=` or a JSON vector) that does not parse or is too big.
    Cursor(String),
    /// A federated event failed its checks.
    Event {
        origin: String,
        seq: u64,
        why: String,
    },
    /// A trust entry failed its checks.
    Trust(String),
    /// A document as a whole: wrong protocol, wrong sender, too many items.
    Document(String),
    /// A travel message failed its checks.
    Travel(String),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::World(why) => write!(f, "world id: {why}"),
            WireError::Cursor(why) => write!(f, "cursor: {why}"),
            WireError::Event { origin, seq, why } => write!(f, "event {origin}/{seq}: {why}"),
            WireError::Trust(why) => write!(f, "trust: {why}"),
            WireError::Document(why) => write!(f, "{why}"),
            WireError::Travel(why) => write!(f, "travel: {why}"),
        }
    }
}

/// A world id must be short and plain, so it can stand in a cursor (`mac:12,vps:3`) and
/// after an `@` in a display name (`Alice@mac`).
pub fn check_world_id(id: &str) -> Result<(), WireError> {
    if id.is_empty() {
        return Err(WireError::World("must not be empty".into()));
    }
    if id.len() > WORLD_ID_MAX_BYTES {
        return Err(WireError::World(format!(
            "{id:?} is longer than {WORLD_ID_MAX_BYTES} bytes"
        )));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(WireError::World(format!(
            "{id:?} may only contain letters, digits, `_`, `-` and `.`"
        )));
    }
    Ok(())
}

/// What a federated event is. Kinds this bridge does not know are kept by name, stored
/// and relayed, so a newer peer's events still reach the worlds that understand them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Kind {
    /// Someone spoke in a portal room.
    Say,
    /// A world event with `scope: "federation"` (fire, rain, growth…).
    Event,
    /// A trust change: `data` is a [`TrustChange`].
    Trust,
    Other(String),
}

impl From<String> for Kind {
    fn from(s: String) -> Kind {
        match s.as_str() {
            "say" => Kind::Say,
            "event" => Kind::Event,
            "trust" => Kind::Trust,
            _ => Kind::Other(s),
        }
    }
}

impl From<Kind> for String {
    fn from(k: Kind) -> String {
        match k {
            Kind::Say => "say".into(),
            Kind::Event => "event".into(),
            Kind::Trust => "trust".into(),
            Kind::Other(s) => s,
        }
    }
}

/// One federated event. `(origin, seq)` names it everywhere: `seq` is the origin's
/// *federation* sequence (dense: 1, 2, 3… one per federated event), not the room event
/// `seq` of [`crate::world::room::Event`], so a missing number always means a missing event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FedEvent {
    pub origin: String,
    pub seq: u64,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The world event's name (`fire`), for `kind: "event"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// RFC 3339, as every other event of the bridge.
    pub timestamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// The origin's signature over the rest (see [`super::sign`]); relays keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

impl FedEvent {
    fn refuse(&self, why: impl Into<String>) -> WireError {
        WireError::Event {
            origin: self.origin.clone(),
            seq: self.seq,
            why: why.into(),
        }
    }

    /// Everything a receiver relies on: a valid origin, `seq` ≥ 1, a parseable
    /// timestamp, sane names, and the fields its kind needs.
    pub fn check(&self) -> Result<(), WireError> {
        check_world_id(&self.origin).map_err(|e| self.refuse(e.to_string()))?;
        if self.seq == 0 {
            return Err(self.refuse("seq starts at 1"));
        }
        if parse_rfc3339(&self.timestamp).is_none() {
            return Err(self.refuse(format!("timestamp {:?} is not RFC 3339", self.timestamp)));
        }
        for (field, v) in [
            ("room", &self.room),
            ("user_id", &self.user_id),
            ("username", &self.username),
            ("event", &self.event),
        ] {
            if let Some(v) = v {
                check_name(field, v).map_err(|e| self.refuse(e.to_string()))?;
            }
        }
        if let Some(m) = &self.message {
            if m.len() > MESSAGE_MAX_BYTES {
                return Err(
                    self.refuse(format!("message is longer than {MESSAGE_MAX_BYTES} bytes"))
                );
            }
        }
        match &self.kind {
            Kind::Say => {
                if self.room.is_none() || self.username.is_none() || self.message.is_none() {
                    return Err(self.refuse("a say needs room, username and message"));
                }
            }
            Kind::Event => {
                if self.event.is_none() {
                    return Err(self.refuse("a world event needs `event`"));
                }
            }
            Kind::Trust => {
                TrustChange::from_event(self)?;
            }
            Kind::Other(name) => {
                if name.is_empty() || name.len() > WORLD_ID_MAX_BYTES {
                    return Err(self.refuse("kind must be a short non-empty name"));
                }
            }
        }
        Ok(())
    }
}

/// The `data` of a `trust` event: a subject's new score as its origin set it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustChange {
    /// A character (`alice@mac`) or a world (`mac`).
    pub subject: String,
    pub score: f64,
    /// Epoch milliseconds: integers order exactly, with no parsing between worlds.
    pub updated_at: u64,
}

impl TrustChange {
    /// The change a `trust` event carries, checked.
    pub fn from_event(ev: &FedEvent) -> Result<TrustChange, WireError> {
        let data = ev
            .data
            .as_ref()
            .ok_or_else(|| ev.refuse("a trust event needs data"))?;
        let c: TrustChange = serde_json::from_value(data.clone())
            .map_err(|e| ev.refuse(format!("trust data: {e}")))?;
        check_name("subject", &c.subject).map_err(|e| ev.refuse(e.to_string()))?;
        if !c.score.is_finite() {
            return Err(ev.refuse("score must be a finite number"));
        }
        Ok(c)
    }
}

/// One subject's trust as every world will agree on it: the change with the greatest
/// `(updated_at, origin, seq)` wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustEntry {
    pub subject: String,
    pub score: f64,
    pub updated_at: u64,
    /// The world that made this change, and the seq of its `trust` event there.
    pub origin: String,
    pub seq: u64,
    /// The `timestamp` and `sig` of that `trust` event: with them a receiver rebuilds
    /// the event and checks its origin's signature ([`TrustEntry::as_event`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

impl TrustEntry {
    /// The `trust` event this entry was made from, as its origin signed it (`None`
    /// without the event's timestamp).
    pub fn as_event(&self) -> Option<FedEvent> {
        Some(FedEvent {
            origin: self.origin.clone(),
            seq: self.seq,
            kind: Kind::Trust,
            room: None,
            user_id: None,
            username: None,
            message: None,
            event: None,
            timestamp: self.timestamp.clone()?,
            data: Some(serde_json::json!({
                "subject": self.subject,
                "score": self.score,
                "updated_at": self.updated_at,
            })),
            sig: self.sig.clone(),
        })
    }

    pub fn check(&self) -> Result<(), WireError> {
        check_name("subject", &self.subject).map_err(|e| WireError::Trust(e.to_string()))?;
        check_world_id(&self.origin).map_err(|e| WireError::Trust(e.to_string()))?;
        if !self.score.is_finite() {
            return Err(WireError::Trust(format!(
                "score of {:?} must be a finite number",
                self.subject
            )));
        }
        Ok(())
    }
}

/// Per origin, the highest `seq` seen *contiguously* (every event 1..=n is held).
/// As a request it means "send me what lies beyond"; as an answer's `next`, "ask with
/// this for the following page"; as `have`, "this is what I hold".
///
/// JSON: `{"mac": 120, "vps": 77}`. Query string: `?since=mac:120,vps:77` (world ids
/// never contain `:` or `,`). An origin not named counts as 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cursor(pub BTreeMap<String, u64>);

impl Cursor {
    pub fn get(&self, origin: &str) -> u64 {
        self.0.get(origin).copied().unwrap_or(0)
    }

    pub fn set(&mut self, origin: &str, seq: u64) {
        self.0.insert(origin.to_string(), seq);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks what a peer sent: valid world ids, not too many of them.
    pub fn check(&self) -> Result<(), WireError> {
        if self.0.len() > CURSOR_MAX_ORIGINS {
            return Err(WireError::Cursor(format!(
                "names more than {CURSOR_MAX_ORIGINS} worlds"
            )));
        }
        for origin in self.0.keys() {
            check_world_id(origin).map_err(|e| WireError::Cursor(e.to_string()))?;
        }
        Ok(())
    }

    /// `mac:120,vps:77` (the `?since=` value, already URL-decoded). Empty: from the start.
    pub fn parse_query(text: &str) -> Result<Cursor, WireError> {
        let mut c = Cursor::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (origin, seq) = part
                .split_once(':')
                .ok_or_else(|| WireError::Cursor(format!("{part:?} is not `world:seq`")))?;
            let seq = seq.parse::<u64>().map_err(|_| {
                WireError::Cursor(format!("{seq:?} in {part:?} is not a sequence number"))
            })?;
            if c.0.insert(origin.to_string(), seq).is_some() {
                return Err(WireError::Cursor(format!("{origin:?} is named twice")));
            }
        }
        c.check()?;
        Ok(c)
    }

    /// The `?since=` form of this cursor; [`Cursor::parse_query`] reads it back.
    pub fn to_query(&self) -> String {
        self.0
            .iter()
            .map(|(o, s)| format!("{o}:{s}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// One of a world's own characters, as that world (their authority) reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEntry {
    pub user_id: String,
    pub username: String,
    pub room: String,
}

impl From<&crate::world::Occupant> for PresenceEntry {
    fn from(o: &crate::world::Occupant) -> PresenceEntry {
        PresenceEntry {
            user_id: o.user_id.clone(),
            username: o.username.clone(),
            room: o.room.clone(),
        }
    }
}

/// A world's own characters, versioned so that an older report never replaces a newer
/// one: `(epoch, seq)` orders reports. `epoch` is when the world's process started
/// (epoch ms), `seq` its room-event sequence when the report was made; a restart with
/// lost memory still moves forward because its `epoch` is later.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorldPresence {
    pub epoch: u64,
    pub seq: u64,
    pub characters: Vec<PresenceEntry>,
    /// The world's signature over its report (see [`super::sign`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

impl WorldPresence {
    pub fn version(&self) -> (u64, u64) {
        (self.epoch, self.seq)
    }

    pub fn check(&self) -> Result<(), WireError> {
        if self.characters.len() > PRESENCE_MAX {
            return Err(WireError::Document(format!(
                "presence lists more than {PRESENCE_MAX} characters"
            )));
        }
        for c in &self.characters {
            for (field, v) in [
                ("user_id", &c.user_id),
                ("username", &c.username),
                ("room", &c.room),
            ] {
                check_name(field, v).map_err(|e| WireError::Document(format!("presence: {e}")))?;
            }
        }
        Ok(())
    }
}

/// The `GET /bridge/state` answer and the `POST /bridge/sync` body: one world's presence,
/// a page of federated events, and (in a snapshot) the whole trust map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    pub protocol: u64,
    /// The world that made this document.
    pub world: String,
    pub presence: WorldPresence,
    /// In `(origin, seq)` order; per origin, contiguous from the asked cursor.
    pub events: Vec<FedEvent>,
    /// Ask with this cursor for the next page.
    pub next: Cursor,
    /// Whether more events lie beyond `next` right now.
    pub more: bool,
    /// What the sending world holds: a peer pushes it only what lies beyond.
    pub have: Cursor,
    /// Per origin, events up to this seq are no longer kept by the sender: a receiver
    /// that lacks them counts them as seen (they are history, and trust comes whole with
    /// a snapshot).
    #[serde(default, skip_serializing_if = "Cursor::is_empty")]
    pub pruned: Cursor,
    /// The whole trust map, in a snapshot only (no cursor asked); otherwise trust
    /// changes travel as `trust` events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust: Vec<TrustEntry>,
}

impl Delta {
    /// The document as a whole, before any event is looked at: protocol, sender, caps.
    /// Events are checked one by one by the merge (one bad event does not sink the rest).
    pub fn check(&self) -> Result<(), WireError> {
        if self.protocol > PROTOCOL {
            return Err(WireError::Document(format!(
                "federation protocol {} is newer than this bridge ({PROTOCOL})",
                self.protocol
            )));
        }
        check_world_id(&self.world)?;
        if self.events.len() > PAGE_MAX {
            return Err(WireError::Document(format!(
                "more than {PAGE_MAX} events in one document"
            )));
        }
        if self.trust.len() > TRUST_MAX {
            return Err(WireError::Document(format!(
                "more than {TRUST_MAX} trust entries in one document"
            )));
        }
        self.presence.check()?;
        self.next.check()?;
        self.have.check()?;
        self.pruned.check()?;
        // A sender holds (or has pruned) everything it says it pruned: a claim beyond
        // its own `have` would make a receiver skip events nobody has given it.
        for (origin, upto) in &self.pruned.0 {
            if *upto > self.have.get(origin) {
                return Err(WireError::Document(format!(
                    "pruned {origin} up to {upto}, beyond what it holds ({})",
                    self.have.get(origin)
                )));
            }
        }
        Ok(())
    }
}

/// An event the receiver refused, and why (the first few only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub origin: String,
    pub seq: u64,
    /// The stable reason ([`super::accept::Reason`]).
    #[serde(default)]
    pub reason: String,
    pub error: String,
}

/// Most refusals listed in one [`SyncAnswer`].
pub const REFUSED_LISTED_MAX: usize = 20;

/// The `POST /bridge/sync` answer: what the receiver took, and what it now holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncAnswer {
    pub protocol: u64,
    pub world: String,
    /// Events new to the receiver.
    pub accepted: u64,
    /// Events it already had.
    pub duplicates: u64,
    /// Events it refused, counted by reason (`{}` when none); the first few listed.
    #[serde(deserialize_with = "refused_counts")]
    pub refused: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refusals: Vec<Refused>,
    pub have: Cursor,
}

/// `refused` as a map of reason → count; a bare number (an older bridge) counts as
/// reason `unknown`.
fn refused_counts<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Counts {
        Total(u64),
        ByReason(BTreeMap<String, u64>),
    }
    Ok(match Counts::deserialize(d)? {
        Counts::Total(0) => BTreeMap::new(),
        Counts::Total(n) => BTreeMap::from([("unknown".to_string(), n)]),
        Counts::ByReason(m) => m,
    })
}

/// A travelling character: who, and what comes along.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    /// `<origin world>-<ms>-<n>`: unique, chosen by the origin (see [`super::travel::origin_of`]).
    pub travel_id: String,
    pub from: String,
    pub to: String,
    pub user_id: String,
    pub username: String,
    /// Where they would like to arrive; the destination may choose its portal room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(default)]
    pub history: Vec<Turn>,
    #[serde(default)]
    pub trust: Vec<TrustEntry>,
    /// The origin's signature over the message that carries this offer (`offer` or
    /// `commit`), set as it is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

impl Offer {
    pub fn check(&self) -> Result<(), WireError> {
        let bad = |e: String| WireError::Travel(e);
        check_world_id(&self.from).map_err(|e| bad(e.to_string()))?;
        check_world_id(&self.to).map_err(|e| bad(e.to_string()))?;
        check_name("travel_id", &self.travel_id).map_err(|e| bad(e.to_string()))?;
        check_name("user_id", &self.user_id).map_err(|e| bad(e.to_string()))?;
        check_name("username", &self.username).map_err(|e| bad(e.to_string()))?;
        if let Some(r) = &self.room {
            check_name("room", r).map_err(|e| bad(e.to_string()))?;
        }
        if self.history.len() > HISTORY_MAX {
            return Err(bad(format!("more than {HISTORY_MAX} turns of history")));
        }
        if self.trust.len() > TRUST_MAX {
            return Err(bad(format!("more than {TRUST_MAX} trust entries")));
        }
        for t in &self.trust {
            t.check()?;
        }
        Ok(())
    }
}

/// Origin → destination (`POST /bridge/travel` with the peer's token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TravelMsg {
    /// "Will you take this character?" Sent once; the answer decides.
    Offer(Offer),
    /// "They have left here: they are yours." Repeated until answered `done`; carries
    /// the offer again so a destination that lost it can still take them in.
    Commit(Offer),
    /// "The travel is off: they stay here." Repeated until answered `done`.
    Abort {
        travel_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sig: Option<String>,
    },
}

impl TravelMsg {
    pub fn travel_id(&self) -> &str {
        match self {
            TravelMsg::Offer(o) | TravelMsg::Commit(o) => &o.travel_id,
            TravelMsg::Abort { travel_id, .. } => travel_id,
        }
    }

    /// The message's signature, to set once it is made.
    pub fn sig_mut(&mut self) -> &mut Option<String> {
        match self {
            TravelMsg::Offer(o) | TravelMsg::Commit(o) => &mut o.sig,
            TravelMsg::Abort { sig, .. } => sig,
        }
    }
}

/// Destination → origin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TravelReply {
    /// The destination holds the offer durably; `duplicate` when it already did.
    Accepted {
        travel_id: String,
        #[serde(default)]
        duplicate: bool,
    },
    Refused {
        travel_id: String,
        reason: String,
        /// A stable snake_case code (`already_here`, `no_offer`, `bad_signature`…).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
    },
    /// A commit or abort is applied durably.
    Done { travel_id: String },
}

impl TravelReply {
    pub fn travel_id(&self) -> &str {
        match self {
            TravelReply::Accepted { travel_id, .. }
            | TravelReply::Refused { travel_id, .. }
            | TravelReply::Done { travel_id } => travel_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_query_round_trips_and_refuses_nonsense() {
        let c = Cursor::parse_query("mac:120, vps:77").expect("parses");
        assert_eq!(c.get("mac"), 120);
        assert_eq!(c.get("vps"), 77);
        assert_eq!(c.get("bezalel"), 0);
        assert_eq!(Cursor::parse_query(&c.to_query()), Ok(c));
        assert_eq!(Cursor::parse_query(""), Ok(Cursor::default()));
        for bad in ["mac", "mac:x", "mac:-1", "m c:1", "mac:1,mac:2", ":3"] {
            assert!(
                matches!(Cursor::parse_query(bad), Err(WireError::Cursor(_))),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn world_ids_are_plain() {
        assert!(check_world_id("vps").is_ok());
        assert!(check_world_id("timmy_world-2.b").is_ok());
        for bad in ["", "a:b", "a,b", "a@b", "a b", &"x".repeat(65)] {
            assert!(check_world_id(bad).is_err(), "{bad:?}");
        }
    }

    fn say() -> FedEvent {
        FedEvent {
            origin: "mac".into(),
            seq: 1,
            kind: Kind::Say,
            room: Some("The Threshold".into()),
            user_id: Some("alice".into()),
            username: Some("Alice".into()),
            message: Some("hello vps".into()),
            event: None,
            timestamp: "2026-12-01T18:00:00.000Z".into(),
            data: None,
            sig: None,
        }
    }

    #[test]
    fn events_are_checked_field_by_field() {
        assert_eq!(say().check(), Ok(()));
        let mut e = say();
        e.seq = 0;
        assert!(e
            .check()
            .unwrap_err()
            .to_string()
            .contains("seq starts at 1"));
        let mut e = say();
        e.message = None;
        assert!(e.check().unwrap_err().to_string().contains("needs room"));
        let mut e = say();
        e.timestamp = "yesterday".into();
        assert!(e.check().is_err());
        let mut e = say();
        e.kind = Kind::Trust;
        e.data = Some(serde_json::json!({"subject": "alice@mac", "score": "high"}));
        assert!(e.check().unwrap_err().to_string().contains("trust data"));
        e.data = Some(serde_json::json!({"subject": "alice@mac", "score": 0.5, "updated_at": 9}));
        assert_eq!(e.check(), Ok(()));
    }

    #[test]
    fn unknown_kinds_survive_a_round_trip() {
        let text = r#"{"origin":"mac","seq":3,"kind":"weather_v2","timestamp":"2026-12-01T18:00:00Z","data":{"x":1}}"#;
        let e: FedEvent = serde_json::from_str(text).expect("parses");
        assert_eq!(e.kind, Kind::Other("weather_v2".into()));
        assert_eq!(e.check(), Ok(()));
        let back = serde_json::to_value(&e).expect("serialises");
        assert_eq!(back["kind"], "weather_v2");
    }

    #[test]
    fn travel_messages_are_tagged() {
        let m: TravelMsg =
            serde_json::from_str(r#"{"type":"abort","travel_id":"mac-7"}"#).expect("parses");
        assert_eq!(m.travel_id(), "mac-7");
        let r = TravelReply::Accepted {
            travel_id: "mac-7".into(),
            duplicate: true,
        };
        let v = serde_json::to_value(&r).expect("serialises");
        assert_eq!(
            v,
            serde_json::json!({"type":"accepted","travel_id":"mac-7","duplicate":true})
        );
    }
}
