//! The WebSocket feeds' side of the hub: what the gateway hub and the Workshop feed ask
//! for beyond frames (agent calls, inbox files, presence), and the frames, closes and
//! pings the loop carries out ([`App::ws_out`]).
//!
//! World events reach the gateway through [`App::route_events`], the same outbox fan-out
//! that relays them to game links: a `say` posted over HTTP is seen by the room's game,
//! by every gateway client and by the status page alike.

use crate::app::calls::{CallKind, ReplyTo};
use crate::app::outcome::{Outcome, Reply};
use crate::app::stream::Part;
use crate::app::{Answer, App, CallInput};
use crate::conn::ConnId;
use crate::feeds::gateway::{self, error_frame, Frame};
use crate::feeds::workshop::{self, inbox::Written, watcher::StateUpdate};
use serde_json::{Map, Value};
use std::time::Instant;

use crate::app::outbox::WsOut;

/// The room the agent answers gateway messages in when they name none.
const DEFAULT_ROOM: &str = "The Threshold";

impl App {
    /// At start (after the store has brought back the world): people who were present
    /// through a WebSocket feed are gone with their connections, so they leave; they come
    /// back with their next `enter` or message.
    pub fn forget_feed_presence(&mut self, now_ms: u64) {
        let stale: Vec<String> = self
            .world
            .rooms()
            .flat_map(|r| r.occupants.iter())
            .map(|h| &h.user_id)
            .filter(|u| u.starts_with("workshop:") || u.starts_with("gateway:"))
            .cloned()
            .collect();
        for u in stale {
            self.world.remove(&u, now_ms);
        }
    }

    /// A connection upgraded on `/ws/matrix`.
    /// A connection upgraded on `/ws/matrix`; `bound` is the `gateway.agents` entry whose
    /// token it presented.
    pub fn gateway_open(
        &mut self,
        conn: ConnId,
        since: Option<u64>,
        bound: Option<usize>,
        now_ms: u64,
    ) {
        self.gateway.connect_bound(conn, since, bound, now_ms);
    }

    pub fn gateway_text(&mut self, conn: ConnId, text: &Frame, now_ms: u64) {
        let mut out = Vec::new();
        self.gateway.on_text(conn, text, now_ms, &mut out);
        self.apply_gateway(out, now_ms);
    }

    pub fn gateway_heard(&mut self, conn: ConnId, now_ms: u64) {
        self.gateway.heard(conn, now_ms);
    }

    pub fn gateway_closed(&mut self, conn: ConnId, now_ms: u64) {
        let mut out = Vec::new();
        self.gateway.disconnect(conn, now_ms, &mut out);
        self.apply_gateway(out, now_ms);
    }

    /// A connection upgraded on `/` or `/ws/workshop`.
    pub fn workshop_open(&mut self, conn: ConnId, now_ms: u64) {
        let mut out = Vec::new();
        self.workshop.connect(conn, now_ms, &mut out);
        self.apply_workshop(out, now_ms);
    }

    pub fn workshop_text(&mut self, conn: ConnId, text: &str, now_ms: u64) {
        let mut out = Vec::new();
        self.workshop.on_text(conn, text, now_ms, &mut out);
        self.apply_workshop(out, now_ms);
    }

    pub fn workshop_heard(&mut self, conn: ConnId, now_ms: u64) {
        self.workshop.heard(conn, now_ms);
    }

    pub fn workshop_closed(&mut self, conn: ConnId, now_ms: u64) {
        let mut out = Vec::new();
        self.workshop.disconnect(conn, &mut out);
        self.apply_workshop(out, now_ms);
    }

    /// The state file watcher reported.
    pub fn workshop_state(&mut self, update: StateUpdate, now_ms: u64) {
        let mut out = Vec::new();
        self.workshop.on_state(update, &mut out);
        self.apply_workshop(out, now_ms);
    }

    /// Heartbeats of both feeds (and the gateway history's age limit).
    pub fn ws_tick(&mut self, now_ms: u64) {
        let mut out = Vec::new();
        self.gateway.tick(now_ms, &mut out);
        self.apply_gateway(out, now_ms);
        let mut out = Vec::new();
        self.workshop.tick(now_ms, &mut out);
        self.apply_workshop(out, now_ms);
    }

    /// Publish world events to the gateway (called from the outbox fan-out).
    pub(crate) fn publish_to_gateway(&mut self, events: &[crate::world::room::Event]) {
        if events.is_empty() {
            return;
        }
        let now = crate::world::time::now_ms();
        let mut out = Vec::new();
        for ev in events {
            self.gateway.publish_event(ev, now, &mut out);
        }
        self.apply_gateway(out, now);
    }

