//! The bridge's side of federation: the socket-free core ([`crate::federation`]) wired
//! to the world, the store, the HTTP routes and the peers' threads.
//!
//! - Out: every new local event passes [`App::federate`] where events are routed (so
//!   line links and the gateway still get all of them); a portal `say` or a world event
//!   of scope federation becomes a federated event, stored, and served to peers only once
//!   durable ([`Federation::stored`] is called from the store's `Durable` report, at once
//!   with `--memory`).
//! - In: a peer's document (pulled, or pushed to `POST /bridge/sync`) is merged by the
//!   core; new events are stored and shown in the rooms the core names, by `Alice@mac`,
//!   with `origin` the remote world. A push is answered once its rows are durable.
//! - Peers: each `sync_interval_s` every peer not still busy gets a [`Job`]; the outcomes
//!   come back through [`App::on_peer_outcome`] and feed `/bridge/health`'s `peers`.

use crate::app::calls::ReplyTo;
use crate::app::outcome::Refusal;
use crate::app::peer_sync::{Job, Outcome, PeerSync};
use crate::app::App;
use crate::config::FederationConfig;
use crate::federation::portal::Scope;
use crate::federation::presence::PeerStatus;
use crate::federation::travel::{Landing, Step};
use crate::federation::trust::Trust;
use crate::federation::wire::SyncAnswer;
use crate::federation::wire::{
    Cursor, Delta, FedEvent, PresenceEntry, WireError, WorldPresence, PAGE_MAX, PRESENCE_MAX,
};
use crate::federation::{Applied, Federation, TrustRefused};
use crate::store::Row;
use crate::world::room::Event;
use crate::world::time::rfc3339;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// What this bridge knows of its peers and what it owes the store.
pub struct Peering {
    pub core: Federation,
    /// The peers' threads (absent in unit tests, started by the loop).
    pub sync: Option<PeerSync>,
    /// Local world events of federation scope, by local seq, until routed.
    scoped: HashSet<u64>,
    /// Rows for the next store batch.
    pub(crate) rows: Vec<Row>,
    /// Travel in progress: waiting travellers and steps waiting for their batch.
    pub(crate) travel: TravelWiring,
    /// The highest own federated seq among `rows`.
    own_upto: Option<u64>,
    /// (batch id, own seq): own events durable once that batch is.
    waiting: VecDeque<(u64, u64)>,
    peers: BTreeMap<String, PeerHealth>,
    /// Peers whose snapshot (the trust map) was pulled since this process started.
    snapshots: BTreeSet<String>,
    interval: Duration,
    last_round: Option<Instant>,
    counts: FedCounts,
    /// Accepted events no room here shows (yet).
    pub(crate) unshown: Unshown,
}

/// What `/bridge/health` and `/metrics` say about one peer.
#[derive(Debug, Clone, Default)]
struct PeerHealth {
    busy: bool,
    last_sync_ms: Option<u64>,
    last_error: Option<String>,
    /// When the last sync could not reach the peer at all (refused, timed out): until
    /// the peer is heard from again, travel there is refused at once instead of waiting
    /// for the travel timeout.
    unreachable_at: Option<u64>,
    /// What the peer last said it holds.
    have: Cursor,
    /// Sync rounds finished without an error, and with one.
    rounds_ok: u64,
    rounds_failed: u64,
}

/// Federated events by how they came (for `/metrics`).
#[derive(Debug, Clone, Copy, Default)]
struct FedCounts {
    own: u64,
    accepted: u64,
    duplicates: u64,
    refused: u64,
}

/// How many events the peer said it holds (of worlds other than this one) that this
/// world does not have yet.
fn lag(core: &Federation, have: &Cursor) -> u64 {
    have.0
        .iter()
        .filter(|(o, _)| o.as_str() != core.world())
        .map(|(o, n)| n.saturating_sub(core.log.mark(o)))
        .sum()
}

