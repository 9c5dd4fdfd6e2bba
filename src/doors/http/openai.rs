//! The OpenAI-compatible front door: `POST /v1/chat/completions` (a `chat.completion`, or
//! `chat.completion.chunk` server-sent events ending `data: [DONE]` with `stream`) and
//! `GET /v1/models`, so tools that speak to OpenAI (the `openai` clients, SillyTavern,
//! Open WebUI, LiteLLM) reach the agent with per-user sessions, the world's context and
//! the crisis protocol.
//!
//! The request's `user` (or `X-Worldbridge-User`) names the session; `metadata.room` (or
//! `X-Worldbridge-Room`) the room. The last `user` message is the chat message: earlier
//! messages are ignored in favour of the session's own history; `system` messages are
//! added to the bridge's system prompt. Errors are `{"error": {"message", "type",
//! "code"}}` with the bridge's statuses and codes.

use crate::app::calls::ReplyTo;
use crate::app::outcome::{Outcome, Refusal, Reply};
use crate::app::stream::Part;
use crate::app::{Answer, App};
use crate::codec::http::{Method, Request, Response};
use crate::conn::http::Handled;
use crate::conn::ConnId;
use crate::doors::fields::{self, type_name, Fields};
use crate::doors::http::{self as door, Shape, Shapes};
use crate::world::time::now_ms;
use serde_json::{json, Map, Value};
use std::net::IpAddr;
use std::time::Instant;

/// What a streamed completion shows of itself in every chunk.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: String,
    pub created: u64,
    pub model: String,
}

/// Serve one `/v1/…` request; every refusal in the OpenAI error shape.
pub fn dispatch(
    app: &mut App,
    shapes: &mut Shapes,
    (id, peer): (ConnId, IpAddr),
    req: &Request,
    route: &'static str,
    cors: Option<String>,
) -> Handled {
    match serve(app, shapes, (id, peer), req, route, cors) {
        Ok(handled) => handled,
        Err(refusal) => Handled::Respond(error(refusal)),
    }
}

fn serve(
    app: &mut App,
    shapes: &mut Shapes,
    (id, peer): (ConnId, IpAddr),
    req: &Request,
    route: &'static str,
    cors: Option<String>,
) -> Result<Handled, Refusal> {
    let get = route == "/v1/models";
    let method_ok = match get {
        true => matches!(req.method, Method::Get | Method::Head),
        false => req.method == Method::Post,
    };
    if !method_ok {
        let takes = if get { "GET" } else { "POST" };
        return Err(Refusal::new(
            "method_not_allowed",
            format!("{route} takes {takes}"),
        ));
    }
    door::authorize(app, req, route)?;
    if get {
        return Ok(Handled::Respond(Response::json(200, &models(app))));
    }
    if let Some(refusal) = app.store_refusal() {
        return Err(refusal);
    }
    completions(app, shapes, (id, peer), req, route, cors)
}

/// The one model: the agent, by `gateway.agent_id`.
fn models(app: &App) -> Value {
    let started = (now_ms() / 1000).saturating_sub(app.uptime().as_secs());
    json!({"object": "list", "data": [{
        "id": app.cfg.gateway.agent_id,
        "object": "model",
        "created": started,
        "owned_by": "worldbridge",
    }]})
}

/// `POST /v1/chat/completions`.
fn completions(
    app: &mut App,
    shapes: &mut Shapes,
    (id, peer): (ConnId, IpAddr),
    req: &Request,
    route: &'static str,
    cors: Option<String>,
) -> Result<Handled, Refusal> {
    let obj = fields::object(&req.body)?;
    let f = Fields(&obj);
    let (system, said) = read_messages(obj.get("messages"))?;
    let user = match f.opt("user")? {
        Some(u) => u,
        None => req
            .header("x-worldbridge-user")
            .map(str::to_string)
            .ok_or_else(|| {
                Refusal::new(
                    "missing_field",
                    "`user` (or the X-Worldbridge-User header) is required: it names the session",
                )
            })?,
    };
    crate::world::check_name("user", &user)
        .map_err(|e| Refusal::new("bad_field", e.to_string()))?;
    let room = match obj.get("metadata") {
        Some(Value::Object(m)) => Fields(m).opt("room")?,
        None | Some(Value::Null) => None,
        Some(other) => {
            return Err(Refusal::new(
                "bad_field",
                format!("`metadata` must be an object, not {}", type_name(other)),
            ))
        }
    };
    let room = room.or_else(|| req.header("x-worldbridge-room").map(str::to_string));
    let model = f
        .opt("model")?
        .unwrap_or_else(|| app.cfg.gateway.agent_id.clone());
    let stream = f.opt_bool("stream")?.unwrap_or(false);
    let mut one = Map::new();
    one.insert("message".into(), Value::String(said));
    let message = door::message(app, &Fields(&one))?;
    let now = now_ms();
    let mut input = door::chat_input(app, peer, (user, None, room), message, now)?;
    input.stream = stream;
    input.system = system;
    let answer = app.begin_call(input, ReplyTo::Http(id), now, Instant::now());
    // Unique within a run (a number of the hub's), and across runs (the time).
    let c = Completion {
        id: format!("chatcmpl-{now:x}-{}", app.next_job_id()),
        created: now / 1000,
        model,
    };
    Ok(match (answer, stream) {
        (Answer::Now(Err(refusal)), _) => return Err(refusal),
        (Answer::Now(reply), false) => Handled::Respond(render(&c, reply)),
        (Answer::Later, false) => {
            shapes.insert(id, Shape::OpenAi(c, false));
            Handled::Park {
                route,
                headers: door::cors_headers(cors),
            }
        }
        (answer, true) => {
            if let Answer::Now(reply) = answer {
                app.answer(ReplyTo::Http(id), reply);
            }
            shapes.insert(id, Shape::OpenAi(c, true));
            Handled::Stream {
                route,
                headers: door::cors_headers(cors.clone()),
                head: door::event_stream_head(cors),
            }
        }
    })
}