    /// The agent answered a message from a feed: it speaks aloud in `room`.
    pub fn bark_reply(&mut self, room: &str, workshop: bool, reply_id: Option<u64>, reply: Reply) {
        let text = match reply {
            Ok(Outcome::Chat(c)) => c.text,
            Ok(other) => {
                log::warn!("the agent's answer to a WebSocket message was {other:?}, not a chat");
                return;
            }
            Err(r) => {
                log::warn!("the agent's answer to a WebSocket message failed: {r}");
                return;
            }
        };
        let now = crate::world::time::now_ms();
        // A bark event in the room: the gateway and the game hosting the room hear it
        // through the outbox.
        if self.world.ensure_room(room).is_ok() {
            self.bark_in_room(room, &text, reply_id, now);
        }
        if workshop {
            let mut out = Vec::new();
            let mood = self.workshop_mood();
            self.workshop.bark(&text, Some(&mood), reply_id, &mut out);
            self.apply_workshop(out, now);
        }
    }

    /// The agent barks in `room`: a bark event there (the links hosting the room hear it
    /// through the outbox) and a `bark` frame on the gateway, with the `reply_id` of its
    /// parts when it was streamed. In cluster mode the frame goes into the log beside
    /// the event, since only this node knows its `reply_id`.
    pub(crate) fn bark_in_room(
        &mut self,
        room: &str,
        text: &str,
        reply_id: Option<u64>,
        now: u64,
    ) -> Option<crate::world::room::Event> {
        let event = self.world.bark(room, text, now)?;
        if self.cluster.is_some() {
            self.gateway.propose_bark(&event.room, text, reply_id, now);
        } else if let Some(id) = reply_id {
            self.gateway.expect_bark(&event.room, text, id);
        }
        Some(event)
    }

    /// A part of a streamed bark: a `bark_part` frame on the gateway (in its resumable
    /// log) and, for a Workshop visitor's message, to the Workshop's browsers. The feeds
    /// have no `thinking`.
    pub fn bark_part(&mut self, room: &str, workshop: bool, reply_id: u64, part: &Part) {
        let Part::Text { index, text, .. } = part else {
            return;
        };
        let now = crate::world::time::now_ms();
        let mut m = Map::new();
        m.insert("type".into(), "bark_part".into());
        m.insert("reply_id".into(), reply_id.into());
        m.insert("index".into(), (*index).into());
        m.insert("text".into(), text.as_str().into());
        if workshop {
            let mut out = Vec::new();
            self.workshop.bark_part(m.clone(), &mut out);
            self.apply_workshop(out, now);
        }
        m.insert("agentId".into(), self.cfg.gateway.agent_id.clone().into());
        m.insert("room".into(), room.into());
        let mut out = Vec::new();
        self.gateway.publish(m, None, now, &mut out);
        self.apply_gateway(out, now);
    }

    /// The agent's mood for a Workshop bark: the state file's `mood` when it is a
    /// string, else the persona's (`agent.mood`).
    fn workshop_mood(&self) -> String {
        match self.workshop.state().get("mood") {
            Some(Value::String(m)) if !m.trim().is_empty() => m.clone(),
            _ => self.cfg.agent.mood.clone(),
        }
    }

    pub(crate) fn apply_gateway(&mut self, out: Vec<gateway::Output>, now_ms: u64) {
        for o in out {
            match o {
                gateway::Output::Send(c, f) => self.out.frames.push(WsOut::Send(c, f)),
                gateway::Output::Broadcast { except, frame } => {
                    self.out.frames.push(WsOut::Broadcast(except, frame))
                }
                gateway::Output::Member(c) => self.out.frames.push(WsOut::Join(c)),
                gateway::Output::Close { conn, code, reason } => {
                    log::info!("conn={} gateway closes it: {code} {reason}", conn.idx);
                    self.out.frames.push(WsOut::Close(conn, code, reason))
                }
                gateway::Output::Ping(c) => self.out.frames.push(WsOut::Ping(c)),
                gateway::Output::ForAgent { from, msg, .. } => {
                    self.gateway_for_agent(&from, &msg, now_ms)
                }
            }
        }
    }

