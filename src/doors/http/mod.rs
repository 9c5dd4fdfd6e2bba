//! The HTTP routes: each request is checked (auth, CORS, JSON fields, rate limit), turned
//! into a call on the [`App`], and the result into the seed's JSON shape.
//!
//! Errors are `{"error": "<sentence>", "code": "<snake_case>"}`; a client's mistake is a
//! 4xx, never a 500.

pub mod openai;

use crate::app::calls::{CallKind, ReplyTo};
use crate::app::outcome::{ChatReply, Outcome, Refusal, Reply};
use crate::app::reports;
use crate::app::stream::Part;
use crate::app::{Answer, App, CallInput};
use crate::codec::http::{percent_decode, push_json_str, Method, Request, Response};
use crate::codec::json_text::{self, push_decimal};
use crate::codec::ws_handshake;
use crate::conn::http::Handled;
use crate::conn::ConnId;
use crate::conn::Feed;
use crate::doors::fields::{self, checked_name, constant_time_eq, owned, Fields, Talk};
use crate::federation::wire::{Cursor, Delta, TravelMsg};
use crate::world::protocol::GameCommand;
use crate::world::room::Event;
use crate::world::time::{now_ms, parse_rfc3339};
use crate::world::{check_name, WorldError};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// HTTP answers this door rendered that wait for the store (the hub says when, through
/// [`App::released`]); the loop keeps them, one per parked connection.
pub type HeldHttp = HashMap<ConnId, Response>;

/// How a parked request's answer is shown when it is not [`render`]'s JSON: the loop keeps
/// one per connection that needs it, until the answer is delivered.
#[derive(Debug, Clone)]
pub enum Shape {
    /// `POST /bridge/chat` with `stream`: server-sent events `part`, `thinking`, then
    /// `done` (the chat JSON) or `error`.
    Events,
    /// `POST /v1/chat/completions`: a `chat.completion`, or with `stream` (true here)
    /// `chat.completion.chunk` events ending `data: [DONE]`.
    OpenAi(openai::Completion, bool),
}

/// The shapes of parked answers, by connection.
pub type Shapes = HashMap<ConnId, Shape>;

/// Every route and its method: the router matches paths against this table, metrics label
/// requests by its patterns, and tests/docs.rs checks that docs/http-api.md lists each one.
pub const ROUTES: &[(&str, &str)] = &[
    ("/", "GET"),
    ("/ws/matrix", "GET"),
    ("/ws/workshop", "GET"),
    ("/api/gateway/status", "GET"),
    ("/metrics", "GET"),
    ("/bridge/health", "GET"),
    ("/bridge/sessions", "GET"),
    ("/bridge/rooms", "GET"),
    ("/bridge/stats", "GET"),
    ("/bridge/world/:room", "GET"),
    ("/bridge/room/:room/players", "GET"),
    ("/bridge/room/:room/events", "GET"),
    ("/bridge/chat", "POST"),
    ("/bridge/say", "POST"),
    ("/bridge/move", "POST"),
    ("/api/v1/generate", "POST"),
    ("/bridge/act", "POST"),
    ("/bridge/speak", "POST"),
    ("/bridge/observe/:world", "GET"),
    ("/bridge/state", "GET"),
    ("/bridge/sync", "POST"),
    ("/bridge/trust", "POST"),
    ("/bridge/travel", "POST"),
    ("/bridge/federation/leader", "GET"),
    ("/v1/chat/completions", "POST"),
    ("/v1/models", "GET"),
];

/// The route pattern a path belongs to, and the room it names (still URL-encoded).
fn route_of(path: &str) -> Option<(&'static str, Option<&str>)> {
    if let Some(room) = path.strip_prefix("/bridge/world/") {
        return Some(("/bridge/world/:room", Some(room)));
    }
    if let Some(world) = path.strip_prefix("/bridge/observe/") {
        return Some(("/bridge/observe/:world", Some(world)));
    }
    if let Some(rest) = path.strip_prefix("/bridge/room/") {
        return match rest.rsplit_once('/') {
            Some((room, "players")) => Some(("/bridge/room/:room/players", Some(room))),
            Some((room, "events")) => Some(("/bridge/room/:room/events", Some(room))),
            _ => None,
        };
    }
    ROUTES
        .iter()
        .find(|(p, _)| !p.contains(':') && *p == path)
        .map(|(p, _)| (*p, None))
}

fn method_allowed(route: &str) -> &'static str {
    ROUTES
        .iter()
        .find(|(p, _)| *p == route)
        .map_or("GET", |(_, m)| *m)
}

/// Handle one request on connection `id` from the address `peer`.
pub fn handle(
    app: &mut App,
    held: &mut HeldHttp,
    shapes: &mut Shapes,
    id: ConnId,
    peer: IpAddr,
    req: Request,
) -> Handled {
    let started = Instant::now();
    // WebSocket: `/ws/matrix` is the gateway; `/ws/workshop`, and `/` when it asks to
    // upgrade (the seed's `new WebSocket("ws://localhost:8765")`), the Workshop feed.
    let path = req.path();
    if path == "/ws/matrix" || path == "/ws/workshop" || (path == "/" && req.is_websocket_upgrade())
    {
        let route = if path == "/ws/matrix" {
            "/ws/matrix"
        } else {
            "/ws/workshop"
        };
        let handled = upgrade(app, &req, route);
        if let Handled::Respond(resp) = &handled {
            app.metrics.count_request(route, resp.status);
        } else {
            app.metrics.count_request(route, 101);
        }
        app.metrics.request_latency.observe(started.elapsed());
        return handled;
    }
    let cors = cors_origin(app, &req);
    let (route, handled) = match route_of(req.path()) {
        None => (
            "other",
            Handled::Respond(Response::error(
                404,
                "not_found",
                &format!(
                    "no route for {}; see GET /bridge/health and docs/http-api.md",
                    req.path()
                ),
            )),
        ),
        Some((route, room)) => {
            let changes = req.method == Method::Post;
            // The OpenAI door answers in its own error shape, this refusal included.
            let bridge = !route.starts_with("/v1/");
            match app.store_refusal().filter(|_| changes && bridge) {
                Some(refusal) => (route, Handled::Respond(refusal.into())),
                None => (
                    route,
                    dispatch(app, shapes, (id, peer), &req, route, room, cors.clone()),
                ),
            }
        }
    };
    // A request that changed the world is answered once the change is durable.
    let handled = match handled {
        Handled::Respond(resp) if app.must_hold() => {
            app.hold_http(id);
            held.insert(id, resp);
            Handled::Park {
                route,
                headers: cors_headers(cors.clone()),
            }
        }
        other => other,
    };
    match handled {
        Handled::Respond(mut resp) => {
            if let Some(origin) = cors {
                resp.headers.push(("Access-Control-Allow-Origin", origin));
                resp.headers.push(("Vary", "Origin".into()));
            }
            app.metrics.count_request(route, resp.status);
            app.metrics.request_latency.observe(started.elapsed());
            Handled::Respond(resp)
        }
        parked => parked,
    }
}

