//! What the hub reports about itself: `GET /bridge/health`, `/bridge/sessions`,
//! `/bridge/rooms`, `/bridge/stats` as JSON documents and `/metrics` as Prometheus text.
//! The HTTP door only serves them.

use crate::app::App;
use crate::conn::ConnId;
use crate::world::time::rfc3339;
use serde::Serialize;
use serde_json::{json, Value};

/// `GET /metrics`: every counter, gauge and histogram, as Prometheus text.
pub fn metrics_text(app: &App, now: u64) -> String {
    let mut text = app.metrics.render(&app.gauges());
    app.links.render_metrics(&mut text);
    app.render_ws_metrics(&mut text);
    app.render_fed_metrics(now, &mut text);
    if let Some(s) = &app.store {
        s.render_metrics(app.held.len(), &mut text);
    }
    app.render_cluster_metrics(&mut text);
    text
}

/// `GET /bridge/health`'s answer.
#[derive(Serialize)]
pub struct Health<'a> {
    status: &'a str,
    active_sessions: usize,
    timestamp: String,
    world: &'a str,
    agent: &'a str,
    version: &'a str,
    uptime_s: u64,
    links: Vec<Value>,
    peers: Vec<Value>,
    inbox: Value,
    public_key: String,
    /// Why the status is `degraded` (cluster mode: Redis does not answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// Cluster mode: this node, whether Redis answers, the log's epoch and last seq.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<Value>,
}

/// Every game link: the configured dials (up, connecting or down, with their history)
/// and the links that connected to us.
fn links_json(app: &App) -> Vec<Value> {
    let mut out: Vec<Value> = app
        .links
        .dials
        .iter()
        .map(|d| {
            json!({
                "world": d.cfg.world,
                "kind": d.cfg.kind,
                "direction": "dial",
                "addr": d.cfg.addr.to_string(),
                "state": d.status.as_str(),
                "since": rfc3339(d.since_ms),
                "reconnects": d.reconnects,
                "attempts": d.attempts,
                "last_error": d.last_error,
            })
        })
        .collect();
    let mut inbound: Vec<(&ConnId, &crate::app::links::Link)> =
        app.links.iter().filter(|(_, l)| l.dial.is_none()).collect();
    inbound.sort_by_key(|(_, l)| l.since_ms);
    out.extend(inbound.into_iter().map(|(_, l)| {
        json!({
            "world": l.world,
            "kind": l.kind,
            "direction": "inbound",
            "peer": l.peer.to_string(),
            "state": if l.greeted { "up" } else { "anonymous" },
            "since": rfc3339(l.since_ms),
            "rooms": l.rooms.len(),
        })
    }));
    out
}

/// `GET /bridge/health`: alive, the world, the agent backend, links, peers, the inbox,
/// this world's public key.
pub fn health(app: &App, now: u64) -> Health<'_> {
    let (cluster, reason) = match app.cluster_health() {
        Some((c, reason)) => (Some(c), reason),
        None => (None, None),
    };
    let status = match (app.shutting_down, &reason) {
        (true, _) => "stopping",
        (false, Some(_)) => "degraded",
        (false, None) => "ok",
    };
    Health {
        status,
        reason,
        cluster,
        active_sessions: app.world.sessions.len(),
        timestamp: rfc3339(now),
        world: &app.world.id,
        agent: &app.cfg.agent.backend,
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: app.started.elapsed().as_secs(),
        links: links_json(app),
        peers: app.peers_health(now),
        public_key: app.world_key.public().to_string(),
        inbox: match &app.inbox_trouble {
            None => json!({"status": "ok"}),
            Some((why, since)) => {
                json!({"status": "unavailable", "error": why, "since": rfc3339(*since)})
            }
        },
    }
}

/// `GET /bridge/sessions`.
pub fn sessions(app: &App) -> Value {
    sessions_json(app.world.sessions.list())
}

/// The sessions' list as `GET /bridge/sessions` answers it (most recently active first).
pub fn sessions_json(list: Vec<&crate::world::session::Session>) -> Value {
    let list: Vec<Value> = list
        .into_iter()
        .map(|s| {
            json!({
                "user": s.username,
                "user_id": s.user_id,
                "room": s.room,
                "messages": s.messages,
                "last_active": rfc3339(s.last_active_ms),
                "created": rfc3339(s.created_ms),
                "crisis": s.crisis,
            })
        })
        .collect();
    json!({ "sessions": list })
}

/// `GET /bridge/rooms`.
pub fn rooms(app: &App) -> Value {
    let list: Vec<Value> = app
        .world
        .rooms()
        .map(|r| {
            json!({
                "name": r.spec.name,
                "occupants": app.world.occupant_count(&r.spec.name),
                "exits": r.spec.exits,
                "events": r.events.len(),
            })
        })
        .collect();
    json!({ "rooms": list })
}

/// `GET /bridge/stats`: counters and gauges as JSON.
pub fn stats(app: &App) -> Value {
    let g = app.gauges();
    let m = &app.metrics;
    json!({
            "world": app.world.id,
            "uptime_s": g.uptime_s,
            "connections": {
                "open": g.connections_open,
                "accepted": m.connections_accepted,
                "rejected": m.connections_rejected,
                "closed": m.connections_closed,
            },
            "requests": {"total": m.requests_total, "client_errors": m.bad_requests, "rate_limited": m.rate_limited},
            "agent": {
                "backend": app.cfg.agent.backend,
                "workers": app.pool.as_ref().map_or(0, |p| p.workers()),
                "queue_depth": g.agent_queue_depth,
                "in_flight": g.agent_in_flight,
                "waiting": app.calls.waiting(),
                "calls": m.agent_calls,
                "latency_avg_ms": if m.agent_latency.count > 0 { m.agent_latency.sum_s * 1000.0 / m.agent_latency.count as f64 } else { 0.0 },
            },
            "sessions": g.sessions_active,
            "rooms": g.rooms,
            "events_seq": g.events_seq,
            "crisis_detections": m.crisis_total(),
            "websocket": {
                "gateway_connections": app.gateway.connections(),
                "gateway_agents": app.gateway.agents().len(),
                "gateway_seq": app.gateway.seq(),
                "workshop_connections": app.workshop.connections(),
                "workshop_visitors": app.workshop.visitors(),
                "slow_consumers": m.ws_slow_consumers,
                "broadcast_log": m.ws_broadcast_log,
            },
            "store": store_stats(app),
    })
}

/// The store's counters: batches (one per loop iteration with changes) against
/// transactions shows how much group commit gathers.
fn store_stats(app: &App) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    match &app.store {
        None => json!({"durable": false}),
        Some(s) => json!({
            "durable": true,
            "path": s.path.display().to_string(),
            "batches": s.stats.batches.load(Relaxed),
            "rows": s.stats.rows.load(Relaxed),
            "transactions": s.stats.transactions.load(Relaxed),
            "failures": s.stats.failures.load(Relaxed),
            "write_us": s.stats.write_us.load(Relaxed),
            "commit_us": s.stats.commit_us.load(Relaxed),
            "waiting_answers": app.held.len(),
            "error": app.store_error,
        }),
    }
}
