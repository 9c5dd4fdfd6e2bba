//! Game links, socket-free: which line-protocol connections are which world, which rooms
//! each one hears (its players' rooms and the rooms it declared), the bridge's requests waiting for a game's answer (`act`, `observe`),
//! the latest perception of each world, and the state of every outbound dial (up/down,
//! since, reconnects, last error, backoff).
//!
//! The event loop owns the sockets; it tells this registry what happened (a link said
//! hello, a connection closed, a dial failed) and asks it what to do (which link hosts a
//! room, when to dial next).

use crate::app::calls::ReplyTo;
use crate::config::DialConfig;
use crate::conn::ConnId;
use crate::world::protocol::Perception;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// First delay before redialling a game; it doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// One line-protocol connection, inbound or dialed.
#[derive(Debug, Clone)]
pub struct Link {
    pub peer: SocketAddr,
    /// Said by `hello` (inbound) or `welcome` (dialed); `None` for an anonymous link.
    pub world: Option<String>,
    pub kind: String,
    /// The handshake is done (`hello` accepted, or our `hello` answered by `welcome`).
    pub greeted: bool,
    /// Index into [`Links::dials`] for links the bridge dialed.
    pub dial: Option<usize>,
    pub since_ms: u64,
    /// Canonical names of the rooms this link has reported.
    pub rooms: HashSet<String>,
    /// Rooms the link declared as its own (a `room` snapshot, a perception's cell): it
    /// hears them whoever is there.
    pub declared: HashSet<String>,
    /// The link proved who it is: a token in its `hello` (`line.token`, or its world's own
    /// in `[[line.links]]`), or the bridge dialed it. An anonymous link may not change
    /// rooms that are not its own.
    pub trusted: bool,
}

/// Whether an outbound dial is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialStatus {
    /// Waiting for the next attempt (after a failure, or before the first).
    Down,
    /// TCP connect or handshake in progress.
    Connecting,
    Up,
}

impl DialStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DialStatus::Down => "down",
            DialStatus::Connecting => "connecting",
            DialStatus::Up => "up",
        }
    }
}

/// An outbound link from config and what has become of it.
#[derive(Debug, Clone)]
pub struct Dial {
    pub cfg: DialConfig,
    pub status: DialStatus,
    /// When `status` last changed (epoch ms).
    pub since_ms: u64,
    /// Times the link came up again after having been up before.
    pub reconnects: u64,
    pub attempts: u64,
    pub last_error: Option<String>,
    pub conn: Option<ConnId>,
    pub next_attempt: Instant,
    pub backoff: Duration,
    ever_up: bool,
}

/// What a waiting request was.
#[derive(Debug, Clone, PartialEq)]
pub enum Asked {
    Act { action: String },
    Observe,
}

/// A request the bridge sent a game, waiting for its answer.
#[derive(Debug, Clone)]
pub struct Pending {
    pub link: ConnId,
    pub world: String,
    pub asked: Asked,
    pub reply_to: ReplyTo,
    pub deadline: Instant,
    pub sent: Instant,
}

/// A world's latest perception and when it arrived.
#[derive(Debug, Clone)]
pub struct Seen {
    pub perception: Perception,
    pub at_ms: u64,
    pub at: Instant,
}

#[derive(Debug, Default)]
pub struct Links {
    links: HashMap<ConnId, Link>,
    /// Room (canonical name) → the link that last mentioned it.
    room_host: HashMap<String, ConnId>,
    /// User id → the link whose player they are (the last link that placed them).
    player_link: HashMap<String, ConnId>,
    /// Where each link's players are, kept from the presence events as they are routed
    /// ([`Links::observe_presence`]): user → (their link, their room), and per link, how
    /// many of its players each room holds. [`Links::audience`] reads the counts, so
    /// routing an event costs the number of links, not the number of people in its room.
    player_room: HashMap<String, (ConnId, String)>,
    room_players: HashMap<ConnId, HashMap<String, usize>>,
    pending: HashMap<String, Pending>,
    next_request: u64,
    pub dials: Vec<Dial>,
    perceptions: HashMap<String, Seen>,
    jitter_state: u64,
    /// Bumped when a link is greeted or closed: [`Links::worlds`] may have changed.
    generation: u64,
}