/// A WebSocket upgrade: the token first (401 before any handshake), then the handshake.
fn upgrade(app: &mut App, req: &Request, route: &str) -> Handled {
    if app.shutting_down {
        return Handled::Respond(Response::error(
            503,
            "shutting_down",
            "the bridge is stopping; try again shortly",
        ));
    }
    let (token, what) = if route == "/ws/matrix" {
        (app.cfg.gateway_token().to_string(), "gateway")
    } else {
        (app.cfg.http.token.clone(), "Workshop feed")
    };
    if app.ws_connections >= app.cfg.websocket.max_connections {
        let cap = app.cfg.websocket.max_connections;
        app.metrics.connections_rejected += 1;
        log::warn!(
            "refused a WebSocket upgrade on {route}: websocket.max_connections ({cap}) reached"
        );
        return Handled::Respond(
            Response::error(
                503,
                "too_many_connections",
                &format!(
                    "the bridge has {cap} WebSocket connections open \
                     (websocket.max_connections); try again shortly"
                ),
            )
            .with_header("Retry-After", "1"),
        );
    }
    if let Some(origin) = req.header("origin") {
        let cfg = &app.cfg;
        if !origin_allowed(
            origin,
            req.header("host"),
            &cfg.websocket.allowed_origins,
            &cfg.http.cors_origins,
        ) {
            app.metrics.ws_origin_refused += 1;
            log::warn!(
                "refused a WebSocket upgrade on {route} from a page at {origin:?}: not in websocket.allowed_origins"
            );
            return Handled::Respond(Response::error(
                403,
                "forbidden_origin",
                &format!(
                    "pages from {origin} may not open a WebSocket here; add the origin to \
                     websocket.allowed_origins to allow it"
                ),
            ));
        }
    }
    let given = req
        .query_param("token")
        .or_else(|| bearer(req).map(str::to_string));
    // An agent's own token (`[[gateway.agents]]`) also opens the gateway, bound to it.
    // Every entry is compared, so the time taken says nothing about which one matched.
    let bound = match (route, &given) {
        ("/ws/matrix", Some(t)) => {
            (app.cfg.gateway.agents.iter().enumerate()).fold(None, |found, (i, a)| {
                match constant_time_eq(t.as_bytes(), a.token.as_bytes()) {
                    true => Some(i),
                    false => found,
                }
            })
        }
        _ => None,
    };
    if !token.is_empty() && bound.is_none() {
        let ok = given.is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
        if !ok {
            return Handled::Respond(Response::error(
                401,
                "unauthorized",
                &format!("the {what} needs its token: connect with ?token=<token>"),
            ));
        }
    }
    let feed = if route == "/ws/matrix" {
        let number = |name: &str, code: &'static str, what: &str| match req.query_param(name) {
            None => Ok(None),
            Some(s) => s.parse::<u64>().map(Some).map_err(|_| {
                let why = format!("`{name}` must be {what}, not {s:?}");
                Handled::Respond(Response::error(400, code, &why))
            }),
        };
        let since = match number("since", "bad_since", "a gateway_seq number") {
            Ok(n) => n,
            Err(refused) => return refused,
        };
        let epoch = match number("epoch", "bad_epoch", "the number frames carry as `epoch`") {
            Ok(n) => n,
            Err(refused) => return refused,
        };
        Feed::Gateway {
            since,
            bound,
            epoch,
        }
    } else {
        Feed::Workshop
    };
    match ws_handshake::accept(req) {
        Ok(response) => Handled::Upgrade { response, feed },
        Err(e) => Handled::Respond(Response::from(e)),
    }
}

/// Whether a browser page from `origin` may open a WebSocket here: listed in
/// `websocket.allowed_origins` or `http.cors_origins`, or the bridge's own page (the
/// origin is `http(s)://` + this request's `Host`) reached by an IP address or
/// `localhost`. A host *name* is not trusted as "same origin": a DNS-rebinding page would
/// name itself and resolve to 127.0.0.1.
pub fn origin_allowed(
    origin: &str,
    host: Option<&str>,
    allowed: &[String],
    cors: &[String],
) -> bool {
    let origin = origin.trim().to_ascii_lowercase();
    let listed = allowed.iter().chain(cors).any(|entry| {
        let entry = entry.trim().to_ascii_lowercase();
        match entry.strip_suffix(":*") {
            _ if entry == "*" => true,
            Some(base) => {
                origin == base
                    || origin
                        .strip_prefix(base)
                        .and_then(|rest| rest.strip_prefix(':'))
                        .is_some_and(|port| {
                            !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
                        })
            }
            None => origin == entry,
        }
    });
    let own_page = host.is_some_and(|host| {
        let host = host.trim().to_ascii_lowercase();
        let name = match host.rsplit_once(':') {
            Some((name, port))
                if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') =>
            {
                name
            }
            _ => host.as_str(),
        };
        let literal = name == "localhost"
            || name.parse::<std::net::Ipv4Addr>().is_ok()
            || (name.starts_with('[')
                && name.ends_with(']')
                && name[1..name.len() - 1]
                    .parse::<std::net::Ipv6Addr>()
                    .is_ok());
        literal && (origin == format!("http://{host}") || origin == format!("https://{host}"))
    });
    listed || own_page
}

