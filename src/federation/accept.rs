//! Trust between worlds: what this world believes of what a peer sends, one message at
//! a time, and what it signs itself.
//!
//! A peer's pair token says who is *speaking*; it says nothing about the world an event
//! claims to come from. So each event, trust entry, presence report and travel message
//! is judged here against the configuration ([`Origins`]: the peers, `[[federation.worlds]]`
//! and their public keys) and the receiver's clock, and refused with a stable
//! [`Reason`]. The rules, in the order they are applied to a federated event that the
//! peer `from` sent:
//!
//! 1. its origin is this world: `own_origin`;
//! 2. its origin is neither a peer nor a configured world: `unknown_origin` (so the
//!    origins held stay bounded by the configuration);
//! 3. relayed (origin ≠ `from`) by a peer that has no `public_key` here, or from an
//!    origin that has none: `not_relayable` (nothing could tell a forgery apart);
//! 4. malformed (fields, kind): `malformed`;
//! 5. its origin has a `public_key` and the event's `sig` is missing or does not verify
//!    over its canonical encoding: `bad_signature`;
//! 6. its `timestamp`, or a trust change's `updated_at`, lies more than
//!    `federation.max_clock_skew_s` ahead of this clock: `clock_skew` (old is fine);
//! 7. a trust score outside [-1.0, 1.0]: `bad_score`.
//!
//! (`too_far_ahead`, an event more than [`super::wire::AHEAD_MAX`] past what is held of
//! its origin, is judged by the merge, which knows the log.) A refused event is not
//! recorded as seen: the genuine one still arrives later.
//!
//! Refusals are tallied per peer and reason ([`Tally`]): `/metrics` shows the counts,
//! the log says each peer's reason at most once a minute.

use super::sign::{PublicKey, SignError, WorldKey, PRESENCE_CONTEXT, TRAVEL_CONTEXT};
use super::wire::{FedEvent, Kind, TravelMsg, TrustChange, TrustEntry, WorldPresence};
use crate::world::time::parse_rfc3339;
use serde_json::Value;
use std::collections::BTreeMap;

/// Why a message from a peer was refused. The names are stable: they are `/metrics`
/// labels and the keys of the sync answer's `refused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    OwnOrigin,
    UnknownOrigin,
    BadSignature,
    NotRelayable,
    ClockSkew,
    BadScore,
    Malformed,
    TooFarAhead,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::OwnOrigin,
        Reason::UnknownOrigin,
        Reason::BadSignature,
        Reason::NotRelayable,
        Reason::ClockSkew,
        Reason::BadScore,
        Reason::Malformed,
        Reason::TooFarAhead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::OwnOrigin => "own_origin",
            Reason::UnknownOrigin => "unknown_origin",
            Reason::BadSignature => "bad_signature",
            Reason::NotRelayable => "not_relayable",
            Reason::ClockSkew => "clock_skew",
            Reason::BadScore => "bad_score",
            Reason::Malformed => "malformed",
            Reason::TooFarAhead => "too_far_ahead",
        }
    }
}

/// The stable name of a reason given as text (a [`Reason`] or a travel refusal code),
/// or `None` for a name this bridge does not count.
pub fn reason_name(name: &str) -> Option<&'static str> {
    Reason::ALL
        .iter()
        .map(|r| r.as_str())
        .chain(super::travel::REFUSAL_CODES)
        .find(|n| *n == name)
}

/// A refusal: the stable reason and the sentence for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub why: String,
}

fn refuse<T>(reason: Reason, why: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        reason,
        why: why.into(),
    })
}

/// One world whose events may be held here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    key: Option<PublicKey>,
    /// A direct peer (else a `[[federation.worlds]]` entry).
    peer: bool,
}

/// The worlds this world knows, their keys, and the clock bound: everything the rules
/// above need.
#[derive(Debug, Clone)]
pub struct Origins {
    world: String,
    known: BTreeMap<String, Origin>,
    max_skew_ms: u64,
}

impl Origins {
    /// `peers` and `worlds` are the configured ones, already checked for ids and
    /// duplicates by the caller.
    pub fn new(
        world: &str,
        peers: &[(String, Option<PublicKey>)],
        worlds: &[(String, PublicKey)],
        max_skew_ms: u64,
    ) -> Origins {
        let mut known = BTreeMap::new();
        for (w, key) in peers {
            known.insert(
                w.clone(),
                Origin {
                    key: *key,
                    peer: true,
                },
            );
        }
        for (w, key) in worlds {
            known.insert(
                w.clone(),
                Origin {
                    key: Some(*key),
                    peer: false,
                },
            );
        }
        Origins {
            world: world.to_string(),
            known,
            max_skew_ms,
        }
    }

