//! The Matrix gateway hub (seed 004): who is connected as which agent, and where each
//! message goes. Socket-free: methods take a connection id, the text that arrived and
//! `now` (epoch ms), and push [`Output`]s (frames to connections, closes, pings) for the
//! transport to carry out.
//!
//! The contract:
//! - A connection's first message must be `agent_register` `{agentId, role}`; anything
//!   before gets an `error` frame and is not routed. The answer is `agent_registered`
//!   with the agents present. A second connection with the same `agentId` replaces the
//!   first, which is closed with a reason.
//! - Everyone else registered hears `agent_joined` / `agent_left`
//!   `{type, agentId, role, timestamp}`.
//! - Routing is pass-through: any message with a string `type` goes, unchanged but for the
//!   `gateway_seq` and `from` stamps, to the agent named by `target_id` (an unknown target
//!   is an `error` `unknown_target` to the sender), or else to every other registered
//!   client.
//! - Identity: `from` is the sender's registered agentId, written by the hub over any
//!   `from` the client sent; it is the one field a receiver can trust about who spoke.
//!   The types only the hub sends ([`HUB_TYPES`]) are refused from clients
//!   (`reserved_type`), and so is a client message whose `agentId` claims to be the
//!   bridge's own agent. Agent ids are compared by their look-alike key
//!   ([`crate::world::lookalike`]): a look-alike of the bridge's id is `reserved_agent_id`, a
//!   look-alike of a connected id that is not the same string is `agent_id_taken`.
//! - The bridge itself is the agent `gateway.agent_id` ("timmy"): messages for it come
//!   out as [`Output::ForAgent`], and it publishes `bark` `{text, agentId, room}` and the
//!   world's events (`presence`, `say`, `event`) under their own `type`.
//! - Every delivered frame carries `gateway_seq` and is kept in a bounded history
//!   (`gateway.history_max` frames, `gateway.history_max_age_s`): a client that reconnects
//!   with `?since=<gateway_seq>` gets what it missed, or `resync_required` when the
//!   history no longer reaches back that far.
//! - Cluster mode ([`logged`]): frames go through the world's shared log and are
//!   delivered from it on every node, numbered by it.

pub mod logged;

use super::heartbeat::{Flood, Flooding, Heartbeat};
use crate::conn::ConnId;
use crate::world::lookalike;
use crate::world::room::{Event, EventKind};
use crate::world::time::rfc3339;
use crate::world::NAME_MAX_BYTES;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, VecDeque};

/// A frame's text: a reference-counted UTF-8 string, so a broadcast is encoded once and
/// shared by every recipient's queue. It is the type the WebSocket layer writes.
pub type Frame = tungstenite::Utf8Bytes;

/// Close code for a connection taken over by a newer one with the same `agentId`.
/// 1000: nothing went wrong, and clients do not treat it as a reason to reconnect.
pub const CLOSE_REPLACED: u16 = 1000;
/// Close code for a connection that stopped answering pings (RFC 6455 §7.4.1: 1001,
/// the endpoint is going away).
pub const CLOSE_SILENT: u16 = 1001;
/// Close code for a connection that never registered.
pub const CLOSE_UNREGISTERED: u16 = 1008;

/// Most agents listed in an `agent_registered` (sorted by agentId; `agents_total` says
/// how many there are, `GET /api/gateway/status` lists all). Without a cap every
/// newcomer's answer grows with the crowd, and a crowd arriving costs n² bytes.
pub const REGISTERED_LIST_MAX: usize = 256;

/// Message types only the hub sends: refused from clients (`reserved_type`), so a client
/// cannot fake a join, a leave, a registration answer, a resync or an error.
pub const HUB_TYPES: [&str; 5] = [
    "agent_joined",
    "agent_left",
    "agent_registered",
    "resync_required",
    "error",
];

/// Message types that, broadcast, are also meant for the bridge's own agent.
const FOR_AGENT_BROADCAST: [&str; 2] = ["chat_message", "visitor_message"];

/// What the hub asks the transport to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Queue this text on this connection.
    Send(ConnId, Frame),
    /// Queue this text on every member (every registered client) but `except`: kept
    /// once in the loop's shared log, not once per client.
    Broadcast {
        except: Option<ConnId>,
        frame: Frame,
    },
    /// This connection registered: from here on it gets the broadcasts.
    Member(ConnId),
    /// Close with code and reason (the hub has already forgotten the connection).
    Close {
        conn: ConnId,
        code: u16,
        reason: String,
    },
    /// Send a WebSocket ping (the heartbeat).
    Ping(ConnId),
    /// A message addressed to the bridge's own agent (`target_id` = `gateway.agent_id`,
    /// or a broadcast `chat_message` / `visitor_message`).
    ForAgent {
        from: String,
        role: String,
        msg: Map<String, Value>,
    },
}

/// The hub's settings, from `Config` (`gateway.*`).
#[derive(Debug, Clone)]
pub struct GatewayLimits {
    pub agent_id: String,
    pub heartbeat_ms: u64,
    pub history_max: usize,
    pub history_max_age_ms: u64,
    /// Messages one connection may send per second.
    pub max_messages_per_s: u32,
    /// `gateway.agents`: ids bound to a token, with the role they register with ("" =
    /// the client's own). The index is what [`Gateway::connect_bound`] takes.
    pub bound: Vec<(String, String)>,
}

/// Totals since start, for `/api/gateway/status` and the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GatewayCounts {
    pub connections: u64,
    pub registrations: u64,
    pub replaced: u64,
    pub pruned: u64,
    pub routed: u64,
    pub delivered: u64,
    pub errors: u64,
    pub resyncs: u64,
}

#[derive(Debug, Clone)]
struct Registration {
    agent_id: String,
    role: String,
    /// The id's look-alike key.
    key: String,
}

#[derive(Debug)]
struct Client {
    connected_ms: u64,
    last_seen_ms: u64,
    /// `?since=` from the upgrade request: replay after registering.
    since: Option<u64>,
    /// `?epoch=` from the upgrade request (cluster mode): the log `since` belongs to.
    epoch: Option<String>,
    /// The `gateway.agents` entry whose token this connection presented.
    bound: Option<usize>,
    reg: Option<Registration>,
    messages_in: u64,
    /// Frames sent to it alone.
    messages_out: u64,
    /// The hub's broadcast count when it registered, and its own broadcasts since (it
    /// gets every other one: so its count is derived, not kept per broadcast).
    broadcasts_at: u64,
    own_broadcasts: u64,
    flood: Flood,
}

impl Client {
    fn messages_out(&self, broadcasts: u64) -> u64 {
        let shared = match self.reg {
            Some(_) => broadcasts - self.broadcasts_at - self.own_broadcasts,
            None => 0,
        };
        self.messages_out + shared
    }
}

/// One delivered frame, kept for resuming clients.
#[derive(Debug)]
struct Entry {
    seq: u64,
    ts_ms: u64,
    kept: Kept,
}

/// What a history entry holds: the frame, or the world event it is written from.
#[derive(Debug)]
enum Kept {
    Frame {
        /// The agent that sent it (the bridge's own id for its publications).
        from: String,
        /// `target_id`, for directed messages.
        target: Option<String>,
        frame: Frame,
    },
    /// A world event published while no client was registered (and outside cluster
    /// mode, with no store keeping the history): nobody reads its frame unless a client
    /// resumes, so it is written then ([`event_frame`]), byte for byte the frame it
    /// would have had. Every say, move and chat makes such events.
    Event(PackedEvent),
}

/// A world event's text in one allocation: the history holds a thousand of them, and
/// freeing one long-lived block is much cheaper than freeing seven.
#[derive(Debug)]
struct PackedEvent {
    kind: EventKind,
    seq: u64,
    /// `event`, `user_id`, `username`, `room`, `message`, `timestamp`, `origin`, one
    /// after the other; `ends[i]` is where the i-th ends.
    text: Box<str>,
    ends: [usize; 7],
    has_message: bool,
}

impl PackedEvent {
    fn pack(ev: &Event) -> PackedEvent {
        let parts = [
            ev.event.as_str(),
            &ev.user_id,
            &ev.username,
            &ev.room,
            ev.message.as_deref().unwrap_or_default(),
            &ev.timestamp,
            &ev.origin,
        ];
        let mut text = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut ends = [0; 7];
        for (end, part) in ends.iter_mut().zip(parts) {
            text.push_str(part);
            *end = text.len();
        }
        PackedEvent {
            kind: ev.kind,
            seq: ev.seq,
            text: text.into_boxed_str(),
            ends,
            has_message: ev.message.is_some(),
        }
    }

    fn part(&self, i: usize) -> String {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.text[start..self.ends[i]].to_string()
    }

    fn unpack(&self) -> Event {
        Event {
            kind: self.kind,
            event: self.part(0),
            user_id: self.part(1),
            username: self.part(2),
            room: self.part(3),
            message: self.has_message.then(|| self.part(4)),
            timestamp: self.part(5),
            seq: self.seq,
            origin: self.part(6),
            // Not part of a frame.
            ts_ms: 0,
        }
    }
}