    fn apply_workshop(&mut self, out: Vec<workshop::Output>, now_ms: u64) {
        for o in out {
            match o {
                workshop::Output::Send(c, f) => self.out.frames.push(WsOut::Send(c, f)),
                workshop::Output::Close { conn, code, reason } => {
                    log::info!("conn={} workshop closes it: {code} {reason}", conn.idx);
                    self.out.frames.push(WsOut::Close(conn, code, reason))
                }
                workshop::Output::Ping(c) => self.out.frames.push(WsOut::Ping(c)),
                workshop::Output::Inbox { conn, msg } => {
                    let taken = self.inbox.as_ref().is_some_and(|i| i.submit(conn, msg));
                    if !taken {
                        log::warn!(
                            "workshop inbox: a visitor message was dropped (the writer is not keeping up)"
                        );
                        let why = "the inbox writer is not keeping up";
                        self.inbox_failed(conn, why, now_ms);
                    }
                }
                workshop::Output::ForAgent {
                    conn,
                    visitor,
                    text,
                    stream,
                } => {
                    let user = format!("workshop:{visitor}");
                    let how = (true, stream);
                    let sent = self.feed_chat(&user, &visitor, workshop::ROOM, &text, how, now_ms);
                    if let Err(why) = sent {
                        self.out
                            .frames
                            .push(WsOut::Send(conn, error_frame("rate_limited", &why)));
                    }
                }
                workshop::Output::Enter { visitor } => {
                    if let Ok(room) = self.world.ensure_room(workshop::ROOM) {
                        let user = format!("workshop:{visitor}");
                        self.world.place(&user, &visitor, &room, now_ms);
                    }
                }
                workshop::Output::Leave { visitor } => {
                    self.world.remove(&format!("workshop:{visitor}"), now_ms);
                }
            }
        }
    }

    /// What became of a visitor's message in the inbox (from the writer thread). A failure
    /// is told to that visitor and shown in `/bridge/health` until a write succeeds again.
    pub fn inbox_written(&mut self, written: Written, now_ms: u64) {
        match written {
            (_, Ok(_)) => {
                if self.inbox_trouble.take().is_some() {
                    log::info!("workshop inbox: messages are written again");
                }
            }
            (conn, Err(why)) => self.inbox_failed(conn, &why, now_ms),
        }
    }

    fn inbox_failed(&mut self, conn: ConnId, why: &str, now_ms: u64) {
        self.metrics.inbox_dropped += 1;
        let text = format!("your message could not be saved in the Workshop inbox: {why}");
        self.out
            .frames
            .push(WsOut::Send(conn, error_frame("inbox_unavailable", &text)));
        if self.inbox_trouble.is_none() {
            self.inbox_trouble = Some((why.to_string(), now_ms));
        }
    }

