//! Federation in cluster mode: one node of the world runs it, with its state in Redis.
//!
//! Every node may be asked for federation, but one at a time runs it: the node holding
//! the lease `fed:leader` in Redis (taken by the first node to ask, renewed with its
//! liveness beat, taken over by another within `cluster.node_ttl_s` of its death). That
//! node pulls from and pushes to the peers, answers `GET /bridge/state`, `POST
//! /bridge/sync`, `POST /bridge/travel` and `POST /bridge/trust`, and writes what a
//! single process writes to its SQLite `fed_*` tables into Redis, inside its appends
//! ([`crate::store::cluster::fed`]), fenced by the lease: a node that lost it can no
//! longer write. The other nodes answer those routes `503 not_leader`, naming the node
//! that runs federation (`GET /bridge/federation/leader` answers 200 only there, for a
//! load balancer's health check). Peers need no change.
//!
//! What a peer sends reaches every node through the log, as on one process: the
//! running node shows a remote `say` in its room, and that event is in the log like any
//! other. The world's own events that federate (a `say` in a portal room, a world event
//! of scope federation) are events of the log too, whichever node they were made on; the
//! running node gives each its federated seq as it applies it, and stores with those
//! rows the log entry it has federated through (`fed:at`). A node that takes over reads
//! the stored state, then federates the own events past `fed:at` itself: every node
//! keeps the last `federation.events_keep` of them as it applies the log. So every own
//! event is federated once, with seqs 1, 2, 3… with no holes, across a change of node.
//!
//! Travel's exactly-once carries over the same way: departures and arrivals are rows of
//! the running node, written only under its lease; the node that takes over settles
//! every stored travel as a restarted single process does.

use crate::app::calls::ReplyTo;
use crate::app::forward::Msg;
use crate::app::outcome::Refusal;
use crate::app::peering::Peering;
use crate::app::App;
use crate::federation::merge::Pruned;
use crate::federation::portal::Scope;
use crate::federation::TRAVEL_TIMEOUT_MIN_MS;
use crate::store::cluster::fed::{FedOp, FedState};
use crate::store::Row;
use crate::world::room::Event;
use serde::de::DeserializeOwned;
use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

/// What this node knows of federation in its cluster.
#[derive(Debug, Default)]
pub struct FedRole {
    /// The node running federation, as Redis last said.
    pub leader: Option<String>,
    /// This node runs federation (it holds the lease and has loaded the stored state).
    pub running: bool,
    /// Own events of log entries up to this one were federated before this node took
    /// over (it federates those after it).
    through: u64,
    /// The last own events that federate, as applied here (log seq, event, in a portal
    /// room, scope): what a node taking over federates past the stored `fed:at`.
    outgoing: VecDeque<(u64, Event, bool, Scope)>,
    /// Proposals that carry federation's rows, not yet appended.
    batches: BTreeSet<u64>,
}

/// One stored row as read back, or `None` (and a warning) when it does not read.
fn parse<T: DeserializeOwned>(what: &str, json: &str) -> Option<T> {
    match serde_json::from_str(json) {
        Ok(v) => Some(v),
        Err(e) => {
            log::warn!("cluster: a stored federation {what} does not read: {e}");
            None
        }
    }
}

/// Stored rows as read back (those that do not read are warned about and left out).
pub fn parse_all<T: DeserializeOwned>(what: &str, rows: &[String]) -> Vec<T> {
    rows.iter().filter_map(|j| parse(what, j)).collect()
}

/// A row's JSON as stored.
fn json<T: serde::Serialize>(row: &T) -> String {
    serde_json::to_string(row).unwrap_or_default()
}

/// A federation row as a write of Redis's copy (`None`: not federation's).
fn op_of(row: Row) -> Option<FedOp> {
    Some(match row {
        Row::FedEvent(e) => FedOp::new("ev", &e.origin, e.seq, json(&e)),
        Row::FedPruned(p) => FedOp::new("pr", &p.origin, p.upto, String::new()),
        Row::FedTrust(t) => FedOp::new("tr", &t.subject, 0, json(&t)),
        Row::FedDeparture(d) => FedOp::new("dp", &d.offer.travel_id, 0, json(&d)),
        Row::FedDepartureGone(id) => FedOp::new("dg", &id, 0, String::new()),
        Row::FedArrival(a) => FedOp::new("ar", &a.travel_id, 0, json(&a)),
        Row::FedArrivalGone(id) => FedOp::new("ag", &id, 0, String::new()),
        _ => return None,
    })
}