/// The `Origin` to echo back when it is allowed by `http.cors_origins` (`*` allows all).
fn cors_origin(app: &App, req: &Request) -> Option<String> {
    let origin = req.header("origin")?;
    let allowed = &app.cfg.http.cors_origins;
    allowed
        .iter()
        .any(|o| o == "*" || o == origin)
        .then(|| origin.to_string())
}

fn dispatch(
    app: &mut App,
    shapes: &mut Shapes,
    (id, peer): (ConnId, IpAddr),
    req: &Request,
    route: &'static str,
    room: Option<&str>,
    cors: Option<String>,
) -> Handled {
    let allowed = method_allowed(route);
    if req.method == Method::Options {
        let mut resp = Response::new(204, "text/plain", Vec::new())
            .with_header("Allow", format!("{allowed}, OPTIONS{}", head_of(allowed)));
        if cors.is_some() {
            resp = resp
                .with_header(
                    "Access-Control-Allow-Methods",
                    format!("{allowed}, OPTIONS"),
                )
                .with_header(
                    "Access-Control-Allow-Headers",
                    "Content-Type, Authorization, X-Worldbridge-User, X-Worldbridge-Room",
                )
                .with_header("Access-Control-Max-Age", "600");
        }
        return Handled::Respond(resp);
    }
    let method_ok = match allowed {
        "GET" => matches!(req.method, Method::Get | Method::Head),
        _ => req.method == Method::Post,
    };
    if !method_ok {
        return Handled::Respond(
            Response::error(
                405,
                "method_not_allowed",
                &format!("{route} takes {allowed}"),
            )
            .with_header("Allow", format!("{allowed}, OPTIONS{}", head_of(allowed))),
        );
    }
    if route.starts_with("/v1/") {
        return openai::dispatch(app, shapes, (id, peer), req, route, cors);
    }
    if let Err(refusal) = authorize(app, req, route) {
        return Handled::Respond(refusal.into());
    }
    let room = match room.map(|r| percent_decode(r, false)) {
        Some(None) => {
            return Handled::Respond(Response::error(
                400,
                "bad_room",
                "the room name in the path is not valid percent-encoded UTF-8",
            ))
        }
        Some(Some(r)) => Some(r),
        None => None,
    };
    let now = now_ms();
    let result = match route {
        "/" => Ok(index()),
        "/api/gateway/status" => Ok(Response::json(200, &app.gateway.status())),
        "/metrics" => Ok(Response::new(
            200,
            "text/plain; version=0.0.4",
            reports::metrics_text(app, now).into_bytes(),
        )),
        "/bridge/health" => Ok(Response::json(200, &reports::health(app, now))),
        "/bridge/sessions" => {
            if app.ask_sessions(ReplyTo::Http(id)) {
                return Handled::Park {
                    route,
                    headers: cors_headers(cors),
                };
            }
            Ok(Response::json(200, &reports::sessions(app)))
        }
        "/bridge/rooms" => Ok(Response::json(200, &reports::rooms(app))),
        "/bridge/stats" => Ok(Response::json(200, &reports::stats(app))),
        "/bridge/world/:room" => world_room(app, room.as_deref().unwrap_or_default()),
        "/bridge/room/:room/players" => players(app, room.as_deref().unwrap_or_default()),
        "/bridge/room/:room/events" => events(app, req, room.as_deref().unwrap_or_default()),
        "/bridge/say" => say(app, req, peer, now),
        "/bridge/move" => move_user(app, req, now),
        "/bridge/state" => bridge_state(app, req),
        "/bridge/sync" => bridge_sync(app, req, now),
        "/bridge/trust" => trust(app, req, now),
        "/bridge/federation/leader" => app
            .fed_leader()
            .map(|v| Response::json(200, &v))
            .map_err(Response::from),
        "/bridge/travel" => {
            return match bridge_travel(app, id, req, now) {
                Ok(Some(resp)) | Err(resp) => Handled::Respond(resp),
                Ok(None) => Handled::Park {
                    route,
                    headers: cors_headers(cors),
                },
            };
        }
        "/bridge/act" | "/bridge/observe/:world" | "/bridge/speak" => {
            let answer = match route {
                "/bridge/act" => act(app, id, req),
                "/bridge/speak" => speak(app, id, req),
                _ => observe(app, id, req, room.as_deref().unwrap_or_default()),
            };
            return match answer {
                Ok(Answer::Now(reply)) => Handled::Respond(render(reply)),
                Err(resp) => Handled::Respond(resp),
                Ok(Answer::Later) => Handled::Park {
                    route,
                    headers: cors_headers(cors),
                },
            };
        }
        "/bridge/chat" | "/api/v1/generate" => {
            return match call(app, (id, peer), req, route, now) {
                Err(resp) => Handled::Respond(resp),
                // Refused before the first byte: the usual status and JSON, even streamed.
                Ok((Answer::Now(Err(refusal)), _)) => Handled::Respond(refusal.into()),
                Ok((Answer::Now(reply), false)) => Handled::Respond(render(reply)),
                Ok((Answer::Later, false)) => Handled::Park {
                    route,
                    headers: cors_headers(cors),
                },
                Ok((answer, true)) => {
                    if let Answer::Now(reply) = answer {
                        app.answer(ReplyTo::Http(id), reply);
                    }
                    shapes.insert(id, Shape::Events);
                    Handled::Stream {
                        route,
                        headers: cors_headers(cors.clone()),
                        head: event_stream_head(cors),
                    }
                }
            };
        }
        _ => Err(Response::error(404, "not_found", "no such route")),
    };
    Handled::Respond(result.unwrap_or_else(|e| e))
}