    /// A gateway message for the bridge's agent: `text` (or `message`), in `room` (or
    /// where the sender is, or the Threshold).
    fn gateway_for_agent(&mut self, from: &str, msg: &Map<String, Value>, now_ms: u64) {
        let text = ["text", "message"]
            .iter()
            .find_map(|k| msg.get(*k).and_then(Value::as_str))
            .filter(|t| !t.trim().is_empty());
        let Some(text) = text.map(str::to_string) else {
            return;
        };
        let user = format!("gateway:{from}");
        let room = msg
            .get("room")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| self.world.occupant(&user).map(|o| o.room.clone()))
            .unwrap_or_else(|| DEFAULT_ROOM.to_string());
        // Barks stream unless the message asks not to (`"stream": false`): a client that
        // ignores `bark_part` still gets the whole `bark`.
        let stream = msg.get("stream") != Some(&Value::Bool(false));
        if let Err(why) = self.feed_chat(&user, from, &room, &text, (false, stream), now_ms) {
            if let Some(conn) = self.gateway.conn_of(from) {
                self.out
                    .frames
                    .push(WsOut::Send(conn, error_frame("rate_limited", &why)));
            }
        }
    }

    /// An agent call for a feed's message; the answer becomes a bark. `Err` = refused
    /// (rate limit, bad room, message too long), as a sentence for an error frame.
    fn feed_chat(
        &mut self,
        user: &str,
        username: &str,
        room: &str,
        text: &str,
        (workshop, stream): (bool, bool),
        now_ms: u64,
    ) -> Result<(), String> {
        let max = self.cfg.rooms.message_max_bytes;
        if text.len() > max {
            return Err(format!("the message is longer than {max} bytes"));
        }
        if let Err(retry) = self.rate.check(user, now_ms) {
            self.metrics.rate_limited += 1;
            return Err(format!(
                "too many messages from {username}: at most {} per {} s; retry in {retry} s",
                self.cfg.http.rate_limit_requests, self.cfg.http.rate_limit_window_s
            ));
        }
        let room = self.world.ensure_room(room).map_err(|e| e.to_string())?;
        let input = CallInput {
            kind: CallKind::Chat,
            user_id: Some(user.to_string()),
            username: username.to_string(),
            room: room.clone(),
            message: text.to_string(),
            stream,
            system: None,
        };
        let to = ReplyTo::Bark {
            room: room.clone(),
            workshop,
            reply_id: None,
        };
        // A streamed bark comes later, after its parts.
        if let Answer::Now(reply) = self.begin_call(input, to, now_ms, Instant::now()) {
            self.bark_reply(&room, workshop, None, reply);
        }
        Ok(())
    }

    /// Prometheus lines for the feeds.
    pub fn render_ws_metrics(&self, o: &mut String) {
        use std::fmt::Write;
        let g = &self.gateway.counts;
        let w = &self.workshop.counts;
        let _ = writeln!(
            o,
            "# HELP worldbridge_ws_connections Open WebSocket connections by feed.\n\
             # TYPE worldbridge_ws_connections gauge\n\
             worldbridge_ws_connections{{feed=\"gateway\"}} {}\n\
             worldbridge_ws_connections{{feed=\"workshop\"}} {}\n\
             # HELP worldbridge_gateway_agents Registered gateway agents.\n\
             # TYPE worldbridge_gateway_agents gauge\n\
             worldbridge_gateway_agents {}\n\
             # HELP worldbridge_gateway_delivered_total Frames the gateway delivered.\n\
             # TYPE worldbridge_gateway_delivered_total counter\n\
             worldbridge_gateway_delivered_total {}\n\
             # HELP worldbridge_gateway_pruned_total Gateway connections closed for silence.\n\
             # TYPE worldbridge_gateway_pruned_total counter\n\
             worldbridge_gateway_pruned_total {}\n\
             # HELP worldbridge_ws_slow_consumers_total WebSocket clients closed for not reading.\n\
             # TYPE worldbridge_ws_slow_consumers_total counter\n\
             worldbridge_ws_slow_consumers_total {}\n\
             # HELP worldbridge_workshop_messages_total Visitor messages taken by the Workshop feed.\n\
             # TYPE worldbridge_workshop_messages_total counter\n\
             worldbridge_workshop_messages_total {}\n\
             # HELP worldbridge_workshop_state_changes_total State changes sent to the Workshop.\n\
             # TYPE worldbridge_workshop_state_changes_total counter\n\
             worldbridge_workshop_state_changes_total {}",
            self.gateway.connections(),
            self.workshop.connections(),
            self.gateway.agents().len(),
            g.delivered,
            g.pruned,
            self.metrics.ws_slow_consumers,
            w.messages,
            w.state_changes,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn presence_through_a_feed_does_not_outlive_a_restart() {
        let mut app = App::new(Config::default()).unwrap();
        let room = app.world.ensure_room(workshop::ROOM).unwrap();
        app.world.place("workshop:Alexander", "Alexander", &room, 1);
        app.world.place("gateway:bob", "bob", "The Tower", 1);
        app.world.place("alice", "Alice", "The Tower", 1);
        app.forget_feed_presence(2);
        assert!(app.world.occupant("workshop:Alexander").is_none());
        assert!(app.world.occupant("gateway:bob").is_none());
        assert!(app.world.occupant("alice").is_some(), "HTTP users stay");
    }

    #[test]
    fn a_bark_reply_speaks_in_the_room_and_to_the_workshop() {
        let mut app = App::new(Config::default()).unwrap();
        let mut out = Vec::new();
        let conn = ConnId { idx: 1, gen: 0 };
        app.workshop.connect(conn, 0, &mut out);
        app.world.take_new_events();
        let chat = crate::app::outcome::ChatReply {
            text: "Slowly.".into(),
            user: "visitor".into(),
            room: workshop::ROOM.into(),
            session_messages: 1,
            crisis: false,
        };
        app.bark_reply(workshop::ROOM, true, None, Ok(Outcome::Chat(chat)));
        let events = app.world.take_new_events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].message.as_deref(), Some("Slowly."));
        assert!(app.out.frames.iter().any(
            |o| matches!(o, WsOut::Send(c, f) if *c == conn && f.as_str().contains("Slowly."))
        ));
        // A failed call barks nothing.
        app.out.frames.clear();
        app.bark_reply(
            workshop::ROOM,
            true,
            None,
            Err(crate::app::outcome::Refusal::new("agent_timeout", "late")),
        );
        assert!(app.world.take_new_events().is_empty());
        assert!(app.out.frames.is_empty());
    }
}