impl Peering {
    /// `None` when no peer is configured: nothing federates.
    pub fn new(
        world: &str,
        cfg: &FederationConfig,
        epoch_ms: u64,
    ) -> Result<Option<Peering>, String> {
        if cfg.peers.is_empty() {
            return Ok(None);
        }
        let core = Federation::new(world, cfg, epoch_ms).map_err(|e| format!("federation: {e}"))?;
        for p in core.peers().iter().filter(|p| p.token().is_empty()) {
            log::warn!(
                "federation: peer {} has no token: it can neither ask this bridge nor be asked",
                p.world
            );
        }
        for w in core.origins().keyless_peers() {
            log::warn!(
                "federation: peer {w} has no public_key: its events are taken only with origin {w}, \
                 are not relayed to other worlds, and it relays nothing here"
            );
        }
        let peers = core
            .peers()
            .iter()
            .map(|p| (p.world.clone(), PeerHealth::default()))
            .collect();
        Ok(Some(Peering {
            core,
            sync: None,
            scoped: HashSet::new(),
            rows: Vec::new(),
            travel: TravelWiring::default(),
            own_upto: None,
            waiting: VecDeque::new(),
            peers,
            snapshots: BTreeSet::new(),
            interval: Duration::from_secs(cfg.sync_interval_s.max(1)),
            last_round: None,
            counts: FedCounts::default(),
            unshown: Unshown::default(),
        }))
    }

    pub fn has_rows(&self) -> bool {
        !self.rows.is_empty()
    }

    /// The rows for store batch `batch`.
    pub fn take_rows(&mut self, batch: u64) -> Vec<Row> {
        if let Some(seq) = self.own_upto.take() {
            self.waiting.push_back((batch, seq));
        }
        std::mem::take(&mut self.rows)
    }

    /// Batches up to `upto` are durable: own events in them may be served.
    pub fn durable(&mut self, upto: u64) {
        while let Some(&(batch, seq)) = self.waiting.front() {
            if batch > upto {
                break;
            }
            self.waiting.pop_front();
            self.core.stored(seq);
        }
    }

    /// Whether the event this node made with number `seq` (provisional, in cluster
    /// mode) is of federation scope: its log entry says so.
    pub(crate) fn take_scope(&mut self, seq: u64) -> bool {
        self.scoped.remove(&seq)
    }

    /// The log entry `seq` is an event of federation scope.
    pub(crate) fn mark_scoped(&mut self, seq: u64) {
        self.scoped.insert(seq);
    }

    /// A local event that federates gets its federated seq; its row is kept for the
    /// store (`keeps_rows`), else it is served at once. Returns whether it federates.
    pub(crate) fn record_local(
        &mut self,
        ev: &Event,
        in_portal: bool,
        scope: Scope,
        keeps_rows: bool,
    ) -> bool {
        let Some(fe) = self.core.local_event(ev, in_portal, scope) else {
            return false;
        };
        log::debug!("federation: {} {}/{} out", ev.room, fe.origin, fe.seq);
        self.counts.own += 1;
        let seq = fe.seq;
        if keeps_rows {
            self.rows.push(Row::FedEvent(fe));
            self.own_upto = Some(seq);
        } else {
            self.core.stored(seq);
        }
        true
    }

    /// The store loaded these at start.
    pub fn restore(
        &mut self,
        pruned: Vec<crate::federation::merge::Pruned>,
        events: Vec<FedEvent>,
        trust: Vec<crate::federation::wire::TrustEntry>,
        departures: Vec<crate::federation::travel::Departure>,
        arrivals: Vec<crate::federation::travel::Arrival>,
    ) {
        let n = events.len();
        self.core
            .restore(pruned, events, trust, departures, arrivals);
        log::info!(
            "federation: restored {n} events, {} trust entries; own seq {}",
            self.core.trust.len(),
            self.core.last_seq()
        );
    }
}