/// The CORS headers a parked answer gets when it is delivered.
pub fn cors_headers(cors: Option<String>) -> Vec<(&'static str, String)> {
    cors.map(|o| {
        vec![
            ("Access-Control-Allow-Origin", o),
            ("Vary", "Origin".into()),
        ]
    })
    .unwrap_or_default()
}

fn head_of(allowed: &str) -> &'static str {
    if allowed == "GET" {
        ", HEAD"
    } else {
        ""
    }
}

/// With `http.token` set, every route but `/bridge/health` needs `Authorization: Bearer`.
pub fn authorize(app: &App, req: &Request, route: &str) -> Result<(), Refusal> {
    let token = &app.cfg.http.token;
    // The status page is static HTML; the data it fetches carries the token.
    // Peers authenticate with the pair's token instead (see `app::peering`).
    // `/bridge/travel` serves both: its handler checks the token its body's kind needs.
    let peer_route =
        route == "/bridge/state" || route == "/bridge/sync" || route == "/bridge/travel";
    let open_route = route == "/bridge/health" || route == "/bridge/federation/leader";
    if token.is_empty() || open_route || route == "/" || peer_route {
        return Ok(());
    }
    match bearer(req) {
        None => Err(Refusal::new(
            "unauthorized",
            "this bridge needs an API token: send Authorization: Bearer <token>",
        )),
        Some(t) if constant_time_eq(t.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(Refusal::new("forbidden", "the API token is wrong")),
    }
}

fn world_error(e: WorldError) -> Refusal {
    let code = match e {
        WorldError::UnknownRoom(_) => "room_not_found",
        WorldError::AlreadyThere(_) => "already_in_room",
        WorldError::Invalid(..) => "bad_field",
        WorldError::Limit(_) => "limit_reached",
    };
    Refusal::new(code, e.to_string())
}

/// The `message` field: not blank, within `rooms.message_max_bytes`.
pub fn message(app: &App, f: &Fields) -> Result<String, Refusal> {
    checked_message(app, f.opt("message")?)
}

/// [`message`]'s checks on the field's value (`None`: absent or null).
fn checked_message(app: &App, v: Option<String>) -> Result<String, Refusal> {
    let max = app.cfg.rooms.message_max_bytes;
    fields::checked_text("message", v, max, "rooms.message_max_bytes")
}

/// Count one request of `user` against the rate limit.
fn rate_limit(app: &mut App, user: &str, now: u64) -> Result<(), Refusal> {
    app.rate_check(user, now).map_err(|retry| {
        let why = format!(
            "too many requests from {user}: at most {} per {} s",
            app.cfg.http.rate_limit_requests, app.cfg.http.rate_limit_window_s
        );
        app.rate_limited(why, retry)
    })
}

/// The live status page: one self-contained HTML file, no CDN.
const STATUS_PAGE: &str = include_str!("status_page.html");

fn index() -> Response {
    Response::new(
        200,
        "text/html; charset=utf-8",
        STATUS_PAGE.as_bytes().to_vec(),
    )
    .with_header("Cache-Control", "no-cache")
}

fn world_room(app: &App, room: &str) -> Result<Response, Response> {
    let r = app
        .world
        .room(room)
        .ok_or_else(|| world_error(WorldError::UnknownRoom(room.into())))?;
    Ok(Response::json(
        200,
        &json!({
            "room": r.spec.name,
            "data": {
                "desc_base": r.spec.desc,
                "exits": r.spec.exits,
                "objects": r.spec.objects,
                "visitor_history": r.visitor_history,
                "portal": r.spec.portal,
                "occupants": app.world.occupant_count(&r.spec.name),
            }
        }),
    ))
}

fn players(app: &App, room: &str) -> Result<Response, Response> {
    let name = app
        .world
        .resolve(room)
        .ok_or_else(|| world_error(WorldError::UnknownRoom(room.into())))?;
    let list: Vec<Value> = app
        .world
        .players(name)
        .into_iter()
        .map(|o| json!({"user_id": o.user_id, "username": o.username}))
        .collect();
    Ok(Response::json(200, &json!({"room": name, "players": list})))
}

fn events(app: &App, req: &Request, room: &str) -> Result<Response, Response> {
    let since = match req.query_param("since") {
        None => None,
        Some(s) => Some(parse_rfc3339(&s).ok_or_else(|| {
            Response::error(
                400,
                "bad_since",
                &format!(
                    "`since` must be an RFC 3339 timestamp like 2026-04-12T20:15:00Z, not {s:?}"
                ),
            )
        })?),
    };
    let after = match req.query_param("after") {
        None => None,
        Some(s) => Some(s.parse::<u64>().map_err(|_| {
            Response::error(
                400,
                "bad_after",
                &format!("`after` must be an event seq number, not {s:?}"),
            )
        })?),
    };
    let evs: Vec<&Event> = app.world.events(room, since, after).map_err(world_error)?;
    let name = app.world.resolve(room).unwrap_or(room);
    Ok(Response::json(200, &json!({"room": name, "events": evs})))
}

/// `POST /bridge/trust` `{subject, score}`: this world sets a subject's trust (a
/// character `bob@vps` or a world `vps`); the change reaches every peer.
fn trust(app: &mut App, req: &Request, now: u64) -> Result<Response, Response> {
    let obj = fields::object(&req.body)?;
    let f = Fields(&obj);
    let subject = f.name("subject")?;
    let score = obj
        .get("score")
        .and_then(Value::as_f64)
        .ok_or_else(|| Response::error(400, "missing_field", "`score` must be a number"))?;
    if let Some(r) = app.fed_refusal() {
        return Err(r.into());
    }
    let answer = app
        .set_trust(&subject, score, now)
        .map_err(|e| match (&app.fed, &e) {
            (_, crate::federation::TrustRefused::Superseded(held)) => {
                Refusal::new("trust_superseded", e.to_string()).with("trust", json!(held))
            }
            (None, _) => Refusal::new("federation_off", e.to_string()),
            (Some(_), _) => Refusal::new("bad_field", e.to_string()),
        })?;
    Ok(Response::json(200, &answer))
}

fn say(app: &mut App, req: &Request, peer: IpAddr, now: u64) -> Result<Response, Response> {
    let (user_id, message, room, username) = match Talk::read(&req.body) {
        Some(t) => (
            checked_name("user_id", owned(t.user_id))?,
            checked_message(app, owned(t.message))?,
            checked_name("room", owned(t.room))?,
            owned(t.username),
        ),
        None => {
            let obj = fields::object(&req.body)?;
            let f = Fields(&obj);
            (
                f.name("user_id")?,
                message(app, &f)?,
                f.name("room")?,
                f.opt("username")?,
            )
        }
    };
    let username = username.unwrap_or_else(|| user_id.clone());
    rate_limit(app, &user_id, now)?;
    app.limit_room_creation(peer, &room, now)?;
    let said = app
        .world
        .say(&user_id, &username, &room, &message, now)
        .map_err(world_error)?;
    // Present through HTTP: the session bounds it (sessions.max), and its end is a leave.
    app.touch_session(&user_id, &username, &said.event.room, now);
    // Written by hand, straight from the room: a crowded room's recipient list is the
    // bulk of this answer, and every say writes one. The bytes are serde_json's.
    let room = &said.event.room;
    // Its size, closely: a buffer much larger than the answer costs a slower allocation.
    let ev = &said.event;
    let event_len = [
        &ev.event,
        &ev.user_id,
        &ev.username,
        &ev.room,
        &ev.timestamp,
    ]
    .iter()
    .map(|s| s.len())
    .sum::<usize>()
        + ev.message.as_ref().map_or(0, |m| m.len() + 12)
        + ev.origin.len();
    let recipients_len: usize = (app.world.recipients(room, &user_id))
        .map(|h| 29 + h.user_id.len() + h.username.len())
        .sum();
    let mut body = Vec::with_capacity(160 + event_len + recipients_len);
    body.extend_from_slice(b"{\"ok\":true,\"event\":");
    if let Err(e) = serde_json::to_writer(&mut body, &said.event) {
        log::error!("a say's event failed to serialize: {e}");
        return Err(Response::error(
            500,
            "internal_error",
            "the response could not be encoded",
        ));
    }
    body.extend_from_slice(b",\"recipients\":[");
    for (i, o) in app.world.recipients(room, &user_id).enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"user_id\":");
        push_json_str(&mut body, &o.user_id);
        body.extend_from_slice(b",\"username\":");
        push_json_str(&mut body, &o.username);
        body.push(b'}');
    }
    body.extend_from_slice(b"]}");
    Ok(Response::new(200, "application/json", body))
}