    /// Whether events of `origin` may be held here (this world's own included).
    pub fn holds(&self, origin: &str) -> bool {
        origin == self.world || self.known.contains_key(origin)
    }

    /// Whether events of `origin` may be served to other worlds: this world's own, and
    /// those of a world whose key is configured (they carry a signature a receiver can
    /// check). A keyless peer's events stay here.
    pub fn relayable(&self, origin: &str) -> bool {
        origin == self.world || self.key(origin).is_some()
    }

    pub fn key(&self, origin: &str) -> Option<&PublicKey> {
        self.known.get(origin).and_then(|o| o.key.as_ref())
    }

    /// The configured peers with no `public_key`.
    pub fn keyless_peers(&self) -> impl Iterator<Item = &str> {
        self.known
            .iter()
            .filter(|(_, o)| o.peer && o.key.is_none())
            .map(|(w, _)| w.as_str())
    }

    /// Rules 1–3: may `from` give us something of `origin` at all?
    fn origin(&self, from: &str, origin: &str) -> Result<Option<&PublicKey>, Refusal> {
        if origin == self.world {
            return refuse(
                Reason::OwnOrigin,
                format!("events of {origin} come only from {origin} itself"),
            );
        }
        let Some(o) = self.known.get(origin) else {
            return refuse(
                Reason::UnknownOrigin,
                format!("{origin} is neither a peer nor in [[federation.worlds]] here"),
            );
        };
        if origin != from {
            if self.key(from).is_none() {
                return refuse(
                    Reason::NotRelayable,
                    format!("{from} has no public_key here: only its own events are taken from it"),
                );
            }
            if o.key.is_none() {
                return refuse(
                    Reason::NotRelayable,
                    format!("{origin} has no public_key here: its events are taken only from it"),
                );
            }
        }
        Ok(o.key.as_ref())
    }

    /// Whether `at_ms` lies too far ahead of `now_ms`.
    fn ahead(&self, what: &str, at_ms: u64, now_ms: u64) -> Result<(), Refusal> {
        if at_ms > now_ms.saturating_add(self.max_skew_ms) {
            return refuse(
                Reason::ClockSkew,
                format!(
                    "{what} lies {} s ahead of this clock (at most {} s allowed)",
                    (at_ms - now_ms) / 1000,
                    self.max_skew_ms / 1000
                ),
            );
        }
        Ok(())
    }

    /// A federated event the peer `from` sent.
    pub fn event(&self, from: &str, ev: &FedEvent, now_ms: u64) -> Result<(), Refusal> {
        let key = self.origin(from, &ev.origin)?;
        ev.check().map_err(|e| Refusal {
            reason: Reason::Malformed,
            why: e.to_string(),
        })?;
        if let Some(key) = key {
            verify_event(key, ev)?;
        }
        // `check` has parsed the timestamp.
        self.ahead(
            "timestamp",
            parse_rfc3339(&ev.timestamp).unwrap_or(0),
            now_ms,
        )?;
        if ev.kind == Kind::Trust {
            let c = TrustChange::from_event(ev).map_err(|e| Refusal {
                reason: Reason::Malformed,
                why: e.to_string(),
            })?;
            self.change(&c, now_ms)?;
        }
        Ok(())
    }

    /// A trust change's bounds: rules 6 and 7.
    fn change(&self, c: &TrustChange, now_ms: u64) -> Result<(), Refusal> {
        self.ahead("updated_at", c.updated_at, now_ms)?;
        if !(-1.0..=1.0).contains(&c.score) {
            return refuse(
                Reason::BadScore,
                format!("score {} of {} is outside [-1.0, 1.0]", c.score, c.subject),
            );
        }
        Ok(())
    }

    /// A trust entry (a snapshot's `trust`, or one a traveller brings) that `from`
    /// sent: judged as the `trust` event it was made from.
    pub fn trust_entry(&self, from: &str, t: &TrustEntry, now_ms: u64) -> Result<(), Refusal> {
        if let Some(ev) = t.as_event() {
            return self.event(from, &ev, now_ms);
        }
        // No timestamp: an entry without its event, from an origin that cannot sign.
        if self.origin(from, &t.origin)?.is_some() {
            return refuse(
                Reason::BadSignature,
                format!(
                    "the trust entry {}/{} carries no signature",
                    t.origin, t.seq
                ),
            );
        }
        t.check().map_err(|e| Refusal {
            reason: Reason::Malformed,
            why: e.to_string(),
        })?;
        self.change(
            &TrustChange {
                subject: t.subject.clone(),
                score: t.score,
                updated_at: t.updated_at,
            },
            now_ms,
        )
    }

