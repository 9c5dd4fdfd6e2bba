//! The Workshop state feed (seed 002): browsers connect with
//! `new WebSocket("ws://localhost:8765")` (or `/ws/workshop`), get the agent's state at
//! once, then a diff whenever the state file changes; visitors' messages go to the
//! agent's inbox and the agent's barks come back.
//!
//! [`Workshop`] is socket-free like the rest of the core: it takes connections, texts,
//! state updates and `now`, and pushes [`Output`]s. The state file is watched by
//! [`watcher`] on its own thread; messages are written by [`inbox`] on another.
//!
//! Wire messages, server → client:
//! - `{"type":"state","data":{…}}` on connect and, with `workshop.diff = false` (or when
//!   a merge patch cannot express the change), on every change;
//! - `{"type":"state_diff","data":<RFC 7386 merge patch>}` otherwise;
//! - `{"type":"bark","text":…,"mood"?:…}` when the agent speaks;
//! - `{"type":"error","code":…,"error":…}` for a frame we cannot take.
//!
//! Client → server: `{"type":"message","text":…,"visitor"?:…}`,
//! `{"type":"enter","visitor":…}`, `{"type":"leave","visitor":…}`, and an application
//! `{"type":"ping"}` (answered with `pong`) for clients that cannot see WebSocket pings.

pub mod inbox;
pub mod merge_patch;
pub mod watcher;

use crate::conn::ConnId;
use crate::feeds::gateway::error_frame;
use crate::feeds::heartbeat::{Flood, Flooding, Heartbeat};
use crate::world::check_name;
use inbox::InboxMessage;
use merge_patch::{diff_exact, Change};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use watcher::StateUpdate;

pub use crate::feeds::gateway::Frame;

/// The room visitors are present in while they are in the Workshop.
pub const ROOM: &str = "Workshop";
/// The name a visitor has when their message names nobody.
pub const ANONYMOUS: &str = "visitor";
/// Close code for a browser that stopped answering pings.
pub const CLOSE_SILENT: u16 = 1001;

/// What the feed asks the transport (and the app) to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Send(ConnId, Frame),
    Close {
        conn: ConnId,
        code: u16,
        reason: String,
    },
    Ping(ConnId),
    /// Write this to the inbox.
    Inbox {
        conn: ConnId,
        msg: InboxMessage,
    },
    /// The visitor's message is for the agent too (its answer comes back as a bark).
    ForAgent {
        conn: ConnId,
        visitor: String,
        text: String,
        /// The answer goes out in parts (`bark_part`) before the `bark`, unless the message
        /// said `"stream": false`.
        stream: bool,
    },
    /// Presence in [`ROOM`]: the first connection of this visitor entered...
    Enter {
        visitor: String,
    },
    /// ...the last one left (or went away).
    Leave {
        visitor: String,
    },
}

/// The feed's settings, from `Config` (`workshop.*`, `rooms.message_max_bytes`).
#[derive(Debug, Clone, Copy)]
pub struct WorkshopLimits {
    pub diff: bool,
    pub heartbeat_ms: u64,
    /// Longest visitor message, in bytes.
    pub message_max_bytes: usize,
    /// Most visitor names one connection may hold present at once.
    pub visitors_per_conn: usize,
    /// Messages one connection may send per second.
    pub max_messages_per_s: u32,
}

/// Totals since start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WorkshopCounts {
    pub connections: u64,
    pub messages: u64,
    pub state_changes: u64,
    pub invalid_states: u64,
    pub errors: u64,
    pub pruned: u64,
}

#[derive(Debug, Default)]
struct Client {
    /// Visitors this connection said `enter` for.
    visitors: BTreeSet<String>,
    flood: Flood,
}

/// The feed.
#[derive(Debug)]
pub struct Workshop {
    limits: WorkshopLimits,
    state: Value,
    /// The current state as a `state` frame, built once per change.
    state_frame: Frame,
    clients: HashMap<ConnId, Client>,
    /// Visitor → how many connections have them present.
    present: BTreeMap<String, usize>,
    heartbeat: Heartbeat,
    pub counts: WorkshopCounts,
}

fn state_frame(state: &Value) -> Frame {
    Frame::from(json!({"type": "state", "data": state}).to_string())
}

impl Workshop {
    pub fn new(limits: WorkshopLimits, now_ms: u64) -> Workshop {
        let state = Value::Object(Map::new());
        Workshop {
            state_frame: state_frame(&state),
            state,
            limits,
            clients: HashMap::new(),
            present: BTreeMap::new(),
            heartbeat: Heartbeat::new(limits.heartbeat_ms, now_ms),
            counts: WorkshopCounts::default(),
        }
    }