impl App {
    /// Whether anything waits to be written: the world's changes or federation rows.
    pub fn has_unsaved(&self) -> bool {
        self.world.has_changes() || self.fed.as_ref().is_some_and(Peering::has_rows)
    }

    /// Decide where a new local world event is felt: `asked` is the `scope` it was sent
    /// with, else its kind decides (`federation.event_kinds`). An event of federation
    /// scope is kept until [`App::federate`] sends it. Returns the scope (always this
    /// world alone when no peer is configured).
    pub fn scope_world_event(&mut self, ev: &Event, asked: Option<Scope>) -> Scope {
        let Some(f) = &mut self.fed else {
            return Scope::World;
        };
        let scope = f.core.event_scope(&ev.event, asked);
        if scope == Scope::Federation {
            f.scoped.insert(ev.seq);
        }
        scope
    }

    /// New local events (as routed to links and the gateway): those that federate go to
    /// the core and the store.
    ///
    /// In cluster mode only the node that runs federation records them (those past the
    /// log entry federated through already); every node keeps the last ones that would
    /// federate, for the day it takes over ([`App::remember_outgoing`]).
    pub fn federate(&mut self, events: &[Event]) {
        let (active, through) = self.fed_running();
        let clustered = self.cluster.is_some();
        let keeps_rows = self.fed_keeps_rows();
        let Some(f) = &mut self.fed else {
            return;
        };
        let mut outgoing = Vec::new();
        for ev in events {
            let in_portal = self
                .world
                .room(&ev.room)
                .is_some_and(|r| f.core.is_portal(&r.spec));
            let scope = if f.scoped.remove(&ev.seq) {
                Scope::Federation
            } else {
                Scope::World
            };
            let federated = match active && ev.seq > through {
                true => f.record_local(ev, in_portal, scope, keeps_rows),
                false => clustered && f.core.federates(ev, in_portal, scope),
            };
            if clustered && federated {
                outgoing.push((ev.clone(), in_portal, scope));
            }
        }
        if !clustered {
            f.scoped.clear();
        }
        self.remember_outgoing(outgoing);
    }

    /// `POST /bridge/trust`: this world sets a subject's trust; it reaches every world.
    pub fn set_trust(
        &mut self,
        subject: &str,
        score: f64,
        now_ms: u64,
    ) -> Result<Value, TrustRefused> {
        let durable = self.fed_keeps_rows();
        let Some(f) = &mut self.fed else {
            return Err(TrustRefused::Invalid(WireError::Trust(
                "federation is not configured ([[federation.peers]])".into(),
            )));
        };
        let ev = f.core.set_trust(subject, score, now_ms)?;
        f.counts.own += 1;
        let entry = Trust::entry_of(&ev)?;
        let seq = ev.seq;
        if durable {
            f.rows.push(Row::FedEvent(ev));
            f.rows.push(Row::FedTrust(entry.clone()));
            f.own_upto = Some(seq);
        } else {
            f.core.stored(seq);
        }
        Ok(json!({"ok": true, "trust": entry}))
    }

    /// This world's own characters, as its presence report.
    pub(crate) fn own_presence(&self) -> WorldPresence {
        let mut chars: Vec<PresenceEntry> =
            self.world.occupants().map(PresenceEntry::from).collect();
        chars.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        chars.truncate(PRESENCE_MAX);
        let seq = self.world.last_seq();
        match &self.fed {
            Some(f) => f.core.presence_report(seq, chars),
            None => WorldPresence {
                epoch: 0,
                seq,
                characters: chars,
                sig: None,
            },
        }
    }

