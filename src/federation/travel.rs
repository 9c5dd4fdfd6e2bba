//! Travel: a character moves to another world exactly once: never lost, never in two
//! worlds. Pure state machines for both sides; each call returns the [`Step`]s (origin)
//! or [`Landing`]s (destination) the wiring must carry out, in order.
//!
//! ## The protocol
//! The origin coordinates; its durable record decides.
//! 1. Origin: save `Pending` (the character stays and can still talk), send `offer`.
//! 2. Destination: save `Held` (a promise, the character is *not* placed), answer
//!    `accepted`. An offer it cannot take is saved `CalledOff` and answered `refused`.
//! 3. Origin, on `accepted` while `Pending`: save `Departed`, remove the character, tell
//!    the traveller, then send `commit` (repeated each tick until answered `done`).
//! 4. Destination, on `commit` for an offer it holds from that peer: save `Arrived`,
//!    place the character as offered (with history and trust), answer `done`. Origin
//!    forgets the record. A commit with no held offer moves nobody (`no_offer`), and a
//!    traveller whose id is present here (any room, any link) waits (`already_here`):
//!    the origin repeats its commit until they have gone.
//!
//! If the origin has no `accepted` by the deadline, or restarts with a `Pending` record,
//! it saves `Aborted` ("world vps is offline"), and sends `abort` each tick until `done`;
//! the destination saves `CalledOff` (so a late copy of the offer is refused) and drops
//! what it held.
//!
//! ## Why exactly once
//! *Where the character is.* In the origin while its record is absent, `Pending` or
//! `Aborted` (the character is only removed after `Departed` is durable); in the
//! destination once `Arrived` is durable (it is only placed after that).
//!
//! *Never in two worlds.* The destination places only on `commit`; the origin sends
//! `commit` only after `Departed` is durable and the character removed. `Departed` is
//! final: no path leads from it to `Aborted`, and an `Aborted` travel never sends
//! `commit`. So a placed character has always left the origin first.
//!
//! *Never lost.* Between `Departed` and `Arrived` the character is in transit. The origin
//! keeps `Departed` until the destination answers `done`, which it does only after
//! `Arrived` is durable; the destination answered `accepted` only once `Held` was
//! durable, so a commit always finds the offer it promised. Every crash leaves a durable
//! record on one side that recovery drives forward:
//! - origin crashes after `Pending` (before or after sending, before or after an answer
//!   came): recovery aborts; the destination's `Held` (if any) is dropped by `abort`;
//! - destination crashes before `Held` is durable: no answer, the origin times out and
//!   aborts; an `abort` for an unknown travel is answered `done` (and remembered);
//! - destination crashes after `Held`, before answering: the same; `abort` drops `Held`;
//! - origin crashes after `Departed`, before removing or before sending `commit`:
//!   recovery removes again (idempotent) and sends `commit`;
//! - destination crashes after `Arrived`, before placing or before answering: recovery
//!   places again (idempotent); the repeated `commit` is answered `done`;
//! - any message lost or duplicated: every message is idempotent by travel id, and the
//!   unanswered ones are repeated.
//!
//! The tests below run each of these, and a property test runs random schedules of
//! losses, duplicates, crashes and timeouts.

use super::presence::PeerStatus;
use super::wire::{Offer, TravelMsg, TravelReply, TrustEntry};
use crate::agent::Turn;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Why a travel could not start. `Display` is the sentence the traveller sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TravelError {
    NotAPeer(String),
    SameWorld,
    Offline(String),
    AlreadyTravelling(String),
    /// The offer would fail the destination's checks (a name too long…).
    Invalid(String),
}

impl std::fmt::Display for TravelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TravelError::NotAPeer(w) => write!(f, "there is no world called {w} to travel to"),
            TravelError::SameWorld => write!(f, "you are already in this world"),
            TravelError::Offline(w) => write!(f, "world {w} is offline"),
            TravelError::AlreadyTravelling(w) => write!(f, "you are already on your way to {w}"),
            TravelError::Invalid(why) => write!(f, "{why}"),
        }
    }
}

/// The origin's durable decision about one travel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Leg {
    /// The offer may be out; no answer yet. Decided at the deadline (or on recovery).
    Pending { deadline_ms: u64 },
    /// Final: the character left here; `commit` until `done`.
    Departed,
    /// Final: the character stays here; `abort` until `done`.
    Aborted { reason: String },
}

/// One row of the origin's travel table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Departure {
    pub offer: Offer,
    #[serde(flatten)]
    pub leg: Leg,
}