impl Links {
    pub fn new(dials: &[DialConfig], now: Instant, now_ms: u64) -> Links {
        Links {
            dials: dials
                .iter()
                .map(|cfg| Dial {
                    cfg: cfg.clone(),
                    status: DialStatus::Down,
                    since_ms: now_ms,
                    reconnects: 0,
                    attempts: 0,
                    last_error: None,
                    conn: None,
                    next_attempt: now,
                    backoff: BACKOFF_MIN,
                    ever_up: false,
                })
                .collect(),
            jitter_state: now_ms | 1,
            ..Links::default()
        }
    }

    /// A new connection (accepted, or dialed for `dial`).
    pub fn open(&mut self, id: ConnId, peer: SocketAddr, dial: Option<usize>, now_ms: u64) {
        let kind = dial.map_or("generic", |d| self.dials[d].cfg.kind.as_str());
        let world = dial.map(|d| self.dials[d].cfg.world.clone());
        self.links.insert(
            id,
            Link {
                peer,
                world,
                kind: kind.to_string(),
                greeted: false,
                dial,
                since_ms: now_ms,
                rooms: HashSet::new(),
                declared: HashSet::new(),
                trusted: dial.is_some(),
            },
        );
        if let Some(d) = dial.and_then(|d| self.dials.get_mut(d)) {
            d.status = DialStatus::Connecting;
            d.since_ms = now_ms;
            d.attempts += 1;
            d.conn = Some(id);
        }
    }

    pub fn get(&self, id: ConnId) -> Option<&Link> {
        self.links.get(&id)
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Link> {
        self.links.get_mut(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ConnId, &Link)> {
        self.links.iter()
    }

    /// The handshake of `id` is done. A dialed link keeps its configured world id (the
    /// config is the authority over what the bridge dialed); an inbound one takes the id
    /// its `hello` gave. Resets the dial's backoff.
    pub fn greeted(&mut self, id: ConnId, world: Option<&str>, kind: &str, now_ms: u64) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        link.greeted = true;
        self.generation += 1;
        if link.dial.is_none() {
            link.world = world.map(str::to_string);
            link.kind = kind.to_string();
        }
        if let Some(d) = link.dial.and_then(|d| self.dials.get_mut(d)) {
            if d.ever_up {
                d.reconnects += 1;
            }
            d.ever_up = true;
            d.status = DialStatus::Up;
            d.since_ms = now_ms;
            d.backoff = BACKOFF_MIN;
            d.last_error = None;
        }
    }

    /// A connection is gone. Its rooms are no longer hosted, its waiting requests are
    /// returned (to be answered 503), and a dialed link is scheduled to be redialled.
    pub fn close(
        &mut self,
        id: ConnId,
        why: Option<&str>,
        now: Instant,
        now_ms: u64,
    ) -> Vec<Pending> {
        let Some(link) = self.links.remove(&id) else {
            return Vec::new();
        };
        self.generation += 1;
        self.room_host.retain(|_, host| *host != id);
        self.player_link.retain(|_, l| *l != id);
        self.player_room.retain(|_, (l, _)| *l != id);
        self.room_players.remove(&id);
        if let Some(d) = link.dial {
            self.dial_failed(d, why.unwrap_or("connection closed"), now, now_ms);
        }
        let gone: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.link == id)
            .map(|(k, _)| k.clone())
            .collect();
        gone.iter().filter_map(|k| self.pending.remove(k)).collect()
    }

    /// A dial attempt failed (or its link dropped): down, and the next try after the
    /// backoff with ±20 % jitter, the backoff doubling up to [`BACKOFF_MAX`].
    pub fn dial_failed(&mut self, d: usize, why: &str, now: Instant, now_ms: u64) {
        let jitter = self.jitter();
        let Some(dial) = self.dials.get_mut(d) else {
            return;
        };
        dial.status = DialStatus::Down;
        dial.since_ms = now_ms;
        dial.conn = None;
        dial.last_error = Some(why.to_string());
        let wait = dial.backoff.mul_f64(0.8 + 0.4 * jitter);
        dial.next_attempt = now + wait;
        dial.backoff = (dial.backoff * 2).min(BACKOFF_MAX);
    }