    /// Merge a document from the authenticated peer `from`; store and show what is new.
    pub fn fed_apply(
        &mut self,
        from: &str,
        doc: &Delta,
        now_ms: u64,
    ) -> Result<Applied, WireError> {
        let durable = self.fed_keeps_rows();
        let Some(f) = &mut self.fed else {
            return Err(WireError::Document("federation is not configured".into()));
        };
        let applied = f.core.apply(from, doc, now_ms)?;
        f.counts.accepted += applied.accepted.len() as u64;
        f.counts.duplicates += applied.duplicates;
        f.counts.refused += applied.refused.len() as u64;
        if durable {
            f.rows
                .extend(applied.rows().into_iter().filter_map(|r| match r {
                    crate::federation::FedRow::Event(e) => Some(Row::FedEvent(e)),
                    crate::federation::FedRow::Pruned(p) => Some(Row::FedPruned(p)),
                    crate::federation::FedRow::Trust(t) => Some(Row::FedTrust(t)),
                    // A merge brings no travel rows (those come from `app::travel`).
                    _ => None,
                }));
        }
        if let Some(h) = f.peers.get_mut(from) {
            h.have = doc.have.clone();
        }
        // Refusals are logged by the core, once a minute per peer and reason.
        self.show_federated(&applied.accepted, now_ms);
        Ok(applied)
    }

    /// Each `sync_interval_s`, every peer not still busy gets its job.
    pub fn fed_tick(&mut self, now: Instant) {
        if !self.fed_running().0 {
            return;
        }
        self.retry_unshown(crate::world::time::now_ms());
        let due = self.fed.as_ref().is_some_and(|f| {
            f.last_round
                .is_none_or(|t| now.duration_since(t) >= f.interval)
        });
        if !due {
            return;
        }
        self.travel_tick(crate::world::time::now_ms());
        let presence = self.own_presence();
        let keeps_rows = self.fed_keeps_rows();
        let Some(f) = &mut self.fed else {
            return;
        };
        f.last_round = Some(now);
        // Once a round: keep `federation.events_keep` events per origin.
        let pruned = f.core.prune();
        if !pruned.is_empty() {
            log::debug!("federation: pruned {pruned:?}");
            if keeps_rows {
                f.rows.extend(pruned.into_iter().map(Row::FedPruned));
            }
        }
        let Some(sync) = &f.sync else {
            return;
        };
        for p in f.core.peers() {
            let Some(h) = f.peers.get_mut(&p.world) else {
                continue;
            };
            if h.busy {
                continue;
            }
            let since = f.snapshots.contains(&p.world).then(|| f.core.log.have());
            let job = Job {
                since,
                push: f.core.push_body(&p.world, PAGE_MAX, presence.clone()),
            };
            h.busy = sync.submit(&p.world, job);
        }
    }

    /// A peer's thread finished its job.
    pub fn on_peer_outcome(&mut self, o: Outcome, now_ms: u64) {
        if !self.fed_running().0 {
            // This node stopped running federation meanwhile: the one that runs it now
            // asks again.
            return;
        }
        let mut errors = o.errors;
        for doc in &o.pulled {
            if let Err(e) = self.fed_apply(&o.peer, doc, now_ms) {
                errors.push(format!("pull: {} refused: {e}", o.peer));
                break;
            }
        }
        let Some(f) = &mut self.fed else {
            return;
        };
        if !o.pulled.is_empty() && errors.is_empty() {
            f.snapshots.insert(o.peer.clone());
        }
        if let Some(a) = &o.answer {
            if let Err(e) = f.core.on_sync_answer(&o.peer, a, now_ms) {
                errors.push(format!("push: {e}"));
            }
            if !a.refused.is_empty() {
                errors.push(format!("push: {} refused events {:?}", o.peer, a.refused));
            }
        }
        let Some(h) = f.peers.get_mut(&o.peer) else {
            return;
        };
        h.busy = false;
        h.unreachable_at = o.unreachable.then_some(now_ms);
        if errors.is_empty() {
            h.rounds_ok += 1;
            if h.last_error.take().is_some() {
                log::info!("federation: peer {} syncs again", o.peer);
            }
            h.last_sync_ms = Some(now_ms);
        } else {
            h.rounds_failed += 1;
            let text = errors.join("; ");
            if h.last_error.as_deref() != Some(text.as_str()) {
                log::warn!("federation: sync with peer {} failed: {text}", o.peer);
            }
            h.last_error = Some(text);
        }
    }