fn move_user(app: &mut App, req: &Request, now: u64) -> Result<Response, Response> {
    let obj = fields::object(&req.body)?;
    let f = Fields(&obj);
    let user_id = f.name("user_id")?;
    let room = f.name("room")?;
    let username = f.opt("username")?;
    rate_limit(app, &user_id, now)?;
    let (to, evs) = app
        .world
        .move_user(&user_id, username.as_deref(), &room, now)
        .map_err(world_error)?;
    let name = app.world.occupant(&user_id).map(|o| o.username.clone());
    app.touch_session(&user_id, name.as_deref().unwrap_or(&user_id), &to, now);
    Ok(Response::json(
        200,
        &json!({"ok": true, "room": to, "events": evs}),
    ))
}

/// `POST /bridge/act` `{world, player?, action, args}`: checked here, before anything
/// is sent; the game's `result` answers it.
fn act(app: &mut App, id: ConnId, req: &Request) -> Result<Answer, Response> {
    let obj = fields::object(&req.body)?;
    let f = Fields(&obj);
    let world = f.name("world")?;
    let action = f.name("action")?;
    let player = f.opt("player")?;
    let args = obj.get("args").cloned().unwrap_or(Value::Null);
    let cmd =
        GameCommand::parse(&action, &args).map_err(|e| Response::error(400, "bad_action", &e))?;
    Ok(app.act(&world, player.as_deref(), &cmd, ReplyTo::Http(id)))
}

/// `GET /bridge/observe/<world>[?fresh=1][&player=]`.
fn observe(app: &mut App, id: ConnId, req: &Request, world: &str) -> Result<Answer, Response> {
    let fresh = match req.query_param("fresh").as_deref() {
        None | Some("0") | Some("false") => false,
        Some("1") | Some("true") | Some("") => true,
        Some(other) => {
            return Err(Response::error(
                400,
                "bad_fresh",
                &format!("`fresh` must be 1 or 0, not {other:?}"),
            ))
        }
    };
    let player = req.query_param("player");
    Ok(app.observe(world, player.as_deref(), fresh, ReplyTo::Http(id)))
}

/// `POST /bridge/speak` `{world?, room?, user_id?, text}`: the agent says something in
/// a game.
fn speak(app: &mut App, id: ConnId, req: &Request) -> Result<Answer, Response> {
    let obj = fields::object(&req.body)?;
    let f = Fields(&obj);
    let text = f.text("text", usize::MAX, "")?;
    let world = f.opt("world")?;
    let room = f.opt("room")?;
    let user = f.opt("user_id")?;
    let to = ReplyTo::Http(id);
    Ok(app.speak_anywhere(
        world.as_deref(),
        room.as_deref(),
        user.as_deref(),
        &text,
        to,
    ))
}

