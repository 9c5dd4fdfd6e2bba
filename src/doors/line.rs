//! The line door: each message from a game link is read here (its fields checked with
//! the protocol's error codes), becomes a call on the hub, and is answered with an `ok`,
//! `reply` or `error` line; the hub's later answers are rendered by [`reply_line`] and
//! [`request_line`]. The hub's own requests to games live in `app/games.rs`, the relaying
//! of events to the links that hear a room in `app/fan_out.rs`.
//!
//! `docs/line-protocol.md` is the contract.

use crate::app::calls::{CallKind, ReplyTo};
use crate::app::games::acted;
use crate::app::outcome::{Outcome, Refusal as HubRefusal, Reply};
use crate::app::stream::Part;
use crate::app::{Answer, App, CallInput};
use crate::codec::ndjson::encode;
use crate::conn::line::LineHandler;
use crate::conn::ConnId;
use crate::conn::Drive;
use crate::doors::fields::{constant_time_eq, Fields};
use crate::federation::portal::Scope;
use crate::world::protocol::{ActionResult, Perception, LINK_KINDS, PROTOCOL};
use crate::world::room::RoomSpec;
use crate::world::time::now_ms;
use crate::world::{check_name, WorldError};
use serde_json::{json, Map, Value};
use std::time::Instant;

/// Message types that change the world (refused while the store cannot write).
const CHANGES_STATE: [&str; 6] = ["presence", "say", "chat", "event", "room", "travel"];

/// A message refused: the `code` and sentence of an `error` line.
struct Refusal {
    code: &'static str,
    msg: String,
    close: bool,
}

fn refuse(code: &'static str, msg: impl Into<String>) -> Refusal {
    Refusal {
        code,
        msg: msg.into(),
        close: false,
    }
}

impl From<HubRefusal> for Refusal {
    fn from(r: HubRefusal) -> Refusal {
        Refusal {
            code: r.code,
            msg: r.message,
            close: false,
        }
    }
}

impl From<WorldError> for Refusal {
    fn from(e: WorldError) -> Refusal {
        let code = match e {
            WorldError::UnknownRoom(_) => "not_found",
            WorldError::AlreadyThere(_) | WorldError::Invalid(..) => "bad_field",
            WorldError::Limit(_) => "limit_reached",
        };
        refuse(code, e.to_string())
    }
}

/// An `error` line.
pub fn error_line(id: Option<&Value>, code: &str, msg: &str, out: &mut Vec<u8>) {
    let mut m = json!({"type": "error", "code": code, "error": msg});
    if let (Some(id), Some(obj)) = (id, m.as_object_mut()) {
        obj.insert("id".into(), id.clone());
    }
    encode(&m, out);
}

/// `{"type": kind, "id": id, ...rest}` as a line.
fn answer_line(kind: &str, id: Option<&Value>, rest: Value, out: &mut Vec<u8>) {
    let mut m = Map::new();
    m.insert("type".into(), json!(kind));
    if let Some(id) = id {
        m.insert("id".into(), id.clone());
    }
    if let Value::Object(r) = rest {
        m.extend(r);
    }
    encode(&Value::Object(m), out);
}

/// The `LineHandler` view of the app, for one connection's drive.
pub struct LineRoutes<'a>(pub &'a mut App);