/// What the origin's wiring must do, in order. Nothing after a `Save` or `Forget` may
/// happen before that write is durable.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Save(Departure),
    Forget(String),
    Send {
        to: String,
        msg: TravelMsg,
    },
    /// Take the character out of this world; nothing if they are not here.
    Remove {
        user_id: String,
    },
    /// Answer the traveller, if they are still waiting.
    Tell {
        user_id: String,
        ok: bool,
        text: String,
    },
}

/// The origin side: every travel leaving this world that is not yet settled.
#[derive(Debug, Clone)]
pub struct Departures {
    world: String,
    timeout_ms: u64,
    records: BTreeMap<String, Departure>,
    next_number: u64,
}

impl Departures {
    /// `timeout_ms`: how long the destination has to accept an offer.
    pub fn new(world: &str, timeout_ms: u64) -> Departures {
        Departures {
            world: world.to_string(),
            timeout_ms,
            records: BTreeMap::new(),
            next_number: 0,
        }
    }

    /// Put back the stored rows at start; then call [`Departures::recover`].
    pub fn restore(&mut self, rows: Vec<Departure>) {
        for d in rows {
            self.records.insert(d.offer.travel_id.clone(), d);
        }
    }

    /// What to do about every row found at start: a `Pending` travel is aborted (nobody
    /// waits for its answer any more, and aborting is always safe before `Departed`);
    /// the others resume sending their final decision.
    pub fn recover(&mut self) -> Vec<Step> {
        let mut steps = Vec::new();
        let ids: Vec<String> = self.records.keys().cloned().collect();
        for id in ids {
            let Some(d) = self.records.get(&id) else {
                continue;
            };
            match &d.leg {
                Leg::Pending { .. } => {
                    let reason = format!("the travel to {} was interrupted", d.offer.to);
                    steps.extend(self.abort(&id, reason));
                }
                Leg::Departed => {
                    steps.push(Step::Remove {
                        user_id: d.offer.user_id.clone(),
                    });
                    steps.push(commit(d));
                }
                Leg::Aborted { .. } => steps.push(abort_msg(d)),
            }
        }
        steps
    }

    pub fn get(&self, travel_id: &str) -> Option<&Departure> {
        self.records.get(travel_id)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The unsettled travel of `user_id`, if any (`Pending` or `Departed`).
    pub fn travelling(&self, user_id: &str) -> Option<&Departure> {
        self.records
            .values()
            .find(|d| d.offer.user_id == user_id && !matches!(d.leg, Leg::Aborted { .. }))
    }

    /// Start moving a character to `to`. `peer` is `None` when `to` is not a configured
    /// peer. A peer known to be offline is refused at once; one never heard from yet is
    /// tried (the first sync may simply not have run).
    #[allow(clippy::too_many_arguments)]
    pub fn begin(
        &mut self,
        user_id: &str,
        username: &str,
        room: Option<&str>,
        history: Vec<Turn>,
        trust: Vec<TrustEntry>,
        to: &str,
        peer: Option<PeerStatus>,
        now_ms: u64,
    ) -> Result<Vec<Step>, TravelError> {
        if to == self.world {
            return Err(TravelError::SameWorld);
        }
        match peer {
            None => return Err(TravelError::NotAPeer(to.to_string())),
            Some(PeerStatus::Offline) => return Err(TravelError::Offline(to.to_string())),
            Some(_) => {}
        }
        if let Some(d) = self.travelling(user_id) {
            return Err(TravelError::AlreadyTravelling(d.offer.to.clone()));
        }
        self.next_number += 1;
        // The time makes ids unique across restarts without a stored counter.
        let travel_id = format!("{}-{}-{}", self.world, now_ms, self.next_number);
        let offer = Offer {
            travel_id: travel_id.clone(),
            from: self.world.clone(),
            to: to.to_string(),
            user_id: user_id.to_string(),
            username: username.to_string(),
            room: room.map(str::to_string),
            history,
            trust,
            sig: None,
        };
        // Checked here as the destination will: a commit it refused would leave the
        // character in transit.
        offer
            .check()
            .map_err(|e| TravelError::Invalid(e.to_string()))?;
        let d = Departure {
            offer: offer.clone(),
            leg: Leg::Pending {
                deadline_ms: now_ms + self.timeout_ms,
            },
        };
        self.records.insert(travel_id, d.clone());
        Ok(vec![
            Step::Save(d),
            Step::Send {
                to: to.to_string(),
                msg: TravelMsg::Offer(offer),
            },
        ])
    }

    /// The destination answered.
    pub fn on_reply(&mut self, reply: &TravelReply) -> Vec<Step> {
        let id = reply.travel_id();
        let Some(d) = self.records.get(id) else {
            return Vec::new(); // settled and forgotten: a late copy
        };
        match (reply, &d.leg) {
            (TravelReply::Accepted { .. }, Leg::Pending { .. }) => {
                let d = Departure {
                    offer: d.offer.clone(),
                    leg: Leg::Departed,
                };
                self.records.insert(id.to_string(), d.clone());
                vec![
                    Step::Save(d.clone()),
                    Step::Remove {
                        user_id: d.offer.user_id.clone(),
                    },
                    Step::Tell {
                        user_id: d.offer.user_id.clone(),
                        ok: true,
                        text: format!("{} left for {}", d.offer.username, d.offer.to),
                    },
                    commit(&d),
                ]
            }
            (TravelReply::Refused { reason, .. }, Leg::Pending { .. }) => {
                // The destination saved nothing it would act on: settled here and now.
                let user_id = d.offer.user_id.clone();
                let text = format!("world {} refused: {reason}", d.offer.to);
                self.records.remove(id);
                vec![
                    Step::Forget(id.to_string()),
                    Step::Tell {
                        user_id,
                        ok: false,
                        text,
                    },
                ]
            }
            (TravelReply::Done { .. }, Leg::Departed | Leg::Aborted { .. })
            | (TravelReply::Refused { .. }, Leg::Aborted { .. }) => {
                self.records.remove(id);
                vec![Step::Forget(id.to_string())]
            }
            // A late or repeated answer to a decision already taken.
            _ => Vec::new(),
        }
    }

    /// Each sync interval: decide the `Pending` travels past their deadline, and repeat
    /// every final decision not yet answered `done`.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Step> {
        let mut steps = Vec::new();
        let ids: Vec<String> = self.records.keys().cloned().collect();
        for id in ids {
            let Some(d) = self.records.get(&id) else {
                continue;
            };
            match &d.leg {
                Leg::Pending { deadline_ms } if now_ms >= *deadline_ms => {
                    let reason = TravelError::Offline(d.offer.to.clone()).to_string();
                    steps.extend(self.abort(&id, reason));
                }
                Leg::Pending { .. } => {}
                Leg::Departed => steps.push(commit(d)),
                Leg::Aborted { .. } => steps.push(abort_msg(d)),
            }
        }
        steps
    }

