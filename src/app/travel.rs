//! Travel wired in: the core's state machines ([`crate::federation::travel`]) driven by
//! the loop, the store and the peers' threads.
//!
//! `POST /bridge/travel` carries two kinds of body, told apart by `type`:
//! - a user's request `{"user_id": "timmy", "to_world": "vps"}` (no `type`; the
//!   bridge's `http.token` if one is set): answered once the travel is decided, with
//!   `{"ok": true, "world": "vps", "room": "The Bridge", …}`, or a refusal (409
//!   `travel_refused`, with the sentence: "world vps is offline");
//! - a peer's message (`"type": "offer" | "commit" | "abort"`, with the pair's token),
//!   answered with the core's reply (`accepted`, `refused`, `done`) once the row it
//!   saved is durable.
//!
//! A game's travel exit sends the line `{"type": "travel", "user_id": …, "to_world": …}`
//! and gets the same answer as a line.
//!
//! The core's rule "nothing after a `Save` before it is durable" is kept by cutting each
//! list of steps at every `Save`/`Forget`: the rest waits for the store batch that holds
//! the row ([`App::travel_durable`]). With `--memory` the steps run at once.
//!
//! A traveller arrives in the destination's first room of `federation.portal_rooms`
//! (which exist from the start), else its first portal room (in the world's room order),
//! or in its first room when it has no portal room. The answer's `room` is the
//! one the destination named when it accepted.

use crate::app::calls::ReplyTo;
use crate::app::outcome::{Outcome, Refusal};
use crate::app::peer_sync::TravelOutcome;
use crate::app::peering::Deferred;
use crate::app::App;
use crate::federation::travel::{Here, Landing, Step};
use crate::federation::wire::{TravelMsg, TravelReply};
use crate::store::Row;
use serde_json::Value;
use std::collections::VecDeque;

/// How long the destination keeps a settled travel's row (to refuse a late copy of its
/// offer): one day.
pub const ARRIVAL_KEEP_MS: u64 = 24 * 3600 * 1000;

impl App {
    /// The room a traveller arrives in here: the first room of
    /// `federation.portal_rooms` that exists, else the first portal room, else the
    /// first room.
    pub fn gateway_room(&self) -> Option<String> {
        let f = self.fed.as_ref()?;
        let configured = self
            .cfg
            .federation
            .portal_rooms
            .iter()
            .find_map(|name| self.world.room(name));
        configured
            .or_else(|| self.world.rooms().find(|r| f.core.is_portal(&r.spec)))
            .or_else(|| self.world.rooms().next())
            .map(|r| r.spec.name.clone())
    }

    /// A user asks to travel. `Err` is the refusal to answer at once; `Ok` means the
    /// answer comes later through `reply_to`.
    pub fn travel_request(
        &mut self,
        user_id: &str,
        to_world: &str,
        reply_to: ReplyTo,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        if let Some(r) = self.fed_refusal() {
            // Cluster mode: the node that runs federation carries it out, and the answer
            // comes back here.
            return match self.travel_elsewhere(user_id, to_world, &reply_to) {
                true => Ok(()),
                false => Err(r),
            };
        }
        let Some(o) = self.world.occupant(user_id).cloned() else {
            return Err(Refusal::new(
                "not_here",
                format!("{user_id} is not in this world ({})", self.cfg.world),
            ));
        };
        if self.travel_needs_lease(user_id, to_world, &reply_to) {
            return Ok(());
        }
        let history: Vec<_> = self
            .world
            .sessions
            .get(user_id)
            .map(|s| s.history.iter().cloned().collect())
            .unwrap_or_default();
        let unreachable = self.peer_unreachable(to_world);
        let Some(f) = &mut self.fed else {
            return Err(Refusal::new(
                "federation_off",
                "this bridge has no [[federation.peers]]",
            ));
        };
        let steps = f
            .core
            .begin_travel(
                user_id,
                &o.username,
                Some(&o.room),
                history,
                to_world,
                unreachable,
                now_ms,
            )
            .map_err(|e| Refusal::new("travel_refused", e.to_string()))?;
        f.travel
            .waiting
            .insert(user_id.to_string(), (reply_to, to_world.to_string()));
        log::info!("travel: {user_id} asks to go to {to_world}");
        self.run_steps(steps, now_ms);
        Ok(())
    }