/// The gateway frame of a world event: its fields under their own `type`, the world's
/// sequence number as `event_seq`, the hub's as `gateway_seq`.
fn event_frame(ev: &Event, gateway_seq: u64, epoch: Option<&str>, from: &str) -> Option<Frame> {
    // Written straight from the event (no JSON tree on the way): every world event
    // passes here, so this is on the path of every say, move and chat.
    #[derive(serde::Serialize)]
    struct Published<'a> {
        #[serde(rename = "type")]
        kind: EventKind,
        event: &'a str,
        user_id: &'a str,
        username: &'a str,
        room: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<&'a str>,
        timestamp: &'a str,
        origin: &'a str,
        event_seq: u64,
        gateway_seq: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
        from: &'a str,
    }
    let mut text = Vec::with_capacity(256);
    serde_json::to_writer(
        &mut text,
        &Published {
            kind: ev.kind,
            event: &ev.event,
            user_id: &ev.user_id,
            username: &ev.username,
            room: &ev.room,
            message: ev.message.as_deref(),
            timestamp: &ev.timestamp,
            origin: &ev.origin,
            event_seq: ev.seq,
            gateway_seq,
            epoch,
            from,
        },
    )
    .ok()?;
    // serde_json writes UTF-8 only.
    String::from_utf8(text).ok().map(Frame::from)
}

impl Entry {
    /// Who sent it (`me`: the bridge's own agent id).
    fn from<'a>(&'a self, me: &'a str) -> &'a str {
        match &self.kept {
            Kept::Frame { from, .. } => from,
            Kept::Event(_) => me,
        }
    }

    fn target(&self) -> Option<&str> {
        match &self.kept {
            Kept::Frame { target, .. } => target.as_deref(),
            Kept::Event(_) => None,
        }
    }

    /// Its frame (an event's is written now).
    fn frame(&self, me: &str) -> Option<Frame> {
        match &self.kept {
            Kept::Frame { frame, .. } => Some(frame.clone()),
            Kept::Event(ev) => event_frame(&ev.unpack(), self.seq, None, me),
        }
    }
}

/// A history frame as the store keeps it (so a client can resume across a restart).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredFrame {
    pub seq: u64,
    pub ts_ms: u64,
    pub from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub frame: String,
}

/// The gateway hub.
#[derive(Debug)]
pub struct Gateway {
    limits: GatewayLimits,
    clients: HashMap<ConnId, Client>,
    /// Registered agents → their connection.
    agents: HashMap<String, ConnId>,
    /// Look-alike key of each registered agent → its exact id.
    keys: HashMap<String, String>,
    /// Look-alike key of the bridge's own agent id.
    reserved_key: String,
    /// Look-alike key of each bound id → its index in `limits.bound`.
    bound_keys: HashMap<String, usize>,
    seq: u64,
    /// Broadcasts so far.
    broadcasts: u64,
    history: VecDeque<Entry>,
    heartbeat: Heartbeat,
    started_ms: u64,
    pub counts: GatewayCounts,
    /// History frames not yet handed to the store (kept only while one persists it).
    unsaved: Vec<StoredFrame>,
    track: bool,
    /// Streamed barks about to be published from their room event: (room, text,
    /// reply_id), so the final `bark` carries its parts' `reply_id`.
    reply_ids: Vec<(String, String, u64)>,
    /// Cluster mode: frames go through the world's shared log ([`logged`]).
    logged: Option<logged::Logged>,
}

/// [`Gateway::stamp`] with a given number (and, in cluster mode, the log's epoch).
fn stamp_as(
    s: &str,
    msg: &mut Map<String, Value>,
    from: &str,
    seq: u64,
    epoch: Option<&str>,
) -> Frame {
    // A JSON object's first non-blank character is `{`.
    let open = s.find('{');
    match open {
        Some(at) if !msg.contains_key("gateway_seq") && !msg.contains_key("from") => {
            let rest = &s[at + 1..];
            let empty = rest.trim_start().starts_with('}');
            let from = Value::from(from).to_string();
            let mut stamped = String::with_capacity(s.len() + 32 + from.len());
            stamped.push('{');
            stamped.push_str("\"gateway_seq\":");
            stamped.push_str(&seq.to_string());
            if let Some(e) = epoch {
                stamped.push_str(",\"epoch\":");
                stamped.push_str(&Value::from(e).to_string());
            }
            stamped.push_str(",\"from\":");
            stamped.push_str(&from);
            if !empty {
                stamped.push(',');
            }
            stamped.push_str(rest);
            Frame::from(stamped)
        }
        _ => {
            msg.insert("gateway_seq".into(), seq.into());
            if let Some(e) = epoch {
                msg.insert("epoch".into(), e.into());
            }
            msg.insert("from".into(), from.into());
            Frame::from(Value::Object(msg.clone()).to_string())
        }
    }
}

/// `{"type":"error","code":…,"error":…}`.
pub fn error_frame(code: &str, error: &str) -> Frame {
    Frame::from(json!({"type": "error", "code": code, "error": error}).to_string())
}

impl Gateway {
    pub fn new(limits: GatewayLimits, now_ms: u64) -> Gateway {
        Gateway {
            heartbeat: Heartbeat::new(limits.heartbeat_ms, now_ms),
            clients: HashMap::new(),
            agents: HashMap::new(),
            keys: HashMap::new(),
            reserved_key: lookalike::key(&limits.agent_id),
            bound_keys: (limits.bound.iter().enumerate())
                .map(|(i, (id, _))| (lookalike::key(id), i))
                .collect(),
            seq: 0,
            broadcasts: 0,
            history: VecDeque::new(),
            started_ms: now_ms,
            counts: GatewayCounts::default(),
            unsaved: Vec::new(),
            track: false,
            reply_ids: Vec::new(),
            logged: None,
            limits,
        }
    }

    /// Keep the history's new frames for the store from now on.
    pub fn track_changes(&mut self) {
        self.track = true;
    }

    pub fn has_unsaved(&self) -> bool {
        !self.unsaved.is_empty()
    }

    /// History frames remembered since the last call.
    pub fn take_unsaved(&mut self) -> Vec<StoredFrame> {
        std::mem::take(&mut self.unsaved)
    }

    /// Put back the history and the sequence the store kept (older frames than the age
    /// limit are dropped at once).
    pub fn restore(&mut self, seq: u64, frames: Vec<StoredFrame>, now_ms: u64) {
        self.seq = self.seq.max(seq);
        for f in frames {
            self.seq = self.seq.max(f.seq);
            if self.limits.history_max == 0 {
                break;
            }
            while self.history.len() >= self.limits.history_max {
                self.history.pop_front();
            }
            self.history.push_back(Entry {
                seq: f.seq,
                ts_ms: f.ts_ms,
                kept: Kept::Frame {
                    from: f.from,
                    target: f.target,
                    frame: Frame::from(f.frame),
                },
            });
        }
        self.trim_history(now_ms);
    }

    /// The last `gateway_seq` handed out.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Connections, registered or not.
    pub fn connections(&self) -> usize {
        self.clients.len()
    }

    /// The agent registered on `conn`, if any.
    pub fn agent_of(&self, conn: ConnId) -> Option<&str> {
        self.clients
            .get(&conn)?
            .reg
            .as_ref()
            .map(|r| r.agent_id.as_str())
    }

    /// The connection of a registered agent.
    pub fn conn_of(&self, agent_id: &str) -> Option<ConnId> {
        self.agents.get(agent_id).copied()
    }

    /// The bridge's own agent id (`gateway.agent_id`).
    pub fn agent_id(&self) -> &str {
        &self.limits.agent_id
    }

    /// When the heartbeat wants to run next (epoch ms).
    pub fn next_tick_ms(&self) -> u64 {
        self.heartbeat.next_round_ms()
    }

    /// A connection upgraded on `/ws/matrix`; `since` is its `?since=` resume point.
    pub fn connect(&mut self, conn: ConnId, since: Option<u64>, now_ms: u64) {
        self.connect_bound(conn, since, None, now_ms);
    }

    /// A connection that presented the token of `gateway.agents[bound]`: it can only
    /// register as that agent.
    pub fn connect_bound(
        &mut self,
        conn: ConnId,
        since: Option<u64>,
        bound: Option<usize>,
        now_ms: u64,
    ) {
        self.counts.connections += 1;
        self.clients.insert(
            conn,
            Client {
                connected_ms: now_ms,
                last_seen_ms: now_ms,
                since,
                epoch: None,
                bound,
                reg: None,
                messages_in: 0,
                messages_out: 0,
                broadcasts_at: 0,
                own_broadcasts: 0,
                flood: Flood::default(),
            },
        );
        self.heartbeat.add(conn, now_ms);
    }

    /// `?epoch=` of the upgrade request: the cluster log's epoch its `since` is from.
    pub fn resume_epoch(&mut self, conn: ConnId, epoch: String) {
        if let Some(c) = self.clients.get_mut(&conn) {
            c.epoch = Some(epoch);
        }
    }

    /// Any frame arrived on `conn` (including a pong).
    pub fn heard(&mut self, conn: ConnId, now_ms: u64) {
        if let Some(c) = self.clients.get_mut(&conn) {
            c.last_seen_ms = c.last_seen_ms.max(now_ms);
            self.heartbeat.heard(conn, now_ms);
        }
    }