    /// Dials whose next attempt is due.
    pub fn dials_due(&self, now: Instant) -> Vec<usize> {
        self.dials
            .iter()
            .enumerate()
            .filter(|(_, d)| {
                d.status == DialStatus::Down && d.conn.is_none() && d.next_attempt <= now
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// A number in [0, 1) from a xorshift generator (jitter needs no cryptography).
    fn jitter(&mut self) -> f64 {
        let mut x = self.jitter_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter_state = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `id` reported `room`: from now on it hosts it.
    pub fn host(&mut self, id: ConnId, room: &str) {
        if let Some(link) = self.links.get_mut(&id) {
            if link.rooms.insert(room.to_string()) || self.room_host.get(room) != Some(&id) {
                self.room_host.insert(room.to_string(), id);
                self.generation += 1;
            }
        }
    }

    /// `id` declared `room` its own (a `room` snapshot, a perception's cell): it hears
    /// the room's events whoever is there.
    pub fn declare(&mut self, id: ConnId, room: &str) {
        self.host(id, room);
        if let Some(link) = self.links.get_mut(&id) {
            link.declared.insert(room.to_string());
        }
    }

    /// `user_id` is a player of link `id` (it reported them entering, saying, chatting).
    /// Past `max` players known, those for whom `present` is false (gone from the world
    /// without a `leave`: evicted, expired) are forgotten, but for `user_id` itself.
    pub fn player(
        &mut self,
        id: ConnId,
        user_id: &str,
        max: usize,
        present: impl Fn(&str) -> bool,
    ) {
        if !self.links.contains_key(&id) {
            return;
        }
        self.player_link.insert(user_id.to_string(), id);
        // Twice the cap: a prune leaves at most `max`, so it runs once per `max` players.
        if self.player_link.len() > max.saturating_mul(2) {
            self.player_link.retain(|u, _| u == user_id || present(u));
        }
    }

    /// Whether a game link reports `user_id` present.
    pub fn has_player(&self, user_id: &str) -> bool {
        self.player_link.contains_key(user_id)
    }

    /// `user_id` left the game of link `id`.
    pub fn player_gone(&mut self, id: ConnId, user_id: &str) {
        if self.player_link.get(user_id) == Some(&id) {
            self.player_link.remove(user_id);
        }
    }

    /// `id` presented a valid token.
    pub fn trust(&mut self, id: ConnId) {
        if let Some(link) = self.links.get_mut(&id) {
            link.trusted = true;
        }
    }

    /// Another live link than `id` declared `room` its own.
    pub fn declared_by_other(&self, id: ConnId, room: &str) -> bool {
        (self.links.iter()).any(|(other, l)| *other != id && l.declared.contains(room))
    }

    /// The link that last mentioned `room`, if any (where `speak` to a room goes).
    pub fn host_of(&self, room: &str) -> Option<ConnId> {
        self.room_host.get(room).copied()
    }

    /// A presence event is being routed: `user` entered or left `room`. A link's player
    /// counts in their room until their next presence event.
    pub fn observe_presence(&mut self, user: &str, event: &str, room: &str) {
        if let Some((link, was_in)) = self.player_room.remove(user) {
            if let Some(rooms) = self.room_players.get_mut(&link) {
                if let Some(n) = rooms.get_mut(&was_in) {
                    *n -= 1;
                    if *n == 0 {
                        rooms.remove(&was_in);
                    }
                }
            }
        }
        if event != "enter" {
            return;
        }
        let Some(&link) = self.player_link.get(user) else {
            return;
        };
        if !self.links.contains_key(&link) {
            return;
        }
        *(self.room_players.entry(link).or_default())
            .entry(room.to_string())
            .or_insert(0) += 1;
        self.player_room
            .insert(user.to_string(), (link, room.to_string()));
    }

    /// Every link that hears `room`: those with a player there and those that declared
    /// it. In a stable order (by connection), without duplicates.
    pub fn audience(&self, room: &str) -> Vec<ConnId> {
        let mut to: Vec<ConnId> = (self.room_players.iter())
            .filter(|(_, rooms)| rooms.contains_key(room))
            .map(|(id, _)| *id)
            .chain(
                self.links
                    .iter()
                    .filter(|(_, l)| l.declared.contains(room))
                    .map(|(id, _)| *id),
            )
            .filter(|id| self.links.contains_key(id))
            .collect();
        to.sort_by_key(|c| (c.idx, c.gen));
        to.dedup();
        to
    }

    /// The greeted link of `world` (the most recent one if several).
    pub fn link_of(&self, world: &str) -> Option<ConnId> {
        self.links
            .iter()
            .filter(|(_, l)| l.greeted && l.world.as_deref() == Some(world))
            .max_by_key(|(_, l)| l.since_ms)
            .map(|(id, _)| *id)
    }

    /// A number that changes whenever [`Links::worlds`] or [`Links::hosted`] may have (a
    /// link greeted or closed, a room with a new host), so a caller can skip listing them
    /// when nothing happened.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The world id of every greeted link, with the rooms (canonical names, sorted) its
    /// links host.
    pub fn hosted(&self) -> BTreeMap<String, Vec<String>> {
        let world = |id: &ConnId| {
            (self.links.get(id))
                .filter(|l| l.greeted)
                .and_then(|l| l.world.clone())
        };
        let mut out: BTreeMap<String, Vec<String>> = self
            .links
            .keys()
            .filter_map(world)
            .map(|w| (w, Vec::new()))
            .collect();
        for (room, id) in &self.room_host {
            if let Some(rooms) = world(id).and_then(|w| out.get_mut(&w)) {
                rooms.push(room.clone());
            }
        }
        out.values_mut().for_each(|rooms| rooms.sort());
        out
    }

    /// Every greeted link of a given world id or none.
    pub fn worlds(&self) -> Vec<String> {
        let mut w: Vec<String> = self
            .links
            .values()
            .filter(|l| l.greeted)
            .filter_map(|l| l.world.clone())
            .collect();
        w.sort();
        w.dedup();
        w
    }

    /// Record a request sent to `link`; returns its id (`wb-N`).
    pub fn ask(
        &mut self,
        link: ConnId,
        world: &str,
        asked: Asked,
        reply_to: ReplyTo,
        now: Instant,
        timeout: Duration,
    ) -> String {
        self.next_request += 1;
        let id = format!("wb-{}", self.next_request);
        self.pending.insert(
            id.clone(),
            Pending {
                link,
                world: world.to_string(),
                asked,
                reply_to,
                deadline: now + timeout,
                sent: now,
            },
        );
        id
    }

    /// The request `id` answered by `link` (only the link it was sent to can answer it).
    pub fn answered(&mut self, link: ConnId, id: &str) -> Option<Pending> {
        match self.pending.get(id) {
            Some(p) if p.link == link => self.pending.remove(id),
            _ => None,
        }
    }

    /// Requests past their deadline.
    pub fn expire(&mut self, now: Instant) -> Vec<Pending> {
        let late: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        late.iter().filter_map(|k| self.pending.remove(k)).collect()
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let asks = self.pending.values().map(|p| p.deadline);
        let dials = self
            .dials
            .iter()
            .filter(|d| d.status == DialStatus::Down)
            .map(|d| d.next_attempt);
        asks.chain(dials).min()
    }

    pub fn perceive(&mut self, world: &str, perception: Perception, now: Instant, now_ms: u64) {
        self.perceptions.insert(
            world.to_string(),
            Seen {
                perception,
                at_ms: now_ms,
                at: now,
            },
        );
    }

    pub fn perception(&self, world: &str) -> Option<&Seen> {
        self.perceptions.get(world)
    }

    /// The latest perception of the world hosting `room`, else of any world.
    pub fn perception_near(&self, room: &str) -> Option<(&str, &Seen)> {
        let hosted = self
            .host_of(room)
            .and_then(|id| self.links.get(&id))
            .and_then(|l| l.world.as_deref())
            .and_then(|w| self.perceptions.get_key_value(w));
        hosted
            .or_else(|| self.perceptions.iter().max_by_key(|(_, s)| s.at_ms))
            .map(|(w, s)| (w.as_str(), s))
    }
}

impl Links {
    /// The links' part of `GET /metrics`.
    pub fn render_metrics(&self, o: &mut String) {
        use std::fmt::Write;
        o.push_str("# HELP worldbridge_link_up Whether a configured game link is connected (1) or not (0).\n# TYPE worldbridge_link_up gauge\n");
        for d in &self.dials {
            let up = u8::from(d.status == DialStatus::Up);
            let _ = writeln!(
                o,
                "worldbridge_link_up{{world=\"{}\",addr=\"{}\"}} {up}",
                d.cfg.world, d.cfg.addr
            );
        }
        o.push_str("# HELP worldbridge_link_reconnects_total Times a configured game link came back after a drop.\n# TYPE worldbridge_link_reconnects_total counter\n");
        for d in &self.dials {
            let _ = writeln!(
                o,
                "worldbridge_link_reconnects_total{{world=\"{}\",addr=\"{}\"}} {}",
                d.cfg.world, d.cfg.addr, d.reconnects
            );
        }
        let inbound = self.links.values().filter(|l| l.dial.is_none()).count();
        let _ = writeln!(o, "# HELP worldbridge_links_inbound Line-protocol connections from games.\n# TYPE worldbridge_links_inbound gauge\nworldbridge_links_inbound {inbound}");
        let _ = writeln!(o, "# HELP worldbridge_game_requests_pending Requests to games waiting for an answer.\n# TYPE worldbridge_game_requests_pending gauge\nworldbridge_game_requests_pending {}", self.pending.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dial(world: &str) -> DialConfig {
        DialConfig {
            world: world.into(),
            kind: "tes3mp".into(),
            addr: "127.0.0.1:7777".parse().unwrap(),
            token: String::new(),
        }
    }

    fn id(i: u32) -> ConnId {
        ConnId { idx: i, gen: 0 }
    }

    const PEER: &str = "127.0.0.1:5000";

    #[test]
    fn rooms_are_hosted_by_the_link_that_reported_them_until_it_closes() {
        let now = Instant::now();
        let mut l = Links::new(&[], now, 0);
        l.open(id(1), PEER.parse().unwrap(), None, 0);
        l.greeted(id(1), Some("mud"), "evennia", 0);
        l.host(id(1), "Limbo");
        assert_eq!(l.host_of("Limbo"), Some(id(1)));
        assert_eq!(l.link_of("mud"), Some(id(1)));
        let waiting = l.ask(
            id(1),
            "mud",
            Asked::Observe,
            ReplyTo::Http(id(9)),
            now,
            Duration::from_secs(10),
        );
        assert!(waiting.starts_with("wb-"));
        assert!(
            l.answered(id(2), &waiting).is_none(),
            "only the asked link answers"
        );
        let gone = l.close(id(1), None, now, 0);
        assert_eq!(gone.len(), 1, "waiting requests come back to be answered");
        assert_eq!(l.host_of("Limbo"), None);
        assert_eq!(l.link_of("mud"), None);
    }

    #[test]
    fn every_link_with_a_player_in_a_room_or_that_declared_it_hears_it() {
        let now = Instant::now();
        let mut l = Links::new(&[], now, 0);
        for i in 1..=4 {
            l.open(id(i), PEER.parse().unwrap(), None, 0);
            l.greeted(id(i), Some(&format!("w{i}")), "generic", 0);
        }
        // Link 1's bob and link 2's eve enter the Garden; link 2 mentioned it last.
        l.player(id(1), "bob", 10, |_| true);
        l.host(id(1), "Garden");
        l.observe_presence("bob", "enter", "Garden");
        l.player(id(2), "eve", 10, |_| true);
        l.host(id(2), "Garden");
        l.observe_presence("eve", "enter", "Garden");
        // A web user there is nobody's player.
        l.observe_presence("web-user", "enter", "Garden");
        // Link 3 declared it in a room snapshot; link 4's zed is elsewhere.
        l.declare(id(3), "Garden");
        l.player(id(4), "zed", 10, |_| true);
        l.observe_presence("zed", "enter", "Forge");
        assert_eq!(l.host_of("Garden"), Some(id(3)));
        assert_eq!(l.audience("Garden"), vec![id(1), id(2), id(3)]);
        assert_eq!(l.audience("Forge"), vec![id(4)]);
        // Bob moves to the Forge: link 1 hears the Forge now, not the Garden.
        l.observe_presence("bob", "leave", "Garden");
        l.observe_presence("bob", "enter", "Forge");
        assert_eq!(l.audience("Garden"), vec![id(2), id(3)]);
        assert_eq!(l.audience("Forge"), vec![id(1), id(4)]);
        // Bob leaves link 1's game (the leave is routed after the link forgets him).
        l.player_gone(id(1), "bob");
        l.observe_presence("bob", "leave", "Forge");
        assert_eq!(l.audience("Forge"), vec![id(4)]);
        // Players gone from the world without a `leave` are forgotten past the cap.
        for i in 0..3 {
            l.player(id(4), &format!("ghost{i}"), 1, |u| u == "eve");
        }
        assert_eq!(l.player_link.len(), 2, "eve, and the player just reported");
        assert_eq!(l.audience("Garden"), vec![id(2), id(3)]);
        // A closed link hears nothing, its players are forgotten.
        l.close(id(2), None, now, 0);
        assert_eq!(l.audience("Garden"), vec![id(3)]);
        l.close(id(3), None, now, 0);
        assert!(l.audience("Garden").is_empty());
        assert!(!l.player_room.contains_key("eve"));
    }

    #[test]
    fn dial_backoff_doubles_to_the_cap_and_resets_on_success() {
        let now = Instant::now();
        let mut l = Links::new(&[dial("mw")], now, 0);
        assert_eq!(l.dials_due(now), vec![0]);
        let mut waits = Vec::new();
        for _ in 0..8 {
            l.open(id(1), PEER.parse().unwrap(), Some(0), 0);
            assert!(
                l.dials_due(now).is_empty(),
                "no second attempt while connecting"
            );
            l.close(id(1), Some("refused"), now, 0);
            waits.push(l.dials[0].next_attempt - now);
        }
        assert!(waits[0] >= Duration::from_millis(800) && waits[0] <= Duration::from_millis(1200));
        assert!(waits[1] >= Duration::from_millis(1600) && waits[1] <= Duration::from_millis(2400));
        assert!(
            waits[7] <= Duration::from_secs(36),
            "capped at 30 s ± jitter"
        );
        assert_eq!(l.dials[0].last_error.as_deref(), Some("refused"));
        l.open(id(1), PEER.parse().unwrap(), Some(0), 0);
        l.greeted(id(1), Some("ignored"), "tes3mp", 5);
        assert_eq!(l.dials[0].status, DialStatus::Up);
        assert_eq!(l.dials[0].backoff, BACKOFF_MIN);
        assert_eq!(
            l.link_of("mw"),
            Some(id(1)),
            "a dialed link keeps its configured world"
        );
        l.close(id(1), Some("reset"), now, 6);
        l.open(id(2), PEER.parse().unwrap(), Some(0), 7);
        l.greeted(id(2), None, "tes3mp", 8);
        assert_eq!(l.dials[0].reconnects, 1);
    }

    #[test]
    fn requests_expire() {
        let now = Instant::now();
        let mut l = Links::new(&[], now, 0);
        l.open(id(1), PEER.parse().unwrap(), None, 0);
        let a = l.ask(
            id(1),
            "w",
            Asked::Act {
                action: "teleport".into(),
            },
            ReplyTo::Http(id(3)),
            now,
            Duration::from_secs(1),
        );
        assert!(l.expire(now).is_empty());
        let late = l.expire(now + Duration::from_secs(2));
        assert_eq!(late.len(), 1);
        assert!(
            l.answered(id(1), &a).is_none(),
            "a late answer finds nothing"
        );
    }
}