/// The `system` messages (joined) and the text of the last `user` message.
fn read_messages(messages: Option<&Value>) -> Result<(Option<String>, String), Refusal> {
    let list = match messages {
        Some(Value::Array(list)) => list,
        None | Some(Value::Null) => {
            return Err(Refusal::new("missing_field", "`messages` is required"))
        }
        Some(other) => {
            return Err(Refusal::new(
                "bad_field",
                format!("`messages` must be an array, not {}", type_name(other)),
            ))
        }
    };
    let mut system = Vec::new();
    let mut last_user = None;
    for (i, m) in list.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(Refusal::new(
                "bad_field",
                format!("`messages[{i}]` must be an object"),
            ));
        };
        let role = Fields(m).opt("role")?.unwrap_or_default();
        let text = content_text(m.get("content")).ok_or_else(|| {
            Refusal::new(
                "bad_field",
                format!("`messages[{i}].content` must be text or text parts"),
            )
        })?;
        match role.as_str() {
            "system" | "developer" => system.push(text),
            "user" => last_user = Some(text),
            _ => {}
        }
    }
    let said = last_user
        .ok_or_else(|| Refusal::new("missing_field", "`messages` has no `user` message"))?;
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    Ok((system, said))
}

/// A message's `content`: a string, or the text of its `{"type": "text"}` parts.
fn content_text(content: Option<&Value>) -> Option<String> {
    match content {
        None | Some(Value::Null) => Some(String::new()),
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(parts)) => {
            let texts: Option<Vec<&str>> = (parts.iter())
                .map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            texts.map(|t| t.join(""))
        }
        Some(_) => None,
    }
}

/// A refusal in the OpenAI error shape, with the bridge's status.
pub fn error(r: Refusal) -> Response {
    let status = door::status_of(r.code);
    let mut resp = Response::json(status, &error_json(&r));
    if let Some(secs) = r.retry_after {
        resp = resp.with_header("Retry-After", secs.to_string());
    }
    if status == 401 {
        resp = resp.with_header("WWW-Authenticate", "Bearer");
    }
    resp
}

fn error_json(r: &Refusal) -> Value {
    let kind = match door::status_of(r.code) {
        401 | 403 => "authentication_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    json!({"error": {"message": r.message, "type": kind, "code": r.code}})
}

/// A non-streamed answer: a `chat.completion`, or the error.
pub fn render(c: &Completion, reply: Reply) -> Response {
    match reply {
        Ok(Outcome::Chat(chat)) => Response::json(
            200,
            &json!({
                "id": c.id,
                "object": "chat.completion",
                "created": c.created,
                "model": c.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": chat.text},
                    "finish_reason": "stop",
                }],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                "worldbridge": {
                    "user": chat.user,
                    "room": chat.room,
                    "session_messages": chat.session_messages,
                    "crisis": chat.crisis,
                },
            }),
        ),
        Ok(other) => door::render(Ok(other)),
        Err(r) => error(r),
    }
}

fn chunk(c: &Completion, delta: Value, finish: Option<&str>) -> Vec<u8> {
    let doc = json!({
        "id": c.id,
        "object": "chat.completion.chunk",
        "created": c.created,
        "model": c.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    data(doc.to_string().as_bytes())
}

fn data(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\n\n");
    out
}

/// A part as a `chat.completion.chunk` (the first one names the role); `thinking` is a
/// comment, which clients skip.
pub fn render_part(c: &Completion, part: &Part) -> Vec<u8> {
    match part {
        Part::Thinking => b": thinking\n\n".to_vec(),
        Part::Text { index, text, .. } => {
            let delta = match index {
                0 => json!({"role": "assistant", "content": text}),
                _ => json!({"content": text}),
            };
            chunk(c, delta, None)
        }
    }
}

/// The end of a streamed completion: the `stop` chunk (or the error), then `[DONE]`.
pub fn render_end(c: &Completion, reply: Reply) -> Vec<u8> {
    let mut out = match reply {
        Ok(_) => chunk(c, json!({}), Some("stop")),
        Err(r) => data(error_json(&r).to_string().as_bytes()),
    };
    out.extend_from_slice(&data(b"[DONE]"));
    out
}