    fn abort(&mut self, id: &str, reason: String) -> Vec<Step> {
        let Some(d) = self.records.get_mut(id) else {
            return Vec::new();
        };
        d.leg = Leg::Aborted {
            reason: reason.clone(),
        };
        let d = d.clone();
        vec![
            Step::Save(d.clone()),
            Step::Tell {
                user_id: d.offer.user_id.clone(),
                ok: false,
                text: reason,
            },
            abort_msg(&d),
        ]
    }
}

/// A travel message names a travel that is not the sender's.
pub const NOT_YOURS: &str = "not_yours";
/// An offer or commit that fails its checks, or is not for this world.
pub const BAD_TRAVEL: &str = "bad_travel";
/// A late copy of an offer that was refused or aborted.
pub const CALLED_OFF: &str = "called_off";
/// Someone with the traveller's id is present in this world (any room, any link).
pub const ALREADY_HERE: &str = "already_here";
/// A commit for a travel this world holds no offer of, from that peer.
pub const NO_OFFER: &str = "no_offer";
/// An abort after the character arrived.
pub const ARRIVED: &str = "arrived";
/// An offer from a peer that already has `federation.travels_pending_max` travels
/// waiting here (held offers, and aborts remembered against late copies).
pub const TOO_MANY_TRAVELS: &str = "too_many_travels";
/// Every travel refusal code (counted like the event refusal reasons).
pub const REFUSAL_CODES: [&str; 7] = [
    NOT_YOURS,
    BAD_TRAVEL,
    CALLED_OFF,
    ALREADY_HERE,
    NO_OFFER,
    ARRIVED,
    TOO_MANY_TRAVELS,
];

/// The world a travel id (`<world>-<ms>-<n>`) belongs to; world ids may contain `-`,
/// so it is read from the right.
pub fn origin_of(travel_id: &str) -> Option<&str> {
    let mut parts = travel_id.rsplitn(3, '-');
    let n = parts.next()?;
    let ms = parts.next()?;
    let world = parts.next()?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(n) && digits(ms) && !world.is_empty()).then_some(world)
}

fn commit(d: &Departure) -> Step {
    Step::Send {
        to: d.offer.to.clone(),
        msg: TravelMsg::Commit(d.offer.clone()),
    }
}