    /// The presence report of the peer `from` (its own characters; never relayed).
    pub fn presence(&self, from: &str, p: &WorldPresence, now_ms: u64) -> Result<(), Refusal> {
        if let Some(key) = self.key(from) {
            key.verify_in(PRESENCE_CONTEXT, &presence_value(from, p))
                .map_err(|e| Refusal {
                    reason: Reason::BadSignature,
                    why: format!("presence: {e}"),
                })?;
        }
        self.ahead("presence epoch", p.epoch, now_ms)
    }

    /// A travel message from the peer `from`, as received (`sig` and all).
    pub fn travel(&self, from: &str, raw: &Value) -> Result<(), Refusal> {
        match self.key(from) {
            Some(key) => key.verify_in(TRAVEL_CONTEXT, raw).map_err(|e| Refusal {
                reason: Reason::BadSignature,
                why: format!("travel: {e}"),
            }),
            None => Ok(()),
        }
    }
}

fn bad_signature(e: SignError) -> Refusal {
    Refusal {
        reason: Reason::BadSignature,
        why: e.to_string(),
    }
}

/// An event as it is signed: its JSON members, `sig` set aside by the signer.
fn event_value(ev: &FedEvent) -> Result<Value, Refusal> {
    serde_json::to_value(ev).map_err(|e| Refusal {
        reason: Reason::Malformed,
        why: e.to_string(),
    })
}

/// Check a federated event's `sig` against its origin's key.
pub fn verify_event(key: &PublicKey, ev: &FedEvent) -> Result<(), Refusal> {
    key.verify(&event_value(ev)?).map_err(bad_signature)
}

/// What a presence report's signature covers: the report with the world it is of.
fn presence_value(world: &str, p: &WorldPresence) -> Value {
    let mut v = serde_json::to_value(p).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("world".into(), Value::String(world.to_string()));
    }
    v
}

/// Take the `sig` a signer set on `v`.
fn take_sig(mut v: Value) -> Option<String> {
    match v.get_mut(super::sign::SIG_FIELD).map(Value::take) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// Sign one of this world's events (any `sig` it had is replaced).
pub fn sign_event(key: &WorldKey, ev: &mut FedEvent) -> Result<(), SignError> {
    ev.sig = None;
    let mut v = serde_json::to_value(&*ev).map_err(|e| SignError::NotCanonical(e.to_string()))?;
    key.sign(&mut v)?;
    ev.sig = take_sig(v);
    Ok(())
}

/// Sign this world's presence report.
pub fn sign_presence(key: &WorldKey, world: &str, p: &mut WorldPresence) -> Result<(), SignError> {
    p.sig = None;
    let mut v = presence_value(world, p);
    key.sign_in(PRESENCE_CONTEXT, &mut v)?;
    p.sig = take_sig(v);
    Ok(())
}

/// Sign a travel message as it is sent.
pub fn sign_travel(key: &WorldKey, msg: &mut TravelMsg) -> Result<(), SignError> {
    *msg.sig_mut() = None;
    let mut v = serde_json::to_value(&*msg).map_err(|e| SignError::NotCanonical(e.to_string()))?;
    key.sign_in(TRAVEL_CONTEXT, &mut v)?;
    *msg.sig_mut() = take_sig(v);
    Ok(())
}

/// How long one peer's refusals for one reason stay out of the log after a line.
pub const LOG_EVERY_MS: u64 = 60_000;

/// Refusals counted per peer and reason since start, and when each was last logged.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    counts: BTreeMap<(String, &'static str), u64>,
    logged: BTreeMap<(String, &'static str), u64>,
}

impl Tally {
    /// Count `n` refusals of `peer` for `reason`; true when a log line is due (the first,
    /// then at most one a minute per peer and reason).
    pub fn note(&mut self, peer: &str, reason: &'static str, n: u64, now_ms: u64) -> bool {
        let k = (peer.to_string(), reason);
        *self.counts.entry(k.clone()).or_default() += n;
        let due = self
            .logged
            .get(&k)
            .is_none_or(|t| now_ms.saturating_sub(*t) >= LOG_EVERY_MS);
        if due {
            self.logged.insert(k, now_ms);
        }
        due
    }

    /// Every `(peer, reason, count)`, in order.
    pub fn counts(&self) -> impl Iterator<Item = (&str, &'static str, u64)> {
        self.counts.iter().map(|((p, r), n)| (p.as_str(), *r, *n))
    }

    pub fn count(&self, peer: &str, reason: &str) -> u64 {
        self.counts()
            .filter(|(p, r, _)| *p == peer && *r == reason)
            .map(|(_, _, n)| n)
            .sum()
    }
}

#[cfg(test)]
mod tests;