    /// The connection is gone. Its agent, if it still owned its id, leaves.
    pub fn disconnect(&mut self, conn: ConnId, now_ms: u64, out: &mut Vec<Output>) {
        self.heartbeat.remove(conn);
        let Some(client) = self.clients.remove(&conn) else {
            return;
        };
        if let Some(reg) = client.reg {
            if self.agents.get(&reg.agent_id) == Some(&conn) {
                self.agents.remove(&reg.agent_id);
                self.keys.remove(&reg.key);
                self.lifecycle("agent_left", &reg, now_ms, out);
            }
        }
    }

    /// A text message arrived on `conn`.
    pub fn on_text(&mut self, conn: ConnId, text: &Frame, now_ms: u64, out: &mut Vec<Output>) {
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        client.messages_in += 1;
        client.last_seen_ms = client.last_seen_ms.max(now_ms);
        let flooding = client.flood.check(now_ms, self.limits.max_messages_per_s);
        self.heartbeat.heard(conn, now_ms);
        match flooding {
            Flooding::Allowed => {}
            Flooding::Refused => {
                let why = format!(
                    "more than {} messages in a second (gateway.max_messages_per_s): \
                     the rest of this second is not routed",
                    self.limits.max_messages_per_s
                );
                return self.refuse(conn, "rate_limited", &why, out);
            }
            Flooding::RefusedAgain => {
                self.counts.errors += 1;
                return;
            }
        }
        let mut msg = match super::frame_object(text.as_str()) {
            Ok(m) => m,
            Err((code, why)) => return self.refuse(conn, code, &why, out),
        };
        let kind = match msg.get("type") {
            Some(Value::String(t)) => t.clone(),
            _ => {
                return self.refuse(
                    conn,
                    "missing_type",
                    "every message needs a string `type`",
                    out,
                )
            }
        };
        if kind == "agent_register" {
            return self.register(conn, &msg, now_ms, out);
        }
        if HUB_TYPES.contains(&kind.as_str()) {
            let why = format!("{kind:?} is a message only the gateway sends; it was not routed");
            return self.refuse(conn, "reserved_type", &why, out);
        }
        if let Some(Value::String(claimed)) = msg.get("agentId") {
            // Most frames name their own sender, whose id passed this check at register:
            // the look-alike key (NFKC, folding, skeleton) is only computed for the others.
            let own = (self.clients.get(&conn).and_then(|c| c.reg.as_ref()))
                .is_some_and(|r| r.agent_id == *claimed);
            if !own && lookalike::key(claimed) == self.reserved_key {
                let why = format!(
                    "only the bridge speaks as {:?}; this message was not routed",
                    self.limits.agent_id
                );
                return self.refuse(conn, "reserved_agent_id", &why, out);
            }
        }
        let Some(reg) = self.clients.get(&conn).and_then(|c| c.reg.clone()) else {
            return self.refuse(
                conn,
                "not_registered",
                "send agent_register {agentId, role} first; this message was not routed",
                out,
            );
        };
        let target = match msg.get("target_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) => Some(t.clone()),
            Some(_) => {
                return self.refuse(
                    conn,
                    "bad_target",
                    "`target_id` must be a string agentId",
                    out,
                )
            }
        };
        self.counts.routed += 1;
        match target {
            Some(t) if t == self.limits.agent_id => {
                out.push(Output::ForAgent {
                    from: reg.agent_id,
                    role: reg.role,
                    msg,
                });
            }
            Some(t) => {
                if self.logged.is_some() && self.known_anywhere(&t) {
                    return self.propose(&reg.agent_id, Some(t), text.as_str());
                }
                let Some(&to) = self.agents.get(&t) else {
                    return self.refuse(
                        conn,
                        "unknown_target",
                        &format!("no agent {t:?} is connected"),
                        out,
                    );
                };
                let frame = self.stamp(text, &mut msg, &reg.agent_id);
                self.remember(&reg.agent_id, Some(t), frame.clone(), now_ms);
                self.deliver(to, frame, out);
            }
            None => {
                if self.logged.is_some() {
                    self.propose(&reg.agent_id, None, text.as_str());
                } else {
                    let frame = self.stamp(text, &mut msg, &reg.agent_id);
                    self.remember(&reg.agent_id, None, frame.clone(), now_ms);
                    self.broadcast(Some(conn), frame, out);
                }
                if FOR_AGENT_BROADCAST.contains(&kind.as_str()) {
                    out.push(Output::ForAgent {
                        from: reg.agent_id,
                        role: reg.role,
                        msg,
                    });
                }
            }
        }
    }