fn abort_msg(d: &Departure) -> Step {
    Step::Send {
        to: d.offer.to.clone(),
        msg: TravelMsg::Abort {
            travel_id: d.offer.travel_id.clone(),
            sig: None,
        },
    }
}

/// The destination's durable knowledge of one travel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Stay {
    /// Promised, not placed: waiting for the origin's decision.
    Held { offer: Offer, room: String },
    /// Placed here.
    Arrived { offer: Offer, room: String },
    /// Refused or aborted: a late copy of the offer is refused.
    CalledOff,
}

/// One row of the destination's travel table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arrival {
    pub travel_id: String,
    pub from: String,
    pub at_ms: u64,
    #[serde(flatten)]
    pub stay: Stay,
}

/// What the destination's wiring must do, in order; a `Reply` goes back to the origin
/// only after the `Save` before it is durable.
#[derive(Debug, Clone, PartialEq)]
pub enum Landing {
    Save(Arrival),
    Forget(String),
    /// Put the character in `room` with their history and trust; nothing if already
    /// there.
    Place {
        offer: Offer,
        room: String,
    },
    Reply(TravelReply),
}

/// What the wiring knows about the world when an offer or commit arrives.
#[derive(Debug, Clone, Copy)]
pub struct Here<'a> {
    /// Where a traveller arrives (the portal room, or the room asked if it exists).
    pub room: &'a str,
    /// Someone with the traveller's user id is already in this world.
    pub occupied: bool,
}

/// The destination side: every travel into this world it still remembers.
#[derive(Debug, Clone)]
pub struct Arrivals {
    world: String,
    records: BTreeMap<String, Arrival>,
    /// Most rows one peer may have here that are not an arrival (held offers, and
    /// called-off travels kept against late copies): a hostile peer's flood of distinct
    /// offers or aborts stops there instead of growing the table and the store.
    pending_max: usize,
}

impl Arrivals {
    pub fn new(world: &str, pending_max: usize) -> Arrivals {
        Arrivals {
            world: world.to_string(),
            records: BTreeMap::new(),
            pending_max: pending_max.max(1),
        }
    }

    /// Rows from `from` that are not an arrival.
    fn pending_from(&self, from: &str) -> usize {
        self.records
            .values()
            .filter(|a| a.from == from && !matches!(a.stay, Stay::Arrived { .. }))
            .count()
    }

    pub fn restore(&mut self, rows: Vec<Arrival>) {
        for a in rows {
            self.records.insert(a.travel_id.clone(), a);
        }
    }