/// An export document's federation state as writes of Redis's copy.
pub fn fed_ops_of(state: &crate::store::Stored) -> Vec<FedOp> {
    let rows = (state.fed_pruned.iter().cloned().map(Row::FedPruned))
        .chain(state.fed_events.iter().cloned().map(Row::FedEvent))
        .chain(state.fed_trust.iter().cloned().map(Row::FedTrust))
        .chain(state.fed_departures.iter().cloned().map(Row::FedDeparture))
        .chain(state.fed_arrivals.iter().cloned().map(Row::FedArrival));
    rows.filter_map(op_of).collect()
}

impl App {
    /// Whether this node runs federation, and the log entry up to which own events were
    /// federated before it took over. A single process always runs it.
    pub(crate) fn fed_running(&self) -> (bool, u64) {
        match &self.cluster {
            None => (true, 0),
            Some(c) => (c.fed.running, c.fed.through),
        }
    }

    /// Whether federation's rows are written (to SQLite, or with the cluster's appends)
    /// rather than counted durable at once (`--memory`).
    pub(crate) fn fed_keeps_rows(&self) -> bool {
        self.store.is_some() || self.cluster.is_some()
    }

    /// A user's travel on a node that does not run federation goes to the node that
    /// does (`false`: none does now, or the request came from another node).
    pub(crate) fn travel_elsewhere(
        &mut self,
        user_id: &str,
        to_world: &str,
        reply_to: &ReplyTo,
    ) -> bool {
        let Some(leader) = (self.cluster.as_ref()).and_then(|c| c.fed.leader.clone()) else {
            return false;
        };
        // The travel is decided within this (then it is refused), and answered after.
        let interval = Duration::from_secs(self.cfg.federation.sync_interval_s);
        let decided = (2 * interval).max(Duration::from_millis(TRAVEL_TIMEOUT_MIN_MS));
        let (user, to) = (user_id.to_string(), to_world.to_string());
        let about = format!("the travel of {user_id} to {to_world}");
        let asked = self.ask_node(&leader, &about, decided, reply_to, |id, from| Msg::Travel {
            id,
            from,
            user_id: user,
            to_world: to,
        });
        asked.is_some()
    }

    /// The refusal of a federation, trust or travel request on a node of a cluster that
    /// does not run federation (`None`: go on).
    pub(crate) fn fed_refusal(&self) -> Option<Refusal> {
        let c = self.cluster.as_ref()?;
        if c.fed.running || self.fed.is_none() {
            return None;
        }
        let who = match &c.fed.leader {
            Some(n) if *n != c.node => format!("node {n} of this world runs federation"),
            _ => "no node of this world runs federation right now (one takes it over within \
                  cluster.node_ttl_s)"
                .to_string(),
        };
        Some(
            Refusal::new(
                "not_leader",
                format!(
                    "{who}: federation, trust and travel requests are answered there \
                     (GET /bridge/federation/leader answers 200 only on that node)"
                ),
            )
            .retry_after(1),
        )
    }

    /// `GET /bridge/federation/leader`: 200 on the node that runs federation.
    pub fn fed_leader(&self) -> Result<serde_json::Value, Refusal> {
        if self.fed.is_none() {
            return Err(Refusal::new(
                "federation_off",
                "this bridge has no [[federation.peers]]",
            ));
        }
        if let Some(r) = self.fed_refusal() {
            return Err(r);
        }
        let node = self.cluster.as_ref().map(|c| c.node.clone());
        Ok(serde_json::json!({"world": self.world.id, "node": node}))
    }

    /// Own events that federate, as this node applied them: kept for the day it takes
    /// over (the last `federation.events_keep`).
    pub(crate) fn remember_outgoing(&mut self, outgoing: Vec<(Event, bool, Scope)>) {
        let keep = self.cfg.federation.events_keep.max(1);
        let Some(c) = &mut self.cluster else {
            return;
        };
        for (ev, in_portal, scope) in outgoing {
            c.fed.outgoing.push_back((ev.seq, ev, in_portal, scope));
        }
        while c.fed.outgoing.len() > keep {
            c.fed.outgoing.pop_front();
        }
    }

    /// Federation's rows for proposal `batch`, as writes of Redis's copy, with the log
    /// entry federated through; nothing unless this node runs federation.
    pub(crate) fn take_fed_ops(&mut self, batch: u64) -> Vec<FedOp> {
        let (Some(c), Some(f)) = (&mut self.cluster, &mut self.fed) else {
            return Vec::new();
        };
        if !f.has_rows() {
            return Vec::new();
        }
        if !c.fed.running {
            // Left from before this node stopped running federation: the next one
            // starts from what Redis holds.
            f.take_rows(batch);
            return Vec::new();
        }
        let mut ops: Vec<FedOp> = f.take_rows(batch).into_iter().filter_map(op_of).collect();
        ops.push(FedOp::new("at", "", c.applied, String::new()));
        c.fed.batches.insert(batch);
        ops
    }