    /// Time passes: the ping round (pruning the silent) and the history's age limit.
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        let round = self.heartbeat.tick(now_ms);
        for conn in round.dead {
            self.counts.pruned += 1;
            let registered = self.clients.get(&conn).is_some_and(|c| c.reg.is_some());
            let reason = if registered {
                "no answer to ping within the heartbeat interval"
            } else {
                "no agent_register within the heartbeat interval"
            };
            let code = if registered {
                CLOSE_SILENT
            } else {
                CLOSE_UNREGISTERED
            };
            out.push(Output::Close {
                conn,
                code,
                reason: reason.into(),
            });
            self.disconnect(conn, now_ms, out);
        }
        for conn in round.ping {
            out.push(Output::Ping(conn));
        }
        self.trim_history(now_ms);
    }

    /// A streamed bark is about to be spoken in `room`: its `bark` frame will carry
    /// `reply_id` (the few not yet published are kept, the oldest dropped past 64).
    pub fn expect_bark(&mut self, room: &str, text: &str, reply_id: u64) {
        if self.reply_ids.len() >= 64 {
            self.reply_ids.remove(0);
        }
        self.reply_ids.push((room.into(), text.into(), reply_id));
    }

    /// The bridge's agent speaks: `bark` `{text, agentId, room}` to everyone (or, with
    /// `to`, only to that agent).
    pub fn publish_bark(
        &mut self,
        text: &str,
        room: Option<&str>,
        to: Option<&str>,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let mut m = Map::new();
        m.insert("type".into(), "bark".into());
        m.insert("text".into(), text.into());
        m.insert("agentId".into(), self.limits.agent_id.clone().into());
        if let Some(r) = room {
            m.insert("room".into(), r.into());
        }
        if let Some(t) = to {
            m.insert("target_id".into(), t.into());
        }
        m.insert("timestamp".into(), rfc3339(now_ms).into());
        self.publish(m, to, now_ms, out);
    }

    /// A world event (presence, say, event, bark) under its own `type`. The world's own
    /// sequence number travels as `event_seq`; `gateway_seq` is the hub's.
    pub fn publish_event(&mut self, ev: &Event, now_ms: u64, out: &mut Vec<Output>) {
        if ev.kind == EventKind::Bark && self.logged.is_some() {
            // Cluster mode: the node that barked puts the `bark` frame into the log
            // itself ([`Gateway::propose_bark`]), with its `reply_id`.
            return;
        }
        if ev.kind == EventKind::Bark {
            let text = ev.message.as_deref().unwrap_or_default();
            let streamed = (self.reply_ids.iter())
                .position(|(room, t, _)| *room == ev.room && t == text)
                .map(|at| self.reply_ids.remove(at).2);
            let Some(reply_id) = streamed else {
                return self.publish_bark(text, Some(&ev.room), None, now_ms, out);
            };
            let mut m = Map::new();
            m.insert("type".into(), "bark".into());
            m.insert("text".into(), text.into());
            m.insert("agentId".into(), self.limits.agent_id.clone().into());
            m.insert("room".into(), ev.room.clone().into());
            m.insert("reply_id".into(), reply_id.into());
            m.insert("timestamp".into(), rfc3339(now_ms).into());
            return self.publish(m, None, now_ms, out);
        }
        // Cluster mode: the event's number in the log is its frame's number too.
        match &self.logged {
            Some(_) => self.seq = self.seq.max(ev.seq),
            None => self.seq += 1,
        }
        if self.agents.is_empty() && self.logged.is_none() && !self.track {
            // Nobody to send it to and no store to write it: keep the event, and write
            // its frame only if a client resumes from before it. The broadcast still
            // takes its place in the loop's log (an empty frame nobody reads: with no
            // registered client there is no member to read it, and a client that joins
            // starts after it), so positions and the `broadcast_log` gauge are as before.
            self.keep(Kept::Event(PackedEvent::pack(ev)), now_ms);
            return self.broadcast(None, Frame::default(), out);
        }
        let epoch = self.logged.as_ref().and_then(|l| l.epoch.as_deref());
        let Some(frame) = event_frame(ev, self.seq, epoch, &self.limits.agent_id) else {
            return;
        };
        let me = self.limits.agent_id.clone();
        self.send_published(&me, None, frame, now_ms, out);
    }

    /// Publish a message from the bridge itself: to `to` only, or to every registered
    /// client.
    pub fn publish(
        &mut self,
        mut msg: Map<String, Value>,
        to: Option<&str>,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        if self.logged.is_some() {
            let me = self.limits.agent_id.clone();
            let text = Value::Object(msg).to_string();
            return self.propose(&me, to.map(str::to_string), &text);
        }
        self.seq += 1;
        let me = self.limits.agent_id.clone();
        msg.insert("gateway_seq".into(), self.seq.into());
        msg.insert("from".into(), me.clone().into());
        let frame = Frame::from(Value::Object(msg).to_string());
        self.send_published(&me, to, frame, now_ms, out);
    }

    /// A frame of the bridge's own (its `gateway_seq` already taken): kept for resumes,
    /// then to `to` only or to every registered client.
    fn send_published(
        &mut self,
        me: &str,
        to: Option<&str>,
        frame: Frame,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        self.remember(me, to.map(str::to_string), frame.clone(), now_ms);
        match to {
            Some(t) => {
                if let Some(&conn) = self.agents.get(t) {
                    self.deliver(conn, frame, out);
                }
            }
            None => self.broadcast(None, frame, out),
        }
    }

    /// The registered agents: (agentId, role), sorted by id.
    pub fn agents(&self) -> Vec<(&str, &str)> {
        let mut list: Vec<(&str, &str)> = self
            .agents
            .values()
            .filter_map(|c| self.clients.get(c)?.reg.as_ref())
            .map(|r| (r.agent_id.as_str(), r.role.as_str()))
            .collect();
        if let Some(l) = &self.logged {
            // An id registered here and (until the log says otherwise) elsewhere is here.
            let elsewhere = (l.remote.iter()).filter(|(id, _)| !self.agents.contains_key(*id));
            list.extend(elsewhere.map(|(id, r)| (id.as_str(), r.role.as_str())));
        }
        list.sort_unstable();
        list
    }

    /// The body of `GET /api/gateway/status`.
    pub fn status(&self) -> Value {
        let mut agents: Vec<(&String, &Client, &Registration)> = self
            .agents
            .iter()
            .filter_map(|(id, c)| {
                let client = self.clients.get(c)?;
                Some((id, client, client.reg.as_ref()?))
            })
            .collect();
        agents.sort_by(|a, b| a.0.cmp(b.0));
        let node = self.log_node();
        let mut list: Vec<(String, Value)> = agents
            .iter()
            .map(|(id, c, r)| {
                let mut v = json!({
                    "agentId": id,
                    "role": r.role,
                    "connected_at": rfc3339(c.connected_ms),
                    "last_seen": rfc3339(c.last_seen_ms),
                    "messages_in": c.messages_in,
                    "messages_out": c.messages_out(self.broadcasts),
                });
                if let Some(n) = node {
                    v["node"] = n.into();
                }
                (id.to_string(), v)
            })
            .collect();
        // Cluster mode: the agents of the other nodes too, with their node.
        list.extend(self.remote_status());
        list.sort_by(|a, b| a.0.cmp(&b.0));
        let mut by_role: Map<String, Value> = Map::new();
        for (_, v) in &list {
            let role = v["role"].as_str().unwrap_or("agent").to_string();
            let n = by_role.get(&role).and_then(Value::as_u64).unwrap_or(0);
            by_role.insert(role, (n + 1).into());
        }
        let list: Vec<Value> = list.into_iter().map(|(_, v)| v).collect();
        let c = &self.counts;
        json!({
            "status": "ok",
            "agent_id": self.limits.agent_id,
            "count": list.len(),
            "agents": list,
            "by_role": by_role,
            "connections": self.clients.len(),
            "gateway_seq": self.seq,
            "history": self.history.len(),
            "started": rfc3339(self.started_ms),
            "totals": {
                "connections": c.connections,
                "registrations": c.registrations,
                "replaced": c.replaced,
                "pruned": c.pruned,
                "routed": c.routed,
                "delivered": c.delivered,
                "errors": c.errors,
                "resyncs": c.resyncs,
            },
        })
    }

    fn register(
        &mut self,
        conn: ConnId,
        msg: &Map<String, Value>,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let agent_id = match msg.get("agentId") {
            Some(Value::String(s)) if valid_id(s) => s.clone(),
            _ => {
                return self.refuse(
                    conn,
                    "bad_register",
                    &format!(
                        "agent_register needs `agentId`: a non-empty string of at most \
                         {NAME_MAX_BYTES} bytes without control characters"
                    ),
                    out,
                )
            }
        };
        let mut role =
            match msg.get("role") {
                None | Some(Value::Null) => "agent".to_string(),
                Some(Value::String(s)) if valid_id(s) => s.clone(),
                Some(_) => return self.refuse(
                    conn,
                    "bad_register",
                    "`role` must be a short string such as \"agent\", \"client\" or \"watcher\"",
                    out,
                ),
            };
        let key = lookalike::key(&agent_id);
        if key == self.reserved_key {
            let why = if agent_id == self.limits.agent_id {
                format!("{agent_id:?} is the bridge's own agent id; pick another")
            } else {
                format!(
                    "{agent_id:?} looks like the bridge's own agent id {:?}; pick another",
                    self.limits.agent_id
                )
            };
            return self.refuse(conn, "reserved_agent_id", &why, out);
        }
        let bound = self.clients.get(&conn).and_then(|c| c.bound);
        match bound.and_then(|i| self.limits.bound.get(i)) {
            Some((id, _)) if *id != agent_id => {
                let why = format!(
                    "this connection's token belongs to agent {id:?}; it can only register as {id:?}"
                );
                return self.refuse(conn, "wrong_agent_id", &why, out);
            }
            Some((_, bound_role)) if !bound_role.is_empty() => role = bound_role.clone(),
            Some(_) => {}
            None => {
                if let Some(&i) = self.bound_keys.get(&key) {
                    let why = format!(
                        "{agent_id:?} is bound to its own token (gateway.agents entry {:?}): \
                         connect with ?token=<that token>",
                        self.limits.bound[i].0
                    );
                    return self.refuse(conn, "agent_id_bound", &why, out);
                }
            }
        }
        let taken = (self.keys.get(&key).cloned())
            .or_else(|| self.remote_with_key(&key).map(str::to_string))
            .filter(|held| *held != agent_id);
        if let Some(held) = taken {
            let why = format!("{agent_id:?} looks like {held:?}, who is connected; pick another");
            return self.refuse(conn, "agent_id_taken", &why, out);
        }
        let since = match msg.get("since") {
            Some(v) => v.as_u64(),
            None => None,
        };
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        if let Some(old) = &client.reg {
            if old.agent_id != agent_id {
                let msg = format!(
                    "this connection is registered as {:?}; open a new one for another agentId",
                    old.agent_id
                );
                return self.refuse(conn, "already_registered", &msg, out);
            }
        }
        let since = since.or(client.since.take());
        let epoch = client.epoch.take();
        let reg = Registration {
            agent_id: agent_id.clone(),
            role,
            key: key.clone(),
        };
        if client.reg.is_none() {
            client.broadcasts_at = self.broadcasts;
            out.push(Output::Member(conn));
        }
        client.reg = Some(reg.clone());
        self.counts.registrations += 1;
        self.keys.insert(key, agent_id.clone());
        if let Some(old) = self.agents.insert(agent_id.clone(), conn) {
            if old != conn {
                self.counts.replaced += 1;
                self.heartbeat.remove(old);
                self.clients.remove(&old);
                out.push(Output::Close {
                    conn: old,
                    code: CLOSE_REPLACED,
                    reason: format!("replaced by a new connection for agentId {agent_id}"),
                });
            }
        }
        let all = self.agents();
        let total = all.len();
        let agents: Vec<Value> = all
            .into_iter()
            .take(REGISTERED_LIST_MAX)
            .map(|(a, r)| json!({"agentId": a, "role": r}))
            .collect();
        let ack = json!({
            "type": "agent_registered",
            "agentId": reg.agent_id,
            "role": reg.role,
            "agents": agents,
            "agents_total": total,
            "bridge_agent": self.limits.agent_id,
            "gateway_seq": self.seq,
            "heartbeat_s": self.limits.heartbeat_ms / 1000,
        });
        self.send_to(conn, Frame::from(ack.to_string()), out);
        if let Some(since) = since {
            self.replay(conn, &reg.agent_id, since, epoch.as_deref(), out);
        }
        self.lifecycle("agent_joined", &reg, now_ms, out);
    }

    /// What `agent` missed since `since`, or `resync_required`.
    fn replay(
        &mut self,
        conn: ConnId,
        agent: &str,
        since: u64,
        epoch: Option<&str>,
        out: &mut Vec<Output>,
    ) {
        let oldest = self.history.front().map(|e| e.seq);
        // The history reaches back far enough when its first frame is the one right
        // after `since` or earlier; with an empty history only "nothing missed" works.
        let covered = match oldest {
            Some(first) => first <= since.saturating_add(1) && since <= self.seq,
            None => since == self.seq,
        };
        // Cluster mode: a `since` of another epoch's log means nothing in this one.
        let other_epoch = epoch.is_some() && epoch != self.log_epoch();
        if !covered || other_epoch {
            self.counts.resyncs += 1;
            let why = if other_epoch {
                "your gateway_seq is from another epoch of the cluster's log"
            } else if since > self.seq {
                "the gateway restarted: its sequence is behind yours"
            } else {
                "the history no longer reaches back that far"
            };
            let mut frame = json!({
                "type": "resync_required",
                "since": since,
                "oldest": oldest,
                "gateway_seq": self.seq,
                "error": why,
            });
            if let Some(e) = self.log_epoch() {
                frame["epoch"] = e.into();
            }
            return self.send_to(conn, Frame::from(frame.to_string()), out);
        }
        let missed: Vec<Frame> = self
            .history
            .iter()
            .filter(|e| e.seq > since && e.from(&self.limits.agent_id) != agent)
            .filter(|e| e.target().is_none_or(|t| t == agent))
            .filter_map(|e| e.frame(&self.limits.agent_id))
            .collect();
        for f in missed {
            self.deliver(conn, f, out);
        }
    }

    /// `agent_joined` / `agent_left` to every other registered client.
    fn lifecycle(&mut self, kind: &str, reg: &Registration, now_ms: u64, out: &mut Vec<Output>) {
        if self.logged.is_some() {
            return self.propose_lifecycle(kind, reg, now_ms);
        }
        self.seq += 1;
        let frame = Frame::from(
            json!({
                "type": kind,
                "agentId": reg.agent_id,
                "role": reg.role,
                "timestamp": rfc3339(now_ms),
                "gateway_seq": self.seq,
            })
            .to_string(),
        );
        self.remember(&reg.agent_id, None, frame.clone(), now_ms);
        let except = self.agents.get(&reg.agent_id).copied();
        self.broadcast(except, frame, out);
    }

    /// Add `gateway_seq` and `from` (the sender's registered id) to a client's message.
    /// The text is passed through byte for byte, with the stamps spliced in after the
    /// opening brace; only a message that already has a `gateway_seq` or a `from` of its
    /// own is re-encoded, with the hub's values over the client's (so there are no
    /// duplicate keys, which parsers read differently, and no `from` the hub did not
    /// write).
    fn stamp(&mut self, text: &Frame, msg: &mut Map<String, Value>, from: &str) -> Frame {
        self.seq += 1;
        stamp_as(text.as_str(), msg, from, self.seq, None)
    }

    fn remember(&mut self, from: &str, target: Option<String>, frame: Frame, now_ms: u64) {
        if self.limits.history_max == 0 {
            return;
        }
        if self.track {
            self.unsaved.push(StoredFrame {
                seq: self.seq,
                ts_ms: now_ms,
                from: from.to_string(),
                target: target.clone(),
                frame: frame.as_str().to_string(),
            });
        }
        let from = from.to_string();
        self.keep(
            Kept::Frame {
                from,
                target,
                frame,
            },
            now_ms,
        );
    }

    /// Keep an entry numbered `self.seq` in the bounded history.
    fn keep(&mut self, kept: Kept, now_ms: u64) {
        if self.limits.history_max == 0 {
            return;
        }
        while self.history.len() >= self.limits.history_max {
            self.history.pop_front();
        }
        self.history.push_back(Entry {
            seq: self.seq,
            ts_ms: now_ms,
            kept,
        });
        self.trim_history(now_ms);
    }

    fn trim_history(&mut self, now_ms: u64) {
        let max_age = self.limits.history_max_age_ms;
        while self
            .history
            .front()
            .is_some_and(|e| now_ms.saturating_sub(e.ts_ms) > max_age)
        {
            self.history.pop_front();
        }
    }

    /// To every registered client but `except`: one output, whatever their number (a
    /// broadcast to thousands is the hot path of the hub).
    fn broadcast(&mut self, except: Option<ConnId>, frame: Frame, out: &mut Vec<Output>) {
        self.broadcasts += 1;
        let mut recipients = self.agents.len() as u64;
        if let Some(c) = except.and_then(|e| self.clients.get_mut(&e)) {
            if c.reg.is_some() {
                c.own_broadcasts += 1;
                recipients -= 1;
            }
        }
        self.counts.delivered += recipients;
        out.push(Output::Broadcast { except, frame });
    }

    /// A routed frame: counted as delivered.
    fn deliver(&mut self, conn: ConnId, frame: Frame, out: &mut Vec<Output>) {
        self.counts.delivered += 1;
        self.send_to(conn, frame, out);
    }

    fn send_to(&mut self, conn: ConnId, frame: Frame, out: &mut Vec<Output>) {
        if let Some(c) = self.clients.get_mut(&conn) {
            c.messages_out += 1;
            out.push(Output::Send(conn, frame));
        }
    }

    fn refuse(&mut self, conn: ConnId, code: &str, error: &str, out: &mut Vec<Output>) {
        self.counts.errors += 1;
        log::debug!(
            "gateway conn={} refused a message: {code}: {error}",
            conn.idx
        );
        self.send_to(conn, error_frame(code, error), out);
    }
}