impl LineHandler for LineRoutes<'_> {
    fn line(&mut self, conn: ConnId, line: &[u8], out: &mut Vec<u8>) -> Drive {
        let app = &mut *self.0;
        app.metrics.line_messages += 1;
        if app.answer_ping(conn, line, out) {
            return Drive::Open;
        }
        let msg = match serde_json::from_slice::<Value>(line) {
            Ok(Value::Object(m)) => m,
            Ok(_) => {
                error_line(None, "bad_json", "each line must be a JSON object", out);
                return Drive::Open;
            }
            Err(e) => {
                let why = if std::str::from_utf8(line).is_err() {
                    "the line is not valid UTF-8".to_string()
                } else {
                    format!("the line is not valid JSON: {e}")
                };
                error_line(None, "bad_json", &why, out);
                return Drive::Open;
            }
        };
        let id = msg.get("id").cloned();
        // Events from elsewhere still waiting are not this link's own.
        app.route_events(None);
        let before = out.len();
        let outcome = match &id {
            Some(Value::String(_) | Value::Number(_)) | None => {
                match (app.store_refusal(), msg.get("type").and_then(Value::as_str)) {
                    (Some(_), Some(t)) if CHANGES_STATE.contains(&t) => Err(refuse(
                        "store_unavailable",
                        "the bridge cannot store changes right now; try again",
                    )),
                    _ => app.on_line(conn, &msg, id.as_ref(), out),
                }
            }
            Some(_) => Err(refuse("bad_field", "`id` must be a string or an integer")),
        };
        app.route_events(Some(conn));
        // An answer to a change waits until the change is durable.
        if app.must_hold() && out.len() > before {
            let bytes = out.split_off(before);
            app.hold_line(conn, id.clone(), bytes);
        }
        match outcome {
            Ok(drive) => drive,
            Err(r) => {
                app.metrics.line_errors += 1;
                let id = id.as_ref().filter(|v| v.is_string() || v.is_number());
                error_line(id, r.code, &r.msg, out);
                if r.close {
                    Drive::Close
                } else {
                    Drive::Open
                }
            }
        }
    }

    fn too_long(&mut self, _conn: ConnId, out: &mut Vec<u8>) {
        let max = self.0.cfg.line.max_line_bytes;
        self.0.metrics.line_errors += 1;
        error_line(
            None,
            "line_too_long",
            &format!("a line is longer than {max} bytes (line.max_line_bytes); it was dropped"),
            out,
        );
    }

    fn connected(&mut self, conn: ConnId, out: &mut Vec<u8>) {
        let app = &*self.0;
        let Some(link) = app.links.get(conn) else {
            return;
        };
        let token = link
            .dial
            .and_then(|d| app.links.dials.get(d))
            .map(|d| d.cfg.token.clone())
            .unwrap_or_default();
        let mut hello =
            json!({"type": "hello", "world": app.world.id, "kind": "bridge", "protocol": PROTOCOL});
        if !token.is_empty() {
            hello["token"] = json!(token);
        }
        encode(&hello, out);
    }
}

/// The part of a message that decides whether it is a keep-alive.
#[derive(serde::Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    id: Option<Value>,
}

impl App {
    /// Keep-alives are most of a link's traffic: answer a well-formed `ping` from a link
    /// that may talk without building the whole message. `false`: not one, go the long way.
    fn answer_ping(&mut self, conn: ConnId, line: &[u8], out: &mut Vec<u8>) -> bool {
        let Ok(head) = serde_json::from_slice::<Head>(line) else {
            return false;
        };
        let id_ok = matches!(head.id, None | Some(Value::String(_) | Value::Number(_)));
        if head.kind.as_deref() != Some("ping") || !id_ok {
            return false;
        }
        let may_talk = self.cfg.line.token.is_empty()
            || self
                .links
                .get(conn)
                .is_some_and(|l| l.greeted || l.dial.is_some());
        if !may_talk {
            return false;
        }
        out.extend_from_slice(b"{\"type\":\"pong\"");
        if let Some(id) = &head.id {
            out.extend_from_slice(b",\"id\":");
            let _ = serde_json::to_writer(&mut *out, id);
        }
        out.extend_from_slice(b"}\n");
        true
    }