/// `POST /bridge/chat` and `POST /api/v1/generate`: both go to the agent.
fn call(
    app: &mut App,
    (id, peer): (ConnId, IpAddr),
    req: &Request,
    route: &str,
    now: u64,
) -> Result<(Answer, bool), Response> {
    // An explicit `stream` in the body wins over `Accept: text/event-stream`.
    let streamed = |asked: Option<bool>| match asked {
        Some(b) => b,
        None => (req.header("accept")).is_some_and(|a| a.contains("text/event-stream")),
    };
    // A chat's body, read straight into its fields when it can be (see `Talk`).
    let talk = (route == "/bridge/chat").then(|| Talk::read(&req.body));
    if let Some(t) = talk.flatten() {
        let stream = streamed(t.stream);
        let user_id = checked_name("user_id", owned(t.user_id))?;
        let message = checked_message(app, owned(t.message))?;
        let found = (user_id, owned(t.username), owned(t.room));
        let input = chat_input(app, peer, found, message, now)?;
        let input = CallInput { stream, ..input };
        let answer = app.begin_call(input, ReplyTo::Http(id), now, Instant::now());
        return Ok((answer, stream));
    }
    let obj = fields::object(&req.body)?;
    let f = Fields(&obj);
    let stream = route == "/bridge/chat" && streamed(f.opt_bool("stream")?);
    let input = if route == "/api/v1/generate" {
        let prompt = f.text("prompt", usize::MAX, "")?;
        let room = app
            .world
            .resolve("The Threshold")
            .unwrap_or_default()
            .to_string();
        CallInput {
            kind: CallKind::Generate,
            user_id: None,
            username: String::new(),
            room,
            message: prompt,
            stream: false,
            system: None,
        }
    } else {
        let user_id = f.name("user_id")?;
        let message = message(app, &f)?;
        let username = f.opt("username")?;
        let room = f.opt("room")?;
        chat_input(app, peer, (user_id, username, room), message, now)?
    };
    let input = CallInput { stream, ..input };
    let answer = app.begin_call(input, ReplyTo::Http(id), now, Instant::now());
    Ok((answer, stream))
}

/// A user's chat from its checked fields (`user_id`, `username`, `room`): the username
/// checked, the rate limit counted, the room (the user's own, else The Threshold) made.
pub fn chat_input(
    app: &mut App,
    peer: IpAddr,
    (user_id, username, room): (String, Option<String>, Option<String>),
    message: String,
    now: u64,
) -> Result<CallInput, Refusal> {
    let username = username.unwrap_or_else(|| user_id.clone());
    check_name("username", &username).map_err(world_error)?;
    let room = match room {
        Some(r) => r,
        None => (app.world.occupant(&user_id))
            .map(|o| o.room.clone())
            .unwrap_or_else(|| "The Threshold".into()),
    };
    rate_limit(app, &user_id, now)?;
    app.limit_room_creation(peer, &room, now)?;
    let room = app.world.ensure_room(&room).map_err(world_error)?;
    Ok(CallInput {
        kind: CallKind::Chat,
        user_id: Some(user_id),
        username,
        room,
        message,
        stream: false,
        system: None,
    })
}

/// The HTTP status for each refusal code the hub and this door give: the one table.
/// A code missing here is a bug (a test reads every code in `src/`); it answers 500.
pub fn status_of(code: &str) -> u16 {
    match code {
        "bad_action" | "bad_after" | "bad_field" | "bad_fresh" | "bad_json" | "bad_request"
        | "bad_room" | "bad_since" | "bad_travel" | "missing_field" | "refused" => 400,
        "unauthorized" => 401,
        "forbidden" | "forbidden_origin" | "limit_reached" => 403,
        "not_found" | "room_not_found" | "federation_off" | "no_perception" | "not_here" => 404,
        "method_not_allowed" => 405,
        "request_timeout" => 408,
        "already_in_room" | "travel_refused" | "trust_superseded" => 409,
        "message_too_long" => 413,
        "action_failed" => 422,
        "rate_limited" | "too_many_waiting" => 429,
        "agent_error" | "game_error" => 502,
        "agent_busy"
        | "link_down"
        | "shutting_down"
        | "not_leader"
        | "store_unavailable"
        | "too_many_connections" => 503,
        "agent_timeout" | "game_timeout" | "store_unknown" => 504,
        _ => 500,
    }
}

impl From<Refusal> for Response {
    /// `{"error", "code", …extra}` with the code's status, `Retry-After` when the hub
    /// gave one, and `WWW-Authenticate` on a 401.
    fn from(r: Refusal) -> Response {
        let status = status_of(r.code);
        if status == 500 {
            log::error!(
                "refusal code {:?} has no HTTP status; answering 500",
                r.code
            );
        }
        let mut resp = if r.extra.is_empty() {
            Response::error(status, r.code, &r.message)
        } else {
            let mut body = Map::new();
            body.insert("error".into(), Value::String(r.message));
            body.insert("code".into(), Value::String(r.code.into()));
            body.extend(r.extra.into_iter().map(|(k, v)| (k.to_string(), v)));
            Response::json(status, &body)
        };
        if let Some(secs) = r.retry_after {
            resp = resp.with_header("Retry-After", secs.to_string());
        }
        if status == 401 {
            resp = resp.with_header("WWW-Authenticate", "Bearer");
        }
        resp
    }
}