    /// Carry out the origin's steps, up to the first write; the rest waits for it.
    fn run_steps(&mut self, steps: Vec<Step>, now_ms: u64) {
        let mut steps = VecDeque::from(steps);
        while let Some(step) = steps.pop_front() {
            match step {
                Step::Save(d) => {
                    if let Some(row) = self.defer_after(Row::FedDeparture(d)) {
                        self.park(row, Deferred::Steps(steps.into()));
                        return;
                    }
                }
                Step::Forget(id) => {
                    if let Some(row) = self.defer_after(Row::FedDepartureGone(id)) {
                        self.park(row, Deferred::Steps(steps.into()));
                        return;
                    }
                }
                Step::Send { to, msg } => self.send_travel(&to, msg),
                Step::Remove { user_id } => {
                    let gone = self.world.remove(&user_id, now_ms);
                    self.world.sessions.remove(&user_id);
                    self.session_gone(&user_id);
                    if gone.is_some() {
                        log::info!("travel: {user_id} left this world");
                    }
                    self.route_events(None);
                }
                Step::Tell { user_id, ok, text } => self.tell(&user_id, ok, text),
            }
        }
    }

    /// Carry out the destination's landings, up to the first write. `Reply`s are
    /// returned (the caller answers them; a held answer waits for the store itself).
    fn run_landings(&mut self, landings: Vec<Landing>, now_ms: u64) -> Option<TravelReply> {
        let mut landings = VecDeque::from(landings);
        let mut reply = None;
        while let Some(l) = landings.pop_front() {
            match l {
                Landing::Save(a) => {
                    if let Some(row) = self.defer_after(Row::FedArrival(a)) {
                        // The reply is answered now but held by the caller until the
                        // batch is durable; the rest (placing) waits for that batch too.
                        let (replies, rest): (Vec<Landing>, Vec<Landing>) = landings
                            .into_iter()
                            .partition(|l| matches!(l, Landing::Reply(_)));
                        reply = replies.into_iter().find_map(|l| match l {
                            Landing::Reply(r) => Some(r),
                            _ => None,
                        });
                        self.park(row, Deferred::Landings(rest));
                        return reply;
                    }
                }
                Landing::Forget(id) => {
                    if let Some(row) = self.defer_after(Row::FedArrivalGone(id)) {
                        self.park(row, Deferred::Landings(landings.into()));
                        return reply;
                    }
                }
                Landing::Place { offer, room } => {
                    let calls = &self.calls;
                    self.world.sessions.adopt(
                        &offer.user_id,
                        &offer.username,
                        &room,
                        &offer.history,
                        now_ms,
                        &|u| calls.is_busy(u),
                    );
                    self.world
                        .place(&offer.user_id, &offer.username, &room, now_ms);
                    // Cluster mode: the conversation it brought is every node's.
                    self.session_changed(&offer.user_id);
                    log::info!(
                        "travel: {} arrived from {} in {room}",
                        offer.user_id,
                        offer.from
                    );
                    self.route_events(None);
                }
                Landing::Reply(r) => reply = Some(r),
            }
        }
        reply
    }

    /// Queue `row` for the store; `Some(row)` if what follows must wait for it.
    fn defer_after(&mut self, row: Row) -> Option<Row> {
        if !self.fed_keeps_rows() {
            return None;
        }
        let f = self.fed.as_mut()?;
        f.rows.push(row.clone());
        Some(row)
    }

    fn park(&mut self, row: Row, work: Deferred) {
        let batch = self.next_batch();
        if let Some(f) = &mut self.fed {
            f.travel.deferred.push_back((batch, row, work));
        }
    }

    /// Store batches `ids` failed: their travel rows are written again with the next
    /// batch, and what waited for them waits for that one.
    pub fn travel_failed(&mut self, ids: &[u64]) {
        let batch = self.next_batch();
        let Some(f) = &mut self.fed else {
            return;
        };
        for (b, row, _) in f.travel.deferred.iter_mut() {
            if ids.contains(b) {
                f.rows.push(row.clone());
                *b = batch;
            }
        }
    }

    /// Batches up to `upto` are durable: run the travel work that waited for them.
    pub fn travel_durable(&mut self, upto: u64) {
        let now_ms = crate::world::time::now_ms();
        loop {
            let Some(f) = &mut self.fed else {
                return;
            };
            if f.travel.deferred.front().is_none_or(|(b, _, _)| *b > upto) {
                return;
            }
            let Some((_, _, work)) = f.travel.deferred.pop_front() else {
                return;
            };
            match work {
                Deferred::Steps(s) => self.run_steps(s, now_ms),
                Deferred::Landings(l) => {
                    // A reply left here was answered with its batch already.
                    let _ = self.run_landings(l, now_ms);
                }
            }
        }
    }