    /// One message from link `conn`.
    fn on_line(
        &mut self,
        conn: ConnId,
        msg: &Map<String, Value>,
        id: Option<&Value>,
        out: &mut Vec<u8>,
    ) -> Result<Drive, Refusal> {
        let kind = match msg.get("type") {
            Some(Value::String(t)) => t.as_str(),
            Some(_) => return Err(refuse("bad_field", "`type` must be a string")),
            None => return Err(refuse("missing_field", "every message needs a `type`")),
        };
        let f = Fields(msg);
        let greeted = self.links.get(conn).is_some_and(|l| l.greeted);
        let dialed = self.links.get(conn).is_some_and(|l| l.dial.is_some());
        if !greeted && !dialed && !self.cfg.line.token.is_empty() && kind != "hello" {
            return Err(Refusal {
                code: "unauthorized",
                msg: "this bridge needs `hello` with its token first".into(),
                close: true,
            });
        }
        let now = now_ms();
        match kind {
            "hello" => return self.on_hello(conn, &f, id, out),
            "welcome" => {
                let world = f.opt("world")?;
                let kind = f.opt("kind")?.unwrap_or_else(|| "generic".into());
                self.links.greeted(conn, world.as_deref(), &kind, now);
                log::info!(
                    "link up conn={} world={} kind={kind}",
                    conn.idx,
                    world.as_deref().unwrap_or("(none given)")
                );
            }
            "ping" => answer_line("pong", id, json!({}), out),
            "pong" => {}
            "presence" => {
                let user = f.name("user_id")?;
                let event = f.req("event")?;
                match event.as_str() {
                    "enter" => {
                        let username = f.opt("username")?.unwrap_or_else(|| user.clone());
                        check_name("username", &username)?;
                        let room = self.world.ensure_room(&f.name("room")?)?;
                        self.links.host(conn, &room);
                        self.note_player(conn, &user);
                        self.world.place(&user, &username, &room, now);
                    }
                    "leave" => {
                        self.world.remove(&user, now);
                        self.links.player_gone(conn, &user);
                    }
                    other => {
                        return Err(refuse(
                            "bad_field",
                            format!("`event` must be \"enter\" or \"leave\", not {other:?}"),
                        ))
                    }
                }
                if id.is_some() {
                    answer_line("ok", id, json!({}), out);
                }
            }
            "say" => {
                let user = f.name("user_id")?;
                let username = f.opt("username")?.unwrap_or_else(|| user.clone());
                let message = self.line_message(&f)?;
                let room = self.world.ensure_room(&f.name("room")?)?;
                self.links.host(conn, &room);
                self.note_player(conn, &user);
                let said = self.world.say(&user, &username, &room, &message, now)?;
                if id.is_some() {
                    answer_line("ok", id, json!({"event": said.event}), out);
                }
            }
            "event" => {
                let room = self.world.ensure_room(&f.name("room")?)?;
                let name = f.name("event")?;
                let text = f.opt("message")?;
                let asked = match f.opt("scope")?.as_deref() {
                    // No scope: `federation.event_kinds` decides. docs/line-protocol.md says
                    // "local"; the core calls it World.
                    None => None,
                    Some("local" | "world") => Some(Scope::World),
                    Some("federation") => Some(Scope::Federation),
                    Some(other) => {
                        return Err(refuse(
                            "bad_field",
                            format!("`scope` must be \"local\" or \"federation\", not {other:?}"),
                        ))
                    }
                };
                self.links.host(conn, &room);
                let ev = self.world.world_event(&room, &name, text.as_deref(), now)?;
                self.scope_world_event(&ev, asked);
                if id.is_some() {
                    answer_line("ok", id, json!({"event": ev}), out);
                }
            }
            "room" => {
                let spec = room_spec(msg)?;
                let trusted = self.links.get(conn).is_some_and(|l| l.trusted);
                if !trusted {
                    let name = self.world.resolve(&spec.name).unwrap_or(&spec.name).to_string();
                    let why = if self.world.from_world_file(&name) {
                        Some("comes from the world file")
                    } else if self.links.declared_by_other(conn, &name) {
                        Some("belongs to another game link")
                    } else {
                        None
                    };
                    if let Some(why) = why {
                        log::warn!(
                            "link conn={} refused: an anonymous link tried to change the room {name:?}, which {why}",
                            conn.idx
                        );
                        return Err(refuse(
                            "forbidden",
                            format!(
                                "the room {name:?} {why}: only a link with a token (line.token or \
                                 its world's [[line.links]] token) may change it"
                            ),
                        ));
                    }
                }
                let name = self.world.set_room(spec)?;
                self.room_described(&name);
                self.links.declare(conn, &name);
                if id.is_some() {
                    answer_line("ok", id, json!({"room": name}), out);
                }
            }
            "chat" => return self.on_chat(conn, &f, id, out),
            "travel" => {
                // A game's travel exit: answered once the travel is decided.
                let Some(id) = id else {
                    return Err(refuse("missing_field", "`travel` must carry an `id`"));
                };
                let user = f.name("user_id")?;
                let to_world = f.req("to_world")?;
                let reply_to = ReplyTo::Line {
                    conn,
                    id: id.clone(),
                    user_id: user.clone(),
                };
                if let Err(r) = self.travel_request(&user, &to_world, reply_to, now) {
                    error_line(Some(id), r.code, &r.message, out);
                }
            }
            "perception" => {
                let p = Perception::from_message(msg).map_err(|e| {
                    let code = if e.contains("newer") { "unsupported_version" } else { "bad_field" };
                    refuse(code, e)
                })?;
                let world = self.link_world(conn);
                let at = Instant::now();
                if let Some(cell) = &p.cell {
                    if let Ok(room) = self.world.ensure_room(cell) {
                        self.links.declare(conn, &room);
                    }
                }
                self.links.perceive(&world, p.clone(), at, now);
                let asked = id.and_then(Value::as_str).and_then(|i| self.links.answered(conn, i));
                match asked {
                    Some(pending) => {
                        let observed = Outcome::Observed {
                            world,
                            age_ms: 0,
                            fresh: true,
                            perception: Box::new(p),
                        };
                        self.answer(pending.reply_to, Ok(observed));
                    }
                    None if id.is_some() => answer_line("ok", id, json!({}), out),
                    None => {}
                }
            }
            "result" => {
                let Some(pending) = id.and_then(Value::as_str).and_then(|i| self.links.answered(conn, i)) else {
                    log::debug!("result conn={} id={id:?} answers nothing we asked (late?)", conn.idx);
                    return Ok(Drive::Open);
                };
                let result = ActionResult::from_message(msg);
                let acted = acted(&pending, result);
                self.answer(pending.reply_to, Ok(acted));
            }
            "error" => {
                let code = f.opt("code")?.unwrap_or_default();
                let text = f.opt("error")?.unwrap_or_default();
                let pending = id.and_then(Value::as_str).and_then(|i| self.links.answered(conn, i));
                match pending {
                    Some(p) => {
                        let refusal = HubRefusal::new(
                            "game_error",
                            format!("{} refused the request: {text} ({code})", p.world),
                        );
                        self.answer(p.reply_to, Err(refusal));
                    }
                    None => {
                        log::warn!("link conn={} reported an error: {code}: {text}", conn.idx);
                        if code == "unauthorized" {
                            return Ok(Drive::Close);
                        }
                    }
                }
            }
            "ok" | "reply" => {}
            other => {
                return Err(refuse(
                    "unknown_type",
                    format!(
                        "unknown message type {other:?}; see the line protocol (hello, ping, presence, say, chat, event, room, perception, result)"
                    ),
                ))
            }
        }
        Ok(Drive::Open)
    }