    /// Proposal `batch` is in Redis: its federation rows are durable.
    pub(crate) fn fed_appended(&mut self, batch: u64) {
        let Some(c) = &mut self.cluster else {
            return;
        };
        c.fed.batches.remove(&batch);
        if !c.fed.running {
            return;
        }
        if let Some(f) = &mut self.fed {
            f.durable(batch);
        }
        self.travel_durable(batch);
    }

    /// Proposals `batches` failed: if federation rows were among them, what this node
    /// holds of federation may not be what Redis holds; it starts again from Redis (the
    /// writer reloads it at its next beat, if this node still holds the lease).
    pub(crate) fn fed_failed(&mut self, batches: &[u64]) {
        let Some(c) = &mut self.cluster else {
            return;
        };
        if batches.iter().any(|b| c.fed.batches.contains(b)) && c.fed.running {
            log::warn!("cluster: federation's rows were not stored; reloading them from Redis");
            self.fed_stop();
        }
    }

    /// Who runs federation now; `state`: this node does, from this stored state.
    pub(crate) fn on_fed_news(&mut self, leader: Option<String>, state: Option<Box<FedState>>) {
        let Some(c) = &mut self.cluster else {
            return;
        };
        let mine = leader.as_deref() == Some(c.node.as_str());
        c.fed.leader = leader;
        match state {
            Some(s) => self.fed_take_over(*s),
            None if !mine && c.fed.running => {
                log::warn!("cluster: this node no longer runs federation");
                self.fed_stop();
            }
            None => {}
        }
    }

    /// A fresh federation state for this world, keeping the peers' threads.
    fn fresh_peering(&mut self) -> Option<Peering> {
        let now = crate::world::time::now_ms();
        let sync = self.fed.as_mut().and_then(|f| f.sync.take());
        let mut p = match Peering::new(&self.cfg.world, &self.cfg.federation, now) {
            Ok(Some(p)) => p,
            Ok(None) => return None,
            Err(e) => {
                log::error!("cluster: {e}");
                return None;
            }
        };
        p.core.set_key(self.world_key.clone());
        p.sync = sync;
        Some(p)
    }

    /// This node stops running federation: travellers waiting here are told to ask
    /// again, and what it held is dropped (Redis has what was stored).
    fn fed_stop(&mut self) {
        let waiting = (self.fed.as_mut())
            .map(|f| std::mem::take(&mut f.travel.waiting))
            .unwrap_or_default();
        if let Some(c) = &mut self.cluster {
            c.fed.running = false;
            c.fed.batches.clear();
        }
        let refusal = self.fed_refusal();
        for (_, (to, _)) in waiting {
            let r = refusal.clone().unwrap_or_else(|| {
                Refusal::new("not_leader", "federation moved to another node; ask again")
            });
            self.answer(to, Err(r));
        }
        self.fed = self.fresh_peering();
    }

    /// This node runs federation from now on: the stored state is loaded, the own
    /// events past `fed:at` are federated, and stored travels settled.
    fn fed_take_over(&mut self, state: FedState) {
        let Some(mut p) = self.fresh_peering() else {
            return;
        };
        let pruned = (state.pruned.into_iter()).map(|(origin, upto)| Pruned { origin, upto });
        p.restore(
            pruned.collect(),
            parse_all("event", &state.events),
            parse_all("trust entry", &state.trust),
            parse_all("departure", &state.departures),
            parse_all("arrival", &state.arrivals),
        );
        let Some(c) = &mut self.cluster else {
            return;
        };
        c.fed.running = true;
        c.fed.leader = Some(c.node.clone());
        c.fed.through = state.at.max(c.applied);
        let missed: Vec<(u64, Event, bool, Scope)> = (c.fed.outgoing.iter())
            .filter(|(seq, ..)| *seq > state.at)
            .cloned()
            .collect();
        let oldest = c.fed.outgoing.front().map(|(seq, ..)| *seq);
        if c.fed.outgoing.len() >= self.cfg.federation.events_keep
            && oldest.is_some_and(|o| o > state.at + 1)
        {
            log::warn!(
                "cluster: own events between log entries {} and {} may not have been federated \
                 (more than federation.events_keep since the last stored)",
                state.at,
                oldest.unwrap_or(0)
            );
        }
        for (_, ev, in_portal, scope) in &missed {
            p.record_local(ev, *in_portal, *scope, true);
        }
        log::info!(
            "cluster: running federation from log entry {} ({} own events federated now)",
            state.at,
            missed.len()
        );
        self.fed = Some(p);
        self.recover_travel();
    }
}