    /// The last good state.
    pub fn state(&self) -> &Value {
        &self.state
    }

    pub fn connections(&self) -> usize {
        self.clients.len()
    }

    /// Visitors present now, by name.
    pub fn visitors(&self) -> Vec<&str> {
        self.present.keys().map(String::as_str).collect()
    }

    pub fn next_tick_ms(&self) -> u64 {
        self.heartbeat.next_round_ms()
    }

    /// A browser connected: it gets the whole state at once (also after a reconnect).
    pub fn connect(&mut self, conn: ConnId, now_ms: u64, out: &mut Vec<Output>) {
        self.counts.connections += 1;
        self.clients.insert(conn, Client::default());
        self.heartbeat.add(conn, now_ms);
        out.push(Output::Send(conn, self.state_frame.clone()));
    }

    pub fn heard(&mut self, conn: ConnId, now_ms: u64) {
        self.heartbeat.heard(conn, now_ms);
    }

    /// The connection is gone: its visitors leave unless another connection has them.
    pub fn disconnect(&mut self, conn: ConnId, out: &mut Vec<Output>) {
        self.heartbeat.remove(conn);
        if let Some(c) = self.clients.remove(&conn) {
            for v in c.visitors {
                self.absent(&v, out);
            }
        }
    }

    /// A text frame from a browser.
    pub fn on_text(&mut self, conn: ConnId, text: &str, now_ms: u64, out: &mut Vec<Output>) {
        let max = self.limits.max_messages_per_s;
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        let flooding = client.flood.check(now_ms, max);
        self.heartbeat.heard(conn, now_ms);
        match flooding {
            Flooding::Allowed => {}
            Flooding::Refused => {
                let why = format!(
                    "more than {max} messages in a second: the rest of this second is dropped"
                );
                return self.refuse(conn, "rate_limited", &why, out);
            }
            Flooding::RefusedAgain => return,
        }
        let msg = match super::frame_object(text) {
            Ok(m) => m,
            Err((code, why)) => return self.refuse(conn, code, &why, out),
        };
        let kind = msg.get("type").and_then(Value::as_str).unwrap_or_default();
        match kind {
            "message" => self.message(conn, &msg, now_ms, out),
            "enter" | "leave" => {
                let visitor = match self.visitor(&msg, true) {
                    Ok(v) => v,
                    Err(e) => return self.refuse(conn, "bad_visitor", &e, out),
                };
                if kind == "enter" {
                    self.enter(conn, visitor, out);
                } else {
                    self.leave(conn, &visitor, out);
                }
            }
            "ping" => out.push(Output::Send(conn, Frame::from_static(r#"{"type":"pong"}"#))),
            "" => self.refuse(
                conn,
                "missing_type",
                "every message needs a string `type`",
                out,
            ),
            other => {
                let why = format!(
                    "unknown type {other:?}: this feed takes message, enter, leave and ping"
                );
                self.refuse(conn, "unknown_type", &why, out)
            }
        }
    }

    /// The watcher saw something. A file that does not parse changes nothing (its error is
    /// logged once); a missing file is the empty state.
    pub fn on_state(&mut self, update: StateUpdate, out: &mut Vec<Output>) {
        let new = match update {
            StateUpdate::Changed(v) => v,
            StateUpdate::Missing => Value::Object(Map::new()),
            StateUpdate::Invalid(why) => {
                self.counts.invalid_states += 1;
                log::warn!("workshop state file ignored, keeping the last good state: {why}");
                return;
            }
        };
        let change = if self.limits.diff {
            diff_exact(&self.state, &new)
        } else if self.state == new {
            Change::Same
        } else {
            Change::Full
        };
        let frame = match change {
            Change::Same => return,
            Change::Patch(p) => Frame::from(json!({"type": "state_diff", "data": p}).to_string()),
            Change::Full => state_frame(&new),
        };
        self.counts.state_changes += 1;
        self.state_frame = state_frame(&new);
        self.state = new;
        self.broadcast(frame, out);
    }

    /// The agent speaks to the Workshop.
    pub fn bark(
        &mut self,
        text: &str,
        mood: Option<&str>,
        reply_id: Option<u64>,
        out: &mut Vec<Output>,
    ) {
        let mut m = Map::new();
        m.insert("type".into(), "bark".into());
        m.insert("text".into(), text.into());
        if let Some(mood) = mood {
            m.insert("mood".into(), mood.into());
        }
        if let Some(id) = reply_id {
            m.insert("reply_id".into(), id.into());
        }
        self.broadcast(Frame::from(Value::Object(m).to_string()), out);
    }

    /// A part of a streamed bark (`bark_part`), to every browser.
    pub fn bark_part(&mut self, frame: Map<String, Value>, out: &mut Vec<Output>) {
        self.broadcast(Frame::from(Value::Object(frame).to_string()), out);
    }

    /// Heartbeat: ping everyone; close those silent a full interval after a ping.
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        let round = self.heartbeat.tick(now_ms);
        for conn in round.dead {
            self.counts.pruned += 1;
            out.push(Output::Close {
                conn,
                code: CLOSE_SILENT,
                reason: "no answer to ping within the heartbeat interval".into(),
            });
            self.disconnect(conn, out);
        }
        out.extend(round.ping.into_iter().map(Output::Ping));
    }

    fn message(
        &mut self,
        conn: ConnId,
        msg: &Map<String, Value>,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let text = match msg.get("text") {
            Some(Value::String(t)) if !t.trim().is_empty() => t,
            _ => {
                return self.refuse(
                    conn,
                    "bad_text",
                    "a message needs a non-empty string `text`",
                    out,
                )
            }
        };
        if text.len() > self.limits.message_max_bytes {
            let why = format!(
                "`text` is {} bytes; the most is {}",
                text.len(),
                self.limits.message_max_bytes
            );
            return self.refuse(conn, "message_too_long", &why, out);
        }
        let visitor = match self.visitor(msg, false) {
            Ok(v) => v,
            Err(e) => return self.refuse(conn, "bad_visitor", &e, out),
        };
        self.counts.messages += 1;
        out.push(Output::Inbox {
            conn,
            msg: InboxMessage::new(text, &visitor, now_ms),
        });
        out.push(Output::ForAgent {
            conn,
            visitor,
            text: text.clone(),
            // Streams unless the message says `"stream": false`.
            stream: msg.get("stream") != Some(&Value::Bool(false)),
        });
    }

    /// The `visitor` field: required for enter/leave, [`ANONYMOUS`] for a message.
    fn visitor(&self, msg: &Map<String, Value>, required: bool) -> Result<String, String> {
        match msg.get("visitor") {
            None | Some(Value::Null) if !required => Ok(ANONYMOUS.to_string()),
            Some(Value::String(v)) => {
                check_name("visitor", v).map_err(|e| e.to_string())?;
                Ok(v.trim().to_string())
            }
            _ => Err("`visitor` must be the visitor's name, a non-empty string".into()),
        }
    }

    fn enter(&mut self, conn: ConnId, visitor: String, out: &mut Vec<Output>) {
        let max = self.limits.visitors_per_conn;
        let Some(c) = self.clients.get_mut(&conn) else {
            return;
        };
        if c.visitors.contains(&visitor) {
            return;
        }
        if c.visitors.len() >= max {
            let why = format!("one connection may have at most {max} visitors present");
            return self.refuse(conn, "too_many_visitors", &why, out);
        }
        c.visitors.insert(visitor.clone());
        let n = self.present.entry(visitor.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            out.push(Output::Enter { visitor });
        }
    }

    fn leave(&mut self, conn: ConnId, visitor: &str, out: &mut Vec<Output>) {
        let removed = self
            .clients
            .get_mut(&conn)
            .is_some_and(|c| c.visitors.remove(visitor));
        if removed {
            self.absent(visitor, out);
        }
    }

    fn absent(&mut self, visitor: &str, out: &mut Vec<Output>) {
        if let Some(n) = self.present.get_mut(visitor) {
            *n -= 1;
            if *n == 0 {
                self.present.remove(visitor);
                out.push(Output::Leave {
                    visitor: visitor.to_string(),
                });
            }
        }
    }

    fn broadcast(&mut self, frame: Frame, out: &mut Vec<Output>) {
        out.extend(
            self.clients
                .keys()
                .map(|&conn| Output::Send(conn, frame.clone())),
        );
    }

    fn refuse(&mut self, conn: ConnId, code: &str, error: &str, out: &mut Vec<Output>) {
        self.counts.errors += 1;
        log::debug!(
            "workshop conn={} refused a frame: {code}: {error}",
            conn.idx
        );
        out.push(Output::Send(conn, error_frame(code, error)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(idx: u32) -> ConnId {
        ConnId { idx, gen: 0 }
    }

    fn feed(diff: bool) -> Workshop {
        Workshop::new(
            WorkshopLimits {
                diff,
                heartbeat_ms: 15_000,
                message_max_bytes: 100,
                visitors_per_conn: 2,
                max_messages_per_s: 1000,
            },
            0,
        )
    }

    fn frames(out: &[Output], conn: ConnId) -> Vec<Value> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send(c, f) if *c == conn => Some(serde_json::from_str(f.as_str()).unwrap()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn state_on_connect_then_diffs_and_full_state_on_reconnect() {
        let mut w = feed(true);
        let mut out = Vec::new();
        w.on_state(
            StateUpdate::Changed(json!({"mood": "calm", "tower": {"floors": 3}})),
            &mut out,
        );
        assert!(out.is_empty(), "nobody connected yet");
        w.connect(id(1), 0, &mut out);
        assert_eq!(
            frames(&out, id(1)),
            vec![json!({"type": "state", "data": {"mood": "calm", "tower": {"floors": 3}}})]
        );

        let mut out = Vec::new();
        w.on_state(
            StateUpdate::Changed(json!({"tower": {"floors": 4, "roof": true}})),
            &mut out,
        );
        assert_eq!(
            frames(&out, id(1)),
            vec![
                json!({"type": "state_diff", "data": {"mood": null, "tower": {"floors": 4, "roof": true}}})
            ]
        );
        // The same state again: nothing.
        let mut out = Vec::new();
        w.on_state(
            StateUpdate::Changed(json!({"tower": {"floors": 4, "roof": true}})),
            &mut out,
        );
        assert!(out.is_empty());

        // A reconnect gets the full current state, not a diff.
        w.disconnect(id(1), &mut out);
        let mut out = Vec::new();
        w.connect(id(2), 0, &mut out);
        assert_eq!(
            frames(&out, id(2)),
            vec![json!({"type": "state", "data": {"tower": {"floors": 4, "roof": true}}})]
        );
    }

    #[test]
    fn invalid_state_keeps_the_last_good_one_and_missing_is_empty() {
        let mut w = feed(true);
        let mut out = Vec::new();
        w.connect(id(1), 0, &mut out);
        w.on_state(StateUpdate::Changed(json!({"a": 1})), &mut out);
        let mut out = Vec::new();
        w.on_state(StateUpdate::Invalid("invalid YAML".into()), &mut out);
        assert!(out.is_empty(), "nothing sent for a bad file");
        assert_eq!(w.state(), &json!({"a": 1}));
        assert_eq!(w.counts.invalid_states, 1);
        w.on_state(StateUpdate::Missing, &mut out);
        assert_eq!(
            frames(&out, id(1)),
            vec![json!({"type": "state_diff", "data": {"a": null}})]
        );
        assert_eq!(w.state(), &json!({}));
    }

    #[test]
    fn without_diffs_every_change_is_a_full_state_and_nulls_force_full_state() {
        let mut w = feed(false);
        let mut out = Vec::new();
        w.connect(id(1), 0, &mut out);
        let mut out = Vec::new();
        w.on_state(StateUpdate::Changed(json!({"a": 1})), &mut out);
        assert_eq!(
            frames(&out, id(1)),
            vec![json!({"type": "state", "data": {"a": 1}})]
        );

        let mut w = feed(true);
        w.connect(id(1), 0, &mut out);
        w.on_state(StateUpdate::Changed(json!({"a": 1})), &mut out);
        let mut out = Vec::new();
        w.on_state(StateUpdate::Changed(json!({"a": null})), &mut out);
        assert_eq!(
            frames(&out, id(1)),
            vec![json!({"type": "state", "data": {"a": null}})],
            "a merge patch cannot set null"
        );
    }

    #[test]
    fn visitor_message_goes_to_inbox_and_agent() {
        let mut w = feed(true);
        let mut out = Vec::new();
        w.connect(id(1), 0, &mut out);
        let mut out = Vec::new();
        w.on_text(
            id(1),
            r#"{"type":"message","text":"How's the Tower coming?","visitor":"Alexander"}"#,
            5000,
            &mut out,
        );
        assert_eq!(
            out,
            vec![
                Output::Inbox {
                    conn: id(1),
                    msg: InboxMessage::new("How's the Tower coming?", "Alexander", 5000)
                },
                Output::ForAgent {
                    conn: id(1),
                    visitor: "Alexander".into(),
                    text: "How's the Tower coming?".into(),
                    // Barks stream unless the message says `"stream": false`.
                    stream: true,
                }
            ]
        );
        // The seed's own example has no visitor.
        let mut out = Vec::new();
        w.on_text(
            id(1),
            r#"{"type":"message","text":"Hey Timmy"}"#,
            5001,
            &mut out,
        );
        assert!(matches!(&out[0], Output::Inbox { msg, .. } if msg.visitor == ANONYMOUS));
    }

    #[test]
    fn enter_and_leave_are_presence_once_per_visitor() {
        let mut w = feed(true);
        let mut out = Vec::new();
        w.connect(id(1), 0, &mut out);
        w.connect(id(2), 0, &mut out);
        let mut out = Vec::new();
        w.on_text(
            id(1),
            r#"{"type":"enter","visitor":"Alexander"}"#,
            1,
            &mut out,
        );
        w.on_text(
            id(1),
            r#"{"type":"enter","visitor":"Alexander"}"#,
            1,
            &mut out,
        );
        w.on_text(
            id(2),
            r#"{"type":"enter","visitor":"Alexander"}"#,
            1,
            &mut out,
        );
        assert_eq!(
            out,
            vec![Output::Enter {
                visitor: "Alexander".into()
            }]
        );
        assert_eq!(w.visitors(), vec!["Alexander"]);
        let mut out = Vec::new();
        w.on_text(
            id(1),
            r#"{"type":"leave","visitor":"Alexander"}"#,
            2,
            &mut out,
        );
        assert!(out.is_empty(), "still present through the other connection");
        // Closing the tab without `leave` still leaves.
        w.disconnect(id(2), &mut out);
        assert_eq!(
            out,
            vec![Output::Leave {
                visitor: "Alexander".into()
            }]
        );
        assert!(w.visitors().is_empty());
    }

    #[test]
    fn bad_frames_get_error_frames() {
        let mut w = feed(true);
        let mut out = Vec::new();
        w.connect(id(1), 0, &mut out);
        let long = json!({"type": "message", "text": "x".repeat(101)}).to_string();
        for (raw, code) in [
            ("{oops", "bad_json"),
            ("\"str\"", "bad_message"),
            ("{}", "missing_type"),
            (r#"{"type":"dance"}"#, "unknown_type"),
            (r#"{"type":"message"}"#, "bad_text"),
            (r#"{"type":"message","text":"  "}"#, "bad_text"),
            (long.as_str(), "message_too_long"),
            (
                r#"{"type":"message","text":"hi","visitor":5}"#,
                "bad_visitor",
            ),
            (r#"{"type":"enter"}"#, "bad_visitor"),
            (r#"{"type":"enter","visitor":"a\u0007b"}"#, "bad_visitor"),
        ] {
            let mut out = Vec::new();
            w.on_text(id(1), raw, 1, &mut out);
            let got = frames(&out, id(1));
            assert_eq!(got.len(), 1, "{raw}: {out:?}");
            assert_eq!(got[0]["type"], "error", "{raw}");
            assert_eq!(got[0]["code"], code, "{raw}");
        }
        // The visitor cap per connection.
        let mut out = Vec::new();
        for v in ["a", "b", "c"] {
            w.on_text(
                id(1),
                &json!({"type": "enter", "visitor": v}).to_string(),
                1,
                &mut out,
            );
        }
        assert_eq!(frames(&out, id(1))[0]["code"], "too_many_visitors");
        let mut out = Vec::new();
        w.on_text(id(1), r#"{"type":"ping"}"#, 1, &mut out);
        assert_eq!(frames(&out, id(1)), vec![json!({"type": "pong"})]);
    }

    #[test]
    fn barks_reach_everyone_and_silent_browsers_are_pruned() {
        let mut w = feed(true);
        let mut out = Vec::new();
        w.connect(id(1), 0, &mut out);
        w.connect(id(2), 0, &mut out);
        let mut out = Vec::new();
        w.bark(
            "Slowly. But the stones know where they go.",
            Some("contemplative"),
            None,
            &mut out,
        );
        for c in [id(1), id(2)] {
            assert_eq!(
                frames(&out, c),
                vec![
                    json!({"type": "bark", "text": "Slowly. But the stones know where they go.", "mood": "contemplative"})
                ]
            );
        }
        let mut out = Vec::new();
        w.on_text(id(2), r#"{"type":"enter","visitor":"Z"}"#, 1, &mut out);
        w.tick(15_000, &mut out);
        w.heard(id(1), 16_000);
        let mut out = Vec::new();
        w.tick(30_000, &mut out);
        assert!(out.contains(&Output::Close {
            conn: id(2),
            code: CLOSE_SILENT,
            reason: "no answer to ping within the heartbeat interval".into()
        }));
        assert!(out.contains(&Output::Leave {
            visitor: "Z".into()
        }));
        assert!(out.contains(&Output::Ping(id(1))));
        assert_eq!(w.connections(), 1);
    }
}
