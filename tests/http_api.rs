//! The /bridge API of seed 001 over real sockets: every route, its JSON shape, and every
//! error status.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

#[test]
fn health_has_the_seed_shape() {
    let b = start();
    let h = get(b.http, "/bridge/health");
    assert_eq!(h["status"], "ok");
    assert_eq!(h["active_sessions"], 0);
    let ts = h["timestamp"].as_str().unwrap();
    assert!(
        worldbridge::world::time::parse_rfc3339(ts).is_some(),
        "RFC 3339: {ts}"
    );
    assert!(ts.ends_with('Z'));
    assert_eq!(h["world"], "local");
}

#[test]
fn chat_answers_with_the_seed_shape_and_lists_the_session() {
    let b = start();
    let r = post(
        b.http,
        "/bridge/chat",
        &json!({"user_id":"alice_01","username":"Alice","message":"Hello! What do you see?","room":"The Threshold"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["user"], "Alice");
    assert_eq!(j["room"], "The Threshold");
    assert_eq!(j["session_messages"], 2);
    let text = j["response"].as_str().unwrap();
    assert!(text.contains("Alice"), "greets by name: {text}");
    let r2 = post(
        b.http,
        "/bridge/chat",
        &json!({"user_id":"alice_01","username":"Alice","message":"who is here?","room":"The Threshold"}),
    );
    assert_eq!(r2.json()["session_messages"], 4);
    let s = get(b.http, "/bridge/sessions");
    let list = s["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["user"], "Alice");
    assert_eq!(list[0]["room"], "The Threshold");
    assert_eq!(list[0]["messages"], 4);
    assert!(list[0]["last_active"].as_str().unwrap().ends_with('Z'));
    assert!(list[0]["created"].as_str().is_some());
    assert_eq!(get(b.http, "/bridge/health")["active_sessions"], 1);
    // The chat put Alice in the room.
    let p = get(b.http, "/bridge/room/The%20Threshold/players");
    assert_eq!(
        p["players"],
        json!([{"user_id":"alice_01","username":"Alice"}])
    );
}

#[test]
fn a_sessions_room_is_where_its_user_is_now_after_a_move() {
    let b = start();
    let r = post(
        b.http,
        "/bridge/chat",
        &json!({"user_id":"alice_01","username":"Alice","message":"hi","room":"The Threshold"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let mv = post(
        b.http,
        "/bridge/move",
        &json!({"user_id":"alice_01","room":"The Garden"}),
    );
    assert_eq!(mv.status, 200, "{}", mv.text());
    let s = get(b.http, "/bridge/sessions");
    assert_eq!(s["sessions"][0]["user_id"], "alice_01");
    assert_eq!(s["sessions"][0]["room"], "The Garden", "{s}");
    assert_eq!(s["sessions"][0]["messages"], 2, "a move is not a message");
}

#[test]
fn say_reaches_the_others_and_never_echoes_to_the_sender() {
    let b = start();
    let mv = post(
        b.http,
        "/bridge/move",
        &json!({"user_id":"bob_02","username":"Bob","room":"The Threshold"}),
    );
    assert_eq!(mv.status, 200, "{}", mv.text());
    let r = post(
        b.http,
        "/bridge/say",
        &json!({"user_id":"alice_01","username":"Alice","message":"Anyone else here?","room":"The Threshold"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["ok"], true);
    assert_eq!(
        j["recipients"],
        json!([{"user_id":"bob_02","username":"Bob"}])
    );
    let ev = &j["event"];
    assert_eq!(ev["type"], "say");
    assert_eq!(ev["event"], "message");
    assert_eq!(ev["user_id"], "alice_01");
    assert_eq!(ev["username"], "Alice");
    assert_eq!(ev["room"], "The Threshold");
    assert_eq!(ev["message"], "Anyone else here?");
    assert!(ev["seq"].as_u64().unwrap() > 0);
    assert!(ev["timestamp"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn move_emits_leave_then_enter_and_refuses_same_or_unknown_room() {
    let b = start();
    post(
        b.http,
        "/bridge/move",
        &json!({"user_id":"alice_01","username":"Alice","room":"The Threshold"}),
    );
    let r = post(
        b.http,
        "/bridge/move",
        &json!({"user_id":"alice_01","room":"The Garden"}),
    );
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["ok"], true);
    assert_eq!(j["room"], "The Garden");
    let evs = j["events"].as_array().unwrap();
    assert_eq!(evs.len(), 2);
    assert_eq!(
        (evs[0]["event"].as_str(), evs[0]["room"].as_str()),
        (Some("leave"), Some("The Threshold"))
    );
    assert_eq!(
        (evs[1]["event"].as_str(), evs[1]["room"].as_str()),
        (Some("enter"), Some("The Garden"))
    );
    assert_eq!(evs[0]["username"], "Alice");
    let same = post(
        b.http,
        "/bridge/move",
        &json!({"user_id":"alice_01","room":"The Garden"}),
    );
    assert_eq!(same.status, 409);
    assert_eq!(same.json()["code"], "already_in_room");
    assert!(same.json()["error"]
        .as_str()
        .unwrap()
        .contains("already in The Garden"));
    let unknown = post(
        b.http,
        "/bridge/move",
        &json!({"user_id":"alice_01","room":"Narnia"}),
    );
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["code"], "room_not_found");
}

#[test]
fn events_filter_by_since_and_after_and_rooms_are_url_decoded() {
    let b = start();
    for i in 0..3 {
        post(
            b.http,
            "/bridge/say",
            &json!({"user_id":"a","message":format!("m{i}"),"room":"The Forge"}),
        );
    }
    let all = get(b.http, "/bridge/room/The%20Forge/events");
    assert_eq!(all["room"], "The Forge");
    let evs = all["events"].as_array().unwrap();
    assert_eq!(evs.len(), 4, "enter + three says: {evs:?}");
    assert_eq!(evs[0]["type"], "presence");
    assert_eq!(evs[0]["event"], "enter");
    let second_seq = evs[2]["seq"].as_u64().unwrap();
    let after = get(
        b.http,
        &format!("/bridge/room/The%20Forge/events?after={second_seq}"),
    );
    assert_eq!(after["events"].as_array().unwrap().len(), 1);
    assert_eq!(after["events"][0]["message"], "m2");
    let ts = evs[3]["timestamp"].as_str().unwrap();
    let since = get(
        b.http,
        &format!("/bridge/room/The%20Forge/events?since={ts}"),
    );
    assert_eq!(
        since["events"].as_array().unwrap().len(),
        0,
        "since is exclusive"
    );
    let early = get(
        b.http,
        "/bridge/room/The%20Forge/events?since=2000-01-01T00:00:00",
    );
    assert_eq!(early["events"].as_array().unwrap().len(), 4);
    let bad = call(
        b.http,
        "GET",
        "/bridge/room/The%20Forge/events?since=yesterday",
        None,
    );
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["code"], "bad_since");
    let bad_after = call(
        b.http,
        "GET",
        "/bridge/room/The%20Forge/events?after=x",
        None,
    );
    assert_eq!(bad_after.status, 400);
    assert_eq!(
        call(b.http, "GET", "/bridge/room/Nowhere/events", None).status,
        404
    );
}

#[test]
fn events_keep_only_the_configured_window() {
    let mut cfg = test_config();
    cfg.rooms.events_max = 50;
    let b = start_with(cfg);
    let mut c = Client::connect(b.http);
    for i in 0..60 {
        let body = json!({"user_id":"a","message":format!("m{i}"),"room":"The Tower"}).to_string();
        assert_eq!(c.call("POST", "/bridge/say", Some(&body)).status, 200);
    }
    let evs = get(b.http, "/bridge/room/The%20Tower/events");
    let evs = evs["events"].as_array().unwrap();
    assert_eq!(evs.len(), 50);
    assert_eq!(evs[49]["message"], "m59");
}

#[test]
fn world_room_players_and_rooms() {
    let b = start();
    let w = get(b.http, "/bridge/world/The%20Threshold");
    assert_eq!(w["room"], "The Threshold");
    assert!(w["data"]["desc_base"]
        .as_str()
        .unwrap()
        .contains("green LED"));
    assert_eq!(w["data"]["exits"]["up"], "The Tower");
    post(
        b.http,
        "/bridge/move",
        &json!({"user_id":"alice_01","username":"Alice","room":"The Threshold"}),
    );
    let w = get(b.http, "/bridge/world/the%20threshold");
    assert_eq!(w["data"]["visitor_history"], json!(["Alice"]));
    assert_eq!(
        call(b.http, "GET", "/bridge/world/Atlantis", None).status,
        404
    );
    let rooms = get(b.http, "/bridge/rooms");
    let rooms = rooms["rooms"].as_array().unwrap();
    assert_eq!(rooms.len(), 5);
    let t = rooms.iter().find(|r| r["name"] == "The Threshold").unwrap();
    assert_eq!(t["occupants"], 1);
    assert_eq!(
        call(b.http, "GET", "/bridge/room/Atlantis/players", None).status,
        404
    );
}

#[test]
fn stats_and_metrics_count_what_happened() {
    let b = start();
    get(b.http, "/bridge/health");
    post(
        b.http,
        "/bridge/chat",
        &json!({"user_id":"u","message":"hi","room":"The Tower"}),
    );
    call(b.http, "GET", "/nope", None);
    let s = get(b.http, "/bridge/stats");
    assert!(s["requests"]["total"].as_u64().unwrap() >= 3);
    assert_eq!(s["agent"]["calls"]["ok"], 1);
    assert_eq!(s["sessions"], 1);
    let m = call(b.http, "GET", "/metrics", None);
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    let t = m.text();
    assert!(
        t.contains("worldbridge_http_requests_total{route=\"/bridge/health\",status=\"200\"} 1"),
        "{t}"
    );
    assert!(t.contains("worldbridge_http_requests_total{route=\"/bridge/chat\",status=\"200\"} 1"));
    assert!(t.contains("worldbridge_http_requests_total{route=\"other\",status=\"404\"} 1"));
    assert!(t.contains("worldbridge_agent_calls_total{outcome=\"ok\"} 1"));
    assert!(t.contains("worldbridge_agent_latency_seconds_count 1"));
    assert!(t.contains("worldbridge_connections_open"));
    assert!(t.contains("worldbridge_agent_queue_depth"));
    assert!(t.contains("worldbridge_crisis_detections_total{category=\"suicide\"} 0"));
}

#[test]
fn generate_speaks_evennias_llm_contrib_shape() {
    let b = start();
    let r = post(
        b.http,
        "/api/v1/generate",
        &json!({"prompt":"You are roleplaying as Timmy. Hello there","max_new_tokens":250,"temperature":0.7}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert!(!j["results"][0]["text"].as_str().unwrap().is_empty());
    let bad = post(b.http, "/api/v1/generate", &json!({"text":"no prompt"}));
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["code"], "missing_field");
}

#[test]
fn client_errors_get_clear_json_and_the_right_status() {
    let b = start();
    let cases: Vec<(&str, &str, Option<&str>, u16, &str)> = vec![
        ("GET", "/nope", None, 404, "not_found"),
        ("DELETE", "/bridge/health", None, 405, "method_not_allowed"),
        ("GET", "/bridge/chat", None, 405, "method_not_allowed"),
        ("POST", "/bridge/chat", Some("{not json"), 400, "bad_json"),
        ("POST", "/bridge/chat", Some("[1,2]"), 400, "bad_json"),
        ("POST", "/bridge/chat", None, 400, "bad_json"),
        (
            "POST",
            "/bridge/chat",
            Some(r#"{"user_id":"a"}"#),
            400,
            "missing_field",
        ),
        (
            "POST",
            "/bridge/chat",
            Some(r#"{"user_id":"a","message":5}"#),
            400,
            "bad_field",
        ),
        (
            "POST",
            "/bridge/say",
            Some(r#"{"user_id":"a","message":"x","room":["r"]}"#),
            400,
            "bad_field",
        ),
        (
            "POST",
            "/bridge/say",
            Some(r#"{"user_id":"","message":"x","room":"r"}"#),
            400,
            "bad_field",
        ),
        (
            "POST",
            "/bridge/move",
            Some(r#"{"user_id":"a"}"#),
            400,
            "missing_field",
        ),
        ("GET", "/bridge/room/%FF/events", None, 400, "bad_room"),
    ];
    for (m, p, body, status, code) in cases {
        let r = call(b.http, m, p, body);
        assert_eq!(r.status, status, "{m} {p} {body:?}: {}", r.text());
        let j = r.json();
        assert_eq!(j["code"], code, "{m} {p}");
        assert!(j["error"].as_str().unwrap().len() > 5, "a human sentence");
    }
    let r = call(b.http, "DELETE", "/bridge/health", None);
    assert_eq!(r.header("allow"), Some("GET, OPTIONS, HEAD"));
}

#[test]
fn absolute_form_request_targets_are_served_like_origin_form() {
    let b = start();
    let mut c = Client::connect(b.http);
    let host = b.http.to_string();
    c.send_raw(
        format!("GET http://{host}/bridge/health HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
    );
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    // Same connection, a room path with a query: decoded and routed as usual.
    c.send_raw(format!("GET http://{host}/bridge/room/The%20Forge/events?since=2020-01-01T00:00:00Z HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["room"], "The Forge");
}

#[test]
fn protocol_errors_411_413_431_and_garbage_close_the_connection() {
    let mut cfg = test_config();
    cfg.http.body_max_bytes = 1024;
    let b = start_with(cfg);
    let mut c = Client::connect(b.http);
    c.send_raw(b"POST /bridge/say HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 411);
    assert_eq!(r.json()["code"], "length_required");
    assert!(c.closed_by_server());

    let mut c = Client::connect(b.http);
    c.send_raw(b"POST /bridge/say HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!(
        r.status, 413,
        "decided from the head, before the body is sent"
    );

    let mut c = Client::connect(b.http);
    let big = format!(
        "GET /bridge/health HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    c.send_raw(big.as_bytes());
    assert_eq!(c.read_response(false).unwrap().status, 431);

    let mut c = Client::connect(b.http);
    c.send_raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed_by_server());
    // The bridge is fine afterwards.
    assert_eq!(get(b.http, "/bridge/health")["status"], "ok");
}

#[test]
fn a_slow_head_gets_408_and_an_idle_keepalive_is_closed() {
    let mut cfg = test_config();
    cfg.http.header_timeout_s = 1;
    cfg.http.keepalive_idle_s = 1;
    let b = start_with(cfg);
    let mut c = Client::connect(b.http);
    c.send_raw(b"GET /bridge/health HTTP/1.1\r\nHost: x\r\n");
    let r = c.read_response(false).expect("408 before close");
    assert_eq!(r.status, 408);
    assert_eq!(r.json()["code"], "request_timeout");
    assert!(c.closed_by_server());

    let mut idle = Client::connect(b.http);
    assert_eq!(idle.call("GET", "/bridge/health", None).status, 200);
    let t = std::time::Instant::now();
    assert!(idle.closed_by_server());
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "closed only after the idle time"
    );
}

#[test]
fn keepalive_pipelining_close_and_http10() {
    let b = start();
    let mut c = Client::connect(b.http);
    for _ in 0..3 {
        let r = c.call("GET", "/bridge/health", None);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
    // Two requests in one write, the first parked on the agent: answers in order.
    let mut two = request_bytes(
        "POST",
        "/bridge/chat",
        Some(r#"{"user_id":"p","message":"hello","room":"The Tower"}"#),
        &[],
    );
    two.extend(request_bytes(
        "GET",
        "/bridge/room/The%20Tower/players",
        None,
        &[],
    ));
    c.send_raw(&two);
    let first = c.read_response(false).unwrap();
    let second = c.read_response(false).unwrap();
    assert!(first.json()["response"].is_string(), "{}", first.text());
    assert_eq!(second.json()["players"][0]["user_id"], "p");

    let mut c = Client::connect(b.http);
    c.send_raw(&request_bytes(
        "GET",
        "/bridge/health",
        None,
        &[("Connection", "close")],
    ));
    let r = c.read_response(false).unwrap();
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed_by_server());

    let mut c = Client::connect(b.http);
    c.send_raw(b"GET /bridge/health HTTP/1.0\r\n\r\n");
    assert_eq!(c.read_response(false).unwrap().status, 200);
    assert!(c.closed_by_server(), "HTTP/1.0 without keep-alive closes");

    let mut c = Client::connect(b.http);
    c.send_raw(b"GET /bridge/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(
        c.read_response(false).unwrap().header("connection"),
        Some("keep-alive")
    );
    c.send_raw(b"GET /bridge/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.read_response(false).unwrap().status, 200);
}

#[test]
fn head_and_cors_preflight() {
    let mut cfg = test_config();
    cfg.http.cors_origins = vec!["http://localhost:5173".into()];
    let b = start_with(cfg);
    let mut c = Client::connect(b.http);
    let h = c.call("HEAD", "/bridge/health", None);
    assert_eq!(h.status, 200);
    assert!(h.body.is_empty());
    assert!(
        h.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 10
    );
    // The connection is still in step after a HEAD.
    assert_eq!(c.call("GET", "/bridge/health", None).status, 200);

    c.send_raw(&request_bytes(
        "OPTIONS",
        "/bridge/chat",
        None,
        &[
            ("Origin", "http://localhost:5173"),
            ("Access-Control-Request-Method", "POST"),
        ],
    ));
    let pre = c.read_response(false).unwrap();
    assert_eq!(pre.status, 204);
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some("http://localhost:5173")
    );
    assert!(pre
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    // The OpenAI door's session and room headers may be sent by a page too.
    let allowed = pre.header("access-control-allow-headers").unwrap();
    for h in [
        "Content-Type",
        "Authorization",
        "X-Worldbridge-User",
        "X-Worldbridge-Room",
    ] {
        assert!(allowed.contains(h), "{allowed}");
    }
    c.send_raw(&request_bytes(
        "GET",
        "/bridge/health",
        None,
        &[("Origin", "http://evil.example")],
    ));
    let r = c.read_response(false).unwrap();
    assert_eq!(
        r.header("access-control-allow-origin"),
        None,
        "origin not in cors_origins"
    );
    c.send_raw(&request_bytes(
        "POST",
        "/bridge/chat",
        Some(r#"{"user_id":"c","message":"hi"}"#),
        &[("Origin", "http://localhost:5173")],
    ));
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://localhost:5173"),
        "parked answers get CORS too"
    );
}

#[test]
fn the_21st_user_evicts_the_least_recently_active_session() {
    let b = start();
    let mut c = Client::connect(b.http);
    for i in 0..21 {
        let body = json!({"user_id":format!("user{i:02}"),"message":"hello","room":"The Garden"})
            .to_string();
        assert_eq!(c.call("POST", "/bridge/chat", Some(&body)).status, 200);
    }
    let s = get(b.http, "/bridge/sessions");
    let users: Vec<&str> = s["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(users.len(), 20);
    assert!(
        !users.contains(&"user00"),
        "the least recently active went: {users:?}"
    );
    assert!(users.contains(&"user20") && users.contains(&"user01"));
}

#[test]
fn idle_sessions_expire_after_the_timeout() {
    let mut cfg = test_config();
    cfg.sessions.idle_timeout_s = 1;
    let b = start_with(cfg);
    post(
        b.http,
        "/bridge/chat",
        &json!({"user_id":"a","message":"hello","room":"The Garden"}),
    );
    assert_eq!(get(b.http, "/bridge/health")["active_sessions"], 1);
    eventually(Duration::from_secs(5), "session expiry", || {
        get(b.http, "/bridge/health")["active_sessions"] == 0
    });
    assert_eq!(
        get(b.http, "/bridge/room/The%20Garden/players")["players"],
        json!([])
    );
}

#[test]
fn rate_limit_gives_429_with_retry_after_per_user() {
    let mut cfg = test_config();
    cfg.http.rate_limit_requests = 5;
    cfg.http.rate_limit_window_s = 60;
    let b = start_with(cfg);
    let mut c = Client::connect(b.http);
    let body = |u: &str| json!({"user_id":u,"message":"x","room":"The Tower"}).to_string();
    for _ in 0..5 {
        assert_eq!(
            c.call("POST", "/bridge/say", Some(&body("greedy"))).status,
            200
        );
    }
    let r = c.call("POST", "/bridge/say", Some(&body("greedy")));
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["code"], "rate_limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(
        c.call("POST", "/bridge/say", Some(&body("polite"))).status,
        200,
        "others unaffected"
    );
}

#[test]
fn connections_past_the_maximum_get_503_and_are_closed_and_counted() {
    let mut cfg = test_config();
    cfg.http.max_connections = 2;
    let b = start_with(cfg);
    let mut a = Client::connect(b.http);
    let mut c2 = Client::connect(b.http);
    assert_eq!(a.call("GET", "/bridge/health", None).status, 200);
    assert_eq!(c2.call("GET", "/bridge/health", None).status, 200);
    let mut third = Client::connect(b.http);
    third.send_raw(b"GET /bridge/health HTTP/1.1\r\n\r\n");
    let r = third
        .read_response(false)
        .expect("a 503, not a silent close");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["code"], "too_many_connections");
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("http.max_connections"));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(third.closed_by_server());
    assert_eq!(
        a.call("GET", "/bridge/health", None).status,
        200,
        "existing ones unaffected"
    );
    drop(c2);
    let s = a.call("GET", "/bridge/stats", None).json();
    assert!(s["connections"]["rejected"].as_u64().unwrap() >= 1);
}

#[test]
fn each_surface_has_its_own_connection_cap() {
    let mut cfg = test_config();
    cfg.line.listen = vec!["127.0.0.1:0".parse().unwrap()];
    cfg.line.max_connections = 50;
    cfg.http.max_connections = 50;
    cfg.websocket.max_connections = 2;
    let b = start_with(cfg);
    let line = b.line.expect("a line listener");
    // 50 idle line connections fill the line cap...
    let idle: Vec<std::net::TcpStream> = (0..50)
        .map(|_| std::net::TcpStream::connect(line).unwrap())
        .collect();
    common::eventually(Duration::from_secs(5), "50 line connections open", || {
        get(b.http, "/bridge/stats")["connections"]["open"].as_u64() >= Some(50)
    });
    // ...the 51st gets an error line and is closed...
    let mut extra = std::net::TcpStream::connect(line).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = String::new();
    std::io::Read::read_to_string(&mut extra, &mut got).unwrap();
    let v: Value = serde_json::from_str(got.trim()).unwrap();
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("too_many_connections"))
    );
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains("line.max_connections"));
    // ...and HTTP is unaffected.
    assert_eq!(call(b.http, "GET", "/bridge/health", None).status, 200);
    drop(idle);

    // WebSockets count on their own: two upgrades fill the cap, the third is a 503 before
    // the handshake, plain HTTP still works.
    let upgrade = |c: &mut Client| {
        c.send_raw(b"GET /ws/workshop HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
        c.read_response(true).expect("an answer").status
    };
    let mut ws1 = Client::connect(b.http);
    let mut ws2 = Client::connect(b.http);
    assert_eq!((upgrade(&mut ws1), upgrade(&mut ws2)), (101, 101));
    let mut ws3 = Client::connect(b.http);
    ws3.send_raw(b"GET /ws/workshop HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    let r = ws3.read_response(false).unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["code"], "too_many_connections");
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("websocket.max_connections"));
    assert_eq!(call(b.http, "GET", "/bridge/health", None).status, 200);
    // A WebSocket that closes frees its place.
    drop(ws1);
    common::eventually(
        Duration::from_secs(5),
        "the upgrade's place is free",
        || {
            let mut c = Client::connect(b.http);
            upgrade(&mut c) == 101
        },
    );
}

#[test]
fn api_token_guards_every_route_but_health() {
    let mut cfg = test_config();
    cfg.http.token = "s3cret".into();
    let b = start_with(cfg);
    assert_eq!(call(b.http, "GET", "/bridge/health", None).status, 200);
    let r = call(b.http, "GET", "/bridge/rooms", None);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["code"], "unauthorized");
    let mut c = Client::connect(b.http);
    c.send_raw(&request_bytes(
        "GET",
        "/bridge/rooms",
        None,
        &[("Authorization", "Bearer nope")],
    ));
    assert_eq!(c.read_response(false).unwrap().status, 403);
    c.send_raw(&request_bytes(
        "GET",
        "/bridge/rooms",
        None,
        &[("Authorization", "Bearer s3cret")],
    ));
    assert_eq!(c.read_response(false).unwrap().status, 200);
}

#[test]
fn a_graceful_stop_finishes_and_returns() {
    let b = start();
    let mut c = Client::connect(b.http);
    assert_eq!(c.call("GET", "/bridge/health", None).status, 200);
    b.stop().expect("the bridge stops cleanly");
    assert!(c.closed_by_server());
}

#[test]
fn limits_on_rooms_and_message_size_give_clear_errors() {
    let mut cfg = test_config();
    cfg.rooms.max = 6;
    cfg.rooms.message_max_bytes = 100;
    let b = start_with(cfg);
    let ok = post(
        b.http,
        "/bridge/say",
        &json!({"user_id":"g","message":"hi","room":"Balmora, Temple"}),
    );
    assert_eq!(ok.status, 200, "a room a game mentions is created");
    assert_eq!(
        get(b.http, "/bridge/world/Balmora%2C%20Temple")["room"],
        "Balmora, Temple"
    );
    let full = post(
        b.http,
        "/bridge/say",
        &json!({"user_id":"g","message":"hi","room":"Seyda Neen"}),
    );
    assert_eq!(full.status, 403);
    assert_eq!(full.json()["code"], "limit_reached");
    assert!(full.json()["error"].as_str().unwrap().contains("rooms.max"));
    let long = post(
        b.http,
        "/bridge/chat",
        &json!({"user_id":"g","message":"x".repeat(101),"room":"The Tower"}),
    );
    assert_eq!(long.status, 413);
    assert_eq!(long.json()["code"], "message_too_long");
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn people_who_are_gone_leave_so_a_room_holds_real_users_only() {
    let mut cfg = test_config();
    cfg.sessions.max = 5;
    cfg.http.rate_limit_requests = 1_000_000;
    cfg.line.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let b = start_with(cfg);
    // A game reports Gus in the Garden; Carol chats (a conversation worth keeping).
    let mut game = LineClient::connect(b.line.unwrap());
    game.hello("mud", "generic");
    game.send(&json!({"type": "presence", "id": 1, "event": "enter", "user_id": "gus", "username": "Gus", "room": "The Garden"}));
    assert_eq!(game.recv().unwrap()["type"], "ok");
    let chat = post(
        b.http,
        "/bridge/chat",
        &json!({"user_id": "carol", "message": "hi", "room": "The Garden"}),
    );
    assert_eq!(chat.status, 200);
    // Gus also talks over HTTP (his session), then a crowd of new users say one thing each.
    post(
        b.http,
        "/bridge/say",
        &json!({"user_id": "gus", "username": "Gus", "message": "hello", "room": "The Garden"}),
    );
    let before = rss_kib();
    let mut c = Client::connect(b.http);
    for i in 0..3000 {
        let body = json!({"user_id": format!("passer{i}"), "username": "P", "message": "hi", "room": "The Garden"}).to_string();
        let r = c.call("POST", "/bridge/say", Some(&body));
        assert_eq!(r.status, 200);
        let recipients = r.json()["recipients"].as_array().unwrap().len();
        assert!(
            recipients <= 6,
            "a say's work is bounded by the people really here: {recipients}"
        );
    }
    let grown_kib = rss_kib().saturating_sub(before);
    let players: Vec<String> = get(b.http, "/bridge/room/The%20Garden/players")["players"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["user_id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        players.len() <= 6,
        "sessions.max HTTP users plus the game's: {players:?}"
    );
    assert!(
        players.contains(&"gus".to_string()),
        "the game still reports Gus: {players:?}"
    );
    assert!(players.contains(&"passer2999".to_string()));
    // Carol's conversation was kept over passers-by who only said something...
    let sessions = get(b.http, "/bridge/sessions")["sessions"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        sessions
            .iter()
            .any(|s| s["user_id"] == "carol" && s["messages"] == 2),
        "{sessions:?}"
    );
    // ...and she is still in the room; each passer-by who left has a presence leave.
    assert!(players.contains(&"carol".to_string()), "{players:?}");
    let events = get(b.http, "/bridge/room/The%20Garden/events")["events"]
        .as_array()
        .unwrap()
        .clone();
    assert!(events
        .iter()
        .any(|e| e["event"] == "leave" && e["user_id"].as_str().unwrap().starts_with("passer")));
    // 3,000 users came and went; memory did not keep them (a generous bound).
    assert!(
        grown_kib < 64 * 1024,
        "RSS grew {grown_kib} KiB over 3,000 passers-by"
    );
}

#[test]
fn rotating_user_id_cannot_fill_rooms_max_from_one_address() {
    let mut cfg = test_config();
    cfg.http.rate_limit_requests = 10;
    cfg.http.rate_limit_window_s = 60;
    cfg.rooms.max = 100;
    let b = start_with(cfg);
    let mut c = Client::connect(b.http);
    let say = |c: &mut Client, user: &str, room: &str| {
        let body = json!({"user_id": user, "message": "mine now", "room": room}).to_string();
        c.call("POST", "/bridge/say", Some(&body))
    };
    let mut created = 0;
    let refused = loop {
        let r = say(
            &mut c,
            &format!("sock{created}"),
            &format!("Squat {created}"),
        );
        if r.status != 200 {
            break r;
        }
        created += 1;
        assert!(
            created < 100,
            "rooms.max was reached before the address limit"
        );
    };
    assert_eq!(created, 10, "the address's allowance, whatever the user_id");
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.json()["code"], "rate_limited");
    let why = refused.json()["error"].as_str().unwrap().to_string();
    assert!(
        why.contains("new rooms from the address 127.0.0.1"),
        "{why}"
    );
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // A chat into a new room is charged the same way.
    let chat = json!({"user_id": "fresh", "message": "hi", "room": "Squat chat"}).to_string();
    assert_eq!(c.call("POST", "/bridge/chat", Some(&chat)).status, 429);
    // Existing rooms cost nothing against it: a new user speaks in one just made.
    assert_eq!(say(&mut c, "latecomer", "Squat 3").status, 200);
    assert_eq!(say(&mut c, "latecomer", "The Garden").status, 200);
    let rooms = get(b.http, "/bridge/rooms")["rooms"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(rooms, 5 + 10, "the built-in rooms and the ten allowed");
}