    /// Whether the last sync with `peer` could not reach it at all, and nothing has been
    /// heard from it since (a peer that came up may push to us before our next pull).
    pub(crate) fn peer_unreachable(&self, peer: &str) -> bool {
        let Some(f) = &self.fed else {
            return false;
        };
        let failed = f.peers.get(peer).and_then(|h| h.unreachable_at);
        match (failed, f.core.presence.last_seen(peer)) {
            (Some(at), Some(seen)) => seen < at,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// `/bridge/health`'s `peers`: each configured peer's state. A peer never heard from
    /// since this process started counts as offline. `lag` is how many events the peer
    /// last said it holds that this world does not have yet.
    pub fn peers_health(&self, now_ms: u64) -> Vec<Value> {
        let Some(f) = &self.fed else {
            return Vec::new();
        };
        if !self.fed_running().0 {
            // Another node of the cluster runs federation: it knows how the peers are.
            let leader = self.cluster.as_ref().and_then(|c| c.fed.leader.clone());
            let peers = f.core.peers().iter();
            return peers
                .map(|p| json!({"world": p.world, "url": p.url, "state": "elsewhere", "served_by": leader}))
                .collect();
        }
        f.core
            .peers()
            .iter()
            .map(|p| {
                let h = f.peers.get(&p.world).cloned().unwrap_or_default();
                let state = match f.core.presence.status(&p.world, now_ms) {
                    PeerStatus::Online => "online",
                    PeerStatus::Offline | PeerStatus::Unknown => "offline",
                };
                let lag = lag(&f.core, &h.have);
                json!({
                    "world": p.world,
                    "url": p.url,
                    "state": state,
                    "last_sync": h.last_sync_ms.map(rfc3339),
                    "last_seen": f.core.presence.last_seen(&p.world).map(rfc3339),
                    "lag": lag,
                    "last_error": h.last_error,
                })
            })
            .collect()
    }

    /// Prometheus lines for federation (nothing without peers).
    pub fn render_fed_metrics(&self, now_ms: u64, o: &mut String) {
        use std::fmt::Write;
        let Some(f) = &self.fed else {
            return;
        };
        let mut up = String::new();
        let mut lags = String::new();
        let mut synced = String::new();
        let mut rounds = String::new();
        for p in f.core.peers() {
            let h = f.peers.get(&p.world).cloned().unwrap_or_default();
            let online = f.core.presence.status(&p.world, now_ms) == PeerStatus::Online;
            let peer = &p.world;
            let _ = writeln!(
                up,
                "worldbridge_federation_peer_up{{peer=\"{peer}\"}} {}",
                u8::from(online)
            );
            let _ = writeln!(
                lags,
                "worldbridge_federation_peer_lag_events{{peer=\"{peer}\"}} {}",
                lag(&f.core, &h.have)
            );
            if let Some(ms) = h.last_sync_ms {
                let _ = writeln!(
                    synced,
                    "worldbridge_federation_peer_last_sync_timestamp_seconds{{peer=\"{peer}\"}} {:.3}",
                    ms as f64 / 1000.0
                );
            }
            let _ = writeln!(
                rounds,
                "worldbridge_federation_sync_rounds_total{{peer=\"{peer}\",outcome=\"ok\"}} {}\n\
                 worldbridge_federation_sync_rounds_total{{peer=\"{peer}\",outcome=\"error\"}} {}",
                h.rounds_ok, h.rounds_failed
            );
        }
        let c = f.counts;
        let _ = write!(
            o,
            "# HELP worldbridge_federation_peer_up Whether the peer was heard within 3 sync intervals.\n\
             # TYPE worldbridge_federation_peer_up gauge\n{up}\
             # HELP worldbridge_federation_peer_lag_events Events the peer holds that this world has not got yet.\n\
             # TYPE worldbridge_federation_peer_lag_events gauge\n{lags}\
             # HELP worldbridge_federation_peer_last_sync_timestamp_seconds When a sync round with the peer last succeeded.\n\
             # TYPE worldbridge_federation_peer_last_sync_timestamp_seconds gauge\n{synced}\
             # HELP worldbridge_federation_sync_rounds_total Sync rounds with each peer, by outcome.\n\
             # TYPE worldbridge_federation_sync_rounds_total counter\n{rounds}\
             # HELP worldbridge_federation_events_held Federated events held here (after pruning).\n\
             # TYPE worldbridge_federation_events_held gauge\n\
             worldbridge_federation_events_held {}\n\
             # HELP worldbridge_federation_events_total Federated events: raised here, accepted from peers, duplicates, refused.\n\
             # TYPE worldbridge_federation_events_total counter\n\
             worldbridge_federation_events_total{{how=\"own\"}} {}\n\
             worldbridge_federation_events_total{{how=\"accepted\"}} {}\n\
             worldbridge_federation_events_total{{how=\"duplicate\"}} {}\n\
             worldbridge_federation_events_total{{how=\"refused\"}} {}\n",
            f.core.log.len(),
            c.own,
            c.accepted,
            c.duplicates,
            c.refused,
        );
        let _ = writeln!(
            o,
            "# HELP worldbridge_federation_refused_total Messages from each peer refused, by reason (events, trust entries, presence, travel).\n\
             # TYPE worldbridge_federation_refused_total counter"
        );
        for (peer, reason, n) in f.core.refusals.counts() {
            let _ = writeln!(
                o,
                "worldbridge_federation_refused_total{{peer=\"{peer}\",reason=\"{reason}\"}} {n}"
            );
        }
        f.unshown.render_metrics(o);
    }

    /// The peer a federation request comes from, by the token it `given` (`Authorization:
    /// Bearer`, read by the door); `unauthorized` (and a warning) otherwise.
    pub fn peer_of(&self, given: Option<&str>, route: &str) -> Result<String, Refusal> {
        let Some(f) = &self.fed else {
            return Err(Refusal::new(
                "federation_off",
                "this bridge has no [[federation.peers]]",
            ));
        };
        match given.and_then(|t| f.core.peer_by_token(t)) {
            Some(p) => match self.fed_refusal() {
                Some(r) => Err(r),
                None => Ok(p.world.clone()),
            },
            None => {
                let why = if given.is_some() { "a wrong" } else { "no" };
                log::warn!("federation: {route} refused: {why} peer token");
                Err(Refusal::new(
                    "unauthorized",
                    "federation routes need Authorization: Bearer <the pair's token>",
                ))
            }
        }
    }

    /// `GET /bridge/state`: a snapshot for `peer`, or the delta past its cursor.
    pub fn fed_state(&mut self, peer: &str, since: Option<&Cursor>) -> Result<Delta, Refusal> {
        let presence = self.own_presence();
        let Some(f) = &self.fed else {
            return Err(Refusal::new("federation_off", "no federation"));
        };
        Ok(f.core.delta(Some(peer), since, PAGE_MAX, presence))
    }

    /// `POST /bridge/sync`: merge `peer`'s push; the answer waits for its rows (the door
    /// holds it until durable).
    pub fn fed_sync(
        &mut self,
        peer: &str,
        doc: &Delta,
        now_ms: u64,
    ) -> Result<SyncAnswer, Refusal> {
        let applied = self
            .fed_apply(peer, doc, now_ms)
            .map_err(|e| Refusal::new("refused", e.to_string()))?;
        let Some(f) = &self.fed else {
            return Err(Refusal::new("federation_off", "no federation"));
        };
        Ok(f.core.sync_answer(&applied))
    }
}

/// Federated events not shown (yet), and why.
/// How often a room's unshown events are warned about, at most (ms).
const WARN_EVERY_MS: u64 = 60_000;

#[derive(Debug, Default)]
pub struct Unshown {
    pub(super) kept: VecDeque<FedEvent>,
    /// How many rooms the world had when the kept events were last tried.
    pub(super) tried_at_rooms: usize,
    /// Room → when its last warning was logged (epoch ms).
    pub(super) warned: HashMap<String, u64>,
    /// Reason → events counted.
    pub(super) counts: BTreeMap<&'static str, u64>,
}

impl Unshown {
    /// Events waiting for a room.
    pub fn kept(&self) -> usize {
        self.kept.len()
    }

    /// How many events were not shown for `reason`.
    pub fn count(&self, reason: &str) -> u64 {
        self.counts.get(reason).copied().unwrap_or(0)
    }

    /// A room was removed (expired): a place under `rooms.max` is free, so the kept
    /// events are tried again at the next tick even if the room count is back where it
    /// was.
    pub(crate) fn rooms_freed(&mut self) {
        self.tried_at_rooms = usize::MAX;
    }

    pub(super) fn counted(&mut self, reason: &'static str) {
        *self.counts.entry(reason).or_default() += 1;
    }

    /// Whether a warning about `room` is due (and note it as logged).
    pub(super) fn warn_due(&mut self, room: &str, now_ms: u64) -> bool {
        let due = self
            .warned
            .get(room)
            .is_none_or(|t| now_ms.saturating_sub(*t) >= WARN_EVERY_MS);
        if due {
            self.warned.insert(room.to_string(), now_ms);
        }
        due
    }

    /// The unshown part of `GET /metrics`.
    pub fn render_metrics(&self, o: &mut String) {
        use std::fmt::Write;
        o.push_str(
            "# HELP worldbridge_federation_events_unshown_total Accepted federated events not shown in a room here, by why.\n\
             # TYPE worldbridge_federation_events_unshown_total counter\n",
        );
        for reason in ["room_limit", "no_room", "kept_full"] {
            let _ = writeln!(
                o,
                "worldbridge_federation_events_unshown_total{{reason=\"{reason}\"}} {}",
                self.count(reason)
            );
        }
        let _ = writeln!(
            o,
            "# HELP worldbridge_federation_events_kept Federated events kept until a room can show them.\n\
             # TYPE worldbridge_federation_events_kept gauge\n\
             worldbridge_federation_events_kept {}",
            self.kept.len()
        );
    }
}

/// Work that waits for a store batch.
pub(super) enum Deferred {
    Steps(Vec<Step>),
    Landings(Vec<Landing>),
}

/// The wiring's own state, kept in [`crate::app::peering::Peering`].
#[derive(Default)]
pub struct TravelWiring {
    /// Travellers waiting for their answer, by user id.
    pub(super) waiting: BTreeMap<String, (ReplyTo, String)>,
    /// (batch, the row written, work): to run once that batch is durable, oldest first.
    /// If the batch fails, the row is written again with the next one.
    pub(super) deferred: VecDeque<(u64, Row, Deferred)>,
    /// The room each accepted traveller arrives in, as the destination said.
    pub(super) rooms: BTreeMap<String, String>,
}

impl TravelWiring {
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{Config, PeerConfig};

    fn app(world: &str) -> App {
        app_with(world, &["The Bridge"], Config::default().rooms.max)
    }

    /// An app of `world` in memory, peering with the other of mac and vps.
    pub(crate) fn app_with(world: &str, portal_rooms: &[&str], rooms_max: usize) -> App {
        let mut cfg = Config {
            world: world.into(),
            ..Config::default()
        };
        cfg.store.memory = true;
        cfg.rooms.max = rooms_max;
        cfg.federation.portal_rooms = portal_rooms.iter().map(|s| s.to_string()).collect();
        let peer = if world == "vps" { "mac" } else { "vps" };
        cfg.federation.peers = vec![PeerConfig {
            world: peer.into(),
            url: "http://127.0.0.1:9".into(),
            token: "t".into(),
            public_key: String::new(),
        }];
        App::new(cfg).expect("app")
    }

    fn said(a: &mut App, room: &str) {
        a.world.say("alice", "Alice", room, "hi", 1).unwrap();
        a.route_events(None);
    }

    #[test]
    fn only_portal_says_go_out_and_own_events_are_served_once_durable() {
        let mut a = app("mac");
        said(&mut a, "The Garden");
        assert_eq!(a.fed.as_ref().unwrap().core.last_seq(), 0, "not a portal");
        said(&mut a, "The Bridge");
        let f = a.fed.as_ref().unwrap();
        assert!(f.core.log.contains("mac", 1), "--memory: served at once");

        let dir = std::env::temp_dir().join(format!("wb-fedapi-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut d = app("mac");
        let (store, _) =
            crate::store::Store::open(&dir, "mac", d.retention(), std::sync::Arc::new(|| {}))
                .unwrap();
        d.attach_store(store, None);
        said(&mut d, "The Bridge");
        d.flush_store();
        assert!(
            !d.fed.as_ref().unwrap().core.log.contains("mac", 1),
            "not served before it is durable"
        );
        let ev = d
            .store
            .as_ref()
            .unwrap()
            .events
            .recv_timeout(Duration::from_secs(5))
            .unwrap();
        d.on_store(ev);
        assert!(d.fed.as_ref().unwrap().core.log.contains("mac", 1));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn world_events_of_the_configured_kinds_go_out_unless_local() {
        let mut a = app("mac");
        let raise = |a: &mut App, kind: &str, asked: Option<Scope>| {
            let ev = a
                .world
                .world_event("The Forge", kind, Some("x"), 1)
                .unwrap();
            let scope = a.scope_world_event(&ev, asked);
            a.route_events(None);
            scope
        };
        assert_eq!(raise(&mut a, "fire", None), Scope::Federation);
        assert_eq!(a.fed.as_ref().unwrap().core.last_seq(), 1, "fire goes out");
        assert_eq!(raise(&mut a, "fire", Some(Scope::World)), Scope::World);
        assert_eq!(raise(&mut a, "bell", None), Scope::World);
        assert_eq!(
            a.fed.as_ref().unwrap().core.last_seq(),
            1,
            "neither goes out"
        );
        assert_eq!(
            raise(&mut a, "bell", Some(Scope::Federation)),
            Scope::Federation
        );
        assert_eq!(a.fed.as_ref().unwrap().core.last_seq(), 2, "asked for");

        let mut lone = App::new(Config {
            store: crate::config::StoreConfig {
                memory: true,
                ..Default::default()
            },
            ..Config::default()
        })
        .expect("app");
        assert_eq!(raise(&mut lone, "fire", None), Scope::World, "no peers");
    }

    #[test]
    fn a_peer_document_is_shown_by_remote_names_and_merged_once() {
        let mut vps = app("vps");
        said(&mut vps, "The Bridge");
        let presence = vps.own_presence();
        let doc = vps
            .fed
            .as_ref()
            .unwrap()
            .core
            .delta(Some("mac"), None, PAGE_MAX, presence);
        let mut mac = app("mac");
        let first = mac.fed_apply("vps", &doc, 2).unwrap();
        assert_eq!(first.accepted.len(), 1);
        let again = mac.fed_apply("vps", &doc, 3).unwrap();
        assert_eq!((again.accepted.len(), again.duplicates), (0, 1));
        let events = mac.world.events("The Bridge", None, None).unwrap();
        let shown: Vec<&str> = events
            .iter()
            .filter(|e| e.origin == "vps")
            .map(|e| e.username.as_str())
            .collect();
        assert_eq!(shown, ["Alice@vps"]);
        assert!(mac.world.occupant("alice@vps").is_none());
        assert!(
            mac.fed_apply("bezalel", &doc, 4).is_err(),
            "claims another sender"
        );
    }
}