/// The hub's answer as this door shows it: the seed's JSON shapes.
pub fn render(reply: Reply) -> Response {
    let outcome = match reply {
        Ok(o) => o,
        Err(r) => return r.into(),
    };
    match outcome {
        Outcome::Chat(c) => Response::new(200, "application/json", chat_body(&c)),
        Outcome::Generate { text } => Response::json(200, &json!({"results": [{"text": text}]})),
        Outcome::Acted {
            world,
            action,
            result,
        } => {
            if result.ok {
                Response::json(
                    200,
                    &json!({"ok": true, "world": world, "action": action,
                            "result": result.data.unwrap_or_else(|| json!({}))}),
                )
            } else {
                let code = result.code.unwrap_or_else(|| "failed".into());
                let why = result.error.unwrap_or_else(|| "no reason given".into());
                Refusal::new(
                    "action_failed",
                    format!("{world} could not {action}: {why}"),
                )
                .with("game_code", Value::String(code))
                .into()
            }
        }
        Outcome::Observed {
            world,
            age_ms,
            fresh,
            perception,
        } => Response::json(
            200,
            &json!({"world": world, "age_ms": age_ms, "fresh": fresh, "perception": perception}),
        ),
        Outcome::Travelled {
            user_id,
            world,
            room,
            message,
        } => Response::json(
            200,
            &json!({"ok": true, "user_id": user_id, "world": world,
                    "room": room, "message": message}),
        ),
        Outcome::Ok(v) => Response::json(200, &v),
    }
}

/// The seed's chat answer, `{response, user, room, session_messages, crisis}`, the same
/// bytes as `serde_json` writes, written straight from the reply without its machinery
/// (every chat's answer, plain or the `done` event of a stream, is written here).
fn chat_body(c: &ChatReply) -> Vec<u8> {
    let mut b = Vec::with_capacity(96 + c.text.len() + c.user.len() + c.room.len());
    b.extend_from_slice(b"{\"response\":");
    json_text::push_str(&mut b, &c.text);
    b.extend_from_slice(b",\"user\":");
    push_json_str(&mut b, &c.user);
    b.extend_from_slice(b",\"room\":");
    push_json_str(&mut b, &c.room);
    b.extend_from_slice(b",\"session_messages\":");
    push_decimal(&mut b, c.session_messages);
    b.extend_from_slice(match c.crisis {
        true => b",\"crisis\":true}",
        false => b",\"crisis\":false}",
    });
    b
}

/// The head of an event stream (`200`, `text/event-stream`, never cached).
pub fn event_stream_head(cors: Option<String>) -> Response {
    let mut head = Response::new(200, "text/event-stream", Vec::new())
        .with_header("Cache-Control", "no-cache")
        .with_header("X-Accel-Buffering", "no");
    head.headers.extend(cors_headers(cors));
    head
}