    /// At start: place again everyone who arrived (the placement may not have been
    /// stored); `Held` travels wait for the origin's `commit` or `abort`.
    pub fn recover(&self) -> Vec<Landing> {
        self.records
            .values()
            .filter_map(|a| match &a.stay {
                Stay::Arrived { offer, room } => Some(Landing::Place {
                    offer: offer.clone(),
                    room: room.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    pub fn get(&self, travel_id: &str) -> Option<&Arrival> {
        self.records.get(travel_id)
    }

    /// A travel message from the authenticated peer `from` (its signature already
    /// checked).
    pub fn on_msg(
        &mut self,
        from: &str,
        msg: &TravelMsg,
        here: Here<'_>,
        now_ms: u64,
    ) -> Vec<Landing> {
        let id = msg.travel_id().to_string();
        let refused = |code: &'static str, reason: String| {
            Landing::Reply(TravelReply::Refused {
                travel_id: id.clone(),
                reason,
                code: Some(code.to_string()),
            })
        };
        // Travel ids begin with their origin's world id: a peer speaks only for its own
        // travels (an `abort` carries nothing else to check it by).
        if origin_of(&id) != Some(from) {
            return vec![refused(
                NOT_YOURS,
                format!("travel {id} is not one of {from}'s"),
            )];
        }
        if let TravelMsg::Offer(o) | TravelMsg::Commit(o) = msg {
            if let Err(e) = o.check() {
                return vec![refused(BAD_TRAVEL, e.to_string())];
            }
            if o.from != from || o.to != self.world {
                return vec![refused(
                    BAD_TRAVEL,
                    format!(
                        "this is world {}, and the travel is from {} to {}",
                        self.world, o.from, o.to
                    ),
                )];
            }
        }
        let held = self
            .records
            .get(&id)
            .filter(|a| a.from == from)
            .map(|a| &a.stay);
        match (msg, held) {
            (TravelMsg::Offer(_), Some(Stay::Held { .. } | Stay::Arrived { .. })) => {
                vec![Landing::Reply(TravelReply::Accepted {
                    travel_id: id,
                    duplicate: true,
                })]
            }
            (TravelMsg::Offer(_), Some(Stay::CalledOff)) => {
                vec![refused(CALLED_OFF, "this travel was called off".into())]
            }
            (TravelMsg::Offer(o), None) => {
                if self.pending_from(from) >= self.pending_max {
                    return vec![refused(
                        TOO_MANY_TRAVELS,
                        format!(
                            "{from} already has {} travels waiting here; \
                             commit or abort them first",
                            self.pending_max
                        ),
                    )];
                }
                if here.occupied {
                    let row = self.save(&id, from, Stay::CalledOff, now_ms);
                    return vec![
                        Landing::Save(row),
                        refused(
                            ALREADY_HERE,
                            format!("{} is already in {}", o.user_id, self.world),
                        ),
                    ];
                }
                let stay = Stay::Held {
                    offer: o.clone(),
                    room: here.room.to_string(),
                };
                let row = self.save(&id, from, stay, now_ms);
                vec![
                    Landing::Save(row),
                    Landing::Reply(TravelReply::Accepted {
                        travel_id: id,
                        duplicate: false,
                    }),
                ]
            }
            (TravelMsg::Commit(_), Some(Stay::Arrived { .. })) => {
                vec![Landing::Reply(TravelReply::Done { travel_id: id })]
            }
            (TravelMsg::Commit(_), Some(Stay::Held { offer, room })) => {
                // Someone of that id came here since the offer: the origin keeps
                // repeating its commit, and the traveller arrives once they are gone.
                if here.occupied {
                    return vec![refused(
                        ALREADY_HERE,
                        format!("{} is already in {}", offer.user_id, self.world),
                    )];
                }
                // The origin has decided and the character has left it: take in the
                // character *as offered* (what the commit carries besides is not read).
                let (offer, room) = (offer.clone(), room.clone());
                let stay = Stay::Arrived {
                    offer: offer.clone(),
                    room: room.clone(),
                };
                let row = self.save(&id, from, stay, now_ms);
                vec![
                    Landing::Save(row),
                    Landing::Place { offer, room },
                    Landing::Reply(TravelReply::Done { travel_id: id }),
                ]
            }
            (TravelMsg::Commit(_), None | Some(Stay::CalledOff)) => {
                // No promise was made for this travel from this peer: a commit alone
                // moves nobody.
                vec![refused(
                    NO_OFFER,
                    format!("travel {id}: no offer from {from} is held here"),
                )]
            }
            (TravelMsg::Abort { .. }, Some(Stay::Arrived { .. })) => {
                // Cannot happen: the origin aborts only before it departs, and we place
                // only on its commit. Keep the character (never lose one) and say so.
                log::warn!("travel {id}: abort from {from} after the character arrived");
                vec![refused(ARRIVED, "the character has already arrived".into())]
            }
            (TravelMsg::Abort { .. }, Some(Stay::CalledOff)) => {
                vec![Landing::Reply(TravelReply::Done { travel_id: id })]
            }
            (TravelMsg::Abort { .. }, None) if self.pending_from(from) >= self.pending_max => {
                // Nothing was promised; past the cap no row is kept against a late
                // copy of the offer (which would find the cap anyway).
                vec![Landing::Reply(TravelReply::Done { travel_id: id })]
            }
            (TravelMsg::Abort { .. }, _) => {
                let row = self.save(&id, from, Stay::CalledOff, now_ms);
                vec![
                    Landing::Save(row),
                    Landing::Reply(TravelReply::Done { travel_id: id }),
                ]
            }
        }
    }

    fn save(&mut self, id: &str, from: &str, stay: Stay, now_ms: u64) -> Arrival {
        let row = Arrival {
            travel_id: id.to_string(),
            from: from.to_string(),
            at_ms: now_ms,
            stay,
        };
        self.records.insert(id.to_string(), row.clone());
        row
    }

    /// Forget settled travels (arrived or called off) older than `keep_ms`: by then the
    /// origin has long had its `done` and no copy of its messages is still travelling.
    /// `Held` rows stay until the origin decides.
    pub fn expire(&mut self, now_ms: u64, keep_ms: u64) -> Vec<Landing> {
        let old: Vec<String> = self
            .records
            .values()
            .filter(|a| !matches!(a.stay, Stay::Held { .. }))
            .filter(|a| now_ms.saturating_sub(a.at_ms) > keep_ms)
            .map(|a| a.travel_id.clone())
            .collect();
        old.into_iter()
            .map(|id| {
                self.records.remove(&id);
                Landing::Forget(id)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