    fn send_travel(&mut self, to: &str, mut msg: TravelMsg) {
        let Some(f) = &self.fed else {
            return;
        };
        f.core.sign_travel(&mut msg);
        let sent = f.sync.as_ref().is_some_and(|s| s.send_travel(to, msg));
        if !sent {
            log::debug!("travel: no thread to send to {to} (repeated next interval)");
        }
    }

    /// Answer a waiting traveller.
    fn tell(&mut self, user_id: &str, ok: bool, text: String) {
        let Some(f) = &mut self.fed else {
            return;
        };
        let room = f.travel.rooms.remove(user_id);
        let Some((to, world)) = f.travel.waiting.remove(user_id) else {
            log::info!("travel: {user_id}: {text}");
            return;
        };
        let reply = if ok {
            Ok(Outcome::Travelled {
                user_id: user_id.to_string(),
                world,
                room,
                message: text,
            })
        } else {
            Err(Refusal::new("travel_refused", text))
        };
        self.answer(to, reply);
    }

    /// A peer answered a travel message (or could not be reached).
    pub fn on_travel_outcome(&mut self, o: TravelOutcome, now_ms: u64) {
        let reply = match o.reply {
            Ok(r) => r,
            Err(e) => {
                log::warn!("travel {}: {} did not answer: {e}", o.travel_id, o.peer);
                return;
            }
        };
        if reply.travel_id() != o.travel_id {
            log::warn!(
                "travel {}: {} answered about {}",
                o.travel_id,
                o.peer,
                reply.travel_id()
            );
            return;
        }
        let Some(f) = &mut self.fed else {
            return;
        };
        // A reply counts only from the world the travel went to.
        if f.core
            .departures
            .get(&o.travel_id)
            .map(|d| d.offer.to.as_str())
            != Some(&o.peer)
        {
            return;
        }
        if let (TravelReply::Accepted { .. }, Some(room)) = (&reply, o.room) {
            if let Some(d) = f.core.departures.get(&o.travel_id) {
                f.travel.rooms.insert(d.offer.user_id.clone(), room);
            }
        }
        let steps = f.core.departures.on_reply(&reply);
        self.run_steps(steps, now_ms);
    }

    /// Each sync round: deadlines, repeated decisions, expired arrival rows.
    pub fn travel_tick(&mut self, now_ms: u64) {
        let Some(f) = &mut self.fed else {
            return;
        };
        let steps = f.core.departures.tick(now_ms);
        let gone = f.core.arrivals.expire(now_ms, ARRIVAL_KEEP_MS);
        self.run_steps(steps, now_ms);
        let _ = self.run_landings(gone, now_ms);
    }

    /// At start, once the peers' threads run: settle every stored travel.
    pub fn recover_travel(&mut self) {
        let now_ms = crate::world::time::now_ms();
        let Some(f) = &mut self.fed else {
            return;
        };
        let steps = f.core.departures.recover();
        let landings = f.core.arrivals.recover();
        if !steps.is_empty() || !landings.is_empty() {
            log::info!(
                "travel: recovering {} departures, {} arrivals",
                f.core.departures.len(),
                landings.len()
            );
        }
        self.run_steps(steps, now_ms);
        let _ = self.run_landings(landings, now_ms);
    }

    /// A peer's travel message: the reply to send back (held by the caller until the
    /// rows are durable).
    pub fn on_peer_travel(
        &mut self,
        from: &str,
        msg: &TravelMsg,
        raw: &Value,
        now_ms: u64,
    ) -> Value {
        let room = self.gateway_room().unwrap_or_default();
        let user = match msg {
            TravelMsg::Offer(o) | TravelMsg::Commit(o) => Some(o.user_id.clone()),
            TravelMsg::Abort { .. } => None,
        };
        // Present anywhere here: in any room (any link's), or holding a session.
        let occupied = user.is_some_and(|u| {
            self.world.occupant(&u).is_some() || self.world.sessions.get(&u).is_some()
        });
        let durable = self.fed_keeps_rows();
        let Some(f) = &mut self.fed else {
            return Value::Null;
        };
        let here = Here {
            room: &room,
            occupied,
        };
        let (landings, won) = f.core.on_travel(from, msg, raw, here, now_ms);
        if durable {
            f.rows.extend(won.into_iter().map(Row::FedTrust));
        }
        let reply = self.run_landings(landings, now_ms);
        let mut v = serde_json::to_value(reply).unwrap_or(Value::Null);
        // Where the traveller arrives, for the traveller's answer (not part of the
        // core's reply; an origin that does not know it ignores it).
        if let Value::Object(m) = &mut v {
            m.insert("room".into(), Value::String(room));
        }
        v
    }
}