    fn on_hello(
        &mut self,
        conn: ConnId,
        f: &Fields,
        id: Option<&Value>,
        out: &mut Vec<u8>,
    ) -> Result<Drive, Refusal> {
        let fatal = |code, msg: String| Refusal {
            code,
            msg,
            close: true,
        };
        match f.0.get("protocol") {
            None => {}
            Some(Value::Number(n)) if n.as_u64().is_some_and(|v| v <= PROTOCOL) => {}
            Some(v) => {
                return Err(fatal(
                    "unsupported_version",
                    format!("this bridge speaks line protocol {PROTOCOL}; the link asked for {v}"),
                ))
            }
        }
        let world = f.opt("world")?;
        if let Some(w) = &world {
            check_name("world", w)?;
        }
        let given = f.opt("token").ok().flatten().unwrap_or_default();
        let peer = self
            .links
            .get(conn)
            .map(|l| l.peer.to_string())
            .unwrap_or_default();
        let bound = (world.as_deref())
            .and_then(|w| self.cfg.line.links.iter().find(|l| l.world == w))
            .cloned();
        // A bound world needs its own token; any other hello the listener's, if set.
        let token = bound.as_ref().map_or(&self.cfg.line.token, |b| &b.token);
        let trusted = !token.is_empty();
        if trusted && !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            log::warn!(
                "link conn={} peer={peer} refused: wrong or missing token{}",
                conn.idx,
                bound
                    .as_ref()
                    .map(|b| format!(" for the bound world {}", b.world))
                    .unwrap_or_default()
            );
            let msg = match &bound {
                Some(b) => format!(
                    "world {} is bound to its own token ([[line.links]]); this hello's token is missing or wrong",
                    b.world
                ),
                None => "the token is missing or wrong".into(),
            };
            return Err(fatal("unauthorized", msg));
        }
        if let Some(w) = &world {
            if self.cfg.line.dial.iter().any(|d| d.world == *w) {
                log::warn!(
                    "link conn={} peer={peer} refused: world {w} is reached through the bridge's own [[line.dial]]",
                    conn.idx
                );
                return Err(fatal(
                    "world_taken",
                    format!("world {w} is the bridge's own dialed link ([[line.dial]]); another connection cannot be it"),
                ));
            }
            if let Some(holder) = self.links.link_of(w).filter(|h| *h != conn) {
                let held_by = self
                    .links
                    .get(holder)
                    .map(|l| l.peer.to_string())
                    .unwrap_or_default();
                log::warn!(
                    "link conn={} peer={peer} refused: world {w} is held by conn={} peer={held_by}",
                    conn.idx,
                    holder.idx
                );
                return Err(fatal(
                    "world_taken",
                    format!("world {w} is held by another live link; it can be claimed once that link is gone"),
                ));
            }
        }
        let asked_kind = f.opt("kind")?.unwrap_or_else(|| "generic".into());
        let kind = bound.as_ref().map_or(asked_kind, |b| b.kind.clone());
        if !LINK_KINDS.contains(&kind.as_str()) {
            return Err(refuse(
                "bad_field",
                format!(
                    "`kind` must be one of {}, not {kind:?}",
                    LINK_KINDS.join(", ")
                ),
            ));
        }
        let now = now_ms();
        self.links.greeted(conn, world.as_deref(), &kind, now);
        if trusted {
            self.links.trust(conn);
        }
        log::info!(
            "link up conn={} world={} kind={kind}",
            conn.idx,
            world.as_deref().unwrap_or("(anonymous)")
        );
        answer_line(
            "welcome",
            id,
            json!({"world": self.world.id, "kind": "bridge", "protocol": PROTOCOL,
                   "heartbeat_s": self.cfg.line.heartbeat_s}),
            out,
        );
        Ok(Drive::Open)
    }

    fn on_chat(
        &mut self,
        conn: ConnId,
        f: &Fields,
        id: Option<&Value>,
        out: &mut Vec<u8>,
    ) -> Result<Drive, Refusal> {
        let Some(id) = id else {
            return Err(refuse(
                "missing_field",
                "`chat` needs an `id` so the reply can find it",
            ));
        };
        let user = f.name("user_id")?;
        let username = f.opt("username")?.unwrap_or_else(|| user.clone());
        check_name("username", &username)?;
        let message = self.line_message(f)?;
        let stream = f.opt_bool("stream")?.unwrap_or(false);
        let room = match f.opt("room")? {
            Some(r) => self.world.ensure_room(&r)?,
            None => self
                .world
                .occupant(&user)
                .map(|o| o.room.clone())
                .unwrap_or_else(|| "The Threshold".into()),
        };
        let room = self.world.ensure_room(&room)?;
        self.links.host(conn, &room);
        self.note_player(conn, &user);
        let input = CallInput {
            kind: CallKind::Chat,
            user_id: Some(user.clone()),
            username,
            room,
            message,
            stream,
            system: None,
        };
        let reply_to = ReplyTo::Line {
            conn,
            id: id.clone(),
            user_id: user.clone(),
        };
        // A streamed reply comes later, after its parts (an error may come now).
        if let Answer::Now(reply) = self.begin_call(input, reply_to, now_ms(), Instant::now()) {
            reply_line(id, &user, &reply, out);
        }
        Ok(Drive::Open)
    }

    /// The `message` field within `rooms.message_max_bytes`.
    fn line_message(&self, f: &Fields) -> Result<String, Refusal> {
        let m = f.req("message")?;
        if m.trim().is_empty() {
            return Err(refuse("bad_field", "`message` must not be empty"));
        }
        let max = self.cfg.rooms.message_max_bytes;
        if m.len() > max {
            return Err(refuse(
                "bad_field",
                format!(
                    "`message` is {} bytes; the most is {max} (rooms.message_max_bytes)",
                    m.len()
                ),
            ));
        }
        Ok(m)
    }

    /// `user` is a player of link `conn` (bounded by `rooms.occupants_max`).
    fn note_player(&mut self, conn: ConnId, user: &str) {
        let world = &self.world;
        self.links
            .player(conn, user, self.cfg.rooms.occupants_max, |u| {
                world.occupant(u).is_some()
            });
    }
}