/// One server-sent event.
pub fn sse(event: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(event.len() + data.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    out
}

/// The comment that keeps an idle event stream open through proxies.
pub const SSE_PING: &[u8] = b": ping\n\n";

/// A part of a streamed answer as the bytes of its event.
pub fn render_part(shape: &Shape, part: &Part) -> Vec<u8> {
    match (shape, part) {
        (Shape::OpenAi(c, _), part) => openai::render_part(c, part),
        (Shape::Events, Part::Thinking) => sse("thinking", b"{}"),
        (
            Shape::Events,
            Part::Text {
                index,
                text,
                crisis,
            },
        ) => {
            let data = json!({"index": index, "text": text, "crisis": crisis});
            sse("part", data.to_string().as_bytes())
        }
    }
}

/// The final answer of a streamed request as the bytes of its last event: `done` with
/// the chat JSON, or `error` with the refusal's JSON.
pub fn render_end(shape: &Shape, reply: Reply) -> Vec<u8> {
    match shape {
        Shape::OpenAi(c, _) => openai::render_end(c, reply),
        Shape::Events => match reply {
            Ok(Outcome::Chat(c)) => sse("done", &chat_body(&c)),
            other => {
                let resp = render(other);
                let event = if resp.status < 400 { "done" } else { "error" };
                sse(event, &resp.body)
            }
        },
    }
}

/// The final answer of a request with a shape whose stream never began: a refusal
/// before the first byte, or a non-streamed OpenAI completion.
pub fn render_plain(shape: &Shape, reply: Reply) -> Response {
    match shape {
        Shape::Events => render(reply),
        Shape::OpenAi(c, _) => openai::render(c, reply),
    }
}

/// The token in `Authorization: Bearer <token>`, if any.
fn bearer(req: &Request) -> Option<&str> {
    req.header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
}

/// `GET /bridge/state[?since=origin:seq,…]`: a snapshot, or the delta past a cursor.
fn bridge_state(app: &mut App, req: &Request) -> Result<Response, Response> {
    let peer = app.peer_of(bearer(req), "/bridge/state")?;
    let since = match req.query_param("since") {
        None => None,
        Some(s) => Some(
            Cursor::parse_query(&s)
                .map_err(|e| Refusal::new("bad_since", format!("`since`: {e}")))?,
        ),
    };
    let doc = app.fed_state(&peer, since.as_ref())?;
    Ok(Response::json(200, &doc))
}

/// `POST /bridge/sync`: merge a peer's push; the answer waits for its rows (held until
/// durable, as every answer to a change).
fn bridge_sync(app: &mut App, req: &Request, now_ms: u64) -> Result<Response, Response> {
    let peer = app.peer_of(bearer(req), "/bridge/sync")?;
    let doc: Delta = serde_json::from_slice(&req.body).map_err(|e| {
        Refusal::new(
            "bad_json",
            format!("the body is not a federation document: {e}"),
        )
    })?;
    let answer = app.fed_sync(&peer, &doc, now_ms)?;
    Ok(Response::json(200, &answer))
}

/// `POST /bridge/travel`: a user's request (answered later) or a peer's message.
fn bridge_travel(
    app: &mut App,
    conn: ConnId,
    req: &Request,
    now_ms: u64,
) -> Result<Option<Response>, Response> {
    let body: Value = serde_json::from_slice(&req.body)
        .map_err(|e| Refusal::new("bad_json", format!("the body is not JSON: {e}")))?;
    if body.get("type").is_some() {
        let peer = app.peer_of(bearer(req), "/bridge/travel")?;
        let msg: TravelMsg = serde_json::from_value(body.clone())
            .map_err(|e| Refusal::new("bad_travel", format!("not a travel message: {e}")))?;
        let reply = app.on_peer_travel(&peer, &msg, &body, now_ms);
        return Ok(Some(Response::json(200, &reply)));
    }
    if !app.cfg.http.token.is_empty() {
        let given = bearer(req).unwrap_or_default();
        if !constant_time_eq(given.as_bytes(), app.cfg.http.token.as_bytes()) {
            return Err(
                Refusal::new("forbidden", "a user's travel needs the bridge's API token").into(),
            );
        }
    }
    let Value::Object(obj) = &body else {
        return Err(Refusal::new("bad_json", "the body must be a JSON object").into());
    };
    let f = Fields(obj);
    let user_id = f.name("user_id")?;
    let to_world = f.name("to_world")?;
    app.travel_request(&user_id, &to_world, ReplyTo::Http(conn), now_ms)?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_answer_is_what_serde_json_writes() {
        for (text, user, crisis) in [
            ("Hello, Tester.", "Tester", false),
            (
                "Are you safe right now?\n\n\"988\" \\ \u{1}é",
                "Ünï \"q\"",
                true,
            ),
            ("", "", false),
        ] {
            let c = ChatReply {
                text: text.into(),
                user: user.into(),
                room: "The Threshold".into(),
                session_messages: 18_446_744_073_709_551_615,
                crisis,
            };
            let want = json!({"response": text, "user": user, "room": "The Threshold",
                              "session_messages": c.session_messages, "crisis": crisis});
            assert_eq!(chat_body(&c), serde_json::to_vec(&want).unwrap());
        }
    }

    #[test]
    fn browser_origins_are_checked_against_the_list_and_the_own_page() {
        let allowed = crate::config::WebsocketConfig::default().allowed_origins;
        let cors = vec!["https://game.example".to_string()];
        let ok = |o: &str, host: Option<&str>| origin_allowed(o, host, &allowed, &cors);
        for origin in [
            "null",
            "http://localhost",
            "http://localhost:3000",
            "HTTP://LOCALHOST:8080",
            "https://127.0.0.1:5173",
            "http://[::1]:8000",
            "https://game.example",
        ] {
            assert!(ok(origin, Some("127.0.0.1:8765")), "{origin}");
        }
        for origin in [
            "http://evil.example",
            "http://evil.localhost:8000",
            "http://localhost.evil.example",
            "http://127.0.0.1.evil.example:80",
            "http://localhost:80abc",
            "https://game.example:444",
            "",
        ] {
            assert!(!ok(origin, Some("127.0.0.1:8765")), "{origin}");
        }
        // The bridge's own page reached by an address: same origin.
        assert!(ok("http://192.168.1.5:4004", Some("192.168.1.5:4004")));
        assert!(ok("http://[fe80::1]:4004", Some("[fe80::1]:4004")));
        // A host name naming itself is what a DNS-rebinding page looks like.
        assert!(!ok(
            "http://rebind.example:4004",
            Some("rebind.example:4004")
        ));
        assert!(!ok("http://192.168.1.5:4005", Some("192.168.1.5:4004")));
        // `*` allows every page.
        assert!(origin_allowed(
            "http://any.example",
            None,
            &["*".into()],
            &[]
        ));
    }

    #[test]
    fn routes_resolve_with_encoded_rooms() {
        assert_eq!(route_of("/bridge/health"), Some(("/bridge/health", None)));
        assert_eq!(
            route_of("/bridge/room/The%20Threshold/events"),
            Some(("/bridge/room/:room/events", Some("The%20Threshold")))
        );
        assert_eq!(
            route_of("/bridge/world/The%2FSlash"),
            Some(("/bridge/world/:room", Some("The%2FSlash")))
        );
        assert_eq!(route_of("/bridge/room/X/other"), None);
        assert_eq!(route_of("/nope"), None);
    }

    #[test]
    fn every_refusal_code_in_the_source_has_a_status() {
        // The codes the hub and the doors refuse with, read from the source as a reviewer
        // would: `Refusal::new(` then a string literal (with the call split over lines too).
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![root.clone()];
        let mut codes = std::collections::BTreeSet::new();
        while let Some(p) = files.pop() {
            if p.is_dir() {
                files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            } else if p.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for part in text.split("Refusal::new(").skip(1) {
                    let part = part.trim_start();
                    if let Some(rest) = part.strip_prefix('"') {
                        let code = &rest[..rest.find('"').unwrap_or(0)];
                        // Only snake_case names (this test's own source names the call too).
                        if !code.is_empty()
                            && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                        {
                            codes.insert(code.to_string());
                        }
                    }
                }
            }
        }
        assert!(codes.len() > 20, "{codes:?}");
        for code in &codes {
            assert_ne!(status_of(code), 500, "{code} has no status in status_of");
        }
    }

    #[test]
    fn the_status_table_and_refusal_rendering() {
        for (code, status) in [
            ("bad_json", 400),
            ("unauthorized", 401),
            ("forbidden", 403),
            ("room_not_found", 404),
            ("travel_refused", 409),
            ("message_too_long", 413),
            ("action_failed", 422),
            ("rate_limited", 429),
            ("game_error", 502),
            ("store_unavailable", 503),
            ("game_timeout", 504),
            ("no_such_code", 500),
        ] {
            assert_eq!(status_of(code), status, "{code}");
        }
        let resp = Response::from(Refusal::new("agent_busy", "busy").retry_after(1));
        assert_eq!(resp.status, 503);
        assert_eq!(resp.body, br#"{"error":"busy","code":"agent_busy"}"#);
        assert!(resp.headers.contains(&("Retry-After", "1".into())));
        let resp = Response::from(Refusal::new("unauthorized", "token"));
        assert!(resp
            .headers
            .contains(&("WWW-Authenticate", "Bearer".into())));
        let resp =
            Response::from(Refusal::new("action_failed", "no").with("game_code", json!("locked")));
        assert_eq!(
            resp.body,
            br#"{"error":"no","code":"action_failed","game_code":"locked"}"#
        );
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