/// An agentId or role: non-empty, bounded, no control characters.
fn valid_id(s: &str) -> bool {
    !s.trim().is_empty() && s.len() <= NAME_MAX_BYTES && !s.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(idx: u32) -> ConnId {
        ConnId { idx, gen: 0 }
    }

    fn hub() -> Gateway {
        Gateway::new(
            GatewayLimits {
                agent_id: "timmy".into(),
                heartbeat_ms: 30_000,
                history_max: 100,
                history_max_age_ms: 120_000,
                max_messages_per_s: 1000,
                bound: vec![
                    ("perplexity".into(), "interviewer".into()),
                    ("hermes".into(), String::new()),
                ],
            },
            0,
        )
    }

    fn text(s: &str) -> Frame {
        Frame::from(s.to_string())
    }

    /// Frames sent per connection, parsed.
    /// Every frame sent, a broadcast as one per member of `g` now (in id order).
    fn sent(g: &Gateway, out: &[Output]) -> Vec<(ConnId, Value)> {
        let mut members: Vec<ConnId> = g
            .clients
            .iter()
            .filter(|(_, c)| c.reg.is_some())
            .map(|(id, _)| *id)
            .collect();
        members.sort_by_key(|c| c.idx);
        let parse = |f: &Frame| serde_json::from_str::<Value>(f.as_str()).unwrap();
        out.iter()
            .flat_map(|o| match o {
                Output::Send(c, f) => vec![(*c, parse(f))],
                Output::Broadcast { except, frame } => members
                    .iter()
                    .filter(|m| Some(**m) != *except)
                    .map(|m| (*m, parse(frame)))
                    .collect(),
                _ => vec![],
            })
            .collect()
    }

    fn to(g: &Gateway, out: &[Output], conn: ConnId) -> Vec<Value> {
        sent(g, out)
            .into_iter()
            .filter(|(c, _)| *c == conn)
            .map(|(_, v)| v)
            .collect()
    }

    fn register(g: &mut Gateway, conn: ConnId, agent: &str, role: &str) -> Vec<Output> {
        g.connect(conn, None, 10);
        let mut out = Vec::new();
        let msg = json!({"type": "agent_register", "agentId": agent, "role": role});
        g.on_text(conn, &text(&msg.to_string()), 10, &mut out);
        out
    }

    #[test]
    fn register_acks_and_tells_the_others() {
        let mut g = hub();
        let out = register(&mut g, id(1), "alice", "agent");
        let ack = &to(&g, &out, id(1))[0];
        assert_eq!(ack["type"], "agent_registered");
        assert_eq!(ack["agentId"], "alice");
        assert_eq!(
            ack["agents"],
            json!([{"agentId": "alice", "role": "agent"}])
        );
        assert_eq!(sent(&g, &out).len(), 1, "nobody else to tell");

        let out = register(&mut g, id(2), "bob", "client");
        let alice_got = to(&g, &out, id(1));
        assert_eq!(alice_got.len(), 1);
        let joined = &alice_got[0];
        assert_eq!(joined["type"], "agent_joined");
        assert_eq!(joined["agentId"], "bob");
        assert_eq!(joined["role"], "client");
        assert!(joined["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(joined["gateway_seq"].as_u64().is_some());
        // Bob is not told about himself.
        assert!(to(&g, &out, id(2))
            .iter()
            .all(|v| v["type"] != "agent_joined"));

        let mut out = Vec::new();
        g.disconnect(id(2), 20, &mut out);
        let left = &to(&g, &out, id(1))[0];
        assert_eq!(left["type"], "agent_left");
        assert_eq!(
            (left["agentId"].as_str(), left["role"].as_str()),
            (Some("bob"), Some("client"))
        );
        assert_eq!(g.agents(), vec![("alice", "agent")]);
    }

    #[test]
    fn the_agents_list_of_a_registration_is_capped() {
        let mut g = hub();
        for i in 0..(REGISTERED_LIST_MAX as u32 + 5) {
            register(&mut g, id(i), &format!("a{i:04}"), "agent");
        }
        let out = register(&mut g, id(9999), "zz", "agent");
        let ack = &to(&g, &out, id(9999))[0];
        assert_eq!(ack["agents"].as_array().unwrap().len(), REGISTERED_LIST_MAX);
        assert_eq!(ack["agents_total"], REGISTERED_LIST_MAX + 6);
        assert_eq!(ack["agents"][0]["agentId"], "a0000");
    }

    #[test]
    fn nothing_is_routed_before_register() {
        let mut g = hub();
        register(&mut g, id(1), "alice", "agent");
        g.connect(id(2), None, 10);
        let mut out = Vec::new();
        g.on_text(
            id(2),
            &text(r#"{"type":"bark","text":"sneaky"}"#),
            11,
            &mut out,
        );
        assert_eq!(sent(&g, &out).len(), 1);
        let err = &to(&g, &out, id(2))[0];
        assert_eq!(err["type"], "error");
        assert_eq!(err["code"], "not_registered");
        assert!(to(&g, &out, id(1)).is_empty(), "not routed");
    }

    #[test]
    fn broadcast_goes_to_every_other_registered_client_unchanged_but_stamped() {
        let mut g = hub();
        for (i, a) in ["a", "b", "c"].iter().enumerate() {
            register(&mut g, id(i as u32), a, "agent");
        }
        g.connect(id(9), None, 10); // not registered: hears nothing
        let original = r#"{"type":"agent_state","agentId":"a","state":{"mood":"calm","n":[1,2]}}"#;
        let mut out = Vec::new();
        g.on_text(id(0), &text(original), 20, &mut out);
        let got = sent(&g, &out);
        let mut receivers: Vec<u32> = got.iter().map(|(c, _)| c.idx).collect();
        receivers.sort();
        assert_eq!(receivers, vec![1, 2]);
        // Byte for byte, plus the stamp in front.
        let Some(Output::Broadcast { frame: f, .. }) = out.first() else {
            panic!("one broadcast: {out:?}")
        };
        let seq = g.seq();
        assert_eq!(
            f.as_str(),
            format!("{{\"gateway_seq\":{seq},\"from\":\"a\",{}", &original[1..])
        );
        assert_eq!(got[0].1["state"], json!({"mood": "calm", "n": [1, 2]}));
    }

    #[test]
    fn stamping_edge_cases_stay_valid_json() {
        let mut g = hub();
        register(&mut g, id(0), "a", "agent");
        register(&mut g, id(1), "b", "agent");
        for raw in [
            r#"  {"type":"x"}"#,
            r#"{"type":"x","gateway_seq":"mine"}"#,
            "{\n\"type\" : \"x\" }",
        ] {
            let mut out = Vec::new();
            g.on_text(id(0), &text(raw), 20, &mut out);
            let v = &to(&g, &out, id(1))[0];
            assert_eq!(v["type"], "x", "{raw}");
            assert_eq!(v["gateway_seq"], g.seq(), "{raw}");
        }
    }

    #[test]
    fn from_is_the_senders_registered_id_whatever_the_client_wrote() {
        let mut g = hub();
        register(&mut g, id(0), "alice", "agent");
        register(&mut g, id(1), "bob", "agent");
        for raw in [
            r#"{"type":"bark","text":"hi"}"#,
            r#"{"type":"bark","from":"timmy","text":"hi"}"#,
            r#"{"from":{"nested":true},"type":"bark","text":"hi","target_id":"bob"}"#,
        ] {
            let mut out = Vec::new();
            g.on_text(id(0), &text(raw), 20, &mut out);
            let got = to(&g, &out, id(1));
            assert_eq!(got.len(), 1, "{raw}");
            assert_eq!(got[0]["from"], "alice", "{raw}");
            assert_eq!(got[0]["text"], "hi", "{raw}");
            // Exactly one `from` key in the bytes: no duplicate for parsers to disagree on.
            let frame = out.iter().find_map(|o| match o {
                Output::Broadcast { frame, .. } | Output::Send(_, frame) => Some(frame.clone()),
                _ => None,
            });
            let frame = frame.unwrap();
            assert_eq!(frame.as_str().matches("\"from\"").count(), 1, "{frame}");
        }
    }

    #[test]
    fn hub_types_and_the_bridges_agent_id_are_refused_from_clients() {
        let mut g = hub();
        register(&mut g, id(0), "alice", "agent");
        register(&mut g, id(1), "bob", "agent");
        let routed = g.counts.routed;
        for (raw, code) in [
            (
                r#"{"type":"agent_joined","agentId":"mallory","role":"agent"}"#,
                "reserved_type",
            ),
            (
                r#"{"type":"agent_left","agentId":"bob","role":"agent"}"#,
                "reserved_type",
            ),
            (
                r#"{"type":"agent_registered","agentId":"alice"}"#,
                "reserved_type",
            ),
            (r#"{"type":"resync_required","since":0}"#, "reserved_type"),
            (
                r#"{"type":"error","code":"x","error":"fake","target_id":"bob"}"#,
                "reserved_type",
            ),
            (
                r#"{"type":"bark","agentId":"timmy","text":"I am Timmy"}"#,
                "reserved_agent_id",
            ),
            (
                r#"{"type":"bark","agentId":"Tımmy\u200b","text":"so am I"}"#,
                "reserved_agent_id",
            ),
        ] {
            let mut out = Vec::new();
            g.on_text(id(0), &text(raw), 20, &mut out);
            assert!(to(&g, &out, id(1)).is_empty(), "not routed: {raw}");
            let answer = to(&g, &out, id(0));
            assert_eq!(answer[0]["code"], code, "{raw}");
        }
        assert_eq!(g.counts.routed, routed);
        // The bridge's own publications carry its id as `from`.
        let mut out = Vec::new();
        g.publish_bark("hello", None, None, 30, &mut out);
        assert_eq!(to(&g, &out, id(1))[0]["from"], "timmy");
    }

    #[test]
    fn look_alike_agent_ids_are_refused_and_the_exact_id_still_takes_over() {
        let mut g = hub();
        for (i, look_alike) in ["Timmy", "timmy ", "timmy\u{200b}", "tımmy"]
            .iter()
            .enumerate()
        {
            let out = register(&mut g, id(10 + i as u32), look_alike, "agent");
            assert_eq!(
                to(&g, &out, id(10 + i as u32))[0]["code"],
                "reserved_agent_id",
                "{look_alike:?}"
            );
        }
        register(&mut g, id(0), "alice", "agent");
        for (i, look_alike) in ["Alice", "alice ", "аlice", "al\u{00ad}ice"]
            .iter()
            .enumerate()
        {
            let conn = id(20 + i as u32);
            let out = register(&mut g, conn, look_alike, "agent");
            let answer = to(&g, &out, conn);
            assert_eq!(answer[0]["code"], "agent_id_taken", "{look_alike:?}");
            assert_eq!(
                g.conn_of("alice"),
                Some(id(0)),
                "alice keeps her connection"
            );
        }
        // The exact id takes over, as before.
        let out = register(&mut g, id(1), "alice", "agent");
        assert!(out
            .iter()
            .any(|o| matches!(o, Output::Close { conn, .. } if *conn == id(0))));
        // Once alice has left, a look-alike may register.
        let mut out = Vec::new();
        g.disconnect(id(1), 40, &mut out);
        let out = register(&mut g, id(2), "Alice", "agent");
        assert_eq!(to(&g, &out, id(2))[0]["type"], "agent_registered");
    }

    #[test]
    fn a_bound_id_needs_its_token_and_a_token_binds_its_connection() {
        let mut g = hub();
        let reg = |g: &mut Gateway, conn: ConnId, agent: &str, role: &str| {
            let mut out = Vec::new();
            let msg = json!({"type": "agent_register", "agentId": agent, "role": role});
            g.on_text(conn, &text(&msg.to_string()), 10, &mut out);
            to(g, &out, conn).remove(0)
        };
        // Without the token: neither the id nor a look-alike of it.
        for (i, id_) in ["perplexity", "Perplexity", "hermes\u{200b}"]
            .iter()
            .enumerate()
        {
            let conn = id(i as u32);
            g.connect(conn, None, 10);
            assert_eq!(
                reg(&mut g, conn, id_, "agent")["code"],
                "agent_id_bound",
                "{id_:?}"
            );
        }
        // With perplexity's token: only perplexity, with the configured role.
        g.connect_bound(id(10), None, Some(0), 10);
        assert_eq!(
            reg(&mut g, id(10), "mallory", "agent")["code"],
            "wrong_agent_id"
        );
        let ack = reg(&mut g, id(10), "perplexity", "admin");
        assert_eq!(
            (ack["type"].as_str(), ack["role"].as_str()),
            (Some("agent_registered"), Some("interviewer"))
        );
        // hermes has no role configured: the client's own.
        g.connect_bound(id(11), None, Some(1), 10);
        assert_eq!(reg(&mut g, id(11), "hermes", "bot")["role"], "bot");
        // The holder of the token may take its own id over (a reconnect).
        g.connect_bound(id(12), None, Some(0), 20);
        assert_eq!(
            reg(&mut g, id(12), "perplexity", "agent")["type"],
            "agent_registered"
        );
        assert_eq!(g.conn_of("perplexity"), Some(id(12)));
        // Unbound ids work as before.
        g.connect(id(13), None, 20);
        assert_eq!(
            reg(&mut g, id(13), "alice", "agent")["type"],
            "agent_registered"
        );
    }

    #[test]
    fn a_published_world_event_has_the_shape_a_json_tree_would_give_it() {
        let mut g = hub();
        register(&mut g, id(0), "a", "agent");
        for message in [None, Some("hi \"there\"\n")] {
            let ev = Event {
                kind: EventKind::Say,
                event: "message".into(),
                user_id: "u1".into(),
                username: "Ü".into(),
                room: "The Garden".into(),
                message: message.map(str::to_string),
                timestamp: "2026-12-07T00:00:00.000Z".into(),
                seq: 42,
                origin: "local".into(),
                ts_ms: 0,
            };
            let mut out = Vec::new();
            g.publish_event(&ev, 10, &mut out);
            let Some(Output::Broadcast { frame, .. }) = out.first() else {
                panic!("{out:?}")
            };
            // What the hub used to build: the event as a JSON tree, seq renamed.
            let Ok(Value::Object(mut m)) = serde_json::to_value(&ev) else {
                panic!()
            };
            let seq = m.remove("seq").unwrap();
            m.insert("event_seq".into(), seq);
            m.insert("gateway_seq".into(), g.seq().into());
            m.insert("from".into(), "timmy".into());
            assert_eq!(frame.as_str(), Value::Object(m).to_string());
        }
    }

    #[test]
    fn directed_goes_only_to_the_target_and_unknown_target_is_an_error() {
        let mut g = hub();
        for (i, a) in ["a", "b", "c"].iter().enumerate() {
            register(&mut g, id(i as u32), a, "agent");
        }
        let mut out = Vec::new();
        g.on_text(
            id(0),
            &text(r#"{"type":"agent_message","target_id":"c","text":"psst"}"#),
            20,
            &mut out,
        );
        let got = sent(&g, &out);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, id(2));
        assert_eq!(got[0].1["text"], "psst");

        let mut out = Vec::new();
        g.on_text(
            id(0),
            &text(r#"{"type":"agent_message","target_id":"nobody"}"#),
            20,
            &mut out,
        );
        let got = sent(&g, &out);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, id(0));
        assert_eq!(got[0].1["code"], "unknown_target");
        assert!(got[0].1["error"].as_str().unwrap().contains("nobody"));

        let mut out = Vec::new();
        g.on_text(id(0), &text(r#"{"type":"x","target_id":5}"#), 20, &mut out);
        assert_eq!(to(&g, &out, id(0))[0]["code"], "bad_target");
    }

    #[test]
    fn bad_frames_get_errors() {
        let mut g = hub();
        register(&mut g, id(0), "a", "agent");
        for (raw, code) in [
            ("not json", "bad_json"),
            ("[1,2]", "bad_message"),
            (r#"{"no":"type"}"#, "missing_type"),
            (r#"{"type":7}"#, "missing_type"),
            (r#"{"type":"agent_register"}"#, "bad_register"),
            (r#"{"type":"agent_register","agentId":""}"#, "bad_register"),
            (
                r#"{"type":"agent_register","agentId":"a","role":3}"#,
                "bad_register",
            ),
            (
                r#"{"type":"agent_register","agentId":"timmy"}"#,
                "reserved_agent_id",
            ),
            (
                r#"{"type":"agent_register","agentId":"other"}"#,
                "already_registered",
            ),
        ] {
            let mut out = Vec::new();
            g.on_text(id(0), &text(raw), 20, &mut out);
            let got = to(&g, &out, id(0));
            assert_eq!(got.len(), 1, "{raw}");
            assert_eq!(got[0]["type"], "error", "{raw}");
            assert_eq!(got[0]["code"], code, "{raw}");
        }
        let long = "x".repeat(NAME_MAX_BYTES + 1);
        let mut out = Vec::new();
        let msg = json!({"type": "agent_register", "agentId": long});
        g.on_text(id(0), &text(&msg.to_string()), 20, &mut out);
        assert_eq!(to(&g, &out, id(0))[0]["code"], "bad_register");
        assert_eq!(g.agents(), vec![("a", "agent")]);
    }

    #[test]
    fn duplicate_agent_id_replaces_the_old_connection() {
        let mut g = hub();
        register(&mut g, id(0), "watcher", "watcher");
        register(&mut g, id(1), "a", "agent");
        let out = register(&mut g, id(2), "a", "agent");
        let closes: Vec<&Output> = out
            .iter()
            .filter(|o| matches!(o, Output::Close { .. }))
            .collect();
        assert_eq!(
            closes,
            vec![&Output::Close {
                conn: id(1),
                code: CLOSE_REPLACED,
                reason: "replaced by a new connection for agentId a".into()
            }]
        );
        assert!(
            to(&g, &out, id(1)).is_empty(),
            "the old one hears nothing more"
        );
        // The old connection's later disconnect says nothing: "a" is still here.
        let mut out = Vec::new();
        g.disconnect(id(1), 30, &mut out);
        assert!(out.is_empty());
        // Messages for "a" reach the new connection.
        let mut out = Vec::new();
        g.on_text(
            id(0),
            &text(r#"{"type":"x","target_id":"a"}"#),
            31,
            &mut out,
        );
        assert_eq!(sent(&g, &out)[0].0, id(2));
        assert_eq!(g.counts.replaced, 1);
    }

    #[test]
    fn messages_for_the_bridge_agent_come_out_as_for_agent() {
        let mut g = hub();
        register(&mut g, id(0), "alice", "client");
        register(&mut g, id(1), "bob", "client");
        let mut out = Vec::new();
        g.on_text(
            id(0),
            &text(r#"{"type":"chat_message","target_id":"timmy","text":"hi Timmy"}"#),
            20,
            &mut out,
        );
        assert!(
            sent(&g, &out).is_empty(),
            "directed to the bridge: nobody else hears it"
        );
        match &out[..] {
            [Output::ForAgent { from, role, msg }] => {
                assert_eq!((from.as_str(), role.as_str()), ("alice", "client"));
                assert_eq!(msg["text"], "hi Timmy");
            }
            other => panic!("{other:?}"),
        }
        // A broadcast chat goes to the others and to the agent.
        let mut out = Vec::new();
        g.on_text(
            id(0),
            &text(r#"{"type":"chat_message","text":"all"}"#),
            21,
            &mut out,
        );
        assert_eq!(to(&g, &out, id(1)).len(), 1);
        assert!(out.iter().any(|o| matches!(o, Output::ForAgent { .. })));
        // Other broadcasts are not the agent's business.
        let mut out = Vec::new();
        g.on_text(id(0), &text(r#"{"type":"scene_add"}"#), 22, &mut out);
        assert!(!out.iter().any(|o| matches!(o, Output::ForAgent { .. })));
    }

    #[test]
    fn the_bridge_publishes_barks_and_world_events() {
        let mut g = hub();
        register(&mut g, id(0), "alice", "watcher");
        let mut out = Vec::new();
        g.publish_bark("Slowly.", Some("The Tower"), None, 50, &mut out);
        let bark = &to(&g, &out, id(0))[0];
        assert_eq!(bark["type"], "bark");
        assert_eq!(bark["text"], "Slowly.");
        assert_eq!(bark["agentId"], "timmy");
        assert_eq!(bark["room"], "The Tower");

        let ev = Event {
            kind: EventKind::Say,
            event: "message".into(),
            user_id: "u1".into(),
            username: "Una".into(),
            room: "The Garden".into(),
            message: Some("hello".into()),
            timestamp: rfc3339(60),
            seq: 7,
            origin: "local".into(),
            ts_ms: 60,
        };
        let mut out = Vec::new();
        g.publish_event(&ev, 60, &mut out);
        let say = &to(&g, &out, id(0))[0];
        assert_eq!(say["type"], "say");
        assert_eq!(say["message"], "hello");
        assert_eq!(say["room"], "The Garden");
        assert_eq!(say["event_seq"], 7);
        assert_eq!(say["gateway_seq"], g.seq());

        let mut out = Vec::new();
        g.publish_event(
            &Event {
                kind: EventKind::Bark,
                message: Some("Welcome.".into()),
                ..ev
            },
            61,
            &mut out,
        );
        let bark = &to(&g, &out, id(0))[0];
        assert_eq!(
            (bark["type"].as_str(), bark["text"].as_str()),
            (Some("bark"), Some("Welcome."))
        );
    }

    #[test]
    fn heartbeat_pings_then_prunes_the_silent() {
        let mut g = Gateway::new(
            GatewayLimits {
                agent_id: "timmy".into(),
                heartbeat_ms: 1000,
                history_max: 10,
                history_max_age_ms: 60_000,
                max_messages_per_s: 1000,
                bound: Vec::new(),
            },
            0,
        );
        register(&mut g, id(0), "alive", "agent");
        register(&mut g, id(1), "silent", "agent");
        g.connect(id(2), None, 10); // never registers
        let mut out = Vec::new();
        g.tick(1000, &mut out);
        let pings: Vec<&Output> = out
            .iter()
            .filter(|o| matches!(o, Output::Ping(_)))
            .collect();
        assert_eq!(pings.len(), 3);
        g.heard(id(0), 1100);
        let mut out = Vec::new();
        g.tick(2000, &mut out);
        assert!(out.contains(&Output::Close {
            conn: id(1),
            code: CLOSE_SILENT,
            reason: "no answer to ping within the heartbeat interval".into()
        }));
        assert!(out.iter().any(
            |o| matches!(o, Output::Close { conn, code: CLOSE_UNREGISTERED, .. } if *conn == id(2))
        ));
        let left = to(&g, &out, id(0));
        assert_eq!(left.len(), 1);
        assert_eq!(left[0]["type"], "agent_left");
        assert_eq!(left[0]["agentId"], "silent");
        assert!(out.contains(&Output::Ping(id(0))));
        assert_eq!(g.agents(), vec![("alive", "agent")]);
        assert_eq!(g.counts.pruned, 2);
    }

    #[test]
    fn resume_replays_what_was_missed_or_asks_for_resync() {
        let mut g = hub();
        register(&mut g, id(0), "a", "agent");
        register(&mut g, id(1), "b", "agent");
        let mut out = Vec::new();
        g.on_text(id(0), &text(r#"{"type":"m","n":1}"#), 20, &mut out);
        let seen = g.seq();
        // b drops off; meanwhile things happen.
        g.disconnect(id(1), 21, &mut out);
        g.on_text(id(0), &text(r#"{"type":"m","n":2}"#), 22, &mut out);
        let mut missed = Vec::new();
        g.on_text(
            id(0),
            &text(r#"{"type":"m","n":3,"target_id":"b"}"#),
            23,
            &mut missed,
        );
        assert_eq!(to(&g, &missed, id(0))[0]["code"], "unknown_target");
        register(&mut g, id(2), "c", "agent");
        g.on_text(
            id(0),
            &text(r#"{"type":"m","n":4,"target_id":"c"}"#),
            24,
            &mut out,
        );

        g.connect(id(3), Some(seen), 30);
        let mut out = Vec::new();
        g.on_text(
            id(3),
            &text(r#"{"type":"agent_register","agentId":"b"}"#),
            30,
            &mut out,
        );
        let got = to(&g, &out, id(3));
        assert_eq!(got[0]["type"], "agent_registered");
        let replayed: Vec<(String, Option<u64>)> = got[1..]
            .iter()
            .map(|v| (v["type"].as_str().unwrap().to_string(), v["n"].as_u64()))
            .collect();
        // Not replayed: its own agent_left, the message for c, and the one directed at
        // b while it was away (the sender got `unknown_target` for it then).
        assert_eq!(
            replayed,
            vec![
                ("m".to_string(), Some(2)),
                ("agent_joined".to_string(), None),
            ]
        );
        let seqs: Vec<u64> = got[1..]
            .iter()
            .map(|v| v["gateway_seq"].as_u64().unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");

        // Too far back once the history is trimmed; from the future after a restart.
        let mut small = Gateway::new(
            GatewayLimits {
                history_max: 2,
                ..g.limits.clone()
            },
            0,
        );
        register(&mut small, id(0), "a", "agent");
        for _ in 0..5 {
            small.on_text(id(0), &text(r#"{"type":"m"}"#), 40, &mut out);
        }
        for since in [0, small.seq() + 10] {
            small.connect(id(5), Some(since), 41);
            let mut out = Vec::new();
            small.on_text(
                id(5),
                &text(r#"{"type":"agent_register","agentId":"z"}"#),
                41,
                &mut out,
            );
            let got = to(&g, &out, id(5));
            assert_eq!(got[1]["type"], "resync_required", "since {since}");
            assert_eq!(got[1]["since"], since);
            let mut out = Vec::new();
            small.disconnect(id(5), 42, &mut out);
        }
        // Up to date: nothing to replay, no resync.
        small.connect(id(6), None, 43);
        let mut out = Vec::new();
        let msg = json!({"type": "agent_register", "agentId": "y", "since": small.seq()});
        small.on_text(id(6), &text(&msg.to_string()), 43, &mut out);
        assert_eq!(to(&g, &out, id(6)).len(), 1, "only the ack");
    }

    #[test]
    fn events_published_to_nobody_are_replayed_as_the_frames_a_client_would_have_had() {
        // `live` has a client registered; `empty` has none, so it keeps the events and
        // writes their frames only when a client resumes.
        let (mut live, mut empty) = (hub(), hub());
        register(&mut live, id(0), "watcher", "agent");
        let mut broadcast = Vec::new();
        for (i, message) in [Some("hi \"there\"\n"), None, Some("Ü")].iter().enumerate() {
            let ev = Event {
                kind: match message {
                    Some(_) => EventKind::Say,
                    None => EventKind::Presence,
                },
                event: message.map_or("leave", |_| "message").into(),
                user_id: format!("u{i}"),
                username: "Una".into(),
                room: "The Garden".into(),
                message: message.map(str::to_string),
                timestamp: rfc3339(20 + i as u64),
                seq: 7 + i as u64,
                origin: "local".into(),
                ts_ms: 20,
            };
            let mut out = Vec::new();
            live.publish_event(&ev, 20, &mut out);
            match out.as_slice() {
                [Output::Broadcast { frame, .. }] => broadcast.push(frame.as_str().to_string()),
                other => panic!("{other:?}"),
            }
            let mut out = Vec::new();
            empty.publish_event(&ev, 20, &mut out);
            match out.as_slice() {
                [Output::Broadcast {
                    except: None,
                    frame,
                }] => assert!(frame.is_empty()),
                other => panic!("nobody to send it to, nothing written: {other:?}"),
            }
        }
        empty.connect(id(1), Some(0), 30);
        let mut out = Vec::new();
        let reg = r#"{"type":"agent_register","agentId":"watcher"}"#;
        empty.on_text(id(1), &text(reg), 30, &mut out);
        let replayed: Vec<String> = (out.iter())
            .filter_map(|o| match o {
                Output::Send(c, f) if *c == id(1) => Some(f.as_str().to_string()),
                _ => None,
            })
            .skip(1)
            .collect();
        // Byte for byte the live frames, but for their numbers: the live hub's first
        // number went to its client's agent_joined.
        let want: Vec<String> = (broadcast.iter().enumerate())
            .map(|(i, f)| {
                let (live_seq, seq) = (i + 2, i + 1);
                f.replace(
                    &format!("\"gateway_seq\":{live_seq},"),
                    &format!("\"gateway_seq\":{seq},"),
                )
            })
            .collect();
        assert_eq!(replayed, want);
        assert!(
            want[0].contains(r#""message":"hi \"there\"\n""#),
            "{}",
            want[0]
        );
    }

    #[test]
    fn history_is_bounded_by_count_and_age() {
        let mut g = Gateway::new(
            GatewayLimits {
                agent_id: "timmy".into(),
                heartbeat_ms: 1000,
                history_max: 3,
                history_max_age_ms: 100,
                max_messages_per_s: 1000,
                bound: Vec::new(),
            },
            0,
        );
        register(&mut g, id(0), "a", "agent");
        let mut out = Vec::new();
        for t in 0..10 {
            g.on_text(id(0), &text(r#"{"type":"m"}"#), 20 + t, &mut out);
        }
        assert_eq!(g.history.len(), 3);
        g.tick(500, &mut out);
        assert_eq!(g.history.len(), 0, "older than history_max_age");
    }

    #[test]
    fn a_flood_is_refused_once_per_second_and_not_routed() {
        let mut g = Gateway::new(
            GatewayLimits {
                max_messages_per_s: 3,
                ..hub().limits
            },
            0,
        );
        register(&mut g, id(0), "a", "agent"); // the register is message 1 of 3
        register(&mut g, id(1), "b", "agent");
        let mut out = Vec::new();
        for _ in 0..4 {
            g.on_text(id(0), &text(r#"{"type":"m"}"#), 10, &mut out);
        }
        assert_eq!(
            to(&g, &out, id(1))
                .iter()
                .filter(|v| v["type"] == "m")
                .count(),
            2
        );
        let errors: Vec<Value> = to(&g, &out, id(0));
        assert_eq!(errors.len(), 1, "said once: {errors:?}");
        assert_eq!(errors[0]["code"], "rate_limited");
        let mut out = Vec::new();
        g.on_text(id(0), &text(r#"{"type":"m"}"#), 1010, &mut out);
        assert_eq!(to(&g, &out, id(1)).len(), 1, "the next second is fine");
    }

    #[test]
    fn status_lists_agents_with_times_and_counts() {
        let mut g = hub();
        register(&mut g, id(0), "b", "watcher");
        register(&mut g, id(1), "a", "agent");
        let mut out = Vec::new();
        g.on_text(id(1), &text(r#"{"type":"m"}"#), 5000, &mut out);
        let s = g.status();
        assert_eq!(s["count"], 2);
        assert_eq!(s["agents"][0]["agentId"], "a");
        assert_eq!(s["agents"][0]["role"], "agent");
        assert_eq!(s["agents"][0]["messages_in"], 2);
        assert_eq!(s["agents"][0]["last_seen"], rfc3339(5000));
        assert_eq!(s["agents"][1]["connected_at"], rfc3339(10));
        assert_eq!(s["by_role"], json!({"agent": 1, "watcher": 1}));
        assert_eq!(s["totals"]["routed"], 1);
        // a: its ack (its own joined and message are not sent back to it); b: its ack,
        // a's joined and a's message.
        assert_eq!(s["agents"][0]["messages_out"], 1);
        assert_eq!(s["agents"][1]["messages_out"], 3);
        assert_eq!(s["totals"]["delivered"], 2);
    }
}