/// A `room` snapshot as a room spec.
fn room_spec(msg: &Map<String, Value>) -> Result<RoomSpec, Refusal> {
    let f = Fields(msg);
    let name = f.name("name")?;
    let desc = f.opt("desc")?.unwrap_or_default();
    let exits = match msg.get("exits") {
        None | Some(Value::Null) => Default::default(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(to) => Ok((k.clone(), to.clone())),
                _ => Err(refuse(
                    "bad_field",
                    format!("exit {k:?} must name a room (a string)"),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(refuse(
                "bad_field",
                "`exits` must be an object of exit → room",
            ))
        }
    };
    let objects = match msg.get("objects") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                Value::Object(o) => o
                    .get("name")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| refuse("bad_field", "an object must be a string or {name}")),
                _ => Err(refuse("bad_field", "`objects` must be strings")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(refuse("bad_field", "`objects` must be an array")),
    };
    let portal = match msg.get("portal") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(refuse("bad_field", "`portal` must be true or false")),
    };
    Ok(RoomSpec {
        name,
        desc,
        exits,
        objects,
        portal,
    })
}

/// The line the hub's answer to a `chat` (or a game's `travel`) becomes: `reply`, `ok`
/// with where the character went, or `error` for a refusal.
pub fn reply_line(id: &Value, user_id: &str, reply: &Reply, out: &mut Vec<u8>) {
    match reply {
        Ok(Outcome::Chat(c)) => answer_line(
            "reply",
            Some(id),
            json!({"user_id": user_id, "text": c.text, "user": c.user,
                   "room": c.room, "crisis": c.crisis}),
            out,
        ),
        // A travel's answer: `ok` with the world and room the character went to.
        Ok(Outcome::Travelled {
            world,
            room,
            message,
            ..
        }) => answer_line(
            "ok",
            Some(id),
            json!({"user_id": user_id, "world": world, "room": room, "message": message}),
            out,
        ),
        Ok(other) => {
            log::warn!("a line chat was answered with {other:?}; answering ok");
            answer_line("ok", Some(id), json!({"user_id": user_id}), out)
        }
        Err(r) => error_line(Some(id), r.code, &r.message, out),
    }
}

/// A part of a streamed `chat` reply: `reply_part` (with `index`, `text`, `crisis`) or
/// `reply_thinking`, with the chat's `id`.
pub fn part_line(id: &Value, part: &Part, out: &mut Vec<u8>) {
    match part {
        Part::Text {
            index,
            text,
            crisis,
        } => answer_line(
            "reply_part",
            Some(id),
            json!({"index": index, "text": text, "crisis": crisis}),
            out,
        ),
        Part::Thinking => answer_line("reply_thinking", Some(id), json!({}), out),
    }
}

/// The line a request answered by `ok` or `error` becomes (a held `ok` whose store
/// batch failed, for one).
pub fn request_line(id: Option<&Value>, reply: &Reply, out: &mut Vec<u8>) {
    match reply {
        Ok(Outcome::Ok(Value::Object(rest))) => {
            answer_line("ok", id, Value::Object(rest.clone()), out)
        }
        Ok(_) => answer_line("ok", id, json!({}), out),
        Err(r) => error_line(id, r.code, &r.message, out),
    }
}
